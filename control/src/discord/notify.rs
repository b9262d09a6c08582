//! Messages to a Discord channel (a webhook, or a bot's channel): party events gathered for
//! [`BATCH_WINDOW`] into one message, sent one at a time, and Discord's rate limits obeyed
//! (HTTP 429 says how long to wait in `retry_after`). Sans-IO: the owner posts what
//! [`Notifier::poll`] gives and reports how it went with [`Notifier::on_response`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::json;

use super::PartyEvent;

/// Events this close together become one message: a party forming is one notification, not
/// five.
pub const BATCH_WINDOW: Duration = Duration::from_secs(2);
/// Discord's longest message.
pub const MAX_CONTENT: usize = 2000;
/// Lines kept while Discord cannot be reached; the oldest go first (and are counted).
pub const MAX_PENDING: usize = 100;
/// Tries of one message that failed for reasons other than a rate limit.
pub const MAX_ATTEMPTS: u32 = 5;
/// The first retry's delay after a failure; each next one doubles it.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// A rate limit longer than this is not believed (a broken or hostile server).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How a post went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// HTTP 429: try the same message again after this.
    RateLimited(Duration),
    /// A refusal that will not change (a deleted webhook, a bad token): the message is dropped.
    Refused,
    /// Network trouble or a server error: tried again later, up to [`MAX_ATTEMPTS`].
    Failed,
}

#[derive(Debug, Clone)]
struct Message {
    lines: Vec<String>,
    failures: u32,
}

#[derive(Debug, Default)]
pub struct Notifier {
    pending: VecDeque<String>,
    first_pending: Option<Instant>,
    /// Posted, its outcome not yet reported.
    in_flight: Option<Message>,
    /// To post again at the instant given.
    retry: Option<(Instant, Message)>,
    /// Lines given up on (dropped for room, refused, or failed too often).
    pub dropped: u64,
}

impl Notifier {
    pub fn push(&mut self, now: Instant, event: &PartyEvent) {
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(event.line());
        self.first_pending.get_or_insert(now);
    }

    /// The JSON body to post now, if any. One post at a time: nothing more until
    /// [`Notifier::on_response`].
    pub fn poll(&mut self, now: Instant) -> Option<String> {
        if self.in_flight.is_some() {
            return None;
        }
        if let Some((at, _)) = &self.retry {
            if now < *at {
                return None;
            }
            let (_, message) = self.retry.take()?;
            let body = body(&message.lines);
            self.in_flight = Some(message);
            return Some(body);
        }
        let due = self.first_pending? + BATCH_WINDOW;
        if now < due {
            return None;
        }
        let mut lines = Vec::new();
        let mut len = 0;
        while let Some(line) = self.pending.front() {
            let more = line.len() + usize::from(!lines.is_empty());
            if !lines.is_empty() && len + more > MAX_CONTENT {
                break;
            }
            len += more;
            lines.extend(self.pending.pop_front());
        }
        self.first_pending = (!self.pending.is_empty()).then_some(now);
        let body = body(&lines);
        self.in_flight = Some(Message { lines, failures: 0 });
        Some(body)
    }

    pub fn on_response(&mut self, now: Instant, outcome: Outcome) {
        let Some(mut message) = self.in_flight.take() else {
            return;
        };
        match outcome {
            Outcome::Delivered => {}
            Outcome::RateLimited(wait) => {
                self.retry = Some((now + wait.min(MAX_RETRY_AFTER), message));
            }
            Outcome::Refused => self.dropped += message.lines.len() as u64,
            Outcome::Failed => {
                message.failures += 1;
                if message.failures >= MAX_ATTEMPTS {
                    self.dropped += message.lines.len() as u64;
                } else {
                    let wait = RETRY_AFTER_FAILURE * 2u32.pow(message.failures - 1);
                    self.retry = Some((now + wait, message));
                }
            }
        }
    }

    /// When [`Notifier::poll`] may next have something.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        match &self.retry {
            Some((at, _)) => Some(*at),
            None => self.first_pending.map(|t| t + BATCH_WINDOW),
        }
    }
}

/// A message's body: its lines, and no mentions whatever they say.
fn body(lines: &[String]) -> String {
    let mut content = lines.join("\n");
    if content.len() > MAX_CONTENT {
        let mut end = MAX_CONTENT;
        while !content.is_char_boundary(end) {
            end -= 1;
        }
        content.truncate(end);
    }
    json!({ "content": content, "allowed_mentions": { "parse": [] } }).to_string()
}

/// How long a 429 asks to wait: the body's `retry_after` (seconds, fractional), else the
/// `Retry-After` header, else a second.
pub fn retry_after(body: &str, header: Option<&str>) -> Duration {
    let from_body = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("retry_after")?.as_f64());
    let from_header = header.and_then(|h| h.trim().parse::<f64>().ok());
    from_body
        .or(from_header)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::from_secs(1), |s| {
            Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(name: &str) -> PartyEvent {
        PartyEvent::Joined {
            member: name.into(),
        }
    }

    fn content(body: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["allowed_mentions"]["parse"], json!([]));
        v["content"].as_str().unwrap().to_owned()
    }

    #[test]
    fn events_within_the_window_make_one_message() {
        let t0 = Instant::now();
        let mut n = Notifier::default();
        n.push(t0, &joined("alice"));
        n.push(t0 + Duration::from_millis(500), &joined("bob"));
        assert_eq!(n.poll(t0 + Duration::from_secs(1)), None);
        assert_eq!(n.next_timeout(), Some(t0 + BATCH_WINDOW));
        let body = n.poll(t0 + BATCH_WINDOW).unwrap();
        assert_eq!(content(&body), "➕ **alice** joined\n➕ **bob** joined");
        // One at a time.
        n.push(t0 + BATCH_WINDOW, &joined("carol"));
        assert_eq!(n.poll(t0 + 2 * BATCH_WINDOW), None);
        n.on_response(t0 + 2 * BATCH_WINDOW, Outcome::Delivered);
        assert_eq!(
            content(&n.poll(t0 + 2 * BATCH_WINDOW).unwrap()),
            "➕ **carol** joined"
        );
    }

    #[test]
    fn a_rate_limit_holds_the_message_for_retry_after() {
        let t0 = Instant::now();
        let mut n = Notifier::default();
        n.push(t0, &joined("alice"));
        let first = n.poll(t0 + BATCH_WINDOW).unwrap();
        let t1 = t0 + BATCH_WINDOW;
        n.on_response(t1, Outcome::RateLimited(Duration::from_millis(1500)));
        assert_eq!(n.poll(t1 + Duration::from_millis(1400)), None);
        assert_eq!(n.next_timeout(), Some(t1 + Duration::from_millis(1500)));
        assert_eq!(n.poll(t1 + Duration::from_millis(1500)), Some(first));
        n.on_response(t1, Outcome::Delivered);
        assert_eq!(n.dropped, 0);
    }

    #[test]
    fn failures_are_retried_with_backoff_then_given_up() {
        let t0 = Instant::now();
        let mut n = Notifier::default();
        n.push(t0, &joined("alice"));
        let mut now = t0 + BATCH_WINDOW;
        let mut tries = 0;
        while n.poll(now).is_some() {
            tries += 1;
            n.on_response(now, Outcome::Failed);
            now = n.next_timeout().unwrap_or(now + Duration::from_secs(60));
        }
        assert_eq!(tries, MAX_ATTEMPTS);
        assert_eq!(n.dropped, 1);
        // A refusal is final at once.
        n.push(now, &joined("bob"));
        let now = now + BATCH_WINDOW;
        n.poll(now).unwrap();
        n.on_response(now, Outcome::Refused);
        assert_eq!(n.poll(now + Duration::from_secs(60)), None);
        assert_eq!(n.dropped, 2);
    }

    #[test]
    fn messages_stay_within_discords_limit_and_the_backlog_is_bounded() {
        let t0 = Instant::now();
        let mut n = Notifier::default();
        for i in 0..MAX_PENDING + 10 {
            n.push(t0, &joined(&format!("{i}-{}", "x".repeat(50))));
        }
        assert_eq!(n.dropped, 10);
        let mut now = t0 + BATCH_WINDOW;
        let mut lines = 0;
        while let Some(body) = n.poll(now) {
            let c = content(&body);
            assert!(c.len() <= MAX_CONTENT, "{}", c.len());
            lines += c.lines().count();
            n.on_response(now, Outcome::Delivered);
            now += BATCH_WINDOW;
        }
        assert_eq!(lines, MAX_PENDING);
    }

    #[test]
    fn retry_after_is_read_from_the_body_or_the_header() {
        assert_eq!(
            retry_after(
                r#"{"message":"You are being rate limited.","retry_after":0.25,"global":false}"#,
                None
            ),
            Duration::from_millis(250)
        );
        assert_eq!(retry_after("", Some("3")), Duration::from_secs(3));
        assert_eq!(retry_after("junk", Some("-1")), Duration::from_secs(1));
        assert_eq!(retry_after(r#"{"retry_after":1e9}"#, None), MAX_RETRY_AFTER);
    }
}
