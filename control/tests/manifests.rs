//! Loads the fixture directories: a small realistic cluster (`basic/`) and a
//! directory with bad objects among good ones (`broken/`).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use control::{load, load_dir, Kind, ObjectRef};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn names<'a, T: 'a>(
    items: impl Iterator<Item = &'a T>,
    meta: impl Fn(&T) -> Option<&String>,
) -> Vec<String> {
    items
        .map(|i| meta(i).cloned().unwrap_or_default())
        .collect()
}

#[test]
fn basic_cluster_loads_completely() {
    let loaded = load(fixture("basic"));
    let errors: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(loaded.skipped.get("Deployment"), Some(&1));
    assert_eq!(loaded.skipped.len(), 1);
    let s = &loaded.snapshot;
    let counts: Vec<usize> = Kind::ALL.iter().map(|&k| s.count(k)).collect();
    // Node, Namespace, Pod, Service, EndpointSlice, NetworkPolicy.
    assert_eq!(counts, [2, 3, 4, 2, 2, 2]);

    // Nodes (JSON `kind: List`): podCIDR and InternalIP.
    let node_b = s.node("node-b").unwrap();
    assert_eq!(
        node_b.spec.as_ref().unwrap().pod_cidr.as_deref(),
        Some("10.244.1.0/24")
    );
    let internal: Vec<&str> = s
        .nodes()
        .flat_map(|n| n.status.as_ref().unwrap().addresses.as_ref().unwrap())
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.as_str())
        .collect();
    assert_eq!(internal, ["192.168.10.11", "192.168.10.12"]);

    // Namespaces (multi-document YAML) with their tenant label, in name order.
    assert_eq!(
        names(s.namespaces(), |n| n.metadata.name.as_ref()),
        ["backend", "frontend", "monitoring"]
    );
    let tenant = |ns: &str| {
        s.namespace(ns).unwrap().metadata.labels.as_ref().unwrap()["ferrovs.io/tenant"].clone()
    };
    assert_eq!(tenant("backend"), "acme");
    assert_eq!(tenant("monitoring"), "ops");

    // Pods (`kubectl get pods -A -o yaml` output): IPs, nodes, named ports.
    assert_eq!(
        names(s.pods_in("frontend"), |p| p.metadata.name.as_ref()),
        ["web-7d9f8b6c5-q7r2m", "web-7d9f8b6c5-x2x9k"]
    );
    let api = s.pod("backend", "api-0").unwrap();
    assert_eq!(
        api.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.0.11")
    );
    let spec = api.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("node-a"));
    let ports: Vec<(String, i32)> = spec.containers[0]
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [("http".to_owned(), 8080), ("grpc".to_owned(), 9090)]
    );

    // Services and their EndpointSlices (subdirectory).
    let web = s.service("frontend", "web").unwrap().spec.as_ref().unwrap();
    assert_eq!(web.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(
        web.ports.as_ref().unwrap()[0].target_port,
        Some(IntOrString::String("http".into()))
    );
    let api_svc = s.service("backend", "api").unwrap().spec.as_ref().unwrap();
    assert_eq!(api_svc.type_.as_deref(), Some("NodePort"));
    assert_eq!(api_svc.ports.as_ref().unwrap()[1].node_port, Some(30090));
    let web_eps: Vec<&str> = s
        .endpoint_slices_for("frontend", "web")
        .flat_map(|e| e.endpoints.iter().flatten())
        .flat_map(|e| &e.addresses)
        .map(String::as_str)
        .collect();
    assert_eq!(web_eps, ["10.244.0.10", "10.244.1.10"]);
    assert_eq!(s.endpoint_slices_for("backend", "api").count(), 1);
    assert_eq!(s.endpoint_slices_for("frontend", "api").count(), 0);

    // NetworkPolicies (.yml): default deny and a rule with selectors,
    // named port, port range and ipBlock with except.
    assert_eq!(
        names(s.network_policies(), |p| p.metadata.name.as_ref()),
        ["api-allow-web", "default-deny-ingress"]
    );
    let allow = s
        .network_policies_in("backend")
        .next()
        .unwrap()
        .spec
        .as_ref()
        .unwrap();
    let rule = &allow.ingress.as_ref().unwrap()[0];
    let from = rule.from.as_ref().unwrap();
    assert!(from[0].namespace_selector.is_some() && from[0].pod_selector.is_some());
    let block = from[1].ip_block.as_ref().unwrap();
    assert_eq!(block.cidr, "10.0.0.0/8");
    assert_eq!(
        block.except.as_deref(),
        Some(&["10.0.5.0/24".to_owned()][..])
    );
    let ports = rule.ports.as_ref().unwrap();
    assert_eq!(ports[0].port, Some(IntOrString::String("http".into())));
    assert_eq!(
        (ports[1].port.clone(), ports[1].end_port),
        (Some(IntOrString::Int(9000)), Some(9100))
    );

    // Same result through load_dir; loading is deterministic.
    let (again, errors) = load_dir(fixture("basic"));
    assert!(errors.is_empty());
    assert_eq!(&again, s);
}

#[test]
fn broken_objects_are_reported_and_the_rest_loads() {
    let (s, errors) = load_dir(fixture("broken"));
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        messages,
        [
            "b-pods.yaml: document 2 at line 7 (Pod app/bad-port): spec.containers[0].ports[0].containerPort: \
             invalid type: string \"http\", expected i32",
            "b-pods.yaml: document 3 at line 18 (Service app/typo): unknown field spec.portz",
            "b-pods.yaml: document 4 at line 26 (Pod): missing metadata.name",
            "c-list.yaml: document 1 item 0 at line 1 (NetworkPolicy app/bad-types): spec.policyTypes: \
             invalid type: string \"Ingress\", expected a sequence",
            "d-syntax.yaml: document 2 at line 10: invalid YAML: did not find expected ',' or ']' \
             at line 10 column 1, while parsing a flow sequence",
            "z-dup.yaml: document 1 at line 1 (Pod app/good-1): duplicate of the object in a-good.yaml; \
             this later definition wins",
        ]
    );
    let warnings: Vec<bool> = errors.iter().map(|e| e.is_warning()).collect();
    assert_eq!(warnings, [false, false, false, false, false, true]);
    assert_eq!(errors[0].file, PathBuf::from("b-pods.yaml"));
    assert_eq!(errors[0].object.as_deref(), Some("Pod app/bad-port"));

    assert_eq!(
        names(s.pods_in("app"), |p| p.metadata.name.as_ref()),
        ["good-1", "ok-1", "ok-2", "ok-3"]
    );
    assert_eq!(
        names(s.namespaces(), |n| n.metadata.name.as_ref()),
        ["app", "other"]
    );
    assert!(!s.contains(&ObjectRef::new(Kind::Service, "app", "typo")));
    assert_eq!(s.count(Kind::NetworkPolicy), 0);
    // The later duplicate won.
    let labels = s.pod("app", "good-1").unwrap().metadata.labels.clone();
    assert_eq!(labels.unwrap()["version"], "second");
}

#[test]
fn missing_directory_is_an_error() {
    let (s, errors) = load_dir(fixture("does-not-exist"));
    assert!(s.is_empty());
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .contains("does-not-exist: cannot read: "),
        "{}",
        errors[0]
    );
}

#[test]
fn single_file_is_loaded() {
    let (s, errors) = load_dir(fixture("basic/services/api.yaml"));
    assert!(errors.is_empty());
    assert_eq!(s.len(), 2);
}

/// A mounted ConfigMap: `a.yaml -> ..data/a.yaml`, `..data -> ..2026_11_23`.
/// Each object loads once; a dangling link is reported and the rest loads.
#[test]
fn configmap_mount_layout_and_dangling_link() {
    use std::os::unix::fs::symlink;
    let dir = std::env::temp_dir().join(format!("ferrovs-manifests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("..2026_11_23")).unwrap();
    std::fs::write(
        dir.join("..2026_11_23/a.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
    )
    .unwrap();
    symlink("..2026_11_23", dir.join("..data")).unwrap();
    symlink("..data/a.yaml", dir.join("a.yaml")).unwrap();
    symlink("missing.yaml", dir.join("b.yaml")).unwrap();
    symlink("missing.txt", dir.join("c.txt")).unwrap();
    let (s, errors) = load_dir(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(s.len(), 1);
    assert!(s.namespace("a").is_some());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().starts_with("b.yaml: cannot read: "),
        "{}",
        errors[0]
    );
}
