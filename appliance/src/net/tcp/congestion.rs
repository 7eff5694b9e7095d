//! Congestion control: one connection's congestion window and slow-start threshold, grown on
//! ACKs and cut on loss, by NewReno (RFC 5681, RFC 6582) or CUBIC (RFC 9438). Sans-IO: the
//! connection passes in the bytes acknowledged, the flight size, its MSS, SRTT and `now`.
//! Which bytes to resend (the SACK scoreboard, recovery) stays in the connection.
//!
//! Both share slow start (byte counting, stretch ACKs counted in full) and the recovery exit
//! (cwnd = ssthresh); they differ in congestion avoidance and in how far a loss cuts.
use std::str::FromStr;

use crate::net::{Instant, SEC};

/// Which algorithm grows and cuts the congestion window (see [`super::Config::congestion`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CongestionControl {
    /// Halve on loss, one MSS more per round trip (RFC 5681).
    NewReno,
    /// Cut to 0.7 on loss, grow as a cubic function of the time since (RFC 9438).
    #[default]
    Cubic,
}

impl CongestionControl {
    pub fn name(self) -> &'static str {
        match self {
            CongestionControl::NewReno => "newreno",
            CongestionControl::Cubic => "cubic",
        }
    }
}

impl FromStr for CongestionControl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "newreno" | "reno" => Ok(CongestionControl::NewReno),
            "cubic" => Ok(CongestionControl::Cubic),
            _ => Err(format!("unknown congestion control {s:?} (cubic or newreno)")),
        }
    }
}

/// CUBIC's multiplicative decrease factor (RFC 9438 4.6).
pub const BETA: f64 = 0.7;
/// CUBIC's scaling constant, in segments per second cubed (RFC 9438 5).
pub const C: f64 = 0.4;
/// The Reno-friendly additive increase, in segments per round trip, that gives the same
/// average window as Reno's 1 with its 0.5 decrease (RFC 9438 4.3).
const ALPHA: f64 = 3.0 * (1.0 - BETA) / (1.0 + BETA);
/// A window beyond any window the peer can announce (1 GiB at most) times a margin: caps
/// growth while the application, not the window, limits sending, so nothing overflows.
pub const MAX_CWND: u64 = 1 << 32;

/// CUBIC's memory of the last congestion event, in bytes and seconds (RFC 9438 4.1). Kept
/// in `f32` (a 4 GiB window to within 256 bytes) and an epoch without an Option, so that
/// every connection slot stays small (docs/performance.md: memory per idle connection);
/// the arithmetic is done in `f64`.
#[derive(Clone, Copy, Debug)]
struct Cubic {
    /// The window just before the last reduction (after fast convergence); 0: none yet.
    w_max: f32,
    /// The window before the last reduction, unadjusted: the Reno-friendly estimate's
    /// increase goes from [`ALPHA`] to 1 once it gets there.
    cwnd_prior: f32,
    /// Start of the current congestion avoidance epoch; [`NO_EPOCH`] until the first ACK in
    /// congestion avoidance after a reduction.
    epoch_start: Instant,
    /// Seconds from the epoch's start until the window is back at `w_max`.
    k: f32,
    /// The window Reno (with [`ALPHA`]) would have now.
    w_est: f32,
    /// Last time new data went out, to leave idle periods out of the epoch.
    last_send: Instant,
}

/// [`Cubic::epoch_start`] when no epoch runs.
const NO_EPOCH: Instant = Instant::MAX;

impl Default for Cubic {
    fn default() -> Self {
        Cubic { w_max: 0.0, cwnd_prior: 0.0, epoch_start: NO_EPOCH, k: 0.0, w_est: 0.0, last_send: 0 }
    }
}

impl Cubic {
    /// W_cubic(t) in bytes, `t` in seconds since the epoch (RFC 9438 eq. 1).
    fn window(&self, t: f64, mss: f64) -> f64 {
        let d = t - f64::from(self.k);
        C * d * d * d * mss + f64::from(self.w_max)
    }

    fn epoch(&self) -> Option<Instant> {
        (self.epoch_start != NO_EPOCH).then_some(self.epoch_start)
    }
}

/// The congestion window and the algorithm's state.
#[derive(Clone, Debug)]
pub struct Congestion {
    algo: CongestionControl,
    /// Bytes that may be in flight.
    pub cwnd: u64,
    pub ssthresh: u64,
    /// NewReno: bytes acknowledged toward the next MSS of growth in congestion avoidance
    /// (below `cwnd`, which is at most [`MAX_CWND`]).
    ca_acked: u64,
    cubic: Cubic,
}

impl Congestion {
    pub fn new(algo: CongestionControl) -> Self {
        Congestion { algo, cwnd: 0, ssthresh: u64::MAX, ca_acked: 0, cubic: Cubic::default() }
    }

    pub fn algorithm(&self) -> CongestionControl {
        self.algo
    }

    /// The initial window, once the MSS is known.
    pub fn init(&mut self, cwnd: u64) {
        self.cwnd = cwnd.min(MAX_CWND);
    }

    pub fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    /// New data goes out at `now`; `idle` when nothing was in flight before it. CUBIC's
    /// clock does not run while the connection has nothing to send (RFC 9438 5.8: the
    /// window would otherwise jump after an idle period), as Linux shifts the epoch.
    pub fn on_send(&mut self, now: Instant, idle: bool) {
        if self.algo != CongestionControl::Cubic {
            return;
        }
        let c = &mut self.cubic;
        if idle {
            if let Some(e) = c.epoch() {
                c.epoch_start = (e + now.saturating_sub(c.last_send)).min(now);
            }
        }
        c.last_send = now;
    }

    /// `acked` new bytes were acknowledged outside recovery.
    pub fn on_ack(&mut self, now: Instant, mut acked: u64, mss: u64, srtt: u64) {
        if self.cwnd < self.ssthresh {
            // Slow start grows by every byte acknowledged, up to ssthresh; the rest of the
            // ACK goes to congestion avoidance (as Linux since 3.18). A stretch ACK counts
            // as the segments it covers: receivers with GRO or LRO acknowledge a 64 KiB TSO
            // frame at once, and RFC 3465's limit of two segments per ACK would then grow
            // the window by a few percent per round trip instead of doubling it. No more
            // than per-segment ACKs would give: the growth is bounded by the bytes acked.
            let grow = acked.min(self.ssthresh - self.cwnd);
            self.cwnd += grow;
            acked -= grow;
        }
        if acked > 0 {
            match self.algo {
                CongestionControl::NewReno => {
                    // One MSS per window acknowledged, however the ACKs split it.
                    self.ca_acked += acked;
                    if self.ca_acked >= self.cwnd {
                        let windows = self.ca_acked / self.cwnd;
                        self.ca_acked -= windows * self.cwnd;
                        self.cwnd += windows * mss;
                    }
                }
                CongestionControl::Cubic => self.cubic_ack(now, acked, mss, srtt),
            }
        }
        self.cwnd = self.cwnd.min(MAX_CWND);
    }

    /// Congestion avoidance by RFC 9438 4.2 to 4.4, once per ACK.
    fn cubic_ack(&mut self, now: Instant, acked: u64, mss: u64, srtt: u64) {
        let (mss, acked) = (mss as f64, acked as f64);
        let cwnd = self.cwnd as f64;
        let c = &mut self.cubic;
        let epoch = match c.epoch() {
            Some(e) => e,
            None => {
                // First ACK of a new epoch: the curve starts at the current window and
                // reaches W_max after K seconds (eq. 2); above W_max it starts convex.
                if cwnd < f64::from(c.w_max) {
                    c.k = ((f64::from(c.w_max) - cwnd) / mss / C).cbrt() as f32;
                } else {
                    c.k = 0.0;
                    c.w_max = cwnd as f32;
                }
                c.w_est = cwnd as f32;
                c.epoch_start = now;
                now
            }
        };
        let t = now.saturating_sub(epoch) as f64 / SEC as f64;
        let rtt = srtt as f64 / SEC as f64;
        // Reno-friendly estimate (eq. 4): ALPHA segments per window acknowledged, 1 once it
        // passed the window the last loss cut.
        let alpha = if c.w_est >= c.cwnd_prior { 1.0 } else { ALPHA };
        let w_est = f64::from(c.w_est) + alpha * acked / cwnd * mss;
        c.w_est = w_est as f32;
        let grown = if c.window(t, mss) < w_est {
            // Reno-friendly region: Reno would do better (short RTTs, small windows).
            w_est
        } else {
            // Concave or convex region: head for where the curve will be one RTT from now,
            // at most 1.5 times the window (eq. 3), spread over the window's ACKs.
            let target = c.window(t + rtt, mss).clamp(cwnd, 1.5 * cwnd);
            cwnd + (target - cwnd) * acked / cwnd
        };
        // Never shrink on an ACK; `as` saturates (and maps a NaN to 0, which the max undoes).
        self.cwnd = (grown as u64).max(self.cwnd);
    }

    /// A loss detected by duplicate ACKs or SACK (fast retransmit): recovery starts with the
    /// window cut. `flight` is the data outstanding when it was detected.
    pub fn on_loss(&mut self, flight: u64, mss: u64) {
        match self.algo {
            CongestionControl::NewReno => self.ssthresh = (flight / 2).max(2 * mss),
            CongestionControl::Cubic => {
                self.cubic_reduce();
                self.ssthresh = ((flight as f64 * BETA) as u64).max(2 * mss);
            }
        }
        self.cwnd = self.ssthresh.min(MAX_CWND);
        self.ca_acked = 0;
    }

    /// W_max and the epoch after a congestion event (RFC 9438 4.6, 4.7).
    fn cubic_reduce(&mut self) {
        let cwnd = self.cwnd as f64;
        let c = &mut self.cubic;
        c.cwnd_prior = cwnd as f32;
        // Fast convergence: a flow whose window peaks below the last peak releases
        // bandwidth for newer flows by remembering a lower one.
        c.w_max = (if cwnd < f64::from(c.w_max) { cwnd * (1.0 + BETA) / 2.0 } else { cwnd }) as f32;
        c.epoch_start = NO_EPOCH;
    }

    /// Recovery ended (the ACK passed the recovery point).
    pub fn on_recovery_exit(&mut self, mss: u64) {
        self.cwnd = self.ssthresh.max(mss).min(MAX_CWND);
    }

    /// A retransmission timeout: back to one segment in slow start. CUBIC forgets its
    /// curve, as Linux does (the path may have changed entirely): after slow start it grows
    /// convex from wherever it is.
    pub fn on_rto(&mut self, flight: u64, mss: u64) {
        self.ssthresh = match self.algo {
            CongestionControl::NewReno => (flight / 2).max(2 * mss),
            CongestionControl::Cubic => ((flight as f64 * BETA) as u64).max(2 * mss),
        };
        self.cwnd = mss;
        self.ca_acked = 0;
        self.cubic = Cubic { last_send: self.cubic.last_send, ..Cubic::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::MS;

    const MSS: u64 = 1000;

    /// A connection in congestion avoidance right after a loss at `w_max` segments.
    fn after_loss(algo: CongestionControl, w_max: u64) -> Congestion {
        let mut c = Congestion::new(algo);
        c.init(w_max * MSS);
        c.on_loss(w_max * MSS, MSS);
        c.on_recovery_exit(MSS);
        c
    }

    /// One round trip at `now`: a window's worth of one-segment ACKs.
    fn round(c: &mut Congestion, now: Instant, rtt: u64) {
        let segs = c.cwnd / MSS;
        for _ in 0..segs {
            c.on_ack(now, MSS, MSS, rtt);
        }
    }

    #[test]
    fn loss_cuts_cubic_to_0_7_and_reno_to_half() {
        let c = after_loss(CongestionControl::Cubic, 100);
        assert_eq!(c.cwnd, 70 * MSS);
        assert_eq!(c.ssthresh, 70 * MSS);
        assert_eq!(c.cubic.w_max, (100.0 * MSS as f64) as f32);
        let r = after_loss(CongestionControl::NewReno, 100);
        assert_eq!(r.cwnd, 50 * MSS);
        // Never below two segments.
        let mut c = Congestion::new(CongestionControl::Cubic);
        c.init(2 * MSS);
        c.on_loss(2 * MSS, MSS);
        assert_eq!(c.cwnd, 2 * MSS);
    }

    #[test]
    fn fast_convergence_lowers_w_max_when_the_peak_falls() {
        let mut c = after_loss(CongestionControl::Cubic, 100);
        c.cwnd = 90 * MSS;
        c.on_loss(90 * MSS, MSS);
        assert_eq!(c.cubic.w_max, (90.0 * MSS as f64 * (1.0 + BETA) / 2.0) as f32);
        assert_eq!(c.cubic.cwnd_prior, (90.0 * MSS as f64) as f32);
        // A higher peak is remembered as it is.
        c.cwnd = 120 * MSS;
        c.on_loss(120 * MSS, MSS);
        assert_eq!(c.cubic.w_max, (120.0 * MSS as f64) as f32);
    }

    #[test]
    fn cubic_grows_concave_up_to_w_max_then_convex() {
        // A long RTT and a large window: the cubic region, not the Reno-friendly one.
        let rtt = 100 * MS;
        let mut c = after_loss(CongestionControl::Cubic, 1000);
        let mut now = SEC;
        let mut samples = Vec::new();
        for _ in 0..200 {
            round(&mut c, now, rtt);
            samples.push((now - SEC, c.cwnd));
            now += rtt;
        }
        let k = f64::from(c.cubic.k);
        assert!((k - (1000.0 * 0.3 / C).cbrt()).abs() < 1e-6, "K = cbrt(W_max (1 - beta) / C): {k}");
        let k_ns = (k * SEC as f64) as u64;
        let growth: Vec<(u64, i64)> = samples.windows(2).map(|w| (w[1].0, w[1].1 as i64 - w[0].1 as i64)).collect();
        // Concave: growth slows down on the way to W_max (a round's slack for the RTT lead).
        let before: Vec<i64> = growth.iter().filter(|&&(t, _)| t > rtt && t + 2 * rtt < k_ns).map(|&(_, g)| g).collect();
        assert!(before.len() > 10);
        assert!(before.windows(2).all(|w| w[1] <= w[0] + MSS as i64 / 100), "concave: {before:?}");
        // The plateau: near W_max around t = K.
        let at_k = samples.iter().find(|&&(t, _)| t >= k_ns).unwrap().1 as f64;
        assert!((at_k / (1000.0 * MSS as f64) - 1.0).abs() < 0.02, "at K the window is W_max: {at_k}");
        // Convex: growth speeds up past W_max.
        let after: Vec<i64> = growth.iter().filter(|&&(t, _)| t > k_ns + 2 * rtt).map(|&(_, g)| g).collect();
        assert!(after.len() > 10);
        assert!(after.windows(2).all(|w| w[1] + MSS as i64 / 100 >= w[0]), "convex: {after:?}");
        assert!(after.last().unwrap() > &(10 * before.last().unwrap()), "probing speeds up");
        // And it follows the curve (one RTT ahead), not the Reno-friendly estimate.
        let t = 2.0;
        let want = c.cubic.window(t + 0.1, MSS as f64);
        let got = samples.iter().find(|&&(s, _)| s >= 2 * SEC).unwrap().1 as f64;
        assert!((got / want - 1.0).abs() < 0.02, "W_cubic(2 s) = {want}, cwnd {got}");
    }

    #[test]
    fn at_short_rtts_the_reno_friendly_region_dominates() {
        let rtt = MS;
        let mut c = after_loss(CongestionControl::Cubic, 100);
        let mut now = SEC;
        for _ in 0..20 {
            round(&mut c, now, rtt);
            now += rtt;
        }
        // 20 round trips: W_cubic has barely moved off 70 segments; Reno-friendly growth
        // of ALPHA (0.53) segments per round trip puts the window near 80.6.
        let t = (now - SEC) as f64 / SEC as f64;
        assert!(c.cubic.window(t, MSS as f64) < 71.0 * MSS as f64);
        let segs = c.cwnd as f64 / MSS as f64;
        assert!((segs - (70.0 + 20.0 * ALPHA)).abs() < 0.5, "window {segs} segments");
        // Past the old peak the estimate grows by one segment per round trip, like Reno.
        for _ in 0..200 {
            round(&mut c, now, rtt);
            now += rtt;
        }
        let before = c.cwnd;
        round(&mut c, now, rtt);
        let step = c.cwnd - before;
        assert!((MSS * 9 / 10..=MSS * 11 / 10).contains(&step), "one segment per round trip: {step}");
    }

    #[test]
    fn an_rto_resets_to_one_segment_and_forgets_the_curve() {
        let mut c = after_loss(CongestionControl::Cubic, 100);
        round(&mut c, SEC, 10 * MS);
        assert!(c.cubic.epoch().is_some());
        c.on_rto(80 * MSS, MSS);
        assert_eq!(c.cwnd, MSS);
        assert_eq!(c.ssthresh, 56 * MSS);
        assert_eq!(c.cubic.w_max, 0.0);
        assert!(c.cubic.epoch().is_none());
        // Slow start back up to ssthresh, then the curve starts there, convex (K = 0).
        let mut now = 2 * SEC;
        while c.in_slow_start() {
            round(&mut c, now, 10 * MS);
            now += 10 * MS;
        }
        round(&mut c, now, 10 * MS);
        assert_eq!(c.cubic.k, 0.0);
        let mut r = Congestion::new(CongestionControl::NewReno);
        r.init(80 * MSS);
        r.on_rto(80 * MSS, MSS);
        assert_eq!((r.cwnd, r.ssthresh), (MSS, 40 * MSS));
    }

    #[test]
    fn idle_time_does_not_count_in_the_epoch() {
        let mut c = after_loss(CongestionControl::Cubic, 100);
        c.on_send(SEC, false);
        round(&mut c, SEC, 10 * MS);
        let epoch = c.cubic.epoch().unwrap();
        // Ten seconds with nothing to send: the epoch moves with the restart.
        c.on_send(11 * SEC, true);
        assert_eq!(c.cubic.epoch(), Some(epoch + 10 * SEC));
        let w = c.cwnd;
        round(&mut c, 11 * SEC, 10 * MS);
        assert!(c.cwnd < w + w / 10, "no jump after idle: {w} -> {}", c.cwnd);
    }

    #[test]
    fn newreno_adds_one_segment_per_window() {
        let mut c = after_loss(CongestionControl::NewReno, 100);
        round(&mut c, SEC, 10 * MS);
        assert_eq!(c.cwnd, 51 * MSS);
    }

    #[test]
    fn a_stretch_ack_in_slow_start_counts_every_segment_it_covers() {
        // A receiver with GRO acknowledges a whole TSO frame at once: slow start still
        // doubles the window per round trip, as one ACK per segment would.
        for algo in [CongestionControl::NewReno, CongestionControl::Cubic] {
            let mut c = Congestion::new(algo);
            c.init(10 * MSS);
            c.on_ack(0, 10 * MSS, MSS, 10 * MS);
            assert_eq!(c.cwnd, 20 * MSS, "{algo:?}");
            // Up to ssthresh only; the rest of the ACK is congestion avoidance.
            c.ssthresh = 25 * MSS;
            c.on_ack(0, 20 * MSS, MSS, 10 * MS);
            assert!(c.cwnd >= 25 * MSS && c.cwnd < 27 * MSS, "{algo:?}: {}", c.cwnd / MSS);
        }
    }

    #[test]
    fn newreno_counts_every_window_a_stretch_ack_covers() {
        let mut c = after_loss(CongestionControl::NewReno, 100);
        // One ACK for two and a half windows: two segments, and the half window carries over.
        c.on_ack(SEC, 125 * MSS, MSS, 10 * MS);
        assert_eq!(c.cwnd, 52 * MSS);
        c.on_ack(SEC, 27 * MSS, MSS, 10 * MS);
        assert_eq!(c.cwnd, 53 * MSS);
    }

    #[test]
    fn names_parse() {
        for a in [CongestionControl::NewReno, CongestionControl::Cubic] {
            assert_eq!(a.name().parse::<CongestionControl>(), Ok(a));
        }
        assert!("bbr".parse::<CongestionControl>().is_err());
    }
}

/// Bounds that hold whatever happens, for both algorithms.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Ev {
        /// Bytes acknowledged, nanoseconds since the last event, SRTT.
        Ack(u64, u64, u64),
        Loss(u64),
        RecoveryExit,
        Rto(u64),
        Send(u64, bool),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            8 => (0u64..1 << 22, 0u64..1 << 36, 0u64..1 << 34).prop_map(|(a, d, r)| Ev::Ack(a, d, r)),
            1 => (0u64..1 << 34).prop_map(Ev::Loss),
            1 => Just(Ev::RecoveryExit),
            1 => (0u64..1 << 34).prop_map(Ev::Rto),
            1 => (0u64..1 << 36, any::<bool>()).prop_map(|(d, i)| Ev::Send(d, i)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_window_stays_between_one_segment_and_the_cap(
            cubic in any::<bool>(), mss in 64u64..9000, init in 1u64..100, evs in proptest::collection::vec(ev(), 1..200),
        ) {
            let algo = if cubic { CongestionControl::Cubic } else { CongestionControl::NewReno };
            let mut c = Congestion::new(algo);
            c.init(init * mss);
            let mut now: Instant = 0;
            for e in evs {
                let before = c.cwnd;
                match e {
                    Ev::Ack(a, d, r) => {
                        now += d;
                        c.on_ack(now, a, mss, r);
                        prop_assert!(c.cwnd >= before.min(MAX_CWND), "an ACK never shrinks the window");
                    }
                    Ev::Loss(f) => {
                        c.on_loss(f, mss);
                        prop_assert!(c.cwnd >= 2 * mss && c.ssthresh >= 2 * mss);
                        let cut = if cubic { BETA } else { 0.5 };
                        prop_assert!(c.cwnd <= ((f as f64 * cut) as u64).max(2 * mss));
                    }
                    Ev::RecoveryExit => c.on_recovery_exit(mss),
                    Ev::Rto(f) => {
                        c.on_rto(f, mss);
                        prop_assert_eq!(c.cwnd, mss);
                        prop_assert!(c.ssthresh >= 2 * mss);
                    }
                    Ev::Send(d, idle) => {
                        now += d;
                        c.on_send(now, idle);
                        prop_assert!(c.cubic.epoch().is_none_or(|e| e <= now), "the epoch never starts in the future");
                    }
                }
                prop_assert!(c.cwnd >= mss && c.cwnd <= MAX_CWND, "cwnd {} (mss {})", c.cwnd, mss);
                prop_assert!(c.cubic.w_est.is_finite() && c.cubic.w_max.is_finite() && c.cubic.k.is_finite());
            }
        }
    }
}
