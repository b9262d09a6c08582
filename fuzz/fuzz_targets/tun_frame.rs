//! Frames as a TUN queue hands them to a worker: a virtio-net header and a packet or GSO
//! super-packet (or, without offload, a packet). Whatever the header claims, splitting gives
//! packets that fit their buffers, no more than there are buffers, or an error; never a panic.
//!
//! The first input byte picks offload (bit 0) and how many output buffers there are; the rest
//! is the frame.
#![no_main]

use lanrage_engine::io::tun::{Frame, OFFLOAD_HEADROOM};
use libfuzzer_sys::fuzz_target;

const BUF_LEN: usize = OFFLOAD_HEADROOM + 1500;

fuzz_target!(|data: &[u8]| {
    let Some((&control, frame)) = data.split_first() else {
        return;
    };
    let offload = control & 1 == 1;
    let buffers = usize::from(control >> 1) % 64 + 1;
    let mut bytes = frame.to_vec();
    let mut bufs = vec![vec![0u8; BUF_LEN]; buffers];
    let mut sizes = vec![0usize; buffers];
    let frame = Frame {
        bytes: &mut bytes,
        offload,
    };
    let _ = frame.packet();
    let _ = frame.is_super_packet();
    assert!(frame.packets() >= 1);
    if let Ok(n) = frame.split(&mut bufs, &mut sizes, OFFLOAD_HEADROOM) {
        assert!(n <= buffers);
        for &size in &sizes[..n] {
            assert!(OFFLOAD_HEADROOM + size <= BUF_LEN);
        }
    }
});
