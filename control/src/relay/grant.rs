//! What the control server hands a member so it may use a relay with one peer: derived from
//! the secret the server shares with its relays, so a relay verifies it without asking anyone.

use std::fmt;

use blake2::Blake2sMac256;
use blake2::digest::{KeyInit, Mac};

use crate::peer_id::PeerId;

/// The secret a control server shares with its relays (32 random bytes).
#[derive(Clone)]
pub struct RelaySecret([u8; 32]);

/// One relay session: the pair of members it joins, within one party.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Which end of a session a member is: the one with the lower public key is `Low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Low = 0,
    High = 1,
}

impl Side {
    pub fn of(me: &PeerId, peer: &PeerId) -> Side {
        if me.0 < peer.0 { Side::Low } else { Side::High }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Low => Side::High,
            Side::High => Side::Low,
        }
    }

    pub fn from_byte(b: u8) -> Option<Side> {
        match b {
            0 => Some(Side::Low),
            1 => Some(Side::High),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A member's right to one side of one session until `expires_unix`, with the key that
/// proves it. The key never travels to the relay: binds are MAC'd with it.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    pub session: SessionId,
    pub side: Side,
    pub expires_unix: u64,
    pub key: [u8; 32],
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("session", &self.session)
            .field("side", &self.side)
            .field("expires_unix", &self.expires_unix)
            .finish_non_exhaustive()
    }
}

const SESSION_LABEL: &[u8] = b"lanrage relay session v1";
const SIDE_KEY_LABEL: &[u8] = b"lanrage relay side key v1";

impl RelaySecret {
    pub fn new(bytes: [u8; 32]) -> Self {
        RelaySecret(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The session joining `a` and `b` in party `party`: the same whichever of the two asks.
    pub fn session(&self, party: u64, a: &PeerId, b: &PeerId) -> SessionId {
        let (lo, hi) = if a.0 < b.0 { (a, b) } else { (b, a) };
        let out = self.mac(&[SESSION_LABEL, &party.to_be_bytes(), &lo.0, &hi.0]);
        let mut id = [0; 8];
        id.copy_from_slice(&out[..8]);
        SessionId(u64::from_be_bytes(id))
    }

    /// The key of one side of a session, valid until `expires_unix`.
    pub fn side_key(&self, session: SessionId, side: Side, expires_unix: u64) -> [u8; 32] {
        self.mac(&[
            SIDE_KEY_LABEL,
            &session.0.to_be_bytes(),
            &[side as u8],
            &expires_unix.to_be_bytes(),
        ])
    }

    /// The grant for `me`'s side of its session with `peer`.
    pub fn grant(&self, party: u64, me: &PeerId, peer: &PeerId, expires_unix: u64) -> Grant {
        let session = self.session(party, me, peer);
        let side = Side::of(me, peer);
        Grant {
            session,
            side,
            expires_unix,
            key: self.side_key(session, side, expires_unix),
        }
    }

    /// MAC over a relay's registration with the control server, so nobody without the secret
    /// can advertise a relay to members.
    pub fn registration_mac(&self, relay: &str, unix_time: u64) -> [u8; 32] {
        self.mac(&[
            b"lanrage relay registration v1",
            relay.as_bytes(),
            &unix_time.to_be_bytes(),
        ])
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = <Blake2sMac256 as KeyInit>::new(&self.0.into());
        for part in parts {
            // Length-prefixed, so no two different inputs read the same.
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for RelaySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelaySecret(..)")
    }
}

/// Checks a hex MAC as it arrives in a request against the expected one, in constant time.
pub fn same_mac_hex(expected: &[u8; 32], hex_mac: &str) -> bool {
    let mut got = [0; 32];
    hex::decode_to_slice(hex_mac, &mut got).is_ok() && same_mac(expected, &got)
}

/// Compares two MACs in constant time.
pub(crate) fn same_mac(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_members_derive_the_same_session_and_opposite_sides() {
        let secret = RelaySecret::new([7; 32]);
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        let ga = secret.grant(9, &a, &b, 1000);
        let gb = secret.grant(9, &b, &a, 1000);
        assert_eq!(ga.session, gb.session);
        assert_eq!((ga.side, gb.side), (Side::Low, Side::High));
        assert_ne!(ga.key, gb.key);
        // Another party, another secret or another expiry: another session or key.
        assert_ne!(secret.session(10, &a, &b), ga.session);
        assert_ne!(RelaySecret::new([8; 32]).session(9, &a, &b), ga.session);
        assert_ne!(secret.grant(9, &a, &b, 1001).key, ga.key);
        assert!(!format!("{ga:?}").contains("key"));
    }
}
