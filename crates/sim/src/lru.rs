//! A least-recently-used cache of whole files, bounded in bytes, O(1) per access.
//!
//! Keys are file ids (dense `u32`s from a [`FileTable`](crate::workload::FileTable)); only sizes
//! are kept, not contents. Entries live in a slab linked into a doubly-linked recency list, with a
//! hash map from key to slot: a hit moves one entry to the front, an insertion evicts from the
//! back until the new file fits. A file larger than the whole cache is never cached (and evicts
//! nothing), as a server's file cache would refuse it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Marks the end of the recency list.
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Slot {
    key: u32,
    size: u64,
    /// Towards the most recently used end.
    prev: u32,
    /// Towards the least recently used end.
    next: u32,
}

/// Hashes a `u32` key by one multiplication (Fibonacci hashing): keys are small dense ids, so
/// SipHash's protection against chosen keys buys nothing here and would cost most of an access.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, key: u32) {
        self.0 = (u64::from(key) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// An LRU set of files with a capacity in bytes.
#[derive(Debug, Clone)]
pub struct LruCache {
    capacity_bytes: u64,
    used_bytes: u64,
    slot_of: IdMap<u32>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next to go.
    tail: u32,
    evictions: u64,
}

impl LruCache {
    pub fn new(capacity_bytes: u64) -> Self {
        LruCache {
            capacity_bytes,
            used_bytes: 0,
            slot_of: IdMap::default(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            head: NIL,
            tail: NIL,
            evictions: 0,
        }
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Bytes held by the cached files.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Number of cached files.
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// Files evicted so far to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Whether `key` is cached, without changing its recency.
    pub fn contains(&self, key: u32) -> bool {
        self.slot_of.contains_key(&key)
    }

    /// A lookup: if `key` is cached, makes it the most recently used and returns true.
    pub fn touch(&mut self, key: u32) -> bool {
        match self.slot_of.get(&key) {
            Some(&slot) => {
                self.move_to_front(slot);
                true
            }
            None => false,
        }
    }

    /// Caches `key` of `size` bytes as the most recently used file, evicting least recently used
    /// files until it fits. Returns false, changing nothing, if the file is larger than the whole
    /// cache. A key already cached is refreshed (and takes its new size).
    pub fn insert(&mut self, key: u32, size: u64) -> bool {
        if size > self.capacity_bytes {
            return false;
        }
        if let Some(&slot) = self.slot_of.get(&key) {
            // Re-inserted with a new size (a file that changed): account for the difference.
            let entry = &mut self.slots[slot as usize];
            self.used_bytes = self.used_bytes - entry.size + size;
            entry.size = size;
            self.move_to_front(slot);
            self.evict_until_fits(0, key);
            return true;
        }
        self.evict_until_fits(size, NIL);
        let entry = Slot {
            key,
            size,
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot as usize] = entry;
                slot
            }
            None => {
                self.slots.push(entry);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 cached files")
            }
        };
        self.slot_of.insert(key, slot);
        self.used_bytes += size;
        self.push_front(slot);
        true
    }

    /// Cached keys from the most to the least recently used.
    pub fn keys_by_recency(&self) -> impl Iterator<Item = u32> + '_ {
        let mut slot = self.head;
        std::iter::from_fn(move || {
            if slot == NIL {
                return None;
            }
            let entry = &self.slots[slot as usize];
            slot = entry.next;
            Some(entry.key)
        })
    }

    /// Evicts from the least recently used end until `incoming` more bytes fit; never `keep`.
    fn evict_until_fits(&mut self, incoming: u64, keep: u32) {
        while self.used_bytes + incoming > self.capacity_bytes && self.tail != NIL {
            let victim = self.tail;
            let entry = &self.slots[victim as usize];
            if entry.key == keep {
                // Only the kept file is left and it fits by itself (checked by the caller).
                break;
            }
            let (key, size) = (entry.key, entry.size);
            self.unlink(victim);
            self.slot_of.remove(&key);
            self.used_bytes -= size;
            self.free_slots.push(victim);
            self.evictions += 1;
        }
    }

    fn move_to_front(&mut self, slot: u32) {
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    fn unlink(&mut self, slot: u32) {
        let Slot { prev, next, .. } = self.slots[slot as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, slot: u32) {
        let old_head = self.head;
        {
            let entry = &mut self.slots[slot as usize];
            entry.prev = NIL;
            entry.next = old_head;
        }
        if old_head == NIL {
            self.tail = slot;
        } else {
            self.slots[old_head as usize].prev = slot;
        }
        self.head = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn recency(cache: &LruCache) -> Vec<u32> {
        cache.keys_by_recency().collect()
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut cache = LruCache::new(300);
        assert!(cache.insert(1, 100));
        assert!(cache.insert(2, 100));
        assert!(cache.insert(3, 100));
        assert_eq!(recency(&cache), [3, 2, 1]);
        // A hit on 1 makes 2 the oldest.
        assert!(cache.touch(1));
        assert_eq!(recency(&cache), [1, 3, 2]);
        assert!(cache.insert(4, 100));
        assert_eq!(recency(&cache), [4, 1, 3]);
        assert!(!cache.contains(2));
        assert_eq!(cache.evictions(), 1);
        assert_eq!(cache.used_bytes(), 300);
    }

    #[test]
    fn capacity_is_in_bytes_and_a_big_file_evicts_several() {
        let mut cache = LruCache::new(1000);
        for key in 0..10 {
            assert!(cache.insert(key, 100));
        }
        assert_eq!(cache.len(), 10);
        // 450 bytes need the 5 oldest (0..5) gone: 500 + 450 <= 1000.
        assert!(cache.insert(99, 450));
        assert_eq!(recency(&cache), [99, 9, 8, 7, 6, 5]);
        assert_eq!(cache.used_bytes(), 950);
    }

    #[test]
    fn file_larger_than_cache_is_never_cached_and_evicts_nothing() {
        let mut cache = LruCache::new(1000);
        assert!(cache.insert(1, 600));
        assert!(!cache.insert(2, 1001));
        assert!(!cache.contains(2));
        assert!(!cache.touch(2));
        assert_eq!(recency(&cache), [1]);
        // Exactly the capacity fits, evicting everything else.
        assert!(cache.insert(3, 1000));
        assert_eq!(recency(&cache), [3]);
        assert_eq!(cache.used_bytes(), 1000);
    }

    #[test]
    fn reinsert_refreshes_and_resizes() {
        let mut cache = LruCache::new(300);
        cache.insert(1, 100);
        cache.insert(2, 100);
        cache.insert(1, 250);
        // 1 grew to 250: 2 must go.
        assert_eq!(recency(&cache), [1]);
        assert_eq!(cache.used_bytes(), 250);
    }

    #[test]
    fn touch_of_missing_key_is_a_miss() {
        let mut cache = LruCache::new(10);
        assert!(!cache.touch(7));
        assert!(cache.is_empty());
    }

    /// A plain model: a Vec ordered from most to least recent.
    fn model_access(model: &mut Vec<(u32, u64)>, capacity: u64, key: u32, size: u64) {
        if let Some(pos) = model.iter().position(|&(k, _)| k == key) {
            let entry = model.remove(pos);
            model.insert(0, entry);
            return;
        }
        if size > capacity {
            return;
        }
        while model.iter().map(|&(_, s)| s).sum::<u64>() + size > capacity {
            model.pop();
        }
        model.insert(0, (key, size));
    }

    proptest! {
        #[test]
        fn matches_a_naive_lru(accesses in prop::collection::vec(0u32..20, 0..300)) {
            let capacity = 1000;
            let mut cache = LruCache::new(capacity);
            let mut model = Vec::new();
            for key in accesses {
                // Each key has one size, as a file does; some are larger than the cache.
                let size = u64::from(key) * 97 % 1200 + 1;
                if !cache.touch(key) {
                    cache.insert(key, size);
                }
                model_access(&mut model, capacity, key, size);
                let expected: Vec<u32> = model.iter().map(|&(k, _)| k).collect();
                prop_assert_eq!(recency(&cache), expected);
                prop_assert!(cache.used_bytes() <= capacity);
            }
        }
    }
}
