//! VXLAN encapsulation and decapsulation (RFC 7348) over IPv4/UDP.
//!
//! [`VxlanPacket`] and [`VxlanRepr`] are the wire view of the 8-byte VXLAN
//! header, in smoltcp's `wire` style. [`encap`] builds the outer Ethernet,
//! IPv4 and UDP headers with `smoltcp::wire` and copies the inner frame
//! behind them; [`decap`] recognises a VXLAN packet addressed to this
//! tunnel endpoint and says where its inner frame is, without copying.
//!
//! Outer headers follow Linux and OVS defaults: IPv4 with DF set, TTL 64,
//! TOS 0, ident 0; UDP source port derived from the inner flow hash in
//! 49152..=65535 so ECMP in the underlay spreads flows; UDP checksum 0
//! (allowed for IPv4, RFC 7348 §5). The VNI is the low 24 bits of `tun_id`.

use std::net::Ipv4Addr;

use smoltcp::phy::{Checksum, ChecksumCapabilities};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

use crate::drop::DropReason;
use crate::extract::{chunk, ETH_HLEN, VLAN_HLEN};
use crate::packet::internet_checksum;

/// IANA-assigned VXLAN UDP port.
pub const VXLAN_PORT: u16 = 4789;
/// Length of the VXLAN header.
pub const VXLAN_HLEN: usize = 8;
/// Bytes `encap` adds in front of the inner frame (Ethernet + IPv4 + UDP +
/// VXLAN).
pub const ENCAP_OVERHEAD: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN;
/// The "I" flag: the VNI field is valid.
pub const FLAG_I: u8 = 0x08;
/// Outer IPv4 TTL.
pub const OUTER_TTL: u8 = 64;

const IPV4_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// Source ports are chosen in `SRC_PORT_MIN..=65535`.
const SRC_PORT_MIN: u16 = 49152;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const RESERVED1: Range<usize> = 1..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED2: usize = 7;
    pub const PAYLOAD: usize = 8;
}

/// Errors reading a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VxlanError {
    /// Fewer than 8 bytes.
    #[error("VXLAN header truncated: {len} bytes, need 8")]
    Truncated {
        /// Bytes available.
        len: usize,
    },
    /// The I flag is clear, so there is no VNI.
    #[error("VXLAN flags {flags:#04x}: the I flag (0x08, valid VNI) is not set")]
    NoVni {
        /// The flags byte.
        flags: u8,
    },
}

/// A read/write view of a VXLAN header followed by the inner frame.
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps `buffer` without checking its length; accessors may panic if
    /// it is shorter than 8 bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Wraps `buffer` after checking it holds a full header; accessors do
    /// not panic afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, VxlanError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds a full header.
    pub fn check_len(&self) -> Result<(), VxlanError> {
        let len = self.buffer.as_ref().len();
        if len < field::PAYLOAD {
            Err(VxlanError::Truncated { len })
        } else {
            Ok(())
        }
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// True if the I flag (valid VNI) is set.
    #[inline]
    pub fn has_vni(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VXLAN network identifier.
    #[inline]
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI (low 24 bits of `vni`).
    #[inline]
    pub fn set_vni(&mut self, vni: u32) {
        let b = vni.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..]);
    }

    /// Zeroes both reserved fields.
    #[inline]
    pub fn clear_reserved(&mut self) {
        let d = self.buffer.as_mut();
        d[field::RESERVED1].fill(0);
        d[field::RESERVED2] = 0;
    }

    /// The inner Ethernet frame, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// High-level VXLAN header: just the VNI (flags are always "I").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// 24-bit VXLAN network identifier.
    pub vni: u32,
}

impl VxlanRepr {
    /// Parses a header; the I flag must be set. Reserved bits are ignored
    /// (RFC 7348 §5).
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<VxlanRepr, VxlanError> {
        packet.check_len()?;
        if !packet.has_vni() {
            return Err(VxlanError::NoVni {
                flags: packet.flags(),
            });
        }
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// Header length.
    pub const fn buffer_len(&self) -> usize {
        VXLAN_HLEN
    }

    /// Writes the header (I flag, reserved zero, VNI masked to 24 bits).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

/// This switch's end of VXLAN tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelEndpoint {
    /// Underlay IPv4 address (outer source).
    pub local_ip: Ipv4Addr,
    /// Underlay MAC address (outer Ethernet source).
    pub local_mac: [u8; 6],
    /// UDP destination port of tunnel packets ([`VXLAN_PORT`] by default).
    pub udp_port: u16,
}

impl TunnelEndpoint {
    /// An endpoint on the standard port 4789.
    pub fn new(local_ip: Ipv4Addr, local_mac: [u8; 6]) -> Self {
        TunnelEndpoint {
            local_ip,
            local_mac,
            udp_port: VXLAN_PORT,
        }
    }
}

/// Outer UDP source port for an inner flow hash: spread over
/// 49152..=65535 the way Linux's `udp_flow_src_port` scales a hash into a
/// range (after folding the low half into the high half, so hashes that
/// differ only in low bits still land far apart).
#[inline]
pub fn src_port(hash: u32) -> u16 {
    let h = hash ^ (hash << 16);
    let span = (u16::MAX - SRC_PORT_MIN) as u64 + 1;
    SRC_PORT_MIN + ((h as u64 * span) >> 32) as u16
}

/// Encapsulates the Ethernet frame `inner` for `remote_ip`, reached via
/// next-hop MAC `remote_mac`, into `out`, and returns the outer frame's
/// length (`inner.len() + ENCAP_OVERHEAD`).
///
/// `vni` is masked to 24 bits; `src_port_hash` is the inner flow's hash
/// (see [`src_port`]). Fails with [`DropReason::TooBig`] if `out` is too
/// small or the result would exceed the IPv4 length limit, and with
/// [`DropReason::Truncated`] if `inner` is shorter than an Ethernet header.
pub fn encap(
    inner: &[u8],
    out: &mut [u8],
    ep: &TunnelEndpoint,
    remote_ip: Ipv4Addr,
    remote_mac: [u8; 6],
    vni: u32,
    src_port_hash: u32,
) -> Result<usize, DropReason> {
    if inner.len() < ETH_HLEN {
        return Err(DropReason::Truncated);
    }
    let udp_payload_len = VXLAN_HLEN + inner.len();
    let ip_payload_len = UDP_HLEN + udp_payload_len;
    if IPV4_HLEN + ip_payload_len > u16::MAX as usize {
        return Err(DropReason::TooBig);
    }
    let total = ETH_HLEN + IPV4_HLEN + ip_payload_len;
    let out = out.get_mut(..total).ok_or(DropReason::TooBig)?;
    let (eth_hdr, rest) = out.split_at_mut(ETH_HLEN);
    let (ip_hdr, udp_dgram) = rest.split_at_mut(IPV4_HLEN);

    EthernetRepr {
        src_addr: EthernetAddress(ep.local_mac),
        dst_addr: EthernetAddress(remote_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(eth_hdr));

    let mut caps = ChecksumCapabilities::ignored();
    caps.ipv4 = Checksum::Both;
    // `emit` sets version/IHL/DF, zero DSCP/ECN/ident, and the checksum.
    Ipv4Repr {
        src_addr: ep.local_ip,
        dst_addr: remote_ip,
        next_header: IpProtocol::Udp,
        payload_len: ip_payload_len,
        hop_limit: OUTER_TTL,
    }
    .emit(&mut Ipv4Packet::new_unchecked(ip_hdr), &caps);

    // With `caps.udp` = None, smoltcp writes UDP checksum 0.
    UdpRepr {
        src_port: src_port(src_port_hash),
        dst_port: ep.udp_port,
    }
    .emit(
        &mut UdpPacket::new_unchecked(udp_dgram),
        &IpAddress::Ipv4(ep.local_ip),
        &IpAddress::Ipv4(remote_ip),
        udp_payload_len,
        |payload| {
            let (hdr, frame) = payload.split_at_mut(VXLAN_HLEN);
            VxlanRepr { vni }.emit(&mut VxlanPacket::new_unchecked(hdr));
            frame.copy_from_slice(inner);
        },
        &caps,
    );
    Ok(total)
}

/// A received VXLAN packet: where its inner frame is and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decap {
    /// 24-bit VNI (goes to `tun_id`).
    pub vni: u32,
    /// Outer IPv4 source (the remote VTEP; goes to `tun_src`).
    pub outer_src: Ipv4Addr,
    /// Outer IPv4 destination (our address; goes to `tun_dst`).
    pub outer_dst: Ipv4Addr,
    /// Outer Ethernet source (the underlay next hop, for learning).
    pub outer_src_mac: [u8; 6],
    /// Offset of the inner Ethernet frame in the received frame.
    pub inner_offset: usize,
    /// Length of the inner frame (ends where the UDP datagram ends).
    pub inner_len: usize,
}

/// Recognises a VXLAN packet for this endpoint: Ethernet (optionally one
/// 802.1Q tag) + IPv4 to `local_ip` with a valid header checksum, not
/// fragmented, + UDP to `udp_port` (checksum verified when non-zero) +
/// VXLAN with the I flag + an inner frame of at least an Ethernet header.
///
/// Returns `None` for anything else; the caller then handles the frame as
/// ordinary traffic (a malformed packet to our address goes to the host
/// stack, which drops it).
pub fn decap(frame: &[u8], local_ip: Ipv4Addr, udp_port: u16) -> Option<Decap> {
    let eth: &[u8; ETH_HLEN] = chunk(frame, 0)?;
    let mut l3 = ETH_HLEN;
    let mut et = u16::from_be_bytes([eth[12], eth[13]]);
    if et == flows::field::ethertype::VLAN {
        let tag: &[u8; VLAN_HLEN] = chunk(frame, ETH_HLEN)?;
        et = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += VLAN_HLEN;
    }
    if et != flows::field::ethertype::IPV4 {
        return None;
    }
    let ip: &[u8; IPV4_HLEN] = chunk(frame, l3)?;
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    // Cheapest rejections first: not ours, not UDP, fragmented.
    if ip[9] != flows::field::ipproto::UDP
        || dst != local_ip
        || ip[0] >> 4 != 4
        || ihl < IPV4_HLEN
        || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0
    {
        return None;
    }
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let l4 = l3 + ihl;
    let udp: &[u8; UDP_HLEN] = chunk(frame, l4)?;
    if u16::from_be_bytes([udp[2], udp[3]]) != udp_port {
        return None;
    }
    let ip_packet = frame.get(l3..l3 + tot)?;
    let ip_hdr = ip_packet.get(..ihl)?;
    if internet_checksum(ip_hdr) != 0 {
        return None;
    }
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    let dgram = ip_packet.get(ihl..ihl + udp_len)?;
    if udp_len < UDP_HLEN + VXLAN_HLEN + ETH_HLEN {
        return None;
    }
    if u16::from_be_bytes([udp[6], udp[7]]) != 0 && !udp_checksum_ok(ip, dgram) {
        return None;
    }
    let vx = VxlanPacket::new_checked(dgram.get(UDP_HLEN..)?).ok()?;
    let repr = VxlanRepr::parse(&vx).ok()?;
    Some(Decap {
        vni: repr.vni,
        outer_src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        outer_dst: dst,
        outer_src_mac: [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]],
        inner_offset: l4 + UDP_HLEN + VXLAN_HLEN,
        inner_len: udp_len - UDP_HLEN - VXLAN_HLEN,
    })
}

/// Verifies a UDP checksum over the IPv4 pseudo-header and `dgram`.
fn udp_checksum_ok(ip: &[u8; IPV4_HLEN], dgram: &[u8]) -> bool {
    use crate::packet::{checksum_add, checksum_fold};
    let mut sum = checksum_add(0, &ip[12..20]);
    sum += flows::field::ipproto::UDP as u32 + dgram.len() as u32;
    sum = checksum_add(sum, dgram);
    checksum_fold(sum) == 0xffff
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::extract::test_frames::*;
    use crate::extract::{extract, L4Kind};
    use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
    use flows::field::Field;
    use flows::key::FlowKey;
    use proptest::prelude::*;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
    const LOCAL_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const REMOTE_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    fn ep() -> TunnelEndpoint {
        TunnelEndpoint::new(LOCAL, LOCAL_MAC)
    }

    fn encap_vec(inner: &[u8], ep: &TunnelEndpoint, vni: u32, hash: u32) -> Vec<u8> {
        let mut out = vec![0u8; 2048];
        let n = encap(inner, &mut out, ep, REMOTE, REMOTE_MAC, vni, hash).unwrap();
        out.truncate(n);
        out
    }

    /// A VXLAN frame laid out as Linux's vxlan driver sends it (`ip link add
    /// vxlan0 type vxlan id 5001 remote 192.168.50.1 dstport 4789`; nonzero
    /// IP ident, UDP checksum 0): outer 192.168.50.2 ->
    /// 192.168.50.1, UDP 51234 -> 4789 with checksum 0, VNI 5001 (0x001389),
    /// inner ARP request (no padding inside the tunnel).
    const CAPTURED: [u8; 92] = [
        // outer Ethernet: dst 52:54:00:00:00:01, src 52:54:00:00:00:02, IPv4
        0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x52, 0x54, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00,
        // IPv4: len 78, id 0x8e2c, DF, TTL 64, UDP, checksum 0xc71e
        0x45, 0x00, 0x00, 0x4e, 0x8e, 0x2c, 0x40, 0x00, 0x40, 0x11, 0xc7, 0x1e, 0xc0, 0xa8, 0x32,
        0x02, 0xc0, 0xa8, 0x32, 0x01, // UDP: 51234 -> 4789, len 58, checksum 0
        0xc8, 0x22, 0x12, 0xb5, 0x00, 0x3a, 0x00, 0x00, // VXLAN: flags I, VNI 5001
        0x08, 0x00, 0x00, 0x00, 0x00, 0x13, 0x89, 0x00,
        // inner: ARP who-has 10.0.0.2 tell 10.0.0.1
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02,
    ];

    #[test]
    fn header_view() {
        let p = VxlanPacket::new_checked(&CAPTURED[42..]).unwrap();
        assert_eq!(p.flags(), FLAG_I);
        assert!(p.has_vni());
        assert_eq!(p.vni(), 5001);
        assert_eq!(p.payload(), &CAPTURED[50..]);
        assert_eq!(
            VxlanPacket::new_checked(&CAPTURED[42..49]).unwrap_err(),
            VxlanError::Truncated { len: 7 }
        );
        let mut b = [0xffu8; 10];
        let mut p = VxlanPacket::new_unchecked(&mut b[..]);
        VxlanRepr { vni: 0x1ab_cdef }.emit(&mut p);
        assert_eq!(VxlanRepr::parse(&p).unwrap(), VxlanRepr { vni: 0xab_cdef });
        assert_eq!(&b[..8], &[0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        b[0] = 0;
        let err = VxlanRepr::parse(&VxlanPacket::new_checked(&b[..]).unwrap()).unwrap_err();
        assert_eq!(err, VxlanError::NoVni { flags: 0 });
        assert!(err.to_string().contains("I flag"));
    }

    #[test]
    fn captured_frame_decaps() {
        assert_eq!(internet_checksum(&CAPTURED[14..34]), 0);
        let d = decap(&CAPTURED, LOCAL, VXLAN_PORT).unwrap();
        assert_eq!(
            d,
            Decap {
                vni: 5001,
                outer_src: REMOTE,
                outer_dst: LOCAL,
                outer_src_mac: REMOTE_MAC,
                inner_offset: 50,
                inner_len: 42,
            }
        );
        let inner = &CAPTURED[d.inner_offset..d.inner_offset + d.inner_len];
        assert_eq!(inner, &ARP_REQUEST[..42]);
        let mut k = FlowKey::default();
        extract(inner, 1, &mut k).unwrap();
        assert_eq!(k.get(Field::ArpTpa), 0x0a00_0002);
    }

    #[test]
    fn not_for_us() {
        assert_eq!(decap(&CAPTURED, REMOTE, VXLAN_PORT), None);
        assert_eq!(decap(&CAPTURED, LOCAL, 8472), None);
        for (name, f) in ALL {
            assert_eq!(
                decap(f, Ipv4Addr::new(10, 0, 0, 2), VXLAN_PORT),
                None,
                "{name}"
            );
        }
        // Corrupted IP header checksum.
        let mut f = CAPTURED;
        f[25] ^= 1;
        assert_eq!(decap(&f, LOCAL, VXLAN_PORT), None);
        // Fragment.
        let mut f = CAPTURED;
        f[20] = 0x20;
        f[24..26].fill(0);
        let c = internet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(internet_checksum(&f[14..34]), 0);
        assert_eq!(decap(&f, LOCAL, VXLAN_PORT), None);
        // I flag clear.
        let mut f = CAPTURED;
        f[42] = 0;
        assert_eq!(decap(&f, LOCAL, VXLAN_PORT), None);
        // Every truncation: None, never a panic.
        for len in 0..CAPTURED.len() {
            assert_eq!(
                decap(&CAPTURED[..len], LOCAL, VXLAN_PORT),
                None,
                "len {len}"
            );
        }
    }

    #[test]
    fn roundtrip_and_checksums() {
        for (name, inner) in ALL {
            let out = encap_vec(inner, &ep(), 0x12_3456, 0xdead_beef);
            assert_eq!(out.len(), inner.len() + ENCAP_OVERHEAD, "{name}");
            // Outer headers checked by an independent parser.
            let h = PacketHeaders::from_ethernet_slice(&out).unwrap();
            let eth = h.link.unwrap().ethernet2().unwrap();
            assert_eq!((eth.source, eth.destination), (LOCAL_MAC, REMOTE_MAC));
            let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
                panic!("{name}: not ipv4")
            };
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{name}");
            assert!(ip.dont_fragment && !ip.more_fragments);
            assert_eq!(ip.time_to_live, 64);
            assert_eq!(ip.source, LOCAL.octets());
            assert_eq!(ip.destination, REMOTE.octets());
            assert_eq!(ip.total_len as usize, out.len() - 14);
            let Some(TransportHeader::Udp(udp)) = &h.transport else {
                panic!("{name}: not udp")
            };
            assert_eq!(udp.destination_port, VXLAN_PORT);
            assert!(udp.source_port >= 49152);
            assert_eq!(udp.checksum, 0);
            assert_eq!(udp.length as usize, out.len() - 34);
            // Our own extract sees the outer flow.
            let mut k = FlowKey::default();
            let l = extract(&out, 1, &mut k).unwrap();
            assert_eq!(l.l4_kind, L4Kind::Udp);
            assert_eq!(k.get(Field::TpDst), VXLAN_PORT as u64);

            let d = decap(&out, REMOTE, VXLAN_PORT).unwrap();
            assert_eq!(d.vni, 0x12_3456);
            assert_eq!((d.outer_src, d.outer_dst), (LOCAL, REMOTE));
            assert_eq!(d.outer_src_mac, LOCAL_MAC);
            assert_eq!(&out[d.inner_offset..d.inner_offset + d.inner_len], inner);
        }
    }

    #[test]
    fn udp_checksum_verified_when_present() {
        let mut out = encap_vec(&TCP_SYN, &ep(), 7, 1);
        // Fill in a correct UDP checksum with smoltcp, as a sender that
        // checksums would.
        {
            let mut udp = UdpPacket::new_unchecked(&mut out[34..]);
            udp.fill_checksum(&IpAddress::Ipv4(LOCAL), &IpAddress::Ipv4(REMOTE));
        }
        assert_ne!(&out[40..42], &[0, 0]);
        assert!(decap(&out, REMOTE, VXLAN_PORT).is_some());
        let last = out.len() - 1;
        out[last] ^= 0x55;
        assert_eq!(decap(&out, REMOTE, VXLAN_PORT), None);
    }

    #[test]
    fn custom_port_vlan_underlay_and_padding() {
        let ep = TunnelEndpoint {
            udp_port: 8472,
            ..ep()
        };
        let out = encap_vec(&ICMP_ECHO, &ep, 42, 9);
        assert_eq!(decap(&out, REMOTE, VXLAN_PORT), None);
        assert_eq!(decap(&out, REMOTE, 8472).unwrap().vni, 42);
        // Underlay with a VLAN tag and trailing Ethernet padding.
        let mut tagged = out[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        tagged.extend_from_slice(&out[12..]);
        tagged.extend_from_slice(&[0; 6]);
        let d = decap(&tagged, REMOTE, 8472).unwrap();
        assert_eq!(d.inner_offset, ENCAP_OVERHEAD + 4);
        assert_eq!(d.inner_len, ICMP_ECHO.len());
    }

    #[test]
    fn encap_limits() {
        let mut small = [0u8; 100];
        assert_eq!(
            encap(&TCP_SYN, &mut small, &ep(), REMOTE, REMOTE_MAC, 1, 1),
            Err(DropReason::TooBig)
        );
        let mut out = [0u8; 200];
        assert_eq!(
            encap(&TCP_SYN[..13], &mut out, &ep(), REMOTE, REMOTE_MAC, 1, 1),
            Err(DropReason::Truncated)
        );
        let huge = vec![0u8; 65536 - 36];
        let mut big = vec![0u8; 70000];
        assert_eq!(
            encap(&huge, &mut big, &ep(), REMOTE, REMOTE_MAC, 1, 1),
            Err(DropReason::TooBig)
        );
        let fits = vec![0u8; 65535 - 36];
        assert_eq!(
            encap(&fits, &mut big, &ep(), REMOTE, REMOTE_MAC, 1, 1),
            Ok(65535 + 14)
        );
    }

    #[test]
    fn src_port_range() {
        assert_eq!(src_port(0), 49152);
        assert_eq!(src_port(0x0000_ffff), 65535); // folds to 0xffff_ffff
        let ports: std::collections::HashSet<u16> = (0..1000u32)
            .map(|i| src_port(i.wrapping_mul(0x9e37_79b9)))
            .collect();
        assert!(ports.len() > 900, "{}", ports.len());
        assert!(ports.iter().all(|&p| p >= 49152));
    }

    proptest! {
        #[test]
        fn decap_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            let _ = decap(&bytes, LOCAL, VXLAN_PORT);
        }

        #[test]
        fn mutated_captured_frames_never_panic(
            flips in proptest::collection::vec((0usize..92, any::<u8>()), 1..6),
            cut in 0usize..=92,
        ) {
            let mut f = CAPTURED;
            for (at, v) in flips {
                f[at] = v;
            }
            if let Some(d) = decap(&f[..cut], LOCAL, VXLAN_PORT) {
                prop_assert!(d.inner_offset + d.inner_len <= cut);
            }
        }

        #[test]
        fn roundtrip_any(
            inner in proptest::collection::vec(any::<u8>(), 14..1500),
            vni in 0u32..(1 << 24),
            hash in any::<u32>(),
            port in 1u16..,
        ) {
            let ep = TunnelEndpoint { udp_port: port, ..ep() };
            let out = encap_vec(&inner, &ep, vni, hash);
            let d = decap(&out, REMOTE, port).unwrap();
            prop_assert_eq!(d.vni, vni);
            prop_assert_eq!(&out[d.inner_offset..d.inner_offset + d.inner_len], &inner[..]);
            prop_assert_eq!(internet_checksum(&out[14..34]), 0);
        }
    }
}
