//! Sans-IO HTTP/1.1 for a static-object server: parse a request head out of received bytes,
//! plan the answer (status, byte range, conditional requests) against an object's metadata,
//! and format the response head into a caller buffer. No I/O and no allocation: requests are
//! borrowed views over the receive buffer, heads are written into fixed buffers, and the
//! object body itself is never touched here (the plan names the byte range to send).
//!
//! Driving it from a connection:
//! 1. `parse_request(&rx[..filled], &limits)`: `Incomplete` -> wait for more bytes;
//!    `Error(e)` -> send `Plan::from_error(&e)` and close; `Complete { request, consumed }`
//!    -> `plan_request(&request, &mut path_buf, lookup)` (which is `decode_path` + `plan`).
//!    The plan borrows nothing from the receive buffer.
//! 2. `write_head(&plan, now, &mut head_buf)`, send it, then `plan.error_body()`, then the
//!    object bytes `plan.body` (offset, len), if any.
//! 3. Drop `consumed` bytes from the receive buffer; if `plan.keep_alive` parse the next
//!    (pipelined) request, otherwise close once everything is sent.
//!
//! Buffer sizes: `rx` of [`Limits::max_head_len`] bytes (parsing never answers `Incomplete`
//! once that much is buffered), `path_buf` of `max_target` bytes, `head_buf` of
//! [`MAX_HEAD_LEN`]. A head can only become complete when a `\n` arrives, so a caller may
//! skip re-parsing after segments without one (errors are then noticed at the next line end
//! or when `rx` is full).

mod date;
mod range;
mod request;
mod response;

pub use date::{http_date, parse_http_date, utc_timestamp, HTTP_DATE_LEN};
// Content types come from the volume, where `pack` records them.
pub use crate::volume::content_type_for;
pub use range::{if_range_matches, parse_range, RangeOutcome};
pub use request::{decode_path, parse_request, Method, Parse, Request, Version};
pub use response::{
    plan, plan_request, write_head, write_head_with, ContentRange, HeadError, ObjectMeta, Plan,
    MAX_CONTENT_TYPE_LEN, MAX_ETAG_LEN, MAX_HEAD_LEN,
};

/// Longest method token accepted; longer ones are malformed (400).
pub const MAX_METHOD_LEN: usize = 32;
/// Longest version field (`HTTP/1.1` is 8); anything past this without a line end is 400.
pub const MAX_VERSION_LEN: usize = 16;
/// Empty lines (CRLF or LF) tolerated before a request line (RFC 9112 section 2.2).
pub const MAX_LEADING_EMPTY_LINES: usize = 2;

/// Bounds on a request head. Exceeding them is detected as soon as the received bytes
/// already exceed them, even before the head is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request-target (path and query, or absolute URI): longer -> 414.
    pub max_target: usize,
    /// Bytes of header field lines, including the empty line that ends them: more -> 431.
    pub max_header_bytes: usize,
    /// Number of header field lines: more -> 431.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_target: 2048,
            max_header_bytes: 8192,
            max_headers: 64,
        }
    }
}

impl Limits {
    /// Receive-buffer size that always suffices: once this many unconsumed bytes are
    /// buffered, [`parse_request`] never answers `Incomplete` (it is complete or an error).
    pub const fn max_head_len(&self) -> usize {
        // leading empty lines + "METHOD SP target SP version CR LF" + header section
        2 * MAX_LEADING_EMPTY_LINES
            + MAX_METHOD_LEN
            + 1
            + self.max_target
            + 1
            + MAX_VERSION_LEN
            + 2
            + self.max_header_bytes
            + 1
    }
}

/// Why a request head was refused: the status to answer with and a short reason for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status}: {reason}")]
pub struct RequestError {
    pub status: u16,
    pub reason: &'static str,
}

impl RequestError {
    pub(crate) const fn bad(reason: &'static str) -> Self {
        RequestError {
            status: 400,
            reason,
        }
    }
}
