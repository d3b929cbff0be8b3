//! Translation: runs one flow key through the pipeline and produces the
//! datapath actions for every packet with that key.
//!
//! This is ferrovs's slow path (OVS calls it `xlate`). The result, a short
//! list of [`DpAction`]s, is cached by the datapath per exact key, so the
//! fast path never walks tables. Header changes made by `set_field` and
//! friends are applied to a working copy of the key and *committed* as
//! [`DpAction::SetField`]/VLAN actions only right before something looks at
//! the packet (an output, `ct`, `controller`), as OVS does.
//!
//! With a [`Trace`] the same walk records every table visited, the flow
//! that matched and the actions run, for `ferrovs-ctl trace`.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::action::{port, Action, CtArgs, GroupType, PortNo, SubField};
use crate::field::{ethertype, ipproto, Field};
use crate::key::{width_mask, FlowKey, VLAN_CFI};
use crate::mac_learning::MacTable;
use crate::pipeline::{FlowEntry, FlowStats, Pipeline, TableStats, VlanMode};

/// Resubmit depth limit (OVS uses 64).
pub const MAX_DEPTH: usize = 64;
/// Limit on emitted datapath actions (a flood on a huge bridge is cut).
pub const MAX_DP_ACTIONS: usize = 256;

/// An action for the datapath to execute on the packet, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DpAction {
    /// Rewrite a header field (`dl_src`, `dl_dst`, `nw_src`, `nw_dst`,
    /// `nw_tos`, `tp_src`, `tp_dst`) with checksum updates.
    SetField(Field, u64),
    /// Push an 802.1Q tag with this TCI (CFI bit cleared on the wire).
    PushVlan(u16),
    /// Remove the outer 802.1Q tag.
    PopVlan,
    /// Rewrite the TCI of the existing tag.
    SetVlan(u16),
    /// Tunnel metadata for the following outputs to tunnel ports.
    SetTunnel {
        /// VNI.
        id: u64,
        /// Outer source (0 = the port's local IP).
        src: Ipv4Addr,
        /// Outer destination (0 = the port's configured remote).
        dst: Ipv4Addr,
    },
    /// Decrement the IPv4 TTL; drop if it expires.
    DecTtl,
    /// Send the packet (as it is now) out of a port.
    Output(PortNo),
    /// Run the connection tracker. With `args.table`, the packet then
    /// recirculates: its key is rebuilt from `frozen` (registers, metadata,
    /// in_port, tunnel) and the packet headers, `ct_state`/`ct_zone` are
    /// set, `recirc_id` becomes `table + 1`, and translation resumes there.
    Ct {
        /// The `ct(...)` arguments.
        args: CtArgs,
        /// The working key at the time of `ct`.
        frozen: Box<FlowKey>,
    },
    /// Punt to the controller (counted; ferrovs has no controller channel).
    Controller,
    /// Send a reply built from the packet (as it is in the datapath at this
    /// point) back out of its ingress port (`in_port` of the key).
    Reply(ReplyKind),
}

/// What [`DpAction::Reply`] answers with (ferrovs extensions, no OVS
/// equivalent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    /// `arp_reply:MAC`: an ARP reply "`arp_tpa` is at MAC" to an ARP request.
    Arp([u8; 6]),
    /// `reject`: a TCP RST (for TCP), else ICMP port unreachable.
    Reject,
}

/// Why translation decided to drop (for counters and traces).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XlateDrop {
    /// No flow matched in a table.
    TableMiss,
    /// Resubmit depth exceeded.
    TooDeep,
    /// `normal` on an access port received a tagged frame, or a trunk
    /// received a VLAN it does not carry.
    VlanNotAllowed,
    /// `arp_reply` on a packet that is not an ARP request, or `reject` on
    /// one that must not be answered (not IPv4, an ICMP error, from or to
    /// a broadcast or multicast address).
    CannotReply,
}

/// The result of translating one key.
#[derive(Clone, Debug, Default)]
pub struct Xlation {
    /// Datapath actions; empty = drop.
    pub actions: Vec<DpAction>,
    /// Counters of every flow that matched, to credit on each packet.
    pub flows: Vec<Arc<FlowStats>>,
    /// Tables looked up (to credit `lookups`), and whether they matched.
    pub tables: Vec<(Arc<TableStats>, bool)>,
    /// True if the result depends on the MAC-learning table (`normal`).
    pub uses_mac_table: bool,
    /// Set when translation itself dropped the packet somewhere.
    pub drop: Option<XlateDrop>,
}

/// One step of a trace.
#[derive(Clone, Debug)]
pub enum TraceEvent {
    /// A table was searched.
    Table {
        /// Resubmit depth (0 = top level).
        depth: usize,
        /// Table id.
        table: u8,
        /// The flow that matched, or `None` for a miss.
        flow: Option<Arc<FlowEntry>>,
    },
    /// A note at `depth` ("no match", "learned ...", "group 1 bucket 0").
    Note {
        /// Resubmit depth.
        depth: usize,
        /// Text.
        text: String,
    },
}

/// A recorded walk through the pipeline.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// Steps in order.
    pub events: Vec<TraceEvent>,
    /// The key after translation.
    pub final_key: FlowKey,
}

/// Context the translation needs from its caller.
#[derive(Debug)]
pub struct XlateEnv<'a> {
    /// MAC-learning table for `normal` (learning happens here).
    pub macs: &'a mut MacTable,
    /// Caller's clock, for MAC aging.
    pub now_ms: u64,
}

struct Ctx<'a, 'b> {
    p: &'a Pipeline,
    env: &'a mut XlateEnv<'b>,
    out: Xlation,
    /// The working key: what the packet would look like now.
    flow: FlowKey,
    /// What the packet in the datapath looks like (committed state).
    base: FlowKey,
    depth: usize,
    trace: Option<&'a mut Trace>,
    /// Set when a `ct(table=..)` froze the translation, or `reject`
    /// ended it.
    frozen: bool,
}

/// Translates `key` through `p`. Translation starts at table 0, or at the
/// table encoded in `recirc_id` after a `ct(table=N)`.
pub fn translate(
    p: &Pipeline,
    key: &FlowKey,
    env: &mut XlateEnv<'_>,
    trace: Option<&mut Trace>,
) -> Xlation {
    let mut ctx = Ctx {
        p,
        env,
        out: Xlation::default(),
        flow: *key,
        base: *key,
        depth: 0,
        trace,
        frozen: false,
    };
    let recirc = key.get(Field::RecircId);
    let start = if recirc == 0 { 0 } else { (recirc - 1) as u8 };
    ctx.do_table(start);
    if let Some(t) = ctx.trace.as_deref_mut() {
        t.final_key = ctx.flow;
    }
    ctx.out
}

impl Ctx<'_, '_> {
    fn note(&mut self, text: impl FnOnce() -> String) {
        let depth = self.depth;
        if let Some(t) = self.trace.as_deref_mut() {
            t.events.push(TraceEvent::Note {
                depth,
                text: text(),
            });
        }
    }

    fn do_table(&mut self, mut table: u8) {
        loop {
            if self.frozen {
                return;
            }
            if self.depth >= MAX_DEPTH {
                self.out.drop = Some(XlateDrop::TooDeep);
                self.note(|| "resubmit depth exceeded, dropping".into());
                return;
            }
            let Some(t) = self.p.table(table) else { return };
            let hit = t.cls.lookup(&self.flow).cloned();
            self.out.tables.push((t.stats.clone(), hit.is_some()));
            if let Some(tr) = self.trace.as_deref_mut() {
                tr.events.push(TraceEvent::Table {
                    depth: self.depth,
                    table,
                    flow: hit.clone(),
                });
            }
            let Some(entry) = hit else {
                if self.out.drop.is_none() && self.out.actions.is_empty() {
                    self.out.drop = Some(XlateDrop::TableMiss);
                }
                return;
            };
            self.out.flows.push(entry.stats.clone());
            let mut next = None;
            for a in &entry.spec.actions {
                if self.frozen {
                    return;
                }
                if let Action::GotoTable(t) = a {
                    next = Some(*t);
                    break;
                }
                self.do_action(a, table);
            }
            match next {
                Some(t) => table = t,
                None => return,
            }
        }
    }

    fn do_action(&mut self, a: &Action, table: u8) {
        let in_port = self.flow.get(Field::InPort) as PortNo;
        match a {
            Action::Output(p) => self.output(*p),
            Action::InPort => self.output_raw(in_port),
            Action::Normal => self.normal(),
            Action::Flood | Action::All => {
                let ports: Vec<PortNo> = self
                    .p
                    .ports()
                    .iter()
                    .map(|p| p.no)
                    .filter(|&n| n != in_port)
                    .collect();
                for n in ports {
                    self.output_raw(n);
                }
            }
            Action::Controller { .. } => {
                self.commit();
                self.emit(DpAction::Controller);
            }
            Action::Drop => {}
            Action::PushVlan(_) => {
                let tci = self.flow.get(Field::VlanTci) as u16;
                self.flow.set(Field::VlanTci, (tci | VLAN_CFI) as u64);
            }
            Action::PopVlan => self.flow.set(Field::VlanTci, 0),
            Action::SetVlanVid(v) => {
                let tci = self.flow.get(Field::VlanTci) as u16;
                self.flow.set(
                    Field::VlanTci,
                    ((tci & 0xe000) | VLAN_CFI | (v & 0xfff)) as u64,
                );
            }
            Action::SetVlanPcp(p) => {
                let tci = self.flow.get(Field::VlanTci) as u16;
                let pcp = ((*p as u16) & 7) << 13;
                self.flow
                    .set(Field::VlanTci, ((tci & 0x0fff) | VLAN_CFI | pcp) as u64);
            }
            Action::SetDlSrc(m) => self.flow.set(Field::DlSrc, crate::key::mac_to_u64(*m)),
            Action::SetDlDst(m) => self.flow.set(Field::DlDst, crate::key::mac_to_u64(*m)),
            Action::SetNwSrc(ip) => self.flow.set(Field::NwSrc, u32::from(*ip) as u64),
            Action::SetNwDst(ip) => self.flow.set(Field::NwDst, u32::from(*ip) as u64),
            Action::SetTpSrc(p) => self.flow.set(Field::TpSrc, *p as u64),
            Action::SetTpDst(p) => self.flow.set(Field::TpDst, *p as u64),
            Action::SetTunnel(id) => self.flow.set(Field::TunId, *id),
            Action::SetField { field, value, mask } => {
                self.flow.set_masked(*field, *value, *mask);
                if matches!(field, Field::DlVlan | Field::DlVlanPcp) {
                    let tci = self.flow.get(Field::VlanTci);
                    self.flow.set(Field::VlanTci, tci | VLAN_CFI as u64);
                }
            }
            Action::Load { value, dst } => self.write_subfield(dst, *value),
            Action::Move { src, dst } => {
                let v = read_subfield(&self.flow, src);
                self.write_subfield(dst, v);
            }
            Action::Resubmit { port, table: t } => {
                let saved = self.flow.get(Field::InPort);
                if let Some(p) = port {
                    self.flow.set(Field::InPort, *p as u64);
                }
                self.depth += 1;
                self.do_table(t.unwrap_or(table));
                self.depth -= 1;
                if port.is_some() {
                    self.flow.set(Field::InPort, saved);
                }
            }
            Action::GotoTable(_) => {} // handled by do_table
            Action::Group(id) => self.group(*id, table),
            Action::Ct(args) => {
                self.commit();
                self.emit(DpAction::Ct {
                    args: *args,
                    frozen: Box::new(self.flow),
                });
                if args.table.is_some() {
                    self.note(|| "recirculating after conntrack".into());
                    self.frozen = true;
                }
            }
            Action::CtClear => {
                self.flow.set(Field::CtState, 0);
                self.flow.set(Field::CtZone, 0);
            }
            Action::DecTtl => {
                self.commit();
                self.emit(DpAction::DecTtl);
            }
            Action::ArpReply(mac) => {
                // Answered from the packet as the datapath has it: header
                // changes not yet committed do not apply.
                let b = &self.base;
                if b.get(Field::DlType) == ethertype::ARP as u64 && b.get(Field::ArpOp) == 1 {
                    self.emit(DpAction::Reply(ReplyKind::Arp(*mac)));
                } else {
                    self.cannot_reply("arp_reply: not an ARP request, nothing sent");
                }
            }
            Action::Reject => {
                match reject_refusal(&self.base) {
                    None => self.emit(DpAction::Reply(ReplyKind::Reject)),
                    Some(why) => self.cannot_reply(why),
                }
                self.note(|| "reject: processing of the packet ends".into());
                self.frozen = true;
            }
        }
    }

    fn cannot_reply(&mut self, why: &'static str) {
        if self.out.drop.is_none() {
            self.out.drop = Some(XlateDrop::CannotReply);
        }
        self.note(|| why.into());
    }

    fn write_subfield(&mut self, dst: &SubField, value: u64) {
        let m = width_mask(dst.n_bits) << dst.ofs;
        self.flow.set_masked(dst.field, value << dst.ofs, m);
    }

    fn emit(&mut self, a: DpAction) {
        if self.out.actions.len() < MAX_DP_ACTIONS {
            self.out.actions.push(a);
        }
    }

    /// Output to `p` as OpenFlow does: `output:IN_PORT` style reserved
    /// numbers are resolved, output to the ingress port is skipped.
    fn output(&mut self, p: PortNo) {
        let in_port = self.flow.get(Field::InPort) as PortNo;
        match p {
            port::IN_PORT => self.output_raw(in_port),
            port::NORMAL => self.normal(),
            port::FLOOD | port::ALL => self.do_action(&Action::Flood, 0),
            port::CONTROLLER => self.do_action(&Action::Controller { max_len: 0 }, 0),
            _ if p == in_port => {
                self.note(|| format!("skipping output to input port {p}"));
            }
            _ => self.output_raw(p),
        }
    }

    fn output_raw(&mut self, p: PortNo) {
        if self.p.port(p).is_none() {
            self.note(|| format!("output to nonexistent port {p}"));
            return;
        }
        self.commit();
        self.emit(DpAction::Output(p));
    }

    /// Emits the actions that make the packet look like `self.flow`.
    fn commit(&mut self) {
        const HEADERS: [Field; 7] = [
            Field::DlSrc,
            Field::DlDst,
            Field::NwSrc,
            Field::NwDst,
            Field::NwTos,
            Field::TpSrc,
            Field::TpDst,
        ];
        let (f, b) = (
            self.flow.get(Field::VlanTci) as u16,
            self.base.get(Field::VlanTci) as u16,
        );
        if f != b {
            let a = match (b & VLAN_CFI != 0, f & VLAN_CFI != 0) {
                (false, true) => DpAction::PushVlan(f & !VLAN_CFI),
                (true, false) => DpAction::PopVlan,
                _ => DpAction::SetVlan(f & !VLAN_CFI),
            };
            self.emit(a);
        }
        for h in HEADERS {
            let v = self.flow.get(h);
            if v != self.base.get(h) {
                self.emit(DpAction::SetField(h, v));
            }
        }
        let tun = [Field::TunId, Field::TunSrc, Field::TunDst];
        if tun.iter().any(|&t| self.flow.get(t) != self.base.get(t)) {
            self.emit(DpAction::SetTunnel {
                id: self.flow.get(Field::TunId),
                src: Ipv4Addr::from(self.flow.get(Field::TunSrc) as u32),
                dst: Ipv4Addr::from(self.flow.get(Field::TunDst) as u32),
            });
        }
        self.base = self.flow;
    }

    fn group(&mut self, id: u32, table: u8) {
        let Some(g) = self.p.group(id).cloned() else {
            self.note(|| format!("group {id} does not exist"));
            return;
        };
        let chosen: Vec<usize> = match g.kind {
            GroupType::All => (0..g.buckets.len()).collect(),
            GroupType::Indirect => (0..g.buckets.len().min(1)).collect(),
            GroupType::Select => {
                let total: u64 = g.buckets.iter().map(|b| b.weight as u64).sum();
                if total == 0 {
                    Vec::new()
                } else {
                    let mut pick = hash_5tuple(&self.flow) % total;
                    let mut idx = 0;
                    for (i, b) in g.buckets.iter().enumerate() {
                        if pick < b.weight as u64 {
                            idx = i;
                            break;
                        }
                        pick -= b.weight as u64;
                    }
                    vec![idx]
                }
            }
        };
        for i in chosen {
            let b = &g.buckets[i];
            self.note(|| {
                format!(
                    "group {id}: bucket {}: {}",
                    b.id,
                    crate::syntax::format_actions(&b.actions)
                )
            });
            // Each bucket works on its own copy of the flow, as in OVS.
            let saved = self.flow;
            self.depth += 1;
            for a in &b.actions {
                if self.frozen {
                    break;
                }
                self.do_action(a, table);
            }
            self.depth -= 1;
            if !self.frozen {
                self.flow = saved;
            }
        }
    }

    /// The `normal` action: VLAN-aware MAC learning switch.
    fn normal(&mut self) {
        self.out.uses_mac_table = true;
        let in_port = self.flow.get(Field::InPort) as PortNo;
        let Some(inp) = self.p.port(in_port) else {
            self.note(|| format!("normal: input port {in_port} is not a bridge port"));
            return;
        };
        let tci = self.flow.get(Field::VlanTci) as u16;
        let tagged_vid = (tci & VLAN_CFI != 0).then_some(tci & 0xfff);
        let vlan = match (&inp.vlan, tagged_vid) {
            (VlanMode::Access(tag), None | Some(0)) => *tag,
            (VlanMode::Access(_), Some(_)) => {
                self.out.drop = Some(XlateDrop::VlanNotAllowed);
                self.note(|| "normal: tagged frame on access port, dropping".into());
                return;
            }
            (_, v) => {
                let v = v.unwrap_or(0);
                if !inp.carries(v) {
                    self.out.drop = Some(XlateDrop::VlanNotAllowed);
                    self.note(|| format!("normal: port {in_port} does not carry VLAN {v}"));
                    return;
                }
                v
            }
        };
        let in_is_tunnel = inp.is_tunnel;
        let src = self.flow.get(Field::DlSrc);
        let dst = self.flow.get(Field::DlDst);
        let now = self.env.now_ms;
        self.env.macs.learn(vlan, src, in_port, now);
        let known = if dst & 0x0100_0000_0000 == 0 {
            self.env.macs.lookup(vlan, dst, now)
        } else {
            None
        };
        let outs: Vec<PortNo> = match known {
            Some(p) if p == in_port => {
                self.note(|| "normal: destination is on the input port, dropping".into());
                Vec::new()
            }
            Some(p) => {
                self.note(|| format!("normal: forwarding to learned port {p} (VLAN {vlan})"));
                vec![p]
            }
            None => {
                self.note(|| format!("normal: flooding VLAN {vlan}"));
                self.p
                    .ports()
                    .iter()
                    .filter(|p| p.no != in_port && p.carries(vlan))
                    .filter(|p| !(in_is_tunnel && p.is_tunnel))
                    .map(|p| p.no)
                    .collect()
            }
        };
        let saved = self.flow.get(Field::VlanTci);
        for o in outs {
            let Some(op) = self.p.port(o) else { continue };
            let out_tci = match op.vlan {
                VlanMode::Access(_) => 0,
                _ if vlan == 0 => 0,
                _ => (saved as u16 & 0xe000) | VLAN_CFI | vlan,
            };
            self.flow.set(Field::VlanTci, out_tci as u64);
            self.output_raw(o);
        }
        self.flow.set(Field::VlanTci, saved);
    }
}

/// Why `reject` must not answer a packet with key `k`, or `None` if it
/// may (RFC 1122 3.2.2: no ICMP error about an ICMP error, a broadcast or
/// multicast, or a packet whose source is not one host). TCP RSTs and
/// later fragments are refused by the datapath, which sees the headers.
pub fn reject_refusal(k: &FlowKey) -> Option<&'static str> {
    if k.get(Field::DlType) != ethertype::IPV4 as u64 {
        return Some("reject: not IPv4, nothing sent");
    }
    if k.get(Field::DlDst) & 0x0100_0000_0000 != 0 {
        return Some("reject: Ethernet broadcast or multicast, nothing sent");
    }
    let src = Ipv4Addr::from(k.get(Field::NwSrc) as u32);
    let dst = Ipv4Addr::from(k.get(Field::NwDst) as u32);
    let not_host = |a: Ipv4Addr| a.is_unspecified() || a.is_multicast() || a.is_broadcast();
    if not_host(src) || dst.is_multicast() || dst.is_broadcast() {
        return Some("reject: broadcast, multicast or unspecified address, nothing sent");
    }
    if k.get(Field::NwProto) == ipproto::ICMP as u64
        && matches!(k.get(Field::TpSrc), 3 | 4 | 5 | 11 | 12)
    {
        return Some("reject: ICMP error, nothing sent");
    }
    None
}

fn read_subfield(k: &FlowKey, sf: &SubField) -> u64 {
    (k.get(sf.field) >> sf.ofs) & width_mask(sf.n_bits)
}

/// Symmetric-free 5-tuple hash for `select` groups (FNV-1a over the fields).
pub fn hash_5tuple(k: &FlowKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in [
        Field::NwSrc,
        Field::NwDst,
        Field::NwProto,
        Field::TpSrc,
        Field::TpDst,
    ] {
        for b in k.get(f).to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::action::{Bucket, Group};
    use crate::flow_match::Match;
    use crate::pipeline::{FlowMod, FlowSpec, PortInfo};

    fn ports(p: &mut Pipeline, modes: &[(PortNo, VlanMode)]) {
        p.set_ports(
            modes
                .iter()
                .map(|(n, v)| PortInfo {
                    no: *n,
                    name: format!("p{n}"),
                    vlan: v.clone(),
                    is_tunnel: false,
                })
                .collect(),
        );
    }

    fn flow(table: u8, prio: u16, m: Match, actions: Vec<Action>) -> FlowMod {
        FlowMod::Add(FlowSpec {
            table,
            priority: prio,
            m,
            actions,
            ..FlowSpec::default()
        })
    }

    fn key(in_port: u64, src: u64, dst: u64) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::InPort, in_port);
        k.set(Field::DlSrc, src);
        k.set(Field::DlDst, dst);
        k.set(Field::DlType, 0x0800);
        k
    }

    fn run(p: &Pipeline, macs: &mut MacTable, k: &FlowKey) -> Xlation {
        let mut env = XlateEnv { macs, now_ms: 0 };
        translate(p, k, &mut env, None)
    }

    #[test]
    fn miss_drops() {
        let p = Pipeline::new();
        let x = run(&p, &mut MacTable::default(), &key(1, 1, 2));
        assert!(x.actions.is_empty());
        assert_eq!(x.drop, Some(XlateDrop::TableMiss));
    }

    #[test]
    fn resubmit_and_set_field_commit() {
        let mut p = Pipeline::new();
        ports(&mut p, &[(1, VlanMode::Trunk), (2, VlanMode::Trunk)]);
        let mut m = Match::ANY;
        m.set(Field::InPort, 1);
        p.apply(
            &[
                flow(
                    0,
                    10,
                    m,
                    vec![
                        Action::Load {
                            value: 7,
                            dst: SubField::whole(Field::Reg(0)),
                        },
                        Action::Resubmit {
                            port: None,
                            table: Some(1),
                        },
                    ],
                ),
                flow(
                    1,
                    10,
                    {
                        let mut m = Match::ANY;
                        m.set(Field::Reg(0), 7);
                        m
                    },
                    vec![Action::SetDlDst([0, 0, 0, 0, 0, 9]), Action::Output(2)],
                ),
            ],
            0,
        )
        .unwrap();
        let x = run(&p, &mut MacTable::default(), &key(1, 1, 2));
        assert_eq!(
            x.actions,
            vec![DpAction::SetField(Field::DlDst, 9), DpAction::Output(2)]
        );
        assert_eq!(x.flows.len(), 2);
    }

    #[test]
    fn goto_table_continues() {
        let mut p = Pipeline::new();
        ports(&mut p, &[(1, VlanMode::Trunk), (2, VlanMode::Trunk)]);
        p.apply(
            &[
                flow(0, 1, Match::ANY, vec![Action::GotoTable(5)]),
                flow(5, 1, Match::ANY, vec![Action::Output(2)]),
            ],
            0,
        )
        .unwrap();
        let x = run(&p, &mut MacTable::default(), &key(1, 1, 2));
        assert_eq!(x.actions, vec![DpAction::Output(2)]);
    }

    #[test]
    fn normal_learns_and_isolates_vlans() {
        let mut p = Pipeline::new();
        ports(
            &mut p,
            &[
                (1, VlanMode::Access(10)),
                (2, VlanMode::Access(10)),
                (3, VlanMode::Access(20)),
                (4, VlanMode::Trunk),
            ],
        );
        p.apply(&[flow(0, 0, Match::ANY, vec![Action::Normal])], 0)
            .unwrap();
        let mut macs = MacTable::default();
        // Unknown destination: flood VLAN 10 only: port 2 untagged, trunk 4 tagged.
        let x = run(&p, &mut macs, &key(1, 0xa, 0xffff_ffff_ffff));
        assert_eq!(
            x.actions,
            vec![
                DpAction::Output(2),
                DpAction::PushVlan(10),
                DpAction::Output(4)
            ]
        );
        assert!(x.uses_mac_table);
        // Reply from port 2 to the learned MAC goes to port 1 only.
        let x = run(&p, &mut macs, &key(2, 0xb, 0xa));
        assert_eq!(x.actions, vec![DpAction::Output(1)]);
        // A VLAN-20 host cannot reach 0xa even if it knows the MAC.
        let x = run(&p, &mut macs, &key(3, 0xc, 0xa));
        assert_eq!(x.actions, vec![DpAction::PushVlan(20), DpAction::Output(4)]);
    }

    #[test]
    fn select_group_spreads_by_5tuple() {
        let mut p = Pipeline::new();
        ports(
            &mut p,
            &[
                (1, VlanMode::Trunk),
                (2, VlanMode::Trunk),
                (3, VlanMode::Trunk),
            ],
        );
        let g = Group {
            id: 1,
            kind: GroupType::Select,
            buckets: vec![
                Bucket {
                    id: 0,
                    weight: 1,
                    actions: vec![Action::Output(2)],
                },
                Bucket {
                    id: 1,
                    weight: 1,
                    actions: vec![Action::Output(3)],
                },
            ],
        };
        p.apply(
            &[
                FlowMod::AddGroup(g),
                flow(0, 1, Match::ANY, vec![Action::Group(1)]),
            ],
            0,
        )
        .unwrap();
        let mut seen = [0; 4];
        for sport in 0..200u64 {
            let mut k = key(1, 1, 2);
            k.set(Field::NwProto, 6);
            k.set(Field::TpSrc, 1000 + sport);
            let x = run(&p, &mut MacTable::default(), &k);
            match x.actions.as_slice() {
                [DpAction::Output(o)] => seen[*o as usize] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(seen[2] > 50 && seen[3] > 50, "{seen:?}");
    }

    #[test]
    fn ct_with_table_freezes() {
        let mut p = Pipeline::new();
        ports(&mut p, &[(1, VlanMode::Trunk), (2, VlanMode::Trunk)]);
        let ct = CtArgs {
            commit: false,
            zone: 3,
            table: Some(1),
            nat: None,
        };
        let mut est = Match::ANY;
        est.set(Field::RecircId, 2);
        p.apply(
            &[
                flow(0, 1, Match::ANY, vec![Action::Ct(ct), Action::Output(2)]),
                flow(1, 1, est, vec![Action::Output(2)]),
            ],
            0,
        )
        .unwrap();
        let k = key(1, 1, 2);
        let x = run(&p, &mut MacTable::default(), &k);
        assert!(
            matches!(x.actions.as_slice(), [DpAction::Ct { args, .. }] if args.table == Some(1))
        );
        // After recirculation the datapath sets recirc_id = table + 1.
        let mut k2 = k;
        k2.set(Field::RecircId, 2);
        let x = run(&p, &mut MacTable::default(), &k2);
        assert_eq!(x.actions, vec![DpAction::Output(2)]);
    }

    #[test]
    fn arp_reply_answers_requests_only() {
        let mut p = Pipeline::new();
        ports(&mut p, &[(1, VlanMode::Trunk), (2, VlanMode::Trunk)]);
        let mac = [2, 0xfe, 0, 0, 0, 1];
        p.apply(
            &[flow(
                0,
                1,
                Match::ANY,
                vec![Action::ArpReply(mac), Action::Output(2)],
            )],
            0,
        )
        .unwrap();
        let mut k = key(1, 1, 0xffff_ffff_ffff);
        k.set(Field::DlType, 0x0806);
        k.set(Field::ArpOp, 1);
        let x = run(&p, &mut MacTable::default(), &k);
        assert_eq!(
            x.actions,
            vec![DpAction::Reply(ReplyKind::Arp(mac)), DpAction::Output(2)]
        );
        assert_eq!(
            crate::trace::format_dp_actions(&x.actions),
            "arp_reply(02:fe:00:00:00:01),2"
        );
        // An ARP reply, or IPv4, is not answered (and does not stop the list).
        k.set(Field::ArpOp, 2);
        let x = run(&p, &mut MacTable::default(), &k);
        assert_eq!(x.actions, vec![DpAction::Output(2)]);
        assert_eq!(x.drop, Some(XlateDrop::CannotReply));
        let x = run(&p, &mut MacTable::default(), &key(1, 1, 2));
        assert_eq!(x.actions, vec![DpAction::Output(2)]);
    }

    #[test]
    fn reject_ends_processing() {
        let mut p = Pipeline::new();
        ports(&mut p, &[(1, VlanMode::Trunk), (2, VlanMode::Trunk)]);
        p.apply(
            &[
                flow(
                    0,
                    1,
                    Match::ANY,
                    vec![
                        Action::Resubmit {
                            port: None,
                            table: Some(1),
                        },
                        Action::Output(2),
                    ],
                ),
                flow(1, 1, Match::ANY, vec![Action::Reject, Action::Output(2)]),
            ],
            0,
        )
        .unwrap();
        let mut k = key(1, 0x0200_0000_0001, 0x0200_0000_0002);
        k.set(Field::NwSrc, 0x0a00_0001);
        k.set(Field::NwDst, 0x0a60_000a);
        k.set(Field::NwProto, 6);
        let mut t = Trace::default();
        let mut macs = MacTable::default();
        let mut env = XlateEnv {
            macs: &mut macs,
            now_ms: 0,
        };
        let x = translate(&p, &k, &mut env, Some(&mut t));
        assert_eq!(x.actions, vec![DpAction::Reply(ReplyKind::Reject)]);
        assert_eq!(crate::trace::format_dp_actions(&x.actions), "reject");
        assert!(t.events.iter().any(
            |e| matches!(e, TraceEvent::Note { text, .. } if text.contains("processing of the packet ends"))
        ));
        // Nothing to answer: still ends processing, as a drop.
        let refused = |f: &dyn Fn(&mut FlowKey)| {
            let mut k2 = k;
            f(&mut k2);
            let x = run(&p, &mut MacTable::default(), &k2);
            assert!(x.actions.is_empty(), "{:?}", x.actions);
            assert_eq!(x.drop, Some(XlateDrop::CannotReply));
        };
        refused(&|k| {
            k.set(Field::NwProto, 1);
            k.set(Field::TpSrc, 3);
        });
        refused(&|k| k.set(Field::NwDst, 0xffff_ffff));
        refused(&|k| k.set(Field::NwDst, 0xe000_00fb));
        refused(&|k| k.set(Field::NwSrc, 0));
        refused(&|k| k.set(Field::DlDst, 0xffff_ffff_ffff));
        refused(&|k| k.set(Field::DlType, 0x86dd));
        // ICMP echo and UDP are answered.
        for (proto, tp_src) in [(1, 8), (17, 5000)] {
            let mut k2 = k;
            k2.set(Field::NwProto, proto);
            k2.set(Field::TpSrc, tp_src);
            let x = run(&p, &mut MacTable::default(), &k2);
            assert_eq!(x.actions, vec![DpAction::Reply(ReplyKind::Reject)]);
        }
    }
}
