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
//!
//! Conjunctive matches (`conjunction(ID,K/N)` flows and `conj_id=ID`) are
//! resolved per table lookup as in OVS; see `lookup_conjunctive`. A lookup
//! whose best match is an ordinary flow costs one extra bool test.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::action::{port, Action, CtArgs, Group, GroupType, PortNo, SubField};
use crate::affinity::{AffinityKey, AffinityTable};
use crate::classifier::Classifier;
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
    /// True if the result depends on the session-affinity table (a select
    /// group with `affinity_timeout`).
    pub uses_affinity: bool,
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
    /// Session affinity of select groups with `affinity_timeout`
    /// (remembering happens here).
    pub affinity: &'a mut AffinityTable,
    /// Caller's clock, for MAC aging and affinity timeouts.
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
            let p = self.p;
            let Some(t) = p.table(table) else { return };
            let (hit, conj_note) = match t.cls.lookup(&self.flow) {
                Some(e) if !e.conjunctive => (Some(e.clone()), None),
                None => (None, None),
                Some(_) => lookup_conjunctive(&t.cls, &self.flow, self.trace.is_some()),
            };
            self.out.tables.push((t.stats.clone(), hit.is_some()));
            if let Some(tr) = self.trace.as_deref_mut() {
                tr.events.push(TraceEvent::Table {
                    depth: self.depth,
                    table,
                    flow: hit.clone(),
                });
            }
            if let Some(text) = conj_note {
                self.note(|| text);
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
            // Only in conjunctive flows, which lookups never return.
            Action::Conjunction { .. } => {}
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
                    let idx = self.select_bucket(&g, total);
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

    /// The bucket index a select group with buckets of `total` weight
    /// (> 0) uses for the current flow: by hash of its selection fields (or
    /// the 5-tuple), or, with `affinity_timeout`, the bucket the client
    /// was given before if that is still in use.
    fn select_bucket(&mut self, g: &Group, total: u64) -> usize {
        let by_hash = |flow: &FlowKey| {
            let h = match &g.selection {
                Some(fields) => hash_fields(flow, fields),
                None => hash_5tuple(flow),
            };
            let mut pick = h % total;
            for (i, b) in g.buckets.iter().enumerate() {
                if pick < b.weight as u64 {
                    return i;
                }
                pick -= b.weight as u64;
            }
            0
        };
        let (Some(fields), Some(secs)) = (&g.selection, g.affinity_timeout) else {
            return by_hash(&self.flow);
        };
        self.out.uses_affinity = true;
        let key = AffinityKey::new(g.id, &self.flow, fields);
        let timeout_ms = u64::from(secs) * 1000;
        let now = self.env.now_ms;
        let usable = |b: u32| g.buckets.iter().any(|x| x.id == b && x.weight > 0);
        if let Some(b) = self.env.affinity.lookup(&key, timeout_ms, now, usable) {
            if let Some(i) = g.buckets.iter().position(|x| x.id == b) {
                self.note(|| format!("group {}: affinity keeps bucket {b}", g.id));
                return i;
            }
        }
        let i = by_hash(&self.flow);
        self.env
            .affinity
            .record(key, g.buckets[i].id, timeout_ms, now);
        i
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

/// The best match in `cls` for `key` when the highest-priority match is
/// conjunctive, following OVS (`ovs-fields(7)`, `conj_id`):
///
/// 1. every matching conjunctive flow with priority above the best matching
///    non-conjunctive ("hard") flow is collected;
/// 2. going down by priority, conjunction `ID` is complete at a priority when
///    flows of that priority matched every clause `1..=N` of it;
/// 3. for each complete id (lowest id first), the table is looked up again
///    with `conj_id=ID` among non-conjunctive flows; the first hit wins;
/// 4. otherwise the hard match (or a miss).
///
/// Returns the flow and, when `want_note`, a trace note naming the
/// conjunction that matched. `key` itself is not changed.
fn lookup_conjunctive(
    cls: &Classifier<Arc<FlowEntry>>,
    key: &FlowKey,
    want_note: bool,
) -> (Option<Arc<FlowEntry>>, Option<String>) {
    let mut hard: Option<(u16, &Arc<FlowEntry>)> = None;
    let mut soft: Vec<(u16, &Arc<FlowEntry>)> = Vec::new();
    cls.for_each_match(key, 0, |p, e| {
        if e.conjunctive {
            soft.push((p, e));
        } else if !matches!(hard, Some((hp, _)) if p <= hp) {
            hard = Some((p, e));
        }
    });
    if let Some((hp, _)) = hard {
        soft.retain(|(p, _)| *p > hp);
    }
    soft.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
    // (id, n_clauses, matched clause bits)
    let mut ids: Vec<(u32, u8, u64)> = Vec::new();
    for group in soft.chunk_by(|a, b| a.0 == b.0) {
        ids.clear();
        for (_, e) in group {
            for a in &e.spec.actions {
                let Action::Conjunction {
                    id,
                    clause,
                    n_clauses,
                } = *a
                else {
                    continue;
                };
                let bit = 1u64 << (clause.saturating_sub(1) & 63);
                match ids.iter_mut().find(|x| x.0 == id) {
                    // Flows disagreeing on N for one id never complete it.
                    Some(x) if x.1 == n_clauses => x.2 |= bit,
                    Some(_) => {}
                    None => ids.push((id, n_clauses, bit)),
                }
            }
        }
        ids.sort_unstable_by_key(|x| x.0);
        for &(id, n, bits) in &ids {
            if bits != width_mask(u32::from(n)) {
                continue;
            }
            let mut k = *key;
            k.set(Field::ConjId, u64::from(id));
            if let Some(e) = best_hard(cls, &k) {
                let note = want_note.then(|| {
                    let clauses: Vec<String> = (1..=n).map(|c| format!("{c}/{n}")).collect();
                    format!("conjunction({id}) matched: clauses {}", clauses.join(", "))
                });
                return (Some(e.clone()), note);
            }
        }
    }
    let note = (want_note && !soft.is_empty())
        .then(|| "conjunctive flows matched but no conjunction is complete".to_string());
    (hard.map(|(_, e)| e.clone()), note)
}

/// The highest-priority non-conjunctive flow matching `key`.
fn best_hard<'c>(cls: &'c Classifier<Arc<FlowEntry>>, key: &FlowKey) -> Option<&'c Arc<FlowEntry>> {
    match cls.lookup(key) {
        Some(e) if !e.conjunctive => return Some(e),
        None => return None,
        Some(_) => {}
    }
    let mut best: Option<(u16, &Arc<FlowEntry>)> = None;
    cls.for_each_match(key, 0, |p, e| {
        if !e.conjunctive && !matches!(best, Some((bp, _)) if p <= bp) {
            best = Some((p, e));
        }
    });
    best.map(|(_, e)| e)
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
    hash_fields(
        k,
        &[
            Field::NwSrc,
            Field::NwDst,
            Field::NwProto,
            Field::TpSrc,
            Field::TpDst,
        ],
    )
}

/// FNV-1a hash of the values of `fields` in `k`, in order: the bucket
/// choice of a `selection_method=hash,fields(...)` group.
pub fn hash_fields(k: &FlowKey, fields: &[Field]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &f in fields {
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
    use proptest::prelude::*;

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
        let mut env = XlateEnv {
            macs,
            affinity: &mut AffinityTable::default(),
            now_ms: 0,
        };
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
            selection: None,
            affinity_timeout: None,
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

    /// Output port chosen for a TCP connection from `client` (source
    /// port `sport`) at `now_ms`, and whether the result depends on the
    /// affinity table.
    fn affinity_out(
        p: &Pipeline,
        aff: &mut AffinityTable,
        client: u64,
        sport: u64,
        now_ms: u64,
    ) -> (PortNo, bool) {
        let mut k = key(1, 1, 2);
        k.set(Field::NwProto, 6);
        k.set(Field::NwSrc, 0x0a00_0000 | client);
        k.set(Field::NwDst, 0x0a60_0001);
        k.set(Field::TpSrc, sport);
        k.set(Field::TpDst, 80);
        let mut env = XlateEnv {
            macs: &mut MacTable::default(),
            affinity: aff,
            now_ms,
        };
        let x = translate(p, &k, &mut env, None);
        let [DpAction::Output(o)] = x.actions.as_slice() else {
            panic!("{:?}", x.actions)
        };
        (*o, x.uses_affinity)
    }

    fn affinity_pipeline(buckets: &str) -> Pipeline {
        let mut p = Pipeline::new();
        ports(
            &mut p,
            &(1..=8).map(|n| (n, VlanMode::Trunk)).collect::<Vec<_>>(),
        );
        let g = crate::syntax::parse_group(&format!(
            "group_id=1,type=select,selection_method=hash,fields(nw_src),affinity_timeout=10,\
             {buckets}"
        ))
        .unwrap();
        p.apply(
            &[
                FlowMod::AddGroup(g),
                flow(0, 1, Match::ANY, vec![Action::Group(1)]),
            ],
            0,
        )
        .unwrap();
        p
    }

    #[test]
    fn affinity_keeps_client_on_its_bucket_when_buckets_are_added() {
        let two = "bucket=bucket_id:2,output:2,bucket=bucket_id:3,output:3";
        let p = affinity_pipeline(two);
        let mut aff = AffinityTable::default();
        let firsts: Vec<PortNo> = (1..=40)
            .map(|c| affinity_out(&p, &mut aff, c, 1000, 0).0)
            .collect();
        assert!(firsts.contains(&2) && firsts.contains(&3), "{firsts:?}");
        assert!(affinity_out(&p, &mut aff, 1, 1000, 0).1);
        // Five more buckets (a plain hash would move most clients).
        let p2 = affinity_pipeline(&format!(
            "{two},bucket=bucket_id:4,output:4,bucket=bucket_id:5,output:5,\
             bucket=bucket_id:6,output:6,bucket=bucket_id:7,output:7,bucket=bucket_id:8,output:8"
        ));
        for (c, &first) in (1..=40).zip(&firsts) {
            for sport in 0..5 {
                let got = affinity_out(&p2, &mut aff, c, 2000 + sport, 5_000 + sport);
                assert_eq!(got.0, first, "client {c}");
            }
        }
        // New clients spread over all seven buckets.
        let mut seen = [0; 9];
        for c in 100..300 {
            seen[affinity_out(&p2, &mut aff, c, 1, 5_000).0 as usize] += 1;
        }
        assert!(seen[2..].iter().all(|&n| n > 0), "{seen:?}");
    }

    #[test]
    fn affinity_times_out_without_new_connections() {
        let two = "bucket=bucket_id:2,output:2,bucket=bucket_id:3,output:3";
        let p = affinity_pipeline(two);
        let p2 = affinity_pipeline(&format!(
            "{two},bucket=bucket_id:4,output:4,bucket=bucket_id:5,output:5,\
             bucket=bucket_id:6,output:6,bucket=bucket_id:7,output:7,bucket=bucket_id:8,output:8"
        ));
        let mut aff = AffinityTable::default();
        let mut moved = 0;
        for c in 1..=40 {
            let first = affinity_out(&p, &mut aff, c, 1000, 0).0;
            // Connections every 9 s keep the entry alive past 10 s.
            for (i, t) in [9_000, 18_000, 27_000].into_iter().enumerate() {
                assert_eq!(affinity_out(&p2, &mut aff, c, 1001 + i as u64, t).0, first);
            }
            // 10 s without a new connection: chosen again by hash, which is
            // the plain hash choice over the new buckets.
            let again = affinity_out(&p2, &mut aff, c, 2000, 37_000).0;
            let plain = {
                let mut fresh = AffinityTable::default();
                affinity_out(&p2, &mut fresh, c, 2000, 0).0
            };
            assert_eq!(again, plain);
            moved += usize::from(again != first);
        }
        assert!(moved > 0, "some client must have moved");
    }

    #[test]
    fn affinity_reselects_when_the_bucket_is_removed() {
        let p = affinity_pipeline("bucket=bucket_id:2,output:2,bucket=bucket_id:3,output:3");
        let mut aff = AffinityTable::default();
        let c = (1..100)
            .find(|&c| affinity_out(&p, &mut aff, c, 1, 0).0 == 3)
            .unwrap();
        let p2 = affinity_pipeline("bucket=bucket_id:2,output:2");
        assert_eq!(affinity_out(&p2, &mut aff, c, 2, 1).0, 2);
        // Bucket 3 back: the client stays on 2 (it was re-recorded).
        assert_eq!(affinity_out(&p, &mut aff, c, 3, 2).0, 2);
        // Weight 0 counts as removed.
        let p3 =
            affinity_pipeline("bucket=bucket_id:2,weight:0,output:2,bucket=bucket_id:3,output:3");
        assert_eq!(affinity_out(&p3, &mut aff, c, 4, 3).0, 3);
    }

    #[test]
    fn select_group_hash_fields_sticks_to_client_ip() {
        let mut p = Pipeline::new();
        ports(
            &mut p,
            &[
                (1, VlanMode::Trunk),
                (2, VlanMode::Trunk),
                (3, VlanMode::Trunk),
                (4, VlanMode::Trunk),
            ],
        );
        let g = crate::syntax::parse_group(
            "group_id=1,type=select,selection_method=hash,fields(ip_src),\
             bucket=output:2,bucket=output:3,bucket=output:4",
        )
        .unwrap();
        assert_eq!(g.selection, Some(vec![Field::NwSrc]));
        p.apply(
            &[
                FlowMod::AddGroup(g),
                flow(0, 1, Match::ANY, vec![Action::Group(1)]),
            ],
            0,
        )
        .unwrap();
        let mut seen = [0; 5];
        for client in 1..=60u64 {
            let mut first = None;
            for sport in 0..20u64 {
                let mut k = key(1, 1, 2);
                k.set(Field::NwProto, 6);
                k.set(Field::NwSrc, 0x0a00_0000 | client);
                k.set(Field::NwDst, 0x0a60_0001 + sport % 3);
                k.set(Field::TpSrc, 30000 + sport * 7);
                k.set(Field::TpDst, 80);
                let x = run(&p, &mut MacTable::default(), &k);
                let [DpAction::Output(o)] = x.actions.as_slice() else {
                    panic!("{:?}", x.actions)
                };
                match first {
                    None => {
                        first = Some(*o);
                        seen[*o as usize] += 1;
                    }
                    Some(f) => assert_eq!(f, *o, "client {client} moved"),
                }
            }
        }
        assert!(seen[2] > 5 && seen[3] > 5 && seen[4] > 5, "{seen:?}");
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

    // ---- conjunctive match ----

    fn install(p: &mut Pipeline, lines: &[&str]) {
        let mods: Vec<FlowMod> = lines
            .iter()
            .map(|l| FlowMod::Add(crate::syntax::parse_flow(l).unwrap()))
            .collect();
        p.apply(&mods, 0).unwrap();
    }

    fn tcp_pkt(src: &str, dport: u64) -> FlowKey {
        crate::syntax::parse_packet(&format!("in_port=1,tcp,nw_src={src},tp_dst={dport}")).unwrap()
    }

    fn conj_pipeline(extra: &[&str]) -> Pipeline {
        let mut p = Pipeline::new();
        ports(
            &mut p,
            &[
                (1, VlanMode::Trunk),
                (2, VlanMode::Trunk),
                (3, VlanMode::Trunk),
                (4, VlanMode::Trunk),
            ],
        );
        let mut lines = vec![
            "priority=10,ip,nw_src=10.0.0.1 actions=conjunction(1,1/2)",
            "priority=10,ip,nw_src=10.0.0.2 actions=conjunction(1,1/2)",
            "priority=10,tcp,tp_dst=80 actions=conjunction(1,2/2)",
            "priority=10,tcp,tp_dst=443 actions=conjunction(1,2/2)",
            "priority=10,conj_id=1 actions=output:2",
            "priority=1 actions=output:3",
        ];
        lines.extend_from_slice(extra);
        install(&mut p, &lines);
        p
    }

    fn out_of(p: &Pipeline, k: &FlowKey) -> Vec<DpAction> {
        run(p, &mut MacTable::default(), k).actions
    }

    #[test]
    fn conjunction_classic_sources_times_ports() {
        let p = conj_pipeline(&[]);
        for src in ["10.0.0.1", "10.0.0.2"] {
            for port in [80, 443] {
                assert_eq!(
                    out_of(&p, &tcp_pkt(src, port)),
                    vec![DpAction::Output(2)],
                    "{src}:{port}"
                );
            }
        }
        // One clause only: falls back to the lower non-conjunctive flow.
        assert_eq!(
            out_of(&p, &tcp_pkt("10.0.0.3", 80)),
            vec![DpAction::Output(3)]
        );
        assert_eq!(
            out_of(&p, &tcp_pkt("10.0.0.1", 22)),
            vec![DpAction::Output(3)]
        );
        // The conj_id flow never matches a packet by itself, and the
        // working key keeps conj_id 0.
        let mut env = XlateEnv {
            macs: &mut MacTable::default(),
            affinity: &mut AffinityTable::default(),
            now_ms: 0,
        };
        let mut tr = Trace::default();
        let k = tcp_pkt("10.0.0.2", 443);
        let x = translate(&p, &k, &mut env, Some(&mut tr));
        assert_eq!(x.actions, vec![DpAction::Output(2)]);
        assert_eq!(tr.final_key.get(Field::ConjId), 0);
        assert_eq!(x.flows.len(), 1);
        match &tr.events[0] {
            TraceEvent::Table { flow: Some(e), .. } => {
                assert_eq!(e.spec.m.get(Field::ConjId), (1, 0xffff_ffff))
            }
            other => panic!("{other:?}"),
        }
        match &tr.events[1] {
            TraceEvent::Note { text, .. } => {
                assert_eq!(text, "conjunction(1) matched: clauses 1/2, 2/2")
            }
            other => panic!("{other:?}"),
        }
        let text = crate::trace::format_trace("br0", &k, &x, &tr);
        assert!(text.contains(" 0. conj_id=1, priority 10"), "{text}");
        assert!(text.contains("-> conjunction(1) matched"), "{text}");
    }

    #[test]
    fn conjunction_without_conj_id_flow_or_below_hard_falls_back() {
        // Complete, but nothing matches conj_id=1: the hard match is used.
        let mut p = conj_pipeline(&[]);
        p.apply(
            &[FlowMod::Delete(
                crate::syntax::parse_filter("conj_id=1", false).unwrap(),
            )],
            0,
        )
        .unwrap();
        assert_eq!(
            out_of(&p, &tcp_pkt("10.0.0.1", 80)),
            vec![DpAction::Output(3)]
        );
        // A hard flow above the conjunction's priority wins.
        let p = conj_pipeline(&["priority=20,tcp,tp_dst=80 actions=output:4"]);
        assert_eq!(
            out_of(&p, &tcp_pkt("10.0.0.1", 80)),
            vec![DpAction::Output(4)]
        );
        assert_eq!(
            out_of(&p, &tcp_pkt("10.0.0.1", 443)),
            vec![DpAction::Output(2)]
        );
        // A hard flow at the same priority hides the conjunction too (only
        // conjunctive flows strictly above the best hard match count).
        let p = conj_pipeline(&["priority=10,tcp,nw_src=10.0.0.2 actions=output:4"]);
        assert_eq!(
            out_of(&p, &tcp_pkt("10.0.0.2", 80)),
            vec![DpAction::Output(4)]
        );
        // No hard flow at all and incomplete: a miss.
        let mut p = Pipeline::new();
        install(
            &mut p,
            &["priority=10,ip,nw_src=10.0.0.1 actions=conjunction(1,1/2)"],
        );
        let x = run(&p, &mut MacTable::default(), &tcp_pkt("10.0.0.1", 80));
        assert_eq!(x.drop, Some(XlateDrop::TableMiss));
        assert_eq!(x.tables.len(), 1);
        assert!(!x.tables[0].1);
    }

    #[test]
    fn conjunction_two_ids_share_a_flow() {
        let mut p = Pipeline::new();
        ports(
            &mut p,
            &[
                (1, VlanMode::Trunk),
                (2, VlanMode::Trunk),
                (3, VlanMode::Trunk),
            ],
        );
        install(
            &mut p,
            &[
                "priority=5,ip,nw_src=10.0.0.1 actions=conjunction(1,1/2),conjunction(2,1/3)",
                "priority=5,tcp,tp_dst=80 actions=conjunction(1,2/2)",
                "priority=5,tcp,tp_dst=22 actions=conjunction(2,2/3)",
                "priority=5,in_port=1 actions=conjunction(2,3/3)",
                "conj_id=1 actions=output:2",
                "conj_id=2 actions=output:3",
            ],
        );
        assert_eq!(
            out_of(&p, &tcp_pkt("10.0.0.1", 80)),
            vec![DpAction::Output(2)]
        );
        assert_eq!(
            out_of(&p, &tcp_pkt("10.0.0.1", 22)),
            vec![DpAction::Output(3)]
        );
        assert!(out_of(&p, &tcp_pkt("10.0.0.9", 22)).is_empty());
        let mut k = tcp_pkt("10.0.0.1", 22);
        k.set(Field::InPort, 2);
        assert!(out_of(&p, &k).is_empty(), "clause 3/3 missing");
    }

    #[test]
    fn conjunction_highest_complete_priority_wins() {
        let mut p = Pipeline::new();
        ports(
            &mut p,
            &[
                (1, VlanMode::Trunk),
                (2, VlanMode::Trunk),
                (3, VlanMode::Trunk),
            ],
        );
        install(
            &mut p,
            &[
                // id 5 at priority 20: incomplete for port 80.
                "priority=20,ip,nw_src=10.0.0.1 actions=conjunction(5,1/2)",
                "priority=20,tcp,tp_dst=443 actions=conjunction(5,2/2)",
                // id 6 at priority 10.
                "priority=10,ip,nw_src=10.0.0.0/24 actions=conjunction(6,1/2)",
                "priority=10,tcp,tp_dst=80 actions=conjunction(6,2/2)",
                "priority=10,tcp,tp_dst=443 actions=conjunction(6,2/2)",
                "conj_id=5 actions=output:2",
                "conj_id=6 actions=output:3",
            ],
        );
        assert_eq!(
            out_of(&p, &tcp_pkt("10.0.0.1", 80)),
            vec![DpAction::Output(3)]
        );
        assert_eq!(
            out_of(&p, &tcp_pkt("10.0.0.1", 443)),
            vec![DpAction::Output(2)]
        );
        assert_eq!(
            out_of(&p, &tcp_pkt("10.0.0.7", 443)),
            vec![DpAction::Output(3)]
        );
        // Clauses at different priorities do not combine.
        let mut p = Pipeline::new();
        install(
            &mut p,
            &[
                "priority=20,ip,nw_src=10.0.0.1 actions=conjunction(5,1/2)",
                "priority=10,tcp,tp_dst=80 actions=conjunction(5,2/2)",
                "conj_id=5 actions=drop",
            ],
        );
        let x = run(&p, &mut MacTable::default(), &tcp_pkt("10.0.0.1", 80));
        assert_eq!(x.drop, Some(XlateDrop::TableMiss));
    }

    #[test]
    fn conjunction_rejected_when_mixed() {
        let mut p = Pipeline::new();
        let mut spec = crate::syntax::parse_flow("ip actions=conjunction(1,1/2)").unwrap();
        spec.actions.push(Action::Output(1));
        assert!(matches!(
            p.apply(&[FlowMod::Add(spec)], 0),
            Err(crate::pipeline::PipelineError::Conjunction { table: 0, .. })
        ));
    }

    /// Brute-force reference of the OVS conjunctive lookup over the
    /// installed flows of table 0: `(priority, key it must match)` of the
    /// expected flow, or `None` for a miss.
    fn reference(flows: &[Arc<FlowEntry>], key: &FlowKey) -> Option<(u16, FlowKey)> {
        let best_hard = |k: &FlowKey| {
            flows
                .iter()
                .filter(|e| !e.conjunctive && e.spec.m.matches(k))
                .map(|e| e.spec.priority)
                .max()
        };
        let hard = best_hard(key);
        let mut prios: Vec<u16> = flows
            .iter()
            .filter(|e| e.conjunctive && e.spec.m.matches(key))
            .map(|e| e.spec.priority)
            .filter(|p| !matches!(hard, Some(h) if *p <= h))
            .collect();
        prios.sort_unstable_by(|a, b| b.cmp(a));
        prios.dedup();
        for prio in prios {
            for (id, n) in [(1u32, 2u8), (2, 3)] {
                let complete = (1..=n).all(|c| {
                    flows.iter().any(|e| {
                        e.conjunctive
                            && e.spec.priority == prio
                            && e.spec.m.matches(key)
                            && e.spec.actions.contains(&Action::Conjunction {
                                id,
                                clause: c,
                                n_clauses: n,
                            })
                    })
                });
                if complete {
                    let mut k = *key;
                    k.set(Field::ConjId, id as u64);
                    if let Some(h) = best_hard(&k) {
                        return Some((h, k));
                    }
                }
            }
        }
        hard.map(|h| (h, *key))
    }

    #[derive(Clone, Debug)]
    enum ConjRule {
        /// nw_src=10.0.0.A (or any), actions conjunction(ID, K/N) list.
        Soft(u16, Option<u64>, Option<u64>, Vec<(u32, u8)>),
        /// conj_id (0 = none), nw_src last byte (None = any), output port.
        Hard(u16, u32, Option<u64>),
    }

    fn conj_rule() -> impl Strategy<Value = ConjRule> {
        let clause = prop_oneof![(Just(1u32), 1u8..=2), (Just(2u32), 1u8..=3)];
        prop_oneof![
            (
                1u16..4,
                proptest::option::of(1u64..4),
                proptest::option::of(1u64..4),
                prop::collection::vec(clause, 1..3)
            )
                .prop_map(|(p, a, b, c)| ConjRule::Soft(p, a, b, c)),
            (0u16..5, 0u32..3, proptest::option::of(1u64..4))
                .prop_map(|(p, id, a)| ConjRule::Hard(p, id, a)),
        ]
    }

    fn conj_spec(r: &ConjRule) -> FlowSpec {
        let mut m = Match::ANY;
        let mut spec = FlowSpec::default();
        match r {
            ConjRule::Soft(p, a, b, cl) => {
                m.set(Field::DlType, 0x0800);
                m.set(Field::NwProto, 6);
                if let Some(a) = a {
                    m.set(Field::NwSrc, 0x0a00_0000 | a);
                }
                if let Some(b) = b {
                    m.set(Field::TpDst, *b);
                }
                spec.priority = *p;
                let mut seen = Vec::new();
                for &(id, k) in cl {
                    if seen.contains(&id) {
                        continue;
                    }
                    seen.push(id);
                    spec.actions.push(Action::Conjunction {
                        id,
                        clause: k,
                        n_clauses: if id == 1 { 2 } else { 3 },
                    });
                }
            }
            ConjRule::Hard(p, id, a) => {
                if *id != 0 {
                    m.set(Field::ConjId, *id as u64);
                }
                if let Some(a) = a {
                    m.set(Field::DlType, 0x0800);
                    m.set(Field::NwSrc, 0x0a00_0000 | a);
                }
                spec.priority = *p;
                spec.actions = vec![Action::Output(1)];
            }
        }
        spec.m = m;
        spec
    }

    proptest::proptest! {
        #[test]
        fn conjunction_matches_brute_force(
            rules in prop::collection::vec(conj_rule(), 0..24),
            pkts in prop::collection::vec((1u64..5, 1u64..5), 1..16),
        ) {
            let mut p = Pipeline::new();
            let mods: Vec<FlowMod> = rules.iter().map(|r| FlowMod::Add(conj_spec(r))).collect();
            p.apply(&mods, 0).unwrap();
            let flows: Vec<Arc<FlowEntry>> = p
                .flows(&crate::pipeline::FlowFilter::default())
                .into_iter()
                .cloned()
                .collect();
            let cls = &p.table(0).unwrap().cls;
            for (a, b) in pkts {
                let mut k = FlowKey::ZERO;
                k.set(Field::DlType, 0x0800);
                k.set(Field::NwProto, 6);
                k.set(Field::NwSrc, 0x0a00_0000 | a);
                k.set(Field::TpDst, b);
                let (got, _) = lookup_conjunctive(cls, &k, false);
                let fast = match cls.lookup(&k) {
                    Some(e) if !e.conjunctive => Some(e.clone()),
                    None => None,
                    Some(_) => got,
                };
                match (reference(&flows, &k), fast) {
                    (None, None) => {}
                    (Some((prio, kk)), Some(e)) => {
                        prop_assert!(!e.conjunctive);
                        prop_assert_eq!(e.spec.priority, prio);
                        prop_assert!(e.spec.m.matches(&kk));
                    }
                    (want, got) => prop_assert!(false, "want {:?} got {:?}", want, got.map(|e| e.spec.clone())),
                }
            }
        }
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
            affinity: &mut AffinityTable::default(),
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
