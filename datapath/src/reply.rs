//! Frames the switch itself answers with, for the ferrovs extension actions
//! `arp_reply:MAC` and `reject` ([`ReplyKind`]): an ARP reply to an ARP
//! request (proxy ARP), a TCP RST to a TCP segment, and an ICMP port
//! unreachable to any other IPv4 packet. Built with `smoltcp::wire` into a
//! caller's buffer (the ingress port's transmit staging), without
//! allocating.
//!
//! The reply goes back to the sender: Ethernet addresses swapped (for ARP
//! the source is the answered MAC), the 802.1Q tag of the packet kept, and
//! for `reject` the IP source (and TCP port) is the packet's destination,
//! so a refused connection to a Service address looks refused by that
//! address. ICMP errors quote the offending packet's IPv4 header and as
//! much of its payload as fits in 576 bytes. As RFC 1122 3.2.2 asks, nothing answers an ICMP error, a TCP
//! RST, a later fragment, or a packet to or from a broadcast or multicast
//! address.

use std::net::Ipv4Addr;

use flows::field::ethertype;
use flows::xlate::ReplyKind;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::extract::{L3Kind, L4Kind, Layout, ETH_HLEN, VLAN_HLEN};

/// TTL of the IPv4 replies.
pub const REPLY_TTL: u8 = 64;
/// Longest IPv4 packet of an ICMP error (RFC 1812 4.3.2.3): as much of
/// the offending packet is quoted as fits, as Linux does. That is always
/// more than the IPv4 header and 8 bytes RFC 792 asks for, and some
/// stacks (smoltcp) relate an error to a UDP socket only when they can
/// check the whole quoted datagram.
pub const ICMP_ERR_MAX: usize = 576;
/// Longest reply: Ethernet, 802.1Q tag and the largest ICMP error.
pub const MAX_REPLY: usize = ETH_HLEN + VLAN_HLEN + ICMP_ERR_MAX;
/// ICMP type of destination unreachable, and the port unreachable code.
const ICMP_DST_UNREACHABLE: u8 = 3;
const ICMP_PORT_UNREACHABLE: u8 = 3;
/// Length of the ICMP error header (type, code, checksum, unused).
const ICMP_ERR_HLEN: usize = 8;

/// Writes the reply of `kind` to `frame` (whose headers `layout`
/// describes) into `out` and returns its length, or `None` if the packet
/// must not be answered (see the module doc) or `out` is shorter than the
/// reply ([`MAX_REPLY`] always suffices).
pub fn build(kind: ReplyKind, frame: &[u8], layout: &Layout, out: &mut [u8]) -> Option<usize> {
    match kind {
        ReplyKind::Arp(mac) => arp_reply(frame, layout, mac, out),
        ReplyKind::Reject => reject(frame, layout, out),
    }
}

/// Ethernet addresses `(dst, src)` of `frame`.
fn macs(frame: &[u8]) -> Option<([u8; 6], [u8; 6])> {
    let h = frame.first_chunk::<12>()?;
    let (mut dst, mut src) = ([0; 6], [0; 6]);
    dst.copy_from_slice(&h[..6]);
    src.copy_from_slice(&h[6..]);
    Some((dst, src))
}

/// Writes the Ethernet header (with `frame`'s 802.1Q tag if `layout` has
/// one) into `out`; returns where the payload starts.
fn put_l2(
    out: &mut [u8],
    frame: &[u8],
    layout: &Layout,
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: u16,
) -> Option<usize> {
    let n = if layout.vlan {
        ETH_HLEN + VLAN_HLEN
    } else {
        ETH_HLEN
    };
    let h = out.get_mut(..n)?;
    h[..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    if layout.vlan {
        h[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        h[14..16].copy_from_slice(frame.get(14..16)?);
    }
    h[n - 2..n].copy_from_slice(&ethertype.to_be_bytes());
    Some(n)
}

/// True for an address that is not one host (RFC 1122 3.2.2).
fn not_unicast(a: Ipv4Addr) -> bool {
    a.is_unspecified() || a.is_multicast() || a.is_broadcast()
}

fn arp_reply(frame: &[u8], layout: &Layout, mac: [u8; 6], out: &mut [u8]) -> Option<usize> {
    if layout.l3_kind != L3Kind::Arp {
        return None;
    }
    let (_, requester) = macs(frame)?;
    let arp = ArpPacket::new_checked(frame.get(layout.l3 as usize..)?).ok()?;
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&arp).ok()?
    else {
        return None;
    };
    // Address probes (sender 0.0.0.0) and announcements (sender = target)
    // are not questions to answer for someone else (as Linux proxy ARP).
    if source_protocol_addr.is_unspecified() || source_protocol_addr == target_protocol_addr {
        return None;
    }
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let l3 = put_l2(out, frame, layout, requester, mac, ethertype::ARP)?;
    let end = l3 + reply.buffer_len();
    reply.emit(&mut ArpPacket::new_unchecked(out.get_mut(l3..end)?));
    Some(end)
}

fn reject(frame: &[u8], layout: &Layout, out: &mut [u8]) -> Option<usize> {
    if layout.l3_kind != L3Kind::Ipv4 {
        return None;
    }
    let l3 = layout.l3 as usize;
    let l4 = layout.l4? as usize; // None: a later fragment
    let ip_end = layout.ip_end()?;
    let ip = Ipv4Packet::new_checked(frame.get(l3..ip_end)?).ok()?;
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let (eth_dst, eth_src) = macs(frame)?;
    if not_unicast(src) || dst.is_multicast() || dst.is_broadcast() || eth_dst[0] & 1 != 0 {
        return None;
    }
    let seg = frame.get(l4..ip_end)?;
    let caps = ChecksumCapabilities::default();
    match layout.l4_kind {
        L4Kind::Tcp => {
            let tcp = TcpPacket::new_checked(seg).ok()?;
            if layout.fragment || tcp.rst() {
                return None;
            }
            let data = seg.len().checked_sub(tcp.header_len() as usize)?;
            let seq_len = data + usize::from(tcp.syn()) + usize::from(tcp.fin());
            let seq = if tcp.ack() {
                tcp.ack_number()
            } else {
                TcpSeqNumber(0)
            };
            let rst = TcpRepr {
                src_port: tcp.dst_port(),
                dst_port: tcp.src_port(),
                control: TcpControl::Rst,
                seq_number: seq,
                ack_number: Some(tcp.seq_number() + seq_len),
                window_len: 0,
                window_scale: None,
                max_seg_size: None,
                sack_permitted: false,
                sack_ranges: [None; 3],
                timestamp: None,
                payload: &[],
            };
            let ipr = Ipv4Repr {
                src_addr: dst,
                dst_addr: src,
                next_header: IpProtocol::Tcp,
                payload_len: rst.buffer_len(),
                hop_limit: REPLY_TTL,
            };
            let o3 = put_l2(out, frame, layout, eth_src, eth_dst, ethertype::IPV4)?;
            let o4 = o3 + ipr.buffer_len();
            let end = o4 + rst.buffer_len();
            let buf = out.get_mut(o3..end)?;
            ipr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps);
            let (src_ip, dst_ip) = (IpAddress::Ipv4(dst), IpAddress::Ipv4(src));
            rst.emit(
                &mut TcpPacket::new_unchecked(&mut buf[o4 - o3..]),
                &src_ip,
                &dst_ip,
                &caps,
            );
            Some(end)
        }
        _ => {
            if ip.next_header() == IpProtocol::Icmp {
                // Never an error about an error: only queries (echo,
                // timestamp, ...) are answered.
                let t = *seg.first()?;
                if matches!(t, 3 | 4 | 5 | 11 | 12) {
                    return None;
                }
            }
            let room = ICMP_ERR_MAX - 20 - ICMP_ERR_HLEN;
            let quote = frame.get(l3..ip_end.min(l3 + room))?;
            let ipr = Ipv4Repr {
                src_addr: dst,
                dst_addr: src,
                next_header: IpProtocol::Icmp,
                payload_len: ICMP_ERR_HLEN + quote.len(),
                hop_limit: REPLY_TTL,
            };
            let o3 = put_l2(out, frame, layout, eth_src, eth_dst, ethertype::IPV4)?;
            let o4 = o3 + ipr.buffer_len();
            let end = o4 + ipr.payload_len;
            let buf = out.get_mut(o3..end)?;
            ipr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps);
            // The quoted header goes verbatim (options, id, checksum as
            // sent), which `Icmpv4Repr` would rebuild: written by hand.
            let icmp = &mut buf[o4 - o3..];
            icmp[0] = ICMP_DST_UNREACHABLE;
            icmp[1] = ICMP_PORT_UNREACHABLE;
            icmp[2..ICMP_ERR_HLEN].fill(0);
            icmp[ICMP_ERR_HLEN..].copy_from_slice(quote);
            smoltcp::wire::Icmpv4Packet::new_unchecked(icmp).fill_checksum();
            Some(end)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::extract::extract;
    use flows::key::FlowKey;

    /// Internet checksum over `b` (0 when `b` holds a valid checksum).
    fn csum(b: &[u8]) -> u16 {
        let mut s = 0u32;
        for c in b.chunks(2) {
            s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    /// Checksum of a TCP/UDP segment with its IPv4 pseudo header.
    fn l4_csum(src: &[u8], dst: &[u8], proto: u8, seg: &[u8]) -> u16 {
        let mut b = Vec::new();
        b.extend_from_slice(src);
        b.extend_from_slice(dst);
        b.extend_from_slice(&[0, proto]);
        b.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        b.extend_from_slice(seg);
        csum(&b)
    }

    fn run(kind: ReplyKind, frame: &[u8]) -> Option<Vec<u8>> {
        let mut key = FlowKey::ZERO;
        let layout = extract(frame, 1, &mut key).unwrap();
        let mut out = [0xaau8; MAX_REPLY];
        let n = build(kind, frame, &layout, &mut out)?;
        Some(out[..n].to_vec())
    }

    const POD: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
    const GW: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 0x01];

    /// ARP request who-has 10.244.1.1 tell 10.244.1.5, optionally tagged.
    fn arp_request(vlan: Option<u16>, op: u8) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&POD);
        if let Some(v) = vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op]);
        f.extend_from_slice(&POD);
        f.extend_from_slice(&[10, 244, 1, 5]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 244, 1, 1]);
        f
    }

    #[test]
    fn arp_reply_bytes() {
        let r = run(ReplyKind::Arp(GW), &arp_request(None, 1)).unwrap();
        #[rustfmt::skip]
        let want = [
            0x02, 0, 0, 0, 0, 0x05, 0x02, 0xfe, 0, 0, 0, 0x01, 0x08, 0x06,
            0, 1, 0x08, 0, 6, 4, 0, 2,
            0x02, 0xfe, 0, 0, 0, 0x01, 10, 244, 1, 1,
            0x02, 0, 0, 0, 0, 0x05, 10, 244, 1, 5,
        ];
        assert_eq!(r, want);
        // Tagged request: tagged reply, same TCI.
        let r = run(ReplyKind::Arp(GW), &arp_request(Some(0x2064), 1)).unwrap();
        assert_eq!(&r[12..16], &[0x81, 0x00, 0x20, 0x64]);
        assert_eq!(&r[16..], &want[12..]);
    }

    #[test]
    fn arp_reply_only_to_requests() {
        assert_eq!(run(ReplyKind::Arp(GW), &arp_request(None, 2)), None);
        // Probe (sender 0.0.0.0) and announcement (sender = target).
        let mut probe = arp_request(None, 1);
        probe[28..32].fill(0);
        assert_eq!(run(ReplyKind::Arp(GW), &probe), None);
        let mut gratuitous = arp_request(None, 1);
        gratuitous[28..32].copy_from_slice(&[10, 244, 1, 1]);
        assert_eq!(run(ReplyKind::Arp(GW), &gratuitous), None);
        assert_eq!(
            run(ReplyKind::Arp(GW), &tcp_frame(0x02, 0, &[], None)),
            None
        );
        // Too small a buffer: nothing.
        let f = arp_request(None, 1);
        let mut key = FlowKey::ZERO;
        let layout = extract(&f, 1, &mut key).unwrap();
        assert_eq!(build(ReplyKind::Arp(GW), &f, &layout, &mut [0; 41]), None);
    }

    /// 10.244.1.5:40000 -> 10.96.0.10:80 TCP with `flags`, seq 0x01020304,
    /// ack `ack`, `data` as payload.
    fn tcp_frame(flags: u8, ack: u32, data: &[u8], vlan: Option<u16>) -> Vec<u8> {
        let mut f = GW.to_vec();
        f.extend_from_slice(&POD);
        if let Some(v) = vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        let tot = (40 + data.len()) as u16;
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, (tot >> 8) as u8, tot as u8, 0x12, 0x34]);
        f.extend_from_slice(&[0x40, 0, 64, 6, 0, 0, 10, 244, 1, 5, 10, 96, 0, 10]);
        f.extend_from_slice(&[0x9c, 0x40, 0, 80, 1, 2, 3, 4]);
        f.extend_from_slice(&ack.to_be_bytes());
        f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn reject_syn_with_rst_ack() {
        let r = run(ReplyKind::Reject, &tcp_frame(0x02, 0, &[], None)).unwrap();
        assert_eq!(r.len(), 14 + 20 + 20);
        assert_eq!(&r[..14], &[2, 0, 0, 0, 0, 5, 2, 0xfe, 0, 0, 0, 1, 8, 0]);
        // IPv4: 40 bytes, TCP, TTL 64, from the Service address to the pod.
        let ip = &r[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(&ip[2..4], &[0, 40]);
        assert_eq!((ip[8], ip[9]), (REPLY_TTL, 6));
        assert_eq!(&ip[12..20], &[10, 96, 0, 10, 10, 244, 1, 5]);
        assert_eq!(csum(ip), 0, "IPv4 checksum");
        let tcp = &r[34..];
        #[rustfmt::skip]
        let want = [
            0, 80, 0x9c, 0x40, // ports swapped
            0, 0, 0, 0, // seq 0: the SYN had no ACK
            1, 2, 3, 5, // ack = seq + 1 (SYN)
            0x50, 0x14, 0, 0, // RST+ACK, window 0
        ];
        assert_eq!(&tcp[..16], &want);
        assert_eq!(&tcp[18..20], &[0, 0], "urgent pointer");
        assert_eq!(l4_csum(&ip[12..16], &ip[16..20], 6, tcp), 0, "TCP checksum");
    }

    #[test]
    fn reject_data_segment_takes_its_ack() {
        // ACK|PSH|FIN with 5 bytes: seq = its ack, ack = seq + 5 + 1.
        let r = run(
            ReplyKind::Reject,
            &tcp_frame(0x19, 0xa0b0c0d0, b"hello", Some(7)),
        )
        .unwrap();
        assert_eq!(&r[12..18], &[0x81, 0x00, 0, 7, 0x08, 0x00]);
        let tcp = &r[38..];
        assert_eq!(&tcp[4..8], &[0xa0, 0xb0, 0xc0, 0xd0]);
        assert_eq!(&tcp[8..12], &[1, 2, 3, 10]);
        assert_eq!(tcp[13], 0x14);
        assert_eq!(l4_csum(&r[30..34], &r[34..38], 6, tcp), 0);
        // A RST is never answered.
        assert_eq!(run(ReplyKind::Reject, &tcp_frame(0x14, 1, &[], None)), None);
    }

    /// 10.244.1.5:5353 -> 10.96.0.10:53 UDP with 12 bytes of payload.
    fn udp_frame() -> Vec<u8> {
        let mut f = GW.to_vec();
        f.extend_from_slice(&POD);
        f.extend_from_slice(&[
            0x08, 0x00, 0x45, 0, 0, 40, 0xab, 0xcd, 0, 0, 64, 17, 0x11, 0x22,
        ]);
        f.extend_from_slice(&[10, 244, 1, 5, 10, 96, 0, 10]);
        f.extend_from_slice(&[0x14, 0xe9, 0, 53, 0, 20, 0x33, 0x44]);
        f.extend_from_slice(b"question....");
        f
    }

    #[test]
    fn reject_udp_with_port_unreachable() {
        let req = udp_frame();
        let r = run(ReplyKind::Reject, &req).unwrap();
        assert_eq!(r.len(), 14 + 20 + 8 + 40);
        assert_eq!(&r[..14], &[2, 0, 0, 0, 0, 5, 2, 0xfe, 0, 0, 0, 1, 8, 0]);
        let ip = &r[14..34];
        assert_eq!(&ip[2..4], &[0, 68]);
        assert_eq!((ip[8], ip[9]), (REPLY_TTL, 1));
        assert_eq!(&ip[12..20], &[10, 96, 0, 10, 10, 244, 1, 5]);
        assert_eq!(csum(ip), 0);
        let icmp = &r[34..];
        assert_eq!(&icmp[..2], &[3, 3], "destination unreachable, port");
        assert_eq!(&icmp[4..8], &[0, 0, 0, 0]);
        assert_eq!(&icmp[8..], &req[14..], "the whole datagram, verbatim");
        assert_eq!(csum(icmp), 0, "ICMP checksum");
        // A long datagram is cut so the error is 576 bytes; Ethernet
        // padding is never quoted.
        let mut long = req.clone();
        long.truncate(42);
        long[16..18].copy_from_slice(&1028u16.to_be_bytes());
        long[38..40].copy_from_slice(&1008u16.to_be_bytes());
        long.extend((0..1000).map(|i| i as u8));
        let r = run(ReplyKind::Reject, &long).unwrap();
        assert_eq!(r.len(), 14 + 576);
        assert_eq!(&r[16..18], &576u16.to_be_bytes());
        assert_eq!(&r[42..], &long[14..14 + 548]);
        assert_eq!(csum(&r[34..]), 0);
        let mut padded = req.clone();
        padded.extend_from_slice(&[0xee; 6]);
        let r = run(ReplyKind::Reject, &padded).unwrap();
        assert_eq!(&r[42..], &req[14..]);
    }

    #[test]
    fn reject_icmp_echo_but_never_an_error() {
        let mut f = udp_frame();
        f[23] = 1; // ICMP
        f[34..38].copy_from_slice(&[8, 0, 0, 0]); // echo request
        let r = run(ReplyKind::Reject, &f).unwrap();
        assert_eq!(&r[34..36], &[3, 3]);
        for t in [3u8, 4, 5, 11, 12] {
            f[34] = t;
            assert_eq!(run(ReplyKind::Reject, &f), None, "ICMP type {t}");
        }
    }

    #[test]
    fn reject_refuses_broadcast_multicast_fragments_and_non_ip() {
        let base = udp_frame();
        let refused = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut f = base.clone();
            edit(&mut f);
            assert_eq!(run(ReplyKind::Reject, &f), None);
        };
        refused(&|f| f[..6].fill(0xff));
        refused(&|f| f[30..34].copy_from_slice(&[255, 255, 255, 255]));
        refused(&|f| f[30..34].copy_from_slice(&[224, 0, 0, 251]));
        refused(&|f| f[26..30].fill(0));
        refused(&|f| f[20..22].copy_from_slice(&[0, 1])); // later fragment
        assert_eq!(run(ReplyKind::Reject, &arp_request(None, 1)), None);
        // Options are quoted with the header.
        let mut f = base.clone();
        f[14] = 0x46;
        f[17] = 44;
        f.splice(34..34, [1, 1, 1, 0]);
        let r = run(ReplyKind::Reject, &f).unwrap();
        assert_eq!(&r[42..], &f[14..]);
        assert_eq!(csum(&r[34..]), 0);
    }
}
