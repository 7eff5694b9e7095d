//! The HTTP/1.1 request parser and what runs on its result: `parse_request`, `decode_path`,
//! `parse_range`, `plan_request` and `write_head`.
//! Input: one byte picks the limits and the object size, the rest is received bytes.
#![no_main]
use appliance::http::{
    decode_path, parse_range, plan_request, write_head, Limits, Method, ObjectMeta, Parse, RangeOutcome, MAX_HEAD_LEN,
};
use libfuzzer_sys::fuzz_target;

/// `s` lies inside `buf`.
fn within(buf: &[u8], s: &str) -> bool {
    let (b, p) = (buf.as_ptr() as usize, s.as_ptr() as usize);
    p >= b && p + s.len() <= b + buf.len()
}

fn check_decoded(raw: &str, p: &str) {
    assert!(p.starts_with('/'), "{raw:?} -> {p:?}");
    assert!(p.len() <= raw.len(), "{raw:?} -> {p:?} grew");
    assert!(!p.contains("//"), "{raw:?} -> {p:?}: empty segment");
    for seg in p.split('/') {
        assert!(seg != "." && seg != "..", "{raw:?} -> {p:?}: dot segment");
    }
    assert!(!p.chars().any(|c| c.is_control()), "{raw:?} -> {p:?}: control character");
}

fn check_range(header: &str, size: u64) {
    match parse_range(header, size) {
        RangeOutcome::Partial { start, end_inclusive } => {
            assert!(start <= end_inclusive && end_inclusive < size, "{header:?} of {size}: {start}-{end_inclusive}")
        }
        RangeOutcome::Unsatisfiable => {}
        RangeOutcome::Full => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, buf)) = data.split_first() else { return };
    let limits = if mode & 1 == 0 {
        Limits::default()
    } else {
        Limits { max_target: 16 + (mode as usize >> 2), max_header_bytes: 64 + (mode as usize), max_headers: (mode as usize >> 4) }
    };
    let size = [0u64, 1, 100, 4096, 1 << 40][(mode as usize >> 1) % 5];
    match appliance::http::parse_request(buf, &limits) {
        Parse::Complete { request, consumed } => {
            assert!(consumed > 0 && consumed <= buf.len());
            assert_eq!(buf[consumed - 1], b'\n', "a head ends with a line end");
            for s in [Some(request.target), Some(request.path), request.host, request.range, request.if_none_match, request.if_modified_since, request.if_range]
                .into_iter()
                .flatten()
            {
                // An absolute-form target without a path has the path "/", not in the buffer.
                assert!(within(&buf[..consumed], s) || s == "/", "field {s:?} outside the head");
            }
            if let Method::Other(m) = request.method {
                assert!(within(&buf[..consumed], m));
            }
            assert!(request.target.len() <= limits.max_target);
            // The same head alone parses the same; no shorter prefix is complete.
            match appliance::http::parse_request(&buf[..consumed], &limits) {
                Parse::Complete { request: again, consumed: c } => {
                    assert_eq!(c, consumed);
                    assert_eq!(again, request);
                }
                other => panic!("the head alone gives {other:?}"),
            }
            assert!(!matches!(appliance::http::parse_request(&buf[..consumed - 1], &limits), Parse::Complete { .. }));
            let mut out = vec![0u8; request.path.len()];
            match decode_path(request.path, &mut out) {
                Ok(p) => check_decoded(request.path, p),
                Err(e) => assert_eq!(e.status, 400, "a buffer of the raw length suffices: {e}"),
            }
            if let Some(r) = request.range {
                check_range(r, size);
            }
            let etag = "\"0123456789abcdef\"";
            let mut path_buf = vec![0u8; limits.max_target];
            let plan = plan_request(&request, &mut path_buf, |p| {
                (p == "/a" || p.len() % 3 == 0).then_some(ObjectMeta { size, content_type: "video/mp2t", etag, mtime: 1_700_000_000 })
            });
            if let Some((off, len)) = plan.body {
                assert!(len > 0 && off.checked_add(len).is_some_and(|e| e <= size), "body {off}+{len} of {size}");
            }
            let mut head = vec![0u8; MAX_HEAD_LEN];
            let n = write_head(&plan, 1_700_000_000, &mut head).expect("a plan's head fits MAX_HEAD_LEN");
            assert!(head[..n].ends_with(b"\r\n\r\n"));
        }
        Parse::Incomplete => {
            assert!(buf.len() < limits.max_head_len(), "Incomplete with {} bytes buffered", buf.len());
        }
        Parse::Error(e) => {
            assert!([400, 405, 414, 431, 501, 505].contains(&e.status), "{e}");
        }
    }
    // The helpers on arbitrary text too.
    if let Ok(s) = std::str::from_utf8(buf) {
        let mut out = vec![0u8; s.len()];
        match decode_path(s, &mut out) {
            Ok(p) => check_decoded(s, p),
            Err(e) => assert_eq!(e.status, 400, "{e}"),
        }
        let mut short = vec![0u8; s.len() / 2];
        if let Ok(p) = decode_path(s, &mut short) {
            check_decoded(s, p);
        }
        check_range(s, size);
    }
});
