//! `lanrage demo`: a whole party on one machine, as root, with nothing from outside. Builds a
//! small LAN of network namespaces (a hub with the control server, three players on a
//! bridge), starts a daemon per player, forms a party through the CLI, shows every step, the
//! peers with their virtual IPs and the ping between them, then removes everything again,
//! also when interrupted.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

const HUB_IP: &str = "192.168.66.254";
const SERVER_PORT: u16 = 8667;
const PLAYERS: [&str; 3] = ["alice", "bob", "carol"];
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Keep the namespaces and processes until Enter is pressed, to look around.
    #[arg(long)]
    pub pause: bool,
}

pub fn run(args: DemoArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let mut lab = Lab::new(stop)?;
    let result = lab.show(&args);
    // Drop cleans up; say so, since it takes a moment.
    println!("\n==> cleaning up");
    drop(lab);
    result
}

struct Lab {
    id: String,
    dir: PathBuf,
    bin: PathBuf,
    namespaces: Vec<String>,
    children: Vec<Child>,
    stop: Arc<AtomicBool>,
    started: Instant,
}

impl Lab {
    fn new(stop: Arc<AtomicBool>) -> Result<Lab> {
        let id = format!("lrdemo{}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        Ok(Lab {
            id,
            dir,
            bin: std::env::current_exe().context("cannot find the lanrage binary")?,
            namespaces: Vec::new(),
            children: Vec::new(),
            stop,
            started: Instant::now(),
        })
    }

    fn show(&mut self, args: &DemoArgs) -> Result<()> {
        self.step("building a LAN: a hub namespace with a bridge, three player namespaces")?;
        self.build_lan()?;

        self.step(&format!(
            "starting the control server on {HUB_IP}:{SERVER_PORT}"
        ))?;
        let hub = self.ns("hub");
        let db = self.dir.join("control.db");
        let server = self.spawn(
            &hub,
            &[
                "control-server",
                "--listen",
                &format!("{HUB_IP}:{SERVER_PORT}"),
                "--db",
                &db.to_string_lossy(),
            ],
            "control-server",
        )?;
        self.children.push(server);
        self.wait("the control server", || {
            let out = self.sh(&hub, &["ss", "-ltnH"])?;
            Ok(String::from_utf8_lossy(&out.stdout).contains(&format!(":{SERVER_PORT}")))
        })?;

        for (i, player) in PLAYERS.iter().enumerate() {
            self.step(&format!("{player}: lanrage up"))?;
            let ns = self.ns(player);
            let data = self.dir.join(player);
            let child = self.spawn(
                &ns,
                &[
                    "up",
                    "--name",
                    player,
                    "--server",
                    &format!("http://{HUB_IP}:{SERVER_PORT}"),
                    "--data-dir",
                    &data.to_string_lossy(),
                ],
                player,
            )?;
            self.children.push(child);
            self.wait(&format!("{player}'s daemon"), || {
                Ok(self.lanrage(&ns, &["status", "--json"]).is_ok())
            })?;
            let status = self.lanrage(&ns, &["status", "--json"])?;
            println!(
                "    {player} is 192.168.66.{}, WireGuard key {}",
                i + 1,
                status["public_key"].as_str().unwrap_or("?")
            );
        }

        self.step("alice: lanrage party create \"LAN night\"")?;
        let party = self.lanrage(
            &self.ns("alice"),
            &["party", "create", "LAN night", "--json"],
        )?;
        let code = party["code"].as_str().context("no party code")?.to_owned();
        println!("    party code: {code}");
        for player in &PLAYERS[1..] {
            self.step(&format!("{player}: lanrage party join {code}"))?;
            self.lanrage(&self.ns(player), &["party", "join", &code, "--json"])?;
        }

        self.step("every player's virtual IP")?;
        let mut ips = Vec::new();
        for player in PLAYERS {
            let status = self.lanrage(&self.ns(player), &["status", "--json"])?;
            let ip = status["party"]["virtual_ip"]
                .as_str()
                .context("no virtual IP")?
                .to_owned();
            println!("    {player:<6} {ip}");
            ips.push(ip);
        }

        self.step("ping between every pair, over the virtual LAN")?;
        for (i, from) in PLAYERS.iter().enumerate() {
            for (j, to) in PLAYERS.iter().enumerate() {
                if i == j {
                    continue;
                }
                let ns = self.ns(from);
                let ip = &ips[j];
                self.wait(&format!("{from} to reach {to}"), || {
                    Ok(self.ping(&ns, ip, 1).is_ok())
                })?;
                let rtt = self.ping(&ns, ip, 5)?;
                println!("    {from:<6} → {to:<6} {ip:<15} {rtt}");
            }
        }

        self.step("alice: lanrage peers")?;
        let alice = self.ns("alice");
        let out = self.sh(
            &alice,
            &[
                &self.bin.to_string_lossy(),
                "peers",
                "--data-dir",
                &self.data_dir(&alice),
            ],
        )?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("    {line}");
        }

        self.step("carol: lanrage party leave")?;
        self.lanrage(&self.ns("carol"), &["party", "leave", "--json"])?;
        let left = Instant::now();
        self.wait("alice to see carol leave", || {
            let peers = self.lanrage(&self.ns("alice"), &["peers", "--json"])?;
            Ok(peers.as_array().is_some_and(|p| p.len() == 1))
        })?;
        println!("    alice saw it after {} ms", left.elapsed().as_millis());

        if args.pause {
            println!(
                "\nNamespaces {}-*; try: ip netns exec {} lanrage status --data-dir {}. Press Enter to clean up.",
                self.id,
                self.ns("alice"),
                self.data_dir(&self.ns("alice"))
            );
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        println!(
            "\n==> done in {:.1} s",
            self.started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    fn step(&self, what: &str) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        println!(
            "\n==> [{:5.1} s] {what}",
            self.started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn build_lan(&mut self) -> Result<()> {
        let hub = self.ns("hub");
        self.add_namespace(&hub)?;
        self.sh(&hub, &["ip", "link", "add", "br0", "type", "bridge"])?;
        self.sh(
            &hub,
            &["ip", "addr", "add", &format!("{HUB_IP}/24"), "dev", "br0"],
        )?;
        self.sh(&hub, &["ip", "link", "set", "br0", "up"])?;
        for (i, player) in PLAYERS.iter().enumerate() {
            let ns = self.ns(player);
            self.add_namespace(&ns)?;
            let port = format!("p{}", i + 1);
            cmd(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &hub,
            ])?;
            self.sh(&hub, &["ip", "link", "set", &port, "master", "br0", "up"])?;
            let address = format!("192.168.66.{}/24", i + 1);
            self.sh(&ns, &["ip", "addr", "add", &address, "dev", "eth0"])?;
            self.sh(&ns, &["ip", "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn add_namespace(&mut self, ns: &str) -> Result<()> {
        cmd(&["ip", "netns", "add", ns]).map_err(|e| {
            if e.to_string().contains("Permission denied")
                || e.to_string().contains("Operation not permitted")
            {
                anyhow::anyhow!("lanrage demo builds network namespaces: run it as root")
            } else {
                e
            }
        })?;
        self.namespaces.push(ns.to_owned());
        self.sh(ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn spawn(&self, ns: &str, args: &[&str], log: &str) -> Result<Child> {
        let log = std::fs::File::create(self.dir.join(format!("{log}.log")))?;
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&self.bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start lanrage {}", args[0]))
    }

    fn sh(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        cmd(&full)
    }

    /// The data directory of the player whose namespace is `ns`: its daemon's local API
    /// socket is there, so the CLI is pointed at it (every player is on one file system).
    fn data_dir(&self, ns: &str) -> String {
        let player = ns.strip_prefix(&format!("{}-", self.id)).unwrap_or(ns);
        self.dir.join(player).to_string_lossy().into_owned()
    }

    /// Runs the CLI in `ns` with `args` (which end in --json) and parses its output.
    fn lanrage(&self, ns: &str, args: &[&str]) -> Result<Value> {
        let bin = self.bin.to_string_lossy();
        let data_dir = self.data_dir(ns);
        let mut full = vec![bin.as_ref()];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--data-dir", &data_dir]);
        let out = self.sh(ns, &full)?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// "avg 0.412 ms" from `count` pings.
    fn ping(&self, ns: &str, ip: &str, count: u32) -> Result<String> {
        let out = self.sh(
            ns,
            &[
                "ping",
                "-q",
                "-n",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                ip,
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let avg = text
            .lines()
            .find_map(|l| l.split(" = ").nth(1))
            .and_then(|v| v.split('/').nth(1))
            .unwrap_or("?");
        Ok(format!("avg {avg} ms"))
    }

    fn wait(&self, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            if done().unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {STEP_TIMEOUT:?} waiting for {what}; logs in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            // SIGTERM first so daemons remove their interfaces themselves.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for child in self.children.iter_mut() {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cmd(args: &[&str]) -> Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
