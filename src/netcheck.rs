//! `lanrage netcheck`: what this host's NAT does to UDP, measured with STUN
//! (`lanrage_control::nat::probe`) from a socket of its own, and printed as a NAT type and the
//! facts behind it.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use lanrage_control::nat::probe::{NatProbe, NetReport};
use lanrage_control::nat::{Filtering, NatType};

/// Public STUN servers asked when none is given. None of them supports RFC 5780, so without
/// `--stun` naming one that does, filtering is not measured and a stable mapping is reported
/// as port-restricted (the strictest cone, which hole punching still handles).
pub use lanrage_control::settings::DEFAULT_STUN_SERVERS;

#[derive(Args, Debug, Clone)]
pub struct NetcheckArgs {
    /// STUN server HOST:PORT; repeat for several (default: a few public ones). A server with
    /// an alternate address (RFC 5780, e.g. coturn given two listening IPs) also tells how the
    /// NAT filters.
    #[arg(long = "stun", value_name = "HOST:PORT")]
    pub servers: Vec<String>,
    /// Local UDP port to probe from (0: any free port). The daemon's WireGuard port gives the
    /// mapping peers will see, but only while the daemon is not using it.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: NetcheckArgs) -> Result<()> {
    let names: Vec<String> = if args.servers.is_empty() {
        DEFAULT_STUN_SERVERS.iter().map(|s| s.to_string()).collect()
    } else {
        args.servers.clone()
    };
    let mut servers = Vec::new();
    for name in &names {
        match resolve_v4(name) {
            Ok(addr) => servers.push(addr),
            Err(e) => eprintln!("lanrage: skipping STUN server {name}: {e:#}"),
        }
    }
    if servers.is_empty() {
        bail!(
            "none of the STUN servers could be resolved ({})",
            names.join(", ")
        );
    }
    let socket = UdpSocket::bind(("0.0.0.0", args.port))
        .with_context(|| format!("cannot bind UDP port {}", args.port))?;
    let port = socket.local_addr()?.port();
    let local = crate::daemon::lan::ipv4_addresses("")
        .unwrap_or_default()
        .into_iter()
        .map(|ip| SocketAddr::from((ip, port)))
        .collect();
    if !args.json {
        eprintln!(
            "probing {} STUN server(s) from UDP port {port}…",
            servers.len()
        );
    }
    let report = probe(&socket, &servers, local)?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&to_json(&report))?);
    } else {
        crate::cli::output::write(format_args!("{}", render(&report)));
    }
    Ok(())
}

/// Runs the probe on `socket` to its end (a few seconds at most).
fn probe(socket: &UdpSocket, servers: &[SocketAddr], local: Vec<SocketAddr>) -> Result<NetReport> {
    let mut probe = NatProbe::new(Instant::now(), servers, local, crate::daemon::random_id);
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        while let Some((to, request)) = probe.poll_transmit(now) {
            if let Err(e) = socket.send_to(&request, to) {
                // Unreachable network, say: that server will go unanswered.
                tracing::debug!(%to, error = %e, "STUN request not sent");
            }
        }
        let Some(next) = probe.poll_timeout() else {
            return Ok(probe.report());
        };
        let wait = next.saturating_duration_since(Instant::now());
        socket.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if !probe.handle_datagram(Instant::now(), &buf[..n]) {
                    tracing::debug!(%from, len = n, "ignored a datagram that answers nothing");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                        // An ICMP port unreachable from an earlier send.
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(e).context("receiving STUN answers"),
        }
    }
}

/// `HOST:PORT` to its first IPv4 address (the engine's socket and ours are IPv4).
pub fn resolve_v4(name: &str) -> Result<SocketAddr> {
    name.to_socket_addrs()
        .with_context(|| format!("cannot resolve {name:?} (HOST:PORT)"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{name} has no IPv4 address"))
}

fn describe(nat: NatType) -> &'static str {
    match nat {
        NatType::Unknown => "not measured",
        NatType::Open => "a public address: peers reach this host directly",
        NatType::FullCone => "one mapping, anyone may send to it: direct connections work",
        NatType::Restricted => {
            "one mapping, answers from addresses we sent to: hole punching works"
        }
        NatType::PortRestricted => {
            "one mapping, answers from address and port pairs we sent to: hole punching works"
        }
        NatType::Symmetric => {
            "a new mapping per destination: direct only with a cone peer, else relayed"
        }
        NatType::UdpBlocked => "no STUN answer: UDP seems blocked, only relays over TCP could help",
    }
}

fn filtering_name(f: Option<Filtering>) -> &'static str {
    match f {
        None => "not measured (no STUN server with an alternate address answered)",
        Some(Filtering::EndpointIndependent) => "endpoint-independent",
        Some(Filtering::AddressDependent) => "address-dependent",
        Some(Filtering::AddressAndPortDependent) => "address- and port-dependent",
    }
}

fn render(report: &NetReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "NAT type:  {} — {}", report.nat, describe(report.nat));
    let local: Vec<String> = report.facts.local.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(
        out,
        "local:     {}",
        if local.is_empty() {
            "(no address)".to_owned()
        } else {
            local.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "mapping:   {}",
        if report.facts.mappings.is_empty() {
            "unknown"
        } else if report.facts.mapping_varies() {
            "varies by destination"
        } else {
            "the same for every destination"
        }
    );
    let _ = writeln!(out, "filtering: {}", filtering_name(report.facts.filtering));
    for s in &report.servers {
        let seen = match (s.mapped, s.rtt) {
            (Some(m), Some(rtt)) => format!("sees us as {m} ({:.1} ms)", rtt.as_secs_f64() * 1e3),
            _ => "no answer".to_owned(),
        };
        let _ = writeln!(out, "  {:<24} {seen}", s.server.to_string());
        if let Some(alt) = s.alternate {
            let seen = s
                .alternate_mapped
                .map_or("no answer".to_owned(), |m| format!("sees us as {m}"));
            let _ = writeln!(out, "    alternate {:<14} {seen}", alt.to_string());
        }
    }
    out
}

fn to_json(report: &NetReport) -> serde_json::Value {
    serde_json::json!({
        "nat_type": report.nat.name(),
        "local": report.facts.local,
        "mapping_varies": report.facts.mapping_varies(),
        "filtering": report.facts.filtering.map(|f| match f {
            Filtering::EndpointIndependent => "endpoint-independent",
            Filtering::AddressDependent => "address-dependent",
            Filtering::AddressAndPortDependent => "address-and-port-dependent",
        }),
        "servers": report.servers.iter().map(|s| serde_json::json!({
            "server": s.server,
            "mapped": s.mapped,
            "rtt_ms": s.rtt.map(|r| r.as_secs_f64() * 1e3),
            "alternate": s.alternate,
            "alternate_mapped": s.alternate_mapped,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanrage_control::nat::NatFacts;
    use lanrage_control::nat::probe::ServerReport;

    #[test]
    fn the_report_reads_as_text_and_json() {
        let server: SocketAddr = "198.51.100.1:3478".parse().unwrap();
        let mapped: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let report = NetReport {
            nat: NatType::PortRestricted,
            facts: NatFacts {
                local: vec!["10.0.0.2:5000".parse().unwrap()],
                mappings: vec![(server, mapped)],
                filtering: Some(Filtering::AddressAndPortDependent),
            },
            servers: vec![ServerReport {
                server,
                mapped: Some(mapped),
                rtt: Some(Duration::from_millis(12)),
                alternate: None,
                alternate_mapped: None,
            }],
        };
        let text = render(&report);
        assert!(text.starts_with("NAT type:  port-restricted"), "{text}");
        assert!(
            text.contains("sees us as 203.0.113.7:40000 (12.0 ms)"),
            "{text}"
        );
        let json = to_json(&report);
        assert_eq!(json["nat_type"], "port-restricted");
        assert_eq!(json["servers"][0]["mapped"], "203.0.113.7:40000");
        assert_eq!(json["filtering"], "address-and-port-dependent");
    }
}
