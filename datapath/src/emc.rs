//! The exact-match flow cache: one per poll thread, in front of the
//! pipeline.
//!
//! A direct-mapped table of [`EMC_SIZE`] slots keyed by the whole
//! [`FlowKey`], each slot holding the datapath actions that translation
//! produced for that key. An entry is valid only for the pipeline version
//! (and, if it used `normal`, the MAC-table generation) it was made with, so
//! every table change invalidates it without any explicit flush. Hits add to
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
    /// MAC-table generation it was made with (meaningful if
    /// `x.uses_mac_table`).
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
    hash: u32,
    /// Copy of the flow's `fast_out`, so the common hit needs no pointer
    /// chase.
    fast_out: u32,
    version: u64,
    /// `u64::MAX` when the flow does not depend on the MAC table.
    mac_gen: u64,
    /// The key's metadata words are zero (only header words compared).
    meta_zero: bool,
    flow: Option<Arc<CachedFlow>>,
    pending_packets: u64,
    pending_bytes: u64,
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
                hash: 0,
                fast_out: NO_FAST_OUT,
                version: u64::MAX,
                mac_gen: 0,
                meta_zero: false,
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
        let idx = hash as usize & (EMC_SIZE - 1);
        let slot = &mut self.slots[idx];
        let same = if meta_zero {
            slot.meta_zero && same_words(&slot.key, key, HEADER_WORDS)
        } else {
            same_words(&slot.key, key, KEY_WORDS)
        };
        if slot.hash == hash
            && slot.version == version
            && (slot.mac_gen == u64::MAX || slot.mac_gen == mac_gen)
            && same
        {
            if slot.pending_packets == 0 {
                self.dirty.push(idx as u32);
            }
            slot.pending_packets += 1;
            slot.pending_bytes += bytes;
            self.hits += 1;
            return Some((idx, slot.fast_out));
        }
        self.misses += 1;
        None
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
        let idx = hash as usize & (EMC_SIZE - 1);
        let slot = &mut self.slots[idx];
        credit(slot, now_ms);
        slot.key = *key;
        slot.hash = hash;
        slot.meta_zero = meta_is_zero(key);
        slot.fast_out = flow.fast_out;
        slot.version = flow.version;
        slot.mac_gen = if flow.x.uses_mac_table {
            flow.mac_gen
        } else {
            u64::MAX
        };
        slot.flow = Some(flow);
        slot.pending_packets = 1;
        slot.pending_bytes = bytes;
        self.dirty.push(idx as u32);
        idx
    }

    /// Credits pending hits to flow and table counters; call once a batch.
    pub fn flush_stats(&mut self, now_ms: u64) {
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
            s.version = u64::MAX;
        }
    }
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

    #[test]
    fn header_only_hash_and_compare_agree_with_full() {
        let mut k = FlowKey::ZERO;
        k.set(Field::NwSrc, 0x0a00_0001);
        k.set(Field::TpSrc, 1234);
        assert!(meta_is_zero(&k));
        assert_eq!(key_hash(&k), key_hash_meta(&k, true));
        let mut emc = Emc::new();
        let h = key_hash(&k);
        let flow = Arc::new(CachedFlow {
            x: Xlation::default(),
            version: 1,
            mac_gen: 0,
            ops: Vec::new(),
            fast_out: NO_FAST_OUT,
        });
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
        emc.insert(
            &k,
            h,
            Arc::new(CachedFlow {
                x,
                version: 1,
                mac_gen: 0,
                ops: Vec::new(),
                fast_out: NO_FAST_OUT,
            }),
            60,
            0,
        );
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
