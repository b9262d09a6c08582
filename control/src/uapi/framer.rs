use std::collections::VecDeque;
use std::fmt;

use super::error::{UapiError, errno};
use super::parse::{ScopeResolver, parse_request_bytes};
use super::types::Request;

/// Largest request [`RequestFramer::new`] accepts: about 2.5 million allowed IPs. `wg setconf`
/// sends a whole configuration in one request, and large ones are real (a 100,000-address
/// table is 2.6 MB; wireguard-go takes it). The socket is its owner's alone, so the bound is
/// against a runaway client, not another user: 64 MiB at most per connection.
pub const DEFAULT_MAX_REQUEST_LEN: usize = 64 << 20;

/// An idle connection keeps at most this much buffer capacity after a large request.
const RETAINED_CAPACITY: usize = 64 << 10;

/// Cuts the byte stream of one UAPI connection into requests.
///
/// Feed it whatever each read returned with [`push`](Self::push), then drain
/// [`next_request`](Self::next_request) until `None`. A request ends at its first empty line, so
/// a request with bad content is still cut at the right place: answer its error and keep
/// serving the connection. Only an over-long request ([`push`](Self::push) fails) leaves the
/// stream unsynchronised; then close the connection.
pub struct RequestFramer {
    buf: Vec<u8>,
    /// Start of the first request not yet returned by `next_request`.
    head: usize,
    /// Ends (exclusive) of complete requests not yet returned, in stream order.
    ready: VecDeque<usize>,
    /// Start of the request still being received.
    partial: usize,
    /// Whether the end of `buf` is at the start of a line.
    at_line_start: bool,
    max_request_len: usize,
    resolve_scope: Option<ScopeResolver>,
    failed: Option<UapiError>,
}

/// Buffered bytes may hold keys, so `Debug` shows only sizes.
impl fmt::Debug for RequestFramer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFramer")
            .field("ready_requests", &self.ready.len())
            .field("partial_len", &self.partial_len())
            .field("max_request_len", &self.max_request_len)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Default for RequestFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestFramer {
    /// A framer with the [`DEFAULT_MAX_REQUEST_LEN`] limit.
    pub fn new() -> Self {
        Self::with_max_request_len(DEFAULT_MAX_REQUEST_LEN)
    }

    /// A framer that refuses requests longer than `max_request_len` bytes, terminator included.
    pub fn with_max_request_len(max_request_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            head: 0,
            ready: VecDeque::new(),
            partial: 0,
            at_line_start: true,
            max_request_len,
            resolve_scope: None,
            failed: None,
        }
    }

    /// Accept link-local endpoints with an interface name as scope, resolved by
    /// `resolve_scope` (see [`ScopeResolver`]).
    #[must_use]
    pub fn with_scope_resolver(mut self, resolve_scope: ScopeResolver) -> Self {
        self.resolve_scope = Some(resolve_scope);
        self
    }

    /// Appends bytes read from the socket.
    ///
    /// Fails (`EMSGSIZE`) once a request grows past the limit; the framer then drops what it
    /// buffered and fails every later call, since the rest of the stream cannot be trusted.
    /// Memory stays bounded by the limit plus one `push` as long as the caller drains
    /// [`next_request`](Self::next_request) after each call.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), UapiError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        self.compact();
        let mut scan = self.buf.len();
        self.buf.extend_from_slice(bytes);
        while let Some(offset) = self.buf.get(scan..).and_then(memchr_newline) {
            let newline = scan + offset;
            if self.at_line_start && offset == 0 {
                let end = newline + 1;
                if end - self.partial > self.max_request_len {
                    return Err(self.fail());
                }
                self.ready.push_back(end);
                self.partial = end;
            }
            self.at_line_start = true;
            scan = newline + 1;
        }
        if scan < self.buf.len() {
            self.at_line_start = false;
        }
        if self.buf.len() - self.partial > self.max_request_len {
            return Err(self.fail());
        }
        Ok(())
    }

    /// The next complete request, parsed, in stream order. Each `Err` is the answer to one
    /// malformed request: send it with [`format_errno`](super::format_errno) and go on.
    pub fn next_request(&mut self) -> Option<Result<Request, UapiError>> {
        let end = self.ready.pop_front()?;
        let request = match self.buf.get(self.head..end) {
            Some(bytes) => parse_request_bytes(bytes, self.resolve_scope),
            None => Err(UapiError::protocol("framing error")),
        };
        self.head = end;
        if self.ready.is_empty() && self.partial == self.buf.len() {
            self.clear();
        }
        Some(request)
    }

    /// Bytes of a request that has begun but not ended. Non-zero at end of stream means the
    /// client hung up mid-request; nothing of it should be applied.
    pub fn partial_len(&self) -> usize {
        self.buf.len() - self.partial
    }

    /// Drops bytes already returned, so the buffer holds at most one request plus one push.
    fn compact(&mut self) {
        if self.head == 0 {
            return;
        }
        self.buf.drain(..self.head);
        for end in &mut self.ready {
            *end -= self.head;
        }
        self.partial -= self.head;
        self.head = 0;
    }

    fn clear(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > RETAINED_CAPACITY {
            self.buf = Vec::new();
        }
        self.head = 0;
        self.partial = 0;
        self.ready.clear();
        self.at_line_start = true;
    }

    fn fail(&mut self) -> UapiError {
        let err = UapiError::new(
            errno::EMSGSIZE,
            format!("request longer than {} bytes", self.max_request_len),
        );
        self.clear();
        self.buf = Vec::new();
        self.failed = Some(err.clone());
        err
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}
