//! Server time of a TLS handshake, full (with and without tickets issued at its end) against
//! resumed with a session ticket, TLS 1.3 and TLS 1.2, measured side by side in one run
//! (ECDSA P-256 certificate, X25519): `cargo bench -p appliance --bench handshake [-- --count N]`.
use appliance::loopback::test_tls_configs_for;
use appliance::tls::bench::measure_handshakes_us;

fn main() {
    let mut count = 2000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => count = args.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "--bench" => {} // cargo bench passes it
            other => panic!("unknown argument {other} (try --count N)"),
        }
    }
    println!("server time per handshake, median of {count} each (the kinds in turn):");
    println!("| version | full, no tickets (us) | full, tickets issued (us) | resumed (us) | resumed / full |");
    println!("|---|---|---|---|---|");
    for (name, version) in [("TLS 1.3", &rustls::version::TLS13), ("TLS 1.2", &rustls::version::TLS12)] {
        let (server, client) = test_tls_configs_for(&[version]).expect("test certificates");
        let t = measure_handshakes_us(&server, &client, count).expect("handshakes");
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.2} |",
            t.full_without_tickets,
            t.full,
            t.resumed,
            t.resumed / t.full
        );
    }
}
