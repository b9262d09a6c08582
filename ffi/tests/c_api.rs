//! The C ABI from C: `tests/c/member.c`, compiled here with `cc` against the built library
//! (shared, and once static) and the committed header, run under valgrind. One test sends it
//! every misuse (NULL handles, bad JSON and settings, stop before start, double stop); another
//! brings up two members in network namespaces (root) through the ABI alone, forms a party,
//! pings across and stops both. Valgrind must report no error and no leak, definite, indirect
//! or possible (`tests/valgrind.supp` names the one allocation Rust's standard library keeps
//! by design).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Under valgrind a daemon starts in seconds, not milliseconds, and the first packets wait
/// for a WireGuard handshake.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const PING_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(90);
/// The exit status valgrind gives when it found an error or a leak.
const VALGRIND_FOUND: i32 = 99;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Where cargo put the library this test goes with: the test binary is in `deps/` below it.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lies in <target>/<profile>/deps");
    assert!(
        dir.join("liblanrage_ffi.so").exists(),
        "{} has no liblanrage_ffi.so: `cargo build --release -p lanrage-ffi` first \
         (`cargo test` does not build it; scripts/test.sh does)",
        dir.display()
    );
    dir.to_owned()
}

/// How the C program is linked to the library.
#[derive(Clone, Copy)]
enum Linking {
    /// `liblanrage_ffi.so`, found at run time by the rpath.
    Shared,
    /// `liblanrage_ffi.a`, with the system libraries the Rust standard library needs.
    Static,
}

/// `tests/c/member.c` compiled into `dir`, strictly (warnings are errors).
fn compile(dir: &Path, linking: Linking) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = library_dir();
    let out = dir.join("member");
    let mut cc = Command::new("cc");
    cc.args([
        "-std=c11",
        "-D_DEFAULT_SOURCE",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pthread",
        "-g",
    ])
    .arg("-I")
    .arg(crate_dir.join("include"))
    .arg(crate_dir.join("tests/c/member.c"));
    match linking {
        Linking::Shared => cc
            .arg("-L")
            .arg(&lib)
            .arg("-llanrage_ffi")
            .arg(format!("-Wl,-rpath,{}", lib.display())),
        Linking::Static => cc.arg(lib.join("liblanrage_ffi.a")).args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]),
    };
    let output = cc
        .arg("-o")
        .arg(&out)
        .output()
        .expect("cannot run cc (scripts/install-deps.sh installs gcc)");
    assert!(output.status.success(), "cc failed:\n{}", text(&output));
    out
}

/// valgrind's command line for one run, its report in `log`.
fn valgrind(log: &Path) -> Vec<String> {
    assert!(
        Command::new("valgrind").arg("--version").output().is_ok(),
        "valgrind is not installed (scripts/install-deps.sh installs it)"
    );
    [
        "valgrind",
        "--error-exitcode=99",
        "--leak-check=full",
        "--show-leak-kinds=definite,indirect,possible",
        "--errors-for-leak-kinds=definite,indirect,possible",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([
        format!("--log-file={}", log.display()),
        format!(
            "--suppressions={}/tests/valgrind.supp",
            env!("CARGO_MANIFEST_DIR")
        ),
    ])
    .collect()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// valgrind's summary lines, for the test's output and failure messages.
fn summary(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            [
                "ERROR SUMMARY",
                "definitely lost",
                "indirectly lost",
                "possibly lost",
                "still reachable",
                "in use at exit",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lrffi{}x{}{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

#[test]
fn the_static_library_links_into_a_c_program() {
    let dir = temp_dir("s");
    let member = compile(&dir, Linking::Static);
    let output = Command::new(&member)
        .arg("misuse")
        .output()
        .expect("cannot run the statically linked member");
    assert!(
        output.status.success(),
        "the misuse cases failed, statically linked:\n{}",
        text(&output)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_readme_example_compiles() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    let block = readme
        .split("```c\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a C example");
    // Indented as a list item's block: the indent is not the program's.
    let program: String = block
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = temp_dir("e");
    std::fs::write(dir.join("example.c"), program).unwrap();
    let lib = library_dir();
    let output = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/include"))
        .arg(dir.join("example.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-llanrage_ffi")
        .arg("-o")
        .arg(dir.join("example"))
        .output()
        .expect("cannot run cc");
    assert!(
        output.status.success(),
        "the README's C example does not compile:\n{}",
        text(&output)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn misuse_is_refused_with_a_code_and_a_message_and_nothing_leaks() {
    let dir = temp_dir("m");
    let member = compile(&dir, Linking::Shared);
    let log = dir.join("valgrind.log");
    let output = Command::new(&valgrind(&log)[0])
        .args(&valgrind(&log)[1..])
        .arg(&member)
        .arg("misuse")
        .output()
        .expect("cannot run valgrind");
    let report = summary(&log);
    println!("{}\n{report}", text(&output));
    assert!(
        output.status.success(),
        "the misuse cases failed (exit {:?}; {VALGRIND_FOUND}: valgrind found something):\n{}\n{}",
        output.status.code(),
        text(&output),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two namespaces on a bridge (a third), and what runs in them; all removed on drop.
struct Lab {
    hub: String,
    members: [String; 2],
    dir: PathBuf,
    children: Vec<Child>,
}

impl Lab {
    fn new() -> Lab {
        let id = format!(
            "lrf{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            hub: format!("{id}h"),
            members: [format!("{id}a"), format!("{id}b")],
            dir: temp_dir("r"),
            children: Vec::new(),
        };
        sh(&["ip", "netns", "add", &lab.hub]);
        lab.in_ns(&lab.hub, &["ip", "link", "add", "br0", "type", "bridge"]);
        lab.in_ns(&lab.hub, &["ip", "link", "set", "br0", "up"]);
        for (i, ns) in lab.members.iter().enumerate() {
            let port = format!("p{i}");
            sh(&["ip", "netns", "add", ns]);
            sh(&[
                "ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &port,
                "netns", &lab.hub,
            ]);
            lab.in_ns(
                &lab.hub,
                &["ip", "link", "set", &port, "master", "br0", "up"],
            );
            let addr = format!("192.168.78.{}/24", i + 1);
            lab.in_ns(ns, &["ip", "addr", "add", &addr, "dev", "eth0"]);
            lab.in_ns(ns, &["ip", "link", "set", "eth0", "up"]);
            lab.in_ns(ns, &["ip", "link", "set", "lo", "up"]);
        }
        lab
    }

    fn in_ns(&self, ns: &str, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn pings(&self, from: usize, to: &str) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.members[from],
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "-q",
                to,
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.members.iter().chain([&self.hub]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn sh(args: &[&str]) -> Output {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        text(&output)
    );
    output
}

/// One `member run` under valgrind: its stdin (closing it stops the member) and its lines.
struct Member {
    name: String,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    log: PathBuf,
}

impl Member {
    fn start(lab: &mut Lab, i: usize, program: &Path, code: Option<&str>) -> Member {
        let name = format!("member{}", i + 1);
        let log = lab.dir.join(format!("{name}.valgrind.log"));
        let data_dir = lab.dir.join(format!("{name}.data"));
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &lab.members[i]])
            .args(valgrind(&log))
            .arg(program)
            .arg("run")
            .arg(&data_dir)
            .args(["lrffi0", &name])
            .args(code)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(lab.dir.join(format!("{name}.stderr"))).unwrap());
        let mut child = command.spawn().expect("cannot start the C member");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        lab.children.push(child);
        Member {
            name,
            stdin,
            lines,
            seen: Vec::new(),
            log,
        }
    }

    /// Reads lines until one starts with `prefix`; the rest of it.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
                return line[prefix.len()..].trim().to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    assert!(
                        !line.starts_with("FAIL"),
                        "{}: {line}\n{}",
                        self.name,
                        self.seen.join("\n")
                    );
                    self.seen.push(line);
                }
                Err(_) => panic!(
                    "{} printed no '{prefix}' line within {timeout:?}; it printed:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the member to exit; past `timeout` it is killed and the test fails with
    /// what it printed.
    fn wait_exit(&mut self, mut child: Child, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(status) = child.try_wait().expect("waitpid") {
                self.drain();
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not stop within {timeout:?} of its stdin closing; it printed:\n{}",
                    self.name,
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }
}

#[test]
fn two_members_brought_up_through_the_c_api_ping_each_other() {
    assert!(
        is_root(),
        "this test creates network namespaces: run it as root"
    );
    let mut lab = Lab::new();
    let program = compile(&lab.dir, Linking::Shared);

    let started = Instant::now();
    let mut first = Member::start(&mut lab, 0, &program, None);
    let code = first.wait_line("code ", START_TIMEOUT);
    let mut second = Member::start(&mut lab, 1, &program, Some(&code));
    let ip1 = first.wait_line("virtual_ip ", START_TIMEOUT);
    let ip2 = second.wait_line("virtual_ip ", START_TIMEOUT);
    println!(
        "party {code}: {ip1} and {ip2}, up in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    for (from, to) in [(1, &ip1), (0, &ip2)] {
        let deadline = Instant::now() + PING_TIMEOUT;
        while !lab.pings(from, to) {
            assert!(
                Instant::now() < deadline,
                "member{} could not ping {to} within {PING_TIMEOUT:?}",
                from + 1
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!(
        "pinged both ways after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for member in [&mut first, &mut second] {
        member.wait_line("event {\"event\":\"peer_joined\"", PING_TIMEOUT);
    }

    // Closing stdin stops a member: leave, stop, stop again, free.
    for member in [&mut first, &mut second] {
        member.stdin.take();
    }
    for (member, child) in [first, second]
        .iter_mut()
        .zip(std::mem::take(&mut lab.children))
    {
        let output = member.wait_exit(child, STOP_TIMEOUT);
        let report = summary(&member.log);
        println!("{}:\n{}\n{report}", member.name, member.seen.join("\n"));
        assert!(
            output.success() && member.seen.iter().any(|l| l == "stopped"),
            "{} ended with {output:?} ({VALGRIND_FOUND}: valgrind found something):\n{}\n{}",
            member.name,
            member.seen.join("\n"),
            std::fs::read_to_string(&member.log).unwrap_or_default()
        );
        for event in [
            "party_joined",
            "peer_joined",
            "path_changed",
            "party_left",
            "stopped",
        ] {
            assert!(
                member
                    .seen
                    .iter()
                    .any(|l| l.contains(&format!("\"event\":\"{event}\""))),
                "{} got no {event} event:\n{}",
                member.name,
                member.seen.join("\n")
            );
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
