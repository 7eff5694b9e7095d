//! Which AES-GCM implementation seals the response records on this CPU, chosen at start by
//! measuring both. aws-lc-rs has AES-GCM code for AVX-512 and for 128-bit AES-NI only; ring
//! has BoringSSL's VAES/AVX2 code as well. So aws-lc-rs wins where the CPU shows AVX-512
//! (11 against 9.6 GB/s on the hosts of 2026-12-05) and ring where it has VAES but no
//! AVX-512 (7.6 against 4.1 GB/s, an AMD EPYC guest, 2026-12-07): a fixed choice is wrong by
//! up to 1.9x on one of them (docs/tls.md). Handshakes, control records and opening stay on
//! aws-lc-rs; only the bulk seal ([`super::record::seal_split`]) changes hands.
use std::time::{Duration, Instant};

use super::keys::{AeadSuite, Keys, TlsVersion};

/// An AES-GCM implementation the fast path can seal records with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AeadImpl {
    #[value(name = "aws-lc-rs")]
    AwsLcRs,
    #[value(name = "ring")]
    Ring,
}

impl AeadImpl {
    pub const ALL: [AeadImpl; 2] = [AeadImpl::AwsLcRs, AeadImpl::Ring];

    pub fn name(self) -> &'static str {
        match self {
            AeadImpl::AwsLcRs => "aws-lc-rs",
            AeadImpl::Ring => "ring",
        }
    }

    /// The same implementation among the ones `bench` measures.
    pub fn provider(self) -> super::bench::AeadProvider {
        match self {
            AeadImpl::AwsLcRs => super::bench::AeadProvider::AwsLcRs,
            AeadImpl::Ring => super::bench::AeadProvider::Ring,
        }
    }
}

/// The implementation in use and what decided it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AeadChoice {
    pub chosen: AeadImpl,
    /// GB/s each sealed a chunk's records at, in [`AeadImpl::ALL`]'s order; None when the
    /// operator named one (`serve --aead`).
    pub measured: Option<[f64; 2]>,
}

/// aws-lc-rs, as an [`crate::server::http_app::HttpApp`] seals until told otherwise.
impl Default for AeadChoice {
    fn default() -> AeadChoice {
        AeadChoice::named(AeadImpl::AwsLcRs)
    }
}

impl AeadChoice {
    /// What the operator named, unmeasured.
    pub fn named(chosen: AeadImpl) -> AeadChoice {
        AeadChoice { chosen, measured: None }
    }

    /// One line for the log and the console: "ring (measured at start: aws-lc-rs 4.01 GB/s,
    /// ring 7.52 GB/s)".
    pub fn describe(&self) -> String {
        match self.measured {
            None => format!("{} (as --aead names)", self.chosen.name()),
            Some([aws_lc, ring]) => format!("{} (measured at start: aws-lc-rs {aws_lc:.2} GB/s, ring {ring:.2} GB/s)", self.chosen.name()),
        }
    }
}

/// Bytes of one measured chunk: as many records as a storage buffer holds.
const CHUNK: usize = crate::server::http_app::CHUNK;

/// Measure each implementation sealing a chunk's 16 KiB TLS 1.3 AES-128-GCM records in
/// place with the fast path's record function, `rounds` rounds of about `round` each, taken
/// in turn so that a slow spell falls on both; the faster by its best round is chosen (aws-lc-rs
/// on a tie). About `2 * rounds * round` of this core's time.
pub fn measure(rounds: u32, round: Duration) -> AeadChoice {
    let keys = Keys::new(TlsVersion::Tls13, AeadSuite::Aes128Gcm, &[0x42; 16], &[0x24; 12]).expect("16-byte key");
    let mut buf = vec![0x5au8; crate::server::http_app::BUFFER_LEN];
    let mut best = [0f64; 2];
    let mut seq = 0u64;
    for _ in 0..rounds.max(1) {
        for (i, with) in AeadImpl::ALL.into_iter().enumerate() {
            let start = Instant::now();
            let mut bytes = 0usize;
            // A chunk at least; a seal that fails (it cannot: the key and buffer are fixed)
            // ends the round with what it sealed.
            while let Some(n) = seal_chunk_records(&keys, with, &mut buf, CHUNK, &mut seq) {
                bytes += n;
                if start.elapsed() >= round {
                    break;
                }
            }
            best[i] = best[i].max(bytes as f64 / start.elapsed().as_secs_f64() / 1e9);
        }
    }
    // aws-lc-rs unless ring is faster by more than the rounds' noise.
    let chosen = if best[1] > best[0] * 1.03 { AeadImpl::Ring } else { AeadImpl::AwsLcRs };
    AeadChoice { chosen, measured: Some(best) }
}

/// What `serve` and `bench` measure at start: 5 rounds of 10 ms each, 0.1 s in all.
pub fn measure_at_start() -> AeadChoice {
    measure(5, Duration::from_millis(10))
}

/// Seal the records of `buf[..chunk]` with `with` as the pipeline seals a chunk (a key for
/// the chunk, each record borrowing the byte after it); returns the bytes sealed.
fn seal_chunk_records(keys: &Keys, with: AeadImpl, buf: &mut [u8], chunk: usize, seq: &mut u64) -> Option<usize> {
    super::bench::seal_chunk_records(keys, &keys.bulk_key(with), buf, chunk, None, seq).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measuring_chooses_one_and_reports_both() {
        let choice = measure(1, Duration::from_millis(2));
        let gbps = choice.measured.unwrap();
        assert!(gbps.iter().all(|g| g.is_finite() && *g > 0.0), "{gbps:?}");
        let text = choice.describe();
        assert!(text.starts_with(choice.chosen.name()) && text.contains("aws-lc-rs") && text.contains("ring"), "{text}");
        assert_eq!(AeadChoice::named(AeadImpl::Ring).describe(), "ring (as --aead names)");
    }

    /// Both implementations seal a chunk to the same bytes, the borrowed bytes given back.
    #[test]
    fn both_seal_a_chunk_to_the_same_bytes() {
        let keys = Keys::new(TlsVersion::Tls13, AeadSuite::Aes128Gcm, &[7; 16], &[9; 12]).unwrap();
        let plain: Vec<u8> = (0..3 * super::super::layout::RECORD_PLAINTEXT as usize + 100).map(|i| (i * 31 + 7) as u8).collect();
        let sealed: Vec<Vec<u8>> = AeadImpl::ALL
            .into_iter()
            .map(|with| {
                let mut buf = plain.clone();
                let mut seq = 5;
                assert_eq!(seal_chunk_records(&keys, with, &mut buf, plain.len(), &mut seq), Some(plain.len()));
                assert_eq!(seq, 9);
                buf
            })
            .collect();
        assert_ne!(sealed[0], plain);
        assert_eq!(sealed[0], sealed[1]);
    }
}
