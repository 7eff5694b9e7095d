//! The console's byte transport, non-blocking so that core 0's loop never waits on it:
//!
//! - `stdio`: reads stdin, writes stdout. stdin is polled (poll(2) with a zero timeout) rather
//!   than switched to O_NONBLOCK, so a shared terminal is left as it was; when stdin reaches
//!   EOF (e.g. `</dev/null`) it is no longer polled and the appliance keeps running. A
//!   terminal on stdin stays in its normal (cooked) mode, so it echoes and edits lines.
//! - a tty path (`/dev/ttyS0`): opened O_RDWR|O_NOCTTY|O_NONBLOCK and set to raw 115200 8N1,
//!   no flow control, with LF sent as CRLF. No echo.
//! - `unix:<path>`: a listening Unix stream socket (a stale socket file is removed first; the
//!   file is made mode 0600). One client at a time: a newly connecting client REPLACES the
//!   current one, which is told so and disconnected (an operator can always get in, even past
//!   a hung script). When the client disconnects, the console goes back to accepting; after a
//!   client shuts down its sending side, its remaining answers are still written before it is
//!   dropped, so `echo stats | socat - UNIX-CONNECT:<path>` works.
//!
//! No prompt is printed and input is not echoed: answers end with `ok` or `error: ...`, which
//! is what scripts wait for. For an operator typing on a raw line (a tty, or a terminal program
//! in raw mode on the Unix socket), a `,echo` suffix (`/dev/ttyS0,echo`, `unix:<path>,echo`)
//! echoes what is typed, with backspace erasing. Output is buffered up to [`OUT_LIMIT`] bytes; a Unix client that lets more pile up is
//! dropped, and on stdio or a tty further output is discarded (and counted) until it drains.
//!
//! This is the only console file with `unsafe` (termios and poll/read/write on stdio).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use super::lines::LineSplitter;

/// Most output kept waiting for a slow reader.
pub const OUT_LIMIT: usize = 1 << 20;
/// Most input bytes read in one `poll_lines` call, so a flooding client cannot hold core 0.
const READ_BUDGET: usize = 64 * 1024;
const READ_CHUNK: usize = 4096;
/// Largest single write to stdout; a pipe that polls writable takes this much without blocking.
const STDOUT_CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("bad console '{0}': expected stdio, a tty path such as /dev/ttyS0, or unix:<path>")]
    Spec(String),
    #[error("cannot open console tty {path}: {source}")]
    Tty { path: String, source: io::Error },
    #[error("cannot listen on console socket {path}: {source}")]
    Socket { path: String, source: io::Error },
}

enum Endpoint {
    Stdio {
        stdin_open: bool,
        stdout_open: bool,
    },
    Tty {
        file: File,
        path: String,
        read_error_logged: bool,
    },
    Unix {
        listener: UnixListener,
        path: PathBuf,
        client: Option<Client>,
    },
}

struct Client {
    stream: UnixStream,
    /// The client shut down its sending side: answer what it sent, then drop it.
    read_closed: bool,
}

/// An open console transport. See the module documentation for each kind's behaviour.
pub struct ConsoleIo {
    endpoint: Endpoint,
    lines: LineSplitter,
    /// Bytes read but not yet split (kept when `max_lines` stopped the splitter).
    rbuf: Box<[u8; READ_CHUNK]>,
    rstart: usize,
    rend: usize,
    /// Output not yet written; `out[out_start..]` is pending.
    out: Vec<u8>,
    out_start: usize,
    dropped_bytes: u64,
    /// Echo input back (the `,echo` option).
    echo: bool,
    /// The last byte echoed was a CR, so an LF right after it is not echoed again.
    echo_after_cr: bool,
    /// Bumped each time a client's state is dropped (a new or departed client).
    clients: u64,
}

impl ConsoleIo {
    /// Open the transport named by a `--console` value: `stdio`, a tty path, or `unix:<path>`,
    /// each optionally followed by `,echo`.
    pub fn open(spec_with_options: &str) -> Result<ConsoleIo, ConsoleError> {
        let (spec, echo) = match spec_with_options.strip_suffix(",echo") {
            Some(spec) => (spec, true),
            None => (spec_with_options, false),
        };
        let endpoint = if spec == "stdio" {
            Endpoint::Stdio {
                stdin_open: true,
                stdout_open: true,
            }
        } else if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ConsoleError::Spec(spec.to_string()));
            }
            let listener = listen_unix(path).map_err(|source| ConsoleError::Socket {
                path: path.to_string(),
                source,
            })?;
            Endpoint::Unix {
                listener,
                path: PathBuf::from(path),
                client: None,
            }
        } else if spec.starts_with('/') {
            let file = open_tty(spec).map_err(|source| ConsoleError::Tty {
                path: spec.to_string(),
                source,
            })?;
            Endpoint::Tty {
                file,
                path: spec.to_string(),
                read_error_logged: false,
            }
        } else {
            return Err(ConsoleError::Spec(spec.to_string()));
        };
        Ok(ConsoleIo {
            endpoint,
            lines: LineSplitter::new(),
            rbuf: Box::new([0; READ_CHUNK]),
            rstart: 0,
            rend: 0,
            out: Vec::new(),
            out_start: 0,
            dropped_bytes: 0,
            echo,
            echo_after_cr: false,
            clients: 0,
        })
    }

    /// What this console is, for logs: "stdio", "/dev/ttyS0", "unix:/run/console.sock".
    pub fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Stdio { .. } => "stdio".to_string(),
            Endpoint::Tty { path, .. } => path.clone(),
            Endpoint::Unix { path, .. } => format!("unix:{}", path.display()),
        }
    }

    /// True while a Unix client is connected (always true for stdio and tty).
    pub fn connected(&self) -> bool {
        match &self.endpoint {
            Endpoint::Unix { client, .. } => client.is_some(),
            _ => true,
        }
    }

    /// True once stdin reached EOF (stdio only): it is no longer read.
    pub fn input_closed(&self) -> bool {
        matches!(
            self.endpoint,
            Endpoint::Stdio {
                stdin_open: false,
                ..
            }
        )
    }

    /// Bytes of output waiting for the reader.
    pub fn pending_output(&self) -> usize {
        self.out.len() - self.out_start
    }

    /// Output bytes discarded because the reader was too slow (stdio and tty).
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    /// Without blocking: write pending output, take a new Unix client, read what is available
    /// and pass up to `max_lines` complete lines to `f`. Returns how many lines were passed.
    /// A poll that changed the client passes none: the caller sees [`ConsoleIo::clients`]
    /// move before the new client's first line.
    pub fn poll_lines(&mut self, max_lines: usize, f: &mut dyn FnMut(&str)) -> usize {
        let clients = self.clients;
        self.flush();
        self.retire_finished_client();
        self.accept();
        if self.clients != clients {
            return 0;
        }
        let mut produced = 0;
        let mut read_total = 0;
        while produced < max_lines {
            if self.rstart < self.rend {
                let (used, n) =
                    self.lines
                        .feed(&self.rbuf[self.rstart..self.rend], max_lines - produced, f);
                self.rstart += used;
                produced += n;
                continue;
            }
            if read_total >= READ_BUDGET {
                break;
            }
            self.rstart = 0;
            self.rend = 0;
            match self.read_some() {
                Input::Bytes(n) => {
                    self.rend = n;
                    read_total += n;
                    if self.echo {
                        self.echo_input(n);
                    }
                }
                Input::Nothing => break,
                Input::Eof => {
                    // An unterminated last line still counts as a line.
                    if self.lines.has_partial() {
                        produced += self.lines.feed(b"\n", 1, f).1;
                    }
                    self.lines.reset();
                    break;
                }
            }
        }
        produced
    }

    /// Queue the echo of the `n` bytes just read: text as is, one newline per line end,
    /// backspace/DEL as "erase one cell", other control bytes not at all.
    fn echo_input(&mut self, n: usize) {
        let mut echo = Vec::with_capacity(n);
        for &b in &self.rbuf[..n] {
            let after_cr = std::mem::replace(&mut self.echo_after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => echo.push(b'\n'),
                0x08 | 0x7f => echo.extend_from_slice(b"\x08 \x08"),
                b'\t' => echo.push(b),
                c if c < 0x20 => {}
                c => echo.push(c),
            }
        }
        self.write_str(&String::from_utf8_lossy(&echo));
    }

    /// Queue `s` for the reader and write what can be written now. Never blocks.
    pub fn write_str(&mut self, s: &str) {
        if let Endpoint::Unix { client: None, .. } = self.endpoint {
            return; // Nobody to answer.
        }
        if self.pending_output() + s.len() > OUT_LIMIT {
            self.flush();
        }
        if self.pending_output() + s.len() > OUT_LIMIT {
            if let Endpoint::Unix { client, .. } = &mut self.endpoint {
                log::warn!("console: client does not read its answers; disconnecting it");
                *client = None;
                self.reset_client_state();
                return;
            }
            self.dropped_bytes += s.len() as u64;
            return;
        }
        if self.out_start > 0 && self.out_start * 2 >= self.out.len() {
            self.out.drain(..self.out_start);
            self.out_start = 0;
        }
        self.out.extend_from_slice(s.as_bytes());
        self.flush();
    }

    /// Write as much pending output as the reader takes now. Returns true when none is left.
    pub fn flush(&mut self) -> bool {
        while self.out_start < self.out.len() {
            let pending = &self.out[self.out_start..];
            let written = match &mut self.endpoint {
                Endpoint::Stdio { stdout_open, .. } => {
                    if !*stdout_open {
                        Err(io::Error::from(ErrorKind::BrokenPipe))
                    } else {
                        write_stdout(&pending[..pending.len().min(STDOUT_CHUNK)])
                    }
                }
                Endpoint::Tty { file, .. } => file.write(pending),
                Endpoint::Unix {
                    client: Some(c), ..
                } => c.stream.write(pending),
                Endpoint::Unix { client: None, .. } => {
                    Err(io::Error::from(ErrorKind::NotConnected))
                }
            };
            match written {
                Ok(0) => break,
                Ok(n) => self.out_start += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.write_failed(e);
                    break;
                }
            }
        }
        if self.out_start == self.out.len() {
            self.out.clear();
            self.out_start = 0;
        }
        self.pending_output() == 0
    }

    fn write_failed(&mut self, e: io::Error) {
        match &mut self.endpoint {
            Endpoint::Stdio { stdout_open, .. } => {
                if *stdout_open {
                    log::warn!("console: cannot write stdout ({e}); console output off");
                }
                *stdout_open = false;
            }
            Endpoint::Tty { path, .. } => {
                log::warn!("console: cannot write {path}: {e}; output dropped")
            }
            Endpoint::Unix { client, .. } => {
                if client.take().is_some() {
                    log::info!("console: client gone ({e})");
                }
                self.reset_client_state();
            }
        }
        self.dropped_bytes += self.pending_output() as u64;
        self.out.clear();
        self.out_start = 0;
    }

    /// A client that stopped sending is dropped once its answers are written.
    fn retire_finished_client(&mut self) {
        let pending = self.pending_output();
        if let Endpoint::Unix { client, .. } = &mut self.endpoint {
            if client.as_ref().is_some_and(|c| c.read_closed) && pending == 0 {
                *client = None;
                log::debug!("console: client finished");
                self.reset_client_state();
            }
        }
    }

    /// Take the newest waiting Unix client, replacing the current one.
    fn accept(&mut self) {
        let Endpoint::Unix {
            listener, client, ..
        } = &mut self.endpoint
        else {
            return;
        };
        // accept(2) on an empty queue still makes and frees a socket in the kernel, at every
        // poll (a thousand a second). A zero-timeout poll says whether anyone waits; when the
        // poll itself fails, accept finds out why.
        if poll_now(listener.as_raw_fd(), libc::POLLIN).is_ok_and(|revents| revents == 0) {
            return;
        }
        let mut replaced = false;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::warn!("console: cannot make client non-blocking: {e}");
                        continue;
                    }
                    if let Some(mut old) = client.take() {
                        // Best effort, and never blocking: the old stream is non-blocking.
                        let _ = old.stream.write(b"console taken over by another client\n");
                    }
                    *client = Some(Client {
                        stream,
                        read_closed: false,
                    });
                    replaced = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // E.g. ECONNABORTED or out of descriptors: try again next poll.
                    log::debug!("console: accept failed: {e}");
                    break;
                }
            }
        }
        if replaced {
            log::info!("console: client connected");
            self.reset_client_state();
        }
    }

    /// How many times a client's state was dropped: a change tells the interpreter that a
    /// multi-line command (`tls install`) of the client before must not go on.
    pub fn clients(&self) -> u64 {
        self.clients
    }

    /// Input and output of a previous client must not leak to the next one.
    fn reset_client_state(&mut self) {
        self.clients += 1;
        self.lines.reset();
        self.rstart = 0;
        self.rend = 0;
        self.out.clear();
        self.out_start = 0;
    }

    fn read_some(&mut self) -> Input {
        let buf = &mut self.rbuf[..];
        match &mut self.endpoint {
            Endpoint::Stdio { stdin_open, .. } => {
                if !*stdin_open {
                    return Input::Nothing;
                }
                match read_stdin(buf) {
                    Ok(Some(0)) => {
                        log::info!("console: stdin closed; console input off");
                        *stdin_open = false;
                        Input::Eof
                    }
                    Ok(Some(n)) => Input::Bytes(n),
                    Ok(None) => Input::Nothing,
                    Err(e) => {
                        log::warn!("console: cannot read stdin ({e}); console input off");
                        *stdin_open = false;
                        Input::Eof
                    }
                }
            }
            Endpoint::Tty {
                file,
                path,
                read_error_logged,
            } => match file.read(buf) {
                Ok(n) if n > 0 => Input::Bytes(n),
                // 0 is a hang-up and EIO a vanished peer (pty): the line may come back, so
                // keep polling it rather than giving up.
                Ok(_) => Input::Nothing,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    Input::Nothing
                }
                Err(e) => {
                    if !*read_error_logged {
                        log::warn!("console: cannot read {path}: {e}");
                        *read_error_logged = true;
                    }
                    Input::Nothing
                }
            },
            Endpoint::Unix { client, .. } => {
                let Some(c) = client.as_mut().filter(|c| !c.read_closed) else {
                    return Input::Nothing;
                };
                match c.stream.read(buf) {
                    Ok(0) => {
                        c.read_closed = true;
                        Input::Eof
                    }
                    Ok(n) => Input::Bytes(n),
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
                    {
                        Input::Nothing
                    }
                    Err(e) => {
                        log::info!("console: client gone ({e})");
                        *client = None;
                        self.lines.reset();
                        self.out.clear();
                        self.out_start = 0;
                        Input::Nothing
                    }
                }
            }
        }
    }
}

impl Drop for ConsoleIo {
    fn drop(&mut self) {
        if let Endpoint::Unix { path, .. } = &self.endpoint {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Input {
    Bytes(usize),
    Nothing,
    Eof,
}

fn listen_unix(path: &str) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    // The console can reboot the appliance: only its owner may connect.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn open_tty(path: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    set_raw_115200_8n1(file.as_raw_fd())?;
    Ok(file)
}

/// Raw mode (no echo, no line editing, no signals), 115200 baud, 8 data bits, no parity, one
/// stop bit, no flow control, receiver on, modem lines ignored; output maps LF to CRLF so a
/// terminal shows lines properly.
fn set_raw_115200_8n1(fd: RawFd) -> io::Result<()> {
    // SAFETY: termios is a plain C struct of integers; all-zero is a valid value, and
    // tcgetattr overwrites it below.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor owned by the caller and `t` is a valid, writable
    // termios.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `t` is a valid termios; cfmakeraw only edits its fields.
    unsafe { libc::cfmakeraw(&mut t) };
    t.c_oflag |= libc::OPOST | libc::ONLCR;
    t.c_iflag &= !(libc::IXON | libc::IXOFF | libc::IXANY);
    t.c_cflag &= !(libc::CSIZE | libc::PARENB | libc::CSTOPB | libc::CRTSCTS);
    t.c_cflag |= libc::CS8 | libc::CLOCAL | libc::CREAD;
    t.c_cc[libc::VMIN] = 0;
    t.c_cc[libc::VTIME] = 0;
    // SAFETY: `t` is a valid termios; the calls only edit its speed fields.
    let speed_ok = unsafe {
        libc::cfsetispeed(&mut t, libc::B115200) == 0
            && libc::cfsetospeed(&mut t, libc::B115200) == 0
    };
    if !speed_ok {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open and `t` a fully initialised termios that tcsetattr only reads.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Zero-timeout poll of one descriptor; returns its revents.
fn poll_now(fd: RawFd, events: libc::c_short) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd that lives across the call; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(pfd.revents)
}

/// Read stdin only if poll says it will not block: `Ok(None)` when nothing is ready,
/// `Ok(Some(0))` at EOF.
fn read_stdin(buf: &mut [u8]) -> io::Result<Option<usize>> {
    let revents = poll_now(libc::STDIN_FILENO, libc::POLLIN)?;
    if revents & libc::POLLNVAL != 0 {
        return Ok(Some(0)); // stdin is closed: treat as EOF.
    }
    if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
        return Ok(None);
    }
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

/// Write to stdout only if poll says it is writable; a would-block answer is WouldBlock.
fn write_stdout(bytes: &[u8]) -> io::Result<usize> {
    let revents = poll_now(libc::STDOUT_FILENO, libc::POLLOUT)?;
    if revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
        return Err(io::Error::from(ErrorKind::BrokenPipe));
    }
    if revents & libc::POLLOUT == 0 {
        return Err(io::Error::from(ErrorKind::WouldBlock));
    }
    // SAFETY: `bytes` is valid for reads of `bytes.len()` bytes for the duration of the call.
    let n = unsafe { libc::write(libc::STDOUT_FILENO, bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeHost;
    use super::super::ConsoleService;
    use super::*;
    use std::io::BufRead;
    use std::os::unix::io::FromRawFd;
    use std::time::{Duration, Instant};

    fn sock_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("console-test-{}-{name}.sock", std::process::id()))
    }

    /// Poll the service until `done` says the client has what it needs (bounded in time).
    fn pump(svc: &mut ConsoleService, host: &mut FakeHost, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "console did not answer in time");
            svc.poll(host, 8);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Send `input` as one client, half-close, and return all it reads until the service
    /// closes its side.
    fn send_and_read_to_eof(svc: &mut ConsoleService, host: &mut FakeHost, path: &std::path::Path, input: &[u8]) -> String {
        let mut c = UnixStream::connect(path).unwrap();
        c.write_all(input).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        c.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut eof = false;
        pump(svc, host, || {
            let mut buf = [0u8; 512];
            match c.read(&mut buf) {
                Ok(0) => eof = true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            eof
        });
        String::from_utf8(got).unwrap()
    }

    /// Read one answer (up to and including its `ok`/`error:` line) from a client.
    fn read_answer(
        svc: &mut ConsoleService,
        host: &mut FakeHost,
        reader: &mut io::BufReader<UnixStream>,
    ) -> Vec<String> {
        let mut answer = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            pump(svc, host, || match reader.read_line(&mut line) {
                Ok(_) => line.ends_with('\n'),
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(e) => panic!("read: {e}"),
            });
            let l = line.trim_end_matches('\n').to_string();
            let last = l == "ok" || l.starts_with("error: ");
            answer.push(l);
            if last {
                return answer;
            }
        }
    }

    #[test]
    fn spec_errors_are_clear() {
        assert!(matches!(
            ConsoleIo::open("serial"),
            Err(ConsoleError::Spec(_))
        ));
        assert!(matches!(
            ConsoleIo::open("unix:"),
            Err(ConsoleError::Spec(_))
        ));
        let e = ConsoleIo::open("/nonexistent/ttyS9").err().unwrap();
        assert!(e.to_string().contains("/nonexistent/ttyS9"), "{e}");
        // A regular file is not a tty.
        let f = std::env::temp_dir().join(format!("console-test-{}-notatty", std::process::id()));
        std::fs::write(&f, b"").unwrap();
        assert!(matches!(
            ConsoleIo::open(f.to_str().unwrap()),
            Err(ConsoleError::Tty { .. })
        ));
        // A path that exists and is not a socket is left alone.
        let spec = format!("unix:{}", f.display());
        assert!(matches!(
            ConsoleIo::open(&spec),
            Err(ConsoleError::Socket { .. })
        ));
        assert!(f.exists());
        std::fs::remove_file(f).unwrap();
    }

    #[test]
    fn unix_socket_answers_commands_garbage_and_overlong_lines() {
        let path = sock_path("answers");
        // A stale socket file from an earlier run is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let mut svc = ConsoleService::open(&format!("unix:{}", path.display())).unwrap();
        let mut host = FakeHost::new();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let client = UnixStream::connect(&path).unwrap();
        client.set_nonblocking(true).unwrap();
        let mut writer = client.try_clone().unwrap();
        let mut reader = io::BufReader::new(client);

        writer.write_all(b"version\r\n").unwrap();
        assert_eq!(
            read_answer(&mut svc, &mut host, &mut reader),
            ["appliance 9.8.7", "ok"]
        );

        writer.write_all(b"\xff\xfe garbage \x01\n").unwrap();
        let a = read_answer(&mut svc, &mut host, &mut reader);
        assert_eq!(a.len(), 1);
        assert!(a[0].starts_with("error: "), "{a:?}");

        let mut long = vec![b'a'; 10_000];
        long.extend_from_slice(b"\nstats json\n");
        writer.write_all(&long).unwrap();
        assert_eq!(
            read_answer(&mut svc, &mut host, &mut reader),
            ["error: line too long (more than 1024 bytes)"]
        );
        let a = read_answer(&mut svc, &mut host, &mut reader);
        assert_eq!(a.len(), 2);
        let v: serde_json::Value = serde_json::from_str(&a[0]).unwrap();
        assert_eq!(v["console"]["commands"], 4);
        assert_eq!(v["console"]["errors"], 2);

        // Several commands in one write, split across polls of at most 8 lines.
        writer.write_all("uptime\n".repeat(20).as_bytes()).unwrap();
        for _ in 0..20 {
            assert_eq!(read_answer(&mut svc, &mut host, &mut reader)[1], "ok");
        }

        writer.write_all(b"reboot\n").unwrap();
        assert_eq!(
            read_answer(&mut svc, &mut host, &mut reader),
            ["rebooting", "ok"]
        );
        assert_eq!(host.power, Some(super::super::PowerAction::Reboot));
        assert!(svc.flush_for(Duration::from_secs(1)));

        drop(reader);
        drop(writer);
        drop(svc);
        assert!(!path.exists(), "socket file removed on drop");
    }

    #[test]
    fn unix_client_that_half_closes_gets_its_answers_then_a_new_client_is_served() {
        let path = sock_path("halfclose");
        let mut svc = ConsoleService::open(&format!("unix:{}", path.display())).unwrap();
        let mut host = FakeHost::new();
        for round in 0..2 {
            // No newline at the end: the last line still runs at EOF.
            let text = send_and_read_to_eof(&mut svc, &mut host, &path, b"version\nuptime");
            assert_eq!(
                text, "appliance 9.8.7\nok\nup 1d 01:01:01 (90061 s)\nok\n",
                "round {round}"
            );
        }
    }

    #[test]
    fn a_new_unix_client_replaces_the_old_one() {
        let path = sock_path("replace");
        let mut svc = ConsoleService::open(&format!("unix:{}", path.display())).unwrap();
        let mut host = FakeHost::new();
        let mut first = UnixStream::connect(&path).unwrap();
        svc.poll(&mut host, 8);
        assert!(svc.io().connected());
        let second = UnixStream::connect(&path).unwrap();
        svc.poll(&mut host, 8);
        first
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut text = String::new();
        first.read_to_string(&mut text).unwrap();
        assert_eq!(text, "console taken over by another client\n");
        second.set_nonblocking(true).unwrap();
        let mut w = second.try_clone().unwrap();
        let mut reader = io::BufReader::new(second);
        w.write_all(b"version\n").unwrap();
        assert_eq!(
            read_answer(&mut svc, &mut host, &mut reader),
            ["appliance 9.8.7", "ok"]
        );
    }

    #[test]
    fn a_paste_left_by_a_client_does_not_swallow_the_next_ones_commands() {
        let path = sock_path("paste");
        let mut svc = ConsoleService::open(&format!("unix:{}", path.display())).unwrap();
        let mut host = FakeHost::new();
        let mut first = UnixStream::connect(&path).unwrap();
        svc.poll(&mut host, 8);
        first.write_all(b"tls install\n-----BEGIN CERTIFICATE-----\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !svc.console().pasting() && Instant::now() < deadline {
            svc.poll(&mut host, 8);
        }
        assert!(svc.console().pasting());
        let second = UnixStream::connect(&path).unwrap();
        svc.poll(&mut host, 8);
        assert!(!svc.console().pasting(), "the paste went with its client");
        second.set_nonblocking(true).unwrap();
        let mut w = second.try_clone().unwrap();
        let mut reader = io::BufReader::new(second);
        w.write_all(b"version\n").unwrap();
        assert_eq!(read_answer(&mut svc, &mut host, &mut reader), ["appliance 9.8.7", "ok"]);
        assert!(host.installed.is_empty(), "nothing reached the host");
        drop(first);
        // A paste that stops coming is given up with an answer.
        svc.paste_idle = Duration::from_millis(50);
        w.write_all(b"tls install\n-----BEGIN CERTIFICATE-----\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !svc.console().pasting() && Instant::now() < deadline {
            svc.poll(&mut host, 8);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(read_answer(&mut svc, &mut host, &mut reader), ["error: tls install: no line for 0 s; nothing changed"]);
        assert!(!svc.console().pasting());
        w.write_all(b"version\n").unwrap();
        assert_eq!(read_answer(&mut svc, &mut host, &mut reader), ["appliance 9.8.7", "ok"]);
    }

    #[test]
    fn a_unix_client_that_never_reads_is_dropped_without_blocking() {
        let path = sock_path("slow");
        let mut svc = ConsoleService::open(&format!("unix:{}", path.display())).unwrap();
        let mut host = FakeHost::new();
        let mut c = UnixStream::connect(&path).unwrap();
        // Ask for ~100 KB answers over and over and never read them.
        c.write_all("media 1000\nconns 1000\n".repeat(200).as_bytes())
            .unwrap();
        svc.poll(&mut host, 8);
        assert!(svc.io().connected());
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut polls = 1;
        while svc.io().connected() {
            assert!(Instant::now() < deadline, "slow client was never dropped");
            svc.poll(&mut host, 8);
            polls += 1;
        }
        // It took several rounds of ~110 kB answers to pass the limit, and nothing is kept.
        assert!(polls > 2, "{polls}");
        assert_eq!(svc.io().pending_output(), 0);
        // The dropped client sees its connection end: EOF, or a reset since the console
        // closed with the client's unread commands still queued.
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = Vec::new();
        match c.read_to_end(&mut sink) {
            Ok(_) => assert!(sink.len() < 200 * 110_000),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        }
    }

    /// Runs as the child of the stdio tests (re-executed test binary): serve stdio until stdin
    /// ends, check that polling after EOF is quiet, and flush.
    fn stdio_child() {
        let mut svc = ConsoleService::open("stdio").unwrap();
        let mut host = FakeHost::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !svc.io().input_closed() {
            assert!(Instant::now() < deadline, "stdin never reached EOF");
            svc.poll(&mut host, 8);
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..100 {
            assert_eq!(svc.poll(&mut host, 8), 0);
        }
        assert!(svc.flush_for(Duration::from_secs(5)));
    }

    /// Run this test's binary again as [`stdio_child`] with `stdin`; returns its stdout.
    fn run_stdio_child(test: &str, stdin: std::process::Stdio, input: &[u8]) -> String {
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1", "-q"])
            .env("CONSOLE_STDIO_CHILD", "1")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(mut w) = child.stdin.take() {
            w.write_all(input).unwrap();
        } // Dropping the pipe is the EOF.
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("stdio child did not finish");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn stdio_answers_then_stops_reading_at_eof() {
        if std::env::var_os("CONSOLE_STDIO_CHILD").is_some() {
            return stdio_child();
        }
        let out = run_stdio_child(
            "console::transport::tests::stdio_answers_then_stops_reading_at_eof",
            std::process::Stdio::piped(),
            b"version\nbogus\r\nuptime",
        );
        assert!(
            out.contains("appliance 9.8.7\nok\nerror: unknown command 'bogus' (try 'help')\nup 1d 01:01:01 (90061 s)\nok\n"),
            "{out:?}"
        );
    }

    #[test]
    fn stdio_from_dev_null_is_quiet() {
        if std::env::var_os("CONSOLE_STDIO_CHILD").is_some() {
            return stdio_child();
        }
        let out = run_stdio_child(
            "console::transport::tests::stdio_from_dev_null_is_quiet",
            std::process::Stdio::null(),
            b"",
        );
        assert!(!out.contains("ok\n") && !out.contains("error"), "{out:?}");
    }

    #[test]
    fn echo_option_echoes_typed_input() {
        let path = sock_path("echo");
        let mut svc = ConsoleService::open(&format!("unix:{},echo", path.display())).unwrap();
        let mut host = FakeHost::new();
        assert_eq!(
            send_and_read_to_eof(&mut svc, &mut host, &path, b"versiox\x7fn\r\n"),
            "versiox\x08 \x08n\nappliance 9.8.7\nok\n"
        );
    }

    /// A pseudo-terminal pair: the master end plays the operator's terminal.
    fn open_pty() -> (File, String) {
        // SAFETY: plain libc calls on a descriptor we create and own; ptsname_r writes at most
        // buf.len() bytes into buf.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0, "posix_openpt: {}", io::Error::last_os_error());
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let mut buf = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(master, buf.as_mut_ptr(), buf.len()), 0);
            let name = std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_str()
                .unwrap()
                .to_string();
            (File::from_raw_fd(master), name)
        }
    }

    #[test]
    fn tty_is_raw_and_answers_with_crlf() {
        let (mut master, slave) = open_pty();
        let mut svc = ConsoleService::open(&slave).unwrap();
        let mut host = FakeHost::new();
        // Raw mode: no echo, CR ends a line (as a terminal's Enter key sends), no signals
        // from ^C.
        master.write_all(b"\x03version\r").unwrap();
        let mut got = Vec::new();
        // SAFETY: fcntl on our own open descriptor.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        pump(&mut svc, &mut host, || {
            let mut buf = [0u8; 256];
            match master.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            got.ends_with(b"ok\r\n") || got.ends_with(b"\n") && got.starts_with(b"error")
        });
        // ^C is not a signal in raw mode; it reaches the interpreter as part of the word.
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "error: unknown command '\\u{3}version' (try 'help')\r\n"
        );
        master.write_all(b"uptime\r").unwrap();
        let mut got = Vec::new();
        pump(&mut svc, &mut host, || {
            let mut buf = [0u8; 256];
            if let Ok(n) = master.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            got.ends_with(b"ok\r\n")
        });
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "up 1d 01:01:01 (90061 s)\r\nok\r\n"
        );
    }
}
