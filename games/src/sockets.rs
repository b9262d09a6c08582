//! The host's listening ports, for detection: TCP sockets in LISTEN and UDP sockets bound and
//! unconnected (a game server's), read from the kernel's sock_diag netlink interface (what
//! `ss -l` uses) for IPv4 and IPv6, in this network namespace.

use std::io;

use crate::profile::Protocol;

/// The listening ports with their protocols, sorted and without duplicates. Elsewhere than
/// Linux: none (detection then goes by process names alone).
pub fn listening() -> io::Result<Vec<(Protocol, u16)>> {
    #[cfg(target_os = "linux")]
    {
        linux::listening()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(Vec::new())
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;

    use netlink_packet_core::{
        NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    };
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

    use crate::profile::Protocol;

    pub fn listening() -> io::Result<Vec<(Protocol, u16)>> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let mut ports = Vec::new();
        let mut sequence = 0;
        for family in [AF_INET, AF_INET6] {
            // A bound, unconnected UDP socket is in the kernel's TCP_CLOSE state.
            for (protocol, ip_protocol, states) in [
                (Protocol::Tcp, IPPROTO_TCP, StateFlags::LISTEN),
                (Protocol::Udp, IPPROTO_UDP, StateFlags::CLOSE),
            ] {
                sequence += 1;
                let socket_id = if family == AF_INET {
                    SocketId::new_v4()
                } else {
                    SocketId::new_v6()
                };
                let request = SockDiagMessage::InetRequest(InetRequest {
                    family,
                    protocol: ip_protocol,
                    extensions: ExtensionFlags::empty(),
                    states,
                    socket_id,
                });
                for port in dump(&socket, sequence, request)? {
                    ports.push((protocol, port));
                }
            }
        }
        ports.sort_unstable_by_key(|&(p, port)| (port, p as u8));
        ports.dedup();
        Ok(ports)
    }

    /// One dump request; the local ports of the sockets it lists.
    fn dump(socket: &Socket, sequence: u32, request: SockDiagMessage) -> io::Result<Vec<u16>> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = sequence;
        let mut message = NetlinkMessage::new(header, request.into());
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        socket.send(&buf, 0)?;

        let mut ports = Vec::new();
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            socket.recv(&mut buf, 0)?;
            let mut at = 0;
            while at < buf.len() {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = message.header.length as usize;
                if len == 0 {
                    break;
                }
                at += len.next_multiple_of(4);
                if message.header.sequence_number != sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        ports.push(response.header.socket_id.source_port);
                    }
                    NetlinkPayload::Done(_) => return Ok(ports),
                    NetlinkPayload::Error(e) => {
                        return Err(match e.code {
                            Some(code) => io::Error::from_raw_os_error(-code.get()),
                            None => io::Error::other("sock_diag dump ended with an empty error"),
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use std::net::{TcpListener, UdpSocket};

        use super::*;

        #[test]
        fn finds_this_process_s_tcp_and_udp_listeners() {
            let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
            let udp = UdpSocket::bind("[::1]:0").unwrap();
            let ports = listening().unwrap();
            let tcp_port = tcp.local_addr().unwrap().port();
            let udp_port = udp.local_addr().unwrap().port();
            assert!(ports.contains(&(Protocol::Tcp, tcp_port)), "{ports:?}");
            assert!(ports.contains(&(Protocol::Udp, udp_port)), "{ports:?}");
            // A connected UDP socket is a client, not a server.
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client
                .connect(
                    udp.local_addr()
                        .unwrap()
                        .to_string()
                        .replace("[::1]", "127.0.0.1"),
                )
                .ok();
            let client_port = client.local_addr().unwrap().port();
            let ports = listening().unwrap();
            assert!(!ports.contains(&(Protocol::Udp, client_port)), "{ports:?}");
        }
    }
}
