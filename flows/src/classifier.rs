//! Tuple-space-search classifier: one hash subtable per distinct mask,
//! subtables visited in order of their highest priority, stopping early
//! once no remaining subtable can beat the best match found.
//!
//! The design follows the idea of Open vSwitch's `lib/classifier.c`, much
//! simplified (no staged lookup, no prefix tries, no RCU versions):
//!
//! - Every rule is a `(Match, priority)`. All rules with the same mask live
//!   in one subtable, keyed by their (already masked) match key.
//! - A subtable records which of the [`KEY_WORDS`] words its mask touches;
//!   a lookup masks, hashes and compares only those words of the packet's
//!   key. A packet can match at most one hash entry per subtable.
//! - Rules with the same match but different priorities share one hash
//!   entry; the highest priority is stored inline, the others (shadowed for
//!   lookups) in a side list sorted by descending priority.
//! - Subtables are kept sorted by the highest priority they contain. Lookup
//!   walks them in that order and stops as soon as the next subtable's
//!   maximum priority is not above the best match found so far.
//!
//! Ties: among overlapping rules of equal priority in different subtables,
//! the one in the subtable that comes first in the walk wins. A subtable
//! whose maximum priority changes is placed after the existing subtables
//! with the same maximum, so the result is deterministic for a given
//! history of inserts and removes (OpenFlow leaves it unspecified).
//!
//! The hash is a folded multiply over the masked words with a fixed seed:
//! lookups cannot change the tables (only the controller adds rules), and a
//! fixed seed makes iteration order reproducible for a given history.
//!
//! [`lookup`](Classifier::lookup) allocates nothing and takes no lock.

use std::collections::BTreeMap;

use hashbrown::{HashMap, HashTable};

use crate::flow_match::Match;
use crate::key::{FlowKey, KEY_WORDS};

/// Hash seed (any odd constant works; fixed for reproducibility).
const SEED: u64 = 0x243f_6a88_85a3_08d3;
/// Multiplier of the folded-multiply mixing step.
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// One mixing step: fold the 128-bit product of `(h ^ w)` and [`MUL`].
#[inline(always)]
fn mix(h: u64, w: u64) -> u64 {
    let x = u128::from(h ^ w) * u128::from(MUL);
    (x as u64) ^ ((x >> 64) as u64)
}

/// The words of a mask that are not all-zero, and the mask words themselves
/// packed in the same order, so lookup touches nothing else.
#[derive(Clone, Copy, Debug)]
struct Shape {
    /// Number of used entries in `idx` / `mw`.
    n: usize,
    /// Word indices (into [`FlowKey::w`]) where the mask is non-zero.
    idx: [u8; KEY_WORDS],
    /// `mask.w[idx[j]]` for `j < n`.
    mw: [u64; KEY_WORDS],
}

impl Shape {
    fn new(mask: &FlowKey) -> Shape {
        let mut s = Shape {
            n: 0,
            idx: [0; KEY_WORDS],
            mw: [0; KEY_WORDS],
        };
        for (i, &m) in mask.w.iter().enumerate() {
            if m != 0 {
                s.idx[s.n] = i as u8; // i < KEY_WORDS
                s.mw[s.n] = m;
                s.n += 1;
            }
        }
        s
    }

    /// Hash of an already-masked key (a rule's match key).
    #[inline]
    fn hash_masked(&self, key: &FlowKey) -> u64 {
        let mut h = SEED;
        for &i in &self.idx[..self.n] {
            h = mix(h, key.w[usize::from(i)]);
        }
        h
    }

    /// Hash of the touched words of `pkt` after masking (equal to
    /// [`hash_masked`](Self::hash_masked) of `pkt.masked(mask)`).
    #[inline(always)]
    fn hash_packet(&self, pkt: &FlowKey) -> u64 {
        let mut h = SEED;
        for (&i, &m) in self.idx[..self.n].iter().zip(&self.mw[..self.n]) {
            h = mix(h, pkt.w[usize::from(i)] & m);
        }
        h
    }

    /// True if `pkt` masked equals the (masked) rule key `key`, comparing
    /// only the touched words.
    #[inline(always)]
    fn packet_eq(&self, pkt: &FlowKey, key: &FlowKey) -> bool {
        self.idx[..self.n]
            .iter()
            .zip(&self.mw[..self.n])
            .all(|(&i, &m)| pkt.w[usize::from(i)] & m == key.w[usize::from(i)])
    }
}

/// All rules sharing one match (same mask and masked key).
#[derive(Clone, Debug)]
struct Bucket<T> {
    m: Match,
    /// The highest priority among the rules of this match.
    prio: u16,
    value: T,
    /// The other rules with this match, by strictly descending priority
    /// (all below `prio`). Usually empty.
    shadowed: Vec<(u16, T)>,
}

impl<T> Bucket<T> {
    /// Adds or replaces the rule of priority `p`.
    fn insert(&mut self, p: u16, value: T) -> Option<T> {
        if p == self.prio {
            return Some(std::mem::replace(&mut self.value, value));
        }
        if p > self.prio {
            let old_v = std::mem::replace(&mut self.value, value);
            let old_p = std::mem::replace(&mut self.prio, p);
            self.shadowed.insert(0, (old_p, old_v));
            return None;
        }
        let at = self.shadowed.partition_point(|(q, _)| *q > p);
        match self.shadowed.get_mut(at) {
            Some((q, v)) if *q == p => Some(std::mem::replace(v, value)),
            _ => {
                self.shadowed.insert(at, (p, value));
                None
            }
        }
    }

    /// The rule of priority `p`, if present.
    fn get(&self, p: u16) -> Option<&T> {
        if p == self.prio {
            return Some(&self.value);
        }
        self.shadowed.iter().find(|(q, _)| *q == p).map(|(_, v)| v)
    }
}

/// All rules with one mask.
///
/// `repr(C)` keeps the fields a lookup reads (`table`, `shape`) together at
/// the start, in as few cache lines as possible.
#[derive(Clone, Debug)]
#[repr(C)]
struct Subtable<T> {
    table: HashTable<Bucket<T>>,
    shape: Shape,
    mask: FlowKey,
    /// Number of rules (not buckets) per priority; the last key is the
    /// subtable's maximum priority.
    prios: BTreeMap<u16, u32>,
}

impl<T> Subtable<T> {
    fn new(mask: FlowKey) -> Self {
        Subtable {
            mask,
            shape: Shape::new(&mask),
            table: HashTable::new(),
            prios: BTreeMap::new(),
        }
    }

    fn max_priority(&self) -> Option<u16> {
        self.prios.last_key_value().map(|(p, _)| *p)
    }

    fn is_empty(&self) -> bool {
        self.prios.is_empty()
    }

    fn count_add(&mut self, p: u16) {
        *self.prios.entry(p).or_insert(0) += 1;
    }

    fn count_sub(prios: &mut BTreeMap<u16, u32>, p: u16) {
        if let Some(c) = prios.get_mut(&p) {
            *c -= 1;
            if *c == 0 {
                prios.remove(&p);
            }
        }
    }

    /// The bucket with match key `key`.
    fn bucket(&self, key: &FlowKey) -> Option<&Bucket<T>> {
        let hash = self.shape.hash_masked(key);
        self.table.find(hash, |b| b.m.key == *key)
    }

    fn insert(&mut self, m: Match, p: u16, value: T) -> Option<T> {
        let shape = &self.shape;
        let hash = shape.hash_masked(&m.key);
        let old = match self.table.find_mut(hash, |b| b.m.key == m.key) {
            Some(b) => b.insert(p, value),
            None => {
                let b = Bucket {
                    m,
                    prio: p,
                    value,
                    shadowed: Vec::new(),
                };
                self.table
                    .insert_unique(hash, b, |b| shape.hash_masked(&b.m.key));
                None
            }
        };
        if old.is_none() {
            self.count_add(p);
        }
        old
    }

    fn remove(&mut self, key: &FlowKey, p: u16) -> Option<T> {
        let hash = self.shape.hash_masked(key);
        let Ok(mut entry) = self.table.find_entry(hash, |b| b.m.key == *key) else {
            return None;
        };
        let b = entry.get_mut();
        let removed = if p == b.prio {
            if b.shadowed.is_empty() {
                entry.remove().0.value
            } else {
                let (np, nv) = b.shadowed.remove(0);
                b.prio = np;
                std::mem::replace(&mut b.value, nv)
            }
        } else {
            let at = b.shadowed.iter().position(|(q, _)| *q == p)?;
            b.shadowed.remove(at).1
        };
        Self::count_sub(&mut self.prios, p);
        Some(removed)
    }

    /// Keeps the rules for which `keep` is true; returns how many it removed.
    fn retain(&mut self, keep: &mut impl FnMut(&Match, u16, &T) -> bool) -> usize {
        let prios = &mut self.prios;
        let mut removed = 0;
        self.table.retain(|b| {
            let head = keep(&b.m, b.prio, &b.value);
            let m = &b.m;
            b.shadowed.retain(|(p, v)| {
                let k = keep(m, *p, v);
                if !k {
                    Self::count_sub(prios, *p);
                    removed += 1;
                }
                k
            });
            if head {
                return true;
            }
            Self::count_sub(prios, b.prio);
            removed += 1;
            if b.shadowed.is_empty() {
                return false;
            }
            let (np, nv) = b.shadowed.remove(0);
            b.prio = np;
            b.value = nv;
            true
        });
        removed
    }

    /// The highest-priority rule matching `pkt` in this subtable.
    #[inline(always)]
    fn find(&self, pkt: &FlowKey) -> Option<&Bucket<T>> {
        let shape = &self.shape;
        let hash = shape.hash_packet(pkt);
        // Only runs on a 7-bit tag match, so re-masking here is cheaper
        // than buffering the masked words.
        self.table.find(hash, |b| shape.packet_eq(pkt, &b.m.key))
    }
}

/// A set of `(match, priority) -> T` rules answering "highest-priority rule
/// matching this key".
#[derive(Clone, Debug)]
pub struct Classifier<T> {
    /// Subtables, in no particular order (indexed by `by_mask` and `order`).
    tables: Vec<Subtable<T>>,
    /// `(max priority, index into tables)`, by descending max priority.
    order: Vec<(u16, usize)>,
    /// Mask -> index into `tables`.
    by_mask: HashMap<FlowKey, usize>,
    /// Total number of rules.
    len: usize,
}

impl<T> Default for Classifier<T> {
    fn default() -> Self {
        Classifier {
            tables: Vec::new(),
            order: Vec::new(),
            by_mask: HashMap::new(),
            len: 0,
        }
    }
}

impl<T> Classifier<T> {
    /// An empty classifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts a rule; replaces and returns the value of a rule with the
    /// identical match and priority.
    ///
    /// `m.key` must be zero wherever `m.mask` is (as [`Match`]'s setters
    /// guarantee).
    pub fn insert(&mut self, m: Match, priority: u16, value: T) -> Option<T> {
        debug_assert!(
            m.key.masked(&m.mask) == m.key,
            "match key has bits outside its mask"
        );
        let id = match self.by_mask.get(&m.mask) {
            Some(&id) => id,
            None => {
                let id = self.tables.len();
                self.tables.push(Subtable::new(m.mask));
                self.by_mask.insert(m.mask, id);
                let at = self.order.partition_point(|e| e.0 >= priority);
                self.order.insert(at, (priority, id));
                id
            }
        };
        let st = &mut self.tables[id];
        let before = st.max_priority();
        let old = st.insert(m, priority, value);
        if old.is_none() {
            self.len += 1;
        }
        let after = st.max_priority();
        if let (Some(b), Some(a)) = (before, after) {
            if a != b {
                self.reorder(id, a);
            }
        }
        old
    }

    /// Removes the rule with exactly this match and priority.
    pub fn remove(&mut self, m: &Match, priority: u16) -> Option<T> {
        let id = *self.by_mask.get(&m.mask)?;
        let st = &mut self.tables[id];
        let before = st.max_priority();
        let removed = st.remove(&m.key, priority)?;
        self.len -= 1;
        match st.max_priority() {
            None => self.drop_subtable(id),
            Some(a) if Some(a) != before => self.reorder(id, a),
            Some(_) => {}
        }
        Some(removed)
    }

    /// The rule with exactly this match and priority.
    pub fn get(&self, m: &Match, priority: u16) -> Option<&T> {
        let id = *self.by_mask.get(&m.mask)?;
        self.tables[id].bucket(&m.key)?.get(priority)
    }

    /// The highest-priority rule matching `key`. Among rules of equal
    /// priority that overlap, which one wins is unspecified (as in OpenFlow),
    /// but deterministic for a given history of inserts and removes.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<&T> {
        self.lookup_with_priority(key).map(|(_, v)| v)
    }

    /// Like [`lookup`](Self::lookup), also returning the rule's priority.
    #[inline]
    pub fn lookup_with_priority(&self, key: &FlowKey) -> Option<(u16, &T)> {
        if let [(_, id)] = self.order[..] {
            return self.tables[id].find(key).map(|b| (b.prio, &b.value));
        }
        let mut best: Option<&Bucket<T>> = None;
        let mut best_prio: i32 = -1;
        for &(max, id) in &self.order {
            if i32::from(max) <= best_prio {
                break;
            }
            if let Some(b) = self.tables[id].find(key) {
                if i32::from(b.prio) > best_prio {
                    best_prio = i32::from(b.prio);
                    best = Some(b);
                }
            }
        }
        best.map(|b| (b.prio, &b.value))
    }

    /// Calls `f(priority, value)` for every rule matching `key` whose
    /// priority is at least `min_priority`, including rules hidden behind a
    /// higher-priority rule with the same match. Subtables whose maximum
    /// priority is below `min_priority` are skipped. Order: subtables by
    /// descending maximum priority, and within one match by descending
    /// priority (not globally sorted). Allocates nothing.
    pub fn for_each_match<'a>(
        &'a self,
        key: &FlowKey,
        min_priority: u16,
        mut f: impl FnMut(u16, &'a T),
    ) {
        for &(max, id) in &self.order {
            if max < min_priority {
                break;
            }
            if let Some(b) = self.tables[id].find(key) {
                if b.prio >= min_priority {
                    f(b.prio, &b.value);
                    for (p, v) in &b.shadowed {
                        if *p < min_priority {
                            break;
                        }
                        f(*p, v);
                    }
                }
            }
        }
    }

    /// All rules, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Match, u16, &T)> {
        self.tables.iter().flat_map(|st| {
            st.table.iter().flat_map(|b| {
                std::iter::once((&b.m, b.prio, &b.value))
                    .chain(b.shadowed.iter().map(move |(p, v)| (&b.m, *p, v)))
            })
        })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no rules.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of subtables (distinct masks).
    pub fn n_subtables(&self) -> usize {
        self.tables.len()
    }

    /// Removes every rule for which `keep` returns false.
    pub fn retain(&mut self, mut keep: impl FnMut(&Match, u16, &T) -> bool) {
        let mut removed = 0;
        for st in &mut self.tables {
            removed += st.retain(&mut keep);
        }
        if removed == 0 {
            return;
        }
        self.len -= removed;
        // Rebuild the index: surviving subtables laid out in walk order,
        // re-sorted (stably) by their new maximum priority.
        let mut old: Vec<Option<Subtable<T>>> = std::mem::take(&mut self.tables)
            .into_iter()
            .map(Some)
            .collect();
        let old_order = std::mem::take(&mut self.order);
        self.by_mask.clear();
        for (_, id) in old_order {
            let Some(st) = old[id].take() else { continue };
            let Some(max) = st.max_priority() else {
                continue;
            };
            let new_id = self.tables.len();
            self.by_mask.insert(st.mask, new_id);
            self.order.push((max, new_id));
            self.tables.push(st);
        }
        self.order.sort_by_key(|e| std::cmp::Reverse(e.0));
    }

    /// Moves subtable `id` to its place for the new maximum priority `max`:
    /// after every subtable whose maximum is at least `max`.
    fn reorder(&mut self, id: usize, max: u16) {
        if let Some(pos) = self.order.iter().position(|e| e.1 == id) {
            self.order.remove(pos);
        }
        let at = self.order.partition_point(|e| e.0 >= max);
        self.order.insert(at, (max, id));
    }

    /// Deletes the (empty) subtable `id`, keeping indices consistent.
    fn drop_subtable(&mut self, id: usize) {
        debug_assert!(self.tables[id].is_empty());
        let st = self.tables.swap_remove(id);
        self.by_mask.remove(&st.mask);
        self.order.retain(|e| e.1 != id);
        let moved_from = self.tables.len();
        if id < moved_from {
            // The last subtable now lives at `id`.
            self.by_mask.insert(self.tables[id].mask, id);
            for e in &mut self.order {
                if e.1 == moved_from {
                    e.1 = id;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::field::Field;
    use proptest::prelude::*;

    /// The obviously-correct reference: a list scanned in full.
    #[derive(Debug, Default)]
    struct Linear<T> {
        rules: Vec<(Match, u16, T)>,
    }

    impl<T> Linear<T> {
        fn insert(&mut self, m: Match, p: u16, v: T) -> Option<T> {
            for r in &mut self.rules {
                if r.0 == m && r.1 == p {
                    return Some(std::mem::replace(&mut r.2, v));
                }
            }
            self.rules.push((m, p, v));
            None
        }

        fn remove(&mut self, m: &Match, p: u16) -> Option<T> {
            let i = self.rules.iter().position(|r| r.0 == *m && r.1 == p)?;
            Some(self.rules.remove(i).2)
        }

        fn best_priority(&self, k: &FlowKey) -> Option<u16> {
            self.rules
                .iter()
                .filter(|r| r.0.matches(k))
                .map(|r| r.1)
                .max()
        }

        fn n_masks(&self) -> usize {
            let mut masks: Vec<[u64; KEY_WORDS]> = self.rules.iter().map(|r| r.0.mask.w).collect();
            masks.sort_unstable();
            masks.dedup();
            masks.len()
        }
    }

    fn key(fields: &[(Field, u64)]) -> FlowKey {
        let mut k = FlowKey::ZERO;
        for &(f, v) in fields {
            k.set(f, v);
        }
        k
    }

    fn exact(fields: &[(Field, u64)]) -> Match {
        let mut m = Match::ANY;
        for &(f, v) in fields {
            m.set(f, v);
        }
        m
    }

    #[test]
    fn empty() {
        let c: Classifier<u32> = Classifier::new();
        assert!(c.is_empty());
        assert_eq!(c.len(), 0);
        assert_eq!(c.n_subtables(), 0);
        assert_eq!(c.lookup(&FlowKey::ZERO), None);
        assert_eq!(c.iter().count(), 0);
    }

    #[test]
    fn insert_replace_get_remove() {
        let mut c = Classifier::new();
        let m = exact(&[(Field::InPort, 1), (Field::DlType, 0x0800)]);
        assert_eq!(c.insert(m, 10, "a"), None);
        assert_eq!(c.insert(m, 20, "b"), None);
        assert_eq!(c.insert(m, 10, "c"), Some("a"));
        assert_eq!(c.len(), 2);
        assert_eq!(c.n_subtables(), 1);
        assert_eq!(c.get(&m, 10), Some(&"c"));
        assert_eq!(c.get(&m, 20), Some(&"b"));
        assert_eq!(c.get(&m, 30), None);
        assert_eq!(c.get(&exact(&[(Field::InPort, 1)]), 10), None);
        let pkt = key(&[
            (Field::InPort, 1),
            (Field::DlType, 0x0800),
            (Field::TpDst, 80),
        ]);
        assert_eq!(c.lookup_with_priority(&pkt), Some((20, &"b")));
        assert_eq!(c.remove(&m, 20), Some("b"));
        assert_eq!(c.remove(&m, 20), None);
        assert_eq!(c.lookup_with_priority(&pkt), Some((10, &"c")));
        assert_eq!(c.remove(&m, 10), Some("c"));
        assert!(c.is_empty());
        assert_eq!(c.n_subtables(), 0);
        assert_eq!(c.lookup(&pkt), None);
    }

    #[test]
    fn shadowed_priorities_in_one_bucket() {
        let mut c = Classifier::new();
        let m = exact(&[(Field::InPort, 3)]);
        for p in [5u16, 1, 9, 3, 7] {
            c.insert(m, p, p);
        }
        let pkt = key(&[(Field::InPort, 3)]);
        for p in [9u16, 7, 5, 3, 1] {
            assert_eq!(c.lookup_with_priority(&pkt), Some((p, &p)));
            assert_eq!(c.remove(&m, p), Some(p));
        }
        assert_eq!(c.lookup(&pkt), None);
        assert_eq!(c.n_subtables(), 0);
    }

    #[test]
    fn highest_priority_across_subtables() {
        let mut c = Classifier::new();
        c.insert(Match::ANY, 0, "miss");
        c.insert(exact(&[(Field::InPort, 1)]), 100, "port1");
        let mut pfx = Match::ANY;
        pfx.set(Field::DlType, 0x0800);
        pfx.set_masked(Field::NwSrc, 0x0a00_0000, 0xff00_0000);
        c.insert(pfx, 200, "10/8");
        assert_eq!(c.n_subtables(), 3);
        let p1 = key(&[
            (Field::InPort, 1),
            (Field::DlType, 0x0800),
            (Field::NwSrc, 0x0a01_0203),
        ]);
        let p2 = key(&[
            (Field::InPort, 1),
            (Field::DlType, 0x0800),
            (Field::NwSrc, 0x0b01_0203),
        ]);
        let p3 = key(&[(Field::InPort, 2)]);
        assert_eq!(c.lookup_with_priority(&p1), Some((200, &"10/8")));
        assert_eq!(c.lookup_with_priority(&p2), Some((100, &"port1")));
        assert_eq!(c.lookup_with_priority(&p3), Some((0, &"miss")));
        // Raising the catch-all above everything reorders the walk.
        c.insert(Match::ANY, 300, "top");
        assert_eq!(c.lookup(&p1), Some(&"top"));
        assert_eq!(c.remove(&Match::ANY, 300), Some("top"));
        assert_eq!(c.lookup(&p1), Some(&"10/8"));
        // Removing the first-created subtable moves another into its slot.
        assert_eq!(c.remove(&Match::ANY, 0), Some("miss"));
        assert_eq!(c.n_subtables(), 2);
        assert_eq!(c.lookup(&p3), None);
        assert_eq!(c.lookup(&p1), Some(&"10/8"));
        assert_eq!(c.lookup(&p2), Some(&"port1"));
        assert_eq!(c.get(&pfx, 200), Some(&"10/8"));
    }

    #[test]
    fn equal_priority_tie_is_deterministic() {
        let a = exact(&[(Field::InPort, 1)]);
        let b = exact(&[(Field::DlType, 0x0800)]);
        let pkt = key(&[(Field::InPort, 1), (Field::DlType, 0x0800)]);
        let mut c = Classifier::new();
        c.insert(a, 5, "a");
        c.insert(b, 5, "b");
        assert_eq!(c.lookup(&pkt), Some(&"a"));
        let mut c = Classifier::new();
        c.insert(b, 5, "b");
        c.insert(a, 5, "a");
        assert_eq!(c.lookup(&pkt), Some(&"b"));
    }

    #[test]
    fn iter_and_retain() {
        let mut c = Classifier::new();
        for port in 0..10u64 {
            c.insert(exact(&[(Field::InPort, port)]), 10, port);
            c.insert(exact(&[(Field::InPort, port)]), 20, port + 100);
            c.insert(
                exact(&[(Field::InPort, port), (Field::TpDst, 80)]),
                30,
                port + 200,
            );
        }
        assert_eq!(c.len(), 30);
        assert_eq!(c.n_subtables(), 2);
        let mut all: Vec<u64> = c.iter().map(|(_, _, v)| *v).collect();
        all.sort_unstable();
        let mut want: Vec<u64> = (0..10).chain(100..110).chain(200..210).collect();
        want.sort_unstable();
        assert_eq!(all, want);
        for (m, p, v) in c.iter() {
            assert_eq!(c.get(m, p), Some(v));
        }
        // Drop every priority-20 rule and the whole tp_dst subtable.
        c.retain(|_, p, _| p == 10);
        assert_eq!(c.len(), 10);
        assert_eq!(c.n_subtables(), 1);
        let pkt = key(&[(Field::InPort, 4), (Field::TpDst, 80)]);
        assert_eq!(c.lookup_with_priority(&pkt), Some((10, &4)));
        // Drop the head (priority 10) but keep nothing else: empty.
        c.insert(exact(&[(Field::InPort, 4)]), 5, 999);
        c.retain(|_, p, _| p != 10);
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup_with_priority(&pkt), Some((5, &999)));
        c.retain(|_, _, _| false);
        assert!(c.is_empty());
        assert_eq!(c.n_subtables(), 0);
        assert_eq!(c.lookup(&pkt), None);
    }

    #[test]
    fn for_each_match_sees_shadowed_and_prunes() {
        let mut c = Classifier::new();
        let m = exact(&[(Field::InPort, 1)]);
        c.insert(m, 10, "a10");
        c.insert(m, 5, "a5");
        c.insert(m, 1, "a1");
        c.insert(exact(&[(Field::InPort, 1), (Field::TpDst, 80)]), 3, "b3");
        c.insert(exact(&[(Field::InPort, 2)]), 20, "other");
        c.insert(Match::ANY, 0, "any");
        let pkt = key(&[(Field::InPort, 1), (Field::TpDst, 80)]);
        let mut got = Vec::new();
        c.for_each_match(&pkt, 0, |p, v| got.push((p, *v)));
        got.sort_unstable();
        assert_eq!(
            got,
            vec![(0, "any"), (1, "a1"), (3, "b3"), (5, "a5"), (10, "a10")]
        );
        let mut got = Vec::new();
        c.for_each_match(&pkt, 4, |p, v| got.push((p, *v)));
        got.sort_unstable();
        assert_eq!(got, vec![(5, "a5"), (10, "a10")]);
    }

    #[test]
    fn clone_is_independent() {
        let mut c = Classifier::new();
        c.insert(exact(&[(Field::InPort, 1)]), 1, 1);
        let d = c.clone();
        c.remove(&exact(&[(Field::InPort, 1)]), 1);
        assert_eq!(d.lookup(&key(&[(Field::InPort, 1)])), Some(&1));
        assert!(format!("{d:?}").contains("Classifier"));
    }

    // ---- property tests against the linear reference ----

    /// Which fields a mask pins: in_port, dl_type, nw_src prefix length
    /// (0 = not matched), tp_dst, reg0 (0 none, 1 exact, 2 low byte).
    #[derive(Clone, Copy, Debug)]
    struct MaskSpec {
        in_port: bool,
        dl_type: bool,
        nw_src_len: u32,
        tp_dst: bool,
        reg0: u8,
    }

    /// Field values of a rule or a packet, from small domains so that
    /// packets often match.
    #[derive(Clone, Copy, Debug)]
    struct Vals {
        in_port: u64,
        dl_type: u64,
        nw_src: u64,
        tp_dst: u64,
        reg0: u64,
    }

    fn mask_spec() -> impl Strategy<Value = MaskSpec> {
        (
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0u32), Just(8), Just(16), Just(24), Just(32)],
            any::<bool>(),
            0u8..3,
        )
            .prop_map(|(in_port, dl_type, nw_src_len, tp_dst, reg0)| MaskSpec {
                in_port,
                dl_type,
                nw_src_len,
                tp_dst,
                reg0,
            })
    }

    fn vals() -> impl Strategy<Value = Vals> {
        (
            1u64..5,
            prop_oneof![Just(0x0800u64), Just(0x0806)],
            (0u64..2, 0u64..3, 0u64..3),
            prop_oneof![Just(22u64), Just(80), Just(443)],
            (0u64..2, 0u64..3),
        )
            .prop_map(|(in_port, dl_type, (a, b, c), tp_dst, (hi, lo))| Vals {
                in_port,
                dl_type,
                nw_src: 0x0a00_0000 | a << 16 | b << 8 | c,
                tp_dst,
                reg0: hi << 8 | lo,
            })
    }

    fn priority() -> impl Strategy<Value = u16> {
        prop_oneof![0u16..6, any::<u16>()]
    }

    fn build(spec: &MaskSpec, v: &Vals) -> Match {
        let mut m = Match::ANY;
        if spec.in_port {
            m.set(Field::InPort, v.in_port);
        }
        if spec.dl_type {
            m.set(Field::DlType, v.dl_type);
        }
        if spec.nw_src_len > 0 {
            let mask = (u32::MAX << (32 - spec.nw_src_len)) as u64;
            m.set_masked(Field::NwSrc, v.nw_src, mask);
        }
        if spec.tp_dst {
            m.set(Field::TpDst, v.tp_dst);
        }
        match spec.reg0 {
            1 => m.set(Field::Reg(0), v.reg0),
            2 => m.set_masked(Field::Reg(0), v.reg0, 0xff),
            _ => {}
        }
        m
    }

    fn packet(v: &Vals) -> FlowKey {
        key(&[
            (Field::InPort, v.in_port),
            (Field::DlType, v.dl_type),
            (Field::NwSrc, v.nw_src),
            (Field::TpDst, v.tp_dst),
            (Field::Reg(0), v.reg0),
        ])
    }

    fn check_lookup(
        c: &Classifier<usize>,
        lin: &Linear<usize>,
        pkt: &FlowKey,
    ) -> Result<(), TestCaseError> {
        let want = lin.best_priority(pkt);
        let got = c.lookup_with_priority(pkt);
        match (want, got) {
            (None, None) => {}
            (Some(wp), Some((gp, v))) => {
                prop_assert_eq!(wp, gp, "priority for {:?}", pkt);
                let rule = lin.rules.iter().find(|r| r.2 == *v);
                prop_assert!(rule.is_some(), "value {} not in reference", v);
                let rule = rule.unwrap();
                prop_assert_eq!(rule.1, gp);
                prop_assert!(rule.0.matches(pkt), "returned rule does not match");
            }
            (w, g) => prop_assert!(false, "reference {:?} vs classifier {:?}", w, g),
        }
        prop_assert_eq!(c.lookup(pkt), got.map(|g| g.1));
        for floor in [0u16, 3, 40000] {
            let mut seen = Vec::new();
            c.for_each_match(pkt, floor, |p, v| seen.push((p, *v)));
            seen.sort_unstable();
            let mut want: Vec<(u16, usize)> = lin
                .rules
                .iter()
                .filter(|r| r.1 >= floor && r.0.matches(pkt))
                .map(|r| (r.1, r.2))
                .collect();
            want.sort_unstable();
            prop_assert_eq!(seen, want);
        }
        Ok(())
    }

    fn check_contents(c: &Classifier<usize>, lin: &Linear<usize>) -> Result<(), TestCaseError> {
        prop_assert_eq!(c.len(), lin.rules.len());
        prop_assert_eq!(c.is_empty(), lin.rules.is_empty());
        prop_assert_eq!(c.n_subtables(), lin.n_masks());
        let mut got: Vec<_> = c
            .iter()
            .map(|(m, p, v)| (m.key.w, m.mask.w, p, *v))
            .collect();
        let mut want: Vec<_> = lin
            .rules
            .iter()
            .map(|(m, p, v)| (m.key.w, m.mask.w, *p, *v))
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        prop_assert_eq!(got, want);
        for (m, p, v) in &lin.rules {
            prop_assert_eq!(c.get(m, *p), Some(v));
        }
        Ok(())
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(usize),
        Remove(usize),
        Retain(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => any::<usize>().prop_map(Op::Insert),
            4 => any::<usize>().prop_map(Op::Remove),
            1 => (2usize..6).prop_map(Op::Retain),
        ]
    }

    proptest! {
        #[test]
        fn random_tables_match_linear(
            masks in prop::collection::vec(mask_spec(), 1..12),
            rules in prop::collection::vec((any::<usize>(), vals(), priority()), 0..200),
            pkts in prop::collection::vec(vals(), 1..64),
        ) {
            let mut c = Classifier::new();
            let mut lin = Linear::default();
            for (id, (mi, v, p)) in rules.iter().enumerate() {
                let m = build(&masks[mi % masks.len()], v);
                prop_assert_eq!(c.insert(m, *p, id), lin.insert(m, *p, id));
            }
            check_contents(&c, &lin)?;
            for v in &pkts {
                check_lookup(&c, &lin, &packet(v))?;
            }
            // Rule keys themselves (unmatched fields zero) are packets too.
            for (m, _, _) in &lin.rules {
                check_lookup(&c, &lin, &m.key)?;
            }
        }

        #[test]
        fn random_insert_remove_match_linear(
            masks in prop::collection::vec(mask_spec(), 1..8),
            pool in prop::collection::vec((any::<usize>(), vals(), priority()), 1..40),
            ops in prop::collection::vec(op(), 0..150),
            pkts in prop::collection::vec(vals(), 1..16),
        ) {
            let mut c = Classifier::new();
            let mut lin = Linear::default();
            let rule = |i: usize| {
                let (mi, v, p) = &pool[i % pool.len()];
                (build(&masks[mi % masks.len()], v), *p)
            };
            for (n, op) in ops.iter().enumerate() {
                match *op {
                    Op::Insert(i) => {
                        let (m, p) = rule(i);
                        prop_assert_eq!(c.insert(m, p, n), lin.insert(m, p, n));
                    }
                    Op::Remove(i) => {
                        let (m, p) = rule(i);
                        prop_assert_eq!(c.remove(&m, p), lin.remove(&m, p));
                    }
                    Op::Retain(k) => {
                        c.retain(|_, _, v| v % k != 0);
                        lin.rules.retain(|r| r.2 % k != 0);
                    }
                }
                prop_assert_eq!(c.len(), lin.rules.len());
                prop_assert_eq!(c.n_subtables(), lin.n_masks());
                for v in &pkts {
                    check_lookup(&c, &lin, &packet(v))?;
                }
            }
            check_contents(&c, &lin)?;
        }
    }
}
