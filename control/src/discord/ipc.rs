//! Discord's local IPC (what Rich Presence speaks to the desktop client): frames of a
//! little-endian opcode and length, then that many bytes of JSON, on a Unix socket named
//! `discord-ipc-N` in the user's runtime directory. The client is first told our application
//! id (HANDSHAKE, answered with a READY dispatch); then each SET_ACTIVITY command replaces what
//! the player's profile shows.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Largest frame read: Discord's answers are a few KiB.
pub const MAX_FRAME: usize = 64 * 1024;
const HEADER: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Handshake = 0,
    Frame = 1,
    Close = 2,
    Ping = 3,
    Pong = 4,
}

impl Opcode {
    fn from_u32(n: u32) -> Option<Opcode> {
        Some(match n {
            0 => Opcode::Handshake,
            1 => Opcode::Frame,
            2 => Opcode::Close,
            3 => Opcode::Ping,
            4 => Opcode::Pong,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    UnknownOpcode(u32),
    TooLong(usize),
    NotJson(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::UnknownOpcode(op) => write!(f, "unknown IPC opcode {op}"),
            FrameError::TooLong(n) => write!(f, "IPC frame of {n} bytes, above {MAX_FRAME}"),
            FrameError::NotJson(e) => write!(f, "IPC frame is not JSON: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

pub fn encode(op: Opcode, payload: &Value) -> Vec<u8> {
    let json = payload.to_string();
    let mut frame = Vec::with_capacity(HEADER + json.len());
    frame.extend_from_slice(&(op as u32).to_le_bytes());
    frame.extend_from_slice(&(json.len() as u32).to_le_bytes());
    frame.extend_from_slice(json.as_bytes());
    frame
}

/// The first frame in `buf`: `Ok(None)` while it is incomplete, else the frame and the bytes
/// it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Opcode, Value, usize)>, FrameError> {
    let Some((head, rest)) = buf.split_first_chunk::<HEADER>() else {
        return Ok(None);
    };
    let op = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let op = Opcode::from_u32(op).ok_or(FrameError::UnknownOpcode(op))?;
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    let Some(body) = rest.get(..len) else {
        return Ok(None);
    };
    let value = serde_json::from_slice(body).map_err(|e| FrameError::NotJson(e.to_string()))?;
    Ok(Some((op, value, HEADER + len)))
}

pub fn handshake(client_id: &str) -> Vec<u8> {
    encode(
        Opcode::Handshake,
        &json!({ "v": 1, "client_id": client_id }),
    )
}

/// What the player's profile shows while in a party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// The party's own name.
    pub party: String,
    /// Stable for the party, so friends' clients group its members.
    pub party_id: String,
    pub members: u32,
    /// The game running here, if one is.
    pub game: Option<String>,
    /// When we joined, seconds since 1970 (Discord shows the time elapsed).
    pub since_unix: u64,
}

/// SET_ACTIVITY for process `pid`: `activity`, or none (clears it).
pub fn set_activity(pid: u32, activity: Option<&Activity>, nonce: &str) -> Vec<u8> {
    let activity = activity.map(|a| {
        json!({
            "details": match &a.game {
                Some(game) => format!("Playing {game} over LANrage"),
                None => "In a LANrage party".to_owned(),
            },
            "state": a.party,
            "party": { "id": a.party_id, "size": [a.members, a.members.max(64)] },
            "timestamps": { "start": a.since_unix },
        })
    });
    encode(
        Opcode::Frame,
        &json!({
            "cmd": "SET_ACTIVITY",
            "args": { "pid": pid, "activity": activity },
            "nonce": nonce,
        }),
    )
}

/// Where a Discord client may listen: `discord-ipc-0` to `-9` in each directory given
/// (the user's runtime directory and temporary directories), also inside the Flatpak and
/// Snap sandboxes' directories.
pub fn socket_candidates(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    for dir in dirs {
        for sub in ["", "app/com.discordapp.Discord", "snap.discord"] {
            let base = if sub.is_empty() {
                dir.clone()
            } else {
                dir.join(sub)
            };
            for i in 0..10 {
                candidates.push(base.join(format!("discord-ipc-{i}")));
            }
        }
    }
    candidates
}

/// The answer to a command is an error event.
pub fn error_message(answer: &Value) -> Option<String> {
    (answer.get("evt")?.as_str()? == "ERROR").then(|| {
        answer
            .pointer("/data/message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error")
            .to_owned()
    })
}

/// Whether `path` looks like a Discord IPC socket's name.
pub fn is_socket_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("discord-ipc-"))
        .is_some_and(|n| n.len() == 1 && n.as_bytes()[0].is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_arrive_in_pieces() {
        let frame = handshake("1234567890");
        assert_eq!(&frame[..4], &[0, 0, 0, 0]);
        assert_eq!(
            u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize,
            frame.len() - 8
        );
        for cut in 0..frame.len() {
            assert_eq!(decode(&frame[..cut]), Ok(None), "{cut}");
        }
        let mut two = frame.clone();
        two.extend(encode(Opcode::Ping, &json!({})));
        let (op, value, used) = decode(&two).unwrap().unwrap();
        assert_eq!((op, used), (Opcode::Handshake, frame.len()));
        assert_eq!(value, json!({"v": 1, "client_id": "1234567890"}));
        assert_eq!(decode(&two[used..]).unwrap().unwrap().0, Opcode::Ping);
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut frame = encode(Opcode::Frame, &json!({}));
        frame[0] = 9;
        assert_eq!(decode(&frame), Err(FrameError::UnknownOpcode(9)));
        let mut long = vec![1, 0, 0, 0];
        long.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert_eq!(decode(&long), Err(FrameError::TooLong(MAX_FRAME + 1)));
        let mut junk = vec![1, 0, 0, 0, 2, 0, 0, 0];
        junk.extend_from_slice(b"{x");
        assert!(matches!(decode(&junk), Err(FrameError::NotJson(_))));
    }

    #[test]
    fn the_activity_says_the_party_and_the_game() {
        let activity = Activity {
            party: "LAN night".into(),
            party_id: "party-7".into(),
            members: 3,
            game: Some("Warcraft III".into()),
            since_unix: 1_700_000_000,
        };
        let frame = set_activity(42, Some(&activity), "n1");
        let (op, value, _) = decode(&frame).unwrap().unwrap();
        assert_eq!(op, Opcode::Frame);
        assert_eq!(value["cmd"], "SET_ACTIVITY");
        assert_eq!(value["args"]["pid"], 42);
        let a = &value["args"]["activity"];
        assert_eq!(a["details"], "Playing Warcraft III over LANrage");
        assert_eq!(a["party"]["size"], json!([3, 64]));
        let cleared = decode(&set_activity(42, None, "n2")).unwrap().unwrap().1;
        assert_eq!(cleared["args"]["activity"], Value::Null);
        assert_eq!(
            error_message(&json!({"evt": "ERROR", "data": {"code": 4000, "message": "bad"}})),
            Some("bad".into())
        );
    }

    #[test]
    fn sockets_are_looked_for_where_clients_put_them() {
        let c = socket_candidates(&[PathBuf::from("/run/user/1000")]);
        assert_eq!(c[0], PathBuf::from("/run/user/1000/discord-ipc-0"));
        assert!(c.contains(&PathBuf::from(
            "/run/user/1000/app/com.discordapp.Discord/discord-ipc-3"
        )));
        assert!(c.iter().all(|p| is_socket_name(p)));
        assert!(!is_socket_name(Path::new("/tmp/discord-ipc-10")));
    }
}
