//! A member's identity: its WireGuard public key. Nothing else names a peer, so a peer can
//! only be who its key says (the control server checks possession before trusting it).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; 32]);

impl PeerId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Base64, as `wg` prints keys.
impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdError;

impl fmt::Display for PeerIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a WireGuard public key (44 characters of base64 for 32 bytes)")
    }
}

impl std::error::Error for PeerIdError {}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut key = [0u8; 32];
        match STANDARD.decode_slice(s.trim(), &mut key) {
            Ok(32) => Ok(PeerId(key)),
            _ => Err(PeerIdError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_wg_base64() {
        let id = PeerId([7; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<PeerId>(), Ok(id));
    }

    #[test]
    fn refuses_what_is_not_a_key() {
        for bad in [
            "",
            "abc",
            "!!!!",
            &STANDARD.encode([1u8; 31]),
            &STANDARD.encode([1u8; 33]),
        ] {
            assert_eq!(bad.parse::<PeerId>(), Err(PeerIdError), "{bad:?}");
        }
    }
}
