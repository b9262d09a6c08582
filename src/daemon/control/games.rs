//! The running games: what a scan found, and the tunnel fitted to them (latency lane,
//! keepalive, MTU, broadcast capture and discovery groups).

use lanrage_control::discord::PartyEvent;
use lanrage_control::settings::Settings;
use lanrage_engine::{DeviceUpdate, PeerUpdate, PriorityPolicy};
use lanrage_games::tuning::Tuning;

use super::State;
use crate::daemon::broadcast_capture::{self, CapturePlan};
use crate::daemon::events::DaemonEvent;
use crate::daemon::games::{GameScan, RunningGame};

impl State {
    /// Captures the default discovery ports and the running games' while in a party; nothing
    /// otherwise.
    pub(super) fn update_capture(&mut self) {
        let Some(capture) = &mut self.cfg.capture else {
            return;
        };
        let plan = self.virtual_ip.map(|address| {
            let games = self.games.iter().flat_map(|g| g.profile.discovery_ports());
            let ports = broadcast_capture::DEFAULT_PORTS
                .iter()
                .copied()
                .chain(games);
            CapturePlan::new(self.cfg.interface_index, address, ports)
        });
        let ports = plan.as_ref().map(|p| p.port_ranges.clone());
        match capture.apply(plan) {
            Ok(false) => {}
            Ok(true) => match ports {
                Some(ports) => tracing::info!(
                    ?ports,
                    "broadcasts and multicast from unbound sockets on these UDP ports now go to the party"
                ),
                None => tracing::info!("broadcast capture removed"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot route games' broadcasts into the tunnel"),
        }
    }

    /// Holds the games' discovery groups on the tunnel while in a party.
    pub(super) fn join_tunnel_groups(&mut self) {
        match self.cfg.tunnel_groups.join(self.cfg.interface_index) {
            Ok(()) => {
                tracing::debug!(groups = ?self.cfg.tunnel_groups.groups(), "discovery groups joined on the tunnel")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot join games' multicast groups on the tunnel")
            }
        }
    }

    pub(super) fn games_scanned(&mut self, scan: GameScan) {
        self.game_scan = Some(scan.took);
        let known = |games: &[RunningGame], id: &str| games.iter().any(|g| g.detected.id == id);
        for game in scan
            .running
            .iter()
            .filter(|g| !known(&self.games, &g.detected.id))
        {
            self.cfg.events.emit(DaemonEvent::GameDetected {
                game: game.detected.id.clone(),
                name: game.detected.name.clone(),
            });
            // The party hears of it too (Discord), when there is one.
            if self.virtual_ip.is_some() {
                self.cfg.discord.event(PartyEvent::GameStarted {
                    member: self.cfg.member_name.clone(),
                    game: game.detected.name.clone(),
                });
            }
        }
        for game in self
            .games
            .iter()
            .filter(|g| !known(&scan.running, &g.detected.id))
        {
            self.cfg.events.emit(DaemonEvent::GameStopped {
                game: game.detected.id.clone(),
                name: game.detected.name.clone(),
            });
        }
        self.games = scan.running;
        self.update_capture();
        self.retune();
    }

    /// Tunes the tunnel for the settings and the running games (see `Tuning`): a game's
    /// traffic takes the latency lane, and its keepalive and MTU apply if stricter. When it
    /// stops, all of it is as configured again.
    pub(super) fn retune(&mut self) {
        let settings = self.cfg.settings.effective();
        let base = base_tuning(&settings);
        let tuning = Tuning::for_games(&base, self.games.iter().map(|g| &g.profile));
        let policy = PriorityPolicy {
            ports: tuning.lane_ports.clone(),
            ..base_priority(&settings)
        };
        if self.lane.as_ref() != Some(&policy)
            && self.cfg.engine.set_priority(policy.clone()).is_ok()
        {
            tracing::info!(ports = ?policy.ports, small_packets = policy.small_packet_max, "latency lane set");
            self.tuning.lane_ports = tuning.lane_ports;
            self.lane = Some(policy);
        }
        if tuning.keepalive != self.tuning.keepalive {
            let peers = self.membership.party().map_or_else(Vec::new, |party| {
                party
                    .members
                    .iter()
                    .filter(|m| m.peer != self.cfg.me)
                    .map(|m| {
                        let mut update = PeerUpdate::new(m.peer.0);
                        update.update_only = true;
                        update.persistent_keepalive = Some(tuning.keepalive);
                        update
                    })
                    .collect()
            });
            let update = DeviceUpdate {
                peers,
                ..DeviceUpdate::default()
            };
            match self.cfg.engine.update(update) {
                Ok(()) => {
                    tracing::info!(
                        seconds = tuning.keepalive,
                        "persistent keepalive set for the running games"
                    );
                    self.tuning.keepalive = tuning.keepalive;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set the keepalive for the running games")
                }
            }
        }
        if tuning.mtu != self.tuning.mtu {
            match self.cfg.addresses.set_mtu(tuning.mtu) {
                Ok(()) => {
                    tracing::info!(mtu = tuning.mtu, "tunnel MTU set for the running games");
                    self.tuning.mtu = tuning.mtu;
                }
                Err(e) => tracing::warn!(mtu = tuning.mtu, error = %e, "cannot set the tunnel MTU"),
            }
        }
    }
}

/// The latency lane as the settings have it, before the running games' ports.
fn base_priority(settings: &Settings) -> PriorityPolicy {
    PriorityPolicy {
        small_packet_max: settings.lane_small_packets,
        ports: settings.lane_ports.clone(),
    }
}

/// The tunnel's settings while no game runs. Path probing (every second, see
/// `PathSelector`) is what holds NAT mappings open; the keepalive keeps each session
/// established, so a game's first packet after a quiet spell never waits for a handshake
/// (WireGuard's sessions lapse after 3 idle minutes).
pub(super) fn base_tuning(settings: &Settings) -> Tuning {
    Tuning {
        keepalive: settings.keepalive,
        mtu: settings.mtu,
        lane_ports: settings.lane_ports.clone(),
    }
}
