//! The systemd unit shipped in `dist/systemd/`: systemd's own checker accepts it, pointed at
//! the binary built here (the unit names the installed path, which a test machine lacks).
//! Needs `systemd-analyze` (package systemd).

use std::process::Command;

const UNIT: &str = include_str!("../dist/systemd/lanrage.service");
const INSTALLED: &str = "/usr/local/bin/lanrage";

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    assert!(
        UNIT.contains(&format!(
            "ExecStart={INSTALLED} up --data-dir /var/lib/lanrage"
        )),
        "the unit starts the daemon on the state directory"
    );
    let dir = std::env::temp_dir().join(format!("lanrage-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a directory for the unit");
    let path = dir.join("lanrage.service");
    std::fs::write(
        &path,
        UNIT.replace(INSTALLED, env!("CARGO_BIN_EXE_lanrage")),
    )
    .expect("write the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("cannot run systemd-analyze (package systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
