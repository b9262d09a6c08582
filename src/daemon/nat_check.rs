//! The daemon's NAT check: a [`NatProbe`] run from the WireGuard port (the engine sends the
//! requests and hands back what is not WireGuard), so the reflexive address found is the one
//! peers will reach. Run at start, every [`RECHECK`], and when local addresses change.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};
use lanrage_control::nat::classify;
use lanrage_control::nat::probe::{NatProbe, NetReport};
use lanrage_engine::EngineHandle;

/// How often the NAT is measured again: mappings and routers change under a running daemon.
pub const RECHECK: Duration = Duration::from_secs(300);
/// After a round in which no server could be resolved (no network yet, say).
const RETRY: Duration = Duration::from_secs(30);

pub struct NatCheck {
    servers: Vec<String>,
    local: Vec<SocketAddr>,
    next_round: Instant,
    resolving: Option<Receiver<Vec<SocketAddr>>>,
    probe: Option<NatProbe>,
    last: Option<(NetReport, Instant)>,
    /// The next round re-checks mappings only, keeping the last filtering verdict.
    quick: bool,
}

impl NatCheck {
    /// `servers`: STUN servers as HOST:PORT; none turns the check off.
    pub fn new(servers: Vec<String>) -> NatCheck {
        NatCheck {
            servers,
            local: Vec::new(),
            next_round: Instant::now(),
            resolving: None,
            probe: None,
            last: None,
            quick: false,
        }
    }

    /// Our local endpoints (for telling a public address from a NAT); a change starts a new
    /// round.
    pub fn set_local(&mut self, local: Vec<SocketAddr>) {
        if local != self.local {
            self.local = local;
            self.next_round = Instant::now();
        }
    }

    /// Measures the mappings again as soon as possible (a path died: our NAT may have given
    /// us a new mapping that the party must learn). Quick: the filtering tests, which wait
    /// out seconds behind most NATs, are skipped and their last verdict kept.
    pub fn recheck(&mut self) {
        self.next_round = self.next_round.min(Instant::now());
        self.quick = self.last.is_some();
    }

    /// The last finished report and when it finished.
    pub fn last(&self) -> Option<&(NetReport, Instant)> {
        self.last.as_ref()
    }

    /// When [`NatCheck::poll`] next has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.servers.is_empty() {
            return None;
        }
        match (&self.probe, &self.resolving) {
            (Some(probe), _) => probe.poll_timeout(),
            // Resolution reports through its channel; look again shortly.
            (None, Some(_)) => Some(Instant::now() + Duration::from_millis(100)),
            (None, None) => Some(self.next_round),
        }
    }

    /// Starts rounds, sends what is due through `engine`; returns a report when a round ends.
    pub fn poll(&mut self, now: Instant, engine: &EngineHandle) -> Option<NetReport> {
        if self.servers.is_empty() {
            return None;
        }
        if self.probe.is_none() && self.resolving.is_none() && now >= self.next_round {
            self.resolving = Some(resolve_in_background(self.servers.clone()));
        }
        if let Some(resolving) = &self.resolving {
            match resolving.try_recv() {
                Ok(addresses) if addresses.is_empty() => {
                    tracing::debug!(servers = ?self.servers, "no STUN server resolved; NAT check later");
                    self.resolving = None;
                    self.next_round = now + RETRY;
                }
                Ok(addresses) => {
                    self.resolving = None;
                    let probe =
                        NatProbe::new(now, &addresses, self.local.clone(), super::random_id);
                    self.probe = Some(if self.quick {
                        probe.mapping_only()
                    } else {
                        probe
                    });
                }
                Err(crossbeam_channel::TryRecvError::Empty) => {}
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.resolving = None;
                    self.next_round = now + RETRY;
                }
            }
        }
        let probe = self.probe.as_mut()?;
        while let Some((to, request)) = probe.poll_transmit(now) {
            if engine.send_datagram(to, request).is_err() {
                tracing::debug!(%to, "engine gone; STUN request not sent");
            }
        }
        if !probe.is_done() {
            return None;
        }
        let mut report = probe.report();
        self.probe = None;
        if std::mem::take(&mut self.quick) {
            if let Some((last, _)) = &self.last {
                report.facts.filtering = last.facts.filtering;
                report.nat = classify(&report.facts);
            }
        }
        self.next_round = now + RECHECK;
        tracing::info!(nat = %report.nat, mappings = ?report.facts.mappings, "NAT checked");
        self.last = Some((report.clone(), now));
        Some(report)
    }

    /// A datagram the engine did not take as WireGuard: ours if it answers the probe.
    pub fn datagram(&mut self, now: Instant, data: &[u8]) -> bool {
        self.probe
            .as_mut()
            .is_some_and(|probe| probe.handle_datagram(now, data))
    }
}

/// Resolves `servers` off the control thread (DNS can take seconds); IPv4 only, as the
/// engine's socket is.
fn resolve_in_background(servers: Vec<String>) -> Receiver<Vec<SocketAddr>> {
    let (tx, rx) = bounded(1);
    let spawned = std::thread::Builder::new()
        .name("lanrage-stun-dns".into())
        .spawn(move || {
            let addresses: Vec<SocketAddr> = servers
                .iter()
                .filter_map(|name| {
                    crate::netcheck::resolve_v4(name)
                        .inspect_err(|e| {
                            tracing::debug!(error = %format_args!("{e:#}"), "STUN server not resolved")
                        })
                        .ok()
                })
                .collect();
            let _ = tx.send(addresses);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start STUN name resolution");
    }
    rx
}
