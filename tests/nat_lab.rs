//! The NAT lab: home routers in network namespaces, doing NAT with iptables, behind which
//! `lanrage netcheck` must name what each router was configured as, measured against coturn
//! (a STUN server nobody here wrote) listening on two addresses of an "internet" namespace, so
//! that it supports RFC 5780's CHANGE-REQUEST. Needs root, `ip`, `iptables` and `turnserver`
//! (Debian's coturn); the "upnp" router runs `miniupnpd` (Debian's miniupnpd with its nftables
//! backend, miniupnpd-nftables) and needs `nft`.
//!
//! ```text
//!                      internet (coturn on 198.18.100.1 and .2, ports 3478 and 3479)
//!        ┌───────────┬───────────┼───────────┬────────────┐
//!    cone, cone2  symmetric   forwarded    blocked       public host (no NAT)
//!    (MASQUERADE) (--random-  (DNAT of    (UDP dropped)
//!        │          fully)    all UDP)        │
//!      home         home        home         home
//! ```
//!
//! and "upnp": symmetric like "symmetric", with miniupnpd offering PCP, NAT-PMP and UPnP IGD
//! to its home.

#![cfg(target_os = "linux")]

mod common;
mod impair;

use std::time::Duration;

use common::{Netns, Proc, TempDir, unique_tag, wait_until};
use impair::{Impairment, Spec};
use serde_json::Value;

const STUN_PRIMARY: &str = "198.18.100.1";
const STUN_ALTERNATE: &str = "198.18.100.2";

/// What home routers do with unsolicited packets to themselves (OpenWrt's wan zone rejects
/// input). It matters for hole punching: without it, Linux accepts a peer's early probe into
/// its own stack (no listener, an ICMP error), keeps that connection tracked, and when our
/// answer later leaves for the same peer, gives it a new port because the tracked one clashes,
/// so the peer's NAT drops what we send.
const HOME_FIREWALL: &str = "-A INPUT -i wan -m conntrack --ctstate NEW,INVALID -j DROP";

/// What a home router does, and what netcheck must call it.
struct Router {
    name: &'static str,
    /// iptables rules in the router's namespace (`{wan}`/`{home}` replaced).
    rules: &'static [&'static str],
    expect: &'static str,
    /// Runs miniupnpd (PCP, NAT-PMP, UPnP IGD) for its home.
    miniupnpd: bool,
}

const ROUTERS: [Router; 7] = [
    Router {
        name: "cone",
        // Linux keeps the source port and filters by connection tracking.
        rules: &["-t nat -A POSTROUTING -o wan -j MASQUERADE", HOME_FIREWALL],
        expect: "port-restricted",
        miniupnpd: false,
    },
    Router {
        name: "symmetric",
        rules: &[
            "-t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully",
            HOME_FIREWALL,
        ],
        expect: "symmetric",
        miniupnpd: false,
    },
    Router {
        name: "forwarded",
        // Every UDP port forwarded to the one host: anyone may send to its mapping.
        rules: &[
            "-t nat -A POSTROUTING -o wan -j MASQUERADE",
            "-t nat -A PREROUTING -i wan -p udp -j DNAT --to-destination {home}",
        ],
        expect: "full-cone",
        miniupnpd: false,
    },
    Router {
        name: "cone2",
        rules: &["-t nat -A POSTROUTING -o wan -j MASQUERADE", HOME_FIREWALL],
        expect: "port-restricted",
        miniupnpd: false,
    },
    Router {
        name: "symmetric2",
        rules: &[
            "-t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully",
            HOME_FIREWALL,
        ],
        expect: "symmetric",
        miniupnpd: false,
    },
    Router {
        name: "blocked",
        rules: &[
            "-t nat -A POSTROUTING -o wan -j MASQUERADE",
            "-A FORWARD -p udp -j DROP",
        ],
        expect: "udp-blocked",
        miniupnpd: false,
    },
    // Appended last: the routers' subnets are numbered by their place here (this is 7).
    Router {
        name: "upnp",
        rules: &[
            // miniupnpd's own STUN check (is the router's address reachable from outside?)
            // must hear the answers from coturn's other address and port.
            "-A INPUT -i wan -p udp -s 198.18.100.0/24 --sport 3478:3479 -j ACCEPT",
            // Only the home's traffic: the router's own (that STUN check) keeps its ports.
            "-t nat -A POSTROUTING -o wan -s 192.168.0.0/16 -j MASQUERADE --random-fully",
            HOME_FIREWALL,
        ],
        expect: "symmetric",
        miniupnpd: true,
    },
];

/// The chains miniupnpd (nftables backend) adds its rules to, named in its config. Its own
/// forward chain accepts by default, unlike Debian's `nft_init.sh`; its DNAT runs in
/// prerouting, so a mapped port's traffic is forwarded and never meets the INPUT firewall.
const MINIUPNPD_NFT: &str = "table inet miniupnpd {
    chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
    chain miniupnpd { }
    chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
    chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
    chain prerouting_miniupnpd { }
    chain postrouting_miniupnpd { }
}
";

/// miniupnpd's config for router `k`: the router's wan address is in 198.18.0.0/15, which
/// miniupnpd takes for a private one (port forwarding off) unless STUN shows it reachable.
fn miniupnpd_conf(k: usize) -> String {
    format!(
        "ext_ifname=wan
listening_ip=lan
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=yes
ext_perform_stun=yes
ext_stun_host={STUN_PRIMARY}
ext_stun_port=3478
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
uuid=6c3f0e1a-8d1b-4a2e-9f00-0000000000{k:02x}
allow 1024-65535 192.168.0.0/16 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"
    )
}

/// Namespaces are deleted when this drops (fields drop in order: processes first).
struct Lab {
    _miniupnpd: Vec<Proc>,
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
    /// `lanrage up` in `ns` on port 51820 with the lab's STUN server and `args`; its log
    /// (debug level) goes to a file returned beside it.
    fn daemon(&self, name: &str, ns: &Netns, args: &[&str]) -> (Proc, std::path::PathBuf) {
        let data = self._dir.path().join(format!("data-{name}"));
        data_dirs()
            .lock()
            .unwrap()
            .insert(ns.name.clone(), data.clone());
        let log = self._dir.path().join(format!("daemon-{name}.log"));
        let script = format!("exec \"$@\" 2>'{}'", log.display());
        let stun = format!("{STUN_PRIMARY}:3478");
        let data = data.to_string_lossy();
        let mut argv = vec![
            "sh",
            "-c",
            &script,
            "sh",
            "env",
            "RUST_LOG=lanrage=debug",
            env!("CARGO_BIN_EXE_lanrage"),
            "up",
            "--interface",
            "lr0",
            "--listen-port",
            "51820",
            "--stun",
            &stun,
            "--data-dir",
            &data,
            "--name",
            name,
        ];
        argv.extend_from_slice(args);
        (Proc::spawn(Some(&ns.name), &argv, None), log)
    }

    fn home(&self, name: &str) -> &Netns {
        &self
            .homes
            .iter()
            .find(|(n, _, _)| n == name)
            .expect("a home of that name")
            .2
    }

    fn new() -> Lab {
        common::require_root();
        let tag = unique_tag();
        let dir = TempDir::new(&format!("natlab-{tag}"));
        let internet = Netns::new(format!("lrnat-{tag}-inet"));
        // It routes between the homes' routers.
        internet.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for ip in [STUN_PRIMARY, STUN_ALTERNATE] {
            internet.run(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        }
        let mut routers = Vec::new();
        let mut homes = Vec::new();
        let mut upnp_routers = Vec::new();
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
            if router.miniupnpd {
                let nft = dir.path().join(format!("miniupnpd-{k}.nft"));
                std::fs::write(&nft, MINIUPNPD_NFT).expect("write the nftables file");
                r.run(&["nft", "-f", &nft.to_string_lossy()]);
                upnp_routers.push(k);
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
        // After coturn: miniupnpd checks with STUN at start whether it can forward ports.
        let miniupnpd = upnp_routers
            .into_iter()
            .map(|k| {
                let router: &Netns = &routers[k - 1];
                let conf = dir.path().join(format!("miniupnpd-{k}.conf"));
                std::fs::write(&conf, miniupnpd_conf(k)).expect("write miniupnpd.conf");
                let log = dir.path().join(format!("miniupnpd-{k}.log"));
                let pid = dir.path().join(format!("miniupnpd-{k}.pid"));
                let script = format!("exec \"$@\" 2>'{}'", log.display());
                let proc = Proc::spawn(
                    Some(&router.name),
                    &[
                        "sh",
                        "-c",
                        &script,
                        "sh",
                        "miniupnpd",
                        "-d",
                        "-f",
                        &conf.to_string_lossy(),
                        "-P",
                        &pid.to_string_lossy(),
                    ],
                    None,
                );
                let text = || std::fs::read_to_string(&log).unwrap_or_default();
                wait_until(
                    Duration::from_secs(15),
                    "miniupnpd listening for NAT-PMP/PCP",
                    || text().contains("Listening for NAT-PMP/PCP"),
                );
                assert!(
                    text().contains("Port forwarding is now enabled"),
                    "miniupnpd will not forward ports:\n{}",
                    text()
                );
                proc
            })
            .collect();
        Lab {
            _miniupnpd: miniupnpd,
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
    let mut daemons = Vec::new();
    for (name, expect, ns) in lab
        .homes
        .iter()
        .filter(|(n, _, _)| n == "cone" || n == "symmetric")
    {
        let (daemon, log) = lab.daemon(name, ns, &[]);
        daemons.push((name, *expect, ns, daemon, log));
    }
    for (name, expect, ns, _, log) in &daemons {
        let mut last = Value::Null;
        let checked = (0..150).any(|_| {
            let data_dir = data_dir(ns);
            let out = common::try_run(
                Some(&ns.name),
                &[
                    env!("CARGO_BIN_EXE_lanrage"),
                    "status",
                    "--json",
                    "--data-dir",
                    &data_dir,
                ],
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

const CONTROL_SERVER: &str = "198.18.100.10:8667";

/// Pings `ip` from `ns` (each attempt waits up to 1 s), `pause` apart, up to `tries` times;
/// the time from `since` to the first reply, if one came.
fn ping_until_reply(
    ns: &Netns,
    ip: &str,
    since: std::time::Instant,
    tries: usize,
    pause: Duration,
) -> Option<Duration> {
    for _ in 0..tries {
        let ok = common::try_run(Some(&ns.name), &["ping", "-c", "1", "-W", "1", "-q", ip])
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(since.elapsed());
        }
        std::thread::sleep(pause);
    }
    None
}

/// Each namespace's daemon's data directory, by namespace name: the CLI reaches a daemon
/// through the socket there (every lab shares one file system).
fn data_dirs() -> &'static std::sync::Mutex<std::collections::HashMap<String, std::path::PathBuf>> {
    static DIRS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, std::path::PathBuf>>,
    > = std::sync::OnceLock::new();
    DIRS.get_or_init(Default::default)
}

/// The data directory of the daemon started in `ns`.
fn data_dir(ns: &Netns) -> String {
    data_dirs()
        .lock()
        .unwrap()
        .get(&ns.name)
        .unwrap_or_else(|| panic!("no daemon was started in {}", ns.name))
        .to_string_lossy()
        .into_owned()
}

/// The CLI's JSON answer in `ns`, or `Null` if it failed.
fn cli(ns: &Netns, args: &[&str]) -> Value {
    let data_dir = data_dir(ns);
    let mut argv = vec![env!("CARGO_BIN_EXE_lanrage")];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--json", "--data-dir", &data_dir]);
    common::try_run(Some(&ns.name), &argv)
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(Value::Null)
}

/// What a party of two in the lab came to: join to first ping reply, and each side's peer
/// listing once both measured their path.
struct TwoPlayers {
    first_reply: Duration,
    /// Join to both sides on a direct path (when one was expected).
    direct_after: Option<Duration>,
    alice_peers: Value,
    bob_peers: Value,
    logs: String,
}

/// Alice (in `alice_home`) creates a party through a control server on the internet, Bob (in
/// `bob_home`) joins, and Bob pings Alice's virtual IP until she answers.
fn party_of_two(alice_home: &str, bob_home: &str) -> TwoPlayers {
    party_of_two_then(alice_home, bob_home, |_, _| {})
}

/// Relays on the internet: announced address and UDP port.
const RELAYS: [(&str, &str); 2] = [("198.18.100.20", "3490"), ("198.18.100.21", "3491")];

/// A relay of the lab: its process and log.
struct LabRelay {
    addr: String,
    proc: Option<Proc>,
    log: std::path::PathBuf,
}

impl LabRelay {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it (SIGTERM) and returns its log, which ends with its counters.
    fn stop(&mut self) -> String {
        if let Some(proc) = self.proc.take() {
            let _ = proc.terminate(Duration::from_secs(5));
        }
        self.log()
    }
}

/// As [`party_of_two`], then runs `then(lab, alice's virtual IP)` while everything still runs.
fn party_of_two_then(
    alice_home: &str,
    bob_home: &str,
    then: impl FnOnce(&Lab, &str),
) -> TwoPlayers {
    party_with_relays(alice_home, bob_home, 1, true, |lab, ip, _| then(lab, ip))
}

/// As [`party_of_two_then`], with `relays` relays registered with the control server, which
/// `then` may stop. With `direct`, both sides must settle on a direct path first.
fn party_with_relays(
    alice_home: &str,
    bob_home: &str,
    relays: usize,
    direct: bool,
    then: impl FnOnce(&Lab, &str, &mut [LabRelay]),
) -> TwoPlayers {
    party_in_lab(Lab::new(), alice_home, bob_home, relays, direct, then)
}

/// As [`party_with_relays`], in a lab the caller has already set up (impaired links, say).
fn party_in_lab(
    lab: Lab,
    alice_home: &str,
    bob_home: &str,
    relays: usize,
    direct: bool,
    then: impl FnOnce(&Lab, &str, &mut [LabRelay]),
) -> TwoPlayers {
    lab.internet
        .run(&["ip", "addr", "add", "198.18.100.10/32", "dev", "lo"]);
    let db = lab._dir.path().join("control.db");
    let secret = lab._dir.path().join("relay.secret");
    let _server = Proc::spawn(
        Some(&lab.internet.name),
        &[
            env!("CARGO_BIN_EXE_lanrage"),
            "control-server",
            "--listen",
            CONTROL_SERVER,
            "--db",
            &db.to_string_lossy(),
            "--relay-secret-file",
            &secret.to_string_lossy(),
        ],
        None,
    );
    let url = format!("http://{CONTROL_SERVER}");
    wait_until(Duration::from_secs(10), "the relay secret written", || {
        secret.exists()
    });
    let mut lab_relays: Vec<LabRelay> = RELAYS[..relays]
        .iter()
        .map(|(ip, port)| {
            lab.internet
                .run(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
            let log = lab._dir.path().join(format!("relay-{ip}.log"));
            let script = format!("exec \"$@\" 2>'{}'", log.display());
            let public = format!("{ip}:{port}");
            let proc = Proc::spawn(
                Some(&lab.internet.name),
                &[
                    "sh",
                    "-c",
                    &script,
                    "sh",
                    "env",
                    "RUST_LOG=lanrage=debug",
                    env!("CARGO_BIN_EXE_lanrage"),
                    "relay",
                    "--server",
                    &url,
                    "--public-addr",
                    &public,
                    "--secret-file",
                    &secret.to_string_lossy(),
                    "--port",
                    port,
                    "--threads",
                    "2",
                ],
                None,
            );
            LabRelay {
                addr: public,
                proc: Some(proc),
                log,
            }
        })
        .collect();
    for relay in &lab_relays {
        wait_until(Duration::from_secs(10), "relays registered", || {
            relay.log().contains("registered with the control server")
        });
    }
    let (alice_ns, bob_ns) = (lab.home(alice_home), lab.home(bob_home));
    let (_alice, alice_log) = lab.daemon("alice", alice_ns, &["--server", &url]);
    let (_bob, bob_log) = lab.daemon("bob", bob_ns, &["--server", &url]);
    let relay_logs: Vec<_> = lab_relays
        .iter()
        .map(|r| (r.addr.clone(), r.log.clone()))
        .collect();
    let logs = || {
        let mut all = format!(
            "alice:\n{}\nbob:\n{}",
            std::fs::read_to_string(&alice_log).unwrap_or_default(),
            std::fs::read_to_string(&bob_log).unwrap_or_default()
        );
        for (addr, log) in &relay_logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            all.push_str(&format!("\nrelay {addr}:\n{text}"));
        }
        all
    };
    for ns in [alice_ns, bob_ns] {
        wait_until(
            Duration::from_secs(15),
            "daemons up with their NAT checked",
            || !cli(ns, &["status"])["nat"].is_null(),
        );
    }
    let party = cli(alice_ns, &["party", "create", "lab night"]);
    let code = party["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {party}\n{}", logs()));
    let joined_at = std::time::Instant::now();
    let joined = cli(bob_ns, &["party", "join", code]);
    assert!(!joined.is_null(), "join failed\n{}", logs());
    let alice_ip = cli(alice_ns, &["status"])["party"]["virtual_ip"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let first_reply = ping_until_reply(
        bob_ns,
        &alice_ip,
        joined_at,
        100,
        Duration::from_millis(100),
    );
    let first_reply =
        first_reply.unwrap_or_else(|| panic!("bob never reached alice at {alice_ip}\n{}", logs()));
    eprintln!("{alice_home} <-> {bob_home}: join -> first ping reply {first_reply:?}");
    for ns in [alice_ns, bob_ns] {
        wait_until(
            Duration::from_secs(5),
            "both sides measured the path",
            || cli(ns, &["peers"])[0]["rtt_ms"].is_f64(),
        );
    }
    // A relay answers within one round trip, hole punching takes a few: the relayed path
    // may carry the first packets, and the direct one must replace it soon after.
    let mut direct_after = None;
    if direct {
        wait_until(
            Duration::from_secs(5),
            "both sides on a direct path",
            || {
                [alice_ns, bob_ns]
                    .iter()
                    .all(|ns| cli(ns, &["peers"])[0]["path"] == "direct")
            },
        );
        direct_after = Some(joined_at.elapsed());
        eprintln!("{alice_home} <-> {bob_home}: join -> both direct {direct_after:?}");
    }
    then(&lab, &alice_ip, &mut lab_relays);
    TwoPlayers {
        first_reply,
        direct_after,
        alice_peers: cli(alice_ns, &["peers"]),
        bob_peers: cli(bob_ns, &["peers"]),
        logs: logs(),
    }
}

/// Two players behind port-restricted NATs (Linux MASQUERADE, the hardest cone to punch):
/// each learns the other's reflexive address, both probe at once, the NATs open, and the
/// tunnel runs directly between the two routers' public addresses.
#[test]
fn players_behind_two_cone_nats_connect_directly() {
    let run = party_of_two("cone", "cone2");
    assert!(
        run.first_reply < Duration::from_secs(2),
        "{:?}",
        run.first_reply
    );
    let direct = run.direct_after.unwrap_or_default();
    assert!(direct < Duration::from_secs(2), "{direct:?}\n{}", run.logs);
    let (a, b) = (&run.alice_peers[0], &run.bob_peers[0]);
    assert_eq!(b["endpoint"], "198.18.1.2:51820", "{b:#}\n{}", run.logs);
    assert_eq!(a["endpoint"], "198.18.4.2:51820", "{a:#}\n{}", run.logs);
    for p in [a, b] {
        assert_eq!(p["path"], "direct", "{p:#}");
        assert_eq!(p["path_losses"], 0, "{p:#}");
    }
}

/// Behind a symmetric NAT, Bob's mapping toward Alice is not the one STUN saw; but Alice's NAT
/// lets anything in (full cone), so his first probe reaches her, she learns the address it came
/// from, answers there, and the path is direct.
#[test]
fn a_symmetric_nat_reaches_a_full_cone_directly() {
    let run = party_of_two("forwarded", "symmetric");
    let (a, b) = (&run.alice_peers[0], &run.bob_peers[0]);
    assert_eq!(b["endpoint"], "198.18.3.2:51820", "{b:#}\n{}", run.logs);
    let bob_seen = a["endpoint"].as_str().unwrap_or_default();
    assert!(bob_seen.starts_with("198.18.2.2:"), "{a:#}\n{}", run.logs);
}

/// Alice's router gets a new public address mid-party (an ISP re-addressing it; Linux's
/// MASQUERADE forgets the old mappings). Her probes now come from an address Bob's NAT never
/// let in, and his go where nobody listens: both paths go silent, Alice's daemon re-checks its
/// NAT at once, tells the party its new reflexive address, and the two punch through again.
#[test]
fn a_new_public_address_is_found_and_the_party_reconnects() {
    let mut resumed = None;
    let run = party_of_two_then("cone", "cone2", |lab, alice_ip| {
        let router = &lab._routers[0];
        let bob = lab.home("cone2");
        router.run(&["ip", "addr", "del", "198.18.1.2/24", "dev", "wan"]);
        router.run(&["ip", "addr", "add", "198.18.1.3/24", "dev", "wan"]);
        // The default route left with the old address.
        router.run(&["ip", "route", "add", "default", "via", "198.18.1.1"]);
        let changed = std::time::Instant::now();
        resumed = ping_until_reply(bob, alice_ip, changed, 60, Duration::from_millis(50));
        // The relay may carry it meanwhile; the direct path comes back once punched again.
        wait_until(
            Duration::from_secs(10),
            "direct again at the new address",
            || cli(bob, &["peers"])[0]["endpoint"] == "198.18.1.3:51820",
        );
    });
    let resumed = resumed.unwrap_or_else(|| panic!("never reconnected\n{}", run.logs));
    eprintln!("address change -> ping resumes after {resumed:?}");
    let b = &run.bob_peers[0];
    assert_eq!(b["endpoint"], "198.18.1.3:51820", "{b:#}\n{}", run.logs);
    assert!(
        resumed < Duration::from_secs(5),
        "{resumed:?}\n{}",
        run.logs
    );
}

/// Alice's router maps per destination (symmetric) but runs miniupnpd: her daemon has it
/// forward her WireGuard port (PCP, the first protocol tried) and advertises the mapped
/// address, so Bob, behind a symmetric NAT too, reaches her directly where the two would
/// otherwise need a relay; she answers the address his probes come from.
#[test]
fn a_router_that_maps_ports_makes_a_symmetric_nat_reachable() {
    let mut status = Value::Null;
    let run = party_of_two_then("upnp", "symmetric2", |lab, _| {
        status = cli(lab.home("upnp"), &["status"]);
    });
    let (a, b) = (&run.alice_peers[0], &run.bob_peers[0]);
    assert_eq!(b["path"], "direct", "{b:#}\n{}", run.logs);
    assert_eq!(b["endpoint"], "198.18.7.2:51820", "{b:#}\n{}", run.logs);
    assert_eq!(a["path"], "direct", "{a:#}\n{}", run.logs);
    let bob_seen = a["endpoint"].as_str().unwrap_or_default();
    assert!(bob_seen.starts_with("198.18.5.2:"), "{a:#}\n{}", run.logs);
    assert_eq!(
        status["port_mapping"], "198.18.7.2:51820 via PCP",
        "{status:#}\n{}",
        run.logs
    );
}

/// Both players behind symmetric NATs: each one's mapping toward the other is new and
/// unknown, and each NAT drops what the other sends, so no direct path exists. Both bind their
/// session at the relay (which learns the mappings toward itself), and the tunnel runs
/// through it.
#[test]
fn two_symmetric_nats_connect_through_a_relay() {
    let run = party_with_relays("symmetric", "symmetric2", 1, false, |_, _, _| {});
    let relay = format!("{}:{}", RELAYS[0].0, RELAYS[0].1);
    for p in [&run.alice_peers[0], &run.bob_peers[0]] {
        assert_eq!(p["path"], "relayed", "{p:#}\n{}", run.logs);
        assert_eq!(p["endpoint"], relay.as_str(), "{p:#}\n{}", run.logs);
    }
    assert!(
        run.first_reply < Duration::from_secs(3),
        "{:?}\n{}",
        run.first_reply,
        run.logs
    );
}

/// Two relays; the one in use dies mid-party. Its sessions' probes go unanswered, the path
/// selector takes the other relay's path (bound and measured all along), and ping resumes.
/// Meanwhile garbage and forged frames sent to the surviving relay are dropped and counted.
#[test]
fn a_dead_relay_is_left_for_another_and_strangers_are_refused() {
    let mut resumed = None;
    let mut counters = String::new();
    let run = party_with_relays(
        "symmetric",
        "symmetric2",
        2,
        false,
        |lab, alice_ip, relays| {
            let bob = lab.home("symmetric2");
            let in_use = cli(bob, &["peers"])[0]["endpoint"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let (dead, alive): (Vec<_>, Vec<_>) = relays.iter_mut().partition(|r| r.addr == in_use);
            let [dead] =
                <[_; 1]>::try_from(dead).unwrap_or_else(|_| panic!("no relay in use: {in_use}"));
            let killed = std::time::Instant::now();
            dead.proc.take();
            resumed = ping_until_reply(bob, alice_ip, killed, 100, Duration::from_millis(50));
            let now_via = cli(bob, &["peers"])[0]["endpoint"].clone();
            assert_eq!(
                now_via,
                alive[0].addr.as_str(),
                "bob moved to the other relay"
            );
            // A stranger on the internet: a frame that is no relay frame, one on a channel nobody
            // holds, and a forged bind.
            let survivor = &alive[0];
            let (ip, port) = survivor.addr.split_once(':').unwrap_or_default();
            let public = lab.home("public");
            for payload in [
                "hello relay",
                "LRrd\\x01\\x02\\x03\\x04junk",
                "LRrb\\x01forged-bind",
            ] {
                public.run(&[
                    "bash",
                    "-c",
                    &format!("printf '{payload}' > /dev/udp/{ip}/{port}"),
                ]);
            }
            std::thread::sleep(Duration::from_millis(200));
            counters = alive
                .into_iter()
                .next()
                .map(LabRelay::stop)
                .unwrap_or_default();
        },
    );
    let resumed = resumed.unwrap_or_else(|| panic!("never resumed\n{}", run.logs));
    eprintln!("relay killed -> ping resumes after {resumed:?}");
    assert!(
        resumed < Duration::from_secs(5),
        "{resumed:?}\n{}",
        run.logs
    );
    for p in [&run.alice_peers[0], &run.bob_peers[0]] {
        assert_eq!(p["path"], "relayed", "{p:#}\n{}", run.logs);
    }
    let last = last_counters(&counters);
    for reason in ["not_relay_frame=", "unknown_channel=", "bind_malformed="] {
        assert!(last.contains(reason), "{reason} missing: {last}");
    }
}

/// A stranger floods the relay that carries a session with garbage at full speed: frames
/// with the relay's data magic and a channel nobody holds, the costliest garbage to refuse
/// (it passes the magic check and is looked up). The relay refuses every one, counted, and
/// answers none (it never sends more than it was sent, and to strangers nothing); the
/// session it serves keeps passing the game's pings meanwhile.
#[test]
fn a_relay_flooded_with_garbage_keeps_serving_its_session() {
    let mut figures = String::new();
    let mut counters = String::new();
    let run = party_with_relays(
        "symmetric",
        "symmetric2",
        1,
        false,
        |lab, alice_ip, relays| {
            let bob = lab.home("symmetric2");
            let public = lab.home("public");
            let (ip, port) = RELAYS[0];
            let garbage = lab._dir.path().join("garbage");
            let mut frame = b"LRrd\xde\xad\xbe\xef".to_vec();
            frame.resize(100, 0x5a);
            std::fs::write(&garbage, &frame).expect("write the garbage frame");
            let answered = |ns: &Netns| ns.run(&["nstat", "-az", "UdpInDatagrams"]);
            let before = answered(public);
            let flood = Proc::spawn(
                Some(&public.name),
                &[
                    "timeout",
                    "-s",
                    "INT",
                    "6",
                    "hping3",
                    "--udp",
                    "--flood",
                    "-p",
                    port,
                    "-d",
                    "100",
                    "-E",
                    &garbage.to_string_lossy(),
                    ip,
                ],
                None,
            );
            std::thread::sleep(Duration::from_secs(1));
            // The game: 20 packets a second for 4 s, through the flooded relay.
            let game = common::try_run(
                Some(&bob.name),
                &["ping", "-q", "-i", "0.05", "-c", "80", "-W", "1", alice_ip],
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
            let flooded = flood.wait_timeout(Duration::from_secs(15));
            let sent = flooded
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            let summary = game
                .lines()
                .find(|l| l.contains("packets transmitted"))
                .unwrap_or_default()
                .to_owned();
            let replies = ping_replies(&summary).unwrap_or(0);
            let flood_line = sent
                .lines()
                .find(|l| l.contains("packets transmitted"))
                .unwrap_or_default()
                .to_owned();
            figures = format!("flood: {flood_line}; game: {summary}");
            assert!(
                replies >= 40,
                "the session lost more than half its pings under the flood: {figures}"
            );
            // Nothing came back to the flooder but what the kernel itself says.
            let after = answered(public);
            assert_eq!(
                before.split_whitespace().nth(2),
                after.split_whitespace().nth(2),
                "the relay answered the flood"
            );
            assert!(
                ping_until_reply(bob, alice_ip, std::time::Instant::now(), 5, Duration::ZERO)
                    .is_some(),
                "no ping after the flood"
            );
            counters = relays[0].stop();
        },
    );
    eprintln!("{figures}");
    let last = last_counters(&counters);
    eprintln!("{last}");
    let refused: u64 = last
        .split_once("unknown_channel=")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        refused > 10_000,
        "the flood was not refused as such: {last}\n{}",
        run.logs
    );
}

/// NAT rebinding: Alice's router (symmetric) forgets its mappings mid-party, so her next
/// datagrams leave from a new external port. Bob's side (full cone) hears her probes and
/// WireGuard from the new port: the probes become a candidate, WireGuard roams, and traffic
/// resumes.
#[test]
fn a_rebound_nat_port_is_followed() {
    let mut resumed = None;
    let mut ports = (String::new(), String::new());
    let run = party_of_two_then("symmetric", "forwarded", |lab, alice_ip| {
        let router = &lab._routers[1];
        let bob = lab.home("forwarded");
        ports.0 = cli(bob, &["peers"])[0]["endpoint"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        router.run(&["conntrack", "-F"]);
        let flushed = std::time::Instant::now();
        resumed = ping_until_reply(bob, alice_ip, flushed, 60, Duration::from_millis(50));
        wait_until(Duration::from_secs(5), "bob on alice's new mapping", || {
            let now = cli(bob, &["peers"])[0]["endpoint"].clone();
            ports.1 = now.as_str().unwrap_or_default().to_owned();
            ports.1 != ports.0 && ports.1.starts_with("198.18.2.2:")
        });
    });
    let resumed = resumed.unwrap_or_else(|| panic!("never resumed\n{}", run.logs));
    eprintln!(
        "conntrack flushed ({} -> {}) -> ping resumes after {resumed:?}",
        ports.0, ports.1
    );
    assert!(
        resumed < Duration::from_secs(5),
        "{resumed:?}\n{}",
        run.logs
    );
    assert_eq!(run.bob_peers[0]["path"], "direct", "{}", run.logs);
}

/// The internet path misbehaves as a long route over bad Wi-Fi does: Alice's access link loses
/// 10 % of packets each way, delays each by 50 ± 20 ms, and lets 5 % overtake others.
/// STUN, hole punching and the WireGuard handshake all happen through it; then 64 MiB cross
/// the tunnel intact, over 8 connections, while a game's 50 packets a second keep flowing.
#[test]
fn a_lossy_reordering_internet_path_still_carries_the_party() {
    let lab = Lab::new();
    // Both directions of Alice's router's link to the internet.
    let link = Impairment::start(
        &lab.internet,
        "wan1",
        "198.18.1.0/24",
        Spec {
            loss: 0.10,
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(20),
            reorder: 0.05,
        },
    );
    let mut figures = String::new();
    let run = party_in_lab(lab, "cone", "cone2", 1, false, |lab, alice_ip, _| {
        let (alice, bob) = (lab.home("cone"), lab.home("cone2"));
        // Loss-based TCP (the default, cubic) manages about MSS/RTT * 1.22/sqrt(loss), some
        // 50 KB/s here, over any carrier: 64 MiB would take 20 minutes. Bulk senders on lossy
        // paths use BBR, which paces by measured bandwidth instead.
        for ns in [alice, bob] {
            ns.run(&["sysctl", "-qw", "net.ipv4.tcp_congestion_control=bbr"]);
        }
        let dir = lab._dir.path();
        let payload = dir.join("payload");
        let len: u64 = 64 << 20;
        let written = std::process::Command::new("head")
            .args(["-c", &len.to_string(), "/dev/urandom"])
            .stdout(std::fs::File::create(&payload).expect("create the payload"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(written, "could not write {}", payload.display());
        // A game's traffic meanwhile: 100-byte packets, 50 a second, for 10 s.
        let game = Proc::spawn(
            Some(&bob.name),
            &[
                "ping", "-q", "-i", "0.02", "-c", "500", "-s", "100", alice_ip,
            ],
            None,
        );
        let elapsed = parallel_transfer(bob, alice, alice_ip, &payload, 5001);
        let game = game.check(Duration::from_secs(60));
        let summary = game
            .lines()
            .filter(|l| l.contains("packets transmitted") || l.starts_with("rtt"))
            .collect::<Vec<_>>()
            .join("; ");
        let replies = ping_replies(&summary).unwrap_or_else(|| panic!("no ping summary in {game}"));
        // Each way loses 10 %: about 81 % of round trips complete.
        assert!(
            replies >= 325,
            "only {replies} of 500 game packets answered: {summary}"
        );
        // The same path without the tunnel, for scale: 8 MiB the same way, from Alice's home
        // to a host on the internet, where the tunnel's outer packets go.
        let raw = dir.join("raw");
        let raw_len: u64 = 8 << 20;
        std::fs::write(&raw, vec![0x5a; raw_len as usize]).expect("write the raw payload");
        let raw_elapsed = parallel_transfer(alice, &lab.internet, "198.18.100.1", &raw, 5101);
        let rate = |bytes: u64, time: Duration| bytes as f64 * 8.0 / time.as_secs_f64() / 1e6;
        let (tunnel, raw) = (rate(len, elapsed), rate(raw_len, raw_elapsed));
        figures = format!(
            "64 MiB intact in {elapsed:.1?} ({tunnel:.2} Mbit/s; TCP on the path without the \
             tunnel {raw:.2} Mbit/s, ratio {:.2}); game packets: {summary}",
            tunnel / raw
        );
    });
    let counts = link.stop();
    eprintln!(
        "lossy path: join -> first reply {:?}; {figures}; link: {counts:?}",
        run.first_reply
    );
    assert!(counts.reordered > 0, "nothing was reordered: {counts:?}");
    for p in [&run.alice_peers[0], &run.bob_peers[0]] {
        let path = p["path"].as_str().unwrap_or_default();
        assert!(path == "direct" || path == "relayed", "{p:#}\n{}", run.logs);
    }
}

/// The last counters line in a relay's log (it logs them on exit).
fn last_counters(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| l.contains("relay counters"))
        .unwrap_or_else(|| panic!("no counters in the relay's log:\n{log}"))
}

/// Replies in iputils ping's summary: "500 packets transmitted, 404 received, ...".
fn ping_replies(summary: &str) -> Option<u32> {
    summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" received")?.parse().ok())
}

/// Sends `payload` from `from` to `to_ip` in `to` over [`STREAMS`] TCP connections at once
/// (ports from `base_port`), one slice each, and checks each slice's SHA-256 on arrival; the
/// time it took. Several connections, as download managers and game patchers use: on a lossy
/// path each TCP connection's rate is bounded by its loss and round trip, whatever carries it.
fn parallel_transfer(
    from: &Netns,
    to: &Netns,
    to_ip: &str,
    payload: &std::path::Path,
    base_port: u16,
) -> Duration {
    let len = std::fs::metadata(payload).map_or(0, |m| m.len());
    let slice = len / STREAMS;
    let path = payload.to_string_lossy();
    // dd counts in slices, so slice i is bytes i*slice .. (i+1)*slice.
    let part = |i: u64| format!("dd if='{path}' bs={slice} skip={i} count=1 status=none");
    let sums: Vec<String> = (0..STREAMS)
        .map(|i| common::run(None, &["bash", "-c", &format!("{} | sha256sum", part(i))]))
        .collect();
    let receivers: Vec<Proc> = (0..STREAMS)
        .map(|i| {
            let port = (base_port + i as u16).to_string();
            Proc::spawn(
                Some(&to.name),
                &[
                    "bash",
                    "-c",
                    "set -o pipefail; nc -l \"$0\" \"$1\" </dev/null | sha256sum",
                    to_ip,
                    &port,
                ],
                None,
            )
        })
        .collect();
    wait_until(Duration::from_secs(5), "receivers listening", || {
        let listening = to.run(&["ss", "-Hltn"]);
        (0..STREAMS).all(|i| listening.contains(&format!(":{} ", base_port + i as u16)))
    });
    let started = std::time::Instant::now();
    let senders: Vec<Proc> = (0..STREAMS)
        .map(|i| {
            let send = format!("{} | nc -N {to_ip} {}", part(i), base_port + i as u16);
            Proc::spawn(Some(&from.name), &["bash", "-c", &send], None)
        })
        .collect();
    for sender in senders {
        sender.check(Duration::from_secs(600));
    }
    let elapsed = started.elapsed();
    for (i, (receiver, sent)) in receivers.into_iter().zip(&sums).enumerate() {
        let received = receiver.check(Duration::from_secs(30));
        assert_eq!(
            received.split_whitespace().next(),
            sent.split_whitespace().next(),
            "slice {i} of {path} arrived changed or cut short"
        );
    }
    elapsed
}

/// Connections [`parallel_transfer`] uses.
const STREAMS: u64 = 8;

/// A port-restricted cone and a symmetric NAT: the symmetric side's mapping toward the cone is
/// unknown and the cone admits only what answers its own sends, so punching usually fails;
/// the party works anyway, directly if the punch got through, else through the relay.
#[test]
fn a_port_restricted_cone_and_a_symmetric_nat_connect_one_way_or_the_other() {
    let run = party_with_relays("cone", "symmetric", 1, false, |_, _, _| {});
    for p in [&run.alice_peers[0], &run.bob_peers[0]] {
        let path = p["path"].as_str().unwrap_or_default();
        assert!(path == "direct" || path == "relayed", "{p:#}\n{}", run.logs);
    }
    eprintln!(
        "cone <-> symmetric: {} / {}",
        run.alice_peers[0]["path"], run.bob_peers[0]["path"]
    );
}
