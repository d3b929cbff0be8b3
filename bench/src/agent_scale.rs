//! A synthetic cluster for the agent's scale benchmark: nodes, namespaces,
//! pods, Services with EndpointSlices and NetworkPolicies, built directly as
//! k8s-openapi objects (what the watcher or manifest loader would produce).

use control::snapshot::Object;
use control::{ClusterSnapshot, Kind, ObjectRef};
use serde_json::json;

/// Cluster size.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Nodes (node-0 is the local node).
    pub nodes: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Pods, spread over nodes and namespaces.
    pub pods: usize,
    /// Services, each with one EndpointSlice.
    pub services: usize,
    /// Endpoints per Service.
    pub endpoints: usize,
    /// NetworkPolicies.
    pub policies: usize,
}

impl Size {
    /// The target: 10,000 Services x 5 endpoints, 1,000 policies.
    pub const TARGET: Size = Size {
        nodes: 50,
        namespaces: 100,
        pods: 5000,
        services: 10_000,
        endpoints: 5,
        policies: 1000,
    };
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    match serde_json::from_value(v) {
        Ok(t) => t,
        Err(e) => panic!("generator produced an invalid object: {e}"),
    }
}

/// Pod `j`'s IP.
pub fn pod_ip(size: &Size, j: usize) -> String {
    let node = j % size.nodes;
    let host = j / size.nodes + 2;
    format!("10.{}.{}.{}", 200 + host / 250, node, host % 250 + 2)
}

/// An EndpointSlice for Service `i` with endpoints starting at pod `first`.
pub fn slice(size: &Size, i: usize, first: usize) -> Object {
    let eps: Vec<serde_json::Value> = (0..size.endpoints)
        .map(|k| {
            let j = (first + k) % size.pods;
            json!({"addresses": [pod_ip(size, j)], "nodeName": format!("node-{}", j % size.nodes),
                   "conditions": {"ready": true}})
        })
        .collect();
    Object::EndpointSlice(obj(json!({
        "metadata": {"name": format!("svc-{i}-abc"), "namespace": format!("ns-{}", i % size.namespaces),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    })))
}

/// The Service `i`.
pub fn service(size: &Size, i: usize) -> Object {
    Object::Service(obj(json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % size.namespaces)},
        "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    })))
}

/// Pod `j`, optionally with a changed label.
pub fn pod(size: &Size, j: usize, role: usize) -> Object {
    Object::Pod(obj(json!({
        "metadata": {"name": format!("pod-{j}"), "namespace": format!("ns-{}", j % size.namespaces),
                     "labels": {"app": format!("app-{}", j % 200), "role": format!("r-{}", role % 10)}},
        "spec": {"nodeName": format!("node-{}", j % size.nodes),
                 "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": pod_ip(size, j)}
    })))
}

/// Builds the cluster.
pub fn cluster(size: &Size) -> ClusterSnapshot {
    let mut s = ClusterSnapshot::new();
    for n in 0..size.nodes {
        s.apply(Object::Node(obj(json!({
            "metadata": {"name": format!("node-{n}")},
            "spec": {"podCIDR": format!("10.200.{n}.0/24")},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", n / 250, n % 250 + 1)}]}
        }))));
    }
    for n in 0..size.namespaces {
        s.apply(Object::Namespace(obj(json!({
            "metadata": {"name": format!("ns-{n}"), "labels": {"team": format!("t-{}", n % 10)}}
        }))));
    }
    for j in 0..size.pods {
        s.apply(pod(size, j, j));
    }
    for i in 0..size.services {
        s.apply(service(size, i));
        s.apply(slice(size, i, i * size.endpoints));
    }
    for i in 0..size.policies {
        let mut spec = json!({
            "podSelector": {"matchLabels": {"app": format!("app-{}", i % 200)}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"role": format!("r-{}", i % 10)}}}],
                 "ports": [{"port": "http"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t-{}", i % 10)}}}],
                 "ports": [{"protocol": "TCP", "port": 9000, "endPort": 9100}]}
            ]
        });
        if i % 2 == 0 {
            spec["egress"] = json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}}],
                                     "ports": [{"protocol": "UDP", "port": 53}]}]);
            spec["policyTypes"] = json!(["Ingress", "Egress"]);
        }
        s.apply(Object::NetworkPolicy(obj(json!({
            "metadata": {"name": format!("np-{i}"), "namespace": format!("ns-{}", i % size.namespaces)},
            "spec": spec
        }))));
    }
    s
}

/// Ref of Service `i`'s EndpointSlice.
pub fn slice_ref(size: &Size, i: usize) -> ObjectRef {
    ObjectRef::new(
        Kind::EndpointSlice,
        &format!("ns-{}", i % size.namespaces),
        &format!("svc-{i}-abc"),
    )
}
