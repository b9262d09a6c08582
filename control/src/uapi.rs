//! The WireGuard cross-platform userspace API ("UAPI"), sans-IO.
//!
//! `wg(8)` configures userspace implementations through a stream socket
//! (`/var/run/wireguard/IFNAME.sock`) carrying a line protocol: a `get=1` or `set=1` line,
//! `key=value` lines, and a blank line that ends each request and each response
//! (<https://www.wireguard.com/xplatform/>). This module turns bytes into [`Request`]s and device
//! state into response text; the socket, the engine and the clock stay with the caller, so every
//! protocol rule is testable without a daemon.
//!
//! Behaviour follows what real peers do, not only the page above: wireguard-go's
//! `device/uapi.go` (the reference server: key order, `errno` values, strict value syntax) and
//! wireguard-tools' `src/ipc-uapi.h` (the client: what `wg` sends and what it can parse).
//!
//! A connection handler is a loop around [`RequestFramer`]:
//!
//! ```
//! use lanrage_control::uapi::{self, DeviceInfo, Request, RequestFramer};
//!
//! let mut framer = RequestFramer::new();
//! let mut written = String::new();
//! // Bytes as they come from the socket, possibly cut anywhere.
//! framer.push(b"get=1\n\nset=1\nlisten_port=51820\n")?;
//! framer.push(b"\n")?;
//! while let Some(request) = framer.next_request() {
//!     let reply = match request {
//!         Ok(Request::Get) => uapi::format_get_response(&DeviceInfo::default()),
//!         Ok(Request::Set(change)) => {
//!             assert_eq!(change.listen_port, Some(51820)); // hand `change` to the engine here
//!             uapi::SUCCESS_RESPONSE.to_owned()
//!         }
//!         Err(err) => uapi::format_errno(&err),
//!     };
//!     written.push_str(&reply);
//! }
//! assert_eq!(written, "errno=0\n\nerrno=0\n\n");
//! # Ok::<(), uapi::UapiError>(())
//! ```
//!
//! Client-side helpers ([`format_request`], [`parse_get_response`], [`parse_set_response`]) speak
//! the other end, for tests and tools that drive wireguard-go or this daemon.

#![forbid(unsafe_code)]

mod error;
mod format;
mod framer;
mod parse;
mod types;

#[cfg(test)]
mod tests;

pub use error::{UapiError, errno};
pub use format::{SUCCESS_RESPONSE, format_errno, format_get_response, format_request};
pub use framer::{DEFAULT_MAX_REQUEST_LEN, RequestFramer};
pub use parse::{
    ScopeResolver, parse_get_response, parse_request, parse_request_with_scopes, parse_set_response,
};
pub use types::{AllowedIp, DeviceInfo, Key, Operation, PeerChange, PeerInfo, Request, SetRequest};
