//! The local API server (see `crate::local_api`): axum on its own thread, forwarding each
//! request to the control thread and waiting for its answer.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use crossbeam_channel::Sender;
use serde::Serialize;

use super::control::{Reply, Request as ControlRequest};
use crate::json_api::{Body, error_response};
use crate::local_api::{
    ConfigurationRequest, CreateRequest, HostRequest, JoinRequest, SettingChange, UnhostRequest,
};

type Requests = Sender<ControlRequest>;

/// The local API's server thread, and how to stop it.
pub struct ApiServer {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl ApiServer {
    /// Binds `addr` now (so a busy port is reported at start-up) and serves on a new thread.
    pub fn start(addr: SocketAddr, requests: Requests) -> Result<ApiServer> {
        // Served beyond loopback only when the user bound it there (`lanrage up --api`).
        let remote = !addr.ip().is_loopback();
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot serve the local API on {addr}"))?;
        listener.set_nonblocking(true)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lanrage-api".into())
            .spawn(move || serve(listener, remote, requests, stopped))?;
        Ok(ApiServer { stop, thread })
    }

    /// Stops serving at once: connections still open (a browser's, an event stream) are
    /// closed, and requests still waiting get no answer.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn serve(
    listener: std::net::TcpListener,
    remote: bool,
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
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "local API cannot start");
                return;
            }
        };
        let app = router(remote, requests);
        // Dropping the server future, then the runtime, ends every connection's task.
        tokio::select! {
            served = axum::serve(listener, app) => {
                if let Err(e) = served {
                    tracing::error!(error = %e, "local API stopped");
                }
            }
            _ = stopped => {}
        }
    });
}

fn router(remote: bool, requests: Requests) -> Router {
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
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            local_only(remote, request, next)
        }))
        .with_state(requests)
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

/// Whether `host` (a Host header, or an origin's host and port) may reach the API: a
/// loopback name, or, when the user served the API beyond loopback (`remote`), any address
/// written as an IP. Never another domain name: that is what DNS rebinding would send.
fn acceptable_host(host: &str, remote: bool) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    let literal = name.parse::<std::net::Ipv4Addr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
    matches!(name, "127.0.0.1" | "localhost" | "[::1]") || (remote && literal)
}

/// Refuses requests whose Host is not a loopback name (a web page cannot reach the API by
/// pointing its own domain at 127.0.0.1: DNS rebinding), and requests a page from anywhere
/// else sends (its Origin is not this one): only the web UI and local programs get in.
async fn local_only(remote: bool, request: Request, next: Next) -> Response {
    let origin_ok = match request.headers().get(header::ORIGIN) {
        None => true,
        Some(origin) => origin.to_str().ok().is_some_and(|origin| {
            origin
                .strip_prefix("http://")
                .is_some_and(|host| acceptable_host(host, remote))
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
    if acceptable_host(host, remote) {
        next.run(request).await
    } else {
        error_response(
            StatusCode::FORBIDDEN,
            "the local API answers only to localhost",
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
    use super::acceptable_host;

    #[test]
    fn only_loopback_names_unless_served_beyond_loopback_and_never_other_domains() {
        for host in [
            "127.0.0.1:8666",
            "localhost:8666",
            "[::1]:8666",
            "localhost",
        ] {
            assert!(acceptable_host(host, false), "{host}");
        }
        for host in [
            "192.168.1.5:8666",
            "evil.example",
            "evil.example:8666",
            "127.0.0.1.evil.example",
        ] {
            assert!(!acceptable_host(host, false), "{host}");
        }
        assert!(acceptable_host("192.168.1.5:8666", true));
        assert!(acceptable_host("[fd00::1]:8666", true));
        assert!(!acceptable_host("evil.example:8666", true));
    }
}
