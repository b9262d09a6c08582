use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use super::error::UapiError;
use super::types::{
    AllowedIp, DeviceInfo, Key, Operation, PeerChange, PeerInfo, Request, SetRequest,
};

/// How much of a client's value an error message repeats: enough to recognise it, not enough to
/// let a hostile client fill the logs.
const QUOTE_MAX: usize = 64;

/// Looks up an interface index by name, for link-local endpoints: `wg` sends the scope as the
/// interface name (`[fe80::1%eth0]:51820`), and turning it into an index is an OS call
/// (`if_nametoindex`) that this sans-IO code leaves to the caller.
pub type ScopeResolver = fn(&str) -> Option<u32>;

/// Parses one request, from its operation line through its terminating blank line.
///
/// Strict where wireguard-go is strict: unknown keys, `remove=false`, `+5` as a number and any
/// value that is not exactly what the protocol allows are errors, so a typo never half-applies.
/// Endpoints with a named scope are refused; see [`parse_request_with_scopes`].
pub fn parse_request(text: &str) -> Result<Request, UapiError> {
    parse_request_with_scopes(text, None)
}

/// [`parse_request`] that also accepts named scopes in endpoints, resolved by `resolve_scope`.
pub fn parse_request_with_scopes(
    text: &str,
    resolve_scope: Option<ScopeResolver>,
) -> Result<Request, UapiError> {
    let mut lines = request_lines(text)?;
    match lines.next() {
        Some((_, "get=1")) => match lines.next() {
            None => Ok(Request::Get),
            // wireguard-go answers EINVAL ("trailing character in UAPI get").
            Some((no, line)) => Err(UapiError::invalid(format!(
                "line {no}: get takes no keys, got {}",
                quote(line)
            ))
            .with_operation(Operation::Get)),
        },
        Some((_, "set=1")) => parse_set(lines, resolve_scope)
            .map(Request::Set)
            .map_err(|err| err.with_operation(Operation::Set)),
        Some((_, line)) => Err(UapiError::protocol(format!(
            "unknown operation {} (expected get=1 or set=1)",
            quote(line)
        ))),
        None => Err(UapiError::protocol("empty request")),
    }
}

/// [`parse_request_with_scopes`] for raw socket bytes, which need not be UTF-8.
pub(super) fn parse_request_bytes(
    bytes: &[u8],
    resolve_scope: Option<ScopeResolver>,
) -> Result<Request, UapiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| UapiError::protocol("request is not valid UTF-8"))?;
    parse_request_with_scopes(text, resolve_scope)
}

/// Reads a daemon's answer to `get=1` (client side).
///
/// An `errno` other than 0 becomes the error. Unknown keys are skipped, as `wg` skips them, so
/// a newer daemon's extra fields do not break us.
pub fn parse_get_response(text: &str) -> Result<DeviceInfo, UapiError> {
    let mut info = DeviceInfo::default();
    let mut errno = None;
    let mut handshake_sec: u64 = 0;
    let mut handshake_nsec: u32 = 0;
    let lines = request_lines(text).map_err(|err| err.with_operation(Operation::Get))?;
    for (no, line) in lines {
        let fail = |what: &str| {
            UapiError::protocol(format!("line {no}: {what} in get response"))
                .with_operation(Operation::Get)
        };
        if errno.is_some() {
            return Err(fail("data after errno"));
        }
        let (key, value) = line.split_once('=').ok_or_else(|| fail("no '='"))?;
        if key == "errno" {
            errno = Some(parse_errno(value).ok_or_else(|| fail("bad errno"))?);
            continue;
        }
        if key == "public_key" {
            finish_handshake(&mut info, handshake_sec, handshake_nsec)
                .ok_or_else(|| fail("bad last handshake time"))?;
            (handshake_sec, handshake_nsec) = (0, 0);
            let public_key = parse_key(value).ok_or_else(|| fail("bad public_key"))?;
            info.peers.push(PeerInfo::new(public_key));
            continue;
        }
        let Some(peer) = info.peers.last_mut() else {
            match key {
                "private_key" => {
                    let private_key = parse_key(value).ok_or_else(|| fail("bad private_key"))?;
                    info.private_key = Some(private_key).filter(|k| k != &[0; 32]);
                }
                "listen_port" => {
                    info.listen_port =
                        parse_decimal(value).ok_or_else(|| fail("bad listen_port"))?;
                }
                "fwmark" => info.fwmark = parse_decimal(value).ok_or_else(|| fail("bad fwmark"))?,
                _ => {}
            }
            continue;
        };
        match key {
            "preshared_key" => {
                let psk = parse_key(value).ok_or_else(|| fail("bad preshared_key"))?;
                peer.preshared_key = Some(psk).filter(|k| k != &[0; 32]);
            }
            "endpoint" => {
                peer.endpoint =
                    Some(parse_endpoint(value, None).ok_or_else(|| fail("bad endpoint"))?);
            }
            "last_handshake_time_sec" => {
                handshake_sec =
                    parse_decimal(value).ok_or_else(|| fail("bad last_handshake_time_sec"))?;
            }
            "last_handshake_time_nsec" => {
                handshake_nsec = parse_decimal(value)
                    .filter(|&n| n < 1_000_000_000)
                    .ok_or_else(|| fail("bad last_handshake_time_nsec"))?;
            }
            "rx_bytes" => {
                peer.rx_bytes = parse_decimal(value).ok_or_else(|| fail("bad rx_bytes"))?
            }
            "tx_bytes" => {
                peer.tx_bytes = parse_decimal(value).ok_or_else(|| fail("bad tx_bytes"))?
            }
            "persistent_keepalive_interval" => {
                peer.persistent_keepalive_interval = parse_decimal(value)
                    .ok_or_else(|| fail("bad persistent_keepalive_interval"))?;
            }
            "allowed_ip" => peer
                .allowed_ips
                .push(AllowedIp::from_str(value).map_err(|_| fail("bad allowed_ip"))?),
            "private_key" | "listen_port" | "fwmark" => {
                return Err(fail("device key after a peer"));
            }
            _ => {}
        }
    }
    match errno {
        Some(0) => {
            finish_handshake(&mut info, handshake_sec, handshake_nsec).ok_or_else(|| {
                UapiError::protocol("bad last handshake time in get response")
                    .with_operation(Operation::Get)
            })?;
            Ok(info)
        }
        Some(n) => Err(daemon_error(n, Operation::Get)),
        None => {
            Err(UapiError::protocol("get response without errno").with_operation(Operation::Get))
        }
    }
}

/// Reads a daemon's answer to `set=1` (client side): `errno=0` is success.
pub fn parse_set_response(text: &str) -> Result<(), UapiError> {
    let mut lines = request_lines(text).map_err(|err| err.with_operation(Operation::Set))?;
    let fail = || UapiError::protocol("malformed set response").with_operation(Operation::Set);
    let (_, line) = lines.next().ok_or_else(fail)?;
    let n = line
        .strip_prefix("errno=")
        .and_then(parse_errno)
        .ok_or_else(fail)?;
    if lines.next().is_some() {
        return Err(fail());
    }
    match n {
        0 => Ok(()),
        n => Err(daemon_error(n, Operation::Set)),
    }
}

fn daemon_error(errno: i64, operation: Operation) -> UapiError {
    let errno = i32::try_from(errno.unsigned_abs()).unwrap_or(i32::MAX);
    UapiError::new(errno, format!("daemon answered errno {errno}")).with_operation(operation)
}

/// `errno=` carries a signed decimal (wireguard-go writes it negative).
fn parse_errno(value: &str) -> Option<i64> {
    match value.strip_prefix('-') {
        Some(digits) => parse_decimal::<i64>(digits).map(|n| -n),
        None => parse_decimal(value),
    }
}

fn finish_handshake(info: &mut DeviceInfo, sec: u64, nsec: u32) -> Option<()> {
    if let Some(peer) = info.peers.last_mut() {
        peer.last_handshake = if (sec, nsec) == (0, 0) {
            None
        } else {
            Some(UNIX_EPOCH.checked_add(Duration::new(sec, nsec))?)
        };
    }
    Some(())
}

/// Splits a request or response into numbered content lines and checks its framing: every line
/// ends in `\n`, and the first empty line is the last line.
fn request_lines(text: &str) -> Result<impl Iterator<Item = (usize, &str)>, UapiError> {
    if text == "\n" {
        return Err(UapiError::protocol("empty request"));
    }
    let body = text
        .strip_suffix("\n\n")
        .ok_or_else(|| UapiError::protocol("not terminated by a blank line"))?;
    let lines = body.split('\n').enumerate().map(|(i, line)| (i + 1, line));
    if let Some((no, _)) = lines.clone().find(|(_, line)| line.is_empty()) {
        return Err(UapiError::protocol(format!(
            "line {no}: blank line before the end"
        )));
    }
    Ok(lines)
}

fn parse_set<'a>(
    lines: impl Iterator<Item = (usize, &'a str)>,
    resolve_scope: Option<ScopeResolver>,
) -> Result<SetRequest, UapiError> {
    let mut set = SetRequest::default();
    let mut peer: Option<PeerChange> = None;
    for (no, line) in lines {
        let (key, value) = line.split_once('=').ok_or_else(|| {
            UapiError::protocol(format!(
                "line {no}: expected key=value, got {}",
                quote(line)
            ))
        })?;
        let at_line =
            |err: UapiError| UapiError::new(err.errno(), format!("line {no}: {}", err.message()));
        match key {
            "public_key" => {
                let public_key = parse_key(value).ok_or_else(|| {
                    UapiError::invalid(format!(
                        "line {no}: public_key must be 64 hex digits, got {}",
                        quote(value)
                    ))
                })?;
                set.peers.extend(peer.replace(PeerChange::new(public_key)));
            }
            "private_key" | "listen_port" | "fwmark" | "replace_peers" => {
                if peer.is_some() {
                    return Err(UapiError::protocol(format!(
                        "line {no}: device key {key} after a public_key"
                    )));
                }
                set_device_key(&mut set, key, value).map_err(at_line)?;
            }
            "remove"
            | "update_only"
            | "preshared_key"
            | "endpoint"
            | "persistent_keepalive_interval"
            | "replace_allowed_ips"
            | "allowed_ip"
            | "protocol_version" => {
                let peer = peer.as_mut().ok_or_else(|| {
                    UapiError::protocol(format!("line {no}: peer key {key} before any public_key"))
                })?;
                set_peer_key(peer, key, value, resolve_scope).map_err(at_line)?;
            }
            _ => {
                return Err(UapiError::invalid(format!(
                    "line {no}: unknown key {}",
                    quote(key)
                )));
            }
        }
    }
    set.peers.extend(peer);
    Ok(set)
}

fn set_device_key(set: &mut SetRequest, key: &str, value: &str) -> Result<(), UapiError> {
    match key {
        "private_key" => {
            let private_key = parse_key(value)
                .ok_or_else(|| UapiError::invalid("private_key must be 64 hex digits"))?;
            set.private_key = Some(private_key);
        }
        "listen_port" => set.listen_port = Some(number(key, value)?),
        "fwmark" => set.fwmark = Some(number(key, value)?),
        "replace_peers" => set.replace_peers = flag(key, value)?,
        _ => return Err(UapiError::invalid(format!("unknown device key {key}"))),
    }
    Ok(())
}

fn set_peer_key(
    peer: &mut PeerChange,
    key: &str,
    value: &str,
    resolve_scope: Option<ScopeResolver>,
) -> Result<(), UapiError> {
    match key {
        "remove" => peer.remove = flag(key, value)?,
        "update_only" => peer.update_only = flag(key, value)?,
        "preshared_key" => {
            let psk = parse_key(value)
                .ok_or_else(|| UapiError::invalid("preshared_key must be 64 hex digits"))?;
            peer.preshared_key = Some(psk);
        }
        "endpoint" => {
            let endpoint = parse_endpoint(value, resolve_scope).ok_or_else(|| {
                UapiError::invalid(format!(
                    "endpoint must be IPv4:port or [IPv6%scope]:port, got {}",
                    quote(value)
                ))
            })?;
            peer.endpoint = Some(endpoint);
        }
        "persistent_keepalive_interval" => {
            peer.persistent_keepalive_interval = Some(number(key, value)?);
        }
        "replace_allowed_ips" => {
            peer.replace_allowed_ips = flag(key, value)?;
            // wireguard-go applies lines in order: entries above this line are wiped too.
            peer.allowed_ips.clear();
        }
        "allowed_ip" => peer.allowed_ips.push(value.parse()?),
        "protocol_version" => {
            if value != "1" {
                return Err(UapiError::invalid(format!(
                    "unsupported protocol_version {}",
                    quote(value)
                )));
            }
        }
        _ => return Err(UapiError::invalid(format!("unknown peer key {key}"))),
    }
    Ok(())
}

/// Flags only ever take the value `true` (wireguard-go rejects anything else).
fn flag(key: &str, value: &str) -> Result<bool, UapiError> {
    if value == "true" {
        Ok(true)
    } else {
        Err(UapiError::invalid(format!(
            "{key} only accepts true, got {}",
            quote(value)
        )))
    }
}

fn number<T: FromStr>(key: &str, value: &str) -> Result<T, UapiError> {
    parse_decimal(value)
        .ok_or_else(|| UapiError::invalid(format!("{key}: invalid number {}", quote(value))))
}

/// Unsigned decimal in range, digits only: Rust's `from_str` would also take `+5`, Go's
/// `ParseUint` and `wg` would not.
pub(super) fn parse_decimal<T: FromStr>(value: &str) -> Option<T> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Exactly 64 hex digits, either case (both `wg` and wireguard-go accept upper case).
fn parse_key(value: &str) -> Option<Key> {
    let mut key = [0; 32];
    hex::decode_to_slice(value, &mut key).ok()?;
    Some(key)
}

/// `1.2.3.4:51820`, `[2001:db8::1]:51820`, `[fe80::1%2]:51820`, and with a resolver
/// `[fe80::1%eth0]:51820`. Hosts are numeric: `wg` resolves names before sending.
fn parse_endpoint(value: &str, resolve_scope: Option<ScopeResolver>) -> Option<SocketAddr> {
    if let Ok(addr) = value.parse() {
        return Some(addr);
    }
    let (host, port) = value.strip_prefix('[')?.split_once("]:")?;
    let (addr, scope) = host.split_once('%')?;
    let scope_id = resolve_scope?(scope)?;
    let addr: Ipv6Addr = addr.parse().ok()?;
    Some(SocketAddr::V6(SocketAddrV6::new(
        addr,
        parse_decimal(port)?,
        0,
        scope_id,
    )))
}

/// A client's text, made safe for a log line: escaped and cut to [`QUOTE_MAX`] characters.
pub(super) fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_MAX) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}
