//! Why the datapath dropped a packet: one small `Copy` reason enum shared by
//! every stage (extraction, pipeline, actions, conntrack, tunnels, transmit),
//! so the hot path counts drops with an array index instead of logging.
//!
//! Counters are kept as `[u64; DropReason::COUNT]` indexed by
//! [`DropReason::index`]; [`DropReason::ALL`] and [`DropReason::name`] turn
//! them into labelled statistics.

/// Reason a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// The frame ended inside a header (Ethernet, VLAN, IPv4, ARP, L4, or an
    /// outer tunnel header).
    Truncated,
    /// IPv4 header malformed: version is not 4 or IHL below 5 words.
    BadIpHeader,
    /// IPv4 total length below the header length or beyond the frame.
    BadIpLength,
    /// L4 header malformed (TCP data offset below 5 words or beyond the
    /// IP payload).
    BadL4Header,
    /// Table miss with no rule to handle it.
    NoFlow,
    /// An explicit `drop` action, or an action list that output nowhere.
    ActionDrop,
    /// The output port's transmit ring was full.
    TxFull,
    /// `dec_ttl` on a packet whose TTL was 0 or 1.
    TtlExpired,
    /// Connection tracking found the packet invalid and a rule dropped it.
    CtInvalid,
    /// No underlay route or neighbour for a tunnel destination.
    TunnelNoRoute,
    /// The packet does not fit the output buffer or MTU (e.g. after
    /// encapsulation or a VLAN push).
    TooBig,
    /// Translation exceeded the resubmit depth or recirculation limit.
    TooDeep,
    /// `normal`: a tagged frame on an access port, or a VLAN the trunk
    /// does not carry.
    VlanNotAllowed,
    /// An action named a port that does not exist (any more).
    NoSuchPort,
    /// VXLAN for us, but no tunnel port matches its remote and VNI.
    TunnelNoPort,
    /// A frame on a tunnel underlay port that is neither VXLAN for us nor
    /// ARP for our address.
    NotForTunnel,
    /// `arp_reply` or `reject` had nothing it may answer: not an ARP
    /// request, or a TCP RST, ICMP error, fragment, broadcast, multicast
    /// or non-IPv4 packet (the packet is dropped unanswered).
    NoReply,
}

impl DropReason {
    /// Number of reasons (length of a counter array).
    pub const COUNT: usize = 17;

    /// Every reason, in counter-index order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Truncated,
        DropReason::BadIpHeader,
        DropReason::BadIpLength,
        DropReason::BadL4Header,
        DropReason::NoFlow,
        DropReason::ActionDrop,
        DropReason::TxFull,
        DropReason::TtlExpired,
        DropReason::CtInvalid,
        DropReason::TunnelNoRoute,
        DropReason::TooBig,
        DropReason::TooDeep,
        DropReason::VlanNotAllowed,
        DropReason::NoSuchPort,
        DropReason::TunnelNoPort,
        DropReason::NotForTunnel,
        DropReason::NoReply,
    ];

    /// Index into a `[u64; DropReason::COUNT]` counter array.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case name for statistics output.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadIpHeader => "bad_ip_header",
            DropReason::BadIpLength => "bad_ip_length",
            DropReason::BadL4Header => "bad_l4_header",
            DropReason::NoFlow => "no_flow",
            DropReason::ActionDrop => "action_drop",
            DropReason::TxFull => "tx_full",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::CtInvalid => "ct_invalid",
            DropReason::TunnelNoRoute => "tunnel_no_route",
            DropReason::TooBig => "too_big",
            DropReason::TooDeep => "too_deep",
            DropReason::VlanNotAllowed => "vlan_not_allowed",
            DropReason::NoSuchPort => "no_such_port",
            DropReason::TunnelNoPort => "tunnel_no_port",
            DropReason::NotForTunnel => "not_for_tunnel",
            DropReason::NoReply => "no_reply",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        assert_eq!(DropReason::TtlExpired.to_string(), "ttl_expired");
    }
}
