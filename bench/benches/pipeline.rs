//! Criterion benchmark of the whole in-memory pipeline per packet through
//! `datapath::worker::Engine`, batch by batch like the poll loop (32 frames:
//! refresh, process each, flush). Cases: plain L2 output, `normal` with a
//! VLAN push, and a Kubernetes-like pipeline (conntrack + service DNAT via a
//! select group + ACLs), see `bench::pipeline`. Throughput is in packets,
//! so criterion's time per element is ns/packet.

use bench::pipeline::{Bench, Case};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench_pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    for case in Case::ALL {
        let mut b = Bench::new(case);
        g.throughput(Throughput::Elements(b.packets_per_round() as u64));
        g.bench_function(case.name(), |it| it.iter(|| b.run_all()));
    }
    g.finish();
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
