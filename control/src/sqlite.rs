//! How the project opens its SQLite databases (the control server's parties, a daemon's
//! settings): WAL, so readers never wait for the writer and a crash leaves the last commit;
//! foreign keys enforced; and a schema versioned by `PRAGMA user_version`, whose missing
//! migrations run in one transaction. The files are private to their owner: they hold party
//! codes, and a daemon's settings hold its Discord secrets.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rusqlite::Connection;

/// Opens (creating if needed) the database at `path`, readable by its owner only. SQLite gives
/// its WAL and shared-memory files the database file's mode, so they stay private too.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let private = |e: std::io::Error| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("cannot make {} private: {e}", path.display())),
        )
    };
    match fs::symlink_metadata(path) {
        // Root would chmod, and SQLite write, whatever the link points at.
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(private(std::io::Error::other("it is a link")));
        }
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(private)?;
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Created empty here, with its mode; SQLite writes the header on first use.
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(private)?;
        }
        Err(e) => return Err(private(e)),
    }
    Connection::open(path)
}

#[derive(Debug)]
pub enum SchemaError {
    Sqlite(rusqlite::Error),
    /// Written by a newer release: refusing is safer than guessing at its schema.
    TooNew {
        found: i64,
        known: i64,
    },
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> Self {
        SchemaError::Sqlite(e)
    }
}

/// Sets the connection up and brings its schema to `migrations.len()`, running those it
/// lacks, in order.
pub fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), SchemaError> {
    // In-memory databases answer "memory"; both are fine.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = migrations.len() as i64;
    if version > known {
        return Err(SchemaError::TooNew {
            found: version,
            known,
        });
    }
    let tx = conn.transaction()?;
    for migration in &migrations[version.max(0) as usize..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    Ok(())
}
