//! The control server's HTTP and WebSocket endpoints (see `lanrage_control::server_api`), and
//! the accept loop that serves them.
//!
//! The accept loop is ours rather than `axum::serve` because a server on the internet must
//! bound what each connection may hold: every connection takes a slot (per source and in
//! total, refused with a canned 429/503 when none is left, so file descriptors never run out),
//! headers must arrive within a few seconds, a whole request within a few more, and a
//! connection that moves no bytes for a while is closed. Event streams have their own limits
//! (see [`push_events`]).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use lanrage_control::party::limits::{LogThrottle, Refusal, SlotLimits};
use lanrage_control::party::rate_limit::SourceKey;
use lanrage_control::party::source::TrustedProxies;
use lanrage_control::peer_id::PeerId;
use lanrage_control::server_api::{
    ChallengeRequest, CreateParty, Heartbeat, JoinParty, RelayRegistration, TokenRequest,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::state::{ApiError, ServerState, Subscription};
use crate::json_api::{Body, error_response};

/// Request bodies are a few hundred bytes; anything far larger is not a client of ours.
const MAX_BODY: usize = 16 << 10;
/// Most bytes of a request head hyper buffers (its minimum is 8 KiB).
const MAX_HEAD: usize = 16 << 10;
/// Pings keep idle event streams alive through NATs and find dead ones.
const WS_PING: Duration = Duration::from_secs(20);
/// An event stream whose client has sent nothing (not even a pong) for this long is dead.
const WS_SILENT: Duration = Duration::from_secs(3 * 20);
/// A message the client does not take within this time ends its stream: it reconnects and
/// resyncs, and a client that never reads cannot hold the server's buffers.
const WS_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Event-stream buffers. tungstenite's defaults (128 KiB each way) cost ~134 KB per stream;
/// the server only writes small JSON messages and reads pongs.
const WS_READ_BUFFER: usize = 4 << 10;
const WS_MAX_INCOMING: usize = 64 << 10;
/// Room for a snapshot of a large party while the socket is slow; past it the stream ends.
const WS_MAX_WRITE_BUFFER: usize = 1 << 20;
/// How often silent members are looked for when nobody is due sooner.
const EXPIRY_CHECK: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors, say) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per kind of refused connection in this time.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// `Retry-After` for connections refused by a cap.
const RETRY_CONNECT_SECS: u64 = 10;

/// Connection limits and timeouts: see `ControlServerArgs` for what each is.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub trusted_proxies: TrustedProxies,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What every handler sees: the server's state and whom to believe about client addresses.
pub struct App {
    server: ServerState,
    proxies: TrustedProxies,
}

impl Deref for App {
    type Target = ServerState;

    fn deref(&self) -> &ServerState {
        &self.server
    }
}

type AppState = Arc<App>;

pub fn router(state: AppState, request_timeout: Duration) -> Router {
    Router::new()
        .route("/v1/auth/challenge", post(challenge))
        .route("/v1/auth/token", post(token))
        .route("/v1/parties", post(create))
        .route("/v1/parties/join", post(join))
        .route("/v1/parties/leave", post(leave))
        .route("/v1/party", get(party))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/events", get(events))
        .route("/v1/relays", get(relays).post(register_relay))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(request_timeout, time_limit))
        .with_state(state)
}

/// A whole request, its body included, must arrive and be answered within `limit`: a client
/// that trickles its body cannot hold a connection (408).
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error_response(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request did not arrive within {} s", limit.as_secs()),
        ),
    }
}

/// Serves until `shutdown` resolves, expiring silent members meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = Arc::new(App {
        server: state,
        proxies: config.trusted_proxies.clone(),
    });
    let expiry = tokio::spawn(expire_loop(app.clone()));
    let router = router(app, config.request_timeout);
    let connections = Arc::new(Connections {
        inner: Mutex::new(ConnectionsInner {
            slots: SlotLimits::new(config.max_connections, config.max_connections_per_source),
            full: LogThrottle::new(LOG_EVERY),
            source_full: LogThrottle::new(LOG_EVERY),
            accept_failed: LogThrottle::new(LOG_EVERY),
            refused: 0,
        }),
    });
    let config = Arc::new(config);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: what is open must close first. Wait rather than spin.
                if let Some(unlogged) = connections.lock().accept_failed.hit(Instant::now()) {
                    tracing::error!(error = %e, unlogged, "cannot accept a connection");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // A trusted proxy carries many clients; their own limits apply per request.
        let source =
            (!config.trusted_proxies.contains(peer.ip())).then(|| SourceKey::from(peer.ip()));
        match connections.admit(source) {
            Ok(slot) => {
                let (router, config) = (router.clone(), config.clone());
                tokio::spawn(serve_connection(stream, slot, peer, router, config));
            }
            Err(refusal) => refuse(stream, refusal),
        }
    }
    expiry.abort();
    Ok(())
}

/// Connections held, per source and in all.
struct Connections {
    inner: Mutex<ConnectionsInner>,
}

struct ConnectionsInner {
    slots: SlotLimits,
    full: LogThrottle,
    source_full: LogThrottle,
    accept_failed: LogThrottle,
    refused: u64,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `source`, given back when the slot drops.
    fn admit(self: &Arc<Self>, source: Option<SourceKey>) -> Result<Slot, Refusal> {
        let mut inner = self.lock();
        match inner.slots.acquire(source) {
            Ok(()) => Ok(Slot {
                connections: self.clone(),
                source,
            }),
            Err(refusal) => {
                inner.refused += 1;
                let (now, refused, total) = (Instant::now(), inner.refused, inner.slots.total());
                match refusal {
                    Refusal::Total { max } => {
                        if let Some(unlogged) = inner.full.hit(now) {
                            tracing::warn!(
                                max,
                                refused,
                                unlogged,
                                "connection limit reached: refusing new connections (503); \
                                 raise --max-connections (and LimitNOFILE) if this load is real"
                            );
                        }
                    }
                    Refusal::Source { max } => {
                        if let Some(unlogged) = inner.source_full.hit(now) {
                            let source = source.map(|s| s.to_string()).unwrap_or_default();
                            tracing::warn!(
                                %source, max, total, refused, unlogged,
                                "one address holds its share of connections: refusing it (429)"
                            );
                        }
                    }
                }
                Err(refusal)
            }
        }
    }
}

/// One connection's place under the caps; it lives as long as the socket, an event stream's
/// included (it travels inside the socket through the WebSocket upgrade).
struct Slot {
    connections: Arc<Connections>,
    source: Option<SourceKey>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().slots.release(self.source);
    }
}

/// Answers a connection that gets no slot with a fixed response, without reading from it or
/// spawning anything for it, then closes it.
fn refuse(stream: TcpStream, refusal: Refusal) {
    let status = match refusal {
        Refusal::Total { .. } => "503 Service Unavailable",
        Refusal::Source { .. } => "429 Too Many Requests",
    };
    let body = serde_json::json!({ "error": format!("connection refused: {refusal}") }).to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Retry-After: {RETRY_CONNECT_SECS}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's send buffer is empty: this either writes all of it or the client is
    // gone. Nothing waits on it either way.
    let _ = stream.try_write(response.as_bytes());
}

/// Serves one connection's requests (HTTP/1.1 keep-alive, WebSocket upgrades) until it ends,
/// a head is too slow (`header_timeout`) or nothing moves for `idle_timeout`.
async fn serve_connection(
    stream: TcpStream,
    slot: Slot,
    peer: SocketAddr,
    router: Router,
    config: Arc<ServeConfig>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
        _slot: slot,
    });
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        tower_service::Service::call(&mut router.clone(), request)
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(MAX_HEAD);
    let connection = http.serve_connection(io, service).with_upgrades();
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        }
        () = activity.idle_for(config.idle_timeout) => {
            tracing::debug!(%peer, "closed an idle connection");
        }
    }
}

/// When a connection last moved a byte.
#[derive(Clone)]
struct Activity(Arc<(Instant, AtomicU64)>);

impl Activity {
    fn new() -> Self {
        Activity(Arc::new((Instant::now(), AtomicU64::new(0))))
    }

    fn touch(&self) {
        let (start, last) = &*self.0;
        let millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(millis, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let (start, last) = &*self.0;
            let deadline = *start + Duration::from_millis(last.load(Ordering::Relaxed)) + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A socket that records its activity and holds its connection slot.
struct Tracked<T> {
    inner: T,
    activity: Activity,
    _slot: Slot,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn expire_loop(state: AppState) {
    loop {
        let next = state.expire();
        let wait = next.map_or(EXPIRY_CHECK, |at| {
            at.saturating_duration_since(std::time::Instant::now())
                .min(EXPIRY_CHECK)
        });
        tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = error_response(self.status, self.message);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The client a request comes from, for per-source limits: the TCP peer, or the address a
/// trusted proxy names (see `lanrage_control::party::source`).
struct Client(IpAddr);

impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no client address"))?;
        // A line that is not text cannot be read, which counts as unreadable (the proxy is
        // then the client), never as absent.
        let lines = |name| {
            parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or(""))
        };
        let client = state.proxies.client(
            peer,
            lines(header::HeaderName::from_static("x-forwarded-for")),
            lines(header::FORWARDED),
        );
        Ok(Client(client))
    }
}

/// The peer named by the request's bearer token.
struct Caller(PeerId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing 'Authorization: Bearer TOKEN' (get one from /v1/auth/token)",
                )
            })?;
        state.authenticate(bearer.trim()).map(Caller)
    }
}

async fn challenge(
    State(state): State<AppState>,
    Client(client): Client,
    Body(request): Body<ChallengeRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(state.challenge(client, &request.peer)?).into_response())
}

async fn token(
    State(state): State<AppState>,
    Client(client): Client,
    Body(request): Body<TokenRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(state.token(client, &request)?).into_response())
}

async fn create(
    State(state): State<AppState>,
    Client(client): Client,
    Caller(peer): Caller,
    Body(request): Body<CreateParty>,
) -> Result<Response, ApiError> {
    let party = state.create(peer, client, &request)?;
    tracing::info!(party = party.id, %peer, "party created");
    Ok((StatusCode::CREATED, Json(party)).into_response())
}

async fn join(
    State(state): State<AppState>,
    Client(client): Client,
    Caller(peer): Caller,
    Body(request): Body<JoinParty>,
) -> Result<Response, ApiError> {
    let party = state.join(peer, client, &request)?;
    tracing::info!(party = party.id, %peer, "member joined");
    Ok(Json(party).into_response())
}

async fn leave(State(state): State<AppState>, Caller(peer): Caller) -> Result<Response, ApiError> {
    state.leave(peer)?;
    tracing::info!(%peer, "member left");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn party(State(state): State<AppState>, Caller(peer): Caller) -> Result<Response, ApiError> {
    Ok(Json(state.party(peer)?).into_response())
}

async fn heartbeat(
    State(state): State<AppState>,
    Caller(peer): Caller,
    Body(beat): Body<Heartbeat>,
) -> Result<Response, ApiError> {
    state.heartbeat(peer, beat)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn relays(State(state): State<AppState>, Caller(peer): Caller) -> Result<Response, ApiError> {
    Ok(Json(state.relays(peer)?).into_response())
}

async fn register_relay(
    State(state): State<AppState>,
    Body(registration): Body<RelayRegistration>,
) -> Result<Response, ApiError> {
    state.register_relay(&registration)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn events(
    State(state): State<AppState>,
    Client(client): Client,
    Caller(peer): Caller,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // Taken before the upgrade so that a refusal is a plain 429/503, not a closed socket.
    let subscription = state.subscribe(peer, client)?;
    let id = subscription.id;
    let on_failure = state.clone();
    Ok(upgrade
        .read_buffer_size(WS_READ_BUFFER)
        // Each message is written at once: no buffer kept per stream.
        .write_buffer_size(0)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
        .max_message_size(WS_MAX_INCOMING)
        .max_frame_size(WS_MAX_INCOMING)
        .on_failed_upgrade(move |_| on_failure.unsubscribe(peer, id))
        .on_upgrade(move |socket| push_events(socket, state, peer, subscription)))
}

/// Forwards the peer's events until either side goes away, the client falls silent for
/// [`WS_SILENT`] or does not take a message within [`WS_SEND_TIMEOUT`], or a newer stream for
/// the same peer (or a full queue: see `Limits::event_queue`) ends this one.
async fn push_events(
    mut socket: WebSocket,
    state: AppState,
    peer: PeerId,
    subscription: Subscription,
) {
    let Subscription { id, mut events } = subscription;
    let mut ping = tokio::time::interval(WS_PING);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let Ok(text) = serde_json::to_string(&event) else { continue };
                if !send(&mut socket, Message::Text(text.into())).await {
                    break;
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() >= WS_SILENT
                    || !send(&mut socket, Message::Ping(Vec::new().into())).await
                {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // Clients only answer pings; anything else is ignored.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => heard = Instant::now(),
            },
        }
    }
    state.unsubscribe(peer, id);
}

/// Sends `message` within [`WS_SEND_TIMEOUT`]; false if the stream should end.
async fn send(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(message)).await,
        Ok(Ok(()))
    )
}
