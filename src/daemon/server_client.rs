//! The daemon's connection to the control server: blocking HTTP calls from the control thread
//! (each bounded by a timeout) and the event stream read on a thread of its own.

use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::Sender;
use lanrage_control::auth::{self, Challenge};
use lanrage_control::peer_id::PeerId;
use lanrage_control::server_api::{
    ChallengeRequest, ChallengeResponse, CreateParty, EventJson, Heartbeat, JoinParty, PartyJson,
    RelaysJson, TokenRequest, TokenResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Bound on every request. The control thread waits for the ones a user asked for (create,
/// join, leave); its periodic ones (heartbeats, relay grants) run on a thread of their own, see
/// [`ServerClient::in_background`], so a server gone silent cannot stall path probing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The server pings every 20 s; silence for this long means the stream is dead.
const STREAM_SILENCE: Duration = Duration::from_secs(45);

/// Clones share the agent's connections and the token.
#[derive(Clone)]
pub struct ServerClient {
    base: String,
    agent: ureq::Agent,
    secret: [u8; 32],
    me: PeerId,
    token: Arc<Mutex<Option<String>>>,
    /// The newest event stream's generation, and its socket once open: a newer stream, or
    /// leaving the party, shuts the older one down, so its reader thread ends at once.
    stream: Arc<Mutex<(u64, Option<TcpStream>)>>,
    /// One long-lived thread for the calls made off the control thread, run in turn (a
    /// thread per call would come and go every 30 s for the daemon's whole life). `None`
    /// ends it.
    background: Sender<Option<Job>>,
    /// That thread and the event streams' readers, waited for by [`ServerClient::shut_down`].
    threads: Arc<Mutex<Threads>>,
}

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Threads {
    background: Option<std::thread::JoinHandle<()>>,
    /// Set as the daemon stops: calls still queued are dropped.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    streams: Vec<std::thread::JoinHandle<()>>,
}

/// A failed call: the server's own message when it sent one.
#[derive(Debug)]
pub struct CallError {
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CallError {}

impl ServerClient {
    pub fn new(base: &str, secret: [u8; 32], me: PeerId) -> std::io::Result<Self> {
        let (background, jobs) = crossbeam_channel::unbounded::<Option<Job>>();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("lanrage-server".into())
            .spawn(move || {
                while let Ok(Some(job)) = jobs.recv() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    job();
                }
            })?;
        Ok(ServerClient {
            base: base.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(REQUEST_TIMEOUT))
                .build()
                .into(),
            secret,
            me,
            token: Arc::default(),
            stream: Arc::default(),
            background,
            threads: Arc::new(Mutex::new(Threads {
                background: Some(thread),
                stopping,
                streams: Vec::new(),
            })),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Runs `call` on a clone of this client on the background thread, and hands its result
    /// to `done` there (which typically sends it to the control thread). Fails only when the
    /// thread is gone.
    pub fn in_background<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut ServerClient) -> T + Send + 'static,
        done: impl FnOnce(T) + Send + 'static,
    ) -> std::io::Result<()> {
        let mut client = self.clone();
        self.background
            .send(Some(Box::new(move || done(call(&mut client)))))
            .map_err(|_| std::io::Error::other("the server calls' thread has stopped"))
    }

    pub fn create(&mut self, name: &str, member_name: &str) -> Result<PartyJson, CallError> {
        let body = CreateParty {
            name: name.to_owned(),
            member_name: member_name.to_owned(),
        };
        self.call("POST", "/v1/parties", Some(&body))
    }

    pub fn join(&mut self, code: &str, member_name: &str) -> Result<PartyJson, CallError> {
        let body = JoinParty {
            code: code.to_owned(),
            member_name: member_name.to_owned(),
        };
        self.call("POST", "/v1/parties/join", Some(&body))
    }

    pub fn leave(&mut self) -> Result<(), CallError> {
        self.call::<(), serde_json::Value>("POST", "/v1/parties/leave", None)
            .map(drop)
    }

    /// Our party, or `None` when the server says we are in none.
    pub fn party(&mut self) -> Result<Option<PartyJson>, CallError> {
        match self.call::<(), PartyJson>("GET", "/v1/party", None) {
            Ok(party) => Ok(Some(party)),
            Err(CallError {
                status: Some(404), ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn heartbeat(&mut self, beat: &Heartbeat) -> Result<(), CallError> {
        match self.call::<_, serde_json::Value>("POST", "/v1/heartbeat", Some(beat)) {
            // No answer at all: the pooled connection may have died with our old address (a
            // NAT that rebound us resets it). A heartbeat may safely go twice: once more, on a
            // fresh connection.
            Err(CallError { status: None, .. }) => self
                .call::<_, serde_json::Value>("POST", "/v1/heartbeat", Some(beat))
                .map(drop),
            other => other.map(drop),
        }
    }

    /// The relays that are up, with our grants for the other members of our party.
    pub fn relays(&mut self) -> Result<RelaysJson, CallError> {
        self.call::<(), RelaysJson>("GET", "/v1/relays", None)
    }

    /// Opens the event stream and reads it on a new thread, forwarding each event to `events`
    /// tagged with `generation`; `None` follows when the stream ends.
    pub fn spawn_event_stream(
        &mut self,
        generation: u64,
        events: Sender<(u64, Option<EventJson>)>,
    ) -> Result<(), CallError> {
        self.close_event_stream(generation);
        let token = self.token()?;
        let url = format!("{}/v1/events", self.base.replacen("http", "ws", 1));
        let slot = self.stream.clone();
        let thread = std::thread::Builder::new()
            .name("lanrage-events".into())
            .spawn(move || {
                if let Err(e) = read_events(&url, &token, generation, &events, &slot) {
                    tracing::debug!(error = %e, "event stream ended");
                }
                let _ = events.send((generation, None));
            })
            .map_err(|e| CallError {
                status: None,
                message: format!("cannot start the event reader: {e}"),
            })?;
        if let Ok(mut threads) = self.threads.lock() {
            threads.streams.retain(|t| !t.is_finished());
            threads.streams.push(thread);
        }
        Ok(())
    }

    /// Ends the client's threads as the daemon stops: the event stream is closed, calls not
    /// yet begun are dropped, and a call under way is waited for (its timeout bounds it). A
    /// stream reader still connecting to a server that does not answer is given a second,
    /// then left to end on its own.
    pub fn shut_down(&self) {
        self.close_event_stream(u64::MAX);
        let (background, streams) = match self.threads.lock() {
            Ok(mut threads) => {
                threads
                    .stopping
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                (
                    threads.background.take(),
                    std::mem::take(&mut threads.streams),
                )
            }
            Err(_) => return,
        };
        let _ = self.background.send(None);
        if let Some(thread) = background {
            let _ = thread.join();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        for thread in streams {
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }

    /// Closes the event stream open now, if any; streams older than `generation` that are
    /// still connecting close as soon as they connect.
    pub fn close_event_stream(&self, generation: u64) {
        if let Ok(mut slot) = self.stream.lock() {
            slot.0 = slot.0.max(generation);
            if let Some(stream) = slot.1.take() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// A token, logging in first when there is none.
    fn token(&mut self) -> Result<String, CallError> {
        if let Some(token) = self.held_token() {
            return Ok(token);
        }
        let challenge: ChallengeResponse = self.send(
            "POST",
            "/v1/auth/challenge",
            Some(&ChallengeRequest { peer: self.me }),
            None,
        )?;
        let proof = (|| -> Result<String> {
            let server_key: PeerId = challenge.server_key.parse()?;
            let parsed: Challenge = challenge.challenge.parse()?;
            Ok(auth::prove(&self.secret, server_key.as_bytes(), &parsed)?.to_string())
        })()
        .map_err(|e| CallError {
            status: None,
            message: format!("the server's challenge is unusable: {e}"),
        })?;
        let token: TokenResponse = self.send(
            "POST",
            "/v1/auth/token",
            Some(&TokenRequest {
                peer: self.me,
                challenge: challenge.challenge,
                proof,
            }),
            None,
        )?;
        self.set_token(Some(token.token.clone()));
        Ok(token.token)
    }

    fn held_token(&self) -> Option<String> {
        self.token.lock().map_or(None, |t| t.clone())
    }

    fn set_token(&self, token: Option<String>) {
        if let Ok(mut held) = self.token.lock() {
            *held = token;
        }
    }

    /// An authenticated call; a refused token (expired, server keys rotated) is renewed once.
    fn call<B: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, CallError> {
        let token = self.token()?;
        match self.send(method, path, body, Some(&token)) {
            Err(CallError {
                status: Some(401), ..
            }) => {
                self.set_token(None);
                let token = self.token()?;
                self.send(method, path, body, Some(&token))
            }
            other => other,
        }
    }

    fn send<B: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        token: Option<&str>,
    ) -> Result<R, CallError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| CallError {
            status: None,
            message: format!("control server {} unreachable: {e}", self.base),
        };
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut response = match method {
            "GET" => {
                let mut request = self.agent.get(&url);
                if let Some(bearer) = &bearer {
                    request = request.header("Authorization", bearer);
                }
                request.call().map_err(unreachable)?
            }
            _ => {
                let mut request = self.agent.post(&url);
                if let Some(bearer) = &bearer {
                    request = request.header("Authorization", bearer);
                }
                match body {
                    Some(body) => request.send_json(body),
                    None => request.send_empty(),
                }
                .map_err(unreachable)?
            }
        };
        crate::json_api::read(&mut response).map_err(|r| CallError {
            status: Some(r.status),
            message: r.message,
        })
    }
}

fn read_events(
    url: &str,
    token: &str,
    generation: u64,
    events: &Sender<(u64, Option<EventJson>)>,
    slot: &Mutex<(u64, Option<TcpStream>)>,
) -> Result<()> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = connect(request)?;
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        let mut slot = slot
            .lock()
            .map_err(|_| anyhow!("event stream slot poisoned"))?;
        if slot.0 != generation {
            // Superseded while connecting.
            return Ok(());
        }
        slot.1 = Some(stream.try_clone()?);
    }
    loop {
        match socket.read().context("event stream")? {
            Message::Text(text) => {
                let event: EventJson = serde_json::from_str(&text)
                    .map_err(|e| anyhow!("garbled event from the server: {e}"))?;
                if events.send((generation, Some(event))).is_err() {
                    return Ok(());
                }
            }
            Message::Close(_) => bail!("closed by the server"),
            // Pings are answered by tungstenite on the next read or write.
            _ => {}
        }
    }
}

fn connect(
    request: tungstenite::handshake::client::Request,
) -> Result<(WebSocket<MaybeTlsStream<TcpStream>>, ())> {
    let (socket, _) = tungstenite::connect(request).context("cannot open the event stream")?;
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_read_timeout(Some(STREAM_SILENCE))?;
    }
    Ok((socket, ()))
}
