//! Session affinity for select groups with `affinity_timeout=SECONDS`
//! (a ferrovs extension): `(group, hashed field values) -> bucket`.
//!
//! This is what Kubernetes' `sessionAffinity: ClientIP` needs and what OVS
//! would build with `learn`: once a client (the values of the group's
//! `fields(...)`) has been sent to a bucket, its later translations go to
//! the same bucket, even when buckets are added to the group, until it has
//! not been translated through the group for the timeout (each translation
//! restarts the timer, like iptables' `recent` in kube-proxy). A bucket
//! that left the group, or whose weight became 0, is chosen again.
//!
//! Pure: time comes in as `now_ms`. Bounded in size: when full (after
//! dropping expired entries) new clients are not remembered and get the
//! plain hash choice. [`AffinityTable::generation`] changes whenever an
//! answer the table gave may have changed (an entry expired, or was
//! replaced by a different bucket); adding an entry does not change it, so
//! caches of earlier answers stay valid.

use std::collections::HashMap;

use crate::field::Field;
use crate::key::FlowKey;

/// Default capacity (entries over all groups).
pub const DEFAULT_CAPACITY: usize = 65_536;
/// Field values kept exactly per entry; with more fields the last slot
/// holds a hash of the remaining values.
pub const KEY_VALUES: usize = 4;

/// Identifies one client of one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Group id.
    pub group: u32,
    /// Values of the group's hash fields, in order (zero-padded).
    pub values: [u64; KEY_VALUES],
}

impl AffinityKey {
    /// The key of `flow` for group `group` hashing `fields`.
    pub fn new(group: u32, flow: &FlowKey, fields: &[Field]) -> AffinityKey {
        let mut values = [0u64; KEY_VALUES];
        if fields.len() <= KEY_VALUES {
            for (v, &f) in values.iter_mut().zip(fields) {
                *v = flow.get(f);
            }
        } else {
            for (v, &f) in values.iter_mut().zip(&fields[..KEY_VALUES - 1]) {
                *v = flow.get(f);
            }
            values[KEY_VALUES - 1] = crate::xlate::hash_fields(flow, &fields[KEY_VALUES - 1..]);
        }
        AffinityKey { group, values }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    bucket: u32,
    last_ms: u64,
    timeout_ms: u64,
}

impl Entry {
    fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_ms) >= self.timeout_ms
    }
}

/// The table.
#[derive(Clone, Debug)]
pub struct AffinityTable {
    map: HashMap<AffinityKey, Entry>,
    capacity: usize,
    generation: u64,
}

impl Default for AffinityTable {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl AffinityTable {
    /// A table remembering at most `capacity` clients.
    pub fn new(capacity: usize) -> Self {
        AffinityTable {
            map: HashMap::new(),
            capacity: capacity.max(1),
            generation: 0,
        }
    }

    /// Changes whenever an answer given earlier may have changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Entries held (expired ones included until [`expire`](Self::expire)).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if no entry is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bucket remembered for `key` if it has not expired at `now_ms`;
    /// `usable(bucket)` says whether the group can still use it. A usable
    /// answer restarts the entry's timer with `timeout_ms` (the group's
    /// current timeout).
    pub fn lookup(
        &mut self,
        key: &AffinityKey,
        timeout_ms: u64,
        now_ms: u64,
        usable: impl FnOnce(u32) -> bool,
    ) -> Option<u32> {
        let e = self.map.get_mut(key)?;
        if e.expired(now_ms) || !usable(e.bucket) {
            return None;
        }
        e.last_ms = now_ms;
        e.timeout_ms = timeout_ms;
        Some(e.bucket)
    }

    /// Remembers that `key` went to `bucket` at `now_ms`, for `timeout_ms`.
    /// Replaces an earlier entry (bumping the generation if the bucket
    /// differs). When the table is full even after dropping expired
    /// entries, a new key is not remembered.
    pub fn record(&mut self, key: AffinityKey, bucket: u32, timeout_ms: u64, now_ms: u64) {
        let entry = Entry {
            bucket,
            last_ms: now_ms,
            timeout_ms,
        };
        if let Some(e) = self.map.get_mut(&key) {
            if e.bucket != bucket {
                self.generation += 1;
            }
            *e = entry;
            return;
        }
        if self.map.len() >= self.capacity {
            self.expire(now_ms);
            if self.map.len() >= self.capacity {
                return;
            }
        }
        self.map.insert(key, entry);
    }

    /// Drops entries unused for their timeout; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| !e.expired(now_ms));
        let n = before - self.map.len();
        if n > 0 {
            self.generation += 1;
        }
        n
    }
}

impl AffinityTable {
    /// Drops the entries of groups for which `keep(group_id)` is false
    /// (groups deleted, or no longer with `affinity_timeout`), so that they
    /// do not fill the table until they time out; returns how many.
    pub fn retain_groups(&mut self, keep: impl Fn(u32) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|k, _| keep(k.group));
        let n = before - self.map.len();
        if n > 0 {
            self.generation += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(group: u32, ip: u64) -> AffinityKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::NwSrc, ip);
        AffinityKey::new(group, &k, &[Field::NwSrc])
    }

    #[test]
    fn remembers_until_timeout_and_refreshes() {
        let mut t = AffinityTable::default();
        let k = key(1, 0x0a00_0001);
        assert_eq!(t.lookup(&k, 1000, 0, |_| true), None);
        t.record(k, 3, 1000, 0);
        assert_eq!(t.lookup(&k, 1000, 999, |_| true), Some(3));
        // The lookup at 999 restarted the timer.
        assert_eq!(t.lookup(&k, 1000, 1998, |_| true), Some(3));
        assert_eq!(t.lookup(&k, 1000, 2998, |_| true), None);
        let g = t.generation();
        assert_eq!(t.expire(2998), 1);
        assert!(t.is_empty());
        assert_ne!(t.generation(), g);
    }

    #[test]
    fn expire_keeps_fresh_entries_and_groups_are_separate() {
        let mut t = AffinityTable::default();
        t.record(key(1, 5), 0, 1000, 0);
        t.record(key(2, 5), 1, 1000, 500);
        let g = t.generation();
        assert_eq!(t.expire(999), 0);
        assert_eq!(t.generation(), g);
        assert_eq!(t.expire(1000), 1);
        assert_eq!(t.lookup(&key(1, 5), 1000, 1000, |_| true), None);
        assert_eq!(t.lookup(&key(2, 5), 1000, 1000, |_| true), Some(1));
    }

    #[test]
    fn retain_groups_drops_other_groups() {
        let mut t = AffinityTable::default();
        t.record(key(1, 5), 0, 1000, 0);
        t.record(key(2, 5), 1, 1000, 0);
        let g = t.generation();
        assert_eq!(t.retain_groups(|id| id == 2), 1);
        assert_ne!(t.generation(), g);
        assert_eq!(t.lookup(&key(1, 5), 1000, 1, |_| true), None);
        assert_eq!(t.lookup(&key(2, 5), 1000, 1, |_| true), Some(1));
        let g = t.generation();
        assert_eq!(t.retain_groups(|_| true), 0);
        assert_eq!(t.generation(), g);
    }

    #[test]
    fn unusable_bucket_is_chosen_again() {
        let mut t = AffinityTable::default();
        let k = key(1, 7);
        t.record(k, 2, 10_000, 0);
        assert_eq!(t.lookup(&k, 10_000, 1, |b| b != 2), None);
        let g = t.generation();
        t.record(k, 0, 10_000, 1);
        assert_ne!(t.generation(), g, "a changed answer bumps the generation");
        assert_eq!(t.lookup(&k, 10_000, 2, |_| true), Some(0));
        let g = t.generation();
        t.record(key(1, 8), 1, 10_000, 2);
        t.record(k, 0, 10_000, 3);
        assert_eq!(t.generation(), g, "new or unchanged entries do not");
    }

    #[test]
    fn full_table_drops_expired_then_stops_remembering() {
        let mut t = AffinityTable::new(2);
        t.record(key(1, 1), 0, 100, 0);
        t.record(key(1, 2), 0, 100, 50);
        t.record(key(1, 3), 0, 100, 60);
        assert_eq!(t.len(), 2, "nothing expired yet: the new key is not kept");
        assert_eq!(t.lookup(&key(1, 3), 100, 60, |_| true), None);
        t.record(key(1, 3), 1, 100, 120);
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(&key(1, 3), 100, 120, |_| true), Some(1));
        assert_eq!(t.lookup(&key(1, 1), 100, 120, |_| true), None);
    }

    #[test]
    fn keys_with_many_fields_differ_by_every_value() {
        let fields = [
            Field::NwSrc,
            Field::NwDst,
            Field::NwProto,
            Field::TpSrc,
            Field::TpDst,
        ];
        let mut a = FlowKey::ZERO;
        a.set(Field::TpDst, 80);
        let mut b = a;
        b.set(Field::TpDst, 81);
        assert_ne!(
            AffinityKey::new(1, &a, &fields),
            AffinityKey::new(1, &b, &fields)
        );
        assert_eq!(
            AffinityKey::new(1, &a, &fields),
            AffinityKey::new(1, &a, &fields)
        );
    }
}
