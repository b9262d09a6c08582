//! Zero-copy views of what arrives on the engine's two ports: datagrams on the UDP socket and
//! IP packets on the TUN device. Every function takes a borrowed slice, checks lengths before
//! reading, and never panics, whatever the bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// WireGuard message types (first byte; the next three bytes are reserved zeros).
pub const HANDSHAKE_INIT: u8 = 1;
pub const HANDSHAKE_RESPONSE: u8 = 2;
pub const COOKIE_REPLY: u8 = 3;
pub const TRANSPORT_DATA: u8 = 4;

/// Fixed sizes of WireGuard messages; transport data is a 16-byte header, the ciphertext and a
/// 16-byte tag, so an empty (keepalive) message is 32 bytes.
pub const HANDSHAKE_INIT_LEN: usize = 148;
pub const HANDSHAKE_RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
pub const TRANSPORT_OVERHEAD: usize = 32;

/// A datagram through a relay: this magic, a 4-byte channel number (big-endian), then the
/// payload (a WireGuard message or a path probe) untouched. The relay knows a session by the
/// channel, checks the sender is the address bound to it, and rewrites the channel in place
/// to the one the other end knows the session by. Eight bytes keep a full-MTU WireGuard
/// datagram within 1500 over IPv4.
///
/// ```text
/// "LRrd" (4) | channel (4, big-endian) | payload
/// ```
pub const RELAY_DATA_MAGIC: [u8; 4] = *b"LRrd";
pub const RELAY_HEADER_LEN: usize = 8;

/// Relay control frames (bind requests and acknowledgements); the relay's control thread
/// handles them.
pub const RELAY_CONTROL_MAGIC: [u8; 4] = *b"LRrb";

/// Reads a relay data header: the channel and the payload. `None` for anything else.
pub fn relay_data(datagram: &[u8]) -> Option<(u32, &[u8])> {
    if !datagram.starts_with(&RELAY_DATA_MAGIC) {
        return None;
    }
    let channel = datagram.get(4..RELAY_HEADER_LEN)?;
    let channel = u32::from_be_bytes(channel.try_into().ok()?);
    Some((channel, &datagram[RELAY_HEADER_LEN..]))
}

/// Writes a relay data header for `channel` into the first [`RELAY_HEADER_LEN`] bytes of
/// `out`. Returns `false` (and writes nothing) when `out` is shorter.
pub fn write_relay_header(out: &mut [u8], channel: u32) -> bool {
    let Some(header) = out.get_mut(..RELAY_HEADER_LEN) else {
        return false;
    };
    header[..4].copy_from_slice(&RELAY_DATA_MAGIC);
    header[4..].copy_from_slice(&channel.to_be_bytes());
    true
}

/// What one UDP datagram on the WireGuard port is, decided from its first bytes alone.
///
/// The port is shared: WireGuard traffic goes to the crypto path, everything else (STUN, the
/// project's own frames) to the control thread, so that the NAT mapping STUN discovers is the
/// one WireGuard uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    HandshakeInit,
    HandshakeResponse {
        receiver: u32,
    },
    CookieReply {
        receiver: u32,
    },
    TransportData {
        receiver: u32,
    },
    /// Through a relay: the payload after the header is WireGuard or a probe.
    Relayed {
        channel: u32,
    },
    /// Not WireGuard: handed to the control thread.
    Control,
    /// Looks like WireGuard (type byte and reserved zeros) but has an impossible length.
    Malformed,
}

/// Classifies a datagram received on the WireGuard port.
pub fn classify(datagram: &[u8]) -> Datagram {
    if datagram.starts_with(&RELAY_DATA_MAGIC) {
        return match relay_data(datagram) {
            Some((channel, _)) => Datagram::Relayed { channel },
            None => Datagram::Malformed,
        };
    }
    let Some(header) = datagram.get(..4) else {
        return if datagram.is_empty() {
            Datagram::Malformed
        } else {
            Datagram::Control
        };
    };
    if header[1..4] != [0, 0, 0] || !(HANDSHAKE_INIT..=TRANSPORT_DATA).contains(&header[0]) {
        return Datagram::Control;
    }
    let receiver = || read_u32_le(datagram, 4);
    match (header[0], datagram.len()) {
        (HANDSHAKE_INIT, HANDSHAKE_INIT_LEN) => Datagram::HandshakeInit,
        (HANDSHAKE_RESPONSE, HANDSHAKE_RESPONSE_LEN) => Datagram::HandshakeResponse {
            // The response carries sender then receiver index.
            receiver: read_u32_le(datagram, 8),
        },
        (COOKIE_REPLY, COOKIE_REPLY_LEN) => Datagram::CookieReply {
            receiver: receiver(),
        },
        (TRANSPORT_DATA, len) if len >= TRANSPORT_OVERHEAD => Datagram::TransportData {
            receiver: receiver(),
        },
        _ => Datagram::Malformed,
    }
}

fn read_u32_le(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// The addresses of an IP packet, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpHeader {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

impl IpHeader {
    /// Reads the version nibble and the addresses; `None` for anything that is not a complete
    /// IPv4 or IPv6 header.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        match packet.first()? >> 4 {
            4 if packet.len() >= 20 => Some(IpHeader::V4 {
                src: packet[12..16].try_into().ok()?,
                dst: packet[16..20].try_into().ok()?,
            }),
            6 if packet.len() >= 40 => Some(IpHeader::V6 {
                src: packet[8..24].try_into().ok()?,
                dst: packet[24..40].try_into().ok()?,
            }),
            _ => None,
        }
    }

    pub fn source(&self) -> IpAddr {
        match *self {
            IpHeader::V4 { src, .. } => IpAddr::V4(Ipv4Addr::from(src)),
            IpHeader::V6 { src, .. } => IpAddr::V6(Ipv6Addr::from(src)),
        }
    }

    pub fn destination(&self) -> IpAddr {
        match *self {
            IpHeader::V4 { dst, .. } => IpAddr::V4(Ipv4Addr::from(dst)),
            IpHeader::V6 { dst, .. } => IpAddr::V6(Ipv6Addr::from(dst)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, len: usize) -> Vec<u8> {
        let mut m = vec![0u8; len];
        if len > 0 {
            m[0] = kind;
        }
        if len >= 12 {
            m[4..8].copy_from_slice(&0x0102_0304u32.to_le_bytes());
            m[8..12].copy_from_slice(&0x0a0b_0c0du32.to_le_bytes());
        }
        m
    }

    #[test]
    fn wireguard_messages_by_type_and_length() {
        assert_eq!(
            classify(&message(1, HANDSHAKE_INIT_LEN)),
            Datagram::HandshakeInit
        );
        assert_eq!(
            classify(&message(2, HANDSHAKE_RESPONSE_LEN)),
            Datagram::HandshakeResponse {
                receiver: 0x0a0b_0c0d
            }
        );
        assert_eq!(
            classify(&message(3, COOKIE_REPLY_LEN)),
            Datagram::CookieReply {
                receiver: 0x0102_0304
            }
        );
        assert_eq!(
            classify(&message(4, 32)),
            Datagram::TransportData {
                receiver: 0x0102_0304
            }
        );
        assert_eq!(
            classify(&message(4, 1500)),
            Datagram::TransportData {
                receiver: 0x0102_0304
            }
        );
    }

    #[test]
    fn wrong_lengths_are_malformed() {
        assert_eq!(classify(&message(1, 147)), Datagram::Malformed);
        assert_eq!(classify(&message(1, 149)), Datagram::Malformed);
        assert_eq!(classify(&message(2, 91)), Datagram::Malformed);
        assert_eq!(classify(&message(3, 65)), Datagram::Malformed);
        assert_eq!(classify(&message(4, 31)), Datagram::Malformed);
        assert_eq!(classify(&message(4, 4)), Datagram::Malformed);
        assert_eq!(classify(&[]), Datagram::Malformed);
    }

    #[test]
    fn everything_else_goes_to_control() {
        // STUN binding request: type 0x0001, length, magic cookie.
        let stun = [
            0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        assert_eq!(classify(&stun), Datagram::Control);
        assert_eq!(classify(&[0, 0, 0, 0, 1, 2]), Datagram::Control);
        assert_eq!(classify(&[5, 0, 0, 0]), Datagram::Control);
        assert_eq!(classify(&[4, 0, 0, 1, 0, 0]), Datagram::Control);
        assert_eq!(classify(&[7]), Datagram::Control);
        assert_eq!(classify(b"hello"), Datagram::Control);
    }

    #[test]
    fn relay_headers() {
        let mut frame = vec![0u8; 40];
        assert!(write_relay_header(&mut frame, 0xdead_beef));
        assert_eq!(
            classify(&frame),
            Datagram::Relayed {
                channel: 0xdead_beef
            }
        );
        assert_eq!(relay_data(&frame), Some((0xdead_beef, &frame[8..])));
        assert_eq!(relay_data(&frame[..8]), Some((0xdead_beef, &[][..])));
        assert_eq!(classify(&frame[..7]), Datagram::Malformed);
        assert_eq!(relay_data(&frame[..7]), None);
        assert!(!write_relay_header(&mut [0u8; 7], 1));
    }

    #[test]
    fn ip_headers() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        v4[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let h = IpHeader::parse(&v4).unwrap();
        assert_eq!(h.source(), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(h.destination(), "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(IpHeader::parse(&v4[..19]), None);

        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[23] = 1;
        v6[39] = 2;
        let h = IpHeader::parse(&v6).unwrap();
        assert_eq!(h.source(), "::1".parse::<IpAddr>().unwrap());
        assert_eq!(h.destination(), "::2".parse::<IpAddr>().unwrap());
        assert_eq!(IpHeader::parse(&v6[..39]), None);
        assert_eq!(IpHeader::parse(&[]), None);
        assert_eq!(IpHeader::parse(&[0x55; 40]), None);
    }
}
