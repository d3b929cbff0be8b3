//! The multi-table pipeline: tables of flow entries, groups and the port
//! configuration that `normal`/`flood` need.
//!
//! A [`Pipeline`] is one immutable *version*. The management thread clones
//! it, applies a batch of [`FlowMod`]s with [`Pipeline::apply`] (all or
//! nothing) and publishes the result; poll threads keep reading the version
//! they hold until they pick up the new one, so updates are hitless. Flow
//! entries are shared between versions (`Arc`), so their counters survive
//! edits that do not touch them.
//!
//! Tables are copy-on-write: a version holds `Arc<Table>`s, cloning a
//! pipeline clones 255 pointers, and an edit copies only the tables it
//! changes (`Arc::make_mut`), so one `add-flow` costs the size of its own
//! table, not of the whole pipeline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::action::{Action, Group, PortNo};
use crate::classifier::Classifier;
use crate::flow_match::Match;

/// Number of flow tables (0..=254, as OpenFlow's `OFPTT_MAX`).
pub const N_TABLES: usize = 255;

/// Per-flow counters, updated by the datapath.
#[derive(Debug, Default)]
pub struct FlowStats {
    /// Packets that hit the flow.
    pub n_packets: AtomicU64,
    /// Bytes that hit the flow.
    pub n_bytes: AtomicU64,
    /// Time of the last hit (milliseconds, caller's clock), for idle timeouts.
    pub last_used_ms: AtomicU64,
}

impl FlowStats {
    /// Adds a batch of hits.
    #[inline]
    pub fn add(&self, packets: u64, bytes: u64, now_ms: u64) {
        self.n_packets.fetch_add(packets, Ordering::Relaxed);
        self.n_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_used_ms.fetch_max(now_ms, Ordering::Relaxed);
    }
}

/// Per-table counters.
#[derive(Debug, Default)]
pub struct TableStats {
    /// Packets looked up in the table.
    pub lookups: AtomicU64,
    /// Packets that matched a flow in the table.
    pub matched: AtomicU64,
}

/// What a flow is: the `ovs-ofctl add-flow` fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSpec {
    /// Table id.
    pub table: u8,
    /// Priority (default 32768).
    pub priority: u16,
    /// The match.
    pub m: Match,
    /// Actions; empty means drop.
    pub actions: Vec<Action>,
    /// Opaque cookie.
    pub cookie: u64,
    /// Seconds without a hit before removal (0 = never).
    pub idle_timeout: u16,
    /// Seconds after installation before removal (0 = never).
    pub hard_timeout: u16,
}

impl Default for FlowSpec {
    fn default() -> Self {
        FlowSpec {
            table: 0,
            priority: DEFAULT_PRIORITY,
            m: Match::ANY,
            actions: Vec::new(),
            cookie: 0,
            idle_timeout: 0,
            hard_timeout: 0,
        }
    }
}

/// OpenFlow's default priority.
pub const DEFAULT_PRIORITY: u16 = 32768;

/// An installed flow.
#[derive(Debug)]
pub struct FlowEntry {
    /// What was installed.
    pub spec: FlowSpec,
    /// When it was installed or last modified by `add-flow` (ms).
    pub created_ms: u64,
    /// Counters.
    pub stats: Arc<FlowStats>,
    /// True if the actions are all `conjunction(...)` (precomputed so the
    /// lookup fast path tests one bool).
    pub conjunctive: bool,
}

impl FlowEntry {
    /// An entry for `spec`, computing [`conjunctive`](Self::conjunctive).
    pub fn new(spec: FlowSpec, created_ms: u64, stats: Arc<FlowStats>) -> FlowEntry {
        let conjunctive = crate::action::is_conjunctive(&spec.actions);
        FlowEntry {
            spec,
            created_ms,
            stats,
            conjunctive,
        }
    }
}

/// Which flows a `del-flows`/`mod-flows`/`dump-flows` applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowFilter {
    /// `table=N`; `None` means all tables.
    pub table: Option<u8>,
    /// The match; non-strict: flows whose match is at least as specific;
    /// strict: flows with exactly this match and priority.
    pub m: Match,
    /// Priority for strict matching.
    pub priority: u16,
    /// `cookie=V/M`: flows with `cookie & M == V & M`.
    pub cookie: u64,
    /// Cookie mask (0 = any cookie).
    pub cookie_mask: u64,
    /// `out_port=N`: flows that output to N.
    pub out_port: Option<PortNo>,
    /// Strict matching.
    pub strict: bool,
}

impl Default for FlowFilter {
    fn default() -> Self {
        FlowFilter {
            table: None,
            m: Match::ANY,
            priority: DEFAULT_PRIORITY,
            cookie: 0,
            cookie_mask: 0,
            out_port: None,
            strict: false,
        }
    }
}

impl FlowFilter {
    /// True if the installed `spec` is selected by this filter.
    pub fn selects(&self, spec: &FlowSpec) -> bool {
        if let Some(t) = self.table {
            if spec.table != t {
                return false;
            }
        }
        if spec.cookie & self.cookie_mask != self.cookie & self.cookie_mask {
            return false;
        }
        if let Some(p) = self.out_port {
            if !spec.actions.iter().any(|a| outputs_to(a, p)) {
                return false;
            }
        }
        if self.strict {
            spec.m == self.m && spec.priority == self.priority
        } else {
            spec.m.is_covered_by(&self.m)
        }
    }
}

fn outputs_to(a: &Action, p: PortNo) -> bool {
    matches!(a, Action::Output(q) if *q == p)
}

/// One edit of the flow tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowMod {
    /// `add-flow`: insert, or replace a flow with identical match+priority
    /// in the same table (its counters restart, as in OVS).
    Add(FlowSpec),
    /// `mod-flows`: replace the actions of selected flows (counters kept).
    Modify {
        /// Which flows.
        filter: FlowFilter,
        /// New actions.
        actions: Vec<Action>,
    },
    /// `del-flows`.
    Delete(FlowFilter),
    /// `add-group` / `mod-group` (replace).
    AddGroup(Group),
    /// `del-groups group_id=N` (`None`: all).
    DeleteGroup(Option<u32>),
}

/// How a switch port takes part in VLANs (OVS `tag`/`trunks`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum VlanMode {
    /// Carries all VLANs as they are (OVS: no tag, no trunks).
    #[default]
    Trunk,
    /// Access port: untagged on the wire, VLAN `tag` inside the switch.
    Access(u16),
    /// Trunk limited to these VLANs.
    Trunks(Vec<u16>),
}

/// What the pipeline needs to know about a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// OpenFlow port number.
    pub no: PortNo,
    /// Name (`veth-a`, `vxlan0`).
    pub name: String,
    /// VLAN membership for `normal`/`flood`.
    pub vlan: VlanMode,
    /// Tunnel ports are excluded from `flood` of tunnel-received packets
    /// (split horizon) like OVS does for `normal`.
    pub is_tunnel: bool,
}

impl PortInfo {
    /// True if the port carries VLAN `vid` (0 = untagged).
    pub fn carries(&self, vid: u16) -> bool {
        match &self.vlan {
            VlanMode::Trunk => true,
            VlanMode::Access(t) => *t == vid,
            VlanMode::Trunks(list) => list.contains(&vid),
        }
    }
}

/// Errors from applying flow mods. Nothing is changed when one is returned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PipelineError {
    /// `goto_table` must go forward.
    #[error("flow in table {table}: goto_table:{target} must name a later table")]
    GotoBackwards {
        /// The flow's table.
        table: u8,
        /// The target.
        target: u8,
    },
    /// `table=255` and friends.
    #[error("table {0} does not exist (tables are 0..=254)")]
    NoSuchTable(u16),
    /// A group action names a group that is not installed.
    #[error("flow in table {table}: group {group} does not exist (add it first with add-group)")]
    NoSuchGroup {
        /// The flow's table.
        table: u8,
        /// The group id.
        group: u32,
    },
    /// A group is still referenced by flows.
    #[error("group {0} is used by flows; delete them first")]
    GroupInUse(u32),
    /// `conjunction(...)` mixed with other actions, in a group bucket, or
    /// with a bad clause number.
    #[error("flow in table {table}: {msg}")]
    Conjunction {
        /// The flow's table.
        table: u8,
        /// What is wrong.
        msg: &'static str,
    },
    /// `match` lacks a prerequisite.
    #[error("flow in table {table}: field {field} needs {needs}")]
    Prerequisite {
        /// The flow's table.
        table: u8,
        /// The field.
        field: &'static str,
        /// What must be matched first.
        needs: &'static str,
    },
}

/// Summary of an applied batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Flows added (including replacements).
    pub added: usize,
    /// Flows modified.
    pub modified: usize,
    /// Flows deleted.
    pub deleted: usize,
}

/// One table.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// The flows.
    pub cls: Classifier<Arc<FlowEntry>>,
    /// Counters (shared across versions).
    pub stats: Arc<TableStats>,
}

/// One version of the whole pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// Incremented on every applied change; caches compare it.
    pub version: u64,
    /// Copy-on-write: only go through [`Pipeline::table_mut`] to change one.
    tables: Vec<Arc<Table>>,
    groups: BTreeMap<u32, Arc<Group>>,
    ports: Vec<PortInfo>,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            version: 0,
            tables: (0..N_TABLES).map(|_| Arc::new(Table::default())).collect(),
            groups: BTreeMap::new(),
            ports: Vec::new(),
        }
    }
}

impl Pipeline {
    /// An empty pipeline (every table misses, i.e. drops).
    pub fn new() -> Self {
        Self::default()
    }

    /// Table `id`.
    #[inline]
    pub fn table(&self, id: u8) -> Option<&Table> {
        self.tables.get(id as usize).map(|t| t.as_ref())
    }

    /// All tables, by id.
    pub fn tables(&self) -> impl Iterator<Item = (u8, &Table)> {
        self.tables
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u8, t.as_ref()))
    }

    /// Table `id` for writing: copied first if another version shares it.
    fn table_mut(&mut self, id: u8) -> &mut Table {
        Arc::make_mut(&mut self.tables[id as usize])
    }

    /// Removes the flows of every table for which `gone` is true, copying
    /// only the tables that lose a flow; returns how many it removed.
    fn remove_where(&mut self, only: Option<u8>, gone: impl Fn(&FlowEntry) -> bool) -> usize {
        let mut n = 0;
        for (i, t) in self.tables.iter_mut().enumerate() {
            if only.is_some_and(|o| o as usize != i) {
                continue;
            }
            if !t.cls.iter().any(|(_, _, e)| gone(e)) {
                continue;
            }
            let t = Arc::make_mut(t);
            let before = t.cls.len();
            t.cls.retain(|_, _, e| !gone(e));
            n += before - t.cls.len();
        }
        n
    }

    /// Group `id`.
    #[inline]
    pub fn group(&self, id: u32) -> Option<&Arc<Group>> {
        self.groups.get(&id)
    }

    /// All groups, by id.
    pub fn groups(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.groups.values()
    }

    /// Ports, sorted by number.
    pub fn ports(&self) -> &[PortInfo] {
        &self.ports
    }

    /// Port `no`.
    pub fn port(&self, no: PortNo) -> Option<&PortInfo> {
        self.ports
            .binary_search_by_key(&no, |p| p.no)
            .ok()
            .map(|i| &self.ports[i])
    }

    /// Port by name.
    pub fn port_by_name(&self, name: &str) -> Option<&PortInfo> {
        self.ports.iter().find(|p| p.name == name)
    }

    /// Replaces the port list (bumps the version).
    pub fn set_ports(&mut self, mut ports: Vec<PortInfo>) {
        ports.sort_by_key(|p| p.no);
        self.ports = ports;
        self.version += 1;
    }

    /// Number of flows in all tables.
    pub fn n_flows(&self) -> usize {
        self.tables.iter().map(|t| t.cls.len()).sum()
    }

    /// Flows selected by `filter`, in `dump-flows` order (table, then
    /// descending priority).
    pub fn flows(&self, filter: &FlowFilter) -> Vec<&Arc<FlowEntry>> {
        let mut out: Vec<&Arc<FlowEntry>> = self
            .tables
            .iter()
            .flat_map(|t| t.cls.iter().map(|(_, _, e)| e))
            .filter(|e| filter.selects(&e.spec))
            .collect();
        out.sort_by(|a, b| {
            (a.spec.table, std::cmp::Reverse(a.spec.priority))
                .cmp(&(b.spec.table, std::cmp::Reverse(b.spec.priority)))
        });
        out
    }

    /// Applies `mods` in order, all or nothing: on error `self` is unchanged.
    pub fn apply(&mut self, mods: &[FlowMod], now_ms: u64) -> Result<ApplySummary, PipelineError> {
        let mut next = self.clone();
        let mut sum = ApplySummary::default();
        for m in mods {
            next.apply_one(m, now_ms, &mut sum)?;
        }
        next.version = self.version + 1;
        *self = next;
        Ok(sum)
    }

    fn apply_one(
        &mut self,
        m: &FlowMod,
        now_ms: u64,
        sum: &mut ApplySummary,
    ) -> Result<(), PipelineError> {
        match m {
            FlowMod::Add(spec) => {
                self.validate(spec.table, &spec.m, &spec.actions)?;
                let entry = Arc::new(FlowEntry::new(
                    spec.clone(),
                    now_ms,
                    Arc::new(FlowStats::default()),
                ));
                entry.stats.last_used_ms.store(now_ms, Ordering::Relaxed);
                self.table_mut(spec.table)
                    .cls
                    .insert(spec.m, spec.priority, entry);
                sum.added += 1;
            }
            FlowMod::Modify { filter, actions } => {
                let victims: Vec<Arc<FlowEntry>> =
                    self.flows(filter).into_iter().cloned().collect();
                for v in victims {
                    self.validate(v.spec.table, &v.spec.m, actions)?;
                    let mut spec = v.spec.clone();
                    spec.actions = actions.clone();
                    let entry = Arc::new(FlowEntry::new(spec, v.created_ms, v.stats.clone()));
                    self.table_mut(v.spec.table)
                        .cls
                        .insert(v.spec.m, v.spec.priority, entry);
                    sum.modified += 1;
                }
            }
            FlowMod::Delete(filter) => {
                sum.deleted += self.remove_where(filter.table, |e| filter.selects(&e.spec));
            }
            FlowMod::AddGroup(g) => {
                for b in &g.buckets {
                    self.validate_actions(0, &b.actions, true)?;
                }
                self.groups.insert(g.id, Arc::new(g.clone()));
            }
            FlowMod::DeleteGroup(id) => {
                let ids: Vec<u32> = match id {
                    Some(id) => vec![*id],
                    None => self.groups.keys().copied().collect(),
                };
                for id in ids {
                    // OVS deletes the flows that use a deleted group.
                    sum.deleted +=
                        self.remove_where(None, |e| e.spec.actions.contains(&Action::Group(id)));
                    self.groups.remove(&id);
                }
            }
        }
        Ok(())
    }

    fn validate(&self, table: u8, m: &Match, actions: &[Action]) -> Result<(), PipelineError> {
        if table as usize >= N_TABLES {
            return Err(PipelineError::NoSuchTable(table as u16));
        }
        if let Err((f, p)) = m.check_prerequisites() {
            return Err(PipelineError::Prerequisite {
                table,
                field: f.name(),
                needs: prereq_text(p),
            });
        }
        self.validate_actions(table, actions, false)
    }

    fn validate_actions(
        &self,
        table: u8,
        actions: &[Action],
        in_group: bool,
    ) -> Result<(), PipelineError> {
        let n_conj = actions.iter().filter(|a| a.is_conjunction()).count();
        if n_conj > 0 {
            let msg = if in_group {
                Some("conjunction is not allowed in a group bucket")
            } else if n_conj < actions.len() {
                Some("conjunction cannot be mixed with other actions")
            } else {
                None
            };
            if let Some(msg) = msg {
                return Err(PipelineError::Conjunction { table, msg });
            }
        }
        for a in actions {
            match a {
                Action::Conjunction {
                    clause, n_clauses, ..
                } if !(2..=64).contains(n_clauses) || *clause < 1 || clause > n_clauses => {
                    return Err(PipelineError::Conjunction {
                        table,
                        msg: "conjunction clause K/N needs 1 <= K <= N and 2 <= N <= 64",
                    });
                }
                Action::GotoTable(t) if !in_group => {
                    if *t as usize >= N_TABLES {
                        return Err(PipelineError::NoSuchTable(*t as u16));
                    }
                    if *t <= table {
                        return Err(PipelineError::GotoBackwards { table, target: *t });
                    }
                }
                Action::Group(g) if !self.groups.contains_key(g) => {
                    return Err(PipelineError::NoSuchGroup { table, group: *g });
                }
                Action::Resubmit { table: Some(t), .. } | Action::GotoTable(t)
                    if *t as usize >= N_TABLES =>
                {
                    return Err(PipelineError::NoSuchTable(*t as u16));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes flows whose idle or hard timeout has passed; returns how many.
    /// Returns 0 and leaves the version alone when nothing expired.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let expired = |e: &FlowEntry| {
            let s = &e.spec;
            (s.hard_timeout > 0 && now_ms >= e.created_ms + s.hard_timeout as u64 * 1000)
                || (s.idle_timeout > 0
                    && now_ms
                        >= e.stats.last_used_ms.load(Ordering::Relaxed)
                            + s.idle_timeout as u64 * 1000)
        };
        let n = self.remove_where(None, expired);
        if n > 0 {
            self.version += 1;
        }
        n
    }
}

/// `replace-flows`: makes `cur`'s flows and groups equal to `target`'s,
/// keeping the entries (and counters) of flows that did not change, and
/// `cur`'s ports. Returns the new version and what changed.
pub fn replace_flows(cur: &Pipeline, target: Pipeline) -> (Pipeline, ApplySummary) {
    let mut next = target;
    next.ports = cur.ports.clone();
    next.version = cur.version + 1;
    let mut sum = ApplySummary::default();
    for (nt, ct) in next.tables.iter_mut().zip(cur.tables.iter()) {
        if Arc::ptr_eq(nt, ct) {
            continue;
        }
        if nt.cls.is_empty() && ct.cls.is_empty() {
            // Nothing to compare: share the current (empty) table and its
            // counters rather than copying anything.
            *nt = ct.clone();
            continue;
        }
        let nt = Arc::make_mut(nt);
        nt.stats = ct.stats.clone();
        let mut keep = Vec::new();
        for (m, prio, e) in nt.cls.iter() {
            match ct.cls.get(m, prio) {
                Some(old) if old.spec == e.spec => keep.push((*m, prio, old.clone())),
                _ => sum.added += 1,
            }
        }
        for (m, prio, old) in keep {
            nt.cls.insert(m, prio, old);
        }
        for (m, prio, _) in ct.cls.iter() {
            if nt.cls.get(m, prio).is_none() {
                sum.deleted += 1;
            }
        }
    }
    (next, sum)
}

fn prereq_text(p: crate::field::Prereq) -> &'static str {
    use crate::field::Prereq;
    match p {
        Prereq::None => "nothing",
        Prereq::IpOrArp => "ip or arp (dl_type=0x0800 or 0x0806)",
        Prereq::Arp => "arp (dl_type=0x0806)",
        Prereq::TcpUdpSctp => "tcp, udp or sctp",
        Prereq::Icmp => "icmp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::Field;

    fn spec(table: u8, prio: u16, port: u64, out: PortNo) -> FlowSpec {
        let mut m = Match::ANY;
        m.set(Field::InPort, port);
        FlowSpec {
            table,
            priority: prio,
            m,
            actions: vec![Action::Output(out)],
            ..FlowSpec::default()
        }
    }

    #[test]
    fn add_replace_delete() {
        let mut p = Pipeline::new();
        p.apply(&[FlowMod::Add(spec(0, 10, 1, 2))], 0).unwrap();
        p.apply(&[FlowMod::Add(spec(0, 10, 1, 3))], 0).unwrap();
        assert_eq!(p.n_flows(), 1);
        let sum = p
            .apply(&[FlowMod::Delete(FlowFilter::default())], 0)
            .unwrap();
        assert_eq!(sum.deleted, 1);
        assert_eq!(p.n_flows(), 0);
    }

    #[test]
    fn failed_batch_changes_nothing() {
        let mut p = Pipeline::new();
        p.apply(&[FlowMod::Add(spec(0, 10, 1, 2))], 0).unwrap();
        let v = p.version;
        let mut bad = spec(3, 10, 1, 2);
        bad.actions = vec![Action::GotoTable(2)];
        let err = p
            .apply(&[FlowMod::Add(spec(1, 5, 1, 2)), FlowMod::Add(bad)], 0)
            .unwrap_err();
        assert_eq!(
            err,
            PipelineError::GotoBackwards {
                table: 3,
                target: 2
            }
        );
        assert_eq!(p.n_flows(), 1);
        assert_eq!(p.version, v);
    }

    #[test]
    fn cookie_mask_delete() {
        let mut p = Pipeline::new();
        let mut a = spec(0, 10, 1, 2);
        a.cookie = 0x1_0001;
        let mut b = spec(0, 10, 2, 2);
        b.cookie = 0x2_0001;
        p.apply(&[FlowMod::Add(a), FlowMod::Add(b)], 0).unwrap();
        let f = FlowFilter {
            cookie: 0x1_0000,
            cookie_mask: 0xffff_0000,
            ..FlowFilter::default()
        };
        assert_eq!(p.apply(&[FlowMod::Delete(f)], 0).unwrap().deleted, 1);
        assert_eq!(p.n_flows(), 1);
    }

    #[test]
    fn timeouts() {
        let mut p = Pipeline::new();
        let mut a = spec(0, 10, 1, 2);
        a.hard_timeout = 5;
        let mut b = spec(0, 10, 2, 2);
        b.idle_timeout = 2;
        p.apply(&[FlowMod::Add(a), FlowMod::Add(b)], 1000).unwrap();
        assert_eq!(p.expire(2000), 0);
        assert_eq!(p.expire(3000), 1); // idle one
        assert_eq!(p.expire(6000), 1); // hard one
    }

    #[test]
    fn replace_keeps_unchanged_counters() {
        let mut p = Pipeline::new();
        p.apply(
            &[
                FlowMod::Add(spec(0, 10, 1, 2)),
                FlowMod::Add(spec(0, 10, 2, 2)),
            ],
            0,
        )
        .unwrap();
        let kept = p.flows(&FlowFilter::default())[0].stats.clone();
        kept.add(3, 300, 0);
        let mut target = Pipeline::new();
        let first = p.flows(&FlowFilter::default())[0].spec.clone();
        target
            .apply(&[FlowMod::Add(first), FlowMod::Add(spec(0, 10, 3, 2))], 0)
            .unwrap();
        let (next, sum) = replace_flows(&p, target);
        assert_eq!((sum.added, sum.deleted), (1, 1));
        assert_eq!(next.n_flows(), 2);
        let again = next
            .flows(&FlowFilter::default())
            .into_iter()
            .find(|e| Arc::ptr_eq(&e.stats, &kept));
        assert!(again.is_some(), "unchanged flow keeps its counters");
    }

    #[test]
    fn group_must_exist() {
        let mut p = Pipeline::new();
        let mut a = spec(0, 10, 1, 2);
        a.actions = vec![Action::Group(7)];
        assert!(matches!(
            p.apply(&[FlowMod::Add(a)], 0),
            Err(PipelineError::NoSuchGroup { group: 7, .. })
        ));
    }

    #[test]
    fn edits_copy_only_the_tables_they_change() {
        let mut p = Pipeline::new();
        p.apply(
            &[
                FlowMod::Add(spec(0, 10, 1, 2)),
                FlowMod::Add(spec(1, 10, 1, 2)),
                FlowMod::Add(spec(2, 10, 1, 2)),
            ],
            0,
        )
        .unwrap();
        let old = p.clone();
        assert!((0..N_TABLES).all(|i| Arc::ptr_eq(&old.tables[i], &p.tables[i])));
        p.apply(
            &[
                FlowMod::Add(spec(1, 20, 2, 3)),
                FlowMod::Add(spec(1, 30, 3, 3)),
            ],
            0,
        )
        .unwrap();
        assert!(Arc::ptr_eq(&old.tables[0], &p.tables[0]));
        assert!(Arc::ptr_eq(&old.tables[2], &p.tables[2]));
        assert!(!Arc::ptr_eq(&old.tables[1], &p.tables[1]));
        assert_eq!(old.table(1).unwrap().cls.len(), 1);
        assert_eq!(p.table(1).unwrap().cls.len(), 3);
        // Counters are shared by the copies.
        assert!(Arc::ptr_eq(
            &old.table(1).unwrap().stats,
            &p.table(1).unwrap().stats
        ));
        // A delete that selects nothing copies nothing; one that selects
        // flows of table 2 copies table 2 only.
        let old = p.clone();
        let none = FlowFilter {
            m: {
                let mut m = Match::ANY;
                m.set(crate::field::Field::InPort, 99);
                m
            },
            ..FlowFilter::default()
        };
        assert_eq!(p.apply(&[FlowMod::Delete(none)], 0).unwrap().deleted, 0);
        assert!((0..N_TABLES).all(|i| Arc::ptr_eq(&old.tables[i], &p.tables[i])));
        let t2 = FlowFilter {
            table: Some(2),
            ..FlowFilter::default()
        };
        assert_eq!(p.apply(&[FlowMod::Delete(t2)], 0).unwrap().deleted, 1);
        assert!(!Arc::ptr_eq(&old.tables[2], &p.tables[2]));
        assert!((0..N_TABLES)
            .filter(|&i| i != 2)
            .all(|i| Arc::ptr_eq(&old.tables[i], &p.tables[i])));
        assert_eq!(old.n_flows(), 5);
        assert_eq!(p.n_flows(), 4);
    }

    #[test]
    fn expire_copies_only_expiring_tables() {
        let mut p = Pipeline::new();
        let mut a = spec(3, 10, 1, 2);
        a.hard_timeout = 1;
        p.apply(&[FlowMod::Add(a), FlowMod::Add(spec(4, 10, 1, 2))], 0)
            .unwrap();
        let old = p.clone();
        assert_eq!(p.expire(500), 0);
        assert_eq!(p.version, old.version);
        assert_eq!(p.expire(1000), 1);
        assert_eq!(p.version, old.version + 1);
        assert!(!Arc::ptr_eq(&old.tables[3], &p.tables[3]));
        assert!(Arc::ptr_eq(&old.tables[4], &p.tables[4]));
        assert_eq!(old.n_flows(), 2);
    }

    #[test]
    fn replace_keeps_table_counters() {
        let mut p = Pipeline::new();
        p.apply(&[FlowMod::Add(spec(0, 10, 1, 2))], 0).unwrap();
        let mut target = Pipeline::new();
        target.apply(&[FlowMod::Add(spec(5, 10, 1, 2))], 0).unwrap();
        let (next, sum) = replace_flows(&p, target);
        assert_eq!((sum.added, sum.deleted), (1, 1));
        for i in 0..N_TABLES {
            assert!(
                Arc::ptr_eq(&next.tables[i].stats, &p.tables[i].stats),
                "table {i}"
            );
        }
        assert_eq!(next.table(5).unwrap().cls.len(), 1);
        assert_eq!(next.table(0).unwrap().cls.len(), 0);
    }
}
