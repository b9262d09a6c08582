//! State the control loop shares with every worker.

use arc_swap::ArcSwap;
use crossbeam_channel::Sender;

use crate::config::Event;
use crate::priority::PriorityPolicy;
use crate::stats::DropCounters;
use crate::table::PeerTable;

pub struct Shared {
    /// The current peer snapshot; replaced whole on reconfiguration.
    pub table: ArcSwap<PeerTable>,
    /// The latency lane's policy; a setting, changed live.
    pub priority: ArcSwap<PriorityPolicy>,
    pub drops: DropCounters,
    /// Bounded: a slow owner costs counted drops, never engine memory.
    pub events: Sender<Event>,
}
