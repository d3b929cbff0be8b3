//! Pod wiring, tenants and the overlay: the [`Unit::Infra`](super::Unit),
//! [`Unit::Network`](super::Unit) and [`Unit::Pod`](super::Unit) flows.

use std::net::Ipv4Addr;

use flows::action::{Action, Nat, NatKind};
use flows::field::Field;
use flows::key::ct_state;
use flows::pipeline::FlowSpec;

use super::layout::*;
use super::{finish, Ids, Input, Issue, UnitOutput};
use crate::model::gateway_of;
use crate::snapshot::{Kind, ObjectRef};

const INFRA: u64 = (CookieKind::Infra as u64) << 56;

/// Fixed tables: defaults, ARP responder for the local gateway and pod
/// subnet, conntrack state checks, policy bypass for established traffic,
/// tunnel output.
pub(super) fn infra(input: &Input<'_>, _ids: &mut Ids) -> UnitOutput {
    let cfg = input.cfg;
    let gw_mac = cfg.gateway_mac;
    let mut out = UnitOutput::default();
    let f = &mut out.flows;
    // Anything not classified (unknown port, spoofed source) is dropped.
    f.push(F::new(T_CLASSIFY, 0, INFRA).done());
    if let Some(node) = input.model.nodes.get(&cfg.node) {
        for net in &node.pod_cidrs {
            f.push(
                F::new(T_ARP, 100, INFRA)
                    .arp()
                    .m(Field::ArpOp, 1)
                    .addr(Field::ArpTpa, gateway_of(net))
                    .a(Action::ArpReply(gw_mac))
                    .done(),
            );
            f.push(
                F::new(T_ARP, 90, INFRA)
                    .arp()
                    .m(Field::ArpOp, 1)
                    .net(Field::ArpTpa, *net)
                    .a(Action::ArpReply(gw_mac))
                    .done(),
            );
        }
    } else if !cfg.node.is_empty() {
        out.issues.push(Issue {
            object: ObjectRef::new(Kind::Node, "", &cfg.node),
            field: "spec.podCIDR".into(),
            message: "this node is not known (or has no pod CIDR): no gateway is answered".into(),
        });
    }
    f.push(F::new(T_ARP, 0, INFRA).done());
    f.push(
        F::new(T_CT_STATE, 200, INFRA)
            .mm(
                Field::CtState,
                ct_state::INV | ct_state::TRK,
                ct_state::INV | ct_state::TRK,
            )
            .done(),
    );
    f.push(F::new(T_CT_STATE, 0, INFRA).goto(T_SERVICE).done());
    f.push(F::new(T_SERVICE, 0, INFRA).goto(T_EGRESS).done());
    // Replies and established connections are not subject to policy.
    let est = |t: u8, next: u8| {
        F::new(t, 65000, INFRA)
            .ip()
            .mm(Field::CtState, ct_state::TRK, ct_state::NEW | ct_state::TRK)
            .goto(next)
            .done()
    };
    f.push(est(T_EGRESS, T_ROUTE));
    f.push(F::new(T_EGRESS, 0, INFRA).goto(T_ROUTE).done());
    f.push(F::new(T_ROUTE, 0, INFRA).done());
    f.push(est(T_INGRESS, T_COMMIT));
    f.push(F::new(T_INGRESS, 0, INFRA).goto(T_COMMIT).done());
    f.push(F::new(T_COMMIT, 0, INFRA).goto(T_OUTPUT).done());
    if let Some(tun) = cfg.tunnel_port {
        f.push(
            F::new(T_OUTPUT, 100, INFRA)
                .m(REG_OUT, u64::from(tun))
                .a(Action::Output(tun))
                .done(),
        );
    }
    f.push(F::new(T_OUTPUT, 0, INFRA).done());
    finish(out)
}

/// Per tenant: conntrack zone and commit, tunnel ingress by VNI; per other
/// node and tenant: a route of its pod CIDRs into the tunnel.
pub(super) fn network(input: &Input<'_>, ids: &mut Ids) -> UnitOutput {
    let cfg = input.cfg;
    let m = input.model;
    let mut out = UnitOutput::default();
    for t in m.tenants.values() {
        let v = t.vlan;
        let c = cookie(CookieKind::Tenant, u32::from(v), 0);
        let f = &mut out.flows;
        f.push(
            F::new(T_CT, 100, c)
                .ip()
                .m(REG_TENANT, u64::from(v))
                .a(ct(false, v, Some(T_CT_STATE), Some(Nat::UNNAT)))
                .done(),
        );
        f.push(
            F::new(T_COMMIT, 100, c)
                .ip()
                .m(REG_TENANT, u64::from(v))
                .mm(
                    Field::CtState,
                    ct_state::NEW | ct_state::TRK,
                    ct_state::NEW | ct_state::TRK,
                )
                .a(ct(true, v, None, None))
                .goto(T_OUTPUT)
                .done(),
        );
        if let Some(gw) = local_gateway(input) {
            // A reply to the hairpin SNAT address: un-SNAT, then the
            // tenant zone (the packet comes back here tracked).
            f.push(
                F::new(T_CT, 110, c)
                    .ip()
                    .m(REG_TENANT, u64::from(v))
                    .addr(Field::NwDst, gw)
                    .mm(Field::CtState, 0, ct_state::TRK)
                    .a(ct(false, hairpin_zone(v), Some(T_CT), Some(Nat::UNNAT)))
                    .done(),
            );
        }
        if let (Some(trunk), Some(me)) = (cfg.trunk_port, local_ip(input)) {
            // Trunk ingress: our node MAC and a tenant tag.
            f.push(
                F::new(T_CLASSIFY, 100, c)
                    .m(Field::InPort, u64::from(trunk))
                    .mm(Field::VlanTci, u64::from(0x1000 | v), 0x1fff)
                    .mac(Field::DlDst, node_mac(me))
                    .ip()
                    .a(Action::PopVlan)
                    .load(REG_TENANT, u64::from(v))
                    .load(REG_FLAGS, FLAG_FROM_TUNNEL)
                    .goto(T_CT)
                    .done(),
            );
            f.push(
                F::new(T_OUTPUT, 100, c)
                    .m(REG_OUT, u64::from(trunk))
                    .m(REG_TENANT, u64::from(v))
                    .a(Action::SetVlanVid(v))
                    .a(Action::Output(trunk))
                    .done(),
            );
        }
        if let Some(tun) = cfg.tunnel_port {
            f.push(
                F::new(T_CLASSIFY, 100, c)
                    .m(Field::InPort, u64::from(tun))
                    .m(Field::TunId, u64::from(v))
                    .ip()
                    .load(REG_TENANT, u64::from(v))
                    .load(REG_FLAGS, FLAG_FROM_TUNNEL)
                    .goto(T_CT)
                    .done(),
            );
        }
    }
    if cfg.tunnel_port.is_none() && cfg.trunk_port.is_none() {
        return finish(out);
    }
    for node in m.nodes.values() {
        if node.name == cfg.node || node.pod_cidrs.is_empty() {
            continue;
        }
        let Some(ip) = node.ip else { continue };
        let c = ids.cookie(
            CookieKind::Node,
            &ObjectRef::new(Kind::Node, "", &node.name),
            0,
        );
        for t in m.tenants.values() {
            for net in &node.pod_cidrs {
                let f = F::new(T_ROUTE, 100, c)
                    .ip()
                    .m(REG_TENANT, u64::from(t.vlan))
                    .mm(REG_FLAGS, 0, FLAG_FROM_TUNNEL)
                    .net(Field::NwDst, *net);
                out.flows.extend(to_node(input, f, ip, t.vlan));
            }
        }
    }
    finish(out)
}

/// A local pod: spoof guard, ARP, delivery and output. A remote pod whose IP
/// lies outside its node's pod CIDRs (a static IP) gets a host route.
pub(super) fn pod(input: &Input<'_>, ids: &mut Ids, ns: &str, name: &str) -> UnitOutput {
    let cfg = input.cfg;
    let mut out = UnitOutput::default();
    let key = (ns.to_string(), name.to_string());
    let Some(p) = input.model.pods.get(&key) else {
        return out;
    };
    let r = ObjectRef::new(Kind::Pod, ns, name);
    let v = u64::from(p.vlan);
    if p.node != cfg.node {
        let Some(node) = input.model.nodes.get(&p.node) else {
            return out;
        };
        let Some(nip) = node.ip else {
            return out;
        };
        if node.pod_cidrs.iter().any(|n| n.contains(&p.ip)) {
            return out;
        }
        let c = ids.cookie(CookieKind::Pod, &r, 0);
        let f = F::new(T_ROUTE, 150, c)
            .ip()
            .m(REG_TENANT, v)
            .mm(REG_FLAGS, 0, FLAG_FROM_TUNNEL)
            .addr(Field::NwDst, p.ip);
        out.flows.extend(to_node(input, f, nip, p.vlan));
        return finish(out);
    }
    let Some(&port) = input.ports.get(&key) else {
        // Not attached yet (no CNI record / interface): nothing to wire.
        return out;
    };
    let c = ids.cookie(CookieKind::Pod, &r, 0);
    let spoof = ids.cookie(CookieKind::Pod, &r, 1);
    let f = &mut out.flows;
    let port64 = u64::from(port);
    f.push(
        F::new(T_CLASSIFY, 200, c)
            .m(Field::InPort, port64)
            .mac(Field::DlSrc, p.mac)
            .ip()
            .addr(Field::NwSrc, p.ip)
            .load(REG_TENANT, v)
            .goto(T_CT)
            .done(),
    );
    f.push(
        F::new(T_CLASSIFY, 200, c)
            .m(Field::InPort, port64)
            .mac(Field::DlSrc, p.mac)
            .arp()
            .addr(Field::ArpSpa, p.ip)
            .load(REG_TENANT, v)
            .goto(T_ARP)
            .done(),
    );
    // Spoof guard: anything else from this port.
    f.push(
        F::new(T_CLASSIFY, 100, spoof)
            .m(Field::InPort, port64)
            .done(),
    );
    // Never answer a pod's ARP for its own address (duplicate detection).
    f.push(
        F::new(T_ARP, 110, c)
            .arp()
            .m(Field::InPort, port64)
            .addr(Field::ArpTpa, p.ip)
            .done(),
    );
    f.push(
        F::new(T_ROUTE, 200, c)
            .ip()
            .m(REG_TENANT, v)
            .addr(Field::NwDst, p.ip)
            .a(Action::SetDlSrc(cfg.gateway_mac))
            .a(Action::SetDlDst(p.mac))
            .load(REG_OUT, port64)
            .goto(T_INGRESS)
            .done(),
    );
    f.push(
        F::new(T_OUTPUT, 100, c)
            .m(REG_OUT, port64)
            .a(Action::Output(port))
            .done(),
    );
    // Hairpin: the pod reached itself through a Service. Its kernel drops
    // a packet from its own address, so the source becomes the gateway
    // (in a zone of its own: the tenant zone holds the DNAT), and the
    // packet leaves by the port it came in on.
    if let Some(gw) = local_gateway(input) {
        f.push(
            F::new(T_COMMIT, 110, c)
                .ip()
                .m(REG_TENANT, v)
                .addr(Field::NwSrc, p.ip)
                .addr(Field::NwDst, p.ip)
                .a(ct(
                    true,
                    hairpin_zone(p.vlan),
                    Some(T_OUTPUT),
                    Some(Nat::to(NatKind::Src, gw, 0)),
                ))
                .done(),
        );
        f.push(
            F::new(T_OUTPUT, 110, c)
                .m(REG_OUT, port64)
                .m(Field::InPort, port64)
                .a(Action::InPort)
                .done(),
        );
    }
    finish(out)
}

/// Finishes a route to another node (InternalIP `node_ip`) for tenant
/// `vlan`: over the VLAN trunk when there is one (node MACs, the tag is
/// pushed at output), else through the VXLAN tunnel (VNI = tenant).
fn to_node(input: &Input<'_>, f: F, node_ip: Ipv4Addr, vlan: u16) -> Option<FlowSpec> {
    let cfg = input.cfg;
    let f = match (cfg.trunk_port, local_ip(input), cfg.tunnel_port) {
        (Some(trunk), Some(me), _) => f
            .a(Action::SetDlSrc(node_mac(me)))
            .a(Action::SetDlDst(node_mac(node_ip)))
            .load(REG_OUT, u64::from(trunk)),
        (None, _, Some(tun)) => f
            .a(Action::SetDlSrc(cfg.gateway_mac))
            .a(Action::SetTunnel(u64::from(vlan)))
            .a(Action::SetField {
                field: Field::TunDst,
                value: u64::from(u32::from(node_ip)),
                mask: 0xffff_ffff,
            })
            .load(REG_OUT, u64::from(tun)),
        _ => return None,
    };
    Some(f.goto(T_COMMIT).done())
}

/// This node's InternalIP.
fn local_ip(input: &Input<'_>) -> Option<Ipv4Addr> {
    input.model.nodes.get(&input.cfg.node)?.ip
}

/// The gateway address of this node's pods (first address of its first
/// pod CIDR), if the node is known.
fn local_gateway(input: &Input<'_>) -> Option<Ipv4Addr> {
    let node = input.model.nodes.get(&input.cfg.node)?;
    node.pod_cidrs.first().map(gateway_of)
}
