//! How the project opens its SQLite databases (the control server's parties, a daemon's
//! settings): WAL, so readers never wait for the writer and a crash leaves the last commit;
//! foreign keys enforced; and a schema versioned by `PRAGMA user_version`, whose missing
//! migrations run in one transaction.

use rusqlite::Connection;

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
