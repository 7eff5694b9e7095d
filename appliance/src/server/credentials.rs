//! What HTTPS serves with: the certificate chain and private key from the files given at start
//! (`--tls-cert`, `--tls-key`) or installed from the console (`tls install`, kept in the
//! configuration partition, which then wins at start), made into a rustls server
//! configuration. Replacing it while serving keeps the session-ticket keys, so clients that
//! come back still resume. Runs at start and on the console's core, never on the packet path.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

use crate::boot::config::ConfigStore;
use crate::tls::certs::{self, CertSummary, EXPIRY_WARNING_DAYS};
use crate::tls::handshake;
use crate::tls::TlsError;

/// Where the certificate in use came from, as `tls` says it.
pub const FROM_CONSOLE: &str = "installed from the console";

/// The HTTPS configuration in force.
#[derive(Clone, Debug)]
pub struct TlsState {
    pub config: Arc<ServerConfig>,
    /// The chain as `tls` describes it, leaf first (empty if the files did not parse as X.509
    /// here, though rustls took them).
    pub chain: Vec<CertSummary>,
    /// "files CERT, KEY" or [`FROM_CONSOLE`] (with where it is kept).
    pub source: String,
    /// Installed from the console (`tls install`), not the files given at start.
    pub installed: bool,
    pub port: u16,
    pub tickets: bool,
    /// The files given at start, which `tls remove` goes back to.
    pub files: Option<(PathBuf, PathBuf)>,
}

/// The configuration to start with: the credentials stored by `tls install` if the store holds
/// usable ones, else the files, else none (HTTPS off). Bad files are an error (serve refuses to
/// start); stored credentials that no longer load are logged and the files serve instead.
/// A certificate past or near its end is served, with a warning in the log.
pub fn at_start(
    files: Option<(&Path, &Path)>,
    store: Option<&ConfigStore>,
    port: u16,
    tickets: bool,
    now: i64,
) -> Result<Option<TlsState>, TlsError> {
    let files_owned = files.map(|(c, k)| (c.to_path_buf(), k.to_path_buf()));
    let stored = match store.map(ConfigStore::load_credentials).transpose() {
        Ok(stored) => stored.flatten(),
        Err(e) => {
            log::error!("tls: cannot read the installed certificate: {e}");
            None
        }
    };
    if let Some(pem) = stored {
        match certs::from_pem(&pem).map_err(|e| e.to_string()).and_then(|c| {
            let config = handshake::server_config(c.certs, c.key).map_err(|e| e.to_string())?;
            Ok((config, c.chain))
        }) {
            Ok((config, chain)) => {
                let state = TlsState {
                    config: tickets_as_asked(config, tickets),
                    chain,
                    source: format!("{FROM_CONSOLE} (configuration partition)"),
                    installed: true,
                    port,
                    tickets,
                    files: files_owned,
                };
                log_certificate(&state, now);
                return Ok(Some(state));
            }
            Err(e) => log::error!(
                "tls: the certificate installed from the console cannot be used ({e}); {}",
                if files.is_some() { "serving the certificate files" } else { "HTTPS is off" }
            ),
        }
    }
    let Some((cert, key)) = files else { return Ok(None) };
    let (config, chain) = load_files(cert, key)?;
    let state = from_files(tickets_as_asked(config, tickets), chain, cert, key, port, tickets);
    log_certificate(&state, now);
    Ok(Some(state))
}

/// `tls install`: checks `pem` (a chain and its key; a leaf valid at `now`) and makes the
/// configuration that replaces `current` (keeping its tickets), or the first one.
pub fn install(current: Option<&TlsState>, pem: &str, port: u16, tickets: bool, now: i64) -> Result<TlsState, String> {
    let creds = certs::from_pem(pem).map_err(|e| e.to_string())?;
    certs::check_validity(creds.leaf(), now).map_err(|e| e.to_string())?;
    let chain = creds.chain;
    let config = match current {
        Some(current) => handshake::replacing(&current.config, creds.certs, creds.key),
        None => handshake::server_config(creds.certs, creds.key).map(|c| tickets_as_asked(c, tickets)),
    }
    .map_err(|e| e.to_string())?;
    Ok(TlsState {
        config,
        chain,
        source: FROM_CONSOLE.to_string(),
        installed: true,
        port: current.map_or(port, |c| c.port),
        tickets: current.map_or(tickets, |c| c.tickets),
        files: current.and_then(|c| c.files.clone()),
    })
}

/// `tls rotate-tickets`: `current` with new session-ticket keys, so that no ticket issued
/// before resumes (a client makes one full handshake and gets new tickets).
pub fn rotate_ticket_keys(current: &TlsState) -> Result<TlsState, String> {
    if !current.tickets {
        return Err("session tickets are off (tls_tickets off, serve --no-tls-tickets): there are no keys to rotate".to_string());
    }
    let config = handshake::with_new_ticket_keys(&current.config).map_err(|e| e.to_string())?;
    Ok(TlsState { config, ..current.clone() })
}

/// `tls remove`: the configuration of the files given at start again (keeping `current`'s
/// tickets), or `None` when there were none.
pub fn back_to_files(current: &TlsState) -> Result<Option<TlsState>, String> {
    let Some((cert, key)) = &current.files else { return Ok(None) };
    let (loaded, chain) = load_files(cert, key).map_err(|e| e.to_string())?;
    // The files' certificate, with the tickets of the configuration in force.
    let config = handshake::keeping_tickets(loaded, &current.config);
    Ok(Some(from_files(config, chain, cert, key, current.port, current.tickets)))
}

/// The configuration of the files `cert` and `key` and their chain described, from one read
/// of each (so that `tls` describes the certificate served even if a file changes meanwhile).
fn load_files(cert: &Path, key: &Path) -> Result<(Arc<ServerConfig>, Vec<CertSummary>), TlsError> {
    let (ders, key) = handshake::read_pem_files(cert, key)?;
    // Empty or partial when the DER does not parse as X.509 here, though rustls may take it.
    let chain = ders.iter().filter_map(|der| certs::describe(der).ok()).collect();
    Ok((handshake::server_config(ders, key)?, chain))
}

/// The state of `config`, made from the files `cert` and `key` (described as `chain`).
fn from_files(config: Arc<ServerConfig>, chain: Vec<CertSummary>, cert: &Path, key: &Path, port: u16, tickets: bool) -> TlsState {
    TlsState {
        config,
        chain,
        source: format!("files {}, {}", cert.display(), key.display()),
        installed: false,
        port,
        tickets,
        files: Some((cert.to_path_buf(), key.to_path_buf())),
    }
}

/// `config` as made (tickets on), or without resumption (`--no-tls-tickets`).
fn tickets_as_asked(config: Arc<ServerConfig>, tickets: bool) -> Arc<ServerConfig> {
    if tickets {
        config
    } else {
        handshake::without_resumption(&config)
    }
}

/// The certificate in the log at start, with a warning when it is past or near its end.
fn log_certificate(state: &TlsState, now: i64) {
    let Some(leaf) = state.chain.first() else { return };
    log::info!("tls: {} ({}), {}, expires {}", leaf.subject, leaf.key, state.source, leaf.expiry(now));
    if leaf.not_after <= now {
        log::warn!("tls: the certificate {} has expired: clients refuse it (console: tls install)", leaf.subject);
    } else if leaf.days_left(now) < EXPIRY_WARNING_DAYS {
        log::warn!("tls: the certificate {} expires in {} days (console: tls install)", leaf.subject, leaf.days_left(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tls::certs::test_now as now;

    /// A self-signed certificate and key for `name`, valid from `from` to `to` days from now.
    fn pem(name: &str, from: i64, to: i64) -> (String, String) {
        let (cert, key, _) = crate::tls::certs::test_pem(&rcgen::PKCS_ECDSA_P256_SHA256, &[name], (from, to));
        (cert, key)
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new(name: &str) -> Files {
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) = pem(name, -1, 90);
            std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
            std::fs::write(dir.path().join("key.pem"), key).unwrap();
            Files { dir }
        }
        fn paths(&self) -> (PathBuf, PathBuf) {
            (self.dir.path().join("cert.pem"), self.dir.path().join("key.pem"))
        }
    }

    fn store() -> (tempfile::NamedTempFile, ConfigStore) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1024 * 1024).unwrap();
        let s = ConfigStore::open(f.path()).unwrap();
        (f, s)
    }

    #[test]
    fn the_installed_certificate_wins_at_start_and_a_broken_one_falls_back_to_the_files() {
        let files = Files::new("files.example");
        let (cert, key) = files.paths();
        let (_f, mut store) = store();
        let from_files = at_start(Some((&cert, &key)), Some(&store), 443, true, now()).unwrap().unwrap();
        assert_eq!(from_files.chain[0].subject, "CN=files.example");
        assert!(from_files.source.starts_with("files ") && !from_files.installed);
        let (c, k) = pem("installed.example", -1, 30);
        store.store_credentials(&format!("{c}{k}")).unwrap();
        let installed = at_start(Some((&cert, &key)), Some(&store), 443, false, now()).unwrap().unwrap();
        assert_eq!(installed.chain[0].subject, "CN=installed.example");
        assert!(installed.installed && !installed.tickets);
        assert_eq!(installed.config.send_tls13_tickets, 0, "tickets off as asked");
        // Without files too: HTTPS serves the installed certificate.
        assert!(at_start(None, Some(&store), 443, true, now()).unwrap().unwrap().installed);
        // A stored key that does not fit the certificate: the files serve, or nothing.
        let (_, other_key) = pem("x.example", -1, 30);
        store.store_credentials(&format!("{c}{other_key}")).unwrap();
        assert!(!at_start(Some((&cert, &key)), Some(&store), 443, true, now()).unwrap().unwrap().installed);
        assert!(at_start(None, Some(&store), 443, true, now()).unwrap().is_none());
        // Bad files are an error, as they always were.
        std::fs::write(&cert, "not PEM").unwrap();
        assert!(at_start(Some((&cert, &key)), None, 443, true, now()).is_err());
    }

    #[test]
    fn an_install_keeps_the_tickets_and_a_remove_goes_back_to_the_files() {
        let files = Files::new("files.example");
        let (cert, key) = files.paths();
        let current = at_start(Some((&cert, &key)), None, 8443, true, now()).unwrap().unwrap();
        let (c, k) = pem("new.example", -1, 365);
        let next = install(Some(&current), &format!("{k}{c}"), 443, false, now()).unwrap();
        assert_eq!(next.chain[0].subject, "CN=new.example");
        assert_eq!((next.port, next.tickets, next.installed), (8443, true, true), "port and tickets stay");
        assert!(Arc::ptr_eq(&next.config.ticketer, &current.config.ticketer), "the same ticket keys");
        let back = back_to_files(&next).unwrap().unwrap();
        assert_eq!(back.chain[0].subject, "CN=files.example");
        assert!(Arc::ptr_eq(&back.config.ticketer, &current.config.ticketer));
        // Refused: expired, not yet valid, junk; HTTPS newly on takes the port and tickets given.
        let (c, k) = pem("old.example", -30, -1);
        assert!(install(Some(&current), &format!("{c}{k}"), 443, true, now()).unwrap_err().starts_with("the certificate expired at"));
        let (c, k) = pem("soon.example", 3, 30);
        assert!(install(Some(&current), &format!("{c}{k}"), 443, true, now()).unwrap_err().starts_with("the certificate is not valid before"));
        assert_eq!(install(None, "junk", 443, true, now()).unwrap_err(), "no certificate in the PEM text");
        let (c, k) = pem("first.example", -1, 30);
        let first = install(None, &format!("{c}{k}"), 4443, false, now()).unwrap();
        assert_eq!((first.port, first.tickets, first.config.send_tls13_tickets), (4443, false, 0));
        assert!(back_to_files(&first).unwrap().is_none(), "no files to go back to");
    }

    #[test]
    fn rotating_the_ticket_keys_keeps_the_certificate_and_refuses_older_tickets() {
        let files = Files::new("files.example");
        let (cert, key) = files.paths();
        let current = at_start(Some((&cert, &key)), None, 443, true, now()).unwrap().unwrap();
        let ticket = current.config.ticketer.encrypt(b"a session").unwrap();
        assert_eq!(current.config.ticketer.decrypt(&ticket).as_deref(), Some(&b"a session"[..]));
        let next = rotate_ticket_keys(&current).unwrap();
        assert!(!Arc::ptr_eq(&next.config.ticketer, &current.config.ticketer));
        assert_eq!(next.config.ticketer.decrypt(&ticket), None, "a ticket from before does not resume");
        assert!(next.config.ticketer.enabled());
        let fresh = next.config.ticketer.encrypt(b"another").unwrap();
        assert_eq!(next.config.ticketer.decrypt(&fresh).as_deref(), Some(&b"another"[..]));
        assert_eq!((next.chain[0].subject.as_str(), next.port, next.tickets, next.installed), ("CN=files.example", 443, true, false));
        assert_eq!(next.config.send_tls13_tickets, current.config.send_tls13_tickets);
        // Tickets off: nothing to rotate.
        let off = at_start(Some((&cert, &key)), None, 443, false, now()).unwrap().unwrap();
        assert!(rotate_ticket_keys(&off).unwrap_err().starts_with("session tickets are off"));
    }
}
