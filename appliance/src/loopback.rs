//! An in-process HTTP client on the same network stack, and a harness that runs one server
//! pipeline and its clients over the simulated link: deterministic loss tests and the
//! benchmark use it, so no mock stands in for either end.
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use drivers::nic::sim::{pair, SimClock, SimConfig, SimNic};
use drivers::nic::{FrameBuf, Nic};
use drivers::storage::Storage;
use sha2::{Digest, Sha256};

use crate::net::iface::{App, CloseReason, IfaceConfig, Parts, Stack};
use crate::net::tcp::table::{ConnId, ConnKey};
use crate::net::tcp::{Ready, TcpConn};
use crate::net::{Instant, MS};
use crate::server::http_app::HttpApp;
use crate::server::pipeline::{Pipeline, RX_BURST, TX_BUDGET};
use crate::volume::Library;

/// The result of one client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub status: u16,
    /// Body bytes (emulated TLS: the records' plaintext).
    pub body_len: u64,
    pub sha256: [u8; 32],
    /// The response arrived whole (Content-Length bytes; emulated TLS: every record opened,
    /// none left half).
    pub complete: bool,
    /// The body came as emulated TLS records (`X-Tls-Emulation`), opened with the dummy key.
    pub emulated: bool,
    /// The caller's tag for the request ([`FetchRequest::tag`]).
    pub tag: u64,
    /// The client gave up on purpose ([`FetchRequest::abort`]) before the end.
    pub aborted: bool,
    /// The server answered at all: sent bytes, or acknowledged ours. False when the link
    /// lost every copy of the handshake (or of the request and its ACKs) until the client
    /// gave up.
    pub reached_server: bool,
}

/// How a client walks away from a response mid-transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    /// Reset the connection.
    Rst,
    /// Close our side (TLS: close_notify first) and ignore the rest of the response.
    Fin,
}

/// One GET to open with [`SimHarness::open_fetch`].
#[derive(Clone, Debug)]
pub struct FetchRequest {
    pub path: String,
    /// Inclusive byte range.
    pub range: Option<(u64, u64)>,
    pub tls: bool,
    /// Copied to the [`Fetch`].
    pub tag: u64,
    /// Give up this way once this many body bytes arrived.
    pub abort: Option<(u64, Abort)>,
}

/// One client connection: a GET (over TLS with rustls, or plain), then the response head and
/// a digest of the body.
pub struct ClientConn {
    /// Every byte this connection sends, from stream offset 0 (the request, or TLS records).
    out: Vec<u8>,
    tls: Option<Box<rustls::ClientConnection>>,
    head: Vec<u8>,
    status: u16,
    content_length: Option<u64>,
    /// Body bytes as received (emulated TLS: records), measured against Content-Length.
    received: u64,
    /// Body plaintext bytes (hashed).
    plain_len: u64,
    /// Emulated TLS: opens the body's records; `open_failed` once one did not open.
    opener: Option<Box<crate::tls::emulation::BodyOpener>>,
    open_failed: bool,
    hasher: Sha256,
    done: bool,
    tag: u64,
    abort: Option<(u64, Abort)>,
    aborted: bool,
    /// The server sent bytes or acknowledged ours ([`Fetch::reached_server`]).
    reached_server: bool,
    /// Keep the connection open (and quiet) once the response arrived.
    keep_alive: bool,
}

impl ClientConn {
    pub fn get(path: &str, range: Option<(u64, u64)>) -> ClientConn {
        ClientConn::raw(&request_bytes(path, range, false))
    }

    /// A GET that keeps the connection open, quiet, after the response.
    pub fn get_keep_alive(path: &str, range: Option<(u64, u64)>) -> ClientConn {
        let mut c = ClientConn::raw(&request_bytes(path, range, true));
        c.keep_alive = true;
        c
    }

    /// As [`ClientConn::get_keep_alive`], over TLS.
    pub fn get_keep_alive_tls(path: &str, range: Option<(u64, u64)>, config: Arc<rustls::ClientConfig>, name: &str) -> Option<ClientConn> {
        let mut c = ClientConn::idle_tls(config, name)?;
        c.keep_alive = true;
        let tls = c.tls.as_mut()?;
        tls.writer().write_all(&request_bytes(path, range, true)).ok()?;
        write_tls_out(tls, &mut c.out).then_some(())?;
        Some(c)
    }
}

/// A GET head; without `keep_alive` it asks the server to close after the response.
fn request_bytes(path: &str, range: Option<(u64, u64)>, keep_alive: bool) -> Vec<u8> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: appliance\r\n");
    if !keep_alive {
        request.push_str("Connection: close\r\n");
    }
    if let Some((a, b)) = range {
        request.push_str(&format!("Range: bytes={a}-{b}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

impl ClientConn {
    /// A connection that sends exactly `bytes` (a partial or malformed head, or nothing) and
    /// then waits.
    pub fn raw(bytes: &[u8]) -> ClientConn {
        ClientConn {
            out: bytes.to_vec(),
            tls: None,
            head: Vec::new(),
            status: 0,
            content_length: None,
            received: 0,
            plain_len: 0,
            opener: None,
            open_failed: false,
            hasher: Sha256::new(),
            done: false,
            tag: 0,
            abort: None,
            aborted: false,
            reached_server: false,
            keep_alive: false,
        }
    }

    /// A connection that sends nothing.
    pub fn idle() -> ClientConn {
        ClientConn::raw(&[])
    }

    /// A TLS connection that completes its handshake and then sends nothing.
    pub fn idle_tls(config: Arc<rustls::ClientConfig>, name: &str) -> Option<ClientConn> {
        let mut c = ClientConn::idle();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).ok()?;
        let mut tls = rustls::ClientConnection::new(config, server_name).ok()?;
        write_tls_out(&mut tls, &mut c.out).then_some(())?;
        c.tls = Some(Box::new(tls));
        Some(c)
    }

    /// The same GET over TLS: the request waits in rustls until the handshake is done.
    pub fn get_tls(path: &str, range: Option<(u64, u64)>, config: Arc<rustls::ClientConfig>, name: &str) -> Option<ClientConn> {
        let request = ClientConn::get(path, range).out;
        let mut c = ClientConn::idle_tls(config, name)?;
        let tls = c.tls.as_mut()?;
        tls.writer().write_all(&request).ok()?;
        write_tls_out(tls, &mut c.out).then_some(())?;
        Some(c)
    }

    fn finish(&mut self) -> Fetch {
        self.done = true;
        let digest = std::mem::take(&mut self.hasher).finalize();
        let opened = !self.open_failed && self.opener.as_ref().is_none_or(|o| o.at_boundary());
        Fetch {
            status: self.status,
            body_len: self.plain_len,
            sha256: digest.into(),
            complete: self.content_length == Some(self.received) && opened,
            emulated: self.opener.is_some(),
            tag: self.tag,
            aborted: self.aborted,
            reached_server: self.reached_server,
        }
    }
}

/// The client side's application: collects finished fetches.
pub struct ClientApp {
    pub fetches: Vec<Fetch>,
    /// Receive window of every client connection, in bytes (64 KiB unless the client's
    /// stack announces a window scale: `IfaceConfig::tcp.rcv_window_shift`).
    pub rx_room: usize,
    /// Body bytes received by all connections (emulated TLS: plaintext opened).
    pub body_bytes: u64,
    /// TLS errors seen by the client (bad records, alerts).
    pub tls_failures: u64,
    /// `(tag, after, window)`: once `after` body bytes arrived, the connection of fetch `tag`
    /// announces `window` bytes (0: it stops reading; a few: it reads a few bytes at a time),
    /// until its entry is taken out.
    pub stalling: Vec<(u64, u64, usize)>,
}

/// Status, Content-Length and whether the body is emulated TLS.
fn parse_head(head: &[u8]) -> Option<(u16, Option<u64>, bool)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let fields = || lines.clone().filter_map(|l| l.split_once(':'));
    let len = fields().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.trim().parse().ok());
    let emulated = fields().any(|(k, _)| k.eq_ignore_ascii_case(crate::tls::emulation::HEADER_NAME));
    Some((status, len, emulated))
}

impl Default for ClientApp {
    fn default() -> ClientApp {
        ClientApp { fetches: Vec::new(), rx_room: 65535, body_bytes: 0, tls_failures: 0, stalling: Vec::new() }
    }
}

impl ClientApp {
    /// Body bytes as received: hashed, or (emulated TLS) opened and their plaintext hashed.
    fn body(&mut self, c: &mut ClientConn, data: &[u8]) {
        c.received += data.len() as u64;
        let before = c.plain_len;
        let ClientConn { opener, hasher, plain_len, open_failed, .. } = c;
        match opener {
            None => {
                hasher.update(data);
                *plain_len += data.len() as u64;
            }
            Some(_) if *open_failed => {}
            Some(o) => {
                let opened = o.feed(data, |p| {
                    hasher.update(p);
                    *plain_len += p.len() as u64;
                });
                if opened.is_err() {
                    *open_failed = true;
                    self.tls_failures += 1;
                }
            }
        }
        self.body_bytes += c.plain_len - before;
    }

    /// Response bytes (TLS: decrypted) in order.
    fn consume(&mut self, c: &mut ClientConn, tcp: &mut TcpConn, mut data: &[u8]) {
        if c.done {
            return;
        }
        if c.content_length.is_none() && c.status == 0 {
            let before = c.head.len();
            c.head.extend_from_slice(data);
            let Some(end) = c.head.windows(4).position(|w| w == b"\r\n\r\n") else { return };
            let (status, len, emulated) = parse_head(&c.head[..end + 4]).unwrap_or((0, Some(0), false));
            c.status = status;
            c.content_length = len;
            if emulated {
                match crate::tls::emulation::BodyOpener::new() {
                    Ok(o) => c.opener = Some(Box::new(o)),
                    Err(_) => c.open_failed = true,
                }
            }
            data = &data[(end + 4 - before)..];
        }
        if let Some((after, how)) = c.abort {
            if c.received + data.len() as u64 >= after && Some(c.received + data.len() as u64) < c.content_length {
                let keep = (after.saturating_sub(c.received) as usize).min(data.len());
                self.body(c, &data[..keep]);
                c.aborted = true;
                let f = c.finish();
                self.fetches.push(f);
                match how {
                    Abort::Rst => tcp.abort(),
                    Abort::Fin => close(c, tcp),
                }
                return;
            }
        }
        self.body(c, data);
        if Some(c.received) >= c.content_length {
            let f = c.finish();
            self.fetches.push(f);
            if c.keep_alive {
                return; // open and quiet: an idle keep-alive connection
            }
            close(c, tcp);
        }
    }
}

/// Close a client connection: TLS close_notify first (flushed into its stream), then FIN.
fn close(c: &mut ClientConn, tcp: &mut TcpConn) {
    if let Some(tls) = &mut c.tls {
        tls.send_close_notify();
        write_tls_out(tls, &mut c.out);
        tcp.set_stream_len(c.out.len() as u64);
    }
    tcp.close();
}

/// Append every record the client session has to send to `out`; whether all went.
fn write_tls_out(tls: &mut rustls::ClientConnection, out: &mut Vec<u8>) -> bool {
    while tls.wants_write() {
        if tls.write_tls(out).is_err() {
            return false;
        }
    }
    true
}

impl App for ClientApp {
    type Conn = ClientConn;

    fn accept(&mut self, _now: Instant, _port: u16) -> Option<ClientConn> {
        None
    }

    fn rx_room(&self, c: &ClientConn) -> usize {
        match self.stalling.iter().find(|&&(tag, after, _)| tag == c.tag && c.received >= after) {
            Some(&(_, _, window)) => window,
            None => self.rx_room,
        }
    }

    fn on_data(&mut self, _now: Instant, _id: ConnId, c: &mut ClientConn, tcp: &mut TcpConn, data: &[u8]) {
        c.reached_server = true;
        if c.done {
            // Finished or walked away: the rest is not read (a FIN-aborted client still ACKs).
            return;
        }
        let Some(mut tls) = c.tls.take() else {
            self.consume(c, tcp, data);
            return;
        };
        let mut rd = data;
        let mut plain = [0u8; 16 * 1024];
        let mut failed = false;
        while !rd.is_empty() && !failed {
            match tls.read_tls(&mut rd) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => failed = true,
            }
            if tls.process_new_packets().is_err() {
                failed = true;
            }
            loop {
                match tls.reader().read(&mut plain) {
                    Ok(0) => break,
                    Ok(n) => self.consume(c, tcp, &plain[..n]),
                    Err(_) => break, // WouldBlock: no more plaintext for now
                }
            }
        }
        if failed {
            self.tls_failures += 1;
        }
        if !c.done && !failed {
            write_tls_out(&mut tls, &mut c.out);
            tcp.set_stream_len(c.out.len() as u64);
        }
        c.tls = Some(tls);
        if failed && !c.done {
            let f = c.finish();
            self.fetches.push(f);
            tcp.abort();
        }
    }

    fn on_peer_fin(&mut self, _now: Instant, c: &mut ClientConn, tcp: &mut TcpConn) {
        if !c.done {
            let f = c.finish();
            self.fetches.push(f);
        }
        tcp.close();
    }

    fn on_acked(&mut self, _now: Instant, _id: ConnId, c: &mut ClientConn, _tcp: &mut TcpConn, to: u64) {
        c.reached_server |= to > 0;
    }

    fn on_rto(&mut self, _c: &mut ClientConn) {}

    /// Gives up on the fetch (incomplete) and closes. Done before the close, so that data
    /// still arriving (TLS records from a server that kept sending) writes nothing more:
    /// the stream cannot grow once our FIN is queued.
    fn on_idle(&mut self, _now: Instant, c: &mut ClientConn, tcp: &mut TcpConn) {
        if !c.done {
            let f = c.finish();
            self.fetches.push(f);
        }
        tcp.close();
    }

    fn on_closed(&mut self, mut c: ClientConn, _reason: CloseReason) {
        if !c.done {
            let f = c.finish();
            self.fetches.push(f);
        }
    }

    fn available(&mut self, _now: Instant, _id: ConnId, c: &mut ClientConn, off: u64, max: usize, _resend: bool) -> Ready {
        Ready::now((c.out.len() as u64).saturating_sub(off).min(max as u64) as usize)
    }

    fn payload<'a>(&'a self, c: &'a ClientConn, off: u64, len: usize, parts: &mut Parts<'a>) {
        parts.push(&c.out[off as usize..off as usize + len]);
    }
}

pub const SERVER_IP: [u8; 4] = [10, 99, 0, 1];
pub const CLIENT_IP: [u8; 4] = [10, 99, 0, 2];

/// A server pipeline and a client stack joined by a simulated link.
pub struct SimHarness<S: Storage> {
    pub clock: SimClock,
    pub server: Pipeline<SimNic, S>,
    pub client_nic: SimNic,
    pub client: Stack<ClientConn>,
    pub client_app: ClientApp,
    rx: Vec<<SimNic as Nic>::Rx>,
    next_port: u16,
    /// Wall-clock nanoseconds spent in server loop iterations that did work (benchmark).
    pub server_ns: u64,
    /// Of the server's busy iterations, nanoseconds spent in device emulation (not in
    /// `server_ns`); counted once the devices are timed (`SimNic::time_device`,
    /// `FileStorage::time_device`).
    pub server_device_ns: u64,
    /// Of `server_ns` and `server_allocs`: what TLS handshake steps (rustls) took.
    pub server_handshake_ns: u64,
    pub server_handshake_allocs: u64,
    /// Of `server_ns`: sealing body records ([`crate::accounting::sealing`]).
    pub server_sealing_ns: u64,
    /// Heap allocations made inside the server loop, and the bytes they still hold (counted
    /// only when the process's global allocator is [`crate::accounting::CountingAlloc`]).
    pub server_allocs: u64,
    pub server_heap_bytes: i64,
    /// Payload bytes the server loop's CPU read or wrote ([`crate::accounting`]).
    pub server_touched: u64,
    /// Wall-clock nanoseconds spent in the in-process clients' part of [`step`](Self::step)
    /// (receiving, TLS, checking bodies, sending): the benchmark's clock leaves them out.
    pub client_ns: u64,
    /// Heap bytes the server's stack reserved at start-up for its connection table, timers
    /// and queues (counted as `server_heap_bytes` is).
    pub server_stack_bytes: i64,
    client_tls: Option<Arc<rustls::ClientConfig>>,
}

/// Port the harness serves HTTPS on once [`SimHarness::enable_tls`] was called.
pub const HTTPS_PORT: u16 = 443;
const TEST_NAME: &str = "appliance.test";

/// A throw-away CA and server certificate: the server's configuration and a client
/// configuration that trusts it (for tests and the benchmark).
pub fn test_tls_configs() -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), String> {
    test_tls_configs_for(rustls::DEFAULT_VERSIONS)
}

/// [`test_tls_configs`], the client offering only `versions` (TLS 1.2 alone, say).
pub fn test_tls_configs_for(versions: &[&'static rustls::SupportedProtocolVersion]) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), String> {
    let (certs, key, client) = test_credentials(versions)?;
    let server = crate::tls::handshake::server_config(certs, key).map_err(|e| e.to_string())?;
    Ok((server, client))
}

/// A throw-away CA's chain (leaf for the test name, then the CA) and the leaf's key, and a
/// client configuration that trusts that CA alone, offering `versions`.
#[allow(clippy::type_complexity)]
pub fn test_credentials(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>, Arc<rustls::ClientConfig>), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|x| e(&x))?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|x| e(&x))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).map_err(|x| e(&x))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|x| e(&x))?;
    let leaf = rcgen::CertificateParams::new(vec![TEST_NAME.to_string()])
        .map_err(|x| e(&x))?
        .signed_by(&key, &ca, &ca_key)
        .map_err(|x| e(&x))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).map_err(|x| e(&x))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|x| e(&x))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((vec![leaf.der().clone(), ca.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()), Arc::new(client)))
}

impl<S: Storage> SimHarness<S> {
    /// `to_client` and `to_server` are the link's two directions.
    pub fn new(storage: S, volume: impl Into<Arc<Library>>, to_client: SimConfig, to_server: SimConfig, buffers: usize) -> Self {
        Self::with_limits(storage, volume, to_client, to_server, buffers, 65536, 65536)
    }

    /// As [`SimHarness::new`] with the server's connection table sized for `max_conns` (the
    /// client's twice that, at least 64) and `syn_backlog` half-open connections before SYN
    /// cookies: small tables make a harness cheap to build (the fuzz targets build one per
    /// input, the simulation one per seed).
    pub fn with_limits(storage: S, volume: impl Into<Arc<Library>>, to_client: SimConfig, to_server: SimConfig, buffers: usize, max_conns: usize, syn_backlog: usize) -> Self {
        // The rounds' timers: their clock is chosen (and its rate measured) once a process.
        drivers::cycles::init();
        let clock = SimClock::new();
        let (server_nic, client_nic) = pair(to_client, to_server, clock.clone());
        let mut scfg = IfaceConfig::new(server_nic.link().mac, SERVER_IP, 24);
        scfg.use_link(&server_nic.link());
        scfg.listen_ports = vec![80];
        scfg.max_conns = max_conns;
        scfg.syn_backlog = syn_backlog;
        let heap0 = crate::accounting::allocations().1;
        let server_stack = crate::accounting::counting(|| Stack::new(scfg, 0));
        let server_stack_bytes = crate::accounting::allocations().1 - heap0;
        let app = HttpApp::new(storage, volume, buffers, max_conns).expect("storage pool");
        let server = Pipeline::new(server_nic, server_stack, app);
        let mut ccfg = IfaceConfig::new(client_nic.link().mac, CLIENT_IP, 24);
        ccfg.use_link(&client_nic.link());
        // Room for more clients than the server holds: tests fill the server's table and
        // then connect once more.
        ccfg.max_conns = (2 * max_conns).clamp(64, 65536);
        let client = Stack::new(ccfg, 0);
        SimHarness {
            clock,
            server,
            client_nic,
            client,
            client_app: ClientApp::default(),
            rx: Vec::with_capacity(RX_BURST),
            next_port: 10000,
            server_ns: 0,
            client_ns: 0,
            server_device_ns: 0,
            server_handshake_ns: 0,
            server_handshake_allocs: 0,
            server_sealing_ns: 0,
            server_allocs: 0,
            server_heap_bytes: 0,
            server_touched: 0,
            server_stack_bytes,
            client_tls: None,
        }
    }

    /// Serve HTTPS on [`HTTPS_PORT`]; [`SimHarness::start_fetch_tls`] then trusts it.
    pub fn enable_tls(&mut self, server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) {
        self.server.app.enable_tls(server, HTTPS_PORT);
        self.server.stack.cfg.listen_ports.push(HTTPS_PORT);
        self.client_tls = Some(client);
    }

    /// The clients' TLS configuration from now on (which CA they trust, their tickets).
    pub fn set_client_tls(&mut self, client: Arc<rustls::ClientConfig>) {
        self.client_tls = Some(client);
    }

    /// Open a connection that asks for `path` (a range of it) and keeps the connection open
    /// and quiet after the response: an idle keep-alive connection.
    pub fn start_keep_alive(&mut self, tls: bool, path: &str, range: Option<(u64, u64)>) -> bool {
        let c = if tls {
            let Some(cfg) = self.client_tls.clone() else { return false };
            let Some(c) = ClientConn::get_keep_alive_tls(path, range, cfg, TEST_NAME) else { return false };
            c
        } else {
            ClientConn::get_keep_alive(path, range)
        };
        self.open(c, if tls { HTTPS_PORT } else { 80 })
    }

    /// Open a connection that sends nothing (over TLS: completes the handshake, then sends
    /// nothing): an idle client, for measuring what an idle connection costs the server.
    pub fn start_idle(&mut self, tls: bool) -> bool {
        let c = if tls {
            let Some(cfg) = self.client_tls.clone() else { return false };
            let Some(c) = ClientConn::idle_tls(cfg, TEST_NAME) else { return false };
            c
        } else {
            ClientConn::idle()
        };
        self.open(c, if tls { HTTPS_PORT } else { 80 })
    }

    /// As [`SimHarness::start_fetch`], over TLS.
    pub fn start_fetch_tls(&mut self, path: &str, range: Option<(u64, u64)>) -> bool {
        let Some(cfg) = self.client_tls.clone() else { return false };
        let Some(c) = ClientConn::get_tls(path, range, cfg, TEST_NAME) else { return false };
        self.open(c, HTTPS_PORT)
    }

    /// Open a connection for `req` (HTTP, or HTTPS once [`SimHarness::enable_tls`] was called).
    pub fn open_fetch(&mut self, req: &FetchRequest) -> bool {
        let (mut c, port) = if req.tls {
            let Some(cfg) = self.client_tls.clone() else { return false };
            let Some(c) = ClientConn::get_tls(&req.path, req.range, cfg, TEST_NAME) else { return false };
            (c, HTTPS_PORT)
        } else {
            (ClientConn::get(&req.path, req.range), 80)
        };
        c.tag = req.tag;
        c.abort = req.abort;
        self.open(c, port)
    }

    pub fn now(&self) -> Instant {
        self.clock.now().as_nanos() as u64
    }

    /// Open a connection fetching `path` (optionally a byte range). Resolves the server's MAC
    /// through ARP first if needed.
    pub fn start_fetch(&mut self, path: &str, range: Option<(u64, u64)>) -> bool {
        self.open(ClientConn::get(path, range), 80)
    }

    /// Open a connection that sends `bytes` to port 80 and waits (see [`ClientConn::raw`]).
    /// Returns its client-side port.
    pub fn start_raw(&mut self, bytes: &[u8]) -> Option<u16> {
        self.start_raw_to(80, bytes)
    }

    /// As [`SimHarness::start_raw`], to the server's `port` (e.g. plain bytes to HTTPS).
    pub fn start_raw_to(&mut self, port: u16, bytes: &[u8]) -> Option<u16> {
        self.open(ClientConn::raw(bytes), port).then_some(self.next_port)
    }

    /// Send `bytes` more on the client connection from local port `port`.
    pub fn send_more(&mut self, port: u16, bytes: &[u8]) -> bool {
        self.with_client_on(port, |c| {
            c.out.extend_from_slice(bytes);
            true
        })
    }

    /// Let `add` append to the stream of the client connection from local port `port`, and
    /// send what it added; whether there was such a connection and `add` succeeded.
    fn with_client_on(&mut self, port: u16, add: impl FnOnce(&mut ClientConn) -> bool) -> bool {
        let Some(id) = self.client.connections().find(|(_, k, _)| k.local_port == port).map(|(id, _, _)| id) else { return false };
        let Some(e) = self.client.get_mut(id) else { return false };
        if !add(&mut e.app) {
            return false;
        }
        let len = e.app.out.len() as u64;
        e.tcp.set_stream_len(len);
        self.client.wake(id);
        true
    }

    /// Ask for `path` again on the finished keep-alive connection from local port `port`
    /// (over TLS through its client session): its response is a fetch of its own.
    pub fn request_again(&mut self, port: u16, path: &str, range: Option<(u64, u64)>) -> bool {
        self.with_client_on(port, |c| {
            if !c.done || !c.keep_alive {
                return false;
            }
            c.done = false;
            c.status = 0;
            c.head.clear();
            c.content_length = None;
            c.received = 0;
            c.plain_len = 0;
            c.hasher = Sha256::new();
            let request = request_bytes(path, range, true);
            match &mut c.tls {
                Some(tls) => tls.writer().write_all(&request).is_ok() && write_tls_out(tls, &mut c.out),
                None => {
                    c.out.extend_from_slice(&request);
                    true
                }
            }
        })
    }

    /// The TLS client on local port `port` updates its traffic keys (a KeyUpdate record
    /// goes out now, whatever the connection is doing); whether it could.
    #[cfg(test)]
    pub fn client_key_update(&mut self, port: u16) -> bool {
        self.with_client_on(port, |c| match &mut c.tls {
            Some(tls) => tls.refresh_traffic_keys().is_ok() && write_tls_out(tls, &mut c.out),
            None => false,
        })
    }

    /// Run both loops for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now() + d.as_nanos() as u64;
        while self.now() < end {
            self.step(true);
        }
    }

    fn open(&mut self, c: ClientConn, port: u16) -> bool {
        let give_up = self.now() + 10_000 * MS;
        let mac = loop {
            let now = self.now();
            if let Some(mac) = self.client.resolve(now, SERVER_IP, &mut self.client_nic) {
                break mac;
            }
            if now > give_up {
                return false;
            }
            self.step(true);
        };
        self.next_port = self.next_port.wrapping_add(1).max(10000);
        let len = c.out.len() as u64;
        let now = self.now();
        let Some(id) = self.client.connect(now, ConnKey { remote_ip: SERVER_IP, remote_port: port, local_port: self.next_port }, mac, c, &mut self.client_app) else { return false };
        if let Some(e) = self.client.get_mut(id) {
            e.tcp.set_stream_len(len);
        }
        self.client.wake(id);
        true
    }

    /// One round of both loops. With `advance`, an idle round moves the virtual clock to
    /// the next frame (or 1 ms). Returns whether anything happened.
    pub fn step(&mut self, advance: bool) -> bool {
        let now = self.now();
        // The cheap clock (the devices' timings use it too): what reading it costs lands in
        // the figures, at every round.
        let t0 = drivers::cycles::now();
        let device0 = self.server.nic.device_ns() + self.server.app.storage.device_ns();
        let (allocs0, heap0) = crate::accounting::allocations();
        let touched0 = crate::accounting::touched();
        let (hs_ns0, hs_allocs0) = crate::accounting::handshake_work();
        let sealing0 = crate::accounting::sealing_ns();
        let server = &mut self.server;
        let turn = crate::accounting::counting(|| server.poll(now));
        let (allocs1, heap1) = crate::accounting::allocations();
        self.server_allocs += allocs1 - allocs0;
        self.server_heap_bytes += heap1 - heap0;
        self.server_touched += crate::accounting::touched() - touched0;
        let (hs_ns1, hs_allocs1) = crate::accounting::handshake_work();
        self.server_handshake_ns += hs_ns1 - hs_ns0;
        self.server_handshake_allocs += hs_allocs1 - hs_allocs0;
        // Server work only: an iteration that found nothing to do is waiting on the client,
        // or on the drive when reads are under way. What the emulated devices did (copying
        // frames onto the link, reading the file) is kept apart: on hardware the NIC's and
        // the drive's DMA do it.
        if turn.worked {
            let device = self.server.nic.device_ns() + self.server.app.storage.device_ns() - device0;
            self.server_ns += drivers::cycles::ns_since(t0).saturating_sub(device);
            self.server_device_ns += device;
            self.server_sealing_ns += crate::accounting::sealing_ns() - sealing0;
        }
        let t1 = drivers::cycles::now();
        let got = self.client_nic.rx_burst(&mut self.rx, RX_BURST);
        for f in self.rx.drain(..) {
            self.client.on_frame(now, f.bytes(), f.rx_checksums(), &mut self.client_app, &mut self.client_nic);
        }
        self.client.poll_timers(now, &mut self.client_app);
        let sent = self.client.poll_tx(now, &mut self.client_app, &mut self.client_nic, TX_BUDGET);
        self.client_nic.tx_flush();
        self.client_ns += drivers::cycles::ns_since(t1);
        // Virtual time stands still while reads are under way, as they take no virtual time.
        let busy = turn.busy() || got > 0 || sent > 0;
        if advance && !busy {
            let due = [self.client_nic.next_due(), self.server.nic.next_due()].into_iter().flatten().min();
            let next = due.map_or(now + MS, |d| (d.as_nanos() as u64).clamp(now + 1, now + MS));
            self.clock.set(Duration::from_nanos(next));
        }
        busy
    }

    /// Run until `done` holds or `limit` of virtual time passed; whether it holds. Bounded
    /// by virtual time, not by a count of rounds: the clock stands still while reads are
    /// under way, and a loaded machine takes more rounds to finish the same reads.
    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let end = self.now() + limit.as_nanos() as u64;
        while !done(self) {
            if self.now() > end {
                return false;
            }
            self.step(true);
        }
        true
    }

    /// Run until `n` fetches finished or `limit` of virtual time passed.
    pub fn run_until_fetches(&mut self, n: usize, limit: Duration) -> bool {
        self.run_until(limit, |h| h.client_app.fetches.len() >= n)
    }
}

/// A volume of `files` (path relative to the tree, content) in a temporary directory, for
/// tests: the directory (the volume file is `media.vol` in it), the volume opened, its index.
#[cfg(test)]
pub(crate) fn volume_of(files: &[(&str, &[u8])]) -> (tempfile::TempDir, drivers::storage::FileStorage, crate::volume::Volume) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    for (rel, data) in files {
        let path = tree.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, data).expect("write");
    }
    let vol = dir.path().join("media.vol");
    crate::volume::pack(&tree, &vol).expect("pack");
    let mut storage = drivers::storage::FileStorage::open(&vol).expect("open");
    let volume = crate::volume::load(&mut storage).expect("load");
    (dir, storage, volume)
}

/// A volume of two small files (`/index.html`, `/a.txt`) in a temporary directory, for tests.
#[cfg(test)]
pub(crate) fn tiny_volume() -> (tempfile::TempDir, drivers::storage::FileStorage, crate::volume::Volume) {
    volume_of(&[("index.html", b"<html>hello</html>\n"), ("a.txt", &[b'a'; 100_000])])
}

#[cfg(test)]
mod tests {
    use super::*;
    use drivers::storage::FileStorage;

    /// Found by the `net_frames` fuzz target (fuzz/regressions/net_frames/client-idle-tls):
    /// the client's idle timeout closed a TLS fetch, then records still arriving from the
    /// server made it grow its stream after its FIN was queued (a debug assertion in TCP).
    #[test]
    fn a_tls_client_that_timed_out_writes_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("big.ts"), vec![7u8; 400_000]).unwrap();
        let vol = dir.path().join("media.vol");
        crate::volume::pack(&tree, &vol).unwrap();
        let mut storage = FileStorage::open(&vol).unwrap();
        let volume = crate::volume::load(&mut storage).unwrap();
        let mut h = SimHarness::with_limits(storage, volume, SimConfig::default(), SimConfig::default(), 4, 16, 16);
        let (server, client) = test_tls_configs().unwrap();
        h.enable_tls(server, client);
        // The server stays patient; only the client gives up.
        h.server.stack.cfg.idle_timeout = 3600 * crate::net::SEC;
        assert!(h.start_fetch_tls("/big.ts", None));
        // Handshake done and the response under way, then a long silence on the client's
        // side: its idle timeout fires while the server still has records to send.
        while h.client_app.body_bytes == 0 {
            assert!(h.now() < 10 * crate::net::SEC, "no response");
            h.step(true);
        }
        h.clock.advance(Duration::from_secs(61));
        h.client.poll_timers(h.now(), &mut h.client_app);
        assert!(h.run_until_fetches(1, Duration::from_secs(600)));
        for _ in 0..10_000 {
            h.step(true);
        }
        assert!(!h.client_app.fetches[0].complete, "the fetch was given up");
    }
}
