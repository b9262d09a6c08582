use std::fmt::{Display, Write as _};
use std::time::UNIX_EPOCH;

use super::error::UapiError;
use super::types::{DeviceInfo, Key, Request};

/// The answer to a `set` that was applied.
pub const SUCCESS_RESPONSE: &str = "errno=0\n\n";

/// The answer to `get=1`, ending with `errno=0` and the blank line.
///
/// Lines and their order are wireguard-go's: device keys only when set, then per peer
/// `public_key`, `preshared_key` (zeros when none), `protocol_version`, `endpoint` (when
/// known), handshake time (0/0 when none), `tx_bytes`, `rx_bytes`, keepalive and allowed IPs.
/// `wg` needs `public_key` first in each peer and `errno` before the blank line.
pub fn format_get_response(info: &DeviceInfo) -> String {
    let mut out = String::with_capacity(64 + info.peers.len() * 320);
    if let Some(key) = info.private_key.filter(|key| key != &[0; 32]) {
        key_line(&mut out, "private_key", &key);
    }
    if info.listen_port != 0 {
        line(&mut out, "listen_port", info.listen_port);
    }
    if info.fwmark != 0 {
        line(&mut out, "fwmark", info.fwmark);
    }
    for peer in &info.peers {
        key_line(&mut out, "public_key", &peer.public_key);
        key_line(
            &mut out,
            "preshared_key",
            &peer.preshared_key.unwrap_or([0; 32]),
        );
        out.push_str("protocol_version=1\n");
        if let Some(endpoint) = peer.endpoint {
            line(&mut out, "endpoint", endpoint);
        }
        // A time before 1970 cannot be a handshake; report it as "never" rather than fail.
        let since_epoch = peer
            .last_handshake
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        line(&mut out, "last_handshake_time_sec", since_epoch.as_secs());
        line(
            &mut out,
            "last_handshake_time_nsec",
            since_epoch.subsec_nanos(),
        );
        line(&mut out, "tx_bytes", peer.tx_bytes);
        line(&mut out, "rx_bytes", peer.rx_bytes);
        line(
            &mut out,
            "persistent_keepalive_interval",
            peer.persistent_keepalive_interval,
        );
        for allowed_ip in &peer.allowed_ips {
            line(&mut out, "allowed_ip", allowed_ip);
        }
    }
    out.push_str(SUCCESS_RESPONSE);
    out
}

/// The answer to a failed request: `errno=N` and the blank line, signed the way `wg` reads it
/// for the failed operation (see [`UapiError::wire_errno`]).
pub fn format_errno(err: &UapiError) -> String {
    format!("errno={}\n\n", err.wire_errno())
}

/// A request as `wg` would send it (client side), in `wg`'s key order.
///
/// [`parse_request`](super::parse_request) reads it back to an equal value.
pub fn format_request(request: &Request) -> String {
    let set = match request {
        Request::Get => return "get=1\n\n".to_owned(),
        Request::Set(set) => set,
    };
    let mut out = String::from("set=1\n");
    if let Some(key) = &set.private_key {
        key_line(&mut out, "private_key", key);
    }
    if let Some(port) = set.listen_port {
        line(&mut out, "listen_port", port);
    }
    if let Some(mark) = set.fwmark {
        line(&mut out, "fwmark", mark);
    }
    if set.replace_peers {
        out.push_str("replace_peers=true\n");
    }
    for peer in &set.peers {
        key_line(&mut out, "public_key", &peer.public_key);
        if peer.update_only {
            out.push_str("update_only=true\n");
        }
        if peer.remove {
            out.push_str("remove=true\n");
        }
        if let Some(key) = &peer.preshared_key {
            key_line(&mut out, "preshared_key", key);
        }
        if let Some(endpoint) = peer.endpoint {
            line(&mut out, "endpoint", endpoint);
        }
        if let Some(interval) = peer.persistent_keepalive_interval {
            line(&mut out, "persistent_keepalive_interval", interval);
        }
        if peer.replace_allowed_ips {
            out.push_str("replace_allowed_ips=true\n");
        }
        for allowed_ip in &peer.allowed_ips {
            line(&mut out, "allowed_ip", allowed_ip);
        }
    }
    out.push('\n');
    out
}

fn line(out: &mut String, key: &str, value: impl Display) {
    // Writing into a String cannot fail.
    let _ = writeln!(out, "{key}={value}");
}

/// Lower-case hex, as wireguard-go and `wg` write keys.
fn key_line(out: &mut String, key: &str, value: &Key) {
    out.push_str(key);
    out.push('=');
    out.push_str(&hex::encode(value));
    out.push('\n');
}
