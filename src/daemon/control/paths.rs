//! Paths and relays: where we can be reached, which path to each peer answers best (direct
//! or through a relay), and the relays and grants that make relayed paths.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use lanrage_control::nat::NatType;
use lanrage_control::party::membership::Input;
use lanrage_control::path::PathAddr;
use lanrage_control::path::selector::PathEvent;
use lanrage_control::peer_id::PeerId;
use lanrage_control::server_api::RelaysJson;
use lanrage_engine::wire::{RELAY_HEADER_LEN, write_relay_header};
use lanrage_engine::{DeviceUpdate, Endpoint, PeerUpdate};

use super::{Background, State};
use crate::daemon::events::DaemonEvent;
use crate::daemon::server_client::CallError;

/// How often the relays and our grants for them are fetched again: relays come and go, and
/// grants last an hour.
const GRANTS_REFRESH: Duration = Duration::from_secs(30);
/// After a failed fetch of relays.
const GRANTS_RETRY: Duration = Duration::from_secs(5);

impl State {
    /// Tells the party where we can be reached: every local IPv4 address but loopback and our
    /// own interface, at the WireGuard port, then the external address the router forwards to
    /// us (port mapping; useful whatever the NAT's mapping does), then the reflexive address
    /// the NAT check found (unless the NAT maps per destination, when it would be of no use to
    /// anyone else).
    pub(super) fn check_reachability(&mut self) {
        let local: Vec<SocketAddr> = match crate::daemon::lan::ipv4_addresses(&self.cfg.interface) {
            Ok(addresses) => addresses
                .into_iter()
                .filter(|a| !a.is_link_local())
                .map(|a| SocketAddr::new(IpAddr::V4(a), self.cfg.listen_port))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list local addresses");
                return;
            }
        };
        self.nat.set_local(local.clone());
        let mut endpoints = local;
        if let Some(mapping) = self.mapping {
            if !endpoints.contains(&mapping.external) {
                endpoints.push(mapping.external);
            }
        }
        let mut nat = NatType::Unknown;
        if let Some((report, _)) = self.nat.last() {
            nat = report.nat;
            let reflexive = report.facts.mappings.first().map(|&(_, mapped)| mapped);
            if let Some(mapped) = reflexive.filter(|_| !report.facts.mapping_varies()) {
                if !endpoints.contains(&mapped) {
                    endpoints.push(mapped);
                }
            }
        }
        self.feed(Input::Reachability { endpoints, nat });
    }

    /// Sends the path probes due and points each peer's WireGuard endpoint at its chosen
    /// path.
    pub(super) fn path_timers(&mut self) {
        let now = Instant::now();
        while let Some((to, mut datagram)) = self.paths.poll_transmit(now) {
            if let Some(channel) = to.relay_channel {
                let mut framed = vec![0; RELAY_HEADER_LEN];
                write_relay_header(&mut framed, channel);
                framed.append(&mut datagram);
                datagram = framed;
            }
            if self.cfg.engine.send_datagram(to.addr, datagram).is_err() {
                tracing::debug!(%to, "engine gone; path probe not sent");
            }
        }
        while let Some((peer, rtt)) = self.paths.poll_round_trip() {
            if let Some(labels) = self.metric_labels(peer) {
                self.metrics.round_trip(&labels, rtt);
            }
        }
        while let Some(event) = self.paths.poll_event() {
            match event {
                PathEvent::Chosen {
                    peer,
                    endpoint,
                    rtt,
                } => {
                    tracing::info!(%peer, %endpoint, rtt_ms = rtt.as_secs_f64() * 1e3, "path chosen");
                    self.cfg.events.emit(DaemonEvent::PathChanged {
                        peer: peer.to_string(),
                        name: self.member_names.get(&peer).cloned(),
                        path: endpoint.to_string(),
                        relayed: endpoint.relay_channel.is_some(),
                        rtt_ms: rtt.as_secs_f64() * 1e3,
                    });
                    let mut update = PeerUpdate::new(peer.0);
                    update.endpoint = Some(engine_endpoint(endpoint));
                    self.engine_update(update);
                }
                PathEvent::Lost { peer } => {
                    tracing::warn!(%peer, "no path to the peer answers any more; still trying");
                    self.cfg.events.emit(DaemonEvent::PathLost {
                        peer: peer.to_string(),
                        name: self.member_names.get(&peer).cloned(),
                    });
                    // If our NAT rebound us to a new port, the party must hear of it.
                    self.nat.recheck();
                }
            }
        }
    }

    /// Gives the selector every path to `peer`: its advertised addresses, then the relayed
    /// paths bound for it.
    pub(super) fn set_candidates(&mut self, now: Instant, peer: PeerId) {
        let Some((direct, relayed)) = self.candidates.get(&peer) else {
            return;
        };
        let all: Vec<PathAddr> = direct
            .iter()
            .copied()
            .map(PathAddr::direct)
            .chain(relayed.iter().copied())
            .collect();
        self.paths.set_peer(now, peer, &all);
    }

    /// Fetches relays and grants when due, sends the binds due, and hands the selector the
    /// relayed paths that came or went.
    pub(super) fn relay_timers(&mut self) {
        let now = Instant::now();
        if self.next_grants.is_some_and(|at| at <= now) {
            self.fetch_grants(now);
        }
        while let Some((relay, bind)) = self.relays.poll_transmit(now) {
            if self.cfg.engine.send_datagram(relay, bind).is_err() {
                tracing::debug!(%relay, "engine gone; relay bind not sent");
            }
        }
        let changed: Vec<PeerId> = self
            .candidates
            .iter_mut()
            .filter_map(|(peer, (_, relayed))| {
                let now_paths = self.relays.paths(peer, now);
                (now_paths != *relayed).then(|| {
                    *relayed = now_paths;
                    *peer
                })
            })
            .collect();
        for peer in changed {
            tracing::debug!(%peer, "relayed paths changed");
            self.set_candidates(now, peer);
        }
    }

    /// Asks the server for relays and grants off the control thread; the answer comes back as
    /// `Background::Grants`.
    fn fetch_grants(&mut self, now: Instant) {
        // Until the answer, or until the next retry if the thread cannot start.
        self.next_grants = None;
        let Some(client) = self.cfg.client.as_ref().filter(|_| self.cfg.relays) else {
            return;
        };
        if self.membership.party().is_none() || self.grants_in_flight {
            return;
        }
        let tx = self.background_tx.clone();
        let started = client.in_background(
            |client| client.relays(),
            move |result| drop(tx.send(Background::Grants(result))),
        );
        match started {
            Ok(()) => self.grants_in_flight = true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start fetching relays; trying again shortly");
                self.next_grants = Some(now + GRANTS_RETRY);
            }
        }
    }

    pub(super) fn grants_fetched(&mut self, now: Instant, result: Result<RelaysJson, CallError>) {
        self.grants_in_flight = false;
        if self.membership.party().is_none() {
            return;
        }
        match result {
            Ok(list) => {
                let grants: Vec<_> = list
                    .relays
                    .iter()
                    .flat_map(|relay| {
                        relay
                            .grants
                            .iter()
                            .filter_map(move |g| Some((g.peer, relay.addr, g.to_grant()?)))
                    })
                    .collect();
                tracing::debug!(
                    relays = list.relays.len(),
                    grants = grants.len(),
                    "relay grants fetched"
                );
                self.relays.set_grants(now, &grants);
                self.next_grants = Some(now + GRANTS_REFRESH);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch relays; trying again shortly");
                self.next_grants = Some(now + GRANTS_RETRY);
            }
        }
    }

    pub(super) fn engine_update(&self, peer: PeerUpdate) {
        let update = DeviceUpdate {
            peers: vec![peer],
            ..DeviceUpdate::default()
        };
        if let Err(e) = self.cfg.engine.update(update) {
            tracing::error!(error = %e, "engine refused a peer change");
        }
    }
}

/// The path a datagram from the engine came on: straight from an address, or through a relay
/// channel (the engine strips the relay header).
pub(super) fn path_addr(from: Endpoint) -> PathAddr {
    PathAddr {
        addr: from.addr,
        relay_channel: from.relay_channel,
    }
}

/// Where the engine sends a peer's WireGuard traffic for a chosen path.
pub(super) fn engine_endpoint(path: PathAddr) -> Endpoint {
    Endpoint {
        addr: path.addr,
        relay_channel: path.relay_channel,
    }
}
