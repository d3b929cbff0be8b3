//! OpenFlow-level actions, as written after `actions=` in `ovs-ofctl` syntax,
//! and group definitions.

use crate::field::Field;
use std::net::Ipv4Addr;

/// An OpenFlow port number. Ports are 16-bit, as in OpenFlow 1.0 / OVS's
/// `ofp_port_t`.
pub type PortNo = u16;

/// Reserved port numbers (same values as OpenFlow 1.0).
pub mod port {
    use super::PortNo;
    /// The ingress port (`in_port` action).
    pub const IN_PORT: PortNo = 0xfff8;
    /// `normal` (L2 learning switch).
    pub const NORMAL: PortNo = 0xfffa;
    /// `flood`.
    pub const FLOOD: PortNo = 0xfffb;
    /// `all`.
    pub const ALL: PortNo = 0xfffc;
    /// `controller`.
    pub const CONTROLLER: PortNo = 0xfffd;
    /// `local` (the bridge's own port).
    pub const LOCAL: PortNo = 0xfffe;
    /// "No port".
    pub const NONE: PortNo = 0xffff;
}

/// A bit range of a field, `reg0[0..15]` / `NXM_NX_REG0[0..15]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubField {
    /// The field.
    pub field: Field,
    /// First bit (0 = least significant).
    pub ofs: u32,
    /// Number of bits (≥ 1).
    pub n_bits: u32,
}

impl SubField {
    /// The whole field.
    pub fn whole(field: Field) -> SubField {
        SubField {
            field,
            ofs: 0,
            n_bits: field.width(),
        }
    }
}

/// Which side `nat(...)` rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// `nat(src=...)`.
    Src,
    /// `nat(dst=...)`.
    Dst,
}

/// The `nat` argument of `ct(...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nat {
    /// `None` for plain `nat`: only un-NAT replies of already-NATed connections.
    pub kind: Option<NatKind>,
    /// First address of the range.
    pub ip_min: Ipv4Addr,
    /// Last address of the range (== `ip_min` for one address).
    pub ip_max: Ipv4Addr,
    /// Port range; `0,0` keeps the original port.
    pub port_min: u16,
    /// Last port of the range.
    pub port_max: u16,
}

impl Nat {
    /// Plain `nat`: only un-NAT packets of already-NATed connections.
    pub const UNNAT: Nat = Nat {
        kind: None,
        ip_min: Ipv4Addr::UNSPECIFIED,
        ip_max: Ipv4Addr::UNSPECIFIED,
        port_min: 0,
        port_max: 0,
    };

    /// `nat(src=|dst=ip:port)` to one address and port (port 0 keeps it).
    pub fn to(kind: NatKind, ip: Ipv4Addr, port: u16) -> Nat {
        Nat {
            kind: Some(kind),
            ip_min: ip,
            ip_max: ip,
            port_min: port,
            port_max: port,
        }
    }
}

/// Arguments of `ct(...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtArgs {
    /// `commit`: create a connection entry if there is none.
    pub commit: bool,
    /// `zone=N`.
    pub zone: u16,
    /// `table=N`: recirculate to table N after tracking, with `ct_state` set.
    pub table: Option<u8>,
    /// `nat(...)`.
    pub nat: Option<Nat>,
}

/// One action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `output:N` (also the bare `N` form).
    Output(PortNo),
    /// `in_port`: send back out the ingress port.
    InPort,
    /// `normal`: MAC-learning switch with VLAN awareness.
    Normal,
    /// `flood`: all ports in the same VLAN except the ingress port.
    Flood,
    /// `all`: all ports except the ingress port.
    All,
    /// `controller` / `controller(reason,max_len=N)`: punted, counted.
    Controller {
        /// Bytes of the packet that would be sent.
        max_len: u16,
    },
    /// `drop` (only valid alone; an empty list also drops).
    Drop,
    /// `push_vlan:0x8100`.
    PushVlan(u16),
    /// `strip_vlan` / `pop_vlan`.
    PopVlan,
    /// `mod_vlan_vid:N` (pushes a tag if there is none, as OVS does).
    SetVlanVid(u16),
    /// `mod_vlan_pcp:N`.
    SetVlanPcp(u8),
    /// `mod_dl_src:MAC`.
    SetDlSrc([u8; 6]),
    /// `mod_dl_dst:MAC`.
    SetDlDst([u8; 6]),
    /// `mod_nw_src:IP`.
    SetNwSrc(Ipv4Addr),
    /// `mod_nw_dst:IP`.
    SetNwDst(Ipv4Addr),
    /// `mod_tp_src:N`.
    SetTpSrc(u16),
    /// `mod_tp_dst:N`.
    SetTpDst(u16),
    /// `set_tunnel:ID` / `set_tunnel64:ID`.
    SetTunnel(u64),
    /// `set_field:VALUE[/MASK]->FIELD`.
    SetField {
        /// The field.
        field: Field,
        /// Value, aligned to the field's LSB.
        value: u64,
        /// Which bits to set.
        mask: u64,
    },
    /// `load:VALUE->DST[a..b]`.
    Load {
        /// Value, aligned to `dst.ofs`'s bit 0.
        value: u64,
        /// Destination bits.
        dst: SubField,
    },
    /// `move:SRC[a..b]->DST[c..d]`.
    Move {
        /// Source bits.
        src: SubField,
        /// Destination bits (same width).
        dst: SubField,
    },
    /// `resubmit(port,table)` / `resubmit:port`.
    Resubmit {
        /// Port to pretend the packet came in on (`None`: keep in_port).
        port: Option<PortNo>,
        /// Table to search (`None`: the current table).
        table: Option<u8>,
    },
    /// `goto_table:N` (must be last, N > current table).
    GotoTable(u8),
    /// `group:N`.
    Group(u32),
    /// `ct(...)`.
    Ct(CtArgs),
    /// `ct_clear`.
    CtClear,
    /// `dec_ttl`.
    DecTtl,
    /// `arp_reply:MAC` (ferrovs extension): answer an ARP request with
    /// "`arp_tpa` is at MAC", sent back out of the ingress port; any other
    /// packet gets no answer.
    ArpReply([u8; 6]),
    /// `reject` (ferrovs extension): answer TCP with a RST and other IPv4
    /// with ICMP port unreachable, out of the ingress port, and stop
    /// processing the packet.
    Reject,
    /// `conjunction(ID,K/N)`: this flow is clause `K` of the `N`-clause
    /// conjunctive match `ID` (see `ovs-fields(7)`, `conj_id`). A flow's
    /// actions are either all `conjunction` or contain none.
    Conjunction {
        /// Conjunction id, matched as `conj_id=ID` once every clause matched.
        id: u32,
        /// This flow's clause, `1..=n_clauses`.
        clause: u8,
        /// Number of clauses, `2..=64`.
        n_clauses: u8,
    },
}

impl Action {
    /// True for [`Action::Conjunction`].
    #[inline]
    pub fn is_conjunction(&self) -> bool {
        matches!(self, Action::Conjunction { .. })
    }
}

/// True if `actions` make a conjunctive flow: non-empty and every action is
/// `conjunction(...)`.
pub fn is_conjunctive(actions: &[Action]) -> bool {
    !actions.is_empty() && actions.iter().all(Action::is_conjunction)
}

/// OpenFlow group types the pipeline implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupType {
    /// Every bucket gets a copy.
    All,
    /// One bucket chosen by a 5-tuple hash, weighted.
    Select,
    /// Exactly one bucket.
    Indirect,
}

/// A bucket of a group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Bucket {
    /// Bucket id (for printing).
    pub id: u32,
    /// Relative weight for `select` (0 = never chosen).
    pub weight: u16,
    /// Actions run when the bucket is chosen.
    pub actions: Vec<Action>,
}

/// A group: `group_id=1,type=select,bucket=output:1,bucket=output:2`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Group {
    /// Group id.
    pub id: u32,
    /// Group type.
    pub kind: GroupType,
    /// Buckets in order.
    pub buckets: Vec<Bucket>,
    /// `selection_method=hash,fields(F,...)` of a select group: the bucket
    /// is chosen from a hash of only these fields (so, e.g., one client IP
    /// always gets the same bucket while the buckets do not change).
    /// `None`: the default 5-tuple hash.
    pub selection: Option<Vec<Field>>,
    /// `affinity_timeout=SECONDS` (ferrovs extension, only with
    /// `selection`): a client (the values of the selection fields) keeps
    /// the bucket it was given, even when the buckets change, until it has
    /// not used the group for this many seconds (see
    /// [`crate::affinity`]).
    pub affinity_timeout: Option<u32>,
}
