//! Per-packet micro-benchmarks: flow-key extraction, a NAT-style header
//! rewrite, and VXLAN encap/decap. Frames are the fuzz seed corpus (the same
//! byte literals the datapath unit tests use).
//!
//! `cargo bench -p bench --bench packet`

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use datapath::extract::extract;
use datapath::packet;
use datapath::vxlan::{decap, encap, TunnelEndpoint, VXLAN_PORT};
use flows::key::FlowKey;

const ARP: &[u8] = include_bytes!("../../fuzz/corpus/extract/arp_request.bin");
const TCP_SYN: &[u8] = include_bytes!("../../fuzz/corpus/extract/tcp_syn.bin");
const VLAN_TCP: &[u8] = include_bytes!("../../fuzz/corpus/extract/vlan_tcp_ack.bin");
const UDP: &[u8] = include_bytes!("../../fuzz/corpus/extract/udp_dns.bin");

fn bench_extract(c: &mut Criterion) {
    let mut g = c.benchmark_group("extract");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in [
        ("arp", ARP),
        ("tcp_syn", TCP_SYN),
        ("vlan_tcp", VLAN_TCP),
        ("udp", UDP),
    ] {
        let mut key = FlowKey::default();
        g.bench_function(name, |b| {
            b.iter(|| extract(black_box(frame), black_box(3), &mut key))
        });
    }
    g.finish();
}

fn bench_rewrite(c: &mut Criterion) {
    let mut key = FlowKey::default();
    let layout = extract(TCP_SYN, 1, &mut key).expect("seed frame parses");
    let mut frame = TCP_SYN.to_vec();
    c.bench_function("rewrite/dnat_tcp_dec_ttl", |b| {
        b.iter(|| {
            let f = black_box(&mut frame[..]);
            packet::set_ipv4_dst(f, &layout, Ipv4Addr::new(10, 96, 0, 10));
            packet::set_l4_dst(f, &layout, 8080);
            packet::set_eth_dst(f, [2, 0, 0, 0, 0, 9]);
            f[22] = 64; // keep the TTL from running out
            packet::dec_ttl(f, &layout)
        })
    });
}

fn bench_vxlan(c: &mut Criterion) {
    let ep = TunnelEndpoint::new(Ipv4Addr::new(192, 168, 50, 1), [0x52, 0x54, 0, 0, 0, 1]);
    let remote = Ipv4Addr::new(192, 168, 50, 2);
    let remote_mac = [0x52, 0x54, 0, 0, 0, 2];
    let mut out = vec![0u8; 2048];
    let mut g = c.benchmark_group("vxlan");
    g.throughput(Throughput::Elements(1));
    let mut big = TCP_SYN.to_vec();
    big.resize(1500, 0xab);
    for (name, inner) in [("74B", TCP_SYN), ("1500B", &big[..])] {
        g.bench_function(format!("encap_{name}"), |b| {
            b.iter(|| {
                encap(
                    black_box(inner),
                    &mut out,
                    &ep,
                    remote,
                    remote_mac,
                    5001,
                    black_box(0x1234_5678),
                )
            })
        });
        let n = encap(inner, &mut out, &ep, remote, remote_mac, 5001, 7).expect("fits");
        let frame = out[..n].to_vec();
        g.bench_function(format!("decap_{name}"), |b| {
            b.iter(|| decap(black_box(&frame), remote, VXLAN_PORT))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_extract, bench_rewrite, bench_vxlan);
criterion_main!(benches);
