//! A cheap clock for timing from inside a measured loop. A benchmark that takes the devices'
//! time out of the server's (the simulated NIC copying frames, the file backend reading)
//! reads a clock around every device call, and what the reads themselves cost lands in the
//! server's time; so do the reads around each round of the loop and each chunk sealed. `Instant::now` costs about 25 ns here (the vDSO's
//! `clock_gettime`); the time-stamp counter about 9.
use std::sync::OnceLock;
use std::time::Instant;

/// Where ticks come from.
enum Source {
    /// The time-stamp counter (invariant: constant rate, running in every C-state), with
    /// nanoseconds per tick measured at start.
    #[cfg(target_arch = "x86_64")]
    Tsc { ns_per_tick: f64 },
    /// Nanoseconds since `base`, where the counter cannot be trusted.
    Instant { base: Instant },
}

static SOURCE: OnceLock<Source> = OnceLock::new();

/// Choose the source (and measure the counter's rate, a few milliseconds) now, so that the
/// first [`now`] in a measured loop does not.
pub fn init() {
    source();
}

/// Ticks now: only differences mean anything, converted with [`to_ns`].
#[inline]
pub fn now() -> u64 {
    match source() {
        #[cfg(target_arch = "x86_64")]
        Source::Tsc { .. } => tsc(),
        Source::Instant { base } => base.elapsed().as_nanos() as u64,
    }
}

/// Nanoseconds since `start`, a reading of [`now`].
#[inline]
pub fn ns_since(start: u64) -> u64 {
    to_ns(now().wrapping_sub(start))
}

/// Nanoseconds in `ticks` ticks of [`now`].
#[inline]
pub fn to_ns(ticks: u64) -> u64 {
    match source() {
        #[cfg(target_arch = "x86_64")]
        Source::Tsc { ns_per_tick } => (ticks as f64 * ns_per_tick) as u64,
        Source::Instant { .. } => ticks,
    }
}

fn source() -> &'static Source {
    SOURCE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if invariant_tsc() {
            return Source::Tsc { ns_per_tick: measure_tsc_rate() };
        }
        Source::Instant { base: Instant::now() }
    })
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn tsc() -> u64 {
    // SAFETY: RDTSC reads a counter and has no other effect; every x86_64 CPU has it.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// Whether the kernel says the counter ticks at a constant rate and never stops.
#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return false };
    let Some(flags) = info.lines().find(|l| l.starts_with("flags")) else { return false };
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    has("constant_tsc") && has("nonstop_tsc")
}

/// Nanoseconds per tick, against `Instant` over 5 ms of spinning.
#[cfg(target_arch = "x86_64")]
fn measure_tsc_rate() -> f64 {
    let (t0, c0) = (Instant::now(), tsc());
    while t0.elapsed().as_millis() < 5 {
        std::hint::spin_loop();
    }
    let (ns, ticks) = (t0.elapsed().as_nanos() as f64, tsc().wrapping_sub(c0));
    ns / ticks.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_measure_what_instant_measures() {
        init();
        let (t0, c0) = (Instant::now(), now());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (ns, ticked) = (t0.elapsed().as_nanos() as f64, ns_since(c0) as f64);
        assert!((ticked / ns - 1.0).abs() < 0.05, "{ticked} ns by ticks against {ns} by Instant");
    }
}
