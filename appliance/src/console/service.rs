//! The console as core 0 runs it: read lines from the transport, execute them, write the
//! answers. One `poll` per loop iteration; it never blocks.
use std::time::{Duration, Instant};

use super::{Console, ConsoleError, ConsoleHost, ConsoleIo};

pub struct ConsoleService {
    io: ConsoleIo,
    console: Console,
    /// Answers of one poll, reused so a steady console allocates nothing new.
    answer: String,
}

impl ConsoleService {
    pub fn new(io: ConsoleIo) -> Self {
        ConsoleService {
            io,
            console: Console::new(),
            answer: String::new(),
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
        } = self;
        answer.clear();
        let n = io.poll_lines(max_lines, &mut |line| console.execute(line, host, answer));
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
