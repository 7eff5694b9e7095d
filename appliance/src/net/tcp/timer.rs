//! The connections' timers: a hierarchical timer wheel with one timer per table slot (its
//! connection's earliest deadline). Every list is a circular doubly linked list threaded
//! through one array sized at start-up (one link per table slot plus a sentinel per wheel
//! slot), so arming, re-arming and cancelling are O(1), expiry costs O(1) per due timer and
//! per level a timer cascades through (at most [`LEVELS`] - 1), nothing scans all
//! connections, and nothing allocates after [`TimerWheel::new`].
//!
//! A timer fires at the end of the tick its deadline falls in (at most one tick late).
use crate::net::{Instant, MS};

/// Bits of a tick count each level resolves: 64 slots per level.
const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
/// Levels of 64 slots: level `l` has slots of 64^l ticks. Four levels of 1 ms ticks reach
/// 64^4 ms, about 4.7 hours.
pub const LEVELS: usize = 4;
/// Farthest a timer is armed ahead, in ticks: the top level's span less one of its slots,
/// so that a timer wrapped past the top level's end never lands in its current slot.
/// Farther deadlines fire at this bound; the owner re-checks and re-arms.
pub const MAX_DELAY_TICKS: u64 = (1 << (BITS * LEVELS as u32)) - (1 << (BITS * (LEVELS as u32 - 1)));

/// `next` of a slot whose timer is not armed.
const NIL: u32 = u32::MAX;

/// A list link. `at` is the low 32 bits of the timer's tick: timers in the wheel are never
/// behind the wheel's clock nor more than [`MAX_DELAY_TICKS`] ahead, so 32 bits locate them.
#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    at: u32,
}

pub struct TimerWheel {
    /// `0..cap`: the table slots; then one sentinel per wheel slot (level-major), then the
    /// sentinel of the due list.
    links: Vec<Link>,
    /// Per level, the wheel slots that may hold timers (a bit can outlive its list: it is
    /// cleared when a search finds the list empty).
    occupied: [u64; LEVELS],
    /// The wheel's clock in ticks: every timer of an earlier tick is on the due list.
    elapsed: u64,
    tick: u64,
    cap: u32,
}

impl TimerWheel {
    /// Timers for table slots `0..capacity`, with ticks of `tick` nanoseconds, starting at `now`.
    pub fn new(capacity: usize, tick: u64, now: Instant) -> Self {
        let cap = u32::try_from(capacity).ok().filter(|&c| c < NIL - (LEVELS * SLOTS + 1) as u32).expect("timer capacity");
        let mut links = vec![Link { prev: NIL, next: NIL, at: 0 }; capacity + LEVELS * SLOTS + 1];
        for s in capacity..links.len() {
            links[s] = Link { prev: s as u32, next: s as u32, at: 0 };
        }
        TimerWheel { links, occupied: [0; LEVELS], elapsed: now / tick, tick, cap }
    }

    pub fn with_defaults(capacity: usize, now: Instant) -> Self {
        TimerWheel::new(capacity, MS, now)
    }

    /// Bytes reserved for each table slot (its link).
    pub const fn slot_bytes() -> usize {
        std::mem::size_of::<Link>()
    }

    fn sentinel(&self, level: usize, slot: usize) -> u32 {
        self.cap + (level * SLOTS + slot) as u32
    }

    fn due_list(&self) -> u32 {
        self.cap + (LEVELS * SLOTS) as u32
    }

    /// Whether `slot` has a timer armed (or due and not yet popped).
    pub fn is_armed(&self, slot: u32) -> bool {
        self.links.get(slot as usize).is_some_and(|l| l.next != NIL)
    }

    /// Arm `slot`'s timer for `deadline`, replacing any it had. A deadline before the wheel's
    /// clock goes to the clock's current tick (it fires at the next [`advance`] that ends it);
    /// one beyond [`MAX_DELAY_TICKS`] fires there.
    ///
    /// Pass the deadline itself, also when it has passed, never `deadline.max(now)`: the wheel's
    /// clock is the last [`advance`], and an owner that re-arms a passed deadline at each
    /// event's `now` before the wheel advances to it moves it on every time, so it never fires.
    ///
    /// [`advance`]: TimerWheel::advance
    pub fn arm(&mut self, slot: u32, deadline: Instant) {
        assert!(slot < self.cap, "timer slot {slot} beyond capacity {}", self.cap);
        let t = (deadline / self.tick).clamp(self.elapsed, self.elapsed + MAX_DELAY_TICKS);
        let l = self.links[slot as usize];
        if l.next != NIL && l.at == t as u32 && self.in_wheel(l.at) {
            return;
        }
        self.unlink(slot);
        self.insert(slot, t);
    }

    /// Disarm `slot`'s timer (nothing when it has none), also when it is due and not popped.
    pub fn cancel(&mut self, slot: u32) {
        if (slot as usize) < self.cap as usize {
            self.unlink(slot);
        }
    }

    /// Move every timer whose tick is wholly past at `now` to the due list, for [`pop_due`].
    ///
    /// [`pop_due`]: TimerWheel::pop_due
    pub fn advance(&mut self, now: Instant) {
        let target = now / self.tick;
        while let Some((level, ws, start)) = self.next_slot() {
            let s = self.sentinel(level, ws);
            if level == 0 {
                if start >= target {
                    break;
                }
                self.splice_to_due(s);
            } else {
                if start > target {
                    break;
                }
                // The clock reaches the slot: spread its timers over the lower levels.
                self.elapsed = start;
                self.occupied[level] &= !(1 << ws);
                let first = self.links[s as usize].next;
                self.links[s as usize] = Link { prev: s, next: s, at: 0 };
                let mut n = first;
                while n != s {
                    let next = self.links[n as usize].next;
                    let t = self.full_tick(self.links[n as usize].at);
                    self.insert(n, t);
                    n = next;
                }
            }
        }
        self.elapsed = self.elapsed.max(target);
    }

    /// A table slot whose timer fired, oldest tick first within one [`advance`]; its timer is
    /// disarmed.
    ///
    /// [`advance`]: TimerWheel::advance
    pub fn pop_due(&mut self) -> Option<u32> {
        let due = self.due_list();
        let first = self.links[due as usize].next;
        if first == due {
            return None;
        }
        self.unlink(first);
        Some(first)
    }

    /// Whether a timer's `at` lies at or after the clock (in the wheel, not on the due list).
    fn in_wheel(&self, at: u32) -> bool {
        u64::from(at.wrapping_sub(self.elapsed as u32)) <= MAX_DELAY_TICKS
    }

    /// The full tick of a timer in the wheel.
    fn full_tick(&self, at: u32) -> u64 {
        self.elapsed + u64::from(at.wrapping_sub(self.elapsed as u32))
    }

    /// The level and wheel slot for tick `t` (`elapsed <= t <= elapsed + MAX_DELAY_TICKS`):
    /// the level of the highest 6-bit digit in which `t` differs from the clock.
    fn place(&self, t: u64) -> (usize, usize) {
        let masked = (self.elapsed ^ t) | (SLOTS as u64 - 1);
        let level = (((63 - masked.leading_zeros()) / BITS) as usize).min(LEVELS - 1);
        (level, ((t >> (BITS * level as u32)) as usize) & (SLOTS - 1))
    }

    fn insert(&mut self, slot: u32, t: u64) {
        let (level, ws) = self.place(t);
        self.occupied[level] |= 1 << ws;
        let s = self.sentinel(level, ws);
        let tail = self.links[s as usize].prev;
        self.links[slot as usize] = Link { prev: tail, next: s, at: t as u32 };
        self.links[tail as usize].next = slot;
        self.links[s as usize].prev = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let Link { prev, next, .. } = self.links[slot as usize];
        if next == NIL {
            return;
        }
        self.links[prev as usize].next = next;
        self.links[next as usize].prev = prev;
        self.links[slot as usize] = Link { prev: NIL, next: NIL, at: 0 };
    }

    /// Append the list at sentinel `s` to the due list.
    fn splice_to_due(&mut self, s: u32) {
        let (first, last) = (self.links[s as usize].next, self.links[s as usize].prev);
        if first == s {
            return;
        }
        let due = self.due_list();
        let tail = self.links[due as usize].prev;
        self.links[tail as usize].next = first;
        self.links[first as usize].prev = tail;
        self.links[last as usize].next = due;
        self.links[due as usize].prev = last;
        self.links[s as usize] = Link { prev: s, next: s, at: 0 };
    }

    /// The next non-empty wheel slot from the clock on: (level, slot, its first tick). The
    /// lowest level that has one holds the earliest: a level's timers all lie before the
    /// next slot of the level above.
    fn next_slot(&mut self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let shift = BITS * level as u32;
            let cur = ((self.elapsed >> shift) as usize) & (SLOTS - 1);
            loop {
                let rotated = self.occupied[level].rotate_right(cur as u32);
                if rotated == 0 {
                    break;
                }
                let ws = (cur + rotated.trailing_zeros() as usize) & (SLOTS - 1);
                let s = self.sentinel(level, ws);
                if self.links[s as usize].next == s {
                    self.occupied[level] &= !(1 << ws);
                    continue;
                }
                // Slots behind the current one belong to the level's next turn.
                let turn = (self.elapsed >> (shift + BITS)) + u64::from(ws < cur);
                return Some((level, ws, ((turn << BITS) + ws as u64) << shift));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn fired(w: &mut TimerWheel, now: Instant) -> Vec<u32> {
        w.advance(now);
        std::iter::from_fn(|| w.pop_due()).collect()
    }

    #[test]
    fn fires_at_the_end_of_the_deadline_tick() {
        let mut w = TimerWheel::new(4, 10, 0);
        w.arm(1, 35);
        assert!(fired(&mut w, 20).is_empty());
        assert!(fired(&mut w, 39).is_empty(), "tick 3 is not over yet");
        assert_eq!(fired(&mut w, 40), vec![1]);
        assert!(!w.is_armed(1));
        assert!(fired(&mut w, 1000).is_empty(), "once per arming");
    }

    #[test]
    fn rearm_moves_and_cancel_removes() {
        let mut w = TimerWheel::new(4, MS, 0);
        w.arm(0, 5 * MS);
        w.arm(1, 5 * MS);
        w.arm(2, 70 * MS);
        w.arm(0, 80 * MS); // later: no early fire
        w.arm(2, 3 * MS); // earlier
        w.cancel(1);
        w.cancel(1);
        assert_eq!(fired(&mut w, 10 * MS), vec![2]);
        assert!(fired(&mut w, 80 * MS).is_empty());
        assert_eq!(fired(&mut w, 81 * MS), vec![0]);
        assert!(!w.is_armed(0) && !w.is_armed(1) && !w.is_armed(2));
    }

    #[test]
    fn a_past_deadline_fires_at_the_next_tick() {
        let mut w = TimerWheel::new(2, MS, 100 * MS);
        w.arm(0, 3 * MS);
        assert!(fired(&mut w, 100 * MS + MS / 2).is_empty());
        assert_eq!(fired(&mut w, 101 * MS), vec![0]);
    }

    #[test]
    fn far_deadlines_cascade_and_fire_in_order() {
        let mut w = TimerWheel::new(3, MS, 0);
        w.arm(0, 60 * 1000 * MS); // idle timeout: level 2
        w.arm(1, 5000 * MS); // level 2
        w.arm(2, 100 * MS); // level 1
        assert_eq!(fired(&mut w, 100 * MS), Vec::<u32>::new());
        assert_eq!(fired(&mut w, 101 * MS), vec![2]);
        assert_eq!(fired(&mut w, 5000 * MS), Vec::<u32>::new());
        assert_eq!(fired(&mut w, 5001 * MS), vec![1]);
        assert_eq!(fired(&mut w, 60_000 * MS), Vec::<u32>::new());
        // One big step fires it too.
        assert_eq!(fired(&mut w, 3_600_000 * MS), vec![0]);
    }

    #[test]
    fn deadlines_beyond_the_span_fire_at_its_end() {
        let mut w = TimerWheel::new(1, MS, 0);
        w.arm(0, u64::MAX);
        assert!(fired(&mut w, MAX_DELAY_TICKS * MS).is_empty());
        assert_eq!(fired(&mut w, (MAX_DELAY_TICKS + 1) * MS), vec![0]);
    }

    #[test]
    fn memory_is_fixed_per_slot() {
        let w = TimerWheel::new(1000, MS, 0);
        assert_eq!(TimerWheel::slot_bytes(), 12);
        assert_eq!(w.links.capacity(), 1000 + LEVELS * SLOTS + 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Arm(u32, u64),
        Cancel(u32),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..16u32, prop_oneof![0..200u64, 0..10_000u64, 0..5_000_000u64, 0..MAX_DELAY_TICKS]).prop_map(|(s, d)| Op::Arm(s, d)),
            1 => (0..16u32).prop_map(Op::Cancel),
            3 => prop_oneof![0..3u64, 0..100u64, 0..100_000u64, 0..10_000_000u64, 0..1u64 << 26].prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a model: a timer fires at the first advance whose clock has passed the end
        /// of its deadline's tick, never earlier, never twice for one arming.
        #[test]
        fn matches_a_model(start in prop_oneof![0..1u64 << 40, Just((1 << 24) - 3), Just((1 << 30) - 100_000)], ops in proptest::collection::vec(op(), 1..200)) {
            const TICK: u64 = 10;
            let mut now = start * TICK + 3;
            let mut w = TimerWheel::new(16, TICK, now);
            let mut model: BTreeMap<u32, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Arm(s, d) => {
                        let deadline = now + d * TICK;
                        w.arm(s, deadline);
                        model.insert(s, deadline);
                    }
                    Op::Cancel(s) => {
                        w.cancel(s);
                        model.remove(&s);
                    }
                    Op::Advance(dt) => {
                        now += dt * TICK + dt % 7;
                        let mut got = fired(&mut w, now);
                        got.sort_unstable();
                        let want: Vec<u32> = model.iter().filter(|&(_, &d)| now / TICK > d / TICK).map(|(&s, _)| s).collect();
                        for s in &want {
                            model.remove(s);
                        }
                        prop_assert_eq!(got, want, "at {}", now);
                    }
                }
                for s in 0..16 {
                    prop_assert_eq!(w.is_armed(s), model.contains_key(&s));
                }
            }
        }
    }
}
