//! A simulated Ethernet link between two in-memory ports, on a virtual clock, for deterministic
//! tests and benchmarks. It owns the frames in flight, their buffer slabs, and the seeded
//! fault generator of each direction.
//!
//! Each direction is a FIFO wire: a frame is serialised at `rate_bps` behind the previous one,
//! then travels `delay` plus a uniform jitter in `[0, jitter]` (jitter never reorders: a frame
//! is never due before the one sent ahead of it). Faults, drawn from a per-direction
//! xoshiro256** generator seeded from `SimConfig::seed`, are applied in this order: tail drop
//! when `queue_frames` frames are already in flight, loss, corruption (one byte after the
//! Ethernet header flipped, so the receiver's checksums see it), duplication (a second copy
//! right behind), reordering (held back until the next frame of the direction has been queued,
//! then delivered right after it, or at most [`REORDER_MAX_HOLD`] past its own due time).
//!
//! A partition ([`SimNic::partition_until`]) cuts both directions for a while: frames sent
//! during it are lost, and so are frames that fall due during it. [`SimNic::reconfigure`]
//! changes a direction's fault rates mid-run (a test resolves ARP on a clean link first: ARP
//! has no checksum, so a corrupted reply would poison the cache, which an Ethernet FCS would
//! have prevented).
//!
//! Everything is single-threaded (`Rc<RefCell<..>>`): a test, both stacks and the link share
//! one [`SimClock`] and run in one loop. Buffers come from a slab per direction allocated at
//! [`pair`]; receiving hands out the very buffer the frame travelled in, and dropping it puts
//! it back, so the packet path does not allocate.
use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::time::Duration;

use super::frame_pool::{FramePool, PoolFrame};
use super::offload::{self, TcpTx, TxOffloads, MAX_TSO_PAYLOAD};
use super::{FrameBuf, LinkInfo, Nic, NicCounters, NicError};

const ETH_HLEN: usize = 14;
/// Longest a reordered frame waits for a later frame to overtake it, past its own due time.
pub const REORDER_MAX_HOLD: Duration = Duration::from_millis(1);
/// Largest frame of a direction with segmentation offload: headers and the largest payload.
const TSO_FRAME: usize = ETH_HLEN + 65535;
/// Slab buffers per direction beyond twice the queue: frames the receiver holds for a while.
pub const SLAB_SPARE_FRAMES: usize = 256;
/// MACs of the two endpoints (locally administered, unicast).
pub const SIM_MAC_A: [u8; 6] = [0x02, 0x53, 0x49, 0x4d, 0x00, 0x0a];
pub const SIM_MAC_B: [u8; 6] = [0x02, 0x53, 0x49, 0x4d, 0x00, 0x0b];

/// Virtual time in nanoseconds shared by the test, the stacks and the link. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct SimClock {
    ns: Rc<Cell<u64>>,
}

impl SimClock {
    /// A clock at time zero.
    pub fn new() -> SimClock {
        SimClock::default()
    }

    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.ns.get())
    }

    pub fn advance(&self, d: Duration) {
        self.ns.set(self.ns.get().saturating_add(duration_ns(d)));
    }

    /// Jumps to `t` (callers keep time monotonic; the link never sees it go backwards because
    /// frames already queued keep their due times).
    pub fn set(&self, t: Duration) {
        self.ns.set(duration_ns(t));
    }

    fn ns(&self) -> u64 {
        self.ns.get()
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One direction of the link.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Seed of this direction's fault generator.
    pub seed: u64,
    /// Probabilities in [0, 1], per frame.
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub corrupt: f64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly in [0, jitter] per frame.
    pub jitter: Duration,
    /// Serialisation rate in bits per second of frame bytes; None: infinitely fast.
    pub rate_bps: Option<u64>,
    /// Frames in flight (sent, not yet received) beyond which new frames are tail-dropped
    /// (or refused, with `backpressure`).
    pub queue_frames: usize,
    /// Model the sending port's transmit ring rather than a router's queue: with
    /// `queue_frames` in flight the port refuses a frame (its transmit call returns false,
    /// as a NIC's full ring does) instead of the link dropping it.
    pub backpressure: bool,
    /// Largest IP packet; frames up to mtu + 14 bytes pass.
    pub mtu: usize,
    /// The sending port offers TCP checksum and segmentation offload (frames of up to
    /// [`MAX_TSO_PAYLOAD`] payload bytes through [`Nic::tx_tcp`]), and the receiving one hands
    /// such a frame over whole, as a NIC with receive coalescing (LRO/GRO) would. Faults then
    /// apply to the whole frame. Slab buffers are 64 KiB each instead of one MTU.
    pub tso: bool,
    /// The receiving port verifies the IPv4 and TCP checksums of this direction's frames and
    /// hands each over with its verdicts ([`super::FrameBuf::rx_checksums`]), as a NIC's
    /// receive checksum offload does; the verifying is the device's work, timed as such.
    pub rx_checksum: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 0,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_bps: None,
            queue_frames: 1024,
            backpressure: false,
            mtu: 1500,
            tso: false,
            rx_checksum: false,
        }
    }
}

impl SimConfig {
    pub fn validate(&self) -> Result<(), NicError> {
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(NicError::Config(format!(
                    "sim link: {name} probability {p} is not in [0, 1]"
                )));
            }
        }
        if self.queue_frames == 0 || self.queue_frames > 1 << 20 {
            return Err(NicError::Config(format!(
                "sim link: queue_frames {} is not in 1..=1048576",
                self.queue_frames
            )));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(NicError::Config(format!(
                "sim link: mtu {} is not in 68..=65535",
                self.mtu
            )));
        }
        if self.rate_bps == Some(0) {
            return Err(NicError::Config(
                "sim link: rate_bps must be positive (None for unlimited)".into(),
            ));
        }
        Ok(())
    }
}

/// Fault counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimFaults {
    pub lost: u64,
    pub duplicated: u64,
    /// Frames delivered after a frame sent later than them.
    pub reordered: u64,
    pub corrupted: u64,
    pub queue_drops: u64,
    /// Frames lost to a partition (sent during it, or due during it).
    pub partitioned: u64,
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same sequence everywhere.
#[derive(Clone, Debug)]
struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut st = seed;
        Rng {
            s: [
                splitmix64(&mut st),
                splitmix64(&mut st),
                splitmix64(&mut st),
                splitmix64(&mut st),
            ],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// True with probability p (draws nothing when p is 0).
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)) < p
    }

    /// Uniform in [0, n].
    fn up_to(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * (u128::from(n) + 1)) >> 64) as u64
    }
}

/// A frame on the wire, ordered so that BinaryHeap pops the earliest (due, seq) first.
struct InFlight {
    due: u64,
    seq: u64,
    frame: PoolFrame,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// A frame held back for reordering.
struct Held {
    frame: InFlight,
    release_at: u64,
}

struct Direction {
    cfg: SimConfig,
    rng: Rng,
    slab: FramePool,
    wire: BinaryHeap<InFlight>,
    held: Option<Held>,
    next_seq: u64,
    /// Due time of the last frame queued in order: jitter never lets a frame pass it.
    last_due: u64,
    /// When the transmitter finishes serialising what it has been given.
    busy_until: u64,
    faults: SimFaults,
    /// Frames the slab had no buffer for: the receiver holds too many (its rx_dropped).
    no_buffer: u64,
    /// Virtual time (ns) until which the direction is cut.
    partitioned_until: u64,
}

impl Direction {
    fn new(cfg: SimConfig) -> Direction {
        let slab_frames = cfg.queue_frames * 2 + SLAB_SPARE_FRAMES;
        let buf_size = if cfg.tso { TSO_FRAME } else { cfg.mtu + ETH_HLEN }.div_ceil(64) * 64;
        Direction {
            rng: Rng::new(cfg.seed),
            slab: FramePool::new(slab_frames, buf_size),
            wire: BinaryHeap::with_capacity(cfg.queue_frames + 1),
            held: None,
            next_seq: 0,
            last_due: 0,
            busy_until: 0,
            faults: SimFaults::default(),
            no_buffer: 0,
            partitioned_until: 0,
            cfg,
        }
    }

    fn in_flight(&self) -> usize {
        self.wire.len() + usize::from(self.held.is_some())
    }

    /// Whether `queue_frames` frames are in flight at `now`.
    fn full(&mut self, now: u64) -> bool {
        self.settle(now);
        self.in_flight() >= self.cfg.queue_frames
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Whether the frame at the head of the wire has arrived by `now`.
    fn head_due(&self, now: u64) -> bool {
        self.wire.peek().is_some_and(|f| f.due <= now)
    }

    /// Whether a frame can be received at `now`: one on the wire, or a held one whose time
    /// came (`settle` puts it there).
    fn any_due(&self, now: u64) -> bool {
        self.head_due(now) || self.held.as_ref().is_some_and(|h| h.release_at <= now)
    }

    /// Releases a held frame whose waiting time ran out by `now`.
    fn settle(&mut self, now: u64) {
        if self.held.as_ref().is_some_and(|h| h.release_at <= now) {
            if let Some(mut held) = self.held.take() {
                held.frame.due = held.release_at;
                self.last_due = self.last_due.max(held.release_at);
                self.wire.push(held.frame);
            }
        }
    }

    /// Puts one frame on the wire, applying this direction's faults. With `tcp`, the port
    /// fills in the TCP checksum first (checksum offload).
    fn send(&mut self, now: u64, parts: &[&[u8]], len: usize, tcp: Option<TcpTx>) {
        if self.full(now) {
            self.faults.queue_drops += 1;
            return;
        }
        let start = now.max(self.busy_until);
        let serialise = self.cfg.rate_bps.map_or(0, |rate| {
            ((len as u128 * 8 * 1_000_000_000).div_ceil(u128::from(rate))) as u64
        });
        self.busy_until = start.saturating_add(serialise);
        if now < self.partitioned_until {
            self.faults.partitioned += 1;
            return;
        }
        if self.rng.chance(self.cfg.loss) {
            self.faults.lost += 1;
            return;
        }
        let jitter = self.rng.up_to(duration_ns(self.cfg.jitter));
        let due = self
            .busy_until
            .saturating_add(duration_ns(self.cfg.delay))
            .saturating_add(jitter)
            .max(self.last_due);

        let Some(mut frame) = self.slab.take() else {
            self.no_buffer += 1;
            return;
        };
        frame.fill_from(parts);
        if let Some(tcp) = tcp {
            offload::fill_tcp_checksum(frame.bytes_mut(), tcp);
        }
        if self.rng.chance(self.cfg.corrupt) {
            let body = frame.bytes_mut();
            let from = if body.len() > ETH_HLEN { ETH_HLEN } else { 0 };
            let at = from + self.rng.up_to((body.len() - from - 1) as u64) as usize;
            body[at] ^= 1 + self.rng.up_to(254) as u8;
            self.faults.corrupted += 1;
        }
        // The copy leaves right behind the original (or, if the original is held back, on time
        // ahead of it); both count against the queue.
        let copy = if self.rng.chance(self.cfg.duplicate) {
            self.copy_of(&frame)
        } else {
            None
        };
        // A frame that overtakes a held one is not itself held back.
        let hold = self.rng.chance(self.cfg.reorder) && self.held.is_none();

        let seq = self.seq();
        let original = InFlight { due, seq, frame };
        if hold {
            self.held = Some(Held {
                frame: original,
                release_at: due.saturating_add(duration_ns(REORDER_MAX_HOLD)),
            });
        } else {
            self.wire.push(original);
        }
        self.last_due = due;
        if let Some(copy) = copy {
            let seq = self.seq();
            self.wire.push(InFlight {
                due,
                seq,
                frame: copy,
            });
        }
        if !hold {
            if let Some(mut held) = self.held.take() {
                held.frame.due = held.frame.due.max(due);
                held.frame.seq = self.seq();
                self.last_due = held.frame.due;
                self.wire.push(held.frame);
                self.faults.reordered += 1;
            }
        }
    }

    /// A second buffer with the same bytes, if the queue and the slab have room.
    fn copy_of(&mut self, frame: &PoolFrame) -> Option<PoolFrame> {
        use super::FrameBuf;
        // The original is not queued yet: it needs room too.
        if self.in_flight() + 2 > self.cfg.queue_frames {
            self.faults.queue_drops += 1;
            return None;
        }
        let Some(mut copy) = self.slab.take() else {
            self.no_buffer += 1;
            return None;
        };
        copy.fill_from(&[frame.bytes()]);
        self.faults.duplicated += 1;
        Some(copy)
    }

    fn next_due(&self) -> Option<u64> {
        let wire = self.wire.peek().map(|f| f.due);
        let held = self.held.as_ref().map(|h| h.release_at);
        match (wire, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

struct Link {
    /// dirs[0]: A to B, dirs[1]: B to A.
    dirs: [Direction; 2],
}

/// One endpoint of a simulated link.
pub struct SimNic {
    link: Rc<RefCell<Link>>,
    /// 0 for A, 1 for B; this endpoint transmits on dirs[side].
    side: usize,
    clock: SimClock,
    mac: [u8; 6],
    counters: NicCounters,
    tx_since_flush: usize,
    /// With [`SimNic::time_device`]: nanoseconds of real time spent in this port's emulation
    /// of the device (copying frames onto the wire, offloaded checksums, handing frames over).
    device_ns: Option<u64>,
    /// Hand over the port's checksum verdicts (when the direction's config verifies them).
    rx_verdicts: bool,
}

impl std::fmt::Debug for SimNic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNic")
            .field("side", &if self.side == 0 { "A" } else { "B" })
            .field("mac", &self.mac)
            .finish()
    }
}

/// Builds a link: endpoint A sends with `cfg_a_to_b`, endpoint B with `cfg_b_to_a`.
pub fn try_pair(
    cfg_a_to_b: SimConfig,
    cfg_b_to_a: SimConfig,
    clock: SimClock,
) -> Result<(SimNic, SimNic), NicError> {
    cfg_a_to_b.validate()?;
    cfg_b_to_a.validate()?;
    let link = Rc::new(RefCell::new(Link {
        dirs: [Direction::new(cfg_a_to_b), Direction::new(cfg_b_to_a)],
    }));
    let end = |side: usize, mac: [u8; 6]| SimNic {
        link: Rc::clone(&link),
        side,
        clock: clock.clone(),
        mac,
        counters: NicCounters::default(),
        tx_since_flush: 0,
        device_ns: None,
        rx_verdicts: true,
    };
    Ok((end(0, SIM_MAC_A), end(1, SIM_MAC_B)))
}

/// [`try_pair`] for configurations written in code.
///
/// # Panics
/// If a configuration is invalid (probability outside [0, 1], zero queue, MTU out of range).
pub fn pair(cfg_a_to_b: SimConfig, cfg_b_to_a: SimConfig, clock: SimClock) -> (SimNic, SimNic) {
    match try_pair(cfg_a_to_b, cfg_b_to_a, clock) {
        Ok(pair) => pair,
        Err(e) => panic!("{e}"),
    }
}

/// The same configuration both ways; B to A uses a seed derived from `cfg.seed` so the two
/// directions' faults are independent.
pub fn pair_symmetric(cfg: SimConfig, clock: SimClock) -> (SimNic, SimNic) {
    let mut seed = cfg.seed;
    let back = SimConfig {
        seed: splitmix64(&mut seed),
        ..cfg.clone()
    };
    pair(cfg, back, clock)
}

impl SimNic {
    /// Faults applied to the frames this endpoint sent (its outbound direction).
    pub fn fault_counters(&self) -> SimFaults {
        self.link.borrow().dirs[self.side].faults
    }

    /// When the next frame toward this endpoint becomes receivable (None: nothing in flight).
    pub fn next_due(&self) -> Option<Duration> {
        self.link.borrow().dirs[1 - self.side]
            .next_due()
            .map(Duration::from_nanos)
    }

    /// Frames on their way to this endpoint, due or not.
    pub fn inbound_in_flight(&self) -> usize {
        self.link.borrow().dirs[1 - self.side].in_flight()
    }

    /// The slab that carries frames toward this endpoint (for checking that buffers recycle).
    pub fn inbound_slab(&self) -> FramePool {
        self.link.borrow().dirs[1 - self.side].slab.clone()
    }

    pub fn clock(&self) -> &SimClock {
        &self.clock
    }

    /// Cuts the link both ways until virtual time `until`: frames sent before then are lost,
    /// and frames in flight that fall due before then too. The link heals by itself.
    pub fn partition_until(&self, until: Duration) {
        let mut link = self.link.borrow_mut();
        for dir in &mut link.dirs {
            dir.partitioned_until = dir.partitioned_until.max(duration_ns(until));
        }
    }

    /// Whether the link is cut at the current virtual time.
    pub fn is_partitioned(&self) -> bool {
        let now = self.clock.ns();
        self.link.borrow().dirs.iter().any(|d| now < d.partitioned_until)
    }

    /// Replaces this endpoint's outbound fault rates, delays and limits. The fault generator
    /// keeps its state (`cfg.seed` is ignored), so a run stays a function of the first seed;
    /// the MTU cannot change (the slab is sized for it).
    pub fn reconfigure(&self, cfg: SimConfig) -> Result<(), NicError> {
        cfg.validate()?;
        let mut link = self.link.borrow_mut();
        let dir = &mut link.dirs[self.side];
        if cfg.mtu != dir.cfg.mtu {
            return Err(NicError::Config("sim link: the MTU cannot change".into()));
        }
        dir.cfg = SimConfig { seed: dir.cfg.seed, ..cfg };
        Ok(())
    }

    /// This endpoint's outbound configuration.
    pub fn outbound_config(&self) -> SimConfig {
        self.link.borrow().dirs[self.side].cfg.clone()
    }
}

impl SimNic {
    /// Measure the real time this port spends emulating the device from now on (see
    /// [`SimNic::device_ns`]); benchmarks use it to tell the server's own work from the
    /// link's, which on hardware the NIC's DMA engines do.
    pub fn time_device(&mut self) {
        crate::cycles::init();
        self.device_ns.get_or_insert(0);
    }

    /// Nanoseconds spent in device emulation since [`SimNic::time_device`] (0 before).
    pub fn device_ns(&self) -> u64 {
        self.device_ns.unwrap_or(0)
    }

    fn device<T>(&mut self, work: impl FnOnce(&mut SimNic) -> T) -> T {
        if self.device_ns.is_none() {
            return work(self);
        }
        let t0 = crate::cycles::now();
        let r = work(self);
        let ns = crate::cycles::ns_since(t0);
        if let Some(d) = &mut self.device_ns {
            *d += ns;
        }
        r
    }

    /// Whether a frame is due for this side (one on the wire, or one held back by reordering
    /// whose time has come).
    fn rx_due(&self) -> bool {
        let now = self.clock.ns();
        let link = self.link.borrow();
        link.dirs[1 - self.side].any_due(now)
    }

    fn rx_frames(&mut self, out: &mut Vec<PoolFrame>, max: usize) -> usize {
        let now = self.clock.ns();
        let mut link = self.link.borrow_mut();
        let dir = &mut link.dirs[1 - self.side];
        dir.settle(now);
        let mut got = 0;
        while got < max && dir.head_due(now) {
            let Some(f) = dir.wire.pop() else { break };
            if f.due < dir.partitioned_until {
                dir.faults.partitioned += 1;
                continue;
            }
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += f.frame.len() as u64;
            let mut frame = f.frame;
            if dir.cfg.rx_checksum && self.rx_verdicts {
                frame.set_rx_checksums(super::checksum::verify_ipv4_tcp(frame.bytes()));
            }
            out.push(frame);
            got += 1;
        }
        got
    }

    /// One frame onto the wire: a plain one up to the MTU, or (`tcp`, on a direction with
    /// offloads) a TCP frame of up to [`MAX_TSO_PAYLOAD`] payload bytes, checksummed here.
    fn transmit(&mut self, parts: &[&[u8]], tcp: Option<TcpTx>) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut link = self.link.borrow_mut();
        let dir = &mut link.dirs[self.side];
        let max = match tcp {
            Some(t) => t.l4_offset + t.l4_len + MAX_TSO_PAYLOAD,
            None => dir.cfg.mtu + ETH_HLEN,
        };
        if !(ETH_HLEN..=max).contains(&len) {
            self.counters.tx_errors += 1;
            log::debug!("sim: dropped a {len}-byte frame (mtu {})", dir.cfg.mtu);
            return true; // never sendable: dropped, not retried
        }
        let now = self.clock.ns();
        if dir.cfg.backpressure && dir.full(now) {
            // Not counted as dropped: the frame is still the caller's to send again.
            return false;
        }
        dir.send(now, parts, len, tcp);
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += len as u64;
        self.tx_since_flush += 1;
        true
    }
}

impl Nic for SimNic {
    type Rx = PoolFrame;

    fn rx_burst(&mut self, out: &mut Vec<PoolFrame>, max: usize) -> usize {
        // An empty ring is the poll-mode driver's cost, not the device's: looking costs a few
        // nanoseconds, timing the look (two clock reads) would cost more than it.
        if !self.rx_due() {
            return 0;
        }
        self.device(|nic| nic.rx_frames(out, max))
    }

    fn tx_gather(&mut self, parts: &[&[u8]]) -> bool {
        self.device(|nic| nic.transmit(parts, None))
    }

    fn tx_tcp(&mut self, parts: &[&[u8]], tcp: TcpTx) -> bool {
        if self.link.borrow().dirs[self.side].cfg.tso {
            self.device(|nic| nic.transmit(parts, Some(tcp)))
        } else {
            offload::segment(parts, tcp, |frame| self.tx_gather(&[frame]))
        }
    }

    fn tx_flush(&mut self) -> usize {
        std::mem::take(&mut self.tx_since_flush)
    }

    /// Virtual time: the test advances the clock, so there is nothing to wait for.
    fn wait_rx(&mut self, _timeout: Duration) {}

    fn set_rx_checksum_offload(&mut self, on: bool) {
        self.rx_verdicts = on;
    }

    fn link(&self) -> LinkInfo {
        let (mtu, tso) = {
            let link = self.link.borrow();
            (link.dirs[self.side].cfg.mtu, link.dirs[self.side].cfg.tso)
        };
        LinkInfo {
            mac: self.mac,
            mtu,
            up: true,
            driver: "sim".to_owned(),
            offloads: if tso { TxOffloads { tcp_checksum: true, tso_max_payload: MAX_TSO_PAYLOAD } } else { TxOffloads::default() },
        }
    }

    fn counters(&self) -> NicCounters {
        let mut c = self.counters;
        c.rx_dropped = self.link.borrow().dirs[1 - self.side].no_buffer;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nic::FrameBuf;

    const US: Duration = Duration::from_micros(1);

    /// A 30-byte frame carrying `id` and a hash of it, so corruption is detectable.
    fn frame_for(id: u64) -> [u8; 30] {
        let mut f = [0u8; 30];
        f[..6].copy_from_slice(&SIM_MAC_B);
        f[6..12].copy_from_slice(&SIM_MAC_A);
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
        f[14..22].copy_from_slice(&id.to_be_bytes());
        let mut st = id;
        f[22..30].copy_from_slice(&splitmix64(&mut st).to_be_bytes());
        f
    }

    /// The id of an intact frame, None for a corrupted one.
    fn id_of(f: &[u8]) -> Option<u64> {
        let id = u64::from_be_bytes(f[14..22].try_into().ok()?);
        let mut st = id;
        (f.len() == 30
            && f[..14] == frame_for(id)[..14]
            && f[22..30] == splitmix64(&mut st).to_be_bytes())
        .then_some(id)
    }

    /// Sends `n` frames 1 µs apart in rounds, receives everything, returns the delivered bytes.
    fn run(cfg: SimConfig, n: u64) -> (Vec<[u8; 30]>, SimFaults, NicCounters) {
        let clock = SimClock::new();
        let (mut a, mut b) = pair(cfg, SimConfig::default(), clock.clone());
        let mut out = Vec::with_capacity(4096);
        let mut got = Vec::new();
        let mut id = 0;
        while id < n {
            for _ in 0..1000.min(n - id) {
                assert!(a.tx_gather(&[&frame_for(id)[..14], &frame_for(id)[14..]]));
                id += 1;
                clock.advance(US);
            }
            a.tx_flush();
            while let Some(due) = b.next_due() {
                clock.set(clock.now().max(due));
                b.rx_burst(&mut out, 64);
                got.extend(
                    out.drain(..)
                        .map(|f| <[u8; 30]>::try_from(f.bytes()).unwrap()),
                );
            }
        }
        (got, a.fault_counters(), b.counters())
    }

    fn faulty(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            loss: 0.1,
            duplicate: 0.05,
            reorder: 0.05,
            corrupt: 0.02,
            delay: Duration::from_millis(5),
            jitter: Duration::from_micros(300),
            rate_bps: Some(1_000_000_000),
            queue_frames: 2048,
            ..SimConfig::default()
        }
    }

    #[test]
    fn same_seed_same_delivered_sequence() {
        let (first, f1, _) = run(faulty(7), 20_000);
        let (second, f2, _) = run(faulty(7), 20_000);
        assert_eq!(f1, f2);
        assert!(
            first == second,
            "same seed must deliver the same frames in the same order"
        );
        let (other, _, _) = run(faulty(8), 20_000);
        assert!(first != other, "another seed gives another fault sequence");
    }

    #[test]
    fn fault_rates_match_configuration_over_100k_frames() {
        let n = 100_000u64;
        let cfg = faulty(42);
        let (got, faults, rx) = run(cfg.clone(), n);
        let near = |what: &str, count: u64, base: u64, p: f64| {
            let rate = count as f64 / base as f64;
            assert!(
                (rate - p).abs() < p * 0.1,
                "{what}: {count} of {base} = {rate:.4}, configured {p}"
            );
        };
        eprintln!("{n} frames sent: {faults:?}");
        assert_eq!(faults.queue_drops, 0);
        near("loss", faults.lost, n, cfg.loss);
        let sent = n - faults.lost;
        near("corrupt", faults.corrupted, sent, cfg.corrupt);
        near("duplicate", faults.duplicated, sent, cfg.duplicate);
        // A frame overtaking a held one is not held itself: p / (1 + p) of frames get reordered.
        near(
            "reorder",
            faults.reordered,
            sent,
            cfg.reorder / (1.0 + cfg.reorder),
        );

        // What the receiver sees agrees with the counters.
        assert_eq!(got.len() as u64, sent + faults.duplicated);
        assert_eq!(rx.rx_packets, got.len() as u64);
        let corrupt_seen = got.iter().filter(|f| id_of(&f[..]).is_none()).count() as u64;
        assert!(
            corrupt_seen >= faults.corrupted && corrupt_seen <= faults.corrupted * 2,
            "{corrupt_seen} vs {faults:?}"
        );
        let mut seen = vec![0u8; n as usize];
        let (mut max_id, mut late, mut dups) = (None, 0u64, 0u64);
        for id in got.iter().filter_map(|f| id_of(&f[..])) {
            seen[id as usize] += 1;
            if seen[id as usize] > 1 {
                dups += 1;
            } else if max_id.is_some_and(|m| id < m) {
                late += 1;
            }
            max_id = max_id.max(Some(id));
        }
        let missing = seen.iter().filter(|&&c| c == 0).count() as u64;
        eprintln!("receiver: {} frames, {corrupt_seen} corrupt, {missing} missing, {dups} duplicates, {late} late", got.len());
        assert!(
            missing >= faults.lost && missing <= faults.lost + faults.corrupted,
            "missing {missing}, {faults:?}"
        );
        assert!(
            dups <= faults.duplicated && dups * 10 >= faults.duplicated * 9,
            "dups {dups}, {faults:?}"
        );
        assert!(
            late <= faults.reordered && late * 10 >= faults.reordered * 8,
            "late {late}, {faults:?}"
        );
    }

    #[test]
    fn delay_and_serialisation_follow_the_virtual_clock() {
        let clock = SimClock::new();
        let cfg = SimConfig {
            delay: Duration::from_millis(10),
            rate_bps: Some(8_000_000),
            ..SimConfig::default()
        };
        let (mut a, mut b) = pair(cfg, SimConfig::default(), clock.clone());
        let mut out = Vec::with_capacity(8);
        let frame = [0x5au8; 1000];
        assert!(a.tx_gather(&[&frame]));
        assert!(a.tx_gather(&[&frame]));
        assert_eq!(a.tx_flush(), 2);
        // 1000 bytes at 8 Mbit/s take 1 ms each, then 10 ms on the wire.
        assert_eq!(b.next_due(), Some(Duration::from_millis(11)));
        clock.set(Duration::from_millis(11) - Duration::from_nanos(1));
        assert_eq!(b.rx_burst(&mut out, 8), 0);
        clock.set(Duration::from_millis(11));
        assert_eq!(b.rx_burst(&mut out, 8), 1);
        assert_eq!(b.next_due(), Some(Duration::from_millis(12)));
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.rx_burst(&mut out, 8), 1);
        assert_eq!(b.next_due(), None);
        assert!(out.iter().all(|f| f.bytes() == frame));
        // Nothing went the other way.
        assert_eq!(a.rx_burst(&mut out, 8), 0);
        assert_eq!(a.next_due(), None);
    }

    #[test]
    fn jitter_stays_in_bounds_and_keeps_order() {
        let clock = SimClock::new();
        let cfg = SimConfig {
            seed: 3,
            delay: Duration::from_millis(1),
            jitter: Duration::from_micros(500),
            ..SimConfig::default()
        };
        let (mut a, mut b) = pair(cfg, SimConfig::default(), clock.clone());
        let mut out = Vec::with_capacity(8);
        let mut last = 0;
        for id in 0..500u64 {
            let sent_at = clock.now();
            assert!(a.tx_gather(&[&frame_for(id)]));
            let due = b.next_due().unwrap();
            assert!(
                due >= sent_at + Duration::from_millis(1)
                    && due <= sent_at + Duration::from_micros(1500),
                "{due:?}"
            );
            clock.set(due);
            assert_eq!(b.rx_burst(&mut out, 8), 1);
            let got = id_of(out.pop().unwrap().bytes()).unwrap();
            assert!(got >= last);
            last = got;
        }
    }

    #[test]
    fn queue_limit_tail_drops_and_counts() {
        let clock = SimClock::new();
        let cfg = SimConfig {
            delay: Duration::from_millis(1),
            queue_frames: 8,
            ..SimConfig::default()
        };
        let (mut a, mut b) = pair(cfg, SimConfig::default(), clock.clone());
        for id in 0..20 {
            assert!(
                a.tx_gather(&[&frame_for(id)]),
                "the port sends; the link drops"
            );
        }
        assert_eq!(a.fault_counters().queue_drops, 12);
        assert_eq!(b.inbound_in_flight(), 8);
        assert_eq!(a.counters().tx_packets, 20);
        clock.advance(Duration::from_millis(1));
        let mut out = Vec::with_capacity(32);
        assert_eq!(b.rx_burst(&mut out, 32), 8);
        let ids: Vec<u64> = out.iter().map(|f| id_of(f.bytes()).unwrap()).collect();
        assert_eq!(
            ids,
            (0..8).collect::<Vec<_>>(),
            "the tail is dropped, not the head"
        );
        // Received frames leave the queue: there is room again.
        assert!(a.tx_gather(&[&frame_for(99)]));
        assert_eq!(a.fault_counters().queue_drops, 12);
    }

    #[test]
    fn buffers_are_recycled_and_the_slab_never_grows() {
        let clock = SimClock::new();
        let cfg = SimConfig {
            queue_frames: 16,
            duplicate: 0.3,
            seed: 1,
            ..SimConfig::default()
        };
        let (mut a, mut b) = pair(cfg, SimConfig::default(), clock.clone());
        let slab = b.inbound_slab();
        let total = slab.capacity();
        assert_eq!(total, 16 * 2 + SLAB_SPARE_FRAMES);
        let mut out = Vec::with_capacity(64);
        for id in 0..50_000 {
            assert!(a.tx_gather(&[&frame_for(id)]));
            b.rx_burst(&mut out, 64);
            if out.len() >= 32 {
                out.clear();
            }
            assert_eq!(slab.capacity(), total);
        }
        out.clear();
        b.rx_burst(&mut out, 64);
        out.clear();
        assert_eq!(slab.available(), total, "every buffer came back");

        // A receiver that hoards frames runs the slab dry: frames are dropped and counted, the
        // slab does not grow.
        let mut hoard = Vec::with_capacity(total + 64);
        for id in 0..(total as u64 + 50) {
            a.tx_gather(&[&frame_for(id)]);
            b.rx_burst(&mut hoard, 64);
        }
        assert_eq!(hoard.len(), total);
        assert_eq!(slab.available(), 0);
        assert!(b.counters().rx_dropped > 0);
        drop(hoard);
        assert_eq!(slab.available(), total);
    }

    /// A TCP/IPv4 frame from A to B with both checksums right.
    fn tcp_frame(payload_len: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + payload_len];
        f[..6].copy_from_slice(&SIM_MAC_B);
        f[6..12].copy_from_slice(&SIM_MAC_A);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((40 + payload_len) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..34].copy_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1]);
        let ip_sum = super::super::checksum::finish(super::super::checksum::accumulate(0, &f[14..34]));
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        f[46] = 5 << 4;
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = (i * 13 + 1) as u8;
        }
        assert!(offload::fill_tcp_checksum(&mut f, TcpTx { l4_offset: 34, l4_len: 20, mss: 1460 }));
        f
    }

    /// With receive offload on, the port passes every intact frame and no corrupted one (one
    /// byte flipped after the Ethernet header breaks the IPv4 header's checksum or the TCP
    /// one; a flip that leaves the lengths or the version unreadable leaves the frame
    /// unchecked, for the stack to refuse); without it, no verdict is given.
    #[test]
    fn receive_offload_verdicts_never_pass_a_corrupted_frame() {
        use crate::nic::{RxChecksums, RxVerdict};
        let good = RxChecksums { ipv4: RxVerdict::Good, l4: RxVerdict::Good };
        // (corrupt, the link verifies, the receiving port hands the verdicts over)
        for (corrupt, rx_checksum, taken) in [(0.0, true, true), (1.0, true, true), (1.0, false, true), (0.0, true, false)] {
            let clock = SimClock::new();
            let cfg = SimConfig { seed: 11, corrupt, rx_checksum, ..SimConfig::default() };
            let (mut a, mut b) = pair(cfg, SimConfig::default(), clock.clone());
            b.set_rx_checksum_offload(taken);
            let rx_checksum = rx_checksum && taken;
            let mut out = Vec::new();
            let mut verdicts = Vec::new();
            for i in 0..500 {
                assert!(a.tx_gather(&[&tcp_frame(i % 97)]));
                clock.advance(US);
                b.rx_burst(&mut out, 64);
                verdicts.extend(out.drain(..).map(|f| f.rx_checksums()));
            }
            assert_eq!(verdicts.len(), 500);
            let bad = verdicts.iter().filter(|v| v.ipv4 == RxVerdict::Bad || v.l4 == RxVerdict::Bad).count();
            for v in &verdicts {
                match (corrupt > 0.0, rx_checksum) {
                    (false, true) => assert_eq!(*v, good),
                    (true, true) => assert_ne!(*v, good),
                    _ => assert_eq!(*v, RxChecksums::UNCHECKED),
                }
            }
            if corrupt > 0.0 && rx_checksum {
                assert!(bad > 450, "{bad} of 500 corrupted frames flagged bad");
            }
        }
    }

    #[test]
    fn corruption_flips_one_byte_after_the_ethernet_header() {
        let clock = SimClock::new();
        let cfg = SimConfig {
            corrupt: 1.0,
            seed: 9,
            ..SimConfig::default()
        };
        let (mut a, mut b) = pair(cfg, SimConfig::default(), clock.clone());
        let mut out = Vec::with_capacity(1);
        for id in 0..1000 {
            let sent = frame_for(id);
            a.tx_gather(&[&sent]);
            assert_eq!(b.rx_burst(&mut out, 1), 1);
            let got = out.pop().unwrap();
            let diff: Vec<usize> = (0..30).filter(|&i| got.bytes()[i] != sent[i]).collect();
            assert_eq!(diff.len(), 1);
            assert!(diff[0] >= 14);
        }
        assert_eq!(a.fault_counters().corrupted, 1000);
    }

    #[test]
    fn reordered_frame_is_released_by_timeout_without_traffic() {
        let clock = SimClock::new();
        let cfg = SimConfig {
            reorder: 1.0,
            ..SimConfig::default()
        };
        let (mut a, mut b) = pair(cfg, SimConfig::default(), clock.clone());
        let mut out = Vec::with_capacity(4);
        a.tx_gather(&[&frame_for(0)]);
        assert_eq!(b.rx_burst(&mut out, 4), 0, "held back");
        assert_eq!(b.next_due(), Some(REORDER_MAX_HOLD));
        clock.set(REORDER_MAX_HOLD);
        assert_eq!(b.rx_burst(&mut out, 4), 1);
        assert_eq!(a.fault_counters().reordered, 0, "nothing overtook it");
        // Next: frame 1 held, frame 2 overtakes it (and is not held itself).
        a.tx_gather(&[&frame_for(1)]);
        a.tx_gather(&[&frame_for(2)]);
        assert_eq!(b.rx_burst(&mut out, 4), 2);
        let ids: Vec<u64> = out.iter().map(|f| id_of(f.bytes()).unwrap()).collect();
        assert_eq!(ids, [0, 2, 1]);
        assert_eq!(a.fault_counters().reordered, 1);
    }

    #[test]
    fn bad_frames_and_configs_are_refused() {
        let (mut a, _b) = pair(SimConfig::default(), SimConfig::default(), SimClock::new());
        // Never sendable: dropped and counted, not refused (a refusal means "ring full, retry").
        assert!(a.tx_gather(&[&[0u8; 13]]));
        assert!(a.tx_gather(&[&[0u8; 1500], &[0u8; 15]]));
        assert!(a.tx_gather(&[&[0u8; 1500], &[0u8; 14]]));
        assert_eq!(a.counters().tx_errors, 2);
        assert_eq!(a.counters().tx_packets, 1);
        for bad in [
            SimConfig {
                loss: 1.5,
                ..SimConfig::default()
            },
            SimConfig {
                corrupt: f64::NAN,
                ..SimConfig::default()
            },
            SimConfig {
                queue_frames: 0,
                ..SimConfig::default()
            },
            SimConfig {
                mtu: 10,
                ..SimConfig::default()
            },
            SimConfig {
                rate_bps: Some(0),
                ..SimConfig::default()
            },
        ] {
            assert!(matches!(
                try_pair(bad, SimConfig::default(), SimClock::new()),
                Err(NicError::Config(_))
            ));
        }
    }

    #[test]
    fn partition_drops_both_ways_then_heals() {
        let clock = SimClock::new();
        let cfg = SimConfig {
            delay: Duration::from_millis(2),
            ..SimConfig::default()
        };
        let (mut a, mut b) = pair(cfg.clone(), cfg, clock.clone());
        let mut out = Vec::with_capacity(8);
        // In flight when the cut comes, due during it: lost.
        assert!(a.tx_gather(&[&frame_for(0)]));
        clock.set(Duration::from_millis(1));
        b.partition_until(Duration::from_millis(10));
        assert!(a.is_partitioned() && b.is_partitioned());
        assert!(a.tx_gather(&[&frame_for(1)]));
        assert!(b.tx_gather(&[&frame_for(2)]));
        clock.set(Duration::from_millis(10));
        assert!(!a.is_partitioned());
        assert_eq!(b.rx_burst(&mut out, 8) + a.rx_burst(&mut out, 8), 0);
        assert_eq!(a.fault_counters().partitioned, 2);
        assert_eq!(b.fault_counters().partitioned, 1);
        // Healed: frames pass again.
        assert!(a.tx_gather(&[&frame_for(3)]));
        clock.advance(Duration::from_millis(2));
        assert_eq!(b.rx_burst(&mut out, 8), 1);
        assert_eq!(id_of(out[0].bytes()), Some(3));
    }

    #[test]
    fn reconfigure_changes_rates_not_the_mtu() {
        let clock = SimClock::new();
        let (mut a, mut b) = pair(SimConfig::default(), SimConfig::default(), clock.clone());
        let mut out = Vec::with_capacity(8);
        assert!(a.tx_gather(&[&frame_for(0)]));
        assert_eq!(b.rx_burst(&mut out, 8), 1);
        a.reconfigure(SimConfig {
            loss: 1.0,
            ..SimConfig::default()
        })
        .unwrap();
        assert!(a.tx_gather(&[&frame_for(1)]));
        assert_eq!(b.rx_burst(&mut out, 8), 0);
        assert_eq!(a.fault_counters().lost, 1);
        assert!(a
            .reconfigure(SimConfig {
                mtu: 9000,
                ..SimConfig::default()
            })
            .is_err());
        assert!(a
            .reconfigure(SimConfig {
                loss: 2.0,
                ..SimConfig::default()
            })
            .is_err());
    }

    #[test]
    fn link_info_and_symmetric_pair() {
        let (a, b) = pair_symmetric(
            SimConfig {
                seed: 5,
                ..SimConfig::default()
            },
            SimClock::new(),
        );
        let (la, lb) = (a.link(), b.link());
        assert_eq!(la.driver, "sim");
        assert_eq!(la.mtu, 1500);
        assert_ne!(la.mac, lb.mac);
        assert_eq!(la.mac[0] & 0x03, 0x02);
        assert_eq!(lb.mac[0] & 0x03, 0x02);
        let link = a.link.borrow();
        assert_ne!(link.dirs[0].cfg.seed, link.dirs[1].cfg.seed);
    }
}
