//! The local API server (see `crate::local_api`): axum on its own thread, forwarding each
//! request to the control thread and waiting for its answer.
//!
//! Who may use it: the daemon runs as root and the API can change what it does (its control
//! server, its settings, stopping it), so it has an owner.
//! - The CLI talks over a Unix socket in the data directory (`run/api.sock`, mode 0660 in a
//!   directory of mode 0750, both of group `lanrage` when that group exists, else root's
//!   only): the file system says who may connect, root and the group's members.
//! - The TCP API (the web UI, Prometheus, programs) wants a secret token on every request: a
//!   random one written at each start to the data directory's `api-token` (0640, group
//!   `lanrage`). `lanrage ui` prints the web UI's address with it; the page load sets a
//!   cookie and drops it from the address; programs send `Authorization: Bearer TOKEN`.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use crossbeam_channel::Sender;
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::control::{Reply, Request as ControlRequest};
use crate::json_api::{Body, error_response};
use crate::local_api::{
    ConfigurationRequest, CreateRequest, HostRequest, JoinRequest, SettingChange, TOKEN_FILE,
    UiInfo, UnhostRequest, socket_path,
};

type Requests = Sender<ControlRequest>;

/// The group whose members may control the daemon besides root.
pub const GROUP: &str = "lanrage";

/// The local API's server thread, and how to stop it.
pub struct ApiServer {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    socket: PathBuf,
    tcp: Option<SocketAddr>,
}

impl ApiServer {
    /// Binds the Unix socket in `data_dir` and, unless `tcp` is `None`, the TCP address now
    /// (so a busy port is reported at start-up), writes a new token, and serves on a new
    /// thread.
    pub fn start(
        data_dir: &FsPath,
        tcp: Option<SocketAddr>,
        requests: Requests,
    ) -> Result<ApiServer> {
        let group = group_id(GROUP);
        open_data_dir(data_dir, group)?;
        let socket = socket_path(data_dir);
        let unix = bind_socket(&socket, group)?;
        unix.set_nonblocking(true)?;
        let token = write_token(&data_dir.join(TOKEN_FILE), group)?;
        let listener = tcp
            .map(|addr| {
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot serve the local API on {addr}"))?;
                listener.set_nonblocking(true)?;
                anyhow::Ok(listener)
            })
            .transpose()?;
        let tcp = listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let ui = tcp.map(|addr| web_ui_url(addr, &token));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lanrage-api".into())
            .spawn(move || serve(unix, listener, token, ui, requests, stopped))?;
        Ok(ApiServer {
            stop,
            thread,
            socket,
            tcp,
        })
    }

    /// Where the TCP API listens, if it does (the port the system chose for port 0).
    pub fn tcp(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The Unix socket the CLI talks to.
    pub fn socket(&self) -> &FsPath {
        &self.socket
    }

    /// Stops serving at once: connections still open (a browser's, an event stream) are
    /// closed, and requests still waiting get no answer. The socket file goes too, so the
    /// CLI says no daemon runs.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The group's id, if the group exists.
fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut size = 4096;
    loop {
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; size];
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is to a live local of the right type and `buf` is `size`
        // long; the answer's strings point into `buf`, and only the gid is read.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        return (rc == 0 && !found.is_null()).then_some(group.gr_gid);
    }
}

/// The data directory stays closed to everyone but root, except that the group may reach the
/// socket's directory and the token by name (0710: never list it). Files there it must not
/// read (the settings database holds the Discord secrets; the key is 0600 already) lose
/// their group and other bits.
fn open_data_dir(data_dir: &FsPath, group: Option<u32>) -> Result<()> {
    let meta = std::fs::symlink_metadata(data_dir)
        .with_context(|| format!("cannot read {}", data_dir.display()))?;
    if !meta.is_dir() || meta.mode() & 0o002 != 0 {
        bail!(
            "{} is not a private directory (a link, or writable by everyone): \
             the local API's socket and token cannot be kept there",
            data_dir.display()
        );
    }
    for name in [
        super::settings::FILE,
        "settings.db-wal",
        "settings.db-shm",
        "private.key",
    ] {
        let path = data_dir.join(name);
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && meta.is_file()
            && meta.mode() & 0o077 != 0
        {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private", path.display()))?;
        }
    }
    if let Some(gid) = group {
        std::os::unix::fs::chown(data_dir, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {GROUP}", data_dir.display()))?;
    }
    let mode = if group.is_some() { 0o710 } else { 0o700 };
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", data_dir.display()))
}

/// Binds the socket at `path` with nobody else able to connect in between: its directory is
/// made root's alone (0700) first, the socket given mode 0660 and the group, and only then is
/// the directory opened to the group (0750). A socket left by a daemon that died is replaced;
/// one that still answers is another daemon's.
fn bind_socket(path: &FsPath, group: Option<u32>) -> Result<std::os::unix::net::UnixListener> {
    let dir = path.parent().context("the socket has no directory")?;
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() && meta.uid() == unsafe { libc::geteuid() } => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        }
        Ok(_) => bail!(
            "{} is not a directory of this user's: remove it so the local API's socket can go there",
            dir.display()
        ),
        Err(_) => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?,
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another LANrage daemon serves {} (one daemon per data directory)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the old socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot serve the local API on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
        std::os::unix::fs::chown(dir, None, Some(gid))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    Ok(listener)
}

/// A new random token in `path` (mode 0640, the group's), written under another name and
/// renamed into place so nobody ever reads half of one. Without a newline: Prometheus's
/// `credentials_file` and `$(cat FILE)` take it as it is.
fn write_token(path: &FsPath, group: Option<u32>) -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no random numbers from the operating system: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut fresh = path.as_os_str().to_owned();
    fresh.push(format!(".new-{}", std::process::id()));
    let fresh = PathBuf::from(fresh);
    let _ = std::fs::remove_file(&fresh);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&fresh)
        .with_context(|| format!("cannot create {}", fresh.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::fchown(&file, None, Some(gid))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&fresh, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// The web UI's address with the token, as `lanrage ui` prints it; a wildcard address is
/// reached on loopback.
fn web_ui_url(addr: SocketAddr, token: &str) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}/?token={token}")
}

fn serve(
    unix: std::os::unix::net::UnixListener,
    tcp: Option<std::net::TcpListener>,
    token: String,
    ui: Option<String>,
    requests: Requests,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "local API cannot start");
            return;
        }
    };
    runtime.block_on(async move {
        let unix = match tokio::net::UnixListener::from_std(unix) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "local API cannot start");
                return;
            }
        };
        let tcp = match tcp.map(tokio::net::TcpListener::from_std).transpose() {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "local API cannot start");
                return;
            }
        };
        let socket_app = socket_router(ui, requests.clone());
        let served_tcp = async move {
            match tcp {
                Some(listener) => {
                    let own = match listener.local_addr() {
                        Ok(addr) => addr,
                        Err(e) => return Err(e),
                    };
                    axum::serve(listener, tcp_router(own, token, requests)).await
                }
                None => std::future::pending().await,
            }
        };
        // Dropping the server futures, then the runtime, ends every connection's task.
        tokio::select! {
            served = axum::serve(unix, socket_app) => {
                if let Err(e) = served {
                    tracing::error!(error = %e, "local API stopped");
                }
            }
            served = served_tcp => {
                if let Err(e) = served {
                    tracing::error!(error = %e, "local API stopped");
                }
            }
            _ = stopped => {}
        }
    });
}

/// The socket's API: everything, and `/api/ui`, the web UI's address with its token.
/// Whoever may connect is allowed (the socket's mode and group decide).
fn socket_router(ui: Option<String>, requests: Requests) -> Router {
    routes()
        .route(
            "/api/ui",
            get(move || async move {
                match ui {
                    Some(url) => Json(UiInfo { url }).into_response(),
                    None => error_response(
                        StatusCode::NOT_FOUND,
                        "the web UI is off: the daemon serves no TCP API (`api` is \"off\")",
                    ),
                }
            }),
        )
        .with_state(requests)
}

/// The TCP API: only for requests that name it (no DNS rebinding), come from no other page,
/// and carry the token.
fn tcp_router(own: SocketAddr, token: String, requests: Requests) -> Router {
    let auth = Arc::new(Auth {
        token,
        cookie: format!("lanrage_token_{}", own.port()),
    });
    routes()
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            authorized(auth.clone(), request, next)
        }))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            local_only(own, request, next)
        }))
        .with_state(requests)
}

fn routes() -> Router<Requests> {
    Router::new()
        .route("/status", get(status))
        .route("/api/peers", get(peers))
        .route("/api/servers", get(servers))
        .route("/api/servers/host", post(host))
        .route("/api/servers/unhost", post(unhost))
        .route("/party/create", post(create))
        .route("/party/join", post(join))
        .route("/party/leave", post(leave))
        .route("/metrics", get(metrics))
        .route("/api/shutdown", post(shutdown))
        .route("/api/discord", get(discord))
        .route("/api/history", get(history))
        .route("/api/games", get(games))
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/settings", get(settings))
        .route(
            "/api/settings/{key}",
            axum::routing::put(set_setting).delete(reset_setting),
        )
        .route(
            "/api/configurations",
            get(configurations).post(save_configuration),
        )
        .route("/api/configurations/{name}", delete(delete_configuration))
        .route(
            "/api/configurations/{name}/activate",
            post(activate_configuration),
        )
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such endpoint") })
}

/// The web UI, built into the binary (`web/`).
const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE_CSS: &str = include_str!("web/style.css");

/// A web UI file, with headers that keep other pages from framing or scripting it.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The TCP API's secret and the name of the cookie that carries it (by port: two daemons on
/// one host's loopback would otherwise overwrite each other's cookie).
struct Auth {
    token: String,
    cookie: String,
}

impl Auth {
    /// In constant time: how much of a guess was right must not show in the answer's timing.
    fn matches(&self, candidate: &str) -> bool {
        self.token.as_bytes().ct_eq(candidate.as_bytes()).into()
    }

    fn cookie_token<'a>(&self, request: &'a Request) -> impl Iterator<Item = &'a str> {
        let name = self.cookie.clone();
        request
            .headers()
            .get_all(header::COOKIE)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(move |pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then_some(value)
            })
    }
}

/// Lets in requests with the token, as `Authorization: Bearer` or the web UI's cookie. A page
/// load with `?token=` (the address `lanrage ui` prints) gets the cookie and is sent to the
/// same page without it, so the token leaves the address bar and the history.
async fn authorized(auth: Arc<Auth>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET
        && let Some(token) = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")))
        && auth.matches(token)
    {
        let cookie = format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            auth.cookie, auth.token
        );
        let location = request.uri().path().to_owned();
        return (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, cookie),
                (header::LOCATION, location),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
        )
            .into_response();
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| auth.matches(t.trim()));
    if bearer || auth.cookie_token(&request).any(|t| auth.matches(t)) {
        return next.run(request).await;
    }
    let mut response = error_response(
        StatusCode::UNAUTHORIZED,
        format!(
            "this API needs its token: open the address `lanrage ui` prints (as root or a \
             member of the group {GROUP}), or send `Authorization: Bearer TOKEN` with the \
             token from the data directory's {TOKEN_FILE} (e.g. /var/lib/lanrage/{TOKEN_FILE})"
        ),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Whether `authority` (a Host header, or an origin's host and port) is this API's own
/// address: the very port it listens on, and the address it is bound to, or `localhost` when
/// that is loopback. Bound to a wildcard (`lanrage up --api 0.0.0.0:8666`) it is any address
/// written as an IP of that family, or a loopback name. Never another domain name: that is
/// what DNS rebinding would send.
fn own_authority(authority: &str, own: SocketAddr) -> bool {
    let (name, port) = match authority.rsplit_once(':') {
        // `[::1]` alone has a colon but no port.
        Some((name, port)) if !port.contains(']') => (name, port.parse::<u16>().ok()),
        _ => (authority, Some(80)),
    };
    if port != Some(own.port()) {
        return false;
    }
    let ip = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(std::net::IpAddr::V6),
        None => name
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .map(std::net::IpAddr::V4),
    };
    let bound = own.ip();
    match ip {
        Some(ip) if bound.is_unspecified() => ip.is_ipv4() == bound.is_ipv4(),
        Some(ip) => ip == bound,
        None => name == "localhost" && (bound.is_loopback() || bound.is_unspecified()),
    }
}

/// Refuses requests whose Host is not this API's own address (a web page cannot reach the API
/// by pointing its own domain at 127.0.0.1: DNS rebinding), and requests a page from anywhere
/// else sends: its Origin must be this API's exactly, scheme, host and port (a page on
/// another localhost port is another origin but the same site, so it would get the cookie).
async fn local_only(own: SocketAddr, request: Request, next: Next) -> Response {
    let origin_ok = match request.headers().get(header::ORIGIN) {
        None => true,
        Some(origin) => origin.to_str().ok().is_some_and(|origin| {
            origin
                .strip_prefix("http://")
                .is_some_and(|authority| own_authority(authority, own))
        }),
    };
    if !origin_ok {
        return error_response(
            StatusCode::FORBIDDEN,
            "the local API answers only to pages it serves itself",
        );
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if own_authority(host, own) {
        next.run(request).await
    } else {
        error_response(
            StatusCode::FORBIDDEN,
            "the local API answers only to its own address",
        )
    }
}

/// Sends a request to the control thread and turns its answer into a response.
async fn ask<T: Serialize>(
    requests: &Requests,
    make: impl FnOnce(Reply<T>) -> ControlRequest,
    ok: StatusCode,
) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if requests.send(make(tx)).is_err() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(value)) if ok == StatusCode::NO_CONTENT => {
            let _ = value;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Ok(value)) => (ok, Json(value)).into_response(),
        Ok(Err((status, message))) => error_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &message,
        ),
        Err(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        ),
    }
}

async fn status(State(requests): State<Requests>) -> Response {
    ask(&requests, ControlRequest::Status, StatusCode::OK).await
}

async fn peers(State(requests): State<Requests>) -> Response {
    ask(&requests, ControlRequest::Peers, StatusCode::OK).await
}

async fn servers(State(requests): State<Requests>) -> Response {
    ask(&requests, ControlRequest::Servers, StatusCode::OK).await
}

async fn host(State(requests): State<Requests>, Body(body): Body<HostRequest>) -> Response {
    ask(
        &requests,
        |r| ControlRequest::Host(body, r),
        StatusCode::NO_CONTENT,
    )
    .await
}

async fn unhost(State(requests): State<Requests>, Body(body): Body<UnhostRequest>) -> Response {
    ask(
        &requests,
        |r| ControlRequest::Unhost(body.port, r),
        StatusCode::NO_CONTENT,
    )
    .await
}

async fn create(State(requests): State<Requests>, Body(body): Body<CreateRequest>) -> Response {
    ask(
        &requests,
        |r| ControlRequest::Create(body.name, r),
        StatusCode::CREATED,
    )
    .await
}

async fn join(State(requests): State<Requests>, Body(body): Body<JoinRequest>) -> Response {
    ask(
        &requests,
        |r| ControlRequest::Join(body.code, r),
        StatusCode::OK,
    )
    .await
}

async fn leave(State(requests): State<Requests>) -> Response {
    ask(&requests, ControlRequest::Leave, StatusCode::NO_CONTENT).await
}

async fn settings(State(requests): State<Requests>) -> Response {
    ask(&requests, ControlRequest::Settings, StatusCode::OK).await
}

async fn set_setting(
    State(requests): State<Requests>,
    Path(key): Path<String>,
    Body(body): Body<SettingChange>,
) -> Response {
    ask(
        &requests,
        |r| ControlRequest::SetSetting(key, body.value, r),
        StatusCode::OK,
    )
    .await
}

async fn reset_setting(State(requests): State<Requests>, Path(key): Path<String>) -> Response {
    ask(
        &requests,
        |r| ControlRequest::ResetSetting(key, r),
        StatusCode::OK,
    )
    .await
}

async fn configurations(State(requests): State<Requests>) -> Response {
    ask(&requests, ControlRequest::Configurations, StatusCode::OK).await
}

async fn save_configuration(
    State(requests): State<Requests>,
    Body(body): Body<ConfigurationRequest>,
) -> Response {
    ask(
        &requests,
        |r| ControlRequest::SaveConfiguration(body.name, r),
        StatusCode::NO_CONTENT,
    )
    .await
}

async fn activate_configuration(
    State(requests): State<Requests>,
    Path(name): Path<String>,
) -> Response {
    ask(
        &requests,
        |r| ControlRequest::ActivateConfiguration(name, r),
        StatusCode::OK,
    )
    .await
}

async fn delete_configuration(
    State(requests): State<Requests>,
    Path(name): Path<String>,
) -> Response {
    ask(
        &requests,
        |r| ControlRequest::DeleteConfiguration(name, r),
        StatusCode::NO_CONTENT,
    )
    .await
}

/// Prometheus's text format, not JSON.
async fn metrics(State(requests): State<Requests>) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if requests.send(ControlRequest::Metrics(tx)).is_err() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(text)) => {
            ([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response()
        }
        _ => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        ),
    }
}

async fn shutdown(State(requests): State<Requests>) -> Response {
    ask(&requests, ControlRequest::Shutdown, StatusCode::NO_CONTENT).await
}

async fn discord(State(requests): State<Requests>) -> Response {
    ask(&requests, ControlRequest::Discord, StatusCode::OK).await
}

async fn history(State(requests): State<Requests>) -> Response {
    ask(&requests, ControlRequest::History, StatusCode::OK).await
}

async fn games(State(requests): State<Requests>) -> Response {
    ask(&requests, ControlRequest::Games, StatusCode::OK).await
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn host_and_origin_must_be_the_apis_own_address_port_included() {
        let check = |own: &str, ok: &[&str], refused: &[&str]| {
            let own: SocketAddr = own.parse().unwrap();
            for authority in ok {
                assert!(own_authority(authority, own), "{own}: {authority}");
            }
            for authority in refused {
                assert!(!own_authority(authority, own), "{own}: {authority}");
            }
        };
        check(
            "127.0.0.1:8666",
            &["127.0.0.1:8666", "localhost:8666"],
            &[
                // Another server on this host: another origin, and the same site.
                "localhost:3000",
                "127.0.0.1:8667",
                "localhost",
                "127.0.0.1",
                "[::1]:8666",
                "192.168.1.5:8666",
                "evil.example:8666",
                "127.0.0.1.evil.example:8666",
                "",
            ],
        );
        check(
            "127.0.0.1:80",
            &["127.0.0.1", "localhost"],
            &["127.0.0.1:8666"],
        );
        check(
            "[::1]:8666",
            &["[::1]:8666", "localhost:8666"],
            &["[::1]", "[::1]:1"],
        );
        check(
            "0.0.0.0:8666",
            &["192.168.1.5:8666", "127.0.0.1:8666", "localhost:8666"],
            &["192.168.1.5:9000", "evil.example:8666", "[fd00::1]:8666"],
        );
        check(
            "192.168.1.5:8666",
            &["192.168.1.5:8666"],
            &["192.168.1.6:8666", "localhost:8666", "127.0.0.1:8666"],
        );
    }

    /// A fresh data directory under the system's temporary one.
    fn data_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lanrage-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        dir
    }

    /// An API on a free loopback port whose control thread answers `/metrics` only.
    fn server(dir: &FsPath) -> ApiServer {
        let (tx, rx) = crossbeam_channel::bounded::<ControlRequest>(8);
        std::thread::spawn(move || {
            for request in rx {
                if let ControlRequest::Metrics(reply) = request {
                    let _ = reply.send(Ok("up 1\n".to_owned()));
                }
            }
        });
        ApiServer::start(dir, Some("127.0.0.1:0".parse().unwrap()), tx).unwrap()
    }

    /// One HTTP/1.1 request: the status code, the head's lines (lowercase) and the body.
    fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(format!("{request}Connection: close\r\n\r\n").as_bytes())
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, head.to_lowercase(), body.to_owned())
    }

    #[test]
    fn the_tcp_api_wants_the_token_and_the_web_ui_gets_it_as_a_cookie() {
        let dir = data_dir("token");
        let api = server(&dir);
        let addr = api.tcp().unwrap();
        let token = std::fs::read_to_string(dir.join(TOKEN_FILE)).unwrap();
        assert_eq!(token.len(), 64);
        let host = format!("Host: {addr}\r\n");
        let get = |path: &str, headers: &str| {
            http(addr, &format!("GET {path} HTTP/1.1\r\n{host}{headers}"))
        };

        for path in ["/metrics", "/", "/status", "/ui/app.js"] {
            let (code, _, body) = get(path, "");
            assert_eq!(code, 401, "{path}");
            assert!(body.contains("lanrage ui"), "{body}");
        }
        let wrong = format!("{}0", &token[..63]);
        assert_eq!(
            get("/metrics", &format!("Authorization: Bearer {wrong}\r\n")).0,
            401
        );
        assert_eq!(get(&format!("/?token={wrong}"), "").0, 401);
        let bearer = format!("Authorization: Bearer {token}\r\n");
        let (code, _, body) = get("/metrics", &bearer);
        assert_eq!((code, body.as_str()), (200, "up 1\n"));

        // The page load with the token: a cookie for the browser, and the token leaves.
        let (code, head, _) = get(&format!("/?token={token}"), "");
        assert_eq!(code, 303, "{head}");
        assert!(head.contains("\r\nlocation: /\r\n"), "{head}");
        let cookie = format!("lanrage_token_{}={token}", addr.port());
        assert!(
            head.contains(&format!(
                "\r\nset-cookie: {cookie}; httponly; samesite=strict; path=/"
            )),
            "{head}"
        );
        let (code, _, body) = get("/", &format!("Cookie: theme=dark; {cookie}\r\n"));
        assert_eq!(code, 200);
        assert!(
            body.contains("<html") || body.contains("<!doctype"),
            "{body}"
        );
        // Another daemon's cookie (another port) is not this one's.
        let other = format!("Cookie: lanrage_token_1={token}\r\n");
        assert_eq!(get("/", &other).0, 401);

        // A page elsewhere on this host (another port) is refused, token or not.
        let (code, _, _) = get(
            "/metrics",
            &format!("{bearer}Origin: http://127.0.0.1:{}\r\n", addr.port() + 1),
        );
        assert_eq!(code, 403);
        let (code, _, _) = get("/metrics", &format!("{bearer}Origin: http://{addr}\r\n"));
        assert_eq!(code, 200);

        // A new start, a new token: the old one no longer opens anything.
        api.stop();
        let api = server(&dir);
        let addr = api.tcp().unwrap();
        let host = format!("Host: {addr}\r\n");
        let (code, _, _) = http(addr, &format!("GET /metrics HTTP/1.1\r\n{host}{bearer}"));
        assert_eq!(code, 401);
        api.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_socket_is_root_and_the_groups_only_and_tells_the_web_uis_address() {
        let dir = data_dir("socket");
        let mode = |path: &FsPath| std::fs::symlink_metadata(path).unwrap().mode() & 0o7777;
        let api = server(&dir);
        let socket = socket_path(&dir);
        assert_eq!(api.socket(), socket);
        assert_eq!(mode(&socket), 0o660);
        let (dir_mode, run_mode) = match group_id(GROUP) {
            Some(_) => (0o710, 0o750),
            None => (0o700, 0o700),
        };
        assert_eq!(mode(&dir), dir_mode);
        assert_eq!(mode(socket.parent().unwrap()), run_mode);
        assert_eq!(mode(&dir.join(TOKEN_FILE)), 0o640);

        let client = crate::local_api::Client::new(&dir);
        let ui = client.ui().unwrap();
        let token = std::fs::read_to_string(dir.join(TOKEN_FILE)).unwrap();
        assert_eq!(
            ui.url,
            format!("http://{}/?token={token}", api.tcp().unwrap())
        );
        // The socket needs no token: the file system already said who may connect (the
        // stand-in control thread does not answer settings, so the request got that far).
        let e = client.settings().unwrap_err().to_string();
        assert!(e.contains("shutting down"), "{e}");
        // A second daemon on the same data directory is refused, the first keeps its socket.
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let second = ApiServer::start(&dir, None, tx);
        assert!(second.is_err_and(|e| e.to_string().contains("another LANrage daemon")));
        assert!(client.ui().is_ok());
        api.stop();
        assert!(!socket.exists(), "the socket goes with the daemon");
        let e = client.ui().unwrap_err();
        assert!(
            e.downcast_ref::<crate::local_api::NotRunning>().is_some(),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn with_the_group_the_socket_and_token_are_the_groups() {
        // Any group stands in for `lanrage` (the test machine need not have it).
        let gid = group_id("nogroup").or_else(|| group_id("daemon")).unwrap();
        let dir = data_dir("group");
        open_data_dir(&dir, Some(gid)).unwrap();
        let socket = socket_path(&dir);
        let _listener = bind_socket(&socket, Some(gid)).unwrap();
        write_token(&dir.join(TOKEN_FILE), Some(gid)).unwrap();
        for (path, mode) in [
            (dir.clone(), 0o710),
            (socket.parent().unwrap().to_owned(), 0o750),
            (socket.clone(), 0o660),
            (dir.join(TOKEN_FILE), 0o640),
        ] {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(
                (meta.mode() & 0o7777, meta.gid()),
                (mode, gid),
                "{}",
                path.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
