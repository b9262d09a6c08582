//! Path probe frames: the project's own ping and pong, sent from the WireGuard port to a
//! peer's candidate addresses to punch NAT holes and measure each path's round trip.
//!
//! ```text
//! magic "LRpb" (4) | kind (1) | sender's public key (32) | transaction (12)
//!   | pong only: the ping's source as the peer saw it (family 1, address 16, port 2)
//!   | MAC (16)
//! ```
//!
//! The MAC is BLAKE2s keyed with a key only the two peers can compute (from the X25519 of
//! their static WireGuard keys), so nobody else can make a peer believe a path works and
//! steer its traffic. Frames carry nothing secret. The magic never starts a WireGuard message
//! (type 1–4 then three zero bytes) or a STUN one (top two bits zero), so the three share the
//! port.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use blake2::Blake2sMac256;
use blake2::digest::{KeyInit, Mac};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::peer_id::PeerId;

pub const MAGIC: [u8; 4] = *b"LRpb";
const PING: u8 = 1;
const PONG: u8 = 2;
const HEADER_LEN: usize = 4 + 1 + 32 + 12;
const ADDR_LEN: usize = 19;
const MAC_LEN: usize = 16;
pub const PING_LEN: usize = HEADER_LEN + MAC_LEN;
pub const PONG_LEN: usize = HEADER_LEN + ADDR_LEN + MAC_LEN;
const KEY_LABEL: &[u8] = b"lanrage path probe v1";

/// Whether a datagram on the WireGuard port is a probe frame (by its magic alone).
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram.starts_with(&MAGIC)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Ping {
        sender: PeerId,
        transaction: [u8; 12],
    },
    Pong {
        sender: PeerId,
        transaction: [u8; 12],
        /// Where the ping came from, as the answering peer saw it.
        observed: SocketAddr,
    },
}

impl Frame {
    pub fn sender(&self) -> PeerId {
        match *self {
            Frame::Ping { sender, .. } | Frame::Pong { sender, .. } => sender,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Wrong magic, kind or length.
    Malformed,
    /// The MAC does not verify: forged, corrupted, or from a key we do not share.
    BadMac,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::Malformed => "malformed path probe frame",
            FrameError::BadMac => "path probe frame with a bad MAC",
        })
    }
}

impl std::error::Error for FrameError {}

/// The MAC key two peers share: both compute the same from their own secret and the other's
/// public key.
#[derive(Clone)]
pub struct PairKey([u8; 32]);

impl PairKey {
    pub fn new(own: &StaticSecret, peer: &PeerId) -> PairKey {
        let shared = own.diffie_hellman(&PublicKey::from(peer.0));
        let mut mac = <Blake2sMac256 as KeyInit>::new(&(*shared.as_bytes()).into());
        mac.update(KEY_LABEL);
        PairKey(mac.finalize().into_bytes().into())
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_LEN] {
        mac16(&self.0, body)
    }
}

/// BLAKE2s keyed with `key` over `body`, cut to 16 bytes: the MAC of the project's frames
/// (path probes here, relay binds and acks in `crate::relay::frame`).
pub(crate) fn mac16(key: &[u8; 32], body: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = <Blake2sMac256 as KeyInit>::new(&(*key).into());
    mac.update(body);
    let full = mac.finalize().into_bytes();
    let mut out = [0; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

impl fmt::Debug for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairKey(..)")
    }
}

/// Writes `frame`, authenticated with `key`, into `out`; returns its length.
pub fn encode(frame: &Frame, key: &PairKey, out: &mut [u8; PONG_LEN]) -> usize {
    let (kind, sender, transaction, observed) = match *frame {
        Frame::Ping {
            sender,
            transaction,
        } => (PING, sender, transaction, None),
        Frame::Pong {
            sender,
            transaction,
            observed,
        } => (PONG, sender, transaction, Some(observed)),
    };
    out[..4].copy_from_slice(&MAGIC);
    out[4] = kind;
    out[5..37].copy_from_slice(&sender.0);
    out[37..HEADER_LEN].copy_from_slice(&transaction);
    let mut len = HEADER_LEN;
    if let Some(addr) = observed {
        write_addr(addr, &mut out[len..len + ADDR_LEN]);
        len += ADDR_LEN;
    }
    let mac = key.mac(&out[..len]);
    out[len..len + MAC_LEN].copy_from_slice(&mac);
    len + MAC_LEN
}

/// The sender a frame claims, read before its MAC can be checked (the key depends on it).
pub fn claimed_sender(datagram: &[u8]) -> Result<PeerId, FrameError> {
    if !is_probe(datagram) || !(datagram.len() == PING_LEN || datagram.len() == PONG_LEN) {
        return Err(FrameError::Malformed);
    }
    let mut key = [0; 32];
    key.copy_from_slice(&datagram[5..37]);
    Ok(PeerId(key))
}

/// Reads and verifies a frame with the key shared with its claimed sender.
pub fn decode(datagram: &[u8], key: &PairKey) -> Result<Frame, FrameError> {
    let sender = claimed_sender(datagram)?;
    let (kind, body_len) = (datagram[4], datagram.len() - MAC_LEN);
    match (kind, datagram.len()) {
        (PING, PING_LEN) | (PONG, PONG_LEN) => {}
        _ => return Err(FrameError::Malformed),
    }
    let expected = key.mac(&datagram[..body_len]);
    // Constant time: a MAC that fails early would leak how much of a forgery was right.
    let diff = expected
        .iter()
        .zip(&datagram[body_len..])
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(FrameError::BadMac);
    }
    let mut transaction = [0; 12];
    transaction.copy_from_slice(&datagram[37..HEADER_LEN]);
    Ok(if kind == PING {
        Frame::Ping {
            sender,
            transaction,
        }
    } else {
        Frame::Pong {
            sender,
            transaction,
            observed: read_addr(&datagram[HEADER_LEN..HEADER_LEN + ADDR_LEN])
                .ok_or(FrameError::Malformed)?,
        }
    })
}

fn write_addr(addr: SocketAddr, out: &mut [u8]) {
    let (family, bytes) = match addr.ip() {
        IpAddr::V4(v4) => (4, v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => (6, v6.octets()),
    };
    out[0] = family;
    out[1..17].copy_from_slice(&bytes);
    out[17..19].copy_from_slice(&addr.port().to_be_bytes());
}

fn read_addr(bytes: &[u8]) -> Option<SocketAddr> {
    let mut octets = [0; 16];
    octets.copy_from_slice(&bytes[1..17]);
    let v6 = Ipv6Addr::from(octets);
    let ip = match bytes[0] {
        4 => IpAddr::V4(v6.to_ipv4_mapped()?),
        6 => IpAddr::V6(v6),
        _ => return None,
    };
    let port = u16::from_be_bytes([bytes[17], bytes[18]]);
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (StaticSecret, PeerId, StaticSecret, PeerId) {
        let a = StaticSecret::from([1; 32]);
        let b = StaticSecret::from([2; 32]);
        let (pa, pb) = (
            PeerId(PublicKey::from(&a).to_bytes()),
            PeerId(PublicKey::from(&b).to_bytes()),
        );
        (a, pa, b, pb)
    }

    #[test]
    fn both_peers_derive_the_same_key_and_frames_round_trip() {
        let (a, pa, b, pb) = keys();
        let (ka, kb) = (PairKey::new(&a, &pb), PairKey::new(&b, &pa));
        let mut buf = [0; PONG_LEN];
        for frame in [
            Frame::Ping {
                sender: pa,
                transaction: [7; 12],
            },
            Frame::Pong {
                sender: pa,
                transaction: [7; 12],
                observed: "198.51.100.7:40000".parse().unwrap(),
            },
            Frame::Pong {
                sender: pa,
                transaction: [8; 12],
                observed: "[2001:db8::1]:1".parse().unwrap(),
            },
        ] {
            let len = encode(&frame, &ka, &mut buf);
            assert!(is_probe(&buf[..len]));
            assert_eq!(claimed_sender(&buf[..len]), Ok(pa));
            assert_eq!(decode(&buf[..len], &kb), Ok(frame));
        }
    }

    #[test]
    fn forgeries_and_garbage_are_refused() {
        let (a, pa, b, pb) = keys();
        let ka = PairKey::new(&a, &pb);
        let mut buf = [0; PONG_LEN];
        let len = encode(
            &Frame::Pong {
                sender: pa,
                transaction: [7; 12],
                observed: "198.51.100.7:40000".parse().unwrap(),
            },
            &ka,
            &mut buf,
        );
        // Any flipped bit after the magic breaks the MAC (or the framing).
        for i in 4..len {
            let mut bad = buf;
            bad[i] ^= 0x10;
            assert!(
                decode(&bad[..len], &PairKey::new(&b, &pa)).is_err(),
                "byte {i}"
            );
        }
        // A third party's key does not verify.
        let c = StaticSecret::from([3; 32]);
        assert_eq!(
            decode(&buf[..len], &PairKey::new(&c, &pa)),
            Err(FrameError::BadMac)
        );
        for junk in [&b""[..], b"LRpb", &buf[..len - 1], &[1, 0, 0, 0, 9, 9]] {
            assert!(decode(junk, &ka).is_err());
        }
        // Never mistaken for WireGuard or STUN.
        assert_eq!(buf[1..4], *b"Rpb");
        assert_ne!(buf[0] & 0xc0, 0);
    }
}
