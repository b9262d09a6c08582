//! The TUN interface, opened multi-queue so each worker reads and writes its own queue, with
//! virtio-net header offload so the kernel hands over TCP super-packets (GSO) and takes back
//! coalesced ones (GRO) — one system call for many packets.

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;

use tun_rs::{DeviceBuilder, SyncDevice};

/// Headroom in front of every packet buffer for the virtio-net header.
pub const OFFLOAD_HEADROOM: usize = tun_rs::VIRTIO_NET_HDR_LEN;

/// WireGuard's customary MTU: 1500 less the IPv6 + UDP + WireGuard overhead.
pub const DEFAULT_MTU: u16 = 1420;

/// Largest interface MTU the packet buffers are sized for.
pub const MAX_MTU: usize = 9000;

pub struct TunDevice {
    name: String,
    queues: Vec<Arc<SyncDevice>>,
    offload: bool,
}

impl TunDevice {
    /// Creates interface `name` with `queues` queues, left down and without addresses (the
    /// owner configures it, as with any WireGuard interface). Offload is used when the kernel
    /// supports it.
    ///
    /// `queue_len` sets the packets each queue's ring holds (the interface's txqueuelen;
    /// `None` keeps the kernel's 500). The kernel's TUN device never pushes back on the
    /// sender: a full ring drops. So the ring is where a game packet waits behind a bulk
    /// transfer, and with offload each slot may hold a 64 KiB TCP super-packet. Measured with
    /// `scripts/scaling.sh` and `scripts/bench.sh`: 16 slots cut ping under 16 TCP flows on 16
    /// cores from 8.9–9.9 ms to 2.4–2.9 ms, but on 2 cores 100-byte datagrams at 150k/s then
    /// lost 57% (128 slots: 8%; 500: 1%), because a ring counts packets, not bytes. Hence a
    /// setting, not a default.
    pub fn create(name: &str, queues: usize, mtu: u16, queue_len: Option<u32>) -> io::Result<Self> {
        if usize::from(mtu) > MAX_MTU {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MTU {mtu} is above the supported maximum of {MAX_MTU}"),
            ));
        }
        let build = |offload: bool| {
            let mut builder = DeviceBuilder::new()
                .name(name)
                .mtu(mtu)
                .multi_queue(true)
                .offload(offload)
                .inherit_enable_state();
            if let Some(len) = queue_len {
                builder = builder.tx_queue_len(len);
            }
            builder.build_sync()
        };
        let (first, offload) = match build(true) {
            Ok(dev) => (dev, true),
            Err(e) => {
                tracing::warn!(error = %e, "TUN offload unavailable, falling back to one packet per read");
                (build(false)?, false)
            }
        };
        let mut devices = Vec::with_capacity(queues.max(1));
        for _ in 1..queues.max(1) {
            devices.push(first.try_clone()?);
        }
        devices.insert(0, first);
        let mut out = Vec::with_capacity(devices.len());
        for dev in devices {
            dev.set_nonblocking(true)?;
            out.push(Arc::new(dev));
        }
        let name = out[0].name()?;
        Ok(TunDevice {
            name,
            queues: out,
            offload,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    pub fn queue(&self, i: usize) -> Arc<SyncDevice> {
        self.queues[i % self.queues.len()].clone()
    }

    /// A handle for the interface's addresses that stays with the owner once the engine has
    /// taken the device.
    pub fn addresses(&self) -> TunAddresses {
        TunAddresses(self.queues[0].clone())
    }

    /// Whether reads carry virtio-net headers (and may be GSO super-packets).
    pub fn offload(&self) -> bool {
        self.offload
    }
}

/// Sets the TUN interface's IPv4 address (the party's virtual IP) and MTU while the engine
/// runs.
#[derive(Clone)]
pub struct TunAddresses(Arc<SyncDevice>);

impl TunAddresses {
    /// Gives the interface `address/prefix_len` as its only IPv4 address, and brings it up.
    pub fn set_ipv4(&self, address: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        self.0.set_network_address(address, prefix_len, None)?;
        self.0.enabled(true)
    }

    /// The interface's index (for routes and rules that name it).
    pub fn index(&self) -> io::Result<u32> {
        self.0.if_index()
    }

    /// Sets the interface's MTU: what the kernel hands the engine shrinks or grows at once
    /// (the engine's buffers are sized for [`MAX_MTU`]).
    pub fn set_mtu(&self, mtu: u16) -> io::Result<()> {
        if usize::from(mtu) > MAX_MTU {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MTU {mtu} is above the supported maximum of {MAX_MTU}"),
            ));
        }
        self.0.set_mtu(mtu)
    }

    /// Removes the interface's IPv4 addresses (it stays up).
    pub fn clear_ipv4(&self) -> io::Result<()> {
        for address in self.0.addresses()? {
            if address.is_ipv4() {
                self.0.remove_address(address)?;
            }
        }
        Ok(())
    }
}

/// Largest frame one read from an offload queue gives: the virtio-net header and a 64 KiB
/// super-packet.
pub const MAX_FRAME: usize = OFFLOAD_HEADROOM + 65_535;

// virtio-net header values (linux/virtio_net.h) that tun-rs does not export.
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// What one read from a TUN queue gave, kept whole until the worker gets to it: on an offload
/// device a virtio-net header and a packet or GSO super-packet, otherwise one packet.
///
/// Reading and splitting are apart so that the worker can empty the queue's ring (a read is
/// one copy) and still decide per frame what to encrypt first.
pub struct Frame<'a> {
    pub bytes: &'a mut [u8],
    pub offload: bool,
}

impl Frame<'_> {
    /// The IP packet at the front: the whole packet, or a super-packet's headers and payload.
    pub fn packet(&self) -> &[u8] {
        if self.offload {
            self.bytes.get(OFFLOAD_HEADROOM..).unwrap_or_default()
        } else {
            self.bytes
        }
    }

    /// Whether the frame is a GSO super-packet, which only bulk transfers produce.
    pub fn is_super_packet(&self) -> bool {
        self.offload
            && self
                .bytes
                .get(1)
                .is_some_and(|&t| t != VIRTIO_NET_HDR_GSO_NONE)
    }

    /// About how many packets the frame holds (for drop counts).
    pub fn packets(&self) -> usize {
        match tun_rs::VirtioNetHdr::decode(self.bytes) {
            Ok(hdr) if self.is_super_packet() && hdr.gso_size > 0 => {
                let payload = self
                    .packet()
                    .len()
                    .saturating_sub(usize::from(hdr.csum_start));
                payload.div_ceil(usize::from(hdr.gso_size)).max(1)
            }
            _ => 1,
        }
    }

    /// Splits the frame into packets, each at `offset` in one of `bufs` (its length in
    /// `sizes`), as `SyncDevice::recv_multiple` would have on reading it. Returns the count.
    /// A malformed header or a packet too long for its buffer is an `InvalidInput` error.
    pub fn split<B: AsRef<[u8]> + AsMut<[u8]>>(
        self,
        bufs: &mut [B],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
        if !self.offload {
            let out = bufs
                .first_mut()
                .and_then(|b| b.as_mut().get_mut(offset..offset + self.bytes.len()))
                .ok_or_else(|| invalid("packet longer than its buffer"))?;
            out.copy_from_slice(self.bytes);
            sizes[0] = self.bytes.len();
            return Ok(1);
        }
        if self.bytes.len() <= OFFLOAD_HEADROOM {
            return Err(invalid("frame shorter than its virtio-net header"));
        }
        let mut hdr = tun_rs::VirtioNetHdr::decode(self.bytes)?;
        let input = &mut self.bytes[OFFLOAD_HEADROOM..];
        let len = input.len();
        if hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE {
            if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                // CHECKSUM_PARTIAL: the checksum from csum_start is ours to finish, seeded
                // with the pseudo-header sum the kernel left in the field.
                let start = usize::from(hdr.csum_start);
                let at = start + usize::from(hdr.csum_offset);
                if at + 2 > len {
                    return Err(invalid("checksum field beyond the packet"));
                }
                let seed = u16::from_be_bytes([input[at], input[at + 1]]);
                input[at..at + 2].fill(0);
                let sum = tun_rs::checksum(&input[start..], u64::from(seed));
                input[at..at + 2].copy_from_slice(&(!sum).to_be_bytes());
            }
            let out = bufs
                .first_mut()
                .and_then(|b| b.as_mut().get_mut(offset..offset + len))
                .ok_or_else(|| invalid("packet longer than its buffer"))?;
            out.copy_from_slice(input);
            sizes[0] = len;
            return Ok(1);
        }
        if hdr.gso_size == 0 {
            return Err(invalid("GSO frame without a segment size"));
        }
        let is_v6 = match input[0] >> 4 {
            4 => false,
            6 => true,
            _ => return Err(invalid("GSO frame that is not IP")),
        };
        let tcp = match (hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN, is_v6) {
            (tun_rs::VIRTIO_NET_HDR_GSO_TCPV4, false)
            | (tun_rs::VIRTIO_NET_HDR_GSO_TCPV6, true) => true,
            (tun_rs::VIRTIO_NET_HDR_GSO_UDP_L4, _)
                if hdr.gso_type & VIRTIO_NET_HDR_GSO_ECN == 0 =>
            {
                false
            }
            _ => return Err(invalid("unsupported GSO type")),
        };
        // The kernel's hdr_len may cover the whole first packet on forwarded traffic; the
        // headers' own length is what segmentation needs.
        let start = usize::from(hdr.csum_start);
        let transport_len = if tcp {
            let data_offset = *input
                .get(start + 12)
                .ok_or_else(|| invalid("TCP header beyond the frame"))?;
            let tcp_len = usize::from(data_offset >> 4) * 4;
            if !(20..=60).contains(&tcp_len) {
                return Err(invalid("TCP header length out of range"));
            }
            tcp_len
        } else {
            8
        };
        let headers = start + transport_len;
        let checksum_end = start + usize::from(hdr.csum_offset) + 2;
        if headers > len || checksum_end > len {
            return Err(invalid("headers beyond the frame"));
        }
        hdr.hdr_len = u16::try_from(headers).map_err(|_| invalid("headers too long"))?;
        tun_rs::gso_split(input, hdr, bufs, sizes, offset, is_v6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tun_rs::VirtioNetHdr;

    const NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM;

    /// The ones' complement sum of `data` seeded with `seed`, folded.
    fn sum(data: &[u8], seed: u32) -> u16 {
        let mut acc = seed;
        for pair in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// The IPv4 pseudo-header sum for a transport segment of `len` bytes.
    fn pseudo(packet: &[u8], len: usize) -> u32 {
        u32::from(sum(&packet[12..20], 0)) + u32::from(packet[9]) + len as u32
    }

    fn frame(hdr: VirtioNetHdr, packet: &[u8]) -> Vec<u8> {
        let mut frame = vec![0; OFFLOAD_HEADROOM + packet.len()];
        hdr.encode(&mut frame).unwrap();
        frame[OFFLOAD_HEADROOM..].copy_from_slice(packet);
        frame
    }

    /// An IPv4 TCP super-packet of `payload` bytes, headers as the kernel hands them over.
    fn tcp_super_packet(payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload];
        p[0] = 0x45;
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        p[20..22].copy_from_slice(&40_000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&7u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x18; // ACK | PSH
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    fn buffers() -> (Vec<Vec<u8>>, Vec<usize>) {
        (vec![vec![0; OFFLOAD_HEADROOM + 1500]; 8], vec![0; 8])
    }

    #[test]
    fn a_tcp_super_packet_splits_into_checksummed_segments() {
        let packet = tcp_super_packet(2500);
        // hdr_len as the kernel gives it on forwarded traffic: the whole first segment.
        let hdr = VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: tun_rs::VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 1040,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut bytes = frame(hdr, &packet);
        let frame = Frame {
            bytes: &mut bytes,
            offload: true,
        };
        assert!(frame.is_super_packet());
        assert_eq!(frame.packet(), &packet[..]);
        assert_eq!(frame.packets(), 3);
        let (mut bufs, mut sizes) = buffers();
        let n = frame
            .split(&mut bufs, &mut sizes, OFFLOAD_HEADROOM)
            .unwrap();
        assert_eq!(&sizes[..n], [1040, 1040, 540]);
        for (i, buf) in bufs[..n].iter().enumerate() {
            let seg = &buf[OFFLOAD_HEADROOM..OFFLOAD_HEADROOM + sizes[i]];
            assert_eq!(usize::from(u16::from_be_bytes([seg[2], seg[3]])), seg.len());
            assert_eq!(
                sum(&seg[..20], 0),
                0xffff,
                "IPv4 header checksum of segment {i}"
            );
            let tcp = &seg[20..];
            assert_eq!(
                sum(tcp, pseudo(seg, tcp.len())),
                0xffff,
                "TCP checksum of {i}"
            );
            let seq = u32::from_be_bytes(tcp[4..8].try_into().unwrap());
            assert_eq!(seq, 7 + 1000 * i as u32);
            assert_eq!(
                tcp[20..],
                packet[40 + 1000 * i..40 + 1000 * i + tcp.len() - 20]
            );
        }
    }

    #[test]
    fn a_lone_packet_gets_its_checksum_finished() {
        let mut packet = vec![0u8; 28 + 100];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&128u16.to_be_bytes());
        packet[9] = 17;
        packet[12..16].copy_from_slice(&[100, 64, 0, 1]);
        packet[16..20].copy_from_slice(&[100, 64, 0, 2]);
        packet[24..26].copy_from_slice(&108u16.to_be_bytes());
        packet[28..].fill(0xab);
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum.
        let seed = sum(&[], pseudo(&packet, 108));
        packet[26..28].copy_from_slice(&seed.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..Default::default()
        };
        let mut bytes = frame(hdr, &packet);
        let frame = Frame {
            bytes: &mut bytes,
            offload: true,
        };
        assert!(!frame.is_super_packet());
        assert_eq!(frame.packets(), 1);
        let (mut bufs, mut sizes) = buffers();
        assert_eq!(
            frame
                .split(&mut bufs, &mut sizes, OFFLOAD_HEADROOM)
                .unwrap(),
            1
        );
        let out = &bufs[0][OFFLOAD_HEADROOM..OFFLOAD_HEADROOM + sizes[0]];
        assert_eq!(out.len(), packet.len());
        assert_eq!(sum(&out[20..], pseudo(out, 108)), 0xffff);

        // Without offload a frame is the packet itself.
        let mut plain = packet.clone();
        let frame = Frame {
            bytes: &mut plain,
            offload: false,
        };
        assert_eq!(frame.packet(), &packet[..]);
        assert_eq!(
            frame
                .split(&mut bufs, &mut sizes, OFFLOAD_HEADROOM)
                .unwrap(),
            1
        );
        assert_eq!(
            bufs[0][OFFLOAD_HEADROOM..OFFLOAD_HEADROOM + sizes[0]],
            packet[..]
        );
    }

    #[test]
    fn malformed_frames_are_refused() {
        let tcp =
            |gso_type: u8, hdr_patch: fn(&mut VirtioNetHdr), packet_patch: fn(&mut Vec<u8>)| {
                let mut packet = tcp_super_packet(2500);
                packet_patch(&mut packet);
                let mut hdr = VirtioNetHdr {
                    flags: NEEDS_CSUM,
                    gso_type,
                    hdr_len: 40,
                    gso_size: 1000,
                    csum_start: 20,
                    csum_offset: 16,
                };
                hdr_patch(&mut hdr);
                frame(hdr, &packet)
            };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("header only", vec![0; OFFLOAD_HEADROOM]),
            ("unknown GSO type", tcp(0x7f, |_| {}, |_| {})),
            (
                "TCPv6 GSO on IPv4",
                tcp(tun_rs::VIRTIO_NET_HDR_GSO_TCPV6, |_| {}, |_| {}),
            ),
            ("no segment size", tcp(1, |h| h.gso_size = 0, |_| {})),
            ("not IP", tcp(1, |_| {}, |p| p[0] = 0x35)),
            ("TCP header too short", tcp(1, |_| {}, |p| p[32] = 3 << 4)),
            (
                "headers beyond the frame",
                tcp(1, |h| h.csum_start = 60_000, |_| {}),
            ),
            (
                "checksum beyond the frame",
                tcp(1, |h| h.csum_offset = 60_000, |_| {}),
            ),
            (
                "lone packet, checksum beyond",
                tcp(0, |h| h.csum_offset = 60_000, |_| {}),
            ),
            (
                "lone packet too long for its buffer",
                tcp(0, |h| h.flags = 0, |_| {}),
            ),
        ];
        for (what, mut bytes) in cases {
            let (mut bufs, mut sizes) = buffers();
            let frame = Frame {
                bytes: &mut bytes,
                offload: true,
            };
            let _ = frame.packets();
            let err = frame
                .split(&mut bufs, &mut sizes, OFFLOAD_HEADROOM)
                .expect_err(what);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{what}: {err}");
        }
        let (mut bufs, mut sizes) = buffers();
        let mut big = vec![0x45; 2000];
        let frame = Frame {
            bytes: &mut big,
            offload: false,
        };
        assert!(
            frame
                .split(&mut bufs, &mut sizes, OFFLOAD_HEADROOM)
                .is_err()
        );
    }
}
