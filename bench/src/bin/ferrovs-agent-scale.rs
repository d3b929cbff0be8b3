//! `ferrovs-agent-scale`: how long ferrovs-agent takes to compile and
//! install a large cluster from a cold start, and to reflect one change.
//!
//! Cold start: compile (snapshot -> flows), then install the same way
//! ferrovsd does for the agent's `bundle --replace`: the bundle text is
//! formatted, parsed and applied to a pipeline. One change: an
//! EndpointSlice, a new Service, a pod label (which recompiles every
//! policy), each compiled incrementally and applied to a copy of the
//! installed pipeline exactly like `Switch::apply` (copy-on-write clone,
//! apply, publish). Times are wall-clock on this machine, medians of
//! `--repeat` changes.

use std::time::{Duration, Instant};

use bench::agent_scale::{cluster, pod, service, slice, slice_ref, Size};
use control::compile::{bundle_text, full_bundle_text, Compiler, Config, PodPorts};
use control::model::Model;
use control::{Kind, ObjectRef};
use flows::pipeline::Pipeline;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let small = args.iter().any(|a| a == "--small");
    let repeat: usize = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let size = if small {
        Size {
            nodes: 10,
            namespaces: 20,
            pods: 500,
            services: 500,
            endpoints: 5,
            policies: 50,
        }
    } else {
        Size::TARGET
    };
    eprintln!("building the cluster: {size:?}");
    let mut snap = cluster(&size);
    let model = Model::build(&snap);
    let ports: PodPorts = model
        .pods_on("node-0")
        .enumerate()
        .map(|(i, p)| (p.key(), i as u16 + 1))
        .collect();
    let mut comp = Compiler::new(Config {
        node: "node-0".into(),
        tunnel_port: Some(60000),
        trunk_port: None,
        gateway_mac: [2, 0xfe, 0, 0, 0, 1],
    });

    // Cold start.
    let t0 = Instant::now();
    let delta = comp.full(&snap, &ports);
    let t_compile = t0.elapsed();
    let t1 = Instant::now();
    let text = full_bundle_text(&comp);
    let t_format = t1.elapsed();
    let t2 = Instant::now();
    let parser = flows::syntax::Parser::new();
    let (mods, _names) = match tools::mgmt::parse_bundle(&parser, &text) {
        Ok(x) => x,
        Err(e) => panic!("bundle does not parse: {e}"),
    };
    let t_parse = t2.elapsed();
    let t3 = Instant::now();
    let mut installed = Pipeline::new();
    if let Err(e) = installed.apply(&mods, 0) {
        panic!("bundle does not apply: {e}");
    }
    let t_apply = t3.elapsed();
    let cold = t0.elapsed();
    let n_flows = comp.flows().count();
    let n_groups = comp.groups().count();
    let issues = comp.issues();
    assert_eq!(delta.mods.len(), n_flows + n_groups);

    // One change at a time, applied like Switch::apply.
    let mut change =
        |snap: &mut control::ClusterSnapshot, installed: &mut Pipeline, refs: Vec<ObjectRef>| {
            let t = Instant::now();
            let d = comp.update(snap, &ports, &refs);
            let t_c = t.elapsed();
            let mut next = installed.clone();
            if let Err(e) = next.apply(&d.mods, 0) {
                panic!("change does not apply: {e}\n{}", bundle_text(&d));
            }
            *installed = next;
            (ms(t_c), ms(t.elapsed()), d.mods.len())
        };
    let mut ep = Vec::new();
    let mut ep_compile = Vec::new();
    let mut ep_mods = 0;
    for r in 0..repeat {
        let i = (r * 37) % size.services;
        snap.apply(slice(&size, i, i * size.endpoints + 1 + r));
        let (c, total, m) = change(&mut snap, &mut installed, vec![slice_ref(&size, i)]);
        ep.push(total);
        ep_compile.push(c);
        ep_mods = m;
    }
    let mut svc = Vec::new();
    for r in 0..repeat {
        let i = size.services + r;
        snap.apply(service(&size, i));
        snap.apply(slice(&size, i, r));
        let ns = format!("ns-{}", i % size.namespaces);
        let refs = vec![
            ObjectRef::new(Kind::Service, &ns, &format!("svc-{i}")),
            slice_ref(&size, i),
        ];
        svc.push(change(&mut snap, &mut installed, refs).1);
    }
    let mut podc = Vec::new();
    for r in 0..repeat.min(5) {
        let j = r * 101 % size.pods;
        snap.apply(pod(&size, j, j + 1 + r));
        let ns = format!("ns-{}", j % size.namespaces);
        podc.push(
            change(
                &mut snap,
                &mut installed,
                vec![ObjectRef::new(Kind::Pod, &ns, &format!("pod-{j}"))],
            )
            .1,
        );
    }
    // Consistency: the incrementally maintained pipeline equals a fresh compile.
    let mut fresh = Compiler::new(comp.config().clone());
    fresh.full(&snap, &ports);
    assert_eq!(fresh.flows().count(), comp.flows().count());

    println!(
        "ferrovs-agent scale ({} Services x {} endpoints, {} NetworkPolicies, {} pods, {} nodes)",
        size.services, size.endpoints, size.policies, size.pods, size.nodes
    );
    println!("| step | time |");
    println!("|---|---|");
    println!(
        "| compiled | {n_flows} flows, {n_groups} groups ({} issues) |",
        issues.len()
    );
    println!("| cold start: compile | {:.0} ms |", ms(t_compile));
    println!(
        "| cold start: bundle text ({:.1} MB) | {:.0} ms |",
        text.len() as f64 / 1e6,
        ms(t_format)
    );
    println!(
        "| cold start: ferrovsd parses the bundle | {:.0} ms |",
        ms(t_parse)
    );
    println!(
        "| cold start: ferrovsd applies it | {:.0} ms |",
        ms(t_apply)
    );
    println!("| **cold start total** | **{:.0} ms** |", ms(cold));
    println!(
        "| one EndpointSlice change ({ep_mods} edits), median of {repeat} | {:.2} ms |",
        median(ep.clone())
    );
    println!("| of which compile + diff | {:.2} ms |", median(ep_compile));
    println!(
        "| one EndpointSlice change, worst | {:.2} ms |",
        ep.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "| one new Service, median of {repeat} | {:.2} ms |",
        median(svc.clone())
    );
    println!(
        "| one pod label change (all {} policies recompiled), median | {:.1} ms |",
        size.policies,
        median(podc)
    );
}
