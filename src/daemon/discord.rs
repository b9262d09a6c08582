//! Discord, the I/O side (`lanrage_control::discord` decides what to say): a thread that posts
//! the party's events to a webhook or a bot's channel, and keeps the player's Rich Presence
//! in the local Discord client up to date. Nothing here may hold up the control thread, so it
//! only ever sends to this thread's channel.
//!
//! Webhook URLs and bot tokens are secrets: never logged, never in errors.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use lanrage_control::discord::PartyEvent;
use lanrage_control::discord::ipc::{self, Activity, Opcode};
use lanrage_control::discord::notify::{self, Notifier, Outcome};
use serde::{Deserialize, Serialize};

/// How long one post to Discord may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the Discord client's answer on its socket.
const IPC_TIMEOUT: Duration = Duration::from_secs(2);
/// How often to look for a Discord client again when none answered.
const IPC_RETRY: Duration = Duration::from_secs(15);

/// Where to say what, from the settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscordConfig {
    /// A webhook URL; empty: none.
    pub webhook: String,
    /// A bot's token and the channel it posts to; both needed.
    pub bot_token: String,
    pub channel: String,
    /// Discord's REST API, for the bot.
    pub api: String,
    /// Rich Presence, with this application id; empty: off.
    pub presence_client_id: String,
    /// Where to look for the client's socket (see `ipc::socket_candidates`).
    pub ipc_dirs: Vec<PathBuf>,
}

impl DiscordConfig {
    pub fn from_settings(settings: &lanrage_control::settings::Settings) -> DiscordConfig {
        DiscordConfig {
            webhook: settings.discord_webhook.clone(),
            bot_token: settings.discord_bot_token.clone(),
            channel: settings.discord_channel.clone(),
            api: settings.discord_api.clone(),
            presence_client_id: settings.discord_app_id.clone(),
            ipc_dirs: default_ipc_dirs(),
        }
    }
}

/// What the local API shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiscordStatus {
    pub webhook: bool,
    pub bot: bool,
    /// `off`, `connected`, or why not.
    pub presence: String,
    /// Messages posted, and lines given up on.
    pub sent: u64,
    pub dropped: u64,
}

enum Input {
    Config(DiscordConfig),
    Event(PartyEvent),
    Activity(Option<Activity>),
}

pub struct Discord {
    tx: Option<Sender<Input>>,
    status: Arc<Mutex<DiscordStatus>>,
    thread: Option<JoinHandle<()>>,
}

impl Discord {
    pub fn start(config: DiscordConfig) -> std::io::Result<Discord> {
        let (tx, rx) = unbounded();
        let status = Arc::new(Mutex::new(DiscordStatus::default()));
        let shared = status.clone();
        let thread = std::thread::Builder::new()
            .name("lanrage-discord".into())
            .spawn(move || Worker::new(config, shared).run(rx))?;
        Ok(Discord {
            tx: Some(tx),
            status,
            thread: Some(thread),
        })
    }

    pub fn configure(&self, config: DiscordConfig) {
        self.send(Input::Config(config));
    }

    pub fn event(&self, event: PartyEvent) {
        self.send(Input::Event(event));
    }

    pub fn activity(&self, activity: Option<Activity>) {
        self.send(Input::Activity(activity));
    }

    pub fn status(&self) -> DiscordStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn send(&self, input: Input) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(input);
        }
    }
}

impl Drop for Discord {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The directories a Discord client's socket may be in, for a daemon that runs as root: the
/// runtime directory if set, every user's runtime directory, and the temporary ones.
pub fn default_ipc_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["XDG_RUNTIME_DIR", "TMPDIR", "TMP", "TEMP"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .collect();
    if let Ok(users) = std::fs::read_dir("/run/user") {
        dirs.extend(users.filter_map(Result::ok).map(|e| e.path()));
    }
    dirs.push(PathBuf::from("/tmp"));
    dirs.dedup();
    dirs
}

struct Worker {
    config: DiscordConfig,
    status: Arc<Mutex<DiscordStatus>>,
    notifier: Notifier,
    agent: ureq::Agent,
    sent: u64,
    /// What the profile should show, and what the client was last told.
    activity: Option<Activity>,
    shown: Option<Option<Activity>>,
    ipc: Option<UnixStream>,
    ipc_state: String,
    next_ipc_try: Instant,
    nonce: u64,
}

impl Worker {
    fn new(config: DiscordConfig, status: Arc<Mutex<DiscordStatus>>) -> Worker {
        Worker {
            config,
            status,
            notifier: Notifier::default(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(POST_TIMEOUT))
                .build()
                .into(),
            sent: 0,
            activity: None,
            shown: None,
            ipc: None,
            ipc_state: "off".into(),
            next_ipc_try: Instant::now(),
            nonce: 0,
        }
    }

    fn posts(&self) -> bool {
        !self.config.webhook.is_empty()
            || (!self.config.bot_token.is_empty() && !self.config.channel.is_empty())
    }

    fn run(mut self, rx: Receiver<Input>) {
        loop {
            let now = Instant::now();
            let mut next = self.notifier.next_timeout();
            if !self.config.presence_client_id.is_empty() && self.ipc.is_none() {
                next = Some(next.map_or(self.next_ipc_try, |n| n.min(self.next_ipc_try)));
            }
            let wait = next.map_or(IPC_RETRY, |at| at.saturating_duration_since(now));
            match rx.recv_timeout(wait) {
                Ok(Input::Config(config)) => {
                    if config.presence_client_id != self.config.presence_client_id {
                        self.ipc = None;
                        self.shown = None;
                        self.next_ipc_try = Instant::now();
                    }
                    self.config = config;
                }
                Ok(Input::Event(event)) => {
                    if self.posts() {
                        self.notifier.push(Instant::now(), &event);
                    }
                }
                Ok(Input::Activity(activity)) => self.activity = activity,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Leaving Discord as we found it.
                    self.activity = None;
                    self.present();
                    return;
                }
            }
            self.post_due();
            self.present();
            self.publish();
        }
    }

    fn post_due(&mut self) {
        while let Some(body) = self.notifier.poll(Instant::now()) {
            let outcome = self.post(&body);
            if outcome == Outcome::Delivered {
                self.sent += 1;
            }
            self.notifier.on_response(Instant::now(), outcome);
        }
    }

    /// One post to the webhook, or else the bot's channel.
    fn post(&self, body: &str) -> Outcome {
        let request = if !self.config.webhook.is_empty() {
            self.agent.post(&self.config.webhook)
        } else {
            let url = format!(
                "{}/channels/{}/messages",
                self.config.api.trim_end_matches('/'),
                self.config.channel
            );
            self.agent
                .post(url)
                .header("Authorization", format!("Bot {}", self.config.bot_token))
        };
        let response = request
            .header("Content-Type", "application/json")
            .send(body.as_bytes());
        let mut response = match response {
            Ok(response) => response,
            Err(e) => {
                // Said in our words: some errors quote the URL, which holds the webhook's
                // secret.
                let why = match &e {
                    ureq::Error::Io(io) => io.kind().to_string(),
                    ureq::Error::Timeout(_) => "timed out".into(),
                    ureq::Error::HostNotFound => "host not found".into(),
                    ureq::Error::ConnectionFailed => "connection failed".into(),
                    _ => "the request failed".into(),
                };
                tracing::warn!(%why, "Discord could not be reached; trying again");
                return Outcome::Failed;
            }
        };
        let status = response.status().as_u16();
        match status {
            200..=299 => Outcome::Delivered,
            429 => {
                let header = response
                    .headers()
                    .get("retry-after")
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned);
                let text = response.body_mut().read_to_string().unwrap_or_default();
                let wait = notify::retry_after(&text, header.as_deref());
                tracing::info!(
                    wait_ms = wait.as_millis() as u64,
                    "Discord rate limit; waiting"
                );
                Outcome::RateLimited(wait)
            }
            400..=499 => {
                tracing::warn!(
                    status,
                    "Discord refused the message (check the webhook or the bot's token and channel)"
                );
                Outcome::Refused
            }
            _ => {
                tracing::warn!(status, "Discord failed; trying again");
                Outcome::Failed
            }
        }
    }

    /// Brings the client's idea of our activity up to date, connecting first if need be.
    fn present(&mut self) {
        if self.config.presence_client_id.is_empty() {
            self.ipc = None;
            self.ipc_state = "off".into();
            return;
        }
        if self.ipc.is_none() {
            if Instant::now() < self.next_ipc_try {
                return;
            }
            self.next_ipc_try = Instant::now() + IPC_RETRY;
            match self.connect() {
                Ok(stream) => {
                    self.ipc = Some(stream);
                    self.shown = None;
                    self.ipc_state = "connected".into();
                    tracing::info!("Discord Rich Presence connected");
                }
                Err(why) => {
                    self.ipc_state = why;
                    return;
                }
            }
        }
        if self.shown.as_ref() == Some(&self.activity) {
            return;
        }
        self.nonce += 1;
        let frame = ipc::set_activity(
            std::process::id(),
            self.activity.as_ref(),
            &self.nonce.to_string(),
        );
        match self.command(&frame) {
            Ok(()) => self.shown = Some(self.activity.clone()),
            Err(why) => {
                tracing::warn!(%why, "Discord Rich Presence lost; looking for the client again");
                self.ipc = None;
                self.ipc_state = why;
            }
        }
    }

    /// The first Discord client socket that takes our handshake.
    fn connect(&self) -> Result<UnixStream, String> {
        let candidates = ipc::socket_candidates(&self.config.ipc_dirs);
        let mut last = "no Discord client found".to_owned();
        for path in candidates.iter().filter(|p| p.exists()) {
            let attempt = UnixStream::connect(path)
                .map_err(|e| e.to_string())
                .and_then(|mut stream| {
                    stream
                        .set_read_timeout(Some(IPC_TIMEOUT))
                        .map_err(|e| e.to_string())?;
                    stream
                        .write_all(&ipc::handshake(&self.config.presence_client_id))
                        .map_err(|e| e.to_string())?;
                    let (op, answer) = read_frame(&mut stream)?;
                    if op == Opcode::Close {
                        return Err(format!("the Discord client refused us: {answer}"));
                    }
                    Ok(stream)
                });
            match attempt {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn command(&mut self, frame: &[u8]) -> Result<(), String> {
        let stream = self.ipc.as_mut().ok_or("not connected")?;
        stream.write_all(frame).map_err(|e| e.to_string())?;
        loop {
            let (op, answer) = read_frame(stream)?;
            match op {
                Opcode::Frame => {
                    return match ipc::error_message(&answer) {
                        Some(message) => Err(format!("Discord refused the activity: {message}")),
                        None => Ok(()),
                    };
                }
                Opcode::Ping => {
                    stream
                        .write_all(&ipc::encode(Opcode::Pong, &answer))
                        .map_err(|e| e.to_string())?;
                }
                Opcode::Close => return Err("the Discord client closed the connection".into()),
                Opcode::Handshake | Opcode::Pong => {}
            }
        }
    }

    fn publish(&self) {
        if let Ok(mut status) = self.status.lock() {
            *status = DiscordStatus {
                webhook: !self.config.webhook.is_empty(),
                bot: !self.config.bot_token.is_empty() && !self.config.channel.is_empty(),
                presence: self.ipc_state.clone(),
                sent: self.sent,
                dropped: self.notifier.dropped,
            };
        }
    }
}

/// Reads one whole frame (bounded by `ipc::MAX_FRAME`).
fn read_frame(stream: &mut UnixStream) -> Result<(Opcode, serde_json::Value), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match ipc::decode(&buf) {
            Ok(Some((op, value, _))) => return Ok((op, value)),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the Discord client closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;

    /// A stand-in for Discord's HTTP API: answers the first post with 429 and `retry_after`
    /// 0.3 s, the rest with 204, and reports each request (when, path, auth, body).
    fn fake_discord() -> (String, mpsc::Receiver<(Instant, String, String, String)>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                use axum::http::{HeaderMap, StatusCode, Uri};
                let seen = Arc::new(Mutex::new(0u32));
                let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
                    let tx = tx.clone();
                    let seen = seen.clone();
                    async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let _ = tx.send((Instant::now(), uri.path().to_owned(), auth, body));
                        let mut n = seen.lock().unwrap();
                        *n += 1;
                        if *n == 1 {
                            (
                                StatusCode::TOO_MANY_REQUESTS,
                                r#"{"message":"You are being rate limited.","retry_after":0.3,"global":false}"#,
                            )
                        } else {
                            (StatusCode::NO_CONTENT, "")
                        }
                    }
                });
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        (format!("http://{addr}"), rx)
    }

    #[test]
    fn webhook_posts_are_batched_and_wait_out_a_rate_limit() {
        let (base, requests) = fake_discord();
        let discord = Discord::start(DiscordConfig {
            webhook: format!("{base}/api/webhooks/1/secret"),
            ..DiscordConfig::default()
        })
        .unwrap();
        discord.event(PartyEvent::Created {
            party: "LAN night".into(),
        });
        discord.event(PartyEvent::Joined {
            member: "@everyone".into(),
        });
        let wait = Duration::from_secs(10);
        let (first_at, path, _, first) = requests.recv_timeout(wait).expect("a post");
        assert_eq!(path, "/api/webhooks/1/secret");
        let (second_at, _, _, second) = requests.recv_timeout(wait).expect("the retry");
        assert_eq!(first, second, "the same message again after the rate limit");
        assert!(second_at - first_at >= Duration::from_millis(300));
        let body: serde_json::Value = serde_json::from_str(&second).unwrap();
        assert_eq!(
            body["content"],
            "🎮 Party **LAN night** created\n➕ **@\u{200b}everyone** joined"
        );
        assert_eq!(body["allowed_mentions"]["parse"], serde_json::json!([]));
        // The status follows once the answer is in.
        let deadline = Instant::now() + wait;
        while discord.status().sent == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = discord.status();
        assert!(
            status.webhook && status.sent == 1 && status.dropped == 0,
            "{status:?}"
        );
    }

    #[test]
    fn a_bot_posts_to_its_channel_with_its_token() {
        let (base, requests) = fake_discord();
        let discord = Discord::start(DiscordConfig {
            bot_token: "bot-token".into(),
            channel: "1234".into(),
            api: base,
            ..DiscordConfig::default()
        })
        .unwrap();
        discord.event(PartyEvent::GameStarted {
            member: "alice".into(),
            game: "Warcraft III".into(),
        });
        let (_, path, auth, _) = requests.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            (path.as_str(), auth.as_str()),
            ("/channels/1234/messages", "Bot bot-token")
        );
    }

    #[test]
    fn rich_presence_shakes_hands_then_sets_and_clears_the_activity() {
        let dir = std::env::temp_dir().join(format!("lanrage-ipc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = UnixListener::bind(dir.join("discord-ipc-0")).unwrap();
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            for _ in 0..3 {
                let (op, value) = read_frame(&mut stream).unwrap();
                let reply = if op == Opcode::Handshake {
                    serde_json::json!({"cmd": "DISPATCH", "evt": "READY", "data": {"v": 1}})
                } else {
                    serde_json::json!({"cmd": "SET_ACTIVITY", "data": {}, "nonce": value["nonce"]})
                };
                stream
                    .write_all(&ipc::encode(Opcode::Frame, &reply))
                    .unwrap();
                tx.send((op, value)).unwrap();
            }
        });
        let discord = Discord::start(DiscordConfig {
            presence_client_id: "1180000000000000000".into(),
            ipc_dirs: vec![dir.clone()],
            ..DiscordConfig::default()
        })
        .unwrap();
        discord.activity(Some(Activity {
            party: "LAN night".into(),
            party_id: "7".into(),
            members: 3,
            game: None,
            since_unix: 1_700_000_000,
        }));
        let wait = Duration::from_secs(10);
        let (op, hello) = frames.recv_timeout(wait).unwrap();
        assert_eq!(op, Opcode::Handshake);
        assert_eq!(hello["client_id"], "1180000000000000000");
        let (_, set) = frames.recv_timeout(wait).unwrap();
        assert_eq!(set["cmd"], "SET_ACTIVITY");
        assert_eq!(set["args"]["activity"]["party"]["size"][0], 3);
        assert_eq!(set["args"]["pid"], std::process::id());
        discord.activity(None);
        let (_, cleared) = frames.recv_timeout(wait).unwrap();
        assert_eq!(cleared["args"]["activity"], serde_json::Value::Null);
        assert_eq!(discord.status().presence, "connected");
        drop(discord);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
