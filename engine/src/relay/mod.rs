//! The relay server's forwarding path: datagrams between two clients that cannot reach each
//! other directly.
//!
//! A relay carries whole sessions' traffic for many clients, so its per-datagram path is
//! built like the engine's, only simpler:
//!
//! - **The decision is sans IO** ([`forward`]): parse the 8-byte header, look the channel up
//!   in an immutable [`RouteTable`], check the sender is the address bound to that channel,
//!   charge the route's byte budget, rewrite the channel in place. No allocation, no lock, no
//!   panic on any input, and unit-testable and benchmarkable without sockets.
//! - **Only the bound source may use a channel**: a channel number alone is not a credential
//!   (it crosses the network in the clear), so a frame from any other address is dropped
//!   before it can use up the session's budget or reach the other side.
//! - **No amplification**: the relay sends exactly the bytes it received, header rewritten,
//!   to exactly one address. A spoofed source can make it send no more than was sent to it.
//! - **Budgets without locks** ([`Gcra`]): one atomic per route direction, shared by every
//!   worker, carried from one table to the next so republishing never refills it.
//! - **Thread per core, zero copy** ([`Relay`]): one SO_REUSEPORT socket and one thread per
//!   worker; batched receive with GRO into buffers allocated once, forwarding in place, and
//!   one GSO send per run of same-sized datagrams to one address straight out of the receive
//!   buffer. Counters are added once per batch so cores do not share hot cache lines.
//! - **Control stays out of the way**: bind requests and other `LRrb` frames are copied to a
//!   bounded queue for the control thread, which verifies binds and publishes new tables with
//!   one atomic pointer swap; workers load the table once per batch. A slow control thread
//!   costs control frames (counted), never forwarding.

mod forward;
mod route;
mod worker;

pub use crate::rate_limit::Gcra;
pub use forward::{Forward, RelayCounters, RelayCountersSnapshot, RelayDrop, forward};
pub use route::{Route, RouteStats, RouteTable};
pub use worker::{Relay, RelayConfig, RelayEvent};
