//! The WireGuard UDP port: one socket per worker, all bound to the same port with SO_REUSEPORT
//! so the kernel spreads flows across workers. Dual-stack when the host has IPv6.

use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

/// Datagram buffers per batched receive (recvmmsg); each holds up to 64 KiB of
/// GRO-coalesced datagrams.
pub const RECV_BUFS: usize = 16;
pub const RECV_BUF_LEN: usize = 1 << 16;

/// What one batched receive gave.
pub enum Received {
    /// This many buffers were filled (their lengths and strides in the metadata).
    Batch(usize),
    /// The socket is empty: wait for the next readiness edge.
    Empty,
    /// Interrupted, or an error that says nothing of the datagrams still queued (ICMP errors
    /// surface here): receive again.
    Retry,
}

/// Receives one batch into `bufs` ([`RECV_BUFS`] buffers of [`RECV_BUF_LEN`] bytes back to
/// back) with recvmmsg and GRO.
pub fn recv_batch(
    state: &UdpSocketState,
    socket: &UdpSocket,
    bufs: &mut [u8],
    meta: &mut [RecvMeta],
) -> Received {
    let mut chunks = bufs.chunks_exact_mut(RECV_BUF_LEN);
    let mut slices: [IoSliceMut<'_>; RECV_BUFS] =
        std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
    recv_into(state, socket, &mut slices, meta)
}

/// Receives one batch into the given buffers with recvmmsg and GRO.
pub fn recv_into(
    state: &UdpSocketState,
    socket: &UdpSocket,
    slices: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
) -> Received {
    match state.recv(UdpSockRef::from(socket), slices, meta) {
        Ok(n) => Received::Batch(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Received::Empty,
        Err(e) => {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::trace!(error = %e, "UDP receive error");
            }
            Received::Retry
        }
    }
}

/// The GRO stride of a received buffer: the size of each datagram in it but the last, which
/// may be shorter (never 0, so the buffer can be walked in steps of it).
pub fn gro_stride(meta: &RecvMeta) -> usize {
    let stride = if meta.stride == 0 {
        meta.len
    } else {
        meta.stride
    };
    stride.max(1)
}

/// Default receive buffer. It is also the tunnel's standing queue under load: a bulk
/// transfer fills whatever it is given, and a game packet waits behind all of it. Measured
/// here (2 cores, TCP saturating the tunnel): 8 MiB gave 1.9–2.9 ms ping under load, 256 KiB
/// 1.2–1.5 ms, 64 KiB 0.5 ms but 7–13 % loss of a 150k packets/s UDP stream (2–3 % with
/// 256 KiB or more). Throughput was the same for all three.
pub const DEFAULT_RECV_BUFFER: usize = 256 << 10;

/// Send buffers only hold what a worker sends in one batch before the kernel takes it.
const SEND_BUFFER: usize = 1 << 20;

/// Binds `count` sockets to one port (`port` 0 picks a free port for all of them).
///
/// SO_REUSEPORT would let us join a group that another process (even another LANrage
/// interface) already holds on that port and silently share its traffic. So the port is first
/// claimed exclusively by a probe socket without SO_REUSEPORT, which fails if anyone holds it.
pub fn bind_group(
    port: u16,
    count: usize,
    fwmark: u32,
    recv_buffer: usize,
) -> io::Result<Vec<UdpSocket>> {
    let port = {
        let (probe, addr) = new_socket(port)?;
        probe.bind(&addr.into())?;
        probe.local_addr()?.as_socket().map_or(port, |a| a.port())
    };
    let first = bind_one(port, fwmark, recv_buffer)?;
    let port = first.local_addr()?.port();
    let mut sockets = vec![first];
    for _ in 1..count.max(1) {
        sockets.push(bind_one(port, fwmark, recv_buffer)?);
    }
    Ok(sockets)
}

fn bind_one(port: u16, fwmark: u32, recv_buffer: usize) -> io::Result<UdpSocket> {
    let (socket, addr) = new_socket(port)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = socket.set_send_buffer_size(SEND_BUFFER);
    let _ = socket.set_recv_buffer_size(recv_buffer);
    if fwmark != 0 {
        set_fwmark(&socket, fwmark)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A dual-stack socket for `[::]:port`, or an IPv4 one for `0.0.0.0:port` on hosts without IPv6.
fn new_socket(port: u16) -> io::Result<(Socket, SocketAddr)> {
    Ok(
        match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
            Ok(s) => {
                s.set_only_v6(false)?;
                let addr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
                (s, addr)
            }
            // Hosts without IPv6 get an IPv4-only socket.
            Err(_) => (
                Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?,
                SocketAddr::from(([0, 0, 0, 0], port)),
            ),
        },
    )
}

/// Marks outgoing datagrams so policy routing can keep them out of the tunnel itself.
pub fn set_fwmark(socket: &Socket, fwmark: u32) -> io::Result<()> {
    socket.set_mark(fwmark)
}

/// Addresses as users write them: IPv4 peers on a dual-stack socket show up as
/// `::ffff:a.b.c.d`, which we turn back into `a.b.c.d`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// The destination form a socket accepts: a dual-stack socket needs IPv4 as mapped IPv6.
pub fn for_socket(addr: SocketAddr, dual_stack: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if dual_stack => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_round_trip() {
        let v4: SocketAddr = "10.1.2.3:51820".parse().unwrap();
        let mapped = for_socket(v4, true);
        assert_eq!(mapped.to_string(), "[::ffff:10.1.2.3]:51820");
        assert_eq!(canonical(mapped), v4);
        assert_eq!(for_socket(v4, false), v4);
        let v6: SocketAddr = "[fd00::1]:5".parse().unwrap();
        assert_eq!(canonical(v6), v6);
        assert_eq!(for_socket(v6, true), v6);
    }

    #[test]
    fn a_held_port_is_refused_even_to_another_group() {
        let group = bind_group(0, 2, 0, DEFAULT_RECV_BUFFER).unwrap();
        let port = group[0].local_addr().unwrap().port();
        let err = bind_group(port, 2, 0, DEFAULT_RECV_BUFFER).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn group_shares_one_port() {
        let group = bind_group(0, 3, 0, DEFAULT_RECV_BUFFER).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for s in &group {
            assert_eq!(s.local_addr().unwrap().port(), port);
        }
    }
}
