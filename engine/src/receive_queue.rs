//! Where packets wait for the worker: in the worker, not in the kernel's queues.
//!
//! Under a bulk transfer the receiving worker is the bottleneck, and whatever buffer sits in
//! front of it becomes a standing queue. When that buffer is the socket's, a game's datagram
//! joins the back of it and waits for every bulk datagram ahead (measured on 2 cores: ~1 ms
//! behind one TCP stream). So the worker empties the socket into a pool of receive slots
//! between every slot it decrypts: datagrams in the latency lane are decrypted the moment they
//! are read, bulk ones queue here in arrival order. The queue is bounded in bytes and drops
//! its oldest bulk when over the bound, so the socket stays empty, nothing waits long, and a
//! sender still sees the loss it needs to slow down.
//!
//! The TUN side is the same: the ring of a TUN queue holds what the local TCP stack lets it
//! (about a millisecond of data), and a game packet sent meanwhile waits behind all of it
//! unless the worker reads ahead.
//!
//! Slots are receive buffers (a GRO train or a GSO super-packet of up to 64 KiB each); this
//! module only keeps their books, the worker owns the memory.

use std::collections::VecDeque;

/// Bulk bytes a worker holds per direction before it drops the oldest: what the socket held
/// before this queue existed (a 256 KiB receive buffer counts double in the kernel's books),
/// about 1.5 ms of decryption at 3 Gbit/s.
pub const BULK_LIMIT: usize = 512 << 10;

/// Most slots a queue can keep books for.
pub const MAX_SLOTS: usize = u32::BITS as usize;

/// The books of a worker's receive slots.
pub struct ReceiveQueue {
    /// Bit `i` set: slot `i` holds nothing and may be received into.
    free: u32,
    /// Slots holding bulk datagrams, oldest first.
    bulk: VecDeque<u8>,
    /// Bytes received into each slot.
    len: [usize; MAX_SLOTS],
    bulk_bytes: usize,
    limit: usize,
}

impl ReceiveQueue {
    /// Books for `slots` slots (1 to [`MAX_SLOTS`]) holding at most `limit` bytes of bulk.
    pub fn new(slots: usize, limit: usize) -> Self {
        let slots = slots.clamp(1, MAX_SLOTS);
        ReceiveQueue {
            free: u32::MAX >> (MAX_SLOTS - slots),
            bulk: VecDeque::with_capacity(slots),
            len: [0; MAX_SLOTS],
            bulk_bytes: 0,
            limit,
        }
    }

    /// The free slots, as a bit set (bit `i` = slot `i`); receive into them in ascending order.
    pub fn free(&self) -> u32 {
        self.free
    }

    pub fn has_bulk(&self) -> bool {
        !self.bulk.is_empty()
    }

    #[cfg(test)]
    fn bulk_bytes(&self) -> usize {
        self.bulk_bytes
    }

    /// Queues a slot just received into with `len` bytes of bulk datagrams.
    pub fn push_bulk(&mut self, slot: usize, len: usize) {
        debug_assert!(self.free & (1 << slot) != 0, "slot {slot} is in use");
        self.free &= !(1 << slot);
        self.len[slot] = len;
        self.bulk_bytes += len;
        self.bulk.push_back(slot as u8);
    }

    /// The oldest bulk slot while the queue is over its bound, or `None`. The slot stays
    /// taken until [`release`](Self::release)d, so its datagrams can be counted first. The
    /// newest slot is never dropped: one slot always fits.
    pub fn pop_overflow(&mut self) -> Option<usize> {
        if self.bulk_bytes <= self.limit || self.bulk.len() <= 1 {
            return None;
        }
        self.pop_bulk()
    }

    /// The oldest bulk slots, in order, as many as fit in `max_bytes` (at least one) and
    /// `max_slots`: a turn's work, one GRO train or super-packet, or many lone datagrams at
    /// once. Give them back with [`release_turn`](Self::release_turn) once handled.
    pub fn pop_turn(&mut self, max_bytes: usize, max_slots: usize) -> Turn {
        let mut turn = Turn {
            slots: [0; MAX_SLOTS],
            len: 0,
        };
        let mut bytes = 0;
        while let Some(&front) = self.bulk.front() {
            let len = self.len[usize::from(front)];
            if turn.len == max_slots.min(MAX_SLOTS) || (turn.len > 0 && bytes + len > max_bytes) {
                break;
            }
            bytes += len;
            turn.slots[turn.len] = front;
            turn.len += 1;
            self.pop_bulk();
        }
        turn
    }

    /// Gives back every slot of a turn.
    pub fn release_turn(&mut self, turn: &Turn) {
        for slot in turn.slots() {
            self.release(slot);
        }
    }

    /// The oldest bulk slot, to handle and then [`release`](Self::release).
    fn pop_bulk(&mut self) -> Option<usize> {
        let slot = usize::from(self.bulk.pop_front()?);
        self.bulk_bytes -= self.len[slot];
        Some(slot)
    }

    /// Gives back a slot taken by [`pop_bulk`](Self::pop_bulk) or
    /// [`pop_overflow`](Self::pop_overflow).
    pub fn release(&mut self, slot: usize) {
        self.len[slot] = 0;
        self.free |= 1 << slot;
    }
}

/// Slots taken by [`ReceiveQueue::pop_turn`], oldest first. A value of its own, so the
/// worker can hand them to a method of its own while the queue waits for them back.
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    slots: [u8; MAX_SLOTS],
    len: usize,
}

impl Turn {
    pub fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots[..self.len].iter().map(|&s| usize::from(s))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The slots of a bit set, in ascending order.
pub fn slots(mut set: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let slot = set.trailing_zeros() as usize;
        if slot >= u32::BITS as usize {
            return None;
        }
        set &= set - 1;
        Some(slot)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_leaves_in_arrival_order() {
        let mut q = ReceiveQueue::new(16, BULK_LIMIT);
        assert_eq!(q.free(), 0xffff);
        for slot in [3, 0, 7] {
            q.push_bulk(slot, 1000);
        }
        assert_eq!(q.bulk_bytes(), 3000);
        assert_eq!(q.free() & 0b1000_1001, 0);
        assert_eq!(q.pop_overflow(), None);
        assert_eq!(q.pop_bulk(), Some(3));
        q.release(3);
        assert_eq!(q.pop_bulk(), Some(0));
        assert_eq!(q.pop_bulk(), Some(7));
        assert_eq!(q.pop_bulk(), None);
        assert!(!q.has_bulk());
        assert_eq!(q.bulk_bytes(), 0);
        assert_eq!(q.free() & 0b1000, 0b1000);
    }

    #[test]
    fn over_the_bound_the_oldest_goes() {
        let mut q = ReceiveQueue::new(3, 100_000);
        assert_eq!(q.free(), 0b111);
        for slot in 0..3 {
            q.push_bulk(slot, 40_000);
        }
        assert_eq!(q.pop_overflow(), Some(0));
        q.release(0);
        assert_eq!(q.pop_overflow(), None);
        assert_eq!(q.bulk_bytes(), 80_000);
        // One slot larger than the bound still fits.
        let mut q = ReceiveQueue::new(MAX_SLOTS, 1_000);
        assert_eq!(q.free(), u32::MAX);
        q.push_bulk(5, 65_000);
        assert_eq!(q.pop_overflow(), None);
        q.push_bulk(6, 10);
        assert_eq!(q.pop_overflow(), Some(5));
        q.release(5);
        assert_eq!(q.pop_bulk(), Some(6));
    }

    #[test]
    fn a_turn_takes_a_train_or_many_lone_datagrams() {
        let mut q = ReceiveQueue::new(16, BULK_LIMIT);
        q.push_bulk(4, 60_000);
        q.push_bulk(2, 60_000);
        for slot in [9, 1, 0] {
            q.push_bulk(slot, 1_400);
        }
        let taken = |turn: Turn| turn.slots().collect::<Vec<_>>();
        assert_eq!(taken(q.pop_turn(65_536, 16)), [4]);
        // Over the byte budget alone, still one.
        assert_eq!(taken(q.pop_turn(1_000, 16)), [2]);
        let turn = q.pop_turn(65_536, 2);
        assert_eq!(taken(turn), [9, 1]);
        assert_eq!(taken(q.pop_turn(65_536, 16)), [0]);
        assert!(q.pop_turn(65_536, 16).is_empty());
        assert_eq!(q.bulk_bytes(), 0);
        q.release_turn(&turn);
        assert_eq!(q.free() & 0b10_0000_0010, 0b10_0000_0010);
    }

    #[test]
    fn slot_sets_walk_ascending() {
        assert_eq!(slots(0).count(), 0);
        assert_eq!(slots(0b1010_0001).collect::<Vec<_>>(), [0, 5, 7]);
        assert_eq!(slots(u32::MAX).count(), 32);
        assert_eq!(slots(1 << 31).collect::<Vec<_>>(), [31]);
    }
}
