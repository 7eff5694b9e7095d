//! Splits a console byte stream into lines, sans-IO: bytes in, `&str` lines out.
//!
//! - A line ends at LF, CR, or CRLF (the LF right after a CR is skipped, even across feeds).
//! - Backspace (0x08) and DEL (0x7f) erase the previous character, as typed on a terminal.
//! - The buffer is bounded: at most [`MAX_LINE`] + 1 bytes are kept. A longer line is handed
//!   on as those first `MAX_LINE + 1` bytes, so the interpreter answers `error: line too long`;
//!   the rest up to the line end is discarded.
//! - Bytes that are not UTF-8 are decoded lossily (U+FFFD), which the interpreter rejects.
use super::MAX_LINE;

#[derive(Debug)]
pub struct LineSplitter {
    line: Vec<u8>,
    /// The current line outgrew the buffer; its bytes are discarded up to the line end.
    overflow: bool,
    /// The previous byte was a CR, so an LF now ends nothing.
    after_cr: bool,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl LineSplitter {
    pub fn new() -> Self {
        LineSplitter {
            line: Vec::with_capacity(MAX_LINE + 1),
            overflow: false,
            after_cr: false,
        }
    }

    /// Forget a partial line (e.g. when a client disconnects).
    pub fn reset(&mut self) {
        self.line.clear();
        self.overflow = false;
        self.after_cr = false;
    }

    /// True when a partial line is buffered.
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.overflow
    }

    /// Consume bytes from `input` until it is used up or `max_lines` lines were passed to `f`.
    /// Returns (bytes consumed, lines produced); unconsumed bytes are to be fed again later.
    pub fn feed(
        &mut self,
        input: &[u8],
        max_lines: usize,
        f: &mut dyn FnMut(&str),
    ) -> (usize, usize) {
        let mut lines = 0;
        let mut used = 0;
        while used < input.len() && lines < max_lines {
            let b = input[used];
            used += 1;
            let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    f(&String::from_utf8_lossy(&self.line));
                    self.line.clear();
                    self.overflow = false;
                    lines += 1;
                }
                0x08 | 0x7f if !self.overflow => {
                    // Drop UTF-8 continuation bytes, then the character's first byte.
                    while let Some(last) = self.line.pop() {
                        if last & 0xc0 != 0x80 {
                            break;
                        }
                    }
                }
                _ if self.line.len() <= MAX_LINE => self.line.push(b),
                _ => self.overflow = true,
            }
        }
        (used, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        for chunk in chunks {
            let (used, _) = s.feed(chunk, usize::MAX, &mut |l| out.push(l.to_string()));
            assert_eq!(used, chunk.len());
        }
        out
    }

    #[test]
    fn splits_on_lf_cr_and_crlf() {
        assert_eq!(split(&[b"a\nb\rc\r\nd\n"]), ["a", "b", "c", "d"]);
        assert_eq!(split(&[b"\n\r\n\r"]), ["", "", ""]);
        assert_eq!(split(&[b"\r\r\n"]), ["", ""]);
    }

    #[test]
    fn lines_and_crlf_span_feeds() {
        assert_eq!(
            split(&[b"sta", b"tus\r", b"\nhelp", b"\n"]),
            ["status", "help"]
        );
        assert_eq!(split(&[b"partial"]), Vec::<String>::new());
    }

    #[test]
    fn max_lines_stops_and_leaves_the_rest() {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        let input = b"a\nb\nc\n";
        let (used, n) = s.feed(input, 2, &mut |l| out.push(l.to_string()));
        assert_eq!((used, n), (4, 2));
        let (used2, n2) = s.feed(&input[used..], 2, &mut |l| out.push(l.to_string()));
        assert_eq!((used2, n2), (2, 1));
        assert_eq!(out, ["a", "b", "c"]);
    }

    #[test]
    fn overlong_line_is_cut_and_flagged_by_length_then_the_next_line_is_clean() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\nstatus\n");
        let out = split(&[&input[..3000], &input[3000..]]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LINE + 1);
        assert_eq!(out[1], "status");
        // Exactly MAX_LINE bytes fits.
        let mut input = vec![b'y'; MAX_LINE];
        input.push(b'\n');
        assert_eq!(split(&[&input])[0].len(), MAX_LINE);
    }

    #[test]
    fn overlong_invalid_utf8_still_reads_as_too_long() {
        let mut input = vec![0xff; 3000];
        input.push(b'\n');
        let out = split(&[&input]);
        assert!(out[0].len() > MAX_LINE);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        let out = split(&[b"st\xffatus\n", "caf\u{e9}\n".as_bytes()]);
        assert_eq!(out, ["st\u{fffd}atus", "caf\u{e9}"]);
    }

    #[test]
    fn backspace_and_del_erase_whole_characters() {
        let out = split(&[
            b"statx\x08us\n",
            "\u{e9}\x7fok\n".as_bytes(),
            b"\x08\x08a\n",
        ]);
        assert_eq!(out, ["status", "ok", "a"]);
    }

    #[test]
    fn reset_drops_a_partial_line() {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        s.feed(b"garb", 10, &mut |l| out.push(l.to_string()));
        assert!(s.has_partial());
        s.reset();
        s.feed(b"help\n", 10, &mut |l| out.push(l.to_string()));
        assert_eq!(out, ["help"]);
    }
}
