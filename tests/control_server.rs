//! `lanrage control-server` over real HTTP and WebSocket on loopback: authentication by key
//! possession, parties created and joined, pushed events, errors as JSON, rate limiting, and
//! parties that survive a restart. No root needed.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boringtun::x25519::{PublicKey, StaticSecret};
use lanrage_control::auth::{self, Challenge};
use lanrage_control::peer_id::PeerId;
use lanrage_control::server_api::{
    ChallengeResponse, ErrorJson, EventJson, PartyJson, TokenResponse,
};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const EVENT_TIMEOUT: Duration = Duration::from_secs(2);

/// A control server process; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(db: &Path) -> Server {
        Server::start_with(db, &[])
    }

    fn start_with(db: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lanrage"))
            .args(["control-server", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start lanrage control-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("lanrage control-server: listening on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("a socket address"));
                }
            }
        });
        let addr = rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            panic!("control server did not report its address within {START_TIMEOUT:?}")
        });
        Server { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// A player: a WireGuard key and, once authenticated, a token.
struct Player {
    secret: StaticSecret,
    id: PeerId,
    token: String,
}

impl Player {
    fn new(seed: u8) -> Player {
        let secret = StaticSecret::from([seed; 32]);
        let id = PeerId(PublicKey::from(&secret).to_bytes());
        Player {
            secret,
            id,
            token: String::new(),
        }
    }

    fn login(&mut self, server: &Server) {
        let (status, body) = post(server, "/v1/auth/challenge", None, json!({"peer": self.id}));
        assert_eq!(status, 200, "{body}");
        let challenge: ChallengeResponse = serde_json::from_value(body).unwrap();
        let server_key: PeerId = challenge.server_key.parse().unwrap();
        let parsed: Challenge = challenge.challenge.parse().unwrap();
        let proof = auth::prove(&self.secret.to_bytes(), server_key.as_bytes(), &parsed).unwrap();
        let (status, body) = post(
            server,
            "/v1/auth/token",
            None,
            json!({"peer": self.id, "challenge": challenge.challenge, "proof": proof.to_string()}),
        );
        assert_eq!(status, 200, "{body}");
        let token: TokenResponse = serde_json::from_value(body).unwrap();
        self.token = token.token;
    }

    fn post(&self, server: &Server, path: &str, body: Value) -> (u16, Value) {
        post(server, path, Some(&self.token), body)
    }

    fn events(&self, server: &Server) -> Events {
        let mut request = format!("ws://{}/v1/events", server.addr)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        let (socket, _) = tungstenite::connect(request).expect("event stream");
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
        }
        Events(socket)
    }
}

struct Events(WebSocket<MaybeTlsStream<TcpStream>>);

impl Events {
    /// The next event, within EVENT_TIMEOUT.
    fn next(&mut self) -> EventJson {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while Instant::now() < deadline {
            match self.0.read() {
                Ok(Message::Text(text)) => return serde_json::from_str(&text).unwrap(),
                Ok(_) => {}
                Err(e) => panic!("no event within {EVENT_TIMEOUT:?}: {e}"),
            }
        }
        panic!("no event within {EVENT_TIMEOUT:?}");
    }
}

fn post(server: &Server, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = agent().post(server.url(path));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.send_json(body).expect("HTTP request");
    read(&mut response)
}

fn get(server: &Server, path: &str, token: &str) -> (u16, Value) {
    let mut response = agent()
        .get(server.url(path))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .expect("HTTP request");
    read(&mut response)
}

fn read(response: &mut ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, value)
}

/// The error message of a JSON error body.
fn error(body: Value) -> String {
    serde_json::from_value::<ErrorJson>(body).unwrap().error
}

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lanrage-cs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("control.db")
}

#[test]
fn parties_are_created_joined_pushed_and_survive_a_restart() {
    let db = temp_db("party");
    let server = Server::start(&db);
    let (mut alice, mut bob, mut carol) = (Player::new(1), Player::new(2), Player::new(3));
    for p in [&mut alice, &mut bob, &mut carol] {
        p.login(&server);
    }

    let (status, body) = alice.post(
        &server,
        "/v1/parties",
        json!({"name": "LAN night", "member_name": "alice"}),
    );
    assert_eq!(status, 201, "{body}");
    let party: PartyJson = serde_json::from_value(body).unwrap();
    assert_eq!(party.members.len(), 1);
    assert_eq!(party.code.len(), 19, "XXXX-XXXX-XXXX-XXXX: {}", party.code);

    let mut alice_events = alice.events(&server);
    assert!(
        matches!(alice_events.next(), EventJson::Snapshot { party: Some(p) } if p.id == party.id)
    );

    // Codes are forgiving: lower case, no dashes.
    let typed = party.code.replace('-', "").to_lowercase();
    let (status, body) = bob.post(
        &server,
        "/v1/parties/join",
        json!({"code": typed, "member_name": "bob"}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = carol.post(
        &server,
        "/v1/parties/join",
        json!({"code": party.code, "member_name": "carol"}),
    );
    assert_eq!(status, 200, "{body}");
    let joined: PartyJson = serde_json::from_value(body).unwrap();
    let mut ips: Vec<_> = joined.members.iter().map(|m| m.virtual_ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "distinct addresses: {ips:?}");
    assert!(ips.iter().all(|ip| ip.octets()[..2] == [10, 66]), "{ips:?}");

    for name in ["bob", "carol"] {
        match alice_events.next() {
            EventJson::Joined { member } => assert_eq!(member.name, name),
            other => panic!("expected {name} joining, got {other:?}"),
        }
    }

    // Endpoints reach the others.
    let (status, body) = bob.post(
        &server,
        "/v1/heartbeat",
        json!({"endpoints": ["192.0.2.2:51820"], "nat": "full-cone"}),
    );
    assert_eq!(status, 204, "{body}");
    match alice_events.next() {
        EventJson::Updated { member } => {
            assert_eq!(member.endpoints, vec!["192.0.2.2:51820".parse().unwrap()])
        }
        other => panic!("expected bob's endpoints, got {other:?}"),
    }

    // A member who leaves is gone from the others' view within EVENT_TIMEOUT.
    let (status, body) = bob.post(&server, "/v1/parties/leave", json!({}));
    assert_eq!(status, 204, "{body}");
    match alice_events.next() {
        EventJson::Left { peer, reason } => {
            assert_eq!(peer, bob.id);
            assert_eq!(reason, "left");
        }
        other => panic!("expected bob leaving, got {other:?}"),
    }

    // Restart: the party, its members and their addresses come back; tokens stay valid.
    drop(alice_events);
    drop(server);
    let server = Server::start(&db);
    let (status, body) = get(&server, "/v1/party", &alice.token);
    assert_eq!(status, 200, "{body}");
    let after: PartyJson = serde_json::from_value(body).unwrap();
    assert_eq!(after.id, party.id);
    assert_eq!(after.code, party.code);
    let names: Vec<_> = after.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.contains(&"alice") && names.contains(&"carol"),
        "{names:?}"
    );
    let carol_ip = joined
        .members
        .iter()
        .find(|m| m.name == "carol")
        .unwrap()
        .virtual_ip;
    assert!(after.members.iter().any(|m| m.virtual_ip == carol_ip));

    // Bob rejoins after the restart and gets his old address back.
    let bob_ip = joined
        .members
        .iter()
        .find(|m| m.name == "bob")
        .unwrap()
        .virtual_ip;
    let (status, body) = bob.post(
        &server,
        "/v1/parties/join",
        json!({"code": party.code, "member_name": "bob"}),
    );
    assert_eq!(status, 200, "{body}");
    let rejoined: PartyJson = serde_json::from_value(body).unwrap();
    assert!(
        rejoined
            .members
            .iter()
            .any(|m| m.name == "bob" && m.virtual_ip == bob_ip)
    );
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}

#[test]
fn bad_requests_get_json_errors_and_guessing_is_rate_limited() {
    let db = temp_db("errors");
    let server = Server::start(&db);
    let mut mallory = Player::new(9);

    // No token, a forged token.
    let (status, body) = post(
        &server,
        "/v1/parties",
        None,
        json!({"name": "x", "member_name": "m"}),
    );
    assert_eq!(status, 401);
    assert!(error(body).contains("Authorization"));
    let (status, _) = post(
        &server,
        "/v1/parties",
        Some("AAAA"),
        json!({"name": "x", "member_name": "m"}),
    );
    assert!(status == 400 || status == 401, "{status}");

    // A proof made with another key does not buy a token for this one.
    let victim = Player::new(8);
    let (_, body) = post(
        &server,
        "/v1/auth/challenge",
        None,
        json!({"peer": victim.id}),
    );
    let challenge: ChallengeResponse = serde_json::from_value(body).unwrap();
    let (status, body) = post(
        &server,
        "/v1/auth/token",
        None,
        json!({"peer": victim.id, "challenge": challenge.challenge, "proof": "A".repeat(43) + "="}),
    );
    assert_eq!(status, 401, "{body}");

    mallory.login(&server);
    // Malformed JSON, a wrong field type, an oversized body.
    let mut response = agent()
        .post(server.url("/v1/parties"))
        .header("Authorization", format!("Bearer {}", mallory.token))
        .header("Content-Type", "application/json")
        .send("{not json")
        .unwrap();
    let (status, body) = read(&mut response);
    assert_eq!(status, 400);
    assert!(!error(body).is_empty());
    let (status, _) = mallory.post(
        &server,
        "/v1/parties",
        json!({"name": 7, "member_name": "m"}),
    );
    assert_eq!(status, 422);
    let (status, _) = mallory.post(
        &server,
        "/v1/parties",
        json!({"name": "x".repeat(64 << 10), "member_name": "m"}),
    );
    assert_eq!(status, 413);
    let (status, body) = mallory.post(
        &server,
        "/v1/parties",
        json!({"name": "", "member_name": "m"}),
    );
    assert_eq!(status, 400);
    assert!(error(body).contains("party name"));
    let (status, _) = get(&server, "/v1/party", &mallory.token);
    assert_eq!(status, 404);
    let (status, _) = get(&server, "/v1/nothing", &mallory.token);
    assert_eq!(status, 404);

    // Wrong codes are 404s until the limiter steps in with 429 and Retry-After.
    let mut limited = None;
    for i in 0..40 {
        let mut response = agent()
            .post(server.url("/v1/parties/join"))
            .header("Authorization", format!("Bearer {}", mallory.token))
            .send_json(json!({"code": format!("{:016}", i), "member_name": "m"}))
            .unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (status, body) = read(&mut response);
        match status {
            404 => assert!(error(body).contains("no party has this code")),
            429 => {
                limited = Some((i, retry_after));
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let (attempt, retry_after) = limited.expect("join attempts were never rate limited");
    assert!(attempt >= 5, "limited after only {attempt} attempts");
    let secs: u64 = retry_after.expect("a Retry-After header").parse().unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}

#[test]
fn silent_members_are_removed_and_the_others_told() {
    let db = temp_db("expiry");
    let server = Server::start_with(&db, &["--stale-after", "3"]);
    let (mut alice, mut bob) = (Player::new(21), Player::new(22));
    alice.login(&server);
    bob.login(&server);
    let (_, body) = alice.post(
        &server,
        "/v1/parties",
        json!({"name": "p", "member_name": "alice"}),
    );
    let party: PartyJson = serde_json::from_value(body).unwrap();
    let (status, _) = bob.post(
        &server,
        "/v1/parties/join",
        json!({"code": party.code, "member_name": "bob"}),
    );
    assert_eq!(status, 200);
    let mut events = alice.events(&server);
    events.next(); // the snapshot
    // Alice beats every 300 ms (the read timeout), well inside the 3 s; Bob falls silent.
    if let MaybeTlsStream::Plain(stream) = events.0.get_ref() {
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (status, _) = alice.post(&server, "/v1/heartbeat", json!({}));
        assert_eq!(status, 204);
        if let Ok(Message::Text(text)) = events.0.read() {
            match serde_json::from_str::<EventJson>(&text).unwrap() {
                EventJson::Left { peer, reason } => {
                    assert_eq!(peer, bob.id);
                    assert_eq!(reason, "expired");
                    break;
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert!(Instant::now() < deadline, "bob was never expired");
    }
    let (_, body) = get(&server, "/v1/party", &alice.token);
    let after: PartyJson = serde_json::from_value(body).unwrap();
    assert_eq!(after.members.len(), 1);
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}

/// POST as if through a proxy that says the client is `forwarded_for`.
fn post_via(
    server: &Server,
    path: &str,
    token: &str,
    forwarded_for: &str,
    body: Value,
) -> (u16, Option<String>, Value) {
    let mut response = agent()
        .post(server.url(path))
        .header("Authorization", format!("Bearer {token}"))
        .header("X-Forwarded-For", forwarded_for)
        .send_json(body)
        .expect("HTTP request");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, body) = read(&mut response);
    (status, retry_after, body)
}

/// Wrong-code joins from `client` (through the proxy) until one is refused; how many got in.
fn guesses_until_limited(server: &Server, player: &Player, client: &str) -> usize {
    for i in 0..40 {
        let (status, retry_after, body) = post_via(
            server,
            "/v1/parties/join",
            &player.token,
            client,
            json!({"code": format!("{:016}", i), "member_name": "m"}),
        );
        match status {
            404 => {}
            429 => {
                assert!(retry_after.is_some(), "429 without Retry-After");
                return i;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    panic!("join attempts from {client} were never limited");
}

/// A TCP connection to `server` from `local` (any 127/8 address is loopback on Linux).
fn connect_from(server: &Server, local: [u8; 4]) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from((local, 0)).into())
        .expect("bind a loopback address");
    socket.connect(&server.addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    stream
}

/// What the server sends on `stream` unprompted within its read timeout: `None` if nothing.
fn unprompted(stream: &mut TcpStream) -> Option<String> {
    use std::io::Read;
    let mut buf = vec![0u8; 4096];
    match stream.read(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(_) => Some(String::new()),
    }
}

#[test]
fn half_open_connections_time_out_and_the_caps_refuse_with_429_and_503() {
    // Before: ~1,000 half-open requests used up a 1,024-descriptor limit and every member's
    // heartbeat failed, for as long as the attacker kept them open.
    use std::io::Write;
    let db = temp_db("conns");
    let server = Server::start_with(
        &db,
        &[
            "--max-connections",
            "6",
            "--max-connections-per-source",
            "4",
            "--header-timeout",
            "3",
            "--idle-timeout",
            "4",
            "--request-timeout",
            "2",
        ],
    );
    // One address opens requests and never finishes them (or never starts one).
    let mut held = Vec::new();
    for i in 0..4 {
        let mut stream = connect_from(&server, [127, 0, 0, 9]);
        if i % 2 == 0 {
            stream
                .write_all(b"POST /v1/heartbeat HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
        }
        held.push(stream);
    }
    for stream in &mut held {
        assert_eq!(
            unprompted(stream),
            None,
            "a held connection was answered early"
        );
    }
    // Its next connection is refused at once, with a reason and when to come back.
    let mut refused = connect_from(&server, [127, 0, 0, 9]);
    let answer = unprompted(&mut refused).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("Retry-After: "), "{answer}");
    // Others still get in until the server as a whole is full; then everyone gets 503.
    let mut others = vec![
        connect_from(&server, [127, 0, 0, 10]),
        connect_from(&server, [127, 0, 0, 11]),
    ];
    for stream in &mut others {
        assert_eq!(unprompted(stream), None);
    }
    let mut full = connect_from(&server, [127, 0, 0, 12]);
    let answer = unprompted(&mut full).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // The server closes what stays silent: half-sent heads after the header timeout, idle
    // connections after the idle timeout.
    let deadline = Instant::now() + Duration::from_secs(8);
    for stream in held.iter_mut().chain(others.iter_mut()) {
        loop {
            match unprompted(stream) {
                // A 408 for the half-sent head, or simply the end of the stream.
                Some(text) if text.is_empty() => break,
                Some(_) => continue,
                None => assert!(Instant::now() < deadline, "a silent connection stayed open"),
            }
        }
    }
    // A body that never comes: 408 once the request time is up.
    let mut slow = connect_from(&server, [127, 0, 0, 13]);
    slow.write_all(
        b"POST /v1/auth/challenge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        if let Some(text) = unprompted(&mut slow) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "a trickled body held its connection"
        );
    };
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // And everyone is served again.
    let mut alice = Player::new(31);
    alice.login(&server);
    let (status, body) = alice.post(
        &server,
        "/v1/parties",
        json!({"name": "p", "member_name": "alice"}),
    );
    assert_eq!(status, 201, "{body}");
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}

#[test]
fn behind_a_trusted_proxy_each_client_has_its_own_limits() {
    // Before: the join limiter was keyed by the TCP peer, so behind a TLS proxy one guesser
    // locked out every real user.
    let db = temp_db("proxy");
    let server = Server::start_with(
        &db,
        &[
            "--trusted-proxy",
            "127.0.0.0/8",
            "--max-parties-per-source",
            "2",
        ],
    );
    let mut mallory = Player::new(41);
    mallory.login(&server);
    let allowed = guesses_until_limited(&server, &mallory, "198.51.100.66");
    assert!(allowed >= 5, "limited after {allowed}");
    // A client forging the header is ignored: the proxy's own entry (right-most) counts.
    let (status, _, _) = post_via(
        &server,
        "/v1/parties/join",
        &mallory.token,
        "203.0.113.1, 198.51.100.66",
        json!({"code": "0000000000000000", "member_name": "m"}),
    );
    assert_eq!(status, 429);
    // Another user behind the same proxy is not locked out.
    let (status, _, body) = post_via(
        &server,
        "/v1/parties/join",
        &mallory.token,
        "198.51.100.7",
        json!({"code": "0000000000000000", "member_name": "m"}),
    );
    assert_eq!(status, 404, "{body}");
    // Party creates are counted per client too.
    let mut created = 0;
    let mut refused = None;
    for seed in 50..54 {
        let mut p = Player::new(seed);
        p.login(&server);
        let (status, retry_after, body) = post_via(
            &server,
            "/v1/parties",
            &p.token,
            "198.51.100.66",
            json!({"name": "flood", "member_name": "m"}),
        );
        match status {
            201 => created += 1,
            429 => {
                refused = Some(retry_after);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created, 2);
    assert!(refused.expect("a third party from one client").is_some());
    let mut alice = Player::new(60);
    alice.login(&server);
    let (status, _, body) = post_via(
        &server,
        "/v1/parties",
        &alice.token,
        "198.51.100.7",
        json!({"name": "mine", "member_name": "alice"}),
    );
    assert_eq!(status, 201, "{body}");
    drop(server);

    // Without --trusted-proxy, nobody's forwarding headers are believed.
    let server = Server::start(&db);
    mallory.login(&server);
    let mut limited = false;
    for i in 0..40 {
        let (status, _, _) = post_via(
            &server,
            "/v1/parties/join",
            &mallory.token,
            &format!("198.51.100.{i}"),
            json!({"code": format!("{:016}", i), "member_name": "m"}),
        );
        if status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "a forged X-Forwarded-For escaped the limit");
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}

#[test]
fn event_streams_are_capped_and_heartbeat_floods_refused() {
    let db = temp_db("streams");
    let server = Server::start_with(&db, &["--max-websockets-per-source", "2"]);
    let (mut alice, mut bob, mut carol) = (Player::new(71), Player::new(72), Player::new(73));
    for p in [&mut alice, &mut bob, &mut carol] {
        p.login(&server);
    }
    let (_, body) = alice.post(
        &server,
        "/v1/parties",
        json!({"name": "p", "member_name": "alice"}),
    );
    let party: PartyJson = serde_json::from_value(body).unwrap();
    for p in [&bob, &carol] {
        let (status, _) = p.post(
            &server,
            "/v1/parties/join",
            json!({"code": party.code, "member_name": "m"}),
        );
        assert_eq!(status, 200);
    }
    let mut old = alice.events(&server);
    assert!(matches!(old.next(), EventJson::Snapshot { .. }));
    let mut bobs = bob.events(&server);
    assert!(matches!(bobs.next(), EventJson::Snapshot { .. }));
    // A third stream from one address is refused with 429.
    let mut request = format!("ws://{}/v1/events", server.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", carol.token).parse().unwrap(),
    );
    match tungstenite::connect(request) {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        Err(e) => panic!("expected 429, got {e}"),
        Ok(_) => panic!("a third event stream from one address was accepted"),
    }
    // A member's new stream replaces its old one (which ends) within the cap.
    let mut new = alice.events(&server);
    assert!(matches!(new.next(), EventJson::Snapshot { .. }));
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match old.0.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => assert!(Instant::now() < deadline, "the old stream stayed open"),
        }
    }

    // Heartbeats in a loop: a burst gets through (each change pushed once), then 429.
    let mut refused = None;
    for port in 0..200u16 {
        let mut response = agent()
            .post(server.url("/v1/heartbeat"))
            .header("Authorization", format!("Bearer {}", bob.token))
            .send_json(json!({"endpoints": [format!("192.0.2.2:{}", 1000 + port)]}))
            .unwrap();
        match response.status().as_u16() {
            204 => {}
            429 => {
                refused = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                break;
            }
            other => panic!("unexpected {other}: {:?}", read(&mut response)),
        }
    }
    let secs: u64 = refused
        .expect("heartbeats were never limited")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    // Alice's stream still works and saw bob's changes.
    assert!(matches!(new.next(), EventJson::Updated { .. }));
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn an_event_stream_costs_the_server_little_memory() {
    // Before: ~134 KB per WebSocket (tungstenite's 128 KiB buffers).
    const STREAMS: u64 = 150;
    let db = temp_db("wsmem");
    let server = Server::start(&db);
    let mut players: Vec<Player> = (0..STREAMS as u8).map(|i| Player::new(100 + i)).collect();
    for p in &mut players {
        p.login(&server);
    }
    // One stream first, so that what every stream shares is already there.
    let mut streams = vec![players[0].events(&server)];
    streams[0].next();
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(server.child.id());
    for p in &players[1..] {
        let mut events = p.events(&server);
        assert!(matches!(events.next(), EventJson::Snapshot { party: None }));
        streams.push(events);
    }
    std::thread::sleep(Duration::from_millis(200));
    let per_stream = rss_kib(server.child.id()).saturating_sub(before) / (STREAMS - 1);
    eprintln!("server memory per event stream: {per_stream} KiB");
    assert!(per_stream < 48, "{per_stream} KiB per event stream");
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}
