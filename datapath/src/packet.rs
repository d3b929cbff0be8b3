//! In-place header rewrites for the `set_field`/`mod_*`/`dec_ttl`/VLAN
//! actions, keeping every checksum valid.
//!
//! Each rewrite takes the [`Layout`] that [`crate::extract::extract`]
//! returned for the frame and patches the checksums incrementally (RFC 1624,
//! eqn. 3: `HC' = ~(~HC + ~m + m')`), so its cost does not depend on the
//! packet size. An IPv4 address change also fixes the TCP/UDP checksum,
//! whose pseudo-header covers the addresses; a UDP checksum of 0 ("none")
//! stays 0 and a computed 0 is sent as 0xffff (RFC 768).
//!
//! The functions never panic: one that cannot apply to this frame (wrong
//! protocol, or a frame shorter than `layout` says) changes nothing and
//! returns `false`/`None`. SCTP ports are not rewritten (its CRC32c would
//! need a full recomputation).

use std::net::Ipv4Addr;

use flows::field::{ethertype, Field};
use flows::key::{mac_from_u64, VLAN_CFI};

use crate::extract::{L3Kind, L4Kind, Layout, ETH_HLEN, VLAN_HLEN};

/// Folds a 32-bit one's-complement sum to 16 bits (not complemented).
#[inline]
pub fn checksum_fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds the bytes of `data` (as big-endian 16-bit words, odd byte padded
/// with 0) to the running one's-complement `sum` (unfolded).
pub fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum = sum.wrapping_add(u16::from_be_bytes([w[0], w[1]]) as u32);
        // Keep the accumulator from overflowing on long inputs.
        if sum >= 0x8000_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = words.remainder() {
        sum = sum.wrapping_add((*last as u32) << 8);
    }
    sum
}

/// The Internet checksum (RFC 1071) of `data`: the value to store in a
/// zeroed checksum field. Over a header that includes a correct checksum it
/// is 0.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !checksum_fold(checksum_add(0, data))
}

/// RFC 1624 update of checksum `csum` after a 16-bit word changed from
/// `old` to `new`.
#[inline]
pub fn checksum_replace16(csum: u16, old: u16, new: u16) -> u16 {
    !checksum_fold((!csum) as u32 + (!old) as u32 + new as u32)
}

/// RFC 1624 update of checksum `csum` after a 32-bit value (two aligned
/// words, e.g. an IPv4 address) changed from `old` to `new`.
#[inline]
pub fn checksum_replace32(csum: u16, old: u32, new: u32) -> u16 {
    let sum = (!csum) as u32
        + (!(old >> 16) as u16) as u32
        + (!(old as u16)) as u32
        + (new >> 16)
        + (new & 0xffff);
    !checksum_fold(sum)
}

#[inline]
fn rd16(b: &[u8], off: usize) -> Option<u16> {
    let c = b.get(off..)?.first_chunk::<2>()?;
    Some(u16::from_be_bytes(*c))
}

#[inline]
fn wr16(b: &mut [u8], off: usize, v: u16) -> Option<()> {
    let c = b.get_mut(off..)?.first_chunk_mut::<2>()?;
    *c = v.to_be_bytes();
    Some(())
}

#[inline]
fn rd32(b: &[u8], off: usize) -> Option<u32> {
    let c = b.get(off..)?.first_chunk::<4>()?;
    Some(u32::from_be_bytes(*c))
}

/// Sets the Ethernet destination. False if the frame is shorter than an
/// Ethernet header.
#[inline]
pub fn set_eth_dst(frame: &mut [u8], mac: [u8; 6]) -> bool {
    match frame.get_mut(..ETH_HLEN) {
        Some(h) => {
            h[..6].copy_from_slice(&mac);
            true
        }
        None => false,
    }
}

/// Sets the Ethernet source. False if the frame is shorter than an Ethernet
/// header.
#[inline]
pub fn set_eth_src(frame: &mut [u8], mac: [u8; 6]) -> bool {
    match frame.get_mut(6..ETH_HLEN) {
        Some(s) => {
            s[..6].copy_from_slice(&mac);
            true
        }
        None => false,
    }
}

/// Offset of the IPv4 header, or `None` if the frame is not IPv4 or
/// shorter than its header.
#[inline]
fn ipv4_at(frame: &[u8], layout: &Layout) -> Option<usize> {
    let l3 = layout.l3 as usize;
    (layout.l3_kind == L3Kind::Ipv4 && frame.len() >= l3 + 20).then_some(l3)
}

/// Offset of the L4 checksum field, and whether it is UDP's (0 = none).
#[inline]
fn l4_csum_at(layout: &Layout) -> Option<(usize, bool)> {
    let l4 = layout.l4? as usize;
    match layout.l4_kind {
        L4Kind::Tcp => Some((l4 + 16, false)),
        L4Kind::Udp => Some((l4 + 6, true)),
        _ => None,
    }
}

/// Applies `update` to the TCP/UDP checksum, if the frame has one.
#[inline]
fn update_l4_csum(frame: &mut [u8], layout: &Layout, update: impl FnOnce(u16) -> u16) {
    let Some((at, udp)) = l4_csum_at(layout) else {
        return;
    };
    let Some(old) = rd16(frame, at) else { return };
    if udp && old == 0 {
        return; // no checksum: stays none
    }
    let mut new = update(old);
    if udp && new == 0 {
        new = 0xffff;
    }
    let _ = wr16(frame, at, new);
}

fn set_ipv4_addr(frame: &mut [u8], layout: &Layout, off: usize, addr: Ipv4Addr) -> bool {
    let Some(l3) = ipv4_at(frame, layout) else {
        return false;
    };
    let (Some(old), Some(csum)) = (rd32(frame, l3 + off), rd16(frame, l3 + 10)) else {
        return false;
    };
    let new = u32::from(addr);
    if old == new {
        return true;
    }
    if let Some(a) = frame.get_mut(l3 + off..l3 + off + 4) {
        a.copy_from_slice(&new.to_be_bytes());
    }
    let _ = wr16(frame, l3 + 10, checksum_replace32(csum, old, new));
    update_l4_csum(frame, layout, |c| checksum_replace32(c, old, new));
    true
}

/// Sets the IPv4 source, fixing the IP and TCP/UDP checksums. False if the
/// frame is not IPv4.
#[inline]
pub fn set_ipv4_src(frame: &mut [u8], layout: &Layout, addr: Ipv4Addr) -> bool {
    set_ipv4_addr(frame, layout, 12, addr)
}

/// Sets the IPv4 destination, fixing the IP and TCP/UDP checksums. False if
/// the frame is not IPv4.
#[inline]
pub fn set_ipv4_dst(frame: &mut [u8], layout: &Layout, addr: Ipv4Addr) -> bool {
    set_ipv4_addr(frame, layout, 16, addr)
}

fn set_l4_port(frame: &mut [u8], layout: &Layout, off: usize, port: u16) -> bool {
    if !matches!(layout.l4_kind, L4Kind::Tcp | L4Kind::Udp) {
        return false;
    }
    let Some(l4) = layout.l4 else { return false };
    let at = l4 as usize + off;
    let Some(old) = rd16(frame, at) else {
        return false;
    };
    if wr16(frame, at, port).is_none() {
        return false;
    }
    update_l4_csum(frame, layout, |c| checksum_replace16(c, old, port));
    true
}

/// Sets the TCP/UDP source port, fixing the checksum. False for other
/// protocols (and later fragments, which carry no ports).
#[inline]
pub fn set_l4_src(frame: &mut [u8], layout: &Layout, port: u16) -> bool {
    set_l4_port(frame, layout, 0, port)
}

/// Sets the TCP/UDP destination port, fixing the checksum. False for other
/// protocols (and later fragments, which carry no ports).
#[inline]
pub fn set_l4_dst(frame: &mut [u8], layout: &Layout, port: u16) -> bool {
    set_l4_port(frame, layout, 2, port)
}

/// Sets the DSCP bits (top 6) of the IPv4 TOS byte to those of `tos`,
/// keeping the two ECN bits, as OVS's `mod_nw_tos` and `set_field:nw_tos`
/// do. Fixes the header checksum. False if not IPv4.
#[inline]
pub fn set_ipv4_tos(frame: &mut [u8], layout: &Layout, tos: u8) -> bool {
    let Some(l3) = ipv4_at(frame, layout) else {
        return false;
    };
    let (Some(old), Some(csum)) = (rd16(frame, l3), rd16(frame, l3 + 10)) else {
        return false;
    };
    let old_tos = old as u8;
    let new_tos = (tos & 0xfc) | (old_tos & 0x03);
    let new = (old & 0xff00) | new_tos as u16;
    let _ = wr16(frame, l3, new);
    let _ = wr16(frame, l3 + 10, checksum_replace16(csum, old, new));
    true
}

/// Decrements the IPv4 TTL, fixing the header checksum. Returns false (and
/// changes nothing) when the TTL is 0 or 1, i.e. the packet must be
/// dropped (OVS `dec_ttl`). Frames that are not IPv4 pass unchanged (true).
#[inline]
pub fn dec_ttl(frame: &mut [u8], layout: &Layout) -> bool {
    if layout.l3_kind != L3Kind::Ipv4 {
        return true;
    }
    let Some(l3) = ipv4_at(frame, layout) else {
        return false;
    };
    // TTL and protocol share the word at offset 8.
    let (Some(old), Some(csum)) = (rd16(frame, l3 + 8), rd16(frame, l3 + 10)) else {
        return false;
    };
    if old >> 8 <= 1 {
        return false;
    }
    let new = old - 0x0100;
    let _ = wr16(frame, l3 + 8, new);
    let _ = wr16(frame, l3 + 10, checksum_replace16(csum, old, new));
    true
}

/// Inserts an 802.1Q tag (TPID 0x8100) with `tci` after the MAC addresses
/// of the frame occupying `buf[..len]`, as the outermost tag (OVS
/// `push_vlan` + `set_field:vlan_tci`). The CFI bit 0x1000 of `tci` is the
/// key's "tag present" marker and is not written to the packet.
///
/// Returns the new length, or `None` (nothing changed) if `buf` has no
/// room for 4 more bytes or `len` is not a valid frame length. Updates
/// `layout`'s offsets.
pub fn push_vlan(buf: &mut [u8], len: usize, layout: &mut Layout, tci: u16) -> Option<usize> {
    let new_len = len.checked_add(VLAN_HLEN)?;
    if len < ETH_HLEN || new_len > buf.len() {
        return None;
    }
    buf.copy_within(12..len, 12 + VLAN_HLEN);
    wr16(buf, 12, ethertype::VLAN)?;
    wr16(buf, 14, tci & !VLAN_CFI)?;
    layout.vlan = true;
    layout.l3 += VLAN_HLEN as u16;
    layout.l4 = layout.l4.map(|l4| l4 + VLAN_HLEN as u16);
    Some(new_len)
}

/// Removes the outer 802.1Q tag of the frame occupying `buf[..len]`.
///
/// Returns the new length, or `None` (nothing changed) if `layout` says
/// the frame is untagged or it is too short. Updates `layout`'s offsets.
/// If the frame was double-tagged (inner `dl_type` 0x8100) the inner tag
/// becomes the outer one and the caller must re-run `extract`.
pub fn pop_vlan(buf: &mut [u8], len: usize, layout: &mut Layout) -> Option<usize> {
    if !layout.vlan || len < ETH_HLEN + VLAN_HLEN || len > buf.len() {
        return None;
    }
    buf.copy_within(12 + VLAN_HLEN..len, 12);
    layout.vlan = false;
    layout.l3 = layout.l3.saturating_sub(VLAN_HLEN as u16);
    layout.l4 = layout.l4.map(|l4| l4.saturating_sub(VLAN_HLEN as u16));
    Some(len - VLAN_HLEN)
}

/// Rewrites the TCI of the existing 802.1Q tag (the CFI marker bit 0x1000
/// is not written). False if the frame is untagged.
#[inline]
pub fn set_vlan_tci(frame: &mut [u8], layout: &Layout, tci: u16) -> bool {
    layout.vlan && wr16(frame, 14, tci & !VLAN_CFI).is_some()
}

/// Adds an 802.1Q tag to a frame whose first 4 bytes are free headroom:
/// `frame[4..]` holds the untagged frame; afterwards `frame` is the tagged
/// frame (only the 12 MAC bytes move). Updates `layout`'s offsets.
pub fn push_vlan_front(frame: &mut [u8], layout: &mut Layout, tci: u16) -> bool {
    if frame.len() < ETH_HLEN + VLAN_HLEN {
        return false;
    }
    frame.copy_within(VLAN_HLEN..VLAN_HLEN + 12, 0);
    if wr16(frame, 12, ethertype::VLAN).is_none() || wr16(frame, 14, tci & !VLAN_CFI).is_none() {
        return false;
    }
    layout.vlan = true;
    layout.l3 += VLAN_HLEN as u16;
    layout.l4 = layout.l4.map(|l4| l4 + VLAN_HLEN as u16);
    true
}

/// Removes the outer 802.1Q tag by moving the MAC addresses 4 bytes
/// forward: afterwards the frame starts at `frame[4..]` (the caller
/// advances its slice). False (nothing changed) if untagged.
pub fn pop_vlan_front(frame: &mut [u8], layout: &mut Layout) -> bool {
    if !layout.vlan || frame.len() < ETH_HLEN + VLAN_HLEN {
        return false;
    }
    frame.copy_within(0..12, VLAN_HLEN);
    layout.vlan = false;
    layout.l3 = layout.l3.saturating_sub(VLAN_HLEN as u16);
    layout.l4 = layout.l4.map(|l4| l4.saturating_sub(VLAN_HLEN as u16));
    true
}

/// Rewrites header field `field` of the packet to `value` (as the
/// datapath's `SetField` action): MACs, IPv4 addresses and TOS, L4 ports,
/// with checksums updated. Other fields are metadata and ignored. False if
/// the packet has no such header.
#[inline]
pub fn set_field(frame: &mut [u8], layout: &Layout, field: Field, value: u64) -> bool {
    match field {
        Field::DlSrc => set_eth_src(frame, mac_from_u64(value)),
        Field::DlDst => set_eth_dst(frame, mac_from_u64(value)),
        Field::NwSrc => set_ipv4_src(frame, layout, Ipv4Addr::from(value as u32)),
        Field::NwDst => set_ipv4_dst(frame, layout, Ipv4Addr::from(value as u32)),
        Field::NwTos => set_ipv4_tos(frame, layout, value as u8),
        Field::TpSrc => set_l4_src(frame, layout, value as u16),
        Field::TpDst => set_l4_dst(frame, layout, value as u16),
        _ => false,
    }
}

/// Rewrites the identifier of an ICMP echo request/reply (NAT of ICMP
/// queries), updating the ICMP checksum. False if not ICMP.
pub fn set_icmp_id(frame: &mut [u8], layout: &Layout, id: u16) -> bool {
    let Some(l4) = layout.l4 else { return false };
    if layout.l4_kind != L4Kind::Icmp {
        return false;
    }
    let l4 = l4 as usize;
    let (Some(old), Some(csum)) = (rd16(frame, l4 + 4), rd16(frame, l4 + 2)) else {
        return false;
    };
    wr16(frame, l4 + 4, id).is_some()
        && wr16(frame, l4 + 2, checksum_replace16(csum, old, id)).is_some()
}

/// Rewrites the packet embedded in an ICMP error (NAT of a related error):
/// its addresses and ports to `to` (an embedded ICMP echo takes `to.3` as
/// its identifier), fixing the embedded IPv4 header checksum, the embedded
/// TCP/UDP/ICMP checksum where the error carries it, and the error's own
/// ICMP checksum (recomputed over the message: errors are rare and short).
/// `to` is `(src, dst, sport, dport)`. False if the frame is not an ICMP
/// message with an embedded IPv4 header.
pub fn set_icmp_inner(
    frame: &mut [u8],
    layout: &Layout,
    to: (Ipv4Addr, Ipv4Addr, u16, u16),
) -> bool {
    let Some(l4) = layout.l4 else { return false };
    if layout.l4_kind != L4Kind::Icmp {
        return false;
    }
    let l4 = l4 as usize;
    let end = (layout.l3 as usize + layout.ip_total_len as usize).min(frame.len());
    let ip = l4 + 8;
    let Some(&vihl) = frame.get(ip) else {
        return false;
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 || ip + ihl > end {
        return false;
    }
    let proto = frame[ip + 9];
    let l4i = ip + ihl;
    let csum_at = match proto {
        6 => Some(l4i + 16),
        17 => Some(l4i + 6),
        1 => Some(l4i + 2),
        _ => None,
    }
    .filter(|at| at + 2 <= end);
    // The embedded L4 checksum, if carried (UDP 0 = none, stays none).
    let mut l4csum = csum_at
        .and_then(|at| rd16(frame, at))
        .filter(|c| proto != 17 || *c != 0);
    let pseudo = matches!(proto, 6 | 17);
    for (off, new) in [(12, u32::from(to.0)), (16, u32::from(to.1))] {
        let (Some(old), Some(ipc)) = (rd32(frame, ip + off), rd16(frame, ip + 10)) else {
            return false;
        };
        if old == new {
            continue;
        }
        frame[ip + off..ip + off + 4].copy_from_slice(&new.to_be_bytes());
        let _ = wr16(frame, ip + 10, checksum_replace32(ipc, old, new));
        if pseudo {
            l4csum = l4csum.map(|c| checksum_replace32(c, old, new));
        }
    }
    let ports: &[(usize, u16)] = match proto {
        6 | 17 => &[(0, to.2), (2, to.3)],
        1 => &[(4, to.2)],
        _ => &[],
    };
    for &(off, new) in ports {
        if l4i + off + 2 > end {
            continue;
        }
        let Some(old) = rd16(frame, l4i + off) else {
            continue;
        };
        let _ = wr16(frame, l4i + off, new);
        l4csum = l4csum.map(|c| checksum_replace16(c, old, new));
    }
    if let (Some(at), Some(mut c)) = (csum_at, l4csum) {
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        let _ = wr16(frame, at, c);
    }
    let _ = wr16(frame, l4 + 2, 0);
    let c = internet_checksum(&frame[l4..end]);
    let _ = wr16(frame, l4 + 2, c);
    true
}

/// The 5-tuple of the IPv4 header embedded in an ICMP error whose ICMP
/// header starts at `l4`: `(src, dst, proto, sport, dport)`, with an
/// embedded ICMP echo giving its identifier as `sport` and 0 as `dport`.
pub fn icmp_inner_tuple(frame: &[u8], l4: usize) -> Option<(Ipv4Addr, Ipv4Addr, u8, u16, u16)> {
    let ip = l4 + 8;
    let h: &[u8; 20] = crate::extract::chunk(frame, ip)?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let proto = h[9];
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    let l4i = ip + ihl;
    let (sp, dp) = match proto {
        6 | 17 | 132 => (rd16(frame, l4i)?, rd16(frame, l4i + 2)?),
        1 => (rd16(frame, l4i + 4)?, 0),
        _ => (0, 0),
    };
    Some((src, dst, proto, sp, dp))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::extract::test_frames::*;
    use crate::extract::{extract, Layout};
    use etherparse::{NetHeaders, PacketHeaders, PayloadSlice, TransportHeader};
    use flows::field::Field;
    use flows::key::FlowKey;
    use proptest::prelude::*;

    #[test]
    fn icmp_error_inner_rewrite_keeps_all_checksums() {
        // Port unreachable 10.0.0.2 -> 10.0.0.1 about UDP
        // 10.0.0.100:40003 -> 10.0.0.2:9999 with 4 bytes of payload.
        let mut inner = vec![
            0x45, 0, 0, 32, 0, 7, 0, 0, 64, 17, 0, 0, 10, 0, 0, 100, 10, 0, 0, 2, // IPv4
            0x9c, 0x43, 0x27, 0x0f, 0, 12, 0, 0, b'a', b'b', b'c', b'd', // UDP
        ];
        let c = internet_checksum(&inner[..20]);
        inner[10..12].copy_from_slice(&c.to_be_bytes());
        let udp_sum = |p: &[u8]| {
            let mut s = checksum_add(0, &p[12..20]);
            s = checksum_add(s, &[0, 17, 0, 12]);
            !checksum_fold(checksum_add(s, &p[20..32]))
        };
        let c = udp_sum(&inner);
        inner[26..28].copy_from_slice(&c.to_be_bytes());
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&inner);
        let c = internet_checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let tot = (20 + icmp.len()) as u8;
        let mut ip = vec![
            0x45, 0, 0, tot, 0, 9, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        let c = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&icmp);
        let l = layout(&f);
        let outer = f[..34].to_vec();
        let to = (
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            33100,
            9999,
        );
        assert!(set_icmp_inner(&mut f, &l, to));
        let icmp = &f[34..];
        assert_eq!(internet_checksum(icmp), 0, "ICMP checksum");
        let inner = &icmp[8..];
        assert_eq!(internet_checksum(&inner[..20]), 0, "inner IP checksum");
        assert_eq!(&inner[12..20], &[10, 0, 0, 1, 10, 0, 0, 2]);
        assert_eq!(&inner[20..24], &[0x81, 0x4c, 0x27, 0x0f]);
        let mut z = inner.to_vec();
        let got = u16::from_be_bytes([z[26], z[27]]);
        z[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(got, udp_sum(&z), "inner UDP checksum");
        assert_eq!(f[..34], outer[..], "outer headers untouched");
        // Not an ICMP frame: nothing happens.
        let mut tcp = TCP_SYN;
        let lt = layout(&tcp);
        assert!(!set_icmp_inner(&mut tcp, &lt, to));
        assert_eq!(tcp, TCP_SYN);
    }

    fn layout(f: &[u8]) -> Layout {
        extract(f, 1, &mut FlowKey::default()).unwrap()
    }

    fn key(f: &[u8]) -> FlowKey {
        let mut k = FlowKey::default();
        extract(f, 1, &mut k).unwrap();
        k
    }

    /// Verifies every checksum of an IPv4 frame by full recomputation with
    /// etherparse. UDP checksum 0 is accepted as "none".
    fn assert_checksums_ok(f: &[u8]) {
        let h = PacketHeaders::from_ethernet_slice(f).unwrap();
        let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
            panic!("not ipv4")
        };
        assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IPv4 header");
        let payload = match &h.payload {
            PayloadSlice::Tcp(p) | PayloadSlice::Udp(p) => *p,
            other => other.slice(),
        };
        match &h.transport {
            Some(TransportHeader::Tcp(t)) => {
                assert_eq!(
                    t.checksum,
                    t.calc_checksum_ipv4(ip, payload).unwrap(),
                    "TCP"
                )
            }
            Some(TransportHeader::Udp(u)) if u.checksum != 0 => {
                assert_eq!(
                    u.checksum,
                    u.calc_checksum_ipv4(ip, payload).unwrap(),
                    "UDP"
                )
            }
            _ => {}
        }
        // And independently of etherparse: the header sums to 0.
        let l = layout(f);
        let l3 = l.l3 as usize;
        assert_eq!(internet_checksum(&f[l3..l3 + l.ip_hdr_len as usize]), 0);
    }

    #[test]
    fn test_frames_have_valid_checksums() {
        for f in [
            &ICMP_ECHO[..],
            &TCP_SYN,
            &UDP_DNS,
            &VLAN_TCP_ACK,
            &UDP_NOCSUM,
        ] {
            assert_checksums_ok(f);
        }
        let l = layout(&ICMP_ECHO);
        assert_eq!(internet_checksum(&ICMP_ECHO[l.l4.unwrap() as usize..]), 0);
    }

    #[test]
    fn rfc1624_matches_recomputation() {
        // The RFC 1624 section 4 example: a header word 0x5555 -> 0x3285 when
        // the checksum is 0xdd2f gives 0x0000 with eqn. 3.
        assert_eq!(checksum_replace16(0xdd2f, 0x5555, 0x3285), 0x0000);
        let mut hdr = TCP_SYN[14..34].to_vec();
        let old = u32::from_be_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
        hdr[12..16].copy_from_slice(&[192, 168, 77, 1]);
        let csum = u16::from_be_bytes([hdr[10], hdr[11]]);
        let inc = checksum_replace32(csum, old, 0xc0a8_4d01);
        hdr[10..12].copy_from_slice(&inc.to_be_bytes());
        assert_eq!(internet_checksum(&hdr), 0);
    }

    #[test]
    fn eth_addresses() {
        let mut f = TCP_SYN;
        assert!(set_eth_src(&mut f, [0xaa; 6]));
        assert!(set_eth_dst(&mut f, [0xbb; 6]));
        let k = key(&f);
        assert_eq!(k.mac(Field::DlSrc), [0xaa; 6]);
        assert_eq!(k.mac(Field::DlDst), [0xbb; 6]);
        assert_eq!(f[12..], TCP_SYN[12..]);
        assert!(!set_eth_src(&mut f[..13], [0; 6]));
    }

    #[test]
    fn ipv4_addresses_tcp_udp_vlan() {
        for frame in [&TCP_SYN[..], &UDP_DNS, &VLAN_TCP_ACK, &UDP_NOCSUM] {
            let mut f = frame.to_vec();
            let l = layout(&f);
            assert!(set_ipv4_src(&mut f, &l, Ipv4Addr::new(172, 16, 0, 9)));
            assert!(set_ipv4_dst(&mut f, &l, Ipv4Addr::new(100, 64, 255, 254)));
            assert_checksums_ok(&f);
            let k = key(&f);
            assert_eq!(k.ipv4(Field::NwSrc), Ipv4Addr::new(172, 16, 0, 9));
            assert_eq!(k.ipv4(Field::NwDst), Ipv4Addr::new(100, 64, 255, 254));
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        let mut f = UDP_NOCSUM;
        let l = layout(&f);
        let at = l.l4.unwrap() as usize + 6;
        assert!(set_ipv4_dst(&mut f, &l, Ipv4Addr::new(1, 2, 3, 4)));
        assert!(set_l4_dst(&mut f, &l, 4242));
        assert_eq!(&f[at..at + 2], &[0, 0]);
        assert_checksums_ok(&f);
    }

    #[test]
    fn icmp_address_rewrite_leaves_icmp_checksum() {
        let mut f = ICMP_ECHO;
        let l = layout(&f);
        assert!(set_ipv4_src(&mut f, &l, Ipv4Addr::new(9, 9, 9, 9)));
        assert_checksums_ok(&f);
        assert_eq!(f[34..], ICMP_ECHO[34..]);
        assert!(!set_l4_src(&mut f, &l, 1));
    }

    #[test]
    fn ports() {
        for frame in [&TCP_SYN[..], &UDP_DNS, &VLAN_TCP_ACK] {
            let mut f = frame.to_vec();
            let l = layout(&f);
            assert!(set_l4_src(&mut f, &l, 1));
            assert!(set_l4_dst(&mut f, &l, 65535));
            assert_checksums_ok(&f);
            let k = key(&f);
            assert_eq!((k.get(Field::TpSrc), k.get(Field::TpDst)), (1, 65535));
        }
        // Later fragments have no ports to rewrite.
        let mut f = UDP_FRAG_LATER;
        let l = layout(&f);
        assert!(!set_l4_src(&mut f, &l, 1));
        assert_eq!(f, UDP_FRAG_LATER);
    }

    #[test]
    fn tos_keeps_ecn() {
        let mut f = UDP_DNS;
        f[15] = 0xb9; // EF + ECT(1)
        let csum = internet_checksum(
            &f[14..34]
                .iter()
                .enumerate()
                .map(|(i, b)| if i == 10 || i == 11 { 0 } else { *b })
                .collect::<Vec<_>>(),
        );
        f[24..26].copy_from_slice(&csum.to_be_bytes());
        let l = layout(&f);
        assert!(set_ipv4_tos(&mut f, &l, 0x28));
        assert_eq!(f[15], 0x29);
        assert_checksums_ok(&f);
        let mut a = ARP_REQUEST;
        let l = layout(&a);
        assert!(!set_ipv4_tos(&mut a, &l, 0x28));
        assert_eq!(a, ARP_REQUEST);
    }

    #[test]
    fn ttl() {
        let mut f = TCP_SYN;
        let l = layout(&f);
        assert!(dec_ttl(&mut f, &l));
        assert_eq!(f[22], 63);
        assert_checksums_ok(&f);
        f[22] = 1;
        let before = f;
        assert!(!dec_ttl(&mut f, &l));
        assert_eq!(f, before);
        f[22] = 0;
        assert!(!dec_ttl(&mut f, &l));
        let mut a = ARP_REQUEST;
        let l = layout(&a);
        assert!(dec_ttl(&mut a, &l));
        assert_eq!(a, ARP_REQUEST);
        // Count all the way down, checking the checksum each time.
        let mut f = UDP_DNS;
        let l = layout(&f);
        f[22] = 255;
        let fixed = internet_checksum(&{
            let mut h = f[14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        f[24..26].copy_from_slice(&fixed.to_be_bytes());
        let mut n = 0;
        while dec_ttl(&mut f, &l) {
            n += 1;
            assert_checksums_ok(&f);
        }
        assert_eq!((n, f[22]), (254, 1));
    }

    #[test]
    fn vlan_push_set_pop() {
        let mut buf = [0u8; 2048];
        buf[..TCP_SYN.len()].copy_from_slice(&TCP_SYN);
        let mut l = layout(&TCP_SYN);
        let len = push_vlan(&mut buf, TCP_SYN.len(), &mut l, 0x1000 | 0x6000 | 42).unwrap();
        assert_eq!(len, TCP_SYN.len() + 4);
        assert_eq!(&buf[12..16], &[0x81, 0x00, 0x60, 42]);
        let mut k = FlowKey::default();
        assert_eq!(extract(&buf[..len], 1, &mut k), Ok(l));
        assert_eq!(k.get(Field::VlanTci), 0x7000 | 42);
        assert_eq!(k.get(Field::TpDst), 80);
        // Rewrites through the updated layout land in the right place.
        assert!(set_ipv4_dst(
            &mut buf[..len],
            &l,
            Ipv4Addr::new(10, 1, 1, 1)
        ));
        assert_checksums_ok(&buf[..len]);

        assert!(set_vlan_tci(&mut buf[..len], &l, 0x1000 | 7));
        assert_eq!(&buf[14..16], &[0x00, 7]);

        let len = pop_vlan(&mut buf, len, &mut l).unwrap();
        assert_eq!(len, TCP_SYN.len());
        assert_eq!(extract(&buf[..len], 1, &mut k), Ok(l));
        assert_eq!(k.get(Field::VlanTci), 0);
        assert_eq!(buf[..12], TCP_SYN[..12]);
        // Only the destination address and the checksums differ.
        assert_eq!(buf[34..50], TCP_SYN[34..50]);
        assert_eq!(buf[52..len], TCP_SYN[52..]);
        assert_checksums_ok(&buf[..len]);
        assert_eq!(pop_vlan(&mut buf, len, &mut l), None);
        assert!(!set_vlan_tci(&mut buf[..len], &l, 5));
    }

    #[test]
    fn vlan_bounds() {
        let mut buf = TCP_SYN;
        let mut l = layout(&buf);
        // No room in a buffer exactly the frame's size.
        assert_eq!(push_vlan(&mut buf, TCP_SYN.len(), &mut l, 1), None);
        assert_eq!(buf, TCP_SYN);
        assert_eq!(push_vlan(&mut buf, 13, &mut l, 1), None);
        assert_eq!(push_vlan(&mut buf, usize::MAX, &mut l, 1), None);
        let mut v = VLAN_TCP_ACK;
        let mut l = layout(&v);
        assert_eq!(pop_vlan(&mut v, 17, &mut l), None);
        assert_eq!(pop_vlan(&mut v, 1000, &mut l), None);
        let len = pop_vlan(&mut v, VLAN_TCP_ACK.len(), &mut l).unwrap();
        assert_checksums_ok(&v[..len]);
    }

    #[test]
    fn short_frames_and_wrong_layouts_do_not_panic() {
        let l = layout(&VLAN_TCP_ACK);
        for len in 0..VLAN_TCP_ACK.len() {
            let mut f = VLAN_TCP_ACK[..len].to_vec();
            set_ipv4_src(&mut f, &l, Ipv4Addr::new(1, 1, 1, 1));
            set_ipv4_dst(&mut f, &l, Ipv4Addr::new(1, 1, 1, 1));
            set_l4_src(&mut f, &l, 1);
            set_l4_dst(&mut f, &l, 1);
            set_ipv4_tos(&mut f, &l, 1);
            dec_ttl(&mut f, &l);
            set_vlan_tci(&mut f, &l, 1);
            set_eth_dst(&mut f, [1; 6]);
            set_eth_src(&mut f, [1; 6]);
            let mut l2 = l;
            let _ = pop_vlan(&mut f, len, &mut l2);
            let mut l2 = l;
            let _ = push_vlan(&mut f, len, &mut l2, 1);
        }
    }

    proptest! {
        #[test]
        fn random_rewrites_keep_checksums(
            which in 0usize..4,
            src in any::<u32>(),
            dst in any::<u32>(),
            sp in any::<u16>(),
            dp in any::<u16>(),
            tos in any::<u8>(),
        ) {
            let frame: &[u8] = [&TCP_SYN[..], &UDP_DNS, &VLAN_TCP_ACK, &UDP_FRAG_FIRST][which];
            let mut f = frame.to_vec();
            let l = layout(&f);
            set_ipv4_src(&mut f, &l, Ipv4Addr::from(src));
            set_ipv4_dst(&mut f, &l, Ipv4Addr::from(dst));
            set_l4_src(&mut f, &l, sp);
            set_l4_dst(&mut f, &l, dp);
            set_ipv4_tos(&mut f, &l, tos);
            dec_ttl(&mut f, &l);
            let k = key(&f);
            prop_assert_eq!(k.get(Field::NwSrc), src as u64);
            prop_assert_eq!(k.get(Field::NwDst), dst as u64);
            prop_assert_eq!(k.get(Field::TpSrc), sp as u64);
            prop_assert_eq!(k.get(Field::TpDst), dp as u64);
            let l3 = l.l3 as usize;
            prop_assert_eq!(internet_checksum(&f[l3..l3 + 20]), 0);
            if which != 3 {
                assert_checksums_ok(&f);
            } else {
                // This first fragment carries UDP checksum 0: it stays 0.
                let l4 = l.l4.unwrap() as usize;
                prop_assert_eq!(&f[l4 + 6..l4 + 8], &[0, 0]);
            }
        }
    }
}
