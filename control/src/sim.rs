//! Evaluate compiled flows without a switch: the compiler's output installed
//! into a [`Pipeline`] and packets run through it with `trace`-style
//! translation that follows conntrack recirculation. Used by the compiler
//! tests, the reachability-matrix test and `ferrovs-agent --check`.

use std::net::Ipv4Addr;

use flows::action::PortNo;
use flows::affinity::AffinityTable;
use flows::field::{ethertype, Field};
use flows::key::{ct_state, mac_to_u64, FlowKey};
use flows::mac_learning::MacTable;
use flows::pipeline::{Pipeline, PipelineError};
use flows::trace::{trace_through, Pass};
use flows::xlate::{DpAction, ReplyKind, XlateEnv};

use crate::compile::{Compiler, Delta};

/// What happened to a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Sent out of `port`, with these final destination address and port
    /// (after any DNAT) and, for tunnel output, the remote and VNI.
    Delivered {
        /// Output port.
        port: PortNo,
        /// Destination IP as sent.
        nw_dst: Ipv4Addr,
        /// Destination port as sent.
        tp_dst: u16,
        /// `(tun_dst, vni)` when sent into a tunnel.
        tunnel: Option<(Ipv4Addr, u64)>,
    },
    /// Answered by the switch with a TCP RST / ICMP unreachable.
    Rejected,
    /// Answered by the switch with an ARP reply carrying this MAC.
    ArpReply([u8; 6]),
    /// Dropped.
    Dropped,
}

impl Verdict {
    /// True for [`Verdict::Delivered`].
    pub fn delivered(&self) -> bool {
        matches!(self, Verdict::Delivered { .. })
    }
}

/// A pipeline kept in step with a compiler's deltas.
#[derive(Debug, Default)]
pub struct Sim {
    /// The installed flows.
    pub pipeline: Pipeline,
}

impl Sim {
    /// An empty pipeline.
    pub fn new() -> Sim {
        Sim::default()
    }

    /// Declares switch ports (outputs to undeclared ports are dropped, as in
    /// the switch).
    pub fn set_ports(&mut self, ports: impl IntoIterator<Item = PortNo>) {
        let infos = ports
            .into_iter()
            .map(|no| flows::pipeline::PortInfo {
                no,
                name: format!("p{no}"),
                vlan: flows::pipeline::VlanMode::Trunk,
                is_tunnel: false,
            })
            .collect();
        self.pipeline.set_ports(infos);
    }

    /// Applies a delta as the switch would (all or nothing).
    pub fn apply(&mut self, delta: &Delta) -> Result<(), PipelineError> {
        self.pipeline.apply(&delta.mods, 0).map(|_| ())
    }

    /// Runs `key` through the pipeline as a packet of a connection in state
    /// `ct` (`ct_state::NEW` for a first packet, `EST | RPL` for a reply).
    pub fn run(&self, key: &FlowKey, ct: u64) -> (Verdict, Vec<Pass>) {
        let mut macs = MacTable::default();
        let mut env = XlateEnv {
            macs: &mut macs,
            affinity: &mut AffinityTable::default(),
            now_ms: 0,
        };
        let passes = trace_through(&self.pipeline, key, &mut env, ct);
        let verdict = passes
            .last()
            .map(|p| verdict_of(&p.x.actions, &p.trace.final_key))
            .unwrap_or(Verdict::Dropped);
        (verdict, passes)
    }
}

fn verdict_of(actions: &[DpAction], fin: &FlowKey) -> Verdict {
    let mut tunnel = None;
    let mut nw_dst = Ipv4Addr::from(fin.get(Field::NwDst) as u32);
    let mut tp_dst = fin.get(Field::TpDst) as u16;
    for a in actions {
        match a {
            DpAction::SetTunnel { id, dst, .. } => tunnel = Some((*dst, *id)),
            DpAction::SetField(Field::NwDst, v) => nw_dst = Ipv4Addr::from(*v as u32),
            DpAction::SetField(Field::TpDst, v) => tp_dst = *v as u16,
            DpAction::Output(p) => {
                return Verdict::Delivered {
                    port: *p,
                    nw_dst,
                    tp_dst,
                    tunnel,
                }
            }
            DpAction::Reply(ReplyKind::Reject) => return Verdict::Rejected,
            DpAction::Reply(ReplyKind::Arp(m)) => return Verdict::ArpReply(*m),
            _ => {}
        }
    }
    Verdict::Dropped
}

/// A packet description for [`packet`].
#[derive(Clone, Copy, Debug)]
pub struct Pkt {
    /// Ingress port.
    pub in_port: PortNo,
    /// Source MAC.
    pub dl_src: [u8; 6],
    /// Destination MAC.
    pub dl_dst: [u8; 6],
    /// Source IP.
    pub src: Ipv4Addr,
    /// Destination IP.
    pub dst: Ipv4Addr,
    /// IP protocol (6, 17, 1).
    pub proto: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// The flow key of an IPv4 packet.
pub fn packet(p: &Pkt) -> FlowKey {
    let mut k = FlowKey::ZERO;
    k.set(Field::InPort, u64::from(p.in_port));
    k.set(Field::DlSrc, mac_to_u64(p.dl_src));
    k.set(Field::DlDst, mac_to_u64(p.dl_dst));
    k.set(Field::DlType, u64::from(ethertype::IPV4));
    k.set(Field::NwSrc, u64::from(u32::from(p.src)));
    k.set(Field::NwDst, u64::from(u32::from(p.dst)));
    k.set(Field::NwProto, u64::from(p.proto));
    k.set(Field::TpSrc, u64::from(p.sport));
    k.set(Field::TpDst, u64::from(p.dport));
    k
}

/// The flow key of an ARP request from `mac`/`spa` for `tpa`.
pub fn arp_request(in_port: PortNo, mac: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> FlowKey {
    let mut k = FlowKey::ZERO;
    k.set(Field::InPort, u64::from(in_port));
    k.set(Field::DlSrc, mac_to_u64(mac));
    k.set(Field::DlDst, 0xffff_ffff_ffff);
    k.set(Field::DlType, u64::from(ethertype::ARP));
    k.set(Field::ArpOp, 1);
    k.set(Field::ArpSpa, u64::from(u32::from(spa)));
    k.set(Field::ArpTpa, u64::from(u32::from(tpa)));
    k
}

/// Names of the objects whose flows a packet hit, in order (from cookies).
pub fn objects_hit(comp: &Compiler, passes: &[Pass]) -> Vec<String> {
    flows::trace::objects_hit(comp.cookie_names(), passes)
        .into_iter()
        .map(|(_, n)| n.to_string())
        .collect()
}

/// `ct_state` for a first packet.
pub const NEW: u64 = ct_state::NEW;
/// `ct_state` for a reply of an established connection.
pub const REPLY: u64 = ct_state::EST | ct_state::RPL;
