//! The command interpreter: parses one line, asks the [`ConsoleHost`], and appends a
//! human-readable answer ending with `ok` or `error: <reason>`. No I/O of its own.
use std::fmt::Write;
use std::time::Duration;

use super::report;
use super::{ConsoleHost, PowerAction, TlsInfo, LIST_DEFAULT, LIST_MAX, MAX_LINE};

/// Every command, with its usage and a one-line description, in the order `help` lists them.
const COMMANDS: &[(&str, &str)] = &[
    ("help", "list the commands"),
    (
        "status",
        "version, uptime, addresses, link, cores, media, ports",
    ),
    (
        "stats",
        "counters grouped by layer (nic, ip, tcp, http, tls, storage, console)",
    ),
    ("stats json", "the same counters as one line of JSON"),
    (
        "conns [N]",
        "list up to N open connections (default 20, max 1000)",
    ),
    (
        "media [N]",
        "list up to N media objects (default 20, max 1000)",
    ),
    (
        "log [LEVEL]",
        "show or set the log level: error|warn|info|debug|trace|off",
    ),
    ("drain", "stop accepting connections; open transfers finish"),
    ("config show", "list the settings"),
    ("tls", "the HTTPS certificate: names, issuer, validity, key, fingerprint"),
    (
        "tls install",
        "then paste a certificate chain and its key (PEM), then a line 'end'",
    ),
    ("tls remove", "forget the installed certificate; the start-up files serve again"),
    ("tls rotate-tickets", "new session-ticket keys now: tickets issued before no longer resume"),
    ("config set KEY VALUE", "change a setting"),
    ("reboot", "reboot the appliance (after this answer)"),
    ("poweroff", "power the appliance off (after this answer)"),
    ("version", "firmware version"),
    ("uptime", "time since start"),
];

/// The interpreter. Keeps only its own counters and a `tls install` under way; all
/// appliance state lives in the host.
#[derive(Debug, Default)]
pub struct Console {
    commands: u64,
    errors: u64,
    /// The PEM lines of a `tls install` so far, until its line `end`.
    paste: Option<String>,
}

/// A command's failure: the text after `error: `.
type CmdResult = Result<(), String>;

impl Console {
    pub fn new() -> Self {
        Self::default()
    }

    /// Non-empty lines executed (including those that failed).
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// Lines answered with `error: ...`.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Execute one line (without its line end) and append the answer to `out`. The answer
    /// always ends with `ok\n` or `error: <reason>\n`. An empty (or all-blank) line answers
    /// `ok` and is not counted as a command.
    ///
    /// After `tls install` the lines that follow are PEM text, answered once, by its line
    /// `end` (or `abort`).
    pub fn execute(&mut self, line: &str, host: &mut dyn ConsoleHost, out: &mut String) {
        if self.paste.is_some() {
            return self.paste_line(line, host, out);
        }
        if line.len() > MAX_LINE {
            self.commands += 1;
            return self.fail(out, format!("line too long (more than {MAX_LINE} bytes)"));
        }
        let line = line.trim();
        if line.is_empty() {
            out.push_str("ok\n");
            return;
        }
        self.commands += 1;
        // The transport decodes lossily, so a replacement character stands for bytes that
        // were not UTF-8; no command or setting needs one.
        if line.contains('\u{fffd}') {
            return self.fail(out, "line is not valid UTF-8".to_string());
        }
        let mut words = line.split_ascii_whitespace();
        let cmd = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        let result = match cmd {
            "help" => no_args(cmd, &args).map(|()| help(out)),
            "status" => no_args(cmd, &args).map(|()| status(host, out)),
            "stats" => self.stats(&args, host, out),
            "conns" => list_count(cmd, &args).map(|n| conns(host, n, out)),
            "media" => list_count(cmd, &args).map(|n| media(host, n, out)),
            "log" => log_level(&args, host, out),
            "drain" => no_args(cmd, &args).map(|()| drain(host, out)),
            "config" => config(line, &args, host, out),
            "tls" => match args.as_slice() {
                [] => tls_show(host, out),
                ["install"] => {
                    // The answer comes with the line `end`.
                    self.paste = Some(String::new());
                    return;
                }
                ["remove"] => host.tls_remove().map(|(info, note)| tls_installed(&info, &note, out)),
                ["rotate-tickets"] => host
                    .tls_rotate_tickets()
                    .map(|info| tls_installed(&info, "new session-ticket keys on every core: tickets issued before no longer resume", out)),
                _ => Err("usage: tls | tls install | tls remove | tls rotate-tickets".to_string()),
            },
            "reboot" => no_args(cmd, &args).map(|()| power(PowerAction::Reboot, host, out)),
            "poweroff" => no_args(cmd, &args).map(|()| power(PowerAction::Poweroff, host, out)),
            "version" => no_args(cmd, &args).map(|()| {
                let _ = writeln!(out, "appliance {}", host.status().version);
            }),
            "uptime" => no_args(cmd, &args).map(|()| {
                let up = host.status().uptime;
                let _ = writeln!(out, "up {} ({} s)", fmt_uptime(up), up.as_secs());
            }),
            _ if cmd.bytes().any(|b| b.is_ascii_uppercase()) => Err(format!(
                "unknown command '{}' (commands are lower-case; try 'help')",
                shown(cmd)
            )),
            _ => Err(format!("unknown command '{}' (try 'help')", shown(cmd))),
        };
        match result {
            Ok(()) => out.push_str("ok\n"),
            Err(reason) => self.fail(out, reason),
        }
    }

    /// One line of a `tls install`: PEM text, or the `end` that installs it, or `abort`.
    fn paste_line(&mut self, line: &str, host: &mut dyn ConsoleHost, out: &mut String) {
        let Some(pem) = self.paste.as_mut() else { return };
        let line = line.trim();
        match line {
            "end" => {
                let pem = self.paste.take().unwrap_or_default();
                let installed = host.tls_install(&pem);
                // The paste holds a private key: not left behind in freed memory.
                let mut bytes = pem.into_bytes();
                bytes.fill(0);
                std::hint::black_box(&bytes);
                match installed {
                    Ok((info, note)) => {
                        tls_installed(&info, &note, out);
                        out.push_str("ok\n");
                    }
                    Err(reason) => self.fail(out, format!("tls install: {reason}; nothing changed")),
                }
            }
            // Blank lines (a terminal's extra line ends) carry nothing.
            "" => {}
            "abort" => {
                self.paste = None;
                self.fail(out, "tls install aborted; nothing changed".to_string());
            }
            _ if line.contains('\u{fffd}') => {
                self.paste = None;
                self.fail(out, "tls install: a line is not valid UTF-8; nothing changed".to_string());
            }
            _ if pem.len() + line.len() + 1 > crate::tls::certs::MAX_PEM => {
                self.paste = None;
                self.fail(out, format!("tls install: more than {} bytes of PEM text; nothing changed", crate::tls::certs::MAX_PEM));
            }
            _ => {
                pem.push_str(line);
                pem.push('\n');
            }
        }
    }

    /// Gives up a `tls install` under way: silently when its client left (`out` None), else
    /// with an error answer.
    pub fn abandon_paste(&mut self, out: Option<&mut String>, idle: Duration) {
        if self.paste.take().is_some() {
            if let Some(out) = out {
                self.fail(out, format!("tls install: no line for {} s; nothing changed", idle.as_secs()));
            }
        }
    }

    /// Whether a `tls install` is collecting PEM lines (they get no answer until `end`).
    pub fn pasting(&self) -> bool {
        self.paste.is_some()
    }

    fn fail(&mut self, out: &mut String, reason: String) {
        self.errors += 1;
        out.push_str("error: ");
        out.push_str(&reason);
        out.push('\n');
    }

    fn stats(&self, args: &[&str], host: &mut dyn ConsoleHost, out: &mut String) -> CmdResult {
        let json = match args {
            [] => false,
            ["json"] => true,
            _ => return Err("usage: stats [json]".to_string()),
        };
        // The command being answered counts as executed; it cannot yet have failed.
        let table = report::table(&host.counters(), self.commands, self.errors);
        if json {
            report::write_json(out, &table);
            out.push('\n');
        } else {
            report::write_text(out, &table);
        }
        Ok(())
    }
}

/// A user-supplied word, made safe to show: control characters escaped, length bounded.
fn shown(word: &str) -> String {
    let mut s: String = word.chars().take(32).flat_map(char::escape_debug).collect();
    if word.chars().count() > 32 {
        s.push_str("...");
    }
    s
}

fn no_args(cmd: &str, args: &[&str]) -> CmdResult {
    if args.is_empty() {
        Ok(())
    } else {
        Err(format!("'{cmd}' takes no arguments"))
    }
}

/// The optional row count of `conns` and `media`.
fn list_count(cmd: &str, args: &[&str]) -> Result<usize, String> {
    match args {
        [] => Ok(LIST_DEFAULT),
        [n] => match n.parse::<usize>() {
            Ok(n) if (1..=LIST_MAX).contains(&n) => Ok(n),
            _ => Err(format!("usage: {cmd} [N] with N from 1 to {LIST_MAX}")),
        },
        _ => Err(format!("usage: {cmd} [N] with N from 1 to {LIST_MAX}")),
    }
}

fn help(out: &mut String) {
    for (usage, what) in COMMANDS {
        let _ = writeln!(out, "{usage:<22}{what}");
    }
    out.push_str("Answers end with 'ok' or 'error: <reason>'. An empty line answers 'ok'.\n");
}

fn status(host: &mut dyn ConsoleHost, out: &mut String) {
    let s = host.status();
    let _ = writeln!(out, "version   appliance {}", s.version);
    let _ = writeln!(
        out,
        "uptime    {} ({} s)",
        fmt_uptime(s.uptime),
        s.uptime.as_secs()
    );
    let _ = writeln!(out, "ip        {}/{}", s.ip, s.prefix_len);
    match s.gateway {
        Some(g) => {
            let _ = writeln!(out, "gateway   {g}");
        }
        None => out.push_str("gateway   none\n"),
    }
    let _ = writeln!(out, "mac       {}", fmt_mac(&s.mac));
    let _ = writeln!(
        out,
        "nic       {}, link {}, mtu {}, port mac {}",
        s.link.driver,
        if s.link.up { "up" } else { "down" },
        s.link.mtu,
        fmt_mac(&s.link.mac)
    );
    let cores: Vec<String> = s.cores.iter().map(|c| c.to_string()).collect();
    let _ = writeln!(
        out,
        "cores     {} ({} pipelines)",
        cores.join(","),
        s.cores.len()
    );
    let _ = writeln!(
        out,
        "media     {} {}, {} objects, {} bytes",
        s.media.backend, s.media.source, s.media.objects, s.media.bytes
    );
    if s.media.drives.len() > 1 {
        for (i, d) in s.media.drives.iter().enumerate() {
            match &d.failed {
                Some(why) => {
                    let _ = writeln!(
                        out,
                        "  drive {i}  {} {}, not served: {}",
                        d.backend,
                        d.source,
                        shown_path(why)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  drive {i}  {} {}, {} objects, {} bytes",
                        d.backend, d.source, d.objects, d.bytes
                    );
                }
            }
        }
        if s.media.shadowed_total > 0 {
            let _ = writeln!(
                out,
                "  {} path(s) on more than one drive, served from the first listed (see media)",
                s.media.shadowed_total
            );
        }
    }
    let _ = writeln!(out, "http      port {}", s.http_port);
    match s.https_port {
        Some(p) => {
            let tickets = if s.tls_tickets { "on" } else { "off" };
            let _ = writeln!(out, "https     port {p}, session tickets {tickets}");
        }
        None => out.push_str("https     off\n"),
    }
    let _ = writeln!(out, "draining  {}", if s.draining { "yes" } else { "no" });
}

fn conns(host: &mut dyn ConsoleHost, max: usize, out: &mut String) {
    let list = host.connections(max);
    let _ = writeln!(
        out,
        "{:<47} {:>5} {:<12} {:>14} {:>10} {:>10} {:<3} {:>4}",
        "remote", "local", "state", "bytes_sent", "age_s", "idle_s", "tls", "core"
    );
    for c in list.entries.iter().take(max) {
        let _ = writeln!(
            out,
            "{:<47} {:>5} {:<12} {:>14} {:>10.1} {:>10.1} {:<3} {:>4}",
            c.remote.to_string(),
            c.local_port,
            c.state,
            c.bytes_sent,
            c.age.as_secs_f64(),
            c.idle.as_secs_f64(),
            if c.tls { "yes" } else { "no" },
            c.core
        );
    }
    let _ = writeln!(
        out,
        "{} of {} connections shown",
        list.entries.len().min(max),
        list.total
    );
}

fn media(host: &mut dyn ConsoleHost, max: usize, out: &mut String) {
    let list = host.media(max);
    let summary = host.status().media;
    // One volume: the listing as it always was; several: which drive serves each object.
    let several = summary.drives.len() > 1;
    if several {
        let _ = writeln!(out, "{:>5} {:>14} {:<28} path", "drive", "size", "content_type");
    } else {
        let _ = writeln!(out, "{:>14} {:<28} path", "size", "content_type");
    }
    for m in list.entries.iter().take(max) {
        if several {
            let _ = write!(out, "{:>5} ", m.drive);
        }
        let _ = writeln!(
            out,
            "{:>14} {:<28} {}",
            m.size,
            m.content_type,
            shown_path(&m.path)
        );
    }
    let _ = writeln!(
        out,
        "{} of {} objects shown",
        list.entries.len().min(max),
        list.total
    );
    if several {
        for (i, d) in summary.drives.iter().enumerate() {
            let _ = write!(out, "drive {i}: {} {}, ", d.backend, shown_path(&d.source));
            match &d.failed {
                Some(why) => {
                    let _ = writeln!(out, "not served: {}", shown_path(why));
                }
                None => {
                    let _ = writeln!(out, "{} objects", d.objects);
                }
            }
        }
    }
    if summary.shadowed_total > 0 {
        let _ = writeln!(
            out,
            "{} path(s) on more than one drive, served from the first listed:",
            summary.shadowed_total
        );
        for p in summary.shadowed.iter().take(max) {
            let _ = writeln!(
                out,
                "  {} on drive {} (served from drive {})",
                shown_path(&p.path),
                p.hidden_on,
                p.served_from
            );
        }
        if summary.shadowed_total > max.min(summary.shadowed.len()) {
            let _ = writeln!(
                out,
                "  {} of {} shown",
                max.min(summary.shadowed.len()),
                summary.shadowed_total
            );
        }
    }
}

/// Paths come from the volume; escape control characters so they cannot fake an `ok` line.
fn shown_path(path: &str) -> String {
    path.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_debug().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn log_level(args: &[&str], host: &mut dyn ConsoleHost, out: &mut String) -> CmdResult {
    const USAGE: &str = "usage: log [error|warn|info|debug|trace|off]";
    match args {
        [] => {
            let _ = writeln!(
                out,
                "log level {}",
                log::max_level().as_str().to_ascii_lowercase()
            );
            Ok(())
        }
        [level] => {
            let level = match *level {
                "off" => log::LevelFilter::Off,
                "error" => log::LevelFilter::Error,
                "warn" => log::LevelFilter::Warn,
                "info" => log::LevelFilter::Info,
                "debug" => log::LevelFilter::Debug,
                "trace" => log::LevelFilter::Trace,
                _ => return Err(USAGE.to_string()),
            };
            host.set_log_level(level);
            let _ = writeln!(out, "log level {}", level.as_str().to_ascii_lowercase());
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    }
}

fn drain(host: &mut dyn ConsoleHost, out: &mut String) {
    host.drain();
    let open = host.connections(0).total;
    let _ = writeln!(
        out,
        "draining: no new connections; {open} open connections will finish"
    );
}

/// `config show` and `config set KEY VALUE`; VALUE is the rest of the line, so it may hold
/// spaces.
fn config(line: &str, args: &[&str], host: &mut dyn ConsoleHost, out: &mut String) -> CmdResult {
    const USAGE: &str = "usage: config show | config set KEY VALUE";
    match args {
        ["show"] => {
            let settings = host.config_show();
            if settings.is_empty() {
                out.push_str("(no settings)\n");
            }
            for (k, v) in settings {
                let _ = writeln!(out, "{} = {}", shown_path(&k), shown_path(&v));
            }
            Ok(())
        }
        ["set", key, _, ..] => {
            let value = rest_after_words(line, 3);
            host.config_set(key, value)?;
            let _ = writeln!(out, "{} = {}", shown_path(key), shown_path(value));
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    }
}

/// `tls`: the certificate in use.
fn tls_show(host: &mut dyn ConsoleHost, out: &mut String) -> CmdResult {
    match host.tls_info() {
        Some(info) => {
            tls_describe(&info, out);
            Ok(())
        }
        None => Err("HTTPS is off (serve --tls-cert/--tls-key, or tls install)".to_string()),
    }
}

/// `tls install` and `tls remove`: where the certificate went, then what is served now.
fn tls_installed(info: &TlsInfo, note: &str, out: &mut String) {
    let _ = writeln!(out, "{}", shown_path(note));
    tls_describe(info, out);
}

fn tls_describe(info: &TlsInfo, out: &mut String) {
    let tickets = if info.tickets { "on" } else { "off" };
    let _ = writeln!(out, "https     port {}, session tickets {tickets}", info.port);
    let _ = writeln!(out, "source    {}", shown_path(&info.source));
    let _ = writeln!(out, "sealing   {}", info.sealer);
    let Some(leaf) = info.chain.first() else {
        return;
    };
    let _ = writeln!(out, "subject   {}", shown_path(&leaf.subject));
    let names: Vec<String> = leaf.names.iter().map(|n| shown_path(n)).collect();
    let _ = writeln!(out, "names     {}", if names.is_empty() { "(none)".to_string() } else { names.join(", ") });
    let _ = writeln!(out, "issuer    {}", shown_path(&leaf.issuer));
    let _ = writeln!(out, "valid     from {}", crate::http::utc_timestamp(leaf.not_before));
    let _ = writeln!(out, "expires   {}", leaf.expiry(info.now));
    if leaf.not_after > info.now && leaf.days_left(info.now) < crate::tls::certs::EXPIRY_WARNING_DAYS {
        let _ = writeln!(out, "warning   expires in under {} days: install a renewed certificate", crate::tls::certs::EXPIRY_WARNING_DAYS);
    } else if leaf.not_after <= info.now {
        out.push_str("warning   expired: clients refuse it; install a renewed certificate\n");
    }
    if leaf.not_before > info.now {
        out.push_str("warning   not valid yet by the appliance's clock (is the clock behind?)\n");
    }
    let _ = writeln!(out, "key       {}", leaf.key);
    let _ = writeln!(out, "sha256    {}", leaf.fingerprint());
    for (i, c) in info.chain.iter().enumerate().skip(1) {
        let _ = writeln!(out, "chain {i}   {}, expires {}", shown_path(&c.subject), crate::http::utc_timestamp(c.not_after));
    }
}

/// What follows the first `n` whitespace-separated words of `line`, trimmed.
fn rest_after_words(line: &str, n: usize) -> &str {
    let mut rest = line.trim_start();
    for _ in 0..n {
        let end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    rest.trim_end()
}

fn power(action: PowerAction, host: &mut dyn ConsoleHost, out: &mut String) {
    host.power(action);
    out.push_str(match action {
        PowerAction::Reboot => "rebooting\n",
        PowerAction::Poweroff => "powering off\n",
    });
}

pub(crate) fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// "3d 04:05:06" or "04:05:06".
pub(crate) fn fmt_uptime(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {h:02}:{m:02}:{sec:02}")
    } else {
        format!("{h:02}:{m:02}:{sec:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeHost;
    use super::*;

    fn run(console: &mut Console, host: &mut FakeHost, line: &str) -> String {
        let mut out = String::new();
        console.execute(line, host, &mut out);
        assert!(
            out.ends_with('\n'),
            "answer must end with a newline: {out:?}"
        );
        let last = out.lines().last().unwrap();
        assert!(
            last == "ok" || last.starts_with("error: "),
            "bad last line {last:?} in {out:?}"
        );
        out
    }

    fn ok(line: &str) -> (String, FakeHost) {
        let mut c = Console::new();
        let mut h = FakeHost::new();
        let out = run(&mut c, &mut h, line);
        assert!(
            out.ends_with("\nok\n") || out == "ok\n",
            "{line:?} failed: {out}"
        );
        assert_eq!(c.errors(), 0);
        (out, h)
    }

    fn err(line: &str) -> String {
        let mut c = Console::new();
        let mut h = FakeHost::new();
        let out = run(&mut c, &mut h, line);
        assert!(out.starts_with("error: "), "{line:?} should fail: {out}");
        assert_eq!(out.lines().count(), 1, "an error is one line: {out}");
        assert_eq!((c.commands(), c.errors()), (1, 1));
        out
    }

    #[test]
    fn help_lists_every_command() {
        let (out, _) = ok("help");
        for cmd in [
            "help",
            "status",
            "stats",
            "stats json",
            "conns",
            "media",
            "log",
            "drain",
            "config show",
            "config set",
            "reboot",
            "poweroff",
            "version",
            "uptime",
            "tls",
            "tls install",
            "tls remove",
        ] {
            assert!(
                out.lines().any(|l| l.starts_with(cmd)),
                "help lacks {cmd}: {out}"
            );
        }
    }

    #[test]
    fn tls_shows_the_certificate_and_when_it_expires() {
        let (out, _) = ok("tls");
        for want in [
            "https     port 443, session tickets on",
            "source    files /etc/appliance/tls/cert.pem, key.pem",
            "sealing   ring (measured at start: aws-lc-rs 4.08 GB/s, ring 7.29 GB/s)",
            "subject   CN=media.example",
            "names     media.example, 192.0.2.10",
            "issuer    CN=Example CA",
            "valid     from 2026-11-30 00:00:00 UTC",
            "expires   2027-03-01 00:00:00 UTC (in 90 days)",
            "key       ECDSA P-256",
            "sha256    AB:AB:",
            "chain 1   CN=Example CA, expires 2033-05-18 03:33:20 UTC",
        ] {
            assert!(out.contains(want), "tls lacks {want:?}: {out}");
        }
        assert!(!out.contains("warning"), "{out}");
        // Close to its end, and past it.
        let mut c = Console::new();
        let mut h = FakeHost::new();
        let now = h.tls.as_ref().unwrap().now;
        h.tls.as_mut().unwrap().chain[0].not_after = now + 10 * 86_400;
        let out = run(&mut c, &mut h, "tls");
        assert!(out.contains("(in 10 days)") && out.contains("warning   expires in under 30 days"), "{out}");
        h.tls.as_mut().unwrap().chain[0].not_after = now - 2 * 86_400;
        let out = run(&mut c, &mut h, "tls");
        assert!(out.contains("(expired 2 days ago)") && out.contains("warning   expired"), "{out}");
        h.tls.as_mut().unwrap().chain[0].not_before = now + 60;
        assert!(run(&mut c, &mut h, "tls").contains("warning   not valid yet by the appliance's clock"));
        h.tls = None;
        assert!(run(&mut c, &mut h, "tls").starts_with("error: HTTPS is off"));
        assert!(err("tls show me").starts_with("error: usage: tls | tls install | tls remove | tls rotate-tickets"));
    }

    #[test]
    fn tls_rotate_tickets_answers_with_what_is_served() {
        let mut c = Console::new();
        let mut h = FakeHost::new();
        let out = run(&mut c, &mut h, "tls rotate-tickets");
        assert!(out.starts_with("new session-ticket keys on every core: tickets issued before no longer resume\n"), "{out}");
        assert!(out.contains("subject   CN=media.example") && out.ends_with("ok\n"), "{out}");
        assert_eq!(h.ticket_rotations, 1);
        h.tls.as_mut().unwrap().tickets = false;
        assert_eq!(run(&mut c, &mut h, "tls rotate-tickets"), "error: session tickets are off\n");
        h.tls = None;
        assert_eq!(run(&mut c, &mut h, "tls rotate-tickets"), "error: HTTPS is off\n");
        assert_eq!(h.ticket_rotations, 1);
    }

    #[test]
    fn tls_install_takes_pem_lines_until_end_and_answers_once() {
        let mut c = Console::new();
        let mut h = FakeHost::new();
        let mut out = String::new();
        for line in ["tls install", "-----BEGIN CERTIFICATE-----", "  AAAA  ", "", "-----END CERTIFICATE-----\r"] {
            c.execute(line, &mut h, &mut out);
            assert!(c.pasting());
        }
        assert_eq!(out, "", "no answer until the line end");
        let out = run(&mut c, &mut h, "end");
        assert!(!c.pasting());
        assert!(out.starts_with("stored in the configuration partition"), "{out}");
        assert!(out.contains("subject   CN=renewed.example") && out.contains("source    installed from the console"), "{out}");
        assert_eq!(h.installed, ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]);
        assert_eq!((c.commands(), c.errors()), (1, 0), "the paste is one command");
        // Commands work again afterwards.
        assert!(run(&mut c, &mut h, "version").ends_with("ok\n"));

        // Refused by the host: one error, nothing changed, and the console out of paste mode.
        let mut out = String::new();
        c.execute("tls install", &mut h, &mut out);
        c.execute("status", &mut h, &mut out);
        assert_eq!(out, "", "a command word inside a paste is PEM text");
        let out = run(&mut c, &mut h, "end");
        assert_eq!(out, "error: tls install: no certificate in the PEM text; nothing changed\n");
        assert_eq!(h.installed[1], "status\n");
        assert!(!c.pasting());

        // abort, and text past the limit.
        let mut out = String::new();
        c.execute("tls install", &mut h, &mut out);
        assert_eq!(run(&mut c, &mut h, "abort"), "error: tls install aborted; nothing changed\n");
        c.execute("tls install", &mut h, &mut out);
        let line = "A".repeat(64);
        let mut answered = String::new();
        for _ in 0..(crate::tls::certs::MAX_PEM / 65 + 2) {
            c.execute(&line, &mut h, &mut answered);
            if !answered.is_empty() {
                break;
            }
        }
        assert!(answered.starts_with("error: tls install: more than 61440 bytes of PEM text"), "{answered}");
        assert!(!c.pasting());
        assert_eq!(h.installed.len(), 2, "neither reached the host");
        assert!(run(&mut c, &mut h, "tls remove").starts_with("error: no certificate was installed"));
    }

    #[test]
    fn status_shows_addresses_cores_media_and_ports() {
        let (out, _) = ok("  status \t");
        for want in [
            "version   appliance 9.8.7",
            "uptime    1d 01:01:01 (90061 s)",
            "ip        10.0.0.2/24",
            "gateway   10.0.0.1",
            "mac       02:00:00:00:00:02",
            "nic       tap, link up, mtu 1500, port mac 02:00:00:00:00:99",
            "cores     0,1 (2 pipelines)",
            "media     file /tmp/vol, 3 objects, 6000 bytes",
            "http      port 8080",
            "https     port 8443, session tickets on",
            "draining  no",
        ] {
            assert!(out.contains(want), "status lacks {want:?}: {out}");
        }
    }

    #[test]
    fn stats_text_is_grouped_and_shows_counts() {
        let (out, _) = ok("stats");
        for group in [
            "nic", "eth", "arp", "ip", "icmp", "tcp", "http", "tls", "storage", "console",
        ] {
            assert!(
                out.lines().any(|l| l == group),
                "stats lacks group {group}: {out}"
            );
        }
        let find = |key: &str| -> String {
            let line = out
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{key} ")))
                .unwrap();
            line.split_whitespace().last().unwrap().to_string()
        };
        assert_eq!(find("driver"), "tap");
        assert_eq!(find("rx_packets"), "101");
        assert_eq!(find("retransmits"), "7");
        assert_eq!(find("status 404"), "3");
        assert_eq!(find("handshakes"), "4");
        assert_eq!(find("backend"), "file");
        assert_eq!(find("commands"), "1");
    }

    #[test]
    fn stats_json_is_one_line_of_valid_json_with_required_members() {
        let (out, _) = ok("stats json");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[1], "ok");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("valid JSON");
        assert_eq!(v["nic"]["driver"], "tap");
        assert_eq!(v["nic"]["rx_packets"], 101);
        assert_eq!(v["nic"]["tx_packets"], 202);
        assert_eq!(v["tcp"]["connections_active"], 2);
        assert_eq!(v["tcp"]["retransmits"], 7);
        assert_eq!(v["http"]["requests"], 11);
        assert_eq!(v["http"]["status"]["404"], 3);
        assert_eq!(v["http"]["status"]["206"], 5);
        assert_eq!(v["tls"]["handshakes"], 4);
        assert_eq!(v["tls"]["handshakes_resumed"], 1);
        assert_eq!(v["storage"]["backend"], "file");
        assert_eq!(v["storage"]["reads"], 12);
        assert_eq!(v["storage"]["read_bytes"], 49152);
        assert_eq!(v["console"]["commands"], 1);
        // Every Stats field appears: count the numeric leaves fed from Stats (69 fields; the
        // console pair is merged, storage counters add 6, nic adds 8; lists are not counted).
        fn leaves(v: &serde_json::Value) -> usize {
            match v {
                serde_json::Value::Object(m) => m.values().map(leaves).sum(),
                serde_json::Value::Number(_) => 1,
                _ => 0,
            }
        }
        // xstats: the driver's own names (two in the fake host).
        assert_eq!(v["nic"]["xstats"]["rx_good_packets"], 101);
        assert_eq!(leaves(&v), 69 + 6 + 8 + 2);
        // One volume: one drive, the same counts as the totals.
        let drives = v["storage"]["drives"].as_array().expect("storage.drives is an array");
        assert_eq!(drives.len(), 1);
        assert_eq!((drives[0]["drive"].as_u64(), drives[0]["source"].as_str(), drives[0]["backend"].as_str()), (Some(0), Some("/tmp/vol"), Some("file")));
        assert_eq!(drives[0]["reads"], 6);
        // Each core's share, in core order.
        let cores = v["cores"].as_array().expect("cores is an array");
        assert_eq!(cores.len(), 2);
        assert_eq!(cores[1]["core"], 1);
        assert_eq!(cores[0]["http_requests"], 6);
        assert_eq!(cores[1]["connections_active"], 1);
    }

    #[test]
    fn conns_is_bounded_and_shows_the_total() {
        let (out, _) = ok("conns");
        assert!(out.contains("10.0.0.1:40000"), "{out}");
        assert!(out.contains("established"), "{out}");
        assert!(out.contains("20 of 1500 connections shown"), "{out}");
        assert_eq!(out.lines().count(), 1 + 20 + 1 + 1);
        let (out, _) = ok("conns 3");
        assert!(out.contains("3 of 1500 connections shown"), "{out}");
        let (out, _) = ok("conns 1000");
        assert!(out.contains("1000 of 1500 connections shown"), "{out}");
        err("conns 1001");
        err("conns 0");
        err("conns -1");
        err("conns x");
        err("conns 1 2");
    }

    #[test]
    fn media_lists_objects() {
        let (out, _) = ok("media");
        assert!(out.contains("/index.m3u8"), "{out}");
        assert!(out.contains("application/vnd.apple.mpegurl"), "{out}");
        assert!(out.contains("3 of 3 objects shown"), "{out}");
        // A control character in a path is escaped, so it cannot end the answer early.
        assert!(out.contains("/evil\\nok"), "{out}");
        let (out, _) = ok("media 1");
        assert!(out.contains("1 of 3 objects shown"), "{out}");
        err("media many");
    }

    fn ok_two_drives(line: &str) -> String {
        let mut c = Console::new();
        let mut h = FakeHost::new();
        h.drives = 2;
        let out = run(&mut c, &mut h, line);
        assert!(out.ends_with("\nok\n"), "{line:?} failed: {out}");
        out
    }

    #[test]
    fn one_volume_shows_no_drive_lists() {
        let (status, _) = ok("status");
        assert!(!status.contains("drive"), "{status}");
        let (media, _) = ok("media");
        assert!(media.starts_with("          size content_type"), "{media}");
        assert!(!media.contains("drive"), "{media}");
    }

    #[test]
    fn several_drives_are_listed_by_status_media_and_stats() {
        let out = ok_two_drives("status");
        for want in [
            "media     mixed /tmp/vol,nvme:0000:00:05.0,/gone.vol, 3 objects, 6000 bytes",
            "  drive 0  file /tmp/vol, 3 objects, 6000 bytes",
            "  drive 1  nvme-vfio nvme:0000:00:05.0 (model), 1 objects, 2000 bytes",
            "  drive 2  unavailable /gone.vol, not served: /gone.vol: No such file or directory",
            "  1 path(s) on more than one drive",
        ] {
            assert!(out.contains(want), "status lacks {want:?}: {out}");
        }
        let out = ok_two_drives("media");
        assert!(out.starts_with("drive           size content_type"), "{out}");
        assert!(out.lines().any(|l| l.starts_with("    1           2000 video/mp2t") && l.ends_with("/seg1.ts")), "{out}");
        assert!(out.contains("drive 1: nvme-vfio nvme:0000:00:05.0 (model), 1 objects"), "{out}");
        assert!(out.contains("drive 2: unavailable /gone.vol, not served: /gone.vol: No such file or directory"), "{out}");
        assert!(out.contains("1 path(s) on more than one drive, served from the first listed:\n  /seg1.ts on drive 1 (served from drive 0)"), "{out}");
        let out = ok_two_drives("stats json");
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        let drives = v["storage"]["drives"].as_array().unwrap();
        assert_eq!(drives.len(), 3);
        assert_eq!(drives[2]["backend"], "unavailable");
        assert_eq!(drives[1]["source"], "nvme:0000:00:05.0");
        assert_eq!(drives[1]["backend"], "nvme-vfio");
        assert_eq!((drives[1]["reads"].as_u64(), drives[1]["errors"].as_u64(), drives[1]["timeouts"].as_u64(), drives[1]["resets"].as_u64()), (Some(12), Some(1), Some(1), Some(1)));
        let out = ok_two_drives("stats");
        assert!(out.lines().any(|l| l.starts_with("  drive 1 source nvme:0000:00:05.0 backend nvme-vfio reads 12")), "{out}");
    }

    #[test]
    fn log_sets_each_level() {
        for (word, level) in [
            ("error", log::LevelFilter::Error),
            ("warn", log::LevelFilter::Warn),
            ("info", log::LevelFilter::Info),
            ("debug", log::LevelFilter::Debug),
            ("trace", log::LevelFilter::Trace),
            ("off", log::LevelFilter::Off),
        ] {
            let (out, h) = ok(&format!("log {word}"));
            assert_eq!(h.log_level, Some(level));
            assert!(out.starts_with(&format!("log level {word}\n")), "{out}");
        }
        ok("log");
        err("log loud");
        err("log info debug");
    }

    #[test]
    fn drain_reboot_poweroff_reach_the_host() {
        let (out, h) = ok("drain");
        assert!(h.draining);
        assert!(out.contains("1500 open connections"), "{out}");
        let (_, h) = ok("reboot");
        assert_eq!(h.power, Some(PowerAction::Reboot));
        let (_, h) = ok("poweroff");
        assert_eq!(h.power, Some(PowerAction::Poweroff));
        err("reboot now");
        err("drain please");
    }

    #[test]
    fn config_show_and_set() {
        let (out, _) = ok("config show");
        assert!(out.contains("idle_timeout_s = 30"), "{out}");
        let mut c = Console::new();
        let mut h = FakeHost::new();
        let out = run(&mut c, &mut h, "config set banner hello  world ");
        assert_eq!(out, "banner = hello  world\nok\n");
        assert!(h
            .config
            .contains(&("banner".to_string(), "hello  world".to_string())));
        let out = run(&mut c, &mut h, "config set readonly 1");
        assert_eq!(out, "error: readonly cannot be changed\n");
        err("config");
        err("config set onlykey");
        err("config frobnicate");
    }

    #[test]
    fn version_and_uptime() {
        let (out, _) = ok("version");
        assert_eq!(out, "appliance 9.8.7\nok\n");
        let (out, _) = ok("uptime");
        assert_eq!(out, "up 1d 01:01:01 (90061 s)\nok\n");
        assert_eq!(fmt_uptime(Duration::from_secs(59)), "00:00:59");
    }

    #[test]
    fn empty_line_answers_ok_and_is_not_counted() {
        let mut c = Console::new();
        let mut h = FakeHost::new();
        assert_eq!(run(&mut c, &mut h, ""), "ok\n");
        assert_eq!(run(&mut c, &mut h, " \t "), "ok\n");
        assert_eq!((c.commands(), c.errors()), (0, 0));
    }

    #[test]
    fn bad_lines_get_one_line_errors_and_are_counted() {
        assert!(err("frobnicate").contains("unknown command 'frobnicate'"));
        assert!(err("STATUS").contains("lower-case"));
        assert!(err("status extra").contains("takes no arguments"));
        assert!(err("stats xml").contains("usage"));
        assert!(err("sta\u{fffd}tus").contains("not valid UTF-8"));
        assert!(err("\u{1b}[A").contains("unknown command '\\u{1b}[A'"));
        let long = "x".repeat(MAX_LINE + 1);
        assert!(err(&long).contains("line too long"));
        // Exactly MAX_LINE bytes is allowed (it is just unknown here).
        assert!(err(&"y".repeat(MAX_LINE)).contains("unknown command"));
        // The echoed command is bounded.
        assert!(err(&"z".repeat(500)).len() < 100);
    }

    #[test]
    fn counters_accumulate_and_show_in_stats() {
        let mut c = Console::new();
        let mut h = FakeHost::new();
        run(&mut c, &mut h, "status");
        run(&mut c, &mut h, "bogus");
        run(&mut c, &mut h, "");
        let out = run(&mut c, &mut h, "stats json");
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(v["console"]["commands"], 3);
        assert_eq!(v["console"]["errors"], 1);
        assert_eq!((c.commands(), c.errors()), (3, 1));
    }
}
