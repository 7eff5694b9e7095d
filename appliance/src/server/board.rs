//! What the pipelines share: each core's published counters and connection listing, and the
//! console's requests to them (drain, stop, list connections). The console runs on the first
//! core; the others publish here about once a millisecond and read the requests then. A core
//! never waits on this board: it publishes with `try_lock` and skips a turn if the console is
//! reading, so nothing here can stall a pipeline.
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drivers::nic::NicCounters;
use drivers::storage::StorageCounters;

use crate::console::{ConnSummary, CoreCounters};
use crate::stats::Stats;

/// One core's last published state.
#[derive(Clone, Debug, Default)]
pub struct CoreReport {
    pub stats: Stats,
    pub nic: NicCounters,
    pub storage: StorageCounters,
    /// Each drive's counters of this core's queue, drive 0 first (`storage` is their sum).
    pub drives: Vec<StorageCounters>,
    /// Connections listed for the last request this core answered (at most its `max`).
    pub conns: Vec<ConnSummary>,
    /// Live connections when the listing was made.
    pub conns_total: usize,
    /// The listing request [`Board::request_connections`] this listing answers.
    pub conns_answered: u64,
}

impl CoreReport {
    pub fn share(&self, core: usize) -> CoreCounters {
        CoreCounters {
            core,
            connections_active: self.stats.tcp_connections_active,
            connections_opened: self.stats.tcp_connections_opened,
            http_requests: self.stats.http_requests,
            http_body_bytes: self.stats.http_body_bytes,
            nic_rx_packets: self.nic.rx_packets,
            nic_tx_bytes: self.nic.tx_bytes,
            storage_reads: self.storage.reads,
        }
    }
}

struct Slot {
    core: usize,
    report: Mutex<CoreReport>,
}

/// Shared by every pipeline of one `serve`.
pub struct Board {
    slots: Vec<Slot>,
    draining: AtomicBool,
    stop: AtomicBool,
    /// Bumped by each connection listing request; `conns_max` is its size limit.
    conns_request: AtomicU64,
    conns_max: AtomicUsize,
    /// The certificate `tls install` or `tls remove` made last: the cores take it at their
    /// next publication, and each core's HTTP layer when it accepts an HTTPS connection.
    pub tls: std::sync::Arc<TlsSlot>,
}

/// The server configuration the console published last, with the HTTPS port, and its
/// generation (bumped by each publication, after the slot is written and released).
#[derive(Default)]
pub struct TlsSlot {
    config: Mutex<Option<(std::sync::Arc<rustls::ServerConfig>, u16)>>,
    generation: AtomicU64,
}

impl TlsSlot {
    /// A new server configuration (certificate) for new handshakes on `port`.
    pub fn publish(&self, config: std::sync::Arc<rustls::ServerConfig>, port: u16) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = Some((config, port));
        // Bumped once the slot is free again: whoever sees the new generation finds it.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The configuration published since generation `seen`, if any (`seen` then moves on):
    /// one atomic load when nothing changed. Never waits: while another core holds the slot
    /// it answers `None` and the caller asks again later.
    pub fn update(&self, seen: &mut u64) -> Option<(std::sync::Arc<rustls::ServerConfig>, u16)> {
        let generation = self.generation.load(Ordering::Acquire);
        if generation == *seen {
            return None;
        }
        let slot = match self.config.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        *seen = generation;
        slot.clone()
    }
}

impl Board {
    /// One slot per pipeline, in the order of `cores` (CPU numbers).
    pub fn new(cores: &[usize]) -> Self {
        Board {
            slots: cores.iter().map(|&core| Slot { core, report: Mutex::new(CoreReport::default()) }).collect(),
            draining: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns_request: AtomicU64::new(0),
            conns_max: AtomicUsize::new(0),
            tls: std::sync::Arc::new(TlsSlot::default()),
        }
    }

    pub fn pipelines(&self) -> usize {
        self.slots.len()
    }

    pub fn core_of(&self, index: usize) -> usize {
        self.slots.get(index).map_or(0, |s| s.core)
    }

    /// Pipeline `index` publishes; `fill` gets the report and whether a connection listing
    /// of at most the returned size is wanted. Skipped (false) if the console holds the slot.
    pub fn publish(&self, index: usize, fill: impl FnOnce(&mut CoreReport, Option<(u64, usize)>)) -> bool {
        let Some(slot) = self.slots.get(index) else { return false };
        let Ok(mut report) = slot.report.try_lock() else { return false };
        let request = self.conns_request.load(Ordering::Acquire);
        let wanted = (request != report.conns_answered).then(|| (request, self.conns_max.load(Ordering::Relaxed)));
        fill(&mut report, wanted);
        true
    }

    /// A copy of pipeline `index`'s last report.
    pub fn report(&self, index: usize) -> CoreReport {
        self.slots.get(index).map(|s| s.report.lock().unwrap_or_else(|e| e.into_inner()).clone()).unwrap_or_default()
    }

    /// Ask every pipeline for a listing of at most `max` connections and wait up to `limit`
    /// for the pipelines other than `except` (the caller's) to answer. Returns their reports;
    /// a pipeline that did not answer in time is given with its older listing.
    pub fn request_connections(&self, max: usize, except: usize, limit: Duration) -> Vec<(usize, CoreReport)> {
        self.conns_max.store(max, Ordering::Relaxed);
        let request = self.conns_request.fetch_add(1, Ordering::AcqRel) + 1;
        let deadline = Instant::now() + limit;
        loop {
            let reports: Vec<(usize, CoreReport)> =
                (0..self.slots.len()).filter(|&i| i != except).map(|i| (i, self.report(i))).collect();
            if reports.iter().all(|(_, r)| r.conns_answered >= request) || Instant::now() >= deadline {
                return reports;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Every pipeline leaves its loop at its next publication.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_core_takes_a_published_certificate_once_and_never_waits_for_it() {
        let board = Board::new(&[0, 1]);
        let (mut seen_a, mut seen_b) = (0, 0);
        assert!(board.tls.update(&mut seen_a).is_none(), "nothing published");
        let (first, _) = crate::loopback::test_tls_configs().unwrap();
        let (second, _) = crate::loopback::test_tls_configs().unwrap();
        board.tls.publish(first.clone(), 443);
        board.tls.publish(second.clone(), 8443);
        // A core that missed the first publication takes only the newest.
        let (got, port) = board.tls.update(&mut seen_a).expect("published");
        assert!(std::sync::Arc::ptr_eq(&got, &second) && port == 8443);
        assert!(board.tls.update(&mut seen_a).is_none(), "once");
        // While the console holds the slot, a core goes on and asks again next time.
        let held = board.tls.config.lock().unwrap();
        assert!(board.tls.update(&mut seen_b).is_none());
        drop(held);
        assert!(board.tls.update(&mut seen_b).is_some_and(|(c, _)| std::sync::Arc::ptr_eq(&c, &second)));
    }

    #[test]
    fn a_listing_request_is_answered_once_by_each_other_pipeline() {
        let board = Board::new(&[2, 5]);
        assert_eq!((board.pipelines(), board.core_of(1)), (2, 5));
        // Nothing asked yet: publishing carries no listing request.
        assert!(board.publish(1, |r, wanted| {
            assert!(wanted.is_none());
            r.stats.http_requests = 3;
        }));
        std::thread::scope(|s| {
            s.spawn(|| {
                // The other pipeline keeps publishing until it has answered.
                let mut answered = false;
                while !answered {
                    board.publish(1, |r, wanted| {
                        if let Some((request, max)) = wanted {
                            assert_eq!(max, 7);
                            r.conns_total = 9;
                            r.conns_answered = request;
                            answered = true;
                        }
                    });
                    std::thread::sleep(Duration::from_micros(100));
                }
                // Answered: the same request is not asked again.
                board.publish(1, |_, wanted| assert!(wanted.is_none()));
            });
            let got = board.request_connections(7, 0, Duration::from_secs(10));
            assert_eq!(got.len(), 1);
            assert_eq!((got[0].0, got[0].1.conns_total, got[0].1.stats.http_requests), (1, 9, 3));
        });
    }

    #[test]
    fn a_pipeline_that_does_not_answer_does_not_hang_the_console() {
        let board = Board::new(&[0, 1]);
        let t = Instant::now();
        let got = board.request_connections(5, 0, Duration::from_millis(20));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(got[0].1.conns_answered, 0, "the old (empty) listing");
    }

    #[test]
    fn publishing_skips_a_turn_while_the_console_reads() {
        let board = Board::new(&[0]);
        let held = board.slots[0].report.lock().unwrap();
        assert!(!board.publish(0, |_, _| panic!("must not run")));
        drop(held);
        assert!(board.publish(0, |_, _| {}));
        assert!(!board.stopped() && !board.draining());
        board.drain();
        board.stop();
        assert!(board.stopped() && board.draining());
    }
}
