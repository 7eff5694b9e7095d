//! SYN cookies: when the SYN backlog is full the SYN-ACK's sequence number encodes what we
//! need to finish the handshake (MSS and a time slot) under a keyed hash, and no state is kept
//! until the peer's ACK proves it saw it.
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::net::{Instant, SEC};

/// MSS values a cookie can carry (3 bits); the largest not above the peer's is chosen.
const MSS_TABLE: [u16; 8] = [536, 1200, 1360, 1400, 1440, 1452, 1460, 8960];
/// A cookie is valid for this slot and the one before it.
const SLOT: u64 = 64 * SEC;

pub struct SynCookies {
    key: RandomState,
}

impl Default for SynCookies {
    fn default() -> Self {
        SynCookies { key: RandomState::new() }
    }
}

impl SynCookies {
    fn mac(&self, tuple: u64, client_isn: u32, slot: u32, mss_idx: u32) -> u32 {
        let mut h = self.key.build_hasher();
        h.write_u64(tuple);
        h.write_u32(client_isn);
        h.write_u32(slot);
        h.write_u32(mss_idx);
        (h.finish() as u32) & 0x00ff_ffff
    }

    /// Our initial sequence number for a SYN from `tuple` with sequence `client_isn`.
    pub fn make(&self, now: Instant, tuple: u64, client_isn: u32, peer_mss: u16) -> u32 {
        let mss_idx = MSS_TABLE.iter().rposition(|&m| m <= peer_mss).unwrap_or(0) as u32;
        let slot = ((now / SLOT) & 0x1f) as u32;
        slot << 27 | mss_idx << 24 | self.mac(tuple, client_isn, slot, mss_idx)
    }

    /// Check the ACK completing a cookie handshake (`ack - 1` is our ISN, `seq - 1` the
    /// peer's); returns the MSS it carried.
    pub fn check(&self, now: Instant, tuple: u64, client_isn: u32, cookie: u32) -> Option<u16> {
        let slot = cookie >> 27;
        let mss_idx = (cookie >> 24) & 0x7;
        let cur = ((now / SLOT) & 0x1f) as u32;
        let age = cur.wrapping_sub(slot) & 0x1f;
        if age > 1 || self.mac(tuple, client_isn, slot, mss_idx) != cookie & 0x00ff_ffff {
            return None;
        }
        Some(MSS_TABLE[mss_idx as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_round_trips_and_rejects_forgeries() {
        let c = SynCookies::default();
        let now = 1000 * SEC;
        let isn = c.make(now, 42, 7, 1460);
        assert_eq!(c.check(now, 42, 7, isn), Some(1460));
        assert_eq!(c.check(now + SLOT, 42, 7, isn), Some(1460));
        assert_eq!(c.check(now + 3 * SLOT, 42, 7, isn), None, "expired");
        assert_eq!(c.check(now, 43, 7, isn), None, "other tuple");
        assert_eq!(c.check(now, 42, 8, isn), None, "other client ISN");
        assert_eq!(c.check(now, 42, 7, isn ^ 1), None, "tampered");
        assert_eq!(c.check(now, 42, 7, c.make(now, 42, 7, 1000)), Some(536));
    }
}
