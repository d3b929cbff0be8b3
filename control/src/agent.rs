//! The ferrovs-agent daemon: keeps a `ferrovsd`'s ports and flows in line
//! with the cluster.
//!
//! One [`Agent`] owns the cluster snapshot, the [`Compiler`] and the map of
//! local pods to switch ports. Each round it
//! 1. takes the changed objects (from a manifest directory re-read when a
//!    file changes, or from the Kubernetes watch),
//! 2. wires pods: a local pod's host interface comes from its CNI
//!    attachment record (`ferrovs-cni`) or its `ferrovs.io/interface`
//!    annotation; missing interfaces are added as switch ports
//!    (`add-port`), ports of pods that are gone are removed,
//! 3. recompiles what changed and sends the difference to `ferrovsd` as one
//!    `bundle`, which the switch applies atomically.
//!
//! The first round after start (after any failure to talk to ferrovsd, and
//! after ferrovsd restarted, seen as its pipeline version going down)
//! sends the whole state with `bundle --replace`: ferrovsd applies only the
//! difference, so flows that did not change keep their counters and traffic
//! is not interrupted by an agent restart. A source that goes away (API
//! server down, unreadable manifest) never flushes flows: the last good
//! state stays installed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flows::action::PortNo;
use serde_json::json;

use crate::compile::{bundle_text, full_bundle_text, Compiler, Config, PodPorts};
use crate::model::Model;
use crate::snapshot::{ClusterSnapshot, Kind, ObjectRef};

/// Errors of the agent's I/O.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The management socket could not be used.
    #[error("ferrovsd at {path}: {err} (is ferrovsd running?)")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// What failed.
        err: std::io::Error,
    },
    /// ferrovsd refused a command.
    #[error("ferrovsd refused '{cmd}': {msg}")]
    Refused {
        /// The command.
        cmd: String,
        /// Its error text.
        msg: String,
    },
    /// The answer was not the protocol's JSON.
    #[error("ferrovsd at {0}: malformed answer")]
    Protocol(PathBuf),
}

/// A client of ferrovsd's management socket (JSON lines).
#[derive(Clone, Debug)]
pub struct Ferrovsd {
    /// Socket path.
    pub socket: PathBuf,
}

impl Ferrovsd {
    /// Sends one command; returns its output.
    pub fn call(&self, args: &[&str], input: Option<&str>) -> Result<String, AgentError> {
        let sock_err = |err| AgentError::Socket {
            path: self.socket.clone(),
            err,
        };
        let mut s = UnixStream::connect(&self.socket).map_err(sock_err)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(sock_err)?;
        let req = json!({"args": args, "input": input});
        let mut line = req.to_string();
        line.push('\n');
        s.write_all(line.as_bytes()).map_err(sock_err)?;
        let mut answer = String::new();
        BufReader::new(&s)
            .read_line(&mut answer)
            .map_err(sock_err)?;
        let v: serde_json::Value =
            serde_json::from_str(&answer).map_err(|_| AgentError::Protocol(self.socket.clone()))?;
        if v["ok"].as_bool() == Some(true) {
            Ok(v["output"].as_str().unwrap_or("").to_string())
        } else {
            Err(AgentError::Refused {
                cmd: args.join(" "),
                msg: v["error"].as_str().unwrap_or("?").to_string(),
            })
        }
    }

    /// The pipeline version `show` reports (it only grows while ferrovsd
    /// runs); `None` if the answer does not say.
    pub fn version(&self) -> Result<Option<u64>, AgentError> {
        let out = self.call(&["show"], None)?;
        Ok(out
            .lines()
            .next()
            .and_then(|l| l.rsplit_once("pipeline version "))
            .and_then(|(_, v)| v.trim().parse().ok()))
    }

    /// Port name -> number.
    pub fn ports(&self) -> Result<BTreeMap<String, PortNo>, AgentError> {
        let out = self.call(&["list-ports"], None)?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let (no, name) = l.split_once(' ')?;
                Some((name.to_string(), no.parse().ok()?))
            })
            .collect())
    }
}

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name.
    pub node: String,
    /// ferrovsd's management socket.
    pub socket: PathBuf,
    /// Directory of CNI attachment records (`ferrovs-cni`'s `stateDir`).
    pub cni_state: PathBuf,
    /// Name of the flow-based VXLAN port in ferrovsd.
    pub tunnel_port: String,
    /// Name of a VLAN trunk port to the other nodes (used instead of the
    /// tunnel when given).
    pub trunk_port: Option<String>,
    /// MAC the switch answers ARP with.
    pub gateway_mac: [u8; 6],
    /// Extra `add-port` arguments for pod ports (`type=memory` in tests).
    pub port_args: Vec<String>,
}

/// Counters of one round, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Objects that changed.
    pub changed: usize,
    /// Flow/group edits sent.
    pub mods: usize,
    /// Whether the whole state was sent (`bundle --replace`).
    pub full: bool,
    /// Ports added and removed.
    pub ports_added: usize,
    /// Ports removed.
    pub ports_removed: usize,
}

/// The agent's state.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    sw: Ferrovsd,
    comp: Option<Compiler>,
    snap: ClusterSnapshot,
    ports: PodPorts,
    /// Port names this agent added (removed again when their pod goes).
    owned: BTreeSet<String>,
    synced: bool,
    /// ferrovsd's pipeline version after this agent's last round: a lower
    /// one later means ferrovsd restarted (empty), so everything is sent
    /// again.
    version: Option<u64>,
    issues: BTreeSet<String>,
    /// Wired pods on this node with their `ferrovs.io/interface`
    /// annotation; `None` until the first round, then refreshed only when
    /// a Pod, Node or Namespace changed.
    local_pods: Option<BTreeMap<(String, String), Option<String>>>,
}

impl Agent {
    /// An agent talking to the ferrovsd at `cfg.socket`.
    pub fn new(cfg: AgentConfig) -> Agent {
        Agent {
            sw: Ferrovsd {
                socket: cfg.socket.clone(),
            },
            cfg,
            comp: None,
            snap: ClusterSnapshot::new(),
            ports: PodPorts::new(),
            owned: BTreeSet::new(),
            synced: false,
            version: None,
            issues: BTreeSet::new(),
            local_pods: None,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> &ClusterSnapshot {
        &self.snap
    }

    /// The compiler (after the first round).
    pub fn compiler(&self) -> Option<&Compiler> {
        self.comp.as_ref()
    }

    /// Mutable snapshot access for event sources; report what changed to
    /// [`round`](Self::round).
    pub fn snapshot_mut(&mut self) -> &mut ClusterSnapshot {
        &mut self.snap
    }

    /// Replaces the snapshot; returns the objects that differ.
    pub fn set_snapshot(&mut self, new: ClusterSnapshot) -> Vec<ObjectRef> {
        let changed = self.snap.changed_refs(&new);
        self.snap = new;
        changed
    }

    /// One round: wire ports, compile what `changed` affects, send it.
    /// On a ferrovsd error the next round resends everything.
    pub fn round(&mut self, changed: Vec<ObjectRef>) -> Result<Round, AgentError> {
        let r = self.round_inner(changed);
        if r.is_err() {
            self.synced = false;
        }
        r
    }

    fn round_inner(&mut self, mut changed: Vec<ObjectRef>) -> Result<Round, AgentError> {
        let mut round = Round {
            changed: changed.len(),
            ..Round::default()
        };
        let version = self.sw.version()?;
        if let (Some(now), Some(before)) = (version, self.version) {
            if now < before {
                tracing::warn!(
                    version = now,
                    before,
                    "ferrovsd restarted: re-adding ports and resending all flows"
                );
                self.synced = false;
            }
        }
        let switch_ports = self.sw.ports()?;
        if self.comp.is_none() {
            let tunnel_port = switch_ports.get(&self.cfg.tunnel_port).copied();
            let trunk_port = match &self.cfg.trunk_port {
                None => None,
                Some(name) => {
                    let no = switch_ports.get(name).copied();
                    if no.is_none() {
                        tracing::warn!(port = %name, "no such trunk port in ferrovsd");
                    }
                    no
                }
            };
            if tunnel_port.is_none() && trunk_port.is_none() {
                tracing::warn!(
                    port = %self.cfg.tunnel_port,
                    "no tunnel or trunk port in ferrovsd: pods on other nodes are unreachable"
                );
            }
            self.comp = Some(Compiler::new(Config {
                node: self.cfg.node.clone(),
                tunnel_port,
                trunk_port,
                gateway_mac: self.cfg.gateway_mac,
            }));
        }
        let port_changes = self.sync_ports(&switch_ports, &changed, &mut round)?;
        changed.extend(port_changes);
        let Some(comp) = self.comp.as_mut() else {
            return Ok(round);
        };
        let mut sent = round.ports_added + round.ports_removed > 0;
        if !self.synced {
            sent = true;
            comp.full(&self.snap, &self.ports);
            let text = full_bundle_text(comp);
            round.mods = text.lines().filter(|l| !l.starts_with("name ")).count();
            round.full = true;
            self.sw.call(&["bundle", "--replace"], Some(&text))?;
            self.synced = true;
        } else if !changed.is_empty() {
            let delta = comp.update(&self.snap, &self.ports, &changed);
            round.mods = delta.mods.len();
            if !delta.is_empty() || !delta.names.is_empty() {
                sent = true;
                self.sw.call(&["bundle"], Some(&bundle_text(&delta)))?;
            }
        }
        self.version = if sent { self.sw.version()? } else { version };
        self.log_issues();
        Ok(round)
    }

    fn log_issues(&mut self) {
        let Some(comp) = &self.comp else { return };
        let now: BTreeSet<String> = comp.issues().iter().map(|i| i.to_string()).collect();
        for i in now.difference(&self.issues) {
            tracing::warn!("{i}");
        }
        self.issues = now;
    }

    /// Host interface of each local pod: CNI record, else annotation.
    /// The cluster is resolved again only when `changed` can alter the set
    /// of local pods; the CNI records are read every round.
    fn wanted_interfaces(&mut self, changed: &[ObjectRef]) -> BTreeMap<(String, String), String> {
        let stale = changed
            .iter()
            .any(|r| matches!(r.kind, Kind::Pod | Kind::Node | Kind::Namespace));
        if stale || self.local_pods.is_none() {
            let model = Model::build(&self.snap);
            self.local_pods = Some(
                model
                    .pods_on(&self.cfg.node)
                    .map(|p| (p.key(), p.iface_annotation.clone()))
                    .collect(),
            );
        }
        let (records, errors) = crate::attach::read_all(&self.cfg.cni_state);
        for e in errors {
            tracing::warn!("{e}");
        }
        let by_pod: BTreeMap<(String, String), String> = records
            .into_iter()
            .map(|a| ((a.namespace, a.pod), a.host_ifname))
            .collect();
        let mut want = BTreeMap::new();
        for (key, annotation) in self.local_pods.iter().flatten() {
            if let Some(i) = by_pod.get(key).or(annotation.as_ref()) {
                want.insert(key.clone(), i.clone());
            }
        }
        want
    }

    fn sync_ports(
        &mut self,
        switch_ports: &BTreeMap<String, PortNo>,
        changed: &[ObjectRef],
        round: &mut Round,
    ) -> Result<Vec<ObjectRef>, AgentError> {
        let want = self.wanted_interfaces(changed);
        let mut ports = PodPorts::new();
        let mut wanted_names = BTreeSet::new();
        for (key, ifname) in &want {
            wanted_names.insert(ifname.clone());
            let no = match switch_ports.get(ifname) {
                // A port already wired to a pod is this agent's (also one a
                // previous run added): removed when the pod goes.
                Some(&no) => {
                    self.owned.insert(ifname.clone());
                    no
                }
                None => {
                    let mut args: Vec<&str> = vec!["add-port", ifname];
                    args.extend(self.cfg.port_args.iter().map(String::as_str));
                    match self.sw.call(&args, None) {
                        Ok(out) => {
                            round.ports_added += 1;
                            self.owned.insert(ifname.clone());
                            match out.trim().rsplit(' ').next().and_then(|n| n.parse().ok()) {
                                Some(no) => no,
                                None => continue,
                            }
                        }
                        Err(AgentError::Refused { msg, .. }) => {
                            tracing::warn!(pod = %format!("{}/{}", key.0, key.1), interface = %ifname, "cannot add port: {msg}");
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            ports.insert(key.clone(), no);
        }
        // Ports this agent added or found wired to a pod, whose pod is
        // gone; after a restart, also ports named like ferrovs-cni's host
        // interfaces.
        let stale: Vec<String> = switch_ports
            .keys()
            .filter(|n| !wanted_names.contains(*n))
            .filter(|n| self.owned.contains(*n) || is_cni_ifname(n))
            .cloned()
            .collect();
        for name in stale {
            match self.sw.call(&["del-port", &name], None) {
                Ok(_) => round.ports_removed += 1,
                Err(AgentError::Refused { msg, .. }) => {
                    tracing::warn!(port = %name, "cannot remove port: {msg}")
                }
                Err(e) => return Err(e),
            }
            self.owned.remove(&name);
        }
        let mut changed = Vec::new();
        let keys: BTreeSet<&(String, String)> = ports.keys().chain(self.ports.keys()).collect();
        for k in keys {
            if ports.get(k) != self.ports.get(k) {
                changed.push(ObjectRef::new(Kind::Pod, &k.0, &k.1));
            }
        }
        self.ports = ports;
        Ok(changed)
    }
}

/// `fvs` + 8 hex digits: the host side of a ferrovs-cni veth.
fn is_cni_ifname(n: &str) -> bool {
    n.len() == 11 && n.starts_with("fvs") && n[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Cheap change detection for a manifest directory: every file's path, size
/// and modification time.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                stack.push(p);
            } else {
                out.push((p, md.len(), md.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Loads a manifest directory, logging every problem; `None` if the
/// directory cannot be read at all (the previous state is kept).
pub fn load_manifests(dir: &Path) -> Option<ClusterSnapshot> {
    if !dir.is_dir() {
        tracing::error!(dir = %dir.display(), "manifest directory is not readable; keeping the previous state");
        return None;
    }
    let loaded = crate::manifests::load(dir);
    for e in &loaded.errors {
        if e.is_warning() {
            tracing::warn!("{e}");
        } else {
            tracing::error!("{e}");
        }
    }
    Some(loaded.snapshot)
}
