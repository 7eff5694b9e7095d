//! Request heads: the request line and header fields of one HTTP/1.x request, parsed as a
//! borrowed view over the receive buffer, and percent-decoding/normalising of its path.
//!
//! Choices (RFC 9112 leaves some to the server):
//! - Lines end with CRLF or a bare LF. Up to two empty lines before the request line are
//!   skipped (and counted in `consumed`).
//! - A request body is never read. `Content-Length: 0` is fine; a positive Content-Length on
//!   GET or HEAD is refused with 400 (we would otherwise have to skip an unbounded body);
//!   on other methods it is accepted so they can get their 405, and `plan` then closes the
//!   connection because the body bytes remain unread. Transfer-Encoding is always 400.
//! - Duplicate Host, Range, If-None-Match, If-Modified-Since or If-Range fields are 400
//!   (ambiguous); duplicate Content-Length is fine only when the values agree.
//! - Request-target: origin-form (`/path?query`), absolute-form (`http[s]://authority/path`;
//!   its authority then becomes `host`), and `*` for OPTIONS only. Fragments are 400.
use super::{Limits, RequestError, MAX_LEADING_EMPTY_LINES, MAX_METHOD_LEN, MAX_VERSION_LEN};

/// Request method. GET and HEAD are served; every other token is carried for the 405.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method<'a> {
    Get,
    Head,
    Other(&'a str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// One parsed request head. Every string borrows from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method<'a>,
    /// The raw request-target as received (for logs).
    pub target: &'a str,
    /// The target's path without the query, still percent-encoded (see [`decode_path`]).
    pub path: &'a str,
    pub version: Version,
    /// Whether the client allows the connection to stay open after this response.
    pub keep_alive: bool,
    /// Authority of an absolute-form target, else the Host field.
    pub host: Option<&'a str>,
    /// Declared body length (0 when absent). The body is not part of `consumed`.
    pub content_length: u64,
    pub range: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

/// Result of trying to parse a request head from the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse<'a> {
    /// Valid so far; more bytes are needed.
    Incomplete,
    /// A whole head: `consumed` bytes (through the empty line ending the headers) belong to
    /// it; whatever follows is the next pipelined request.
    Complete {
        request: Request<'a>,
        consumed: usize,
    },
    /// Refused; answer with `status` and close the connection.
    Error(RequestError),
}

/// Parses one request head from the start of `buf`.
pub fn parse_request<'a>(buf: &'a [u8], limits: &Limits) -> Parse<'a> {
    match parse_head(buf, limits) {
        Ok(Some((request, consumed))) => Parse::Complete { request, consumed },
        Ok(None) => Parse::Incomplete,
        Err(e) => Parse::Error(e),
    }
}

const fn too_long_target() -> RequestError {
    RequestError {
        status: 414,
        reason: "request-target too long",
    }
}

const fn too_large_headers(reason: &'static str) -> RequestError {
    RequestError {
        status: 431,
        reason,
    }
}

/// tchar from RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

fn find(haystack: &[u8], needle: u8) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

fn check_method(method: &[u8]) -> Result<(), RequestError> {
    if method.is_empty() {
        return Err(RequestError::bad("empty method"));
    }
    if method.len() > MAX_METHOD_LEN {
        return Err(RequestError::bad("method too long"));
    }
    if !method.iter().all(|&b| is_tchar(b)) {
        return Err(RequestError::bad("invalid character in method"));
    }
    Ok(())
}

/// Checks an unfinished request line (no LF yet) so that oversized or hopeless input is
/// refused now instead of filling the receive buffer. Every prefix of a valid line passes.
fn check_partial_request_line(part: &[u8], limits: &Limits) -> Result<(), RequestError> {
    let Some(sp1) = find(part, b' ') else {
        if part.len() > MAX_METHOD_LEN {
            return Err(RequestError::bad("method too long"));
        }
        if !part.iter().all(|&b| is_tchar(b)) {
            return Err(RequestError::bad("invalid character in method"));
        }
        return Ok(());
    };
    check_method(&part[..sp1])?;
    let rest = &part[sp1 + 1..];
    match find(rest, b' ') {
        None if rest.len() > limits.max_target => Err(too_long_target()),
        None => Ok(()),
        Some(sp2) if sp2 > limits.max_target => Err(too_long_target()),
        Some(sp2) if rest.len() - sp2 - 1 > MAX_VERSION_LEN => {
            Err(RequestError::bad("malformed HTTP version"))
        }
        Some(_) => Ok(()),
    }
}

fn parse_version(v: &[u8]) -> Result<Version, RequestError> {
    match v {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(RequestError {
                status: 505,
                reason: "HTTP version not supported",
            })
        }
        _ => Err(RequestError::bad("malformed HTTP version")),
    }
}

struct RequestLine<'a> {
    method: Method<'a>,
    target: &'a str,
    version: Version,
}

fn parse_request_line<'a>(
    line: &'a [u8],
    limits: &Limits,
) -> Result<RequestLine<'a>, RequestError> {
    let sp1 = find(line, b' ').ok_or(RequestError::bad("malformed request line"))?;
    let method = &line[..sp1];
    check_method(method)?;
    let rest = &line[sp1 + 1..];
    let Some(sp2) = find(rest, b' ') else {
        if rest.len() > limits.max_target {
            return Err(too_long_target());
        }
        return Err(RequestError::bad("request line without HTTP version"));
    };
    let target = &rest[..sp2];
    if target.len() > limits.max_target {
        return Err(too_long_target());
    }
    if target.is_empty() {
        return Err(RequestError::bad("empty request-target"));
    }
    if !target
        .iter()
        .all(|&b| (0x21..=0x7e).contains(&b) && b != b'#')
    {
        return Err(RequestError::bad("invalid character in request-target"));
    }
    let version = parse_version(&rest[sp2 + 1..])?;
    // Both are ASCII (checked above), so these conversions cannot fail.
    let method = std::str::from_utf8(method).map_err(|_| RequestError::bad("invalid method"))?;
    let target = std::str::from_utf8(target).map_err(|_| RequestError::bad("invalid target"))?;
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        other => Method::Other(other),
    };
    Ok(RequestLine {
        method,
        target,
        version,
    })
}

fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits a request-target into (path without query, authority of an absolute-form target).
fn split_target<'a>(
    target: &'a str,
    method: Method<'a>,
) -> Result<(&'a str, Option<&'a str>), RequestError> {
    let path_of = |path_and_query: &'a str| match path_and_query.find('?') {
        Some(q) => &path_and_query[..q],
        None => path_and_query,
    };
    if target.starts_with('/') {
        return Ok((path_of(target), None));
    }
    if target == "*" && method == Method::Other("OPTIONS") {
        return Ok((target, None));
    }
    let after_scheme = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"))
        .ok_or(RequestError::bad("unsupported request-target form"))?;
    let authority_end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
    let authority = &after_scheme[..authority_end];
    if authority.is_empty() || authority.contains('@') {
        return Err(RequestError::bad(
            "invalid authority in absolute-form target",
        ));
    }
    let path = path_of(&after_scheme[authority_end..]);
    Ok((if path.is_empty() { "/" } else { path }, Some(authority)))
}

#[derive(Default)]
struct Fields<'a> {
    host: Option<&'a str>,
    content_length: Option<u64>,
    connection_close: bool,
    connection_keep_alive: bool,
    range: Option<&'a str>,
    if_none_match: Option<&'a str>,
    if_modified_since: Option<&'a str>,
    if_range: Option<&'a str>,
}

fn value_str(value: &[u8]) -> Result<&str, RequestError> {
    std::str::from_utf8(value).map_err(|_| RequestError::bad("header value is not UTF-8"))
}

fn set_once<'a>(slot: &mut Option<&'a str>, value: &'a [u8]) -> Result<(), RequestError> {
    if slot.is_some() {
        return Err(RequestError::bad("duplicate header field"));
    }
    *slot = Some(value_str(value)?);
    Ok(())
}

/// `Content-Length`: 1*DIGIT, or a list of identical values (RFC 9110 section 8.6).
fn parse_content_length(value: &[u8]) -> Result<u64, RequestError> {
    let bad = RequestError::bad("invalid Content-Length");
    let mut result: Option<u64> = None;
    for item in value.split(|&b| b == b',') {
        let item = trim_ows(item);
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err(bad);
        }
        let n = item.iter().try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        let n = n.ok_or(bad)?;
        if result.is_some_and(|prev| prev != n) {
            return Err(RequestError::bad("conflicting Content-Length values"));
        }
        result = Some(n);
    }
    result.ok_or(bad)
}

fn is_valid_host(host: &[u8]) -> bool {
    host.iter()
        .all(|&b| (0x21..=0x7e).contains(&b) && !b",/?#@\"<>\\^`{|}".contains(&b))
}

fn parse_field<'a>(line: &'a [u8], fields: &mut Fields<'a>) -> Result<(), RequestError> {
    if line.first().copied().is_some_and(is_ows) {
        return Err(RequestError::bad("obsolete line folding"));
    }
    let colon = find(line, b':').ok_or(RequestError::bad("header field without colon"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(RequestError::bad("invalid header field name"));
    }
    let value = trim_ows(&line[colon + 1..]);
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(RequestError::bad("control character in header value"));
    }
    let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
    if is("host") {
        if !is_valid_host(value) {
            return Err(RequestError::bad("invalid Host"));
        }
        set_once(&mut fields.host, value)?;
    } else if is("content-length") {
        let n = parse_content_length(value)?;
        if fields.content_length.is_some_and(|prev| prev != n) {
            return Err(RequestError::bad("conflicting Content-Length values"));
        }
        fields.content_length = Some(n);
    } else if is("transfer-encoding") {
        return Err(RequestError::bad("Transfer-Encoding in a request"));
    } else if is("connection") {
        for option in value.split(|&b| b == b',') {
            let option = trim_ows(option);
            fields.connection_close |= option.eq_ignore_ascii_case(b"close");
            fields.connection_keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
        }
    } else if is("range") {
        set_once(&mut fields.range, value)?;
    } else if is("if-none-match") {
        set_once(&mut fields.if_none_match, value)?;
    } else if is("if-modified-since") {
        set_once(&mut fields.if_modified_since, value)?;
    } else if is("if-range") {
        set_once(&mut fields.if_range, value)?;
    }
    Ok(())
}

fn parse_head<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Option<(Request<'a>, usize)>, RequestError> {
    let mut pos = 0;
    for _ in 0..MAX_LEADING_EMPTY_LINES {
        let rest = &buf[pos..];
        if rest.starts_with(b"\r\n") {
            pos += 2;
        } else if rest.starts_with(b"\n") {
            pos += 1;
        } else if rest == b"\r" {
            return Ok(None);
        } else {
            break;
        }
    }

    // Request line.
    let Some(lf) = find(&buf[pos..], b'\n') else {
        check_partial_request_line(&buf[pos..], limits)?;
        return Ok(None);
    };
    let mut line = &buf[pos..pos + lf];
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    let request_line = parse_request_line(line, limits)?;
    pos += lf + 1;

    // Header section, through the empty line.
    let header_start = pos;
    let mut count = 0;
    let mut fields = Fields::default();
    loop {
        let Some(lf) = find(&buf[pos..], b'\n') else {
            if buf.len() - header_start > limits.max_header_bytes {
                return Err(too_large_headers("header section too large"));
            }
            return Ok(None);
        };
        let end = pos + lf + 1;
        if end - header_start > limits.max_header_bytes {
            return Err(too_large_headers("header section too large"));
        }
        let mut line = &buf[pos..pos + lf];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        pos = end;
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > limits.max_headers {
            return Err(too_large_headers("too many header fields"));
        }
        parse_field(line, &mut fields)?;
    }

    let RequestLine {
        method,
        target,
        version,
    } = request_line;
    if version == Version::Http11 && fields.host.is_none() {
        return Err(RequestError::bad("HTTP/1.1 request without Host"));
    }
    let content_length = fields.content_length.unwrap_or(0);
    if content_length > 0 && matches!(method, Method::Get | Method::Head) {
        return Err(RequestError::bad("body on a GET or HEAD request"));
    }
    let (path, authority) = split_target(target, method)?;
    let keep_alive = match version {
        Version::Http11 => !fields.connection_close,
        Version::Http10 => fields.connection_keep_alive && !fields.connection_close,
    };
    let request = Request {
        method,
        target,
        path,
        version,
        keep_alive,
        host: authority.or(fields.host),
        content_length,
        range: fields.range,
        if_none_match: fields.if_none_match,
        if_modified_since: fields.if_modified_since,
        if_range: fields.if_range,
    };
    Ok(Some((request, pos)))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `raw` (a request's `path`) into `out` and normalises it: `.` segments and
/// empty segments (`//`) are dropped, `..` removes the previous segment but never climbs above
/// the root, and a trailing `/` is kept. Refuses (400) paths not starting with `/`, invalid
/// escapes, `%00` and other control characters, and non-UTF-8 results. Decoded `%2F` is a
/// separator like `/` (normalising after decoding, so `..%2F` cannot escape). A buffer of
/// `raw.len()` bytes always suffices; a shorter one gives 414.
pub fn decode_path<'b>(raw: &str, out: &'b mut [u8]) -> Result<&'b str, RequestError> {
    let raw = raw.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(RequestError::bad("path does not start with /"));
    }
    let mut n = 0;
    let mut i = 0;
    while i < raw.len() {
        let byte = if raw[i] == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_value);
            let lo = raw.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(RequestError::bad("invalid percent-escape in path"));
            };
            i += 3;
            hi << 4 | lo
        } else {
            i += 1;
            raw[i - 1]
        };
        if byte == 0 {
            return Err(RequestError::bad("NUL in path"));
        }
        if byte < 0x20 || byte == 0x7f {
            return Err(RequestError::bad("control character in path"));
        }
        let slot = out.get_mut(n).ok_or(RequestError {
            status: 414,
            reason: "decoded path too long",
        })?;
        *slot = byte;
        n += 1;
    }
    match std::str::from_utf8(&out[..n]) {
        Err(_) => return Err(RequestError::bad("path is not UTF-8")),
        // C1 controls (U+0080..U+009F) too, not only the ASCII ones (found by fuzz http_request).
        Ok(p) if p.chars().any(char::is_control) => return Err(RequestError::bad("control character in path")),
        Ok(_) => {}
    }
    let len = remove_dot_segments(&mut out[..n]).ok_or(RequestError::bad("path climbs above the root"))?;
    // Only whole ASCII-delimited segments were removed, so this is still UTF-8.
    std::str::from_utf8(&out[..len]).map_err(|_| RequestError::bad("path is not UTF-8"))
}

/// Normalises a path starting with `/` in place; returns its new length (at least 1), or
/// None when a `..` segment would climb above the root (refused, as web servers do).
fn remove_dot_segments(buf: &mut [u8]) -> Option<usize> {
    let n = buf.len();
    let mut written = 0; // output is buf[..written]; always <= read position
    let mut read = 0; // index of the '/' that starts the next segment
    let mut trailing_slash = false;
    while read < n {
        let seg_start = read + 1;
        let seg_end = find(&buf[seg_start..], b'/').map_or(n, |p| seg_start + p);
        let is_last = seg_end == n;
        match &buf[seg_start..seg_end] {
            b"" | b"." => trailing_slash = is_last,
            b".." => {
                if written == 0 {
                    return None;
                }
                written = buf[..written].iter().rposition(|&b| b == b'/').unwrap_or(0);
                trailing_slash = is_last;
            }
            _ => {
                buf[written] = b'/';
                buf.copy_within(seg_start..seg_end, written + 1);
                written += 1 + seg_end - seg_start;
                trailing_slash = false;
            }
        }
        read = seg_end;
    }
    if written == 0 || trailing_slash {
        buf[written] = b'/';
        written += 1;
    }
    Some(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(bytes: &[u8]) -> Parse<'_> {
        parse_request(bytes, &Limits::default())
    }

    fn complete(bytes: &[u8]) -> (Request<'_>, usize) {
        match parse(bytes) {
            Parse::Complete { request, consumed } => (request, consumed),
            other => panic!(
                "expected Complete for {:?}, got {other:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    fn status(bytes: &[u8]) -> u16 {
        match parse(bytes) {
            Parse::Error(e) => e.status,
            other => panic!(
                "expected Error for {:?}, got {other:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    const SIMPLE: &[u8] = b"GET /video/a.ts?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";

    #[test]
    fn parses_a_simple_get() {
        let (r, consumed) = complete(SIMPLE);
        assert_eq!(consumed, SIMPLE.len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/video/a.ts");
        assert_eq!(r.target, "/video/a.ts?x=1");
        assert_eq!(r.version, Version::Http11);
        assert!(r.keep_alive);
        assert_eq!(r.host, Some("example.com"));
        assert_eq!(r.range, None);
        assert_eq!(r.content_length, 0);
    }

    #[test]
    fn parses_head_other_methods_and_conditional_fields() {
        let (r, _) = complete(
            b"HEAD / HTTP/1.1\r\nhost: h\r\nRANGE:bytes=0-1 \r\nIf-None-Match: \"x\"\r\n\
              If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\nIf-Range:\t\"x\"\r\nX-Other: y\r\n\r\n",
        );
        assert_eq!(r.method, Method::Head);
        assert_eq!(r.range, Some("bytes=0-1"));
        assert_eq!(r.if_none_match, Some("\"x\""));
        assert_eq!(r.if_modified_since, Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(r.if_range, Some("\"x\""));
        let (r, _) = complete(b"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(r.method, Method::Other("DELETE"));
        // Methods are case-sensitive: "get" is some other method.
        let (r, _) = complete(b"get /x HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(r.method, Method::Other("get"));
    }

    #[test]
    fn tolerates_bare_lf_and_leading_empty_lines() {
        let (r, consumed) = complete(b"GET / HTTP/1.0\n\n");
        assert_eq!((r.path, r.version, consumed), ("/", Version::Http10, 16));
        let input = b"\r\n\nGET / HTTP/1.0\r\n\r\n";
        assert_eq!(complete(input).1, input.len());
        assert_eq!(parse(b"\r"), Parse::Incomplete);
        assert_eq!(status(b"\r\n\r\n\r\nGET / HTTP/1.0\r\n\r\n"), 400);
    }

    #[test]
    fn absolute_form_sets_path_and_host() {
        let (r, _) =
            complete(b"GET http://media.example:8080/a/b.mp4?q HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!((r.path, r.host), ("/a/b.mp4", Some("media.example:8080")));
        let (r, _) = complete(b"GET HTTP://h HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(r.path, "/");
        let (r, _) = complete(b"GET https://h?x HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(r.path, "/");
        assert_eq!(status(b"GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET http://u@h/x HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET x HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET * HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        let (r, _) = complete(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(r.path, "*");
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |s: &[u8]| complete(s).0.keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: te\r\nconnection: close\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: foo ,keep-alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\nConnection: keep-alive-not\r\n\r\n"));
    }

    #[test]
    fn versions() {
        assert_eq!(status(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTP/0.9\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET / http/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET /\r\n\r\n"), 400);
    }

    #[test]
    fn http11_requires_host() {
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET http://h/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(complete(b"GET / HTTP/1.0\r\n\r\n").0.host, None);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n"), 400);
        assert_eq!(
            complete(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").0.host,
            Some("[::1]:80")
        );
    }

    #[test]
    fn malformed_request_lines() {
        for bad in [
            &b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b" GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /\r HTTP/1.1\r\nHost: h\r\n\r\n",
            b"\x00\x01\x02\n",
        ] {
            assert_eq!(status(bad), 400, "{:?}", String::from_utf8_lossy(bad));
        }
        let long_method = [b'A'; MAX_METHOD_LEN + 1];
        assert_eq!(status(&long_method), 400);
        assert_eq!(parse(&long_method[..MAX_METHOD_LEN]), Parse::Incomplete);
        assert_eq!(status(b"GE\x00"), 400);
    }

    #[test]
    fn malformed_header_fields() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\nName : v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nNa(me: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nRange: bytes=\xff\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\nRange: bytes=0-1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\r\n",
        ] {
            assert_eq!(status(bad), 400, "{:?}", String::from_utf8_lossy(bad));
        }
        // Non-UTF-8 obs-text is fine in fields we do not interpret.
        complete(b"GET / HTTP/1.1\r\nHost: h\r\nX-Name: caf\xe9\r\n\r\n");
        // Empty values are allowed.
        complete(b"GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\n\r\n");
    }

    #[test]
    fn content_length_rules() {
        let cl = |s: &[u8]| complete(s).0.content_length;
        assert_eq!(
            cl(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"),
            0
        );
        assert_eq!(
            cl(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n"),
            12
        );
        assert_eq!(cl(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12, 12\r\nContent-Length: 12\r\n\r\n"), 12);
        for bad in [
            &b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1,\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
            b"HEAD / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
        ] {
            assert_eq!(status(bad), 400, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn target_limit_gives_414_early_and_late() {
        let limits = Limits {
            max_target: 16,
            ..Limits::default()
        };
        let ok = b"GET /0123456789abcde HTTP/1.1\r\nHost: h\r\n\r\n"; // target is 16 bytes
        assert!(matches!(parse_request(ok, &limits), Parse::Complete { .. }));
        let long = b"GET /0123456789abcdef HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(
            parse_request(long, &limits),
            Parse::Error(too_long_target())
        );
        // Before the line is complete, once the target bytes exceed the limit.
        assert_eq!(parse_request(&long[..20], &limits), Parse::Incomplete);
        assert_eq!(
            parse_request(&long[..21], &limits),
            Parse::Error(too_long_target())
        );
        // With the default limit: 2049-byte target.
        let mut big = b"GET /".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2048));
        assert_eq!(status(&big), 414);
        big.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(status(&big), 414);
    }

    #[test]
    fn header_limits_give_431_early_and_late() {
        let limits = Limits {
            max_header_bytes: 32,
            max_headers: 3,
            ..Limits::default()
        };
        let head = b"GET / HTTP/1.1\r\n";
        // Exactly 32 header bytes, including the final CRLF.
        let ok = [&head[..], b"Host: h\r\nX-Padding: 01234567\r\n\r\n"].concat();
        assert!(matches!(
            parse_request(&ok, &limits),
            Parse::Complete { .. }
        ));
        let big = [&head[..], b"Host: h\r\nX-Padding: 012345678\r\n\r\n"].concat();
        assert_eq!(parse_request(&big, &limits).error_status(), Some(431));
        // Detected while still incomplete.
        let partial = [&head[..], &[b'x'; 33][..]].concat();
        assert_eq!(parse_request(&partial, &limits).error_status(), Some(431));
        assert_eq!(
            parse_request(&partial[..partial.len() - 1], &limits),
            Parse::Incomplete
        );
        let many = [&head[..], b"Host: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"].concat();
        let limits = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        assert_eq!(parse_request(&many, &limits).error_status(), Some(431));
        // The fourth field line is refused as soon as it is complete.
        let many_partial = [&head[..], b"Host: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n"].concat();
        assert_eq!(
            parse_request(&many_partial, &limits).error_status(),
            Some(431)
        );
        let three = [&head[..], b"Host: h\r\nA: 1\r\nB: 2\r\n\r\n"].concat();
        assert!(matches!(
            parse_request(&three, &limits),
            Parse::Complete { .. }
        ));
        // Defaults: 8193 bytes of headers.
        let mut huge = head.to_vec();
        huge.extend_from_slice(b"Host: h\r\nX: ");
        huge.extend(std::iter::repeat_n(b'v', 8192));
        assert_eq!(status(&huge), 431);
    }

    #[test]
    fn real_client_heads() {
        let heads: [&[u8]; 4] = [
            b"GET /media/movie.mp4 HTTP/1.1\r\nHost: 10.0.0.2:8080\r\nUser-Agent: curl/7.88.1\r\n\
              Accept: */*\r\nRange: bytes=100-199\r\n\r\n",
            b"GET /live/index.m3u8 HTTP/1.1\r\nUser-Agent: Lavf/59.27.100\r\nAccept: */*\r\n\
              Range: bytes=0-\r\nConnection: close\r\nHost: 10.0.0.2\r\nIcy-MetaData: 1\r\n\r\n",
            b"GET /index.html HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
            b"GET /a.json HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip, deflate, br\r\n\
              Accept-Language: en-US,en;q=0.9\r\nCookie: a=b; c=d\r\n\
              If-None-Match: W/\"5f-1\"\r\nIf-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT\r\n\
              Sec-Fetch-Mode: navigate\r\nUpgrade-Insecure-Requests: 1\r\n\r\n",
        ];
        for head in heads {
            let (r, consumed) = complete(head);
            assert_eq!(consumed, head.len());
            assert_eq!(r.method, Method::Get);
        }
        assert_eq!(complete(heads[0]).0.range, Some("bytes=100-199"));
        assert!(!complete(heads[1]).0.keep_alive);
        assert_eq!(complete(heads[3]).0.if_none_match, Some("W/\"5f-1\""));
    }

    #[test]
    fn a_request_body_is_not_consumed() {
        let input = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        let (r, consumed) = complete(input);
        assert_eq!((r.content_length, &input[consumed..]), (5, &b"hello"[..]));
    }

    #[test]
    fn default_max_head_len() {
        assert_eq!(Limits::default().max_head_len(), 10_297);
    }

    #[test]
    fn pipelined_requests_are_consumed_one_at_a_time() {
        let first = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
        let second = b"HEAD /b HTTP/1.1\nHost: h\n\n";
        let both = [&first[..], &second[..]].concat();
        let (r, consumed) = complete(&both);
        assert_eq!((r.path, consumed), ("/a", first.len()));
        let (r, consumed) = complete(&both[consumed..]);
        assert_eq!(
            (r.method, r.path, consumed),
            (Method::Head, "/b", second.len())
        );
        // A partial second request after a complete first one.
        let (_, consumed) = complete(&both[..first.len() + 5]);
        assert_eq!(consumed, first.len());
    }

    #[test]
    fn every_split_point_of_a_valid_request_is_incomplete() {
        let requests: [&[u8]; 4] = [
            SIMPLE,
            b"\r\nHEAD http://h/x HTTP/1.0\nConnection: keep-alive\nRange: bytes=1-2\n\n",
            b"GET /a%20b HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"e\", W/\"f\"\r\nX:\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n",
        ];
        for req in requests {
            let (_, consumed) = complete(req);
            assert_eq!(consumed, req.len());
            for split in 0..req.len() {
                assert_eq!(
                    parse(&req[..split]),
                    Parse::Incomplete,
                    "split {split} of {req:?}"
                );
            }
        }
    }

    #[test]
    fn max_head_len_is_enough_for_the_largest_valid_head() {
        let limits = Limits {
            max_target: 20,
            max_header_bytes: 40,
            max_headers: 8,
        };
        let mut req = b"\r\n\r\n".to_vec();
        req.extend([b'M'; MAX_METHOD_LEN]);
        req.extend_from_slice(b" /");
        req.extend([b'p'; 19]);
        req.extend_from_slice(b" HTTP/1.1\r\n");
        req.extend_from_slice(b"Host: h\r\nX: ");
        req.extend([b'v'; 40 - 9 - 5 - 2]);
        req.extend_from_slice(b"\r\n\r\n");
        let (_, consumed) = match parse_request(&req, &limits) {
            Parse::Complete { request, consumed } => (request, consumed),
            other => panic!("{other:?}"),
        };
        assert_eq!(consumed, req.len());
        assert!(req.len() <= limits.max_head_len());
    }

    impl Parse<'_> {
        fn error_status(&self) -> Option<u16> {
            match self {
                Parse::Error(e) => Some(e.status),
                _ => None,
            }
        }
    }

    fn decode(raw: &str) -> Result<String, u16> {
        let mut buf = [0u8; 256];
        decode_path(raw, &mut buf)
            .map(str::to_owned)
            .map_err(|e| e.status)
    }

    #[test]
    fn decode_path_percent_decodes() {
        assert_eq!(decode("/a%20b/c%2Ed"), Ok("/a b/c.d".into()));
        assert_eq!(decode("/caf%C3%A9"), Ok("/café".into()));
        assert_eq!(decode("/%41%4a%4A"), Ok("/AJJ".into()));
        assert_eq!(decode("/a+b"), Ok("/a+b".into()));
        for bad in [
            "/%00", "/%", "/%4", "/%G0", "/%0G", "/a%zz", "/%C3", "/%FF", "/%0A", "/%7F", "/G%C2%9ET", "/%C2%80", "a/b",
            "", "*",
        ] {
            assert_eq!(decode(bad), Err(400), "{bad}");
        }
    }

    #[test]
    fn decode_path_resolves_dot_segments() {
        for (raw, want) in [
            ("/", "/"),
            ("//", "/"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/../", "/a/"),
            ("/a/.", "/a/"),
            ("/a/", "/a/"),
            ("/.", "/"),
            ("/a/...", "/a/..."),
            ("/a/.b/..c", "/a/.b/..c"),
            ("/a/b/c/../../d", "/a/d"),
        ] {
            assert_eq!(decode(raw), Ok(want.into()), "{raw}");
        }
        // Climbing above the root is refused, however it is spelled.
        for raw in ["/../../etc/passwd", "/..", "/a/..%2F..%2Fb", "/%2e%2e/x", "/a/../../b"] {
            assert_eq!(decode(raw), Err(400), "{raw}");
        }
    }

    #[test]
    fn decode_path_reports_a_short_buffer() {
        let mut small = [0u8; 3];
        assert_eq!(
            decode_path("/abcd", &mut small).map_err(|e| e.status),
            Err(414)
        );
        let mut exact = [0u8; 5];
        assert_eq!(decode_path("/abcd", &mut exact), Ok("/abcd"));
    }

    /// A valid request assembled from parts, for mutation.
    fn valid_request() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(vec!["GET", "HEAD", "POST", "OPTIONS"]),
            "/[a-z0-9%./]{0,20}(\\?[a-z=&]{0,8})?",
            prop::bool::ANY,
            prop::sample::subsequence(
                vec![
                    "Range: bytes=0-99",
                    "Connection: close",
                    "If-None-Match: \"abc\"",
                    "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
                    "X-Custom:  value ",
                    "Content-Length: 0",
                    "If-Range: \"abc\"",
                ],
                0..5,
            ),
            prop::bool::ANY,
        )
            .prop_map(|(method, target, http10, fields, bare_lf)| {
                let eol = if bare_lf { "\n" } else { "\r\n" };
                let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
                let mut s = format!("{method} {target} {version}{eol}Host: h{eol}");
                for f in fields {
                    s.push_str(f);
                    s.push_str(eol);
                }
                s.push_str(eol);
                s.into_bytes()
            })
    }

    #[derive(Clone, Debug)]
    enum Mutation {
        Replace(usize, u8),
        Insert(usize, u8),
        Delete(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Replace(i, b)),
            (
                any::<usize>(),
                prop::sample::select(b" \t\r\n:%/.-,\"\x00\x80".to_vec())
            )
                .prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Delete),
        ]
    }

    fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
        for m in mutations {
            if bytes.is_empty() {
                break;
            }
            match *m {
                Mutation::Replace(i, b) => {
                    let i = i % bytes.len();
                    bytes[i] = b;
                }
                Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
                Mutation::Delete(i) => {
                    bytes.remove(i % bytes.len());
                }
            }
        }
        bytes
    }

    /// The invariants every parse result must satisfy for `buf`.
    fn check_parse_invariants(buf: &[u8], limits: &Limits) {
        match parse_request(buf, limits) {
            Parse::Complete { request, consumed } => {
                assert!(consumed <= buf.len());
                assert!(consumed <= limits.max_head_len());
                // The head alone parses the same; every shorter prefix is Incomplete.
                assert_eq!(
                    parse_request(&buf[..consumed], limits),
                    Parse::Complete { request, consumed }
                );
                for split in 0..consumed {
                    assert_eq!(parse_request(&buf[..split], limits), Parse::Incomplete);
                }
                assert!(request.target.len() <= limits.max_target);
                let mut out = [0u8; 64];
                let _ = decode_path(request.path, &mut out);
            }
            Parse::Incomplete => assert!(buf.len() < limits.max_head_len()),
            Parse::Error(e) => assert!(matches!(e.status, 400 | 414 | 431 | 505)),
        }
    }

    proptest! {
        #[test]
        fn valid_requests_parse_completely(req in valid_request()) {
            let parsed = parse(&req);
            prop_assert!(matches!(parsed, Parse::Complete { consumed, .. } if consumed == req.len()),
                "{:?} -> {:?}", String::from_utf8_lossy(&req), parsed);
            check_parse_invariants(&req, &Limits::default());
        }

        #[test]
        fn mutated_requests_never_panic(
            req in valid_request(),
            mutations in prop::collection::vec(mutation(), 1..6),
        ) {
            let mutated = apply(req, &mutations);
            check_parse_invariants(&mutated, &Limits::default());
            let small = Limits { max_target: 12, max_header_bytes: 60, max_headers: 3 };
            check_parse_invariants(&mutated, &small);
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..600)) {
            check_parse_invariants(&buf, &Limits::default());
            let small = Limits { max_target: 8, max_header_bytes: 24, max_headers: 2 };
            check_parse_invariants(&buf, &small);
        }

        #[test]
        fn big_buffers_are_never_incomplete(
            prefix in valid_request(),
            filler in prop::sample::select(b"a: /\r\n\t%".to_vec()),
            cut in 0usize..60,
        ) {
            // Cut a valid request anywhere and pad it with one byte repeated: once the buffer
            // holds max_head_len bytes the parser must have decided.
            let limits = Limits { max_target: 16, max_header_bytes: 48, max_headers: 4 };
            let mut buf = prefix[..cut.min(prefix.len())].to_vec();
            buf.resize(limits.max_head_len(), filler);
            prop_assert_ne!(parse_request(&buf, &limits), Parse::Incomplete);
        }

        #[test]
        fn decoded_paths_are_normalised(raw in "/[a-z./%0-9A-F]{0,40}") {
            let mut out = [0u8; 64];
            if let Ok(path) = decode_path(&raw, &mut out) {
                prop_assert!(path.starts_with('/'));
                prop_assert!(!path.contains("//"));
                prop_assert!(!path.split('/').any(|seg| seg == "." || seg == ".."));
                prop_assert!(!path.contains('\0'));
                prop_assert!(path.len() <= raw.len());
            }
        }
    }
}
