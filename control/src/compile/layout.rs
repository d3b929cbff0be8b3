//! The agent's pipeline layout: table numbers, register use, cookies, and a
//! small builder for flows.
//!
//! ```text
//! 0  CLASSIFY   spoof guard per pod port (in_port + dl_src + nw_src/arp_spa),
//!               tunnel ingress by VNI; loads the tenant VLAN into reg0
//! 1  ARP        proxy ARP: the gateway MAC answers for the gateway and the
//!               node's pod subnet (arp_reply), a pod's own IP is not answered
//! 10 CT         ct(zone=<tenant>,nat,table=11) per tenant
//! 11 CT_STATE   +inv drops; everything else goes on
//! 20 SERVICE    new connections to ClusterIP/NodePort -> select group whose
//!               buckets ct(commit,nat(dst=endpoint)); no endpoints -> reject
//! 30 EGRESS     NetworkPolicy egress (conjunctive matches); -new passes
//! 40 ROUTE      by (tenant, nw_dst): local pod -> MACs rewritten, reg2=port;
//!               other node's pod CIDR -> tunnel (VNI = tenant, tun_dst)
//! 50 INGRESS    NetworkPolicy ingress for local pods; -new passes
//! 60 COMMIT     ct(commit,zone=<tenant>) for new connections; hairpin
//!               (a pod reaching itself through a Service): source NAT to
//!               the gateway in the tenant's hairpin zone
//! 70 OUTPUT     reg2 -> output port (`in_port` when it is the ingress port)
//! ```
//!
//! Hairpin replies (a pod answering the gateway address) are un-SNATed in
//! the hairpin zone first (`ct_state=-trk` in the CT table), then pass the
//! tenant zone as usual.
//!
//! Registers: `reg0` = tenant VLAN id, `reg1` bit 0 = came from the tunnel,
//! `reg2` = output port.
//!
//! Cookies say which object a flow came from: the top byte is the kind
//! ([`CookieKind`]), the next 24 bits the object's id (allocated by the
//! compiler, stable while the object exists), the low 32 bits a detail
//! (rule number). `ferrovs-ctl dump-flows cookie=0x0500000700000000/0xffffffff00000000`
//! selects every flow of one object.

use flows::action::{Action, CtArgs, SubField};
use flows::field::{ethertype, Field};
use flows::flow_match::Match;
use flows::pipeline::FlowSpec;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// Spoof guard and tenant classification.
pub const T_CLASSIFY: u8 = 0;
/// ARP responder.
pub const T_ARP: u8 = 1;
/// Conntrack lookup (with un-NAT).
pub const T_CT: u8 = 10;
/// After conntrack.
pub const T_CT_STATE: u8 = 11;
/// Service load balancing.
pub const T_SERVICE: u8 = 20;
/// NetworkPolicy egress.
pub const T_EGRESS: u8 = 30;
/// L3 forwarding.
pub const T_ROUTE: u8 = 40;
/// NetworkPolicy ingress.
pub const T_INGRESS: u8 = 50;
/// Conntrack commit.
pub const T_COMMIT: u8 = 60;
/// Output by reg2.
pub const T_OUTPUT: u8 = 70;

/// Register holding the tenant VLAN.
pub const REG_TENANT: Field = Field::Reg(0);
/// Register holding flags (bit 0: from tunnel).
pub const REG_FLAGS: Field = Field::Reg(1);
/// Register holding the output port.
pub const REG_OUT: Field = Field::Reg(2);
/// `REG_FLAGS` bit: packet came in on the tunnel.
pub const FLAG_FROM_TUNNEL: u64 = 1;

/// Conntrack zone of tenant `vlan`'s hairpin source NAT (distinct from
/// every tenant zone, which are VLAN ids 1..4094).
pub fn hairpin_zone(vlan: u16) -> u16 {
    vlan | 0x1000
}

/// Kind byte of a cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum CookieKind {
    /// Fixed pipeline flows.
    Infra = 1,
    /// Overlay flows of one node.
    Node = 2,
    /// Flows of one local pod.
    Pod = 3,
    /// Flows of one Service.
    Service = 4,
    /// Flows of one NetworkPolicy.
    Policy = 5,
    /// Flows of one tenant.
    Tenant = 6,
}

impl CookieKind {
    /// From the top byte of a cookie.
    pub fn from_cookie(cookie: u64) -> Option<CookieKind> {
        Some(match cookie >> 56 {
            1 => CookieKind::Infra,
            2 => CookieKind::Node,
            3 => CookieKind::Pod,
            4 => CookieKind::Service,
            5 => CookieKind::Policy,
            6 => CookieKind::Tenant,
            _ => return None,
        })
    }
}

/// Mask selecting the object part (kind + id) of a cookie.
pub use flows::trace::COOKIE_OBJECT_MASK;

/// A cookie for `kind`, object `id` (24 bits), `detail`.
pub fn cookie(kind: CookieKind, id: u32, detail: u32) -> u64 {
    (u64::from(kind as u8) << 56) | (u64::from(id & 0xff_ffff) << 32) | u64::from(detail)
}

/// A flow under construction.
#[derive(Clone, Debug)]
pub struct F(FlowSpec);

impl F {
    /// A flow in `table` at `priority` with `cookie`.
    pub fn new(table: u8, priority: u16, cookie: u64) -> F {
        F(FlowSpec {
            table,
            priority,
            cookie,
            m: Match::ANY,
            ..FlowSpec::default()
        })
    }

    /// Matches `field == value`.
    pub fn m(mut self, field: Field, value: u64) -> F {
        self.0.m.set(field, value);
        self
    }

    /// Matches `field & mask == value & mask`.
    pub fn mm(mut self, field: Field, value: u64, mask: u64) -> F {
        self.0.m.set_masked(field, value, mask);
        self
    }

    /// Matches IPv4.
    pub fn ip(self) -> F {
        self.m(Field::DlType, u64::from(ethertype::IPV4))
    }

    /// Matches ARP.
    pub fn arp(self) -> F {
        self.m(Field::DlType, u64::from(ethertype::ARP))
    }

    /// Matches an IPv4 address field against a subnet.
    pub fn net(self, field: Field, net: Ipv4Net) -> F {
        let mask = u64::from(u32::from(net.netmask()));
        self.mm(field, u64::from(u32::from(net.network())), mask)
    }

    /// Matches an IPv4 address field exactly.
    pub fn addr(self, field: Field, ip: Ipv4Addr) -> F {
        self.m(field, u64::from(u32::from(ip)))
    }

    /// Matches a MAC field.
    pub fn mac(self, field: Field, mac: [u8; 6]) -> F {
        self.m(field, flows::key::mac_to_u64(mac))
    }

    /// Appends an action.
    pub fn a(mut self, action: Action) -> F {
        self.0.actions.push(action);
        self
    }

    /// Appends `load:value->reg`.
    pub fn load(self, reg: Field, value: u64) -> F {
        self.a(Action::Load {
            value,
            dst: SubField::whole(reg),
        })
    }

    /// Appends `goto_table:table`.
    pub fn goto(self, table: u8) -> F {
        self.a(Action::GotoTable(table))
    }

    /// The flow.
    pub fn done(self) -> FlowSpec {
        self.0
    }
}

/// The MAC a node's switch uses on a VLAN trunk: `0a:fe` + its InternalIP.
pub fn node_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0xfe, o[0], o[1], o[2], o[3]]
}

/// `ct(...)` arguments.
pub fn ct(commit: bool, zone: u16, table: Option<u8>, nat: Option<flows::action::Nat>) -> Action {
    Action::Ct(CtArgs {
        commit,
        zone,
        table,
        nat,
    })
}
