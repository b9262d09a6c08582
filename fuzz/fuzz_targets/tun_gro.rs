//! Decrypted packets coalesced into TUN writes (`io::gro`). Whatever the packets, planning
//! never panics, every write is a valid frame, and splitting each write back the way the kernel
//! segments gives exactly the packets that went in, in order within each flow (IPv4 IDs and
//! header checksums aside, which segmentation renumbers).
//!
//! The first input byte: bit 0, whether UDP merges; bit 1, whether to fill in each packet's
//! checksums first (else merges stay rare). Then packets, each a 2-byte length and its bytes.
#![no_main]

use std::io::IoSlice;

use lanrage_engine::io::gro::{Coalescer, MAX_SEGMENTS};
use lanrage_engine::io::tun::{Frame, OFFLOAD_HEADROOM};
use libfuzzer_sys::fuzz_target;

#[path = "common/input.rs"]
mod input;
use input::Input;

const BATCH: usize = 128;

fn sum(data: &[u8], seed: u32) -> u32 {
    let mut acc = seed;
    for pair in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Fills in the IPv4 header checksum and the TCP or UDP checksum, where the headers allow.
fn fix_checksums(p: &mut [u8]) {
    let (ip_len, proto, addresses) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            p[10..12].fill(0);
            let check = !(sum(&p[..20], 0) as u16);
            p[10..12].copy_from_slice(&check.to_be_bytes());
            (20, p[9], 12..20)
        }
        Some(6) if p.len() >= 40 => (40, p[6], 8..40),
        _ => return,
    };
    let at = match proto {
        6 => ip_len + 16,
        17 => ip_len + 6,
        _ => return,
    };
    if p.len() < at + 2 {
        return;
    }
    p[at..at + 2].fill(0);
    let len = (p.len() - ip_len) as u32;
    let pseudo = sum(&p[addresses], 0) + u32::from(proto) + (len & 0xffff) + (len >> 16);
    let check = !(sum(&p[ip_len..], pseudo) as u16);
    p[at..at + 2].copy_from_slice(&check.to_be_bytes());
}

/// A packet with the fields segmentation rewrites blanked: IPv4 ID and header checksum.
fn comparable(p: &[u8]) -> Vec<u8> {
    let mut p = p.to_vec();
    if p.len() >= 20 && p[0] >> 4 == 4 {
        p[4..6].fill(0);
        p[10..12].fill(0);
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let control = input.byte();
    let mut slots = Vec::new();
    while !input.is_empty() && slots.len() < BATCH {
        let len = usize::from(u16::from_be_bytes([input.byte(), input.byte()])) % 1600;
        let mut packet = input.bytes(len).to_vec();
        if control & 2 != 0 {
            fix_checksums(&mut packet);
        }
        let mut slot = vec![0xaa; OFFLOAD_HEADROOM];
        slot.extend_from_slice(&packet);
        slots.push(slot);
    }
    let originals: Vec<Vec<u8>> = slots
        .iter()
        .map(|s| s[OFFLOAD_HEADROOM..].to_vec())
        .collect();
    let mut coalescer = Coalescer::new(BATCH, control & 1 != 0);
    coalescer.plan(&mut slots);

    let mut written = vec![false; originals.len()];
    for group in coalescer.groups() {
        let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
        let n = coalescer.gather(group, &slots, &mut iov);
        assert_eq!(n, group.segments);
        let mut frame: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        if group.segments == 1 {
            // Lone packets go unchanged behind an empty header.
            assert_eq!(&frame[..OFFLOAD_HEADROOM], &[0; OFFLOAD_HEADROOM]);
            assert_eq!(&frame[OFFLOAD_HEADROOM..], &originals[group.head][..]);
            written[group.head] = true;
            continue;
        }
        assert!(frame.len() - OFFLOAD_HEADROOM <= 65_535);
        let mut bufs = vec![vec![0u8; 1600]; MAX_SEGMENTS];
        let mut sizes = vec![0; MAX_SEGMENTS];
        let split = Frame {
            bytes: &mut frame,
            offload: true,
        }
        .split(&mut bufs, &mut sizes, 0)
        .expect("a coalesced write is a valid frame");
        assert_eq!(split, group.segments);
        // The head first, then later packets of the same flow.
        let mut from = group.head;
        for (i, buf) in bufs[..split].iter().enumerate() {
            let packet = comparable(&buf[..sizes[i]]);
            let at = (from..originals.len())
                .find(|&j| !written[j] && comparable(&originals[j]) == packet)
                .expect("each segment is one of the packets, in order");
            assert!(i > 0 || at == group.head);
            written[at] = true;
            from = at + 1;
        }
    }
    assert!(written.iter().all(|&w| w), "every packet is written once");
});
