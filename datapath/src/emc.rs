//! The exact-match flow cache: one per poll thread, in front of the
//! pipeline.
//!
//! A two-way table of [`EMC_SIZE`] slots keyed by the whole [`FlowKey`]:
//! a key may sit in either of two slots picked by different bits of its
//! hash (as in Open vSwitch's EMC), so two keys sharing one slot do not
//! evict each other. (Direct-mapped, 2,000 active keys missed about one
//! lookup in five here: 1,000 request/response flows through 8,192
//! slots.) Each slot holds the datapath actions that translation
//! produced for that key. An entry is valid only for the pipeline version
//! (and, if it used `normal` or a select group with `affinity_timeout`, the
//! generation of those learned tables) it was made with: the poll thread
//! tells the cache the current ones once per batch ([`Emc::sync`]), which
//! empties it on a new version and drops the entries that depend on the
//! learned tables on a new generation, so a hit checks no version. Hits add to
//! per-entry pending counters, credited to the flows once per batch.

use std::sync::Arc;

use flows::key::{FlowKey, KEY_WORDS};
use flows::xlate::Xlation;

/// Number of slots (power of two).
pub const EMC_SIZE: usize = 8192;

/// A datapath action compiled for one port table: outputs resolved to the
/// port's index, everything else pointing back at the translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Output to the plain port at this index of the port table. With
    /// `by_ref`, no later action changes the packet, so the received frame
    /// itself can be queued instead of a copy.
    Out {
        /// Index in the port table.
        idx: u32,
        /// The frame may be sent by reference.
        by_ref: bool,
    },
    /// Any other action: index into [`Xlation::actions`].
    Act(u32),
}

/// Marker for "no single plain output" in [`CachedFlow::fast_out`].
pub const NO_FAST_OUT: u32 = u32::MAX;

/// A cached translation.
#[derive(Debug)]
pub struct CachedFlow {
    /// The translation.
    pub x: Xlation,
    /// Pipeline version it was made with.
    pub version: u64,
    /// Generation of the learned tables (MAC and affinity,
    /// [`crate::shared::learned_generation`]) it was made with (meaningful
    /// if `x.uses_mac_table` or `x.uses_affinity`).
    pub mac_gen: u64,
    /// The actions compiled for the port table of the time.
    pub ops: Vec<Op>,
    /// Port index when the whole action list is one plain output of the
    /// unchanged packet (the common case, taken without walking `ops`),
    /// else [`NO_FAST_OUT`].
    pub fast_out: u32,
}

#[derive(Debug)]
struct Slot {
    key: FlowKey,
    /// The key's hash with [`TAG_VALID`] set while the slot may hit, and
    /// [`TAG_META_ZERO`] when the key's metadata words are zero (then only
    /// its header words are compared); 0 in an empty or invalidated slot.
    tag: u64,
    /// Copy of the flow's `fast_out`, so the common hit needs no pointer
    /// chase.
    fast_out: u32,
    /// `u64::MAX` when the flow does not depend on the MAC table.
    mac_gen: u64,
    flow: Option<Arc<CachedFlow>>,
    pending_packets: u64,
    pending_bytes: u64,
}

/// [`Slot`] tag bit: the entry is valid for the cache's current pipeline
/// version and MAC-table generation.
const TAG_VALID: u64 = 1 << 32;
/// [`Slot`] tag bit: the key's metadata words are zero.
const TAG_META_ZERO: u64 = 1 << 33;

/// True if the header words of `k` are `w` (compared without `memcmp`).
#[inline(always)]
pub fn same_header(k: &FlowKey, w: &[u64; HEADER_WORDS]) -> bool {
    let mut d = 0u64;
    for (a, b) in k.w[..HEADER_WORDS].iter().zip(w) {
        d |= a ^ b;
    }
    d == 0
}

/// Key equality without a `memcmp` call: one OR of the word differences
/// over the first `n` words.
#[inline(always)]
fn same_words(a: &FlowKey, b: &FlowKey, n: usize) -> bool {
    let mut d = 0u64;
    for i in 0..n {
        d |= a.w[i] ^ b.w[i];
    }
    d == 0
}

/// The cache.
#[derive(Debug)]
pub struct Emc {
    slots: Box<[Slot; EMC_SIZE]>,
    dirty: Vec<u32>,
    /// Pipeline version and MAC-table generation the valid entries were
    /// made for (see [`Emc::sync`]).
    version: u64,
    mac_gen: u64,
    /// Slots that were given flows depending on the MAC table (some may
    /// have been overwritten since).
    mac_slots: Vec<u32>,
    /// Latest time seen, for crediting entries evicted by a lookup.
    now_ms: u64,
    /// Lookups that hit a valid entry.
    pub hits: u64,
    /// Lookups that missed (or found a stale entry).
    pub misses: u64,
}

impl Default for Emc {
    fn default() -> Self {
        Self::new()
    }
}

/// Hash of a full key: multiply-fold of the words, then a final mix.
///
/// A multiplication only carries bits upwards, so without the final
/// shift-xor-multiply the high bits of each word (`in_port`, `tp_src`, the
/// top of `dl_dst`) would never reach the low bits that pick a slot, and
/// keys differing only there (every connection between the same two hosts)
/// would all share one slot.
#[inline]
pub fn key_hash(k: &FlowKey) -> u32 {
    key_hash_meta(k, meta_is_zero(k))
}

/// Words of the key that hold packet headers, `in_port`, `ct_*` and
/// `recirc_id`; the rest (tunnel, metadata, registers) is zero for every
/// packet as it arrives on a plain port.
pub const HEADER_WORDS: usize = 5;

/// True if the tunnel, metadata and register words are all zero.
#[inline]
pub fn meta_is_zero(k: &FlowKey) -> bool {
    k.w[HEADER_WORDS..].iter().fold(0, |a, w| a | w) == 0
}

/// [`key_hash`] when the caller already knows whether the metadata words
/// are zero (`meta_zero` must be `meta_is_zero(k)`): then only the header
/// words are hashed.
#[inline]
pub fn key_hash_meta(k: &FlowKey, meta_zero: bool) -> u32 {
    let n = if meta_zero { HEADER_WORDS } else { KEY_WORDS };
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..n {
        h = (h ^ k.w[i]).wrapping_mul(0xff51_afd7_ed55_8ccd);
    }
    h ^= h >> 32;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (h >> 32) as u32 ^ h as u32
}

impl Emc {
    /// An empty cache.
    pub fn new() -> Self {
        let slots = (0..EMC_SIZE)
            .map(|_| Slot {
                key: FlowKey::ZERO,
                tag: 0,
                fast_out: NO_FAST_OUT,
                mac_gen: u64::MAX,
                flow: None,
                pending_packets: 0,
                pending_bytes: 0,
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let Ok(slots) = slots.try_into() else {
            unreachable!("built with EMC_SIZE slots")
        };
        Emc {
            slots,
            dirty: Vec::with_capacity(256),
            version: u64::MAX,
            mac_gen: 0,
            mac_slots: Vec::new(),
            now_ms: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Looks `key` up; on a valid hit credits `bytes` to the entry and
    /// returns its slot (see [`Emc::flow_at`]), valid until the next
    /// `insert` or `clear`, and the slot's fast output.
    #[inline]
    pub fn lookup(
        &mut self,
        key: &FlowKey,
        hash: u32,
        version: u64,
        mac_gen: u64,
        bytes: u64,
    ) -> Option<(usize, u32)> {
        self.lookup_meta(key, meta_is_zero(key), hash, version, mac_gen, bytes)
    }

    /// [`Emc::lookup`] when the caller knows whether the key's metadata
    /// words are zero (`meta_zero == meta_is_zero(key)`); then only the
    /// header words are compared.
    #[inline]
    pub fn lookup_meta(
        &mut self,
        key: &FlowKey,
        meta_zero: bool,
        hash: u32,
        version: u64,
        mac_gen: u64,
        bytes: u64,
    ) -> Option<(usize, u32)> {
        self.sync(version, mac_gen, self.now_ms);
        self.lookup_synced(key, meta_zero, hash, bytes)
    }

    /// Makes the valid entries those for pipeline `version` and MAC-table
    /// generation `mac_gen`: a new version empties the cache, a new
    /// generation drops the entries that depend on the MAC table. Cheap
    /// when nothing changed; call before [`Emc::lookup_synced`].
    #[inline]
    pub fn sync(&mut self, version: u64, mac_gen: u64, now_ms: u64) {
        self.now_ms = now_ms;
        if version != self.version || mac_gen != self.mac_gen {
            self.resync(version, mac_gen);
        }
    }

    #[cold]
    fn resync(&mut self, version: u64, mac_gen: u64) {
        if version != self.version {
            self.clear(self.now_ms);
            self.mac_slots.clear();
        } else {
            self.flush_stats(self.now_ms);
            for &i in &self.mac_slots {
                let slot = &mut self.slots[i as usize & (EMC_SIZE - 1)];
                if slot.mac_gen != u64::MAX {
                    slot.tag = 0;
                    slot.flow = None;
                    slot.mac_gen = u64::MAX;
                }
            }
            self.mac_slots.clear();
        }
        self.version = version;
        self.mac_gen = mac_gen;
    }

    /// [`Emc::lookup_meta`] for the version and generation of the last
    /// [`Emc::sync`].
    #[inline(always)]
    pub fn lookup_synced(
        &mut self,
        key: &FlowKey,
        meta_zero: bool,
        hash: u32,
        bytes: u64,
    ) -> Option<(usize, u32)> {
        let holds = |slot: &Slot| {
            if meta_zero {
                slot.tag == hash as u64 | TAG_VALID | TAG_META_ZERO
                    && same_words(&slot.key, key, HEADER_WORDS)
            } else {
                slot.tag & !TAG_META_ZERO == hash as u64 | TAG_VALID
                    && same_words(&slot.key, key, KEY_WORDS)
            }
        };
        let (first, second) = slots_of(hash);
        let idx = if holds(&self.slots[first]) {
            first
        } else if holds(&self.slots[second]) {
            second
        } else {
            self.misses += 1;
            return None;
        };
        let slot = &mut self.slots[idx];
        if slot.pending_packets == 0 {
            self.dirty.push(idx as u32);
        }
        slot.pending_packets += 1;
        slot.pending_bytes += bytes;
        self.hits += 1;
        Some((idx, slot.fast_out))
    }

    /// Counts more hits on slot `idx` without looking them up: the caller
    /// knows the slot holds the packet's key (a lookup of an equal key
    /// returned it, with no insert or sync since).
    /// `packets` of them, of `bytes` in all.
    #[inline]
    pub fn credit_hits(&mut self, idx: usize, packets: u64, bytes: u64) {
        let slot = &mut self.slots[idx & (EMC_SIZE - 1)];
        if slot.pending_packets == 0 {
            self.dirty.push(idx as u32);
        }
        slot.pending_packets += packets;
        slot.pending_bytes += bytes;
        self.hits += packets;
    }

    /// The translation in slot `idx` (from [`Emc::lookup`] or
    /// [`Emc::insert`]).
    #[inline]
    pub fn flow_at(&self, idx: usize) -> Option<&CachedFlow> {
        self.slots.get(idx)?.flow.as_deref()
    }

    /// Stores a fresh translation for `key` (evicting whatever was in the
    /// slot after crediting its pending counters), credits this packet,
    /// and returns the slot.
    pub fn insert(
        &mut self,
        key: &FlowKey,
        hash: u32,
        flow: Arc<CachedFlow>,
        bytes: u64,
        now_ms: u64,
    ) -> usize {
        self.now_ms = now_ms;
        // An empty slot of the two, else the one holding the lower hash
        // (an arbitrary but even choice, as OVS makes).
        let (first, second) = slots_of(hash);
        let (a, b) = (&self.slots[first], &self.slots[second]);
        let idx = if a.tag & TAG_VALID == 0 {
            first
        } else if b.tag & TAG_VALID == 0 || (b.tag as u32) < (a.tag as u32) {
            second
        } else {
            first
        };
        // The newest translation defines what is current: one made for
        // another pipeline version or MAC-table generation moves the
        // cache there (dropping what it holds for the old one).
        let mac_dep = flow.x.uses_mac_table || flow.x.uses_affinity;
        if flow.version != self.version || (mac_dep && flow.mac_gen != self.mac_gen) {
            let gen = if mac_dep { flow.mac_gen } else { self.mac_gen };
            self.resync(flow.version, gen);
        }
        if mac_dep {
            if self.mac_slots.len() >= 2 * EMC_SIZE {
                self.compact_mac_slots();
            }
            self.mac_slots.push(idx as u32);
        }
        let slot = &mut self.slots[idx];
        credit(slot, now_ms);
        slot.key = *key;
        slot.tag = hash as u64 | TAG_VALID | if meta_is_zero(key) { TAG_META_ZERO } else { 0 };
        slot.fast_out = flow.fast_out;
        slot.mac_gen = if mac_dep { flow.mac_gen } else { u64::MAX };
        slot.flow = Some(flow);
        slot.pending_packets = 1;
        slot.pending_bytes = bytes;
        self.dirty.push(idx as u32);
        idx
    }

    /// Keeps one entry per slot that still holds a MAC-dependent flow.
    #[cold]
    fn compact_mac_slots(&mut self) {
        let slots = &self.slots;
        self.mac_slots
            .retain(|&i| slots[i as usize & (EMC_SIZE - 1)].mac_gen != u64::MAX);
        self.mac_slots.sort_unstable();
        self.mac_slots.dedup();
    }

    /// Credits pending hits to flow and table counters; call once a batch.
    pub fn flush_stats(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        for &i in &self.dirty {
            credit(&mut self.slots[i as usize], now_ms);
        }
        self.dirty.clear();
    }

    /// Drops every entry (after crediting counters).
    pub fn clear(&mut self, now_ms: u64) {
        self.flush_stats(now_ms);
        for s in self.slots.iter_mut() {
            s.flow = None;
            s.tag = 0;
            s.mac_gen = u64::MAX;
        }
        self.mac_slots.clear();
    }
}

/// The two slots a key with `hash` may occupy: its low bits, and the
/// bits from 16 up.
#[inline(always)]
fn slots_of(hash: u32) -> (usize, usize) {
    (
        hash as usize & (EMC_SIZE - 1),
        (hash >> 16) as usize & (EMC_SIZE - 1),
    )
}

fn credit(slot: &mut Slot, now_ms: u64) {
    if slot.pending_packets == 0 {
        return;
    }
    if let Some(f) = &slot.flow {
        for s in &f.x.flows {
            s.add(slot.pending_packets, slot.pending_bytes, now_ms);
        }
        for (t, matched) in &f.x.tables {
            t.lookups
                .fetch_add(slot.pending_packets, std::sync::atomic::Ordering::Relaxed);
            if *matched {
                t.matched
                    .fetch_add(slot.pending_packets, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    slot.pending_packets = 0;
    slot.pending_bytes = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use flows::field::Field;
    use flows::pipeline::FlowStats;
    use std::sync::atomic::Ordering;

    /// A cached translation `x` made for pipeline `version` and MAC-table
    /// generation `mac_gen`, with no compiled actions.
    fn cached(x: Xlation, version: u64, mac_gen: u64) -> Arc<CachedFlow> {
        Arc::new(CachedFlow {
            x,
            version,
            mac_gen,
            ops: Vec::new(),
            fast_out: NO_FAST_OUT,
        })
    }

    #[test]
    fn header_only_hash_and_compare_agree_with_full() {
        let mut k = FlowKey::ZERO;
        k.set(Field::NwSrc, 0x0a00_0001);
        k.set(Field::TpSrc, 1234);
        assert!(meta_is_zero(&k));
        assert_eq!(key_hash(&k), key_hash_meta(&k, true));
        let mut emc = Emc::new();
        let h = key_hash(&k);
        let flow = cached(Xlation::default(), 1, 0);
        emc.insert(&k, h, flow, 60, 0);
        assert!(emc.lookup_meta(&k, true, h, 1, 0, 60).is_some());
        // Same header words, a register set: a different key, never a hit
        // even if it lands in the same slot.
        let mut r = k;
        r.set(Field::Reg(7), 1);
        assert!(!meta_is_zero(&r));
        assert!(emc.lookup_meta(&r, false, h, 1, 0, 60).is_none());
    }

    #[test]
    fn hit_miss_invalidate_and_credit() {
        let mut emc = Emc::new();
        let mut k = FlowKey::ZERO;
        k.set(Field::InPort, 1);
        let h = key_hash(&k);
        assert!(emc.lookup(&k, h, 1, 0, 60).is_none());
        let stats = Arc::new(FlowStats::default());
        let x = Xlation {
            flows: vec![stats.clone()],
            ..Xlation::default()
        };
        emc.insert(&k, h, cached(x, 1, 0), 60, 0);
        assert!(emc.lookup(&k, h, 1, 0, 60).is_some());
        assert!(
            emc.lookup(&k, h, 2, 0, 60).is_none(),
            "new version invalidates"
        );
        emc.flush_stats(5);
        assert_eq!(stats.n_packets.load(Ordering::Relaxed), 2);
        assert_eq!(stats.n_bytes.load(Ordering::Relaxed), 120);
        let mut k2 = k;
        k2.set(Field::InPort, 2);
        assert!(emc.lookup(&k2, key_hash(&k2), 1, 0, 60).is_none());
    }

    #[test]
    fn new_mac_generation_drops_only_mac_dependent_entries() {
        let mut emc = Emc::new();
        let entry = |emc: &mut Emc, port: u64, uses_mac_table: bool| {
            let mut k = FlowKey::ZERO;
            k.set(Field::InPort, port);
            let h = key_hash(&k);
            let x = Xlation {
                uses_mac_table,
                ..Xlation::default()
            };
            emc.insert(&k, h, cached(x, 1, 7), 60, 0);
            (k, h)
        };
        let (km, hm) = entry(&mut emc, 1, true);
        let (kp, hp) = entry(&mut emc, 2, false);
        assert!(emc.lookup(&km, hm, 1, 7, 60).is_some());
        assert!(emc.lookup(&kp, hp, 1, 7, 60).is_some());
        emc.sync(1, 8, 0);
        assert!(
            emc.lookup_synced(&km, true, hm, 60).is_none(),
            "MAC entry dropped"
        );
        assert!(
            emc.lookup_synced(&kp, true, hp, 60).is_some(),
            "plain entry kept"
        );
        emc.sync(2, 8, 0);
        assert!(
            emc.lookup_synced(&kp, true, hp, 60).is_none(),
            "new version empties"
        );
    }

    #[test]
    fn keys_sharing_a_slot_both_stay() {
        let key = |p: u64| {
            let mut k = FlowKey::ZERO;
            k.set(Field::TpSrc, p);
            k
        };
        // Keys whose first slots are all the same.
        let home = slots_of(key_hash(&key(0))).0;
        let same: Vec<u64> = (0..1_000_000u64)
            .filter(|&p| slots_of(key_hash(&key(p))).0 == home)
            .take(3)
            .collect();
        assert_eq!(same.len(), 3);
        let flow = cached(Xlation::default(), 1, 0);
        let mut emc = Emc::new();
        let (a, b) = (key(same[0]), key(same[1]));
        emc.insert(&a, key_hash(&a), flow.clone(), 60, 0);
        emc.insert(&b, key_hash(&b), flow.clone(), 60, 0);
        assert!(emc.lookup(&a, key_hash(&a), 1, 0, 60).is_some(), "a kept");
        assert!(emc.lookup(&b, key_hash(&b), 1, 0, 60).is_some(), "b kept");
        // A third one evicts at most one of them.
        let c = key(same[2]);
        emc.insert(&c, key_hash(&c), flow, 60, 0);
        let kept = [a, b, c]
            .iter()
            .filter(|k| emc.lookup(k, key_hash(k), 1, 0, 60).is_some())
            .count();
        assert!(kept >= 2, "{kept} of 3 kept");
    }

    #[test]
    fn keys_differing_in_high_bits_spread_over_slots() {
        // tp_src, in_port and recirc_id live in the high bits of their
        // words; each must still move a key to another slot.
        for f in [Field::TpSrc, Field::InPort, Field::RecircId, Field::TpDst] {
            let slots: std::collections::HashSet<usize> = (1..=256u64)
                .map(|v| {
                    let mut k = FlowKey::ZERO;
                    k.set(Field::NwProto, 6);
                    k.set(f, v);
                    key_hash(&k) as usize & (EMC_SIZE - 1)
                })
                .collect();
            assert!(
                slots.len() > 240,
                "{f:?}: 256 keys in {} slots",
                slots.len()
            );
        }
    }
}
