//! Tunnel endpoint duties on underlay ports: the neighbour table (remote
//! tunnel IP -> MAC), answering ARP for the local tunnel address, and
//! asking for unknown remotes. Frames are built with `smoltcp::wire`.
//!
//! The neighbour table is published like the pipeline (copy, edit, swap):
//! it changes rarely, and encapsulation reads it on every packet.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr,
};

use crate::shared::{Shared, VxlanConfig};

/// Records `mac` as the MAC of tunnel endpoint `ip` (no-op if known).
pub fn learn_neighbour(shared: &Shared, ip: Ipv4Addr, mac: [u8; 6]) {
    let cur = shared.neigh.load();
    if cur.get(&ip) == Some(&mac) {
        return;
    }
    let mut next: HashMap<Ipv4Addr, [u8; 6]> = (**cur).clone();
    next.insert(ip, mac);
    shared.neigh.store(Arc::new(next));
}

/// Looks at an ARP frame on an underlay port: learns the sender, and if it
/// is a request for `local_ip`, rewrites `frame` in place into the reply
/// and returns true (the caller sends it back out of the same port).
pub fn handle_arp(
    shared: &Shared,
    frame: &mut [u8],
    local_ip: Ipv4Addr,
    local_mac: [u8; 6],
) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
        return false;
    };
    if eth.ethertype() != EthernetProtocol::Arp {
        return false;
    }
    let Ok(arp) = ArpPacket::new_checked(eth.payload()) else {
        return false;
    };
    let Ok(ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    }) = ArpRepr::parse(&arp)
    else {
        return false;
    };
    let sip: Ipv4Addr = source_protocol_addr;
    if !sip.is_unspecified() {
        learn_neighbour(shared, sip, source_hardware_addr.0);
    }
    let tip: Ipv4Addr = target_protocol_addr;
    if operation != ArpOperation::Request || tip != local_ip {
        return false;
    }
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(local_mac),
        source_protocol_addr: local_ip,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: sip,
    };
    build_arp(frame, source_hardware_addr.0, local_mac, &reply) > 0
}

/// Writes an Ethernet+ARP frame into `out`; returns its length (0 if `out`
/// is too small).
fn build_arp(out: &mut [u8], dst: [u8; 6], src: [u8; 6], arp: &ArpRepr) -> usize {
    let eth = EthernetRepr {
        src_addr: EthernetAddress(src),
        dst_addr: EthernetAddress(dst),
        ethertype: EthernetProtocol::Arp,
    };
    let len = eth.buffer_len() + arp.buffer_len();
    if out.len() < len {
        return 0;
    }
    let mut f = EthernetFrame::new_unchecked(&mut out[..len]);
    eth.emit(&mut f);
    let mut p = ArpPacket::new_unchecked(f.payload_mut());
    arp.emit(&mut p);
    len
}

/// Writes a broadcast ARP request for `remote` from the tunnel endpoint
/// `cfg` into `out`; returns its length (0 if `out` is too small).
pub fn build_arp_request(out: &mut [u8], cfg: &VxlanConfig, remote: Ipv4Addr) -> usize {
    let req = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(cfg.local_mac),
        source_protocol_addr: cfg.local_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: remote,
    };
    build_arp(out, [0xff; 6], cfg.local_mac, &req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_request_for_us_becomes_reply() {
        let mut buf = [0u8; 64];
        let req = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            source_protocol_addr: Ipv4Addr::new(192, 168, 50, 2),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Addr::new(192, 168, 50, 1),
        };
        let n = build_arp(&mut buf, [0xff; 6], [2, 0, 0, 0, 0, 2], &req);
        assert_eq!(n, 42);
        // Byte-level check of what smoltcp emitted: ethertype, opcode.
        assert_eq!(&buf[12..14], &[0x08, 0x06]);
        assert_eq!(&buf[20..22], &[0x00, 0x01]);
        let shared = Shared::new(1, Default::default());
        let mine = [2, 0, 0, 0, 0, 1];
        assert!(handle_arp(
            &shared,
            &mut buf[..n],
            Ipv4Addr::new(192, 168, 50, 1),
            mine
        ));
        assert_eq!(&buf[0..6], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(&buf[6..12], &mine);
        assert_eq!(&buf[20..22], &[0x00, 0x02]);
        assert_eq!(
            shared.neigh.load().get(&Ipv4Addr::new(192, 168, 50, 2)),
            Some(&[2, 0, 0, 0, 0, 2])
        );
        // Not for us: learned but not answered.
        let n = build_arp(&mut buf, [0xff; 6], [2, 0, 0, 0, 0, 3], &req);
        assert!(!handle_arp(
            &shared,
            &mut buf[..n],
            Ipv4Addr::new(192, 168, 50, 9),
            mine
        ));
    }
}
