//! Pacing: when a connection may next send new data, so that a window leaves spread over
//! the round trip instead of in one burst that overruns queues (the link's, the switch's,
//! and the last-level cache the burst's buffers pass through). The rate is gain × cwnd /
//! SRTT, the gain 2 in slow start (the window doubles each round trip) and 1.2 in congestion
//! avoidance, as Linux sets `sk_pacing_rate`; with segmentation offload each segment carries
//! about 1 ms of it (Linux's `tcp_tso_autosize`). Without an RTT sample there is no rate and
//! nothing is paced; a near-zero SRTT (a link with no latency) gives a rate so high that
//! nothing waits either. Sans-IO: times are passed in.
//!
//! The stack's timer wheel ticks every millisecond and fires up to a tick late, so a
//! connection may run up to [`CREDIT`] behind its schedule and catch up: the rate holds on
//! average, and a burst stays within about two milliseconds' worth.
use crate::net::{Instant, MS, SEC};

/// Gain in percent of cwnd / SRTT in slow start.
pub const SLOW_START_GAIN_PCT: u64 = 200;
/// Gain in percent in congestion avoidance.
pub const AVOIDANCE_GAIN_PCT: u64 = 120;
/// How far behind schedule a connection may have fallen and still make it up.
pub const CREDIT: u64 = MS;
/// Time one offloaded segment's worth of the rate spans.
pub const BURST_TIME: u64 = MS;

/// Bytes per second, `None` when unknown (no RTT sample: unpaced).
pub fn rate(cwnd: u64, srtt: u64, slow_start: bool) -> Option<u64> {
    if srtt == 0 {
        return None;
    }
    let gain = if slow_start { SLOW_START_GAIN_PCT } else { AVOIDANCE_GAIN_PCT };
    let r = cwnd as u128 * gain as u128 * SEC as u128 / (100 * srtt as u128);
    Some(r.clamp(1, u64::MAX as u128) as u64)
}

/// Nanoseconds `bytes` take at `rate`.
pub fn delay(bytes: u64, rate: u64) -> u64 {
    (bytes as u128 * SEC as u128 / rate.max(1) as u128).min(u64::MAX as u128) as u64
}

/// Most new payload in one segment: `quantum` (whole MSS, what the port takes), cut to about
/// [`BURST_TIME`] of the rate but never below two segments (one MSS without offload).
pub fn burst(rate: Option<u64>, mss: u64, quantum: u64) -> u64 {
    let Some(rate) = rate else { return quantum };
    if quantum <= mss {
        return quantum;
    }
    let b = (rate as u128 * BURST_TIME as u128 / SEC as u128).min(u64::MAX as u128) as u64;
    b.clamp(2 * mss, quantum) / mss * mss
}

/// The schedule of one connection's new data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pacer {
    /// New data may go out from this time on.
    next: Instant,
}

impl Pacer {
    pub fn ready(&self, now: Instant) -> bool {
        now >= self.next
    }

    pub fn next(&self) -> Instant {
        self.next
    }

    /// `bytes` of new data went out at `now`: the next may go once they took their time at
    /// `rate`, counted from where the schedule was (or [`CREDIT`] before now if it fell
    /// further behind: an idle connection does not save up a burst).
    pub fn on_send(&mut self, now: Instant, bytes: u64, rate: Option<u64>) {
        let Some(rate) = rate else {
            self.next = 0;
            return;
        };
        let base = self.next.max(now.saturating_sub(CREDIT));
        self.next = base.saturating_add(delay(bytes, rate));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MSS: u64 = 1448;
    const TSO: u64 = 65535 / MSS * MSS;

    /// Sends `burst`-sized segments whenever allowed, woken at each millisecond tick as the
    /// timer wheel does; returns bytes sent in `span`.
    fn run_ticks(rate: u64, span: u64) -> u64 {
        let b = burst(Some(rate), MSS, TSO);
        let mut p = Pacer::default();
        let (mut now, mut sent) = (SEC, 0);
        while now < SEC + span {
            while p.ready(now) {
                p.on_send(now, b, Some(rate));
                sent += b;
            }
            // The wheel fires at the end of the tick the deadline falls in.
            now = (p.next() / MS + 1) * MS;
        }
        sent
    }

    #[test]
    fn a_millisecond_timer_keeps_the_rate() {
        for rate in [1_000_000, 12_500_000, 125_000_000, 1_250_000_000] {
            let sent = run_ticks(rate, SEC) as f64;
            let want = rate as f64;
            assert!(sent >= 0.97 * want && sent <= 1.01 * want + 2.0 * want * CREDIT as f64 / SEC as f64, "rate {rate}: sent {sent} in 1 s");
        }
    }

    #[test]
    fn no_sample_or_no_latency_is_unpaced() {
        assert_eq!(rate(100_000, 0, true), None);
        assert_eq!(burst(None, MSS, TSO), TSO);
        let mut p = Pacer::default();
        p.on_send(5 * MS, 1 << 20, None);
        assert!(p.ready(5 * MS));
        // 1 µs SRTT: a 1 MB window may go at a terabyte per second.
        let r = rate(1 << 20, 1_000, false).unwrap();
        assert!(delay(TSO, r) < 100);
        assert_eq!(burst(Some(r), MSS, TSO), TSO);
    }

    #[test]
    fn gain_and_burst_size() {
        // 100 segments over 10 ms: 14.48 MB/s in avoidance (x1.2), 28.96 in slow start.
        let cwnd = 100 * MSS;
        assert_eq!(rate(cwnd, 10 * MS, false), Some(cwnd * 120));
        assert_eq!(rate(cwnd, 10 * MS, true), Some(cwnd * 200));
        // 1 ms of 17.376 MB/s is 12 segments; a slow rate still gets two, a fast one the port's most.
        assert_eq!(burst(Some(cwnd * 120), MSS, TSO), 12 * MSS);
        assert_eq!(burst(Some(1000), MSS, TSO), 2 * MSS);
        assert_eq!(burst(Some(u64::MAX), MSS, TSO), TSO);
        assert_eq!(burst(Some(u64::MAX), MSS, MSS), MSS, "without offload one segment is one MSS");
    }

    proptest! {
        #[test]
        fn the_delay_falls_as_the_window_grows_and_rises_with_the_rtt(
            bytes in 1u64..1 << 20, cwnd in 1u64..1 << 32, more in 0u64..1 << 32, srtt in 1u64..1 << 36, longer in 0u64..1 << 36, ss in any::<bool>(),
        ) {
            let d = |cwnd, srtt| delay(bytes, rate(cwnd, srtt, ss).unwrap());
            prop_assert!(d(cwnd + more, srtt) <= d(cwnd, srtt));
            prop_assert!(d(cwnd, srtt + longer) >= d(cwnd, srtt));
            // Slow start is never paced slower than avoidance.
            prop_assert!(delay(bytes, rate(cwnd, srtt, true).unwrap()) <= delay(bytes, rate(cwnd, srtt, false).unwrap()));
        }

        #[test]
        fn bursts_are_whole_segments_within_bounds(r in any::<u64>(), mss in 64u64..9000, segs in 1u64..64) {
            let q = segs * mss;
            let b = burst(Some(r), mss, q);
            prop_assert_eq!(b % mss, 0);
            if segs == 1 {
                prop_assert_eq!(b, mss);
            } else {
                prop_assert!(b >= 2 * mss && b <= q);
            }
        }

        #[test]
        fn the_schedule_never_runs_ahead_of_the_rate(
            rate in 1_000u64..1 << 34, steps in proptest::collection::vec((0u64..3 * MS, 1u64..70_000), 1..300),
        ) {
            let mut p = Pacer::default();
            let start = SEC;
            let mut now = start;
            let (mut sent, mut sends) = (0u64, 0u64);
            for (dt, bytes) in steps {
                now += dt;
                let before = p.next();
                if p.ready(now) {
                    p.on_send(now, bytes, Some(rate));
                    prop_assert!(p.next() >= before, "the schedule never moves back");
                    sent += bytes;
                    sends += 1;
                    // Whatever went out, the last send included, fits the rate over the time
                    // since the start plus the credit (each delay rounds down by < 1 ns).
                    let allowed = (now - start + CREDIT + sends) as u128 * rate as u128 / SEC as u128 + bytes as u128;
                    prop_assert!(sent as u128 <= allowed, "{} bytes by {} ns at {} B/s", sent, now - start, rate);
                }
            }
        }
    }
}
