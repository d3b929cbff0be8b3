//! NetworkPolicy with Kubernetes semantics, compiled to conjunctive matches.
//!
//! - A local pod is isolated for ingress (egress) once any policy selecting
//!   it has that policy type (`policyTypes`, defaulting to Ingress, plus
//!   Egress when the policy has egress rules). Isolation is a drop flow for
//!   the pod at priority 100 in the INGRESS (EGRESS) table.
//! - Every rule allows at priority 200 with up to three clauses: the pods it
//!   applies to (tenant + IP), the peers (pod IPs, or ipBlock CIDRs with the
//!   `except` ranges cut out), the ports (protocol, port or `port..endPort`
//!   as masked matches). Each member of a clause is one flow with a
//!   `conjunction(id,k/n)` action; a `conj_id=id` flow allows. Flows for
//!   the same member (the same pod, peer or port in many rules) are merged
//!   into one flow with several conjunction actions, so the table grows with
//!   the sum, not the product, of the sets. A rule with a single clause
//!   allows with direct flows at priority 210.
//! - Rules OR together because any complete conjunction allows. A peer with
//!   podSelector and namespaceSelector selects pods matching both. Named
//!   ports resolve per pod: on the pods the rule applies to for ingress, on
//!   the peer pods for egress (merged into that clause).
//! - Replies and established connections skip both tables (see the
//!   infrastructure flows), so allowed connections work both ways.
//!
//! Bad rules (a selector with an unknown operator, a malformed CIDR, a port
//! out of range) are reported and allow nothing; the policy still isolates.

use std::collections::{BTreeMap, BTreeSet};

use flows::action::Action;
use flows::field::{ipproto, Field};
use flows::pipeline::FlowSpec;
use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::layout::*;
use super::{Ids, Input, Issue, UnitOutput};
use crate::model::{selector_matches, PodInfo};
use crate::snapshot::{Kind, ObjectRef};

/// Priority of isolation (default deny) flows.
pub const PRIO_ISOLATE: u16 = 100;
/// Priority of conjunctive allow flows.
pub const PRIO_CONJ: u16 = 200;
/// Priority of single-clause allow flows.
pub const PRIO_DIRECT: u16 = 210;
/// Cookie detail of isolation flows.
pub const DETAIL_ISOLATION: u32 = 0xffff;
/// Cookie detail bit marking egress rules.
pub const DETAIL_EGRESS: u32 = 0x1_0000;

/// One port selector, resolved: protocol, and a masked tp_dst (None: all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PortMatch {
    proto: u8,
    port: Option<(u16, u16)>,
}

/// A member of a clause: a set of match fields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Member {
    /// (field, value, mask)
    fields: Vec<(Field, u64, u64)>,
}

impl Member {
    fn with(mut self, f: Field, v: u64, m: u64) -> Member {
        self.fields.push((f, v, m));
        self
    }
}

fn full(f: Field) -> u64 {
    if f.width() >= 64 {
        u64::MAX
    } else {
        (1u64 << f.width()) - 1
    }
}

fn net_member(field: Field, net: Ipv4Net) -> Member {
    Member { fields: vec![] }.with(
        field,
        u64::from(u32::from(net.network())),
        u64::from(u32::from(net.netmask())),
    )
}

fn port_member(base: Member, p: PortMatch) -> Member {
    let mut m = base.with(Field::NwProto, u64::from(p.proto), 0xff);
    if let Some((v, mask)) = p.port {
        m = m.with(Field::TpDst, u64::from(v), u64::from(mask));
    }
    m
}

/// `(id, clause, n_clauses)` of a conjunction action.
type ConjRef = (u32, u8, u8);

/// A rule's peers and ports, either possibly absent (= any).
type RuleRefs<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// Collects flows, merging conjunction actions of identical members.
#[derive(Default)]
struct Builder {
    /// (table, member) -> (cookie, conjunction actions)
    conj: BTreeMap<(u8, Member), (u64, BTreeSet<ConjRef>)>,
    flows: Vec<FlowSpec>,
}

impl Builder {
    fn conj_member(&mut self, table: u8, m: Member, cookie: u64, id: u32, k: u8, n: u8) {
        let e = self
            .conj
            .entry((table, m))
            .or_insert((cookie, BTreeSet::new()));
        e.1.insert((id, k, n));
    }

    fn finish(mut self) -> Vec<FlowSpec> {
        for ((table, m), (cookie, acts)) in self.conj {
            let mut f = F::new(table, PRIO_CONJ, cookie).ip();
            for (field, v, mask) in m.fields {
                f = f.mm(field, v, mask);
            }
            for (id, clause, n_clauses) in acts {
                f = f.a(Action::Conjunction {
                    id,
                    clause,
                    n_clauses,
                });
            }
            self.flows.push(f.done());
        }
        self.flows
    }
}

/// The clauses of one rule part.
struct RulePart {
    /// Applied-to members (local pods; may include ports for named ports).
    applied: Vec<Member>,
    /// Peer members; `None` = any peer.
    peers: Option<Vec<Member>>,
    /// Port members; `None` = any port.
    ports: Option<Vec<Member>>,
}

pub(super) fn policies(input: &Input<'_>, ids: &mut Ids) -> UnitOutput {
    let mut out = UnitOutput::default();
    let snap = input.snap;
    let live: BTreeSet<(String, String)> = snap
        .network_policies()
        .map(|p| {
            (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    ids.conj
        .retain(|k| live.contains(&(k.0.clone(), k.1.clone())));
    let mut b = Builder::default();
    // pod -> first policy isolating it, per direction
    let mut isolated: [BTreeMap<(String, String), u64>; 2] = [BTreeMap::new(), BTreeMap::new()];
    for np in snap.network_policies() {
        compile_policy(input, ids, np, &mut b, &mut isolated, &mut out.issues);
    }
    for (dir, iso) in isolated.iter().enumerate() {
        let egress = dir == 1;
        for (key, cookie) in iso {
            let Some(p) = input.model.pods.get(key) else {
                continue;
            };
            let (table, field) = if egress {
                (T_EGRESS, Field::NwSrc)
            } else {
                (T_INGRESS, Field::NwDst)
            };
            b.flows.push(
                F::new(table, PRIO_ISOLATE, *cookie)
                    .ip()
                    .m(REG_TENANT, u64::from(p.vlan))
                    .addr(field, p.ip)
                    .done(),
            );
        }
    }
    out.flows = b.finish();
    super::finish(out)
}

fn compile_policy(
    input: &Input<'_>,
    ids: &mut Ids,
    np: &NetworkPolicy,
    b: &mut Builder,
    isolated: &mut [BTreeMap<(String, String), u64>; 2],
    issues: &mut Vec<Issue>,
) {
    let ns = np.metadata.namespace.clone().unwrap_or_default();
    let name = np.metadata.name.clone().unwrap_or_default();
    let r = ObjectRef::new(Kind::NetworkPolicy, &ns, &name);
    let Some(spec) = np.spec.as_ref() else { return };
    let mut issue = |field: String, message: String| {
        issues.push(Issue {
            object: r.clone(),
            field,
            message,
        })
    };
    let selected: Vec<&PodInfo> =
        match select_pods(input, &ns, &spec.pod_selector.clone().unwrap_or_default()) {
            Ok(v) => v,
            Err(e) => {
                issue(format!("spec.podSelector.{e}"), "policy ignored".into());
                return;
            }
        };
    let local: Vec<&PodInfo> = selected
        .iter()
        .copied()
        .filter(|p| p.node == input.cfg.node)
        .collect();
    if selected.is_empty() {
        issue(
            "spec.podSelector".into(),
            format!("selects no pods in namespace {ns} (yet)"),
        );
    }
    let types: Vec<String> = spec.policy_types.clone().unwrap_or_else(|| {
        let mut t = vec!["Ingress".to_string()];
        if spec.egress.is_some() {
            t.push("Egress".into());
        }
        t
    });
    for (dir, egress) in [(0usize, false), (1, true)] {
        let tname = if egress { "Egress" } else { "Ingress" };
        if !types.iter().any(|t| t == tname) {
            continue;
        }
        let iso_cookie = ids.cookie(
            CookieKind::Policy,
            &r,
            DETAIL_ISOLATION | if egress { DETAIL_EGRESS } else { 0 },
        );
        for p in &local {
            isolated[dir].entry(p.key()).or_insert(iso_cookie);
        }
        if local.is_empty() {
            continue;
        }
        let rules: Vec<RuleRefs<'_>> = if egress {
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                .collect()
        } else {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                .collect()
        };
        let (table, self_field, peer_field) = if egress {
            (T_EGRESS, Field::NwSrc, Field::NwDst)
        } else {
            (T_INGRESS, Field::NwDst, Field::NwSrc)
        };
        let sect = if egress { "egress" } else { "ingress" };
        let peer_key = if egress { "to" } else { "from" };
        for (ri, (peers, ports)) in rules.into_iter().enumerate() {
            let path = format!("spec.{sect}[{ri}]");
            // Peers: pod IPs (with the pod, for egress named ports) or CIDRs.
            let mut peer_pods: Vec<&PodInfo> = Vec::new();
            let mut peer_nets: Vec<Ipv4Net> = Vec::new();
            let any_peer = peers.is_none_or(|p| p.is_empty());
            let mut bad = false;
            for (pi, peer) in peers.into_iter().flatten().enumerate() {
                match resolve_peer(input, &ns, peer) {
                    Ok(Resolved::Pods(v)) => {
                        if v.is_empty() {
                            issue(
                                format!("{path}.{peer_key}[{pi}]"),
                                "selects no pods (yet)".into(),
                            );
                        }
                        peer_pods.extend(v)
                    }
                    Ok(Resolved::Nets(v)) => peer_nets.extend(v),
                    Err(e) => {
                        issue(
                            format!("{path}.{peer_key}[{pi}].{}", e.0),
                            format!("{}; rule allows nothing", e.1),
                        );
                        bad = true;
                    }
                }
            }
            // Ports: numeric (incl. ranges) and named.
            let mut numeric: Vec<PortMatch> = Vec::new();
            let mut named: Vec<(u8, String)> = Vec::new();
            let any_port = ports.is_none_or(|p| p.is_empty());
            for (qi, port) in ports.into_iter().flatten().enumerate() {
                match resolve_port(port) {
                    Ok(Port::Numeric(v)) => numeric.extend(v),
                    Ok(Port::Named(proto, n)) => named.push((proto, n)),
                    Err(e) => {
                        issue(
                            format!("{path}.ports[{qi}].{}", e.0),
                            format!("{}; rule allows nothing", e.1),
                        );
                        bad = true;
                    }
                }
            }
            if bad {
                continue;
            }
            peer_pods.sort_by_key(|p| (p.vlan, p.ip));
            peer_pods.dedup_by_key(|p| (p.vlan, p.ip));
            if !egress {
                let cookie = ids.cookie(CookieKind::Policy, &r, ri as u32 + 1);
                cross_tenant_routes(b, cookie, &local, &peer_pods);
            }
            let self_member = |p: &PodInfo| {
                Member { fields: vec![] }
                    .with(REG_TENANT, u64::from(p.vlan), full(REG_TENANT))
                    .with(self_field, u64::from(u32::from(p.ip)), 0xffff_ffff)
            };
            let peer_members = |pods: &[&PodInfo], nets: &[Ipv4Net]| -> Vec<Member> {
                let mut v: Vec<Member> = pods
                    .iter()
                    .map(|p| net_member(peer_field, Ipv4Net::from(p.ip)))
                    .collect();
                v.extend(nets.iter().map(|n| net_member(peer_field, *n)));
                v
            };
            let mut parts: Vec<RulePart> = Vec::new();
            if any_port || !numeric.is_empty() {
                parts.push(RulePart {
                    applied: local.iter().map(|p| self_member(p)).collect(),
                    peers: (!any_peer).then(|| peer_members(&peer_pods, &peer_nets)),
                    ports: (!any_port).then(|| {
                        numeric
                            .iter()
                            .map(|p| port_member(Member { fields: vec![] }, *p))
                            .collect()
                    }),
                });
            }
            if !named.is_empty() {
                if egress {
                    // Resolved on the peer pods; ipBlock peers and "any peer"
                    // cannot have named ports resolved except on known pods.
                    let candidates: Vec<&PodInfo> = if any_peer {
                        input.model.pods.values().collect()
                    } else {
                        peer_pods.clone()
                    };
                    let mut peers = Vec::new();
                    for p in candidates {
                        for (proto, n) in &named {
                            if let Some(port) = p.named_port(n, proto_name(*proto)) {
                                peers.push(port_member(
                                    net_member(peer_field, Ipv4Net::from(p.ip)),
                                    PortMatch {
                                        proto: *proto,
                                        port: Some((port, 0xffff)),
                                    },
                                ));
                            }
                        }
                    }
                    parts.push(RulePart {
                        applied: local.iter().map(|p| self_member(p)).collect(),
                        peers: Some(peers),
                        ports: None,
                    });
                } else {
                    let mut applied = Vec::new();
                    for p in &local {
                        for (proto, n) in &named {
                            if let Some(port) = p.named_port(n, proto_name(*proto)) {
                                applied.push(port_member(
                                    self_member(p),
                                    PortMatch {
                                        proto: *proto,
                                        port: Some((port, 0xffff)),
                                    },
                                ));
                            }
                        }
                    }
                    parts.push(RulePart {
                        applied,
                        peers: (!any_peer).then(|| peer_members(&peer_pods, &peer_nets)),
                        ports: None,
                    });
                }
            }
            let detail = (ri as u32 + 1) | if egress { DETAIL_EGRESS } else { 0 };
            let cookie = ids.cookie(CookieKind::Policy, &r, detail);
            for (part_no, part) in parts.into_iter().enumerate() {
                emit_part(
                    b,
                    ids,
                    table,
                    cookie,
                    (&ns, &name, egress, ri, part_no),
                    part,
                );
            }
        }
    }
}

fn emit_part(
    b: &mut Builder,
    ids: &mut Ids,
    table: u8,
    cookie: u64,
    key: (&str, &str, bool, usize, usize),
    part: RulePart,
) {
    if part.applied.is_empty()
        || part.peers.as_ref().is_some_and(|p| p.is_empty())
        || part.ports.as_ref().is_some_and(|p| p.is_empty())
    {
        return; // some clause matches nothing: the rule allows nothing
    }
    let mut clauses: Vec<Vec<Member>> = vec![part.applied];
    clauses.extend(part.peers);
    clauses.extend(part.ports);
    if clauses.len() == 1 {
        for m in clauses.remove(0) {
            let mut f = F::new(table, PRIO_DIRECT, cookie).ip();
            for (field, v, mask) in m.fields {
                f = f.mm(field, v, mask);
            }
            b.flows.push(f.goto(next_table(table)).done());
        }
        return;
    }
    let id = ids
        .conj
        .get(&(key.0.to_string(), key.1.to_string(), key.2, key.3, key.4));
    let n = clauses.len() as u8;
    for (k, clause) in clauses.into_iter().enumerate() {
        for m in clause {
            b.conj_member(table, m, cookie, id, k as u8 + 1, n);
        }
    }
    b.flows.push(
        F::new(table, PRIO_CONJ, cookie)
            .m(Field::ConjId, u64::from(id))
            .goto(next_table(table))
            .done(),
    );
}

/// Routes that let an ingress rule admit peers of other tenants (the one
/// way traffic crosses tenants): on the node of each selected pod `P`
/// (tenant B), packets of tenant A addressed to `P` are tracked in B's
/// conntrack zone (so both directions meet one connection entry), switch to
/// tenant B and are routed again, so B's ingress policy decides and the
/// connection is committed in B's zone; replies from `P` to a peer `Q` of tenant A switch
/// back to A (only replies: `ct_state=+rpl`, so `P` cannot open connections
/// into A). Traffic from a remote `Q` reaches this node through A's normal
/// overlay route; replies to it leave through A's.
fn cross_tenant_routes(b: &mut Builder, cookie: u64, local: &[&PodInfo], peers: &[&PodInfo]) {
    use flows::action::SubField;
    use flows::key::ct_state;
    let switch_to = |f: F, vlan: u16| {
        f.a(Action::Load {
            value: u64::from(vlan),
            dst: SubField::whole(REG_TENANT),
        })
        .a(Action::Resubmit {
            port: None,
            table: Some(T_ROUTE),
        })
        .done()
    };
    for p in local {
        let foreign: std::collections::BTreeSet<u16> = peers
            .iter()
            .map(|q| q.vlan)
            .filter(|v| *v != p.vlan)
            .collect();
        for a in foreign {
            // Both directions tracked in B's zone on this node.
            b.flows.push(
                F::new(T_CT, PRIO_CROSS, cookie)
                    .ip()
                    .m(REG_TENANT, u64::from(a))
                    .addr(Field::NwDst, p.ip)
                    .a(ct(
                        false,
                        p.vlan,
                        Some(T_CT_STATE),
                        Some(flows::action::Nat::UNNAT),
                    ))
                    .done(),
            );
            b.flows.push(switch_to(
                F::new(T_ROUTE, PRIO_CROSS, cookie)
                    .ip()
                    .m(REG_TENANT, u64::from(a))
                    .addr(Field::NwDst, p.ip),
                p.vlan,
            ));
        }
        for q in peers.iter().filter(|q| q.vlan != p.vlan) {
            b.flows.push(switch_to(
                F::new(T_ROUTE, PRIO_CROSS_REPLY, cookie)
                    .ip()
                    .mm(
                        Field::CtState,
                        ct_state::RPL | ct_state::TRK,
                        ct_state::RPL | ct_state::TRK,
                    )
                    .m(REG_TENANT, u64::from(p.vlan))
                    .addr(Field::NwSrc, p.ip)
                    .addr(Field::NwDst, q.ip),
                q.vlan,
            ));
        }
    }
}

/// Priority of cross-tenant routes into a selected pod.
pub const PRIO_CROSS: u16 = 150;
/// Priority of cross-tenant reply routes (above local delivery, so a
/// reply goes back to the peer's tenant).
pub const PRIO_CROSS_REPLY: u16 = 250;

/// Where an allowed packet goes on from a policy table.
fn next_table(table: u8) -> u8 {
    if table == T_EGRESS {
        T_ROUTE
    } else {
        T_COMMIT
    }
}

fn select_pods<'a>(
    input: &'a Input<'_>,
    ns: &str,
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<Vec<&'a PodInfo>, String> {
    let mut v = Vec::new();
    for p in input.model.pods.values() {
        if p.namespace == ns && selector_matches(sel, &p.labels).map_err(|e| e.to_string())? {
            v.push(p);
        }
    }
    Ok(v)
}

enum Resolved<'a> {
    Pods(Vec<&'a PodInfo>),
    Nets(Vec<Ipv4Net>),
}

/// (field path, message)
type FieldError = (String, String);

fn resolve_peer<'a>(
    input: &'a Input<'_>,
    ns: &str,
    peer: &NetworkPolicyPeer,
) -> Result<Resolved<'a>, FieldError> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err((
                "ipBlock".into(),
                "ipBlock cannot be combined with selectors".into(),
            ));
        }
        let net: Ipv4Net = match block.cidr.parse() {
            Ok(n) => n,
            Err(_) if block.cidr.contains(':') => return Ok(Resolved::Nets(vec![])),
            Err(_) => {
                return Err((
                    "ipBlock.cidr".into(),
                    format!("'{}' is not a CIDR", block.cidr),
                ))
            }
        };
        let net = net.trunc();
        let mut except = Vec::new();
        for (i, e) in block.except.iter().flatten().enumerate() {
            match e.parse::<Ipv4Net>() {
                Ok(x) if net.contains(&x.trunc()) => except.push(x.trunc()),
                Ok(_) => {
                    return Err((
                        format!("ipBlock.except[{i}]"),
                        format!("'{e}' is not inside cidr {}", block.cidr),
                    ))
                }
                Err(_) => {
                    return Err((
                        format!("ipBlock.except[{i}]"),
                        format!("'{e}' is not a CIDR"),
                    ))
                }
            }
        }
        return Ok(Resolved::Nets(cidr_minus(net, &except)));
    }
    let mut namespaces: Option<BTreeSet<String>> = None;
    if let Some(nsel) = &peer.namespace_selector {
        let mut set = BTreeSet::new();
        let mut names: BTreeSet<String> = input.model.ns_labels.keys().cloned().collect();
        names.extend(input.model.pods.values().map(|p| p.namespace.clone()));
        for n in names {
            if selector_matches(nsel, &input.model.namespace_labels(&n)).map_err(|e| {
                (
                    format!("namespaceSelector.{}", e_path(&e)),
                    e.message.clone(),
                )
            })? {
                set.insert(n);
            }
        }
        namespaces = Some(set);
    }
    let mut pods = Vec::new();
    for p in input.model.pods.values() {
        let ns_ok = match &namespaces {
            Some(set) => set.contains(&p.namespace),
            None => p.namespace == ns,
        };
        if !ns_ok {
            continue;
        }
        if let Some(psel) = &peer.pod_selector {
            if !selector_matches(psel, &p.labels)
                .map_err(|e| (format!("podSelector.{}", e_path(&e)), e.message.clone()))?
            {
                continue;
            }
        }
        pods.push(p);
    }
    Ok(Resolved::Pods(pods))
}

fn e_path(e: &crate::model::SelectorError) -> String {
    format!("matchExpressions[{}]", e.index)
}

enum Port {
    Numeric(Vec<PortMatch>),
    Named(u8, String),
}

fn proto_num(p: Option<&str>) -> Result<u8, FieldError> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(ipproto::TCP),
        "UDP" => Ok(ipproto::UDP),
        "SCTP" => Ok(132),
        other => Err(("protocol".into(), format!("unknown protocol '{other}'"))),
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        ipproto::TCP => "TCP",
        ipproto::UDP => "UDP",
        _ => "SCTP",
    }
}

fn resolve_port(p: &NetworkPolicyPort) -> Result<Port, FieldError> {
    let proto = proto_num(p.protocol.as_deref())?;
    let port = match &p.port {
        None => {
            if p.end_port.is_some() {
                return Err(("endPort".into(), "endPort needs port".into()));
            }
            return Ok(Port::Numeric(vec![PortMatch { proto, port: None }]));
        }
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => {
                if p.end_port.is_some() {
                    return Err((
                        "endPort".into(),
                        "endPort cannot be used with a named port".into(),
                    ));
                }
                return Ok(Port::Named(proto, s.clone()));
            }
        },
    };
    let lo = u16::try_from(port).ok().filter(|&v| v > 0).ok_or((
        "port".to_string(),
        format!("{port} is not a port number (1..65535)"),
    ))?;
    let hi = match p.end_port {
        None => lo,
        Some(e) => u16::try_from(e).ok().filter(|&v| v >= lo).ok_or((
            "endPort".to_string(),
            format!("{e} is not a port number at or above port {lo}"),
        ))?,
    };
    Ok(Port::Numeric(
        port_ranges(lo, hi)
            .into_iter()
            .map(|(v, m)| PortMatch {
                proto,
                port: Some((v, m)),
            })
            .collect(),
    ))
}

/// Splits `lo..=hi` into (value, mask) prefix blocks.
pub(crate) fn port_ranges(lo: u16, hi: u16) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut cur = u32::from(lo);
    let hi = u32::from(hi);
    while cur <= hi {
        // Largest block aligned at cur that fits.
        let mut size = if cur == 0 {
            1 << 16
        } else {
            cur & cur.wrapping_neg()
        };
        while cur + size - 1 > hi {
            size >>= 1;
        }
        out.push((cur as u16, !((size - 1) as u16)));
        cur += size;
    }
    out
}

/// `net` minus the `except` subnets, as a list of subnets.
pub(crate) fn cidr_minus(net: Ipv4Net, except: &[Ipv4Net]) -> Vec<Ipv4Net> {
    if except.iter().any(|e| e.contains(&net)) {
        return vec![];
    }
    if !except.iter().any(|e| net.contains(e)) {
        return vec![net];
    }
    match net.subnets(net.prefix_len() + 1) {
        Ok(halves) => halves.flat_map(|h| cidr_minus(h, except)).collect(),
        Err(_) => vec![],
    }
}
