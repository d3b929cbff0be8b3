//! Criterion benchmark of `ConnTrack::execute` on established connections.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use datapath::conntrack::{tcp_flags, ConnTrack, CtConfig, CtInput, Tuple};
use flows::action::{Nat, NatKind};
use flows::field::ipproto;
use std::net::Ipv4Addr;

/// A table of `n` established TCP connections; returns it with the inputs
/// of an original-direction ACK for each.
fn established(n: u32, nat: Option<Nat>) -> (ConnTrack, Vec<CtInput>) {
    let mut ct = ConnTrack::new(CtConfig::default());
    let mut inputs = Vec::with_capacity(n as usize);
    for i in 0..n {
        let src = Ipv4Addr::from(0x0a00_0000 + i);
        let t = Tuple::new(
            src,
            Ipv4Addr::new(10, 96, 0, 10),
            ipproto::TCP,
            (1024 + i % 60000) as u16,
            80,
        );
        let syn = CtInput {
            tcp_flags: tcp_flags::SYN,
            commit: true,
            nat,
            ..CtInput::new(t, 1)
        };
        let out = ct.execute(&syn, 0);
        let back = out.rewrite.unwrap_or(t).reverse();
        let synack = CtInput {
            tcp_flags: tcp_flags::SYN | tcp_flags::ACK,
            nat,
            ..CtInput::new(back, 1)
        };
        ct.execute(&synack, 1);
        let ack = CtInput {
            tcp_flags: tcp_flags::ACK,
            nat,
            ..CtInput::new(t, 1)
        };
        ct.execute(&ack, 2);
        inputs.push(ack);
    }
    (ct, inputs)
}

fn bench_execute(c: &mut Criterion) {
    let dnat = Nat {
        kind: Some(NatKind::Dst),
        ip_min: Ipv4Addr::new(10, 244, 0, 1),
        ip_max: Ipv4Addr::new(10, 244, 0, 254),
        port_min: 8080,
        port_max: 8080,
    };
    for (name, n, nat) in [
        ("execute_est_1conn", 1, None),
        ("execute_est_100k_conns", 100_000, None),
        ("execute_est_100k_conns_dnat", 100_000, Some(dnat)),
    ] {
        let (mut ct, inputs) = established(n, nat);
        let mut i = 0;
        let mut now = 10;
        c.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % inputs.len();
                now += 1;
                black_box(ct.execute(black_box(&inputs[i]), now))
            })
        });
    }
}

criterion_group!(benches, bench_execute);
criterion_main!(benches);
