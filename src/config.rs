//! `lanrage config`: the settings (`lanrage_control::settings`), through the running daemon,
//! which applies what it can at once, or, when none runs, in the data directory's database
//! directly, for the daemon's next start.

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use lanrage_control::settings::store::ConfigurationSummary;
use lanrage_control::settings::{self, Applies};
use serde_json::Value;

use crate::cli::{ApiArgs, print_json};
use crate::daemon::settings::SettingsBook;
use crate::local_api::{Client, NotRunning, SettingInfo, SettingsReport};

#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
    /// Also the data directory whose settings database is changed when no daemon runs
    /// (`--data-dir`).
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ConfigCommand {
    /// Every setting: its value, whether it is set or the default, and when it applies.
    List,
    /// One setting's value.
    Get { key: String },
    /// Sets a setting in the active configuration: `25`, `true`, `off`, `a:1,b:2`.
    Set { key: String, value: String },
    /// Forgets a setting's value: its default applies again.
    Reset { key: String },
    /// Saves the settings as a named configuration.
    Save { name: String },
    /// Makes a saved configuration the active one.
    Use { name: String },
    /// The saved configurations.
    Saved,
    /// Deletes a saved configuration (not the active one).
    Delete { name: String },
}

/// Where the settings are: the daemon's API, or the database itself.
enum Settings {
    Daemon(Client),
    Offline(Box<SettingsBook>),
}

impl Settings {
    fn report(&self) -> Result<SettingsReport> {
        match self {
            Settings::Daemon(client) => client.settings(),
            Settings::Offline(book) => Ok(book.report()),
        }
    }

    fn set(&mut self, key: &str, value: Value) -> Result<SettingInfo> {
        match self {
            Settings::Daemon(client) => client.set_setting(key, value),
            Settings::Offline(book) => book.set(key, &value).map_err(refusal),
        }
    }

    fn reset(&mut self, key: &str) -> Result<SettingInfo> {
        match self {
            Settings::Daemon(client) => client.reset_setting(key),
            Settings::Offline(book) => book.reset(key).map_err(refusal),
        }
    }

    fn configurations(&mut self) -> Result<Vec<ConfigurationSummary>> {
        match self {
            Settings::Daemon(client) => client.configurations(),
            Settings::Offline(book) => book.configurations().map_err(refusal),
        }
    }

    fn save(&mut self, name: &str) -> Result<()> {
        match self {
            Settings::Daemon(client) => client.save_configuration(name),
            Settings::Offline(book) => book.save_as(name).map_err(refusal),
        }
    }

    fn activate(&mut self, name: &str) -> Result<SettingsReport> {
        match self {
            Settings::Daemon(client) => client.activate_configuration(name),
            Settings::Offline(book) => book.activate(name).map_err(refusal),
        }
    }

    fn delete(&mut self, name: &str) -> Result<()> {
        match self {
            Settings::Daemon(client) => client.delete_configuration(name),
            Settings::Offline(book) => book.delete(name).map_err(refusal),
        }
    }
}

fn refusal((_, message): (u16, String)) -> anyhow::Error {
    anyhow!(message)
}

pub fn run(args: &ConfigArgs) -> Result<()> {
    let client = Client::new(&args.api.data_dir);
    let mut settings = match client.settings() {
        Ok(_) => Settings::Daemon(client),
        Err(e) if e.downcast_ref::<NotRunning>().is_some() => {
            if !args.api.json {
                eprintln!(
                    "(no daemon running: using {} directly; changes apply when it starts)",
                    args.api
                        .data_dir
                        .join(crate::daemon::settings::FILE)
                        .display()
                );
            }
            Settings::Offline(Box::new(SettingsBook::open(
                &args.api.data_dir,
                Default::default(),
            )))
        }
        Err(e) => return Err(e),
    };
    let offline = matches!(settings, Settings::Offline(_));
    let json = args.api.json;
    match &args.command {
        ConfigCommand::List => {
            let report = settings.report()?;
            if json {
                return print_json(&report);
            }
            print_report(&report);
        }
        ConfigCommand::Get { key } => {
            settings::spec(key).map_err(|e| anyhow!("{e}"))?;
            let report = settings.report()?;
            let info = report
                .settings
                .iter()
                .find(|s| s.key == *key)
                .ok_or_else(|| anyhow!("the daemon does not know setting {key:?}"))?;
            if json {
                return print_json(info);
            }
            say!("{}", show(&info.value));
        }
        ConfigCommand::Set { key, value } => {
            // Checked here too, so a typo is refused before anything is sent.
            let value = settings::spec(key)
                .and_then(|spec| spec.parse_text(value))
                .map_err(|e| anyhow!("{e}"))?;
            let info = settings.set(key, value)?;
            if json {
                return print_json(&info);
            }
            say!(
                "{} = {} ({})",
                info.key,
                show(&info.value),
                when(&info, offline)
            );
        }
        ConfigCommand::Reset { key } => {
            let info = settings.reset(key)?;
            if json {
                return print_json(&info);
            }
            say!(
                "{} = {} (the default; {})",
                info.key,
                show(&info.value),
                when(&info, offline)
            );
        }
        ConfigCommand::Save { name } => {
            settings.save(name)?;
            if !json {
                say!("saved the settings as {name:?}");
            }
        }
        ConfigCommand::Use { name } => {
            let report = settings.activate(name)?;
            if json {
                return print_json(&report);
            }
            say!("{name:?} is the active configuration");
            let pending: Vec<&str> = report
                .settings
                .iter()
                .filter(|s| s.restart_pending)
                .map(|s| s.key.as_str())
                .collect();
            if !pending.is_empty() {
                say!(
                    "takes effect when the daemon restarts: {}",
                    pending.join(", ")
                );
            }
        }
        ConfigCommand::Saved => {
            let configurations = settings.configurations()?;
            if json {
                return print_json(&configurations);
            }
            for c in configurations {
                say!(
                    "{} {:<32} {} setting{} set",
                    if c.active { "*" } else { " " },
                    c.name,
                    c.values,
                    if c.values == 1 { "" } else { "s" }
                );
            }
        }
        ConfigCommand::Delete { name } => {
            settings.delete(name)?;
            if !json {
                say!("deleted {name:?}");
            }
        }
    }
    Ok(())
}

fn print_report(report: &SettingsReport) {
    match &report.configuration {
        Some(name) => say!("configuration: {name} ({})", report.database),
        None => say!("configuration: none ({})", report.database),
    }
    for problem in &report.problems {
        say!("warning: {problem}");
    }
    say!();
    for s in &report.settings {
        let origin = if s.from_flag {
            "flag"
        } else if s.set {
            "set"
        } else {
            "default"
        };
        let applies = match (s.applies, s.restart_pending) {
            (_, true) => "restart to apply",
            (Applies::Now, false) => "live",
            (Applies::AtRestart, false) => "at restart",
        };
        say!("{:<18} {:<30} {origin:<8} {applies}", s.key, show(&s.value));
    }
}

/// A value as typed on the command line.
fn show(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() => "\"\"".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "\"\"".into(),
        Value::Array(items) => items.iter().map(show).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn when(info: &SettingInfo, offline: bool) -> &'static str {
    match (offline, info.applies) {
        (true, _) => "applies when the daemon starts",
        (false, Applies::Now) => "applied now",
        (false, Applies::AtRestart) => "takes effect when the daemon restarts",
    }
}
