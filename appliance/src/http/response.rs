//! Response planning and formatting: from a parsed request and the object's metadata decide
//! status, byte range and headers (a [`Plan`]), then write the response head into a fixed
//! buffer. Object bytes are not touched; the plan names the range for the storage path.
//!
//! Order of decisions: method (405) -> lookup (404) -> If-None-Match, or If-Modified-Since when
//! If-None-Match is absent (304) -> Range on GET only, subject to If-Range (206/416) -> 200.
//! HEAD ignores Range (RFC 9110 section 14.2: range handling is defined for GET only).
use super::date::{http_date, parse_http_date, HTTP_DATE_LEN};
use super::range::{if_range_matches, parse_range, RangeOutcome};
use super::request::{decode_path, Method, Request};
use super::RequestError;

/// A head buffer of this size always suffices for [`write_head`] when the object's
/// content type and ETag are within [`MAX_CONTENT_TYPE_LEN`] and [`MAX_ETAG_LEN`].
pub const MAX_HEAD_LEN: usize = 512;
pub const MAX_CONTENT_TYPE_LEN: usize = 80;
pub const MAX_ETAG_LEN: usize = 80;

const SERVER: &str = concat!("appliance/", env!("CARGO_PKG_VERSION"));
const ERROR_CONTENT_TYPE: &[u8] = b"text/plain; charset=utf-8";

/// What the volume knows about an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectMeta<'a> {
    pub size: u64,
    pub content_type: &'a str,
    /// Entity-tag including its quotes, e.g. `"5f3a..."`; may be empty (no ETag header).
    pub etag: &'a str,
    /// Last modification, unix seconds.
    pub mtime: u64,
}

/// The Content-Range a response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentRange {
    /// 206: `bytes start-end_inclusive/size`.
    Bytes {
        start: u64,
        end_inclusive: u64,
        size: u64,
    },
    /// 416: `bytes */size`.
    Unsatisfied { size: u64 },
}

/// The decided response to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan<'m> {
    pub status: u16,
    /// HEAD: send the head only (headers as for GET).
    pub head_only: bool,
    /// Keep the connection open after this response (else close once it is sent).
    pub keep_alive: bool,
    /// Object bytes to send after the head: (offset, len) within the object, len > 0.
    /// None for HEAD, 304, errors and empty objects.
    pub body: Option<(u64, u64)>,
    /// The object the response is about (200, 206, 304, 416).
    pub object: Option<ObjectMeta<'m>>,
    /// Content-Length header value; None for 304 (no body, no length).
    pub content_length: Option<u64>,
    pub content_range: Option<ContentRange>,
}

/// Status codes this module answers with, their reason phrases and error bodies.
fn status_info(status: u16) -> Option<(&'static str, &'static [u8])> {
    Some(match status {
        200 => ("OK", b""),
        206 => ("Partial Content", b""),
        304 => ("Not Modified", b""),
        400 => ("Bad Request", b"400 Bad Request\n"),
        404 => ("Not Found", b"404 Not Found\n"),
        405 => ("Method Not Allowed", b"405 Method Not Allowed\n"),
        408 => ("Request Timeout", b"408 Request Timeout\n"),
        414 => ("URI Too Long", b"414 URI Too Long\n"),
        416 => ("Range Not Satisfiable", b"416 Range Not Satisfiable\n"),
        431 => (
            "Request Header Fields Too Large",
            b"431 Request Header Fields Too Large\n",
        ),
        500 => ("Internal Server Error", b"500 Internal Server Error\n"),
        503 => ("Service Unavailable", b"503 Service Unavailable\n"),
        505 => (
            "HTTP Version Not Supported",
            b"505 HTTP Version Not Supported\n",
        ),
        _ => return None,
    })
}

fn error_text(status: u16) -> &'static [u8] {
    status_info(status).map_or(b"", |(_, body)| body)
}

impl Plan<'static> {
    /// An error response that closes the connection (for 400, 414, 431, 505 from the parser,
    /// or 500/503 from the caller). Statuses this module does not know become 500.
    pub fn error(status: u16) -> Self {
        let status = if status >= 400 && status_info(status).is_some() {
            status
        } else {
            500
        };
        error_plan(status, false, false, None)
    }

    /// The response to a refused request head (always closes the connection).
    pub fn from_error(error: &RequestError) -> Self {
        Plan::error(error.status)
    }
}

impl Plan<'_> {
    /// Bytes to send right after the head: the short text body of an error response (empty
    /// for HEAD and for non-error statuses). The object bytes, if any, are in `body`.
    pub fn error_body(&self) -> &'static [u8] {
        if self.head_only || self.status < 400 {
            b""
        } else {
            error_text(self.status)
        }
    }
}

fn error_plan<'m>(
    status: u16,
    head_only: bool,
    keep_alive: bool,
    object: Option<ObjectMeta<'m>>,
) -> Plan<'m> {
    Plan {
        status,
        head_only,
        keep_alive,
        body: None,
        object,
        content_length: Some(error_text(status).len() as u64),
        content_range: None,
    }
}

/// If-None-Match (RFC 9110 section 13.1.2): `*` or a list of entity-tags, compared weakly.
/// A malformed list matches nothing.
fn if_none_match_matches(list: &str, etag: &str) -> bool {
    let list = list.trim_matches([' ', '\t']);
    if list == "*" {
        return true;
    }
    let ours = etag.strip_prefix("W/").unwrap_or(etag);
    if ours.is_empty() {
        return false;
    }
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        let tag = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(inner) = tag.strip_prefix('"') else {
            return false;
        };
        let Some(close) = inner.find('"') else {
            return false;
        };
        if &tag[..close + 2] == ours {
            return true;
        }
        rest = &inner[close + 1..];
    }
}

/// Plans the response to `req`. `decoded_path` is `req.path` after [`super::decode_path`];
/// `lookup` finds an object's metadata by that path (called at most once).
pub fn plan<'m>(
    req: &Request<'_>,
    decoded_path: &str,
    lookup: impl FnOnce(&str) -> Option<ObjectMeta<'m>>,
) -> Plan<'m> {
    let head_only = req.method == Method::Head;
    // A body we did not read would be parsed as the next request: close instead.
    let keep_alive = req.keep_alive && req.content_length == 0;
    if !matches!(req.method, Method::Get | Method::Head) {
        return error_plan(405, false, keep_alive, None);
    }
    let Some(meta) = lookup(decoded_path) else {
        return error_plan(404, head_only, keep_alive, None);
    };
    let not_modified = match req.if_none_match {
        Some(list) => if_none_match_matches(list, meta.etag),
        None => req
            .if_modified_since
            .and_then(parse_http_date)
            .is_some_and(|since| meta.mtime <= since),
    };
    if not_modified {
        return Plan {
            status: 304,
            head_only,
            keep_alive,
            body: None,
            object: Some(meta),
            content_length: None,
            content_range: None,
        };
    }
    let mut outcome = RangeOutcome::Full;
    if let (Method::Get, Some(range)) = (req.method, req.range) {
        let applies = req.if_range.is_none_or(|validator| {
            let mut last_modified = [0u8; HTTP_DATE_LEN];
            http_date(meta.mtime, &mut last_modified);
            let last_modified = std::str::from_utf8(&last_modified).unwrap_or("");
            if_range_matches(validator, meta.etag, last_modified)
        });
        if applies {
            outcome = parse_range(range, meta.size);
        }
    }
    let (status, start, len, content_range) = match outcome {
        RangeOutcome::Full => (200, 0, meta.size, None),
        RangeOutcome::Partial {
            start,
            end_inclusive,
        } => {
            let range = ContentRange::Bytes {
                start,
                end_inclusive,
                size: meta.size,
            };
            (206, start, end_inclusive - start + 1, Some(range))
        }
        RangeOutcome::Unsatisfiable => {
            let mut plan = error_plan(416, head_only, keep_alive, Some(meta));
            plan.content_range = Some(ContentRange::Unsatisfied { size: meta.size });
            return plan;
        }
    };
    Plan {
        status,
        head_only,
        keep_alive,
        body: (!head_only && len > 0).then_some((start, len)),
        object: Some(meta),
        content_length: Some(len),
        content_range,
    }
}

/// Decodes `req.path` into `path_buf` and plans the response: the usual entry point.
/// Methods other than GET/HEAD get their 405 before the path is looked at (so
/// `OPTIONS *` is 405); a path that does not decode is a 400 that closes the connection.
/// A `path_buf` of `Limits::max_target` bytes always suffices.
pub fn plan_request<'m>(
    req: &Request<'_>,
    path_buf: &mut [u8],
    lookup: impl FnOnce(&str) -> Option<ObjectMeta<'m>>,
) -> Plan<'m> {
    if !matches!(req.method, Method::Get | Method::Head) {
        return plan(req, "", |_| None);
    }
    match decode_path(req.path, path_buf) {
        Ok(path) => plan(req, path, lookup),
        Err(e) => Plan::from_error(&e),
    }
}

/// Why a head could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("response head does not fit the buffer")]
    TooLarge,
    #[error("content type or ETag contains a control character")]
    InvalidField,
}

struct HeadWriter<'b> {
    out: &'b mut [u8],
    len: usize,
}

impl HeadWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), HeadError> {
        let end = self.len + bytes.len();
        let dst = self.out.get_mut(self.len..end).ok_or(HeadError::TooLarge)?;
        dst.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn num(&mut self, mut n: u64) -> Result<(), HeadError> {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(&digits[i..])
    }

    fn name(&mut self, name: &str) -> Result<(), HeadError> {
        self.put(name.as_bytes())?;
        self.put(b": ")
    }

    fn header(&mut self, name: &str, value: &[u8]) -> Result<(), HeadError> {
        self.name(name)?;
        self.put(value)?;
        self.put(b"\r\n")
    }

    /// A header whose value comes from the volume: refuse anything that could break framing.
    fn checked_header(&mut self, name: &str, value: &str) -> Result<(), HeadError> {
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HeadError::InvalidField);
        }
        self.header(name, value.as_bytes())
    }

    fn date(&mut self, name: &str, unix: u64) -> Result<(), HeadError> {
        let mut date = [0u8; HTTP_DATE_LEN];
        http_date(unix, &mut date);
        self.header(name, &date)
    }
}

/// Writes the status line and headers of `plan` (ending with the empty line) into `out`;
/// returns the number of bytes written. `now_unix` is the Date. The status line is always
/// HTTP/1.1; `Connection` is always sent (`keep-alive` or `close`).
pub fn write_head(plan: &Plan<'_>, now_unix: u64, out: &mut [u8]) -> Result<usize, HeadError> {
    write_head_with(plan, now_unix, None, out)
}

/// As [`write_head`], with one more header (`name: value`, value checked like the volume's)
/// before `Connection`. `out` needs that much room beyond [`MAX_HEAD_LEN`].
pub fn write_head_with(
    plan: &Plan<'_>,
    now_unix: u64,
    extra: Option<(&str, &str)>,
    out: &mut [u8],
) -> Result<usize, HeadError> {
    let mut w = HeadWriter { out, len: 0 };
    let (reason, _) = status_info(plan.status).unwrap_or(("Unknown", b""));
    w.put(b"HTTP/1.1 ")?;
    w.num(u64::from(plan.status))?;
    w.put(b" ")?;
    w.put(reason.as_bytes())?;
    w.put(b"\r\n")?;
    w.date("Date", now_unix)?;
    w.header("Server", SERVER.as_bytes())?;
    let object = plan
        .object
        .filter(|_| matches!(plan.status, 200 | 206 | 304));
    if plan.status >= 400 {
        w.header("Content-Type", ERROR_CONTENT_TYPE)?;
    } else if let (Some(meta), false) = (object, plan.status == 304) {
        w.checked_header("Content-Type", meta.content_type)?;
    }
    if let Some(len) = plan.content_length {
        w.name("Content-Length")?;
        w.num(len)?;
        w.put(b"\r\n")?;
    }
    match plan.content_range {
        Some(ContentRange::Bytes {
            start,
            end_inclusive,
            size,
        }) => {
            w.name("Content-Range")?;
            w.put(b"bytes ")?;
            w.num(start)?;
            w.put(b"-")?;
            w.num(end_inclusive)?;
            w.put(b"/")?;
            w.num(size)?;
            w.put(b"\r\n")?;
        }
        Some(ContentRange::Unsatisfied { size }) => {
            w.name("Content-Range")?;
            w.put(b"bytes */")?;
            w.num(size)?;
            w.put(b"\r\n")?;
        }
        None => {}
    }
    if let Some(meta) = object {
        if !meta.etag.is_empty() {
            w.checked_header("ETag", meta.etag)?;
        }
        w.date("Last-Modified", meta.mtime)?;
    }
    if matches!(plan.status, 200 | 206 | 416) {
        w.header("Accept-Ranges", b"bytes")?;
    }
    if plan.status == 405 {
        w.header("Allow", b"GET, HEAD")?;
    }
    if let Some((name, value)) = extra {
        w.checked_header(name, value)?;
    }
    w.header(
        "Connection",
        if plan.keep_alive {
            b"keep-alive"
        } else {
            b"close"
        },
    )?;
    w.put(b"\r\n")?;
    Ok(w.len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, Limits, Parse};
    use proptest::prelude::*;

    const ETAG: &str = "\"0123abcd\"";
    const MTIME: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    const NOW: u64 = 1_700_000_000; // Tue, 14 Nov 2023 22:13:20 GMT

    fn meta(size: u64) -> ObjectMeta<'static> {
        ObjectMeta {
            size,
            content_type: "video/mp2t",
            etag: ETAG,
            mtime: MTIME,
        }
    }

    /// Parses `head` (must be complete) and plans it against one object at /a.ts.
    fn plan_for(head: &str, size: u64) -> Plan<'static> {
        let Parse::Complete { request, .. } = parse_request(head.as_bytes(), &Limits::default())
        else {
            panic!("not a complete request: {head:?}");
        };
        let mut path_buf = [0u8; 256];
        let path = crate::http::decode_path(request.path, &mut path_buf).unwrap();
        plan(&request, path, |p| (p == "/a.ts").then(|| meta(size)))
    }

    fn get(extra: &str) -> String {
        format!("GET /a.ts HTTP/1.1\r\nHost: h\r\n{extra}\r\n")
    }

    fn head_text(plan: &Plan<'_>) -> String {
        let mut out = [0u8; MAX_HEAD_LEN];
        let n = write_head(plan, NOW, &mut out).unwrap();
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    #[test]
    fn full_get() {
        let p = plan_for(&get(""), 1000);
        assert_eq!(
            (p.status, p.body, p.content_length, p.keep_alive),
            (200, Some((0, 1000)), Some(1000), true)
        );
        assert_eq!(p.error_body(), b"");
        assert_eq!(
            head_text(&p),
            format!(
                "HTTP/1.1 200 OK\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\nServer: {SERVER}\r\n\
                 Content-Type: video/mp2t\r\nContent-Length: 1000\r\nETag: \"0123abcd\"\r\n\
                 Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nAccept-Ranges: bytes\r\n\
                 Connection: keep-alive\r\n\r\n"
            )
        );
    }

    #[test]
    fn head_has_the_get_headers_and_no_body() {
        let p = plan_for("HEAD /a.ts HTTP/1.1\r\nHost: h\r\n\r\n", 1000);
        assert_eq!(
            (p.status, p.head_only, p.body, p.content_length),
            (200, true, None, Some(1000))
        );
        // HEAD ignores Range.
        let p = plan_for(
            "HEAD /a.ts HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n\r\n",
            1000,
        );
        assert_eq!((p.status, p.body, p.content_range), (200, None, None));
        let p = plan_for("HEAD /missing HTTP/1.1\r\nHost: h\r\n\r\n", 1000);
        assert_eq!(
            (p.status, p.content_length, p.error_body()),
            (404, Some(14), &b""[..])
        );
    }

    #[test]
    fn empty_object() {
        let p = plan_for(&get(""), 0);
        assert_eq!((p.status, p.body, p.content_length), (200, None, Some(0)));
        let p = plan_for(&get("Range: bytes=0-\r\n"), 0);
        assert_eq!(
            (p.status, p.content_range),
            (416, Some(ContentRange::Unsatisfied { size: 0 }))
        );
    }

    #[test]
    fn not_found_and_method_not_allowed_keep_the_connection() {
        let p = plan_for("GET /nope HTTP/1.1\r\nHost: h\r\n\r\n", 10);
        assert_eq!((p.status, p.keep_alive, p.body), (404, true, None));
        assert_eq!(p.error_body(), b"404 Not Found\n");
        assert!(head_text(&p).contains("Content-Length: 14\r\n"));
        assert!(head_text(&p).contains("Content-Type: text/plain; charset=utf-8\r\n"));
        let p = plan_for("POST /a.ts HTTP/1.1\r\nHost: h\r\n\r\n", 10);
        assert_eq!((p.status, p.keep_alive, p.head_only), (405, true, false));
        assert_eq!(p.error_body(), b"405 Method Not Allowed\n");
        let text = head_text(&p);
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"), "{text}");
        assert!(text.contains("Content-Length: 23\r\n"));
        assert!(text.contains("Connection: keep-alive\r\n"));
        // An unread body forces a close.
        let p = plan_for(
            "PUT /a.ts HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
            10,
        );
        assert_eq!((p.status, p.keep_alive), (405, false));
        // HTTP/1.0 without keep-alive closes.
        let p = plan_for("GET /nope HTTP/1.0\r\n\r\n", 10);
        assert_eq!((p.status, p.keep_alive), (404, false));
        assert!(head_text(&p).contains("Connection: close\r\n"));
    }

    #[test]
    fn parser_errors_close_the_connection() {
        for status in [400, 414, 431, 505] {
            let p = Plan::error(status);
            assert_eq!(
                (p.status, p.keep_alive, p.body, p.object),
                (status, false, None, None)
            );
            let text = head_text(&p);
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
            assert!(text.contains(&format!("Content-Length: {}\r\n", p.error_body().len())));
            assert!(text.ends_with("Connection: close\r\n\r\n"));
            assert!(p.error_body().starts_with(format!("{status} ").as_bytes()));
        }
        assert_eq!(Plan::error(299).status, 500);
        assert_eq!(Plan::error(418).status, 500);
        let e = RequestError {
            status: 431,
            reason: "x",
        };
        assert_eq!(Plan::from_error(&e).status, 431);
        assert!(
            head_text(&Plan::error(505)).starts_with("HTTP/1.1 505 HTTP Version Not Supported\r\n")
        );
    }

    #[test]
    fn if_none_match() {
        for (inm, status) in [
            ("\"0123abcd\"", 304),
            ("W/\"0123abcd\"", 304),
            ("\"zz\", \"0123abcd\"", 304),
            ("\"a,b\",W/\"0123abcd\"", 304),
            ("*", 304),
            ("\"zz\"", 200),
            ("0123abcd", 200),
            ("\"0123abcd", 200),
            ("", 200),
        ] {
            let p = plan_for(&get(&format!("If-None-Match: {inm}\r\n")), 10);
            assert_eq!(p.status, status, "{inm}");
        }
        let p = plan_for(&get("If-None-Match: \"0123abcd\"\r\n"), 10);
        assert_eq!((p.body, p.content_length, p.keep_alive), (None, None, true));
        let text = head_text(&p);
        assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\n"));
        assert!(text.contains("ETag: \"0123abcd\"\r\n"));
        assert!(text.contains("Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
        assert!(!text.contains("Content-Length"));
        assert!(!text.contains("Content-Type"));
        let p = plan_for(
            "HEAD /a.ts HTTP/1.1\r\nHost: h\r\nIf-None-Match: *\r\n\r\n",
            10,
        );
        assert_eq!(p.status, 304);
        // Missing objects are 404 even with If-None-Match: *.
        let p = plan_for("GET /b HTTP/1.1\r\nHost: h\r\nIf-None-Match: *\r\n\r\n", 10);
        assert_eq!(p.status, 404);
    }

    #[test]
    fn if_modified_since() {
        let ims = |date: &str| plan_for(&get(&format!("If-Modified-Since: {date}\r\n")), 10).status;
        assert_eq!(ims("Sun, 06 Nov 1994 08:49:37 GMT"), 304);
        assert_eq!(ims("Sun, 06 Nov 1994 08:49:38 GMT"), 304);
        assert_eq!(ims("Sun, 06 Nov 1994 08:49:36 GMT"), 200);
        assert_eq!(ims("Sunday, 06-Nov-94 08:49:37 GMT"), 304);
        assert_eq!(ims("not a date"), 200);
        // If-None-Match takes precedence: a mismatching tag means 200 whatever the date.
        let p = plan_for(
            &get(
                "If-None-Match: \"other\"\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
            ),
            10,
        );
        assert_eq!(p.status, 200);
    }

    #[test]
    fn ranges() {
        let p = plan_for(&get("Range: bytes=10-19\r\n"), 100);
        assert_eq!(
            (p.status, p.body, p.content_length),
            (206, Some((10, 10)), Some(10))
        );
        let text = head_text(&p);
        assert!(text.starts_with("HTTP/1.1 206 Partial Content\r\n"));
        assert!(
            text.contains("Content-Range: bytes 10-19/100\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 10\r\n"));
        let p = plan_for(&get("Range: bytes=-30\r\n"), 100);
        assert_eq!((p.status, p.body), (206, Some((70, 30))));
        let p = plan_for(&get("Range: bytes=90-\r\n"), 100);
        assert_eq!((p.status, p.body), (206, Some((90, 10))));
        let p = plan_for(&get("Range: bytes=100-\r\n"), 100);
        assert_eq!((p.status, p.body, p.keep_alive), (416, None, true));
        assert_eq!(p.error_body(), b"416 Range Not Satisfiable\n");
        let text = head_text(&p);
        assert!(text.contains("Content-Range: bytes */100\r\n"), "{text}");
        assert!(text.contains("Content-Length: 26\r\n"));
        assert!(!text.contains("ETag"));
        let p = plan_for(&get("Range: lines=1-2\r\n"), 100);
        assert_eq!((p.status, p.body), (200, Some((0, 100))));
    }

    #[test]
    fn if_range_gates_the_range() {
        let with = |if_range: &str| {
            plan_for(
                &get(&format!("Range: bytes=0-9\r\nIf-Range: {if_range}\r\n")),
                100,
            )
            .status
        };
        assert_eq!(with(ETAG), 206);
        assert_eq!(with("\"stale\""), 200);
        assert_eq!(with("W/\"0123abcd\""), 200);
        assert_eq!(with("Sun, 06 Nov 1994 08:49:37 GMT"), 206);
        assert_eq!(with("Sun, 06 Nov 1994 08:49:36 GMT"), 200);
        // If-Range without Range changes nothing.
        assert_eq!(
            plan_for(&get(&format!("If-Range: {ETAG}\r\n")), 100).status,
            200
        );
    }

    #[test]
    fn plan_request_decodes_then_plans() {
        let parsed = |head: &'static str| match parse_request(head.as_bytes(), &Limits::default()) {
            Parse::Complete { request, .. } => request,
            other => panic!("{other:?}"),
        };
        let mut buf = [0u8; 64];
        let lookup = |p: &str| (p == "/a b.ts").then(|| meta(7));
        let req = parsed("GET /x/../a%20b.ts HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(plan_request(&req, &mut buf, lookup).status, 200);
        let req = parsed("GET /a%00 HTTP/1.1\r\nHost: h\r\n\r\n");
        let p = plan_request(&req, &mut buf, lookup);
        assert_eq!((p.status, p.keep_alive), (400, false));
        let req = parsed("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
        let p = plan_request(&req, &mut buf, |_| panic!("no lookup for 405"));
        assert_eq!((p.status, p.keep_alive), (405, true));
        let req = parsed("HEAD /nope HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(plan_request(&req, &mut buf, lookup).status, 404);
    }

    #[test]
    fn lookup_gets_the_decoded_path() {
        let head = "GET /x/../a%2Ets?q=1 HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(plan_for(head, 5).status, 200);
    }

    #[test]
    fn head_rejects_control_characters_from_the_volume() {
        let mut p = plan_for(&get(""), 10);
        let mut out = [0u8; MAX_HEAD_LEN];
        p.object = Some(ObjectMeta {
            content_type: "text/plain\r\nX: y",
            ..meta(10)
        });
        assert_eq!(write_head(&p, NOW, &mut out), Err(HeadError::InvalidField));
        p.object = Some(ObjectMeta {
            etag: "\"a\nb\"",
            ..meta(10)
        });
        assert_eq!(write_head(&p, NOW, &mut out), Err(HeadError::InvalidField));
        p.object = Some(ObjectMeta {
            etag: "",
            ..meta(10)
        });
        assert!(!head_text(&p).contains("ETag"));
    }

    #[test]
    fn small_buffers_report_too_large() {
        let p = plan_for(&get(""), 10);
        let mut out = [0u8; MAX_HEAD_LEN];
        let n = write_head(&p, NOW, &mut out).unwrap();
        assert_eq!(write_head(&p, NOW, &mut out[..n]), Ok(n));
        assert_eq!(
            write_head(&p, NOW, &mut out[..n - 1]),
            Err(HeadError::TooLarge)
        );
        assert_eq!(write_head(&p, NOW, &mut []), Err(HeadError::TooLarge));
    }

    #[test]
    fn max_head_len_suffices_for_the_worst_case() {
        let content_type = "t".repeat(MAX_CONTENT_TYPE_LEN);
        let etag = format!("\"{}\"", "e".repeat(MAX_ETAG_LEN - 2));
        let big = ObjectMeta {
            size: u64::MAX,
            content_type: &content_type,
            etag: &etag,
            mtime: u64::MAX,
        };
        let mut out = [0u8; MAX_HEAD_LEN];
        let mut longest = 0;
        let mut plans = vec![
            Plan {
                status: 206,
                head_only: false,
                keep_alive: true,
                body: Some((u64::MAX - 1, 1)),
                object: Some(big),
                content_length: Some(u64::MAX),
                content_range: Some(ContentRange::Bytes {
                    start: u64::MAX - 1,
                    end_inclusive: u64::MAX - 1,
                    size: u64::MAX,
                }),
            },
            Plan {
                status: 200,
                content_range: None,
                ..Plan::error(400)
            },
        ];
        plans[1].object = Some(big);
        plans[1].content_length = Some(u64::MAX);
        let mut unsatisfied = error_plan(416, false, true, Some(big));
        unsatisfied.content_range = Some(ContentRange::Unsatisfied { size: u64::MAX });
        plans.push(unsatisfied);
        plans.push(Plan {
            status: 304,
            content_length: None,
            ..plans[1]
        });
        for status in [400, 404, 405, 414, 431, 500, 503, 505] {
            plans.push(Plan {
                keep_alive: true,
                ..Plan::error(status)
            });
        }
        for p in &plans {
            let n = write_head(p, u64::MAX, &mut out).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            longest = longest.max(n);
        }
        // write_head fails rather than overflow, so this documents the margin left.
        eprintln!("longest head: {longest} of {MAX_HEAD_LEN} bytes");
        assert!(longest <= MAX_HEAD_LEN);
    }

    proptest! {
        #[test]
        fn planned_body_matches_the_headers(
            size in 0u64..5000,
            a in 0u64..6000,
            b in 0u64..6000,
            form in 0u8..4,
            head in any::<bool>(),
        ) {
            let range = match form {
                0 => format!("bytes={a}-{b}"),
                1 => format!("bytes={a}-"),
                2 => format!("bytes=-{a}"),
                _ => format!("bytes={a}-{b}, {b}-"),
            };
            let method = if head { "HEAD" } else { "GET" };
            let req = format!("{method} /a.ts HTTP/1.1\r\nHost: h\r\nRange: {range}\r\n\r\n");
            let p = plan_for(&req, size);
            let text = head_text(&p);
            let header = |name: &str| {
                text.split("\r\n")
                    .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
                    .map(str::to_owned)
            };
            let content_length: u64 = header("Content-Length").unwrap().parse().unwrap();
            prop_assert_eq!(Some(content_length), p.content_length);
            match p.status {
                200 => {
                    prop_assert_eq!(content_length, size);
                    prop_assert_eq!(p.body, (!head && size > 0).then_some((0, size)));
                    prop_assert_eq!(header("Content-Range"), None);
                }
                206 => {
                    prop_assert!(!head);
                    let (offset, len) = p.body.unwrap();
                    prop_assert!(len > 0 && offset + len <= size);
                    prop_assert_eq!(len, content_length);
                    let want = format!("bytes {}-{}/{}", offset, offset + len - 1, size);
                    prop_assert_eq!(header("Content-Range"), Some(want));
                    if form == 1 { prop_assert_eq!(offset + len, size); }
                    if form == 2 { prop_assert_eq!((offset, len), (size - a.min(size), a.min(size))); }
                }
                416 => {
                    prop_assert!(!head);
                    prop_assert_eq!(p.body, None);
                    prop_assert_eq!(header("Content-Range"), Some(format!("bytes */{size}")));
                    prop_assert_eq!(content_length, p.error_body().len() as u64);
                }
                other => prop_assert!(false, "unexpected status {}", other),
            }
        }
    }
}
