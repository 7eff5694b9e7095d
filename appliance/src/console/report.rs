//! The counters as one table of named groups, rendered either as aligned text (`stats`) or as
//! one line of JSON (`stats json`), so both always show the same members under the same names.
use std::fmt::Write;

use super::Counters;

/// A member of a group: a number, a string, or a nested group.
pub(crate) enum Val {
    Num(u64),
    Text(String),
    Group(Vec<(&'static str, Val)>),
    /// Groups of the same members, one per item (the cores).
    List(Vec<Vec<(&'static str, Val)>>),
    /// Counters named at run time (a driver's extended statistics).
    Named(Vec<(String, u64)>),
}

use Val::{Group, List, Named, Num, Text};

/// Every counter, grouped by layer. `console` holds the interpreter's own counts, added to
/// whatever the host put in `Stats::console_*`.
pub(crate) fn table(
    c: &Counters,
    console_commands: u64,
    console_errors: u64,
) -> Vec<(&'static str, Val)> {
    let s = &c.stats;
    vec![
        (
            "nic",
            Group(vec![
                ("driver", Text(c.nic_driver.clone())),
                ("rx_packets", Num(c.nic.rx_packets)),
                ("rx_bytes", Num(c.nic.rx_bytes)),
                ("tx_packets", Num(c.nic.tx_packets)),
                ("tx_bytes", Num(c.nic.tx_bytes)),
                ("rx_dropped", Num(c.nic.rx_dropped)),
                ("tx_dropped", Num(c.nic.tx_dropped)),
                ("rx_errors", Num(c.nic.rx_errors)),
                ("tx_errors", Num(c.nic.tx_errors)),
                ("xstats", Named(c.nic_xstats.clone())),
            ]),
        ),
        (
            "eth",
            Group(vec![
                ("rx_frames", Num(s.eth_rx_frames)),
                ("rx_bad", Num(s.eth_rx_bad)),
            ]),
        ),
        (
            "arp",
            Group(vec![
                ("requests_answered", Num(s.arp_requests_answered)),
                ("replies", Num(s.arp_replies)),
                ("announcements_sent", Num(s.arp_announcements_sent)),
                ("address_conflicts", Num(s.arp_address_conflicts)),
            ]),
        ),
        (
            "ip",
            Group(vec![
                ("rx_bad", Num(s.ip_rx_bad)),
                ("rx_not_ours", Num(s.ip_rx_not_ours)),
                ("rx_fragments", Num(s.ip_rx_fragments)),
            ]),
        ),
        (
            "icmp",
            Group(vec![("echo_answered", Num(s.icmp_echo_answered))]),
        ),
        (
            "tcp",
            Group(vec![
                ("connections_active", Num(s.tcp_connections_active)),
                ("connections_opened", Num(s.tcp_connections_opened)),
                ("connections_closed", Num(s.tcp_connections_closed)),
                ("connections_reset", Num(s.tcp_connections_reset)),
                ("connections_refused", Num(s.tcp_connections_refused)),
                ("rx_segments", Num(s.tcp_rx_segments)),
                ("tx_segments", Num(s.tcp_tx_segments)),
                ("rx_bad", Num(s.tcp_rx_bad)),
                ("rx_checksum_offloaded", Num(s.tcp_rx_checksum_offloaded)),
                ("retransmits", Num(s.tcp_retransmits)),
                ("fast_retransmits", Num(s.tcp_fast_retransmits)),
                ("rto_timeouts", Num(s.tcp_rto_timeouts)),
                ("syn_cookies_sent", Num(s.tcp_syn_cookies_sent)),
                ("syn_cookies_accepted", Num(s.tcp_syn_cookies_accepted)),
                ("syn_dropped", Num(s.tcp_syn_dropped)),
                ("rst_sent", Num(s.tcp_rst_sent)),
                ("challenge_acks", Num(s.tcp_challenge_acks)),
                ("out_of_window", Num(s.tcp_out_of_window)),
                ("idle_timeouts", Num(s.tcp_idle_timeouts)),
                ("table_full", Num(s.tcp_table_full)),
                ("evicted", Num(s.tcp_evicted)),
                ("tx_ring_full", Num(s.tcp_tx_ring_full)),
                ("tx_payload_short", Num(s.tcp_tx_payload_short)),
            ]),
        ),
        (
            "http",
            Group(vec![
                ("requests", Num(s.http_requests)),
                ("body_bytes", Num(s.http_body_bytes)),
                ("header_timeouts", Num(s.http_header_timeouts)),
                ("rx_buffer_waits", Num(s.http_rx_buffer_waits)),
                ("head_evictions", Num(s.http_head_evictions)),
                (
                    "status",
                    // "2xx" counts every 2xx answer except 206, which has its own member.
                    Group(vec![
                        ("2xx", Num(s.http_status_2xx)),
                        ("206", Num(s.http_status_206)),
                        ("304", Num(s.http_status_304)),
                        ("400", Num(s.http_status_400)),
                        ("404", Num(s.http_status_404)),
                        ("405", Num(s.http_status_405)),
                        ("408", Num(s.http_status_408)),
                        ("414", Num(s.http_status_414)),
                        ("416", Num(s.http_status_416)),
                        ("431", Num(s.http_status_431)),
                        ("other", Num(s.http_status_other)),
                    ]),
                ),
            ]),
        ),
        (
            "tls",
            Group(vec![
                ("handshakes", Num(s.tls_handshakes)),
                ("handshakes_resumed", Num(s.tls_handshakes_resumed)),
                ("handshake_failures", Num(s.tls_handshake_failures)),
                ("records_sealed", Num(s.tls_records_sealed)),
                ("records_opened", Num(s.tls_records_opened)),
                ("key_contexts_built", Num(s.tls_key_contexts_built)),
                ("bad_records", Num(s.tls_bad_records)),
                (
                    "failures",
                    Group(vec![
                        ("malformed", Num(s.tls_fail_malformed)),
                        ("incompatible", Num(s.tls_fail_incompatible)),
                        ("peer_alert", Num(s.tls_fail_peer_alert)),
                        ("bad_mac", Num(s.tls_fail_bad_mac)),
                        ("other", Num(s.tls_fail_other)),
                    ]),
                ),
            ]),
        ),
        (
            "storage",
            // reads/read_bytes/errors/timeouts/resets/mapped_reads are the backends' own counts (the device
            // view), summed over the drives; pipeline_* are what the per-core pipelines counted.
            Group(vec![
                ("backend", Text(c.storage_backend.clone())),
                ("reads", Num(c.storage.reads)),
                ("read_bytes", Num(c.storage.read_bytes)),
                ("errors", Num(c.storage.errors)),
                ("timeouts", Num(c.storage.timeouts)),
                ("resets", Num(c.storage.resets)),
                ("mapped_reads", Num(c.storage.mapped_reads)),
                ("in_flight", Num(s.storage_in_flight)),
                ("buffer_waits", Num(s.storage_buffer_waits)),
                ("window_releases", Num(s.storage_window_releases)),
                ("pipeline_reads", Num(s.storage_reads)),
                ("pipeline_read_bytes", Num(s.storage_read_bytes)),
                ("pipeline_errors", Num(s.storage_errors)),
                (
                    "drives",
                    // Each drive's own counts (the members above are their sums), drive 0 first.
                    List(
                        c.drives
                            .iter()
                            .enumerate()
                            .map(|(i, d)| {
                                vec![
                                    ("drive", Num(i as u64)),
                                    ("source", Text(d.source.clone())),
                                    ("backend", Text(d.backend.clone())),
                                    ("reads", Num(d.counters.reads)),
                                    ("read_bytes", Num(d.counters.read_bytes)),
                                    ("errors", Num(d.counters.errors)),
                                    ("timeouts", Num(d.counters.timeouts)),
                                    ("resets", Num(d.counters.resets)),
                                    ("mapped_reads", Num(d.counters.mapped_reads)),
                                ]
                            })
                            .collect(),
                    ),
                ),
            ]),
        ),
        (
            "console",
            Group(vec![
                ("commands", Num(s.console_commands + console_commands)),
                ("errors", Num(s.console_errors + console_errors)),
            ]),
        ),
        (
            "cores",
            List(
                c.per_core
                    .iter()
                    .map(|p| {
                        vec![
                            ("core", Num(p.core as u64)),
                            ("connections_active", Num(p.connections_active)),
                            ("connections_opened", Num(p.connections_opened)),
                            ("http_requests", Num(p.http_requests)),
                            ("http_body_bytes", Num(p.http_body_bytes)),
                            ("nic_rx_packets", Num(p.nic_rx_packets)),
                            ("nic_tx_bytes", Num(p.nic_tx_bytes)),
                            ("storage_reads", Num(p.storage_reads)),
                        ]
                    })
                    .collect(),
            ),
        ),
    ]
}

/// Aligned text: a group name on its own line, its members indented; nested groups' members
/// are named "<group> <member>".
pub(crate) fn write_text(out: &mut String, table: &[(&'static str, Val)]) {
    for (name, val) in table {
        match val {
            Group(members) => {
                out.push_str(name);
                out.push('\n');
                write_members(out, "", members);
            }
            Num(n) => {
                let _ = writeln!(out, "{name:<26}{n}");
            }
            Text(t) => {
                let _ = writeln!(out, "{name:<26}{t}");
            }
            List(items) => {
                out.push_str(name);
                out.push('\n');
                for item in items {
                    write_list_item(out, item);
                }
            }
            Named(pairs) => {
                for (n, v) in pairs {
                    let _ = writeln!(out, "{name} {n:<21}{v}");
                }
            }
        }
    }
}

/// One item of a list on one line: "  member value member value ...".
fn write_list_item(out: &mut String, item: &[(&'static str, Val)]) {
    out.push(' ');
    for (name, val) in item {
        match val {
            Num(n) => {
                let _ = write!(out, " {name} {n}");
            }
            Text(t) => {
                let _ = write!(out, " {name} {t}");
            }
            Group(_) | List(_) | Named(_) => {}
        }
    }
    out.push('\n');
}

fn write_members(out: &mut String, prefix: &str, members: &[(&'static str, Val)]) {
    for (name, val) in members {
        let key = if prefix.is_empty() {
            (*name).to_string()
        } else {
            format!("{prefix} {name}")
        };
        match val {
            Num(n) => {
                let _ = writeln!(out, "  {key:<24}{n}");
            }
            Text(t) => {
                let _ = writeln!(out, "  {key:<24}{t}");
            }
            Group(inner) => write_members(out, &key, inner),
            List(items) => {
                for item in items {
                    write_list_item(out, item);
                }
            }
            Named(pairs) => {
                for (n, v) in pairs {
                    let _ = writeln!(out, "  {key} {n:<width$}{v}", width = 23usize.saturating_sub(key.len()));
                }
            }
        }
    }
}

/// One JSON object, no newline.
pub(crate) fn write_json(out: &mut String, members: &[(&'static str, Val)]) {
    out.push('{');
    for (i, (name, val)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(out, name);
        out.push(':');
        match val {
            Num(n) => {
                let _ = write!(out, "{n}");
            }
            Text(t) => write_json_string(out, t),
            Group(inner) => write_json(out, inner),
            List(items) => {
                out.push('[');
                for (j, item) in items.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_json(out, item);
                }
                out.push(']');
            }
            Named(pairs) => {
                out.push('{');
                for (j, (n, v)) in pairs.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_json_string(out, n);
                    let _ = write!(out, ":{v}");
                }
                out.push('}');
            }
        }
    }
    out.push('}');
}

/// A JSON string literal with the escapes RFC 8259 requires.
pub(crate) fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let mut out = String::new();
        write_json_string(&mut out, "a\"b\\c\n\u{1}\u{7f}é");
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\n\u{1}\u{7f}é");
    }

    #[test]
    fn console_counts_add_to_host_counts() {
        let mut c = Counters::default();
        c.stats.console_commands = 5;
        let t = table(&c, 3, 1);
        let mut out = String::new();
        write_json(&mut out, &t);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["console"]["commands"], 8);
        assert_eq!(v["console"]["errors"], 1);
    }
}
