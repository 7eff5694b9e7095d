//! The fixed-capacity connection table: a slab of entries sized at start-up and an index by
//! 4-tuple, so that every segment finds its connection in O(1) and nothing grows per packet.
use std::collections::hash_map::RandomState;
use std::collections::HashMap;

/// Remote address, remote port and local port; the local address is the stack's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub remote_ip: [u8; 4],
    pub remote_port: u16,
    pub local_port: u16,
}

impl ConnKey {
    pub fn packed(&self) -> u64 {
        (u32::from_be_bytes(self.remote_ip) as u64) << 32 | (self.remote_port as u64) << 16 | self.local_port as u64
    }
}

/// The index hashes keys with SipHash under a key drawn at start-up. Every key a server
/// sees shares its local port, and the peer picks the rest: a hash whose low bits follow the
/// key's low bits (a bare multiply did) put every connection to one port in the same probe
/// sequence, so each lookup at 10,000 connections scanned hundreds of entries, and a peer
/// that knows the hash can do the same on purpose.
type KeyHasher = RandomState;

/// Handle of an entry: slot index and the slot's generation, so a stale handle (timer,
/// storage completion) never reaches a newer connection in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnId {
    pub slot: u32,
    pub gen: u32,
}

pub struct ConnTable<T> {
    slots: Vec<Option<(ConnKey, T)>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    index: HashMap<u64, u32, KeyHasher>,
}

impl<T> ConnTable<T> {
    pub fn with_capacity(cap: usize) -> Self {
        let mut slots = Vec::with_capacity(cap);
        slots.resize_with(cap, || None);
        ConnTable {
            slots,
            gens: vec![0; cap],
            free: (0..cap as u32).rev().collect(),
            index: HashMap::with_capacity_and_hasher(cap, Default::default()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Bytes reserved at start-up for each connection the table can hold: the slot, its
    /// generation, its place on the free list and its index entry (key and slot number).
    pub const fn slot_bytes() -> usize {
        std::mem::size_of::<Option<(ConnKey, T)>>() + 2 * std::mem::size_of::<u32>() + std::mem::size_of::<(u64, u32)>()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Add an entry; a full table gives `value` back (its owner may hold resources to free).
    pub fn insert(&mut self, key: ConnKey, value: T) -> Result<ConnId, T> {
        let Some(slot) = self.free.pop() else { return Err(value) };
        self.slots[slot as usize] = Some((key, value));
        self.gens[slot as usize] = self.gens[slot as usize].wrapping_add(1);
        self.index.insert(key.packed(), slot);
        Ok(ConnId { slot, gen: self.gens[slot as usize] })
    }

    pub fn find(&self, key: &ConnKey) -> Option<ConnId> {
        let slot = *self.index.get(&key.packed())?;
        Some(ConnId { slot, gen: self.gens[slot as usize] })
    }

    /// The handle of the live entry in `slot`, if any.
    pub fn id_of_slot(&self, slot: u32) -> Option<ConnId> {
        self.slots.get(slot as usize)?.as_ref()?;
        Some(ConnId { slot, gen: self.gens[slot as usize] })
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<(&ConnKey, &mut T)> {
        if self.gens.get(id.slot as usize) != Some(&id.gen) {
            return None;
        }
        self.slots[id.slot as usize].as_mut().map(|(k, v)| (&*k, v))
    }

    pub fn get(&self, id: ConnId) -> Option<(&ConnKey, &T)> {
        if self.gens.get(id.slot as usize) != Some(&id.gen) {
            return None;
        }
        self.slots[id.slot as usize].as_ref().map(|(k, v)| (k, v))
    }

    pub fn remove(&mut self, id: ConnId) -> Option<(ConnKey, T)> {
        if self.gens.get(id.slot as usize) != Some(&id.gen) {
            return None;
        }
        let (key, value) = self.slots[id.slot as usize].take()?;
        self.index.remove(&key.packed());
        self.gens[id.slot as usize] = self.gens[id.slot as usize].wrapping_add(1);
        self.free.push(id.slot);
        Some((key, value))
    }

    /// Every live entry, for the console (never on the packet path).
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &ConnKey, &T)> {
        self.slots.iter().enumerate().filter_map(move |(i, s)| {
            s.as_ref().map(|(k, v)| (ConnId { slot: i as u32, gen: self.gens[i] }, k, v))
        })
    }
}

/// A doubly linked list over table slots, threaded through two fixed arrays: the connections
/// that may be evicted when the table is full, least recently active first. Linking,
/// unlinking, moving to the back and popping the front are O(1) and never allocate.
pub struct SlotList {
    prev: Vec<u32>,
    next: Vec<u32>,
    member: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

const NIL: u32 = u32::MAX;

impl SlotList {
    pub fn with_capacity(cap: usize) -> Self {
        SlotList { prev: vec![NIL; cap], next: vec![NIL; cap], member: vec![false; cap], head: NIL, tail: NIL, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, slot: u32) -> bool {
        self.member.get(slot as usize).copied().unwrap_or(false)
    }

    /// Take `slot` out of the list (nothing when it is not in it).
    pub fn unlink(&mut self, slot: u32) {
        if !self.contains(slot) {
            return;
        }
        let (p, n) = (self.prev[slot as usize], self.next[slot as usize]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[slot as usize] = NIL;
        self.next[slot as usize] = NIL;
        self.member[slot as usize] = false;
        self.len -= 1;
    }

    /// Put `slot` at the back (the most recently active end), moving it if it is in the list.
    pub fn push_back(&mut self, slot: u32) {
        self.unlink(slot);
        let s = slot as usize;
        self.prev[s] = self.tail;
        self.next[s] = NIL;
        if self.tail == NIL {
            self.head = slot;
        } else {
            self.next[self.tail as usize] = slot;
        }
        self.tail = slot;
        self.member[s] = true;
        self.len += 1;
    }

    /// The slot at the front (the least recently active), without removing it.
    pub fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }
}

/// A first-in first-out queue of table slots threaded through one array (4 bytes a slot):
/// the connections with something to send. A slot is in it at most once; pushing and popping
/// are O(1) and never allocate.
pub struct SlotQueue {
    /// Per slot: the next queued slot, [`QUEUE_END`] for the last, [`NIL`] when not queued.
    next: Vec<u32>,
    head: u32,
    tail: u32,
    len: usize,
}

const QUEUE_END: u32 = u32::MAX - 1;

impl SlotQueue {
    pub fn with_capacity(cap: usize) -> Self {
        assert!(cap < QUEUE_END as usize, "queue capacity");
        SlotQueue { next: vec![NIL; cap], head: NIL, tail: NIL, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, slot: u32) -> bool {
        self.next.get(slot as usize).is_some_and(|&n| n != NIL)
    }

    /// Queue `slot` at the back; false (and nothing changes) when it is queued already.
    pub fn push_back(&mut self, slot: u32) -> bool {
        if self.contains(slot) {
            return false;
        }
        self.next[slot as usize] = QUEUE_END;
        if self.tail == NIL {
            self.head = slot;
        } else {
            self.next[self.tail as usize] = slot;
        }
        self.tail = slot;
        self.len += 1;
        true
    }

    pub fn pop_front(&mut self) -> Option<u32> {
        if self.head == NIL {
            return None;
        }
        let slot = self.head;
        let n = std::mem::replace(&mut self.next[slot as usize], NIL);
        if n == QUEUE_END {
            self.head = NIL;
            self.tail = NIL;
        } else {
            self.head = n;
        }
        self.len -= 1;
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: u16) -> ConnKey {
        ConnKey { remote_ip: [10, 0, 0, 1], remote_port: p, local_port: 80 }
    }

    #[test]
    fn insert_find_remove_and_stale_ids() {
        let mut t = ConnTable::with_capacity(2);
        let a = t.insert(key(1), "a").unwrap();
        let b = t.insert(key(2), "b").unwrap();
        assert_eq!(t.insert(key(3), "c"), Err("c"));
        assert_eq!(t.find(&key(2)), Some(b));
        assert_eq!(t.remove(a).map(|(_, v)| v), Some("a"));
        assert!(t.get_mut(a).is_none());
        let c = t.insert(key(3), "c").unwrap();
        assert_eq!(c.slot, a.slot);
        assert!(t.get(a).is_none(), "stale handle must not reach the new entry");
        assert_eq!(t.find(&key(1)), None);
        assert_eq!(t.len(), 2);
    }

    /// hashbrown places a key by the low bits of its hash. Keys that differ only in what a
    /// peer picks (address and port) must spread over them: 4,096 keys to one local port
    /// fill about 2,600 of 4,096 places at random; a multiply-only hash put them all in one.
    #[test]
    fn keys_to_one_port_spread_over_the_index() {
        use std::hash::BuildHasher;
        let t = ConnTable::<()>::with_capacity(1);
        let places: std::collections::HashSet<u64> = (0..4096u32)
            .map(|i| ConnKey { remote_ip: [10, 0, (i >> 10) as u8, 1], remote_port: 20000 + (i & 1023) as u16, local_port: 443 })
            .map(|k| t.index.hasher().hash_one(k.packed()) & 4095)
            .collect();
        assert!(places.len() > 2000, "{} places for 4,096 keys", places.len());
    }

    #[test]
    fn slot_list_keeps_least_recent_first() {
        let mut l = SlotList::with_capacity(4);
        assert_eq!(l.front(), None);
        l.push_back(2);
        l.push_back(0);
        l.push_back(3);
        assert_eq!((l.front(), l.len()), (Some(2), 3));
        // Activity on 2 moves it to the back: 0 is now the oldest.
        l.push_back(2);
        assert_eq!((l.front(), l.len()), (Some(0), 3));
        l.unlink(3); // from the middle
        l.unlink(3); // twice is harmless
        assert_eq!(l.len(), 2);
        l.unlink(0);
        assert_eq!(l.front(), Some(2));
        l.unlink(2);
        assert!(l.is_empty() && l.front().is_none());
        l.push_back(1);
        assert_eq!(l.front(), Some(1));
        assert!(l.contains(1) && !l.contains(2));
    }

    #[test]
    fn slot_queue_is_fifo_and_holds_a_slot_once() {
        let mut q = SlotQueue::with_capacity(4);
        assert_eq!(q.pop_front(), None);
        assert!(q.push_back(2));
        assert!(q.push_back(0));
        assert!(!q.push_back(2), "queued already");
        assert!(q.push_back(3));
        assert_eq!((q.len(), q.contains(2), q.contains(1)), (3, true, false));
        assert_eq!(q.pop_front(), Some(2));
        assert!(q.push_back(2), "popped: may queue again, at the back");
        assert_eq!(q.pop_front(), Some(0));
        assert_eq!(q.pop_front(), Some(3));
        assert_eq!(q.pop_front(), Some(2));
        assert_eq!(q.pop_front(), None);
        assert!(q.is_empty() && !q.contains(2));
        assert!(q.push_back(1));
        assert_eq!(q.pop_front(), Some(1));
    }
}
