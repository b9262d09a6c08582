//! Relay control frames, between a member's WireGuard port and a relay.
//!
//! ```text
//! bind (member → relay), 46 bytes:
//!   "LRrb" | 1 | session (8) | side (1) | grant expiry, unix s (8) | counter (8) | MAC (16)
//! ack (relay → member), 43 bytes:
//!   "LRrb" | 2 | session (8) | side (1) | counter (8) | channel (4) | peer bound (1) | MAC (16)
//! ```
//!
//! Both are MAC'd (BLAKE2s, cut to 16 bytes) with the side key of the member's grant; the
//! relay recomputes it from its secret and the frame's session, side and expiry. The counter
//! must grow from one bind to the next, so a bind seen on the wire cannot be replayed from
//! another address to steal the session. An ack is shorter than the bind it answers, so a
//! relay cannot be used to amplify traffic toward a forged source.

use std::fmt;

use super::grant::{SessionId, Side, same_mac};

/// The magic of every relay control frame; data frames use `"LRrd"` (the engine's
/// `wire::RELAY_DATA_MAGIC`).
pub const MAGIC: [u8; 4] = *b"LRrb";
const BIND: u8 = 1;
const ACK: u8 = 2;
const MAC_LEN: usize = 16;
pub const BIND_LEN: usize = 4 + 1 + 8 + 1 + 8 + 8 + MAC_LEN;
pub const ACK_LEN: usize = 4 + 1 + 8 + 1 + 8 + 4 + 1 + MAC_LEN;
// The relay's only answer is an ack to a bind whose MAC checked: never more bytes than it was
// sent, so a forged source address cannot turn it into an amplifier.
const _: () = assert!(ACK_LEN <= BIND_LEN);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind {
    pub session: SessionId,
    pub side: Side,
    pub expires_unix: u64,
    pub counter: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub session: SessionId,
    pub side: Side,
    /// The bind's counter, echoed: matches the ack to its bind (and times the round trip).
    pub counter: u64,
    /// What the member's data frames for this session carry, and what it receives them with.
    pub channel: u32,
    /// Whether the other side is bound too (until then, data frames go nowhere).
    pub peer_bound: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    Malformed,
    BadMac,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::Malformed => "malformed relay control frame",
            FrameError::BadMac => "relay control frame with a bad MAC",
        })
    }
}

impl std::error::Error for FrameError {}

/// Whether a datagram is a relay control frame (by its magic alone).
pub fn is_relay_control(datagram: &[u8]) -> bool {
    datagram.starts_with(&MAGIC)
}

fn mac(key: &[u8; 32], body: &[u8]) -> [u8; MAC_LEN] {
    crate::path::frame::mac16(key, body)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

impl Bind {
    pub fn encode(&self, key: &[u8; 32]) -> [u8; BIND_LEN] {
        let mut out = [0; BIND_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = BIND;
        out[5..13].copy_from_slice(&self.session.0.to_be_bytes());
        out[13] = self.side as u8;
        out[14..22].copy_from_slice(&self.expires_unix.to_be_bytes());
        out[22..30].copy_from_slice(&self.counter.to_be_bytes());
        let tag = mac(key, &out[..30]);
        out[30..].copy_from_slice(&tag);
        out
    }

    /// Reads a bind without checking its MAC (the key depends on what it claims).
    pub fn parse(datagram: &[u8]) -> Result<Bind, FrameError> {
        if datagram.len() != BIND_LEN || !is_relay_control(datagram) || datagram[4] != BIND {
            return Err(FrameError::Malformed);
        }
        Ok(Bind {
            session: SessionId(u64_at(datagram, 5)),
            side: Side::from_byte(datagram[13]).ok_or(FrameError::Malformed)?,
            expires_unix: u64_at(datagram, 14),
            counter: u64_at(datagram, 22),
        })
    }

    /// Checks a parsed bind's MAC against the side key it claims.
    pub fn verify(datagram: &[u8], key: &[u8; 32]) -> Result<(), FrameError> {
        if datagram.len() != BIND_LEN {
            return Err(FrameError::Malformed);
        }
        if same_mac(&mac(key, &datagram[..30]), &datagram[30..]) {
            Ok(())
        } else {
            Err(FrameError::BadMac)
        }
    }
}

impl Ack {
    pub fn encode(&self, key: &[u8; 32]) -> [u8; ACK_LEN] {
        let mut out = [0; ACK_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = ACK;
        out[5..13].copy_from_slice(&self.session.0.to_be_bytes());
        out[13] = self.side as u8;
        out[14..22].copy_from_slice(&self.counter.to_be_bytes());
        out[22..26].copy_from_slice(&self.channel.to_be_bytes());
        out[26] = u8::from(self.peer_bound);
        let tag = mac(key, &out[..27]);
        out[27..].copy_from_slice(&tag);
        out
    }

    /// The session and side an ack claims, read before its MAC is checked.
    pub fn claimed(datagram: &[u8]) -> Result<(SessionId, Side), FrameError> {
        if datagram.len() != ACK_LEN || !is_relay_control(datagram) || datagram[4] != ACK {
            return Err(FrameError::Malformed);
        }
        Ok((
            SessionId(u64_at(datagram, 5)),
            Side::from_byte(datagram[13]).ok_or(FrameError::Malformed)?,
        ))
    }

    pub fn decode(datagram: &[u8], key: &[u8; 32]) -> Result<Ack, FrameError> {
        let (session, side) = Self::claimed(datagram)?;
        if !same_mac(&mac(key, &datagram[..27]), &datagram[27..]) {
            return Err(FrameError::BadMac);
        }
        let mut channel = [0; 4];
        channel.copy_from_slice(&datagram[22..26]);
        Ok(Ack {
            session,
            side,
            counter: u64_at(datagram, 14),
            channel: u32::from_be_bytes(channel),
            peer_bound: datagram[26] != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_tampering() {
        let key = [3; 32];
        let bind = Bind {
            session: SessionId(0x0102_0304_0506_0708),
            side: Side::High,
            expires_unix: 1_800_000_000,
            counter: 42,
        };
        let bytes = bind.encode(&key);
        assert_eq!(Bind::parse(&bytes), Ok(bind));
        assert_eq!(Bind::verify(&bytes, &key), Ok(()));
        assert_eq!(Bind::verify(&bytes, &[4; 32]), Err(FrameError::BadMac));
        for i in 0..BIND_LEN {
            let mut t = bytes;
            t[i] ^= 0x10;
            assert!(Bind::parse(&t).is_err() || Bind::verify(&t, &key).is_err());
        }
        let ack = Ack {
            session: bind.session,
            side: bind.side,
            counter: 42,
            channel: 0xabcd_ef01,
            peer_bound: true,
        };
        let bytes = ack.encode(&key);
        assert_eq!(Ack::decode(&bytes, &key), Ok(ack));
        assert_eq!(Ack::decode(&bytes, &[4; 32]), Err(FrameError::BadMac));
        // No amplification: the answer is never longer than the question.
        const { assert!(ACK_LEN <= BIND_LEN) };
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for len in 0..64 {
            let mut b = vec![0xa5u8; len];
            if len >= 4 {
                b[..4].copy_from_slice(&MAGIC);
            }
            if len >= 5 {
                b[4] = 1;
            }
            let _ = Bind::parse(&b);
            let _ = Bind::verify(&b, &[0; 32]);
            let _ = Ack::decode(&b, &[0; 32]);
        }
        let mut bad_side = Bind {
            session: SessionId(1),
            side: Side::Low,
            expires_unix: 1,
            counter: 1,
        }
        .encode(&[0; 32]);
        bad_side[13] = 2;
        assert_eq!(Bind::parse(&bad_side), Err(FrameError::Malformed));
    }
}
