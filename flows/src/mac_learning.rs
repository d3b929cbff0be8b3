//! The MAC-learning table behind the `normal` action: `(vlan, mac) -> port`.
//!
//! Bounded in size (oldest entry evicted first) and aged by the caller's
//! clock. Every change bumps [`MacTable::generation`], which the datapath's
//! flow cache uses to drop decisions that were made with the old table.

use std::collections::{HashMap, VecDeque};

use crate::action::PortNo;

/// Default capacity (OVS's `mac-table-size` default is 8192).
pub const DEFAULT_CAPACITY: usize = 8192;
/// Default age in milliseconds (OVS's `mac-aging-time` default is 300 s).
pub const DEFAULT_AGE_MS: u64 = 300_000;

#[derive(Clone, Copy, Debug)]
struct Entry {
    port: PortNo,
    seen_ms: u64,
}

/// The table.
#[derive(Clone, Debug)]
pub struct MacTable {
    map: HashMap<(u16, u64), Entry>,
    order: VecDeque<(u16, u64)>,
    capacity: usize,
    age_ms: u64,
    generation: u64,
}

impl Default for MacTable {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_AGE_MS)
    }
}

/// One learned entry, for `ferrovs-ctl fdb-show`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacEntry {
    /// VLAN (0 = untagged).
    pub vlan: u16,
    /// MAC as 48 bits.
    pub mac: u64,
    /// Port it was learned on.
    pub port: PortNo,
    /// Seconds since last seen.
    pub age_s: u64,
}

impl MacTable {
    /// A table holding at most `capacity` entries that expire after `age_ms`.
    pub fn new(capacity: usize, age_ms: u64) -> Self {
        MacTable {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            age_ms,
            generation: 0,
        }
    }

    /// Changes whenever a lookup answer may have changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Learns that `mac` on `vlan` is behind `port`.
    pub fn learn(&mut self, vlan: u16, mac: u64, port: PortNo, now_ms: u64) {
        if mac & 0x0100_0000_0000 != 0 {
            return; // multicast/broadcast sources are never learned
        }
        match self.map.get_mut(&(vlan, mac)) {
            Some(e) => {
                if e.port != port {
                    e.port = port;
                    self.generation += 1;
                }
                e.seen_ms = now_ms;
            }
            None => {
                if self.map.len() >= self.capacity {
                    while let Some(old) = self.order.pop_front() {
                        if self.map.remove(&old).is_some() {
                            break;
                        }
                    }
                }
                self.map.insert(
                    (vlan, mac),
                    Entry {
                        port,
                        seen_ms: now_ms,
                    },
                );
                self.order.push_back((vlan, mac));
                self.generation += 1;
            }
        }
    }

    /// The port `mac` on `vlan` was learned on, if it is still fresh.
    pub fn lookup(&self, vlan: u16, mac: u64, now_ms: u64) -> Option<PortNo> {
        let e = self.map.get(&(vlan, mac))?;
        (now_ms.saturating_sub(e.seen_ms) < self.age_ms).then_some(e.port)
    }

    /// Drops aged entries; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.map.len();
        let age = self.age_ms;
        self.map
            .retain(|_, e| now_ms.saturating_sub(e.seen_ms) < age);
        let map = &self.map;
        self.order.retain(|k| map.contains_key(k));
        let n = before - self.map.len();
        if n > 0 {
            self.generation += 1;
        }
        n
    }

    /// Forgets everything learned on `port` (port deleted).
    pub fn flush_port(&mut self, port: PortNo) {
        self.map.retain(|_, e| e.port != port);
        self.generation += 1;
    }

    /// All entries, sorted by (port, vlan, mac).
    pub fn entries(&self, now_ms: u64) -> Vec<MacEntry> {
        let mut v: Vec<MacEntry> = self
            .map
            .iter()
            .map(|(&(vlan, mac), e)| MacEntry {
                vlan,
                mac,
                port: e.port,
                age_s: now_ms.saturating_sub(e.seen_ms) / 1000,
            })
            .collect();
        v.sort_by_key(|e| (e.port, e.vlan, e.mac));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_move_age_evict() {
        let mut t = MacTable::new(2, 1000);
        t.learn(0, 0xa, 1, 0);
        assert_eq!(t.lookup(0, 0xa, 10), Some(1));
        assert_eq!(t.lookup(5, 0xa, 10), None, "VLANs are separate");
        let g = t.generation();
        t.learn(0, 0xa, 2, 20);
        assert_eq!(t.lookup(0, 0xa, 30), Some(2));
        assert!(t.generation() > g);
        t.learn(0, 0xb, 1, 30);
        t.learn(0, 0xc, 1, 40); // evicts 0xa
        assert_eq!(t.lookup(0, 0xa, 50), None);
        assert_eq!(t.lookup(0, 0xc, 2000), None, "aged");
        t.learn(0, 0x0100_0000_0001, 1, 0);
        assert_eq!(
            t.lookup(0, 0x0100_0000_0001, 0),
            None,
            "multicast never learned"
        );
    }
}
