//! Reachability matrix: a scenario (namespaces, pods, policies) in
//! `fixtures/reachability/cluster.yaml`, and the allow/deny verdict for every
//! pod pair and port, worked out by hand from the Kubernetes rules, in
//! `expected.txt`. Every row is checked through the real compiled pipeline
//! (flows installed into a `Pipeline`, packets translated with conntrack
//! recirculation followed), including that replies of allowed connections
//! come back.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use control::compile::{Compiler, Config, PodPorts};
use control::model::Model;
use control::sim::{packet, Pkt, Sim, Verdict, NEW, REPLY};

const GW: [u8; 6] = [2, 0xfe, 0, 0, 0, 1];

#[test]
fn reachability_matrix_matches_kubernetes_semantics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reachability");
    let loaded = control::load(dir.join("cluster.yaml"));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let snap = loaded.snapshot;
    let model = Model::build(&snap);
    let mut ports = PodPorts::new();
    for (i, p) in model.pods_on("node-a").enumerate() {
        ports.insert(p.key(), i as u16 + 1);
    }
    let mut comp = Compiler::new(Config {
        node: "node-a".into(),
        tunnel_port: Some(100),
        trunk_port: None,
        gateway_mac: GW,
    });
    let delta = comp.full(&snap, &ports);
    assert!(comp.issues().is_empty(), "{:?}", comp.issues());
    let mut sim = Sim::new();
    sim.set_ports(ports.values().copied());
    sim.apply(&delta).unwrap();

    let pods: BTreeMap<String, (u16, [u8; 6], Ipv4Addr)> = model
        .pods
        .values()
        .map(|p| {
            let port = ports[&p.key()];
            (format!("{}/{}", p.namespace, p.name), (port, p.mac, p.ip))
        })
        .collect();
    let text = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    let mut rows = 0;
    let mut wrong = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let w: Vec<&str> = line.split_whitespace().collect();
        let [from, to, port, want] = w[..] else {
            panic!("bad line: {line}")
        };
        let (proto, dport) = port.split_once('/').unwrap();
        let proto: u8 = if proto == "tcp" { 6 } else { 17 };
        let dport: u16 = dport.parse().unwrap();
        let (sp, smac, sip) = pods[from];
        let (dp, dmac, dip) = pods[to];
        let k = packet(&Pkt {
            in_port: sp,
            dl_src: smac,
            dl_dst: GW,
            src: sip,
            dst: dip,
            proto,
            sport: 40000,
            dport,
        });
        let (v, _) = sim.run(&k, NEW);
        let got = match v {
            Verdict::Delivered { port, .. } if port == dp => "allow",
            Verdict::Dropped => "deny",
            other => panic!("{line}: unexpected {other:?}"),
        };
        if got != want {
            wrong.push(format!("{line}  (got {got})"));
        }
        if got == "allow" {
            // The reply of the allowed connection comes back, although the
            // source may be isolated for ingress.
            let r = packet(&Pkt {
                in_port: dp,
                dl_src: dmac,
                dl_dst: GW,
                src: dip,
                dst: sip,
                proto,
                sport: dport,
                dport: 40000,
            });
            let (v, _) = sim.run(&r, REPLY);
            assert!(
                matches!(v, Verdict::Delivered { port, .. } if port == sp),
                "{line}: reply {v:?}"
            );
        }
        rows += 1;
    }
    assert_eq!(rows, 48);
    assert!(wrong.is_empty(), "rows that differ:\n{}", wrong.join("\n"));
}
