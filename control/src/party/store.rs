//! The control server's parties in SQLite, so a restart loses nothing.
//!
//! Opened as the project opens its databases (`crate::sqlite`: WAL, a versioned schema). Each
//! changed party is rewritten in one transaction ([`PartyStore::save`]), so a party is never
//! stored half-updated. Rows that do not make sense
//! (a bad key, address or endpoint, a member claimed twice) are reported and skipped, never
//! fatal: one corrupt party must not keep every other party from coming back.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::code::PartyCode;
use super::registry::{Member, PartyId, PartyRecord};
use crate::nat::NatType;
use crate::peer_id::PeerId;

/// Migrations, in order; the database's `user_version` says how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: parties, their members and the addresses kept for departed members.
    "CREATE TABLE parties (
         id   INTEGER PRIMARY KEY,
         name TEXT NOT NULL,
         code BLOB NOT NULL UNIQUE
     );
     CREATE TABLE members (
         party_id   INTEGER NOT NULL REFERENCES parties (id) ON DELETE CASCADE,
         peer       BLOB NOT NULL,
         name       TEXT NOT NULL,
         virtual_ip TEXT NOT NULL,
         endpoints  TEXT NOT NULL,
         nat        TEXT NOT NULL,
         departed   INTEGER NOT NULL,
         PRIMARY KEY (party_id, peer)
     );
     CREATE TABLE secrets (
         name  TEXT PRIMARY KEY,
         value BLOB NOT NULL
     );",
];

#[derive(Debug)]
pub enum StoreError {
    Sqlite(rusqlite::Error),
    /// Written by a newer release: refusing is safer than guessing at its schema.
    TooNew {
        found: i64,
        known: i64,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sqlite(e) => write!(f, "party database: {e}"),
            StoreError::TooNew { found, known } => write!(
                f,
                "party database has schema version {found}; this release knows up to {known} \
                 (use the release that wrote it, or a newer one)"
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Sqlite(e) => Some(e),
            StoreError::TooNew { .. } => None,
        }
    }
}

impl From<crate::sqlite::SchemaError> for StoreError {
    fn from(e: crate::sqlite::SchemaError) -> Self {
        match e {
            crate::sqlite::SchemaError::Sqlite(e) => StoreError::Sqlite(e),
            crate::sqlite::SchemaError::TooNew { found, known } => {
                StoreError::TooNew { found, known }
            }
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// A stored row that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub party: i64,
    pub why: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "party {}: {}", self.party, self.why)
    }
}

pub struct PartyStore {
    conn: Connection,
}

impl PartyStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(crate::sqlite::open(path)?)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        crate::sqlite::migrate(&mut conn, MIGRATIONS)?;
        Ok(PartyStore { conn })
    }

    /// Every stored party that makes sense, and the rows that did not.
    pub fn load(&self) -> Result<(Vec<PartyRecord>, Vec<BadRow>), StoreError> {
        let mut bad = Vec::new();
        let mut parties = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, code FROM parties ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        for row in rows {
            let (id, name, code) = row?;
            let Ok(code) = <[u8; PartyCode::BYTES]>::try_from(code.as_slice()) else {
                bad.push(BadRow {
                    party: id,
                    why: format!("party code of {} bytes", code.len()),
                });
                continue;
            };
            parties.push(PartyRecord {
                id: PartyId(id as u64),
                name,
                code: PartyCode::from_bytes(code),
                members: Vec::new(),
                departed: Vec::new(),
            });
        }
        let mut stmt = self.conn.prepare(
            "SELECT party_id, peer, name, virtual_ip, endpoints, nat, departed
             FROM members ORDER BY party_id, peer",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(MemberRow {
                party: r.get(0)?,
                peer: r.get(1)?,
                name: r.get(2)?,
                virtual_ip: r.get(3)?,
                endpoints: r.get(4)?,
                nat: r.get(5)?,
                departed: r.get(6)?,
            })
        })?;
        for row in rows {
            let row = row?;
            let party = row.party;
            let Some(record) = parties.iter_mut().find(|p| p.id.0 as i64 == party) else {
                continue;
            };
            match row.into_member() {
                Ok((member, false)) => record.members.push(member),
                Ok((member, true)) => record.departed.push((member.peer, member.virtual_ip)),
                Err(why) => bad.push(BadRow { party, why }),
            }
        }
        Ok((parties, bad))
    }

    /// Stores `record` in place of whatever was stored for its party.
    pub fn save(&mut self, record: &PartyRecord) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let id = record.id.0 as i64;
        tx.execute(
            "INSERT INTO parties (id, name, code) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, code = excluded.code",
            params![id, record.name, record.code.as_bytes().as_slice()],
        )?;
        tx.execute("DELETE FROM members WHERE party_id = ?1", params![id])?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO members (party_id, peer, name, virtual_ip, endpoints, nat, departed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for m in &record.members {
                insert.execute(params![
                    id,
                    m.peer.as_bytes().as_slice(),
                    m.name,
                    m.virtual_ip.to_string(),
                    endpoints_text(&m.endpoints),
                    m.nat.name(),
                    false,
                ])?;
            }
            for (peer, address) in &record.departed {
                insert.execute(params![
                    id,
                    peer.as_bytes().as_slice(),
                    "",
                    address.to_string(),
                    "",
                    NatType::Unknown.name(),
                    true,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets an ended party.
    pub fn delete(&mut self, id: PartyId) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM parties WHERE id = ?1", params![id.0 as i64])?;
        Ok(())
    }

    /// The 32-byte secret called `name`, created with `generate` on first use.
    pub fn secret(
        &mut self,
        name: &str,
        generate: impl FnOnce() -> [u8; 32],
    ) -> Result<[u8; 32], StoreError> {
        let stored: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(bytes) = stored.as_deref().and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            return Ok(bytes);
        }
        // Missing, or a corrupt value: a new secret only invalidates outstanding tokens.
        let fresh = generate();
        self.conn.execute(
            "INSERT INTO secrets (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![name, fresh.as_slice()],
        )?;
        Ok(fresh)
    }
}

struct MemberRow {
    party: i64,
    peer: Vec<u8>,
    name: String,
    virtual_ip: String,
    endpoints: String,
    nat: String,
    departed: bool,
}

impl MemberRow {
    /// The member, and whether it departed.
    fn into_member(self) -> Result<(Member, bool), String> {
        let peer = <[u8; 32]>::try_from(self.peer.as_slice())
            .map(PeerId)
            .map_err(|_| format!("member key of {} bytes", self.peer.len()))?;
        let virtual_ip: Ipv4Addr = self
            .virtual_ip
            .parse()
            .map_err(|_| format!("member {peer}: bad virtual IP {:?}", self.virtual_ip))?;
        let endpoints = self
            .endpoints
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<SocketAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("member {peer}: bad endpoints {:?}", self.endpoints))?;
        let nat = self
            .nat
            .parse()
            .map_err(|e| format!("member {peer}: {e}"))?;
        Ok((
            Member {
                peer,
                name: self.name,
                virtual_ip,
                endpoints,
                nat,
            },
            self.departed,
        ))
    }
}

fn endpoints_text(endpoints: &[SocketAddr]) -> String {
    endpoints
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::party::{Registry, RegistryConfig};
    use std::time::Instant;

    fn peer(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    fn code(n: u8) -> PartyCode {
        PartyCode::from_bytes([n; 10])
    }

    /// A registry with two parties, one with a departed member and endpoints.
    fn populated() -> Registry {
        let t = Instant::now();
        let mut r = Registry::new(RegistryConfig::default()).unwrap();
        r.create(t, peer(1), "alice", "LAN night", code(1)).unwrap();
        r.join(t, &code(1), peer(2), "bob").unwrap();
        r.join(t, &code(1), peer(3), "carol").unwrap();
        r.leave(peer(3)).unwrap();
        let endpoints = vec![
            "192.0.2.1:51820".parse().unwrap(),
            "[2001:db8::1]:51820".parse().unwrap(),
        ];
        r.heartbeat(t, peer(2), Some(endpoints), Some(NatType::Symmetric))
            .unwrap();
        r.create(t, peer(4), "dave", "other", code(2)).unwrap();
        r
    }

    fn store_changes(r: &mut Registry, store: &mut PartyStore) {
        for id in r.drain_changed() {
            match r.record(id) {
                Some(record) => store.save(&record).unwrap(),
                None => store.delete(id).unwrap(),
            }
        }
    }

    #[test]
    fn parties_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("lanrage-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("parties.db");
        let _ = std::fs::remove_file(&path);
        let mut r = populated();
        {
            let mut store = PartyStore::open(&path).unwrap();
            store_changes(&mut r, &mut store);
        }
        let store = PartyStore::open(&path).unwrap();
        let (records, bad) = store.load().unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(records, r.records());
        let mut restored = Registry::new(RegistryConfig::default()).unwrap();
        for record in records {
            restored.restore(Instant::now(), record).unwrap();
        }
        assert_eq!(restored.records(), r.records());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ended_parties_are_deleted() {
        let mut store = PartyStore::open_in_memory().unwrap();
        let mut r = populated();
        store_changes(&mut r, &mut store);
        r.leave(peer(4)).unwrap();
        store_changes(&mut r, &mut store);
        let (records, _) = store.load().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records, r.records());
    }

    #[test]
    fn corrupt_rows_are_reported_and_the_rest_loads() {
        let mut store = PartyStore::open_in_memory().unwrap();
        let mut r = populated();
        store_changes(&mut r, &mut store);
        store
            .conn
            .execute(
                "UPDATE members SET virtual_ip = 'ten dot sixty-six' WHERE name = 'bob'",
                [],
            )
            .unwrap();
        store
            .conn
            .execute("UPDATE members SET nat = 'cone' WHERE name = 'dave'", [])
            .unwrap();
        let (records, bad) = store.load().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].why.contains("bad virtual IP"), "{}", bad[0]);
        assert!(bad[1].why.contains("cone"), "{}", bad[1]);
        // Alice is still there.
        assert!(records[0].members.iter().any(|m| m.name == "alice"));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = std::env::temp_dir().join(format!("lanrage-store-new-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("parties.db");
        let _ = std::fs::remove_file(&path);
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = PartyStore::open(&path).err().unwrap();
        assert!(err.to_string().contains("schema version 99"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_are_made_once_and_kept() {
        let mut store = PartyStore::open_in_memory().unwrap();
        let a = store.secret("token-key", || [7; 32]).unwrap();
        let b = store.secret("token-key", || [9; 32]).unwrap();
        assert_eq!(a, [7; 32]);
        assert_eq!(b, a);
        store
            .conn
            .execute("UPDATE secrets SET value = x'00'", [])
            .unwrap();
        assert_eq!(store.secret("token-key", || [9; 32]).unwrap(), [9; 32]);
    }
}
