//! The control server's HTTP and WebSocket endpoints (see `lanrage_control::server_api`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lanrage_control::peer_id::PeerId;
use lanrage_control::server_api::{
    ChallengeRequest, CreateParty, Heartbeat, JoinParty, RelayRegistration, TokenRequest,
};

use super::state::{ApiError, ServerState};
use crate::json_api::{Body, error_response};

/// Request bodies are a few hundred bytes; anything far larger is not a client of ours.
const MAX_BODY: usize = 16 << 10;
/// Pings keep idle event streams alive through NATs and find dead ones.
const WS_PING: Duration = Duration::from_secs(20);
/// How often silent members are looked for when nobody is due sooner.
const EXPIRY_CHECK: Duration = Duration::from_secs(5);

type AppState = Arc<ServerState>;

pub fn router(state: AppState) -> Router {
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
        .with_state(state)
}

/// Serves until `shutdown` resolves, expiring silent members meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = Arc::new(state);
    let expiry = tokio::spawn(expire_loop(state.clone()));
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    expiry.abort();
    Ok(served?)
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
    Body(request): Body<ChallengeRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(state.challenge(&request.peer)?).into_response())
}

async fn token(
    State(state): State<AppState>,
    Body(request): Body<TokenRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(state.token(&request)?).into_response())
}

async fn create(
    State(state): State<AppState>,
    Caller(peer): Caller,
    Body(request): Body<CreateParty>,
) -> Result<Response, ApiError> {
    let party = state.create(peer, &request)?;
    tracing::info!(party = party.id, %peer, "party created");
    Ok((StatusCode::CREATED, Json(party)).into_response())
}

async fn join(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Caller(peer): Caller,
    Body(request): Body<JoinParty>,
) -> Result<Response, ApiError> {
    let party = state.join(peer, client.ip(), &request)?;
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
    Caller(peer): Caller,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade.on_upgrade(move |socket| push_events(socket, state, peer))
}

/// Forwards the peer's events until either side goes away.
async fn push_events(mut socket: WebSocket, state: AppState, peer: PeerId) {
    let mut events = state.subscribe(peer);
    let mut ping = tokio::time::interval(WS_PING);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let Ok(text) = serde_json::to_string(&event) else { continue };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // Clients only answer pings; anything else is ignored.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
}
