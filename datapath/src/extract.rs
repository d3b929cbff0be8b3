//! Flow-key extraction: one pass over a received frame that fills the
//! packet fields of a [`FlowKey`] and records where each header starts.
//!
//! This is the hottest code in the switch (every received packet goes
//! through it before the flow cache lookup), so it allocates nothing, checks
//! each header's length once when it reaches it and reads fixed-size arrays
//! afterwards, and writes the key's packed words directly instead of going
//! field by field through [`FlowKey::set`]. The word layout it relies on is
//! asserted at compile time against [`Field::layout`] below, and a test
//! compares its output with a key built by `FlowKey::set`.
//!
//! The common frame (Ethernet with at most one 802.1Q tag, IPv4 without
//! options or fragmentation, TCP or UDP) takes a fast path: one length
//! check, a few fixed-offset word loads that decide everything, and the key
//! words assembled from big-endian loads (about 65 instructions, against
//! about 130 for the general parse). Anything else, including every
//! malformed or short frame, falls through to the general parse, which is
//! `#[cold]` and out of line; tests check the two agree.
//!
//! What is parsed (like Open vSwitch's `miniflow_extract`, IPv4 only):
//! Ethernet II, one 802.1Q tag (TPID 0x8100), 802.2 LLC/SNAP (other 802.3
//! frames get `dl_type=0x05ff`), IPv4 with TCP/UDP/SCTP ports and ICMP
//! type/code (first fragments only), and Ethernet/IPv4 ARP and RARP.
//! Anything else is matched on L2 fields only.

use flows::field::{ethertype, ipproto, Field};
use flows::key::{FlowKey, VLAN_CFI};

pub use crate::drop::DropReason;

/// Length of an Ethernet II header.
pub const ETH_HLEN: usize = 14;
/// Length of an 802.1Q tag.
pub const VLAN_HLEN: usize = 4;
/// Length of an 802.2 LLC + SNAP header.
pub const LLC_SNAP_HLEN: usize = 8;
/// `dl_type` of an 802.3 frame without a SNAP ethertype (as OVS).
pub const DL_TYPE_NONE: u16 = 0x05ff;
/// Reverse ARP ethertype (parsed like ARP, as OVS does).
pub const ETH_TYPE_RARP: u16 = 0x8035;

/// What the L3 header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum L3Kind {
    /// Not parsed (IPv6, unknown ethertype, 802.3 without SNAP).
    #[default]
    Other,
    /// IPv4.
    Ipv4,
    /// ARP or RARP.
    Arp,
}

/// What the L4 header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum L4Kind {
    /// No L4 header: not IPv4, or a non-first fragment.
    #[default]
    None,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP.
    Icmp,
    /// Another IP protocol (header not parsed; `layout.l4` still points
    /// at it).
    Other,
}

/// Where the headers of an extracted frame are, for rewrites
/// ([`crate::packet`]) and connection tracking.
///
/// `repr(C)` with the fields in this order so that the fast path of
/// [`extract`], where all but `ip_total_len` and `tcp_flags` are constants,
/// writes it with a few wide stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Layout {
    /// What sits at `l3`.
    pub l3_kind: L3Kind,
    /// IPv4 header length in bytes (0 if not IPv4).
    pub ip_hdr_len: u8,
    /// Offset of the L4 header (IPv4 payload), `None` without one
    /// (non-IPv4, non-first fragment).
    pub l4: Option<u16>,
    /// Offset of the L3 header: after Ethernet, the VLAN tag and any
    /// LLC/SNAP header.
    pub l3: u16,
    /// IPv4 total length (0 if not IPv4); bytes past `l3 + ip_total_len`
    /// are Ethernet padding.
    pub ip_total_len: u16,
    /// The IPv4 packet is a fragment (first or later).
    pub fragment: bool,
    /// An 802.1Q tag is present at offset 12.
    pub vlan: bool,
    /// What sits at `l4`.
    pub l4_kind: L4Kind,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10,
    /// URG 0x20, ECE 0x40, CWR 0x80); 0 if not TCP.
    pub tcp_flags: u8,
}

impl Layout {
    /// End of the IPv4 packet (start of any Ethernet padding), or `None`
    /// if not IPv4.
    #[inline]
    pub fn ip_end(&self) -> Option<usize> {
        match self.l3_kind {
            L3Kind::Ipv4 => Some(self.l3 as usize + self.ip_total_len as usize),
            _ => None,
        }
    }
}

// Packed-word positions written directly by `extract`. The layout comes from
// `Field::layout` (flows::field); the const block below fails to compile if
// it ever changes, so these shortcuts cannot silently drift.
//
// word 0: dl_dst << 16 | dl_type
// word 1: dl_src << 16 | vlan_tci
// word 2: nw_src << 32 | nw_dst
// word 3: tp_src << 48 | tp_dst << 32 | nw_proto << 24 | nw_tos << 16 | ct_zone
// word 4: in_port << 48 | ct_state << 32 | recirc_id
const W_DL_DST: usize = 0;
const W_DL_SRC: usize = 1;
const W_NW: usize = 2;
const W_TP: usize = 3;
const W_IN_PORT: usize = 4;
/// Bits of word 3 that come from the packet (the low 16 are `ct_zone`).
const W_TP_PACKET_BITS: u64 = !0xffff;
/// Bits of word 4 that hold `in_port`.
const W_IN_PORT_BITS: u64 = 0xffff << 48;

const _: () = {
    const fn at(f: Field, word: usize, shift: u32, width: u32) -> bool {
        let (w, s, n) = f.layout();
        w == word && s == shift && n == width
    }
    assert!(at(Field::DlDst, W_DL_DST, 16, 48));
    assert!(at(Field::DlType, W_DL_DST, 0, 16));
    assert!(at(Field::DlSrc, W_DL_SRC, 16, 48));
    assert!(at(Field::VlanTci, W_DL_SRC, 0, 16));
    assert!(at(Field::NwSrc, W_NW, 32, 32));
    assert!(at(Field::NwDst, W_NW, 0, 32));
    assert!(at(Field::TpSrc, W_TP, 48, 16));
    assert!(at(Field::TpDst, W_TP, 32, 16));
    assert!(at(Field::NwProto, W_TP, 24, 8));
    assert!(at(Field::NwTos, W_TP, 16, 8));
    assert!(at(Field::CtZone, W_TP, 0, 16));
    assert!(at(Field::InPort, W_IN_PORT, 48, 16));
};

/// `N` bytes at `off`, or `None` if the slice is too short. After this one
/// check, indexing the returned array cannot fail.
#[inline(always)]
pub(crate) fn chunk<const N: usize>(b: &[u8], off: usize) -> Option<&[u8; N]> {
    b.get(off..)?.first_chunk::<N>()
}

#[inline(always)]
fn be16(a: u8, b: u8) -> u16 {
    u16::from_be_bytes([a, b])
}

/// Extracts the flow key of `frame`, received on `in_port`.
///
/// Writes every packet field of `key` (`dl_*`, `vlan_tci`, `nw_*`, `tp_*`;
/// fields absent from this frame become 0) and `in_port`; leaves the
/// metadata fields (`metadata`, `reg*`, `tun_*`, `ct_*`, `recirc_id`)
/// untouched so the caller can zero or fill them. On `Err` the packet
/// fields of `key` are unspecified.
///
/// Fields follow OVS: `vlan_tci` is the tag's TCI with the CFI bit (0x1000)
/// set meaning "tagged"; for ARP, `nw_proto` is the opcode if it fits 8 bits
/// (else 0) and `nw_src`/`nw_dst` are the sender/target IPs; for ICMP,
/// `tp_src`/`tp_dst` are type/code; later IPv4 fragments have no L4 fields.
///
/// Drops: [`DropReason::Truncated`] if a header is cut short,
/// [`DropReason::BadIpHeader`] (version ≠ 4, IHL < 5),
/// [`DropReason::BadIpLength`] (total length below the header or past the
/// frame), [`DropReason::BadL4Header`] (TCP data offset out of range).
#[inline(always)]
pub fn extract(frame: &[u8], in_port: u16, key: &mut FlowKey) -> Result<Layout, DropReason> {
    match try_fast(frame, in_port, key) {
        Some(layout) => Ok(layout),
        None => extract_slow(frame, in_port, key),
    }
}

/// [`extract_fast`] for a tagged or untagged frame, `None` if the frame is
/// not one it takes.
#[inline(always)]
fn try_fast(frame: &[u8], in_port: u16, key: &mut FlowKey) -> Option<Layout> {
    let h = frame.first_chunk::<FAST_MIN>()?;
    if h[12..14] == [0x81, 0x00] {
        extract_fast::<true>(h, frame.len(), in_port, key)
    } else {
        extract_fast::<false>(h, frame.len(), in_port, key)
    }
}

/// Shortest frame the fast path takes: Ethernet, an 802.1Q tag, a 20-byte
/// IPv4 header and a 20-byte TCP header (any frame padded to the 60-byte
/// Ethernet minimum qualifies).
const FAST_MIN: usize = ETH_HLEN + VLAN_HLEN + 20 + 20;

/// `b & 0xff00_ff3f` in [`extract_fast`] for an unfragmented TCP packet.
const TCP_NOT_FRAGMENT: u64 = (ipproto::TCP as u64) << 24;
/// The same for UDP.
const UDP_NOT_FRAGMENT: u64 = (ipproto::UDP as u64) << 24;

/// The common case, with fixed offsets and no bounds checks past the one
/// on `h` (the first [`FAST_MIN`] bytes of a frame of `len` bytes):
/// Ethernet II with (`VLAN`) or without one 802.1Q tag, IPv4 without
/// options and not a fragment, TCP or UDP whose header fits the IP
/// payload. Returns `None`, having written nothing, for anything else,
/// which [`extract_slow`] then handles; where it returns `Some`, key and
/// layout are exactly the slow path's.
#[inline(always)]
fn extract_fast<const VLAN: bool>(
    h: &[u8; FAST_MIN],
    len: usize,
    in_port: u16,
    key: &mut FlowKey,
) -> Option<Layout> {
    let tag = if VLAN { VLAN_HLEN } else { 0 };
    let l3 = ETH_HLEN + tag;
    // The frame from `tag` on reads like an untagged one: ethertype at 12,
    // IPv4 header at 14, L4 header at 34 (all within `h`).
    let p: &[u8; FAST_MIN - VLAN_HLEN] = h[tag..].first_chunk()?;
    let ip: &[u8; 20] = p[ETH_HLEN..].first_chunk()?;
    let l4: &[u8; 20] = p[ETH_HLEN + 20..].first_chunk()?;
    // Two little-endian loads (the values do not depend on the host's byte
    // order) cover the ethertype and IPv4 bytes 0..14. Byte i of each is
    // bits 8i..8i+8:
    // `a`: ethertype (0-1), version/IHL (2), TOS (3), total length (4-5), id;
    // `b`: flags/fragment offset (0-1), TTL (2), protocol (3), checksum, ...
    let a = u64::from_le_bytes(*p[12..].first_chunk()?);
    let b = u64::from_le_bytes(*p[20..].first_chunk()?);
    // dl_type 0x0800, version 4, IHL 5.
    if a & 0xff_ffff != 0x45_0008 {
        return None;
    }
    let tot = ((a >> 32) as u16).swap_bytes() as usize;
    let avail = len - l3;
    // Neither MF nor a fragment offset, and the protocol, in one compare.
    let frag_proto = b & 0xff00_ff3f;
    let layout = |l4_kind, tcp_flags| Layout {
        ip_total_len: tot as u16,
        l3: l3 as u16,
        l4: Some(l3 as u16 + 20),
        l3_kind: L3Kind::Ipv4,
        l4_kind,
        vlan: VLAN,
        ip_hdr_len: 20,
        fragment: false,
        tcp_flags,
    };
    let layout = match frag_proto {
        TCP_NOT_FRAGMENT => {
            let doff = (l4[12] >> 4) as usize * 4;
            if doff < 20 || tot < 20 + doff || tot > avail {
                return None;
            }
            layout(L4Kind::Tcp, l4[13])
        }
        UDP_NOT_FRAGMENT => {
            if tot < 20 + 8 || tot > avail {
                return None;
            }
            layout(L4Kind::Udp, 0)
        }
        _ => return None,
    };

    let tci = if VLAN {
        be16(h[14], h[15]) | VLAN_CFI
    } else {
        0
    };
    // Bytes 0..8 are dl_dst and the first two bytes of dl_src; 6..14 are
    // dl_src and the outer ethertype: replace the low 16 bits of each.
    let dst = u64::from_be_bytes(*h.first_chunk()?);
    let src = u64::from_be_bytes(*h[6..].first_chunk()?);
    key.w[W_DL_DST] = (dst & !0xffff) | ethertype::IPV4 as u64;
    key.w[W_DL_SRC] = (src & !0xffff) | tci as u64;
    // nw_src << 32 | nw_dst is exactly IPv4 bytes 12..20.
    key.w[W_NW] = u64::from_be_bytes(*ip[12..].first_chunk()?);
    let ports = u32::from_be_bytes(*l4.first_chunk()?);
    key.w[W_TP] = (key.w[W_TP] & !W_TP_PACKET_BITS)
        | (ports as u64) << 32
        | b & 0xff00_0000 // nw_proto: IPv4 byte 9 is byte 3 of `b`
        | (a >> 8) & 0xff_0000; // nw_tos: IPv4 byte 1 is byte 3 of `a`
    key.w[W_IN_PORT] = (key.w[W_IN_PORT] & !W_IN_PORT_BITS) | (in_port as u64) << 48;
    Some(layout)
}

/// Every frame, field by field, with all the checks (ARP, ICMP, SCTP, IP
/// options, fragments, LLC/SNAP, short and malformed frames).
#[cold]
#[inline(never)]
fn extract_slow(frame: &[u8], in_port: u16, key: &mut FlowKey) -> Result<Layout, DropReason> {
    let eth: &[u8; ETH_HLEN] = chunk(frame, 0).ok_or(DropReason::Truncated)?;
    let mut layout = Layout::default();
    let mut dl_type = be16(eth[12], eth[13]);
    let mut tci = 0u16;
    let mut l3 = ETH_HLEN;
    if dl_type == ethertype::VLAN {
        let tag: &[u8; VLAN_HLEN] = chunk(frame, ETH_HLEN).ok_or(DropReason::Truncated)?;
        tci = be16(tag[0], tag[1]) | VLAN_CFI;
        dl_type = be16(tag[2], tag[3]);
        l3 += VLAN_HLEN;
        layout.vlan = true;
    }
    if dl_type < 0x0600 {
        (dl_type, l3) = parse_llc(frame, l3);
    }
    layout.l3 = l3 as u16;

    let dl_dst = u64::from_be_bytes([0, 0, eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]]);
    let dl_src = u64::from_be_bytes([0, 0, eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]]);
    key.w[W_DL_DST] = dl_dst << 16 | dl_type as u64;
    key.w[W_DL_SRC] = dl_src << 16 | tci as u64;
    key.w[W_IN_PORT] = (key.w[W_IN_PORT] & !W_IN_PORT_BITS) | (in_port as u64) << 48;

    let (nw, tp) = match dl_type {
        ethertype::IPV4 => parse_ipv4(frame, l3, &mut layout)?,
        ethertype::ARP | ETH_TYPE_RARP => parse_arp(frame, l3, &mut layout)?,
        _ => (0, 0),
    };
    key.w[W_NW] = nw;
    key.w[W_TP] = (key.w[W_TP] & !W_TP_PACKET_BITS) | tp;
    Ok(layout)
}

/// 802.3 length field at `l3 - 2`: an LLC/SNAP header with an Ethernet OUI
/// carries the real ethertype; anything else is `DL_TYPE_NONE`.
#[inline(never)]
fn parse_llc(frame: &[u8], l3: usize) -> (u16, usize) {
    match chunk::<LLC_SNAP_HLEN>(frame, l3) {
        Some(s) if s[..6] == [0xaa, 0xaa, 0x03, 0, 0, 0] && be16(s[6], s[7]) >= 0x0600 => {
            (be16(s[6], s[7]), l3 + LLC_SNAP_HLEN)
        }
        _ => (DL_TYPE_NONE, l3),
    }
}

/// Parses IPv4 and L4; returns (word 2, packet bits of word 3).
#[inline(always)]
fn parse_ipv4(frame: &[u8], l3: usize, layout: &mut Layout) -> Result<(u64, u64), DropReason> {
    let ip: &[u8; 20] = chunk(frame, l3).ok_or(DropReason::Truncated)?;
    if ip[0] >> 4 != 4 {
        return Err(DropReason::BadIpHeader);
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ihl < 20 {
        return Err(DropReason::BadIpHeader);
    }
    // l3 + 20 <= frame.len() was checked by `chunk`.
    let avail = frame.len() - l3;
    if ihl > avail {
        return Err(DropReason::Truncated);
    }
    let tot = be16(ip[2], ip[3]) as usize;
    if tot < ihl || tot > avail {
        return Err(DropReason::BadIpLength);
    }
    let frag = be16(ip[6], ip[7]);
    let later_fragment = frag & 0x1fff != 0;
    layout.l3_kind = L3Kind::Ipv4;
    layout.ip_hdr_len = ihl as u8;
    layout.ip_total_len = tot as u16;
    layout.fragment = later_fragment || frag & 0x2000 != 0;

    let tos = ip[1];
    let proto = ip[9];
    // nw_src << 32 | nw_dst is exactly bytes 12..20 read big-endian.
    let nw = u64::from_be_bytes([
        ip[12], ip[13], ip[14], ip[15], ip[16], ip[17], ip[18], ip[19],
    ]);
    // tp_src << 16 | tp_dst
    let mut ports = 0u32;
    if !later_fragment {
        let l4 = l3 + ihl;
        layout.l4 = Some(l4 as u16);
        // The L4 header may not run into Ethernet padding.
        let seg = frame.get(l4..l3 + tot).ok_or(DropReason::Truncated)?;
        match proto {
            ipproto::TCP => {
                let t: &[u8; 20] = chunk(seg, 0).ok_or(DropReason::Truncated)?;
                let doff = (t[12] >> 4) as usize * 4;
                if doff < 20 || doff > seg.len() {
                    return Err(DropReason::BadL4Header);
                }
                ports = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
                layout.tcp_flags = t[13];
                layout.l4_kind = L4Kind::Tcp;
            }
            ipproto::UDP => {
                let u: &[u8; 8] = chunk(seg, 0).ok_or(DropReason::Truncated)?;
                ports = u32::from_be_bytes([u[0], u[1], u[2], u[3]]);
                layout.l4_kind = L4Kind::Udp;
            }
            ipproto::SCTP => {
                let s: &[u8; 12] = chunk(seg, 0).ok_or(DropReason::Truncated)?;
                ports = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
                layout.l4_kind = L4Kind::Sctp;
            }
            ipproto::ICMP => {
                let c: &[u8; 4] = chunk(seg, 0).ok_or(DropReason::Truncated)?;
                ports = (c[0] as u32) << 16 | c[1] as u32;
                layout.l4_kind = L4Kind::Icmp;
            }
            _ => layout.l4_kind = L4Kind::Other,
        }
    }
    let tp = (ports as u64) << 32 | (proto as u64) << 24 | (tos as u64) << 16;
    Ok((nw, tp))
}

/// Parses ARP/RARP; returns (word 2, packet bits of word 3). Non
/// Ethernet/IPv4 ARP keeps the L3 fields zero, as OVS does.
#[inline(never)]
fn parse_arp(frame: &[u8], l3: usize, layout: &mut Layout) -> Result<(u64, u64), DropReason> {
    let a: &[u8; 28] = chunk(frame, l3).ok_or(DropReason::Truncated)?;
    layout.l3_kind = L3Kind::Arp;
    let eth_ipv4 = be16(a[0], a[1]) == 1 && be16(a[2], a[3]) == ethertype::IPV4;
    if !eth_ipv4 || a[4] != 6 || a[5] != 4 {
        return Ok((0, 0));
    }
    let op = be16(a[6], a[7]);
    let spa = u32::from_be_bytes([a[14], a[15], a[16], a[17]]);
    let tpa = u32::from_be_bytes([a[24], a[25], a[26], a[27]]);
    let nw = (spa as u64) << 32 | tpa as u64;
    // OVS matches only the low 8 bits of the opcode and leaves it 0 when
    // the opcode does not fit.
    let proto = if op <= 0xff { op as u64 } else { 0 };
    Ok((nw, proto << 24))
}

/// Real frames (byte literals) shared by the tests of this crate.
#[cfg(test)]
pub(crate) mod test_frames {
    // Hand-built with correct checksums:
    // ARP_REQUEST: who-has 10.0.0.2 tell 10.0.0.1 (02:00:00:00:00:01), padded to 60.
    // ICMP_ECHO: 10.0.0.1 -> 10.0.0.2 echo request id 0x1234 seq 1, 40 data bytes.
    // TCP_SYN: 10.0.0.1:43210 -> 10.0.0.2:80 SYN with MSS/SACK/TS/WS options (Linux style).
    // UDP_DNS: 10.0.0.1:53000 -> 10.0.0.53:53, TOS 0xb8 (EF), A query for example.com.
    // VLAN_TCP_ACK: VID 100 PCP 5, 192.168.1.10:22 -> 192.168.1.20:51000 PSH|ACK "hello".
    // UDP_NOCSUM: 10.0.0.1:1000 -> 10.0.0.2:2000 "abc" with UDP checksum 0, padded to 60.
    // UDP_FRAG_FIRST: first fragment (MF, id 77) of a UDP datagram 5000 -> 6000.
    // UDP_FRAG_LATER: fragment at offset 24 bytes (id 77), padded to 60.
    /// ARP_REQUEST
    pub(crate) const ARP_REQUEST: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    /// ICMP_ECHO
    pub(crate) const ICMP_ECHO: [u8; 82] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x44, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x0a, 0x71, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x08, 0x00, 0x26, 0xf8, 0x12, 0x34, 0x00, 0x01, 0x10, 0x11, 0x12,
        0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21,
        0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30,
        0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37,
    ];
    /// TCP_SYN
    pub(crate) const TCP_SYN: [u8; 74] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x0a, 0x74, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0xa8, 0xca, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00,
        0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x57, 0x84, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02,
        0x08, 0x0a, 0x00, 0x12, 0x34, 0x56, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];
    /// UDP_DNS
    pub(crate) const UDP_DNS: [u8; 71] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0xb8, 0x00, 0x39, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x09, 0x81, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x35, 0xcf, 0x08, 0x00, 0x35, 0x00, 0x25, 0xa0, 0xf5, 0xab, 0xcd, 0x01,
        0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70,
        0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];
    /// VLAN_TCP_ACK
    pub(crate) const VLAN_TCP_ACK: [u8; 63] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x81, 0x00, 0xa0,
        0x64, 0x08, 0x00, 0x45, 0x00, 0x00, 0x2d, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x9b, 0x16,
        0xc0, 0xa8, 0x01, 0x0a, 0xc0, 0xa8, 0x01, 0x14, 0x00, 0x16, 0xc7, 0x38, 0x00, 0x00, 0x00,
        0x07, 0x00, 0x00, 0x00, 0x09, 0x50, 0x18, 0x01, 0xf5, 0x1f, 0x33, 0x00, 0x00, 0x68, 0x65,
        0x6c, 0x6c, 0x6f,
    ];
    /// UDP_NOCSUM
    pub(crate) const UDP_NOCSUM: [u8; 60] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x1f, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x0a, 0x86, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x03, 0xe8, 0x07, 0xd0, 0x00, 0x0b, 0x00, 0x00, 0x61, 0x62, 0x63,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    /// UDP_FRAG_FIRST
    pub(crate) const UDP_FRAG_FIRST: [u8; 58] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x2c, 0x00, 0x4d, 0x20, 0x00, 0x40, 0x11, 0x46, 0x72, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x13, 0x88, 0x17, 0x70, 0x00, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    /// UDP_FRAG_LATER
    pub(crate) const UDP_FRAG_LATER: [u8; 60] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x24, 0x00, 0x4d, 0x00, 0x03, 0x40, 0x11, 0x66, 0x77, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// Every frame above, by name.
    pub(crate) const ALL: [(&str, &[u8]); 8] = [
        ("arp_request", &ARP_REQUEST),
        ("icmp_echo", &ICMP_ECHO),
        ("tcp_syn", &TCP_SYN),
        ("udp_dns", &UDP_DNS),
        ("vlan_tcp_ack", &VLAN_TCP_ACK),
        ("udp_nocsum", &UDP_NOCSUM),
        ("udp_frag_first", &UDP_FRAG_FIRST),
        ("udp_frag_later", &UDP_FRAG_LATER),
    ];
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::test_frames::*;
    use super::*;
    use flows::key::KEY_WORDS;
    use proptest::prelude::*;

    /// Metadata words must come back exactly as they went in.
    const PATTERN: u64 = 0xa5a5_5a5a_0f0f_f0f0;

    const PACKET_FIELDS: [Field; 10] = [
        Field::DlDst,
        Field::DlSrc,
        Field::DlType,
        Field::VlanTci,
        Field::NwSrc,
        Field::NwDst,
        Field::NwProto,
        Field::NwTos,
        Field::TpSrc,
        Field::TpDst,
    ];

    fn prefilled() -> FlowKey {
        FlowKey {
            w: [PATTERN; KEY_WORDS],
        }
    }

    /// The key `extract` must produce, built field by field with
    /// `FlowKey::set` on top of the metadata pattern.
    fn expected(in_port: u16, fields: &[(Field, u64)]) -> FlowKey {
        let mut k = prefilled();
        for f in PACKET_FIELDS {
            k.set(f, 0);
        }
        k.set(Field::InPort, in_port as u64);
        for &(f, v) in fields {
            k.set(f, v);
        }
        k
    }

    fn run(frame: &[u8], in_port: u16) -> (FlowKey, Layout) {
        let mut k = prefilled();
        let l = extract(frame, in_port, &mut k).unwrap();
        (k, l)
    }

    const MAC_A: u64 = 0x0200_0000_0001;
    const MAC_B: u64 = 0x0200_0000_0002;

    #[test]
    fn arp_request() {
        let (k, l) = run(&ARP_REQUEST, 7);
        let want = expected(
            7,
            &[
                (Field::DlDst, 0xffff_ffff_ffff),
                (Field::DlSrc, MAC_A),
                (Field::DlType, 0x0806),
                (Field::ArpOp, 1),
                (Field::ArpSpa, 0x0a00_0001),
                (Field::ArpTpa, 0x0a00_0002),
            ],
        );
        assert_eq!(k, want);
        assert_eq!(k.get(Field::NwProto), 1);
        assert_eq!(
            l,
            Layout {
                l3: 14,
                l3_kind: L3Kind::Arp,
                ..Layout::default()
            }
        );
    }

    #[test]
    fn icmp_echo() {
        let (k, l) = run(&ICMP_ECHO, 1);
        let want = expected(
            1,
            &[
                (Field::DlDst, MAC_B),
                (Field::DlSrc, MAC_A),
                (Field::DlType, 0x0800),
                (Field::NwSrc, 0x0a00_0001),
                (Field::NwDst, 0x0a00_0002),
                (Field::NwProto, 1),
                (Field::IcmpType, 8),
                (Field::IcmpCode, 0),
            ],
        );
        assert_eq!(k, want);
        assert_eq!(l.l4, Some(34));
        assert_eq!(l.l4_kind, L4Kind::Icmp);
        assert_eq!(l.l3_kind, L3Kind::Ipv4);
        assert_eq!((l.ip_hdr_len, l.ip_total_len), (20, 68));
        assert_eq!(l.ip_end(), Some(82));
        assert!(!l.fragment && !l.vlan);
    }

    #[test]
    fn tcp_syn() {
        let (k, l) = run(&TCP_SYN, 3);
        let want = expected(
            3,
            &[
                (Field::DlDst, MAC_B),
                (Field::DlSrc, MAC_A),
                (Field::DlType, 0x0800),
                (Field::NwSrc, 0x0a00_0001),
                (Field::NwDst, 0x0a00_0002),
                (Field::NwProto, 6),
                (Field::TpSrc, 43210),
                (Field::TpDst, 80),
            ],
        );
        assert_eq!(k, want);
        assert_eq!(l.l4, Some(34));
        assert_eq!(l.l4_kind, L4Kind::Tcp);
        assert_eq!(l.tcp_flags, 0x02);
    }

    #[test]
    fn udp_with_tos() {
        let (k, l) = run(&UDP_DNS, 2);
        let want = expected(
            2,
            &[
                (Field::DlDst, MAC_B),
                (Field::DlSrc, MAC_A),
                (Field::DlType, 0x0800),
                (Field::NwSrc, 0x0a00_0001),
                (Field::NwDst, 0x0a00_0035),
                (Field::NwProto, 17),
                (Field::NwTos, 0xb8),
                (Field::TpSrc, 53000),
                (Field::TpDst, 53),
            ],
        );
        assert_eq!(k, want);
        assert_eq!(l.l4_kind, L4Kind::Udp);
        assert_eq!(l.tcp_flags, 0);
    }

    #[test]
    fn vlan_tagged_tcp() {
        let (k, l) = run(&VLAN_TCP_ACK, 4);
        let want = expected(
            4,
            &[
                (Field::DlDst, MAC_B),
                (Field::DlSrc, MAC_A),
                (Field::DlType, 0x0800),
                (Field::VlanTci, 0xa000 | 0x1000 | 100),
                (Field::NwSrc, 0xc0a8_010a),
                (Field::NwDst, 0xc0a8_0114),
                (Field::NwProto, 6),
                (Field::TpSrc, 22),
                (Field::TpDst, 51000),
            ],
        );
        assert_eq!(k, want);
        assert_eq!(k.get(Field::DlVlan), 100);
        assert_eq!(k.get(Field::DlVlanPcp), 5);
        assert!(l.vlan);
        assert_eq!((l.l3, l.l4), (18, Some(38)));
        assert_eq!(l.tcp_flags, 0x18);
    }

    #[test]
    fn fragments() {
        let (k, l) = run(&UDP_FRAG_FIRST, 1);
        assert_eq!((k.get(Field::TpSrc), k.get(Field::TpDst)), (5000, 6000));
        assert!(l.fragment);
        assert_eq!(l.l4_kind, L4Kind::Udp);

        let (k, l) = run(&UDP_FRAG_LATER, 1);
        let want = expected(
            1,
            &[
                (Field::DlDst, MAC_B),
                (Field::DlSrc, MAC_A),
                (Field::DlType, 0x0800),
                (Field::NwSrc, 0x0a00_0001),
                (Field::NwDst, 0x0a00_0002),
                (Field::NwProto, 17),
            ],
        );
        assert_eq!(k, want);
        assert!(l.fragment);
        assert_eq!((l.l4, l.l4_kind), (None, L4Kind::None));
    }

    #[test]
    fn key_reuse_clears_old_packet_fields() {
        let mut k = prefilled();
        extract(&VLAN_TCP_ACK, 9, &mut k).unwrap();
        extract(&ARP_REQUEST, 7, &mut k).unwrap();
        let (fresh, _) = run(&ARP_REQUEST, 7);
        assert_eq!(k, fresh);
        assert_eq!(k.get(Field::VlanTci), 0);
        assert_eq!(k.get(Field::TpSrc), 0);
    }

    #[test]
    fn metadata_words_untouched() {
        for (name, f) in ALL {
            let (k, _) = run(f, 0xfffe);
            for w in 5..KEY_WORDS {
                assert_eq!(k.w[w], PATTERN, "{name}: word {w}");
            }
            let meta = prefilled();
            for field in [Field::CtZone, Field::CtState, Field::RecircId] {
                assert_eq!(k.get(field), meta.get(field), "{name}: {}", field.name());
            }
            assert_eq!(k.get(Field::InPort), 0xfffe);
        }
    }

    #[test]
    fn arp_oddities_follow_ovs() {
        // Opcode above 0xff: nw_proto stays 0, addresses still extracted.
        let mut f = ARP_REQUEST;
        f[20] = 0x01;
        let (k, _) = run(&f, 1);
        assert_eq!(k.get(Field::ArpOp), 0);
        assert_eq!(k.get(Field::ArpSpa), 0x0a00_0001);
        // Not Ethernet/IPv4 ARP: no L3 fields.
        let mut f = ARP_REQUEST;
        f[18] = 8;
        let (k, l) = run(&f, 1);
        assert_eq!(k.get(Field::NwSrc), 0);
        assert_eq!(k.get(Field::NwProto), 0);
        assert_eq!(l.l3_kind, L3Kind::Arp);
        // RARP parses like ARP.
        let mut f = ARP_REQUEST;
        f[12..14].copy_from_slice(&[0x80, 0x35]);
        let (k, _) = run(&f, 1);
        assert_eq!(k.get(Field::DlType), 0x8035);
        assert_eq!(k.get(Field::ArpTpa), 0x0a00_0002);
    }

    #[test]
    fn llc_snap_and_802_3() {
        // 802.3 length + LLC/SNAP carrying IPv4 (the ICMP echo's IP packet).
        let mut f = ICMP_ECHO[..12].to_vec();
        f.extend_from_slice(&[0x00, 0x4c, 0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00]);
        f.extend_from_slice(&ICMP_ECHO[14..]);
        let (k, l) = run(&f, 1);
        assert_eq!(k.get(Field::DlType), 0x0800);
        assert_eq!(l.l3, 22);
        assert_eq!(k.get(Field::IcmpType), 8);
        // Plain 802.3/LLC (spanning tree): dl_type 0x05ff.
        let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0, 2, 0, 0, 0, 0, 1, 0x00, 0x26];
        f.extend_from_slice(&[0x42, 0x42, 0x03, 0, 0, 0, 0, 0]);
        f.resize(60, 0);
        let (k, l) = run(&f, 1);
        assert_eq!(k.get(Field::DlType), DL_TYPE_NONE as u64);
        assert_eq!((l.l3, l.l3_kind), (14, L3Kind::Other));
    }

    #[test]
    fn non_ip_ethertypes_keep_l2_only() {
        let mut f = TCP_SYN;
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        let (k, l) = run(&f, 1);
        assert_eq!(k.get(Field::DlType), 0x86dd);
        assert_eq!(k.w[2], 0);
        assert_eq!(k.get(Field::TpSrc), 0);
        assert_eq!(l.l3_kind, L3Kind::Other);
        // A second 802.1Q tag is not parsed: it is the dl_type.
        let mut f = VLAN_TCP_ACK.to_vec();
        f.splice(16..16, [0x81, 0x00, 0x00, 0x07]);
        let (k, l) = run(&f, 1);
        assert_eq!(k.get(Field::DlType), 0x8100);
        assert_eq!(k.get(Field::DlVlan), 100);
        assert_eq!(l.l3, 18);
    }

    fn err(frame: &[u8]) -> DropReason {
        let mut k = FlowKey::ZERO;
        extract(frame, 1, &mut k).unwrap_err()
    }

    #[test]
    fn malformed_ipv4() {
        let mut f = TCP_SYN;
        f[14] = 0x65; // version 6
        assert_eq!(err(&f), DropReason::BadIpHeader);
        f[14] = 0x44; // IHL 4
        assert_eq!(err(&f), DropReason::BadIpHeader);
        f[14] = 0x4f; // IHL 15 = 60 bytes: the whole packet, no room for TCP
        assert_eq!(err(&f), DropReason::Truncated);
        f[17] = 59; // total length 59, below the 60-byte header
        assert_eq!(err(&f), DropReason::BadIpLength);
        let mut f = TCP_SYN;
        f[16..18].copy_from_slice(&100u16.to_be_bytes()); // longer than the frame
        assert_eq!(err(&f), DropReason::BadIpLength);
        f[16..18].copy_from_slice(&19u16.to_be_bytes()); // shorter than the header
        assert_eq!(err(&f), DropReason::BadIpLength);
        let mut f = TCP_SYN;
        f[46] = 0x40; // TCP data offset 4 words
        assert_eq!(err(&f), DropReason::BadL4Header);
        f[46] = 0xf0; // 60 bytes, beyond the 40-byte segment
        assert_eq!(err(&f), DropReason::BadL4Header);
        // IP total length that leaves no room for the UDP header.
        let mut f = UDP_NOCSUM;
        f[16..18].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(err(&f), DropReason::Truncated);
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let (k, l) = run(&UDP_NOCSUM, 1);
        assert_eq!(l.ip_end(), Some(14 + 31));
        assert_eq!((k.get(Field::TpSrc), k.get(Field::TpDst)), (1000, 2000));
    }

    #[test]
    fn every_truncation_is_handled() {
        for (name, f) in ALL {
            let (full, full_layout) = run(f, 5);
            let need = full_layout.ip_end().unwrap_or(0);
            for len in 0..f.len() {
                let mut k = prefilled();
                let r = extract(&f[..len], 5, &mut k);
                if len < ETH_HLEN {
                    assert_eq!(r, Err(DropReason::Truncated), "{name} len {len}");
                } else if len >= need.max(full_layout.l3 as usize + 28) {
                    // Only padding was cut: same result.
                    assert_eq!(r, Ok(full_layout), "{name} len {len}");
                    assert_eq!(k, full, "{name} len {len}");
                } else {
                    assert!(r.is_err(), "{name} len {len}: {r:?}");
                }
            }
        }
    }

    /// Builds a frame with etherparse (an independent encoder).
    #[allow(clippy::too_many_arguments)]
    fn build(
        vlan: Option<(u8, u16)>,
        src: [u8; 4],
        dst: [u8; 4],
        tos: u8,
        tcp: bool,
        sp: u16,
        dp: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        use etherparse::{EtherType, PacketBuilder, SingleVlanHeader, VlanHeader, VlanId, VlanPcp};
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let ip = match vlan {
            Some((pcp, vid)) => eth
                .vlan(VlanHeader::Single(SingleVlanHeader {
                    pcp: VlanPcp::try_new(pcp).unwrap(),
                    drop_eligible_indicator: false,
                    vlan_id: VlanId::try_new(vid).unwrap(),
                    ether_type: EtherType(0),
                }))
                .ipv4(src, dst, 64),
            None => eth.ipv4(src, dst, 64),
        };
        let mut out = Vec::new();
        if tcp {
            ip.tcp(sp, dp, 1, 1000)
                .syn()
                .write(&mut out, payload)
                .unwrap();
        } else {
            ip.udp(sp, dp).write(&mut out, payload).unwrap();
        }
        let l3 = if vlan.is_some() { 18 } else { 14 };
        out[l3 + 1] = tos;
        out
    }

    /// Checks the fast path against the slow one on `frame`: where it
    /// answers, key and layout are the slow path's; where it declines, it
    /// wrote nothing. Returns whether it answered.
    fn fast_agrees(frame: &[u8]) -> bool {
        let mut fast_key = prefilled();
        let fast = try_fast(frame, 9, &mut fast_key);
        let mut slow_key = prefilled();
        let slow = extract_slow(frame, 9, &mut slow_key);
        match fast {
            Some(l) => {
                assert_eq!(slow, Ok(l), "{frame:02x?}");
                assert_eq!(fast_key, slow_key, "{frame:02x?}");
                true
            }
            None => {
                assert_eq!(fast_key, prefilled(), "{frame:02x?}");
                false
            }
        }
    }

    #[test]
    fn fast_path_takes_the_common_frames() {
        for f in [&TCP_SYN[..], &UDP_DNS, &VLAN_TCP_ACK, &UDP_NOCSUM] {
            assert!(fast_agrees(f), "{f:02x?}");
        }
        for f in [
            &ARP_REQUEST[..],
            &ICMP_ECHO,
            &UDP_FRAG_FIRST,
            &UDP_FRAG_LATER,
        ] {
            assert!(!fast_agrees(f), "{f:02x?}");
        }
        // A first fragment (MF) padded past the fast path's minimum length
        // still goes the slow way, and so do IP options.
        let mut f = UDP_FRAG_FIRST.to_vec();
        f.resize(64, 0);
        assert!(!fast_agrees(&f));
        let mut f = UDP_NOCSUM;
        f[14] = 0x46;
        assert!(!fast_agrees(&f));
        // Shortest frames it takes: TCP without payload, tagged.
        let f = &VLAN_TCP_ACK[..58];
        let mut g = f.to_vec();
        g[20..22].copy_from_slice(&40u16.to_be_bytes());
        assert!(fast_agrees(&g));
    }

    #[test]
    fn fast_path_agrees_on_every_truncation_and_field_edge() {
        for (_, f) in ALL {
            let mut f = f.to_vec();
            f.resize(f.len().max(64), 0);
            for len in 0..=f.len() {
                fast_agrees(&f[..len]);
            }
            // Every value of the bytes the fast path decides on.
            let vlan = f[12..14] == [0x81, 0x00];
            let l3 = if vlan { 18 } else { 14 };
            let l4 = l3 + 20;
            for at in [12, 13, l3 - 2, l3 - 1, l3, l3 + 2, l3 + 3, l3 + 6, l3 + 7]
                .into_iter()
                .chain([l3 + 9, l4 + 12])
            {
                for v in 0..=255u8 {
                    let mut g = f.clone();
                    g[at] = v;
                    fast_agrees(&g);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn matches_etherparse(
            vlan in proptest::option::of((0u8..8, 0u16..4096)),
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            tos in any::<u8>(),
            tcp in any::<bool>(),
            sp in any::<u16>(),
            dp in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            in_port in any::<u16>(),
        ) {
            use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
            let f = build(vlan, src, dst, tos, tcp, sp, dp, &payload);
            let (k, l) = run(&f, in_port);
            let h = PacketHeaders::from_ethernet_slice(&f).unwrap();
            let Some(NetHeaders::Ipv4(ip, _)) = h.net else { panic!("not ipv4") };
            let (tp_src, tp_dst, proto, flags) = match h.transport {
                Some(TransportHeader::Tcp(t)) => (t.source_port, t.destination_port, 6, 0x02),
                Some(TransportHeader::Udp(u)) => (u.source_port, u.destination_port, 17, 0),
                other => panic!("transport {other:?}"),
            };
            let tci = vlan.map_or(0, |(pcp, vid)| (pcp as u64) << 13 | 0x1000 | vid as u64);
            let want = expected(in_port, &[
                (Field::DlDst, 0x0200_0000_0002),
                (Field::DlSrc, 0x0200_0000_0001),
                (Field::DlType, 0x0800),
                (Field::VlanTci, tci),
                (Field::NwSrc, u32::from_be_bytes(ip.source) as u64),
                (Field::NwDst, u32::from_be_bytes(ip.destination) as u64),
                (Field::NwProto, proto),
                (Field::NwTos, tos as u64),
                (Field::TpSrc, tp_src as u64),
                (Field::TpDst, tp_dst as u64),
            ]);
            prop_assert_eq!(k, want);
            prop_assert_eq!(l.tcp_flags, flags);
            prop_assert_eq!(l.vlan, vlan.is_some());
            prop_assert_eq!(l.ip_end(), Some(f.len()));
        }

        #[test]
        fn fast_path_agrees_with_slow_path(
            which in 0usize..ALL.len(),
            flips in proptest::collection::vec((0usize..64, any::<u8>()), 0..4),
            extra in 0usize..8,
            cut in any::<usize>(),
        ) {
            let mut f = ALL[which].1.to_vec();
            f.resize(f.len().max(58) + extra, 0);
            for (at, v) in flips {
                let i = at % f.len();
                f[i] = v;
            }
            let len = cut % (f.len() + 1);
            fast_agrees(&f[..len]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut k = prefilled();
            let _ = extract(&bytes, 1, &mut k);
            for w in 5..KEY_WORDS {
                prop_assert_eq!(k.w[w], PATTERN);
            }
        }

        #[test]
        fn mutated_frames_never_panic(
            which in 0usize..ALL.len(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut f = ALL[which].1.to_vec();
            for (at, v) in flips {
                let i = at % f.len();
                f[i] = v;
            }
            let len = cut % (f.len() + 1);
            let _ = extract(&f[..len], 1, &mut prefilled());
        }
    }
}
