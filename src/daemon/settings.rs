//! The daemon's settings as the control thread and `lanrage config` keep them: the database
//! (`lanrage_control::settings::store`), what the command line overrides for this run, and
//! what the daemon started with, so that a change that needs a restart says so.
//!
//! A database that cannot be used never stops the daemon: a damaged one is moved aside and a
//! new one started; a locked or unreadable one leaves the defaults in force, changes are
//! refused with the reason, and `lanrage config list` shows it.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use lanrage_control::settings::store::{ConfigurationSummary, SettingsStore, StoreError};
use lanrage_control::settings::{self, Applies, SPECS, SettingError, Settings};
use serde_json::Value;

use crate::local_api::{SettingInfo, SettingsReport};

/// The file in the data directory.
pub const FILE: &str = "settings.db";

/// What a secret setting (a token, a webhook URL) shows instead of its value.
pub const SECRET_SET: &str = "(set)";

/// An error for the local API: HTTP status and message.
pub type ApiError = (u16, String);

pub struct SettingsBook {
    store: Result<SettingsStore, String>,
    /// Checked values from the database's active configuration.
    stored: BTreeMap<String, Value>,
    /// Set by command-line flags for this run; they win over the database.
    overrides: BTreeMap<String, Value>,
    /// What the daemon runs with (`None` for the CLI, which runs nothing).
    running: Option<Settings>,
    /// What went wrong opening the database (set aside, unavailable): shown, not fatal.
    opening: Vec<String>,
    /// What went wrong reading the active configuration the last time (rows that failed
    /// their check): shown, not fatal.
    reading: Vec<String>,
    /// Where `log_file` may point is relative to it (`settings::check_log_file_place`).
    data_dir: PathBuf,
}

impl SettingsBook {
    /// Opens the data directory's database; never fails (see the module's doc).
    pub fn open(data_dir: &Path, overrides: BTreeMap<String, Value>) -> SettingsBook {
        let path = data_dir.join(FILE);
        let mut problems = Vec::new();
        // Private: it holds the key and the settings' secrets.
        let store = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))
            .and_then(|()| {
                SettingsStore::open_or_set_aside(&path, unix_now()).map_err(|e| e.to_string())
            })
            .map(|(store, aside)| {
                if let Some(aside) = aside {
                    problems.push(format!(
                        "the settings database was damaged: moved to {} and started afresh with defaults",
                        aside.display()
                    ));
                }
                store
            });
        if let Err(e) = &store {
            problems.push(format!(
                "{e}; running with defaults, changes cannot be saved"
            ));
        }
        let mut overrides = overrides;
        if let Some(Err(e)) = overrides
            .get("log_file")
            .map(|v| settings::check_log_file_place(v.as_str().unwrap_or(""), data_dir))
        {
            overrides.remove("log_file");
            problems.push(format!("{e}; not used"));
        }
        let mut book = SettingsBook {
            store,
            stored: BTreeMap::new(),
            overrides,
            running: None,
            opening: problems,
            reading: Vec::new(),
            data_dir: data_dir.to_owned(),
        };
        book.reload();
        book
    }

    /// Reads the active configuration again (after opening, or switching).
    fn reload(&mut self) {
        let stored = match &self.store {
            Ok(store) => store.stored(),
            Err(_) => return,
        };
        self.reading = match stored {
            Ok(raw) => {
                let (mut values, mut bad) = settings::check_stored(&raw);
                // A value stored before the place was checked (or written to the database
                // by hand) is not used either.
                if let Some(Err(e)) = values.get("log_file").map(|v| {
                    settings::check_log_file_place(v.as_str().unwrap_or(""), &self.data_dir)
                }) {
                    values.remove("log_file");
                    bad.push(e);
                }
                self.stored = values;
                bad.iter()
                    .map(|e| format!("stored {e}; its default is used (the row is kept)"))
                    .collect()
            }
            Err(e) => vec![format!("{e}; stored settings not read")],
        };
    }

    /// The daemon starts with what `effective` says now.
    pub fn start_running(&mut self) -> Settings {
        let settings = self.effective();
        self.running = Some(settings.clone());
        settings
    }

    /// Defaults, then the database, then the command line.
    pub fn effective(&self) -> Settings {
        let mut values = self.stored.clone();
        values.extend(self.overrides.clone());
        Settings::from_values(&values)
    }

    pub fn problems(&self) -> Vec<String> {
        self.opening.iter().chain(&self.reading).cloned().collect()
    }

    pub fn report(&self) -> SettingsReport {
        let effective = self.effective();
        SettingsReport {
            configuration: self.store.as_ref().ok().and_then(|s| s.active().ok()),
            database: match &self.store {
                Ok(store) => store.path().display().to_string(),
                Err(e) => format!("unavailable: {e}"),
            },
            settings: SPECS
                .iter()
                .map(|spec| self.info(spec.key, &effective))
                .collect(),
            problems: self.problems(),
        }
    }

    fn info(&self, key: &str, effective: &Settings) -> SettingInfo {
        let spec = settings::spec(key).expect("keys come from SPECS");
        let mut value = effective.get(key).unwrap_or_else(|_| spec.default_value());
        let restart_pending = spec.applies == Applies::AtRestart
            && self
                .running
                .as_ref()
                .is_some_and(|running| running.get(key).ok().as_ref() != Some(&value));
        if spec.secret && value.as_str().is_some_and(|v| !v.is_empty()) {
            value = Value::from(SECRET_SET);
        }
        SettingInfo {
            key: key.to_owned(),
            value,
            default: spec.default_value(),
            set: self.stored.contains_key(key),
            applies: spec.applies,
            help: spec.help.to_owned(),
            restart_pending,
            from_flag: self.overrides.contains_key(key),
            secret: spec.secret,
        }
    }

    fn store(&mut self) -> Result<&mut SettingsStore, ApiError> {
        self.store
            .as_mut()
            .map_err(|e| (503, format!("settings cannot be changed: {e}")))
    }

    /// Stores `value` for `key` (checked first).
    pub fn set(&mut self, key: &str, value: &Value) -> Result<SettingInfo, ApiError> {
        let spec = settings::spec(key).map_err(refused)?;
        if spec.secret && value.as_str() == Some(SECRET_SET) {
            return Err((
                400,
                format!("{key}: {SECRET_SET:?} stands for the hidden value; give the value itself"),
            ));
        }
        let value = spec.check(value).map_err(refused)?;
        if key == "log_file" {
            settings::check_log_file_place(value.as_str().unwrap_or(""), &self.data_dir)
                .map_err(refused)?;
        }
        self.store()?.set(key, &value).map_err(store_error)?;
        self.stored.insert(key.to_owned(), value);
        Ok(self.info(key, &self.effective()))
    }

    /// Forgets `key`'s stored value: its default applies.
    pub fn reset(&mut self, key: &str) -> Result<SettingInfo, ApiError> {
        settings::spec(key).map_err(refused)?;
        self.store()?.reset(key).map_err(store_error)?;
        self.stored.remove(key);
        Ok(self.info(key, &self.effective()))
    }

    pub fn configurations(&mut self) -> Result<Vec<ConfigurationSummary>, ApiError> {
        self.store()?.configurations().map_err(store_error)
    }

    pub fn save_as(&mut self, name: &str) -> Result<(), ApiError> {
        self.store()?.save_as(name).map_err(store_error)
    }

    pub fn activate(&mut self, name: &str) -> Result<SettingsReport, ApiError> {
        self.store()?.activate(name).map_err(store_error)?;
        self.reload();
        Ok(self.report())
    }

    pub fn delete(&mut self, name: &str) -> Result<(), ApiError> {
        self.store()?.delete(name).map_err(store_error)
    }
}

fn refused(e: SettingError) -> ApiError {
    match e {
        SettingError::UnknownKey(_) => (404, e.to_string()),
        SettingError::Invalid { .. } => (400, e.to_string()),
    }
}

fn store_error(e: StoreError) -> ApiError {
    let status = match e {
        StoreError::NoSuchConfiguration(_) => 404,
        StoreError::Active(_) => 409,
        StoreError::BadName(_) => 400,
        StoreError::Locked { .. } => 503,
        _ => 500,
    };
    (status, e.to_string())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon runs as root: anyone who may change settings must not be able to make it
    /// write a file anywhere else than its own directories.
    #[test]
    fn log_file_is_refused_outside_the_data_and_log_directories() {
        let dir = std::env::temp_dir().join(format!("lanrage-settings-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut book = SettingsBook::open(&dir, BTreeMap::new());
        let (status, message) = book
            .set("log_file", &Value::from("/root/.bashrc"))
            .unwrap_err();
        assert_eq!(status, 400);
        assert!(
            message.starts_with("log_file: ") && message.contains(settings::LOG_DIR),
            "{message}"
        );
        assert_eq!(book.effective().log_file, "");
        let inside = dir.join("daemon.log").display().to_string();
        book.set("log_file", &Value::from(inside.as_str())).unwrap();
        book.set("log_file", &Value::from("/var/log/lanrage/daemon.log"))
            .unwrap();
        // A flag (or the C ABI's settings) pointing elsewhere is dropped with a problem.
        let flagged = SettingsBook::open(
            &dir,
            BTreeMap::from([("log_file".to_owned(), Value::from("/etc/x"))]),
        );
        assert_eq!(flagged.effective().log_file, "/var/log/lanrage/daemon.log");
        assert!(flagged.problems().iter().any(|p| p.contains("/etc/x")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
