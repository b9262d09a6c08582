//! The NAT lab: home routers in network namespaces, doing NAT with iptables, behind which
//! `lanrage netcheck` must name what each router was configured as, measured against coturn
//! (a STUN server nobody here wrote) listening on two addresses of an "internet" namespace, so
//! that it supports RFC 5780's CHANGE-REQUEST. Needs root, `ip`, `iptables` and `turnserver`
//! (Debian's coturn).
//!
//! ```text
//!                      internet (coturn on 198.18.100.1 and .2, ports 3478 and 3479)
//!        ┌───────────┬───────────┼───────────┬────────────┐
//!      cone      symmetric   forwarded    blocked       public host (no NAT)
//!    (MASQUERADE) (--random-  (DNAT of    (UDP dropped)
//!        │          fully)    all UDP)        │
//!      home         home        home         home
//! ```

#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{Netns, Proc, TempDir, unique_tag, wait_until};
use serde_json::Value;

const STUN_PRIMARY: &str = "198.18.100.1";
const STUN_ALTERNATE: &str = "198.18.100.2";

/// What a home router does, and what netcheck must call it.
struct Router {
    name: &'static str,
    /// iptables rules in the router's namespace (`{wan}`/`{home}` replaced).
    rules: &'static [&'static str],
    expect: &'static str,
}

const ROUTERS: [Router; 4] = [
    Router {
        name: "cone",
        // Linux keeps the source port and filters by connection tracking.
        rules: &["-t nat -A POSTROUTING -o wan -j MASQUERADE"],
        expect: "port-restricted",
    },
    Router {
        name: "symmetric",
        rules: &["-t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully"],
        expect: "symmetric",
    },
    Router {
        name: "forwarded",
        // Every UDP port forwarded to the one host: anyone may send to its mapping.
        rules: &[
            "-t nat -A POSTROUTING -o wan -j MASQUERADE",
            "-t nat -A PREROUTING -i wan -p udp -j DNAT --to-destination {home}",
        ],
        expect: "full-cone",
    },
    Router {
        name: "blocked",
        rules: &[
            "-t nat -A POSTROUTING -o wan -j MASQUERADE",
            "-A FORWARD -p udp -j DROP",
        ],
        expect: "udp-blocked",
    },
];

/// Namespaces are deleted when this drops (fields drop in order: processes first).
struct Lab {
    _coturn: Proc,
    homes: Vec<(String, &'static str, Netns)>,
    _routers: Vec<Netns>,
    internet: Netns,
    _dir: TempDir,
}

/// A veth pair between two namespaces, named `a_name` in `a` and `b_name` in `b`.
fn link(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    // Made in the root namespace, so unique across tests running at once.
    let tmp = format!("lrt{}", unique_tag());
    common::run(
        None,
        &[
            "ip",
            "link",
            "add",
            "dev",
            &tmp,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{tmp}p"),
        ],
    );
    common::run(
        None,
        &[
            "ip", "link", "set", "dev", &tmp, "netns", &a.name, "name", a_name,
        ],
    );
    common::run(
        None,
        &[
            "ip",
            "link",
            "set",
            "dev",
            &format!("{tmp}p"),
            "netns",
            &b.name,
            "name",
            b_name,
        ],
    );
    a.run(&["ip", "link", "set", a_name, "up"]);
    b.run(&["ip", "link", "set", b_name, "up"]);
}

impl Lab {
    fn new() -> Lab {
        common::require_root();
        let tag = unique_tag();
        let dir = TempDir::new(&format!("natlab-{tag}"));
        let internet = Netns::new(format!("lrnat-{tag}-inet"));
        for ip in [STUN_PRIMARY, STUN_ALTERNATE] {
            internet.run(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        }
        let mut routers = Vec::new();
        let mut homes = Vec::new();
        for (k, router) in ROUTERS.iter().enumerate() {
            let k = k + 1;
            let r = Netns::new(format!("lrnat-{tag}-r{k}"));
            let h = Netns::new(format!("lrnat-{tag}-h{k}"));
            let wan = format!("wan{k}");
            link(&internet, &wan, &r, "wan");
            internet.run(&[
                "ip",
                "addr",
                "add",
                &format!("198.18.{k}.1/24"),
                "dev",
                &wan,
            ]);
            r.run(&[
                "ip",
                "addr",
                "add",
                &format!("198.18.{k}.2/24"),
                "dev",
                "wan",
            ]);
            r.run(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("198.18.{k}.1"),
            ]);
            link(&r, "lan", &h, "lan");
            let home = format!("192.168.{k}.2");
            r.run(&[
                "ip",
                "addr",
                "add",
                &format!("192.168.{k}.1/24"),
                "dev",
                "lan",
            ]);
            h.run(&["ip", "addr", "add", &format!("{home}/24"), "dev", "lan"]);
            h.run(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("192.168.{k}.1"),
            ]);
            r.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            for rule in router.rules {
                let rule = rule.replace("{home}", &home);
                let mut argv = vec!["iptables"];
                argv.extend(rule.split_whitespace());
                r.run(&argv);
            }
            routers.push(r);
            homes.push((router.name.to_owned(), router.expect, h));
        }
        // A host on the internet itself: no NAT at all.
        let public = Netns::new(format!("lrnat-{tag}-pub"));
        link(&internet, "wan9", &public, "wan");
        internet.run(&["ip", "addr", "add", "198.18.9.1/24", "dev", "wan9"]);
        public.run(&["ip", "addr", "add", "198.18.9.2/24", "dev", "wan"]);
        public.run(&["ip", "route", "add", "default", "via", "198.18.9.1"]);
        homes.push(("public".to_owned(), "open", public));

        let pidfile = dir.path().join("turnserver.pid");
        let coturn = Proc::spawn(
            Some(&internet.name),
            &[
                "turnserver",
                "-n",
                "--stun-only",
                "--listening-ip",
                STUN_PRIMARY,
                "--listening-ip",
                STUN_ALTERNATE,
                "--listening-port",
                "3478",
                "--alt-listening-port",
                "3479",
                "--no-tcp",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--log-file",
                "stdout",
                "--pidfile",
                &pidfile.to_string_lossy(),
            ],
            None,
        );
        wait_until(
            Duration::from_secs(10),
            "coturn listening on 4 UDP sockets",
            || {
                let out = internet.run(&["ss", "-Hlun"]);
                [STUN_PRIMARY, STUN_ALTERNATE].iter().all(|ip| {
                    out.contains(&format!("{ip}:3478")) && out.contains(&format!("{ip}:3479"))
                })
            },
        );
        Lab {
            _coturn: coturn,
            homes,
            _routers: routers,
            internet,
            _dir: dir,
        }
    }
}

#[test]
fn netcheck_names_each_routers_nat() {
    let lab = Lab::new();
    let server = format!("{STUN_PRIMARY}:3478");
    // All at once: each takes up to two give-up periods (5 s) when answers are dropped.
    let runs: Vec<_> = lab
        .homes
        .iter()
        .map(|(name, expect, ns)| {
            let proc = Proc::spawn(
                Some(&ns.name),
                &[
                    env!("CARGO_BIN_EXE_lanrage"),
                    "netcheck",
                    "--json",
                    "--stun",
                    &server,
                ],
                None,
            );
            (name, *expect, proc)
        })
        .collect();
    let mut failures = Vec::new();
    for (name, expect, proc) in runs {
        let out = proc.check(Duration::from_secs(20));
        let report: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{name}: netcheck --json printed no JSON ({e}): {out}"));
        if report["nat_type"] != expect {
            failures.push(format!("{name}: expected {expect}, report {report:#}"));
        }
        if expect != "udp-blocked" {
            let rtt = report["servers"][0]["rtt_ms"].as_f64();
            assert!(rtt.is_some_and(|r| r < 1000.0), "{name}: {report:#}");
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(internet namespace {})",
        failures.join("\n"),
        lab.internet.name
    );
}

/// The daemon measures its NAT from the WireGuard port itself, so the reflexive address it
/// reports (and tells its party) is the one peers can reach: MASQUERADE keeps the port.
#[test]
fn the_daemon_checks_its_nat_from_the_wireguard_port() {
    let lab = Lab::new();
    let server = format!("{STUN_PRIMARY}:3478");
    let mut daemons = Vec::new();
    for (name, expect, ns) in lab
        .homes
        .iter()
        .filter(|(n, _, _)| n == "cone" || n == "symmetric")
    {
        let data = lab._dir.path().join(format!("data-{name}"));
        let log = lab._dir.path().join(format!("daemon-{name}.log"));
        let script = format!("exec \"$@\" 2>'{}'", log.display());
        let daemon = Proc::spawn(
            Some(&ns.name),
            &[
                "sh",
                "-c",
                &script,
                "sh",
                "env",
                "RUST_LOG=debug",
                env!("CARGO_BIN_EXE_lanrage"),
                "up",
                "--interface",
                "lr0",
                "--listen-port",
                "51820",
                "--stun",
                &server,
                "--data-dir",
                &data.to_string_lossy(),
            ],
            None,
        );
        daemons.push((name, *expect, ns, daemon, log));
    }
    for (name, expect, ns, _, log) in &daemons {
        let mut last = Value::Null;
        let checked = (0..150).any(|_| {
            let out = common::try_run(
                Some(&ns.name),
                &[env!("CARGO_BIN_EXE_lanrage"), "status", "--json"],
            );
            last = out
                .ok()
                .and_then(|o| serde_json::from_slice(&o.stdout).ok())
                .unwrap_or(Value::Null);
            let done = !last["nat"].is_null();
            if !done {
                std::thread::sleep(Duration::from_millis(100));
            }
            done
        });
        assert!(
            checked,
            "{name}: no NAT check within 15 s; last status {last:#}\ndaemon log {}:\n{}",
            log.display(),
            std::fs::read_to_string(log).unwrap_or_else(|e| e.to_string()),
        );
        assert_eq!(last["nat"]["nat_type"], *expect, "{name}: {last:#}");
        let k = if *name == "cone" { 1 } else { 2 };
        let reflexive = last["nat"]["reflexive"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            reflexive.starts_with(&format!("198.18.{k}.2:")),
            "{name}: {last:#}"
        );
        if *name == "cone" {
            assert_eq!(reflexive, "198.18.1.2:51820", "{name}: the port is kept");
        }
    }
}
