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
//! - `sessionAffinity: ClientIP`: the group hashes on the client IP and
//!   carries `affinity_timeout` (`sessionAffinityConfig.clientIP.timeoutSeconds`,
//!   default 10800), so one client keeps its endpoint, even when endpoints
//!   are added, until it opens no new connection for that long. Bucket ids
//!   follow the endpoint (its address), not its position.
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
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP"))
        .then(|| affinity_timeout(spec, &r, &mut out.issues));
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
    affinity: Option<u32>,
    groups: &mut Vec<Group>,
) -> Action {
    if eps.is_empty() {
        return Action::Reject;
    }
    let id = ids
        .groups
        .get(&(ns.to_string(), name.to_string(), pi, local));
    let ids = bucket_ids(eps);
    let buckets = eps
        .iter()
        .zip(ids)
        .map(|(e, id)| Bucket {
            id,
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
        selection: affinity.map(|_| vec![Field::NwSrc]),
        affinity_timeout: affinity,
    });
    Action::Group(id)
}

/// Bucket ids that follow the endpoint rather than its position, so that
/// session affinity (which remembers bucket ids) keeps a client on its
/// endpoint when other endpoints come or go: the endpoint's IPv4 address
/// as a number, or the next free id when two endpoints share an address.
fn bucket_ids(eps: &[Endpoint]) -> Vec<u32> {
    const MAX_ID: u32 = 0xffff_ff00;
    let mut ids: Vec<u32> = Vec::with_capacity(eps.len());
    for e in eps {
        let mut id = u32::from(e.ip).min(MAX_ID);
        while ids.contains(&id) {
            id = if id >= MAX_ID { 0 } else { id + 1 };
        }
        ids.push(id);
    }
    ids
}

/// `spec.sessionAffinityConfig.clientIP.timeoutSeconds` of a ClientIP
/// Service: 1..=86400, default 10800 (3 hours) as in Kubernetes; an invalid
/// value is reported and replaced by the default.
fn affinity_timeout(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    r: &ObjectRef,
    issues: &mut Vec<Issue>,
) -> u32 {
    const DEFAULT: u32 = 10_800;
    let Some(t) = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
    else {
        return DEFAULT;
    };
    match u32::try_from(t) {
        Ok(t @ 1..=86_400) => t,
        _ => {
            issues.push(Issue {
                object: r.clone(),
                field: "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                message: format!(
                    "{t} is not between 1 and 86400 seconds; using the default {DEFAULT}"
                ),
            });
            DEFAULT
        }
    }
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
