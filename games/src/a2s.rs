//! Valve's server query, A2S_INFO: Source and GoldSrc servers, and many other Steam game
//! servers, answer it on their port with their name, map and player count. The server
//! browser asks the servers this host runs, so that the party sees how full each one is.
//!
//! Sans-IO: [`info_request`] makes the query, [`parse_reply`] reads the answer. Since 2020
//! servers may first answer with a challenge, to be sent back with the query; modern Source
//! servers answer `I`, GoldSrc servers the older `m`.

use std::fmt;

/// Every single-packet A2S message begins with this.
const SINGLE_PACKET: [u8; 4] = [0xff; 4];
const INFO_REQUEST: u8 = b'T';
const INFO_PAYLOAD: &[u8] = b"Source Engine Query\0";
const CHALLENGE: u8 = b'A';
const INFO_SOURCE: u8 = b'I';
const INFO_GOLDSRC: u8 = b'm';

/// Largest reply read: A2S answers fit one 1400-byte packet unless split, which A2S_INFO
/// replies are not.
pub const MAX_REPLY: usize = 1400;

/// What a server says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub name: String,
    pub map: String,
    /// Players on the server, bots included.
    pub players: u8,
    pub max_players: u8,
    pub bots: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Ask again with this challenge ([`info_request`]).
    Challenge([u8; 4]),
    Info(ServerInfo),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum A2sError {
    /// Not a single-packet A2S message, or one we do not read.
    NotInfo,
    /// The message ends before its fields do.
    Truncated,
}

impl fmt::Display for A2sError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            A2sError::NotInfo => f.write_str("not an A2S_INFO reply"),
            A2sError::Truncated => f.write_str("A2S_INFO reply cut short"),
        }
    }
}

impl std::error::Error for A2sError {}

/// The A2S_INFO query, with the server's challenge when it asked for one.
pub fn info_request(challenge: Option<[u8; 4]>) -> Vec<u8> {
    let mut request = Vec::with_capacity(4 + 1 + INFO_PAYLOAD.len() + 4);
    request.extend_from_slice(&SINGLE_PACKET);
    request.push(INFO_REQUEST);
    request.extend_from_slice(INFO_PAYLOAD);
    if let Some(challenge) = challenge {
        request.extend_from_slice(&challenge);
    }
    request
}

/// Reads a server's answer to [`info_request`].
pub fn parse_reply(bytes: &[u8]) -> Result<Reply, A2sError> {
    let rest = bytes
        .strip_prefix(&SINGLE_PACKET)
        .ok_or(A2sError::NotInfo)?;
    let (&kind, rest) = rest.split_first().ok_or(A2sError::NotInfo)?;
    let mut r = Reader(rest);
    match kind {
        CHALLENGE => Ok(Reply::Challenge(r.array()?)),
        INFO_SOURCE => {
            let _protocol = r.byte()?;
            let name = r.string()?;
            let map = r.string()?;
            let _folder = r.string()?;
            let _game = r.string()?;
            let _app_id: [u8; 2] = r.array()?;
            let (players, max_players, bots) = (r.byte()?, r.byte()?, r.byte()?);
            Ok(Reply::Info(ServerInfo {
                name,
                map,
                players,
                max_players,
                bots,
            }))
        }
        INFO_GOLDSRC => {
            let _address = r.string()?;
            let name = r.string()?;
            let map = r.string()?;
            let _folder = r.string()?;
            let _game = r.string()?;
            let (players, max_players) = (r.byte()?, r.byte()?);
            let _protocol = r.byte()?;
            let _server_type = r.byte()?;
            let _environment = r.byte()?;
            let _visibility = r.byte()?;
            let modded = r.byte()?;
            if modded == 1 {
                let _link = r.string()?;
                let _download = r.string()?;
                let _unused = r.byte()?;
                let _version: [u8; 4] = r.array()?;
                let _size: [u8; 4] = r.array()?;
                let _kind = r.byte()?;
                let _dll = r.byte()?;
            }
            let _vac = r.byte()?;
            let bots = r.byte()?;
            Ok(Reply::Info(ServerInfo {
                name,
                map,
                players,
                max_players,
                bots,
            }))
        }
        _ => Err(A2sError::NotInfo),
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, A2sError> {
        let (&b, rest) = self.0.split_first().ok_or(A2sError::Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], A2sError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(A2sError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }

    /// A NUL-terminated string (servers send whatever bytes their admin typed).
    fn string(&mut self) -> Result<String, A2sError> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or(A2sError::Truncated)?;
        let text = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valve's developer wiki's example reply (a Source server, "Counter-Strike: Source").
    fn source_reply() -> Vec<u8> {
        let mut r = vec![0xff, 0xff, 0xff, 0xff, b'I', 0x02];
        r.extend_from_slice(b"game2xs.com Counter-Strike Source #1\0de_dust\0cstrike\0");
        r.extend_from_slice(b"Counter-Strike: Source\0");
        r.extend_from_slice(&[0xf0, 0x00, 0x05, 0x10, 0x04, b'd', b'l', 0x00, 0x00]);
        r.extend_from_slice(b"1.0.0.22\0");
        r
    }

    #[test]
    fn the_query_is_the_documented_one() {
        let mut expected = b"\xff\xff\xff\xffTSource Engine Query\0".to_vec();
        assert_eq!(info_request(None), expected);
        expected.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(info_request(Some([1, 2, 3, 4])), expected);
    }

    #[test]
    fn source_and_goldsrc_replies_and_challenges_are_read() {
        assert_eq!(
            parse_reply(&source_reply()),
            Ok(Reply::Info(ServerInfo {
                name: "game2xs.com Counter-Strike Source #1".into(),
                map: "de_dust".into(),
                players: 5,
                max_players: 16,
                bots: 4,
            }))
        );
        let mut goldsrc = b"\xff\xff\xff\xffm127.0.0.1:27015\0Alice's LAN\0crossfire\0".to_vec();
        goldsrc.extend_from_slice(b"valve\0Half-Life\0");
        goldsrc.extend_from_slice(&[3, 8, 47, b'd', b'l', 0, 0, 0, 1]);
        assert_eq!(
            parse_reply(&goldsrc),
            Ok(Reply::Info(ServerInfo {
                name: "Alice's LAN".into(),
                map: "crossfire".into(),
                players: 3,
                max_players: 8,
                bots: 1,
            }))
        );
        assert_eq!(
            parse_reply(b"\xff\xff\xff\xffA\x0a\x0b\x0c\x0d"),
            Ok(Reply::Challenge([10, 11, 12, 13]))
        );
    }

    #[test]
    fn anything_else_is_refused_without_panicking() {
        let reply = source_reply();
        // What follows the bot count (13 bytes) is not read; everything before it is needed.
        for len in 0..reply.len() - 13 {
            assert!(parse_reply(&reply[..len]).is_err(), "{len}");
        }
        assert_eq!(parse_reply(b"\xff\xff\xff\xfeI"), Err(A2sError::NotInfo));
        assert_eq!(
            parse_reply(b"\xff\xff\xff\xffD\x00"),
            Err(A2sError::NotInfo)
        );
        assert_eq!(
            parse_reply(b"\xff\xff\xff\xffA\x01"),
            Err(A2sError::Truncated)
        );
    }
}
