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
        // Each wheel slot's list head starts empty: linked to itself.
        for (s, head) in links.iter_mut().enumerate().skip(capacity) {
            *head = Link { prev: s as u32, next: s as u32, at: 0 };
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
        // Armed for the same tick already: nothing to move (the common case, an event that
        // leaves the deadline as it was). Only while the due list is empty: `at` keeps 32 bits
        // of the tick, and a due timer 2^32 - MAX_DELAY_TICKS ticks behind the clock (after
        // one advance that long) has the same `at` as one MAX_DELAY_TICKS ahead of it.
        let l = self.links[slot as usize];
        if l.next != NIL && l.at == t as u32 && self.due_is_empty() {
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
        // No tick has ended since the last advance (the clock is at or past `target`): nothing
        // can be due. Most calls, from a loop that polls far more often than once a tick, end
        // here without touching the wheel's lists.
        if target <= self.elapsed {
            return;
        }
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

    /// Whether a fired timer waits for [`pop_due`](TimerWheel::pop_due).
    pub fn has_due(&self) -> bool {
        !self.due_is_empty()
    }

    /// Whether no timer waits on the due list: every armed timer is then in the wheel, at or
    /// after the clock and at most [`MAX_DELAY_TICKS`] ahead, so 32 bits of its tick locate it.
    fn due_is_empty(&self) -> bool {
        let due = self.due_list();
        self.links[due as usize].next == due
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

    #[test]
    fn a_deadline_at_or_before_the_clock_fires_when_the_current_tick_ends() {
        let mut w = TimerWheel::new(4, MS, 0);
        assert!(fired(&mut w, 100 * MS + 300).is_empty());
        // The wheel's clock is tick 100: before it, in it, at its very start.
        w.arm(0, 3 * MS);
        w.arm(1, 100 * MS + MS / 2);
        w.arm(2, 100 * MS - 1);
        w.arm(3, 100 * MS);
        assert!((0..4).all(|s| w.is_armed(s)));
        assert!(fired(&mut w, 100 * MS + MS - 1).is_empty(), "tick 100 is not over");
        assert_eq!(fired(&mut w, 101 * MS), vec![0, 1, 2, 3]);
        // Re-armed for a deadline long past once more: once more the next tick.
        w.arm(2, 0);
        assert_eq!(fired(&mut w, 102 * MS), vec![2]);
    }

    /// What the stack does (and what net_frames caught it doing wrong): events handled at a
    /// `now` the wheel has not advanced to yet re-arm a timer whose deadline has passed. With
    /// the deadline itself, the timer stays in the tick it had and fires at the next advance.
    /// (Had the owner armed `deadline.max(now)`, each event would move it to that event's
    /// tick, which the same round's advance leaves for the next round: it would never fire.)
    #[test]
    fn re_arming_a_passed_deadline_before_the_wheel_advances_does_not_postpone_it() {
        let mut w = TimerWheel::new(2, MS, 0);
        let deadline = 3250 * MS + 700_000;
        w.arm(0, deadline);
        w.arm(1, 60_000 * MS);
        assert!(fired(&mut w, 3251 * MS - 1).is_empty());
        let mut fired_at = None;
        for now in [3251 * MS + 100_000, 3501 * MS, 3751 * MS] {
            // An event at `now`, before the round's timers: the owner re-arms its pending
            // deadline (until the timer has run) and another one far ahead.
            if fired_at.is_none() {
                w.arm(0, deadline);
            }
            w.arm(1, 60_000 * MS);
            match fired(&mut w, now).as_slice() {
                [] => {}
                [0] if fired_at.is_none() => fired_at = Some(now),
                other => panic!("at {now}: {other:?}"),
            }
        }
        assert_eq!(fired_at, Some(3251 * MS + 100_000), "at the first advance past its tick");
        // Once it has fired, a passed deadline armed again fires at the next tick.
        w.arm(0, deadline);
        assert!(fired(&mut w, 3751 * MS + 999_999).is_empty());
        assert_eq!(fired(&mut w, 3752 * MS), vec![0]);
    }

    #[test]
    fn re_arming_and_cancelling_while_the_due_are_popped() {
        let mut w = TimerWheel::new(5, MS, 0);
        for s in 0..4 {
            w.arm(s, 5 * MS);
        }
        w.advance(6 * MS);
        assert_eq!(w.pop_due(), Some(0));
        assert!(!w.is_armed(0), "popped: disarmed");
        w.cancel(0); // the one being expired: nothing to do
        assert!(!w.is_armed(0));
        w.arm(0, 2 * MS); // re-armed for a deadline passed: the next tick, not this loop
        w.cancel(1); // due, not popped yet: never pops
        w.arm(2, 20 * MS); // due, not popped yet: moved to the wheel
        w.arm(4, 0); // a new timer already passed: the next tick, not this loop
        assert_eq!(w.pop_due(), Some(3));
        w.arm(3, 6 * MS); // its tick is the clock's: the next tick
        assert_eq!(w.pop_due(), None);
        assert!(w.is_armed(0) && !w.is_armed(1) && w.is_armed(2) && w.is_armed(3) && w.is_armed(4));
        assert!(fired(&mut w, 7 * MS - 1).is_empty());
        assert_eq!(fired(&mut w, 7 * MS), vec![0, 4, 3]);
        assert!(fired(&mut w, 20 * MS).is_empty());
        assert_eq!(fired(&mut w, 21 * MS), vec![2]);
        assert!(fired(&mut w, 1000 * MS).is_empty());
    }

    /// A link keeps the low 32 bits of its tick: a timer on the due list whose tick is equal
    /// to the new one in those bits (2^32 ticks behind it) is still re-armed, not left due.
    #[test]
    fn re_arming_a_due_timer_to_the_same_low_32_bits_moves_it() {
        let mut w = TimerWheel::new(1, 1, 0);
        w.arm(0, 5);
        let elapsed = (1 << 32) - MAX_DELAY_TICKS + 5;
        w.advance(elapsed);
        w.arm(0, u64::MAX); // clamped to elapsed + MAX_DELAY_TICKS = 2^32 + 5
        assert_eq!(w.pop_due(), None);
        assert!(fired(&mut w, (1 << 32) + 5).is_empty());
        assert_eq!(fired(&mut w, (1 << 32) + 6), vec![0]);
    }

    #[test]
    fn cascades_at_exact_level_boundaries() {
        for level in 1..LEVELS as u32 {
            let b = 1u64 << (BITS * level);
            // From 0, and from just below the boundary (the deadline then sits one slot
            // ahead at that level), with one exact step onto it, then one tick at a time.
            for start in [0, b - 1] {
                let mut w = TimerWheel::new(3, 1, start);
                w.arm(0, b - 1);
                w.arm(1, b);
                w.arm(2, b + 1);
                assert_eq!(fired(&mut w, b), vec![0], "level {level} from {start}");
                assert_eq!(fired(&mut w, b + 1), vec![1], "level {level} from {start}");
                assert_eq!(fired(&mut w, b + 2), vec![2], "level {level} from {start}");
            }
            // Several boundaries of this level in one step: in tick order.
            let mut w = TimerWheel::new(3, 1, 0);
            w.arm(2, 2 * b);
            w.arm(0, b - 1);
            w.arm(1, b);
            assert_eq!(fired(&mut w, 3 * b), vec![0, 1, 2]);
        }
        // The top level turns over: from its last slot into the next turn.
        let top = 1u64 << (BITS * LEVELS as u32);
        let mut w = TimerWheel::new(2, 1, top - 1);
        w.arm(0, top);
        w.arm(1, top - 1 + MAX_DELAY_TICKS);
        assert!(fired(&mut w, top).is_empty());
        assert_eq!(fired(&mut w, top + 1), vec![0]);
        assert!(fired(&mut w, top - 1 + MAX_DELAY_TICKS).is_empty());
        assert_eq!(fired(&mut w, top + MAX_DELAY_TICKS), vec![1]);
    }

    /// Ticks of 10 ns in the model test, so that deadlines and clocks fall inside ticks too.
    const TICK: u64 = 10;

    #[derive(Clone, Debug)]
    enum Op {
        /// Arm a slot for `now` plus this many ticks (negative: a deadline already passed,
        /// also one before the wheel's clock) plus a part of a tick.
        Arm(u32, i64, u64),
        /// Arm a slot for a boundary of a level ahead of the wheel's clock, give or take a tick.
        ArmAtBoundary(u32, u32, i64),
        Cancel(u32),
        /// The events' clock moves on; the wheel's does not (frames handled before timers).
        Time(u64),
        /// The wheel advances to `now` plus this many ticks (and a part of one); after each
        /// due timer it pops, one of the actions, in order, is applied.
        Advance(u64, Vec<During>),
        /// The wheel advances to a boundary of a level, give or take a tick.
        AdvanceToBoundary(u32, i64),
    }

    #[derive(Clone, Debug)]
    enum During {
        Nothing,
        /// Re-arm the timer just popped (or, when false, the given slot) for `now` plus ticks.
        Rearm(bool, u32, i64),
        Cancel(u32),
    }

    const SLOTS_TESTED: u32 = 16;

    fn offset() -> impl Strategy<Value = i64> {
        prop_oneof![
            -300..300i64,
            -10_000..10_000i64,
            0..5_000_000i64,
            0..MAX_DELAY_TICKS as i64 + 5,
            MAX_DELAY_TICKS as i64..1 << 40,
        ]
    }

    fn during() -> impl Strategy<Value = During> {
        prop_oneof![
            2 => Just(During::Nothing),
            2 => (any::<bool>(), 0..SLOTS_TESTED, offset()).prop_map(|(p, s, o)| During::Rearm(p, s, o)),
            1 => (0..SLOTS_TESTED).prop_map(During::Cancel),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let dt = || prop_oneof![0..3u64, 0..100u64, 0..100_000u64, 0..10_000_000u64, 0..1u64 << 26];
        prop_oneof![
            4 => (0..SLOTS_TESTED, offset(), 0..TICK).prop_map(|(s, o, f)| Op::Arm(s, o, f)),
            1 => (0..SLOTS_TESTED, 1..LEVELS as u32, -1..=1i64).prop_map(|(s, l, d)| Op::ArmAtBoundary(s, l, d)),
            1 => (0..SLOTS_TESTED).prop_map(Op::Cancel),
            1 => prop_oneof![0..3u64, 0..1000u64].prop_map(Op::Time),
            3 => (dt(), proptest::collection::vec(during(), 0..6)).prop_map(|(d, v)| Op::Advance(d, v)),
            1 => (0..LEVELS as u32 + 1, -1..=1i64).prop_map(|(l, d)| Op::AdvanceToBoundary(l, d)),
        ]
    }

    /// The reference: per armed slot its deadline and the tick it must fire at the end of
    /// (its deadline's tick, but no earlier than the wheel's tick when armed and no later
    /// than [`MAX_DELAY_TICKS`] past it).
    struct Model {
        clock: u64,
        armed: BTreeMap<u32, (u64, u64)>,
    }

    impl Model {
        fn arm(&mut self, s: u32, deadline: u64) {
            let t = (deadline / TICK).clamp(self.clock, self.clock + MAX_DELAY_TICKS);
            self.armed.insert(s, (deadline, t));
        }
    }

    fn deadline_at(now: u64, ticks: i64, part: u64) -> u64 {
        (now as i64).saturating_add(ticks.saturating_mul(TICK as i64)).max(0) as u64 + part
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Against a model, over arms (deadlines ahead, in the current tick, passed, beyond the
        /// span, on level boundaries), cancels, the events' clock running ahead of the wheel's,
        /// advances (small, large, onto level boundaries) and re-arms and cancels while the due
        /// are popped. The guarantee: an armed timer fires exactly once, at the first advance
        /// whose clock has passed the end of its deadline's tick, or of the wheel's tick when
        /// it was armed if the deadline was before that (so never before its deadline, and at
        /// most one tick after it when the wheel advances every tick, whatever level it waited
        /// in); a deadline beyond the span fires at the span's end (early: the owner re-arms).
        /// A cancelled or re-armed timer does not fire for its old deadline; re-arming while
        /// popping never puts a timer back on this round's due list.
        #[test]
        fn matches_a_model(
            start in prop_oneof![0..1u64 << 40, Just((1 << 24) - 3), Just((1 << 30) - 100_000), Just((1 << 32) - 50), Just((1 << 32) * 3 - 7)],
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut now = start * TICK + 3;
            let mut w = TimerWheel::new(SLOTS_TESTED as usize, TICK, now);
            let mut m = Model { clock: now / TICK, armed: BTreeMap::new() };
            for op in ops {
                let (target_now, actions) = match op {
                    Op::Arm(s, o, part) => {
                        let d = deadline_at(now, o, part);
                        w.arm(s, d);
                        m.arm(s, d);
                        (None, Vec::new())
                    }
                    Op::ArmAtBoundary(s, level, delta) => {
                        let b = 1u64 << (BITS * level);
                        let t = ((m.clock / b + 1) * b).saturating_add_signed(delta);
                        w.arm(s, t * TICK);
                        m.arm(s, t * TICK);
                        (None, Vec::new())
                    }
                    Op::Cancel(s) => {
                        w.cancel(s);
                        m.armed.remove(&s);
                        (None, Vec::new())
                    }
                    Op::Time(dt) => {
                        now += dt * TICK + dt % 7;
                        (None, Vec::new())
                    }
                    Op::Advance(dt, actions) => (Some(now + dt * TICK + dt % 7), actions),
                    Op::AdvanceToBoundary(level, delta) => {
                        let b = 1u64 << (BITS * level);
                        let t = ((now / TICK / b + 1) * b).saturating_add_signed(delta);
                        (Some((t * TICK).max(now)), Vec::new())
                    }
                };
                if let Some(to) = target_now {
                    now = to;
                    w.advance(now);
                    m.clock = m.clock.max(now / TICK);
                    let mut due: Vec<u32> = m.armed.iter().filter(|&(_, &(_, t))| t < now / TICK).map(|(&s, _)| s).collect();
                    let mut actions = actions.into_iter();
                    while let Some(s) = w.pop_due() {
                        let pos = due.iter().position(|&d| d == s);
                        prop_assert!(pos.is_some(), "slot {} popped at {} but due are {:?}, armed {:?}", s, now, due, m.armed);
                        due.swap_remove(pos.unwrap());
                        let (deadline, t) = m.armed.remove(&s).unwrap();
                        prop_assert!(now / TICK > t);
                        prop_assert!(deadline <= now || deadline / TICK > t, "slot {} fired at {} before its deadline {}", s, now, deadline);
                        match actions.next() {
                            None | Some(During::Nothing) => {}
                            Some(During::Rearm(popped, other, o)) => {
                                let s = if popped { s } else { other };
                                let d = deadline_at(now, o, 0);
                                w.arm(s, d);
                                due.retain(|&x| x != s);
                                m.arm(s, d);
                            }
                            Some(During::Cancel(c)) => {
                                w.cancel(c);
                                due.retain(|&x| x != c);
                                m.armed.remove(&c);
                            }
                        }
                    }
                    prop_assert!(due.is_empty(), "due at {} and not fired: {:?}", now, due);
                }
                for s in 0..SLOTS_TESTED {
                    prop_assert_eq!(w.is_armed(s), m.armed.contains_key(&s), "slot {}", s);
                }
            }
        }
    }
}
