//! Compiler tests: scenarios compiled, installed into a pipeline and
//! evaluated packet by packet (see [`crate::sim`]).
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use flows::field::Field;
use serde_json::{json, Value};

use super::*;
use crate::sim::{arp_request, objects_hit, packet, Pkt, Sim, Verdict, NEW, REPLY};

const TUN: PortNo = 100;
const GW_MAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 1];

pub(crate) fn ns(name: &str, labels: Value) -> Value {
    json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":name,"labels":labels}})
}

pub(crate) fn node(name: &str, ip: &str, cidr: &str) -> Value {
    json!({"apiVersion":"v1","kind":"Node","metadata":{"name":name},"spec":{"podCIDR":cidr},
           "status":{"addresses":[{"type":"InternalIP","address":ip}]}})
}

pub(crate) fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value) -> Value {
    json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":name,"namespace":ns,"labels":labels},
           "spec":{"nodeName":node,"containers":[{"name":"c","ports":[
               {"name":"http","containerPort":8080},{"name":"dns","containerPort":5353,"protocol":"UDP"}]}]},
           "status":{"podIP":ip}})
}

fn svc(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion":"v1","kind":"Service","metadata":{"name":name,"namespace":ns},"spec":spec})
}

fn slice(ns: &str, svc: &str, name: &str, ports: Value, eps: Value) -> Value {
    json!({"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
           "metadata":{"name":name,"namespace":ns,"labels":{"kubernetes.io/service-name":svc}},
           "addressType":"IPv4","ports":ports,"endpoints":eps})
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
           "metadata":{"name":name,"namespace":ns},"spec":spec})
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A cluster, this node's compiler and the pipeline it programs.
pub(crate) struct World {
    pub(crate) snap: ClusterSnapshot,
    pub(crate) comp: Compiler,
    pub(crate) sim: Sim,
    pub(crate) ports: PodPorts,
    last: Delta,
}

impl World {
    pub(crate) fn new(node: &str, objs: Vec<Value>) -> World {
        let mut w = World {
            snap: ClusterSnapshot::new(),
            comp: Compiler::new(Config {
                node: node.into(),
                tunnel_port: Some(TUN),
                trunk_port: None,
                gateway_mac: GW_MAC,
            }),
            sim: Sim::new(),
            ports: PodPorts::new(),
            last: Delta::default(),
        };
        w.load(objs);
        let d = w.comp.full(&w.snap, &w.ports);
        w.install(d);
        w
    }

    fn load(&mut self, objs: Vec<Value>) -> Vec<ObjectRef> {
        let l = crate::manifests::load_values("t.json", &objs);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let mut changed = Vec::new();
        for r in l.snapshot.refs().cloned().collect::<Vec<_>>() {
            let o = l.snapshot.get(&r).unwrap();
            if self.snap.apply(o) {
                changed.push(r);
            }
        }
        // Local pods get ports 1.. in name order (as the agent assigns).
        let model = Model::build(&self.snap);
        for p in model.pods_on(&self.comp.config().node) {
            let n = self.ports.len() as PortNo + 1;
            self.ports.entry(p.key()).or_insert(n);
        }
        changed
    }

    fn install(&mut self, d: Delta) {
        let ports: Vec<PortNo> = self.ports.values().copied().chain([TUN]).collect();
        self.sim.set_ports(ports);
        self.sim
            .apply(&d)
            .unwrap_or_else(|e| panic!("{e}\n{}", bundle_text(&d)));
        self.last = d;
    }

    /// Applies objects and installs the incremental delta.
    pub(crate) fn change(&mut self, objs: Vec<Value>) -> &Delta {
        let changed = self.load(objs);
        let d = self.comp.update(&self.snap, &self.ports, &changed);
        self.install(d);
        &self.last
    }

    pub(crate) fn delete(&mut self, r: ObjectRef) -> &Delta {
        assert!(self.snap.remove(&r));
        let d = self.comp.update(&self.snap, &self.ports, &[r]);
        self.install(d);
        &self.last
    }

    pub(crate) fn pod(&self, ns: &str, name: &str) -> (PortNo, crate::model::PodInfo) {
        let key = (ns.to_string(), name.to_string());
        let p = self.comp.model().pods.get(&key).unwrap().clone();
        (self.ports.get(&key).copied().unwrap_or(0), p)
    }

    /// A first packet from local pod `ns/name` to `dst:dport`.
    pub(crate) fn from(
        &self,
        ns: &str,
        name: &str,
        dst: &str,
        proto: u8,
        dport: u16,
    ) -> (Verdict, Vec<String>) {
        let (port, p) = self.pod(ns, name);
        let k = packet(&Pkt {
            in_port: port,
            dl_src: p.mac,
            dl_dst: GW_MAC,
            src: p.ip,
            dst: ip(dst),
            proto,
            sport: 40000,
            dport,
        });
        let (v, passes) = self.sim.run(&k, NEW);
        (v, objects_hit(&self.comp, &passes))
    }

    pub(crate) fn tcp(&self, ns: &str, name: &str, dst: &str, dport: u16) -> Verdict {
        self.from(ns, name, dst, 6, dport).0
    }
}

fn base() -> Vec<Value> {
    vec![
        node("a", "192.168.0.1", "10.244.1.0/24"),
        node("b", "192.168.0.2", "10.244.2.0/24"),
        ns("default", json!({})),
        ns(
            "red",
            json!({"ferrovs.io/tenant": "red", "ferrovs.io/vlan": "10"}),
        ),
        pod(
            "default",
            "web-1",
            "a",
            "10.244.1.10",
            json!({"app": "web"}),
        ),
        pod(
            "default",
            "web-2",
            "b",
            "10.244.2.10",
            json!({"app": "web"}),
        ),
        pod(
            "default",
            "client",
            "a",
            "10.244.1.20",
            json!({"app": "client"}),
        ),
        pod("red", "r1", "a", "10.244.1.30", json!({"app": "web"})),
    ]
}

fn delivered_to(port: PortNo) -> impl Fn(&Verdict) -> bool {
    move |v| matches!(v, Verdict::Delivered { port: p, .. } if *p == port)
}

#[test]
fn pod_to_pod_local_and_spoof_guard() {
    let w = World::new("a", base());
    let (web1, _) = w.pod("default", "web-1");
    let v = w.tcp("default", "client", "10.244.1.10", 80);
    assert!(delivered_to(web1)(&v), "{v:?}");
    // Spoofed source IP: dropped by the client's spoof guard.
    let (port, p) = w.pod("default", "client");
    let k = packet(&Pkt {
        in_port: port,
        dl_src: p.mac,
        dl_dst: GW_MAC,
        src: ip("10.244.1.99"),
        dst: ip("10.244.1.10"),
        proto: 6,
        sport: 1,
        dport: 80,
    });
    let (v, passes) = w.sim.run(&k, NEW);
    assert_eq!(v, Verdict::Dropped);
    assert_eq!(
        objects_hit(&w.comp, &passes),
        vec!["Pod default/client spoof guard"]
    );
    // Remote pods have no port on this node.
    assert_eq!(w.pod("default", "web-2").0, 0);
}

#[test]
fn arp_gateway_proxy_and_own_ip() {
    let w = World::new("a", base());
    let (port, p) = w.pod("default", "client");
    let ask = |tpa: &str| w.sim.run(&arp_request(port, p.mac, p.ip, ip(tpa)), NEW).0;
    assert_eq!(ask("10.244.1.1"), Verdict::ArpReply(GW_MAC));
    assert_eq!(ask("10.244.1.10"), Verdict::ArpReply(GW_MAC));
    assert_eq!(
        ask("10.244.1.20"),
        Verdict::Dropped,
        "own IP is not answered"
    );
    assert_eq!(ask("192.168.7.7"), Verdict::Dropped);
    // ARP with a spoofed sender address is not answered either.
    let v = w
        .sim
        .run(
            &arp_request(port, p.mac, ip("10.244.1.10"), ip("10.244.1.1")),
            NEW,
        )
        .0;
    assert_eq!(v, Verdict::Dropped);
}

#[test]
fn tenants_are_isolated() {
    let w = World::new("a", base());
    // Same node, same subnet, different tenant: no route.
    assert_eq!(
        w.tcp("default", "client", "10.244.1.30", 80),
        Verdict::Dropped
    );
    assert_eq!(w.tcp("red", "r1", "10.244.1.10", 80), Verdict::Dropped);
    // Across nodes the tenant is the VNI.
    match w.tcp("red", "r1", "10.244.2.10", 80) {
        Verdict::Delivered { port, tunnel, .. } => {
            assert_eq!(port, TUN);
            assert_eq!(tunnel, Some((ip("192.168.0.2"), 10)));
        }
        v => panic!("{v:?}"),
    }
    // Tunnel ingress: VNI 10 reaches red pods only.
    let (r1, _) = w.pod("red", "r1");
    let mut k = packet(&Pkt {
        in_port: TUN,
        dl_src: [2, 0, 0, 0, 0, 9],
        dl_dst: GW_MAC,
        src: ip("10.244.2.10"),
        dst: ip("10.244.1.30"),
        proto: 6,
        sport: 1,
        dport: 80,
    });
    k.set(flows::field::Field::TunId, 10);
    assert!(delivered_to(r1)(&w.sim.run(&k, NEW).0));
    k.set(
        flows::field::Field::NwDst,
        u64::from(u32::from(ip("10.244.1.10"))),
    );
    assert_eq!(
        w.sim.run(&k, NEW).0,
        Verdict::Dropped,
        "VNI 10 cannot reach the default tenant"
    );
}

#[test]
fn overlay_node_add_remove_touches_only_that_node() {
    let mut w = World::new("a", base());
    match w.tcp("default", "client", "10.244.2.10", 80) {
        Verdict::Delivered { port, tunnel, .. } => {
            assert_eq!(port, TUN);
            assert_eq!(
                tunnel,
                Some((
                    ip("192.168.0.2"),
                    u64::from(crate::model::DEFAULT_TENANT_VLAN)
                ))
            );
        }
        v => panic!("{v:?}"),
    }
    let d = w
        .change(vec![node("c", "192.168.0.3", "10.244.3.0/24")])
        .clone();
    assert!(!d.mods.is_empty());
    for m in &d.mods {
        match m {
            FlowMod::Add(f) => assert_eq!(
                layout::CookieKind::from_cookie(f.cookie),
                Some(CookieKind::Node),
                "{f:?}"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(w.tcp("default", "client", "10.244.3.5", 80).delivered());
    let d = w.delete(ObjectRef::new(Kind::Node, "", "c")).clone();
    assert!(
        d.mods.iter().all(|m| matches!(m, FlowMod::Delete(_))),
        "{d:?}"
    );
    assert_eq!(d.mods.len(), 2, "one route per tenant");
    assert_eq!(
        w.tcp("default", "client", "10.244.3.5", 80),
        Verdict::Dropped
    );
}

#[test]
fn overlapping_node_cidr_is_reported_and_ignored() {
    let mut objs = base();
    objs.push(node("z", "192.168.0.9", "10.244.2.0/25"));
    let w = World::new("a", objs);
    let issues: Vec<String> = w.comp.issues().iter().map(|i| i.to_string()).collect();
    assert!(
        issues
            .iter()
            .any(|i| i.contains("Node z") && i.contains("overlaps")),
        "{issues:?}"
    );
    match w.tcp("default", "client", "10.244.2.10", 80) {
        Verdict::Delivered { tunnel, .. } => assert_eq!(tunnel.unwrap().0, ip("192.168.0.2")),
        v => panic!("{v:?}"),
    }
}

fn web_service() -> Vec<Value> {
    vec![
        svc(
            "default",
            "web",
            json!({"clusterIP":"10.96.0.10","type":"NodePort",
            "ports":[{"name":"http","port":80,"targetPort":"http","nodePort":30080}]}),
        ),
        slice(
            "default",
            "web",
            "web-abc",
            json!([{"name":"http","port":8080}]),
            json!([
                {"addresses":["10.244.1.10"],"nodeName":"a","conditions":{"ready":true}},
                {"addresses":["10.244.2.10"],"nodeName":"b"},
                {"addresses":["10.244.2.11"],"nodeName":"b","conditions":{"ready":false}},
            ]),
        ),
    ]
}

#[test]
fn service_cluster_ip_dnat_over_ready_endpoints() {
    let mut objs = base();
    objs.extend(web_service());
    let w = World::new("a", objs);
    let group = w.comp.groups().next().unwrap().clone();
    assert_eq!(
        group.buckets.len(),
        2,
        "not-ready endpoint left out: {group:?}"
    );
    let mut seen = std::collections::BTreeSet::new();
    for sport in 40000..40040u16 {
        let (port, p) = w.pod("default", "client");
        let k = packet(&Pkt {
            in_port: port,
            dl_src: p.mac,
            dl_dst: GW_MAC,
            src: p.ip,
            dst: ip("10.96.0.10"),
            proto: 6,
            sport,
            dport: 80,
        });
        match w.sim.run(&k, NEW).0 {
            Verdict::Delivered { nw_dst, tp_dst, .. } => {
                assert_eq!(tp_dst, 8080);
                seen.insert(nw_dst);
            }
            v => panic!("{v:?}"),
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "connections spread over both endpoints: {seen:?}"
    );
    let (_, objs) = w.from("default", "client", "10.96.0.10", 6, 80);
    assert!(
        objs.contains(&"Service default/web port #0".to_string()),
        "{objs:?}"
    );
    // Other tenants do not see the service.
    assert_eq!(w.tcp("red", "r1", "10.96.0.10", 80), Verdict::Dropped);
    // NodePort on this node's IP.
    assert!(w.tcp("default", "client", "192.168.0.1", 30080).delivered());
    // UDP to the TCP port is not the service.
    assert_eq!(
        w.from("default", "client", "10.96.0.10", 17, 80).0,
        Verdict::Dropped
    );
}

#[test]
fn service_without_endpoints_rejects() {
    let mut objs = base();
    objs.push(svc(
        "default",
        "empty",
        json!({"clusterIP":"10.96.0.20","ports":[{"port":53,"protocol":"UDP"}]}),
    ));
    let w = World::new("a", objs);
    assert_eq!(
        w.from("default", "client", "10.96.0.20", 17, 53).0,
        Verdict::Rejected
    );
}

#[test]
fn service_hairpin_snats_to_gateway_and_returns_by_in_port() {
    let mut objs = base();
    objs.push(svc(
        "default",
        "self",
        json!({"clusterIP":"10.96.0.30","selector":{"app":"web"},
               "ports":[{"port":80,"targetPort":8080}]}),
    ));
    let w = World::new("a", objs);
    let (web1, p) = w.pod("default", "web-1");
    // web-1 -> ClusterIP; pick a connection that lands on web-1 itself.
    let hairpin = (40000..40100u16).find_map(|sport| {
        let k = packet(&Pkt {
            in_port: web1,
            dl_src: p.mac,
            dl_dst: GW_MAC,
            src: p.ip,
            dst: ip("10.96.0.30"),
            proto: 6,
            sport,
            dport: 80,
        });
        let (v, passes) = w.sim.run(&k, NEW);
        let fin = passes.last().unwrap().trace.final_key;
        matches!(v, Verdict::Delivered { nw_dst, .. } if nw_dst == p.ip).then_some((v, fin))
    });
    let (v, fin) = hairpin.expect("some connection lands on web-1");
    assert!(delivered_to(web1)(&v), "back out of its own port: {v:?}");
    assert_eq!(
        Ipv4Addr::from(fin.get(Field::NwSrc) as u32),
        ip("10.244.1.1"),
        "source NATed to the gateway"
    );
    // The reply (to the gateway address) is un-SNATed in the hairpin zone
    // before the tenant zone.
    let reply = packet(&Pkt {
        in_port: web1,
        dl_src: p.mac,
        dl_dst: GW_MAC,
        src: p.ip,
        dst: ip("10.244.1.1"),
        proto: 6,
        sport: 8080,
        dport: 40000,
    });
    let (_, passes) = w.sim.run(&reply, REPLY);
    let zones: Vec<u64> = passes
        .iter()
        .skip(1)
        .map(|x| x.key.get(Field::CtZone))
        .collect();
    let vlan = u64::from(p.vlan);
    assert_eq!(zones[..2], [u64::from(layout::hairpin_zone(p.vlan)), vlan]);
    // Ordinary pod-to-pod traffic is not NATed.
    let k = packet(&Pkt {
        in_port: web1,
        dl_src: p.mac,
        dl_dst: GW_MAC,
        src: p.ip,
        dst: ip("10.244.1.20"),
        proto: 6,
        sport: 40000,
        dport: 8080,
    });
    let (_, passes) = w.sim.run(&k, NEW);
    assert_eq!(
        passes.last().unwrap().trace.final_key.get(Field::NwSrc),
        u64::from(u32::from(p.ip))
    );
}

#[test]
fn service_endpoint_change_is_small_and_local() {
    let mut objs = base();
    objs.extend(web_service());
    let mut w = World::new("a", objs);
    let d = w
        .change(vec![slice(
            "default",
            "web",
            "web-abc",
            json!([{"name":"http","port":8080}]),
            json!([
            {"addresses":["10.244.1.10"],"nodeName":"a"}]),
        )])
        .clone();
    assert_eq!(d.units, 1);
    assert_eq!(d.mods.len(), 1, "only the group changes: {d:?}");
    assert!(matches!(&d.mods[0], FlowMod::AddGroup(g) if g.buckets.len() == 1));
    // Removing the last endpoint: the service rejects, the group goes.
    let d = w
        .delete(ObjectRef::new(Kind::EndpointSlice, "default", "web-abc"))
        .clone();
    assert!(
        d.mods.iter().any(|m| matches!(m, FlowMod::DeleteGroup(_))),
        "{d:?}"
    );
    assert_eq!(
        w.tcp("default", "client", "10.96.0.10", 80),
        Verdict::Rejected
    );
    // Deleting the service removes all of its flows.
    let d = w
        .delete(ObjectRef::new(Kind::Service, "default", "web"))
        .clone();
    assert_eq!(d.mods.len(), 2, "ClusterIP and NodePort flows: {d:?}");
    assert_eq!(
        w.tcp("default", "client", "10.96.0.10", 80),
        Verdict::Dropped
    );
    assert!(w
        .comp
        .cookie_of(&ObjectRef::new(Kind::Service, "default", "web"))
        .is_none());
}

#[test]
fn service_external_traffic_policy_local_and_affinity() {
    let mut objs = base();
    objs.push(svc(
        "default",
        "web",
        json!({"clusterIP":"10.96.0.10","type":"NodePort",
        "externalTrafficPolicy":"Local","sessionAffinity":"ClientIP",
        "ports":[{"name":"http","port":80,"targetPort":8080,"nodePort":30080}]}),
    ));
    objs.push(slice(
        "default",
        "web",
        "w1",
        json!([{"name":"http","port":8080}]),
        json!([
        {"addresses":["10.244.2.10"],"nodeName":"b"}]),
    ));
    let mut w = World::new("a", objs);
    // No local endpoint: NodePort dropped, ClusterIP still works.
    assert_eq!(
        w.tcp("default", "client", "192.168.0.1", 30080),
        Verdict::Dropped
    );
    assert!(w.tcp("default", "client", "10.96.0.10", 80).delivered());
    assert!(w
        .comp
        .groups()
        .all(|g| g.selection == Some(vec![flows::field::Field::NwSrc])
            && g.affinity_timeout == Some(10800)));
    w.change(vec![slice(
        "default",
        "web",
        "w1",
        json!([{"name":"http","port":8080}]),
        json!([
        {"addresses":["10.244.2.10"],"nodeName":"b"},{"addresses":["10.244.1.10"],"nodeName":"a"}]),
    )]);
    for sport in 1000..1010 {
        let (port, p) = w.pod("default", "client");
        let k = packet(&Pkt {
            in_port: port,
            dl_src: p.mac,
            dl_dst: GW_MAC,
            src: p.ip,
            dst: ip("192.168.0.1"),
            proto: 6,
            sport,
            dport: 30080,
        });
        match w.sim.run(&k, NEW).0 {
            Verdict::Delivered { nw_dst, .. } => {
                assert_eq!(nw_dst, ip("10.244.1.10"), "only the local endpoint")
            }
            v => panic!("{v:?}"),
        }
    }
}

#[test]
fn service_affinity_timeout_and_stable_bucket_ids() {
    let svc_with = |timeout: Value| {
        svc(
            "default",
            "web",
            json!({"clusterIP":"10.96.0.10","sessionAffinity":"ClientIP",
            "sessionAffinityConfig":{"clientIP":{"timeoutSeconds":timeout}},
            "ports":[{"name":"http","port":80,"targetPort":8080}]}),
        )
    };
    let eps = |addrs: &[&str]| {
        let list: Vec<Value> = addrs
            .iter()
            .map(|a| json!({"addresses":[a],"nodeName":"b"}))
            .collect();
        slice(
            "default",
            "web",
            "w1",
            json!([{"name":"http","port":8080}]),
            Value::Array(list),
        )
    };
    let mut objs = base();
    objs.push(svc_with(json!(60)));
    objs.push(eps(&["10.244.2.20", "10.244.2.30"]));
    let mut w = World::new("a", objs);
    let text: Vec<String> = w.comp.groups().map(flows::syntax::format_group).collect();
    assert_eq!(text.len(), 1, "{text:?}");
    assert!(
        text[0].contains("selection_method=hash,fields(nw_src),affinity_timeout=60,"),
        "{text:?}"
    );
    let ids = |w: &World| -> Vec<(u32, String)> {
        let g = w.comp.groups().next().unwrap();
        g.buckets
            .iter()
            .map(|b| (b.id, flows::syntax::format_actions(&b.actions)))
            .collect()
    };
    let before = ids(&w);
    assert_eq!(before[0].0, u32::from(ip("10.244.2.20")));
    // An endpoint that sorts first does not renumber the others.
    w.change(vec![eps(&["10.244.2.10", "10.244.2.20", "10.244.2.30"])]);
    let after = ids(&w);
    assert_eq!(after.len(), 3);
    for b in &before {
        assert!(after.contains(b), "{b:?} kept in {after:?}");
    }
    assert!(w.comp.issues().is_empty(), "{:?}", w.comp.issues());
    // Out of range: reported, default used.
    w.change(vec![svc_with(json!(86401))]);
    assert_eq!(
        w.comp.groups().next().unwrap().affinity_timeout,
        Some(10800)
    );
    let issues: Vec<String> = w.comp.issues().iter().map(|i| i.to_string()).collect();
    assert!(
        issues.iter().any(
            |i| i.contains("spec.sessionAffinityConfig.clientIP.timeoutSeconds")
                && i.contains("86401")
        ),
        "{issues:?}"
    );
    // No sessionAffinityConfig: the default.
    w.change(vec![svc(
        "default",
        "web",
        json!({"clusterIP":"10.96.0.10","sessionAffinity":"ClientIP",
        "ports":[{"name":"http","port":80,"targetPort":8080}]}),
    )]);
    assert_eq!(
        w.comp.groups().next().unwrap().affinity_timeout,
        Some(10800)
    );
    assert!(w.comp.issues().is_empty());
}

#[test]
fn service_selector_without_slices_named_target_port() {
    let mut objs = base();
    objs.push(svc(
        "default",
        "web",
        json!({"clusterIP":"10.96.0.10","selector":{"app":"web"},
        "ports":[{"port":80,"targetPort":"http"},{"port":81,"targetPort":"nope"}]}),
    ));
    let w = World::new("a", objs);
    match w.tcp("default", "client", "10.96.0.10", 80) {
        Verdict::Delivered { tp_dst, .. } => assert_eq!(tp_dst, 8080),
        v => panic!("{v:?}"),
    }
    assert_eq!(
        w.tcp("default", "client", "10.96.0.10", 81),
        Verdict::Rejected
    );
    let issues: Vec<String> = w.comp.issues().iter().map(|i| i.to_string()).collect();
    assert!(
        issues.iter().any(|i| i.contains("Service default/web")
            && i.contains("spec.ports[1].targetPort")
            && i.contains("'nope'")),
        "{issues:?}"
    );
}

// ---- NetworkPolicy: the cases of the Kubernetes documentation ----

fn np_world(policies: Vec<Value>) -> World {
    let mut objs = base();
    objs.push(ns("prod", json!({"project": "myproject"})));
    objs.push(pod(
        "prod",
        "frontend",
        "b",
        "10.244.2.50",
        json!({"role": "frontend"}),
    ));
    objs.push(pod(
        "prod",
        "other",
        "a",
        "10.244.1.51",
        json!({"role": "other"}),
    ));
    objs.extend(policies);
    World::new("a", objs)
}

/// A first packet into local pod `ns/name` from a remote source through
/// the tunnel (sources on other nodes arrive that way).
fn from_tunnel(w: &World, src: &str, to_ns: &str, to: &str, proto: u8, dport: u16) -> Verdict {
    let (_, p) = w.pod(to_ns, to);
    let mut k = packet(&Pkt {
        in_port: TUN,
        dl_src: [2, 0, 0, 0, 0, 9],
        dl_dst: GW_MAC,
        src: ip(src),
        dst: p.ip,
        proto,
        sport: 40000,
        dport,
    });
    k.set(flows::field::Field::TunId, u64::from(p.vlan));
    w.sim.run(&k, NEW).0
}

#[test]
fn np_default_deny_ingress() {
    let w = np_world(vec![np(
        "default",
        "default-deny-ingress",
        json!({"podSelector":{},"policyTypes":["Ingress"]}),
    )]);
    let (v, objs) = w.from("default", "client", "10.244.1.10", 6, 80);
    assert_eq!(v, Verdict::Dropped);
    assert_eq!(
        objs.last().unwrap(),
        "NetworkPolicy default/default-deny-ingress ingress isolation (default deny)"
    );
    // Egress from isolated pods is not affected; other namespaces neither.
    assert!(w.tcp("default", "client", "10.244.2.10", 80).delivered());
    assert!(w.tcp("prod", "other", "10.244.2.50", 80).delivered());
    // Replies of connections the pod opened pass.
    let (port, p) = w.pod("default", "web-1");
    let _ = (port, p);
    let k = packet(&Pkt {
        in_port: TUN,
        dl_src: [2, 0, 0, 0, 0, 9],
        dl_dst: GW_MAC,
        src: ip("10.244.2.10"),
        dst: ip("10.244.1.10"),
        proto: 6,
        sport: 80,
        dport: 40000,
    });
    let mut k = k;
    k.set(flows::field::Field::TunId, 1);
    assert!(w.sim.run(&k, REPLY).0.delivered(), "replies pass");
    assert_eq!(w.sim.run(&k, NEW).0, Verdict::Dropped);
}

#[test]
fn np_default_deny_egress_and_allow_all() {
    let w = np_world(vec![np(
        "default",
        "default-deny-egress",
        json!({"podSelector":{},"policyTypes":["Egress"]}),
    )]);
    assert_eq!(
        w.tcp("default", "client", "10.244.2.10", 80),
        Verdict::Dropped
    );
    assert_eq!(
        w.tcp("default", "client", "10.244.1.10", 80),
        Verdict::Dropped
    );
    assert!(w.tcp("prod", "other", "10.244.1.10", 80).delivered());
    let w = np_world(vec![
        np(
            "default",
            "default-deny-egress",
            json!({"podSelector":{},"policyTypes":["Egress"]}),
        ),
        np(
            "default",
            "allow-all-egress",
            json!({"podSelector":{},"egress":[{}],"policyTypes":["Egress"]}),
        ),
    ]);
    assert!(w.tcp("default", "client", "10.244.2.10", 80).delivered());
}

#[test]
fn np_documentation_example() {
    // The "test-network-policy" of the Kubernetes NetworkPolicy page.
    let w = np_world(vec![np(
        "default",
        "test-network-policy",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                    {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                    {"podSelector": {"matchLabels": {"app": "client"}}}
                ],
                "ports": [{"protocol": "TCP", "port": 6379}]
            }],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"protocol": "TCP", "port": 5978}]}]
        }),
    )]);
    // Ingress to web-1 (local, app=web).
    assert!(
        w.tcp("default", "client", "10.244.1.10", 6379).delivered(),
        "podSelector peer"
    );
    assert_eq!(
        w.tcp("default", "client", "10.244.1.10", 80),
        Verdict::Dropped,
        "wrong port"
    );
    assert!(
        from_tunnel(&w, "10.244.2.50", "default", "web-1", 6, 6379).delivered(),
        "namespaceSelector peer"
    );
    assert!(
        from_tunnel(&w, "172.17.5.5", "default", "web-1", 6, 6379).delivered(),
        "ipBlock"
    );
    assert_eq!(
        from_tunnel(&w, "172.17.1.5", "default", "web-1", 6, 6379),
        Verdict::Dropped,
        "except"
    );
    assert_eq!(
        from_tunnel(&w, "10.244.2.10", "default", "web-1", 6, 6379),
        Verdict::Dropped,
        "web-2 not a peer"
    );
    assert_eq!(
        from_tunnel(&w, "172.17.5.5", "default", "web-1", 17, 6379),
        Verdict::Dropped,
        "UDP"
    );
    // Egress from web-1.
    let (port, p) = w.pod("default", "web-1");
    let out = |dst: &str, dport: u16| {
        let k = packet(&Pkt {
            in_port: port,
            dl_src: p.mac,
            dl_dst: GW_MAC,
            src: p.ip,
            dst: ip(dst),
            proto: 6,
            sport: 1,
            dport,
        });
        w.sim.run(&k, NEW).0
    };
    assert_eq!(out("10.244.1.20", 80), Verdict::Dropped, "egress isolated");
    // 10.0.0.0/24 is not routed by this cluster: allowed by policy, then no route.
    let (v, passes) = w.sim.run(
        &packet(&Pkt {
            in_port: port,
            dl_src: p.mac,
            dl_dst: GW_MAC,
            src: p.ip,
            dst: ip("10.0.0.7"),
            proto: 6,
            sport: 1,
            dport: 5978,
        }),
        NEW,
    );
    assert_eq!(v, Verdict::Dropped);
    let hit = objects_hit(&w.comp, &passes);
    assert!(
        hit.iter()
            .any(|h| h == "NetworkPolicy default/test-network-policy egress rule #0"),
        "{hit:?}"
    );
    // The client (not selected) is unaffected.
    assert!(w.tcp("default", "client", "10.244.2.10", 80).delivered());
}

#[test]
fn np_pod_and_namespace_selector_and() {
    let w = np_world(vec![np(
        "default",
        "and",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"project": "myproject"}},
                                   "podSelector": {"matchLabels": {"role": "frontend"}}}]}]
        }),
    )]);
    assert!(
        from_tunnel(&w, "10.244.2.50", "default", "web-1", 6, 80).delivered(),
        "frontend in prod"
    );
    assert_eq!(
        w.tcp("prod", "other", "10.244.1.10", 80),
        Verdict::Dropped,
        "prod but not frontend"
    );
    assert_eq!(
        w.tcp("default", "client", "10.244.1.10", 80),
        Verdict::Dropped
    );
}

#[test]
fn np_allow_from_namespace_by_name_label() {
    let w = np_world(vec![np(
        "default",
        "from-prod",
        json!({
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prod"}}}]}]
        }),
    )]);
    assert!(w.tcp("prod", "other", "10.244.1.10", 80).delivered());
    assert_eq!(
        w.tcp("default", "client", "10.244.1.10", 80),
        Verdict::Dropped
    );
}

#[test]
fn np_end_port_and_named_port() {
    let w = np_world(vec![
        np(
            "default",
            "range",
            json!({"podSelector":{"matchLabels":{"app":"web"}},
            "ingress":[{"ports":[{"protocol":"TCP","port":32000,"endPort":32768}]}]}),
        ),
        np(
            "default",
            "named",
            json!({"podSelector":{"matchLabels":{"app":"web"}},
            "ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"client"}}}],"ports":[{"port":"http"}]}]}),
        ),
    ]);
    for (port, ok) in [
        (31999, false),
        (32000, true),
        (32500, true),
        (32768, true),
        (32769, false),
    ] {
        assert_eq!(
            w.tcp("prod", "other", "10.244.1.10", port).delivered(),
            ok,
            "port {port}"
        );
    }
    assert!(
        w.tcp("default", "client", "10.244.1.10", 8080).delivered(),
        "named port http = 8080"
    );
    assert_eq!(
        w.tcp("prod", "other", "10.244.1.10", 8080),
        Verdict::Dropped,
        "named port only for the client"
    );
    assert_eq!(
        w.tcp("default", "client", "10.244.1.10", 80),
        Verdict::Dropped
    );
}

#[test]
fn np_egress_named_port_resolved_on_peer() {
    let w = np_world(vec![np(
        "default",
        "egress-dns",
        json!({
            "podSelector": {"matchLabels": {"app": "client"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"protocol": "UDP", "port": "dns"}]}]
        }),
    )]);
    assert!(w
        .from("default", "client", "10.244.2.10", 17, 5353)
        .0
        .delivered());
    assert_eq!(
        w.from("default", "client", "10.244.2.10", 17, 53).0,
        Verdict::Dropped
    );
    assert_eq!(
        w.from("default", "client", "10.244.2.10", 6, 5353).0,
        Verdict::Dropped
    );
}

#[test]
fn np_flows_grow_additively() {
    // 20 policies each allowing from the same 5 client pods on port 80 to
    // the same 3 pods: clause flows are shared, not multiplied.
    let mut objs = base();
    for i in 0..5 {
        objs.push(pod(
            "default",
            &format!("c{i}"),
            "b",
            &format!("10.244.2.{}", 100 + i),
            json!({"app": "client"}),
        ));
    }
    for i in 0..20 {
        objs.push(np("default", &format!("p{i}"), json!({"podSelector":{"matchLabels":{"app":"web"}},
            "ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"client"}}}],"ports":[{"port":80}]}]})));
    }
    let w = World::new("a", objs);
    let n = w.comp.unit(&Unit::Policies).unwrap().flows.len();
    // 1 local web pod + 6 client IPs + 1 port (shared) + 20 conj_id flows + 1 isolation.
    assert_eq!(n, 1 + 6 + 1 + 20 + 1, "{n}");
    assert!(w.tcp("default", "client", "10.244.1.10", 80).delivered());
}

#[test]
fn np_bad_rules_reported_rest_compiles() {
    let w = np_world(vec![
        np(
            "default",
            "bad",
            json!({"podSelector":{"matchLabels":{"app":"web"}},
            "ingress":[
                {"from":[{"podSelector":{"matchExpressions":[{"key":"a","operator":"Equals","values":["x"]}]}}]},
                {"from":[{"ipBlock":{"cidr":"10.0.0.0/33"}}]},
                {"from":[{"podSelector":{"matchLabels":{"app":"client"}}}]}
            ]}),
        ),
        np(
            "default",
            "empty-sel",
            json!({"podSelector":{"matchLabels":{"app":"nothing"}}}),
        ),
    ]);
    let issues: Vec<String> = w.comp.issues().iter().map(|i| i.to_string()).collect();
    assert!(
        issues
            .iter()
            .any(|i| i.contains("NetworkPolicy default/bad")
                && i.contains("spec.ingress[0].from[0].podSelector.matchExpressions[0]")
                && i.contains("Equals")),
        "{issues:?}"
    );
    assert!(
        issues.iter().any(
            |i| i.contains("spec.ingress[1].from[0].ipBlock.cidr") && i.contains("10.0.0.0/33")
        ),
        "{issues:?}"
    );
    assert!(issues.iter().any(|i| i.contains("NetworkPolicy default/empty-sel") && i.contains("selects no pods")), "{issues:?}");
    // The good rule still allows; the bad ones allow nothing.
    assert!(w.tcp("default", "client", "10.244.1.10", 80).delivered());
    assert_eq!(w.tcp("prod", "other", "10.244.1.10", 80), Verdict::Dropped);
}

#[test]
fn np_change_is_atomic_delta() {
    let mut w = np_world(vec![]);
    assert!(w.tcp("default", "client", "10.244.1.10", 80).delivered());
    let d = w
        .change(vec![np(
            "default",
            "only-client",
            json!({"podSelector":{"matchLabels":{"app":"web"}},
            "ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"client"}}}]}]}),
        )])
        .clone();
    // Isolation and allow arrive in the same batch.
    assert!(d.mods.iter().all(|m| matches!(m, FlowMod::Add(_))));
    assert!(w.tcp("default", "client", "10.244.1.10", 80).delivered());
    assert_eq!(w.tcp("prod", "other", "10.244.1.10", 80), Verdict::Dropped);
    let d = w
        .delete(ObjectRef::new(
            Kind::NetworkPolicy,
            "default",
            "only-client",
        ))
        .clone();
    assert!(d.mods.iter().all(|m| matches!(m, FlowMod::Delete(_))));
    assert!(w.tcp("prod", "other", "10.244.1.10", 80).delivered());
    // A new pod matching the peer selector is allowed after its update.
    w.change(vec![np(
        "default",
        "only-client",
        json!({"podSelector":{"matchLabels":{"app":"web"}},
        "ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"client"}}}]}]}),
    )]);
    let d = w
        .change(vec![pod(
            "default",
            "client-2",
            "b",
            "10.244.2.77",
            json!({"app": "client"}),
        )])
        .clone();
    assert!(d.mods.len() <= 2, "one peer flow (and nothing else): {d:?}");
    assert!(from_tunnel(&w, "10.244.2.77", "default", "web-1", 6, 80).delivered());
}

#[test]
fn cookies_select_objects_and_names_are_stable() {
    let mut objs = base();
    objs.extend(web_service());
    let mut w = World::new("a", objs);
    let c = w
        .comp
        .cookie_of(&ObjectRef::new(Kind::Service, "default", "web"))
        .unwrap();
    let flows: Vec<&FlowSpec> = w
        .comp
        .flows()
        .filter(|f| f.cookie & layout::COOKIE_OBJECT_MASK == c)
        .collect();
    assert_eq!(flows.len(), 2);
    assert_eq!(w.comp.cookie_names()[&c], "Service default/web");
    // An unrelated change does not renumber the service.
    w.change(vec![svc(
        "default",
        "other",
        json!({"clusterIP":"10.96.0.99","ports":[{"port":1}]}),
    )]);
    assert_eq!(
        w.comp
            .cookie_of(&ObjectRef::new(Kind::Service, "default", "web")),
        Some(c)
    );
    // The bundle text parses back in ferrovsd's syntax.
    let text = bundle_text(&w.last);
    assert!(text.contains("name 0x"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("add cookie=0x4")),
        "{text}"
    );
}

#[test]
fn full_recompile_is_a_no_op_delta() {
    let mut objs = base();
    objs.extend(web_service());
    objs.push(np(
        "default",
        "x",
        json!({"podSelector":{},"ingress":[{"from":[{"podSelector":{}}]}]}),
    ));
    let mut w = World::new("a", objs);
    let d = w.comp.full(&w.snap, &w.ports);
    assert!(d.is_empty(), "{}", bundle_text(&d));
}

#[test]
fn np_cross_tenant_only_when_a_policy_allows() {
    let mut objs = base();
    objs.push(pod(
        "red",
        "r2",
        "a",
        "10.244.1.31",
        json!({"app": "other"}),
    ));
    objs.push(pod("red", "r3", "b", "10.244.2.31", json!({"app": "web"})));
    let mut w = World::new("a", objs);
    assert_eq!(w.tcp("red", "r1", "10.244.1.10", 80), Verdict::Dropped);
    // default/web-1 admits red pods labelled app=web on port 80.
    w.change(vec![np("default", "from-red", json!({
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "red"}},
                               "podSelector": {"matchLabels": {"app": "web"}}}],
                     "ports": [{"port": 80}]}]
    }))]);
    let (web1, web1_pod) = w.pod("default", "web-1");
    let (v, objs) = w.from("red", "r1", "10.244.1.10", 6, 80);
    assert!(delivered_to(web1)(&v), "{v:?} {objs:?}");
    assert!(
        objs.iter()
            .any(|o| o.contains("NetworkPolicy default/from-red ingress rule #0")),
        "{objs:?}"
    );
    assert_eq!(
        w.tcp("red", "r1", "10.244.1.10", 81),
        Verdict::Dropped,
        "port"
    );
    assert_eq!(
        w.tcp("red", "r2", "10.244.1.10", 80),
        Verdict::Dropped,
        "not a peer"
    );
    assert_eq!(
        w.tcp("default", "client", "10.244.1.10", 80),
        Verdict::Dropped,
        "isolated now"
    );
    // From the other node: arrives with VNI 10 and is admitted.
    let mut k = packet(&Pkt {
        in_port: TUN,
        dl_src: [2, 0, 0, 0, 0, 9],
        dl_dst: GW_MAC,
        src: ip("10.244.2.31"),
        dst: ip("10.244.1.10"),
        proto: 6,
        sport: 40000,
        dport: 80,
    });
    k.set(flows::field::Field::TunId, 10);
    assert!(delivered_to(web1)(&w.sim.run(&k, NEW).0));
    // Replies go back into the red tenant (locally and over the tunnel)...
    let reply = |dst: &str| {
        packet(&Pkt {
            in_port: web1,
            dl_src: web1_pod.mac,
            dl_dst: GW_MAC,
            src: web1_pod.ip,
            dst: ip(dst),
            proto: 6,
            sport: 80,
            dport: 40000,
        })
    };
    let (r1, _) = w.pod("red", "r1");
    assert!(delivered_to(r1)(&w.sim.run(&reply("10.244.1.30"), REPLY).0));
    match w.sim.run(&reply("10.244.2.31"), REPLY).0 {
        Verdict::Delivered { port, tunnel, .. } => {
            assert_eq!(port, TUN);
            assert_eq!(
                tunnel,
                Some((ip("192.168.0.2"), 10)),
                "VNI of the red tenant"
            );
        }
        v => panic!("{v:?}"),
    }
    // ...but web-1 cannot open connections into red.
    assert_eq!(w.sim.run(&reply("10.244.1.30"), NEW).0, Verdict::Dropped);
    // Deleting the policy closes the door again.
    w.delete(ObjectRef::new(Kind::NetworkPolicy, "default", "from-red"));
    assert_eq!(w.tcp("red", "r1", "10.244.1.10", 80), Verdict::Dropped);
}

#[test]
fn trunk_transport_tags_tenants_with_their_vlan() {
    const TRUNK: PortNo = 90;
    let mut w = World::new("a", base());
    let mut comp = Compiler::new(Config {
        node: "a".into(),
        tunnel_port: Some(TUN),
        trunk_port: Some(TRUNK),
        gateway_mac: GW_MAC,
    });
    let d = comp.full(&w.snap, &w.ports);
    w.sim = Sim::new();
    w.sim
        .set_ports(w.ports.values().copied().chain([TUN, TRUNK]));
    w.sim.apply(&d).unwrap();
    let node_a = layout::node_mac(ip("192.168.0.1"));
    let node_b = layout::node_mac(ip("192.168.0.2"));
    for (ns, name, vlan) in [("red", "r1", 10u16), ("default", "client", 1)] {
        let (port, p) = w.pod(ns, name);
        let k = packet(&Pkt {
            in_port: port,
            dl_src: p.mac,
            dl_dst: GW_MAC,
            src: p.ip,
            dst: ip("10.244.2.10"),
            proto: 6,
            sport: 1,
            dport: 80,
        });
        let (v, passes) = w.sim.run(&k, NEW);
        assert!(delivered_to(TRUNK)(&v), "{v:?}");
        let acts = &passes.last().unwrap().x.actions;
        use flows::xlate::DpAction;
        assert!(
            acts.contains(&DpAction::SetField(
                flows::field::Field::DlDst,
                flows::key::mac_to_u64(node_b)
            )),
            "{acts:?}"
        );
        assert!(
            acts.iter().any(
                |a| matches!(a, DpAction::PushVlan(t) | DpAction::SetVlan(t) if t & 0xfff == vlan)
            ),
            "{acts:?}"
        );
        assert!(
            !acts.iter().any(|a| matches!(a, DpAction::SetTunnel { .. })),
            "{acts:?}"
        );
    }
    // Trunk ingress: tagged with red's VLAN, addressed to this node.
    let (r1, _) = w.pod("red", "r1");
    let mut k = packet(&Pkt {
        in_port: TRUNK,
        dl_src: node_b,
        dl_dst: node_a,
        src: ip("10.244.2.31"),
        dst: ip("10.244.1.30"),
        proto: 6,
        sport: 1,
        dport: 80,
    });
    k.set(flows::field::Field::VlanTci, 0x1000 | 10);
    assert!(delivered_to(r1)(&w.sim.run(&k, NEW).0));
    // The default tenant's tag does not reach a red pod.
    k.set(flows::field::Field::VlanTci, 0x1000 | 1);
    assert_eq!(w.sim.run(&k, NEW).0, Verdict::Dropped);
    // Nor does a frame for another node's MAC.
    k.set(flows::field::Field::VlanTci, 0x1000 | 10);
    k.set(flows::field::Field::DlDst, flows::key::mac_to_u64(node_b));
    assert_eq!(w.sim.run(&k, NEW).0, Verdict::Dropped);
}
