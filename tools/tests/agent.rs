//! ferrovs-agent against a running ferrovsd with in-memory ports: the agent
//! adds pod ports, installs the compiled flows with `bundle`, follows
//! manifest changes incrementally, resyncs after a restart without
//! changing anything, and `ferrovs-ctl trace` names the policy and the
//! Service that decided a packet's fate.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Ferrovsd, TempDir};
use control::agent::{load_manifests, Agent, AgentConfig};

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.50.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.50.2}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
"#;

fn pod(name: &str, ip: &str, iface: &str, app: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{app: {app}}}\n  annotations: {{ferrovs.io/interface: {iface}}}\nspec:\n  nodeName: node-a\n  containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]\nstatus: {{podIP: {ip}}}\n"
    )
}

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#;

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
"#;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn agent(sw: &Ferrovsd, cni: &Path) -> Agent {
    Agent::new(AgentConfig {
        node: "node-a".into(),
        socket: sw.socket.clone(),
        cni_state: cni.to_path_buf(),
        tunnel_port: "vxlan0".into(),
        trunk_port: None,
        gateway_mac: [2, 0xfe, 0, 0, 0, 1],
        port_args: vec!["type=memory".into()],
    })
}

fn reload(a: &mut Agent, dir: &Path) -> control::agent::Round {
    let changed = a.set_snapshot(load_manifests(dir).unwrap());
    a.round(changed).unwrap()
}

#[test]
fn agent_wires_pods_and_follows_changes() {
    let sw = Ferrovsd::start(
        "fvsagent",
        "[[port]]\nname = \"vxlan0\"\nofport = 100\ntype = \"memory\"\n",
        None,
    )
    .unwrap();
    let m = TempDir::new("fvsmanifests");
    let cni = TempDir::new("fvscni");
    write(&m.0, "00-cluster.yaml", NODES);
    write(
        &m.0,
        "10-pods.yaml",
        &(pod("web-1", "10.244.1.10", "pweb1", "web")
            + &pod("client", "10.244.1.20", "pclient", "client")),
    );
    write(&m.0, "20-svc.yaml", SERVICE);
    write(&m.0, "30-policy.yaml", POLICY);

    let mut a = agent(&sw, &cni.0);
    let r = reload(&mut a, &m.0);
    assert!(r.full, "{r:?}");
    assert_eq!(r.ports_added, 2);
    let ports = sw.ctl_ok(&["list-ports"]);
    assert!(
        ports.contains("pweb1") && ports.contains("pclient"),
        "{ports}"
    );
    let flows = sw.ctl_ok(&["dump-flows", "--no-stats"]);
    assert!(flows.lines().count() > 20, "{flows}");
    assert!(flows.contains("conjunction("), "{flows}");

    // client -> ClusterIP: DNAT to web-1:8080, allowed by the policy.
    let client_port = ports
        .lines()
        .find(|l| l.ends_with("pclient"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let pkt = format!(
        "in_port={client_port},tcp,dl_src=0a:58:0a:f4:01:14,dl_dst=02:fe:00:00:00:01,nw_src=10.244.1.20,nw_dst=10.96.0.10,tp_src=40000,tp_dst=80"
    );
    let t = sw.ctl_ok(&["trace", &pkt]);
    assert!(t.contains("Service shop/web"), "{t}");
    assert!(
        t.contains("NetworkPolicy shop/web-from-client ingress rule #0"),
        "{t}"
    );
    assert!(t.contains("Verdict: forwarded"), "{t}");
    // web-1 -> client is not subject to the policy (client not selected);
    // but a second web pod talking to web-1 is denied, and trace says by what.
    write(
        &m.0,
        "10-pods.yaml",
        &(pod("web-1", "10.244.1.10", "pweb1", "web")
            + &pod("client", "10.244.1.20", "pclient", "client")
            + &pod("web-2", "10.244.1.11", "pweb2", "web")),
    );
    let r = reload(&mut a, &m.0);
    assert!(!r.full);
    assert_eq!(r.ports_added, 1);
    let ports = sw.ctl_ok(&["list-ports"]);
    let web2_port = ports
        .lines()
        .find(|l| l.ends_with("pweb2"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let pkt2 = format!(
        "in_port={web2_port},tcp,dl_src=0a:58:0a:f4:01:0b,dl_dst=02:fe:00:00:00:01,nw_src=10.244.1.11,nw_dst=10.244.1.10,tp_src=40000,tp_dst=8080"
    );
    let t = sw.ctl_ok(&["trace", &pkt2]);
    assert!(
        t.contains(
            "Verdict: dropped, decided by NetworkPolicy shop/web-from-client ingress isolation"
        ),
        "{t}"
    );
    // dump-flows by object.
    let pf = sw.ctl_ok(&["dump-flows", "--no-stats", "object=shop/web-from-client"]);
    assert!(pf.lines().count() >= 3, "{pf}");
    assert!(pf.lines().all(|l| l.contains("cookie=0x5")), "{pf}");

    // Deleting the policy: web-2 -> web-1 allowed, in one incremental bundle.
    std::fs::remove_file(m.0.join("30-policy.yaml")).unwrap();
    let r = reload(&mut a, &m.0);
    assert_eq!(r.changed, 1);
    assert!(sw.ctl_ok(&["trace", &pkt2]).contains("Verdict: forwarded"));

    // A bad manifest is reported; the rest stays in force.
    write(&m.0, "40-bad.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: shop}\nspec: {colour: red}\n");
    let before = sw.ctl_ok(&["dump-flows", "--no-stats"]);
    reload(&mut a, &m.0);
    assert_eq!(sw.ctl_ok(&["dump-flows", "--no-stats"]), before);

    // Removing a pod removes its port and flows.
    write(
        &m.0,
        "10-pods.yaml",
        &(pod("web-1", "10.244.1.10", "pweb1", "web")
            + &pod("client", "10.244.1.20", "pclient", "client")),
    );
    let r = reload(&mut a, &m.0);
    assert_eq!(r.ports_removed, 1);
    assert!(!sw.ctl_ok(&["list-ports"]).contains("pweb2"));
    let flows = sw.ctl_ok(&["dump-flows", "--no-stats"]);
    assert!(!flows.contains("10.244.1.11"), "{flows}");

    // A restarted agent resyncs with bundle --replace: nothing changes.
    let sorted = |t: String| {
        let mut v: Vec<String> = t.lines().map(String::from).collect();
        v.sort();
        v
    };
    let before = sorted(sw.ctl_ok(&["dump-flows", "--no-stats"]));
    let groups = sw.ctl_ok(&["dump-groups"]);
    let mut b = agent(&sw, &cni.0);
    let r = reload(&mut b, &m.0);
    assert!(r.full);
    assert_eq!(r.ports_added, 0);
    assert_eq!(sorted(sw.ctl_ok(&["dump-flows", "--no-stats"])), before);
    assert_eq!(sw.ctl_ok(&["dump-groups"]), groups);
    // The restarted agent owns the pod ports it found: a pod removed after
    // the restart loses its port too.
    write(
        &m.0,
        "10-pods.yaml",
        &pod("client", "10.244.1.20", "pclient", "client"),
    );
    let r = reload(&mut b, &m.0);
    assert_eq!(r.ports_removed, 1, "{r:?}");
    let ports = sw.ctl_ok(&["list-ports"]);
    assert!(
        !ports.contains("pweb1") && ports.contains("vxlan0"),
        "{ports}"
    );
}

#[test]
fn agent_keeps_state_when_ferrovsd_is_unreachable() {
    let cni = TempDir::new("fvscni");
    let mut a = Agent::new(AgentConfig {
        node: "node-a".into(),
        socket: cni.0.join("nope.sock"),
        cni_state: cni.0.clone(),
        tunnel_port: "vxlan0".into(),
        trunk_port: None,
        gateway_mac: [2, 0xfe, 0, 0, 0, 1],
        port_args: vec![],
    });
    let e = a.round(vec![]).unwrap_err().to_string();
    assert!(e.contains("nope.sock") && e.contains("ferrovsd"), "{e}");
}

#[test]
fn agent_resends_everything_after_ferrovsd_restarts() {
    let mut sw = Ferrovsd::start(
        "fvsagentr",
        "[[port]]\nname = \"vxlan0\"\nofport = 100\ntype = \"memory\"\n",
        None,
    )
    .unwrap();
    let m = TempDir::new("fvsmanifests");
    let cni = TempDir::new("fvscni");
    write(&m.0, "00-cluster.yaml", NODES);
    write(
        &m.0,
        "10-pods.yaml",
        &(pod("web-1", "10.244.1.10", "pweb1", "web")
            + &pod("client", "10.244.1.20", "pclient", "client")),
    );
    write(&m.0, "20-svc.yaml", SERVICE);
    let mut a = agent(&sw, &cni.0);
    reload(&mut a, &m.0);
    let flows = sw.ctl_ok(&["dump-flows", "--no-stats"]);
    let groups = sw.ctl_ok(&["dump-groups"]);
    // Nothing changed, nothing sent.
    let r = a.round(vec![]).unwrap();
    assert_eq!(r, control::agent::Round::default());
    // ferrovsd restarts between two rounds (the agent never saw it down):
    // the next round re-adds the ports and resends everything.
    sw.restart().unwrap();
    assert!(!sw.ctl_ok(&["list-ports"]).contains("pweb1"));
    let r = a.round(vec![]).unwrap();
    assert!(r.full && r.ports_added == 2, "{r:?}");
    assert_eq!(sw.ctl_ok(&["dump-flows", "--no-stats"]), flows);
    assert_eq!(sw.ctl_ok(&["dump-groups"]), groups);
    let r = a.round(vec![]).unwrap();
    assert_eq!(r, control::agent::Round::default());
}
