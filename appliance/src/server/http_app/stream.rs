//! Where each byte of a connection's response stream lies: the response heads, the
//! storage chunks read for bodies and the TLS records sealed in them. `available`
//! ([`ready_len`]) and `payload` ([`walk_ready`]) walk the same way, so what one promises the
//! other gives. Between its walks `available` answers from where the last one found the
//! chunk's ready bytes to end ([`FirstChunk::ready_end`], kept as the connection's
//! `ReadyHint`); `payload` always walks, and the stack takes back a segment it could not
//! fill.

use drivers::storage::DmaBuf;

use super::{Chunk, ChunkSet, ChunkState, HttpConn, Held, ReadyHint, Response, TlsPhase, CHUNK, RECORDS_PER_CHUNK, TRAILER};
use crate::tls::handshake::RecordSession;
use crate::tls::layout::{RecordPart, RecordSource, ResponseLayout};
use crate::tls::record::{self, Content, CONTENT_APPLICATION_DATA};
use crate::tls::{AeadImpl, TlsError, TlsVersion};

/// Free the ready chunks whose bytes all lie below stream offset `off` (sent, or
/// acknowledged; `u64::MAX`: every ready chunk); how many were.
pub(super) fn free_ready_chunks_below(c: &mut HttpConn, off: u64) -> usize {
    let mut freed = 0;
    let mut hinted = false;
    for k in c.chunks.iter_mut().flat_map(|set| set.iter_mut()) {
        if matches!(k.state, ChunkState::Ready(_)) && k.stream_end <= off {
            k.state = ChunkState::Free;
            freed += 1;
            // The hinted chunk, or one after it (the hint ends at the hinted chunk's end).
            hinted |= k.stream_end >= c.ready_hint.to();
        }
    }
    if hinted || (freed > 0 && c.ready_hint.ahead()) {
        c.ready_hint = ReadyHint::default();
    }
    freed
}

/// Free the ready chunk furthest ahead of chunk `index` of the response starting at stream
/// offset `start`, read ahead of a retransmission that now needs its slot; whether there
/// was one. (A chunk being read keeps its slot: its completion finds it.)
pub(super) fn yield_read_ahead(c: &mut HttpConn, start: u64, index: u64) -> bool {
    let Some(set) = c.chunks.as_deref_mut() else { return false };
    let later = set
        .iter_mut()
        .filter(|k| matches!(k.state, ChunkState::Ready(_)) && (k.resp_start, k.index) > (start, index))
        .max_by_key(|k| (k.resp_start, k.index));
    match later {
        Some(k) => {
            k.state = ChunkState::Free;
            c.ready_hint = ReadyHint::default();
            true
        }
        None => false,
    }
}

/// Give a connection's chunk slots back to `sets` once none holds a buffer.
#[allow(clippy::vec_box)] // boxes move between pool and connection without copying
pub(super) fn release_chunks(sets: &mut Vec<Box<ChunkSet>>, c: &mut HttpConn) {
    if c.chunks.as_ref().is_some_and(|set| set.iter().all(|k| matches!(k.state, ChunkState::Free))) {
        if let Some(set) = c.chunks.take() {
            sets.push(set);
        }
    }
}

/// What lies at a stream offset.
enum Loc<'a> {
    /// Bytes ready to send from here (a prefix may be taken).
    Bytes(&'a [u8]),
    /// A part of a sealed record of a TLS body: the records after it in the same chunk
    /// follow on the wire, so a walk goes on there without locating each part again.
    Record(RecordAt<'a>),
    /// Chunk `index` of response `resp` is not in memory from object byte `at` (a record's
    /// first under TLS): read it.
    Missing { resp: usize, index: u64, at: u64 },
    /// A read is under way.
    Pending,
    /// Nothing is held there (beyond the stream, or acknowledged already).
    Nothing,
}

/// A body chunk: (response index in the connection's queue, chunk index of its object).
type BodyChunk = (usize, u64);

/// The body chunk holding the first byte a walk looked at, and where the bytes ready from
/// that byte end in it (the end of the last record sealed in it, or of its bytes; `None`
/// when it is not ready): all of them may be promised later without walking again (their
/// parts, at most five records' worth in one segment, stay within a segment's slices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FirstChunk {
    pub(super) at: BodyChunk,
    pub(super) ready_end: Option<u64>,
}

/// What lies at stream offset `off`, and the body chunk that holds it when it is body bytes
/// (what the read-ahead starts from).
fn locate<'a>(held: &'a Held, c: &'a HttpConn, off: u64) -> (Loc<'a>, Option<BodyChunk>) {
    if let Some(t) = &c.tls {
        match t.phase {
            TlsPhase::Handshake(d) => return (held.handshakes.get(d).map_or(Loc::Nothing, |d| bytes_or_nothing(d.tx_bytes(off))), None),
            TlsPhase::Session(_) if off < t.hs_base + t.hs_out.len() as u64 => {
                return match off.checked_sub(t.hs_base) {
                    Some(at) => (Loc::Bytes(&t.hs_out[at as usize..]), None),
                    None => (Loc::Nothing, None),
                };
            }
            TlsPhase::Session(_) => {}
            TlsPhase::Dead => return (Loc::Nothing, None),
        }
    }
    let Some(resp) = c.responses.iter(&held.responses).position(|r| off >= r.start && off < r.end) else { return (Loc::Nothing, None) };
    let Some(r) = c.responses.get(&held.responses, resp) else { return (Loc::Nothing, None) };
    let rel = off - r.start;
    if rel < r.head_len as u64 {
        return (Loc::Bytes(&r.head[rel as usize..r.head_len]), None);
    }
    let Some(b) = r.body else { return (Loc::Nothing, None) };
    match &r.tls {
        None => {
            let obj_pos = b.obj_off + (rel - r.head_len as u64);
            let index = obj_pos / CHUNK as u64;
            let loc = match c.find_chunk(r.start, index, obj_pos) {
                None => Loc::Missing { resp, index, at: obj_pos },
                Some(k @ Chunk { state: ChunkState::Ready(buf), .. }) => {
                    let end = k.obj_end;
                    let at = k.buf_base();
                    Loc::Bytes(&buf.as_slice()[(obj_pos - at) as usize..(end - at) as usize])
                }
                Some(_) => Loc::Pending,
            };
            (loc, Some((resp, index)))
        }
        Some(t) => {
            let Some((rec, part)) = t.layout.locate(rel - t.clear_head) else { return (Loc::Nothing, None) };
            let RecordSource::Body { object_start, object_end } = t.layout.record_source(rec) else {
                return (Loc::Nothing, None); // the head record lies in `head`, handled above
            };
            let index = object_start / CHUNK as u64;
            let chunk = Some((resp, index));
            let k = match c.find_chunk(r.start, index, object_start) {
                None => return (Loc::Missing { resp, index, at: object_start }, chunk),
                Some(k) => k,
            };
            let ChunkState::Ready(buf) = &k.state else { return (Loc::Pending, chunk) };
            (Loc::Record(RecordAt { layout: &t.layout, chunk: k, buf: buf.as_slice(), base: k.buf_base(), rec, part, object_start, object_end }), chunk)
        }
    }
}

/// A part of record `rec`, sealed in chunk `chunk` (buffer `buf`, holding object bytes from
/// `base`); its plaintext is object bytes `object_start..object_end`.
struct RecordAt<'a> {
    layout: &'a ResponseLayout,
    chunk: &'a Chunk,
    buf: &'a [u8],
    /// The object offset of `buf`'s first byte.
    base: u64,
    rec: u64,
    part: RecordPart,
    object_start: u64,
    object_end: u64,
}

impl<'a> RecordAt<'a> {
    /// The bytes of this part from its offset to its end.
    fn bytes(&self) -> &'a [u8] {
        let (k, j, format) = (self.chunk, (self.rec - self.chunk.first_rec) as usize, self.layout.format());
        match self.part {
            RecordPart::Header(i) => &k.hdr[j][i as usize..format.header_len as usize],
            RecordPart::Payload(i) => &self.buf[(self.object_start - self.base) as usize + i as usize..(self.object_end - self.base) as usize],
            RecordPart::InnerType => &k.trl[j][..TRAILER],
            RecordPart::Tag(i) => {
                let tag_at = format.inner_type_len as usize;
                &k.trl[j][tag_at + i as usize..tag_at + format.tag_len as usize]
            }
        }
    }

    /// The next part on the wire if it lies in the same chunk (`bytes` gave the trailer
    /// whole: the inner type and the tag).
    fn next(self) -> Option<RecordAt<'a>> {
        let part = match self.part {
            RecordPart::Header(_) => RecordPart::Payload(0),
            RecordPart::Payload(_) if self.layout.format().inner_type_len > 0 => RecordPart::InnerType,
            RecordPart::Payload(_) => RecordPart::Tag(0),
            RecordPart::InnerType | RecordPart::Tag(_) => return self.next_record(),
        };
        Some(RecordAt { part, ..self })
    }

    /// The first part of the next record if it lies in the same chunk.
    fn next_record(self) -> Option<RecordAt<'a>> {
        let rec = self.rec + 1;
        if rec >= self.layout.record_count() {
            return None;
        }
        let RecordSource::Body { object_start, object_end } = self.layout.record_source(rec) else { return None };
        if object_end > self.chunk.obj_end || rec - self.chunk.first_rec >= RECORDS_PER_CHUNK as u64 {
            return None; // past what this chunk read (the next chunk's): located afresh
        }
        Some(RecordAt { rec, part: RecordPart::Header(0), object_start, object_end, ..self })
    }

    /// At a record's first byte: the record's length on the wire (header, payload, trailer:
    /// [`PARTS_PER_RECORD`] parts).
    fn whole_record_len(&self) -> Option<usize> {
        if self.part != RecordPart::Header(0) {
            return None;
        }
        Some((self.layout.format().overhead() + self.object_end - self.object_start) as usize)
    }
}

/// The parts a walk gives per record: its header, its payload and its trailer (the inner
/// content type and the tag, or the tag alone), as [`RecordAt::next`] steps.
const PARTS_PER_RECORD: usize = 3;

/// Why [`walk_ready`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// At `max`, at the part limit, or where nothing more is held.
    Done,
    /// At a chunk not read yet: (response, chunk index, the object byte from which) to read.
    Missing { resp: usize, index: u64, at: u64 },
    /// At a chunk whose read is under way.
    Pending,
}

/// Walk the bytes ready from stream offset `off`: at most `max` of them, in at most
/// [`MAX_PARTS`](crate::net::iface::MAX_PARTS) slices, each given to `each` in order. Returns
/// how many bytes, why the walk stopped, and the body chunk holding `off` (if `max` > 0 and
/// it is body bytes) with where its ready bytes end. `available` ([`ready_len`]) and `payload` both walk, so they agree on
/// every slice.
pub(super) fn walk_ready<'a>(held: &'a Held, c: &'a HttpConn, off: u64, max: usize, each: impl FnMut(&'a [u8])) -> (usize, Stop, Option<FirstChunk>) {
    walk::<true>(held, c, off, max, each)
}

/// What [`walk_ready`] returns, without the slices: a record that lies whole within the
/// walk's limits is stepped over by its length, its header and trailer not read (the walk
/// for `payload` reads them). `available` asks this once per segment.
pub(super) fn ready_len(held: &Held, c: &HttpConn, off: u64, max: usize) -> (usize, Stop, Option<FirstChunk>) {
    walk::<false>(held, c, off, max, |_| {})
}

fn walk<'a, const SLICES: bool>(held: &'a Held, c: &'a HttpConn, off: u64, max: usize, mut each: impl FnMut(&'a [u8])) -> (usize, Stop, Option<FirstChunk>) {
    use crate::net::iface::MAX_PARTS;
    let (mut n, mut parts) = (0usize, 0usize);
    let mut take = |b: &'a [u8], n: &mut usize, parts: &mut usize| {
        let b = &b[..b.len().min(max - *n)];
        each(b);
        *n += b.len();
        *parts += 1;
        *n < max && *parts < MAX_PARTS
    };
    let mut first = None;
    loop {
        if n >= max {
            return (n, Stop::Done, first);
        }
        let (loc, chunk) = locate(held, c, off + n as u64);
        if n == 0 {
            first = chunk.map(|at| FirstChunk {
                at,
                ready_end: match &loc {
                    Loc::Record(r) => Some(r.chunk.stream_end),
                    Loc::Bytes(b) => Some(off + b.len() as u64),
                    _ => None,
                },
            });
        }
        match loc {
            Loc::Bytes(b) => {
                if !take(b, &mut n, &mut parts) {
                    return (n, Stop::Done, first);
                }
            }
            Loc::Record(mut at) => loop {
                // Taking each of this record's parts would leave the walk below both limits
                // (and cut none of them): the same as adding up the record.
                let whole = if SLICES { None } else { at.whole_record_len().filter(|&w| n + w < max && parts + PARTS_PER_RECORD < MAX_PARTS) };
                if let Some(w) = whole {
                    n += w;
                    parts += PARTS_PER_RECORD;
                    match at.next_record() {
                        Some(next) => at = next,
                        None => break,
                    }
                    continue;
                }
                if !take(at.bytes(), &mut n, &mut parts) {
                    return (n, Stop::Done, first);
                }
                match at.next() {
                    Some(next) => at = next,
                    None => break,
                }
            },
            Loc::Missing { resp, index, at } => return (n, Stop::Missing { resp, index, at }, first),
            Loc::Pending => return (n, Stop::Pending, first),
            Loc::Nothing => return (n, Stop::Done, first),
        }
    }
}

fn bytes_or_nothing(b: &[u8]) -> Loc<'_> {
    if b.is_empty() {
        Loc::Nothing
    } else {
        Loc::Bytes(b)
    }
}

/// Seal the records of `resp` whose plaintext lies in chunk `k`: in place in `buf`, or, with
/// `from` (the bytes a read would have put in `buf`), out of place from there into `buf`.
/// Returns how many records were sealed.
pub(super) fn seal_chunk(session: &RecordSession, with: AeadImpl, r: &Response, k: &mut Chunk, buf: &mut DmaBuf, from: Option<&[u8]>) -> Result<u64, TlsError> {
    let (Some(t), Some(b)) = (r.tls, r.body) else { return Ok(0) };
    // The read started at a record's first block (the body's first byte's, or the first
    // record a retransmission resends) and ended at a record's end or the body's.
    let at = k.buf_base();
    let lo = at.max(b.obj_off);
    let hi = k.obj_end;
    let keys = session.tx_keys(t.epoch)?;
    let bulk = keys.bulk_key(with);
    let first = r.record_of(&t, &b, lo);
    let last = r.record_of(&t, &b, hi - 1);
    k.first_rec = first;
    for rec in first..=last {
        let RecordSource::Body { object_start, object_end } = t.layout.record_source(rec) else {
            return Err(TlsError::Malformed("record layout"));
        };
        debug_assert!(object_start >= lo && object_end <= hi);
        let j = (rec - first) as usize;
        let range = (object_start - at) as usize..(object_end - at) as usize;
        // The records are sealed in order, so the byte after this one's content (which ring
        // borrows for the inner type) is the next record's, not sealed yet.
        let content = Content::in_buffer(buf.as_mut_slice(), range, from).ok_or(TlsError::Malformed("chunk range"))?;
        let seq = t.layout.seq(rec);
        // Sealing in place is one pass over each payload byte (read, then written back where
        // it lies): one byte touched, where a copy and then a seal would touch two
        // (docs/performance.md). Sealing out of the medium's mapping is one pass as well with
        // aws-lc-rs (the seal is the copy); ring copies, then seals: two.
        let touched = match keys.version() {
            TlsVersion::Tls13 => {
                let hdr: &mut [u8; 5] = (&mut k.hdr[j][..5]).try_into().expect("5-byte header");
                record::seal_split(keys, &bulk, seq, hdr, content, CONTENT_APPLICATION_DATA, &mut k.trl[j])?
            }
            TlsVersion::Tls12 => {
                let tag: &mut [u8; 16] = (&mut k.trl[j][..16]).try_into().expect("16-byte tag");
                record::seal_tls12(keys, &bulk, seq, CONTENT_APPLICATION_DATA, &mut k.hdr[j], content, tag)?
            }
        };
        crate::accounting::add_touched(touched);
    }
    k.stream_end = r.start + t.clear_head + t.layout.record_wire_range(last).end;
    Ok(last - first + 1)
}
