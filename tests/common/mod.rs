//! Network-namespace harness for the `lanrage wg` interop tests (Linux, root).
//!
//! Each test gets two fresh namespaces joined by a veth pair (the "underlay"), with one
//! userspace WireGuard daemon — `lanrage wg` or `wireguard-go` — in each. The daemons are
//! configured only the way a user would: `wg` over the UAPI socket, `ip` for addresses and
//! link state. That keeps the tests honest about `lanrage wg` being a drop-in for wireguard-go.
//!
//! Names embed the pid and a per-process counter: tests run as parallel threads, several test
//! binaries may run at once, and both `/var/run/netns` and `/var/run/wireguard/IFNAME.sock` are
//! shared by every namespace. All waits are bounded, every failure says which namespace ran
//! which command and what it printed, and everything is torn down by `Drop`, also when a test
//! panics — in which case the daemons' `wg show` state and logs are printed first.

#![allow(dead_code)] // Not every test binary uses every helper.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default bound for one helper command (`ip`, `wg`, ...): they finish in milliseconds unless
/// something hangs, e.g. a daemon that accepts the UAPI connection but never answers.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon may take to create its TUN and serve its UAPI socket.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// First contact includes a handshake; WireGuard retries a lost initiation after 5 s, so this
/// covers one retry.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(12);

/// Addresses and port of one side of a [`Pair`]. Every test has its own namespaces, so these
/// are the same in every test.
pub struct Role {
    pub name: &'static str,
    /// Address on the veth ("underlay"), /24.
    pub underlay: &'static str,
    pub port: u16,
    /// Tunnel addresses, /24 and /64 on the interface, /32 and /128 as the peer's allowed IPs.
    pub inner4: &'static str,
    pub inner6: &'static str,
}

pub const RESPONDER: Role = Role {
    name: "responder",
    underlay: "10.0.0.1",
    port: 51820,
    inner4: "10.9.0.1",
    inner6: "fd00::1",
};

pub const INITIATOR: Role = Role {
    name: "initiator",
    underlay: "10.0.0.2",
    port: 51821,
    inner4: "10.9.0.2",
    inner6: "fd00::2",
};

/// Name of the veth end in each namespace (names only need to be unique per namespace).
pub const VETH: &str = "veth0";

const WIREGUARD_GO: &str = "/usr/bin/wireguard-go";
const UAPI_DIR: &str = "/var/run/wireguard";
/// Bytes of a daemon log printed on failure (the end, where the failure is).
const LOG_TAIL: usize = 64 * 1024;

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// Sends `sig` to `pid` (negative: a process group) with kill(1), keeping the tests free of
/// unsafe code. Only called for children not yet reaped, so the id cannot have been reused.
fn signal(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Which userspace WireGuard runs in a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// `lanrage wg -f IFNAME`, the implementation under test.
    Lanrage,
    /// `wireguard-go -f IFNAME` from Debian, the reference peer.
    WireguardGo,
}

impl Impl {
    /// Program and arguments that run this implementation in the foreground for `ifname`,
    /// with `options` before the interface name.
    fn argv<'a>(self, ifname: &'a str, options: &[&'a str]) -> Vec<&'a str> {
        let mut argv = match self {
            Impl::Lanrage => vec![env!("CARGO_BIN_EXE_lanrage"), "wg", "-f"],
            Impl::WireguardGo => vec![WIREGUARD_GO, "-f"],
        };
        argv.extend_from_slice(options);
        argv.push(ifname);
        argv
    }
}

/// Environment for every daemon. wireguard-go: Debian's build runs without the first (it only
/// prints a banner) but older builds refuse to start on Linux without it; the second makes it
/// log handshakes. `lanrage wg` may honour LOG_LEVEL too; RUST_LOG is inherited as is.
const DAEMON_ENV: [(&str, &str); 2] = [
    ("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1"),
    ("LOG_LEVEL", "verbose"),
];

/// Panics with a clear message unless we are root: namespaces, veth and TUN need it.
pub fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert!(
        euid == "0",
        "the interop tests create network namespaces, veth pairs and TUN devices and must run \
         as root (effective uid is {euid}); run e.g. `sudo -E cargo test --release --test interop`"
    );
}

/// A short unique tag "PID-N" (hex): pid separates processes, N separates tests in one process.
pub fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{n:x}", std::process::id())
}

/// Polls `ready` every 50 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn describe(ns: Option<&str>, argv: &[&str]) -> String {
    let place = ns.map_or_else(|| "root netns".to_owned(), |ns| format!("netns {ns}"));
    format!("[{place}] `{}`", argv.join(" "))
}

/// Formats a command's result for failure messages.
pub fn show_output(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// A helper process run in a namespace (or the root one) with stdout and stderr in temp files
/// rather than pipes, so it can never block on a full pipe nor make us wait for a leftover
/// grandchild holding a pipe open. It is its own process group; dropping it while it runs
/// kills the whole group (e.g. `bash` and the `socat` it started).
pub struct Proc {
    desc: String,
    child: Child,
    reaped: bool,
    out_path: PathBuf,
    err_path: PathBuf,
}

impl Proc {
    /// Starts `argv` in `ns` (via `ip netns exec`), feeding `stdin` if given; panics if it
    /// cannot be started.
    pub fn spawn(ns: Option<&str>, argv: &[&str], stdin: Option<&[u8]>) -> Proc {
        Proc::try_spawn(ns, argv, stdin).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Proc::spawn`], without panicking (for teardown, which may run while unwinding).
    pub fn try_spawn(
        ns: Option<&str>,
        argv: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Proc, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let desc = describe(ns, argv);
        let base = std::env::temp_dir().join(format!(
            "lanrage-itest-{}-cmd{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let out_path = base.with_extension("out");
        let err_path = base.with_extension("err");
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(argv);
                c
            }
            None => {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        let spawned = File::create(&out_path)
            .and_then(|out| Ok((out, File::create(&err_path)?)))
            .and_then(|(out, err)| {
                cmd.stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
            });
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = fs::remove_file(&out_path);
                let _ = fs::remove_file(&err_path);
                return Err(format!("{desc}: cannot start: {e}"));
            }
        };
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // Tiny inputs (keys): they fit the pipe buffer, so this cannot block.
            let _ = pipe.write_all(data);
        }
        Ok(Proc {
            desc,
            child,
            reaped: false,
            out_path,
            err_path,
        })
    }

    /// What this process is, for messages.
    pub fn desc(&self) -> &str {
        &self.desc
    }

    /// Waits at most `timeout`; on timeout the process group is killed and the error carries
    /// whatever it printed. A non-zero exit is not an error here (see [`check`]).
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<Output, String> {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    signal(-(self.child.id() as i32), SIGKILL);
                    match self.child.wait() {
                        Ok(status) => break status,
                        Err(e) => return Err(format!("{}: wait after kill: {e}", self.desc)),
                    }
                }
                Ok(None) => thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("{}: wait failed: {e}", self.desc)),
            }
        };
        self.reaped = true;
        let out = Output {
            status,
            stdout: fs::read(&self.out_path).unwrap_or_default(),
            stderr: fs::read(&self.err_path).unwrap_or_default(),
        };
        if timed_out {
            return Err(format!(
                "{}: timed out after {timeout:?} and was killed\n{}",
                self.desc,
                show_output(&out)
            ));
        }
        Ok(out)
    }

    /// Asks the process to stop (SIGTERM to its group) and waits at most `timeout` for it.
    pub fn terminate(self, timeout: Duration) -> Result<Output, String> {
        signal(-(self.child.id() as i32), SIGTERM);
        self.wait_timeout(timeout)
    }

    /// Waits (bounded) and panics unless the command succeeded; returns its stdout.
    pub fn check(self, timeout: Duration) -> String {
        let desc = self.desc.clone();
        let out = self.wait_timeout(timeout).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "{desc} failed\n{}", show_output(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            signal(-(self.child.id() as i32), SIGKILL);
            let _ = self.child.wait();
        }
        let _ = fs::remove_file(&self.out_path);
        let _ = fs::remove_file(&self.err_path);
    }
}

/// Runs a command (bounded by [`CMD_TIMEOUT`]) and returns its output, successful or not;
/// never panics.
pub fn try_run(ns: Option<&str>, argv: &[&str]) -> Result<Output, String> {
    Proc::try_spawn(ns, argv, None)?.wait_timeout(CMD_TIMEOUT)
}

/// Runs a command (bounded) and panics, with its stderr, unless it succeeds; returns stdout.
pub fn run(ns: Option<&str>, argv: &[&str]) -> String {
    Proc::spawn(ns, argv, None).check(CMD_TIMEOUT)
}

/// A temp directory for keys and payloads, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("lanrage-itest-{tag}"));
        let _ = fs::remove_dir_all(&path); // leftover of a killed run that had our pid
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A named network namespace, deleted on drop (which also destroys its veth end).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        if Path::new("/var/run/netns").join(&name).exists() {
            // Only a killed earlier run with our pid can have left this name behind.
            let _ = try_run(None, &["ip", "netns", "del", &name]);
        }
        run(None, &["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn run(&self, argv: &[&str]) -> String {
        run(Some(&self.name), argv)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match try_run(None, &["ip", "netns", "del", &self.name]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "teardown: deleting netns {}: {}",
                self.name,
                show_output(&out)
            ),
            Err(e) => eprintln!("teardown: {e}"),
        }
    }
}

/// A userspace WireGuard daemon running in the foreground in a namespace, its stdout and
/// stderr in a log file. Dropping it stops it (SIGTERM, then SIGKILL) and removes a stale UAPI
/// socket; if the test is failing, its `wg show` state and log are printed first.
pub struct Daemon {
    pub imp: Impl,
    pub ns: String,
    pub ifname: String,
    log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `imp` for `ifname` in `ns` and waits (bounded) until its UAPI socket accepts
    /// connections, which is when `wg` can configure it.
    pub fn spawn(imp: Impl, ns: &str, ifname: &str, log: PathBuf) -> Daemon {
        Daemon::spawn_with(imp, ns, ifname, log, &[])
    }

    /// As [`Daemon::spawn`], with command-line `options` for the daemon.
    pub fn spawn_with(imp: Impl, ns: &str, ifname: &str, log: PathBuf, options: &[&str]) -> Daemon {
        let socket = uapi_socket(ifname);
        let _ = fs::remove_file(&socket); // stale, from a killed run that had our pid
        let log_file =
            File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let argv = imp.argv(ifname, options);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(&argv)
            .envs(DAEMON_ENV)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log fd"))
            .stderr(log_file)
            .process_group(0);
        let desc = describe(Some(ns), &argv);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{desc}: cannot start {imp:?}: {e}"));
        let mut daemon = Daemon {
            imp,
            ns: ns.to_owned(),
            ifname: ifname.to_owned(),
            log,
            child,
            exited: None,
        };
        daemon.wait_for_socket();
        daemon
    }

    /// `/var/run/wireguard/IFNAME.sock`, where `wg` looks for userspace implementations.
    pub fn socket_path(&self) -> PathBuf {
        uapi_socket(&self.ifname)
    }

    fn wait_for_socket(&mut self) {
        let socket = self.socket_path();
        let deadline = Instant::now() + SOCKET_TIMEOUT;
        loop {
            if let Some(status) = self.poll_exit() {
                panic!(
                    "{} exited ({status}) before serving its UAPI socket {} (log below)",
                    self.name(),
                    socket.display()
                );
            }
            if UnixStream::connect(&socket).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not serve its UAPI socket {} within {SOCKET_TIMEOUT:?} (log below)",
                self.name(),
                socket.display()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn name(&self) -> String {
        format!(
            "{:?} daemon for {} in netns {}",
            self.imp, self.ifname, self.ns
        )
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// CPU time (user and system) the daemon has used so far, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) from its closing parenthesis:
        // utime and stime are the 14th and 15th fields of the line.
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|t| t.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        // The kernel's USER_HZ is 100 on every architecture Linux runs this on.
        Duration::from_millis(ticks * 10)
    }

    /// Panics unless the daemon still runs: a crash during a test is a failure even when the
    /// traffic checks happened to pass before it.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.poll_exit() {
            panic!("{} died during the test: {status} (log below)", self.name());
        }
    }

    /// Sends SIGTERM (what wg-quick, systemd or Ctrl-C amount to) and waits, bounded, for the
    /// daemon to exit; returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.poll_exit() {
            return status;
        }
        signal(self.child.id() as i32, SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.poll_exit() {
                return status;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM (log below)",
            self.name()
        );
    }

    /// The daemon's output so far (its tail, if long).
    pub fn log(&self) -> String {
        let mut text = Vec::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_end(&mut text);
        }
        let skip = text.len().saturating_sub(LOG_TAIL);
        let mut s = String::new();
        if skip > 0 {
            let _ = writeln!(s, "[... {skip} bytes elided ...]");
        }
        s.push_str(&String::from_utf8_lossy(&text[skip..]));
        s
    }

    fn dump(&mut self) {
        let state = match self.poll_exit() {
            Some(status) => format!("EXITED: {status}"),
            None => "running".to_owned(),
        };
        eprintln!("===== {} ({state}) =====", self.name());
        if self.exited.is_none() {
            let argv = ["wg", "show", self.ifname.as_str(), "dump"];
            let out = Proc::try_spawn(Some(&self.ns), &argv, None)
                .and_then(|p| p.wait_timeout(Duration::from_secs(2)));
            match out {
                Ok(out) => eprintln!(
                    "--- wg show {} dump ---\n{}",
                    self.ifname,
                    show_output(&out)
                ),
                Err(e) => eprintln!("--- {e}"),
            }
        }
        eprintln!(
            "--- log ---\n{}\n===== end of {} =====",
            self.log(),
            self.ifname
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump();
        }
        if self.poll_exit().is_none() {
            let pid = self.child.id() as i32;
            signal(pid, SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.poll_exit().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if self.poll_exit().is_none() {
                eprintln!("teardown: {} ignored SIGTERM, killing it", self.name());
                signal(-pid, SIGKILL);
                let _ = self.child.wait();
            }
        }
        let _ = fs::remove_file(self.socket_path());
    }
}

fn uapi_socket(ifname: &str) -> PathBuf {
    Path::new(UAPI_DIR).join(format!("{ifname}.sock"))
}

/// Result of one `ping` burst.
pub struct Ping {
    pub desc: String,
    pub received: u32,
    pub output: Output,
}

impl Ping {
    fn report(&self) -> String {
        format!("{}\n{}", self.desc, show_output(&self.output))
    }
}

/// A `ping` still running.
struct PendingPing {
    desc: String,
    proc: Proc,
    start: Instant,
    timeout: Duration,
}

impl PendingPing {
    fn finish(self) -> Ping {
        let output = self
            .proc
            .wait_timeout(self.timeout)
            .unwrap_or_else(|e| panic!("{e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        // iputils: "3 packets transmitted, 3 received, 0% packet loss, time 401ms"
        let received = stdout
            .lines()
            .filter(|l| l.contains("packets transmitted"))
            .flat_map(|l| l.split(", "))
            .find_map(|part| part.strip_suffix(" received")?.trim().parse().ok())
            .unwrap_or(0);
        // Shown with the output of a failing test: which step took how long.
        eprintln!(
            "{}: {received} received in {:.2?}",
            self.desc,
            self.start.elapsed()
        );
        Ping {
            desc: self.desc,
            received,
            output,
        }
    }
}

/// Waits (bounded) until bursts of pings get no reply at all on every `(from, to address)`
/// path. The bursts run concurrently, as each one that fails waits out its 1 s reply timeout.
pub fn assert_pings_fail(paths: &[(&Node, &str)], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let pending: Vec<_> = paths
            .iter()
            .map(|(node, dst)| node.start_ping(dst, &["-c", "3", "-W", "1"], 2))
            .collect();
        let passing: Vec<Ping> = pending
            .into_iter()
            .map(PendingPing::finish)
            .filter(|p| p.received > 0)
            .collect();
        if passing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "traffic still passes {timeout:?} after it should have stopped:\n{}",
            passing
                .iter()
                .map(Ping::report)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// One peer of the `wg show IF dump` output.
#[derive(Debug)]
pub struct DumpPeer {
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Parsed `wg show IF dump` (tab-separated: one interface line, then one line per peer).
#[derive(Debug)]
pub struct Dump {
    pub private_key: String,
    pub public_key: String,
    pub listen_port: u16,
    pub peers: Vec<DumpPeer>,
}

impl Dump {
    pub fn parse(text: &str) -> Dump {
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
        assert!(
            head.len() == 4,
            "bad interface line in `wg show dump`:\n{text}"
        );
        let num = |s: &str| -> u64 {
            s.parse()
                .unwrap_or_else(|_| panic!("bad number {s:?} in `wg show dump`:\n{text}"))
        };
        let peers = lines
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                assert!(f.len() == 8, "bad peer line in `wg show dump`:\n{text}");
                DumpPeer {
                    public_key: f[0].to_owned(),
                    endpoint: (f[2] != "(none)").then(|| f[2].to_owned()),
                    allowed_ips: if f[3] == "(none)" {
                        Vec::new()
                    } else {
                        f[3].split(',').map(str::to_owned).collect()
                    },
                    latest_handshake: num(f[4]),
                    rx_bytes: num(f[5]),
                    tx_bytes: num(f[6]),
                }
            })
            .collect();
        Dump {
            private_key: head[0].to_owned(),
            public_key: head[1].to_owned(),
            listen_port: num(head[2]) as u16,
            peers,
        }
    }
}

/// One side of a tunnel: its namespace, daemon, keys and addresses.
pub struct Node {
    /// "initiator" or "responder", for messages.
    pub role: &'static str,
    pub imp: Impl,
    pub ifname: String,
    /// Current underlay address on [`VETH`] (changes when the node roams).
    pub underlay: String,
    pub port: u16,
    pub inner4: &'static str,
    pub inner6: &'static str,
    pub private_key: String,
    pub public_key: String,
    pub key_file: PathBuf,
    // Field order is drop order: stop the daemon before deleting its namespace.
    pub daemon: Daemon,
    pub netns: Netns,
}

impl Node {
    pub fn ns(&self) -> &str {
        &self.netns.name
    }

    /// Runs a command in this node's namespace; panics unless it succeeds.
    pub fn run(&self, argv: &[&str]) -> String {
        run(Some(self.ns()), argv)
    }

    pub fn try_run(&self, argv: &[&str]) -> Result<Output, String> {
        try_run(Some(self.ns()), argv)
    }

    /// Starts a background command in this node's namespace.
    pub fn spawn(&self, argv: &[&str]) -> Proc {
        Proc::spawn(Some(self.ns()), argv, None)
    }

    /// `wg ARGS` in this node's namespace.
    pub fn wg(&self, args: &[&str]) -> String {
        let argv: Vec<&str> = std::iter::once("wg").chain(args.iter().copied()).collect();
        self.run(&argv)
    }

    /// `wg show IF dump`, parsed.
    pub fn dump(&self) -> Dump {
        Dump::parse(&self.wg(&["show", &self.ifname, "dump"]))
    }

    /// Starts `ping` (IPv4 or IPv6 by `dst`) with `opts`, requests 0.2 s apart. `secs`
    /// bounds the ping itself (via its own options); the command gets more before it is killed.
    fn start_ping(&self, dst: &str, opts: &[&str], secs: u64) -> PendingPing {
        let family = if dst.contains(':') { "-6" } else { "-4" };
        let mut argv = vec!["ping", family, "-n", "-q", "-i", "0.2"];
        argv.extend(opts);
        argv.push(dst);
        PendingPing {
            desc: format!(
                "{} → {dst}: {}",
                self.role,
                describe(Some(self.ns()), &argv)
            ),
            proc: Proc::spawn(Some(self.ns()), &argv, None),
            start: Instant::now(),
            timeout: Duration::from_secs(secs) + CMD_TIMEOUT,
        }
    }

    /// Runs one `ping` (see [`Node::start_ping`]); never panics on loss.
    fn ping(&self, dst: &str, opts: &[&str], secs: u64) -> Ping {
        self.start_ping(dst, opts, secs).finish()
    }

    /// Pings until one reply comes back, for at most `timeout` (first contact, or after a
    /// change that may take a handshake).
    pub fn wait_ping(&self, dst: &str, timeout: Duration) {
        let secs = timeout.as_secs().max(1);
        let p = self.ping(dst, &["-c", "1", "-w", &secs.to_string()], secs);
        assert!(
            p.received > 0,
            "no ping reply within {secs} s:\n{}",
            p.report()
        );
    }

    /// `count` pings must all be answered, within 5 s. (`-w` rather than `-W`: with replies
    /// coming, iputils only lingers two RTTs for the last one, which a busy CI box can miss.)
    pub fn assert_ping(&self, dst: &str, count: u32) {
        let p = self.ping(dst, &["-c", &count.to_string(), "-w", "5"], 5);
        assert!(
            p.received >= count,
            "expected {count} ping replies within 5 s, got {}:\n{}",
            p.received,
            p.report()
        );
    }

    /// Moves this node to a new underlay address on its veth (roaming, e.g. a new DHCP lease).
    pub fn set_underlay(&mut self, addr: &str) {
        let old = format!("{}/24", self.underlay);
        let new = format!("{addr}/24");
        // Delete first: with the old address primary, deleting it later would also remove a
        // secondary in the same subnet unless promote_secondaries is set.
        self.run(&["ip", "addr", "del", &old, "dev", VETH]);
        self.run(&["ip", "addr", "add", &new, "dev", VETH]);
        self.underlay = addr.to_owned();
    }
}

/// Two namespaces joined by a veth, one WireGuard daemon in each, configured as peers:
/// the initiator knows the responder's endpoint; the responder learns the initiator's from its
/// handshake (so each implementation is exercised in the role the test names).
///
/// | role      | underlay        | port  | tunnel            |
/// |-----------|-----------------|-------|-------------------|
/// | responder | 10.0.0.1/24     | 51820 | 10.9.0.1, fd00::1 |
/// | initiator | 10.0.0.2/24     | 51821 | 10.9.0.2, fd00::2 |
pub struct Pair {
    pub initiator: Node,
    pub responder: Node,
    /// Unix time when the pair was set up (lower bound for handshake times).
    pub started: u64,
    // Last: the key files must outlive the daemons.
    dir: TempDir,
}

impl Pair {
    /// Builds the namespaces, veth, daemons and `wg`/`ip` configuration; no packet has been
    /// sent through the tunnel yet.
    pub fn new(initiator: Impl, responder: Impl) -> Pair {
        require_root();
        let started = now_unix();
        let tag = unique_tag();
        let dir = TempDir::new(&tag);
        let ns_r = Netns::new(format!("lanrage-it-{tag}-r"));
        let ns_i = Netns::new(format!("lanrage-it-{tag}-i"));
        // Create the veth inside the namespaces so its names never meet the root namespace.
        ns_r.run(&[
            "ip", "link", "add", VETH, "type", "veth", "peer", "name", VETH, "netns", &ns_i.name,
        ]);
        for (ns, addr) in [(&ns_r, RESPONDER.underlay), (&ns_i, INITIATOR.underlay)] {
            ns.run(&["ip", "addr", "add", &format!("{addr}/24"), "dev", VETH]);
            ns.run(&["ip", "link", "set", VETH, "up"]);
        }
        let responder = Node::start(&RESPONDER, responder, ns_r, &tag, dir.path());
        let initiator = Node::start(&INITIATOR, initiator, ns_i, &tag, dir.path());
        let peer_ips = |n: &Node| format!("{}/32,{}/128", n.inner4, n.inner6);
        responder.configure(&initiator.public_key, None, &peer_ips(&initiator));
        let endpoint = format!("{}:{}", responder.underlay, responder.port);
        initiator.configure(
            &responder.public_key,
            Some(&endpoint),
            &peer_ips(&responder),
        );
        Pair {
            initiator,
            responder,
            started,
            dir,
        }
    }

    /// A directory for test payloads, removed with the pair.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// First contact: the initiator pings until the handshake is done and a reply arrives.
    pub fn handshake(&self) {
        self.initiator
            .wait_ping(self.responder.inner4, HANDSHAKE_TIMEOUT);
    }

    pub fn nodes(&self) -> [&Node; 2] {
        [&self.initiator, &self.responder]
    }

    /// Panics if either daemon has died.
    pub fn assert_running(&mut self) {
        self.initiator.daemon.assert_running();
        self.responder.daemon.assert_running();
    }
}

impl Node {
    fn start(role: &Role, imp: Impl, netns: Netns, tag: &str, dir: &Path) -> Node {
        let ifname = format!("lr{tag}{}", &role.name[..1]);
        assert!(
            ifname.len() <= 15,
            "interface name {ifname} exceeds IFNAMSIZ"
        );
        let private_key = run(None, &["wg", "genkey"]).trim().to_owned();
        let public_key = Proc::spawn(None, &["wg", "pubkey"], Some(private_key.as_bytes()))
            .check(CMD_TIMEOUT)
            .trim()
            .to_owned();
        let key_file = dir.join(format!("{}.key", role.name));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)
            .and_then(|mut f| writeln!(f, "{private_key}"))
            .unwrap_or_else(|e| panic!("write {}: {e}", key_file.display()));
        let daemon = Daemon::spawn(
            imp,
            &netns.name,
            &ifname,
            dir.join(format!("{}.log", role.name)),
        );
        // Like wireguard-go: the TUN exists in the daemon's namespace, down, without address,
        // so that `ip`/wg-quick stay in charge of it.
        let link = netns.run(&["ip", "-o", "link", "show", "dev", &ifname]);
        let flags = link.split(['<', '>']).nth(1).unwrap_or("");
        assert!(
            !flags.split(',').any(|f| f == "UP"),
            "{imp:?} brought {ifname} up by itself (wireguard-go leaves it down): {link}"
        );
        let addrs = netns.run(&["ip", "-o", "addr", "show", "dev", &ifname]);
        assert!(
            addrs.trim().is_empty(),
            "{imp:?} gave {ifname} addresses by itself (wireguard-go does not): {addrs}"
        );
        Node {
            role: role.name,
            imp,
            ifname,
            underlay: role.underlay.to_owned(),
            port: role.port,
            inner4: role.inner4,
            inner6: role.inner6,
            private_key,
            public_key,
            key_file,
            daemon,
            netns,
        }
    }

    fn configure(&self, peer: &str, endpoint: Option<&str>, allowed_ips: &str) {
        let port = self.port.to_string();
        let key = self.key_file.to_string_lossy();
        let mut args = vec![
            "set",
            &self.ifname,
            "listen-port",
            &port,
            "private-key",
            &key,
            "peer",
            peer,
        ];
        if let Some(endpoint) = endpoint {
            args.extend(["endpoint", endpoint]);
        }
        args.extend(["allowed-ips", allowed_ips]);
        self.wg(&args);
        let if4 = format!("{}/24", self.inner4);
        let if6 = format!("{}/64", self.inner6);
        self.run(&["ip", "addr", "add", &if4, "dev", &self.ifname]);
        // nodad: the address is usable at once (a TUN is NOARP, but be explicit).
        self.run(&[
            "ip",
            "-6",
            "addr",
            "add",
            &if6,
            "dev",
            &self.ifname,
            "nodad",
        ]);
        self.run(&["ip", "link", "set", &self.ifname, "up"]);
    }
}
