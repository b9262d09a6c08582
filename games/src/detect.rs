//! Recognising running games from snapshots of the process list and of listening sockets.
//!
//! The detector is sans-IO: it never lists processes, opens sockets or reads a clock. The
//! caller takes the snapshots (however the platform allows) and passes them to
//! [`Detector::scan`], which compares them with the game profiles and reports what changed
//! since the previous scan. That keeps the matching rules testable and platform-neutral.

use crate::profile::{GameProfile, ProfileSet, Protocol};
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

/// A process name must match a profile's executable at least this well to detect the game.
pub const MIN_CONFIDENCE: f32 = 0.8;

/// Linux cuts a process's `comm` name to 15 bytes, so a long executable shows up as a prefix
/// of itself; that is almost as good as an exact match.
const TRUNCATED_SCORE: f32 = 0.95;

/// Native Linux builds are often the Windows name plus a platform tag (`Terraria.bin.x86_64`,
/// `et.x86`, `hl2_linux`); slightly less certain than a truncated name.
const PLATFORM_SUFFIX_SCORE: f32 = 0.9;

/// Linux `comm` length in bytes (`TASK_COMM_LEN` minus the terminating NUL).
const COMM_LEN: usize = 15;

/// Tags appended to an executable's name by Linux builds, after a `.`, `_` or `-`.
const PLATFORM_SUFFIXES: &[&str] = &[
    "bin.x86_64",
    "bin.x86",
    "bin",
    "x86_64",
    "x86",
    "x64",
    "amd64",
    "arm64",
    "aarch64",
    "linux",
    "linux64",
    "64",
    "sh",
];

/// Taken off every inexact similarity score, so that an inexact name never ties with an exact
/// one and a single edit on a name shorter than 7 characters stays below [`MIN_CONFIDENCE`]
/// (`java` is not `javaw`, `quake2` is not `quake3`).
const NEAR_MISS_PENALTY: f32 = 0.05;

/// Added to a process match when one of the profile's ports is listening: corroborating, but
/// never enough on its own because many games share ports (27015).
const PORT_BONUS: f32 = 0.05;

/// A game found running.
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    /// The profile's id.
    pub id: String,
    /// The profile's display name.
    pub name: String,
    /// How sure the match is, in `0.0..=1.0`; at least [`MIN_CONFIDENCE`].
    pub confidence: f32,
    /// The process name that matched, as the caller passed it.
    pub process: Option<String>,
    /// The profile's ports that were seen listening with a compatible protocol, in the
    /// profile's order.
    pub ports: Vec<u16>,
}

/// What changed between two scans.
#[derive(Debug, Clone, PartialEq)]
pub enum GameEvent {
    /// The game was not detected at the previous scan and is now.
    Started(Detected),
    /// The game was detected at the previous scan and is not any more; carries the last
    /// [`Detected`] seen for it.
    Stopped(Detected),
}

impl GameEvent {
    /// The game this event is about.
    pub fn detected(&self) -> &Detected {
        match self {
            GameEvent::Started(d) | GameEvent::Stopped(d) => d,
        }
    }
}

/// How well a process name matches a profile's executable, in `0.0..=1.0`:
/// 1.0 when equal ignoring ASCII case and a `.exe` suffix on either side, 0.95 for a Linux
/// name truncated to 15 bytes, 0.9 for the name plus a Linux platform tag, otherwise a
/// normalized edit-distance similarity (lower for near misses, 0.0 for unrelated names).
pub fn executable_match(executable: &str, process: &str) -> f32 {
    score(&Name::new(executable), &Name::new(process), 0.0)
}

/// The profiles that use any of the listening ports with a compatible protocol, in id order.
/// Only a hint (for example for a UI): ports alone do not detect a game, since many games
/// share them.
pub fn candidates_by_port<'a>(
    profiles: &'a ProfileSet,
    listening: &[(Protocol, u16)],
) -> Vec<&'a GameProfile> {
    let listen = Listening::new(listening);
    profiles
        .iter()
        .filter(|p| p.ports.iter().any(|&port| listen.has(p.protocol, port)))
        .collect()
}

/// Tracks which games run, from one scan to the next.
#[derive(Debug, Clone, Default)]
pub struct Detector {
    /// Normalized executable names, in the profile set's (id) order; rebuilt only when the
    /// ids or executables change.
    cache: Vec<CachedProfile>,
    /// Games detected at the last scan, by id.
    running: BTreeMap<String, Detected>,
}

#[derive(Debug, Clone)]
struct CachedProfile {
    id: String,
    executable: String,
    name: Name,
}

impl Detector {
    pub fn new() -> Self {
        Self::default()
    }

    /// One scan: `processes` are the names of running processes as the OS gives them
    /// (`war3.exe`, `War3.exe`, `war3`, or a Linux `comm` cut to 15 bytes), `listening` the
    /// ports with a listening socket. Returns what changed since the last scan: `Stopped`
    /// events first, then `Started`, each in id order. A game that keeps running yields no
    /// event even if its confidence or ports change; [`Detector::running`] shows those.
    pub fn scan(
        &mut self,
        profiles: &ProfileSet,
        processes: &[&str],
        listening: &[(Protocol, u16)],
    ) -> Vec<GameEvent> {
        self.refresh_cache(profiles);
        let listen = Listening::new(listening);
        let all: Vec<&GameProfile> = profiles.iter().collect();

        // Sorted and deduplicated, so that ties between processes resolve the same way
        // whatever order the OS listed them in.
        let mut names: Vec<&str> = processes.to_vec();
        names.sort_unstable();
        names.dedup();

        // Per profile: the process score that detected it, and what to report.
        let mut found: BTreeMap<String, (f32, Detected)> = BTreeMap::new();
        for raw in names {
            let process = Name::new(raw);
            if process.stem().is_empty() {
                continue;
            }
            // One process yields at most one game: the best score, then the most listening
            // ports, then the smallest id (profiles are iterated in id order, so a full tie
            // keeps the first).
            let mut best: Option<(f32, usize, &GameProfile)> = None;
            for (cached, &profile) in self.cache.iter().zip(&all) {
                let s = score(&cached.name, &process, MIN_CONFIDENCE);
                if s < MIN_CONFIDENCE {
                    continue;
                }
                let ports = listen.count(profile);
                let better = match best {
                    None => true,
                    Some((bs, bp, _)) => s > bs || (s == bs && ports > bp),
                };
                if better {
                    best = Some((s, ports, profile));
                }
            }
            let Some((s, _, profile)) = best else {
                continue;
            };
            let ports = listen.matching(profile);
            let confidence = if ports.is_empty() {
                s
            } else {
                (s + PORT_BONUS).min(1.0)
            };
            let detected = Detected {
                id: profile.id.clone(),
                name: profile.name.clone(),
                confidence,
                process: Some(raw.to_owned()),
                ports,
            };
            // The same profile is reported once even if several processes match it; the
            // best-matching process (the first in sorted order on a tie) names it.
            match found.entry(profile.id.clone()) {
                Entry::Vacant(e) => {
                    e.insert((s, detected));
                }
                Entry::Occupied(mut e) => {
                    if s > e.get().0 {
                        e.insert((s, detected));
                    }
                }
            }
        }

        let now: BTreeMap<String, Detected> = found.into_iter().map(|(k, (_, d))| (k, d)).collect();
        let previous = std::mem::take(&mut self.running);
        let mut events = Vec::new();
        for (id, old) in &previous {
            if !now.contains_key(id) {
                events.push(GameEvent::Stopped(old.clone()));
            }
        }
        for (id, new) in &now {
            if !previous.contains_key(id) {
                events.push(GameEvent::Started(new.clone()));
            }
        }
        self.running = now;
        events
    }

    /// Games detected at the last scan, in id order.
    pub fn running(&self) -> Vec<&Detected> {
        self.running.values().collect()
    }

    /// Normalizes executable names once per profile-set version: a cheap comparison of ids
    /// and executables (no allocation) decides whether the cache still fits.
    fn refresh_cache(&mut self, profiles: &ProfileSet) {
        let fits = self.cache.len() == profiles.len()
            && self
                .cache
                .iter()
                .zip(profiles.iter())
                .all(|(c, p)| c.id == p.id && c.executable == p.executable);
        if fits {
            return;
        }
        self.cache = profiles
            .iter()
            .map(|p| CachedProfile {
                id: p.id.clone(),
                executable: p.executable.clone(),
                name: Name::new(&p.executable),
            })
            .collect();
    }
}

/// A process or executable name, prepared for matching.
#[derive(Debug, Clone)]
struct Name {
    /// ASCII-lowercased; same byte length as the original.
    lower: String,
    /// Length of `lower` without a `.exe` suffix.
    stem_len: usize,
    /// The stem's alphanumeric characters only, for the edit distance: separators and
    /// punctuation vary between builds (`Stardew Valley` vs `StardewValley`).
    norm: Vec<char>,
}

impl Name {
    fn new(raw: &str) -> Self {
        let lower = raw.to_ascii_lowercase();
        let stem_len = lower.strip_suffix(".exe").unwrap_or(&lower).len();
        let norm = lower[..stem_len]
            .chars()
            .filter(|c| c.is_alphanumeric())
            .collect();
        Name {
            lower,
            stem_len,
            norm,
        }
    }

    fn stem(&self) -> &str {
        // `stem_len` is either the full length or the length before an ASCII ".exe", so it
        // is always a char boundary; `get` keeps this panic-free regardless.
        self.lower.get(..self.stem_len).unwrap_or(&self.lower)
    }
}

/// [`executable_match`] on prepared names. Scores below `floor` may be returned as 0.0: the
/// edit distance is skipped or cut short once it cannot reach `floor`.
fn score(exe: &Name, process: &Name, floor: f32) -> f32 {
    let (es, ps) = (exe.stem(), process.stem());
    if es.is_empty() || ps.is_empty() {
        return 0.0;
    }
    // Process lists differ in case and in showing `.exe` across platforms and tools.
    if es == ps {
        return 1.0;
    }
    // Linux truncates `comm` to 15 bytes; the cut may fall inside `.exe` (`ConanSandbox.ex`).
    let pl = process.lower.as_str();
    if pl.len() == COMM_LEN && (es.starts_with(pl) || exe.lower.starts_with(pl)) {
        return TRUNCATED_SCORE;
    }
    if has_platform_suffix(es, ps, pl.len() == COMM_LEN) {
        return PLATFORM_SUFFIX_SCORE;
    }
    similarity(&exe.norm, &process.norm, floor)
}

/// `process` is `exe` plus a separator and a Linux platform tag; with a truncated name the
/// tag may be cut short (`Terraria.bin.x8`).
fn has_platform_suffix(exe: &str, process: &str, truncated: bool) -> bool {
    let Some(rest) = process.strip_prefix(exe) else {
        return false;
    };
    let Some(tag) = rest.strip_prefix(['.', '_', '-']) else {
        return false;
    };
    !tag.is_empty()
        && PLATFORM_SUFFIXES
            .iter()
            .any(|s| *s == tag || (truncated && s.starts_with(tag)))
}

/// `1 − distance / longer length − NEAR_MISS_PENALTY`, floored at 0.0. The length difference
/// alone bounds the distance, so most unrelated pairs never reach the edit-distance table.
fn similarity(a: &[char], b: &[char], floor: f32) -> f32 {
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 0.0;
    }
    let from_distance = |d: usize| (1.0 - d as f32 / longest as f32 - NEAR_MISS_PENALTY).max(0.0);
    if floor > 0.0 && from_distance(a.len().abs_diff(b.len())) < floor {
        return 0.0;
    }
    // The largest distance that can still reach `floor`, with a margin for rounding.
    let limit = if floor > 0.0 {
        ((1.0 - NEAR_MISS_PENALTY - floor).max(0.0) * longest as f32).ceil() as usize + 1
    } else {
        longest
    };
    match levenshtein_within(a, b, limit) {
        Some(d) => from_distance(d),
        None => 0.0,
    }
}

/// Levenshtein distance with two rows, or `None` once it is sure to exceed `limit`.
fn levenshtein_within(a: &[char], b: &[char], limit: usize) -> Option<usize> {
    // Rows as long as the shorter name.
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    if long.len() - short.len() > limit {
        return None;
    }
    let mut prev: Vec<usize> = (0..=short.len()).collect();
    let mut cur = vec![0; short.len() + 1];
    for (i, ca) in long.iter().enumerate() {
        cur[0] = i + 1;
        let mut row_min = cur[0];
        for (j, cb) in short.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            let cell = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
            cur[j + 1] = cell;
            row_min = row_min.min(cell);
        }
        // Every later cell derives from this row, so the distance can only be larger.
        if row_min > limit {
            return None;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let d = prev[short.len()];
    (d <= limit).then_some(d)
}

/// The listening ports, with the protocols seen on each.
struct Listening {
    /// port → (UDP seen, TCP seen)
    ports: BTreeMap<u16, (bool, bool)>,
}

impl Listening {
    fn new(listening: &[(Protocol, u16)]) -> Self {
        let mut ports: BTreeMap<u16, (bool, bool)> = BTreeMap::new();
        for &(protocol, port) in listening {
            let seen = ports.entry(port).or_default();
            match protocol {
                Protocol::Udp => seen.0 = true,
                Protocol::Tcp => seen.1 = true,
                Protocol::Both => *seen = (true, true),
            }
        }
        Listening { ports }
    }

    /// Whether `port` listens with a protocol the profile uses (`Both` matches either).
    fn has(&self, protocol: Protocol, port: u16) -> bool {
        match self.ports.get(&port) {
            None => false,
            Some(&(udp, tcp)) => match protocol {
                Protocol::Udp => udp,
                Protocol::Tcp => tcp,
                Protocol::Both => udp || tcp,
            },
        }
    }

    /// The profile's listening ports, in its order, without duplicates.
    fn matching(&self, profile: &GameProfile) -> Vec<u16> {
        let mut out: Vec<u16> = Vec::new();
        for &port in &profile.ports {
            if self.has(profile.protocol, port) && !out.contains(&port) {
                out.push(port);
            }
        }
        out
    }

    fn count(&self, profile: &GameProfile) -> usize {
        self.matching(profile).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn embedded() -> ProfileSet {
        let (set, errors) = ProfileSet::embedded();
        assert!(errors.is_empty(), "{errors:#?}");
        set
    }

    fn started_ids(events: &[GameEvent]) -> Vec<&str> {
        events
            .iter()
            .filter(|e| matches!(e, GameEvent::Started(_)))
            .map(|e| e.detected().id.as_str())
            .collect()
    }

    fn custom_set(entries: &[(&str, &str, &[u16], &str)]) -> ProfileSet {
        let body: Vec<String> = entries
            .iter()
            .map(|(id, exe, ports, protocol)| {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!(
                    r#""{id}": {{"name": "{id} game", "executable": "{exe}", "ports": [{}],
                        "protocol": "{protocol}", "broadcast": false, "multicast": false,
                        "keepalive": 25, "mtu": 1420, "description": "test",
                        "low_latency": true, "high_bandwidth": false,
                        "packet_priority": "medium"}}"#,
                    ports.join(", ")
                )
            })
            .collect();
        let mut set = ProfileSet::default();
        let errors = set.extend_from_json("test", &format!("{{{}}}", body.join(",")));
        assert!(errors.is_empty(), "{errors:#?}");
        set
    }

    #[test]
    fn executable_match_exact_ignores_case_and_exe_suffix() {
        for (exe, process) in [
            ("war3.exe", "war3.exe"),
            ("war3.exe", "War3.exe"),
            ("war3.exe", "WAR3"),
            ("war3", "war3.EXE"),
            ("Terraria.exe", "terraria"),
            ("Stardew Valley.exe", "stardew valley"),
        ] {
            assert_eq!(executable_match(exe, process), 1.0, "{exe} / {process}");
        }
    }

    #[test]
    fn executable_match_truncated_comm() {
        // "FactoryGame-Win64-Shipping" cut to 15 bytes.
        assert_eq!(
            executable_match("FactoryGame-Win64-Shipping.exe", "FactoryGame-Win"),
            TRUNCATED_SCORE
        );
        // The cut can fall inside ".exe" (Wine shows the Windows name).
        assert_eq!(
            executable_match("Stardew Valley.exe", "Stardew Valley."),
            TRUNCATED_SCORE
        );
        // 14 bytes is not a truncation: Linux always keeps 15.
        assert!(
            executable_match("FactoryGame-Win64-Shipping.exe", "FactoryGame-Wi") < TRUNCATED_SCORE
        );
        // 15 bytes that are not a prefix get no truncation credit.
        assert!(
            executable_match("FactoryGame-Win64-Shipping.exe", "FactoryGame-Wix") < MIN_CONFIDENCE
        );
    }

    #[test]
    fn executable_match_linux_platform_suffix() {
        assert_eq!(
            executable_match("Terraria.exe", "Terraria.bin.x86_64"),
            PLATFORM_SUFFIX_SCORE
        );
        // The same, as Linux's 15-byte comm shows it.
        assert_eq!(
            executable_match("Terraria.exe", "Terraria.bin.x8"),
            PLATFORM_SUFFIX_SCORE
        );
        assert_eq!(executable_match("et.exe", "et.x86"), PLATFORM_SUFFIX_SCORE);
        assert_eq!(
            executable_match("hl2.exe", "hl2_linux"),
            PLATFORM_SUFFIX_SCORE
        );
        // A cut-short tag only counts on a truncated name, and the tag must be known.
        assert!(executable_match("et.exe", "et.x8") < MIN_CONFIDENCE);
        assert!(executable_match("et.exe", "et.backup") < MIN_CONFIDENCE);
    }

    #[test]
    fn executable_match_unrelated_is_low() {
        for (exe, process) in [
            ("war3.exe", "chrome.exe"),
            ("javaw.exe", "systemd"),
            ("Terraria.exe", "svchost.exe"),
            ("hl.exe", "bash"),
            ("factorio.exe", "firefox"),
        ] {
            let s = executable_match(exe, process);
            assert!(s < 0.5, "{exe} / {process}: {s}");
        }
    }

    #[test]
    fn executable_match_short_one_char_differences_stay_below_min() {
        for (exe, process) in [
            ("javaw.exe", "java"),
            ("war3.exe", "war3x"),
            ("war3.exe", "war4"),
            ("cs2.exe", "cs3"),
            ("quake3.exe", "quake2"),
            ("hl.exe", "h"),
            ("et.exe", "e"),
        ] {
            let s = executable_match(exe, process);
            assert!(s < MIN_CONFIDENCE, "{exe} / {process}: {s}");
        }
        // "war3x" is still closer to war3 than an unrelated name is.
        assert!(executable_match("war3.exe", "war3x") > executable_match("war3.exe", "bash"));
        // Longer names tolerate one edit; exact still wins.
        let near = executable_match("left4dead.exe", "left4dead2");
        assert!((MIN_CONFIDENCE..1.0).contains(&near), "{near}");
        // Separators are ignored by the similarity but still cost the near-miss penalty.
        let spaced = executable_match("Stardew Valley.exe", "StardewValley");
        assert!((MIN_CONFIDENCE..1.0).contains(&spaced), "{spaced}");
    }

    #[test]
    fn executable_match_garbage_is_zero_and_in_range() {
        let long = "x".repeat(100_000);
        let garbage = [
            "",
            " ",
            "exe",
            ".exe",
            ".EXE",
            "\0",
            long.as_str(),
            "游戏.exe",
            "éééééééa",
            "🎮",
        ];
        for a in garbage {
            for b in garbage {
                let s = executable_match(a, b);
                assert!((0.0..=1.0).contains(&s), "{a:?} / {b:?}: {s}");
            }
            assert_eq!(executable_match(a, ""), 0.0);
            assert_eq!(executable_match("", a), 0.0);
            assert_eq!(executable_match(".exe", a), 0.0);
        }
        assert!(executable_match("war3.exe", &long) < 0.01);
    }

    #[test]
    fn levenshtein_distances_and_limit() {
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        let d = |a: &str, b: &str| levenshtein_within(&chars(a), &chars(b), usize::MAX);
        assert_eq!(d("kitten", "sitting"), Some(3));
        assert_eq!(d("", "abc"), Some(3));
        assert_eq!(d("abc", ""), Some(3));
        assert_eq!(d("same", "same"), Some(0));
        assert_eq!(d("flaw", "lawn"), Some(2));
        assert_eq!(
            levenshtein_within(&chars("kitten"), &chars("sitting"), 2),
            None
        );
        assert_eq!(
            levenshtein_within(&chars("kitten"), &chars("sitting"), 3),
            Some(3)
        );
        assert_eq!(levenshtein_within(&chars("a"), &chars("abcdef"), 4), None);
    }

    #[test]
    fn started_then_quiet_then_stopped() {
        let set = embedded();
        let mut detector = Detector::new();

        let events = detector.scan(&set, &["explorer.exe", "war3.exe", "WAR3"], &[]);
        assert_eq!(events.len(), 1, "{events:#?}");
        let GameEvent::Started(started) = &events[0] else {
            panic!("expected Started: {events:#?}");
        };
        assert_eq!(started.id, "warcraft3");
        assert_eq!(started.name, set.get("warcraft3").unwrap().name);
        assert_eq!(started.confidence, 1.0);
        assert!(started.ports.is_empty());
        let process = started.process.as_deref().unwrap();
        assert!(process == "war3.exe" || process == "WAR3", "{process}");
        assert_eq!(detector.running(), vec![started]);

        // Same input (in another order): nothing new.
        let events = detector.scan(&set, &["WAR3", "war3.exe", "explorer.exe"], &[]);
        assert!(events.is_empty(), "{events:#?}");
        assert_eq!(detector.running().len(), 1);

        let events = detector.scan(&set, &["explorer.exe"], &[]);
        assert_eq!(events, vec![GameEvent::Stopped(started.clone())]);
        assert!(detector.running().is_empty());

        // Nothing running stays quiet.
        assert!(detector.scan(&set, &[], &[]).is_empty());
    }

    #[test]
    fn stopped_events_come_before_started() {
        let set = embedded();
        let mut detector = Detector::default();
        detector.scan(&set, &["war3.exe"], &[]);
        let events = detector.scan(&set, &["Terraria.exe"], &[]);
        assert_eq!(events.len(), 2, "{events:#?}");
        assert!(matches!(&events[0], GameEvent::Stopped(d) if d.id == "warcraft3"));
        assert!(matches!(&events[1], GameEvent::Started(d) if d.id == "terraria"));
    }

    #[test]
    fn every_embedded_executable_detects_a_game_with_that_executable() {
        let set = embedded();
        for profile in &set {
            let mut detector = Detector::new();
            let events = detector.scan(&set, &[profile.executable.as_str()], &[]);
            assert_eq!(events.len(), 1, "{}: {events:#?}", profile.id);
            let found = set.get(&events[0].detected().id).unwrap();
            assert!(
                found.executable.eq_ignore_ascii_case(&profile.executable),
                "{} detected as {}",
                profile.id,
                found.id
            );
        }
    }

    #[test]
    fn shared_executable_detects_exactly_one_game() {
        let set = embedded();
        let mut by_exe: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for p in &set {
            by_exe
                .entry(p.executable.to_ascii_lowercase())
                .or_default()
                .push(p.id.as_str());
        }
        let (exe, ids) = by_exe
            .iter()
            .find(|(_, ids)| ids.len() > 1)
            .expect("the embedded set has games sharing an executable");

        let mut detector = Detector::new();
        let events = detector.scan(&set, &[exe.as_str()], &[]);
        assert_eq!(events.len(), 1, "{events:#?}");
        // Same score, same ports: the smallest id wins (ids come in id order).
        assert_eq!(events[0].detected().id, ids[0]);
        assert_eq!(detector.running().len(), 1);
    }

    #[test]
    fn shared_executable_prefers_listening_ports_then_smallest_id() {
        let set = custom_set(&[
            ("alpha", "shared.exe", &[1000], "udp"),
            ("beta", "shared.exe", &[2000], "udp"),
        ]);
        let mut detector = Detector::new();
        let events = detector.scan(&set, &["shared.exe"], &[]);
        assert_eq!(started_ids(&events), ["alpha"]);

        let mut detector = Detector::new();
        let events = detector.scan(&set, &["shared"], &[(Protocol::Udp, 2000)]);
        assert_eq!(started_ids(&events), ["beta"]);
        assert_eq!(events[0].detected().ports, [2000]);

        // Two processes matching the same profile still report it once.
        let mut detector = Detector::new();
        let events = detector.scan(&set, &["shared.exe", "SHARED", "shared"], &[]);
        assert_eq!(started_ids(&events), ["alpha"]);
    }

    #[test]
    fn exact_match_beats_near_miss_of_another_profile() {
        let set = embedded();
        let mut detector = Detector::new();
        let events = detector.scan(&set, &["left4dead2.exe"], &[]);
        assert_eq!(started_ids(&events), ["l4d2"]);
    }

    #[test]
    fn ports_raise_confidence_and_fill_ports() {
        let set = embedded();
        let mut detector = Detector::new();
        // Terraria's ports are TCP; a UDP socket on 7777 does not count.
        let events = detector.scan(&set, &["Terraria.bin.x8"], &[(Protocol::Udp, 7777)]);
        assert_eq!(started_ids(&events), ["terraria"]);
        let d = events[0].detected();
        assert_eq!(d.confidence, PLATFORM_SUFFIX_SCORE);
        assert!(d.ports.is_empty());

        // Still running: no event, but running() is updated.
        let events = detector.scan(
            &set,
            &["Terraria.bin.x8"],
            &[
                (Protocol::Tcp, 7777),
                (Protocol::Tcp, 7777),
                (Protocol::Udp, 9),
            ],
        );
        assert!(events.is_empty(), "{events:#?}");
        let running = detector.running();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].ports, [7777]);
        assert!((running[0].confidence - (PLATFORM_SUFFIX_SCORE + PORT_BONUS)).abs() < 1e-6);

        // Capped at 1.0; a profile with protocol "both" accepts either.
        let events = detector.scan(&set, &["war3.exe"], &[(Protocol::Udp, 6112)]);
        let war3 = detector
            .running()
            .into_iter()
            .find(|d| d.id == "warcraft3")
            .unwrap();
        assert_eq!(war3.confidence, 1.0);
        assert_eq!(war3.ports, [6112]);
        assert_eq!(started_ids(&events), ["warcraft3"]);
    }

    #[test]
    fn ports_alone_do_not_detect_but_are_candidates() {
        let set = embedded();
        let listening = [(Protocol::Udp, 27015), (Protocol::Tcp, 25565)];
        let mut detector = Detector::new();
        assert!(detector.scan(&set, &["bash"], &listening).is_empty());
        assert!(detector.running().is_empty());

        let candidates = candidates_by_port(&set, &listening);
        let ids: Vec<&str> = candidates.iter().map(|p| p.id.as_str()).collect();
        for id in ["cs16", "half_life", "gmod", "minecraft_java"] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "candidates come in id order");
        for p in &candidates {
            assert!(
                p.ports.contains(&27015) || p.ports.contains(&25565),
                "{}",
                p.id
            );
        }
        // Minecraft Java is TCP: a UDP socket on its port is not a candidate.
        let udp_only = candidates_by_port(&set, &[(Protocol::Udp, 25565)]);
        assert!(udp_only.iter().all(|p| p.id != "minecraft_java"));
        assert!(candidates_by_port(&set, &[]).is_empty());
    }

    #[test]
    fn garbage_process_names_detect_nothing() {
        let set = embedded();
        let long = "x".repeat(100_000);
        let long_exe = format!("{}.exe", "war3".repeat(10_000));
        let multibyte_15 = "éééééééa"; // 15 bytes, 8 chars
        let processes = [
            "",
            " ",
            "exe",
            ".exe",
            ".EXE",
            "..exe",
            "\0\0",
            long.as_str(),
            long_exe.as_str(),
            "游戏.exe",
            "🎮",
            multibyte_15,
            "ééééééééééééééé",
        ];
        let mut detector = Detector::new();
        let events = detector.scan(
            &set,
            &processes,
            &[(Protocol::Both, 0), (Protocol::Udp, 65535)],
        );
        assert!(events.is_empty(), "{events:#?}");
        assert!(detector.running().is_empty());
    }

    #[test]
    fn cache_follows_profile_set_changes() {
        let first = custom_set(&[("game", "old.exe", &[1000], "udp")]);
        let second = custom_set(&[("game", "new.exe", &[1000], "udp")]);
        let mut detector = Detector::new();
        assert_eq!(
            started_ids(&detector.scan(&first, &["old.exe"], &[])),
            ["game"]
        );
        // Same id, new executable: the old process no longer matches.
        let events = detector.scan(&second, &["old.exe"], &[]);
        assert!(matches!(&events[..], [GameEvent::Stopped(d)] if d.id == "game"));
        assert_eq!(
            started_ids(&detector.scan(&second, &["new.exe"], &[])),
            ["game"]
        );
    }

    #[test]
    fn many_processes_against_the_embedded_set() {
        let set = embedded();
        let system = [
            "svchost.exe",
            "explorer.exe",
            "chrome.exe",
            "firefox",
            "Discord.exe",
            "steam.exe",
            "steamwebhelper",
            "systemd",
            "kworker/0:1",
            "bash",
            "sshd",
            "Xorg",
            "pipewire",
            "java",
            "python3",
            "RuntimeBroker.exe",
            "dwm.exe",
            "csrss.exe",
            "lsass.exe",
            "winlogon.exe",
        ];
        let mut names: Vec<String> = Vec::new();
        for i in 0..280 {
            let base = system[i % system.len()];
            names.push(if i < system.len() {
                base.to_owned()
            } else {
                format!("{base}-{i}")
            });
        }
        let games = [
            ("war3.exe", "warcraft3"),
            ("javaw.exe", "minecraft_java"),
            ("FactoryGame-Win", "satisfactory"),
            ("Terraria.bin.x8", "terraria"),
            ("left4dead2", "l4d2"),
        ];
        for (process, _) in games {
            names.push(process.to_owned());
        }
        while names.len() < 300 {
            names.push(format!("worker-{}", names.len()));
        }
        let processes: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(processes.len(), 300);

        let mut detector = Detector::new();
        let events = detector.scan(&set, &processes, &[(Protocol::Udp, 27015)]);
        let mut expected: Vec<&str> = games.iter().map(|(_, id)| *id).collect();
        expected.sort_unstable();
        assert_eq!(started_ids(&events), expected);
        for d in detector.running() {
            assert!(
                d.confidence >= MIN_CONFIDENCE && d.confidence <= 1.0,
                "{d:?}"
            );
        }
        // A second identical scan reuses the cache and stays quiet.
        assert!(
            detector
                .scan(&set, &processes, &[(Protocol::Udp, 27015)])
                .is_empty()
        );
    }
}
