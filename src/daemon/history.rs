//! The last minutes of each member's traffic and round trip, one sample a second, for the
//! web UI's graphs (`GET /api/history`). Sans-IO: the control thread records what the engine
//! counted; rates come from the difference between samples.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Samples kept per member: five minutes at one a second.
pub const SAMPLES: usize = 300;
pub const INTERVAL: Duration = Duration::from_secs(1);

/// A member's counters at one moment.
#[derive(Debug, Clone)]
pub struct Reading {
    pub name: String,
    pub virtual_ip: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerHistory {
    pub name: String,
    pub virtual_ip: String,
    /// Bits per second received from and sent to the member, oldest first.
    pub rx_bps: Vec<f64>,
    pub tx_bps: Vec<f64>,
    /// Round trip in milliseconds at each sample (`null` while no path answered).
    pub rtt_ms: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryJson {
    pub interval_s: f64,
    pub peers: Vec<PeerHistory>,
}

#[derive(Debug, Default)]
struct Series {
    last: Option<(Instant, u64, u64)>,
    name: String,
    virtual_ip: String,
    points: VecDeque<(f64, f64, Option<f64>)>,
}

#[derive(Debug, Default)]
pub struct History {
    /// By virtual IP: a member that leaves and comes back continues its line.
    series: BTreeMap<String, Series>,
    next: Option<Instant>,
}

impl History {
    /// Whether a sample is due.
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// Records one sample of every member now in the party; members not in `readings` are
    /// forgotten.
    pub fn record(&mut self, now: Instant, readings: &[Reading]) {
        self.next = Some(now + INTERVAL);
        self.series
            .retain(|ip, _| readings.iter().any(|r| r.virtual_ip == *ip));
        for r in readings {
            let series = self.series.entry(r.virtual_ip.clone()).or_default();
            series.name.clone_from(&r.name);
            series.virtual_ip.clone_from(&r.virtual_ip);
            if let Some((at, rx, tx)) = series.last {
                let secs = now.saturating_duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 * 8.0 / secs;
                    if series.points.len() == SAMPLES {
                        series.points.pop_front();
                    }
                    series
                        .points
                        .push_back((rate(r.rx_bytes, rx), rate(r.tx_bytes, tx), r.rtt_ms));
                }
            }
            series.last = Some((now, r.rx_bytes, r.tx_bytes));
        }
    }

    pub fn json(&self) -> HistoryJson {
        HistoryJson {
            interval_s: INTERVAL.as_secs_f64(),
            peers: self
                .series
                .values()
                .map(|s| PeerHistory {
                    name: s.name.clone(),
                    virtual_ip: s.virtual_ip.clone(),
                    rx_bps: s.points.iter().map(|p| p.0).collect(),
                    tx_bps: s.points.iter().map(|p| p.1).collect(),
                    rtt_ms: s.points.iter().map(|p| p.2).collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(rx: u64, tx: u64) -> Reading {
        Reading {
            name: "bob".into(),
            virtual_ip: "10.66.0.3".into(),
            rx_bytes: rx,
            tx_bytes: tx,
            rtt_ms: Some(0.5),
        }
    }

    #[test]
    fn rates_come_from_differences_and_the_window_is_bounded() {
        let t0 = Instant::now();
        let mut h = History::default();
        assert!(h.due(t0));
        h.record(t0, &[reading(0, 0)]);
        assert!(!h.due(t0) && h.due(t0 + INTERVAL));
        h.record(t0 + INTERVAL, &[reading(1000, 500)]);
        let json = h.json();
        assert_eq!(json.peers[0].rx_bps, [8000.0]);
        assert_eq!(json.peers[0].tx_bps, [4000.0]);
        for i in 2..SAMPLES as u32 + 10 {
            h.record(t0 + INTERVAL * i, &[reading(1000, 500)]);
        }
        assert_eq!(h.json().peers[0].rx_bps.len(), SAMPLES);
        h.record(t0 + INTERVAL * 1000, &[]);
        assert!(h.json().peers.is_empty());
    }
}
