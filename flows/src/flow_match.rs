//! A masked match over the flow key: `(key, mask)` with `key & mask == key`.

use crate::field::{ethertype, ipproto, Field, Prereq};
use crate::key::{width_mask, FlowKey, KEY_WORDS};

/// A masked match. Bits where `mask` is 0 are wildcarded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct Match {
    /// Values; always zero where `mask` is zero.
    pub key: FlowKey,
    /// Which bits are significant.
    pub mask: FlowKey,
}

impl Match {
    /// The match-everything match.
    pub const ANY: Match = Match {
        key: FlowKey::ZERO,
        mask: FlowKey::ZERO,
    };

    /// Pins the bits of `field` selected by `mask` to `value`.
    pub fn set_masked(&mut self, field: Field, value: u64, mask: u64) {
        let (_, _, width) = field.layout();
        let mask = mask & width_mask(width);
        let old_mask = self.mask.get(field);
        self.mask.set(field, old_mask | mask);
        self.key.set_masked(field, value & mask, mask);
    }

    /// Pins all bits of `field` to `value`.
    pub fn set(&mut self, field: Field, value: u64) {
        self.set_masked(field, value, u64::MAX);
    }

    /// Unpins `field` entirely.
    pub fn clear(&mut self, field: Field) {
        self.mask.set(field, 0);
        self.key.set(field, 0);
    }

    /// `(value, mask)` of `field`.
    pub fn get(&self, field: Field) -> (u64, u64) {
        (self.key.get(field), self.mask.get(field))
    }

    /// True if `field` is pinned exactly (all bits).
    pub fn is_exact(&self, field: Field) -> bool {
        self.mask.get(field) == width_mask(field.width())
    }

    /// True if `pkt` satisfies this match.
    #[inline]
    pub fn matches(&self, pkt: &FlowKey) -> bool {
        (0..KEY_WORDS).all(|i| pkt.w[i] & self.mask.w[i] == self.key.w[i])
    }

    /// True if every packet this match accepts is also accepted by `other`
    /// (`other` is looser or equal) — used by non-strict `del-flows`.
    pub fn is_covered_by(&self, other: &Match) -> bool {
        (0..KEY_WORDS).all(|i| {
            other.mask.w[i] & !self.mask.w[i] == 0
                && self.key.w[i] & other.mask.w[i] == other.key.w[i]
        })
    }

    /// Checks the OVS prerequisites of every pinned field (e.g. `tp_dst`
    /// needs `tcp`/`udp`/`sctp`). Returns the first field that lacks one.
    pub fn check_prerequisites(&self) -> Result<(), (Field, Prereq)> {
        let dl_type = self.exact(Field::DlType);
        let proto = self.exact(Field::NwProto);
        for f in Field::ALL {
            if f.is_alias() || self.mask.get(*f) == 0 {
                continue;
            }
            let p = f.prerequisite();
            let ok = match p {
                Prereq::None => true,
                Prereq::IpOrArp => {
                    matches!(dl_type, Some(t) if t == ethertype::IPV4 as u64 || t == ethertype::ARP as u64)
                }
                Prereq::Arp => dl_type == Some(ethertype::ARP as u64),
                // `tp_src`/`tp_dst` also hold `icmp_type`/`icmp_code`.
                Prereq::TcpUdpSctp => {
                    dl_type == Some(ethertype::IPV4 as u64)
                        && matches!(proto, Some(p) if p == ipproto::TCP as u64 || p == ipproto::UDP as u64 || p == ipproto::SCTP as u64 || p == ipproto::ICMP as u64)
                }
                Prereq::Icmp => {
                    dl_type == Some(ethertype::IPV4 as u64) && proto == Some(ipproto::ICMP as u64)
                }
            };
            if !ok {
                return Err((*f, p));
            }
        }
        Ok(())
    }

    fn exact(&self, f: Field) -> Option<u64> {
        self.is_exact(f).then(|| self.key.get(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_match() {
        let mut m = Match::ANY;
        m.set(Field::DlType, 0x0800);
        m.set_masked(Field::NwSrc, 0x0a00_0000, 0xff00_0000);
        let mut k = FlowKey::ZERO;
        k.set(Field::DlType, 0x0800);
        k.set(Field::NwSrc, 0x0a01_0203);
        assert!(m.matches(&k));
        k.set(Field::NwSrc, 0x0b01_0203);
        assert!(!m.matches(&k));
    }

    #[test]
    fn covered_by() {
        let mut narrow = Match::ANY;
        narrow.set(Field::DlType, 0x0800);
        narrow.set(Field::NwSrc, 0x0a00_0001);
        let mut wide = Match::ANY;
        wide.set(Field::DlType, 0x0800);
        assert!(narrow.is_covered_by(&wide));
        assert!(!wide.is_covered_by(&narrow));
        assert!(narrow.is_covered_by(&Match::ANY));
    }

    #[test]
    fn prerequisites() {
        let mut m = Match::ANY;
        m.set(Field::TpDst, 80);
        assert_eq!(
            m.check_prerequisites(),
            Err((Field::TpDst, Prereq::TcpUdpSctp))
        );
        m.set(Field::DlType, 0x0800);
        m.set(Field::NwProto, 6);
        assert_eq!(m.check_prerequisites(), Ok(()));
        // icmp_type/icmp_code live in the tp_src/tp_dst bits.
        m.set(Field::NwProto, 1);
        assert_eq!(m.check_prerequisites(), Ok(()));
    }
}
