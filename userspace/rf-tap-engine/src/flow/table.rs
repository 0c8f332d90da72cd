//! The flow table: a hash index over a slab of flows threaded on a doubly linked list in
//! order of last activity, so finding, touching, evicting the least recently active flow
//! and timing out the idle ones are all O(1) per flow.

use std::{collections::HashMap, hash::Hash};

const NIL: u32 = u32::MAX;

struct Slot<K, V> {
    key: K,
    value: Option<V>,
    /// Towards the oldest.
    prev: u32,
    /// Towards the newest.
    next: u32,
}

pub struct LruTable<K, V> {
    /// foldhash: fast, and seeded per process so hostile keys cannot force collisions.
    index: HashMap<K, u32, foldhash::fast::RandomState>,
    slots: Vec<Slot<K, V>>,
    free: Vec<u32>,
    oldest: u32,
    newest: u32,
}

impl<K: Hash + Eq + Copy, V> Default for LruTable<K, V> {
    fn default() -> Self {
        Self {
            index: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            oldest: NIL,
            newest: NIL,
        }
    }
}

impl<K: Hash + Eq + Copy, V> LruTable<K, V> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn contains(&self, k: &K) -> bool {
        self.index.contains_key(k)
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        let i = *self.index.get(k)?;
        self.slots[i as usize].value.as_ref()
    }

    /// The value, made the most recently active.
    pub fn touch(&mut self, k: &K) -> Option<&mut V> {
        let i = *self.index.get(k)?;
        self.unlink(i);
        self.link_newest(i);
        self.slots[i as usize].value.as_mut()
    }

    /// The value, its place in the order kept.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = *self.index.get(k)?;
        self.slots[i as usize].value.as_mut()
    }

    /// Inserts as the most recently active (replacing a value under the same key).
    pub fn insert(&mut self, k: K, v: V) {
        if let Some(old) = self.remove(&k) {
            drop(old);
        }
        let slot = Slot {
            key: k,
            value: Some(v),
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.link_newest(i);
        self.index.insert(k, i);
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.index.remove(k)?;
        self.unlink(i);
        self.free.push(i);
        self.slots[i as usize].value.take()
    }

    /// The least recently active entry.
    pub fn oldest(&self) -> Option<(&K, &V)> {
        if self.oldest == NIL {
            return None;
        }
        let s = &self.slots[self.oldest as usize];
        s.value.as_ref().map(|v| (&s.key, v))
    }

    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        let k = *self.oldest()?.0;
        self.remove(&k).map(|v| (k, v))
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots
            .iter()
            .filter_map(|s| s.value.as_ref().map(|v| (&s.key, v)))
    }

    /// Empties the table, returning the values.
    pub fn drain(&mut self) -> Vec<V> {
        self.index.clear();
        self.free.clear();
        self.oldest = NIL;
        self.newest = NIL;
        self.slots.drain(..).filter_map(|s| s.value).collect()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.oldest = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.newest = prev,
            n => self.slots[n as usize].prev = prev,
        }
        let s = &mut self.slots[i as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn link_newest(&mut self, i: u32) {
        let old_newest = self.newest;
        {
            let s = &mut self.slots[i as usize];
            s.prev = old_newest;
            s.next = NIL;
        }
        match old_newest {
            NIL => self.oldest = i,
            n => self.slots[n as usize].next = i,
        }
        self.newest = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn order_follows_activity() {
        let mut t = LruTable::default();
        for k in 0..5u32 {
            t.insert(k, k * 10);
        }
        assert_eq!(t.oldest(), Some((&0, &0)));
        t.touch(&0);
        assert_eq!(t.oldest(), Some((&1, &10)));
        assert_eq!(t.remove(&1), Some(10));
        assert_eq!(t.pop_oldest(), Some((2, 20)));
        t.insert(9, 90);
        assert_eq!(t.len(), 4);
        let order: Vec<u32> = std::iter::from_fn(|| t.pop_oldest().map(|(k, _)| k)).collect();
        assert_eq!(order, [3, 4, 0, 9]);
        assert_eq!(t.len(), 0);
    }

    proptest! {
        /// Against a naive model: a Vec in activity order.
        #[test]
        fn matches_a_vec_model(ops in proptest::collection::vec((0u8..4, 0u8..16), 0..300)) {
            let mut t = LruTable::default();
            let mut model: Vec<(u8, u32)> = Vec::new();
            for (n, (op, k)) in ops.into_iter().enumerate() {
                match op {
                    0 => {
                        t.insert(k, n as u32);
                        model.retain(|(mk, _)| *mk != k);
                        model.push((k, n as u32));
                    }
                    1 => {
                        let got = t.touch(&k).copied();
                        let pos = model.iter().position(|(mk, _)| *mk == k);
                        let want = pos.map(|p| model.remove(p));
                        if let Some(w) = want { model.push(w); }
                        prop_assert_eq!(got, want.map(|w| w.1));
                    }
                    2 => {
                        let got = t.remove(&k);
                        let pos = model.iter().position(|(mk, _)| *mk == k);
                        prop_assert_eq!(got, pos.map(|p| model.remove(p).1));
                    }
                    _ => {
                        let got = t.pop_oldest();
                        let want = if model.is_empty() { None } else { Some(model.remove(0)) };
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                prop_assert_eq!(t.oldest().map(|(k, v)| (*k, *v)), model.first().copied());
            }
        }
    }
}
