//! What the daemon tells whoever embeds it, as it happens (the C ABI's event callback, a GUI's
//! notifications): the party joined and left, members coming and going, the path to a member
//! changing, games starting and stopping. The queue is bounded: an embedder that stops reading
//! loses events (counted in the log), never the daemon's memory or its pace.

use std::net::Ipv4Addr;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde::Serialize;

/// Events held for a slow reader before new ones are dropped.
pub const QUEUE: usize = 256;

/// One event. As JSON it is an object whose `event` field names the kind, e.g.
/// `{"event":"peer_joined","peer":"…","name":"bob","virtual_ip":"10.66.0.3"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DaemonEvent {
    /// We are in a party, at `virtual_ip` (after create, join, or a restart that resumed it).
    PartyJoined {
        party: String,
        code: String,
        virtual_ip: Ipv4Addr,
    },
    /// We are in no party any more.
    PartyLeft,
    /// A member is in the party with us (also each member found on joining).
    PeerJoined {
        peer: String,
        name: String,
        virtual_ip: Ipv4Addr,
    },
    /// A member said to have joined is gone (also each one as we leave the party).
    PeerLeft {
        peer: String,
        name: String,
    },
    /// Traffic to `peer` now takes `path` (`relayed`: through a relay), measured at `rtt_ms`.
    PathChanged {
        peer: String,
        name: Option<String>,
        path: String,
        relayed: bool,
        rtt_ms: f64,
    },
    /// No path to `peer` answers any more; probing goes on.
    PathLost {
        peer: String,
        name: Option<String>,
    },
    /// A known game started on this machine (`game`: its profile's id).
    GameDetected {
        game: String,
        name: String,
    },
    GameStopped {
        game: String,
        name: String,
    },
    /// The daemon stopped: asked to (`lanrage down`, the web UI, the embedder), or its engine
    /// failed. The last event.
    Stopped,
}

/// The control thread's end of the queue.
#[derive(Debug)]
pub struct EventSink {
    tx: Sender<DaemonEvent>,
    dropped: u64,
}

impl EventSink {
    /// A queue of [`QUEUE`] events: the sink, and the reader's end.
    pub fn new() -> (EventSink, Receiver<DaemonEvent>) {
        let (tx, rx) = bounded(QUEUE);
        (EventSink { tx, dropped: 0 }, rx)
    }

    pub fn emit(&mut self, event: DaemonEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                self.dropped += 1;
                // Said once per hundred, not per event: a reader that stopped reading would
                // otherwise fill the log too.
                if self.dropped % 100 == 1 {
                    tracing::debug!(
                        dropped = self.dropped,
                        ?event,
                        "event queue full; event dropped"
                    );
                }
            }
            // Nobody reads (a plain `lanrage up`): nothing to tell.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_objects_named_by_their_event_field() {
        let json = serde_json::to_value(DaemonEvent::PeerJoined {
            peer: "key".into(),
            name: "bob".into(),
            virtual_ip: Ipv4Addr::new(10, 66, 0, 3),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event": "peer_joined", "peer": "key", "name": "bob", "virtual_ip": "10.66.0.3"})
        );
        assert_eq!(
            serde_json::to_value(DaemonEvent::Stopped).unwrap(),
            serde_json::json!({"event": "stopped"})
        );
    }

    #[test]
    fn a_reader_that_falls_behind_loses_events_not_memory() {
        let (mut sink, rx) = EventSink::new();
        for _ in 0..QUEUE + 10 {
            sink.emit(DaemonEvent::PartyLeft);
        }
        assert_eq!(rx.len(), QUEUE);
        assert_eq!(sink.dropped(), 10);
        drop(rx);
        sink.emit(DaemonEvent::PartyLeft);
        assert_eq!(sink.dropped(), 10, "no reader is not a full queue");
    }
}
