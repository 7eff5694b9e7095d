//! HTTP/1.1 over the TCP stack: parses requests out of each connection's receive buffer,
//! plans responses against the volume, and serves the response stream by pulling it: a
//! response is a head (kept, a few hundred bytes) followed by an object range that is read
//! from storage into DMA chunks only when TCP asks for those bytes, and released once the
//! peer acknowledges them (or at a retransmission timeout, after which they are read again).
use std::collections::VecDeque;

use drivers::storage::{Completion, DmaBuf, DmaPool, Storage};

use crate::http::{self, Limits, ObjectMeta, Parse, Plan, MAX_HEAD_LEN};
use crate::net::iface::{App, CloseReason, Stack};
use crate::net::tcp::table::ConnId;
use crate::net::tcp::TcpConn;
use crate::net::Instant;
use crate::stats::Stats;
use crate::volume::Volume;

/// Bytes of object data per storage read and DMA buffer.
pub const CHUNK: usize = 64 * 1024;
const CHUNKS_PER_CONN: usize = 4;
const RX_BUF: usize = 16 * 1024;
const MAX_PIPELINED: usize = 16;
const BLOCK: u64 = 4096;

#[derive(Clone, Copy, Debug)]
struct Body {
    /// Volume offset of the object's extent.
    extent: u64,
    /// Object bytes `[obj_off, obj_off + len)` are sent.
    obj_off: u64,
    len: u64,
    /// The object's size (the last chunk is shorter).
    size: u64,
}

struct Response {
    start: u64,
    head: [u8; MAX_HEAD_LEN],
    head_len: usize,
    extra: &'static [u8],
    body: Option<Body>,
    end: u64,
}

impl Response {
    fn body_start(&self) -> u64 {
        self.start + (self.head_len + self.extra.len()) as u64
    }
}

enum ChunkState {
    Free,
    Pending(u64),
    Ready(DmaBuf),
}

/// A DMA buffer holding object bytes `[index * CHUNK, index * CHUNK + CHUNK)` of one response.
struct Chunk {
    state: ChunkState,
    resp_start: u64,
    index: u64,
    /// The stream range this chunk serves, and the buffer offset of `stream_start`.
    stream_start: u64,
    stream_end: u64,
    buf_off: usize,
}

impl Chunk {
    const FREE: Chunk = Chunk { state: ChunkState::Free, resp_start: 0, index: 0, stream_start: 0, stream_end: 0, buf_off: 0 };
}

/// Per-connection HTTP state.
pub struct HttpConn {
    rx: Vec<u8>,
    responses: VecDeque<Response>,
    chunks: [Chunk; CHUNKS_PER_CONN],
    stream_len: u64,
    /// No more requests are parsed (close after the queued responses).
    closing: bool,
    read_seq: u16,
    pub requests: u64,
}

impl HttpConn {
    fn new() -> Self {
        HttpConn {
            rx: Vec::new(),
            responses: VecDeque::new(),
            chunks: [Chunk::FREE, Chunk::FREE, Chunk::FREE, Chunk::FREE],
            stream_len: 0,
            closing: false,
            read_seq: 0,
            requests: 0,
        }
    }

    /// Nothing queued or in flight: the connection is between requests.
    pub fn idle(&self) -> bool {
        self.responses.is_empty()
    }
}

/// Where the bytes at a stream offset are.
enum Located {
    Head { resp: usize, at: usize, len: usize },
    Extra { resp: usize, at: usize, len: usize },
    Body { resp: usize, index: u64 },
}

fn locate(c: &HttpConn, off: u64) -> Option<Located> {
    let resp = c.responses.iter().position(|r| off >= r.start && off < r.end)?;
    let r = &c.responses[resp];
    let at = (off - r.start) as usize;
    if at < r.head_len {
        return Some(Located::Head { resp, at, len: r.head_len - at });
    }
    let at = at - r.head_len;
    if at < r.extra.len() {
        return Some(Located::Extra { resp, at, len: r.extra.len() - at });
    }
    let b = r.body?;
    let obj_pos = b.obj_off + (off - r.body_start());
    Some(Located::Body { resp, index: obj_pos / CHUNK as u64 })
}

pub struct HttpApp<S: Storage> {
    pub storage: S,
    pool: DmaPool,
    pub volume: Volume,
    limits: Limits,
    pub stats: Stats,
    /// Wall-clock seconds for Date headers, set once per loop iteration.
    pub wall_unix: u64,
    reads_in_flight: usize,
    max_reads_in_flight: usize,
    completions: Vec<Completion>,
    buffer_waiters: Vec<ConnId>,
    pub draining: bool,
}

impl<S: Storage> HttpApp<S> {
    /// `buffers` DMA chunks of [`CHUNK`] bytes bound what this core has in flight.
    pub fn new(mut storage: S, volume: Volume, buffers: usize) -> Result<Self, drivers::storage::StorageError> {
        let pool = storage.dma_pool(CHUNK, buffers)?;
        Ok(HttpApp {
            storage,
            pool,
            volume,
            limits: Limits::default(),
            stats: Stats::default(),
            wall_unix: 0,
            reads_in_flight: 0,
            max_reads_in_flight: buffers,
            completions: Vec::with_capacity(buffers),
            buffer_waiters: Vec::with_capacity(1024),
            draining: false,
        })
    }

    pub fn buffers_free(&self) -> usize {
        self.pool.available()
    }

    pub fn reads_in_flight(&self) -> usize {
        self.reads_in_flight
    }

    /// Parse and plan every complete request in the receive buffer that fits the queue.
    fn parse_requests(&mut self, c: &mut HttpConn, tcp: &mut TcpConn) {
        while !c.closing && c.responses.len() < MAX_PIPELINED && !c.rx.is_empty() {
            let mut path_buf = [0u8; 4096];
            let mut extent = 0u64;
            let (plan, consumed) = match http::parse_request(&c.rx, &self.limits) {
                Parse::Incomplete => break,
                Parse::Error(e) => {
                    log::debug!("bad request: {} {}", e.status, e.reason);
                    (Plan::from_error(&e), c.rx.len())
                }
                Parse::Complete { request, consumed } => {
                    let volume = &self.volume;
                    let plan = http::plan_request(&request, &mut path_buf, |p| {
                        volume.lookup(p).map(|o| {
                            extent = o.offset;
                            ObjectMeta { size: o.size, content_type: &o.content_type, etag: &o.etag, mtime: o.mtime }
                        })
                    });
                    log::debug!("{} {} -> {}", request.target, consumed, plan.status);
                    (plan, consumed)
                }
            };
            let mut plan = plan;
            if self.draining {
                plan.keep_alive = false;
            }
            let mut resp = Response { start: c.stream_len, head: [0; MAX_HEAD_LEN], head_len: 0, extra: plan.error_body(), body: None, end: 0 };
            resp.head_len = match http::write_head(&plan, self.wall_unix, &mut resp.head) {
                Ok(n) => n,
                Err(_) => {
                    // Cannot happen with the volume's bounded metadata; answer 500 rather than panic.
                    let p = Plan::error(500);
                    resp.extra = p.error_body();
                    http::write_head(&p, self.wall_unix, &mut resp.head).unwrap_or(0)
                }
            };
            resp.body = plan.body.zip(plan.object).map(|((obj_off, len), meta)| Body { extent, obj_off, len, size: meta.size });
            resp.end = resp.body_start() + resp.body.map_or(0, |b| b.len);
            self.stats.http_requests += 1;
            self.stats.count_status(plan.status);
            self.stats.http_body_bytes += resp.body.map_or(0, |b| b.len);
            c.requests += 1;
            c.stream_len = resp.end;
            c.responses.push_back(resp);
            tcp.set_stream_len(c.stream_len);
            c.rx.drain(..consumed.min(c.rx.len()));
            if !plan.keep_alive {
                c.closing = true;
                c.rx.clear();
                tcp.close();
            }
        }
    }

    /// Start reading chunk `index` of response `resp` into a free slot. Returns false when
    /// no buffer or slot is free (the connection is woken when one is).
    fn start_read(&mut self, id: ConnId, c: &mut HttpConn, resp: usize, index: u64) -> bool {
        let Some(slot) = c.chunks.iter().position(|k| matches!(k.state, ChunkState::Free)) else { return false };
        if self.reads_in_flight >= self.max_reads_in_flight {
            return false;
        }
        let Some(buf) = self.pool.alloc() else {
            self.buffer_waiters.push(id);
            return false;
        };
        let r = &c.responses[resp];
        let Some(b) = r.body else { return false };
        let chunk_obj = index * CHUNK as u64;
        let valid = (b.size - chunk_obj).min(CHUNK as u64);
        let read_len = valid.div_ceil(BLOCK) * BLOCK;
        let lo = chunk_obj.max(b.obj_off);
        let hi = (chunk_obj + valid).min(b.obj_off + b.len);
        c.read_seq = c.read_seq.wrapping_add(1);
        let tag = (id.slot as u64) << 32 | (id.gen as u16 as u64) << 16 | c.read_seq as u64;
        let k = &mut c.chunks[slot];
        k.resp_start = r.start;
        k.index = index;
        k.stream_start = r.body_start() + (lo - b.obj_off);
        k.stream_end = r.body_start() + (hi - b.obj_off);
        k.buf_off = (lo - chunk_obj) as usize;
        match self.storage.submit_read(tag, b.extent + chunk_obj, read_len as usize, buf) {
            Ok(()) => {
                k.state = ChunkState::Pending(tag);
                self.reads_in_flight += 1;
                self.stats.storage_reads += 1;
                self.stats.storage_read_bytes += read_len;
                true
            }
            Err((e, _buf)) => {
                log::warn!("storage read refused: {e}");
                self.stats.storage_errors += 1;
                false
            }
        }
    }

    fn find_chunk(c: &HttpConn, resp_start: u64, index: u64) -> Option<usize> {
        c.chunks.iter().position(|k| !matches!(k.state, ChunkState::Free) && k.resp_start == resp_start && k.index == index)
    }

    /// Poll storage completions and wake the connections they belong to. Returns how many.
    pub fn poll_storage(&mut self, stack: &mut Stack<HttpConn>) -> usize {
        self.storage.poll(&mut self.completions);
        let n = self.completions.len();
        for comp in self.completions.drain(..) {
            self.reads_in_flight -= 1;
            let slot = (comp.tag >> 32) as u32;
            let gen_low = (comp.tag >> 16) as u16;
            let Some((id, e)) = stack.get_by_short_id(slot, gen_low) else { continue };
            let Some(k) = e.app.chunks.iter_mut().find(|k| matches!(k.state, ChunkState::Pending(t) if t == comp.tag)) else {
                continue;
            };
            match comp.result {
                Ok(()) if k.stream_end > e.tcp.acked_offset() => k.state = ChunkState::Ready(comp.buf),
                Ok(()) => k.state = ChunkState::Free,
                Err(err) => {
                    // Never send wrong bytes: end this transfer only.
                    log::warn!("storage read failed, closing the connection: {err}");
                    self.stats.storage_errors += 1;
                    k.state = ChunkState::Free;
                    e.tcp.abort();
                }
            }
            stack.wake(id);
        }
        if self.pool.available() > 0 && !self.buffer_waiters.is_empty() {
            for id in self.buffer_waiters.drain(..) {
                stack.wake(id);
            }
        }
        self.stats.storage_in_flight = self.reads_in_flight as u64;
        n
    }
}

impl<S: Storage> App for HttpApp<S> {
    type Conn = HttpConn;

    fn accept(&mut self, _now: Instant, _local_port: u16) -> Option<HttpConn> {
        (!self.draining).then(HttpConn::new)
    }

    fn rx_room(&self, c: &HttpConn) -> usize {
        if c.closing {
            RX_BUF // discarded
        } else if c.responses.len() >= MAX_PIPELINED {
            0
        } else {
            RX_BUF - c.rx.len()
        }
    }

    fn on_data(&mut self, _now: Instant, _id: ConnId, c: &mut HttpConn, tcp: &mut TcpConn, data: &[u8]) {
        if c.closing {
            return;
        }
        if c.rx.capacity() == 0 {
            c.rx.reserve_exact(RX_BUF);
        }
        let take = data.len().min(RX_BUF - c.rx.len());
        c.rx.extend_from_slice(&data[..take]);
        self.parse_requests(c, tcp);
    }

    fn on_peer_fin(&mut self, _now: Instant, c: &mut HttpConn, tcp: &mut TcpConn) {
        // Half-close: answer what was asked, then close.
        c.closing = true;
        c.rx.clear();
        tcp.close();
    }

    fn on_acked(&mut self, _now: Instant, _id: ConnId, c: &mut HttpConn, tcp: &mut TcpConn, acked_to: u64) {
        for k in c.chunks.iter_mut() {
            if matches!(k.state, ChunkState::Ready(_)) && k.stream_end <= acked_to {
                k.state = ChunkState::Free;
            }
        }
        while c.responses.front().is_some_and(|r| r.end <= acked_to) {
            c.responses.pop_front();
        }
        if !c.rx.is_empty() {
            self.parse_requests(c, tcp);
        }
    }

    fn on_rto(&mut self, c: &mut HttpConn) {
        // No buffer cache: what is not acknowledged is read again when it is resent.
        for k in c.chunks.iter_mut() {
            if matches!(k.state, ChunkState::Ready(_)) {
                k.state = ChunkState::Free;
            }
        }
    }

    fn on_idle(&mut self, _now: Instant, c: &mut HttpConn, tcp: &mut TcpConn) {
        c.closing = true;
        tcp.close();
    }

    fn on_closed(&mut self, c: HttpConn, _reason: CloseReason) {
        drop(c); // chunks return their buffers; pending reads complete into nothing
    }

    fn available(&mut self, _now: Instant, id: ConnId, c: &mut HttpConn, off: u64, max: usize) -> usize {
        let Some(loc) = locate(c, off) else { return 0 };
        match loc {
            Located::Head { len, .. } | Located::Extra { len, .. } => len.min(max),
            Located::Body { resp, index } => {
                let start = c.responses[resp].start;
                let n = match Self::find_chunk(c, start, index) {
                    Some(i) => match c.chunks[i].state {
                        ChunkState::Ready(_) => (c.chunks[i].stream_end - off).min(max as u64) as usize,
                        _ => 0,
                    },
                    None => {
                        self.start_read(id, c, resp, index);
                        0
                    }
                };
                // Read ahead: the next chunk of this response, so the wire never waits on it.
                if n > 0 {
                    let r = &c.responses[resp];
                    if let Some(b) = r.body {
                        let next = index + 1;
                        if next * (CHUNK as u64) < b.obj_off + b.len && Self::find_chunk(c, start, next).is_none() {
                            self.start_read(id, c, resp, next);
                        }
                    }
                }
                n
            }
        }
    }

    fn payload<'a>(&'a self, c: &'a HttpConn, off: u64, len: usize) -> &'a [u8] {
        if len == 0 {
            return &[];
        }
        match locate(c, off) {
            Some(Located::Head { resp, at, .. }) => &c.responses[resp].head[at..at + len],
            Some(Located::Extra { resp, at, .. }) => &c.responses[resp].extra[at..at + len],
            Some(Located::Body { resp, index }) => {
                let start = c.responses[resp].start;
                let k = Self::find_chunk(c, start, index).map(|i| &c.chunks[i]);
                match k {
                    Some(Chunk { state: ChunkState::Ready(buf), stream_start, buf_off, .. }) => {
                        let at = buf_off + (off - stream_start) as usize;
                        &buf.as_slice()[at..at + len]
                    }
                    // `available` said these bytes were ready a moment ago.
                    _ => unreachable_payload(),
                }
            }
            None => unreachable_payload(),
        }
    }
}

#[cold]
fn unreachable_payload() -> &'static [u8] {
    debug_assert!(false, "payload asked for bytes that available() did not promise");
    &[]
}
