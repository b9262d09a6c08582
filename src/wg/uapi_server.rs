//! The UAPI socket: a Unix stream socket speaking WireGuard's cross-platform configuration
//! protocol, translated to engine calls. Parsing is `lanrage_control::uapi` (sans-IO); this
//! module only moves bytes and maps types.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lanrage_control::uapi::{
    self, AllowedIp, DeviceInfo, Operation, PeerInfo, Request, RequestFramer, SUCCESS_RESPONSE,
    SetRequest, UapiError,
};
use lanrage_engine::{DeviceStatus, DeviceUpdate, EngineHandle, PeerUpdate, Prefix, UpdateError};

/// A client that sends nothing for this long is disconnected, so it cannot pin a thread.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound socket; the file is removed when this is dropped.
pub struct UapiListener {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for UapiListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket, refusing if another process already serves this interface and replacing
/// a stale socket left by one that died.
pub fn bind(path: &Path) -> Result<UapiListener> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Readable by all, as wg expects (it lists the sockets); writable by root alone whatever
    // the umask, so nobody else can replace a socket in it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{} is already served by a running process; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = bind_private(dir, path)?;
    Ok(UapiListener {
        listener,
        path: path.to_owned(),
    })
}

/// Binds the socket owner-only from the start: the socket hands out the private key, and a
/// socket bound where it belongs and chmod'ed after is open to anyone for that moment (under
/// umask 000, to every local user). So it is bound in a directory only we can enter, made
/// 0600 there, and renamed into place.
fn bind_private(dir: &Path, path: &Path) -> Result<UnixListener> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let staging = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let bound = (|| {
        let staged = staging.join("sock");
        let listener = UnixListener::bind(&staged)
            .with_context(|| format!("cannot bind {}", path.display()))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
        std::fs::rename(&staged, path)
            .with_context(|| format!("cannot move the socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// Serves clients on a background thread until `stop` is set.
pub fn spawn(listener: UapiListener, engine: EngineHandle, stop: Arc<AtomicBool>) -> Result<()> {
    std::thread::Builder::new()
        .name("lanrage-uapi".into())
        .spawn(move || {
            for stream in listener.listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match stream {
                    Ok(stream) => {
                        let engine = engine.clone();
                        let spawned = std::thread::Builder::new()
                            .name("lanrage-uapi-client".into())
                            .spawn(move || serve_client(stream, &engine));
                        if let Err(e) = spawned {
                            tracing::warn!(error = %e, "cannot serve UAPI client");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "UAPI accept failed"),
                }
            }
            drop(listener);
        })?;
    Ok(())
}

fn serve_client(mut stream: UnixStream, engine: &EngineHandle) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let mut framer = RequestFramer::new().with_scope_resolver(interface_index);
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if let Err(e) = framer.push(&buf[..n]) {
            // Oversized or otherwise unframeable: answer and hang up.
            let _ = stream.write_all(uapi::format_errno(&e).as_bytes());
            return;
        }
        while let Some(request) = framer.next_request() {
            let response = match request {
                Ok(request) => respond(engine, request),
                // The framer has skipped to the end of the bad request; the next one may be fine.
                Err(e) => {
                    tracing::debug!(error = %e, "bad UAPI request");
                    uapi::format_errno(&e)
                }
            };
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }
}

fn respond(engine: &EngineHandle, request: Request) -> String {
    let result = match request {
        Request::Get => engine
            .status()
            .map(|status| uapi::format_get_response(&device_info(status)))
            .map_err(|e| engine_error(e).with_operation(Operation::Get)),
        Request::Set(set) => engine
            .update(device_update(set))
            .map(|()| SUCCESS_RESPONSE.to_owned())
            .map_err(engine_error),
    };
    result.unwrap_or_else(|e| {
        tracing::info!(error = %e, "UAPI request refused");
        uapi::format_errno(&e)
    })
}

/// Resolves the interface in a link-local endpoint such as `[fe80::1%eth0]:51820`.
fn interface_index(name: &str) -> Option<u32> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        && name != "."
        && name != "..";
    if !valid {
        return None;
    }
    let path = Path::new("/sys/class/net").join(name).join("ifindex");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn engine_error(e: UpdateError) -> UapiError {
    match e {
        UpdateError::PortUnavailable { .. } => UapiError::address_in_use(e.to_string()),
        UpdateError::Invalid(_) => UapiError::invalid(e.to_string()),
        UpdateError::Stopped => UapiError::io(e.to_string()),
    }
}

fn device_update(set: SetRequest) -> DeviceUpdate {
    DeviceUpdate {
        private_key: set.private_key.map(Some),
        listen_port: set.listen_port,
        fwmark: set.fwmark,
        replace_peers: set.replace_peers,
        peers: set
            .peers
            .into_iter()
            .map(|p| PeerUpdate {
                public_key: p.public_key,
                remove: p.remove,
                update_only: p.update_only,
                preshared_key: p.preshared_key.map(Some),
                endpoint: p.endpoint.map(Into::into),
                persistent_keepalive: p.persistent_keepalive_interval,
                replace_allowed_ips: p.replace_allowed_ips,
                allowed_ips: p
                    .allowed_ips
                    .iter()
                    .map(|a| Prefix {
                        addr: a.addr(),
                        cidr: a.cidr(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn device_info(status: DeviceStatus) -> DeviceInfo {
    DeviceInfo {
        private_key: status.private_key,
        listen_port: status.listen_port,
        fwmark: status.fwmark,
        peers: status
            .peers
            .into_iter()
            .map(|p| {
                let mut info = PeerInfo::new(p.public_key);
                info.preshared_key = p.preshared_key;
                info.endpoint = p.endpoint.map(|e| e.addr);
                info.last_handshake = p.last_handshake;
                info.rx_bytes = p.rx_bytes;
                info.tx_bytes = p.tx_bytes;
                info.persistent_keepalive_interval = p.persistent_keepalive;
                info.allowed_ips = p
                    .allowed_ips
                    .iter()
                    .filter_map(|a| AllowedIp::new(a.addr, a.cidr))
                    .collect();
                info
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_owner_only_in_a_directory_only_root_can_change() {
        let dir = std::env::temp_dir().join(format!("lanrage-uapi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("wireguard").join("wgtest.sock");
        let listener = bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        // Nothing of the staging is left, and a client reaches the socket where it belongs.
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, [std::ffi::OsString::from("wgtest.sock")]);
        UnixStream::connect(&path).unwrap();
        drop(listener);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
