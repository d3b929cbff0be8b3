//! Criterion benchmark of one flow-table edit on a big pipeline, done the
//! way `Switch::apply` does it: clone the published version, apply the
//! batch, publish the result (the old version is then dropped). The
//! pipeline holds 100k flows over 5 tables (20k each, two masks); the edit
//! replaces one flow in table 2 (`add_flow_20k_table`) or adds one flow to
//! an empty table (`add_flow_empty_table`).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use flows::action::Action;
use flows::field::Field;
use flows::flow_match::Match;
use flows::pipeline::{FlowMod, FlowSpec, Pipeline};

const TABLES: u8 = 5;
const PER_TABLE: u64 = 20_000;

fn spec(table: u8, i: u64) -> FlowSpec {
    let mut m = Match::ANY;
    m.set(Field::DlType, 0x0800);
    m.set(Field::NwDst, 0x0a00_0000 | i);
    if i & 1 == 0 {
        m.set(Field::InPort, 1 + i % 16);
    }
    FlowSpec {
        table,
        priority: 100 + (i % 10) as u16,
        m,
        actions: vec![Action::Output(1)],
        ..FlowSpec::default()
    }
}

fn build() -> Pipeline {
    let mut p = Pipeline::new();
    let mods: Vec<FlowMod> = (0..TABLES)
        .flat_map(|t| (0..PER_TABLE).map(move |i| FlowMod::Add(spec(t, i))))
        .collect();
    p.apply(&mods, 0).expect("valid flows");
    assert_eq!(p.n_flows(), (TABLES as u64 * PER_TABLE) as usize);
    p
}

fn bench_apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline_apply");
    g.sample_size(20);
    let mut published = Arc::new(build());
    for (name, table) in [("add_flow_20k_table", 2u8), ("add_flow_empty_table", 10)] {
        let one = [FlowMod::Add(spec(table, 7))];
        g.bench_function(name, |it| {
            it.iter(|| {
                let mut next = (*published).clone();
                next.apply(&one, 1).expect("valid flow");
                published = Arc::new(next);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
