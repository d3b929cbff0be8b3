//! Classifier lookup micro-benchmark: 10 / 1,000 / 100,000 flows spread
//! over 1 / 8 / 32 distinct masks, for packets that hit a rule and packets
//! that miss every rule (the worst case of tuple-space search: every
//! subtable is probed).
//!
//! Masks model a typical IPv4 ACL / forwarding table: `dl_type=0x0800` plus
//! a combination of `nw_dst` prefix length (/32, /24, /16, /8), `in_port`,
//! `tp_dst` and `reg0`. Priorities are uniform in 1..=1000, so subtables'
//! maximum priorities are close and early exit rarely helps (pessimistic).
//!
//! Run: `cargo bench -p bench --bench classifier`. Each iteration is one
//! lookup, so criterion's time is ns per lookup.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use flows::classifier::Classifier;
use flows::field::Field;
use flows::flow_match::Match;
use flows::key::FlowKey;

/// Packets per pre-built batch (lookups cycle through it).
const BATCH: usize = 4096;

/// Small deterministic PRNG (xorshift64*), so runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Mask number `k` (0..32): prefix length from bits 0-1, in_port bit 2,
/// tp_dst bit 3, reg0 bit 4.
fn build_match(k: usize, rng: &mut Rng) -> Match {
    let mut m = Match::ANY;
    m.set(Field::DlType, 0x0800);
    let plen = [32u32, 24, 16, 8][k & 3];
    let pmask = u64::from(u32::MAX << (32 - plen));
    m.set_masked(Field::NwDst, rng.next() & 0xffff_ffff, pmask);
    if k & 4 != 0 {
        m.set(Field::InPort, 1 + rng.below(64));
    }
    if k & 8 != 0 {
        m.set(Field::NwProto, 6);
        m.set(Field::TpDst, rng.below(65536));
    }
    if k & 16 != 0 {
        m.set(Field::Reg(0), rng.below(1024));
    }
    m
}

/// Fills the fields a rule leaves wild with random values.
fn randomize(key: &mut FlowKey, m: &Match, rng: &mut Rng) {
    for i in 0..key.w.len() {
        key.w[i] = m.key.w[i] | (rng.next() & !m.mask.w[i]);
    }
}

fn setup(n_flows: usize, n_masks: usize) -> (Classifier<u32>, Vec<FlowKey>, Vec<FlowKey>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n_flows as u64) << 8 ^ n_masks as u64);
    let mut cls = Classifier::new();
    let mut rules = Vec::with_capacity(n_flows);
    let mut i = 0;
    while cls.len() < n_flows {
        let m = build_match(i % n_masks, &mut rng);
        let prio = 1 + rng.below(1000) as u16;
        if cls.insert(m, prio, i as u32).is_none() {
            rules.push(m);
        }
        i += 1;
    }
    let hits = (0..BATCH)
        .map(|_| {
            let m = &rules[rng.below(rules.len() as u64) as usize];
            let mut k = FlowKey::ZERO;
            randomize(&mut k, m, &mut rng);
            k
        })
        .collect();
    // Misses: IPv6 packets, which no rule (all pin dl_type=0x0800) matches.
    let misses = (0..BATCH)
        .map(|_| {
            let mut k = FlowKey::ZERO;
            randomize(&mut k, &Match::ANY, &mut rng);
            k.set(Field::DlType, 0x86dd);
            k
        })
        .collect();
    (cls, hits, misses)
}

fn bench_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("classifier_lookup");
    for &n_flows in &[10usize, 1_000, 100_000] {
        for &n_masks in &[1usize, 8, 32] {
            let (cls, hits, misses) = setup(n_flows, n_masks);
            assert!(hits.iter().all(|k| cls.lookup(k).is_some()));
            assert!(misses.iter().all(|k| cls.lookup(k).is_none()));
            let label = format!("{n_flows}flows/{}masks", cls.n_subtables());
            for (kind, pkts) in [("hit", &hits), ("miss", &misses)] {
                group.bench_with_input(BenchmarkId::new(kind, &label), pkts, |b, pkts| {
                    let mut i = 0;
                    b.iter(|| {
                        i = (i + 1) % BATCH;
                        black_box(cls.lookup(black_box(&pkts[i])))
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench_lookup
}
criterion_main!(benches);
