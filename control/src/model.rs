//! The resolved network view of a [`ClusterSnapshot`]: what the flow
//! compiler needs, with Kubernetes' many optional fields decided once.
//!
//! - **Nodes**: InternalIP and IPv4 pod CIDRs (`spec.podCIDRs`, else
//!   `spec.podCIDR`); the gateway of a node is the first address of its first
//!   pod CIDR. A node whose CIDR overlaps an earlier node's (by name) is
//!   reported and left out of the overlay.
//! - **Tenants**: a namespace's tenant is its `ferrovs.io/tenant` label
//!   (namespaces without it share the tenant `default`). Each tenant has a
//!   VLAN id, used inside the switch (register 0), as conntrack zone and as
//!   VXLAN VNI. The id is the namespace label `ferrovs.io/vlan` when given,
//!   otherwise derived from a hash of the tenant name (collisions probe
//!   upwards in name order), so every node computes the same ids.
//! - **Pods**: IP (`ferrovs.io/ip` annotation, else `status.podIP`), MAC
//!   (`ferrovs.io/mac` annotation, else `0a:58` + IP as the CNI plugin sets),
//!   node, tenant, labels and named container ports. Pods without an IP,
//!   host-network pods and finished pods are not wired.
//!
//! Every problem is a [`Issue`] naming the object and field; the rest of
//! the model is still built.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::snapshot::{ClusterSnapshot, Kind, ObjectRef};

/// Namespace label naming the tenant.
pub const TENANT_LABEL: &str = "ferrovs.io/tenant";
/// Namespace label pinning the tenant's VLAN id.
pub const VLAN_LABEL: &str = "ferrovs.io/vlan";
/// Pod annotation pinning the pod's IPv4 address.
pub const IP_ANNOTATION: &str = "ferrovs.io/ip";
/// Pod annotation pinning the pod's MAC address.
pub const MAC_ANNOTATION: &str = "ferrovs.io/mac";
/// Pod annotation naming the host-side interface (when no CNI record).
pub const IFACE_ANNOTATION: &str = "ferrovs.io/interface";
/// Tenant of namespaces without [`TENANT_LABEL`].
pub const DEFAULT_TENANT: &str = "default";
/// VLAN id of the default tenant (unless pinned).
pub const DEFAULT_TENANT_VLAN: u16 = 1;

/// A problem found while resolving the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// The object at fault.
    pub object: ObjectRef,
    /// The field (`metadata.annotations.ferrovs.io/ip`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: field {}: {}", self.object, self.field, self.message)
    }
}

/// A node as the overlay needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// InternalIP (tunnel endpoint).
    pub ip: Option<Ipv4Addr>,
    /// IPv4 pod CIDRs.
    pub pod_cidrs: Vec<Ipv4Net>,
}

impl NodeInfo {
    /// The pod gateway: first host address of the first pod CIDR.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.pod_cidrs.first().map(gateway_of)
    }
}

/// First host address of a subnet.
pub fn gateway_of(net: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(1))
}

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Tenant name.
    pub name: String,
    /// VLAN id (also conntrack zone and VNI).
    pub vlan: u16,
}

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    /// Port name.
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Container port number.
    pub port: u16,
}

/// A pod as the compiler needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// MAC address.
    pub mac: [u8; 6],
    /// Node it runs on (`spec.nodeName`), empty if unscheduled.
    pub node: String,
    /// Tenant VLAN id.
    pub vlan: u16,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Named container ports.
    pub ports: Vec<NamedPort>,
    /// Host interface from the `ferrovs.io/interface` annotation.
    pub iface_annotation: Option<String>,
    /// Ready (no `Ready` condition, or `Ready=True`).
    pub ready: bool,
}

impl PodInfo {
    /// `namespace/name`.
    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }

    /// The container port named `name` for `protocol`.
    pub fn named_port(&self, name: &str, protocol: &str) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol.eq_ignore_ascii_case(protocol))
            .map(|p| p.port)
    }
}

pub use crate::attach::pod_mac;

/// The resolved view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// Nodes with a valid, non-overlapping CIDR set, by name.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Tenants by name.
    pub tenants: BTreeMap<String, Tenant>,
    /// Namespace -> tenant name.
    pub ns_tenant: BTreeMap<String, String>,
    /// Namespace labels (for namespaceSelector).
    pub ns_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Wired pods by (namespace, name).
    pub pods: BTreeMap<(String, String), PodInfo>,
    /// Problems found.
    pub issues: Vec<Issue>,
}

impl Model {
    /// Resolves `snap`.
    pub fn build(snap: &ClusterSnapshot) -> Model {
        let mut m = Model::default();
        m.build_nodes(snap);
        m.build_tenants(snap);
        m.build_pods(snap);
        m
    }

    /// VLAN id of namespace `ns` (the default tenant's if unknown).
    pub fn ns_vlan(&self, ns: &str) -> u16 {
        let tenant = self
            .ns_tenant
            .get(ns)
            .map(String::as_str)
            .unwrap_or(DEFAULT_TENANT);
        self.tenants
            .get(tenant)
            .map(|t| t.vlan)
            .unwrap_or(DEFAULT_TENANT_VLAN)
    }

    /// Labels of namespace `ns` (empty if unknown). Kubernetes adds
    /// `kubernetes.io/metadata.name` to every namespace; so does this.
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut l = self.ns_labels.get(ns).cloned().unwrap_or_default();
        l.entry("kubernetes.io/metadata.name".into())
            .or_insert_with(|| ns.to_string());
        l
    }

    /// Tenant VLAN ids in use, sorted.
    pub fn vlans(&self) -> BTreeSet<u16> {
        let mut v: BTreeSet<u16> = self.tenants.values().map(|t| t.vlan).collect();
        v.insert(self.ns_vlan(""));
        v
    }

    /// Pods on node `node`.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods.values().filter(move |p| p.node == node)
    }

    fn issue(&mut self, object: ObjectRef, field: &str, message: String) {
        self.issues.push(Issue {
            object,
            field: field.to_string(),
            message,
        });
    }

    fn build_nodes(&mut self, snap: &ClusterSnapshot) {
        let mut taken: Vec<(Ipv4Net, String)> = Vec::new();
        for node in snap.nodes() {
            let name = node.metadata.name.clone().unwrap_or_default();
            let r = ObjectRef::new(Kind::Node, "", &name);
            let spec = node.spec.clone().unwrap_or_default();
            let mut texts: Vec<String> = spec.pod_cidrs.clone().unwrap_or_default();
            if texts.is_empty() {
                texts.extend(spec.pod_cidr.clone());
            }
            let mut cidrs = Vec::new();
            for t in &texts {
                match t.parse::<Ipv4Net>() {
                    Ok(n) => {
                        let n = n.trunc();
                        if let Some((_, other)) =
                            taken.iter().find(|(o, _)| o.contains(&n) || n.contains(o))
                        {
                            let msg = format!(
                                "{t} overlaps the pod CIDR of node {other}; this CIDR is ignored"
                            );
                            self.issue(r.clone(), "spec.podCIDRs", msg);
                            continue;
                        }
                        taken.push((n, name.clone()));
                        cidrs.push(n);
                    }
                    Err(_) if t.contains(':') => {} // IPv6: not supported, ignored
                    Err(e) => self.issue(r.clone(), "spec.podCIDRs", format!("'{t}': {e}")),
                }
            }
            let ip = node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| {
                    a.iter()
                        .filter(|a| a.type_ == "InternalIP")
                        .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
                });
            if ip.is_none() {
                self.issue(
                    r.clone(),
                    "status.addresses",
                    "no IPv4 InternalIP: the node gets no tunnel".into(),
                );
            }
            self.nodes.insert(
                name.clone(),
                NodeInfo {
                    name,
                    ip,
                    pod_cidrs: cidrs,
                },
            );
        }
    }

    fn build_tenants(&mut self, snap: &ClusterSnapshot) {
        let mut pinned: BTreeMap<String, u16> = BTreeMap::new();
        let mut names: BTreeSet<String> = BTreeSet::new();
        names.insert(DEFAULT_TENANT.to_string());
        for ns in snap.namespaces() {
            let name = ns.metadata.name.clone().unwrap_or_default();
            let labels = ns.metadata.labels.clone().unwrap_or_default();
            let tenant = labels
                .get(TENANT_LABEL)
                .cloned()
                .unwrap_or_else(|| DEFAULT_TENANT.to_string());
            if let Some(v) = labels.get(VLAN_LABEL) {
                let r = ObjectRef::new(Kind::Namespace, "", &name);
                match v.parse::<u16>() {
                    Ok(vid) if (1..=4094).contains(&vid) => {
                        if let Some(&prev) = pinned.get(&tenant) {
                            if prev != vid {
                                let msg = format!("tenant {tenant} is already pinned to VLAN {prev}; {vid} ignored");
                                self.issue(r, &format!("metadata.labels.{VLAN_LABEL}"), msg);
                            }
                        } else {
                            pinned.insert(tenant.clone(), vid);
                        }
                    }
                    _ => self.issue(
                        r,
                        &format!("metadata.labels.{VLAN_LABEL}"),
                        format!("'{v}' is not a VLAN id (1..4094)"),
                    ),
                }
            }
            names.insert(tenant.clone());
            self.ns_tenant.insert(name.clone(), tenant);
            self.ns_labels.insert(name, labels);
        }
        let mut used: BTreeSet<u16> = pinned.values().copied().collect();
        if !pinned.contains_key(DEFAULT_TENANT) && used.insert(DEFAULT_TENANT_VLAN) {
            pinned.insert(DEFAULT_TENANT.to_string(), DEFAULT_TENANT_VLAN);
        }
        for name in &names {
            let vlan = match pinned.get(name) {
                Some(&v) => v,
                None => {
                    let mut v = 100 + (fnv1a(name.as_bytes()) % 3900) as u16;
                    while !used.insert(v) {
                        v = if v >= 4094 { 2 } else { v + 1 };
                    }
                    v
                }
            };
            self.tenants.insert(
                name.clone(),
                Tenant {
                    name: name.clone(),
                    vlan,
                },
            );
        }
    }

    fn build_pods(&mut self, snap: &ClusterSnapshot) {
        for pod in snap.pods() {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let r = ObjectRef::new(Kind::Pod, &ns, &name);
            let spec = pod.spec.clone().unwrap_or_default();
            if spec.host_network == Some(true) {
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            if matches!(phase.as_deref(), Some("Succeeded") | Some("Failed")) {
                continue;
            }
            let ann = pod.metadata.annotations.clone().unwrap_or_default();
            let ip = match ann.get(IP_ANNOTATION) {
                Some(t) => match t.parse::<Ipv4Addr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        let msg = format!("'{t}' is not an IPv4 address; pod not wired");
                        self.issue(r, &format!("metadata.annotations.{IP_ANNOTATION}"), msg);
                        continue;
                    }
                },
                None => pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_ref())
                    .and_then(|t| t.parse::<Ipv4Addr>().ok()),
            };
            let Some(ip) = ip else { continue };
            let mac = match ann.get(MAC_ANNOTATION) {
                Some(t) => match parse_mac(t) {
                    Some(m) => m,
                    None => {
                        let msg = format!("'{t}' is not a unicast MAC address; pod not wired");
                        self.issue(r, &format!("metadata.annotations.{MAC_ANNOTATION}"), msg);
                        continue;
                    }
                },
                None => pod_mac(ip),
            };
            let mut ports = Vec::new();
            for c in &spec.containers {
                for p in c.ports.iter().flatten() {
                    if let (Some(n), Ok(port)) = (&p.name, u16::try_from(p.container_port)) {
                        ports.push(NamedPort {
                            name: n.clone(),
                            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            port,
                        });
                    }
                }
            }
            let info = PodInfo {
                vlan: self.ns_vlan(&ns),
                namespace: ns.clone(),
                name: name.clone(),
                ip,
                mac,
                node: spec.node_name.clone().unwrap_or_default(),
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                ports,
                iface_annotation: ann.get(IFACE_ANNOTATION).cloned(),
                ready: !pod
                    .status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status != "True"),
            };
            if let Some(other) = self
                .pods
                .values()
                .find(|o| o.ip == ip && o.vlan == info.vlan)
            {
                let msg = format!(
                    "IP {ip} is already used by pod {}/{} in the same tenant; pod not wired",
                    other.namespace, other.name
                );
                self.issue(r, "status.podIP", msg);
                continue;
            }
            self.pods.insert((ns, name), info);
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (unicast only).
pub fn parse_mac(t: &str) -> Option<[u8; 6]> {
    crate::attach::parse_mac(t).filter(|m| m[0] & 1 == 0)
}

fn fnv1a(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| {
        (h ^ u32::from(x)).wrapping_mul(0x0100_0193)
    })
}

/// Error in a label selector (an unknown operator, values where none are
/// allowed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("matchExpressions[{index}]: {message}")]
pub struct SelectorError {
    /// Index of the bad expression.
    pub index: usize,
    /// What is wrong.
    pub message: String,
}

/// Kubernetes label-selector semantics: every `matchLabels` pair and every
/// `matchExpressions` entry must hold; an empty selector matches everything.
pub fn selector_matches(
    sel: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for (index, e) in sel.match_expressions.iter().flatten().enumerate() {
        let have = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or(&[]);
        let ok = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(SelectorError {
                    index,
                    message: format!("operator {} needs values", e.operator),
                })
            }
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => !have.is_some_and(|h| values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => {
                return Err(SelectorError {
                    index,
                    message: format!(
                        "unknown operator '{other}' (In, NotIn, Exists, DoesNotExist)"
                    ),
                })
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(objs: Vec<serde_json::Value>) -> ClusterSnapshot {
        let l = crate::manifests::load_values("t.json", &objs);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        l.snapshot
    }

    fn node(name: &str, ip: &str, cidr: &str) -> serde_json::Value {
        json!({"apiVersion":"v1","kind":"Node","metadata":{"name":name},
               "spec":{"podCIDR":cidr},
               "status":{"addresses":[{"type":"InternalIP","address":ip}]}})
    }

    #[test]
    fn nodes_cidrs_overlap_reported() {
        let s = snap(vec![
            node("a", "192.168.0.1", "10.244.1.0/24"),
            node("b", "192.168.0.2", "10.244.1.0/25"),
            node("c", "192.168.0.3", "10.244.3.0/24"),
        ]);
        let m = Model::build(&s);
        assert_eq!(m.nodes["a"].gateway(), Some("10.244.1.1".parse().unwrap()));
        assert!(m.nodes["b"].pod_cidrs.is_empty());
        assert_eq!(m.issues.len(), 1);
        assert!(
            m.issues[0].to_string().contains("Node b"),
            "{}",
            m.issues[0]
        );
        assert!(m.issues[0].to_string().contains("overlaps"));
    }

    #[test]
    fn tenants_pinned_and_hashed_stable() {
        let ns = |n: &str, t: Option<&str>, v: Option<&str>| {
            let mut labels = serde_json::Map::new();
            if let Some(t) = t {
                labels.insert(TENANT_LABEL.into(), json!(t));
            }
            if let Some(v) = v {
                labels.insert(VLAN_LABEL.into(), json!(v));
            }
            json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":n,"labels":labels}})
        };
        let s = snap(vec![
            ns("a1", Some("red"), Some("10")),
            ns("a2", Some("red"), None),
            ns("b", Some("blue"), None),
            ns("c", None, None),
            ns("bad", Some("green"), Some("5000")),
        ]);
        let m = Model::build(&s);
        assert_eq!(m.ns_vlan("a1"), 10);
        assert_eq!(m.ns_vlan("a2"), 10);
        assert_eq!(m.ns_vlan("c"), DEFAULT_TENANT_VLAN);
        assert_eq!(m.ns_vlan("unknown"), DEFAULT_TENANT_VLAN);
        let blue = m.ns_vlan("b");
        assert!((100..4000).contains(&blue));
        assert_eq!(m.issues.len(), 1, "{:?}", m.issues);
        assert!(m.issues[0].to_string().contains("ferrovs.io/vlan"));
        // Adding another tenant does not move blue.
        let s2 = snap(vec![
            ns("b", Some("blue"), None),
            ns("d", Some("yellow"), None),
        ]);
        assert_eq!(Model::build(&s2).ns_vlan("b"), blue);
    }

    #[test]
    fn pods_ip_mac_annotations() {
        let s = snap(vec![
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p1","namespace":"ns"},
                   "spec":{"nodeName":"a","containers":[{"name":"c","ports":[{"name":"http","containerPort":8080}]}]},
                   "status":{"podIP":"10.244.1.5"}}),
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p2","namespace":"ns",
                   "annotations":{"ferrovs.io/ip":"10.244.1.9","ferrovs.io/mac":"02:00:00:00:00:09"}},
                   "spec":{"nodeName":"a","containers":[]}}),
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"z-dup","namespace":"ns"},
                   "spec":{"nodeName":"a","containers":[]},"status":{"podIP":"10.244.1.5"}}),
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"host","namespace":"ns"},
                   "spec":{"hostNetwork":true,"containers":[]},"status":{"podIP":"192.168.0.1"}}),
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"badmac","namespace":"ns",
                   "annotations":{"ferrovs.io/mac":"01:00:00:00:00:01"}},
                   "spec":{"containers":[]},"status":{"podIP":"10.244.1.7"}}),
        ]);
        let m = Model::build(&s);
        let p1 = &m.pods[&("ns".to_string(), "p1".to_string())];
        assert_eq!(p1.mac, [0x0a, 0x58, 10, 244, 1, 5]);
        assert_eq!(p1.named_port("http", "TCP"), Some(8080));
        let p2 = &m.pods[&("ns".to_string(), "p2".to_string())];
        assert_eq!(p2.ip, "10.244.1.9".parse::<Ipv4Addr>().unwrap());
        assert_eq!(p2.mac, [2, 0, 0, 0, 0, 9]);
        assert_eq!(m.pods.len(), 2);
        let text: Vec<String> = m.issues.iter().map(|i| i.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text
            .iter()
            .any(|t| t.contains("Pod ns/badmac") && t.contains("ferrovs.io/mac")));
        assert!(text
            .iter()
            .any(|t| t.contains("Pod ns/z-dup") && t.contains("already used")));
    }

    #[test]
    fn selectors() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key":"tier","operator":"In","values":["a","b"]},
                                 {"key":"x","operator":"DoesNotExist"}]
        }))
        .unwrap();
        let l = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(selector_matches(&sel, &l(&[("app", "web"), ("tier", "a")])).unwrap());
        assert!(!selector_matches(&sel, &l(&[("app", "web"), ("tier", "c")])).unwrap());
        assert!(!selector_matches(&sel, &l(&[("app", "web"), ("tier", "a"), ("x", "")])).unwrap());
        assert!(selector_matches(&LabelSelector::default(), &l(&[])).unwrap());
        let bad: LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key":"a","operator":"Equals","values":["x"]}]}),
        )
        .unwrap();
        let e = selector_matches(&bad, &l(&[])).unwrap_err();
        assert!(e.to_string().contains("matchExpressions[0]"), "{e}");
    }
}
