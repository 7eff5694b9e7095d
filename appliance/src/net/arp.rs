//! The ARP cache: answers for our address are built by the interface; this keeps what we
//! learned (from requests, replies and the frames of connections) and paces our requests.
use super::{Instant, SEC};

const ENTRIES: usize = 64;
const LIFETIME: u64 = 300 * SEC;
const RETRY: u64 = SEC;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    ip: [u8; 4],
    mac: [u8; 6],
    expires: Instant,
    valid: bool,
}

/// A small fixed cache (the appliance talks to its gateway and a few on-link peers).
pub struct ArpCache {
    entries: [Entry; ENTRIES],
    /// Address we last asked for and when, to pace requests.
    last_request: Option<([u8; 4], Instant)>,
}

impl Default for ArpCache {
    fn default() -> Self {
        ArpCache { entries: [Entry::default(); ENTRIES], last_request: None }
    }
}

impl ArpCache {
    pub fn lookup(&self, ip: [u8; 4], now: Instant) -> Option<[u8; 6]> {
        self.entries.iter().find(|e| e.valid && e.ip == ip && e.expires > now).map(|e| e.mac)
    }

    pub fn insert(&mut self, ip: [u8; 4], mac: [u8; 6], now: Instant) {
        let i = self
            .entries
            .iter()
            .position(|e| e.valid && e.ip == ip)
            .or_else(|| self.entries.iter().position(|e| !e.valid || e.expires <= now))
            .unwrap_or_else(|| {
                // Full of live entries: replace the one closest to expiry.
                (0..ENTRIES).min_by_key(|&i| self.entries[i].expires).unwrap_or(0)
            });
        self.entries[i] = Entry { ip, mac, expires: now + LIFETIME, valid: true };
    }

    /// Whether to send a request for `ip` now (at most one a second per address).
    pub fn should_request(&mut self, ip: [u8; 4], now: Instant) -> bool {
        match self.last_request {
            Some((a, t)) if a == ip && now < t + RETRY => false,
            _ => {
                self.last_request = Some((ip, now));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_expires_and_paces_requests() {
        let mut c = ArpCache::default();
        c.insert([10, 0, 0, 1], [2, 0, 0, 0, 0, 1], 0);
        assert_eq!(c.lookup([10, 0, 0, 1], 1), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(c.lookup([10, 0, 0, 1], LIFETIME + 1), None);
        assert!(c.should_request([10, 0, 0, 9], 0));
        assert!(!c.should_request([10, 0, 0, 9], SEC / 2));
        assert!(c.should_request([10, 0, 0, 9], SEC));
        for i in 0..200u8 {
            c.insert([10, 0, 1, i], [2, 0, 0, 0, 1, i], 10);
        }
        assert_eq!(c.lookup([10, 0, 1, 199], 11), Some([2, 0, 0, 0, 1, 199]));
    }
}
