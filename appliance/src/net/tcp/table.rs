//! The fixed-capacity connection table: a slab of entries sized at start-up and an index by
//! 4-tuple, so that every segment finds its connection in O(1) and nothing grows per packet.

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

/// Handle of an entry: slot index and the slot's generation, so a stale handle (timer,
/// storage completion) never reaches a newer connection in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnId {
    pub slot: u32,
    pub gen: u32,
}

/// A slot keeps its generation beside its entry: checking a handle reads the line the
/// entry starts on, which its user reads next anyway (`repr(C)`: the generation first).
#[repr(C)]
struct Slot<T> {
    gen: u32,
    live: Option<(ConnKey, T)>,
}

pub struct ConnTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    index: Index,
}

impl<T> ConnTable<T> {
    pub fn with_capacity(cap: usize) -> Self {
        let mut slots = Vec::with_capacity(cap);
        slots.resize_with(cap, || Slot { gen: 0, live: None });
        ConnTable { slots, free: (0..cap as u32).rev().collect(), index: Index::with_capacity(cap) }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Bytes reserved at start-up for each connection the table can hold: the slot with its
    /// generation, its place on the free list and its index places (at most four a slot).
    pub const fn slot_bytes() -> usize {
        std::mem::size_of::<Slot<T>>() + std::mem::size_of::<u32>() + 4 * std::mem::size_of::<Place>()
    }

    pub fn len(&self) -> usize {
        self.index.len
    }

    pub fn is_empty(&self) -> bool {
        self.index.len == 0
    }

    /// Add an entry for a key the table does not hold; a full table gives `value` back (its
    /// owner may hold resources to free).
    pub fn insert(&mut self, key: ConnKey, value: T) -> Result<ConnId, T> {
        debug_assert!(self.find(&key).is_none(), "{key:?} is in the table already");
        let Some(slot) = self.free.pop() else { return Err(value) };
        let s = &mut self.slots[slot as usize];
        s.live = Some((key, value));
        s.gen = s.gen.wrapping_add(1);
        self.index.insert(key.packed(), slot);
        Ok(ConnId { slot, gen: s.gen })
    }

    pub fn find(&self, key: &ConnKey) -> Option<ConnId> {
        let slots = &self.slots;
        let slot = self.index.find(key.packed(), |slot| slots[slot as usize].live.as_ref().is_some_and(|(k, _)| k == key))?;
        Some(ConnId { slot, gen: slots[slot as usize].gen })
    }

    /// Start loading the index place a lookup of `key` starts at, without waiting for it;
    /// where that place is, for [`ConnTable::prefetch_slot_at`]. Given the keys of a whole
    /// burst of frames before any is handled, the misses of its lookups overlap instead of
    /// each lookup waiting for its own.
    pub fn prefetch_place(&self, key: &ConnKey) -> usize {
        let at = self.index.home(self.index.hash(key.packed()));
        if let Some(p) = self.index.places.get(at) {
            crate::sys::prefetch(p, 1);
        }
        at
    }

    /// Start loading the slot that index place `at` names (the one a lookup finds first),
    /// without waiting for it; which slot, if any.
    pub fn prefetch_slot_at(&self, at: usize) -> Option<u32> {
        let p = self.index.places.get(at).filter(|p| p.slot != EMPTY)?;
        self.prefetch_slot(p.slot);
        Some(p.slot)
    }

    /// Start loading `slot` into the cache without waiting for it (its turn comes later).
    pub fn prefetch_slot(&self, slot: u32) {
        if let Some(s) = self.slots.get(slot as usize) {
            crate::sys::prefetch(s, usize::MAX);
        }
    }

    /// The live entry in `slot`, if any.
    pub fn value_of_slot(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize)?.live.as_ref().map(|(_, v)| v)
    }

    /// The handle of the live entry in `slot`, if any.
    pub fn id_of_slot(&self, slot: u32) -> Option<ConnId> {
        let s = self.slots.get(slot as usize)?;
        s.live.as_ref()?;
        Some(ConnId { slot, gen: s.gen })
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<(&ConnKey, &mut T)> {
        let s = self.slots.get_mut(id.slot as usize).filter(|s| s.gen == id.gen)?;
        s.live.as_mut().map(|(k, v)| (&*k, v))
    }

    pub fn get(&self, id: ConnId) -> Option<(&ConnKey, &T)> {
        let s = self.slots.get(id.slot as usize).filter(|s| s.gen == id.gen)?;
        s.live.as_ref().map(|(k, v)| (k, v))
    }

    pub fn remove(&mut self, id: ConnId) -> Option<(ConnKey, T)> {
        let s = self.slots.get_mut(id.slot as usize).filter(|s| s.gen == id.gen)?;
        let (key, value) = s.live.take()?;
        s.gen = s.gen.wrapping_add(1);
        self.index.remove(key.packed(), id.slot);
        self.free.push(id.slot);
        Some((key, value))
    }

    /// Every live entry, for the console (never on the packet path).
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &ConnKey, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.live.as_ref().map(|(k, v)| (ConnId { slot: i as u32, gen: s.gen }, k, v)))
    }
}

/// One place of the index: the low half of a key's hash and its slot ([`EMPTY`]: no key).
#[derive(Clone, Copy)]
struct Place {
    hash: u32,
    slot: u32,
}

const EMPTY: u32 = u32::MAX;

/// The index: open addressing with linear probing over at least twice as many places as
/// the table has slots (so probe runs stay short), 8 bytes a place: a lookup reads one or two
/// lines of the index and then the slot it names, where the key is checked. Removal shifts
/// the run's later places back instead of leaving tombstones, so that the churn of
/// connections opening and closing never lengthens the runs.
///
/// Keys are hashed with SipHash under a key drawn from the OS's random source at start-up
/// (`std`'s `RandomState`, each table its own). Every key a server sees shares its local
/// port, and the peer picks the rest: a hash whose low bits follow the key's low bits (a bare
/// multiply did) put every connection to one port in the same probe sequence, so each lookup
/// at 10,000 connections scanned hundreds of entries, and a peer that knows the hash can do
/// the same on purpose. (A keyed multiply-and-fold hash measured no faster here: the lookups
/// wait on memory, not on the hash.)
struct Index {
    places: Vec<Place>,
    mask: usize,
    len: usize,
    key: std::collections::hash_map::RandomState,
}

impl Index {
    fn with_capacity(cap: usize) -> Self {
        let n = (2 * cap).next_power_of_two().max(8);
        Index { places: vec![Place { hash: 0, slot: EMPTY }; n], mask: n - 1, len: 0, key: Default::default() }
    }

    fn hash(&self, packed: u64) -> u32 {
        use std::hash::BuildHasher;
        self.key.hash_one(packed) as u32
    }

    /// Where a probe for a key of this hash starts.
    fn home(&self, hash: u32) -> usize {
        hash as usize & self.mask
    }

    /// The slot of the key hashing to `packed` for which `is_key` holds.
    fn find(&self, packed: u64, is_key: impl Fn(u32) -> bool) -> Option<u32> {
        let h = self.hash(packed);
        let mut i = self.home(h);
        loop {
            let p = self.places[i];
            if p.slot == EMPTY {
                return None;
            }
            if p.hash == h && is_key(p.slot) {
                return Some(p.slot);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The table holds fewer keys than half the places: there is always an empty one.
    fn insert(&mut self, packed: u64, slot: u32) {
        let h = self.hash(packed);
        let mut i = self.home(h);
        while self.places[i].slot != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.places[i] = Place { hash: h, slot };
        self.len += 1;
    }

    fn remove(&mut self, packed: u64, slot: u32) {
        let mut i = self.home(self.hash(packed));
        while self.places[i].slot != slot {
            if self.places[i].slot == EMPTY {
                debug_assert!(false, "slot {slot} is not in the index");
                return;
            }
            i = (i + 1) & self.mask;
        }
        // Backward shift: a later place of the run moves into the hole when the hole lies
        // between its home place and it (it would not be found past an empty place).
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let p = self.places[j];
            if p.slot == EMPTY {
                break;
            }
            let home = self.home(p.hash);
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.places[hole] = p;
                hole = j;
            }
        }
        self.places[hole].slot = EMPTY;
        self.len -= 1;
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

    /// The first two queued slots, without taking them.
    pub fn first_two(&self) -> (Option<u32>, Option<u32>) {
        if self.head == NIL {
            return (None, None);
        }
        let second = self.next[self.head as usize];
        (Some(self.head), (second != QUEUE_END).then_some(second))
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

    /// The index places a key by the low bits of its hash. Keys that differ only in what a
    /// peer picks (address and port) must spread over them: 4,096 keys to one local port
    /// fill about 2,600 of 4,096 places at random; a multiply-only hash put them all in one.
    #[test]
    fn keys_to_one_port_spread_over_the_index() {
        let t = ConnTable::<()>::with_capacity(1);
        let places: std::collections::HashSet<u32> = (0..4096u32)
            .map(|i| ConnKey { remote_ip: [10, 0, (i >> 10) as u8, 1], remote_port: 20000 + (i & 1023) as u16, local_port: 443 })
            .map(|k| t.index.hash(k.packed()) & 4095)
            .collect();
        assert!(places.len() > 2000, "{} places for 4,096 keys", places.len());
    }

    /// Two tables draw different hash keys: where a key lands cannot be learnt from another
    /// appliance (or another start of this one).
    #[test]
    fn each_table_hashes_under_its_own_key() {
        let (a, b) = (ConnTable::<()>::with_capacity(1), ConnTable::<()>::with_capacity(1));
        let same = (0..64u64).filter(|&x| a.index.hash(x) == b.index.hash(x)).count();
        assert!(same < 4, "{same} of 64 hashes equal");
    }

    proptest::proptest! {
        /// Any run of inserts and removes (of keys crowded into one port, so that probe runs
        /// meet and removals shift places back) leaves the table agreeing with a map: every
        /// key held is found at its handle, every key removed is gone, and the index holds
        /// as many places as the table holds entries.
        #[test]
        fn inserts_and_removes_agree_with_a_map(ops in proptest::collection::vec((proptest::bool::ANY, 0u16..48), 1..400)) {
            let cap = 24;
            let mut t = ConnTable::with_capacity(cap);
            let mut model: std::collections::HashMap<u16, ConnId> = std::collections::HashMap::new();
            for (add, p) in ops {
                let k = key(p);
                if add && !model.contains_key(&p) {
                    match t.insert(k, p) {
                        Ok(id) => { model.insert(p, id); }
                        Err(v) => proptest::prop_assert!(v == p && model.len() == cap),
                    }
                } else if let Some(id) = model.remove(&p) {
                    proptest::prop_assert_eq!(t.remove(id), Some((k, p)));
                    proptest::prop_assert!(t.get(id).is_none());
                }
                proptest::prop_assert_eq!(t.len(), model.len());
                proptest::prop_assert_eq!(t.index.places.iter().filter(|pl| pl.slot != EMPTY).count(), model.len());
                for q in 0u16..48 {
                    let found = t.find(&key(q));
                    proptest::prop_assert_eq!(found, model.get(&q).copied(), "key {}", q);
                    if let Some(id) = found {
                        proptest::prop_assert_eq!(t.get(id).map(|(_, v)| *v), Some(q));
                    }
                }
            }
        }
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
        assert_eq!(q.first_two(), (Some(2), Some(0)), "looked at, not taken");
        assert_eq!(q.pop_front(), Some(2));
        assert!(q.push_back(2), "popped: may queue again, at the back");
        assert_eq!(q.pop_front(), Some(0));
        assert_eq!(q.pop_front(), Some(3));
        assert_eq!(q.first_two(), (Some(2), None));
        assert_eq!(q.pop_front(), Some(2));
        assert_eq!(q.pop_front(), None);
        assert_eq!(q.first_two(), (None, None));
        assert!(q.is_empty() && !q.contains(2));
        assert!(q.push_back(1));
        assert_eq!(q.pop_front(), Some(1));
    }
}
