//! Fuzz target: arbitrary bytes through flow-key extraction, the header
//! rewrites that follow it, and VXLAN decapsulation. Nothing may panic, and
//! what the parsers report must stay inside the frame.
//!
//! Run: `cargo +nightly fuzz run extract fuzz/corpus/extract` (seeds are
//! real frames from the datapath unit tests). Plain `cargo build
//! --manifest-path fuzz/Cargo.toml` builds it on stable for CI.
#![no_main]

use std::net::Ipv4Addr;

use datapath::extract::extract;
use datapath::packet;
use datapath::vxlan::{decap, VXLAN_PORT};
use flows::key::FlowKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut key = FlowKey::default();
    if let Ok(mut layout) = extract(data, 1, &mut key) {
        assert!((layout.l3 as usize) <= data.len());
        if let Some(l4) = layout.l4 {
            assert!((l4 as usize) <= data.len());
        }
        if let Some(end) = layout.ip_end() {
            assert!(end <= data.len());
        }
        // Rewrites on a copy with headroom for a VLAN push.
        let len = data.len();
        let mut buf = data.to_vec();
        buf.resize(len + 4, 0);
        let frame = &mut buf[..len];
        packet::set_ipv4_src(frame, &layout, Ipv4Addr::new(10, 9, 8, 7));
        packet::set_ipv4_dst(frame, &layout, Ipv4Addr::new(10, 9, 8, 6));
        packet::set_l4_src(frame, &layout, 1234);
        packet::set_l4_dst(frame, &layout, 4321);
        packet::set_ipv4_tos(frame, &layout, 0xb8);
        packet::dec_ttl(frame, &layout);
        packet::set_eth_src(frame, [2, 0, 0, 0, 0, 1]);
        packet::set_vlan_tci(frame, &layout, 0x1064);
        let mut rekey = FlowKey::default();
        let was_tagged = layout.vlan;
        if let Some(n) = packet::push_vlan(&mut buf, len, &mut layout, 0x1005) {
            // The updated layout must describe the re-parsed frame (extract
            // parses one tag only, so not after pushing a second one).
            if !was_tagged {
                if let Ok(re) = extract(&buf[..n], 1, &mut rekey) {
                    assert_eq!(re.l4, layout.l4);
                    assert_eq!(re.l3, layout.l3);
                }
            }
            let back = packet::pop_vlan(&mut buf, n, &mut layout);
            assert_eq!(back, Some(len));
        }
    }
    for port in [VXLAN_PORT, 8472] {
        if let Some(d) = decap(data, Ipv4Addr::new(192, 168, 50, 1), port) {
            assert!(d.inner_offset + d.inner_len <= data.len());
            let _ = extract(&data[d.inner_offset..d.inner_offset + d.inner_len], 2, &mut key);
        }
    }
});
