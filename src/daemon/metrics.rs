//! `/metrics`: the daemon in Prometheus's text format (OpenMetrics 1.0), for an operator's
//! Prometheus or a player's Grafana. Counters that live elsewhere (the engine's traffic and
//! drops) are read at each scrape; what only the control thread sees (handshakes, path round
//! trips) is counted here as it happens.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The media type of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A party member, as the metrics name it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The member's name.
    pub peer: String,
    pub virtual_ip: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// One member's traffic and path at the moment of a scrape.
#[derive(Debug, Clone)]
pub struct PeerSample {
    pub labels: PeerLabels,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Its traffic goes through a relay now.
    pub relayed: bool,
    pub path_losses: u32,
}

/// The rest of the daemon's state at a scrape.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub peers: Vec<PeerSample>,
    /// Packets dropped, by reason, since the engine started.
    pub drops: Vec<(&'static str, u64)>,
    pub party_members: usize,
    pub game_scan: Option<Duration>,
}

type HistogramFamily = Family<PeerLabels, Histogram, fn() -> Histogram>;

/// Round trips from 0.25 ms to 4 s, doubling: LAN, internet and a relay across an ocean.
fn rtt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

pub struct Metrics {
    handshakes: Family<PeerLabels, Counter>,
    round_trips: HistogramFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            handshakes: Family::default(),
            round_trips: Family::new_with_constructor(rtt_histogram),
        }
    }
}

impl Metrics {
    /// A WireGuard handshake with `peer` completed.
    pub fn handshake(&self, peer: &PeerLabels) {
        self.handshakes.get_or_create(peer).inc();
    }

    /// A path probe to `peer` came back after `rtt` on the path its traffic takes.
    pub fn round_trip(&self, peer: &PeerLabels, rtt: Duration) {
        self.round_trips
            .get_or_create(peer)
            .observe(rtt.as_secs_f64());
    }

    /// Forgets a member that left, so its series end.
    pub fn forget(&self, peer: &PeerLabels) {
        self.handshakes.remove(peer);
        self.round_trips.remove(peer);
    }

    /// The exposition for one scrape.
    pub fn render(&self, sample: &Sample) -> String {
        let mut registry = Registry::with_prefix("lanrage");
        let traffic = [
            (
                "peer_receive",
                Unit::Bytes,
                "Bytes received from the member (WireGuard messages)",
            ),
            (
                "peer_transmit",
                Unit::Bytes,
                "Bytes sent to the member (WireGuard messages)",
            ),
            (
                "peer_receive_packets",
                Unit::Other(String::new()),
                "WireGuard messages received from the member",
            ),
            (
                "peer_transmit_packets",
                Unit::Other(String::new()),
                "WireGuard messages sent to the member",
            ),
        ];
        for (i, (name, unit, help)) in traffic.into_iter().enumerate() {
            let family = Family::<PeerLabels, Counter>::default();
            for peer in &sample.peers {
                let value = [
                    peer.rx_bytes,
                    peer.tx_bytes,
                    peer.rx_packets,
                    peer.tx_packets,
                ][i];
                family.get_or_create(&peer.labels).inc_by(value);
            }
            match unit {
                Unit::Other(_) => registry.register(name, help, family),
                unit => registry.register_with_unit(name, help, unit, family),
            }
        }
        let relayed = Family::<PeerLabels, Gauge>::default();
        let losses = Family::<PeerLabels, Counter>::default();
        for peer in &sample.peers {
            relayed
                .get_or_create(&peer.labels)
                .set(i64::from(peer.relayed));
            losses
                .get_or_create(&peer.labels)
                .inc_by(u64::from(peer.path_losses));
        }
        registry.register(
            "peer_relayed",
            "1 while the member's traffic goes through a relay, 0 while it goes direct",
            relayed,
        );
        registry.register(
            "path_losses",
            "Times the path to the member went silent and had to be found again",
            losses,
        );
        registry.register(
            "handshakes",
            "WireGuard handshakes completed with the member",
            self.handshakes.clone(),
        );
        registry.register_with_unit(
            "path_rtt",
            "Round trip of path probes on the path the member's traffic takes",
            Unit::Seconds,
            self.round_trips.clone(),
        );
        let drops = Family::<ReasonLabels, Counter>::default();
        for &(reason, count) in &sample.drops {
            drops
                .get_or_create(&ReasonLabels {
                    reason: reason.to_owned(),
                })
                .inc_by(count);
        }
        registry.register("drops", "Packets dropped by the engine, by reason", drops);
        let members = Gauge::<i64>::default();
        members.set(sample.party_members as i64);
        registry.register(
            "party_members",
            "Members of the party, this one included",
            members,
        );
        if let Some(scan) = sample.game_scan {
            let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            gauge.set(scan.as_secs_f64());
            registry.register_with_unit(
                "game_scan",
                "Time the last scan for running games took",
                Unit::Seconds,
                gauge,
            );
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_series_with_units_and_labels() {
        let metrics = Metrics::default();
        let bob = PeerLabels {
            peer: "bob".into(),
            virtual_ip: "10.66.0.3".into(),
        };
        metrics.handshake(&bob);
        metrics.round_trip(&bob, Duration::from_micros(700));
        let text = metrics.render(&Sample {
            peers: vec![PeerSample {
                labels: bob.clone(),
                rx_bytes: 1500,
                tx_bytes: 900,
                rx_packets: 10,
                tx_packets: 7,
                relayed: true,
                path_losses: 1,
            }],
            drops: vec![("no_route", 4)],
            party_members: 2,
            game_scan: Some(Duration::from_millis(3)),
        });
        let labels = r#"{peer="bob",virtual_ip="10.66.0.3"}"#;
        for line in [
            format!("lanrage_peer_receive_bytes_total{labels} 1500"),
            format!("lanrage_peer_transmit_bytes_total{labels} 900"),
            format!("lanrage_peer_receive_packets_total{labels} 10"),
            format!("lanrage_peer_transmit_packets_total{labels} 7"),
            format!("lanrage_peer_relayed{labels} 1"),
            format!("lanrage_path_losses_total{labels} 1"),
            format!("lanrage_handshakes_total{labels} 1"),
            format!("lanrage_path_rtt_seconds_count{labels} 1"),
            r#"lanrage_drops_total{reason="no_route"} 4"#.to_owned(),
            "lanrage_party_members 2".to_owned(),
            "# TYPE lanrage_path_rtt_seconds histogram".to_owned(),
            "# UNIT lanrage_path_rtt_seconds seconds".to_owned(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // 0.7 ms falls in the 1 ms bucket (0.25, 0.5, 1, …), not the 0.5 ms one.
        let bucket = |le: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("lanrage_path_rtt_seconds_bucket{")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(bucket("0.0005").as_deref(), Some("0"), "{text}");
        assert_eq!(bucket("0.001").as_deref(), Some("1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        metrics.forget(&bob);
        assert!(!metrics.render(&Sample::default()).contains("bob"));
    }
}
