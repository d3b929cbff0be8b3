//! The agent's view of the cluster: the Kubernetes objects it turns into
//! flows, held in `BTreeMap`s keyed by [`ObjectRef`] so that every iteration
//! (and therefore every flow table compiled from it) is deterministic.
//!
//! [`ClusterSnapshot`] is pure data: it is filled by the manifest loader
//! ([`crate::manifests`]) today and by a watcher later, one [`Object`] at a
//! time through [`ClusterSnapshot::apply`] / [`ClusterSnapshot::remove`].

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Namespace given to namespaced objects that name none (as `kubectl apply` does).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds of object the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
}

impl Kind {
    /// All kinds, in key order.
    pub const ALL: [Kind; 6] = [
        Kind::Node,
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
    ];

    /// The `kind:` string of manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// Parses a `kind:` string; `None` for kinds the agent does not use.
    pub fn from_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// The `apiVersion:` these objects are read in.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Node | Kind::Namespace | Kind::Pod | Kind::Service => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::Namespace)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of an object: kind, namespace (empty for cluster-scoped kinds)
/// and name. Orders by kind, then namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    /// A reference; `namespace` is ignored (kept empty) for cluster-scoped kinds.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> ObjectRef {
        let namespace = if kind.is_namespaced() { namespace } else { "" };
        ObjectRef {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectRef {
    /// `Pod default/web-1`, `Node worker-1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One Kubernetes object of a kind the agent uses.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    Node(Node),
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    NetworkPolicy(NetworkPolicy),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Node(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Node(o) => &mut o.metadata,
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
        }
    }

    /// The object's identity. A namespaced object without a namespace is in
    /// [`DEFAULT_NAMESPACE`]; a missing name is the empty string.
    pub fn object_ref(&self) -> ObjectRef {
        let kind = self.kind();
        let meta = self.metadata();
        let namespace = match meta.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => DEFAULT_NAMESPACE,
        };
        ObjectRef::new(kind, namespace, meta.name.as_deref().unwrap_or(""))
    }

    /// Gives a namespaced object without a namespace the default one, and
    /// drops any namespace from a cluster-scoped object.
    fn normalize(&mut self) {
        let kind = self.kind();
        let meta = self.metadata_mut();
        if kind.is_namespaced() {
            if meta.namespace.as_deref().unwrap_or("").is_empty() {
                meta.namespace = Some(DEFAULT_NAMESPACE.to_owned());
            }
        } else {
            meta.namespace = None;
        }
    }
}

/// The cluster objects the agent needs, in deterministic order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterSnapshot {
    nodes: BTreeMap<ObjectRef, Node>,
    namespaces: BTreeMap<ObjectRef, Namespace>,
    pods: BTreeMap<ObjectRef, Pod>,
    services: BTreeMap<ObjectRef, Service>,
    endpoint_slices: BTreeMap<ObjectRef, EndpointSlice>,
    network_policies: BTreeMap<ObjectRef, NetworkPolicy>,
}

/// Inserts or replaces; true if the map changed.
fn upsert<T: PartialEq>(map: &mut BTreeMap<ObjectRef, T>, key: ObjectRef, value: T) -> bool {
    match map.get_mut(&key) {
        Some(old) if *old == value => false,
        Some(old) => {
            *old = value;
            true
        }
        None => {
            map.insert(key, value);
            true
        }
    }
}

/// The Service an EndpointSlice belongs to (`kubernetes.io/service-name`).
fn service_of(s: &EndpointSlice) -> Option<&str> {
    s.metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .map(String::as_str)
}

/// The values of `map` whose key has `kind` and `namespace`.
fn in_namespace<'a, T>(
    map: &'a BTreeMap<ObjectRef, T>,
    kind: Kind,
    namespace: &'a str,
) -> impl Iterator<Item = &'a T> + 'a {
    map.range(ObjectRef::new(kind, namespace, "")..)
        .take_while(move |(k, _)| k.namespace == namespace)
        .map(|(_, v)| v)
}

impl ClusterSnapshot {
    pub fn new() -> ClusterSnapshot {
        ClusterSnapshot::default()
    }

    /// Inserts or replaces one object (a namespaced object without a
    /// namespace goes to `default`). Returns whether the snapshot changed:
    /// false if an equal object was already there.
    pub fn apply(&mut self, mut object: Object) -> bool {
        object.normalize();
        let key = object.object_ref();
        match object {
            Object::Node(o) => upsert(&mut self.nodes, key, o),
            Object::Namespace(o) => upsert(&mut self.namespaces, key, o),
            Object::Pod(o) => upsert(&mut self.pods, key, o),
            Object::Service(o) => upsert(&mut self.services, key, o),
            Object::EndpointSlice(o) => upsert(&mut self.endpoint_slices, key, o),
            Object::NetworkPolicy(o) => upsert(&mut self.network_policies, key, o),
        }
    }

    /// Deletes one object; returns whether it was there.
    pub fn remove(&mut self, object: &ObjectRef) -> bool {
        match object.kind {
            Kind::Node => self.nodes.remove(object).is_some(),
            Kind::Namespace => self.namespaces.remove(object).is_some(),
            Kind::Pod => self.pods.remove(object).is_some(),
            Kind::Service => self.services.remove(object).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(object).is_some(),
            Kind::NetworkPolicy => self.network_policies.remove(object).is_some(),
        }
    }

    /// A copy of the object `object` refers to, if present.
    pub fn get(&self, object: &ObjectRef) -> Option<Object> {
        match object.kind {
            Kind::Node => self.nodes.get(object).cloned().map(Object::Node),
            Kind::Namespace => self.namespaces.get(object).cloned().map(Object::Namespace),
            Kind::Pod => self.pods.get(object).cloned().map(Object::Pod),
            Kind::Service => self.services.get(object).cloned().map(Object::Service),
            Kind::EndpointSlice => self
                .endpoint_slices
                .get(object)
                .cloned()
                .map(Object::EndpointSlice),
            Kind::NetworkPolicy => self
                .network_policies
                .get(object)
                .cloned()
                .map(Object::NetworkPolicy),
        }
    }

    /// Whether an object with this identity is present.
    pub fn contains(&self, object: &ObjectRef) -> bool {
        match object.kind {
            Kind::Node => self.nodes.contains_key(object),
            Kind::Namespace => self.namespaces.contains_key(object),
            Kind::Pod => self.pods.contains_key(object),
            Kind::Service => self.services.contains_key(object),
            Kind::EndpointSlice => self.endpoint_slices.contains_key(object),
            Kind::NetworkPolicy => self.network_policies.contains_key(object),
        }
    }

    /// Identities of the objects that differ between `self` and `new`:
    /// added, removed or changed, in `refs` order. Compares in place,
    /// without copying objects.
    pub fn changed_refs(&self, new: &ClusterSnapshot) -> Vec<ObjectRef> {
        fn diff<T: PartialEq>(
            a: &BTreeMap<ObjectRef, T>,
            b: &BTreeMap<ObjectRef, T>,
            out: &mut Vec<ObjectRef>,
        ) {
            for (k, v) in a {
                if b.get(k) != Some(v) {
                    out.push(k.clone());
                }
            }
            out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
        }
        let mut out = Vec::new();
        diff(&self.nodes, &new.nodes, &mut out);
        diff(&self.namespaces, &new.namespaces, &mut out);
        diff(&self.pods, &new.pods, &mut out);
        diff(&self.services, &new.services, &mut out);
        diff(&self.endpoint_slices, &new.endpoint_slices, &mut out);
        diff(&self.network_policies, &new.network_policies, &mut out);
        out
    }

    /// Identities of all objects, by kind then namespace then name.
    pub fn refs(&self) -> impl Iterator<Item = &ObjectRef> {
        self.nodes
            .keys()
            .chain(self.namespaces.keys())
            .chain(self.pods.keys())
            .chain(self.services.keys())
            .chain(self.endpoint_slices.keys())
            .chain(self.network_policies.keys())
    }

    /// Number of objects of all kinds.
    pub fn len(&self) -> usize {
        self.nodes.len()
            + self.namespaces.len()
            + self.pods.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.network_policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of objects of one kind.
    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Node => self.nodes.len(),
            Kind::Namespace => self.namespaces.len(),
            Kind::Pod => self.pods.len(),
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.endpoint_slices.len(),
            Kind::NetworkPolicy => self.network_policies.len(),
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(&ObjectRef::new(Kind::Node, "", name))
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces
            .get(&ObjectRef::new(Kind::Namespace, "", name))
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        in_namespace(&self.pods, Kind::Pod, namespace)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&ObjectRef::new(Kind::Pod, namespace, name))
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn services_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        in_namespace(&self.services, Kind::Service, namespace)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&ObjectRef::new(Kind::Service, namespace, name))
    }

    pub fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.endpoint_slices.values()
    }

    /// The EndpointSlices of Service `namespace/service` (those labelled
    /// `kubernetes.io/service-name: <service>` in its namespace), by name.
    pub fn endpoint_slices_for<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        in_namespace(&self.endpoint_slices, Kind::EndpointSlice, namespace)
            .filter(move |s| service_of(s) == Some(service))
    }

    /// The EndpointSlices with their Service's name (by the
    /// `kubernetes.io/service-name` label; slices without it are left out).
    pub fn endpoint_slice_owners(&self) -> impl Iterator<Item = (&ObjectRef, &str)> {
        self.endpoint_slices
            .iter()
            .filter_map(|(r, s)| Some((r, service_of(s)?)))
    }

    /// The Service name of EndpointSlice `namespace/name`, if it is present
    /// and labelled.
    pub fn endpoint_slice_owner(&self, namespace: &str, name: &str) -> Option<&str> {
        let r = ObjectRef::new(Kind::EndpointSlice, namespace, name);
        service_of(self.endpoint_slices.get(&r)?)
    }

    pub fn network_policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.network_policies.values()
    }

    pub fn network_policies_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a NetworkPolicy> + 'a {
        in_namespace(&self.network_policies, Kind::NetworkPolicy, namespace)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: ns.map(str::to_owned),
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        }
    }

    fn pod(ns: Option<&str>, name: &str, ip: &str) -> Object {
        Object::Pod(Pod {
            metadata: meta(ns, name),
            status: Some(k8s_openapi::api::core::v1::PodStatus {
                pod_ip: Some(ip.to_owned()),
                ..Default::default()
            }),
            ..Pod::default()
        })
    }

    #[test]
    fn changed_refs_lists_added_removed_and_changed() {
        let mut a = ClusterSnapshot::new();
        a.apply(pod(Some("a"), "same", "10.0.0.1"));
        a.apply(pod(Some("a"), "changed", "10.0.0.2"));
        a.apply(pod(Some("a"), "gone", "10.0.0.3"));
        let mut b = ClusterSnapshot::new();
        b.apply(pod(Some("a"), "same", "10.0.0.1"));
        b.apply(pod(Some("a"), "changed", "10.0.0.9"));
        b.apply(pod(Some("a"), "new", "10.0.0.4"));
        let names: Vec<String> = a.changed_refs(&b).iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, ["changed", "gone", "new"]);
        assert!(a.changed_refs(&a.clone()).is_empty());
    }

    #[test]
    fn apply_and_remove_report_changes() {
        let mut s = ClusterSnapshot::new();
        assert!(s.apply(pod(Some("a"), "p1", "10.0.0.1")));
        assert!(!s.apply(pod(Some("a"), "p1", "10.0.0.1")));
        assert!(s.apply(pod(Some("a"), "p1", "10.0.0.2")));
        assert_eq!(s.len(), 1);
        let r = ObjectRef::new(Kind::Pod, "a", "p1");
        assert!(s.contains(&r));
        assert_eq!(r.to_string(), "Pod a/p1");
        assert!(s.remove(&r));
        assert!(!s.remove(&r));
        assert!(s.is_empty());
    }

    #[test]
    fn missing_namespace_is_default_and_cluster_scoped_has_none() {
        let mut s = ClusterSnapshot::new();
        let p = pod(None, "p", "10.0.0.1");
        assert_eq!(p.object_ref(), ObjectRef::new(Kind::Pod, "default", "p"));
        s.apply(p);
        let stored = s.pod("default", "p").unwrap();
        assert_eq!(stored.metadata.namespace.as_deref(), Some("default"));

        s.apply(Object::Node(Node {
            metadata: meta(Some("junk"), "n1"),
            ..Node::default()
        }));
        assert!(s.node("n1").is_some());
        assert_eq!(
            s.refs().next().unwrap(),
            &ObjectRef::new(Kind::Node, "", "n1")
        );
        assert_eq!(ObjectRef::new(Kind::Node, "x", "n1").to_string(), "Node n1");
    }

    #[test]
    fn pods_in_is_ordered_and_scoped() {
        let mut s = ClusterSnapshot::new();
        for (ns, name) in [("b", "z"), ("a", "y"), ("b", "a"), ("c", "x"), ("bb", "q")] {
            s.apply(pod(Some(ns), name, "10.0.0.1"));
        }
        let names: Vec<_> = s
            .pods_in("b")
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "z"]);
        assert_eq!(s.pods_in("nope").count(), 0);
        let all: Vec<_> = s.pods().map(|p| p.metadata.name.clone().unwrap()).collect();
        assert_eq!(all, ["y", "a", "z", "q", "x"]);
    }

    #[test]
    fn endpoint_slices_follow_service_label() {
        let mut s = ClusterSnapshot::new();
        for (ns, name, svc) in [
            ("a", "web-abc", "web"),
            ("a", "web-def", "web"),
            ("a", "db-1", "db"),
            ("b", "web-x", "web"),
        ] {
            let mut m = meta(Some(ns), name);
            m.labels = Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.to_owned(),
                svc.to_owned(),
            )]));
            s.apply(Object::EndpointSlice(EndpointSlice {
                metadata: m,
                address_type: "IPv4".to_owned(),
                ..EndpointSlice::default()
            }));
        }
        let names: Vec<_> = s
            .endpoint_slices_for("a", "web")
            .map(|e| e.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["web-abc", "web-def"]);
        assert_eq!(s.endpoint_slices_for("b", "db").count(), 0);
        assert_eq!(s.count(Kind::EndpointSlice), 4);
        let r = ObjectRef::new(Kind::EndpointSlice, "a", "db-1");
        assert!(matches!(s.get(&r), Some(Object::EndpointSlice(_))));
    }

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.as_str()), Some(k));
        }
        assert_eq!(Kind::from_name("Deployment"), None);
    }
}
