//! Services: ClusterIP, NodePort and external IPs load-balanced over ready
//! endpoints with a select group whose buckets DNAT through conntrack
//! (replies are un-NATed by the `ct(nat)` in the conntrack table).
//!
//! Endpoints come from the Service's EndpointSlices (ready endpoints only:
//! `conditions.ready` absent or true). A Service with a selector and no
//! EndpointSlices at all (manifest mode, where no controller writes them)
//! gets its endpoints from the ready pods its selector matches, with named
//! `targetPort`s resolved per pod, as the EndpointSlice controller would.
//!
//! - `sessionAffinity: ClientIP`: the group hashes on the client IP only, so
//!   one client keeps its endpoint while the endpoint set is unchanged.
//! - `externalTrafficPolicy: Local`: NodePort and external IPs use only
//!   endpoints on this node; with none, that traffic is dropped (as
//!   kube-proxy does); ClusterIP traffic still uses all endpoints.
//! - No endpoints: new connections are rejected (TCP RST / ICMP port
//!   unreachable) instead of disappearing.

use std::net::Ipv4Addr;

use flows::action::{Action, Bucket, Group, GroupType, Nat, NatKind};
use flows::field::{ipproto, Field};
use flows::key::ct_state;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::layout::*;
use super::{finish, Ids, Input, Issue, UnitOutput};
use crate::snapshot::{Kind, ObjectRef};

/// Priority of service flows.
const PRIO: u16 = 200;

/// One backend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    ip: Ipv4Addr,
    port: u16,
    node: String,
}

pub(super) fn service(input: &Input<'_>, ids: &mut Ids, ns: &str, name: &str) -> UnitOutput {
    let mut out = UnitOutput::default();
    let Some(svc) = input.snap.service(ns, name) else {
        return out;
    };
    let r = ObjectRef::new(Kind::Service, ns, name);
    let Some(spec) = svc.spec.as_ref() else {
        return out;
    };
    let vlan = input.model.ns_vlan(ns);
    let mut vips: Vec<Ipv4Addr> = Vec::new();
    let cips = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|c| vec![c]))
        .unwrap_or_default();
    for (i, c) in cips.iter().enumerate() {
        if c == "None" || c.is_empty() || c.contains(':') {
            continue;
        }
        match c.parse::<Ipv4Addr>() {
            Ok(ip) => vips.push(ip),
            Err(_) => out.issues.push(Issue {
                object: r.clone(),
                field: format!("spec.clusterIPs[{i}]"),
                message: format!("'{c}' is not an IPv4 address"),
            }),
        }
    }
    let mut ext: Vec<Ipv4Addr> = Vec::new();
    for (i, e) in spec.external_ips.iter().flatten().enumerate() {
        match e.parse::<Ipv4Addr>() {
            Ok(ip) => ext.push(ip),
            Err(_) if e.contains(':') => {}
            Err(_) => out.issues.push(Issue {
                object: r.clone(),
                field: format!("spec.externalIPs[{i}]"),
                message: format!("'{e}' is not an IPv4 address"),
            }),
        }
    }
    for ing in svc
        .status
        .iter()
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
    {
        if let Some(ip) = ing.ip.as_ref().and_then(|t| t.parse::<Ipv4Addr>().ok()) {
            ext.push(ip);
        }
    }
    let node_ip = input.model.nodes.get(&input.cfg.node).and_then(|n| n.ip);
    let local_only = spec.external_traffic_policy.as_deref() == Some("Local");
    let affinity = spec.session_affinity.as_deref() == Some("ClientIP");
    for (pi, sp) in spec.ports.iter().flatten().enumerate() {
        let proto_name = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        let proto = match proto_name.as_str() {
            "TCP" => ipproto::TCP,
            "UDP" => ipproto::UDP,
            "SCTP" => {
                out.issues.push(Issue {
                    object: r.clone(),
                    field: format!("spec.ports[{pi}].protocol"),
                    message: "SCTP is not supported by the datapath; port skipped".into(),
                });
                continue;
            }
            other => {
                out.issues.push(Issue {
                    object: r.clone(),
                    field: format!("spec.ports[{pi}].protocol"),
                    message: format!("unknown protocol '{other}'; port skipped"),
                });
                continue;
            }
        };
        let Ok(port) = u16::try_from(sp.port) else {
            out.issues.push(Issue {
                object: r.clone(),
                field: format!("spec.ports[{pi}].port"),
                message: format!("{} is not a port number", sp.port),
            });
            continue;
        };
        let eps = endpoints(input, svc, sp, pi, &proto_name, &r, &mut out.issues);
        let c = ids.cookie(CookieKind::Service, &r, pi as u32 + 1);
        let all = target(
            ids,
            ns,
            name,
            pi,
            false,
            vlan,
            &eps,
            affinity,
            &mut out.groups,
        );
        let match_base = |dst: Ipv4Addr, p: u16| {
            F::new(T_SERVICE, PRIO, c)
                .mm(
                    Field::CtState,
                    ct_state::NEW | ct_state::TRK,
                    ct_state::NEW | ct_state::TRK,
                )
                .ip()
                .m(Field::NwProto, u64::from(proto))
                .m(REG_TENANT, u64::from(vlan))
                .addr(Field::NwDst, dst)
                .m(Field::TpDst, u64::from(p))
        };
        for &vip in &vips {
            out.flows.push(match_base(vip, port).a(all.clone()).done());
        }
        let external = if local_only {
            let local: Vec<Endpoint> = eps
                .iter()
                .filter(|e| e.node == input.cfg.node)
                .cloned()
                .collect();
            if local.is_empty() {
                None // dropped, as kube-proxy does
            } else {
                Some(target(
                    ids,
                    ns,
                    name,
                    pi,
                    true,
                    vlan,
                    &local,
                    affinity,
                    &mut out.groups,
                ))
            }
        } else {
            Some(all.clone())
        };
        let ext_action = |b: F| match &external {
            Some(a) => b.a(a.clone()).done(),
            None => b.done(),
        };
        for &ip in &ext {
            out.flows.push(ext_action(match_base(ip, port)));
        }
        if let (Some(np), Some(nip)) = (sp.node_port, node_ip) {
            match u16::try_from(np) {
                Ok(np) => out.flows.push(ext_action(match_base(nip, np))),
                Err(_) => out.issues.push(Issue {
                    object: r.clone(),
                    field: format!("spec.ports[{pi}].nodePort"),
                    message: format!("{np} is not a port number"),
                }),
            }
        }
    }
    finish(out)
}

/// The action sending a new connection to `eps`: a group, or `reject`.
#[allow(clippy::too_many_arguments)]
fn target(
    ids: &mut Ids,
    ns: &str,
    name: &str,
    pi: usize,
    local: bool,
    vlan: u16,
    eps: &[Endpoint],
    affinity: bool,
    groups: &mut Vec<Group>,
) -> Action {
    if eps.is_empty() {
        return Action::Reject;
    }
    let id = ids
        .groups
        .get(&(ns.to_string(), name.to_string(), pi, local));
    let buckets = eps
        .iter()
        .enumerate()
        .map(|(i, e)| Bucket {
            id: i as u32,
            weight: 100,
            actions: vec![ct(
                true,
                vlan,
                Some(T_EGRESS),
                Some(Nat::to(NatKind::Dst, e.ip, e.port)),
            )],
        })
        .collect();
    groups.push(Group {
        id,
        kind: GroupType::Select,
        buckets,
        selection: affinity.then(|| vec![Field::NwSrc]),
    });
    Action::Group(id)
}

/// Ready endpoints of service port `sp`, sorted and deduplicated.
fn endpoints(
    input: &Input<'_>,
    svc: &Service,
    sp: &ServicePort,
    pi: usize,
    proto: &str,
    r: &ObjectRef,
    issues: &mut Vec<Issue>,
) -> Vec<Endpoint> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("");
    let name = svc.metadata.name.as_deref().unwrap_or("");
    let mut eps = Vec::new();
    let mut has_slices = false;
    for slice in input.snap.endpoint_slices_for(ns, name) {
        has_slices = true;
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or("")
                && p.protocol.as_deref().unwrap_or("TCP") == proto
        }) else {
            continue;
        };
        let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for e in slice.endpoints.iter().flatten() {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<Ipv4Addr>() {
                    eps.push(Endpoint {
                        ip,
                        port,
                        node: e.node_name.clone().unwrap_or_default(),
                    });
                }
            }
        }
    }
    let selector = svc.spec.as_ref().and_then(|s| s.selector.clone());
    if let (false, Some(sel)) = (has_slices, selector) {
        let mut missing = Vec::new();
        for p in input.model.pods.values() {
            if p.namespace != ns || !p.ready || sel.iter().any(|(k, v)| p.labels.get(k) != Some(v))
            {
                continue;
            }
            let port = match &sp.target_port {
                None => u16::try_from(sp.port).ok(),
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                Some(IntOrString::String(n)) => match n.parse::<u16>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        let got = p.named_port(n, proto);
                        if got.is_none() {
                            missing.push(p.name.clone());
                        }
                        got
                    }
                },
            };
            if let Some(port) = port {
                eps.push(Endpoint {
                    ip: p.ip,
                    port,
                    node: p.node.clone(),
                });
            }
        }
        if !missing.is_empty() {
            let port_name = match &sp.target_port {
                Some(IntOrString::String(n)) => n.clone(),
                _ => String::new(),
            };
            issues.push(Issue {
                object: r.clone(),
                field: format!("spec.ports[{pi}].targetPort"),
                message: format!(
                    "pod(s) {} have no {proto} container port named '{port_name}'; they are not endpoints",
                    missing.join(", ")
                ),
            });
        }
    }
    eps.sort();
    eps.dedup();
    eps
}
