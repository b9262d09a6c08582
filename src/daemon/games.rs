//! Watching for games: a thread that lists the running processes every few seconds and tells
//! the control thread when a known game starts or stops (`lanrage_games::detect` decides,
//! this only does the I/O and the timing).

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use lanrage_games::detect::{Detected, Detector, GameEvent};
use lanrage_games::processes::ProcessList;
use lanrage_games::profile::{GameProfile, ProfileSet};
use lanrage_games::sockets;

/// How often processes are listed: a game takes longer than this to reach its menus, and a
/// scan costs a few milliseconds of CPU.
pub const SCAN_PERIOD: Duration = Duration::from_secs(2);

/// A game running now, and its profile: what it asks of the tunnel.
#[derive(Debug, Clone)]
pub struct RunningGame {
    pub detected: Detected,
    pub profile: GameProfile,
}

/// What one scan found, for the control thread: the whole state, not changes, so a scan the
/// control thread never sees costs nothing.
pub struct GameScan {
    pub running: Vec<RunningGame>,
    /// How long listing and matching took (wall clock: an upper bound of its CPU time).
    pub took: Duration,
}

pub struct GameWatch {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl GameWatch {
    /// Loads the profiles (embedded, then the data directory's `games/`; bad entries are
    /// logged and skipped) and starts scanning. Every scan is sent, also those that change
    /// nothing, so the control thread keeps the scan time current.
    pub fn start(data_dir: &Path) -> std::io::Result<(GameWatch, Receiver<GameScan>)> {
        let (profiles, errors) = ProfileSet::load(data_dir);
        for error in &errors {
            tracing::warn!(%error, "game profile skipped");
        }
        tracing::info!(
            profiles = profiles.len(),
            skipped = errors.len(),
            "game profiles loaded"
        );
        let (scans_tx, scans_rx) = bounded(4);
        let (stop_tx, stop_rx) = bounded(0);
        let thread = std::thread::Builder::new()
            .name("lanrage-games".into())
            .spawn(move || watch(profiles, scans_tx, stop_rx))?;
        Ok((
            GameWatch {
                stop: stop_tx,
                thread: Some(thread),
            },
            scans_rx,
        ))
    }
}

impl Drop for GameWatch {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(profiles: ProfileSet, scans: Sender<GameScan>, stop: Receiver<()>) {
    let mut processes = ProcessList::new();
    let mut detector = Detector::new();
    let mut sockets_failed = false;
    loop {
        let started = Instant::now();
        let names = processes.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        // Listening ports corroborate a process match (a game server up, not just its
        // launcher); without them detection goes by names alone.
        let listening = sockets::listening().unwrap_or_else(|e| {
            if !std::mem::replace(&mut sockets_failed, true) {
                tracing::warn!(error = %e, "cannot list listening sockets; detecting games by process name only");
            }
            Vec::new()
        });
        let events = detector.scan(&profiles, &names, &listening);
        let running = detector
            .running()
            .into_iter()
            .filter_map(|detected| {
                Some(RunningGame {
                    profile: profiles.get(&detected.id)?.clone(),
                    detected: detected.clone(),
                })
            })
            .collect();
        let took = started.elapsed();
        for event in &events {
            match event {
                GameEvent::Started(game) => tracing::info!(
                    game = %game.name,
                    process = game.process.as_deref().unwrap_or("-"),
                    confidence = game.confidence,
                    "game started"
                ),
                GameEvent::Stopped(game) => tracing::info!(game = %game.name, "game stopped"),
            }
        }
        // A control thread that lags a scan behind loses nothing: the next scan says the same.
        let _ = scans.try_send(GameScan { running, took });
        match stop.recv_timeout(SCAN_PERIOD.saturating_sub(took)) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
