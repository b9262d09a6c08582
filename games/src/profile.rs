//! Game profiles: what a game needs from the virtual LAN (ports, how it discovers other
//! players, tunnel tuning), loaded from the embedded table and user files in the data
//! directory.
//!
//! Loading never fails as a whole: each entry is parsed and checked on its own so that one
//! mistake in a user file costs that one game, not the whole table. Every rejected entry comes
//! back as a [`ProfileError`] that names the file, the game and (where known) the field.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::collections::btree_map::Values;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

/// The table shipped with the binary, so detection works with no data directory at all.
const EMBEDDED_JSON: &str = include_str!("../data/profiles.json");

/// Source name used in errors about the embedded table, which has no path.
const EMBEDDED_SOURCE: &str = "embedded";

/// Tunnel MTUs outside this range either break IPv6 (below 1280) or exceed Ethernet.
const MTU_RANGE: std::ops::RangeInclusive<u16> = 1280..=1500;

/// Longer keepalives than an hour would let NAT mappings expire anyway.
const MAX_KEEPALIVE: u16 = 3600;

/// Transport a game's ports use; decides which firewall and forwarding rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
    Both,
}

/// How urgently the tunnel should schedule this game's packets relative to other traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Medium,
    High,
}

/// How a game's servers answer a status query (for the server browser's player count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerQuery {
    /// Valve's A2S_INFO on the server's port (see `a2s`).
    A2s,
}

/// A destination the game sends LAN discovery packets to; the mesh has to forward these to
/// peers because broadcast and multicast do not cross a routed tunnel on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Discovery {
    pub address: IpAddr,
    pub port: u16,
}

/// Everything LANrage knows about one game.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameProfile {
    /// Taken from the entry's key, so files cannot disagree with themselves about it.
    #[serde(skip)]
    pub id: String,
    pub name: String,
    /// Process name as it appears on Windows; used to recognise a running game.
    pub executable: String,
    pub ports: Vec<u16>,
    pub protocol: Protocol,
    pub broadcast: bool,
    pub multicast: bool,
    /// Empty when the game's discovery destinations are not known.
    #[serde(default)]
    pub discovery: Vec<Discovery>,
    /// How its servers answer a status query, where they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<ServerQuery>,
    /// Suggested WireGuard persistent keepalive, in seconds.
    pub keepalive: u16,
    /// Suggested tunnel MTU.
    pub mtu: u16,
    pub description: String,
    pub low_latency: bool,
    pub high_bandwidth: bool,
    pub packet_priority: Priority,
}

impl GameProfile {
    /// The UDP ports the game sends LAN discovery to: those of its known discovery
    /// destinations, or, where none are known but it broadcasts or multicasts, its UDP ports.
    pub fn discovery_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = if !self.discovery.is_empty() {
            self.discovery.iter().map(|d| d.port).collect()
        } else if (self.broadcast || self.multicast) && self.protocol != Protocol::Tcp {
            self.ports.clone()
        } else {
            Vec::new()
        };
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// Why one entry (or one whole file) was not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    /// File path, or `"embedded"` for the built-in table.
    pub source: String,
    /// Game id (the entry's key); `None` when the whole file was rejected.
    pub game: Option<String>,
    /// Offending field, where it could be determined.
    pub field: Option<String>,
    pub message: String,
}

impl ProfileError {
    fn file(source: &str, message: impl Into<String>) -> Self {
        ProfileError {
            source: source.to_owned(),
            game: None,
            field: None,
            message: message.into(),
        }
    }

    fn entry(source: &str, game: &str, field: Option<&str>, message: impl Into<String>) -> Self {
        ProfileError {
            source: source.to_owned(),
            game: Some(game.to_owned()),
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(game) = &self.game {
            write!(f, ": game {game:?}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ProfileError {}

/// All known games, keyed by id. A `BTreeMap` keeps iteration (and therefore UI listings and
/// executable look-ups that hit several games) deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileSet {
    profiles: BTreeMap<String, GameProfile>,
}

impl ProfileSet {
    /// The built-in table only. Errors here mean the shipped data is broken, which the tests
    /// guard against; they are still returned rather than panicking.
    pub fn embedded() -> (ProfileSet, Vec<ProfileError>) {
        let mut set = ProfileSet::default();
        let errors = set.extend_from_json(EMBEDDED_SOURCE, EMBEDDED_JSON);
        (set, errors)
    }

    /// The built-in table, then every `*.json` in `data_dir/games/` in file-name order, so
    /// users can fix or add games without a new release. A later entry with an existing id
    /// replaces the earlier one; an invalid entry is skipped and leaves the earlier one in
    /// place. A missing `games/` directory is normal and not an error.
    pub fn load(data_dir: &Path) -> (ProfileSet, Vec<ProfileError>) {
        let (mut set, mut errors) = ProfileSet::embedded();
        let dir = data_dir.join("games");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (set, errors),
            Err(e) => {
                errors.push(ProfileError::file(
                    &dir.display().to_string(),
                    format!("cannot read directory: {e}"),
                ));
                return (set, errors);
            }
        };
        let mut files = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => {
                    let path = entry.path();
                    let is_json = path
                        .extension()
                        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
                    if is_json && path.is_file() {
                        files.push(path);
                    }
                }
                Err(e) => errors.push(ProfileError::file(
                    &dir.display().to_string(),
                    format!("cannot list directory: {e}"),
                )),
            }
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        for path in files {
            let source = path.display().to_string();
            match std::fs::read_to_string(&path) {
                Ok(text) => errors.extend(set.extend_from_json(&source, &text)),
                Err(e) => errors.push(ProfileError::file(&source, format!("cannot read: {e}"))),
            }
        }
        (set, errors)
    }

    /// Adds (or replaces) the valid entries of one JSON document; `source` names it in errors.
    /// A document that is not a JSON object contributes nothing and yields a single error.
    pub fn extend_from_json(&mut self, source: &str, json: &str) -> Vec<ProfileError> {
        let mut errors = Vec::new();
        let map: Map<String, Value> = match serde_json::from_str(json) {
            Ok(map) => map,
            Err(e) => {
                let message = if e.is_data() {
                    "expected a JSON object of game entries".to_owned()
                } else {
                    format!("not valid JSON: {e}")
                };
                errors.push(ProfileError::file(source, message));
                return errors;
            }
        };
        for (id, value) in map {
            match parse_entry(source, &id, value) {
                Ok(profile) => {
                    self.profiles.insert(id, profile);
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    pub fn get(&self, id: &str) -> Option<&GameProfile> {
        self.profiles.get(id)
    }

    /// Profiles in id order.
    pub fn iter(&self) -> Values<'_, String, GameProfile> {
        self.profiles.values()
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// Finds the game whose executable is `name`, ignoring case and a `.exe` suffix on either
    /// side, because process lists differ in both across platforms and tools. When several
    /// games share an executable (e.g. `hl.exe`), the one with the smallest id wins.
    pub fn by_executable(&self, name: &str) -> Option<&GameProfile> {
        let wanted = normalize_executable(name);
        self.iter()
            .find(|p| normalize_executable(&p.executable) == wanted)
    }
}

impl<'a> IntoIterator for &'a ProfileSet {
    type Item = &'a GameProfile;
    type IntoIter = Values<'a, String, GameProfile>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

fn normalize_executable(name: &str) -> String {
    let lower = name.to_lowercase();
    match lower.strip_suffix(".exe") {
        Some(stem) => stem.to_owned(),
        None => lower,
    }
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Parses and validates one entry on its own, so its errors can name the game.
fn parse_entry(source: &str, id: &str, value: Value) -> Result<GameProfile, ProfileError> {
    if !is_valid_id(id) {
        return Err(ProfileError::entry(
            source,
            id,
            None,
            "id must be non-empty and contain only a-z, 0-9 and _",
        ));
    }
    let Value::Object(obj) = value else {
        return Err(ProfileError::entry(
            source,
            id,
            None,
            format!("entry must be a JSON object, found {}", value_kind(&value)),
        ));
    };
    let mut profile: GameProfile = match serde_json::from_value(Value::Object(obj.clone())) {
        Ok(profile) => profile,
        Err(e) => {
            let (field, message) = locate_serde_error(&obj, &e);
            return Err(ProfileError::entry(source, id, field, message));
        }
    };
    profile.id = id.to_owned();
    validate(&profile)
        .map_err(|(field, message)| ProfileError::entry(source, id, Some(field), message))?;
    Ok(profile)
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// serde_json's messages for a whole struct do not say which field had the wrong type, so
/// each present field is re-checked on its own to find the culprit.
fn locate_serde_error(
    obj: &Map<String, Value>,
    err: &serde_json::Error,
) -> (Option<&'static str>, String) {
    fn check<T: serde::de::DeserializeOwned>(
        obj: &Map<String, Value>,
        field: &'static str,
    ) -> Option<(Option<&'static str>, String)> {
        let value = obj.get(field)?;
        serde_json::from_value::<T>(value.clone())
            .err()
            .map(|e| (Some(field), e.to_string()))
    }

    let found = check::<String>(obj, "name")
        .or_else(|| check::<String>(obj, "executable"))
        .or_else(|| check::<Vec<u16>>(obj, "ports"))
        .or_else(|| check::<Protocol>(obj, "protocol"))
        .or_else(|| check::<bool>(obj, "broadcast"))
        .or_else(|| check::<bool>(obj, "multicast"))
        .or_else(|| check::<Vec<Discovery>>(obj, "discovery"))
        .or_else(|| check::<ServerQuery>(obj, "query"))
        .or_else(|| check::<u16>(obj, "keepalive"))
        .or_else(|| check::<u16>(obj, "mtu"))
        .or_else(|| check::<String>(obj, "description"))
        .or_else(|| check::<bool>(obj, "low_latency"))
        .or_else(|| check::<bool>(obj, "high_bandwidth"))
        .or_else(|| check::<Priority>(obj, "packet_priority"));
    if let Some(found) = found {
        return found;
    }
    let message = err.to_string();
    if let Some(field) = missing_field_name(&message) {
        return (Some(field), "required field is missing".to_owned());
    }
    (None, message)
}

/// Maps serde's "missing field `x`" message back to our static field name.
fn missing_field_name(message: &str) -> Option<&'static str> {
    const FIELDS: [&str; 12] = [
        "name",
        "executable",
        "ports",
        "protocol",
        "broadcast",
        "multicast",
        "keepalive",
        "mtu",
        "description",
        "low_latency",
        "high_bandwidth",
        "packet_priority",
    ];
    let rest = message.strip_prefix("missing field `")?;
    let name = rest.split('`').next()?;
    FIELDS.into_iter().find(|f| *f == name)
}

/// Rules serde cannot express; returns the offending field and why.
fn validate(p: &GameProfile) -> Result<(), (&'static str, String)> {
    if p.name.trim().is_empty() {
        return Err(("name", "must not be empty".to_owned()));
    }
    if p.executable.trim().is_empty() {
        return Err(("executable", "must not be empty".to_owned()));
    }
    if p.ports.is_empty() {
        return Err(("ports", "at least one port is required".to_owned()));
    }
    if p.ports.contains(&0) {
        return Err(("ports", "port 0 is not a valid port".to_owned()));
    }
    if !MTU_RANGE.contains(&p.mtu) {
        return Err((
            "mtu",
            format!(
                "{} is outside {}..={}",
                p.mtu,
                MTU_RANGE.start(),
                MTU_RANGE.end()
            ),
        ));
    }
    if p.keepalive > MAX_KEEPALIVE {
        return Err((
            "keepalive",
            format!("{} is above the maximum of {MAX_KEEPALIVE}", p.keepalive),
        ));
    }
    for d in &p.discovery {
        let is_broadcast = match d.address {
            IpAddr::V4(v4) => v4.is_broadcast(),
            IpAddr::V6(_) => false,
        };
        if !is_broadcast && !d.address.is_multicast() {
            return Err((
                "discovery",
                format!(
                    "{} is neither the broadcast address 255.255.255.255 nor a multicast group",
                    d.address
                ),
            ));
        }
        if d.port == 0 {
            return Err((
                "discovery",
                format!("port 0 is not valid for {}", d.address),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scratch data directory that removes itself, even when a test fails.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir().join(format!(
                "lanrage-games-test-{}-{}-{}",
                std::process::id(),
                nanos,
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(path.join("games")).unwrap();
            TempDir(path)
        }

        fn write(&self, file: &str, text: &str) -> PathBuf {
            let path = self.0.join("games").join(file);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn entry_json(name: &str, exe: &str, port: u16) -> String {
        format!(
            r#"{{"name": "{name}", "executable": "{exe}", "ports": [{port}], "protocol": "udp",
                "broadcast": false, "multicast": false, "keepalive": 25, "mtu": 1420,
                "description": "test", "low_latency": true, "high_bandwidth": false,
                "packet_priority": "medium"}}"#
        )
    }

    fn error_for<'a>(errors: &'a [ProfileError], game: &str) -> &'a ProfileError {
        errors
            .iter()
            .find(|e| e.game.as_deref() == Some(game))
            .unwrap_or_else(|| panic!("no error for {game}: {errors:?}"))
    }

    #[test]
    fn embedded_loads_cleanly_with_enough_games() {
        let (set, errors) = ProfileSet::embedded();
        assert!(errors.is_empty(), "{errors:#?}");
        assert!(set.len() >= 100, "only {} profiles", set.len());
        assert!(!set.is_empty());
    }

    #[test]
    fn embedded_ids_are_unique_well_formed_and_valid() {
        // The raw map would silently merge duplicate keys, so count them in the text too.
        let mut seen = HashSet::new();
        for line in EMBEDDED_JSON.lines() {
            if let Some(rest) = line.strip_prefix("  \"")
                && let Some((key, tail)) = rest.split_once('"')
                && tail.trim_start().starts_with(":")
            {
                assert!(seen.insert(key.to_owned()), "duplicate id {key}");
            }
        }
        let (set, _) = ProfileSet::embedded();
        assert_eq!(seen.len(), set.len());
        for p in &set {
            assert!(is_valid_id(&p.id), "bad id {:?}", p.id);
            assert_eq!(set.get(&p.id), Some(p));
            assert_eq!(validate(p), Ok(()), "{}", p.id);
            assert!(p.ports.len() <= 10, "{} lists too many ports", p.id);
            assert!(
                !p.description.trim().is_empty(),
                "{} has no description",
                p.id
            );
            if !p.discovery.is_empty() {
                assert!(
                    p.broadcast || p.multicast,
                    "{} has discovery but no flag",
                    p.id
                );
            }
        }
    }

    #[test]
    fn embedded_has_reference_games() {
        let (set, _) = ProfileSet::embedded();

        let mc = set.get("minecraft_java").unwrap();
        assert!(mc.multicast);
        assert!(mc.ports.contains(&25565));
        assert!(mc.discovery.contains(&Discovery {
            address: "224.0.2.60".parse().unwrap(),
            port: 4445,
        }));

        let wc3 = set.get("warcraft3").unwrap();
        assert!(wc3.ports.contains(&6112));
        assert!(wc3.broadcast);

        let terraria = set.get("terraria").unwrap();
        assert!(terraria.ports.contains(&7777));

        let source = set.iter().find(|p| p.id == "css" || p.id == "tf2").unwrap();
        assert!(source.ports.contains(&27015));
        assert!(source.broadcast);
    }

    #[test]
    fn discovery_ports_come_from_discovery_destinations_or_broadcast_ports() {
        let (set, _) = ProfileSet::embedded();
        // Known destinations win: Minecraft's server port 25565 is not a discovery port.
        assert_eq!(set.get("minecraft_java").unwrap().discovery_ports(), [4445]);
        assert!(
            set.get("warcraft3")
                .unwrap()
                .discovery_ports()
                .contains(&6112)
        );
        // TCP-only games send no UDP discovery.
        let tcp_only = set
            .iter()
            .find(|p| p.protocol == Protocol::Tcp && p.discovery.is_empty())
            .unwrap();
        assert!(tcp_only.discovery_ports().is_empty());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut set = ProfileSet::default();
        let json = r#"{"foo": {"name": "Foo", "executable": "foo.exe", "ports": [1234],
            "protocol": "both", "broadcast": true, "multicast": false, "keepalive": 0,
            "mtu": 1280, "description": "d", "low_latency": false, "high_bandwidth": true,
            "packet_priority": "low", "id": "ignored", "future_field": {"x": [1, 2]}}}"#;
        let errors = set.extend_from_json("test.json", json);
        assert!(errors.is_empty(), "{errors:?}");
        let foo = set.get("foo").unwrap();
        assert_eq!(foo.id, "foo");
        assert_eq!(foo.protocol, Protocol::Both);
        assert_eq!(foo.packet_priority, Priority::Low);
        assert!(foo.discovery.is_empty());
    }

    #[test]
    fn malformed_entries_are_reported_and_others_still_load() {
        let dir = TempDir::new();
        let good = entry_json("Good", "good.exe", 4000);
        let json = format!(
            r#"{{
                "good": {good},
                "bad_ports": {{"name": "X", "executable": "x.exe", "ports": "7777", "protocol": "udp",
                    "broadcast": false, "multicast": false, "keepalive": 25, "mtu": 1420,
                    "description": "d", "low_latency": true, "high_bandwidth": false,
                    "packet_priority": "high"}},
                "no_name": {{"executable": "x.exe", "ports": [1], "protocol": "udp",
                    "broadcast": false, "multicast": false, "keepalive": 25, "mtu": 1420,
                    "description": "d", "low_latency": true, "high_bandwidth": false,
                    "packet_priority": "high"}},
                "big_mtu": {big_mtu},
                "unicast": {unicast},
                "port_zero": {port_zero},
                "bad_query": {bad_query},
                "Bad-Id": {good},
                "not_object": 5
            }}"#,
            big_mtu = entry_json("M", "m.exe", 1).replace("\"mtu\": 1420", "\"mtu\": 9000"),
            unicast = entry_json("U", "u.exe", 1).replace(
                "\"broadcast\": false",
                r#""broadcast": true, "discovery": [{"address": "192.168.1.10", "port": 6112}]"#
            ),
            port_zero = entry_json("Z", "z.exe", 0),
            bad_query = entry_json("Q", "q.exe", 1).replace(
                "\"broadcast\": false",
                r#""broadcast": false, "query": "gamespy""#
            ),
        );
        let path = dir.write("custom.json", &json);
        let (set, errors) = ProfileSet::load(&dir.0);
        let source = path.display().to_string();

        assert_eq!(errors.len(), 8, "{errors:#?}");
        assert!(errors.iter().all(|e| e.source == source), "{errors:#?}");

        let e = error_for(&errors, "bad_ports");
        assert_eq!(e.field.as_deref(), Some("ports"));
        let e = error_for(&errors, "no_name");
        assert_eq!(e.field.as_deref(), Some("name"));
        let e = error_for(&errors, "big_mtu");
        assert_eq!(e.field.as_deref(), Some("mtu"));
        assert_eq!(
            e.to_string(),
            format!("{source}: game \"big_mtu\": field \"mtu\": 9000 is outside 1280..=1500")
        );
        let e = error_for(&errors, "unicast");
        assert_eq!(e.field.as_deref(), Some("discovery"));
        assert!(e.message.contains("192.168.1.10"));
        let e = error_for(&errors, "port_zero");
        assert_eq!(e.field.as_deref(), Some("ports"));
        let e = error_for(&errors, "bad_query");
        assert_eq!(e.field.as_deref(), Some("query"));
        assert_eq!(error_for(&errors, "Bad-Id").field, None);
        assert_eq!(error_for(&errors, "not_object").field, None);

        let good = set.get("good").unwrap();
        assert_eq!(good.ports, vec![4000]);
        for bad in [
            "bad_ports",
            "no_name",
            "big_mtu",
            "unicast",
            "port_zero",
            "bad_query",
            "Bad-Id",
        ] {
            assert!(set.get(bad).is_none(), "{bad} should not load");
        }
        let (embedded, _) = ProfileSet::embedded();
        assert_eq!(set.len(), embedded.len() + 1);
    }

    #[test]
    fn invalid_override_keeps_the_earlier_entry() {
        let dir = TempDir::new();
        let bad = entry_json("Broken", "broken.exe", 1).replace("\"mtu\": 1420", "\"mtu\": 100");
        dir.write("a.json", &format!(r#"{{"terraria": {bad}}}"#));
        let (set, errors) = ProfileSet::load(&dir.0);
        assert_eq!(errors.len(), 1);
        assert_eq!(set.get("terraria").unwrap().name, "Terraria");
    }

    #[test]
    fn non_object_and_non_json_files_are_one_error_each() {
        let dir = TempDir::new();
        let array = dir.write("array.json", "[1, 2, 3]");
        let garbage = dir.write("garbage.json", "this is { not json");
        dir.write("ignored.txt", "not even looked at");
        let (set, errors) = ProfileSet::load(&dir.0);
        let (embedded, _) = ProfileSet::embedded();

        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(errors[0].source, array.display().to_string());
        assert_eq!(errors[1].source, garbage.display().to_string());
        assert!(errors.iter().all(|e| e.game.is_none() && e.field.is_none()));
        assert!(
            errors[1]
                .to_string()
                .starts_with(&garbage.display().to_string())
        );
        assert_eq!(set, embedded);
    }

    #[test]
    fn missing_games_dir_is_not_an_error() {
        let dir = TempDir::new();
        let empty = dir.0.join("nothing-here");
        let (set, errors) = ProfileSet::load(&empty);
        assert!(errors.is_empty());
        assert_eq!(set, ProfileSet::embedded().0);
    }

    #[test]
    fn override_and_extend_from_data_dir() {
        let dir = TempDir::new();
        let over = entry_json("Terraria (custom port)", "Terraria.exe", 7778);
        let new = entry_json("My Indie Game", "indie.exe", 5555);
        dir.write("10-override.json", &format!(r#"{{"terraria": {over}}}"#));
        dir.write("20-extend.json", &format!(r#"{{"my_indie_game": {new}}}"#));
        // Later files win: this one sorts last and overrides the first override.
        let last = entry_json("Terraria (final)", "Terraria.exe", 7779);
        dir.write("30-last.json", &format!(r#"{{"terraria": {last}}}"#));

        let (set, errors) = ProfileSet::load(&dir.0);
        assert!(errors.is_empty(), "{errors:#?}");
        let (embedded, _) = ProfileSet::embedded();
        assert_eq!(set.len(), embedded.len() + 1);

        let terraria = set.get("terraria").unwrap();
        assert_eq!(terraria.name, "Terraria (final)");
        assert_eq!(terraria.ports, vec![7779]);
        assert_eq!(terraria.id, "terraria");

        let indie = set.get("my_indie_game").unwrap();
        assert_eq!(indie.id, "my_indie_game");
        assert_eq!(set.by_executable("INDIE").unwrap().id, "my_indie_game");

        let path = dir.0.clone();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn by_executable_ignores_case_and_exe_suffix() {
        let (set, _) = ProfileSet::embedded();
        for name in ["javaw.exe", "JAVAW", "javaw", "JavaW.EXE"] {
            assert_eq!(
                set.by_executable(name).unwrap().id,
                "minecraft_java",
                "{name}"
            );
        }
        assert_eq!(set.by_executable("WAR3").unwrap().id, "warcraft3");
        assert!(set.by_executable("java").is_none());
        assert!(set.by_executable("javaw.exe.bak").is_none());
        assert!(set.by_executable("").is_none());

        let mut custom = ProfileSet::default();
        let errors = custom.extend_from_json(
            "t",
            &format!(r#"{{"x": {}}}"#, entry_json("X", "server", 1)),
        );
        assert!(errors.is_empty());
        assert_eq!(custom.by_executable("SERVER.exe").unwrap().id, "x");
    }

    #[test]
    fn display_omits_missing_parts() {
        let e = ProfileError::file("games/x.json", "expected a JSON object of game entries");
        assert_eq!(
            e.to_string(),
            "games/x.json: expected a JSON object of game entries"
        );
        let e = ProfileError::entry("embedded", "foo", None, "bad");
        assert_eq!(e.to_string(), "embedded: game \"foo\": bad");
    }
}
