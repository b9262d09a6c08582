//! The daemon's settings: every knob a player or an operator may change, with its type, its
//! bounds, its default and whether a change applies at once or at the next start.
//!
//! Sans-IO: values arrive as text (the command line: `lanrage config set mtu 1380`) or as
//! JSON (the local API, the database) and are checked here, so that nothing unchecked is
//! ever stored or used. [`store`] keeps them in SQLite, as named configurations.

pub mod store;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// When a change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Applies {
    /// At once, in the running daemon.
    Now,
    /// At the daemon's next start (sockets, threads and the interface are made at start).
    AtRestart,
}

/// What a setting holds, and its bounds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Integer {
        min: u64,
        max: u64,
    },
    Choice(&'static [&'static str]),
    /// Free text checked by `check` (empty allowed where `check` allows it).
    Text(fn(&str) -> Result<(), String>),
    /// A list, written `a,b,c` on the command line, each item checked by `check`.
    List {
        max_items: usize,
        check: fn(&str) -> Result<(), String>,
    },
    /// Port numbers, written `6112,27015`.
    Ports {
        max_items: usize,
    },
}

/// One setting's definition.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub key: &'static str,
    pub help: &'static str,
    pub applies: Applies,
    /// Shown only as set or not, never its value (a token, a webhook URL).
    pub secret: bool,
    kind: Kind,
    default: fn() -> Value,
}

/// STUN servers asked when none are configured: public ones, as `lanrage netcheck` uses.
pub const DEFAULT_STUN_SERVERS: [&str; 3] = [
    "stun.l.google.com:19302",
    "stun1.l.google.com:19302",
    "stun.cloudflare.com:3478",
];

/// Every setting, in the order `lanrage config list` shows them.
pub const SPECS: &[Spec] = &[
    Spec {
        key: "server",
        help: "control server URL; empty: local parties, found by multicast on this LAN",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Text(check_server_url),
        default: || Value::from(""),
    },
    Spec {
        key: "interface",
        help: "name of the tunnel interface",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Text(check_interface_name),
        default: || Value::from("lanrage0"),
    },
    Spec {
        key: "name",
        help: "name the other players see; empty: this machine's hostname",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Text(check_member_name),
        default: || Value::from(""),
    },
    Spec {
        key: "listen_port",
        help: "WireGuard UDP port; 0: any free port",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Integer { min: 0, max: 65535 },
        default: || Value::from(0),
    },
    Spec {
        key: "api_port",
        help: "port of the local API and web UI on 127.0.0.1",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Integer { min: 1, max: 65535 },
        default: || Value::from(8666),
    },
    Spec {
        key: "keepalive",
        help: "WireGuard persistent keepalive toward members, seconds (a running game may ask for less); 0: off",
        applies: Applies::Now,
        secret: false,
        kind: Kind::Integer { min: 0, max: 3600 },
        default: || Value::from(25),
    },
    Spec {
        key: "mtu",
        help: "tunnel MTU (a running game may ask for less)",
        applies: Applies::Now,
        secret: false,
        kind: Kind::Integer {
            min: 1280,
            max: 1500,
        },
        default: || Value::from(1420),
    },
    Spec {
        key: "relays",
        help: "relays for peers no direct path reaches: auto (the control server's) or off",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Choice(&["auto", "off"]),
        default: || Value::from("auto"),
    },
    Spec {
        key: "party_subnet_any",
        help: "take a party subnet outside the private ranges or wider than /16 (a control server of your own that uses one); off: refused, since a server could route other traffic into the tunnel",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Bool,
        default: || Value::from(false),
    },
    Spec {
        key: "stun_servers",
        help: "STUN servers (HOST:PORT) for the NAT check; empty: no check",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::List {
            max_items: 8,
            check: check_host_port,
        },
        default: || Value::from(DEFAULT_STUN_SERVERS.to_vec()),
    },
    Spec {
        key: "port_mapping",
        help: "ask the router (PCP, NAT-PMP, UPnP IGD) to forward the WireGuard port",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Bool,
        default: || Value::from(true),
    },
    Spec {
        key: "game_detection",
        help: "watch for running games and tune the tunnel for them",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Bool,
        default: || Value::from(true),
    },
    Spec {
        key: "broadcast_capture",
        help: "send games' broadcasts from unbound sockets into the party (policy rules)",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Bool,
        default: || Value::from(true),
    },
    Spec {
        key: "threads",
        help: "engine worker threads; 0: one per core",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Integer { min: 0, max: 256 },
        default: || Value::from(0),
    },
    Spec {
        key: "socket_buffer",
        help: "UDP receive buffer per worker, bytes: bounds the queue (and latency) under load",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Integer {
            min: 16 << 10,
            max: 64 << 20,
        },
        default: || Value::from(256 << 10),
    },
    Spec {
        key: "cpu_locality",
        help: "keep each worker on its CPUs and steer small datagrams to the worker of their CPU",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Bool,
        default: || Value::from(true),
    },
    Spec {
        key: "lane_small_packets",
        help: "packets up to this many bytes take the latency lane (game updates, pings); 0: by port only",
        applies: Applies::Now,
        secret: false,
        kind: Kind::Integer { min: 0, max: 1500 },
        default: || Value::from(256),
    },
    Spec {
        key: "lane_ports",
        help: "ports whose packets always take the latency lane (besides the running games')",
        applies: Applies::Now,
        secret: false,
        kind: Kind::Ports { max_items: 64 },
        default: || Value::from(Vec::<u16>::new()),
    },
    Spec {
        key: "log_level",
        help: "least severe log level written",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Choice(&["error", "warn", "info", "debug", "trace"]),
        default: || Value::from("info"),
    },
    Spec {
        key: "discord_webhook",
        help: "Discord webhook URL the party's events are posted to; empty: none",
        applies: Applies::Now,
        secret: true,
        kind: Kind::Text(check_optional_url),
        default: || Value::from(""),
    },
    Spec {
        key: "discord_bot_token",
        help: "Discord bot token, to post the party's events to discord_channel; empty: none",
        applies: Applies::Now,
        secret: true,
        kind: Kind::Text(check_token),
        default: || Value::from(""),
    },
    Spec {
        key: "discord_channel",
        help: "Discord channel id the bot posts to",
        applies: Applies::Now,
        secret: false,
        kind: Kind::Text(check_snowflake),
        default: || Value::from(""),
    },
    Spec {
        key: "discord_api",
        help: "Discord's REST API, for the bot",
        applies: Applies::Now,
        secret: false,
        kind: Kind::Text(check_required_url),
        default: || Value::from("https://discord.com/api/v10"),
    },
    Spec {
        key: "discord_app_id",
        help: "Discord application id for Rich Presence (party and game on your profile); empty: off",
        applies: Applies::Now,
        secret: false,
        kind: Kind::Text(check_snowflake),
        default: || Value::from(""),
    },
    Spec {
        key: "log_file",
        help: "also append logs to this file (absolute path); empty: standard error only",
        applies: Applies::AtRestart,
        secret: false,
        kind: Kind::Text(check_log_file),
        default: || Value::from(""),
    },
];

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingError {
    UnknownKey(String),
    Invalid { key: String, why: String },
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingError::UnknownKey(key) => {
                write!(f, "no setting {key:?} (`lanrage config list` shows them)")
            }
            SettingError::Invalid { key, why } => write!(f, "{key}: {why}"),
        }
    }
}

impl std::error::Error for SettingError {}

pub fn spec(key: &str) -> Result<&'static Spec, SettingError> {
    SPECS
        .iter()
        .find(|s| s.key == key)
        .ok_or_else(|| SettingError::UnknownKey(key.to_owned()))
}

impl Spec {
    pub fn default_value(&self) -> Value {
        (self.default)()
    }

    fn invalid(&self, why: impl Into<String>) -> SettingError {
        SettingError::Invalid {
            key: self.key.to_owned(),
            why: why.into(),
        }
    }

    /// A value as typed on the command line: `25`, `true`, `off`, `a:1,b:2` (an empty string
    /// is an empty list).
    pub fn parse_text(&self, text: &str) -> Result<Value, SettingError> {
        let text = text.trim();
        let value = match self.kind {
            Kind::Bool => match text {
                "true" | "on" | "yes" | "1" => Value::from(true),
                "false" | "off" | "no" | "0" => Value::from(false),
                _ => return Err(self.invalid(format!("{text:?} is not true or false"))),
            },
            Kind::Integer { .. } => text
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| self.invalid(format!("{text:?} is not a whole number")))?,
            Kind::Choice(_) | Kind::Text(_) => Value::from(text),
            Kind::List { .. } => Value::from(
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .collect::<Vec<_>>(),
            ),
            Kind::Ports { .. } => {
                let mut ports = Vec::new();
                for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                    check_port(item).map_err(|why| self.invalid(why))?;
                    ports.push(Value::from(item.parse::<u16>().unwrap_or_default()));
                }
                Value::Array(ports)
            }
        };
        self.check(&value)
    }

    /// Checks a value (from the API or the database) and returns it as stored.
    pub fn check(&self, value: &Value) -> Result<Value, SettingError> {
        match self.kind {
            Kind::Bool => value
                .as_bool()
                .map(Value::from)
                .ok_or_else(|| self.invalid(format!("{value} is not true or false"))),
            Kind::Integer { min, max } => match value.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Value::from(n)),
                Some(n) => Err(self.invalid(format!("{n} is outside {min}..={max}"))),
                None => Err(self.invalid(format!("{value} is not a whole number"))),
            },
            Kind::Choice(choices) => match value.as_str() {
                Some(s) if choices.contains(&s) => Ok(Value::from(s)),
                _ => Err(self.invalid(format!("{value} is not one of {}", choices.join(", ")))),
            },
            Kind::Text(check) => {
                let text = value
                    .as_str()
                    .ok_or_else(|| self.invalid(format!("{value} is not text")))?;
                check(text).map_err(|why| self.invalid(why))?;
                Ok(Value::from(text))
            }
            Kind::List { max_items, check } => {
                let items = value
                    .as_array()
                    .ok_or_else(|| self.invalid(format!("{value} is not a list")))?;
                if items.len() > max_items {
                    return Err(self.invalid(format!("{} items, at most {max_items}", items.len())));
                }
                let mut checked = Vec::with_capacity(items.len());
                for item in items {
                    let text = item
                        .as_str()
                        .ok_or_else(|| self.invalid(format!("{item} is not text")))?;
                    check(text).map_err(|why| self.invalid(why))?;
                    checked.push(Value::from(text));
                }
                Ok(Value::Array(checked))
            }
            Kind::Ports { max_items } => {
                let items = value
                    .as_array()
                    .ok_or_else(|| self.invalid(format!("{value} is not a list of ports")))?;
                if items.len() > max_items {
                    return Err(self.invalid(format!("{} ports, at most {max_items}", items.len())));
                }
                let mut ports: Vec<u64> = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_u64() {
                        Some(p @ 1..=65535) => ports.push(p),
                        _ => return Err(self.invalid(format!("{item} is not a port (1 to 65535)"))),
                    }
                }
                ports.sort_unstable();
                ports.dedup();
                Ok(Value::from(ports))
            }
        }
    }
}

/// The settings in force, typed: defaults, then what is stored, then what the command line
/// says for this run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub server: String,
    pub interface: String,
    pub name: String,
    pub listen_port: u16,
    pub api_port: u16,
    pub keepalive: u16,
    pub mtu: u16,
    pub relays: String,
    pub party_subnet_any: bool,
    pub stun_servers: Vec<String>,
    pub port_mapping: bool,
    pub game_detection: bool,
    pub broadcast_capture: bool,
    pub threads: u16,
    pub socket_buffer: u32,
    pub cpu_locality: bool,
    pub lane_small_packets: u16,
    pub lane_ports: Vec<u16>,
    pub discord_webhook: String,
    pub discord_bot_token: String,
    pub discord_channel: String,
    pub discord_api: String,
    pub discord_app_id: String,
    pub log_level: String,
    pub log_file: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_values(&BTreeMap::new())
    }
}

impl Settings {
    /// Settings from checked values by key; keys not given take their defaults.
    pub fn from_values(values: &BTreeMap<String, Value>) -> Settings {
        let object = SPECS
            .iter()
            .map(|spec| {
                let value = values
                    .get(spec.key)
                    .and_then(|v| spec.check(v).ok())
                    .unwrap_or_else(|| spec.default_value());
                (spec.key.to_owned(), value)
            })
            .collect();
        // Every value passed its check, which admits only what the fields can hold.
        serde_json::from_value(Value::Object(object))
            .unwrap_or_else(|e| unreachable!("a checked setting does not fit its field: {e}"))
    }

    /// The value of `key`, as JSON.
    pub fn get(&self, key: &str) -> Result<Value, SettingError> {
        let spec = spec(key)?;
        let all = serde_json::to_value(self).unwrap_or_default();
        Ok(all
            .get(spec.key)
            .cloned()
            .unwrap_or_else(|| spec.default_value()))
    }
}

/// Stored values (raw JSON text by key) checked: the good ones, and a complaint for each one
/// that is not (it is then left to its default, and kept in the database untouched).
pub fn check_stored(
    stored: &BTreeMap<String, String>,
) -> (BTreeMap<String, Value>, Vec<SettingError>) {
    let mut values = BTreeMap::new();
    let mut bad = Vec::new();
    for (key, raw) in stored {
        let checked = spec(key).and_then(|spec| {
            let value: Value = serde_json::from_str(raw)
                .map_err(|e| spec.invalid(format!("stored value {raw:?} is not JSON: {e}")))?;
            spec.check(&value)
        });
        match checked {
            Ok(value) => {
                values.insert(key.clone(), value);
            }
            Err(e) => bad.push(e),
        }
    }
    (values, bad)
}

fn check_server_url(url: &str) -> Result<(), String> {
    check_optional_url(url)
}

fn check_optional_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Ok(());
    }
    check_required_url(url)
}

fn check_required_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    if rest.is_empty()
        || url.len() > 256
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{url:?} is not a URL such as http://203.0.113.5:8667"
        ));
    }
    Ok(())
}

/// Linux interface names: 1 to 15 bytes, no `/`, whitespace or `:`, not `.` or `..`.
fn check_interface_name(name: &str) -> Result<(), String> {
    let fine = (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an interface name (1 to 15 letters, digits, '-', '_' or '.')"
        ))
    }
}

fn check_member_name(name: &str) -> Result<(), String> {
    if name.len() > 64 || name.chars().any(char::is_control) {
        return Err("at most 64 bytes, no control characters".into());
    }
    Ok(())
}

fn check_host_port(item: &str) -> Result<(), String> {
    let (host, port) = item
        .rsplit_once(':')
        .ok_or_else(|| format!("{item:?} is not HOST:PORT"))?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && !host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/');
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(format!("{item:?} is not HOST:PORT"))
    }
}

fn check_port(port: &str) -> Result<(), String> {
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port (1 to 65535)")),
    }
}

/// Discord ids ("snowflakes") are decimal numbers.
fn check_snowflake(id: &str) -> Result<(), String> {
    if id.is_empty() || (id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())) {
        Ok(())
    } else {
        Err("a Discord id is a number of up to 20 digits".into())
    }
}

fn check_token(token: &str) -> Result<(), String> {
    if token.len() <= 128 && token.chars().all(|c| c.is_ascii_graphic()) {
        Ok(())
    } else {
        Err("not a bot token (up to 128 printable characters, no spaces)".into())
    }
}

fn check_log_file(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    if !path.starts_with('/') || path.chars().any(char::is_control) {
        return Err(format!("{path:?} is not an absolute path"));
    }
    // `..` would step out of the allowed directories (`check_log_file_place`) while the
    // text still starts with one of them.
    if path.split('/').any(|part| part == "..") {
        return Err(format!("{path:?} may not contain \"..\""));
    }
    Ok(())
}

/// The directory for log files besides the data directory (`log_file`).
pub const LOG_DIR: &str = "/var/log/lanrage";

/// Where `log_file` may point: inside the data directory or [`LOG_DIR`], and nowhere else.
/// The daemon runs as root and anyone allowed to change settings could otherwise have it
/// create or append to any file (text they choose, such as a party's name, ends up in the
/// log). Both directories belong to root, so nobody else can plant a link in them. This needs
/// the daemon's data directory, which the per-key check ([`Spec::check`]) does not know: the
/// daemon applies it on top.
pub fn check_log_file_place(path: &str, data_dir: &std::path::Path) -> Result<(), SettingError> {
    use std::path::{Component, Path};
    if path.is_empty() {
        return Ok(());
    }
    let invalid = |why: String| SettingError::Invalid {
        key: "log_file".into(),
        why,
    };
    check_log_file(path).map_err(invalid)?;
    let file = Path::new(path);
    let normal = |p: &Path| -> std::path::PathBuf {
        p.components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
    };
    let data_dir = normal(data_dir);
    let inside = |dir: &Path| file.starts_with(dir) && file != dir && file.file_name().is_some();
    if inside(&data_dir) || inside(Path::new(LOG_DIR)) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{path:?} is outside the directories a log file may be in: the data directory {} or {LOG_DIR}",
            data_dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_every_field_and_pass_their_own_checks() {
        let settings = Settings::default();
        assert_eq!((settings.keepalive, settings.mtu), (25, 1420));
        assert_eq!(settings.interface, "lanrage0");
        assert_eq!(settings.stun_servers.len(), 3);
        for spec in SPECS {
            assert_eq!(spec.check(&spec.default_value()), Ok(spec.default_value()));
            assert_eq!(settings.get(spec.key).unwrap(), spec.default_value());
        }
    }

    #[test]
    fn text_is_parsed_and_checked_by_kind() {
        let parse = |key: &str, text: &str| spec(key).unwrap().parse_text(text);
        assert_eq!(parse("mtu", "1380"), Ok(Value::from(1380)));
        assert!(parse("mtu", "9000").is_err());
        assert!(parse("mtu", "-1").is_err());
        assert_eq!(parse("port_mapping", "off"), Ok(Value::from(false)));
        assert!(parse("port_mapping", "maybe").is_err());
        assert_eq!(parse("relays", "off"), Ok(Value::from("off")));
        assert!(parse("relays", "sometimes").is_err());
        assert_eq!(
            parse("stun_servers", "a.example:3478, b.example:19302"),
            Ok(serde_json::json!(["a.example:3478", "b.example:19302"]))
        );
        assert_eq!(parse("stun_servers", ""), Ok(serde_json::json!([])));
        assert!(parse("stun_servers", "no-port").is_err());
        assert_eq!(
            parse("lane_ports", "27015, 6112,6112"),
            Ok(serde_json::json!([6112, 27015]))
        );
        assert!(parse("lane_ports", "0").is_err());
        assert!(parse("lane_ports", "http").is_err());
        assert!(parse("server", "ftp://x").is_err());
        assert!(parse("server", "http://203.0.113.5:8667").is_ok());
        assert!(parse("interface", "a-very-long-interface-name").is_err());
        assert!(parse("interface", "lr0").is_ok());
        assert!(parse("log_file", "relative.log").is_err());
        assert!(parse("log_file", "/var/log/lanrage/../../etc/x").is_err());
        assert_eq!(
            spec("colour").unwrap_err(),
            SettingError::UnknownKey("colour".into())
        );
    }

    #[test]
    fn bad_stored_values_are_reported_and_left_to_their_defaults() {
        let stored: BTreeMap<String, String> = [
            ("mtu", "1380"),
            ("keepalive", "\"often\""),
            ("threads", "{broken"),
            ("retired_setting", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (values, bad) = check_stored(&stored);
        let settings = Settings::from_values(&values);
        assert_eq!(
            (settings.mtu, settings.keepalive, settings.threads),
            (1380, 25, 0)
        );
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad.iter().any(|e| e.to_string().starts_with("keepalive:")));
        assert!(bad.contains(&SettingError::UnknownKey("retired_setting".into())));
    }

    #[test]
    fn a_log_file_only_in_the_data_directory_or_the_log_directory() {
        let data = std::path::Path::new("/var/lib/lanrage");
        for ok in [
            "",
            "/var/lib/lanrage/daemon.log",
            "/var/log/lanrage/daemon.log",
        ] {
            assert_eq!(check_log_file_place(ok, data), Ok(()), "{ok}");
        }
        for bad in [
            "/root/x",
            "/etc/cron.d/x",
            "/var/lib/lanrage",
            "/var/log/lanrage",
            "/var/log/lanrage-other/x",
            "/var/lib/lanrage/../../../etc/passwd",
            "relative.log",
        ] {
            let e = check_log_file_place(bad, data).unwrap_err().to_string();
            assert!(e.starts_with("log_file: "), "{bad}: {e}");
        }
        let e = check_log_file_place("/root/x", data)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/var/lib/lanrage") && e.contains("/var/log/lanrage"),
            "the error names the allowed directories: {e}"
        );
    }
}
