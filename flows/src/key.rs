//! The flow key: every header and metadata field the pipeline can match on,
//! packed into a fixed array of 64-bit words.
//!
//! Packing the key into words (like OVS's `miniflow`) makes masked matching
//! uniform: a match is a `(key, mask)` pair of the same shape, masking is a
//! word-wise AND, and a classifier subtable hashes only the words its mask
//! touches. Every field lives at a fixed `(word, shift, width)` given by
//! [`Field::layout`](crate::field::Field::layout).

use crate::field::Field;

/// Number of 64-bit words in a [`FlowKey`]. Word 12 holds only `conj_id`
/// (low 32 bits), which packets never carry: translation sets it for one
/// lookup when a conjunctive match completes.
pub const KEY_WORDS: usize = 13;

/// `ct_state` bits, as in OVS (`ovs-fields(7)`).
pub mod ct_state {
    /// Start of a new connection.
    pub const NEW: u64 = 0x01;
    /// Part of an existing connection.
    pub const EST: u64 = 0x02;
    /// Related to an existing connection (e.g. an ICMP error).
    pub const REL: u64 = 0x04;
    /// In the reply direction.
    pub const RPL: u64 = 0x08;
    /// Could not be tracked (invalid).
    pub const INV: u64 = 0x10;
    /// Has gone through the connection tracker.
    pub const TRK: u64 = 0x20;
    /// Source NAT applied.
    pub const SNAT: u64 = 0x40;
    /// Destination NAT applied.
    pub const DNAT: u64 = 0x80;

    /// Flag names in the order `ovs-ofctl` prints them.
    pub const NAMES: [(&str, u64); 8] = [
        ("new", NEW),
        ("est", EST),
        ("rel", REL),
        ("rpl", RPL),
        ("inv", INV),
        ("trk", TRK),
        ("snat", SNAT),
        ("dnat", DNAT),
    ];
}

/// `vlan_tci` bit meaning "a VLAN header is present" (OVS's CFI trick).
pub const VLAN_CFI: u16 = 0x1000;

/// A flow key, or a mask of the same shape.
///
/// All-zero is "no fields set". Accessors read and write fields by their
/// [`Field`] layout; they never panic.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// The packed words. Public so the classifier can hash masked words.
    pub w: [u64; KEY_WORDS],
}

impl FlowKey {
    /// The all-zero key (also the "match anything" mask).
    pub const ZERO: FlowKey = FlowKey { w: [0; KEY_WORDS] };

    /// Reads `field` as an unsigned value.
    #[inline]
    pub fn get(&self, field: Field) -> u64 {
        let (word, shift, width) = field.layout();
        (self.w[word] >> shift) & width_mask(width)
    }

    /// Writes `value` into `field` (excess high bits are dropped).
    #[inline]
    pub fn set(&mut self, field: Field, value: u64) {
        let (word, shift, width) = field.layout();
        let m = width_mask(width) << shift;
        self.w[word] = (self.w[word] & !m) | ((value << shift) & m);
    }

    /// Writes only the bits of `value` selected by `mask` into `field`.
    #[inline]
    pub fn set_masked(&mut self, field: Field, value: u64, mask: u64) {
        let cur = self.get(field);
        self.set(field, (cur & !mask) | (value & mask));
    }

    /// Word-wise AND with `mask`.
    #[inline]
    pub fn masked(&self, mask: &FlowKey) -> FlowKey {
        let mut out = FlowKey::ZERO;
        for i in 0..KEY_WORDS {
            out.w[i] = self.w[i] & mask.w[i];
        }
        out
    }

    /// True if every bit is zero.
    pub fn is_zero(&self) -> bool {
        self.w.iter().all(|&w| w == 0)
    }

    /// Convenience: the 6 bytes of a MAC-address field.
    pub fn mac(&self, field: Field) -> [u8; 6] {
        mac_from_u64(self.get(field))
    }

    /// Convenience: an IPv4 field as an address.
    pub fn ipv4(&self, field: Field) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(self.get(field) as u32)
    }
}

impl std::fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("FlowKey");
        for field in Field::ALL {
            let v = self.get(*field);
            if v != 0 && !field.is_alias() {
                d.field(field.name(), &format_args!("{v:#x}"));
            }
        }
        d.finish()
    }
}

/// All-ones for `width` bits (`width` ≤ 64).
#[inline]
pub const fn width_mask(width: u32) -> u64 {
    if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

/// Packs 6 MAC bytes into the low 48 bits of a `u64`.
#[inline]
pub fn mac_to_u64(mac: [u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

/// Unpacks the low 48 bits of a `u64` into MAC bytes.
#[inline]
pub fn mac_from_u64(v: u64) -> [u8; 6] {
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap_unless_aliases() {
        // Every non-alias field must own its bits alone.
        let mut seen = FlowKey::ZERO;
        for f in Field::ALL.iter().filter(|f| !f.is_alias()) {
            let mut k = FlowKey::ZERO;
            k.set(*f, u64::MAX);
            assert!(seen.masked(&k).is_zero(), "{} overlaps", f.name());
            for i in 0..KEY_WORDS {
                seen.w[i] |= k.w[i];
            }
        }
    }

    #[test]
    fn set_get_roundtrip() {
        let mut k = FlowKey::ZERO;
        k.set(Field::DlSrc, 0x0011_2233_4455);
        k.set(Field::DlType, 0x0800);
        k.set(Field::Reg(3), 0xdead_beef);
        assert_eq!(k.get(Field::DlSrc), 0x0011_2233_4455);
        assert_eq!(k.mac(Field::DlSrc), [0, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert_eq!(k.get(Field::DlType), 0x0800);
        assert_eq!(k.get(Field::Reg(3)), 0xdead_beef);
        k.set(Field::DlType, 0x1_86dd); // too wide: truncated
        assert_eq!(k.get(Field::DlType), 0x86dd);
        assert_eq!(k.get(Field::DlSrc), 0x0011_2233_4455);
    }

    #[test]
    fn vlan_views_share_tci() {
        let mut k = FlowKey::ZERO;
        k.set(Field::VlanTci, 0x2000 | VLAN_CFI as u64 | 100);
        assert_eq!(k.get(Field::DlVlan), 100);
        assert_eq!(k.get(Field::DlVlanPcp), 1);
    }
}
