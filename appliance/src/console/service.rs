//! The console as core 0 runs it: read lines from the transport, execute them, write the
//! answers. One `poll` per loop iteration; it never blocks.
use std::time::{Duration, Instant};

use super::{Console, ConsoleError, ConsoleHost, ConsoleIo};

pub struct ConsoleService {
    io: ConsoleIo,
    console: Console,
    /// Answers of one poll, reused so a steady console allocates nothing new.
    answer: String,
    /// The transport's client count when last polled ([`ConsoleIo::clients`]).
    clients: u64,
    /// When the last line of a `tls install` paste came.
    paste_line_at: Instant,
    /// [`PASTE_IDLE`] (shorter in tests).
    pub(super) paste_idle: Duration,
}

/// A `tls install` paste that gets no line for this long is given up (an operator who
/// walked away must not leave the console swallowing commands as PEM).
pub const PASTE_IDLE: Duration = Duration::from_secs(60);

impl ConsoleService {
    pub fn new(io: ConsoleIo) -> Self {
        ConsoleService {
            io,
            console: Console::new(),
            answer: String::new(),
            clients: 0,
            paste_line_at: Instant::now(),
            paste_idle: PASTE_IDLE,
        }
    }

    /// Open the transport named by a `--console` value (see [`ConsoleIo::open`]).
    pub fn open(spec: &str) -> Result<Self, ConsoleError> {
        Ok(Self::new(ConsoleIo::open(spec)?))
    }

    /// Execute up to `max_lines` waiting command lines and queue their answers. Costs a
    /// few non-blocking syscalls when idle, so a busy loop may call it every iteration or,
    /// cheaper, every millisecond or so. Returns how many lines were executed.
    pub fn poll(&mut self, host: &mut dyn ConsoleHost, max_lines: usize) -> usize {
        let Self {
            io,
            console,
            answer,
            clients,
            paste_line_at,
            paste_idle,
        } = self;
        answer.clear();
        // The client that started a paste is gone: the next one starts afresh. (A poll that
        // changes the client passes no line, so this comes before the new client's first.)
        let mut client_changed = |io: &ConsoleIo, console: &mut Console| {
            if io.clients() != *clients {
                *clients = io.clients();
                console.abandon_paste(None, Duration::ZERO);
            }
        };
        client_changed(io, console);
        let n = io.poll_lines(max_lines, &mut |line| console.execute(line, host, answer));
        client_changed(io, console);
        if console.pasting() {
            let now = Instant::now();
            if n > 0 {
                *paste_line_at = now;
            } else if now.duration_since(*paste_line_at) >= *paste_idle {
                console.abandon_paste(Some(answer), *paste_idle);
            }
        } else {
            *paste_line_at = Instant::now();
        }
        if !answer.is_empty() {
            io.write_str(answer);
        }
        n
    }

    /// Before the host reboots or powers off: keep writing the pending answer for at most
    /// `limit` (sleeping 1 ms between tries). Returns true when all of it was written.
    pub fn flush_for(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.io.flush() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The interpreter, for its command and error counts.
    pub fn console(&self) -> &Console {
        &self.console
    }

    pub fn io(&self) -> &ConsoleIo {
        &self.io
    }
}
