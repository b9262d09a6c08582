//! Coalescing decrypted packets into TUN super-packets (GRO) without copying them.
//!
//! A batch of packets from one peer is mostly consecutive segments of a few TCP flows. Handing
//! the kernel one super-packet per flow (a virtio-net header saying "split me every `gso_size`
//! bytes") costs one write and one trip up its stack instead of dozens. The head packet's
//! headers are rewritten to describe the whole; the others give only their payloads, which
//! `writev` gathers where they lie, so nothing is copied or allocated.
//!
//! The rules are the kernel's own GRO rules: same flow and same headers, consecutive sequence
//! numbers, equal segment sizes with a shorter one or a PSH only last, at most 64 KiB, and the
//! checksum of every packet merged verified first (the kernel trusts the super-packet's).

use std::io::IoSlice;

use tun_rs::{
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4, VirtioNetHdr,
};

use super::tun::OFFLOAD_HEADROOM;

/// Most packets one super-packet holds: the kernel's limit for UDP segmentation, and more than
/// a 64 KiB TCP super-packet of full-sized segments needs.
pub const MAX_SEGMENTS: usize = 64;

/// Flows open for merging at once within one batch; a packet of a further flow starts its own
/// group and the oldest open one is closed.
const MAX_OPEN_FLOWS: usize = 16;

/// Largest super-packet: the IPv4 total-length field's limit.
const MAX_TOTAL: usize = 65_535;

const NONE: u16 = u16::MAX;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// What the coalescer needs of a packet it may merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Candidate {
    v6: bool,
    proto: u8,
    /// IP header length (20 or 40: packets with IPv4 options or IPv6 extension headers are
    /// written as they are).
    ip_len: usize,
    /// IP and transport headers.
    headers: usize,
    payload: usize,
    seq: u32,
    psh: bool,
}

impl Candidate {
    fn parse(packet: &[u8], udp: bool) -> Option<Self> {
        let (v6, proto, ip_len) = match packet.first()? >> 4 {
            4 => {
                // IHL 5 only, the whole datagram, not a fragment.
                if packet.len() < 20
                    || packet[0] != 0x45
                    || usize::from(u16::from_be_bytes([packet[2], packet[3]])) != packet.len()
                    || u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0
                {
                    return None;
                }
                (false, packet[9], 20)
            }
            6 => {
                if packet.len() < 40
                    || usize::from(u16::from_be_bytes([packet[4], packet[5]])) != packet.len() - 40
                {
                    return None;
                }
                (true, packet[6], 40)
            }
            _ => return None,
        };
        let l4 = &packet[ip_len..];
        let (headers, seq, psh) = match proto {
            PROTO_TCP => {
                let tcp_len = usize::from(*l4.get(12)? >> 4) * 4;
                if tcp_len < 20 || l4.len() < tcp_len {
                    return None;
                }
                // Plain data segments only: SYN, FIN, RST, URG, ECE and CWR end a merge.
                let flags = l4[13];
                if flags != TCP_ACK && flags != TCP_ACK | TCP_PSH {
                    return None;
                }
                let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
                (ip_len + tcp_len, seq, flags & TCP_PSH != 0)
            }
            PROTO_UDP if udp => {
                if l4.len() < 8 || usize::from(u16::from_be_bytes([l4[4], l4[5]])) != l4.len() {
                    return None;
                }
                // An IPv4 datagram without a checksum cannot be verified before merging.
                if !v6 && l4[6] == 0 && l4[7] == 0 {
                    return None;
                }
                (ip_len + 8, 0, false)
            }
            _ => return None,
        };
        let payload = packet.len() - headers;
        (payload > 0).then_some(Candidate {
            v6,
            proto,
            ip_len,
            headers,
            payload,
            seq,
            psh,
        })
    }
}

/// Whether `packet` belongs to the same flow as `head` with headers that may merge: addresses,
/// ports, IP fields the kernel would keep per segment, and for TCP the acknowledgement and
/// options.
fn same_flow(head: &[u8], h: &Candidate, packet: &[u8], p: &Candidate) -> bool {
    if h.v6 != p.v6 || h.proto != p.proto || h.headers != p.headers {
        return false;
    }
    let ip_fields_match = if h.v6 {
        // Version, traffic class and flow label; hop limit; addresses.
        head[..4] == packet[..4] && head[7] == packet[7] && head[8..40] == packet[8..40]
    } else {
        // TOS; flags (DF); TTL; addresses.
        head[1] == packet[1]
            && head[6] == packet[6]
            && head[8] == packet[8]
            && head[12..20] == packet[12..20]
    };
    let l4 = h.ip_len;
    let ports_match = head[l4..l4 + 4] == packet[l4..l4 + 4];
    let tcp_match = h.proto != PROTO_TCP
        // Acknowledgement number, then the options (timestamps included).
        || (head[l4 + 8..l4 + 12] == packet[l4 + 8..l4 + 12]
            && head[l4 + 20..h.headers] == packet[l4 + 20..h.headers]);
    ip_fields_match && ports_match && tcp_match
}

/// The ones' complement sum of the pseudo-header for a transport segment of `len` bytes.
fn pseudo_header_sum(packet: &[u8], c: &Candidate, len: usize) -> u64 {
    let addresses = if c.v6 {
        &packet[8..40]
    } else {
        &packet[12..20]
    };
    let sum = tun_rs::checksum_no_fold(addresses, 0);
    // Lengths here are at most 64 KiB, so the 16-bit field of the IPv4 form is enough for
    // both (IPv6's is 32 bits with the high half zero).
    let trailer = [0, c.proto, (len >> 8) as u8, len as u8];
    tun_rs::checksum_no_fold(&trailer, sum)
}

fn checksum_valid(packet: &[u8], c: &Candidate) -> bool {
    let transport = &packet[c.ip_len..];
    tun_rs::checksum(transport, pseudo_header_sum(packet, c, transport.len())) == 0xffff
}

/// What becomes of a packet that may merge.
enum Join {
    /// It joined its flow's open group.
    Joined,
    /// It heads a new group of its flow.
    Start,
    /// It is written alone, unchanged (its checksum is wrong: the kernel drops it).
    Alone,
}

/// One super-packet or lone packet to write.
#[derive(Clone, Copy, Debug)]
struct Group {
    head: u16,
    tail: u16,
    segments: u16,
    /// Length of the super-packet so far.
    total: usize,
    candidate: Option<Candidate>,
    next_seq: u32,
    open: bool,
    /// Whether the head's checksum has been verified (done when a second packet joins).
    verified: bool,
    last_psh: bool,
}

/// Plans the coalescing of one batch of decrypted packets. Built once per worker; planning
/// allocates nothing.
pub struct Coalescer {
    udp: bool,
    groups: Vec<Group>,
    /// Indices into `groups` that may still take packets, oldest first.
    open: Vec<u16>,
    /// Per slot: the next slot whose payload follows it in its super-packet.
    next: Vec<u16>,
}

impl Coalescer {
    /// A coalescer for batches of up to `capacity` packets; `udp` says whether the device takes
    /// UDP super-packets too (`tun_rs::SyncDevice::udp_gso`).
    pub fn new(capacity: usize, udp: bool) -> Self {
        assert!(capacity < usize::from(NONE), "batch too large to index");
        Coalescer {
            udp,
            groups: Vec::with_capacity(capacity),
            open: Vec::with_capacity(MAX_OPEN_FLOWS),
            next: vec![NONE; capacity],
        }
    }

    /// Groups the packets in `slots` — each behind `OFFLOAD_HEADROOM` bytes of headroom — and
    /// writes every group's virtio-net header into its head's headroom, rewriting the head's
    /// IP and transport headers for the whole group. Then `groups` and `gather` give the writes.
    /// Slots beyond the capacity are written alone.
    pub fn plan(&mut self, slots: &mut [Vec<u8>]) {
        self.groups.clear();
        self.open.clear();
        for (i, slot) in slots.iter().enumerate() {
            if i < self.next.len() {
                self.next[i] = NONE;
            }
            let packet = slot.get(OFFLOAD_HEADROOM..).unwrap_or_default();
            let candidate = if i < self.next.len() {
                Candidate::parse(packet, self.udp)
            } else {
                None
            };
            match candidate.map(|c| (c, self.join(slots, i, &c))) {
                Some((_, Join::Joined)) => {}
                Some((c, Join::Start)) => self.start_group(i, Some(c), packet.len()),
                Some((_, Join::Alone)) | None => self.start_group(i, None, packet.len()),
            }
        }
        for group in &self.groups {
            let slot = &mut slots[usize::from(group.head)];
            if slot.len() < OFFLOAD_HEADROOM {
                continue;
            }
            let hdr = match group.candidate {
                Some(c) if group.segments > 1 => finish_head(slot, &c, group),
                _ => VirtioNetHdr::default(),
            };
            // The headroom is exactly a header's length: encoding cannot fail.
            let _ = hdr.encode(&mut slot[..OFFLOAD_HEADROOM]);
        }
    }

    fn start_group(&mut self, i: usize, candidate: Option<Candidate>, len: usize) {
        let index = self.groups.len() as u16;
        let open = candidate.is_some_and(|c| !c.psh);
        self.groups.push(Group {
            head: i as u16,
            tail: i as u16,
            segments: 1,
            total: len,
            candidate,
            next_seq: candidate.map_or(0, |c| c.seq.wrapping_add(c.payload as u32)),
            open,
            verified: false,
            last_psh: candidate.is_some_and(|c| c.psh),
        });
        if open {
            if self.open.len() == MAX_OPEN_FLOWS {
                let oldest = self.open.remove(0);
                self.groups[usize::from(oldest)].open = false;
            }
            self.open.push(index);
        }
    }

    /// Appends packet `i` to the open group of its flow if it may join it, else says how it
    /// is to be written.
    fn join(&mut self, slots: &[Vec<u8>], i: usize, c: &Candidate) -> Join {
        let packet = &slots[i][OFFLOAD_HEADROOM..];
        let Some(at) = self.open.iter().position(|&g| {
            let group = &self.groups[usize::from(g)];
            let head = &slots[usize::from(group.head)][OFFLOAD_HEADROOM..];
            group
                .candidate
                .is_some_and(|h| same_flow(head, &h, packet, c))
        }) else {
            return Join::Start;
        };
        let g = usize::from(self.open[at]);
        let group = self.groups[g];
        let h = group.candidate.expect("open groups have a candidate");
        let fits = c.payload <= h.payload
            && usize::from(group.segments) < MAX_SEGMENTS
            && group.total + c.payload <= MAX_TOTAL
            && (c.proto != PROTO_TCP || c.seq == group.next_seq);
        if !fits {
            // Out of order, a retransmission, or full: that group is done and this packet
            // starts the flow's next one.
            self.close(at);
            return Join::Start;
        }
        if !group.verified {
            let head = &slots[usize::from(group.head)][OFFLOAD_HEADROOM..];
            if !checksum_valid(head, &h) {
                // A corrupt head goes to the kernel alone, which drops it.
                self.close(at);
                return Join::Start;
            }
            self.groups[g].verified = true;
        }
        if !checksum_valid(packet, c) {
            return Join::Alone;
        }
        self.next[usize::from(group.tail)] = i as u16;
        let group = &mut self.groups[g];
        group.tail = i as u16;
        group.segments += 1;
        group.total += c.payload;
        group.next_seq = c.seq.wrapping_add(c.payload as u32);
        group.last_psh = c.psh;
        // A shorter segment or a PSH ends a super-packet: only its last segment may be either.
        if c.payload < h.payload || c.psh {
            self.close(at);
        }
        Join::Joined
    }

    fn close(&mut self, at: usize) {
        let g = self.open.remove(at);
        self.groups[usize::from(g)].open = false;
    }

    /// The writes the last `plan` made, in the order their first packets came.
    pub fn groups(&self) -> impl Iterator<Item = GroupRef> + '_ {
        self.groups.iter().map(|g| GroupRef {
            head: usize::from(g.head),
            headers: g.candidate.map_or(0, |c| c.headers),
            segments: usize::from(g.segments),
        })
    }

    /// Fills `iov` with the pieces of `group`'s write: the head's headroom and packet, then each
    /// further packet's payload. Returns how many entries it used.
    pub fn gather<'s>(
        &self,
        group: GroupRef,
        slots: &'s [Vec<u8>],
        iov: &mut [IoSlice<'s>; MAX_SEGMENTS],
    ) -> usize {
        iov[0] = IoSlice::new(&slots[group.head]);
        let mut n = 1;
        let mut at = self.next.get(group.head).copied().unwrap_or(NONE);
        while at != NONE && n < MAX_SEGMENTS {
            let slot = &slots[usize::from(at)];
            iov[n] = IoSlice::new(&slot[OFFLOAD_HEADROOM + group.headers..]);
            n += 1;
            at = self.next[usize::from(at)];
        }
        n
    }
}

/// One write the coalescer planned: slot `head` and, when `segments` > 1, the payloads of the
/// slots after it in its group.
#[derive(Clone, Copy, Debug)]
pub struct GroupRef {
    pub head: usize,
    headers: usize,
    pub segments: usize,
}

/// Rewrites the head of a merged group to describe the whole, and returns its virtio-net
/// header: lengths, the IPv4 header checksum, PSH when the last segment had it, and the
/// transport checksum field seeded with the pseudo-header sum for the kernel to finish.
fn finish_head(slot: &mut [u8], c: &Candidate, group: &Group) -> VirtioNetHdr {
    let packet = &mut slot[OFFLOAD_HEADROOM..];
    let total = group.total;
    if c.v6 {
        packet[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    } else {
        packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        packet[10..12].fill(0);
        let sum = !tun_rs::checksum(&packet[..20], 0);
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    let l4 = c.ip_len;
    let transport_len = total - l4;
    let (gso_type, csum_offset) = if c.proto == PROTO_TCP {
        if group.last_psh {
            packet[l4 + 13] |= TCP_PSH;
        }
        let gso = if c.v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        (gso, 16)
    } else {
        packet[l4 + 4..l4 + 6].copy_from_slice(&(transport_len as u16).to_be_bytes());
        (VIRTIO_NET_HDR_GSO_UDP_L4, 6)
    };
    let seed = tun_rs::checksum(&[], pseudo_header_sum(packet, c, transport_len));
    packet[l4 + csum_offset..l4 + csum_offset + 2].copy_from_slice(&seed.to_be_bytes());
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: c.headers as u16,
        gso_size: c.payload as u16,
        csum_start: l4 as u16,
        csum_offset: csum_offset as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tun::Frame;

    /// A TCP segment from 100.64.0.1:40000 to 100.64.0.2:5201 (or the IPv6 equivalents) with
    /// valid checksums.
    fn tcp(v6: bool, seq: u32, payload: usize, flags: u8) -> Vec<u8> {
        let ip_len = if v6 { 40 } else { 20 };
        // 12 bytes of options (NOP, NOP, timestamps), as Linux sends them.
        let tcp_len = 32;
        let mut p = vec![0u8; ip_len + tcp_len + payload];
        let total = p.len();
        if v6 {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            p[6] = PROTO_TCP;
            p[7] = 64;
            p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[4..6].copy_from_slice(&((seq / 1000) as u16).to_be_bytes());
            p[6] = 0x40; // DF
            p[8] = 64;
            p[9] = PROTO_TCP;
            p[12..16].copy_from_slice(&[100, 64, 0, 1]);
            p[16..20].copy_from_slice(&[100, 64, 0, 2]);
            let sum = !tun_rs::checksum(&p[..20], 0);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        let t = ip_len;
        p[t..t + 2].copy_from_slice(&40_000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&77u32.to_be_bytes());
        p[t + 12] = ((tcp_len / 4) as u8) << 4;
        p[t + 13] = flags;
        p[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
        p[t + 20..t + 24].copy_from_slice(&[1, 1, 8, 10]);
        p[t + 24..t + 28].copy_from_slice(&1234u32.to_be_bytes());
        for (i, b) in p[t + tcp_len..].iter_mut().enumerate() {
            *b = (seq as usize + i) as u8;
        }
        fix_transport_checksum(&mut p, v6, 16);
        p
    }

    /// A UDP datagram from 100.64.0.1:27015 to 100.64.0.2:27015 with valid checksums.
    fn udp(payload: usize, fill: u8) -> Vec<u8> {
        let mut p = vec![0u8; 28 + payload];
        let total = p.len();
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        // Consecutive IDs, as segmentation gives them.
        p[4..6].copy_from_slice(&u16::from(fill).to_be_bytes());
        p[8] = 64;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        let sum = !tun_rs::checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p[20..22].copy_from_slice(&27015u16.to_be_bytes());
        p[22..24].copy_from_slice(&27015u16.to_be_bytes());
        p[24..26].copy_from_slice(&((total - 20) as u16).to_be_bytes());
        p[28..].fill(fill);
        fix_transport_checksum(&mut p, false, 6);
        p
    }

    fn fix_transport_checksum(p: &mut [u8], v6: bool, offset: usize) {
        let c = Candidate {
            v6,
            proto: if v6 { p[6] } else { p[9] },
            ip_len: if v6 { 40 } else { 20 },
            headers: 0,
            payload: 0,
            seq: 0,
            psh: false,
        };
        let at = c.ip_len + offset;
        p[at..at + 2].fill(0);
        let len = p.len() - c.ip_len;
        let sum = !tun_rs::checksum(&p[c.ip_len..], pseudo_header_sum(p, &c, len));
        p[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }

    fn slots(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        packets
            .iter()
            .map(|p| {
                // Headroom with garbage in it: the plan must write every header.
                let mut slot = vec![0xee; OFFLOAD_HEADROOM];
                slot.extend_from_slice(p);
                slot
            })
            .collect()
    }

    /// Plans `packets` and returns each write as the bytes `writev` would hand the kernel.
    fn writes(packets: &[Vec<u8>], udp: bool) -> Vec<Vec<u8>> {
        let mut slots = slots(packets);
        let mut coalescer = Coalescer::new(128, udp);
        coalescer.plan(&mut slots);
        let mut out = Vec::new();
        for group in coalescer.groups() {
            let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
            let n = coalescer.gather(group, &slots, &mut iov);
            assert_eq!(n, group.segments);
            out.push(iov[..n].iter().flat_map(|s| s.iter().copied()).collect());
        }
        out
    }

    /// What the kernel would see: each write split back into packets, the way it segments.
    fn resplit(write: Vec<u8>) -> Vec<Vec<u8>> {
        let mut write = write;
        let mut bufs = vec![vec![0u8; 1600]; MAX_SEGMENTS];
        let mut sizes = vec![0; MAX_SEGMENTS];
        let frame = Frame {
            bytes: &mut write,
            offload: true,
        };
        let n = frame
            .split(&mut bufs, &mut sizes, 0)
            .expect("a valid write");
        (0..n).map(|i| bufs[i][..sizes[i]].to_vec()).collect()
    }

    #[test]
    fn consecutive_tcp_segments_become_one_write_that_splits_back_into_them() {
        for v6 in [false, true] {
            let packets: Vec<_> = (0..10)
                .map(|i| tcp(v6, 1000 * (i + 1), 1000, TCP_ACK))
                .collect();
            let out = writes(&packets, false);
            assert_eq!(out.len(), 1, "v6 {v6}");
            let hdr = VirtioNetHdr::decode(&out[0]).unwrap();
            assert_eq!(hdr.gso_size, 1000);
            assert_eq!(usize::from(hdr.hdr_len), if v6 { 72 } else { 52 });
            assert_eq!(resplit(out[0].clone()), packets, "v6 {v6}");
        }
    }

    #[test]
    fn a_shorter_or_psh_segment_ends_a_super_packet() {
        let packets = vec![
            tcp(false, 1000, 1000, TCP_ACK),
            tcp(false, 2000, 1000, TCP_ACK),
            tcp(false, 3000, 400, TCP_ACK),
            tcp(false, 3400, 1000, TCP_ACK),
            tcp(false, 4400, 1000, TCP_ACK | TCP_PSH),
            tcp(false, 5400, 1000, TCP_ACK),
        ];
        let out = writes(&packets, false);
        let counts: Vec<_> = out.iter().map(|w| resplit(w.clone()).len()).collect();
        assert_eq!(counts, [3, 2, 1]);
        let back: Vec<_> = out.into_iter().flat_map(resplit).collect();
        assert_eq!(back, packets);
    }

    #[test]
    fn interleaved_flows_merge_separately_in_first_come_order() {
        let other = |seq| {
            let mut p = tcp(false, seq, 1000, TCP_ACK);
            p[21] = 0x41; // source port 40001
            fix_transport_checksum(&mut p, false, 16);
            p
        };
        let packets = vec![
            tcp(false, 1000, 1000, TCP_ACK),
            other(9000),
            tcp(false, 2000, 1000, TCP_ACK),
            other(10000),
            tcp(false, 3000, 1000, TCP_ACK),
        ];
        let out = writes(&packets, false);
        assert_eq!(out.len(), 2);
        assert_eq!(
            resplit(out[0].clone()),
            [0, 2, 4].map(|i| packets[i].clone())
        );
        assert_eq!(resplit(out[1].clone()), [1, 3].map(|i| packets[i].clone()));
    }

    #[test]
    fn gaps_retransmissions_and_header_changes_start_a_new_write() {
        let mut new_ttl = tcp(false, 3000, 1000, TCP_ACK);
        new_ttl[8] = 63;
        new_ttl[10..12].fill(0);
        let sum = !tun_rs::checksum(&new_ttl[..20], 0);
        new_ttl[10..12].copy_from_slice(&sum.to_be_bytes());
        let packets = vec![
            tcp(false, 1000, 1000, TCP_ACK),
            tcp(false, 3000, 1000, TCP_ACK), // gap
            tcp(false, 1000, 1000, TCP_ACK), // retransmission
            new_ttl,
        ];
        let out = writes(&packets, false);
        assert_eq!(out.len(), 4);
        let back: Vec<_> = out.into_iter().flat_map(resplit).collect();
        assert_eq!(back, packets);
    }

    #[test]
    fn a_corrupt_packet_is_never_merged() {
        let mut bad = tcp(false, 2000, 1000, TCP_ACK);
        bad[100] ^= 0xff;
        let mut bad_head = tcp(false, 5000, 1000, TCP_ACK);
        bad_head[100] ^= 0xff;
        let packets = vec![
            tcp(false, 1000, 1000, TCP_ACK),
            bad,
            tcp(false, 2000, 1000, TCP_ACK),
            bad_head,
            tcp(false, 6000, 1000, TCP_ACK),
        ];
        let out = writes(&packets, false);
        // The corrupt ones go alone, unchanged, for the kernel to drop.
        assert_eq!(out.len(), 4);
        assert_eq!(
            resplit(out[0].clone()),
            [packets[0].clone(), packets[2].clone()]
        );
        assert_eq!(resplit(out[1].clone()), [packets[1].clone()]);
        assert_eq!(&out[2][OFFLOAD_HEADROOM..], &packets[3][..]);
        assert_eq!(resplit(out[3].clone()), [packets[4].clone()]);
    }

    #[test]
    fn non_candidates_are_written_alone_with_an_empty_header() {
        let mut syn = tcp(false, 1000, 10, 0x02);
        fix_transport_checksum(&mut syn, false, 16);
        let mut fragment = tcp(false, 2000, 100, TCP_ACK);
        fragment[6] = 0x20; // more fragments
        let mut options = vec![0x46];
        options.extend_from_slice(&[0; 23]);
        let icmp = {
            let mut p = tcp(false, 0, 10, TCP_ACK);
            p[9] = 1;
            p
        };
        let pure_ack = tcp(false, 5000, 0, TCP_ACK);
        let packets = vec![
            syn,
            fragment,
            options,
            icmp,
            pure_ack.clone(),
            pure_ack,
            vec![],
        ];
        let out = writes(&packets, true);
        assert_eq!(out.len(), packets.len());
        for (write, packet) in out.iter().zip(&packets) {
            assert_eq!(&write[..OFFLOAD_HEADROOM], &[0; OFFLOAD_HEADROOM]);
            assert_eq!(&write[OFFLOAD_HEADROOM..], &packet[..]);
        }
    }

    #[test]
    fn a_super_packet_stays_within_64_kib_and_64_segments() {
        let big: Vec<_> = (0..80)
            .map(|i| tcp(false, 1000 * (i + 1), 1000, TCP_ACK))
            .collect();
        let out = writes(&big, false);
        assert!(out.iter().all(|w| w.len() - OFFLOAD_HEADROOM <= MAX_TOTAL));
        assert_eq!(out[0].len() - OFFLOAD_HEADROOM, 52 + 64 * 1000);
        let back: Vec<_> = out.into_iter().flat_map(resplit).collect();
        assert_eq!(back, big);

        let small: Vec<_> = (0..70).map(|i| udp(100, i as u8)).collect();
        let out = writes(&small, true);
        assert_eq!(out.len(), 2);
        let back: Vec<_> = out.into_iter().flat_map(resplit).collect();
        assert_eq!(back, small);
    }

    #[test]
    fn udp_merges_only_when_the_device_takes_udp_super_packets() {
        let packets = vec![udp(100, 1), udp(100, 2), udp(60, 3), udp(100, 4)];
        let out = writes(&packets, true);
        assert_eq!(out.len(), 2);
        let hdr = VirtioNetHdr::decode(&out[0]).unwrap();
        assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_UDP_L4);
        let back: Vec<_> = out.into_iter().flat_map(resplit).collect();
        assert_eq!(back, packets);
        assert_eq!(writes(&packets, false).len(), 4);
    }

    #[test]
    fn slots_beyond_the_capacity_are_written_alone() {
        let packets: Vec<_> = (0..6)
            .map(|i| tcp(false, 1000 * (i + 1), 1000, TCP_ACK))
            .collect();
        let mut slots = slots(&packets);
        let mut coalescer = Coalescer::new(4, false);
        coalescer.plan(&mut slots);
        let segments: Vec<_> = coalescer.groups().map(|g| g.segments).collect();
        assert_eq!(segments, [4, 1, 1]);
    }
}
