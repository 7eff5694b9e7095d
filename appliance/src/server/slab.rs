//! A slab of fixed capacity: per-connection state that not every connection holds (TLS
//! sessions and handshakes, queued responses) lives here instead of in a box of its own, so
//! that accepting a connection or answering a request allocates nothing. The capacity is
//! reserved at start-up; entries are written (and their pages touched) only when first used,
//! so a slab sized for every connection costs memory for those that use it.

/// Where an entry lives in its slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabKey(u32);

/// A key no slab hands out (a slab's capacity is below it): fills unused places of
/// fixed-size arrays of keys.
impl Default for SlabKey {
    fn default() -> Self {
        SlabKey(NONE)
    }
}

enum Entry<T> {
    Used(T),
    /// Free, with the next free entry (or `NONE`).
    Free(u32),
}

const NONE: u32 = u32::MAX;

pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    free_head: u32,
    used: usize,
}

impl<T> Slab<T> {
    pub fn with_capacity(capacity: usize) -> Self {
        Slab { entries: Vec::with_capacity(capacity.min(NONE as usize)), free_head: NONE, used: 0 }
    }

    /// Store `value`; when the slab is full, `value` comes back. Never allocates.
    pub fn insert(&mut self, value: T) -> Result<SlabKey, T> {
        if self.free_head != NONE {
            let key = self.free_head;
            let entry = &mut self.entries[key as usize];
            let Entry::Free(next) = *entry else { unreachable!("the free list holds only free entries") };
            *entry = Entry::Used(value);
            self.free_head = next;
            self.used += 1;
            return Ok(SlabKey(key));
        }
        if self.entries.len() == self.entries.capacity() {
            return Err(value);
        }
        self.entries.push(Entry::Used(value));
        self.used += 1;
        Ok(SlabKey(self.entries.len() as u32 - 1))
    }

    /// Take the entry out, freeing its place. `None` for a free place.
    pub fn remove(&mut self, key: SlabKey) -> Option<T> {
        let entry = self.entries.get_mut(key.0 as usize)?;
        if matches!(entry, Entry::Free(_)) {
            return None;
        }
        let Entry::Used(value) = std::mem::replace(entry, Entry::Free(self.free_head)) else { return None };
        self.free_head = key.0;
        self.used -= 1;
        Some(value)
    }

    /// Start loading the entry at `key` into the cache without waiting for it.
    pub fn prefetch(&self, key: SlabKey) {
        if let Some(e) = self.entries.get(key.0 as usize) {
            crate::sys::prefetch(e, usize::MAX);
        }
    }

    pub fn get(&self, key: SlabKey) -> Option<&T> {
        match self.entries.get(key.0 as usize)? {
            Entry::Used(v) => Some(v),
            Entry::Free(_) => None,
        }
    }

    pub fn get_mut(&mut self, key: SlabKey) -> Option<&mut T> {
        match self.entries.get_mut(key.0 as usize)? {
            Entry::Used(v) => Some(v),
            Entry::Free(_) => None,
        }
    }

    /// Entries in use.
    pub fn len(&self) -> usize {
        self.used
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Bytes of one entry.
    pub const fn entry_bytes() -> usize {
        std::mem::size_of::<Entry<T>>()
    }
}

impl<T> std::ops::Index<SlabKey> for Slab<T> {
    type Output = T;
    /// A key is only indexed while its owner holds it (taken from `insert`, not yet given to
    /// `remove`).
    fn index(&self, key: SlabKey) -> &T {
        self.get(key).expect("a slab key indexed after its entry was removed")
    }
}

impl<T> std::ops::IndexMut<SlabKey> for Slab<T> {
    fn index_mut(&mut self, key: SlabKey) -> &mut T {
        self.get_mut(key).expect("a slab key indexed after its entry was removed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_slab_gives_the_value_back_and_reuses_freed_places() {
        let mut s = Slab::with_capacity(2);
        let a = s.insert("a").unwrap();
        let b = s.insert("b").unwrap();
        assert_eq!(s.insert("c"), Err("c"));
        assert_eq!((s.len(), s.capacity()), (2, 2));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None, "removed twice");
        assert_eq!(s.get(a), None);
        let c = s.insert("c").unwrap();
        assert_eq!(c, a, "the freed place is used again");
        assert_eq!((s.get(b), s.get(c)), (Some(&"b"), Some(&"c")));
        *s.get_mut(b).unwrap() = "B";
        assert_eq!(s.remove(b), Some("B"));
        assert_eq!(s.remove(SlabKey(7)), None, "out of range");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn inserting_never_grows_the_reservation() {
        let mut s = Slab::with_capacity(64);
        let keys: Vec<_> = (0..64).map(|i| s.insert(i).unwrap()).collect();
        for k in keys.iter().step_by(2) {
            s.remove(*k);
        }
        for i in 0..32 {
            s.insert(100 + i).unwrap();
        }
        assert!(s.insert(0).is_err());
        assert_eq!(s.capacity(), 64);
    }
}
