//! The console: bytes through `LineSplitter::feed` (in fuzzed chunks, a fuzzed line budget per
//! call), each line executed by `Console` against the fake host (a `tls install` paste
//! included: no answer until its end).
//! Input: a mode byte (chunk size, lines per feed), then the byte stream.
#![no_main]
use appliance::console::fake::FakeHost;
use appliance::console::{Console, LineSplitter, MAX_LINE};
use libfuzzer_sys::fuzz_target;

fn split_all(input: &[u8], chunk: usize, max_lines: usize) -> Vec<String> {
    let mut s = LineSplitter::new();
    let mut lines = Vec::new();
    for c in input.chunks(chunk.max(1)) {
        let mut at = 0;
        while at < c.len() {
            let (used, n) = s.feed(&c[at..], max_lines, &mut |l| lines.push(l.to_string()));
            assert!(n <= max_lines && used <= c.len() - at);
            assert!(used > 0, "feed made no progress");
            at += used;
        }
    }
    lines
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let chunk = (mode & 0x0f) as usize * 7 + 1;
    let max_lines = (mode >> 4) as usize + 1;
    let lines = split_all(input, chunk, max_lines);
    // Chunking and the line budget do not change the lines.
    assert_eq!(lines, split_all(input, usize::MAX, usize::MAX), "lines depend on how the bytes arrive");
    let mut console = Console::new();
    let mut host = FakeHost::new();
    let mut out = String::new();
    for line in &lines {
        assert!(!line.contains(['\n', '\r']));
        assert!(String::from_utf8_lossy(line.as_bytes()).len() <= 3 * (MAX_LINE + 1));
        let before = (console.commands(), console.errors());
        out.clear();
        console.execute(line, &mut host, &mut out);
        // A `tls install` collects PEM lines and answers once, at its `end`.
        if out.is_empty() {
            assert!(console.pasting(), "no answer to {line:?} outside a tls install");
            assert_eq!(console.errors(), before.1);
            continue;
        }
        assert!(out.ends_with('\n'), "answer {out:?} does not end a line");
        let last = out.trim_end_matches('\n').rsplit('\n').next().unwrap_or("");
        let failed = last.starts_with("error: ");
        assert!(last == "ok" || failed, "answer to {line:?} ends with {last:?}");
        let (commands, errors) = (console.commands(), console.errors());
        assert!(commands >= before.0 && commands <= before.0 + 1);
        assert_eq!(errors, before.1 + u64::from(failed), "error count for {line:?}");
    }
});
