//! The flow compiler: cluster state in, the switch's flows and groups out,
//! and the difference to what was compiled before.
//!
//! Compilation is split into *units* ([`Unit`]): the fixed pipeline, the
//! overlay (tenants x nodes), one unit per pod, per Service, and all
//! NetworkPolicies together. A change to an object recompiles only the units
//! it can affect ([`Compiler::update`]); the result is diffed per unit
//! against the previous output into [`FlowMod`]s that the switch applies as
//! one atomic batch, so there is never a window where half a change is
//! installed. Everything here is pure: no I/O, no clock, deterministic
//! output for a given history.
//!
//! Object identities (cookie ids, group ids, conjunction ids) are allocated
//! once per object and kept while it exists, so that an unrelated change
//! never renumbers flows.

pub mod layout;
mod policy;
mod services;
mod wiring;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flows::action::{Group, PortNo};
use flows::flow_match::Match;
use flows::pipeline::{FlowFilter, FlowMod, FlowSpec};

use crate::model::Model;
use crate::snapshot::{ClusterSnapshot, Kind, ObjectRef};
use layout::{CookieKind, COOKIE_OBJECT_MASK};

/// What the compiler needs to know about the node it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's name (`spec.nodeName` of local pods).
    pub node: String,
    /// The flow-based VXLAN port (remote IP and VNI set per flow).
    pub tunnel_port: Option<PortNo>,
    /// A VLAN trunk to the other nodes, used instead of the tunnel when
    /// set: tenant traffic crosses it tagged with the tenant's VLAN id,
    /// addressed to the node's MAC ([`layout::node_mac`]).
    pub trunk_port: Option<PortNo>,
    /// The MAC the switch answers ARP with for the gateway and proxied IPs.
    pub gateway_mac: [u8; 6],
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node: String::new(),
            tunnel_port: None,
            trunk_port: None,
            gateway_mac: [0x02, 0xfe, 0, 0, 0, 1],
        }
    }
}

/// Switch ports of local pods: (namespace, pod name) -> OpenFlow port.
pub type PodPorts = BTreeMap<(String, String), PortNo>;

/// A part of the output compiled as a whole.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    /// Fixed tables and defaults.
    Infra,
    /// Tenants and the overlay to other nodes.
    Network,
    /// One pod (namespace, name).
    Pod(String, String),
    /// One Service (namespace, name).
    Service(String, String),
    /// All NetworkPolicies.
    Policies,
}

pub use crate::model::Issue;

/// The compiled output of one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitOutput {
    /// Flows.
    pub flows: Vec<FlowSpec>,
    /// Groups.
    pub groups: Vec<Group>,
    /// Problems.
    pub issues: Vec<Issue>,
}

/// The changes one update produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Flow and group mods, in an order the switch can apply as one batch
    /// (groups added before flows that use them, removed after).
    pub mods: Vec<FlowMod>,
    /// Cookie object parts (kind + id) that appeared, with their names.
    pub names: Vec<(u64, String)>,
    /// Units recompiled.
    pub units: usize,
}

impl Delta {
    /// True if nothing changes in the switch.
    pub fn is_empty(&self) -> bool {
        self.mods.is_empty()
    }
}

/// Stable small ids for keys, reused after release.
#[derive(Clone, Debug)]
pub(crate) struct IdAlloc<K: Ord> {
    ids: BTreeMap<K, u32>,
    keys: BTreeMap<u32, K>,
    free: Vec<u32>,
    next: u32,
}

impl<K: Ord + Clone> IdAlloc<K> {
    pub(crate) fn new(first: u32) -> Self {
        IdAlloc {
            ids: BTreeMap::new(),
            keys: BTreeMap::new(),
            free: Vec::new(),
            next: first,
        }
    }

    pub(crate) fn get(&mut self, k: &K) -> u32 {
        if let Some(&id) = self.ids.get(k) {
            return id;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.ids.insert(k.clone(), id);
        self.keys.insert(id, k.clone());
        id
    }

    pub(crate) fn release(&mut self, k: &K) {
        if let Some(id) = self.ids.remove(k) {
            self.keys.remove(&id);
            self.free.push(id);
        }
    }

    pub(crate) fn peek(&self, k: &K) -> Option<u32> {
        self.ids.get(k).copied()
    }

    /// The key holding `id`.
    pub(crate) fn key(&self, id: u32) -> Option<&K> {
        self.keys.get(&id)
    }

    /// Releases every id whose key fails `keep`.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let gone: Vec<K> = self.ids.keys().filter(|k| !keep(k)).cloned().collect();
        for k in gone {
            self.release(&k);
        }
    }
}

/// Ids the units allocate from; kept across compilations.
#[derive(Clone, Debug)]
pub(crate) struct Ids {
    /// Object -> cookie id.
    pub(crate) objects: IdAlloc<ObjectRef>,
    /// (service, port index, local-only) -> group id.
    pub(crate) groups: IdAlloc<(String, String, usize, bool)>,
    /// (policy, direction, rule, part) -> conjunction id.
    pub(crate) conj: IdAlloc<(String, String, bool, usize, usize)>,
}

impl Ids {
    /// The cookie of an object's flows, with `detail`.
    pub(crate) fn cookie(&mut self, kind: CookieKind, obj: &ObjectRef, detail: u32) -> u64 {
        layout::cookie(kind, self.objects.get(obj), detail)
    }
}

/// What the units read.
pub(crate) struct Input<'a> {
    pub(crate) cfg: &'a Config,
    pub(crate) snap: &'a ClusterSnapshot,
    pub(crate) model: &'a Model,
    pub(crate) ports: &'a PodPorts,
}

/// The compiler and what it compiled last.
#[derive(Clone, Debug)]
pub struct Compiler {
    cfg: Config,
    model: Model,
    units: BTreeMap<Unit, UnitOutput>,
    ids: Ids,
    /// EndpointSlice (namespace, name) -> Service name, to find the Service
    /// of a deleted slice.
    slice_owner: BTreeMap<(String, String), String>,
    /// Cookie (object part, or with a meaningful detail) -> name, for
    /// everything currently compiled.
    names: BTreeMap<u64, String>,
    /// How many units use each named cookie.
    cookie_refs: BTreeMap<u64, usize>,
}

impl Compiler {
    /// A compiler for this node; nothing compiled yet.
    pub fn new(cfg: Config) -> Compiler {
        Compiler {
            cfg,
            model: Model::default(),
            units: BTreeMap::new(),
            ids: Ids {
                objects: IdAlloc::new(1),
                groups: IdAlloc::new(1),
                conj: IdAlloc::new(1),
            },
            slice_owner: BTreeMap::new(),
            names: BTreeMap::new(),
            cookie_refs: BTreeMap::new(),
        }
    }

    /// The node configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The resolved model of the last compilation.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Recompiles everything and returns the difference to the previous
    /// output (all of it on the first call).
    pub fn full(&mut self, snap: &ClusterSnapshot, ports: &PodPorts) -> Delta {
        self.model = Model::build(snap);
        self.slice_owner = snap
            .endpoint_slice_owners()
            .map(|(r, svc)| ((r.namespace.clone(), r.name.clone()), svc.to_string()))
            .collect();
        let mut want: BTreeSet<Unit> = BTreeSet::new();
        want.insert(Unit::Infra);
        want.insert(Unit::Network);
        want.insert(Unit::Policies);
        for (ns, name) in self.model.pods.keys() {
            want.insert(Unit::Pod(ns.clone(), name.clone()));
        }
        for s in snap.services() {
            want.insert(Unit::Service(
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            ));
        }
        // Units that no longer exist compile to nothing.
        let mut all = want;
        all.extend(self.units.keys().cloned());
        self.recompile(snap, ports, all)
    }

    /// Recompiles what `changed` objects (and pod port changes, given as
    /// `Pod` refs) can affect; returns the difference.
    pub fn update(
        &mut self,
        snap: &ClusterSnapshot,
        ports: &PodPorts,
        changed: &[ObjectRef],
    ) -> Delta {
        let mut units: BTreeSet<Unit> = BTreeSet::new();
        let mut rebuild_model = false;
        for r in changed {
            match r.kind {
                Kind::Namespace => return self.full(snap, ports),
                Kind::Node if r.name == self.cfg.node => return self.full(snap, ports),
                Kind::Node => {
                    rebuild_model = true;
                    units.insert(Unit::Network);
                }
                Kind::Pod => {
                    rebuild_model = true;
                    units.insert(Unit::Pod(r.namespace.clone(), r.name.clone()));
                    units.insert(Unit::Policies);
                    // Services without EndpointSlices select pods directly.
                    for s in snap.services_in(&r.namespace) {
                        let has_slices = snap
                            .endpoint_slices_for(
                                &r.namespace,
                                s.metadata.name.as_deref().unwrap_or(""),
                            )
                            .next()
                            .is_some();
                        if !has_slices && s.spec.as_ref().is_some_and(|sp| sp.selector.is_some()) {
                            units.insert(Unit::Service(
                                r.namespace.clone(),
                                s.metadata.name.clone().unwrap_or_default(),
                            ));
                        }
                    }
                }
                Kind::Service => {
                    units.insert(Unit::Service(r.namespace.clone(), r.name.clone()));
                }
                Kind::EndpointSlice => {
                    let key = (r.namespace.clone(), r.name.clone());
                    let now = snap.endpoint_slice_owner(&r.namespace, &r.name);
                    if let Some(old) = self.slice_owner.remove(&key) {
                        units.insert(Unit::Service(r.namespace.clone(), old));
                    }
                    if let Some(svc) = now {
                        self.slice_owner.insert(key, svc.to_string());
                        units.insert(Unit::Service(r.namespace.clone(), svc.to_string()));
                    }
                }
                Kind::NetworkPolicy => {
                    units.insert(Unit::Policies);
                }
            }
        }
        if rebuild_model {
            self.model = Model::build(snap);
        }
        self.recompile(snap, ports, units)
    }

    fn recompile(
        &mut self,
        snap: &ClusterSnapshot,
        ports: &PodPorts,
        units: BTreeSet<Unit>,
    ) -> Delta {
        let mut delta = Delta {
            units: units.len(),
            ..Delta::default()
        };
        let mut add_groups = Vec::new();
        let mut add_flows = Vec::new();
        let mut del_flows = Vec::new();
        let mut del_groups = Vec::new();
        let model = std::mem::take(&mut self.model);
        let cfg = self.cfg.clone();
        let mut gone: Vec<ObjectRef> = Vec::new();
        let mut fresh: Vec<u64> = Vec::new();
        let sweep = units.contains(&Unit::Network) || units.contains(&Unit::Policies);
        for unit in units {
            let input = Input {
                cfg: &cfg,
                snap,
                model: &model,
                ports,
            };
            let new = self.compile_unit(&input, &unit);
            let old = self.units.remove(&unit).unwrap_or_default();
            for c in named_cookies(&new) {
                let n = self.cookie_refs.entry(c).or_insert(0);
                *n += 1;
                if *n == 1 {
                    fresh.push(c);
                }
            }
            for c in named_cookies(&old) {
                if let Some(n) = self.cookie_refs.get_mut(&c) {
                    *n -= 1;
                    if *n == 0 {
                        self.cookie_refs.remove(&c);
                        self.names.remove(&c);
                    }
                }
            }
            gone.extend(unit_object(&unit).filter(|r| !snap.contains(r)));
            diff_unit(
                &old,
                &new,
                &mut add_groups,
                &mut add_flows,
                &mut del_flows,
                &mut del_groups,
            );
            if new.flows.is_empty() && new.groups.is_empty() && new.issues.is_empty() {
                if let Unit::Service(ns, name) = &unit {
                    self.ids.groups.retain(|k| !(k.0 == *ns && k.1 == *name));
                }
            } else {
                self.units.insert(unit, new);
            }
        }
        self.model = model;
        delta
            .mods
            .extend(add_groups.into_iter().map(FlowMod::AddGroup));
        delta.mods.extend(add_flows.into_iter().map(FlowMod::Add));
        delta.mods.extend(del_flows.into_iter().map(|f: FlowSpec| {
            FlowMod::Delete(FlowFilter {
                table: Some(f.table),
                m: f.m,
                priority: f.priority,
                strict: true,
                ..FlowFilter::default()
            })
        }));
        delta.mods.extend(
            del_groups
                .into_iter()
                .map(|id| FlowMod::DeleteGroup(Some(id))),
        );
        fresh.retain(|c| self.cookie_refs.contains_key(c) && !self.names.contains_key(c));
        self.name_cookies(fresh, &mut delta);
        // Forget ids of objects that are gone.
        if sweep {
            self.ids.objects.retain(|r| snap.contains(r));
        } else {
            for r in gone {
                self.ids.objects.release(&r);
            }
        }
        delta
    }

    fn compile_unit(&mut self, input: &Input<'_>, unit: &Unit) -> UnitOutput {
        match unit {
            Unit::Infra => wiring::infra(input, &mut self.ids),
            Unit::Network => wiring::network(input, &mut self.ids),
            Unit::Pod(ns, name) => wiring::pod(input, &mut self.ids, ns, name),
            Unit::Service(ns, name) => services::service(input, &mut self.ids, ns, name),
            Unit::Policies => policy::policies(input, &mut self.ids),
        }
    }

    /// Names cookies that came into use.
    fn name_cookies(&mut self, fresh: Vec<u64>, delta: &mut Delta) {
        if fresh.is_empty() {
            return;
        }
        for c in fresh {
            let id = ((c >> 32) & 0xff_ffff) as u32;
            let object = match CookieKind::from_cookie(c) {
                Some(CookieKind::Infra) => "ferrovs-agent pipeline".to_string(),
                Some(CookieKind::Tenant) => {
                    let t = self
                        .model
                        .tenants
                        .values()
                        .find(|t| u32::from(t.vlan) == id)
                        .map(|t| t.name.clone())
                        .unwrap_or_default();
                    format!("Tenant {t} (VLAN {id})")
                }
                _ => self
                    .ids
                    .objects
                    .key(id)
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| format!("object {id}")),
            };
            let name = match detail_text(c) {
                Some(d) if c & !COOKIE_OBJECT_MASK != 0 => format!("{object} {d}"),
                _ => object,
            };
            delta.names.push((c, name.clone()));
            self.names.insert(c, name);
        }
    }

    /// Every flow currently compiled.
    pub fn flows(&self) -> impl Iterator<Item = &FlowSpec> {
        self.units.values().flat_map(|u| u.flows.iter())
    }

    /// Every group currently compiled.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.units.values().flat_map(|u| u.groups.iter())
    }

    /// The output of one unit.
    pub fn unit(&self, unit: &Unit) -> Option<&UnitOutput> {
        self.units.get(unit)
    }

    /// Current problems: the model's and every unit's.
    pub fn issues(&self) -> Vec<Issue> {
        let mut v: Vec<Issue> = self.model.issues.clone();
        for u in self.units.values() {
            v.extend(u.issues.iter().cloned());
        }
        v
    }

    /// Cookie object part (kind + id, low 32 bits zero) -> object name.
    pub fn cookie_names(&self) -> &BTreeMap<u64, String> {
        &self.names
    }

    /// The cookie object part of `obj`'s flows, if it has any.
    pub fn cookie_of(&self, obj: &ObjectRef) -> Option<u64> {
        let id = self.ids.objects.peek(obj)?;
        let c = self.names.keys().find(|c| {
            ((**c >> 32) & 0xff_ffff) as u32 == id
                && CookieKind::from_cookie(**c)
                    .is_some_and(|k| !matches!(k, CookieKind::Infra | CookieKind::Tenant))
        })?;
        Some(*c)
    }
}

/// What the detail part of a cookie means, for names: `None` when the
/// object's name says it all.
fn detail_text(cookie: u64) -> Option<String> {
    let d = (cookie & 0xffff_ffff) as u32;
    match CookieKind::from_cookie(cookie)? {
        CookieKind::Pod if d == 1 => Some("spoof guard".into()),
        CookieKind::Service if d > 0 => Some(format!("port #{}", d - 1)),
        CookieKind::Policy => {
            let dir = if d & policy::DETAIL_EGRESS != 0 {
                "egress"
            } else {
                "ingress"
            };
            let rule = d & 0xffff;
            if rule == policy::DETAIL_ISOLATION {
                Some(format!("{dir} isolation (default deny)"))
            } else if rule > 0 {
                Some(format!("{dir} rule #{}", rule - 1))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The cookies of a unit's flows that get names: each object part, and
/// each full cookie whose detail means something.
fn named_cookies(u: &UnitOutput) -> BTreeSet<u64> {
    let mut v = BTreeSet::new();
    for f in &u.flows {
        v.insert(f.cookie & COOKIE_OBJECT_MASK);
        if detail_text(f.cookie).is_some() {
            v.insert(f.cookie);
        }
    }
    v
}

/// The object a unit compiles, for units of one object.
fn unit_object(u: &Unit) -> Option<ObjectRef> {
    match u {
        Unit::Pod(ns, n) => Some(ObjectRef::new(Kind::Pod, ns, n)),
        Unit::Service(ns, n) => Some(ObjectRef::new(Kind::Service, ns, n)),
        _ => None,
    }
}

type FlowId = (u8, u16, Match);

fn flow_id(f: &FlowSpec) -> FlowId {
    (f.table, f.priority, f.m)
}

fn diff_unit(
    old: &UnitOutput,
    new: &UnitOutput,
    add_groups: &mut Vec<Group>,
    add_flows: &mut Vec<FlowSpec>,
    del_flows: &mut Vec<FlowSpec>,
    del_groups: &mut Vec<u32>,
) {
    let old_f: HashMap<FlowId, &FlowSpec> = old.flows.iter().map(|f| (flow_id(f), f)).collect();
    let new_ids: std::collections::HashSet<FlowId> = new.flows.iter().map(flow_id).collect();
    for f in &new.flows {
        if old_f.get(&flow_id(f)).is_none_or(|o| *o != f) {
            add_flows.push(f.clone());
        }
    }
    for f in &old.flows {
        if !new_ids.contains(&flow_id(f)) {
            del_flows.push(f.clone());
        }
    }
    let old_g: HashMap<u32, &Group> = old.groups.iter().map(|g| (g.id, g)).collect();
    let new_g: BTreeSet<u32> = new.groups.iter().map(|g| g.id).collect();
    for g in &new.groups {
        if old_g.get(&g.id).is_none_or(|o| *o != g) {
            add_groups.push(g.clone());
        }
    }
    for g in &old.groups {
        if !new_g.contains(&g.id) {
            del_groups.push(g.id);
        }
    }
}

/// Formats a [`Delta`] as the `bundle` text `ferrovsd` applies atomically:
/// `add FLOW`, `delete_strict MATCH`, `add-group GROUP`, `delete-group
/// group_id=N`, `name COOKIE TEXT` lines.
pub fn bundle_text(delta: &Delta) -> String {
    use flows::syntax::{format_flow_spec, format_group, format_match};
    use std::fmt::Write;
    let mut s = String::new();
    for (c, n) in &delta.names {
        let _ = writeln!(s, "name {c:#x} {n}");
    }
    for m in &delta.mods {
        let _ = match m {
            FlowMod::AddGroup(g) => writeln!(s, "add-group {}", format_group(g)),
            FlowMod::Add(f) => writeln!(s, "add {}", format_flow_spec(f)),
            FlowMod::Delete(f) => {
                let m = format_match(&f.m, f.priority);
                let sep = if m.is_empty() { "" } else { "," };
                writeln!(s, "delete_strict table={}{sep}{m}", f.table.unwrap_or(0))
            }
            FlowMod::DeleteGroup(Some(id)) => writeln!(s, "delete-group group_id={id}"),
            FlowMod::DeleteGroup(None) => writeln!(s, "delete-group"),
            FlowMod::Modify { .. } => Ok(()),
        };
    }
    s
}

/// The whole compiled state as `bundle --replace` text: every name, group
/// and flow.
pub fn full_bundle_text(c: &Compiler) -> String {
    let mut d = Delta {
        names: c
            .cookie_names()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect(),
        ..Delta::default()
    };
    d.mods.extend(c.groups().cloned().map(FlowMod::AddGroup));
    d.mods.extend(c.flows().cloned().map(FlowMod::Add));
    bundle_text(&d)
}

/// Dedupes by identity inside one unit (a later flow with the same table,
/// priority and match replaces the earlier one) and sorts for stable output.
pub(crate) fn finish(mut out: UnitOutput) -> UnitOutput {
    let mut seen: HashMap<FlowId, usize> = HashMap::new();
    let mut flows: Vec<FlowSpec> = Vec::with_capacity(out.flows.len());
    for f in out.flows.drain(..) {
        match seen.get(&flow_id(&f)) {
            Some(&i) => flows[i] = f,
            None => {
                seen.insert(flow_id(&f), flows.len());
                flows.push(f);
            }
        }
    }
    out.flows = flows;
    out
}

#[cfg(test)]
mod tests;
