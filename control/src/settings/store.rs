//! Settings in SQLite, as named configurations: one is active and is what the daemon uses;
//! others are kept to switch to (`lanrage config save NAME`, `config use NAME`).
//!
//! Only values set on purpose are stored, so a default that changes in a later release
//! reaches everyone who never chose otherwise. Values are stored as JSON text after their
//! check ([`super::Spec::check`]); a row that no longer passes (edited by hand, written by
//! another release) is reported when read and left in place, never deleted. WAL mode and one
//! transaction per change: a crash leaves the last committed state. The schema is versioned
//! with `PRAGMA user_version`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The configuration a new database starts with.
pub const FIRST_CONFIGURATION: &str = "default";

/// How long a write waits for another process holding the database (the CLI while the
/// daemon writes, or the reverse) before giving up with [`StoreError::Locked`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(3);

/// Migrations, in order; the database's `user_version` says how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: named configurations, their values, and which one is active.
    "CREATE TABLE configurations (
         name TEXT PRIMARY KEY
     );
     CREATE TABLE settings (
         configuration TEXT NOT NULL REFERENCES configurations (name) ON DELETE CASCADE,
         key           TEXT NOT NULL,
         value         TEXT NOT NULL,
         PRIMARY KEY (configuration, key)
     );
     CREATE TABLE active (
         one  INTEGER PRIMARY KEY CHECK (one = 1),
         name TEXT NOT NULL REFERENCES configurations (name)
     );
     INSERT INTO configurations (name) VALUES ('default');
     INSERT INTO active (one, name) VALUES (1, 'default');",
];

#[derive(Debug)]
pub enum StoreError {
    /// Not a database, or one that fails its integrity check.
    Corrupt {
        path: PathBuf,
        detail: String,
    },
    /// Another process holds it longer than [`BUSY_TIMEOUT`].
    Locked {
        path: PathBuf,
    },
    /// Written by a newer release: refusing is safer than guessing at its schema.
    TooNew {
        found: i64,
        known: i64,
    },
    NoSuchConfiguration(String),
    /// The active configuration cannot be deleted.
    Active(String),
    BadName(String),
    Sqlite(rusqlite::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Corrupt { path, detail } => {
                write!(
                    f,
                    "settings database {} is damaged: {detail}",
                    path.display()
                )
            }
            StoreError::Locked { path } => write!(
                f,
                "settings database {} is locked by another process; try again",
                path.display()
            ),
            StoreError::TooNew { found, known } => write!(
                f,
                "settings database has schema version {found}; this release knows up to \
                 {known} (use the release that wrote it, or a newer one)"
            ),
            StoreError::NoSuchConfiguration(name) => {
                write!(
                    f,
                    "no saved configuration {name:?} (`lanrage config saved` lists them)"
                )
            }
            StoreError::Active(name) => write!(
                f,
                "{name:?} is the active configuration; switch to another first"
            ),
            StoreError::BadName(name) => write!(
                f,
                "{name:?} is not a configuration name (1 to 32 letters, digits, '-' or '_')"
            ),
            StoreError::Sqlite(e) => write!(f, "settings database: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A saved configuration, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigurationSummary {
    pub name: String,
    pub active: bool,
    /// How many settings it sets (the rest are defaults).
    pub values: usize,
}

pub struct SettingsStore {
    conn: Connection,
    path: PathBuf,
}

impl SettingsStore {
    /// Opens (creating if needed) the database at `path` and checks it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = crate::sqlite::open(path).map_err(|e| classify(path, e))?;
        Self::init(conn, path).map_err(|e| named(path, e))
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?, Path::new(":memory:"))
    }

    /// [`SettingsStore::open`], and if the file is damaged, moves it aside (to
    /// `NAME.damaged-UNIXTIME`, so nothing is lost) and starts a new one. Returns where the
    /// damaged file went, if it was.
    pub fn open_or_set_aside(
        path: &Path,
        unix_time: u64,
    ) -> Result<(Self, Option<PathBuf>), StoreError> {
        match Self::open(path) {
            Ok(store) => Ok((store, None)),
            Err(StoreError::Corrupt { .. }) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".damaged-{unix_time}"));
                let aside = PathBuf::from(aside);
                std::fs::rename(path, &aside).map_err(|e| StoreError::Corrupt {
                    path: path.to_owned(),
                    detail: format!("and it cannot be moved aside: {e}"),
                })?;
                for suffix in ["-wal", "-shm"] {
                    let mut side = path.as_os_str().to_owned();
                    side.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(side));
                }
                Ok((Self::open(path)?, Some(aside)))
            }
            Err(e) => Err(e),
        }
    }

    fn init(mut conn: Connection, path: &Path) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: check,
            });
        }
        crate::sqlite::migrate(&mut conn, MIGRATIONS)?;
        Ok(SettingsStore {
            conn,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn active(&self) -> Result<String, StoreError> {
        let result = self.active_unnamed();
        result.map_err(|e| named(&self.path, e))
    }

    fn active_unnamed(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT name FROM active WHERE one = 1", [], |r| r.get(0))?)
    }

    /// The active configuration's stored values, as raw JSON text by key (check them with
    /// [`super::check_stored`]).
    pub fn stored(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let result = self.stored_unnamed();
        result.map_err(|e| named(&self.path, e))
    }

    fn stored_unnamed(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.stored_in(&self.active()?)
    }

    fn stored_in(&self, configuration: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM settings WHERE configuration = ?1")?;
        let rows = stmt.query_map([configuration], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores `value` (already checked) for `key` in the active configuration.
    pub fn set(&mut self, key: &str, value: &Value) -> Result<(), StoreError> {
        let result = self.set_unnamed(key, value);
        result.map_err(|e| named(&self.path, e))
    }

    fn set_unnamed(&mut self, key: &str, value: &Value) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let active: String =
            tx.query_row("SELECT name FROM active WHERE one = 1", [], |r| r.get(0))?;
        tx.execute(
            "INSERT INTO settings (configuration, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (configuration, key) DO UPDATE SET value = excluded.value",
            params![active, key, value.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets `key` in the active configuration: it takes its default again.
    pub fn reset(&mut self, key: &str) -> Result<(), StoreError> {
        let result = self.reset_unnamed(key);
        result.map_err(|e| named(&self.path, e))
    }

    fn reset_unnamed(&mut self, key: &str) -> Result<(), StoreError> {
        let active = self.active()?;
        self.conn.execute(
            "DELETE FROM settings WHERE configuration = ?1 AND key = ?2",
            params![active, key],
        )?;
        Ok(())
    }

    pub fn configurations(&self) -> Result<Vec<ConfigurationSummary>, StoreError> {
        let result = self.configurations_unnamed();
        result.map_err(|e| named(&self.path, e))
    }

    fn configurations_unnamed(&self) -> Result<Vec<ConfigurationSummary>, StoreError> {
        let active = self.active()?;
        let mut stmt = self.conn.prepare(
            "SELECT c.name, COUNT(s.key) FROM configurations c
             LEFT JOIN settings s ON s.configuration = c.name
             GROUP BY c.name ORDER BY c.name",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        rows.map(|row| {
            let (name, values) = row?;
            Ok(ConfigurationSummary {
                active: name == active,
                name,
                values: values as usize,
            })
        })
        .collect()
    }

    /// Saves the active configuration's values under `name` too (replacing what `name` had).
    pub fn save_as(&mut self, name: &str) -> Result<(), StoreError> {
        let result = self.save_as_unnamed(name);
        result.map_err(|e| named(&self.path, e))
    }

    fn save_as_unnamed(&mut self, name: &str) -> Result<(), StoreError> {
        check_name(name)?;
        let tx = self.conn.transaction()?;
        let active: String =
            tx.query_row("SELECT name FROM active WHERE one = 1", [], |r| r.get(0))?;
        if active != name {
            tx.execute(
                "INSERT OR IGNORE INTO configurations (name) VALUES (?1)",
                [name],
            )?;
            tx.execute("DELETE FROM settings WHERE configuration = ?1", [name])?;
            tx.execute(
                "INSERT INTO settings (configuration, key, value)
                 SELECT ?1, key, value FROM settings WHERE configuration = ?2",
                params![name, active],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Makes `name` the active configuration.
    pub fn activate(&mut self, name: &str) -> Result<(), StoreError> {
        let result = self.activate_unnamed(name);
        result.map_err(|e| named(&self.path, e))
    }

    fn activate_unnamed(&mut self, name: &str) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let exists = tx
            .query_row(
                "SELECT 1 FROM configurations WHERE name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists {
            return Err(StoreError::NoSuchConfiguration(name.to_owned()));
        }
        tx.execute("UPDATE active SET name = ?1 WHERE one = 1", [name])?;
        tx.commit()?;
        Ok(())
    }

    pub fn delete(&mut self, name: &str) -> Result<(), StoreError> {
        let result = self.delete_unnamed(name);
        result.map_err(|e| named(&self.path, e))
    }

    fn delete_unnamed(&mut self, name: &str) -> Result<(), StoreError> {
        if self.active()? == name {
            return Err(StoreError::Active(name.to_owned()));
        }
        let deleted = self
            .conn
            .execute("DELETE FROM configurations WHERE name = ?1", [name])?;
        if deleted == 0 {
            return Err(StoreError::NoSuchConfiguration(name.to_owned()));
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let fine = (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if fine {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_owned()))
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

/// `e` with a SQLite failure the user can act on named (see [`classify`]).
fn named(path: &Path, e: StoreError) -> StoreError {
    match e {
        StoreError::Sqlite(e) => classify(path, e),
        other => other,
    }
}

/// Names the failures a user can act on: a damaged file, a lock held too long.
fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Locked {
            path: path.to_owned(),
        },
        _ => StoreError::Sqlite(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let mut bytes = [0u8; 8];
            unique_bytes(&mut bytes);
            let dir =
                std::env::temp_dir().join(format!("lanrage-settings-{tag}-{}", hex::encode(bytes)));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Unique enough for test directories without another dependency.
    fn unique_bytes(bytes: &mut [u8]) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mixed = nanos ^ (u128::from(std::process::id()) << 64);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (mixed >> (8 * i)) as u8;
        }
    }

    #[test]
    fn values_survive_reopening_and_reset_restores_the_default() {
        let dir = TempDir::new("reopen");
        let path = dir.0.join("settings.db");
        {
            let mut store = SettingsStore::open(&path).unwrap();
            store.set("mtu", &Value::from(1380)).unwrap();
            store.set("relays", &Value::from("off")).unwrap();
            store.reset("relays").unwrap();
        }
        let store = SettingsStore::open(&path).unwrap();
        assert_eq!(store.active().unwrap(), FIRST_CONFIGURATION);
        let stored = store.stored().unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored["mtu"], "1380");
    }

    #[test]
    fn configurations_are_saved_activated_and_deleted() {
        let mut store = SettingsStore::open_in_memory().unwrap();
        store.set("keepalive", &Value::from(10)).unwrap();
        store.save_as("lan-party").unwrap();
        store.set("keepalive", &Value::from(60)).unwrap();
        store.activate("lan-party").unwrap();
        assert_eq!(store.stored().unwrap()["keepalive"], "10");
        let names: Vec<_> = store
            .configurations()
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.active, c.values))
            .collect();
        assert_eq!(
            names,
            [("default".into(), false, 1), ("lan-party".into(), true, 1)]
        );
        assert!(matches!(
            store.delete("lan-party"),
            Err(StoreError::Active(_))
        ));
        store.activate("default").unwrap();
        assert_eq!(store.stored().unwrap()["keepalive"], "60");
        store.delete("lan-party").unwrap();
        assert!(matches!(
            store.activate("lan-party"),
            Err(StoreError::NoSuchConfiguration(_))
        ));
        assert!(matches!(
            store.save_as("no spaces"),
            Err(StoreError::BadName(_))
        ));
    }

    #[test]
    fn a_damaged_file_is_set_aside_not_lost() {
        let dir = TempDir::new("damaged");
        let path = dir.0.join("settings.db");
        std::fs::write(&path, b"this is not a database, but someone's file").unwrap();
        assert!(matches!(
            SettingsStore::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
        let (store, aside) = SettingsStore::open_or_set_aside(&path, 1234).unwrap();
        let aside = aside.expect("moved aside");
        assert!(
            aside
                .to_string_lossy()
                .ends_with("settings.db.damaged-1234")
        );
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            b"this is not a database, but someone's file"
        );
        assert!(store.stored().unwrap().is_empty());
    }

    #[test]
    fn a_database_held_by_another_writer_is_reported_as_locked() {
        let dir = TempDir::new("locked");
        let path = dir.0.join("settings.db");
        let mut store = SettingsStore::open(&path).unwrap();
        store.conn.busy_timeout(Duration::from_millis(50)).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let err = store.set("mtu", &Value::from(1400)).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("locked by another process"));
        other.execute_batch("ROLLBACK").unwrap();
        store.set("mtu", &Value::from(1400)).unwrap();
    }
}
