//! What the daemon reports: status and peers for the API, metrics, the traffic history for
//! the web UI's graphs, and Discord's Rich Presence.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use lanrage_control::discord::ipc::Activity;
use lanrage_control::peer_id::PeerId;
use lanrage_engine::DeviceStatus;

use super::State;
use crate::daemon::history::Reading;
use crate::daemon::metrics::{PeerLabels, PeerSample, Sample};
use crate::local_api::{GameSummary, NatSummary, PartySummary, PeerInfo, RelaySummary, Status};

impl State {
    /// A sample of every member's traffic for the web UI's graphs, once a second.
    pub(super) fn record_history(&mut self) {
        let now = Instant::now();
        if !self.history.due(now) {
            return;
        }
        let readings: Vec<Reading> = self
            .peers()
            .into_iter()
            .map(|p| Reading {
                name: p.name,
                virtual_ip: p.virtual_ip.to_string(),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                rtt_ms: p.rtt_ms,
            })
            .collect();
        self.history.record(now, &readings);
    }

    /// Tells Discord what to show when the party or the game changes.
    pub(super) fn update_presence(&mut self) {
        let activity =
            self.membership
                .party()
                .zip(self.in_party_since)
                .map(|(party, (_, since))| Activity {
                    party: party.name.clone(),
                    party_id: format!("lanrage-{}", party.code),
                    members: party.members.len() as u32,
                    game: self.games.first().map(|g| g.detected.name.clone()),
                    since_unix: since,
                });
        if activity != self.activity {
            self.cfg.discord.activity(activity.clone());
            self.activity = activity;
        }
    }

    /// The labels of `peer`'s series: its name and virtual IP while it is a member.
    pub(super) fn metric_labels(&mut self, peer: PeerId) -> Option<PeerLabels> {
        let member = self
            .membership
            .party()?
            .members
            .iter()
            .find(|m| m.peer == peer)?;
        let labels = PeerLabels {
            peer: member.name.clone(),
            virtual_ip: member.virtual_ip.to_string(),
        };
        if let Some(old) = self.metric_labels.insert(peer, labels.clone())
            && old != labels
        {
            self.metrics.forget(&old);
        }
        Some(labels)
    }

    pub(super) fn render_metrics(&mut self) -> String {
        let engine = self.cfg.engine.status().ok();
        let peers = self
            .peer_infos(engine.as_ref())
            .into_iter()
            .map(|p| PeerSample {
                labels: PeerLabels {
                    virtual_ip: p.virtual_ip.to_string(),
                    peer: p.name,
                },
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                rx_packets: p.rx_packets,
                tx_packets: p.tx_packets,
                relayed: p.path == "relayed",
                path_losses: p.path_losses,
            })
            .collect();
        self.metrics.render(&Sample {
            peers,
            drops: engine
                .map(|s| {
                    s.drops
                        .iter()
                        .map(|(reason, n)| (reason.name(), *n))
                        .collect()
                })
                .unwrap_or_default(),
            party_members: self.membership.party().map_or(0, |p| p.members.len()),
            game_scan: self.game_scan,
        })
    }

    pub(super) fn status(&self) -> Status {
        let engine = self.cfg.engine.status().ok();
        let party = self.membership.party().map(|p| PartySummary {
            id: p.id,
            name: p.name.clone(),
            code: p.code.clone(),
            virtual_ip: p
                .members
                .iter()
                .find(|m| m.peer == self.cfg.me)
                .map(|m| m.virtual_ip),
            members: p.members.len(),
        });
        Status {
            interface: self.cfg.interface.clone(),
            public_key: self.cfg.me.to_string(),
            listen_port: self.cfg.listen_port,
            server: self.cfg.client.as_ref().map(|c| c.base().to_owned()),
            server_state: self.server_state.clone(),
            party,
            peers: self.peer_infos(engine.as_ref()),
            nat: self.nat.last().map(|(report, at)| NatSummary {
                nat_type: report.nat.name().to_owned(),
                reflexive: report.facts.mappings.first().map(|&(_, mapped)| mapped),
                mapping_varies: report.facts.mapping_varies(),
                checked_secs_ago: at.elapsed().as_secs(),
            }),
            relays: self.relay_summary(),
            port_mapping: self.mapping.map(|m| m.to_string()),
            games: self
                .games
                .iter()
                .map(|g| GameSummary {
                    id: g.detected.id.clone(),
                    name: g.detected.name.clone(),
                    process: g.detected.process.clone(),
                    confidence: g.detected.confidence,
                    listening: g.detected.ports.clone(),
                })
                .collect(),
            latency_lane_ports: self.tuning.lane_ports.clone(),
            keepalive_secs: self.tuning.keepalive,
            mtu: self.tuning.mtu,
            game_scan_ms: self.game_scan.map(|d| d.as_secs_f64() * 1e3),
            drops: engine
                .iter()
                .flat_map(|s| &s.drops)
                .filter(|&&(_, n)| n > 0)
                .map(|(reason, n)| (reason.name().to_owned(), *n))
                .collect(),
        }
    }

    fn relay_summary(&self) -> Vec<RelaySummary> {
        let names: HashMap<PeerId, &str> = self
            .membership
            .party()
            .map(|p| {
                p.members
                    .iter()
                    .map(|m| (m.peer, m.name.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        self.relays
            .status(Instant::now())
            .into_iter()
            .map(|s| RelaySummary {
                relay: s.relay,
                peer: names
                    .get(&s.peer)
                    .map_or_else(|| s.peer.to_string(), |n| (*n).to_owned()),
                ready: s.peer_bound,
                rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1e3),
            })
            .collect()
    }

    pub(super) fn peers(&self) -> Vec<PeerInfo> {
        self.peer_infos(self.cfg.engine.status().ok().as_ref())
    }

    /// The other members as the API shows them, with what `engine` counted for each.
    fn peer_infos(&self, engine: Option<&DeviceStatus>) -> Vec<PeerInfo> {
        let Some(party) = self.membership.party() else {
            return Vec::new();
        };
        party
            .members
            .iter()
            .filter(|m| m.peer != self.cfg.me)
            .map(|m| {
                let live = engine.and_then(|s| s.peers.iter().find(|p| p.public_key == m.peer.0));
                let path = self.paths.path(&m.peer, Instant::now());
                PeerInfo {
                    name: m.name.clone(),
                    public_key: m.peer.to_string(),
                    virtual_ip: m.virtual_ip,
                    endpoint: live.and_then(|p| p.endpoint).map(|e| e.addr),
                    handshake_age_secs: live
                        .and_then(|p| p.last_handshake)
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .map(|d| d.as_secs()),
                    rx_bytes: live.map_or(0, |p| p.rx_bytes),
                    tx_bytes: live.map_or(0, |p| p.tx_bytes),
                    rx_packets: live.map_or(0, |p| p.rx_packets),
                    tx_packets: live.map_or(0, |p| p.tx_packets),
                    rtt_ms: path.map(|(_, rtt)| rtt.as_secs_f64() * 1e3),
                    path: match path {
                        Some((endpoint, _)) if endpoint.is_relayed() => "relayed",
                        Some(_) => "direct",
                        None => "searching",
                    }
                    .to_owned(),
                    path_losses: self.paths.losses(&m.peer),
                    keepalive_secs: live.map_or(0, |p| p.persistent_keepalive),
                    multicast_groups: self.servers.groups(m.virtual_ip).map(<[_]>::to_vec),
                }
            })
            .collect()
    }
}
