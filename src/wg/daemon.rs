//! Daemonising without `fork` in a threaded process: re-run ourselves in the foreground as a
//! detached child, relay its start-up messages, and return once its UAPI socket answers.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::WgArgs;

/// How long the child may take to create its interface and socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub fn spawn_and_wait(args: &WgArgs, socket: &Path) -> Result<()> {
    debug_assert!(!args.foreground);
    let exe = std::env::current_exe().context("cannot locate the lanrage executable")?;
    let mut command = Command::new(exe);
    // The same command line, in the foreground: every option reaches the daemon unchanged.
    // `lanrage wg ...` becomes `lanrage wg --foreground ...`.
    let mut argv = std::env::args_os().skip(1);
    command
        .args(argv.next())
        .arg("--foreground")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C meant for the shell that started it does not stop it.
        .process_group(0);
    let mut child = command.spawn().context("cannot start the daemon")?;
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
    }
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the daemon for {} exited during start-up ({status})",
                args.ifname
            );
        }
        if UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!(
                "the daemon for {} did not open {} within {:?}",
                args.ifname,
                socket.display(),
                START_TIMEOUT
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
