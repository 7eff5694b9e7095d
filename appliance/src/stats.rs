//! Per-core counters. Each pipeline owns one [`Stats`] and bumps plain integers; readers (the
//! console) sum the cores' snapshots, so the fast path has no shared mutable state.
use std::ops::AddAssign;

/// Every counter the appliance keeps, by layer. All are monotonic except the gauges marked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    // Ethernet / IP
    pub eth_rx_frames: u64,
    pub eth_rx_bad: u64,
    pub arp_requests_answered: u64,
    pub arp_replies: u64,
    pub arp_announcements_sent: u64,
    /// ARP packets from another MAC address that claim our IP address.
    pub arp_address_conflicts: u64,
    pub ip_rx_bad: u64,
    pub ip_rx_not_ours: u64,
    /// IPv4 fragments, dropped: the appliance neither reassembles nor sends them (its TCP
    /// peers set DF and find the path MTU; a fragment is a broken path or a flood).
    pub ip_rx_fragments: u64,
    pub icmp_echo_answered: u64,
    // TCP
    pub tcp_rx_segments: u64,
    pub tcp_tx_segments: u64,
    pub tcp_rx_bad: u64,
    /// Received segments whose checksum the port verified (receive checksum offload): the
    /// stack did not sum them again.
    pub tcp_rx_checksum_offloaded: u64,
    /// Gauge: connections in the table.
    pub tcp_connections_active: u64,
    pub tcp_connections_opened: u64,
    pub tcp_connections_closed: u64,
    pub tcp_connections_reset: u64,
    pub tcp_connections_refused: u64,
    pub tcp_retransmits: u64,
    pub tcp_fast_retransmits: u64,
    pub tcp_rto_timeouts: u64,
    pub tcp_syn_cookies_sent: u64,
    pub tcp_syn_cookies_accepted: u64,
    pub tcp_syn_dropped: u64,
    pub tcp_rst_sent: u64,
    pub tcp_challenge_acks: u64,
    pub tcp_out_of_window: u64,
    pub tcp_idle_timeouts: u64,
    pub tcp_table_full: u64,
    /// Idle connections dropped to make room for a new one when the table was full.
    pub tcp_evicted: u64,
    /// Segments the NIC's transmit ring refused (taken back and sent in a later round).
    pub tcp_tx_ring_full: u64,
    /// Segments taken back because the application could not give the bytes it had said
    /// were ready (asked again at once from a fresh look; see `App::payload`).
    pub tcp_tx_payload_short: u64,
    // HTTP
    pub http_requests: u64,
    pub http_status_2xx: u64,
    pub http_status_206: u64,
    pub http_status_304: u64,
    pub http_status_400: u64,
    pub http_status_404: u64,
    pub http_status_405: u64,
    pub http_status_408: u64,
    pub http_status_414: u64,
    pub http_status_416: u64,
    pub http_status_431: u64,
    pub http_status_other: u64,
    pub http_body_bytes: u64,
    pub http_header_timeouts: u64,
    /// Times a connection found the receive buffer pool empty and stopped reading (zero
    /// window) until a buffer came free.
    pub http_rx_buffer_waits: u64,
    /// Partial request heads closed early (408) to free a receive buffer for waiting
    /// connections (slowloris defence under pool pressure); also in header timeouts.
    pub http_head_evictions: u64,
    // TLS
    pub tls_handshakes: u64,
    /// Of them, sessions resumed with a ticket.
    pub tls_handshakes_resumed: u64,
    pub tls_handshake_failures: u64,
    pub tls_records_sealed: u64,
    pub tls_records_opened: u64,
    /// AEAD contexts built again for a connection that had been idle (each a C allocation:
    /// idle connections hold their raw keys only).
    pub tls_key_contexts_built: u64,
    pub tls_bad_records: u64,
    /// TLS failures by reason (handshakes and records together).
    pub tls_fail_malformed: u64,
    pub tls_fail_incompatible: u64,
    pub tls_fail_peer_alert: u64,
    pub tls_fail_bad_mac: u64,
    pub tls_fail_other: u64,
    // Storage
    pub storage_reads: u64,
    pub storage_read_bytes: u64,
    pub storage_errors: u64,
    /// Gauge: reads in flight.
    pub storage_in_flight: u64,
    /// Times a connection had to wait for a free storage buffer (or read slot) before its
    /// next read: many mean the core's `buffers` are too few for its load.
    pub storage_buffer_waits: u64,
    /// Storage buffers given back, read and not sent, because the peer's window was closed
    /// (a client that stopped reading); their bytes are read again when it opens.
    pub storage_window_releases: u64,
    // Console
    pub console_commands: u64,
    pub console_errors: u64,
}

impl Stats {
    /// Count a TLS failure by its reason ([`crate::tls::TlsError::reason`]).
    pub fn count_tls_failure(&mut self, reason: &str) {
        let c = match reason {
            "malformed_handshake" | "unexpected_message" | "buffer_full" => &mut self.tls_fail_malformed,
            "incompatible_peer" | "no_alpn_match" | "unsupported_suite" => &mut self.tls_fail_incompatible,
            "peer_alert" => &mut self.tls_fail_peer_alert,
            "bad_mac" | "bad_record" => &mut self.tls_fail_bad_mac,
            _ => &mut self.tls_fail_other,
        };
        *c += 1;
    }

    /// Count a TLS handshake (or its handover to a record session) that failed, by reason.
    pub fn count_handshake_failure(&mut self, reason: &str) {
        self.tls_handshake_failures += 1;
        self.count_tls_failure(reason);
    }

    /// Count an HTTP response by status.
    pub fn count_status(&mut self, status: u16) {
        let c = match status {
            206 => &mut self.http_status_206,
            200..=299 => &mut self.http_status_2xx,
            304 => &mut self.http_status_304,
            400 => &mut self.http_status_400,
            404 => &mut self.http_status_404,
            405 => &mut self.http_status_405,
            408 => &mut self.http_status_408,
            414 => &mut self.http_status_414,
            416 => &mut self.http_status_416,
            431 => &mut self.http_status_431,
            _ => &mut self.http_status_other,
        };
        *c += 1;
    }
}

macro_rules! add_fields {
    ($a:ident, $b:ident; $($f:ident),* $(,)?) => { $( $a.$f += $b.$f; )* };
}

impl AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        add_fields!(self, o;
            eth_rx_frames, eth_rx_bad, arp_requests_answered, arp_replies, arp_announcements_sent, arp_address_conflicts, ip_rx_bad, ip_rx_not_ours, ip_rx_fragments,
            icmp_echo_answered, tcp_rx_segments, tcp_tx_segments, tcp_rx_bad, tcp_rx_checksum_offloaded, tcp_connections_active,
            tcp_connections_opened, tcp_connections_closed, tcp_connections_reset,
            tcp_connections_refused, tcp_retransmits, tcp_fast_retransmits, tcp_rto_timeouts,
            tcp_syn_cookies_sent, tcp_syn_cookies_accepted, tcp_syn_dropped, tcp_rst_sent,
            tcp_challenge_acks, tcp_out_of_window, tcp_idle_timeouts, tcp_table_full, tcp_evicted, tcp_tx_ring_full, tcp_tx_payload_short, http_requests,
            http_status_2xx, http_status_206, http_status_304, http_status_400, http_status_404,
            http_status_405, http_status_408, http_status_414, http_status_416, http_status_431, http_status_other,
            http_body_bytes, http_header_timeouts, http_rx_buffer_waits, http_head_evictions, tls_handshakes, tls_handshakes_resumed, tls_handshake_failures,
            tls_records_sealed, tls_records_opened, tls_key_contexts_built, tls_bad_records, tls_fail_malformed,
            tls_fail_incompatible, tls_fail_peer_alert, tls_fail_bad_mac, tls_fail_other, storage_reads,
            storage_read_bytes, storage_errors, storage_in_flight, storage_buffer_waits, storage_window_releases, console_commands, console_errors,
        );
    }
}
