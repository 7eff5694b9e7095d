//! One TCP connection as a sans-IO state machine: segments and `now` in, segments to send
//! out. Handshake (passive and active), MSS, window scaling, timestamps, SACK, RTO per
//! RFC 6298, fast retransmit with SACK-guided or NewReno recovery, FIN/RST, TIME-WAIT, and
//! the RFC 5961 checks against blind injection.
//!
//! The send side keeps stream offsets only: `snd_una..snd_nxt` is in flight, the payload is
//! asked of a [`DataSource`] each time a segment is built, including retransmissions.
use super::congestion::{Congestion, CongestionControl};
use super::pacing::{self, Pacer};
use super::seq;
use crate::net::headers::{flags, TcpFields, TcpOptions};
use crate::net::{Instant, MS, SEC};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    Closing,
    TimeWait,
    CloseWait,
    LastAck,
    Closed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::SynSent => "SYN-SENT",
            State::SynReceived => "SYN-RECEIVED",
            State::Established => "ESTABLISHED",
            State::FinWait1 => "FIN-WAIT-1",
            State::FinWait2 => "FIN-WAIT-2",
            State::Closing => "CLOSING",
            State::TimeWait => "TIME-WAIT",
            State::CloseWait => "CLOSE-WAIT",
            State::LastAck => "LAST-ACK",
            State::Closed => "CLOSED",
        }
    }

    /// States in which we may still send stream data.
    fn can_send_data(self) -> bool {
        matches!(self, State::Established | State::CloseWait)
    }

    /// States in which the peer may still send us stream data.
    fn can_receive_data(self) -> bool {
        matches!(self, State::Established | State::FinWait1 | State::FinWait2)
    }
}

/// Tunables, shared by every connection of a core.
#[derive(Clone, Debug)]
pub struct Config {
    /// MSS we announce (link MTU - 40).
    pub mss: u16,
    /// Receive window before the application says how much room it has (and the window in
    /// SYNs, which are never scaled).
    pub max_rcv_wnd: u16,
    /// Window scale we announce (RFC 7323), so that our receive window may exceed 64 KiB.
    /// 0 for the appliance, which receives requests only; the in-process clients of the
    /// benchmark announce more, as real clients do, so that their windows do not cap what
    /// the server may have in flight.
    pub rcv_window_shift: u8,
    pub init_cwnd_segments: u32,
    pub init_rto: u64,
    pub min_rto: u64,
    pub max_rto: u64,
    /// Give up on a connection after this many consecutive retransmission timeouts (under
    /// 255: the count saturates there).
    pub max_retries: u32,
    pub max_syn_retries: u32,
    pub time_wait: u64,
    pub use_timestamps: bool,
    pub use_sack: bool,
    pub use_window_scale: bool,
    /// Largest payload of one segment handed to a port with segmentation offload (TSO), which
    /// cuts it into MSS-sized ones; 0: the port has none, every segment is one MSS at most.
    pub tso_max_payload: u32,
    /// How the congestion window grows and shrinks.
    pub congestion: CongestionControl,
    /// Spread new data over the round trip (see [`super::pacing`]) instead of sending what
    /// the windows allow at once; with offload, segments of about 1 ms of the pacing rate.
    /// Off by default: in `appliance bench` (one thread, no link latency, so the RTT is the
    /// loop's own batching) it cut 100-connection throughput per core by half to three
    /// quarters: segments of 2 MSS instead of 64 KiB, and an ACK for every few segments
    /// where a burst drew one.
    pub pacing: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mss: 1460,
            max_rcv_wnd: 65535,
            rcv_window_shift: 0,
            init_cwnd_segments: 10,
            init_rto: SEC,
            min_rto: 200 * MS,
            max_rto: 60 * SEC,
            max_retries: 12,
            max_syn_retries: 5,
            time_wait: 2 * SEC,
            use_timestamps: true,
            use_sack: true,
            use_window_scale: true,
            tso_max_payload: 0,
            congestion: CongestionControl::default(),
            pacing: false,
        }
    }
}

/// A received segment, already checked (checksum, lengths) by the wire layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SegmentIn<'a> {
    pub seq: u32,
    pub ack: Option<u32>,
    pub flags: u8,
    pub window: u16,
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub sack: [Option<(u32, u32)>; 3],
    pub timestamp: Option<(u32, u32)>,
    pub payload: &'a [u8],
}

impl SegmentIn<'_> {
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Sequence space the segment occupies.
    fn seq_len(&self) -> u32 {
        self.payload.len() as u32 + self.has(flags::SYN) as u32 + self.has(flags::FIN) as u32
    }
}

/// A segment to send: header fields plus the stream range of its payload, which the caller
/// gathers from the same [`DataSource`] it passed to [`TcpConn::poll_tx`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub fields: TcpFields,
    pub payload_off: u64,
    pub payload_len: usize,
    pub retransmit: bool,
}

/// Where the payload of outgoing segments comes from.
pub trait DataSource {
    /// How many bytes from stream offset `off` (at most `max`) can be gathered right now. Zero
    /// means "not yet" (a storage read is under way); the connection tries again later.
    /// `resend`: the bytes went out before (a retransmission), so what follows them may
    /// have arrived and need not be prepared ahead; or they are a zero-window probe's byte,
    /// and the peer has no room for what follows.
    fn available(&mut self, off: u64, max: usize, resend: bool) -> Ready;
}

/// What [`DataSource::available`] found at an offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Bytes that can be gathered now.
    pub len: usize,
    /// The bytes after them are being prepared (a storage read is under way) and the
    /// application wakes the connection once they are: a short tail may wait for them.
    pub more_soon: bool,
}

impl Ready {
    /// `len` bytes, and nothing after them on the way.
    pub fn now(len: usize) -> Ready {
        Ready { len, more_soon: false }
    }
}

/// An ACK owed to the peer, and whether it may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AckOwed {
    No,
    /// With the next segment, or alone now.
    Yes,
    /// For one in-order data segment: it may wait for the answer's bytes to carry it.
    ForData,
    /// Waiting for bytes being read (`poll_tx` found them so): their read wakes the
    /// connection ([`TcpConn::unblock`]) and the ACK goes with them. A request's ACK then
    /// rides on its response instead of going alone a moment before it.
    Waiting,
}

/// What one received segment did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxOutcome {
    /// In-order payload for the application: `payload[start..start + len]`.
    pub deliver: Option<(usize, usize)>,
    /// Stream bytes newly acknowledged (the application may release their buffers).
    pub acked: u64,
    /// The handshake completed with this segment.
    pub established: bool,
    /// The peer's FIN arrived with this segment.
    pub peer_fin: bool,
    /// The connection was reset by the peer.
    pub reset: bool,
    /// The segment was outside the window or otherwise unacceptable.
    pub rejected: bool,
    /// We owe the peer a challenge ACK (RFC 5961).
    pub challenge_ack: bool,
}

/// What a timer expiry did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerOutcome {
    /// A retransmission timeout fired: in-flight data will be sent again (and read again).
    pub rto: bool,
    /// The connection gave up (too many timeouts) or TIME-WAIT ended: remove it.
    pub closed: bool,
}

/// Per-connection counters, summed into the core's stats by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    pub segments_sent: u64,
    pub bytes_sent: u64,
    pub retransmits: u64,
    pub fast_retransmits: u64,
    pub rto_timeouts: u64,
    pub challenge_acks: u64,
    pub out_of_window: u64,
}

/// One connection's TCP state. `Clone` so that the stack can take back a segment the NIC's
/// ring refused (it restores the state from before [`TcpConn::poll_tx`]).
#[derive(Clone, Debug)]
pub struct TcpConn {
    pub state: State,
    // Send side, as offsets into our outgoing stream: seq(off) = iss + 1 + off.
    iss: u32,
    snd_una: u64,
    snd_nxt: u64,
    stream_len: u64,
    fin_at: Option<u64>,
    /// Our FIN took its sequence number (it stays taken even while it is resent).
    fin_sent: bool,
    /// A timeout asked for the FIN to be sent again.
    fin_rexmit: bool,
    /// The peer announced window scaling, so our SYN-ACK may too.
    ws_ok: bool,
    snd_wnd: u64,
    snd_wl1: u32,
    snd_wl2: u64,
    snd_shift: u8,
    mss: u32,
    /// Congestion window and slow-start threshold, and the algorithm that moves them.
    cc: Congestion,
    /// [`Config::pacing`] of the stack that made this connection.
    pacing: bool,
    /// When new data may go out next (while pacing).
    pacer: Pacer,
    dupacks: u16,
    /// In recovery until `snd_una` reaches this offset.
    recover: Option<u64>,
    rexmit_next: u64,
    rexmit_end: u64,
    sacked: [(u64, u64); 4],
    /// Blocks held in `sacked` (at most 4).
    sacked_n: u8,
    // RTT estimation (RFC 6298), nanoseconds.
    srtt: u64,
    rttvar: u64,
    rto: u64,
    /// [`Config::tso_max_payload`] of the stack that made this connection.
    tso_max: u32,
    /// The application had no bytes ready at the last try; cleared by [`TcpConn::unblock`].
    app_blocked: bool,
    /// Waiting for a read: `poll_tx` sent all it could of the bytes the application had
    /// ready (up to `snd_nxt`, which only moves by sending; a short tail may be held) while the
    /// application was reading what follows, and that read wakes the connection
    /// ([`TcpConn::unblock`]). Until then nothing more can go, and asking again (after each
    /// segment, and at each ACK) would walk the application's buffers for nothing.
    dry: bool,
    /// The segment timed for an RTT sample without timestamps: (stream offset that
    /// completes it, when it went). During the handshake: (copies of our SYN or SYN-ACK
    /// sent, when the last went).
    rtt_probe: Option<(u64, Instant)>,
    rto_deadline: Option<Instant>,
    retries: u8,
    // Receive side.
    irs: u32,
    rcv_nxt: u32,
    /// Receive window in bytes; announced shifted right by `rcv_shift`.
    rcv_wnd: u32,
    /// Our window scale once both sides agreed to scaling (0 before and without).
    rcv_shift: u8,
    /// The scale we offer in our SYN or SYN-ACK.
    offer_shift: u8,
    ts_ok: bool,
    ts_recent: u32,
    sack_ok: bool,
    ack: AckOwed,
    syn_pending: bool,
    rst_pending: bool,
    /// A retransmission timeout fired with the peer's window closed (see [`TcpConn::peer_stalled`])
    /// since the window was last open.
    probed: bool,
    time_wait_deadline: Option<Instant>,
    /// When the peer last moved the connection on (see [`TcpConn::note_acked_progress`]).
    last_progress: Instant,
    /// `snd_una` then (its low 32 bits: no ACK moves it further than that).
    progress_una: u32,
    pub counters: TcpCounters,
}

fn ts_now(now: Instant) -> u32 {
    (now / MS) as u32
}

/// The round trip an echoed timestamp `ecr` (our clock, in ms) gives at `now`; none from an
/// echo a minute or more old (a stale or wrapped stamp).
fn echo_rtt(now: Instant, ecr: u32) -> Option<u64> {
    Some(ts_now(now).wrapping_sub(ecr) as u64 * MS).filter(|&r| r < 60 * SEC)
}

impl TcpConn {
    fn blank(cfg: &Config, now: Instant, iss: u32) -> TcpConn {
        TcpConn {
            state: State::Closed,
            iss,
            snd_una: 0,
            snd_nxt: 0,
            stream_len: 0,
            fin_at: None,
            fin_sent: false,
            fin_rexmit: false,
            ws_ok: false,
            snd_wnd: 0,
            snd_wl1: 0,
            snd_wl2: 0,
            snd_shift: 0,
            mss: 536,
            cc: Congestion::new(cfg.congestion),
            pacing: cfg.pacing,
            pacer: Pacer::default(),
            dupacks: 0,
            recover: None,
            rexmit_next: 0,
            rexmit_end: 0,
            sacked: [(0, 0); 4],
            sacked_n: 0,
            srtt: 0,
            rttvar: 0,
            rto: cfg.init_rto,
            tso_max: cfg.tso_max_payload,
            app_blocked: false,
            dry: false,
            rtt_probe: None,
            rto_deadline: None,
            retries: 0,
            irs: 0,
            rcv_nxt: 0,
            rcv_wnd: u32::from(cfg.max_rcv_wnd),
            rcv_shift: 0,
            offer_shift: if cfg.use_window_scale { cfg.rcv_window_shift.min(14) } else { 0 },
            ts_ok: false,
            ts_recent: 0,
            sack_ok: false,
            ack: AckOwed::No,
            syn_pending: false,
            probed: false,
            rst_pending: false,
            time_wait_deadline: None,
            last_progress: now,
            progress_una: 0,
            counters: TcpCounters::default(),
        }
    }

    fn negotiate(&mut self, cfg: &Config, syn: &SegmentIn) {
        let peer_mss = syn.mss.unwrap_or(536) as u32;
        self.mss = peer_mss.min(cfg.mss as u32).max(64);
        if cfg.use_window_scale {
            // Scaling applies both ways only if both SYNs carried the option.
            self.snd_shift = syn.window_scale.unwrap_or(0).min(14);
            self.ws_ok = syn.window_scale.is_some();
            self.rcv_shift = if self.ws_ok { self.offer_shift } else { 0 };
        }
        self.sack_ok = cfg.use_sack && syn.sack_permitted;
        if cfg.use_timestamps {
            if let Some((val, _)) = syn.timestamp {
                self.ts_ok = true;
                self.ts_recent = val;
            }
        }
        self.cc.init(cfg.init_cwnd_segments as u64 * self.mss as u64);
    }

    /// A connection for a received SYN (passive open). It answers with a SYN-ACK.
    pub fn accept(cfg: &Config, now: Instant, syn: &SegmentIn, iss: u32) -> TcpConn {
        let mut c = TcpConn::blank(cfg, now, iss);
        c.state = State::SynReceived;
        c.irs = syn.seq;
        c.rcv_nxt = syn.seq.wrapping_add(1);
        c.negotiate(cfg, syn);
        // The SYN's window is never scaled.
        c.snd_wnd = syn.window as u64;
        c.snd_wl1 = syn.seq;
        c.syn_pending = true;
        c
    }

    /// A connection completed by a valid SYN cookie in `ack` (the third segment of the
    /// handshake); options the SYN carried were not kept, so none are in use but the MSS.
    pub fn accept_cookie(cfg: &Config, now: Instant, ack: &SegmentIn, iss: u32, mss: u16) -> TcpConn {
        let mut c = TcpConn::blank(cfg, now, iss);
        c.state = State::Established;
        c.irs = ack.seq.wrapping_sub(1);
        c.rcv_nxt = ack.seq;
        c.mss = (mss as u32).min(cfg.mss as u32);
        c.cc.init(cfg.init_cwnd_segments as u64 * c.mss as u64);
        c.snd_wnd = ack.window as u64;
        c.snd_wl1 = ack.seq;
        c
    }

    /// An active open: the connection sends a SYN.
    pub fn connect(cfg: &Config, now: Instant, iss: u32) -> TcpConn {
        let mut c = TcpConn::blank(cfg, now, iss);
        c.state = State::SynSent;
        c.mss = cfg.mss as u32;
        c.syn_pending = true;
        c.rto_deadline = Some(now + c.rto);
        c
    }

    fn seq_of(&self, off: u64) -> u32 {
        self.iss.wrapping_add(1).wrapping_add(off as u32)
    }

    /// Highest stream offset (exclusive) we have put in sequence space, counting our FIN.
    fn snd_max_off(&self) -> u64 {
        self.snd_nxt + (self.fin_sent as u64)
    }

    /// The application has `len` bytes of stream ready to be asked for (it only grows).
    pub fn set_stream_len(&mut self, len: u64) {
        debug_assert!(len >= self.stream_len && self.fin_at.is_none());
        self.stream_len = len;
        self.app_blocked = false;
        self.dry = false;
    }

    pub fn stream_len(&self) -> u64 {
        self.stream_len
    }

    /// Stream bytes acknowledged by the peer.
    pub fn acked_offset(&self) -> u64 {
        self.snd_una
    }

    /// Next new stream byte to send.
    pub fn sent_offset(&self) -> u64 {
        self.snd_nxt
    }

    /// The peer's window is closed and stayed closed through a retransmission timeout (a
    /// zero-window probe, or a resend of what was in flight, at least `min_rto` after it
    /// closed): a client that stopped reading, not one that paused for a moment. (While a
    /// probe is due the window reads 1.)
    /// Or its window is open but smaller than one segment: a receiver that takes a few bytes
    /// at a time (Linux announces a zero window rather than that), or a probe's window of 1.
    /// What such a peer is sent is read for it at each turn, not held between its ACKs.
    pub fn peer_stalled(&self) -> bool {
        let small = self.snd_wnd > 0 && self.window_under_a_segment();
        self.state.can_send_data() && ((self.snd_wnd == 0 && self.probed) || small)
    }

    /// The peer's window (a probe's 1 included) holds less than one segment: what it takes
    /// is asked for as a resend, with nothing read ahead.
    fn window_under_a_segment(&self) -> bool {
        self.snd_wnd < self.max_payload()
    }

    /// Send a FIN once the stream (as long as it is now) is all sent.
    pub fn close(&mut self) {
        if self.fin_at.is_none() {
            self.fin_at = Some(self.stream_len);
        }
    }

    /// Whether the application asked to close (our FIN is queued or sent).
    pub fn fin_queued(&self) -> bool {
        self.fin_at.is_some()
    }

    /// Abort: send a RST and forget the connection.
    pub fn abort(&mut self) {
        if !matches!(self.state, State::Closed | State::TimeWait | State::SynSent) {
            self.rst_pending = true;
        }
        self.state = State::Closed;
        // Nothing is left to time: a past deadline would make the connection due for ever.
        self.rto_deadline = None;
        self.time_wait_deadline = None;
    }

    /// The fields of a RST that ends this connection at once (for eviction: the caller
    /// sends it and forgets the connection).
    pub fn reset_fields(&self) -> TcpFields {
        TcpFields { seq: self.seq_of(self.reset_offset()), ack: self.rcv_nxt, flags: flags::RST | flags::ACK, window: 0, options: TcpOptions::default() }
    }

    /// Where a RST of ours goes in the sequence space: SND.NXT, unless that lies beyond the
    /// peer's window (a zero window it dropped our probe into), then the window's right edge.
    /// A peer checks RSTs as RFC 5961 says (exactly RCV.NXT, or else only a challenge ACK,
    /// which it may rate-limit): past a closed window the RST would never end its side.
    fn reset_offset(&self) -> u64 {
        self.snd_nxt.min(self.snd_una + self.snd_wnd)
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed && !self.rst_pending
    }

    /// When the peer last moved the connection on: the idle clock runs from here.
    pub fn last_progress(&self) -> Instant {
        self.last_progress
    }

    /// Restart the idle clock (e.g. after closing an idle connection, to give the close
    /// itself time before the connection is aborted).
    pub fn note_activity(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// Restart the idle clock if the peer has acknowledged a segment's worth of our stream
    /// since it last ran, or all of it. A segment that carries nothing new (a bare or
    /// duplicate ACK, a window update, a keep-alive) does not: else a peer that holds a zero
    /// window for ever, or takes one byte per zero-window probe, would hold the connection
    /// and its buffers for ever.
    fn note_acked_progress(&mut self, now: Instant) {
        let acked = (self.snd_una as u32).wrapping_sub(self.progress_una);
        if acked >= self.mss || (acked > 0 && self.snd_una >= self.stream_len) {
            self.last_progress = now;
            self.progress_una = self.snd_una as u32;
        }
    }

    /// The window we announce: the free room of the application's receive buffer (which
    /// shrinks only as bytes arrive, so the window's right edge never moves left).
    pub fn set_receive_window(&mut self, bytes: usize) {
        let w = bytes.min((u16::MAX as usize) << self.offer_shift) as u32;
        if w > self.rcv_wnd && self.rcv_wnd < self.mss {
            // The window re-opened from (nearly) zero: tell the peer at once.
            self.ack = AckOwed::Yes;
        }
        self.rcv_wnd = w;
    }

    /// Whether [`TcpConn::poll_tx`] has something to send at `now`: a control segment, a
    /// retransmission the congestion window allows, new data the windows and pacing allow
    /// (unless the application had none ready at the last try: see [`TcpConn::unblock`]), a
    /// FIN, or a zero-window probe timer to arm. A connection waiting on the peer's ACK, the
    /// windows, pacing or the application is not polled: the ACK, a timer
    /// ([`TcpConn::next_deadline`] includes the pacing time) or the application's wake-up
    /// brings it back. (Polling every connection with unsent data each round costs a pass
    /// over thousands of them.)
    pub fn wants_tx(&self, now: Instant) -> bool {
        if matches!(self.ack, AckOwed::Yes | AckOwed::ForData) || self.syn_pending || self.rst_pending {
            return true;
        }
        if !(self.state.can_send_data() || matches!(self.state, State::FinWait1 | State::Closing | State::LastAck)) {
            return false;
        }
        if self.fin_due() {
            return true;
        }
        if self.app_blocked {
            return false;
        }
        let rexmit = self.rexmit_next < self.rexmit_end && self.pipe() < self.cc.cwnd;
        let new_data = self.stream_len > self.snd_nxt
            && self.state.can_send_data()
            && ((!self.dry && self.new_data_len() > 0 && self.pace_ready(now)) || self.zero_window_probe_due());
        rexmit || new_data
    }

    /// An ACK released some of the application's buffers: what it could not prepare for want
    /// of them may be ready now. Not the new bytes it is reading (their read wakes the
    /// connection, and an ACK waiting for them keeps waiting); a retransmission may go.
    pub fn on_buffers_released(&mut self) {
        if self.dry {
            self.app_blocked = false;
        } else {
            self.unblock();
        }
    }

    /// The application has bytes ready again after [`TcpConn::poll_tx`] found none.
    pub fn unblock(&mut self) {
        self.app_blocked = false;
        self.dry = false;
        // The bytes an ACK waited for are ready: it goes with them, or alone if they cannot go.
        if self.ack == AckOwed::Waiting {
            self.ack = AckOwed::Yes;
        }
    }

    /// New bytes the windows allow in one segment now (0 while sender-side silly window
    /// avoidance holds a small segment back).
    fn new_data_len(&self) -> u64 {
        let pending = self.stream_len.saturating_sub(self.snd_nxt);
        let wnd_room = (self.snd_una + self.snd_wnd).saturating_sub(self.snd_nxt);
        let cwnd_room = self.cc.cwnd.saturating_sub(self.pipe());
        let (quantum, mss) = (self.send_quantum(), self.max_payload());
        let len = pending.min(quantum).min(wnd_room).min(cwnd_room);
        // Sender-side silly window avoidance: no small segment while more is coming and
        // something is in flight, unless the peer's whole window is that small.
        if len > 0 && len < mss && len < pending && self.snd_nxt > self.snd_una && len < self.snd_wnd / 2 {
            return 0;
        }
        // Segmentation offload deferral (as Linux's `tcp_tso_should_defer`): when a window,
        // not the data, cuts a frame to less than half the quantum and a full frame is in
        // flight, wait for its ACK to open the window instead of sending a runt. A 256 KiB
        // window held four 64 KiB frames and one of 1.5 KB: a fifth of the frames for 0.6%
        // of the bytes. The frame in flight is many segments, which receivers ACK at once.
        if quantum > mss && len < quantum / 2 && len < pending && self.snd_nxt - self.snd_una >= quantum {
            return 0;
        }
        len
    }

    /// A zero window with nothing in flight and no timer running: the probe timer must start.
    fn zero_window_probe_due(&self) -> bool {
        self.snd_wnd == 0 && self.snd_nxt == self.snd_una && self.rto_deadline.is_none()
    }

    fn fin_due(&self) -> bool {
        self.fin_at == Some(self.snd_nxt) && (!self.fin_sent || self.fin_rexmit)
    }

    /// The pacing rate in bytes per second; `None`: unpaced (pacing off, or no RTT sample).
    fn pacing_rate(&self) -> Option<u64> {
        if !self.pacing {
            return None;
        }
        pacing::rate(self.cc.cwnd, self.srtt, self.cc.in_slow_start())
    }

    /// Whether pacing lets new data go at `now`.
    fn pace_ready(&self, now: Instant) -> bool {
        self.pacer.ready(now) || self.pacing_rate().is_none()
    }

    /// When pacing next lets new data go, if only pacing holds it back (the windows allow
    /// it and the application has it): the caller's timer must bring the connection back.
    fn pacing_deadline(&self) -> Option<Instant> {
        let waiting = self.pacing
            && self.pacer.next() > 0
            && self.state.can_send_data()
            && !self.app_blocked
            && self.stream_len > self.snd_nxt
            && self.new_data_len() > 0;
        waiting.then(|| self.pacer.next())
    }

    /// The earliest time the connection has work without a segment arriving:
    /// [`TcpConn::on_timer`]'s (retransmission, TIME-WAIT) or pacing's (see
    /// [`TcpConn::wants_tx`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.rto_deadline, self.time_wait_deadline, self.pacing_deadline()].into_iter().flatten().min()
    }

    fn sacked_bytes(&self) -> u64 {
        if self.sack_ok {
            self.sacked[..usize::from(self.sacked_n)].iter().map(|&(l, r)| r - l).sum()
        } else {
            // Without SACK each duplicate ACK says one segment left the network (NewReno).
            (self.dupacks as u64 * self.mss as u64).min(self.snd_nxt - self.snd_una)
        }
    }

    fn is_sacked(&self, off: u64) -> Option<u64> {
        self.sacked[..usize::from(self.sacked_n)].iter().find(|&&(l, r)| l <= off && off < r).map(|&(_, r)| r)
    }

    /// Bytes of `[from, to)` not covered by SACK blocks.
    fn unsacked_in(&self, from: u64, to: u64) -> u64 {
        if from >= to {
            return 0;
        }
        let mut n = to - from;
        for &(l, r) in &self.sacked[..usize::from(self.sacked_n)] {
            let (l, r) = (l.max(from), r.min(to));
            if l < r {
                n -= r - l;
            }
        }
        n
    }

    /// Data in flight as RFC 6675 estimates it: sent, not SACKed, not presumed lost (bytes
    /// marked for retransmission and not yet resent are presumed lost).
    fn pipe(&self) -> u64 {
        let outstanding = self.snd_nxt - self.snd_una;
        let lost = self.unsacked_in(self.rexmit_next.max(self.snd_una), self.rexmit_end.min(self.snd_nxt));
        outstanding.saturating_sub(self.sacked_bytes() + lost)
    }

    /// Next hole to retransmit: (offset, max length).
    fn next_rexmit(&mut self) -> Option<(u64, u64)> {
        let mut p = self.rexmit_next.max(self.snd_una);
        while p < self.rexmit_end {
            match self.is_sacked(p) {
                Some(r) => p = r,
                None => {
                    let mut end = self.rexmit_end.min(p + self.max_payload());
                    for &(l, _) in &self.sacked[..usize::from(self.sacked_n)] {
                        if l > p && l < end {
                            end = l;
                        }
                    }
                    self.rexmit_next = p;
                    return Some((p, end - p));
                }
            }
        }
        self.rexmit_next = p;
        None
    }

    /// Payload bytes per full segment: the MSS less the options every segment carries.
    fn max_payload(&self) -> u64 {
        self.mss as u64 - if self.ts_ok { 12 } else { 0 }
    }

    /// Payload bytes of one wire segment (the MSS less the options every segment carries).
    pub fn wire_payload(&self) -> usize {
        self.max_payload() as usize
    }

    /// Of `got` new bytes ready where `asked` were, those to send now. While the rest is being
    /// prepared (it wakes the connection when it is), a short tail waits to go with it in a
    /// full segment, and a long one goes in whole MSS. A storage chunk with its TLS records is
    /// a little longer than one TSO segment holds: sending whatever was ready sent each chunk
    /// as a full segment and one of a few hundred bytes, twice the segments (and ACKs, and
    /// per-segment work, and on a TAP system calls) per byte. A long tail is not held: on
    /// hardware the read may take longer than the wire needs for the tail.
    fn sendable(&self, got: Ready, asked: u64) -> usize {
        let len = got.len as u64;
        if !got.more_soon || len >= asked {
            return got.len;
        }
        if len < asked / 2 {
            return 0;
        }
        let mss = self.max_payload();
        (len / mss * mss) as usize
    }

    /// Most new payload one segment carries: one MSS, or with segmentation offload as many
    /// whole MSS as the port takes (the port cuts it on MSS boundaries), while pacing no more
    /// than about 1 ms of the pacing rate (at least two MSS).
    fn send_quantum(&self) -> u64 {
        let mss = self.max_payload();
        let most = (self.tso_max as u64 / mss * mss).max(mss);
        pacing::burst(self.pacing_rate(), mss, most)
    }

    fn options_for_data(&self, now: Instant) -> TcpOptions {
        TcpOptions { timestamp: self.ts_ok.then(|| (ts_now(now), self.ts_recent)), ..Default::default() }
    }

    fn fields(&self, now: Instant, seq: u32, fl: u8) -> TcpFields {
        TcpFields { seq, ack: self.rcv_nxt, flags: fl, window: self.announced_window(), options: self.options_for_data(now) }
    }

    /// The window field of a segment other than a SYN: the window in units of our scale.
    fn announced_window(&self) -> u16 {
        (self.rcv_wnd >> self.rcv_shift).min(u32::from(u16::MAX)) as u16
    }

    fn arm_rto(&mut self, now: Instant) {
        self.rto_deadline = Some(now + self.rto);
    }

    fn emitted(&mut self, now: Instant, seg: Segment) -> Option<Segment> {
        self.ack = AckOwed::No;
        self.counters.segments_sent += 1;
        self.counters.bytes_sent += seg.payload_len as u64;
        if (seg.payload_len > 0 || seg.fields.flags & (flags::SYN | flags::FIN) != 0) && self.rto_deadline.is_none() {
            self.arm_rto(now);
        }
        Some(seg)
    }

    /// The next segment to send, if any. Call repeatedly until `None` (or the burst is full).
    pub fn poll_tx(&mut self, now: Instant, src: &mut dyn DataSource) -> Option<Segment> {
        if self.rst_pending {
            self.rst_pending = false;
            let seg = Segment {
                fields: self.reset_fields(),
                payload_off: 0,
                payload_len: 0,
                retransmit: false,
            };
            self.counters.segments_sent += 1;
            return Some(seg);
        }
        match self.state {
            State::Closed => return None,
            State::SynSent | State::SynReceived => {
                if !self.syn_pending {
                    return None;
                }
                self.syn_pending = false;
                let syn_ack = self.state == State::SynReceived;
                let mut f = TcpFields {
                    seq: self.iss,
                    ack: if syn_ack { self.rcv_nxt } else { 0 },
                    flags: flags::SYN | if syn_ack { flags::ACK } else { 0 },
                    // Never scaled in a SYN (RFC 7323 2.2).
                    window: self.rcv_wnd.min(u32::from(u16::MAX)) as u16,
                    options: TcpOptions { mss: Some(self.mss.min(u16::MAX as u32) as u16), ..Default::default() },
                };
                let copies = self.rtt_probe.map_or(0, |(n, _)| n);
                self.rtt_probe = Some((copies + 1, now));
                if syn_ack {
                    f.options.mss = Some(self.mss as u16);
                    f.options.sack_permitted = self.sack_ok;
                    f.options.window_scale = self.ws_ok.then_some(self.offer_shift);
                    f.options.timestamp = self.ts_ok.then(|| (ts_now(now), self.ts_recent));
                } else {
                    f.options.sack_permitted = true;
                    f.options.window_scale = Some(self.offer_shift);
                    f.options.timestamp = Some((ts_now(now), 0));
                }
                return self.emitted(now, Segment { fields: f, payload_off: 0, payload_len: 0, retransmit: false });
            }
            _ => {}
        }
        let sending = self.state.can_send_data() || matches!(self.state, State::FinWait1 | State::Closing | State::LastAck);
        if sending {
            // Retransmissions first.
            if self.pipe() < self.cc.cwnd {
                if let Some((off, max)) = self.next_rexmit() {
                    let n = src.available(off, max as usize, true).len;
                    self.app_blocked = n == 0;
                    if n > 0 {
                        self.rexmit_next = off + n as u64;
                        self.counters.retransmits += 1;
                        if self.rtt_probe.is_some_and(|(o, _)| o >= off) {
                            self.rtt_probe = None; // Karn: no sample from a retransmitted range
                        }
                        let mut f = self.fields(now, self.seq_of(off), flags::ACK);
                        if off + n as u64 == self.stream_len {
                            f.flags |= flags::PSH;
                        }
                        return self.emitted(now, Segment { fields: f, payload_off: off, payload_len: n, retransmit: true });
                    }
                    return self.pure_ack(now);
                }
            }
            // New data within the peer's window and our congestion window.
            if self.stream_len > self.snd_nxt && self.state.can_send_data() {
                if self.zero_window_probe_due() {
                    // Zero window: keep a probe timer running; the probe itself goes out on expiry.
                    self.arm_rto(now);
                }
                let len = self.new_data_len();
                if len > 0 && self.pace_ready(now) {
                    let off = self.snd_nxt;
                    let got = if self.dry {
                        Ready { len: 0, more_soon: true }
                    } else {
                        // A zero-window probe's byte (the window of 1 its timer opened), or
                        // what a window smaller than a segment takes, is asked for as a
                        // resend: the peer has no room for what follows, so nothing is read
                        // ahead for it (a client that stops reading, or reads a few bytes at
                        // a time, would otherwise have chunks read and held for it).
                        src.available(off, len as usize, self.window_under_a_segment())
                    };
                    let n = self.sendable(got, len);
                    self.app_blocked = n == 0;
                    self.dry = got.more_soon && (got.len as u64) < len;
                    if n == 0 && got.more_soon && self.ack == AckOwed::ForData {
                        // The bytes being read will carry the ACK (their read wakes us).
                        self.ack = AckOwed::Waiting;
                        return None;
                    }
                    if n > 0 {
                        self.cc.on_send(now, self.snd_nxt == self.snd_una);
                        self.snd_nxt += n as u64;
                        // Retransmissions are not paced and do not count against the schedule.
                        let rate = self.pacing_rate();
                        self.pacer.on_send(now, n as u64, rate);
                        if self.rtt_probe.is_none() && !self.ts_ok {
                            self.rtt_probe = Some((self.snd_nxt, now));
                        }
                        let mut f = self.fields(now, self.seq_of(off), flags::ACK);
                        if self.snd_nxt == self.stream_len {
                            f.flags |= flags::PSH;
                        }
                        if self.fin_due() {
                            f.flags |= flags::FIN;
                            self.on_fin_sent();
                        }
                        return self.emitted(now, Segment { fields: f, payload_off: off, payload_len: n, retransmit: false });
                    }
                    return self.pure_ack(now);
                }
            }
            if self.fin_due() && matches!(self.state, State::Established | State::CloseWait | State::FinWait1 | State::Closing | State::LastAck) {
                let f = self.fields(now, self.seq_of(self.snd_nxt), flags::FIN | flags::ACK);
                self.on_fin_sent();
                return self.emitted(now, Segment { fields: f, payload_off: self.snd_nxt, payload_len: 0, retransmit: false });
            }
        }
        self.pure_ack(now)
    }

    fn on_fin_sent(&mut self) {
        self.fin_sent = true;
        self.fin_rexmit = false;
        self.state = match self.state {
            State::Established => State::FinWait1,
            State::CloseWait => State::LastAck,
            s => s,
        };
    }

    fn pure_ack(&mut self, now: Instant) -> Option<Segment> {
        if self.ack == AckOwed::No {
            return None;
        }
        let seq = self.seq_of(self.snd_max_off());
        let f = self.fields(now, seq, flags::ACK);
        self.ack = AckOwed::No;
        self.counters.segments_sent += 1;
        Some(Segment { fields: f, payload_off: 0, payload_len: 0, retransmit: false })
    }

    fn rtt_sample(&mut self, r: u64) {
        if self.srtt == 0 && self.rttvar == 0 {
            self.srtt = r;
            self.rttvar = r / 2;
        } else {
            let err = self.srtt.abs_diff(r);
            self.rttvar = (3 * self.rttvar + err) / 4;
            self.srtt = (7 * self.srtt + r) / 8;
        }
        // RTO = SRTT + max(G, 4 * RTTVAR), G being our 1 ms timestamp clock (RFC 6298 2.3).
        self.rto = self.srtt + (4 * self.rttvar).max(MS);
    }

    /// The handshake's round trip, taken when it completes (RFC 6298 2.2, RFC 7323 4.1).
    /// Without it the RTO stays where the SYN's back-off left it, the same for every
    /// connection that came in together, so their retransmissions would go out in lockstep
    /// and a short queue would drop the same ones each time. Karn's rule holds: with our SYN
    /// sent more than once, only an echoed timestamp of its last copy times it (an older echo
    /// can answer the last copy, as a peer repeats its own SYN-ACK to an old SYN: that
    /// "sample" would span our back-off). With no sample after a repeated SYN the RTO
    /// restarts at 3 s (RFC 6298 5.7).
    fn handshake_rtt(&mut self, cfg: &Config, now: Instant, seg: &SegmentIn) {
        let Some((copies, last)) = self.rtt_probe.take() else { return };
        let echoed = if self.ts_ok { self.echoed(seg) } else { None };
        let sample = match echoed {
            Some(ecr) if ecr.wrapping_sub(ts_now(last)) as i32 >= 0 => echo_rtt(now, ecr),
            Some(_) => None,
            None if copies == 1 => Some(now.saturating_sub(last)),
            None => None,
        };
        match sample {
            Some(r) => self.take_rtt(cfg, r),
            None if self.rto > cfg.init_rto => self.rto = (3 * SEC).max(cfg.init_rto).min(cfg.max_rto),
            None => {}
        }
    }

    /// The timestamp a segment echoes, if any (0: the peer had none to echo).
    fn echoed(&self, seg: &SegmentIn) -> Option<u32> {
        seg.timestamp.map(|(_, ecr)| ecr).filter(|&ecr| ecr != 0)
    }

    /// One RTT sample, and the RTO it gives within the configured bounds.
    fn take_rtt(&mut self, cfg: &Config, r: u64) {
        self.rtt_sample(r);
        self.clamp_rto(cfg);
    }

    fn clamp_rto(&mut self, cfg: &Config) {
        self.rto = self.rto.clamp(cfg.min_rto, cfg.max_rto);
    }

    /// Feed one received segment for this connection. `app_room` is how many payload bytes
    /// the application can take now.
    pub fn on_segment(&mut self, cfg: &Config, now: Instant, seg: &SegmentIn, app_room: usize) -> RxOutcome {
        let mut out = RxOutcome::default();
        match self.state {
            State::Closed => return out,
            State::SynSent => return self.on_segment_syn_sent(cfg, now, seg),
            _ => {}
        }
        // Acceptability (RFC 793 as Linux applies it): the segment must overlap or touch
        // [RCV.NXT, RCV.NXT + RCV.WND]. A segment starting at the right edge of a zero window
        // is acceptable so that its ACK is processed; its data is not taken.
        let seg_len = seg.seq_len();
        let wnd = self.rcv_wnd;
        let start_ok = seq::le(self.rcv_nxt, seg.seq) && seq::lt(seg.seq, self.rcv_nxt.wrapping_add(wnd.max(1)));
        let acceptable = seq::le(seg.seq, self.rcv_nxt.wrapping_add(wnd)) && seq::ge(seg.seq.wrapping_add(seg_len), self.rcv_nxt);
        if seg.has(flags::RST) {
            // RFC 5961 3.2: only an exact match resets; in-window otherwise gets a challenge.
            if seg.seq == self.rcv_nxt || (self.state == State::SynReceived && acceptable) {
                self.state = State::Closed;
                self.rto_deadline = None;
                out.reset = true;
            } else if start_ok {
                self.challenge(&mut out);
            } else {
                self.counters.out_of_window += 1;
                out.rejected = true;
            }
            return out;
        }
        if self.state == State::TimeWait {
            if seg.has(flags::FIN) {
                // The peer lost our ACK of its FIN: ACK again and restart TIME-WAIT.
                self.ack = AckOwed::Yes;
                self.time_wait_deadline = Some(now + cfg.time_wait);
            }
            return out;
        }
        if !acceptable {
            self.counters.out_of_window += 1;
            out.rejected = true;
            self.ack = AckOwed::Yes;
            return out;
        }
        if seg.has(flags::SYN) {
            if self.state == State::SynReceived && seg.seq == self.irs {
                // Our SYN-ACK was lost: send it again.
                self.syn_pending = true;
                return out;
            }
            // RFC 5961 4.2: a SYN in a synchronized state gets a challenge ACK.
            self.challenge(&mut out);
            return out;
        }
        let Some(ack) = seg.ack else {
            out.rejected = true;
            return out;
        };
        if self.state == State::SynReceived {
            if ack != self.iss.wrapping_add(1) {
                self.rst_pending = true; // an ACK for a SYN we never sent
                out.rejected = true;
                return out;
            }
            self.state = State::Established;
            self.rto_deadline = None;
            self.retries = 0;
            self.handshake_rtt(cfg, now, seg);
            // A SYN-ACK queued again (its timer fired, or the peer repeated its SYN) is moot
            // now; left set, it would keep the connection wanting to send for ever.
            self.syn_pending = false;
            self.snd_wnd = (seg.window as u64) << self.snd_shift;
            self.snd_wl1 = self.window_seq(seg);
            self.snd_wl2 = 0;
            self.last_progress = now;
            out.established = true;
        }
        if self.ts_ok {
            if let Some((val, _)) = seg.timestamp {
                if seq::le(seg.seq, self.rcv_nxt) {
                    self.ts_recent = val;
                }
            }
        }
        if !self.process_ack(cfg, now, seg, ack, &mut out) {
            return out;
        }
        self.note_acked_progress(now);
        // Payload.
        let mut fin_in_order = seg.has(flags::FIN);
        if !seg.payload.is_empty() {
            if self.state.can_receive_data() {
                let skip = seq::diff(self.rcv_nxt, seg.seq).max(0) as usize;
                if seq::gt(seg.seq, self.rcv_nxt) {
                    // Out of order: we keep no reassembly queue (requests are small); the
                    // duplicate ACK makes the peer resend.
                    self.ack = AckOwed::Yes;
                    fin_in_order = false;
                } else if skip < seg.payload.len() {
                    let take = (seg.payload.len() - skip).min(app_room).min(self.rcv_wnd as usize);
                    if take > 0 {
                        out.deliver = Some((skip, take));
                        self.rcv_nxt = self.rcv_nxt.wrapping_add(take as u32);
                        self.last_progress = now;
                    }
                    if skip + take < seg.payload.len() {
                        fin_in_order = false;
                    }
                    // One segment's ACK may wait for the response to carry it; a second is
                    // acknowledged at once (RFC 9293 3.8.6.3: at least every second segment).
                    self.ack = if self.ack == AckOwed::No { AckOwed::ForData } else { AckOwed::Yes };
                } else {
                    self.ack = AckOwed::Yes; // a duplicate: re-ACK
                }
            } else {
                fin_in_order = false;
            }
        }
        if seg.has(flags::FIN) {
            // Taken or not, a FIN is answered: one received again (our ACK of it was lost)
            // is retransmitted until we do, and one ahead of a hole gets a duplicate ACK.
            self.ack = AckOwed::Yes;
        }
        if fin_in_order && seg.seq.wrapping_add(seg.payload.len() as u32) == self.rcv_nxt {
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            self.last_progress = now;
            out.peer_fin = true;
            self.state = match self.state {
                State::Established | State::SynReceived => State::CloseWait,
                State::FinWait1 => State::Closing,
                State::FinWait2 => {
                    self.enter_time_wait(cfg, now);
                    State::TimeWait
                }
                s => s,
            };
        }
        out
    }

    fn challenge(&mut self, out: &mut RxOutcome) {
        self.ack = AckOwed::Yes;
        self.counters.challenge_acks += 1;
        out.challenge_ack = true;
        out.rejected = true;
    }

    fn enter_time_wait(&mut self, cfg: &Config, now: Instant) {
        self.rto_deadline = None;
        self.time_wait_deadline = Some(now + cfg.time_wait);
    }

    /// ACK processing; returns false when the segment must be dropped.
    fn process_ack(&mut self, cfg: &Config, now: Instant, seg: &SegmentIn, ack: u32, out: &mut RxOutcome) -> bool {
        let ack_off = self.snd_una as i64 + seq::diff(ack, self.seq_of(self.snd_una));
        let max_off = self.snd_max_off() as i64;
        if ack_off > max_off {
            // Acknowledges what we never sent (RFC 5961 5.2): challenge and drop.
            self.challenge(out);
            return false;
        }
        if ack_off < self.snd_una as i64 - (u32::MAX as i64 / 4) {
            self.challenge(out);
            return false;
        }
        let ack_off = ack_off.max(0) as u64;
        // Window update: the RFC 793 SND.WL1/WL2 rule, and (as Linux does) any ACK of new
        // data, so that a SND.WL1 left ahead of the peer's sequence numbers cannot freeze
        // the window for as long as data is acknowledged.
        let wnd = (seg.window as u64) << self.snd_shift;
        let window_changed = wnd != self.snd_wnd;
        let wl_seq = self.window_seq(seg);
        if ack_off > self.snd_una || seq::lt(self.snd_wl1, wl_seq) || (self.snd_wl1 == wl_seq && ack_off >= self.snd_wl2) {
            self.snd_wnd = wnd;
            self.probed &= wnd == 0;
            self.snd_wl1 = wl_seq;
            self.snd_wl2 = ack_off;
        }
        self.update_sack(seg);
        let data_acked = ack_off.min(self.snd_nxt).saturating_sub(self.snd_una);
        let fin_acked = self.fin_sent && ack_off > self.fin_at.unwrap_or(u64::MAX);
        if ack_off > self.snd_una {
            self.on_new_ack(cfg, now, seg, ack_off.min(self.snd_nxt), data_acked);
            out.acked = data_acked;
        } else if ack_off == self.snd_una
            && self.snd_nxt > self.snd_una
            && seg.payload.is_empty()
            && !seg.has(flags::FIN)
            && !window_changed
        {
            self.on_dup_ack(cfg);
        }
        if fin_acked {
            self.rto_deadline = None;
            match self.state {
                State::FinWait1 => self.state = State::FinWait2,
                State::Closing => {
                    self.state = State::TimeWait;
                    self.enter_time_wait(cfg, now);
                }
                State::LastAck => {
                    self.state = State::Closed;
                    return false;
                }
                _ => {}
            }
        }
        true
    }

    /// The sequence number a segment's window is dated by (SND.WL1): a segment from beyond
    /// RCV.NXT (out of order) counts as at RCV.NXT. Else one such segment (lost data, or
    /// injected by a peer that knows the sequence numbers) would move SND.WL1 ahead and make
    /// every later in-order ACK's window be ignored, freezing the window it carried (found
    /// by fuzz net_frames twice: a 1-byte window, and a zero window set by the segment that
    /// completed the handshake).
    fn window_seq(&self, seg: &SegmentIn) -> u32 {
        if seq::lt(self.rcv_nxt, seg.seq) {
            self.rcv_nxt
        } else {
            seg.seq
        }
    }

    fn update_sack(&mut self, seg: &SegmentIn) {
        if !self.sack_ok {
            return;
        }
        for &(l, r) in seg.sack.iter().flatten() {
            let base = self.seq_of(self.snd_una);
            let lo = self.snd_una as i64 + seq::diff(l, base);
            let hi = self.snd_una as i64 + seq::diff(r, base);
            let (lo, hi) = (lo.max(self.snd_una as i64), hi.min(self.snd_nxt as i64));
            if lo < hi {
                self.add_sack(lo as u64, hi as u64);
            }
        }
    }

    fn add_sack(&mut self, mut l: u64, mut r: u64) {
        // Merge with overlapping or touching blocks, keep at most 4 (drop the lowest).
        let mut kept = [(0u64, 0u64); 5];
        let mut n = 0;
        for &(a, b) in &self.sacked[..usize::from(self.sacked_n)] {
            if b < l || a > r {
                kept[n] = (a, b);
                n += 1;
            } else {
                l = l.min(a);
                r = r.max(b);
            }
        }
        kept[n] = (l, r);
        n += 1;
        kept[..n].sort_unstable();
        let start = n.saturating_sub(4);
        self.sacked_n = (n - start) as u8;
        self.sacked[..usize::from(self.sacked_n)].copy_from_slice(&kept[start..n]);
    }

    fn prune_sack(&mut self) {
        let una = self.snd_una;
        let mut n = 0;
        for i in 0..usize::from(self.sacked_n) {
            let (l, r) = self.sacked[i];
            if r > una {
                self.sacked[n] = (l.max(una), r);
                n += 1;
            }
        }
        self.sacked_n = n as u8;
    }

    fn on_new_ack(&mut self, cfg: &Config, now: Instant, seg: &SegmentIn, ack_off: u64, acked: u64) {
        self.snd_una = ack_off;
        self.retries = 0;
        self.dupacks = 0;
        self.prune_sack();
        // RTT: timestamps where both sides use them, else one timed segment at a time (Karn).
        if self.ts_ok {
            if let Some(r) = self.echoed(seg).and_then(|ecr| echo_rtt(now, ecr)) {
                self.take_rtt(cfg, r);
            }
        } else if let Some((o, t)) = self.rtt_probe {
            if ack_off >= o {
                self.take_rtt(cfg, now.saturating_sub(t));
                self.rtt_probe = None;
            }
        }
        match self.recover {
            Some(rec) if ack_off < rec => {
                // Partial ACK: the next hole is lost too (NewReno); with SACK the scoreboard
                // already says which holes remain.
                if self.sack_ok {
                    self.extend_rexmit_to_sacked();
                } else {
                    self.rexmit_next = self.snd_una;
                    self.rexmit_end = self.snd_una + self.mss as u64;
                }
            }
            Some(_) => {
                self.recover = None;
                self.cc.on_recovery_exit(self.mss as u64);
                self.rexmit_end = self.snd_una;
            }
            None => self.cc.on_ack(now, acked, self.mss as u64, self.srtt),
        }
        if self.rexmit_next < self.snd_una {
            self.rexmit_next = self.snd_una;
        }
        self.rto_deadline = if self.snd_max_off() > self.snd_una { Some(now + self.rto) } else { None };
    }

    fn on_dup_ack(&mut self, _cfg: &Config) {
        self.dupacks = self.dupacks.saturating_add(1);
        if self.recover.is_some() {
            self.extend_rexmit_to_sacked();
            return;
        }
        let sack_loss = self.sack_ok && self.sacked_n > 0 && self.unsacked_in(self.snd_una, self.sacked[usize::from(self.sacked_n) - 1].1) > 0 && self.sacked_bytes() >= 3 * self.mss as u64;
        if self.dupacks >= 3 || sack_loss {
            // Fast retransmit: enter recovery (RFC 6675 with SACK, RFC 6582 NewReno without).
            let flight = self.snd_nxt - self.snd_una;
            self.cc.on_loss(flight, self.mss as u64);
            self.recover = Some(self.snd_nxt);
            self.rexmit_next = self.snd_una;
            self.rexmit_end = if self.sack_ok && self.sacked_n > 0 { self.sacked[usize::from(self.sacked_n) - 1].1 } else { self.snd_una + self.mss as u64 };
            self.counters.fast_retransmits += 1;
        }
    }

    /// In SACK recovery every hole below the highest SACKed byte is presumed lost.
    fn extend_rexmit_to_sacked(&mut self) {
        if self.sack_ok && self.sacked_n > 0 {
            self.rexmit_end = self.rexmit_end.max(self.sacked[usize::from(self.sacked_n) - 1].1);
        }
    }

    /// Handle the timers that are due at `now`.
    pub fn on_timer(&mut self, cfg: &Config, now: Instant) -> TimerOutcome {
        let mut out = TimerOutcome::default();
        if let Some(t) = self.time_wait_deadline {
            if now >= t {
                self.time_wait_deadline = None;
                self.state = State::Closed;
                out.closed = true;
                return out;
            }
        }
        let Some(t) = self.rto_deadline else { return out };
        if now < t {
            return out;
        }
        self.retries = self.retries.saturating_add(1);
        let limit = if matches!(self.state, State::SynSent | State::SynReceived) { cfg.max_syn_retries } else { cfg.max_retries };
        if u32::from(self.retries) > limit {
            self.abort();
            out.closed = true;
            return out;
        }
        self.rto = (self.rto * 2).min(cfg.max_rto);
        self.rto_deadline = Some(now + self.rto);
        // A timeout with the window closed sends a probe, or resends what is in flight (a
        // peer that shrank its window drops it): either asks whether the window opened.
        self.probed |= self.snd_wnd == 0;
        match self.state {
            State::SynSent | State::SynReceived => self.syn_pending = true,
            _ if self.snd_wnd == 0 && self.snd_nxt == self.snd_una && !self.fin_sent => {
                // Zero-window probe: one byte past the window makes the peer re-announce it.
                if self.stream_len > self.snd_nxt {
                    self.snd_wnd = 1;
                }
                self.retries = 0;
            }
            _ => {
                out.rto = true;
                self.counters.rto_timeouts += 1;
                let flight = self.snd_nxt - self.snd_una;
                self.cc.on_rto(flight, self.mss as u64);
                self.sacked_n = 0;
                self.dupacks = 0;
                self.rexmit_next = self.snd_una;
                self.rexmit_end = self.snd_nxt;
                self.rtt_probe = None;
                // Go back to SND.UNA in slow start: everything in flight is presumed lost.
                self.recover = None;
                self.fin_rexmit = self.fin_sent;
            }
        }
        out
    }

    fn on_segment_syn_sent(&mut self, cfg: &Config, now: Instant, seg: &SegmentIn) -> RxOutcome {
        let mut out = RxOutcome::default();
        let ack_ok = seg.ack == Some(self.iss.wrapping_add(1));
        if seg.has(flags::RST) {
            if ack_ok {
                self.state = State::Closed;
                self.rto_deadline = None;
                out.reset = true;
            }
            return out;
        }
        if seg.ack.is_some() && !ack_ok {
            out.rejected = true;
            return out;
        }
        if !(seg.has(flags::SYN) && ack_ok) {
            out.rejected = true;
            return out;
        }
        self.irs = seg.seq;
        self.rcv_nxt = seg.seq.wrapping_add(1);
        self.negotiate(cfg, seg);
        if seg.window_scale.is_none() {
            self.snd_shift = 0;
        }
        self.snd_wnd = seg.window as u64; // never scaled in a SYN
        self.snd_wl1 = seg.seq;
        self.state = State::Established;
        self.rto_deadline = None;
        self.retries = 0;
        self.handshake_rtt(cfg, now, seg);
        self.syn_pending = false; // a SYN queued again by its timer is moot now
        self.ack = AckOwed::Yes;
        self.last_progress = now;
        out.established = true;
        out
    }

    /// Sequence numbers, for diagnostics and the console.
    pub fn describe(&self) -> (u64, u64, u64, u64) {
        (self.snd_una, self.snd_nxt, self.cc.cwnd, self.srtt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byte_at(off: u64) -> u8 {
        (off.wrapping_mul(31) ^ (off >> 9)) as u8
    }

    struct Pattern;
    impl DataSource for Pattern {
        fn available(&mut self, _off: u64, max: usize, _resend: bool) -> Ready {
            Ready::now(max)
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    struct Wire {
        at: Instant,
        to_server: bool,
        seg: Segment,
        payload: Vec<u8>,
    }

    fn to_in<'a>(w: &'a Wire) -> SegmentIn<'a> {
        let o = w.seg.fields.options;
        let mut sack = [None; 3];
        for (place, block) in sack.iter_mut().zip(&o.sack[..o.sack_len as usize]) {
            *place = Some(*block);
        }
        SegmentIn {
            seq: w.seg.fields.seq,
            ack: (w.seg.fields.flags & flags::ACK != 0).then_some(w.seg.fields.ack),
            flags: w.seg.fields.flags,
            window: w.seg.fields.window,
            mss: o.mss,
            window_scale: o.window_scale,
            sack_permitted: o.sack_permitted,
            sack,
            timestamp: o.timestamp,
            payload: &w.payload,
        }
    }

    /// Server sends `total` bytes to a client over a lossy, reordering wire; returns the
    /// server's counters after the client got every byte in order.
    fn transfer(total: u64, loss: f64, seed: u64) -> TcpCounters {
        transfer_with(&Config::default(), total, loss, seed)
    }

    fn transfer_with(cfg: &Config, total: u64, loss: f64, seed: u64) -> TcpCounters {
        let cfg = cfg.clone();
        let mut rng = Rng(seed | 1);
        let mut now: Instant = 0;
        let mut client = TcpConn::connect(&cfg, now, 1000);
        client.set_receive_window(65535);
        let mut server: Option<TcpConn> = None;
        let mut wire: Vec<Wire> = Vec::new();
        let mut received = 0u64;
        let one_way = 5 * MS;
        // Reordering looks like loss to a receiver without a reassembly queue.
        let jitter = if loss > 0.0 { 2.0 * MS as f64 } else { 0.0 };
        let mut steps = 0;
        while received < total || server.as_ref().is_some_and(|s| s.state != State::FinWait2 && s.state != State::TimeWait) {
            steps += 1;
            assert!(steps < 2_000_000, "no progress: received {received} of {total}");
            // Emit from both ends.
            while let Some(seg) = client.poll_tx(now, &mut Pattern) {
                let drop = rng.next() < loss;
                if !drop {
                    wire.push(Wire { at: now + one_way + (rng.next() * jitter) as u64, to_server: true, seg, payload: vec![] });
                }
            }
            // Nothing left to send means not wanting to: the stack would visit it on every poll.
            assert!(!client.wants_tx(now), "the client wants to send but poll_tx gave nothing");
            if let Some(s) = server.as_mut() {
                while let Some(seg) = s.poll_tx(now, &mut Pattern) {
                    let payload: Vec<u8> = (seg.payload_off..seg.payload_off + seg.payload_len as u64).map(byte_at).collect();
                    if rng.next() >= loss {
                        wire.push(Wire { at: now + one_way + (rng.next() * jitter) as u64, to_server: false, seg, payload });
                    }
                }
                assert!(!s.wants_tx(now), "the server wants to send but poll_tx gave nothing");
            }
            // Advance to the next event.
            let next_wire = wire.iter().map(|w| w.at).min();
            let next_timer = [client.next_deadline(), server.as_ref().and_then(|s| s.next_deadline())].into_iter().flatten().min();
            let Some(t) = [next_wire, next_timer].into_iter().flatten().min() else { break };
            now = now.max(t);
            let (due, rest): (Vec<Wire>, Vec<Wire>) = wire.into_iter().partition(|w| w.at <= now);
            wire = rest;
            for w in &due {
                let seg = to_in(w);
                if w.to_server {
                    match server.as_mut() {
                        None if seg.flags & flags::SYN != 0 => {
                            let mut s = TcpConn::accept(&cfg, now, &seg, 77_000);
                            s.set_stream_len(total);
                            s.close();
                            server = Some(s);
                        }
                        None => {}
                        Some(s) => {
                            s.on_segment(&cfg, now, &seg, 1 << 20);
                        }
                    }
                } else {
                    let out = client.on_segment(&cfg, now, &seg, 1 << 20);
                    if let Some((start, len)) = out.deliver {
                        for (i, b) in seg.payload[start..start + len].iter().enumerate() {
                            assert_eq!(*b, byte_at(received + i as u64), "byte {} corrupted", received + i as u64);
                        }
                        received += len as u64;
                    }
                }
            }
            client.on_timer(&cfg, now);
            if let Some(s) = server.as_mut() {
                s.on_timer(&cfg, now);
            }
        }
        assert_eq!(received, total);
        assert_eq!(client.state, State::CloseWait, "client saw the FIN");
        server.unwrap().counters
    }

    #[test]
    fn clean_transfer_has_no_retransmissions() {
        let c = transfer(2_000_000, 0.0, 1);
        assert_eq!(c.retransmits, 0);
    }

    #[test]
    fn lossy_transfers_complete_byte_exact() {
        for (seed, loss) in [(1, 0.01), (2, 0.05), (3, 0.10), (4, 0.02)] {
            let c = transfer(1_000_000, loss, seed);
            assert!(c.retransmits > 0, "loss {loss} seed {seed}: retransmissions expected");
        }
    }

    /// Every congestion control, paced or not, with and without offload.
    fn configs() -> Vec<Config> {
        let mut out = Vec::new();
        for congestion in [CongestionControl::NewReno, CongestionControl::Cubic] {
            for pacing in [false, true] {
                for tso_max_payload in [0, 65535] {
                    out.push(Config { congestion, pacing, tso_max_payload, ..Config::default() });
                }
            }
        }
        out
    }

    #[test]
    fn every_configuration_transfers_byte_exact() {
        for cfg in configs() {
            let c = transfer_with(&cfg, 1_000_000, 0.0, 1);
            assert_eq!(c.retransmits, 0, "{cfg:?}");
            for (seed, loss) in [(5, 0.02), (6, 0.08)] {
                let c = transfer_with(&cfg, 500_000, loss, seed);
                // (Offloaded segments are few: the losses may miss them all.)
                assert!(c.retransmits > 0 || cfg.tso_max_payload > 0, "{cfg:?} loss {loss}: retransmissions expected");
            }
        }
    }

    /// A server connection past the handshake at `t0` (timestamps on), with `stream` bytes
    /// to send and a peer window of 8 MB.
    fn established(cfg: &Config, t0: Instant, stream: u64) -> TcpConn {
        let syn = SegmentIn { seq: 5, flags: flags::SYN, window: 65535, mss: Some(1460), window_scale: Some(7), sack_permitted: true, timestamp: Some((100, 0)), ..Default::default() };
        let mut s = TcpConn::accept(cfg, t0, &syn, 9);
        s.poll_tx(t0, &mut Pattern).unwrap();
        let ack = SegmentIn { seq: 6, ack: Some(10), flags: flags::ACK, window: 65535, timestamp: Some((101, ts_now(t0))), ..Default::default() };
        assert!(s.on_segment(cfg, t0 + 10 * MS, &ack, 1000).established);
        s.set_stream_len(stream);
        s
    }

    /// Sends at `now` while the connection lets it; returns the segments.
    fn drain(s: &mut TcpConn, now: Instant) -> Vec<Segment> {
        std::iter::from_fn(|| s.poll_tx(now, &mut Pattern)).filter(|g| g.payload_len > 0).collect()
    }

    /// Sends from `now` at each pacing deadline until the windows stop it; returns the
    /// bytes sent, plus `already` (sent before).
    fn send_window(s: &mut TcpConn, now: Instant, already: usize) -> usize {
        let mut sent = already;
        let mut t = now;
        loop {
            sent += drain(s, t).iter().map(|g| g.payload_len).sum::<usize>();
            match s.pacing_deadline() {
                Some(next) => t = next,
                None => return sent,
            }
        }
    }

    /// ACK everything sent so far in steps of two segments, echoing `sent_at`'s timestamp.
    fn ack_all(s: &mut TcpConn, cfg: &Config, now: Instant, sent_at: Instant) {
        let step = 2 * s.wire_payload() as u64;
        while s.snd_una < s.snd_nxt {
            let off = (s.snd_una + step).min(s.snd_nxt);
            let ack = SegmentIn { seq: 6, ack: Some(s.seq_of(off)), flags: flags::ACK, window: 65535, timestamp: Some((102, ts_now(sent_at))), ..Default::default() };
            let before = s.snd_una;
            assert_eq!(s.on_segment(cfg, now, &ack, 1000).acked, off - before);
        }
    }

    #[test]
    fn pacing_spreads_a_window_over_the_round_trip() {
        let t0 = SEC;
        for pacing in [false, true] {
            let cfg = Config { pacing, ..Config::default() };
            let mut s = established(&cfg, t0, 10 << 20);
            // The handshake gave an RTT sample: paced, the initial window is spread too.
            assert_eq!(s.srtt, 10 * MS);
            let t1 = t0 + 10 * MS;
            let first = drain(&mut s, t1);
            assert_eq!(first.len() == 10, !pacing, "{} of the initial window at once", first.len());
            let sent = send_window(&mut s, t1, first.iter().map(|g| g.payload_len).sum());
            assert_eq!(sent as u64, s.cc.cwnd.min(10 * s.wire_payload() as u64));
            // Its ACKs, 10 ms later: SRTT 10 ms, the window about 20 segments.
            let t2 = t1 + 10 * MS;
            ack_all(&mut s, &cfg, t2, t1);
            assert_eq!(s.srtt, 10 * MS);
            let cwnd_segs = s.cc.cwnd / s.wire_payload() as u64;
            assert!((19..=21).contains(&cwnd_segs), "{cwnd_segs}");
            let now_burst = drain(&mut s, t2).len() as u64;
            if !pacing {
                assert_eq!(now_burst, cwnd_segs, "unpaced: the whole window at once");
                continue;
            }
            // Paced at 2 x cwnd / SRTT (slow start), 4 segments a millisecond: what the
            // credit allows now, then one at a time as the deadlines come.
            assert!((2..=6).contains(&now_burst), "paced: {now_burst} segments at once");
            assert!(!s.wants_tx(t2));
            let mut now = t2;
            let mut sent = now_burst;
            while sent < cwnd_segs {
                let next = s.next_deadline().expect("pacing deadline");
                assert!(next > now && next < t2 + 10 * MS, "next send at {} ns", next - t2);
                now = next;
                assert!(s.wants_tx(now));
                let n = drain(&mut s, now).len() as u64;
                assert_eq!(n, 1, "one segment per deadline");
                sent += n;
            }
            // The window took about SRTT / 2 (the slow-start gain), less the credit.
            let took = now - t2;
            assert!((3 * MS..=6 * MS).contains(&took), "window sent over {} µs", took / 1000);
        }
    }

    #[test]
    fn with_offload_paced_segments_carry_about_a_millisecond() {
        let t0 = SEC;
        let cfg = Config { tso_max_payload: 65535, pacing: true, ..Config::default() };
        let mut s = established(&cfg, t0, 10 << 20);
        let t1 = t0 + 10 * MS;
        let sent = send_window(&mut s, t1, 0);
        assert_eq!(sent as u64, s.snd_nxt, "the initial window, paced");
        assert!(s.snd_nxt >= s.cc.cwnd - s.wire_payload() as u64);
        let t2 = t1 + 10 * MS;
        ack_all(&mut s, &cfg, t2, t1);
        // About 5.8 MB/s: 1 ms is 4 segments.
        let mss = s.wire_payload();
        let segs = drain(&mut s, t2);
        assert!(!segs.is_empty());
        assert!(segs.iter().all(|g| g.payload_len == 4 * mss), "{:?}", segs.iter().map(|g| g.payload_len).collect::<Vec<_>>());
        // Without pacing the window goes as one segment as large as the port takes.
        let cfg = Config { pacing: false, ..cfg };
        let mut s = established(&cfg, t0, 10 << 20);
        let first = drain(&mut s, t1);
        assert_eq!(first.len(), 1, "unpaced: the initial window in one offloaded segment");
        assert_eq!(first[0].payload_len as u64, s.cc.cwnd);
        ack_all(&mut s, &cfg, t2, t1);
        let segs = drain(&mut s, t2);
        assert_eq!(segs.len(), 1);
        assert!(segs[0].payload_len > 10 * mss);
    }

    /// A source whose bytes are ready up to `ready_to`, and being prepared after it when
    /// `reading`.
    struct Partial {
        ready_to: u64,
        reading: bool,
    }
    impl DataSource for Partial {
        fn available(&mut self, off: u64, max: usize, _resend: bool) -> Ready {
            let len = self.ready_to.saturating_sub(off).min(max as u64) as usize;
            Ready { len, more_soon: self.reading && len < max }
        }
    }

    #[test]
    fn a_short_tail_waits_for_the_bytes_being_read_after_it() {
        let t0 = SEC;
        let cfg = Config { tso_max_payload: 65535, ..Config::default() };
        let mut s = established(&cfg, t0, 10 << 20);
        let mss = s.wire_payload() as u64;
        let t1 = t0 + 10 * MS;
        // Less than half a segment ready and the rest on its way: nothing goes, and the
        // connection waits to be woken (it does not ask to be polled meanwhile).
        let short = mss * 3 + 100;
        let mut src = Partial { ready_to: short, reading: true };
        assert!(s.poll_tx(t1, &mut src).is_none());
        assert!(!s.wants_tx(t1), "waits for the wake, not polled in a loop");
        // The read completes: the tail goes with what follows, in one segment.
        src.ready_to = 1 << 20;
        s.unblock();
        let g = s.poll_tx(t1, &mut src).expect("a segment");
        assert_eq!(g.payload_off, 0);
        assert!(g.payload_len as u64 > short, "the tail went with the next bytes: {}", g.payload_len);
        // Nothing being read after the ready bytes (the end of what the application has
        // now, or a read that could not start): they go at once, short or not.
        let mut s = established(&cfg, t0, 10 << 20);
        let mut src = Partial { ready_to: short, reading: false };
        assert_eq!(s.poll_tx(t1, &mut src).map(|g| g.payload_len as u64), Some(short));
        // More than half a segment ready: whole MSS go now, the rest waits.
        let mut s = established(&cfg, t0, 10 << 20);
        let asked = s.cc.cwnd.min(s.send_quantum());
        let long = asked * 3 / 4 + 10;
        let mut src = Partial { ready_to: long, reading: true };
        let g = s.poll_tx(t1, &mut src).expect("a segment");
        assert_eq!(g.payload_len as u64, long / mss * mss);
        assert!(s.poll_tx(t1, &mut src).is_none(), "the sub-MSS rest waits");
    }

    #[test]
    fn a_window_that_cuts_a_frame_short_waits_for_the_ack_in_flight() {
        let t0 = SEC;
        let t1 = t0 + 10 * MS;
        let cfg = Config { tso_max_payload: 65535, ..Config::default() };
        let sizes = |s: &mut TcpConn| drain(s, t1).iter().map(|g| g.payload_len as u64).collect::<Vec<_>>();
        let mut s = established(&cfg, t0, 10 << 20);
        let q = s.send_quantum();
        s.cc.cwnd = 1 << 30;
        // A 256 KiB window holds four frames and 1504 bytes: the four go, the runt waits.
        let window = 256 * 1024;
        assert!(window > 4 * q && window - 4 * q < q / 2);
        s.snd_wnd = window;
        assert_eq!(sizes(&mut s), [q; 4]);
        // The ACK of the first frame opens the window by a frame: the runt goes in it.
        let ack = SegmentIn { seq: 6, ack: Some(10 + q as u32), flags: flags::ACK, window: (window >> 7) as u16, timestamp: Some((102, ts_now(t1))), ..Default::default() };
        s.on_segment(&cfg, t1, &ack, 1000);
        assert_eq!(s.snd_wnd, window);
        assert_eq!(sizes(&mut s), [q], "a full frame");
        // Less than a frame in flight: no wait (a receiver may delay the ACK of one segment).
        let mut s = established(&cfg, t0, 10 << 20);
        s.cc.cwnd = 1 << 30;
        s.snd_wnd = q / 2 + 1504;
        assert_eq!(sizes(&mut s), [q / 2 + 1504]);
        // Nothing in flight: what the window allows goes at once (no ACK would come).
        let mut s = established(&cfg, t0, 10 << 20);
        s.cc.cwnd = 1 << 30;
        s.snd_wnd = 1504;
        assert_eq!(sizes(&mut s), [1504]);
        // The last bytes of the stream are not held for a window: they are all there is.
        let mut s = established(&cfg, t0, 4 * q + 1000);
        s.cc.cwnd = 1 << 30;
        s.snd_wnd = window;
        assert_eq!(sizes(&mut s), [q, q, q, q, 1000]);
        // The congestion window cuts a frame short as the peer's does.
        let mut s = established(&cfg, t0, 10 << 20);
        s.cc.cwnd = 2 * q + 3000;
        assert_eq!(sizes(&mut s), [q, q]);
        // Without segmentation offload the quantum is one segment: whole segments, the
        // sub-MSS rest held by silly window avoidance as before.
        let plain = Config::default();
        let mut s = established(&plain, t0, 10 << 20);
        let mss = s.wire_payload() as u64;
        s.cc.cwnd = 1 << 30;
        s.snd_wnd = 10 * mss + 700;
        assert_eq!(sizes(&mut s), [mss; 10]);
    }

    #[test]
    fn once_all_that_is_ready_went_the_source_is_not_asked_again_until_woken() {
        /// [`Partial`], counting the times it is asked.
        struct Counted {
            inner: Partial,
            asked: usize,
        }
        impl DataSource for Counted {
            fn available(&mut self, off: u64, max: usize, resend: bool) -> Ready {
                self.asked += 1;
                self.inner.available(off, max, resend)
            }
        }
        let t0 = SEC;
        let cfg = Config { tso_max_payload: 65535, ..Config::default() };
        let mut s = established(&cfg, t0, 10 << 20);
        let t1 = t0 + 10 * MS;
        let asked = s.cc.cwnd.min(s.send_quantum());
        // A chunk's worth ready (more than half a segment), the rest being read.
        let ready = asked * 3 / 4 + 10;
        let mut src = Counted { inner: Partial { ready_to: ready, reading: true }, asked: 0 };
        let g = s.poll_tx(t1, &mut src).expect("a segment");
        assert_eq!(src.asked, 1);
        let sent = g.payload_len as u64;
        // Nothing new until the read wakes the connection: neither polled nor asked, also
        // when an ACK releases buffers (the bytes are being read, not waiting for a buffer).
        assert!(s.poll_tx(t1, &mut src).is_none());
        s.on_buffers_released();
        assert!(!s.wants_tx(t1));
        assert!(s.poll_tx(t1, &mut src).is_none());
        assert_eq!(src.asked, 1, "asked again although nothing could have changed");
        // The read completes: asked again, and what was held goes with what follows.
        src.inner.ready_to = 1 << 20;
        s.unblock();
        assert!(s.wants_tx(t1));
        let g = s.poll_tx(t1, &mut src).expect("the next segment");
        assert_eq!((g.payload_off, src.asked), (sent, 2));
        // Ready bytes that the window cuts short: not dry (the source is asked again once the
        // window opens).
        let mut s = established(&cfg, t0, 10 << 20);
        let mut src = Counted { inner: Partial { ready_to: 1 << 20, reading: true }, asked: 0 };
        s.poll_tx(t1, &mut src).expect("a segment");
        assert!(!s.dry);
        // Nothing ready and nothing being read (a buffer to read into is wanting): an ACK
        // that releases buffers makes the connection ask again.
        let mut s = established(&cfg, t0, 10 << 20);
        let mut src = Counted { inner: Partial { ready_to: 0, reading: false }, asked: 0 };
        assert!(s.poll_tx(t1, &mut src).is_none());
        assert!(!s.wants_tx(t1));
        s.on_buffers_released();
        assert!(s.wants_tx(t1));
        // Waiting for a read with nothing sent meanwhile (a held tail), and a retransmission
        // due: an ACK that releases buffers lets it go, the wait for the read stays.
        let mut s = established(&cfg, t0, 10 << 20);
        let mss = s.wire_payload() as u64;
        let mut src = Counted { inner: Partial { ready_to: mss, reading: true }, asked: 0 };
        assert!(s.poll_tx(t1, &mut src).is_none());
        assert!(s.dry && !s.wants_tx(t1));
        (s.rexmit_next, s.rexmit_end) = (s.snd_una, s.snd_una + mss);
        assert!(!s.wants_tx(t1), "blocked until something changes");
        s.on_buffers_released();
        assert!(s.wants_tx(t1), "the retransmission may go");
        assert!(s.dry, "still waiting for the read");
        // Bytes the application appends (a new response) end the wait as well.
        let mut s = established(&cfg, t0, 1 << 20);
        let mut src = Counted { inner: Partial { ready_to: ready, reading: true }, asked: 0 };
        s.poll_tx(t1, &mut src).expect("a segment");
        s.set_stream_len(2 << 20);
        s.poll_tx(t1, &mut src);
        assert_eq!(src.asked, 2);
    }

    #[test]
    fn a_requests_ack_rides_on_the_response_being_read() {
        let t0 = SEC;
        let cfg = Config { tso_max_payload: 65535, ..Config::default() };
        let request = |seq: u32| SegmentIn { seq, ack: Some(10), flags: flags::ACK | flags::PSH, window: 65535, timestamp: Some((105, 0)), payload: b"GET / HTTP/1.1\r\n\r\n", ..Default::default() };
        let fresh = || {
            let mut s = established(&cfg, t0, 0);
            while s.poll_tx(t0, &mut Pattern).is_some() {}
            s
        };
        let t1 = t0 + 10 * MS;
        // One request; its response's head is ready and its body being read: no segment yet,
        // not even the ACK, and the connection waits to be woken.
        let mut s = fresh();
        let rcv_nxt = s.on_segment(&cfg, t1, &request(6), 1000).deliver.map(|(_, n)| 6 + n as u32).unwrap();
        s.set_stream_len(300_000);
        let mut src = Partial { ready_to: 200, reading: true };
        assert!(s.poll_tx(t1, &mut src).is_none(), "the ACK waits for the response");
        assert!(!s.wants_tx(t1));
        // The read completes: the response goes, carrying the ACK.
        src.ready_to = 300_000;
        s.unblock();
        let g = s.poll_tx(t1, &mut src).expect("the response");
        assert!(g.payload_len > 200);
        assert_eq!(g.fields.ack, rcv_nxt, "the response acknowledges the request");
        // Woken while the bytes still cannot go (no window): the ACK goes alone.
        let mut s = fresh();
        s.on_segment(&cfg, t1, &request(6), 1000);
        s.set_stream_len(300_000);
        let mut src = Partial { ready_to: 200, reading: true };
        assert!(s.poll_tx(t1, &mut src).is_none());
        s.snd_wnd = 0;
        s.unblock();
        let g = s.poll_tx(t1, &mut src).expect("the ACK");
        assert_eq!((g.payload_len, g.fields.flags), (0, flags::ACK));
        // A second segment before the answer: acknowledged at once (every second segment).
        let mut s = fresh();
        s.on_segment(&cfg, t1, &request(6), 1000);
        s.set_stream_len(300_000);
        let mut src = Partial { ready_to: 200, reading: true };
        assert!(s.poll_tx(t1, &mut src).is_none());
        let next = 6 + request(6).payload.len() as u32;
        s.on_segment(&cfg, t1, &request(next), 1000);
        assert!(s.wants_tx(t1));
        let g = s.poll_tx(t1, &mut src).expect("the ACK");
        assert_eq!(g.payload_len, 0);
        // Nothing being read: the ready bytes go at once, with the ACK.
        let mut s = fresh();
        s.on_segment(&cfg, t1, &request(6), 1000);
        s.set_stream_len(300_000);
        let g = s.poll_tx(t1, &mut Partial { ready_to: 200, reading: false }).expect("the head");
        assert_eq!(g.payload_len, 200);
    }

    #[test]
    fn retransmissions_are_not_paced() {
        let t0 = SEC;
        let cfg = Config { pacing: true, ..Config::default() };
        let mut s = established(&cfg, t0, 10 << 20);
        let t1 = t0 + 10 * MS;
        drain(&mut s, t1);
        let t2 = t1 + 10 * MS;
        ack_all(&mut s, &cfg, t2, t1);
        drain(&mut s, t2);
        assert!(!s.pacer.ready(t2), "pacing holds new data back");
        // Duplicate ACKs SACKing all but the first segment: fast retransmit goes out at once.
        let una = s.seq_of(s.snd_una);
        let sack = [Some((s.seq_of(s.snd_una + s.wire_payload() as u64), s.seq_of(s.snd_nxt))), None, None];
        for _ in 0..3 {
            let dup = SegmentIn { seq: 6, ack: Some(una), flags: flags::ACK, window: 65535, sack, timestamp: Some((103, ts_now(t2))), ..Default::default() };
            s.on_segment(&cfg, t2, &dup, 1000);
        }
        assert_eq!(s.counters.fast_retransmits, 1);
        assert!(s.wants_tx(t2));
        let g = s.poll_tx(t2, &mut Pattern).unwrap();
        assert!(g.retransmit);
    }

    /// A peer that shrinks its window (moves its right edge left, below what is already in
    /// flight; RFC 9293 3.8.6.2.2 discourages it but it happens): nothing new goes beyond
    /// the new edge, what is in flight is neither lost nor resent at once, and sending goes
    /// on when the window opens again, to the end of the stream.
    #[test]
    fn a_shrinking_peer_window_stops_new_data_until_it_opens_again() {
        let cfg = Config::default();
        let mut s = established(&cfg, 0, 200_000);
        let t1 = 20 * MS;
        let first = drain(&mut s, t1);
        assert!(first.len() >= 3, "an initial window's worth went out");
        let (una0, nxt0) = (s.snd_una, s.snd_nxt);
        let seg = s.wire_payload() as u64;
        // ACK two segments; the window now ends one segment after that, well before snd_nxt.
        let shrunk = SegmentIn { seq: 6, ack: Some(s.seq_of(una0 + 2 * seg)), flags: flags::ACK, window: (seg >> 7) as u16, timestamp: Some((102, ts_now(t1))), ..Default::default() };
        let out = s.on_segment(&cfg, t1 + 5 * MS, &shrunk, 1000);
        assert_eq!(out.acked, 2 * seg);
        assert!(!out.rejected);
        assert!(s.snd_una + s.snd_wnd < s.snd_nxt, "the right edge moved left of snd_nxt");
        let t2 = t1 + 6 * MS;
        assert!(drain(&mut s, t2).is_empty(), "nothing new beyond the shrunk window");
        assert_eq!(s.snd_nxt, nxt0, "what was in flight stays in flight");
        assert_eq!(s.counters.retransmits, 0);
        // The window opens again: everything is acknowledged as it goes, to the end.
        let mut now = t2;
        for _ in 0..1000 {
            if s.snd_una >= 200_000 {
                break;
            }
            now += MS;
            ack_all(&mut s, &cfg, now, now);
            drain(&mut s, now);
        }
        assert_eq!(s.snd_una, 200_000, "the whole stream went out and was acknowledged");
    }

    /// A server connection past the handshake at time 1, without TCP options: the peer's
    /// next sequence number is 6, ours 10, windows of 1000 bytes.
    fn established_plain(cfg: &Config) -> TcpConn {
        let syn = SegmentIn { seq: 5, flags: flags::SYN, window: 1000, mss: Some(1000), ..Default::default() };
        let mut s = TcpConn::accept(cfg, 0, &syn, 9);
        s.poll_tx(0, &mut Pattern);
        let ack = SegmentIn { seq: 6, ack: Some(10), flags: flags::ACK, window: 1000, ..Default::default() };
        assert!(s.on_segment(cfg, 1, &ack, 1000).established);
        s
    }

    #[test]
    fn a_zero_window_still_takes_acks() {
        let cfg = Config::default();
        let mut s = established_plain(&cfg);
        s.set_stream_len(500);
        let data = s.poll_tx(2, &mut Pattern).unwrap();
        assert_eq!(data.payload_len, 500);
        s.set_receive_window(0);
        // The peer sends more request bytes (beyond our zero window) and ACKs our data.
        let seg = SegmentIn { seq: 6, ack: Some(510), flags: flags::ACK, window: 1000, payload: b"GET / HTTP/1.1", ..Default::default() };
        let out = s.on_segment(&cfg, 3, &seg, 0);
        assert_eq!(out.acked, 500, "the ACK of a segment at a zero window's edge is processed");
        assert_eq!(out.deliver, None, "its data is not taken");
        assert!(!out.rejected);
    }

    /// A zero-window probe asks the application for its one byte as a resend (nothing is
    /// prepared ahead for a peer with no room), whether the peer takes the byte or drops it;
    /// so is what a window smaller than a segment takes; new data once the window opens is
    /// asked for as such. The peer counts as stalled once a probe found its window closed,
    /// and while its window is smaller than a segment.
    #[test]
    fn a_zero_window_probe_asks_for_its_byte_alone() {
        struct Asked(Vec<(u64, usize, bool)>);
        impl DataSource for Asked {
            fn available(&mut self, off: u64, max: usize, resend: bool) -> Ready {
                self.0.push((off, max, resend));
                Ready::now(max)
            }
        }
        let cfg = Config::default();
        let mut s = established_plain(&cfg);
        s.set_stream_len(100_000);
        let mut src = Asked(Vec::new());
        assert_eq!(s.poll_tx(2, &mut src).unwrap().payload_len, 1000);
        assert_eq!(src.0, [(0, 1000, false)]);
        let ack = |s: &TcpConn, off: u64, window: u16| SegmentIn { seq: 6, ack: Some(s.seq_of(off)), flags: flags::ACK, window, ..Default::default() };
        s.on_segment(&cfg, 10 * MS, &ack(&s, 1000, 0), 1000);
        assert!(!s.peer_stalled(), "closed, but no probe has found it closed yet: maybe a pause");
        let mut now = 10 * MS;
        // Taken: the probes go on from the next byte.
        for n in 0..3u64 {
            assert!(s.poll_tx(now, &mut src).is_none());
            now = s.next_deadline().expect("the probe timer runs");
            s.on_timer(&cfg, now);
            assert!(s.peer_stalled(), "the probe's window of one byte is less than a segment");
            src.0.clear();
            assert_eq!(s.poll_tx(now, &mut src).unwrap().payload_len, 1);
            assert_eq!(src.0, [(1000 + n, 1, true)]);
            s.on_segment(&cfg, now + MS, &ack(&s, 1001 + n, 0), 1000);
            assert!(s.peer_stalled());
        }
        // Dropped: the probe goes again (a retransmission).
        assert!(s.poll_tx(now + MS, &mut src).is_none());
        now = s.next_deadline().expect("the probe timer runs");
        s.on_timer(&cfg, now);
        src.0.clear();
        assert_eq!(s.poll_tx(now, &mut src).unwrap().payload_len, 1);
        s.on_segment(&cfg, now + MS, &ack(&s, 1003, 0), 1000);
        now = s.next_deadline().expect("the timer runs");
        s.on_timer(&cfg, now);
        assert_eq!(s.poll_tx(now, &mut src).unwrap().payload_len, 1);
        assert!(src.0.iter().all(|&(off, max, resend)| off == 1003 && max == 1 && resend), "{:?}", src.0);
        // A window smaller than a segment: what it takes, asked for as a resend.
        s.on_segment(&cfg, now + MS, &ack(&s, 1004, 60), 1000);
        assert!(s.peer_stalled());
        src.0.clear();
        assert!(s.poll_tx(now + MS, &mut src).is_some());
        assert_eq!(src.0[0], (1004, 60, true));
        // The window opens: new data, asked for as such.
        s.on_segment(&cfg, now + 2 * MS, &ack(&s, 1064, 5000), 1000);
        assert!(!s.peer_stalled());
        src.0.clear();
        assert!(s.poll_tx(now + 2 * MS, &mut src).is_some());
        assert_eq!(src.0[0], (1064, 1000, false));
    }

    /// A peer that answers each zero-window probe by taking its one byte and announcing a
    /// zero window again moves less than a segment per probe: the idle clock keeps running
    /// (else it would hold the connection, and the response's storage buffer, for ever).
    /// Data from the peer, or a segment's worth of ours acknowledged, restart it.
    #[test]
    fn a_byte_per_zero_window_probe_is_not_progress() {
        let cfg = Config::default();
        let mut s = established_plain(&cfg);
        s.set_stream_len(100_000);
        let first = s.poll_tx(2, &mut Pattern).unwrap();
        assert_eq!(first.payload_len, 1000);
        let ack = |s: &TcpConn, off: u64, window: u16, payload: &'static [u8]| SegmentIn { seq: 6, ack: Some(s.seq_of(off)), flags: flags::ACK, window, payload, ..Default::default() };
        // The whole first segment is acknowledged, with a zero window: progress.
        let seg = ack(&s, 1000, 0, b"");
        s.on_segment(&cfg, 10 * MS, &seg, 1000);
        assert_eq!(s.last_progress(), 10 * MS);
        let mut now = 10 * MS;
        for _ in 0..400 {
            assert!(s.poll_tx(now, &mut Pattern).is_none(), "zero window: the probe timer starts, nothing goes");
            now = s.next_deadline().expect("the probe timer runs");
            assert!(!s.on_timer(&cfg, now).closed, "a probe answered is never a retry");
            let probe = s.poll_tx(now, &mut Pattern).expect("a probe");
            assert_eq!(probe.payload_len, 1);
            let seg = ack(&s, s.snd_nxt, 0, b"");
            assert_eq!(s.on_segment(&cfg, now + MS, &seg, 1000).acked, 1);
        }
        assert_eq!(s.snd_una, 1400);
        assert!(now > 60 * SEC, "400 probes took {} s", now / SEC);
        assert_eq!(s.last_progress(), 10 * MS, "400 one-byte probes moved nothing on");
        // A bare ACK, a window update, a duplicate of old data: nothing either.
        for seg in [ack(&s, 1400, 0, b""), ack(&s, 1400, 1, b"")] {
            s.on_segment(&cfg, now + 2 * MS, &seg, 1000);
        }
        let old = SegmentIn { seq: 5, ..ack(&s, 1400, 0, b"G") };
        s.on_segment(&cfg, now + 2 * MS, &old, 1000);
        assert_eq!(s.last_progress(), 10 * MS);
        // A request byte taken is.
        let seg = ack(&s, 1400, 0, b"G");
        assert!(s.on_segment(&cfg, now + 3 * MS, &seg, 1000).deliver.is_some());
        assert_eq!(s.last_progress(), now + 3 * MS);
        // So is a segment's worth of ours acknowledged since the last progress, however it
        // comes: 400 bytes by the probes, then 600 of a segment.
        s.set_receive_window(0);
        let seg = SegmentIn { seq: 7, ..ack(&s, 1400, 1000, b"") };
        s.on_segment(&cfg, now + 4 * MS, &seg, 0);
        assert_eq!(s.poll_tx(now + 4 * MS, &mut Pattern).map(|g| g.payload_len), Some(1000), "the window opened");
        let seg = SegmentIn { seq: 7, ..ack(&s, 1999, 1000, b"") };
        assert_eq!(s.on_segment(&cfg, now + 5 * MS, &seg, 0).acked, 599);
        assert_eq!(s.last_progress(), now + 3 * MS, "999 bytes since the last mark");
        let seg = SegmentIn { seq: 7, ..ack(&s, 2000, 1000, b"") };
        s.on_segment(&cfg, now + 6 * MS, &seg, 0);
        assert_eq!(s.last_progress(), now + 6 * MS, "1000 bytes since the last mark");
    }

    /// A RST ending a connection whose peer closed its window lands on the window's edge
    /// (what the peer expects next), not on SND.NXT past it; with the window open, on SND.NXT.
    #[test]
    fn a_reset_past_a_closed_window_lands_on_its_edge() {
        let cfg = Config::default();
        let mut s = established_plain(&cfg);
        s.set_stream_len(5000);
        assert_eq!(s.poll_tx(2, &mut Pattern).map(|g| g.payload_len), Some(1000));
        let closed = SegmentIn { seq: 6, ack: Some(s.seq_of(400)), flags: flags::ACK, window: 0, ..Default::default() };
        s.on_segment(&cfg, 3, &closed, 1000);
        s.abort();
        let rst = s.poll_tx(4, &mut Pattern).expect("a RST");
        assert_eq!(rst.fields.flags, flags::RST | flags::ACK);
        assert_eq!(rst.fields.seq, s.seq_of(400), "the peer took 400 bytes and no more");
        let mut s = established_plain(&cfg);
        s.set_stream_len(5000);
        s.poll_tx(2, &mut Pattern).unwrap();
        s.abort();
        assert_eq!(s.poll_tx(4, &mut Pattern).map(|g| g.fields.seq), Some(s.seq_of(1000)));
    }

    /// The segment that completes the handshake can come from beyond RCV.NXT (the peer's
    /// first data segment arrived before the lost one ahead of it, or an injection): the
    /// window it carries must not be frozen by it. Later ACKs update it, and so does any
    /// ACK of new data (found by fuzz net_frames: a zero window for ever, probed a byte at a
    /// time).
    #[test]
    fn a_handshake_ack_from_beyond_rcv_nxt_does_not_freeze_the_window() {
        let cfg = Config::default();
        let syn = SegmentIn { seq: 5, flags: flags::SYN, window: 1000, mss: Some(1000), ..Default::default() };
        let mut s = TcpConn::accept(&cfg, 0, &syn, 9);
        s.poll_tx(0, &mut Pattern);
        let ahead = SegmentIn { seq: 6 + 88, ack: Some(10), flags: flags::ACK, window: 0, payload: b"later", ..Default::default() };
        assert!(s.on_segment(&cfg, 1, &ahead, 1000).established);
        assert_eq!(s.snd_wnd, 0);
        let update = SegmentIn { seq: 6, ack: Some(10), flags: flags::ACK, window: 1000, ..Default::default() };
        s.on_segment(&cfg, 2, &update, 1000);
        assert_eq!(s.snd_wnd, 1000, "an in-order window update is taken");
        // SND.WL1 ahead of the peer by any other way: an ACK of new data still moves it.
        s.set_stream_len(10_000);
        s.poll_tx(3, &mut Pattern).unwrap();
        s.snd_wl1 = 6 + 88;
        let acked = SegmentIn { seq: 6, ack: Some(s.seq_of(500)), flags: flags::ACK, window: 700, ..Default::default() };
        s.on_segment(&cfg, 4, &acked, 1000);
        assert_eq!(s.snd_wnd, 700);
    }

    /// The peer's FIN arrives again because our ACK of it was lost: it is ACKed again, or
    /// the peer retransmits it until it gives up. A FIN ahead of a hole is ACKed too.
    #[test]
    fn a_fin_received_again_is_acked_again() {
        let cfg = Config::default();
        let mut s = established_plain(&cfg);
        let ahead = SegmentIn { seq: 9, ack: Some(10), flags: flags::ACK | flags::FIN, window: 1000, ..Default::default() };
        assert!(!s.on_segment(&cfg, 2, &ahead, 1000).peer_fin);
        assert_eq!(s.poll_tx(2, &mut Pattern).map(|a| a.fields.ack), Some(6), "a FIN past a hole: duplicate ACK");
        let fin = SegmentIn { seq: 6, ack: Some(10), flags: flags::ACK | flags::FIN, window: 1000, ..Default::default() };
        assert!(s.on_segment(&cfg, 3, &fin, 1000).peer_fin);
        assert_eq!(s.state, State::CloseWait);
        assert_eq!(s.poll_tx(3, &mut Pattern).map(|a| a.fields.ack), Some(7));
        assert!(!s.wants_tx(3));
        // Our ACK was lost; the FIN comes again.
        assert!(!s.on_segment(&cfg, 4, &fin, 1000).peer_fin);
        assert_eq!(s.poll_tx(4, &mut Pattern).map(|a| a.fields.ack), Some(7), "the FIN is ACKed again");
        assert_eq!(s.state, State::CloseWait);
    }

    #[test]
    fn an_aborted_connection_has_nothing_left_to_time() {
        let cfg = Config::default();
        let mut s = established(&cfg, 0, 100_000);
        drain(&mut s, 20 * MS);
        assert!(s.next_deadline().is_some(), "data in flight: the RTO runs");
        while s.state != State::Closed {
            let now = s.next_deadline().expect("a deadline until the connection gives up");
            s.on_timer(&cfg, now);
            drain(&mut s, now);
        }
        assert_eq!(s.next_deadline(), None, "a closed connection is never due again");
    }

    /// A window scale of our own (the benchmark's clients announce one): offered in the SYN,
    /// whose window is never scaled; then a window past 64 KiB is announced in its units and
    /// data up to it is taken. A peer whose SYN carries no scale gets an unscaled window.
    #[test]
    fn our_window_scale_lets_the_receive_window_pass_64_kib() {
        let cfg = Config { rcv_window_shift: 3, ..Config::default() };
        let mut c = TcpConn::connect(&cfg, 0, 1000);
        c.set_receive_window(256 << 10);
        let syn = c.poll_tx(0, &mut Pattern).unwrap();
        assert_eq!((syn.fields.options.window_scale, syn.fields.window), (Some(3), 65535));
        let syn_ack = SegmentIn { seq: 5, ack: Some(1001), flags: flags::SYN | flags::ACK, window: 64240, mss: Some(1460), window_scale: Some(7), ..Default::default() };
        assert!(c.on_segment(&cfg, 1, &syn_ack, 256 << 10).established);
        let ack = c.poll_tx(1, &mut Pattern).unwrap();
        assert_eq!(ack.fields.window, 32768, "256 KiB in units of 8 bytes");
        let data = vec![7u8; 100_000];
        let seg = SegmentIn { seq: 6, ack: Some(1001), flags: flags::ACK, window: 500, payload: &data, ..Default::default() };
        let out = c.on_segment(&cfg, 2, &seg, 256 << 10);
        assert_eq!(out.deliver.map(|(_, n)| n), Some(100_000), "all of it lies inside the 256 KiB window");
        // The same shift offered to a peer that does not scale: no scaling either way.
        let syn = SegmentIn { seq: 5, flags: flags::SYN, window: 64240, mss: Some(1400), ..Default::default() };
        let mut s = TcpConn::accept(&cfg, 0, &syn, 9);
        s.set_receive_window(256 << 10);
        let sa = s.poll_tx(0, &mut Pattern).unwrap();
        assert_eq!((sa.fields.options.window_scale, sa.fields.window), (None, 65535));
        let ack = SegmentIn { seq: 6, ack: Some(10), flags: flags::ACK, window: 500, ..Default::default() };
        assert!(s.on_segment(&cfg, 1, &ack, 256 << 10).established);
        s.ack = AckOwed::Yes;
        assert_eq!(s.poll_tx(1, &mut Pattern).unwrap().fields.window, 65535);
    }

    /// The handshake is the first RTT sample, so that connections opened together do not
    /// share one back-off schedule: from the echoed timestamp even when the SYN-ACK went out
    /// twice; without timestamps only from a SYN sent once (Karn), else the RTO restarts at
    /// 3 s (RFC 6298 5.7).
    #[test]
    fn the_handshake_is_the_first_rtt_sample() {
        let cfg = Config::default();
        let t0 = SEC;
        // Passive open with timestamps; the ACK echoes the second SYN-ACK, 30 ms after it.
        let syn = SegmentIn { seq: 5, flags: flags::SYN, window: 65535, mss: Some(1460), timestamp: Some((100, 0)), ..Default::default() };
        let mut s = TcpConn::accept(&cfg, t0, &syn, 9);
        s.poll_tx(t0, &mut Pattern).unwrap();
        let again = s.next_deadline().unwrap();
        assert!(!s.on_timer(&cfg, again).closed);
        s.poll_tx(again, &mut Pattern).unwrap();
        assert_eq!(s.rto, 2 * cfg.init_rto, "backed off");
        let ack = SegmentIn { seq: 6, ack: Some(10), flags: flags::ACK, window: 65535, timestamp: Some((101, ts_now(again))), ..Default::default() };
        assert!(s.on_segment(&cfg, again + 30 * MS, &ack, 1000).established);
        assert_eq!(s.srtt, 30 * MS);
        assert_eq!(s.rto, cfg.min_rto, "30 ms + 4 x 15 ms, raised to the floor");
        // The same, but the ACK echoes the first copy: it may answer the second, so no
        // sample (it would span the back-off), and the RTO restarts at 3 s.
        let mut s = TcpConn::accept(&cfg, t0, &syn, 9);
        s.poll_tx(t0, &mut Pattern).unwrap();
        let again = s.next_deadline().unwrap();
        assert!(!s.on_timer(&cfg, again).closed);
        s.poll_tx(again, &mut Pattern).unwrap();
        let ack = SegmentIn { seq: 6, ack: Some(10), flags: flags::ACK, window: 65535, timestamp: Some((101, ts_now(t0))), ..Default::default() };
        assert!(s.on_segment(&cfg, again + 30 * MS, &ack, 1000).established);
        assert_eq!((s.srtt, s.rto), (0, 3 * SEC));
        // Without timestamps, a SYN-ACK sent once: timed from when it went.
        let syn = SegmentIn { seq: 5, flags: flags::SYN, window: 65535, mss: Some(1460), ..Default::default() };
        let mut s = TcpConn::accept(&cfg, t0, &syn, 9);
        s.poll_tx(t0, &mut Pattern).unwrap();
        let ack = SegmentIn { seq: 6, ack: Some(10), flags: flags::ACK, window: 65535, ..Default::default() };
        assert!(s.on_segment(&cfg, t0 + 25 * MS, &ack, 1000).established);
        assert_eq!(s.srtt, 25 * MS);
        // Sent twice: the ACK may answer either, so no sample, and the RTO restarts at 3 s.
        let mut s = TcpConn::accept(&cfg, t0, &syn, 9);
        s.poll_tx(t0, &mut Pattern).unwrap();
        let again = s.next_deadline().unwrap();
        assert!(!s.on_timer(&cfg, again).closed);
        s.poll_tx(again, &mut Pattern).unwrap();
        assert!(s.on_segment(&cfg, again + 25 * MS, &ack, 1000).established);
        assert_eq!((s.srtt, s.rto), (0, 3 * SEC));
        // Active open: the SYN-ACK 20 ms after the SYN.
        let mut c = TcpConn::connect(&cfg, t0, 1000);
        c.poll_tx(t0, &mut Pattern).unwrap();
        let syn_ack = SegmentIn { seq: 5, ack: Some(1001), flags: flags::SYN | flags::ACK, window: 64240, mss: Some(1460), ..Default::default() };
        assert!(c.on_segment(&cfg, t0 + 20 * MS, &syn_ack, 1000).established);
        assert_eq!(c.srtt, 20 * MS);
        assert_eq!(c.rto, cfg.min_rto);
        // Our SYN sent four times across a partition; the SYN-ACK that finally comes echoes
        // the first (the peer repeated its SYN-ACK without taking the later copies' stamps).
        let mut c = TcpConn::connect(&cfg, t0, 1000);
        c.poll_tx(t0, &mut Pattern).unwrap();
        let mut now = t0;
        for _ in 0..3 {
            now = c.next_deadline().unwrap();
            assert!(!c.on_timer(&cfg, now).closed);
            c.poll_tx(now, &mut Pattern).unwrap();
        }
        let syn_ack = SegmentIn { timestamp: Some((7, ts_now(t0))), ..syn_ack };
        assert!(c.on_segment(&cfg, now + 20 * MS, &syn_ack, 1000).established);
        assert_eq!((c.srtt, c.rto), (0, 3 * SEC), "not a 7-second sample");
    }

    #[test]
    fn a_syn_queued_again_is_dropped_once_the_handshake_completes() {
        let cfg = Config::default();
        // Server: the SYN-ACK's timer fires, then the client's ACK arrives before the SYN-ACK
        // went out again.
        let syn = SegmentIn { seq: 5, flags: flags::SYN, window: 64240, mss: Some(1400), ..Default::default() };
        let mut s = TcpConn::accept(&cfg, 0, &syn, 9);
        s.poll_tx(0, &mut Pattern).unwrap();
        let rto = s.next_deadline().unwrap();
        assert!(!s.on_timer(&cfg, rto).closed);
        assert!(s.wants_tx(rto), "the SYN-ACK is due again");
        let ack = SegmentIn { seq: 6, ack: Some(10), flags: flags::ACK, window: 500, ..Default::default() };
        assert!(s.on_segment(&cfg, rto + 1, &ack, 1000).established);
        assert!(!s.wants_tx(rto + 1), "established with nothing to send");
        assert!(s.poll_tx(rto + 1, &mut Pattern).is_none());
        // Client: the SYN's timer fires, then the SYN-ACK arrives: one ACK, then nothing.
        let mut c = TcpConn::connect(&cfg, 0, 100);
        c.poll_tx(0, &mut Pattern).unwrap();
        let rto = c.next_deadline().unwrap();
        assert!(!c.on_timer(&cfg, rto).closed);
        let syn_ack = SegmentIn { seq: 700, ack: Some(101), flags: flags::SYN | flags::ACK, window: 500, mss: Some(1400), ..Default::default() };
        assert!(c.on_segment(&cfg, rto + 1, &syn_ack, 1000).established);
        let sent = c.poll_tx(rto + 1, &mut Pattern).unwrap();
        assert_eq!(sent.fields.flags, flags::ACK);
        assert!(!c.wants_tx(rto + 1));
        assert!(c.poll_tx(rto + 1, &mut Pattern).is_none());
    }

    #[test]
    fn handshake_negotiates_options() {
        let cfg = Config::default();
        let syn = SegmentIn { seq: 5, flags: flags::SYN, window: 64240, mss: Some(1400), window_scale: Some(7), sack_permitted: true, timestamp: Some((100, 0)), ..Default::default() };
        let mut s = TcpConn::accept(&cfg, 0, &syn, 9);
        let sa = s.poll_tx(0, &mut Pattern).unwrap();
        assert_eq!(sa.fields.flags, flags::SYN | flags::ACK);
        assert_eq!(sa.fields.ack, 6);
        assert_eq!(sa.fields.options.mss, Some(1400));
        assert_eq!(sa.fields.options.window_scale, Some(0));
        assert!(sa.fields.options.sack_permitted);
        assert_eq!(sa.fields.options.timestamp.map(|t| t.1), Some(100));
        // A RST with a sequence in the window but not exact gets a challenge ACK, not a reset.
        let ack = SegmentIn { seq: 6, ack: Some(10), flags: flags::ACK, window: 500, timestamp: Some((101, 0)), ..Default::default() };
        assert!(s.on_segment(&cfg, 1, &ack, 1000).established);
        assert_eq!(s.snd_wnd, 500 << 7);
        let rst = SegmentIn { seq: 100, flags: flags::RST, ..Default::default() };
        let out = s.on_segment(&cfg, 2, &rst, 1000);
        assert!(out.challenge_ack && !out.reset);
        let rst = SegmentIn { seq: 6, flags: flags::RST, ..Default::default() };
        assert!(s.on_segment(&cfg, 3, &rst, 1000).reset);
        assert_eq!(s.state, State::Closed);
    }
}

/// The SACK scoreboard against a byte-set model.
#[cfg(test)]
mod sack_props {
    use super::*;
    use proptest::prelude::*;

    /// Offsets the properties work in (small, so the model is a bitmap).
    const SPACE: u64 = 3000;

    fn conn(iss: u32, una: u64, nxt: u64) -> TcpConn {
        let mut c = TcpConn::connect(&Config::default(), 0, iss);
        c.state = State::Established;
        c.sack_ok = true;
        c.ts_ok = false;
        c.mss = 100;
        c.snd_una = una;
        c.snd_nxt = nxt;
        c.stream_len = nxt;
        c
    }

    fn blocks(c: &TcpConn) -> Vec<(u64, u64)> {
        c.sacked[..usize::from(c.sacked_n)].to_vec()
    }

    fn covered(c: &TcpConn, off: u64) -> bool {
        blocks(c).iter().any(|&(l, r)| l <= off && off < r)
    }

    /// Maximal runs of set bits at or above `from`.
    fn runs(model: &[bool], from: u64) -> usize {
        (from as usize..model.len()).filter(|&i| model[i] && (i == from as usize || !model[i - 1])).count()
    }

    fn check_shape(c: &TcpConn) -> Result<(), TestCaseError> {
        let b = blocks(c);
        prop_assert!(b.len() <= 4);
        for w in b.windows(2) {
            prop_assert!(w[0].1 < w[1].0, "blocks sorted, apart, merged when touching: {:?}", b);
        }
        for &(l, r) in &b {
            prop_assert!(l < r && l >= c.snd_una && r <= c.snd_nxt, "block {:?} inside [una, nxt) = [{}, {})", (l, r), c.snd_una, c.snd_nxt);
        }
        Ok(())
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A SACK block as the peer would send it: offsets relative to `snd_una`, may reach
        /// before it and past `snd_nxt`, or be reversed.
        Sack(i64, i64),
        /// A cumulative ACK advancing `snd_una`.
        Ack(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (-200i64..3200, -200i64..3200).prop_map(|(a, b)| Op::Sack(a, b)),
            4 => (-200i64..3200, 1i64..400).prop_map(|(a, n)| Op::Sack(a, a + n)),
            1 => (0u64..300).prop_map(Op::Ack),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn scoreboard_is_sound_exact_while_it_fits_and_keeps_the_highest_block(
            iss in any::<u32>(), una in 0u64..200, ops in proptest::collection::vec(op(), 1..24),
        ) {
            let nxt = SPACE;
            let mut c = conn(iss, una, nxt);
            // Bytes the peer SACKed (in offsets), never forgotten by the model.
            let mut model = vec![false; SPACE as usize];
            let mut lossless = true;
            for op in ops {
                match op {
                    Op::Sack(a, b) => {
                        // In sequence space (offsets below 0 wrap below the ISS).
                        let at = |off: i64| c.iss.wrapping_add(1).wrapping_add(off as u32);
                        let (l, r) = (at(c.snd_una as i64 + a), at(c.snd_una as i64 + b));
                        let mut seg = SegmentIn::default();
                        seg.sack[0] = Some((l, r));
                        c.update_sack(&seg);
                        for o in c.snd_una..nxt {
                            let s = c.seq_of(o);
                            if seq::le(l, s) && seq::lt(s, r) {
                                model[o as usize] = true;
                            }
                        }
                    }
                    Op::Ack(n) => {
                        c.snd_una = (c.snd_una + n).min(nxt);
                        c.prune_sack();
                    }
                }
                check_shape(&c)?;
                if runs(&model, c.snd_una) > 4 {
                    lossless = false;
                }
                let live = |o: u64| o >= c.snd_una && model[o as usize];
                for o in 0..nxt {
                    if covered(&c, o) {
                        prop_assert!(live(o), "byte {} SACKed on the scoreboard but never by the peer", o);
                    } else if lossless {
                        prop_assert!(!live(o), "byte {} SACKed by the peer, missing while at most 4 runs", o);
                    }
                    prop_assert_eq!(c.is_sacked(o).is_some(), covered(&c, o));
                }
                if let Some(top) = (c.snd_una..nxt).rev().find(|&o| live(o)) {
                    prop_assert_eq!(blocks(&c).last().map(|b| b.1), Some(top + 1), "the highest SACKed byte is always kept");
                }
            }
        }

        #[test]
        fn unsacked_in_counts_holes(
            raw in proptest::collection::vec((0u64..SPACE, 1u64..300), 0..8), from in 0u64..SPACE, len in 0u64..SPACE,
        ) {
            let mut c = conn(0, 0, SPACE);
            for (l, n) in raw {
                c.add_sack(l, (l + n).min(SPACE));
            }
            check_shape(&c)?;
            let to = (from + len).min(SPACE);
            let holes = (from..to).filter(|&o| !covered(&c, o)).count() as u64;
            prop_assert_eq!(c.unsacked_in(from, to), holes);
            prop_assert_eq!(c.unsacked_in(to, from.min(to)), 0, "an empty or reversed range has no holes");
            let total: u64 = blocks(&c).iter().map(|&(l, r)| r - l).sum();
            prop_assert_eq!(c.sacked_bytes(), total);
            prop_assert_eq!(c.unsacked_in(0, SPACE), SPACE - total);
        }

        #[test]
        fn retransmission_walk_covers_exactly_the_holes(
            raw in proptest::collection::vec((0u64..SPACE, 1u64..300), 0..8), start in 0u64..SPACE, end in 0u64..SPACE + 100, una in 0u64..500,
        ) {
            let mut c = conn(7, 0, SPACE);
            for (l, n) in raw {
                c.add_sack(l, (l + n).min(SPACE));
            }
            c.snd_una = una;
            c.prune_sack();
            c.rexmit_next = start;
            c.rexmit_end = end.min(SPACE);
            let mut sent = vec![false; SPACE as usize];
            let mut rounds = 0;
            while let Some((off, max)) = c.next_rexmit() {
                rounds += 1;
                prop_assert!(rounds < 10_000);
                prop_assert!(max > 0 && max <= c.max_payload(), "hole of {} bytes", max);
                for o in off..off + max {
                    prop_assert!(!covered(&c, o), "retransmits SACKed byte {}", o);
                    prop_assert!(o >= una && o >= start && o < c.rexmit_end, "byte {} outside the range", o);
                    prop_assert!(!sent[o as usize], "byte {} twice", o);
                    sent[o as usize] = true;
                }
                c.rexmit_next = off + max; // as poll_tx does when the source has the bytes
            }
            for o in start.max(una)..c.rexmit_end {
                prop_assert_eq!(sent[o as usize], !covered(&c, o), "byte {}", o);
            }
        }
    }
}
