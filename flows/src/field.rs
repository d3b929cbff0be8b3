//! Match/set-able fields: their `ovs-ofctl` names, where they live in a
//! [`FlowKey`](crate::key::FlowKey), and how their values are written.

/// How a field's value is written in flow text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueFormat {
    /// Decimal (`in_port=3`, `tp_dst=80`).
    Decimal,
    /// Hexadecimal with `0x` (`dl_type=0x0800`, `metadata=0x1`).
    Hex,
    /// Colon-separated MAC address.
    Mac,
    /// Dotted-quad IPv4 address; masks may be written as CIDR prefixes.
    Ipv4,
    /// `ct_state` flags (`+trk+est-new`).
    CtState,
}

/// A field of the flow key.
///
/// Some fields are *aliases*: other names or narrower views of the same bits
/// (`arp_spa` is `nw_src`, `dl_vlan` is the VID part of `vlan_tci`), exactly
/// as in Open vSwitch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// OpenFlow ingress port.
    InPort,
    /// Ethernet destination.
    DlDst,
    /// Ethernet source.
    DlSrc,
    /// Ethertype (after any VLAN tag).
    DlType,
    /// 802.1Q TCI with the CFI bit (0x1000) meaning "tag present".
    VlanTci,
    /// VLAN id view of `vlan_tci` (12 bits).
    DlVlan,
    /// VLAN priority view of `vlan_tci` (3 bits).
    DlVlanPcp,
    /// IPv4 source (ARP: sender protocol address).
    NwSrc,
    /// IPv4 destination (ARP: target protocol address).
    NwDst,
    /// IP protocol (ARP: low 8 bits of the opcode).
    NwProto,
    /// IP DSCP/ECN byte.
    NwTos,
    /// L4 source port (ICMP: type).
    TpSrc,
    /// L4 destination port (ICMP: code).
    TpDst,
    /// ICMP type (alias of `tp_src`).
    IcmpType,
    /// ICMP code (alias of `tp_dst`).
    IcmpCode,
    /// ARP opcode (alias of `nw_proto`).
    ArpOp,
    /// ARP sender IP (alias of `nw_src`).
    ArpSpa,
    /// ARP target IP (alias of `nw_dst`).
    ArpTpa,
    /// Tunnel id (VXLAN VNI).
    TunId,
    /// Tunnel outer source IPv4.
    TunSrc,
    /// Tunnel outer destination IPv4.
    TunDst,
    /// 64-bit pipeline metadata.
    Metadata,
    /// 32-bit register `reg0`..`reg7`.
    Reg(u8),
    /// Connection-tracking state flags.
    CtState,
    /// Connection-tracking zone.
    CtZone,
    /// Recirculation id (set by the datapath after `ct(table=N)`).
    RecircId,
    /// Conjunction id: set only while translation looks a table up again
    /// after every clause of `conjunction(ID,K/N)` matched (never in
    /// packets). Not writable, not maskable.
    ConjId,
}

impl Field {
    /// Every field, in the order `ovs-ofctl` prints matches.
    pub const ALL: &'static [Field] = &[
        Field::RecircId,
        Field::ConjId,
        Field::CtState,
        Field::CtZone,
        Field::Reg(0),
        Field::Reg(1),
        Field::Reg(2),
        Field::Reg(3),
        Field::Reg(4),
        Field::Reg(5),
        Field::Reg(6),
        Field::Reg(7),
        Field::TunId,
        Field::TunSrc,
        Field::TunDst,
        Field::Metadata,
        Field::InPort,
        Field::VlanTci,
        Field::DlVlan,
        Field::DlVlanPcp,
        Field::DlSrc,
        Field::DlDst,
        Field::DlType,
        Field::NwSrc,
        Field::NwDst,
        Field::ArpSpa,
        Field::ArpTpa,
        Field::NwProto,
        Field::ArpOp,
        Field::NwTos,
        Field::TpSrc,
        Field::TpDst,
        Field::IcmpType,
        Field::IcmpCode,
    ];

    /// `(word, shift, width)` of the field inside a [`FlowKey`](crate::key::FlowKey).
    #[inline]
    pub const fn layout(self) -> (usize, u32, u32) {
        match self {
            Field::DlDst => (0, 16, 48),
            Field::DlType => (0, 0, 16),
            Field::DlSrc => (1, 16, 48),
            Field::VlanTci => (1, 0, 16),
            Field::DlVlan => (1, 0, 12),
            Field::DlVlanPcp => (1, 13, 3),
            Field::NwSrc | Field::ArpSpa => (2, 32, 32),
            Field::NwDst | Field::ArpTpa => (2, 0, 32),
            Field::TpSrc | Field::IcmpType => (3, 48, 16),
            Field::TpDst | Field::IcmpCode => (3, 32, 16),
            Field::NwProto | Field::ArpOp => (3, 24, 8),
            Field::NwTos => (3, 16, 8),
            Field::CtZone => (3, 0, 16),
            Field::InPort => (4, 48, 16),
            Field::CtState => (4, 32, 16),
            Field::RecircId => (4, 0, 32),
            Field::TunId => (5, 0, 64),
            Field::TunSrc => (6, 32, 32),
            Field::TunDst => (6, 0, 32),
            Field::Metadata => (7, 0, 64),
            Field::ConjId => (12, 0, 32),
            Field::Reg(n) => (
                8 + (n as usize & 7) / 2,
                if n % 2 == 0 { 32 } else { 0 },
                32,
            ),
        }
    }

    /// Width in bits.
    pub const fn width(self) -> u32 {
        self.layout().2
    }

    /// The `ovs-ofctl` name.
    pub fn name(self) -> &'static str {
        match self {
            Field::InPort => "in_port",
            Field::DlDst => "dl_dst",
            Field::DlSrc => "dl_src",
            Field::DlType => "dl_type",
            Field::VlanTci => "vlan_tci",
            Field::DlVlan => "dl_vlan",
            Field::DlVlanPcp => "dl_vlan_pcp",
            Field::NwSrc => "nw_src",
            Field::NwDst => "nw_dst",
            Field::NwProto => "nw_proto",
            Field::NwTos => "nw_tos",
            Field::TpSrc => "tp_src",
            Field::TpDst => "tp_dst",
            Field::IcmpType => "icmp_type",
            Field::IcmpCode => "icmp_code",
            Field::ArpOp => "arp_op",
            Field::ArpSpa => "arp_spa",
            Field::ArpTpa => "arp_tpa",
            Field::TunId => "tun_id",
            Field::TunSrc => "tun_src",
            Field::TunDst => "tun_dst",
            Field::Metadata => "metadata",
            Field::Reg(n) => [
                "reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "reg7",
            ][n as usize & 7],
            Field::CtState => "ct_state",
            Field::CtZone => "ct_zone",
            Field::RecircId => "recirc_id",
            Field::ConjId => "conj_id",
        }
    }

    /// Looks a field up by its `ovs-ofctl` name (also `eth_src`-style
    /// OXM names and `NXM_*` names used by `load`/`move`).
    pub fn from_name(name: &str) -> Option<Field> {
        let f =
            match name {
                "in_port" | "NXM_OF_IN_PORT" => Field::InPort,
                "dl_dst" | "eth_dst" | "NXM_OF_ETH_DST" => Field::DlDst,
                "dl_src" | "eth_src" | "NXM_OF_ETH_SRC" => Field::DlSrc,
                "dl_type" | "eth_type" | "NXM_OF_ETH_TYPE" => Field::DlType,
                "vlan_tci" | "NXM_OF_VLAN_TCI" => Field::VlanTci,
                "dl_vlan" | "vlan_vid" => Field::DlVlan,
                "dl_vlan_pcp" | "vlan_pcp" => Field::DlVlanPcp,
                "nw_src" | "ip_src" | "ipv4_src" | "NXM_OF_IP_SRC" => Field::NwSrc,
                "nw_dst" | "ip_dst" | "ipv4_dst" | "NXM_OF_IP_DST" => Field::NwDst,
                "nw_proto" | "ip_proto" | "NXM_OF_IP_PROTO" => Field::NwProto,
                "nw_tos" | "NXM_OF_IP_TOS" => Field::NwTos,
                "tp_src" | "tcp_src" | "udp_src" | "sctp_src" | "NXM_OF_TCP_SRC"
                | "NXM_OF_UDP_SRC" => Field::TpSrc,
                "tp_dst" | "tcp_dst" | "udp_dst" | "sctp_dst" | "NXM_OF_TCP_DST"
                | "NXM_OF_UDP_DST" => Field::TpDst,
                "icmp_type" | "NXM_OF_ICMP_TYPE" => Field::IcmpType,
                "icmp_code" | "NXM_OF_ICMP_CODE" => Field::IcmpCode,
                "arp_op" | "NXM_OF_ARP_OP" => Field::ArpOp,
                "arp_spa" | "NXM_OF_ARP_SPA" => Field::ArpSpa,
                "arp_tpa" | "NXM_OF_ARP_TPA" => Field::ArpTpa,
                "tun_id" | "tunnel_id" | "NXM_NX_TUN_ID" => Field::TunId,
                "tun_src" | "NXM_NX_TUN_IPV4_SRC" => Field::TunSrc,
                "tun_dst" | "NXM_NX_TUN_IPV4_DST" => Field::TunDst,
                "metadata" | "OXM_OF_METADATA" => Field::Metadata,
                "ct_state" | "NXM_NX_CT_STATE" => Field::CtState,
                "ct_zone" | "NXM_NX_CT_ZONE" => Field::CtZone,
                "recirc_id" => Field::RecircId,
                "conj_id" => Field::ConjId,
                _ => {
                    let n = name
                        .strip_prefix("reg")
                        .or_else(|| name.strip_prefix("NXM_NX_REG"))?;
                    let n: u8 = n.parse().ok()?;
                    if n > 7 {
                        return None;
                    }
                    Field::Reg(n)
                }
            };
        Some(f)
    }

    /// True for a second name or narrower view of bits owned by another field.
    pub fn is_alias(self) -> bool {
        matches!(
            self,
            Field::DlVlan
                | Field::DlVlanPcp
                | Field::IcmpType
                | Field::IcmpCode
                | Field::ArpOp
                | Field::ArpSpa
                | Field::ArpTpa
        )
    }

    /// How values of this field are written.
    pub fn format(self) -> ValueFormat {
        match self {
            Field::DlDst | Field::DlSrc => ValueFormat::Mac,
            Field::NwSrc | Field::NwDst | Field::ArpSpa | Field::ArpTpa => ValueFormat::Ipv4,
            Field::TunSrc | Field::TunDst => ValueFormat::Ipv4,
            Field::DlType
            | Field::VlanTci
            | Field::TunId
            | Field::Metadata
            | Field::Reg(_)
            | Field::RecircId => ValueFormat::Hex,
            Field::CtState => ValueFormat::CtState,
            _ => ValueFormat::Decimal,
        }
    }

    /// Fields that an `ip`/`arp`/`tcp`... prerequisite must hold for this
    /// field to be matched or set, as `(field, value)` pairs that the match
    /// must already pin. `None` if the field has no prerequisite.
    ///
    /// OVS rejects `nw_src=...` without `ip` or `arp`; we do the same.
    pub fn prerequisite(self) -> Prereq {
        match self {
            Field::NwSrc | Field::NwDst | Field::NwProto | Field::NwTos => Prereq::IpOrArp,
            Field::ArpOp | Field::ArpSpa | Field::ArpTpa => Prereq::Arp,
            Field::TpSrc | Field::TpDst => Prereq::TcpUdpSctp,
            Field::IcmpType | Field::IcmpCode => Prereq::Icmp,
            _ => Prereq::None,
        }
    }
}

/// A field's prerequisite on the rest of the match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prereq {
    /// No prerequisite.
    None,
    /// `dl_type` must be 0x0800 or 0x0806.
    IpOrArp,
    /// `dl_type` must be 0x0806.
    Arp,
    /// `dl_type=0x0800` and `nw_proto` in {6, 17, 132}.
    TcpUdpSctp,
    /// `dl_type=0x0800` and `nw_proto=1`.
    Icmp,
}

/// Ethertypes the pipeline knows by name.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag.
    pub const QINQ: u16 = 0x88a8;
    /// IPv6 (parsed only as far as the ethertype).
    pub const IPV6: u16 = 0x86dd;
}

/// IP protocol numbers the pipeline knows by name.
pub mod ipproto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        for f in Field::ALL {
            assert_eq!(Field::from_name(f.name()), Some(*f), "{}", f.name());
        }
        assert_eq!(Field::from_name("NXM_NX_REG5"), Some(Field::Reg(5)));
        assert_eq!(Field::from_name("reg8"), None);
        assert_eq!(Field::from_name("bogus"), None);
    }
}
