//! A hashed timer wheel: connections register their next deadline; expiry costs O(1) per
//! tick and per due entry, never a scan of all connections. Entries are hints: the owner
//! re-checks the real deadline when one fires, so moving a deadline needs no removal.
use super::table::ConnId;
use crate::net::{Instant, MS};

pub struct TimerWheel {
    slots: Vec<Vec<(ConnId, Instant)>>,
    tick: u64,
    /// Start time of the slot at `cursor`.
    now_tick: u64,
}

impl TimerWheel {
    /// `slots` slots of `tick` nanoseconds: deadlines beyond the span fire early and are
    /// re-registered by their owner.
    pub fn new(slots: usize, tick: u64, now: Instant, per_slot: usize) -> Self {
        TimerWheel { slots: (0..slots).map(|_| Vec::with_capacity(per_slot)).collect(), tick, now_tick: now / tick }
    }

    pub fn with_defaults(now: Instant) -> Self {
        TimerWheel::new(1024, MS, now, 16)
    }

    pub fn schedule(&mut self, id: ConnId, deadline: Instant) {
        let n = self.slots.len() as u64;
        let t = (deadline / self.tick).max(self.now_tick).min(self.now_tick + n - 1);
        self.slots[(t % n) as usize].push((id, deadline));
    }

    /// Move every entry of the slots wholly past at `now` into `out` (at most one tick late).
    pub fn expire(&mut self, now: Instant, out: &mut Vec<(ConnId, Instant)>) {
        let target = now / self.tick;
        let n = self.slots.len() as u64;
        let steps = target.saturating_sub(self.now_tick).min(n);
        for i in 0..steps {
            let slot = &mut self.slots[((self.now_tick + i) % n) as usize];
            out.extend(slot.drain(..));
        }
        self.now_tick = self.now_tick.max(target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_or_after_the_deadline_slot() {
        let mut w = TimerWheel::new(8, 10, 0, 4);
        let id = ConnId { slot: 1, gen: 1 };
        w.schedule(id, 35);
        let mut out = Vec::new();
        w.expire(20, &mut out);
        assert!(out.is_empty());
        w.expire(39, &mut out);
        assert!(out.is_empty(), "slot 3 is not over yet");
        w.expire(40, &mut out);
        assert_eq!(out, vec![(id, 35)]);
        // Beyond the span: fires early at the last slot, owner re-schedules.
        w.schedule(id, 1000);
        out.clear();
        w.expire(120, &mut out);
        assert_eq!(out.len(), 1);
    }
}
