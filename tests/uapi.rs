//! The UAPI socket of `lanrage wg` under misuse and edge cases, driven by the real `wg` and by
//! raw bytes: garbage gets an `errno=` answer and the daemon keeps serving; a refused change
//! leaves the device as it was; fwmark and `showconf`/`setconf` round-trip. Needs root.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{Daemon, HANDSHAKE_TIMEOUT, Impl, Netns, Node, Pair, TempDir};

/// Sends raw bytes to the daemon's socket and returns everything it answers.
fn raw_request(node: &Node, bytes: &[u8]) -> String {
    let path = node.daemon.socket_path();
    let mut stream =
        UnixStream::connect(&path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set timeout");
    // The daemon may answer and hang up before reading everything: ignore a broken pipe.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn garbage_gets_an_errno_and_the_daemon_keeps_serving() {
    let mut pair = Pair::new(Impl::Lanrage, Impl::Lanrage);
    let node = &pair.responder;
    for garbage in [
        &b"garbage\n\n"[..],
        b"set=1\nlisten_port=99999\n\n",
        b"set=1\npublic_key=zz\n\n",
        b"set=1\nendpoint=1.2.3.4:5\n\n",
        b"get=1\nextra=1\n\n",
        b"\xff\xfe\x00\n\n",
    ] {
        let answer = raw_request(node, garbage);
        assert!(
            answer.starts_with("errno=") && !answer.starts_with("errno=0"),
            "{garbage:?} answered {answer:?}"
        );
    }
    // Over the size limit without ever ending the request.
    let huge = vec![b'a'; lanrage_control::uapi::DEFAULT_MAX_REQUEST_LEN + (1 << 20)];
    let answer = raw_request(node, &huge);
    assert!(
        answer.starts_with("errno="),
        "oversized answered {answer:?}"
    );
    // Still alive and correct.
    let shown = node.wg(&["show", &node.ifname, "public-key"]);
    assert_eq!(shown.trim(), node.public_key);
    pair.handshake();
    pair.assert_running();
}

#[test]
fn refused_listen_port_changes_nothing() {
    let mut pair = Pair::new(Impl::Lanrage, Impl::Lanrage);
    let node = &pair.responder;
    let port_before = node.wg(&["show", &node.ifname, "listen-port"]);
    let key_before = node.wg(&["show", &node.ifname, "private-key"]);
    // Hold a UDP port in the node's namespace (SO_REUSEPORT is not set by nc, so a bind
    // from the daemon fails).
    let _holder = node.spawn(&["nc", "-u", "-l", "-p", "40404"]);
    common::wait_until(Duration::from_secs(5), "nc bound UDP 40404", || {
        node.run(&["ss", "-Huln", "sport = :40404"])
            .contains("40404")
    });
    let new_key = node.run(&["wg", "genkey"]);
    let key_path = pair.dir().join("other.key");
    std::fs::write(&key_path, new_key).expect("write key");
    let refused = node
        .try_run(&[
            "wg",
            "set",
            &node.ifname,
            "listen-port",
            "40404",
            "private-key",
            key_path.to_str().expect("utf-8 path"),
        ])
        .expect("wg ran");
    assert!(!refused.status.success(), "wg set on a used port succeeded");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Address already in use"),
        "unexpected error: {stderr}"
    );
    assert_eq!(node.wg(&["show", &node.ifname, "listen-port"]), port_before);
    assert_eq!(node.wg(&["show", &node.ifname, "private-key"]), key_before);
    pair.handshake();
    pair.assert_running();
}

#[test]
fn fwmark_and_showconf_setconf_round_trip() {
    let mut pair = Pair::new(Impl::Lanrage, Impl::Lanrage);
    pair.handshake();
    let node = &pair.responder;
    node.wg(&["set", &node.ifname, "fwmark", "0x1234"]);
    assert_eq!(node.wg(&["show", &node.ifname, "fwmark"]).trim(), "0x1234");
    let conf = node.wg(&["showconf", &node.ifname]);
    assert!(conf.contains("FwMark = 0x1234"), "{conf}");
    let conf_path = pair.dir().join("responder.conf");
    std::fs::write(&conf_path, &conf).expect("write conf");
    node.wg(&[
        "setconf",
        &node.ifname,
        conf_path.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(node.wg(&["showconf", &node.ifname]), conf);
    let initiator = &pair.initiator;
    initiator.wait_ping(node.inner4, HANDSHAKE_TIMEOUT);
    node.wg(&["set", &node.ifname, "fwmark", "0"]);
    assert_eq!(node.wg(&["show", &node.ifname, "fwmark"]).trim(), "off");
    pair.assert_running();
}

/// A configuration as large as real ones get: one peer routing 100,000 addresses, sent by
/// `wg setconf` in one request of 2.6 MB (once refused at 1 MiB, and wg died of SIGPIPE).
#[test]
fn setconf_takes_a_peer_with_100k_allowed_ips() {
    let mut pair = Pair::new(Impl::Lanrage, Impl::Lanrage);
    pair.handshake();
    let node = &pair.responder;
    let conf = node.wg(&["showconf", &node.ifname]);
    let ips: Vec<String> = (0..100_000u32)
        .map(|n| {
            let [_, a, b, c] = n.to_be_bytes();
            format!("10.{}.{b}.{c}/32", 100 + a)
        })
        .collect();
    let big = conf.replacen(
        "AllowedIPs = ",
        &format!("AllowedIPs = {}, ", ips.join(", ")),
        1,
    );
    assert!(big.len() > 1_500_000, "{conf}");
    let conf_path = pair.dir().join("big.conf");
    std::fs::write(&conf_path, &big).expect("write conf");
    node.wg(&[
        "setconf",
        &node.ifname,
        conf_path.to_str().expect("utf-8 path"),
    ]);
    let shown = node.wg(&["show", &node.ifname, "allowed-ips"]);
    let count = shown
        .split_whitespace()
        .filter(|w| w.ends_with("/32"))
        .count();
    assert!(count >= 100_000, "{count} addresses shown");
    pair.initiator.wait_ping(node.inner4, HANDSHAKE_TIMEOUT);
    pair.assert_running();
}

#[test]
fn daemon_mode_returns_once_ready_and_exits_with_its_interface() {
    common::require_root();
    let tag = common::unique_tag();
    let netns = common::Netns::new(format!("lanrage-it-{tag}-d"));
    let ifname = format!("lr{tag}d");
    // Without -f: returns once the UAPI socket answers, leaving the daemon running.
    netns.run(&[env!("CARGO_BIN_EXE_lanrage"), "wg", &ifname]);
    let socket = std::path::Path::new("/var/run/wireguard").join(format!("{ifname}.sock"));
    assert!(socket.exists(), "no socket at {}", socket.display());
    let port = netns.run(&["wg", "show", &ifname, "listen-port"]);
    assert!(port.trim().parse::<u16>().is_ok_and(|p| p > 0), "{port}");
    // Deleting the interface stops the daemon, which removes its socket.
    netns.run(&["ip", "link", "del", &ifname]);
    common::wait_until(
        Duration::from_secs(5),
        "the daemon to remove its socket",
        || !socket.exists(),
    );
}

/// `--tun-queue-len` sizes the TUN device's queues (its txqueuelen); without it the kernel's
/// default stays.
#[test]
fn tun_queue_len_sets_the_interface_queue() {
    common::require_root();
    let tag = common::unique_tag();
    let ns = Netns::new(format!("lrqlen-{tag}"));
    let dir = TempDir::new(&format!("qlen-{tag}"));
    for (ifname, options, want) in [
        (
            format!("lq{tag}a"),
            &["--tun-queue-len", "16"][..],
            "qlen 16",
        ),
        (format!("lq{tag}b"), &[][..], "qlen 500"),
    ] {
        let mut daemon = Daemon::spawn_with(
            Impl::Lanrage,
            &ns.name,
            &ifname,
            dir.path().join(format!("{ifname}.log")),
            options,
        );
        let link = ns.run(&["ip", "-o", "link", "show", "dev", &ifname]);
        assert!(
            link.contains(want),
            "{options:?}: want {want:?} in {link:?}"
        );
        daemon.assert_running();
    }
}
