//! HTTP/1.1 and HTTPS over the TCP stack: parses requests out of each connection's receive
//! buffer (after opening TLS records, on the HTTPS port), plans responses against the volume,
//! and serves the response stream by pulling it.
//!
//! A response is a head (kept: a few hundred bytes, sealed as one record under TLS) followed
//! by an object range that is read from storage into 512 KiB DMA chunks only when TCP asks for
//! those bytes. Under TLS the records of a chunk are sealed in place as soon as its read
//! completes; their 5-byte headers and 17-byte trailers live beside the chunk, so storage DMA
//! lands exactly where the NIC reads. From a volume in memory (a file on tmpfs, mapped) the
//! records are sealed out of the mapping into the chunk's buffer when TCP asks for them: the
//! seal is the read ([`Storage::mapped`]). Record boundaries and sequence numbers are a function of
//! the stream offset ([`ResponseLayout`]), so a chunk released at a retransmission timeout is
//! read and sealed again to the same bytes. Chunks go back to the pool once sent (a
//! retransmission reads and seals them again), and, not yet sent, when the client's window
//! closes (a client that stops reading holds no storage buffer).
//!
//! An idle keep-alive connection holds no buffer: receive buffers (and, under TLS, record
//! reassembly buffers) are lent by per-core pools made at start-up only while a request is
//! being received, the chunk bookkeeping only while storage buffers are held. Queued
//! responses, TLS handshakes and TLS sessions live in per-core slabs sized at start-up for
//! every connection ([`Slab`]), so accepting a connection or answering a request allocates
//! nothing. A connection that finds a pool empty stops
//! reading (zero window) and waits in line for a buffer ([`Stats::http_rx_buffer_waits`]).
//!
//! With TLS emulation on ([`HttpApp::enable_tls_emulation`], benchmarks only) a plain HTTP
//! response's head goes in clear and its body as records sealed the same way with a public
//! dummy key ([`crate::tls::emulation`]).
//!
//! Where each byte of a response stream lies (heads, chunks, sealed records) is worked out in
//! `stream.rs`; the tests are in `tests.rs` beside this file.

use std::collections::VecDeque;
use std::sync::Arc;

use drivers::storage::{Completion, DmaBuf, DmaPool, Storage};

use crate::http::{self, Limits, ObjectMeta, Parse, Plan, MAX_HEAD_LEN};
use crate::net::iface::{App, CloseReason, Parts, Stack};
use crate::net::tcp::table::ConnId;
use crate::net::tcp::{Ready, State, TcpConn};
use crate::net::Instant;
use crate::server::slab::{Slab, SlabKey};
use crate::stats::Stats;
use crate::tls::handshake::{HandshakeDriver, HandshakeProgress, Incoming, RecordSession};
use crate::tls::layout::{RecordFormat, ResponseLayout, RECORD_PLAINTEXT};
use crate::tls::record::{self, CONTENT_APPLICATION_DATA};
use crate::tls::{AeadImpl, TlsError};
use crate::volume::Library;

mod stream;
#[cfg(test)]
mod tests;

use stream::{free_ready_chunks_below, ready_len, release_chunks, seal_chunk, walk_ready, yield_read_ahead, FirstChunk, Stop};

/// Bytes of object data per storage read and DMA buffer (a multiple of the record size).
/// 512 KiB rather than 64 or 256: an eighth (a half) of the reads, completions, chunk lookups
/// and buffer turns per byte, fewer frames cut short where a chunk ends, and with fewer
/// buffers the pool stays as small (docs/performance.md).
pub const CHUNK: usize = 512 * 1024;
/// Bytes of each storage buffer past its chunk: room for ring, which cannot seal a TLS 1.3
/// record's content and inner type apart, to borrow the byte after a full chunk's last record
/// as it borrows the next record's first byte for the others (docs/tls.md). A block, so that
/// every buffer stays block-aligned for NVMe; 0.8% more pool.
pub const SEAL_ROOM: usize = 4096;
/// Bytes of each storage buffer: a chunk and the room after it.
pub const BUFFER_LEN: usize = CHUNK + SEAL_ROOM;
/// Chunk slots per sending connection: the chunk being sent and the one read ahead of it
/// (or one read again for a retransmission). Each holds a storage buffer, so this also
/// bounds what one connection that stops reading (a zero window) holds of the pool.
const CHUNKS_PER_CONN: usize = 2;
const RECORDS_PER_CHUNK: usize = CHUNK / RECORD_PLAINTEXT as usize;
const RX_BUF: usize = 16 * 1024;
/// Receive buffers per core, at most (fewer for small storage pools): a buffer is held only
/// while a request head arrives in pieces, so few are in use at once.
const MAX_RX_BUFFERS: usize = 256;
/// Receive buffers per storage buffer: the receive pool holds a quarter of the storage
/// pool's bytes (64 of 16 KiB beside 8 of 512 KiB by default), at least 16 buffers.
const RX_BUFFERS_PER_CHUNK: usize = CHUNK / (4 * RX_BUF);
/// Under pressure on the receive pool, a partial head older than this gives its buffer up
/// ([`HttpApp::evict_oldest_head`]); a client that is not stalling sends its head faster.
const HEAD_EVICT_AFTER: Instant = crate::net::SEC;
/// Emptied response queues kept for reuse, at most (beyond that they are freed).
const MAX_PIPELINED: usize = 16;
const BLOCK: u64 = 4096;
/// Room for a response head plus an error body, sealed as one record (or a control record).
const HEAD_CAP: usize = MAX_HEAD_LEN + 128 + 32;
/// TLS 1.3 record trailer: inner content type + tag. (TLS 1.2 uses the first 16 bytes.)
const TRAILER: usize = record::TLS13_TRAILER_LEN;
const HEADER_MAX: usize = 13;
/// A TLS session's record reassembly buffer.
const RECORD_RX_BUF: usize = crate::tls::handshake::RX_BUF_LEN;
/// Default of [`HttpApp::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: u64 = 10 * crate::net::SEC;

#[derive(Clone, Copy, Debug)]
struct Body {
    /// Storage address of the object's extent: its drive and volume offset
    /// ([`drivers::storage::drives::address`]).
    extent: u64,
    /// Object bytes `[obj_off, obj_off + len)` are sent.
    obj_off: u64,
    len: u64,
    /// The object's size (the last chunk is shorter).
    size: u64,
}

/// The records of a response on a TLS connection, or of an emulated-TLS body.
#[derive(Clone, Copy, Debug)]
struct RespTls {
    layout: ResponseLayout,
    epoch: u32,
    /// Record index of the first body record (1 when there is a head record).
    first_body_rec: u64,
    /// Clear head bytes before the layout's first byte: the HTTP head of an emulated-TLS
    /// response; 0 on a real TLS connection (its head is the layout's first record).
    clear_head: u64,
}

struct Response {
    start: u64,
    /// Plain (and emulated TLS): head and error body. TLS: the sealed head record. Control
    /// records (TLS alerts, KeyUpdate) are responses with only this.
    head: [u8; HEAD_CAP],
    head_len: usize,
    body: Option<Body>,
    tls: Option<RespTls>,
    end: u64,
}

impl Response {
    fn control(start: u64, bytes: &[u8]) -> Response {
        let mut r = Response { start, head: [0; HEAD_CAP], head_len: bytes.len(), body: None, tls: None, end: start + bytes.len() as u64 };
        r.head[..bytes.len()].copy_from_slice(bytes);
        r
    }

    /// The record carrying object byte `p` (TLS responses).
    fn record_of(&self, t: &RespTls, b: &Body, p: u64) -> u64 {
        t.first_body_rec + p / RECORD_PLAINTEXT - b.obj_off / RECORD_PLAINTEXT
    }
}

/// Most responses one connection queues: [`MAX_PIPELINED`] answers and room for control
/// records (close_notify, an alert, KeyUpdate) behind them.
const QUEUE_CAP: usize = MAX_PIPELINED + 4;

/// TLS handshake steps (rustls: curve arithmetic and signing for a ClientHello) one loop
/// iteration runs at most; the rest wait for the next ([`HttpApp::poll_handshakes`]).
const HANDSHAKE_STEPS_PER_POLL: usize = 4;

/// Room in the handshake queue beyond two entries a connection: one receive burst's worth of
/// new entries (at most one a frame) between compactions.
const HS_QUEUE_SLACK: usize = crate::server::pipeline::RX_BURST;

/// A connection's queued responses, oldest first: their places in [`Held::responses`].
#[derive(Default)]
struct RespQueue {
    keys: [SlabKey; QUEUE_CAP],
    head: u8,
    len: u8,
}

impl RespQueue {
    fn len(&self) -> usize {
        self.len as usize
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn key(&self, i: usize) -> Option<SlabKey> {
        (i < self.len()).then(|| self.keys[(self.head as usize + i) % QUEUE_CAP])
    }

    /// Response `i` (0: the oldest).
    fn get<'a>(&self, slab: &'a Slab<Response>, i: usize) -> Option<&'a Response> {
        slab.get(self.key(i)?)
    }

    fn iter<'a>(&'a self, slab: &'a Slab<Response>) -> impl Iterator<Item = &'a Response> + 'a {
        (0..self.len()).filter_map(move |i| self.get(slab, i))
    }

    fn front<'a>(&self, slab: &'a Slab<Response>) -> Option<&'a Response> {
        self.get(slab, 0)
    }
}

/// Per-connection state that not every connection holds, in slabs sized at start-up for
/// every connection the table can hold.
struct Held {
    responses: Slab<Response>,
    /// HTTPS only (empty until TLS is enabled).
    handshakes: Slab<HandshakeDriver>,
    sessions: Slab<RecordSession>,
    /// Connections the table holds at most.
    max_conns: usize,
    /// Connections with at least one response queued.
    busy_queues: usize,
    /// What seals response records ([`HttpApp::seal_with`]).
    aead: AeadImpl,
}

impl Held {
    fn new(max_conns: usize) -> Self {
        // A first response for every connection, and as many again queued behind others
        // (pipelined requests, control records).
        Held { responses: Slab::with_capacity(2 * max_conns), handshakes: Slab::with_capacity(0), sessions: Slab::with_capacity(0), max_conns, busy_queues: 0, aead: AeadImpl::AwsLcRs }
    }

    fn enable_tls(&mut self) {
        if self.sessions.capacity() == 0 {
            self.handshakes = Slab::with_capacity(self.max_conns);
            self.sessions = Slab::with_capacity(self.max_conns);
        }
    }

    /// Whether `q` can queue one more response: always its first; one behind others while
    /// fewer than `max_conns` such wait in the whole core (so the first of every other
    /// connection still finds a place).
    fn has_room(&self, q: &RespQueue) -> bool {
        if q.len() >= QUEUE_CAP {
            return false;
        }
        q.is_empty() || self.responses.len() - self.busy_queues < self.max_conns
    }

    fn push(&mut self, q: &mut RespQueue, r: Response) -> bool {
        if !self.has_room(q) {
            return false;
        }
        let Ok(key) = self.responses.insert(r) else { return false };
        if q.is_empty() {
            self.busy_queues += 1;
        }
        q.keys[(q.head as usize + q.len()) % QUEUE_CAP] = key;
        q.len += 1;
        true
    }

    fn pop_front(&mut self, q: &mut RespQueue) {
        let Some(key) = q.key(0) else { return };
        self.responses.remove(key);
        q.head = ((q.head as usize + 1) % QUEUE_CAP) as u8;
        q.len -= 1;
        if q.is_empty() {
            self.busy_queues -= 1;
        }
    }

    fn clear(&mut self, q: &mut RespQueue) {
        while !q.is_empty() {
            self.pop_front(q);
        }
    }

    /// Give back a connection's TLS state.
    fn drop_tls(&mut self, t: &mut ConnTls) {
        match std::mem::replace(&mut t.phase, TlsPhase::Dead) {
            TlsPhase::Handshake(k) => drop(self.handshakes.remove(k)),
            TlsPhase::Session(k) => drop(self.sessions.remove(k)),
            TlsPhase::Dead => {}
        }
    }

    fn session(&self, c: &HttpConn) -> Option<&RecordSession> {
        match c.tls.as_ref()?.phase {
            TlsPhase::Session(k) => self.sessions.get(k),
            _ => None,
        }
    }

    fn session_mut(&mut self, c: &HttpConn) -> Option<&mut RecordSession> {
        match c.tls.as_ref()?.phase {
            TlsPhase::Session(k) => self.sessions.get_mut(k),
            _ => None,
        }
    }
}

enum ChunkState {
    Free,
    Pending(u64),
    Ready(DmaBuf),
}

/// A DMA buffer holding the object bytes of `[index * CHUNK, (index + 1) * CHUNK)` that one
/// response sends (read from the block holding the first to the block holding the last),
/// and under TLS the headers and trailers of the records sealed in it.
struct Chunk {
    state: ChunkState,
    resp_start: u64,
    index: u64,
    /// Bytes of the chunk before the first block read: the buffer's first byte is object
    /// byte `index * CHUNK + skip` (a range that starts inside the chunk).
    skip: u32,
    /// Stream offset just past this chunk's last byte on the wire (released once ACKed).
    stream_end: u64,
    /// The object offset just past the bytes read (the chunk's end, the body's, or, for a
    /// retransmission, the end of the records it asked for).
    obj_end: u64,
    first_rec: u64,
    hdr: [[u8; HEADER_MAX]; RECORDS_PER_CHUNK],
    trl: [[u8; TRAILER]; RECORDS_PER_CHUNK],
}

impl Chunk {
    const FREE: Chunk = Chunk {
        state: ChunkState::Free,
        resp_start: 0,
        index: 0,
        skip: 0,
        stream_end: 0,
        obj_end: 0,
        first_rec: 0,
        hdr: [[0; HEADER_MAX]; RECORDS_PER_CHUNK],
        trl: [[0; TRAILER]; RECORDS_PER_CHUNK],
    };

    /// The object offset of the buffer's first byte.
    fn buf_base(&self) -> u64 {
        self.index * CHUNK as u64 + u64::from(self.skip)
    }

    /// Whether the chunk holds (or its read will bring) object byte `pos`.
    fn holds(&self, pos: u64) -> bool {
        (self.buf_base()..self.obj_end).contains(&pos)
    }
}

/// What became of a chunk that was asked for ([`HttpApp::start_read`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadStart {
    /// A read is under way: its completion wakes the connection.
    Started,
    /// Ready now (the medium is in memory, and was read as the chunk was sealed).
    Filled,
    /// No buffer, slot or queue room (the connection waits in line), or the read was refused.
    NotStarted,
}

/// The session a connection's response bodies are sealed with: its own under TLS (once the
/// handshake is over), the emulation's on plain HTTP when that is on.
fn body_session<'a>(held: &'a Held, emulation: Option<&'a RecordSession>, tls: Option<&ConnTls>) -> Option<&'a RecordSession> {
    match tls {
        Some(t) => match t.phase {
            TlsPhase::Session(k) => held.sessions.get(k),
            _ => None,
        },
        // A plain connection's records are emulated TLS (only made when on).
        None => emulation,
    }
}

/// Make chunk `ki` of `c` ready to send from `buf`: holding the bytes read, or (`from`) to
/// receive the medium's bytes as its TLS records are sealed out of place. Chunks of
/// responses without records take their bytes as read. A chunk wholly below `acked` goes
/// back at once. Err: sealing failed (logged and counted; the chunk is freed): the
/// connection must end.
#[allow(clippy::too_many_arguments)] // the disjoint parts of the app one completion needs
fn finish_chunk(
    held: &Held,
    session: Option<&RecordSession>,
    stats: &mut Stats,
    c: &mut HttpConn,
    ki: usize,
    mut buf: DmaBuf,
    from: Option<&[u8]>,
    acked: u64,
) -> Result<(), ()> {
    let HttpConn { responses, chunks, .. } = c;
    let Some(chunks) = chunks.as_deref_mut() else { return Ok(()) };
    let resp_start = chunks[ki].resp_start;
    let sealed = match (session, responses.iter(&held.responses).find(|r| r.start == resp_start)) {
        (Some(s), Some(r)) if r.tls.is_some() => crate::accounting::sealing(|| seal_chunk(s, held.aead, r, &mut chunks[ki], &mut buf, from)),
        _ => {
            if let Some(from) = from {
                buf.as_mut_slice()[..from.len()].copy_from_slice(from);
            }
            Ok(0)
        }
    };
    let k = &mut chunks[ki];
    match sealed {
        Ok(records) => {
            stats.tls_records_sealed += records;
            k.state = if k.stream_end > acked { ChunkState::Ready(buf) } else { ChunkState::Free };
            Ok(())
        }
        Err(err) => {
            log::warn!("sealing records failed, closing the connection: {err}");
            stats.tls_bad_records += 1;
            k.state = ChunkState::Free;
            Err(())
        }
    }
}

#[derive(Clone, Copy)]
enum TlsPhase {
    /// In [`Held::handshakes`].
    Handshake(SlabKey),
    /// In [`Held::sessions`].
    Session(SlabKey),
    /// The handover failed: nothing more is sent or received.
    Dead,
}

/// TLS state of a connection on the HTTPS port.
struct ConnTls {
    phase: TlsPhase,
    /// After the handshake: its output not yet acknowledged, from stream offset `hs_base`.
    hs_out: Vec<u8>,
    hs_base: u64,
    /// Next record sequence number and the epoch it belongs to.
    next_seq: u64,
    epoch: u32,
    /// The connection failed (alert queued or sent): nothing more is parsed.
    failed: bool,
    /// Its next handshake step waits in [`HttpApp::hs_queue`].
    hs_queued: bool,
    /// The session may hold a reassembly buffer: set before anything can give it one (a
    /// loan, received bytes, the handover), cleared only when it gave its buffer back. While
    /// clear, the ACKs of a long response need not touch the session (a cache miss per ACK
    /// at many connections): it holds no buffer, and its free space is a whole buffer's.
    rx_buf_maybe: bool,
    records_opened_seen: u64,
}

/// The chunk slots of a connection that holds storage buffers (lent by [`HttpApp`]).
type ChunkSet = [Chunk; CHUNKS_PER_CONN];

/// A receive buffer lent by a [`BufPool`]: bytes `[..len]` arrived and are not parsed yet.
struct RxBuf {
    buf: Box<[u8]>,
    len: usize,
}

impl RxBuf {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Append what fits; returns how much did.
    fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// Drop the first `n` bytes (a parsed head); a pipelined rest moves to the front.
    fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

/// Equal buffers made at start-up and lent to connections only while they need one: taking
/// and giving back never allocate, and what the pool holds is fixed.
pub struct BufPool {
    free: Vec<Box<[u8]>>,
    size: usize,
    count: usize,
}

impl BufPool {
    pub fn new(count: usize, size: usize) -> Self {
        BufPool { free: (0..count).map(|_| vec![0u8; size].into_boxed_slice()).collect(), size, count }
    }

    fn take(&mut self) -> Option<Box<[u8]>> {
        self.free.pop()
    }

    fn give(&mut self, buf: Box<[u8]>) {
        // The free list has room for every buffer of the pool: pushing never allocates.
        if buf.len() == self.size && self.free.len() < self.count {
            self.free.push(buf);
        }
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes the pool holds (lent or not): a per-core cost, not a per-connection one.
    pub fn reserved_bytes(&self) -> usize {
        self.count * self.size
    }
}

/// Per-connection HTTP state. What an idle connection does not use is not held here: see
/// the module comment.
pub struct HttpConn {
    /// Lent only while unparsed request bytes are held (or a waiter was granted one).
    rx: Option<RxBuf>,
    responses: RespQueue,
    /// Lent only while a chunk is not free (a read pending or bytes unacknowledged).
    chunks: Option<Box<ChunkSet>>,
    stream_len: u64,
    /// No more requests are parsed (close after the queued responses).
    closing: bool,
    /// The peer sent its FIN: close once its requests are answered.
    peer_fin: bool,
    read_seq: u16,
    /// Queued in [`HttpApp::buffer_waiters`].
    waiting: bool,
    /// Queued in [`HttpApp::rx_waiters`].
    rx_waiting: bool,
    /// A read of its body was refused (a drive that failed): queued in
    /// [`HttpApp::refused`] to be ended.
    refused: bool,
    tls: Option<ConnTls>,
    /// Requests parsed on this connection (saturating: what matters is whether there was one).
    pub requests: u32,
    /// A request head (or, on a new connection, the TLS handshake and the first head) must
    /// be complete by then; `None` between requests (the idle timeout applies there).
    head_deadline: Option<Instant>,
    /// What `available` last found ready in a body chunk, so that the next segments from it
    /// are promised without walking its records again: see [`ReadyHint`].
    ready_hint: ReadyHint,
}

/// The stream offset up to which bytes lie ready, one after another, in the body chunk
/// `available` last walked into (0: nothing known). Asks for new bytes come at rising
/// offsets (TCP's next byte to send), so an ask that ends before it is answered without a
/// walk, until the chunk's end. It is a hint: `payload` walks for the bytes themselves, and
/// if they are not all there the stack takes the segment back ([`App::payload_short`]
/// forgets the hint). Chunks given back before they are sent forget it too. While `ahead`
/// (the next chunk's read could not start: no slot or no buffer), any chunk given back and
/// any buffer granted forgets it, so that the next ask walks and starts that read. Both in
/// one word (`ahead` in the top bit: stream offsets stay far below 2^63), as every
/// connection carries it.
#[derive(Clone, Copy, Debug, Default)]
struct ReadyHint(u64);

impl ReadyHint {
    const AHEAD: u64 = 1 << 63;

    fn new(to: u64, ahead: bool) -> ReadyHint {
        ReadyHint(to.min(Self::AHEAD - 1) | if ahead { Self::AHEAD } else { 0 })
    }

    fn to(self) -> u64 {
        self.0 & !Self::AHEAD
    }

    fn ahead(self) -> bool {
        self.0 & Self::AHEAD != 0
    }

    /// Whether the `max` bytes from `off` (an ask for new bytes) lie within it.
    fn covers(self, off: u64, max: usize) -> bool {
        off.saturating_add(max as u64) <= self.to()
    }
}

/// For diagnostics (the simulation's per-second dumps): spans and states, no bytes.
impl std::fmt::Debug for HttpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = |k: &Chunk| match k.state {
            ChunkState::Free => "free",
            ChunkState::Pending(_) => "reading",
            ChunkState::Ready(_) => "ready",
        };
        let chunks: Vec<(&str, u64, u64)> = self.chunks.as_deref().map_or_else(Vec::new, |set| set.iter().map(|k| (state(k), k.resp_start, k.index)).collect());
        let responses = self.responses.len();
        f.debug_struct("HttpConn")
            .field("rx", &self.rx.as_ref().map(|b| b.len))
            .field("responses", &responses)
            .field("chunks", &chunks)
            .field("stream_len", &self.stream_len)
            .field("closing", &self.closing)
            .field("waiting", &self.waiting)
            .field("rx_waiting", &self.rx_waiting)
            .field("refused", &self.refused)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl HttpConn {
    fn new(tls: Option<ConnTls>) -> Self {
        HttpConn {
            rx: None,
            responses: RespQueue::default(),
            chunks: None,
            stream_len: 0,
            closing: false,
            peer_fin: false,
            read_seq: 0,
            waiting: false,
            rx_waiting: false,
            refused: false,
            tls,
            requests: 0,
            head_deadline: None,
            ready_hint: ReadyHint::default(),
        }
    }

    /// Nothing queued or in flight: the connection is between requests.
    pub fn idle(&self) -> bool {
        self.responses.is_empty() && self.tls.as_ref().is_none_or(|t| matches!(t.phase, TlsPhase::Session(_)))
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The chunk of response `resp_start` that holds object byte `pos` (in chunk `index`).
    /// A retransmission may have read part of a chunk only: another part is not found there.
    fn find_chunk(&self, resp_start: u64, index: u64, pos: u64) -> Option<&Chunk> {
        self.chunks.as_deref()?.iter().find(|k| !matches!(k.state, ChunkState::Free) && k.resp_start == resp_start && k.index == index && k.holds(pos))
    }

    /// Unparsed request bytes.
    fn rx_bytes(&self) -> &[u8] {
        self.rx.as_ref().map_or(&[], RxBuf::bytes)
    }
}

impl Held {
    /// Queue a sealed control record (alert, KeyUpdate) at the end of the stream. Nothing
    /// goes after our FIN: once it is queued the record is dropped (the peer learns of the
    /// end from the FIN, and the alert or close_notify already sent). False also when the
    /// queue is full (a peer asking for KeyUpdates faster than it reads).
    fn push_control(&mut self, c: &mut HttpConn, tcp: &mut TcpConn, bytes: &[u8]) -> bool {
        if tcp.fin_queued() {
            return false;
        }
        let r = Response::control(c.stream_len, bytes);
        let end = r.end;
        if !self.push(&mut c.responses, r) {
            return false;
        }
        c.stream_len = end;
        tcp.set_stream_len(c.stream_len);
        true
    }
}

/// One core's HTTP and HTTPS application: what the stack calls for each connection's events.
pub struct HttpApp<S: Storage> {
    pub storage: S,
    pool: DmaPool,
    /// The index of every drive's volume, shared read-only by every core.
    pub library: Arc<Library>,
    limits: Limits,
    pub stats: Stats,
    /// Wall-clock seconds for Date headers, set once per loop iteration.
    pub wall_unix: u64,
    reads_in_flight: usize,
    max_reads_in_flight: usize,
    completions: Vec<Completion>,
    /// Connections waiting for a storage buffer (each once: [`HttpConn::waiting`]), first come
    /// first served; as many are woken as buffers come free. Each queue of connections that
    /// wait at most once has room for every connection: it never grows.
    buffer_waiters: VecDeque<ConnId>,
    /// Connections whose read the drive refused (each once: [`HttpConn::refused`]): ended
    /// at the next storage poll, which has the TCP side at hand.
    refused: VecDeque<ConnId>,
    pub draining: bool,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    /// Where the console publishes a new certificate, and the generation taken from it:
    /// checked when an HTTPS connection is accepted, so that none made after the console's
    /// answer starts with the certificate before.
    tls_slot: Option<(Arc<crate::server::board::TlsSlot>, u64)>,
    https_port: u16,
    /// Nanoseconds a request head may take to arrive whole (slowloris defence); 0: no limit.
    pub header_timeout: u64,
    /// Receive buffers, lent while request bytes are unparsed.
    rx_pool: BufPool,
    /// TLS record reassembly buffers, lent while record bytes are unopened (HTTPS only).
    tls_rx_pool: BufPool,
    /// Connections that found a receive pool empty (each once: [`HttpConn::rx_waiting`]),
    /// first come first served.
    rx_waiters: VecDeque<ConnId>,
    /// Connections lent a receive buffer, in lending order ([`HttpApp::note_rx_holder`]).
    rx_holders: VecDeque<ConnId>,
    /// Chunk slots for connections holding storage buffers: as many as storage buffers, so a
    /// connection that gets a storage buffer always finds a set.
    #[allow(clippy::vec_box)] // boxes move between pool and connection without copying
    chunk_sets: Vec<Box<ChunkSet>>,
    /// Queued responses and TLS state, in slabs.
    held: Held,
    /// Connections whose handshake step waits for the next iteration (each once:
    /// [`ConnTls::hs_queued`]).
    hs_queue: VecDeque<ConnId>,
    /// Handshake steps run in this iteration so far.
    hs_steps: usize,
    /// Entries of `hs_queue` whose connection closed while it waited (skipped when reached).
    hs_stale: usize,
    /// The latest time a callback was given (storage polling has none of its own).
    clock: Instant,
    /// Emulated TLS on plain HTTP connections: the dummy-key session bodies are sealed with.
    emulation: Option<Box<RecordSession>>,
}

impl<S: Storage> HttpApp<S> {
    /// The pool storage reads land in (handed to the NIC: [`drivers::nic::Nic::tx_from_pool`]).
    pub fn pool(&self) -> &DmaPool {
        &self.pool
    }

    /// `buffers` DMA chunks of [`CHUNK`] bytes (and [`SEAL_ROOM`]) bound what this core has in flight.
    /// Objects are read from `storage` at the addresses `library` gives (drive and offset).
    /// The slabs of per-connection state have room for `max_conns` connections (the
    /// connection table's capacity).
    pub fn new(mut storage: S, library: impl Into<Arc<Library>>, buffers: usize, max_conns: usize) -> Result<Self, drivers::storage::StorageError> {
        let pool = storage.dma_pool(BUFFER_LEN, buffers)?;
        Ok(HttpApp {
            storage,
            pool,
            library: library.into(),
            limits: Limits::default(),
            stats: Stats::default(),
            wall_unix: 0,
            reads_in_flight: 0,
            max_reads_in_flight: buffers,
            completions: Vec::with_capacity(buffers),
            buffer_waiters: VecDeque::with_capacity(max_conns),
            refused: VecDeque::with_capacity(max_conns),
            draining: false,
            tls_config: None,
            tls_slot: None,
            https_port: 0,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            rx_pool: BufPool::new((buffers * RX_BUFFERS_PER_CHUNK).clamp(16, MAX_RX_BUFFERS), RX_BUF),
            tls_rx_pool: BufPool::new(0, RECORD_RX_BUF),
            rx_waiters: VecDeque::with_capacity(max_conns),
            rx_holders: VecDeque::with_capacity(4 * MAX_RX_BUFFERS + 1),
            chunk_sets: (0..buffers).map(|_| Box::new([Chunk::FREE; CHUNKS_PER_CONN])).collect(),
            held: Held::new(max_conns),
            // Every connection once, entries of closed ones until a compaction (at half as
            // many again: `poll_handshakes`), and one receive burst's worth: it never grows.
            hs_queue: VecDeque::with_capacity(2 * max_conns + HS_QUEUE_SLACK),
            hs_steps: 0,
            hs_stale: 0,
            clock: 0,
            emulation: None,
        })
    }

    /// Serve HTTPS on `port` with this configuration.
    pub fn enable_tls(&mut self, config: Arc<rustls::ServerConfig>, port: u16) {
        self.tls_config = Some(config);
        self.https_port = port;
        self.held.enable_tls();
        if self.tls_rx_pool.count() == 0 {
            self.tls_rx_pool = BufPool::new(self.rx_pool.count(), RECORD_RX_BUF);
        }
    }

    /// Take new certificates from `slot` as HTTPS connections are accepted.
    pub fn follow_tls(&mut self, slot: Arc<crate::server::board::TlsSlot>) {
        self.tls_slot = Some((slot, 0));
    }

    /// Bytes of this core's pools of connection state (receive and record buffers, chunk
    /// slots): shared by all connections, held by none while idle. (The slabs' entries are
    /// counted by the connections that hold them: [`HttpApp::heap_bytes`].)
    pub fn pool_reserved_bytes(&self) -> usize {
        self.rx_pool.reserved_bytes() + self.tls_rx_pool.reserved_bytes() + self.chunk_sets.capacity() * std::mem::size_of::<ChunkSet>()
    }

    /// Whether connection `c` holds a pooled buffer or a queued response (tests, the bench).
    pub fn holds_buffers(&self, c: &HttpConn) -> bool {
        c.rx.is_some() || c.chunks.is_some() || !c.responses.is_empty() || self.held.session(c).is_some_and(|s| s.has_rx_buf())
    }

    /// Bytes connection `c` holds outside the connection table: buffers and slab entries,
    /// and the AEAD contexts of its TLS keys (aws-lc allocates them with C malloc, which
    /// the counting allocator does not see).
    pub fn heap_bytes(&self, c: &HttpConn) -> usize {
        let rx = c.rx.as_ref().map_or(0, |b| b.buf.len());
        let chunks = if c.chunks.is_some() { std::mem::size_of::<ChunkSet>() } else { 0 };
        let handshake_out = c.tls.as_ref().map_or(0, |t| t.hs_out.capacity());
        let session = self.held.session(c).map_or(0, |s| s.heap_bytes());
        rx + chunks + handshake_out + session + self.slab_bytes(c)
    }

    /// Of [`HttpApp::heap_bytes`], what C code allocated (aws-lc's AEAD contexts).
    pub fn foreign_heap_bytes(&self, c: &HttpConn) -> usize {
        self.held.session(c).map_or(0, |s| s.aead_context_bytes())
    }

    /// Of [`HttpApp::heap_bytes`], what lies in this core's slabs (reserved at start-up,
    /// so the counting allocator does not see it either).
    pub fn slab_bytes(&self, c: &HttpConn) -> usize {
        let tls = match c.tls.as_ref().map(|t| &t.phase) {
            Some(TlsPhase::Handshake(_)) => Slab::<HandshakeDriver>::entry_bytes(),
            Some(TlsPhase::Session(_)) => Slab::<RecordSession>::entry_bytes(),
            _ => 0,
        };
        c.responses.len() * Slab::<Response>::entry_bytes() + tls
    }

    /// Free receive buffers (plain, TLS records).
    pub fn rx_buffers_free(&self) -> (usize, usize) {
        (self.rx_pool.available(), self.tls_rx_pool.available())
    }

    /// Give back what an idle connection need not hold: an empty receive buffer (unless it
    /// was granted to a waiter that has not received yet), chunk slots all free, an empty
    /// response queue, an empty record buffer.
    fn release_idle(&mut self, c: &mut HttpConn) {
        if c.rx.as_ref().is_some_and(|b| b.len == 0) && !c.rx_waiting {
            if let Some(b) = c.rx.take() {
                self.rx_pool.give(b.buf);
            }
        }
        self.release_chunks(c);
        let quiet = c.responses.is_empty() && c.chunks.is_none() && c.rx.is_none() && c.tls.as_ref().is_some_and(|t| t.hs_out.is_empty());
        if !quiet && c.tls.as_ref().is_some_and(|t| !t.rx_buf_maybe) {
            return; // no buffer to give back, no keys to put to sleep
        }
        let Some(s) = self.held.session_mut(c) else { return };
        if let Some(b) = s.take_idle_rx_buf() {
            self.tls_rx_pool.give(b);
        }
        let held = s.has_rx_buf();
        // Nothing to seal or open until the peer sends again (which wakes them):
        // drop the AEAD contexts, 1.2 KB in C per connection. Not before the first
        // request, which follows the handshake at once (the header timeout bounds the
        // wait): building them again then would be an allocation per connection.
        if quiet && c.requests > 0 && !held {
            s.sleep_keys();
        }
        if let Some(t) = &mut c.tls {
            t.rx_buf_maybe = held;
        }
    }

    fn release_chunks(&mut self, c: &mut HttpConn) {
        release_chunks(&mut self.chunk_sets, c);
    }

    /// Give everything back (the connection is gone).
    fn release_all(&mut self, c: &mut HttpConn) {
        c.ready_hint = ReadyHint::default();
        if let Some(b) = c.rx.take() {
            self.rx_pool.give(b.buf);
        }
        if let Some(set) = &mut c.chunks {
            for k in set.iter_mut() {
                // Pending reads complete into nothing; ready buffers go back to storage's pool.
                k.state = ChunkState::Free;
            }
        }
        self.release_chunks(c);
        self.held.clear(&mut c.responses);
        c.rx_waiting = false;
        self.release_idle(c);
        self.give_back_tls_rx_buf(c);
        if let Some(t) = &mut c.tls {
            self.held.drop_tls(t);
        }
    }

    /// Take the session's reassembly buffer back to its pool, whatever it holds.
    fn give_back_tls_rx_buf(&mut self, c: &mut HttpConn) {
        if let Some(b) = self.held.session_mut(c).and_then(|s| s.take_rx_buf()) {
            self.tls_rx_pool.give(b);
        }
        if let Some(t) = &mut c.tls {
            t.rx_buf_maybe = false;
        }
    }

    /// The receive buffer to append to, from the pool if the connection holds none. `None`
    /// only when the pool is empty, which [`App::rx_room`] prevents (zero window).
    fn rx_buf<'c>(&mut self, c: &'c mut HttpConn) -> Option<&'c mut RxBuf> {
        if c.rx.is_none() {
            let buf = self.rx_pool.take()?;
            c.rx = Some(RxBuf { buf, len: 0 });
        }
        c.rx.as_mut()
    }

    /// Whether a connection holding no buffer of a kind it needs could take one now.
    fn can_lend(&self, c: &HttpConn) -> bool {
        let rx = c.rx.is_some() || self.rx_pool.available() > 0;
        let record = match self.held.session(c) {
            Some(s) => s.has_rx_buf() || self.tls_rx_pool.available() > 0,
            None => true,
        };
        rx && record
    }

    /// Bytes received on a connection: TLS records, or request bytes into its buffer.
    fn receive(&mut self, now: Instant, id: ConnId, c: &mut HttpConn, tcp: &mut TcpConn, data: &[u8]) {
        self.clock = now;
        if c.tls.is_some() {
            self.on_tls_data(now, id, c, tcp, data);
            return;
        }
        if c.closing {
            return;
        }
        c.rx_waiting = false;
        // The window offered room only with a buffer to lend (rx_room), so one is there.
        let Some(rx) = self.rx_buf(c) else {
            self.stats.http_rx_buffer_waits += 1;
            return;
        };
        rx.push(data);
        self.note_head_bytes(now, c);
        self.parse_requests(now, c, tcp);
    }

    /// `id` was just lent a receive buffer: remember the order of lending, oldest first, for
    /// [`HttpApp::evict_oldest_head`]. Entries of connections that gave theirs back are
    /// dropped as they reach the front, and all at once if they pile up.
    fn note_rx_holder(&mut self, id: ConnId) {
        self.rx_holders.push_back(id);
    }

    /// The receive pool is empty and connections wait: the connection whose partial head has
    /// been arriving longest, if for [`HEAD_EVICT_AFTER`] or more, gets its header timeout now
    /// (408, closed) and its buffer goes to the waiters. So clients that hold buffers with
    /// heads they never finish (slowloris) cannot keep the pool from everyone else for the
    /// whole header timeout. Returns whether a buffer came free.
    fn evict_oldest_head(&mut self, now: Instant, stack: &mut Stack<HttpConn>) -> bool {
        if self.header_timeout == 0 {
            return false;
        }
        while let Some(&id) = self.rx_holders.front() {
            let Some(e) = stack.get_mut(id) else {
                self.rx_holders.pop_front();
                continue;
            };
            let c = &mut e.app;
            let Some(deadline) = c.head_deadline.filter(|_| c.rx.is_some() && !c.closing) else {
                self.rx_holders.pop_front();
                continue;
            };
            if now < deadline.saturating_sub(self.header_timeout) + HEAD_EVICT_AFTER {
                return false;
            }
            self.rx_holders.pop_front();
            App::on_deadline(self, now, c, &mut e.tcp);
            if !c.closing {
                continue; // given more time (its responses are queued): not a slow head
            }
            self.stats.http_head_evictions += 1;
            if let Some(b) = c.rx.take() {
                self.rx_pool.give(b.buf);
            }
            self.give_back_tls_rx_buf(c);
            stack.wake(id);
            return true;
        }
        false
    }

    /// Drops the entries of connections no longer holding a buffer once they outnumber the
    /// pool four to one (at most the pool's count can be live), so the list stays bounded.
    fn compact_rx_holders(&mut self, stack: &Stack<HttpConn>) {
        if self.rx_holders.len() > 4 * self.rx_pool.count().max(1) {
            self.rx_holders.retain(|&id| stack.get(id).is_some_and(|e| e.app.rx.is_some()));
        }
    }

    /// Lend the buffers waiting connections lack, first come first served, and reopen their
    /// windows. A granted connection's head clock runs (it cannot hold a buffer for ever).
    fn serve_rx_waiters(&mut self, now: Instant, stack: &mut Stack<HttpConn>) {
        self.compact_rx_holders(stack);
        while let Some(&id) = self.rx_waiters.front() {
            let Some(e) = stack.get_mut(id) else {
                self.rx_waiters.pop_front(); // gone since it queued
                continue;
            };
            if !self.can_lend(&e.app) {
                if self.evict_oldest_head(now, stack) {
                    continue;
                }
                break;
            }
            self.rx_waiters.pop_front();
            let c = &mut e.app;
            if c.rx.is_none() {
                let Some(buf) = self.rx_pool.take() else { break };
                c.rx = Some(RxBuf { buf, len: 0 });
            }
            if let Some(t) = &mut c.tls {
                t.rx_buf_maybe = true;
            }
            if let Some(s) = self.held.session_mut(c) {
                if !s.has_rx_buf() {
                    if let Some(b) = self.tls_rx_pool.take() {
                        s.lend_rx_buf(b);
                    }
                }
            }
            if c.head_deadline.is_none() {
                c.head_deadline = self.head_deadline_from(now);
            }
            if c.rx.is_some() {
                self.rx_holders.push_back(id);
            }
            let room = self.rx_room(c);
            e.tcp.set_receive_window(room);
            stack.wake(id);
        }
    }

    /// Benchmarks only: on plain HTTP connections, send each response body as TLS 1.3 records
    /// sealed with a public dummy key, the head in clear ([`crate::tls::emulation`]). HTTPS
    /// connections are unaffected.
    pub fn enable_tls_emulation(&mut self) -> Result<(), TlsError> {
        self.emulation = Some(Box::new(crate::tls::emulation::session()?));
        Ok(())
    }

    /// Seal response records (HTTPS and emulated) with `aead` (aws-lc-rs until told):
    /// [`crate::tls::choice`] picks it at start by measurement.
    pub fn seal_with(&mut self, aead: AeadImpl) {
        self.held.aead = aead;
    }

    pub fn buffers_free(&self) -> usize {
        self.pool.available()
    }

    pub fn reads_in_flight(&self) -> usize {
        self.reads_in_flight
    }

    /// Stop parsing and close after what is queued; under TLS, say close_notify first.
    fn close_after_queued(&mut self, c: &mut HttpConn, tcp: &mut TcpConn) {
        if c.closing {
            return;
        }
        c.closing = true;
        c.rx_waiting = false;
        if let Some(b) = &mut c.rx {
            b.len = 0;
        }
        let mut rec = [0u8; 64];
        let sealed = match (&c.tls, self.held.session(c)) {
            (Some(t), Some(s)) if !t.failed => s.seal_close_notify(t.epoch, t.next_seq, &mut rec).ok(),
            _ => None,
        };
        if let Some(n) = sealed {
            if self.held.push_control(c, tcp, &rec[..n]) {
                self.stats.tls_records_sealed += 1;
                if let Some(t) = &mut c.tls {
                    t.next_seq += 1;
                }
            }
        }
        self.release_idle(c);
        tcp.close();
    }

    /// A TLS error after the handshake: send the matching fatal alert and close.
    fn tls_fail(&mut self, c: &mut HttpConn, tcp: &mut TcpConn, err: &TlsError) {
        log::debug!("TLS connection failed: {err}");
        self.stats.tls_bad_records += 1;
        self.stats.count_tls_failure(err.reason());
        let Some(t) = &c.tls else { return };
        let mut rec = [0u8; 64];
        let sealed = self.held.session(c).and_then(|s| s.seal_fatal_alert_for(err, t.epoch, t.next_seq, &mut rec).ok());
        if let Some(n) = sealed {
            if self.held.push_control(c, tcp, &rec[..n]) {
                if let Some(t) = &mut c.tls {
                    t.next_seq += 1;
                }
            }
        }
        if let Some(t) = &mut c.tls {
            t.failed = true;
        }
        c.closing = true;
        c.rx_waiting = false;
        if let Some(b) = &mut c.rx {
            b.len = 0;
        }
        self.release_idle(c);
        tcp.close();
    }

    /// Parse and plan every complete request in the receive buffer that fits the queue.
    fn parse_requests(&mut self, now: Instant, c: &mut HttpConn, tcp: &mut TcpConn) {
        self.answer(now, c, tcp, None);
        // After the peer's FIN: close once every request it sent is answered (what is left
        // is nothing, or a head that cannot complete); while queued responses hold requests
        // back, later (an acknowledgement parses again).
        if c.peer_fin && !c.closing && (c.rx_bytes().is_empty() || self.may_queue(c)) {
            self.close_after_queued(c, tcp);
        }
    }

    /// Whether a parsed request could be queued now.
    fn may_queue(&self, c: &HttpConn) -> bool {
        c.responses.len() < MAX_PIPELINED && self.held.has_room(&c.responses)
    }

    /// Answer `status` (an error that closes the connection) in place of the partial head
    /// in the receive buffer.
    fn respond_error(&mut self, now: Instant, c: &mut HttpConn, tcp: &mut TcpConn, status: u16) {
        self.answer(now, c, tcp, Some(status));
    }

    fn answer(&mut self, now: Instant, c: &mut HttpConn, tcp: &mut TcpConn, mut forced: Option<u16>) {
        // Past MAX_PIPELINED queued responses (or with the core's slab of responses queued
        // behind others full) requests wait in the buffer until responses are acknowledged.
        while !c.closing && self.may_queue(c) && (!c.rx_bytes().is_empty() || forced.is_some()) {
            let mut path_buf = [0u8; 4096];
            let mut extent = 0u64;
            let parsed = match forced.take() {
                Some(status) => Parse::Error(http::RequestError { status, reason: "request head timeout" }),
                None => http::parse_request(c.rx_bytes(), &self.limits),
            };
            let (plan, consumed) = match parsed {
                Parse::Incomplete => {
                    if c.rx_bytes().len() >= RX_BUF {
                        (Plan::error(431), RX_BUF)
                    } else {
                        break;
                    }
                }
                Parse::Error(e) => {
                    log::debug!("bad request: {} {}", e.status, e.reason);
                    (Plan::from_error(&e), c.rx_bytes().len())
                }
                Parse::Complete { request, consumed } => {
                    let library = &self.library;
                    let plan = http::plan_request(&request, &mut path_buf, |p| {
                        library.lookup(p).map(|f| {
                            extent = f.address;
                            let o = f.object;
                            ObjectMeta { size: o.size, content_type: &o.content_type, etag: &o.etag, mtime: o.mtime }
                        })
                    });
                    log::debug!("{} -> {}", request.target, plan.status);
                    (plan, consumed)
                }
            };
            let mut plan = plan;
            if self.draining {
                plan.keep_alive = false;
            }
            // Emulated TLS: Content-Length is what the client receives (the records), so that
            // curl and wrk read to the end; Content-Range stays in object bytes. HEAD answers
            // as GET would.
            let emulate = c.tls.is_none() && self.emulation.is_some() && matches!(plan.status, 200 | 206);
            let mut emu_header = None;
            if let (true, Some(len)) = (emulate, plan.content_length) {
                let (off, n) = plan.body.unwrap_or((0, len));
                match crate::tls::emulation::body_layout(off, n) {
                    Ok(l) => {
                        plan.content_length = Some(l.wire_len());
                        emu_header = Some((crate::tls::emulation::HEADER_NAME, crate::tls::emulation::HEADER_VALUE));
                    }
                    Err(e) => {
                        log::warn!("emulated TLS layout: {e}");
                        break;
                    }
                }
            }
            // The head and error body, in plaintext.
            let mut text = [0u8; MAX_HEAD_LEN + 128];
            let mut text_len = match http::write_head_with(&plan, self.wall_unix, emu_header, &mut text) {
                Ok(n) => n,
                Err(_) => {
                    // Cannot happen with the volume's bounded metadata; answer 500 rather than panic.
                    plan = Plan::error(500);
                    http::write_head(&plan, self.wall_unix, &mut text).unwrap_or(0)
                }
            };
            let extra = plan.error_body();
            let extra = &extra[..extra.len().min(text.len() - text_len)];
            text[text_len..text_len + extra.len()].copy_from_slice(extra);
            text_len += extra.len();
            let body = plan.body.zip(plan.object).map(|((obj_off, len), meta)| Body { extent, obj_off, len, size: meta.size });
            let mut resp = Response { start: c.stream_len, head: [0; HEAD_CAP], head_len: 0, body, tls: None, end: 0 };
            match &mut c.tls {
                None => {
                    resp.head[..text_len].copy_from_slice(&text[..text_len]);
                    resp.head_len = text_len;
                    resp.end = resp.start + text_len as u64 + body.map_or(0, |b| b.len);
                    if let (Some(b), true) = (body, emu_header.is_some()) {
                        // Records numbered from 0 in every response (see tls::emulation).
                        let Ok(layout) = crate::tls::emulation::body_layout(b.obj_off, b.len) else { break };
                        resp.end = resp.start + text_len as u64 + layout.wire_len();
                        resp.tls = Some(RespTls { layout, epoch: 0, first_body_rec: 0, clear_head: text_len as u64 });
                    }
                }
                Some(t) => {
                    let TlsPhase::Session(key) = t.phase else { break };
                    let Some(s) = self.held.sessions.get(key) else { break };
                    let (obj_off, len) = body.map_or((0, 0), |b| (b.obj_off, b.len));
                    let layout = match ResponseLayout::new(RecordFormat::for_version(s.version()), text_len, obj_off, len, t.next_seq) {
                        Ok(l) => l,
                        Err(e) => {
                            log::warn!("response layout: {e}");
                            break;
                        }
                    };
                    match s.seal_record(t.epoch, layout.seq(0), CONTENT_APPLICATION_DATA, &text[..text_len], &mut resp.head) {
                        Ok(n) => resp.head_len = n,
                        Err(e) => {
                            let e = e.to_string();
                            log::warn!("sealing a response head: {e}");
                            self.stats.tls_bad_records += 1;
                            break;
                        }
                    }
                    self.stats.tls_records_sealed += 1;
                    t.next_seq = layout.next_seq_base();
                    resp.end = resp.start + layout.wire_len();
                    resp.tls = Some(RespTls { layout, epoch: t.epoch, first_body_rec: 1, clear_head: 0 });
                }
            }
            self.stats.http_requests += 1;
            self.stats.count_status(plan.status);
            self.stats.http_body_bytes += body.map_or(0, |b| b.len);
            c.requests = c.requests.saturating_add(1);
            c.stream_len = resp.end;
            // Room was checked above: the push cannot fail.
            self.held.push(&mut c.responses, resp);
            tcp.set_stream_len(c.stream_len);
            if let Some(b) = &mut c.rx {
                b.consume(consumed);
            }
            // What is left is the start of the next head: its clock starts now.
            c.head_deadline = if c.rx_bytes().is_empty() { None } else { self.head_deadline_from(now) };
            if !plan.keep_alive {
                self.close_after_queued(c, tcp);
            }
        }
        // Parsed out: the buffer goes back until the next request's bytes arrive.
        if c.rx.as_ref().is_some_and(|b| b.len == 0) && !c.rx_waiting {
            if let Some(b) = c.rx.take() {
                self.rx_pool.give(b.buf);
            }
        }
    }

    fn head_deadline_from(&self, now: Instant) -> Option<Instant> {
        (self.header_timeout > 0).then(|| now + self.header_timeout)
    }

    /// The first bytes of a request head arrived on a connection between requests.
    fn note_head_bytes(&self, now: Instant, c: &mut HttpConn) {
        if c.head_deadline.is_none() && !c.rx_bytes().is_empty() {
            c.head_deadline = self.head_deadline_from(now);
        }
    }

    /// Feed received bytes to the TLS layer. A handshake step waits in line when this
    /// iteration's steps are used up ([`HANDSHAKE_STEPS_PER_POLL`]).
    fn on_tls_data(&mut self, now: Instant, id: ConnId, c: &mut HttpConn, tcp: &mut TcpConn, data: &[u8]) {
        let Some(t) = &mut c.tls else { return };
        if t.failed {
            return;
        }
        if let TlsPhase::Handshake(key) = t.phase {
            // Closed mid-handshake (header timeout, idle, drain): our FIN is queued, so no
            // handshake flight can follow it; the rest of the peer's is not read (found by
            // fuzz net_frames).
            if tcp.fin_queued() {
                return;
            }
            let Some(d) = self.held.handshakes.get_mut(key) else { return };
            // The handshake's own input buffer (it grows with the flight): handshake work.
            let buffered = crate::accounting::handshake(|| d.buffer(data));
            if buffered.is_ok() && (t.hs_queued || !self.hs_queue.is_empty() || self.hs_steps >= HANDSHAKE_STEPS_PER_POLL) {
                if !t.hs_queued {
                    t.hs_queued = true;
                    self.hs_queue.push_back(id);
                }
                return;
            }
            self.step_handshake(now, c, tcp, buffered);
            return;
        }
        let TlsPhase::Session(key) = t.phase else { return };
        t.rx_buf_maybe = true;
        let Some(s) = self.held.sessions.get_mut(key) else { return };
        self.stats.tls_key_contexts_built += u64::from(s.wake_keys());
        if !s.has_rx_buf() {
            // rx_room offered a window only with a buffer to lend.
            if let Some(b) = self.tls_rx_pool.take() {
                s.lend_rx_buf(b);
            }
        }
        c.rx_waiting = false;
        if let Err(e) = s.receive(data) {
            self.tls_fail(c, tcp, &e);
            return;
        }
        self.on_tls_session_data(now, c, tcp);
    }

    /// Run a connection's handshake over what it has buffered (`buffered`: whether the last
    /// bytes fitted); once done, hand its keys to a record session.
    fn step_handshake(&mut self, now: Instant, c: &mut HttpConn, tcp: &mut TcpConn, buffered: Result<(), TlsError>) {
        let Some(t) = &mut c.tls else { return };
        let TlsPhase::Handshake(key) = t.phase else { return };
        // Closed while it waited in line.
        if t.failed || tcp.fin_queued() || tcp.state == State::Closed {
            return;
        }
        let Some(d) = self.held.handshakes.get_mut(key) else { return };
        self.hs_steps += 1;
        let progress = buffered.and_then(|()| crate::accounting::handshake(|| d.receive(&[])));
        c.stream_len = d.tx_end();
        tcp.set_stream_len(c.stream_len);
        match progress {
            Ok(HandshakeProgress::NeedMoreInput) => return,
            Ok(HandshakeProgress::PeerClosed) => {
                t.failed = true;
                c.closing = true;
                tcp.close();
                return;
            }
            Err(e) => {
                log::debug!("TLS handshake failed: {e}");
                self.stats.count_handshake_failure(e.reason());
                t.failed = true;
                c.closing = true;
                tcp.close(); // after the alert rustls left in the output
                return;
            }
            Ok(HandshakeProgress::Complete) => {}
        }
        t.phase = TlsPhase::Dead;
        let Some(d) = self.held.handshakes.remove(key) else { return };
        // Each connection holds one handshake or one session, and the slabs have room
        // for every connection: the insert cannot fail (if it did, the handover would).
        let handover = crate::accounting::handshake(|| d.into_session()).and_then(|h| {
            let (seq, epoch) = (h.session.tx_seq_start(), h.session.tx_epoch());
            match self.held.sessions.insert(h.session) {
                Ok(key) => Ok((h.handshake_tx_base, h.handshake_tx, h.early_plaintext, seq, epoch, key, h.resumed)),
                Err(_) => Err(TlsError::NoRoom("session")),
            }
        });
        match handover {
            Ok((hs_base, hs_out, early_plaintext, seq, epoch, key, resumed)) => {
                self.stats.tls_handshakes += 1;
                self.stats.tls_handshakes_resumed += u64::from(resumed);
                t.next_seq = seq;
                t.epoch = epoch;
                t.hs_base = hs_base;
                t.hs_out = hs_out;
                t.phase = TlsPhase::Session(key);
                // Records that came with the last flight are in a buffer of the session's.
                t.rx_buf_maybe = true;
                c.stream_len = t.hs_base + t.hs_out.len() as u64;
                tcp.set_stream_len(c.stream_len);
                if !early_plaintext.is_empty() {
                    match self.rx_buf(c) {
                        Some(b) => {
                            b.push(&early_plaintext);
                        }
                        None => {
                            // The request came with the handshake and the pool is empty:
                            // it is lost; the header clock closes the connection.
                            self.stats.http_rx_buffer_waits += 1;
                        }
                    }
                }
                // Records that came with the last flight, then the requests.
                self.on_tls_session_data(now, c, tcp);
            }
            Err(e) => {
                log::debug!("TLS handover failed: {e}");
                self.stats.count_handshake_failure(e.reason());
                t.failed = true;
                c.closing = true;
                tcp.abort();
            }
        }
    }

    /// Run the handshake steps that waited in line, as many as this iteration has left
    /// (`HANDSHAKE_STEPS_PER_POLL`), oldest first; returns how many ran. Acknowledgements
    /// and requests of established connections are then never queued behind a flood of
    /// handshakes: a step costs tens of microseconds of curve arithmetic, and with
    /// thousands in one receive queue, ACKs waited long enough for retransmission timers
    /// to fire on data that had arrived.
    pub fn poll_handshakes(&mut self, now: Instant, stack: &mut Stack<HttpConn>) -> usize {
        if self.hs_stale >= self.held.max_conns / 2 {
            // Entries of connections that closed while waiting (a flood the header timeout
            // cuts short): dropped in one pass, so the queue stays within its reservation.
            self.hs_queue.retain(|&id| stack.get(id).is_some());
            self.hs_stale = 0;
        }
        let mut ran = 0;
        while self.hs_steps < HANDSHAKE_STEPS_PER_POLL {
            let Some(id) = self.hs_queue.pop_front() else { break };
            let Some(e) = stack.get_mut(id) else {
                self.hs_stale = self.hs_stale.saturating_sub(1); // gone since it queued
                continue;
            };
            if let Some(t) = &mut e.app.tls {
                t.hs_queued = false;
            }
            self.step_handshake(now, &mut e.app, &mut e.tcp, Ok(()));
            let room = self.rx_room(&e.app);
            e.tcp.set_receive_window(room);
            stack.wake(id);
            ran += 1;
        }
        self.hs_steps = 0;
        ran
    }

    /// Handshake steps waiting in line.
    pub fn handshakes_queued(&self) -> usize {
        self.hs_queue.len()
    }

    /// Open the buffered records of a session and act on them.
    fn on_tls_session_data(&mut self, now: Instant, c: &mut HttpConn, tcp: &mut TcpConn) {
        loop {
            // A control record we answer with needs a place in the queue.
            let room = self.held.has_room(&c.responses);
            let Some(t) = &mut c.tls else { return };
            let TlsPhase::Session(key) = t.phase else { return };
            let Some(s) = self.held.sessions.get_mut(key) else { return };
            let mut control = [0u8; 64];
            let mut control_len = 0;
            match s.next_incoming() {
                Ok(None) => break,
                Ok(Some(Incoming::AppData(data))) => {
                    if c.closing {
                        continue;
                    }
                    // A request head larger than the buffer is cut: the parser answers 431.
                    // The window offered room only with a buffer to lend, so one is there.
                    if c.rx.is_none() {
                        c.rx = self.rx_pool.take().map(|buf| RxBuf { buf, len: 0 });
                    }
                    let Some(rx) = c.rx.as_mut() else {
                        self.stats.http_rx_buffer_waits += 1;
                        continue;
                    };
                    rx.push(data);
                    let held = rx.len > 0;
                    if c.head_deadline.is_none() && held && self.header_timeout > 0 {
                        c.head_deadline = Some(now + self.header_timeout);
                    }
                }
                Ok(Some(Incoming::CloseNotify)) => {
                    // Answer what was asked, then our close_notify, then FIN.
                    self.parse_requests(now, c, tcp);
                    self.close_after_queued(c, tcp);
                    return;
                }
                Ok(Some(Incoming::KeyUpdated { update_requested })) => {
                    // After our FIN no KeyUpdate can follow, so our keys stay as they are.
                    if update_requested && !tcp.fin_queued() {
                        if !room {
                            // Our keys would change with no record to tell the peer.
                            self.tls_fail(c, tcp, &TlsError::NoRoom("KeyUpdate"));
                            return;
                        }
                        match s.seal_key_update(t.next_seq, false, &mut control) {
                            Ok(n) => {
                                control_len = n;
                                t.epoch = s.tx_epoch();
                                t.next_seq = 0;
                            }
                            Err(e) => {
                                self.tls_fail(c, tcp, &e);
                                return;
                            }
                        }
                    }
                }
                Ok(Some(Incoming::RenegotiationRefused)) => {
                    let (level, desc) = crate::tls::handshake::NO_RENEGOTIATION_ALERT;
                    if !room {
                        continue; // the refusal is not said: the peer waits, and the idle timeout ends it
                    }
                    if let Ok(n) = s.seal_alert(t.epoch, t.next_seq, level, desc, &mut control) {
                        t.next_seq += 1;
                        control_len = n;
                    }
                }
                Ok(Some(Incoming::WarningAlert(_))) => {}
                Err(e) => {
                    self.tls_fail(c, tcp, &e);
                    return;
                }
            }
            let opened = s.records_opened;
            self.stats.tls_records_opened += opened - t.records_opened_seen;
            t.records_opened_seen = opened;
            if control_len > 0 && self.held.push_control(c, tcp, &control[..control_len]) {
                self.stats.tls_records_sealed += 1;
            }
        }
        self.parse_requests(now, c, tcp);
        self.release_idle(c);
    }

    fn wait_for_buffer(&mut self, id: ConnId, c: &mut HttpConn) {
        if !c.waiting {
            c.waiting = true;
            self.buffer_waiters.push_back(id);
            self.stats.storage_buffer_waits += 1;
        }
    }

    /// Bytes of this transfer will never come (a read refused, a seal that failed): give its
    /// chunks back and queue the connection to be ended at the next storage poll.
    fn end_transfer(&mut self, id: ConnId, c: &mut HttpConn) {
        self.release_chunks(c);
        if !c.refused {
            c.refused = true;
            self.refused.push_back(id);
        }
    }

    /// Start reading chunk `index` of response `resp` into a free slot, from the block that
    /// holds object byte `from` (a record's first under TLS) to the chunk's end, or with
    /// `upto` only to the record (or block) holding object byte `upto - 1`: a retransmission
    /// reads what it resends, not the whole chunk. With a medium in memory, fill (and seal)
    /// it now instead.
    fn start_read(&mut self, id: ConnId, c: &mut HttpConn, resp: usize, index: u64, from: u64, upto: Option<u64>) -> ReadStart {
        let Some(r) = c.responses.get(&self.held.responses, resp) else { return ReadStart::NotStarted };
        let (start, head_len, body, sealed) = (r.start, r.head_len, r.body, r.tls.is_some());
        if c.chunks.as_ref().is_some_and(|set| set.iter().all(|k| !matches!(k.state, ChunkState::Free))) && !yield_read_ahead(c, start, index) {
            // Every slot is being read or holds bytes due before these: a completion or
            // the sending of those frees one, and wakes the connection.
            return ReadStart::NotStarted;
        }
        if self.reads_in_flight >= self.max_reads_in_flight {
            self.wait_for_buffer(id, c);
            return ReadStart::NotStarted;
        }
        let Some(b) = body else { return ReadStart::NotStarted };
        // With the pool empty, a chunk this connection read ahead gives its buffer to the
        // retransmission that must go first (else every connection could hold read-ahead
        // while waiting for a buffer to resend what precedes it).
        let buf = self.pool.alloc().or_else(|| if yield_read_ahead(c, start, index) { self.pool.alloc() } else { None });
        let Some(buf) = buf else {
            self.wait_for_buffer(id, c);
            return ReadStart::NotStarted;
        };
        if c.chunks.is_none() {
            // As many sets as storage buffers, and a held set holds a buffer: one is free.
            let Some(set) = self.chunk_sets.pop() else {
                drop(buf);
                self.wait_for_buffer(id, c);
                return ReadStart::NotStarted;
            };
            c.chunks = Some(set);
        }
        let Some(set) = c.chunks.as_deref_mut() else { return ReadStart::NotStarted };
        let Some(slot) = set.iter().position(|k| matches!(k.state, ChunkState::Free)) else { return ReadStart::NotStarted };
        let chunk_obj = index * CHUNK as u64;
        let valid = (b.size - chunk_obj).min(CHUNK as u64);
        let mut hi = (chunk_obj + valid).min(b.obj_off + b.len);
        if let Some(upto) = upto {
            // Whole records (they are 16 KiB-aligned in the object; blocks divide them).
            hi = hi.min(upto.max(from + 1).div_ceil(RECORD_PLAINTEXT) * RECORD_PLAINTEXT);
        }
        // From the block holding the body's first byte in this chunk (or the first byte
        // wanted) to the block holding its last: a range that starts or ends inside the
        // chunk reads no more (nothing outside it is sealed or sent).
        let lo = chunk_obj.max(b.obj_off).max(from) / BLOCK * BLOCK;
        if lo >= hi {
            return ReadStart::NotStarted;
        }
        let read_len = (hi - lo).div_ceil(BLOCK) * BLOCK;
        c.read_seq = c.read_seq.wrapping_add(1);
        let tag = (id.slot as u64) << 32 | (id.gen as u16 as u64) << 16 | c.read_seq as u64;
        let k = &mut set[slot];
        k.resp_start = start;
        k.index = index;
        k.skip = (lo - chunk_obj) as u32;
        k.obj_end = hi;
        // Plain: the last body byte of the chunk; TLS: set when the chunk is sealed.
        k.stream_end = start + head_len as u64 + (hi - b.obj_off);
        // A medium in memory is read by the seal itself, out of place into the buffer: one
        // pass over the bytes instead of a copy and a seal. (Bodies sent as they are read go
        // through `submit_read`: the buffer takes a copy either way.)
        let session = body_session(&self.held, self.emulation.as_deref(), c.tls.as_ref()).filter(|_| sealed);
        if let Some(from) = session.and_then(|_| self.storage.mapped(b.extent + lo, read_len as usize)) {
            self.stats.storage_reads += 1;
            self.stats.storage_read_bytes += read_len;
            // Asked for now, so nothing of it is acknowledged yet.
            if finish_chunk(&self.held, session, &mut self.stats, c, slot, buf, Some(from), 0).is_ok() {
                return ReadStart::Filled;
            }
            self.end_transfer(id, c);
            return ReadStart::NotStarted;
        }
        match self.storage.submit_read(tag, b.extent + lo, read_len as usize, buf) {
            Ok(()) => {
                k.state = ChunkState::Pending(tag);
                self.reads_in_flight += 1;
                self.stats.storage_reads += 1;
                self.stats.storage_read_bytes += read_len;
                ReadStart::Started
            }
            Err((drivers::storage::StorageError::QueueFull, _buf)) => {
                // Back-pressure, not a fault: try again when a read completes.
                self.release_chunks(c);
                self.wait_for_buffer(id, c);
                ReadStart::NotStarted
            }
            Err((e, _buf)) => {
                // The drive cannot read it (failed, or the request is out of its range):
                // those bytes will never come, so this transfer ends, like a failed read.
                log::warn!("storage read refused, closing the connection: {e}");
                self.stats.storage_errors += 1;
                self.end_transfer(id, c);
                ReadStart::NotStarted
            }
        }
    }

    /// Poll storage completions (sealing TLS records in place) and wake the connections
    /// they belong to. Returns how many.
    pub fn poll_storage(&mut self, stack: &mut Stack<HttpConn>) -> usize {
        while let Some(id) = self.refused.pop_front() {
            // A connection gone since it queued is skipped (its handle no longer resolves).
            if let Some(e) = stack.get_mut(id) {
                e.tcp.abort();
                stack.wake(id);
            }
        }
        self.storage.poll(&mut self.completions);
        let n = self.completions.len();
        for comp in self.completions.drain(..) {
            self.reads_in_flight -= 1;
            if comp.result.is_err() {
                // Counted whether or not its connection is still there to be ended by it (a
                // read ahead can fail after the read before it closed the connection).
                self.stats.storage_errors += 1;
            }
            let slot = (comp.tag >> 32) as u32;
            let gen_low = (comp.tag >> 16) as u16;
            let Some((id, e)) = stack.get_by_short_id(slot, gen_low) else { continue };
            let conn = &mut e.app;
            let Some(ki) = conn.chunks.as_ref().and_then(|set| set.iter().position(|k| matches!(k.state, ChunkState::Pending(t) if t == comp.tag))) else {
                continue;
            };
            match comp.result {
                Ok(()) => {
                    let session = body_session(&self.held, self.emulation.as_deref(), conn.tls.as_ref());
                    if finish_chunk(&self.held, session, &mut self.stats, conn, ki, comp.buf, None, e.tcp.acked_offset()).is_err() {
                        e.tcp.abort();
                    }
                }
                Err(err) => {
                    // Never send wrong bytes: end this transfer only.
                    log::warn!("storage read failed, closing the connection: {err}");
                    if let Some(set) = conn.chunks.as_deref_mut() {
                        set[ki].state = ChunkState::Free;
                    }
                    e.tcp.abort();
                }
            }
            release_chunks(&mut self.chunk_sets, &mut e.app);
            stack.wake(id);
        }
        // Wake as many waiters as there are buffers to read into (not all of them: with
        // thousands waiting, that would make every completion cost a pass over them all).
        // Only buffers no device holds count (DmaPool::ready): with zero-copy transmit a free
        // buffer may still be on the NIC's ring. This runs on every loop iteration, so while
        // connections wait they are re-checked until the NIC lets go (the pool asks it to),
        // with no allocation attempts in between.
        let room = self.max_reads_in_flight.saturating_sub(self.reads_in_flight);
        let mut free = if self.buffer_waiters.is_empty() { 0 } else { self.pool.ready(room) };
        while free > 0 {
            let Some(id) = self.buffer_waiters.pop_front() else { break };
            // A connection gone since it queued is skipped (its handle no longer resolves).
            if let Some(e) = stack.get_mut(id) {
                e.app.waiting = false;
                // Its next ask walks, and starts the read it waited to start.
                e.app.ready_hint = ReadyHint::default();
                stack.wake(id);
                free -= 1;
            }
        }
        self.stats.storage_in_flight = self.reads_in_flight as u64;
        self.serve_rx_waiters(self.clock, stack);
        n
    }
}

impl<S: Storage> App for HttpApp<S> {
    type Conn = HttpConn;

    fn accept(&mut self, now: Instant, local_port: u16) -> Option<HttpConn> {
        self.clock = now;
        if self.draining {
            return None;
        }
        if local_port == self.https_port && self.tls_config.is_some() {
            if let Some((config, _)) = self.tls_slot.as_mut().and_then(|(slot, seen)| slot.update(seen)) {
                self.tls_config = Some(config);
            }
        }
        let tls = match &self.tls_config {
            Some(cfg) if local_port == self.https_port => match crate::accounting::handshake(|| HandshakeDriver::new(cfg.clone())) {
                Ok(d) => match self.held.handshakes.insert(d) {
                    Ok(key) => Some(ConnTls { phase: TlsPhase::Handshake(key), hs_out: Vec::new(), hs_base: 0, next_seq: 0, epoch: 0, failed: false, hs_queued: false, rx_buf_maybe: false, records_opened_seen: 0 }),
                    Err(_) => {
                        // Cannot happen: the slab has room for every connection the table holds.
                        log::warn!("no room for a TLS handshake");
                        self.stats.count_handshake_failure(TlsError::NoRoom("handshake").reason());
                        return None;
                    }
                },
                Err(e) => {
                    log::warn!("cannot start a TLS handshake: {e}");
                    self.stats.tls_handshake_failures += 1;
                    return None;
                }
            },
            _ => None,
        };
        let mut c = HttpConn::new(tls);
        // The handshake and the first request head must arrive within the header timeout.
        c.head_deadline = self.head_deadline_from(now);
        Some(c)
    }

    fn rx_room(&self, c: &HttpConn) -> usize {
        if c.closing {
            return RX_BUF; // discarded
        }
        // Buffer room only: past MAX_PIPELINED queued responses requests wait in the buffer,
        // and the window closes as it fills (never by moving its right edge left, except
        // when a pool is empty: then a connection holding no buffer reads nothing until one
        // comes free).
        let rx = match &c.rx {
            Some(b) => b.room(),
            None if self.rx_pool.available() > 0 => RX_BUF,
            None => 0,
        };
        match c.tls.as_ref().map(|t| t.phase) {
            None => rx,
            Some(TlsPhase::Handshake(_)) => RX_BUF,
            Some(TlsPhase::Session(k)) => {
                let tls_pool = self.tls_rx_pool.available() > 0;
                if c.tls.as_ref().is_some_and(|t| !t.rx_buf_maybe) {
                    // No buffer held: a whole one's room, if the pool can lend one.
                    return if tls_pool { RECORD_RX_BUF.min(rx) } else { 0 };
                }
                let Some(s) = self.held.sessions.get(k) else { return 0 };
                let record = if s.has_rx_buf() || tls_pool { s.rx_space() } else { 0 };
                record.min(rx)
            }
            Some(TlsPhase::Dead) => 0,
        }
    }

    fn on_data(&mut self, now: Instant, id: ConnId, c: &mut HttpConn, tcp: &mut TcpConn, data: &[u8]) {
        let held = c.rx.is_some();
        self.receive(now, id, c, tcp, data);
        if !held && c.rx.is_some() {
            self.note_rx_holder(id);
        }
    }

    fn on_rx_refused(&mut self, now: Instant, id: ConnId, c: &mut HttpConn) {
        self.clock = now;
        // Only a connection short of a pooled buffer waits for one; a full buffer of its own
        // empties as its requests are answered.
        if c.closing || c.rx_waiting || self.can_lend(c) {
            return;
        }
        c.rx_waiting = true;
        self.stats.http_rx_buffer_waits += 1;
        self.rx_waiters.push_back(id);
    }

    fn on_peer_fin(&mut self, now: Instant, c: &mut HttpConn, tcp: &mut TcpConn) {
        // Half-close: answer what was asked (requests still waiting for room in the queue
        // included), then close.
        c.peer_fin = true;
        self.parse_requests(now, c, tcp);
    }

    fn on_acked(&mut self, now: Instant, _id: ConnId, c: &mut HttpConn, tcp: &mut TcpConn, acked_to: u64) {
        self.clock = now;
        free_ready_chunks_below(c, acked_to);
        while c.responses.front(&self.held.responses).is_some_and(|r| r.end <= acked_to) {
            self.held.pop_front(&mut c.responses);
        }
        if let Some(t) = &mut c.tls {
            match t.phase {
                TlsPhase::Handshake(k) => {
                    if let Some(d) = self.held.handshakes.get_mut(k) {
                        d.ack(acked_to);
                    }
                }
                TlsPhase::Session(_) => {
                    let upto = acked_to.clamp(t.hs_base, t.hs_base + t.hs_out.len() as u64);
                    t.hs_out.drain(..(upto - t.hs_base) as usize);
                    t.hs_base = upto;
                    if t.hs_out.is_empty() {
                        // All acknowledged: give the handshake's buffer back.
                        t.hs_out = Vec::new();
                    }
                }
                TlsPhase::Dead => {}
            }
        }
        if !c.rx_bytes().is_empty() {
            self.parse_requests(now, c, tcp);
        }
        self.release_idle(c);
    }

    fn on_sent(&mut self, c: &mut HttpConn, sent_to: u64) {
        // Everything below `sent_to` went out at least once: the NIC copied it or holds the
        // buffer itself (the pool lends no buffer a device holds: DmaPool::ready). Those
        // chunks go back now, not at the ACK: a core's pool then bounds what it is reading,
        // sealing and sending, not its bandwidth-delay product, and a small pool stays in
        // the caches. A retransmission reads them again (no send buffer).
        if free_ready_chunks_below(c, sent_to) > 0 {
            self.release_chunks(c);
        }
    }

    fn prefetch(&self, c: &HttpConn) {
        // Locating its next bytes reads the oldest response (its offsets lie on both sides of
        // its head buffer) and the chunk slots' bookkeeping (each slot's first line; its
        // record headers and trailers follow).
        if let Some(k) = c.responses.key(0) {
            self.held.responses.prefetch(k);
        }
        for k in c.chunks.iter().flat_map(|set| set.iter()) {
            crate::sys::prefetch(k, 1);
        }
    }

    fn on_peer_stalled(&mut self, c: &mut HttpConn) {
        // A client that stopped reading would otherwise hold what was read for it (up to
        // two chunks) until it reads again or the idle timeout ends it, and a few such
        // clients hold a core's pool. Only once a probe found the window still closed (an
        // RTO after it closed): a player that pauses reading for a moment keeps its chunks
        // and is not read twice. The bytes are read and sealed again when the window opens.
        // Each later probe reads only the record (or blocks) of its byte, and gives it back
        // once sent; so does a read that completes after the window closed (at the next
        // segment). A window smaller than a segment is served the same way: what it takes is
        // read (whole records) at each turn and given back once sent, so a client that reads
        // a few bytes at a time holds no buffer between its ACKs.
        let freed = free_ready_chunks_below(c, u64::MAX);
        if freed > 0 {
            self.stats.storage_window_releases += freed as u64;
            self.release_chunks(c);
        }
    }

    fn on_rto(&mut self, _c: &mut HttpConn) {
        // No buffer cache: what went out and is not acknowledged is read (and sealed) again
        // when resent (its chunks went back at `on_sent`). Chunks still ready hold bytes not
        // yet sent, or not all: they stay, as a retransmission would read the same bytes
        // again; one read ahead gives its slot up if the retransmission needs it
        // (`start_read`).
    }

    fn on_idle(&mut self, _now: Instant, c: &mut HttpConn, tcp: &mut TcpConn) {
        self.close_after_queued(c, tcp);
    }

    fn evictable(&self, c: &HttpConn) -> bool {
        // Nothing queued or unacknowledged: a keep-alive connection between requests, one
        // still sending its head, or one that never sent anything.
        c.responses.is_empty()
    }

    fn deadline(&self, c: &HttpConn) -> Option<Instant> {
        if c.closing {
            None
        } else {
            c.head_deadline
        }
    }

    fn on_deadline(&mut self, now: Instant, c: &mut HttpConn, tcp: &mut TcpConn) {
        if c.closing {
            return;
        }
        if !self.may_queue(c) {
            // The parser waits for us, not for the peer: give the head more time.
            c.head_deadline = self.head_deadline_from(now);
            return;
        }
        c.head_deadline = None;
        self.stats.http_header_timeouts += 1;
        let in_session = c.tls.as_ref().is_none_or(|t| matches!(t.phase, TlsPhase::Session(_)) && !t.failed);
        if !c.rx_bytes().is_empty() && in_session {
            // Part of a head arrived: answer 408 (RFC 9110 15.5.9), then close.
            self.respond_error(now, c, tcp, 408);
        } else {
            self.close_after_queued(c, tcp);
        }
    }

    fn on_closed(&mut self, mut c: HttpConn, _reason: CloseReason) {
        if c.tls.as_ref().is_some_and(|t| t.hs_queued) {
            self.hs_stale += 1;
        }
        // Chunks return their storage buffers; pending reads complete into nothing.
        self.release_all(&mut c);
    }

    fn available(&mut self, _now: Instant, id: ConnId, c: &mut HttpConn, off: u64, max: usize, resend: bool) -> Ready {
        // Within the bytes the last walk found ready in its chunk ([`ReadyHint`]): no walk
        // over the response, its chunks and records (cold at many connections).
        if !resend && c.ready_hint.covers(off, max) {
            return Ready { len: max, more_soon: false };
        }
        c.ready_hint = ReadyHint::default();
        let (mut len, mut stop, mut first) = ready_len(&self.held, c, off, max);
        // A read under way, or started now, wakes the connection when it completes: what
        // follows is on its way. (One that could not start is not counted.) A chunk filled
        // at once is walked on into (at most every chunk `max` spans, and one more).
        let mut fills = max / CHUNK + 2;
        let more_soon = loop {
            match stop {
                // A retransmission reads the records it resends (and what the walk wants
                // beyond them in that chunk); a first read, the whole chunk.
                Stop::Missing { resp, index, at } => match self.start_read(id, c, resp, index, at, resend.then_some(at + (max - len) as u64)) {
                    ReadStart::Filled if fills > 0 => {
                        fills -= 1;
                        (len, stop, first) = ready_len(&self.held, c, off, max);
                    }
                    ReadStart::Filled | ReadStart::Started => break true,
                    ReadStart::NotStarted => break false,
                },
                Stop::Pending => break true,
                Stop::Done => break false,
            }
        };
        let ready = Ready { len, more_soon };
        // Read ahead: the next chunk of this response, so the wire never waits on it. Not
        // for a retransmission: after a timeout most of what follows usually arrived (the
        // ACK will say), and reading it again would be wasted; nor for a zero-window probe
        // (asked as a resend), whose peer has no room for it. Not from a medium in memory
        // either, for bodies sealed out of it: there is no waiting to hide, and a chunk sealed
        // just before it is sent is still in the core's cache when the NIC (or the TAP's
        // copy) takes it.
        let Some(FirstChunk { at: (resp, index), ready_end }) = first.filter(|_| !resend) else { return ready };
        let Some(r) = c.responses.get(&self.held.responses, resp) else { return ready };
        let (start, body, sealed) = (r.start, r.body, r.tls.is_some());
        let Some(b) = body else { return ready };
        let next = index + 1;
        let filled_when_asked = sealed && self.storage.maps(b.extent + next * CHUNK as u64);
        let next_obj = next * CHUNK as u64;
        let ahead_settled = if next_obj < b.obj_off + b.len && c.find_chunk(start, next, next_obj).is_none() && !filled_when_asked {
            !matches!(self.start_read(id, c, resp, next, next_obj, None), ReadStart::NotStarted)
        } else {
            true
        };
        // The asks that follow within this chunk need no walk (nor, until a slot or a buffer
        // frees, another try at the read-ahead).
        if let Some(to) = ready_end.filter(|_| len > 0) {
            c.ready_hint = ReadyHint::new(to, !ahead_settled);
        }
        ready
    }

    fn payload<'a>(&'a self, c: &'a HttpConn, off: u64, len: usize, parts: &mut Parts<'a>) {
        // Short (the stack checks) only where a hint promised what a chunk given back since no
        // longer holds: the walk and `available`'s agree on every slice.
        walk_ready(&self.held, c, off, len, |b| {
            parts.push(b);
        });
    }

    fn payload_short(&mut self, c: &mut HttpConn) {
        c.ready_hint = ReadyHint::default();
    }
}
