//! ferrovs-agent end to end with real traffic: one ferrovsd ("node-a"; a
//! second, "node-b", joined by VXLAN over a veth underlay in the two-node
//! test), pods in network namespaces joined by veth pairs whose host sides
//! the agent adds as AF_XDP ports (named by the `ferrovs.io/interface`
//! annotation), flows compiled from manifests in a temp directory and the
//! agent driven in-process round by round. The pods talk TCP and UDP
//! through the switch's gateway, Services (ClusterIP, NodePort, hairpin,
//! reject), NetworkPolicies and tenants.
//!
//! Every test skips when not root. Namespaces and links are prefixed
//! `fvt` and removed by guards, also when a test fails; ferrovsd is
//! stopped first (so it detaches its XDP programs), then the servers, then
//! the pods.
// Tests may unwrap (project conventions).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Ferrovsd, Pod, TempDir};
use control::agent::{load_manifests, Agent, AgentConfig, Round};
use tests::{require_root, ChildGuard};

/// The node and the pod network of the cluster.
const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.50.1}]}
"#;

/// The servers of every pod: TCP 8080 answers each connection with the
/// pod's name and closes; UDP 5353 answers each datagram with the name;
/// TCP 8081 echoes (for long-lived connections).
const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1].encode()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 5353))
    while True:
        _, peer = u.recvfrom(2048)
        u.sendto(name, peer)
def echo_conn(c):
    with c:
        while True:
            d = c.recv(4096)
            if not d:
                return
            c.sendall(d)
def echo():
    e = socket.socket()
    e.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    e.bind(("0.0.0.0", 8081))
    e.listen(16)
    while True:
        c, _ = e.accept()
        threading.Thread(target=echo_conn, args=(c,), daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=echo, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(64)
while True:
    c, _ = s.accept()
    try:
        c.sendall(name)
    except OSError:
        pass
    finally:
        c.close()
"#;

/// `N` UDP requests to `ADDR:PORT` from a connected socket, `TIMEOUT`
/// seconds each; one line per request as for [`CONNECT`].
const UDP_ASK: &str = r#"
import socket, sys, time
addr, port, n, tmo = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for _ in range(n):
    t = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(tmo)
    try:
        s.connect((addr, port))
        s.send(b"who?")
        print("ok", s.recv(2048).decode(errors="replace"))
    except ConnectionRefusedError:
        print("refused %.3f" % (time.monotonic() - t))
    except socket.timeout:
        print("timeout %.3f" % (time.monotonic() - t))
    except OSError as e:
        print("error", e)
    finally:
        s.close()
    sys.stdout.flush()
"#;

/// Sends `N` bytes to the echo server at `ADDR:PORT` and reads them back;
/// prints `ok <peer>` if they came back intact.
const BULK: &str = r#"
import os, socket, sys, threading
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = os.urandom(n)
s = socket.create_connection((addr, port), timeout=5)
peer = "%s:%d" % s.getpeername()
t = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
t.start()
got = bytearray()
while True:
    d = s.recv(65536)
    if not d:
        break
    got += d
t.join()
print("ok" if bytes(got) == data else "bad %d of %d bytes" % (len(got), n), peer)
"#;

/// A long-lived TCP connection to an echo server at `ADDR:PORT`: one echo, then writes the
/// file `READY`, waits for the file `GO`, echoes again; prints `ok` or the
/// error.
const HOLD: &str = r#"
import os, socket, sys, time
addr, port, ready, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    s = socket.create_connection((addr, port), timeout=3)
    s.sendall(b"one")
    assert s.recv(16) == b"one"
    peer = "%s:%d" % s.getpeername()
    open(ready, "w").close()
    end = time.time() + 30
    while not os.path.exists(go) and time.time() < end:
        time.sleep(0.05)
    s.sendall(b"two")
    got = s.recv(16)
    print("ok" if got == b"two" else "bad %r" % got, peer)
except Exception as e:
    print("error", repr(e))
"#;

/// `N` connections to `ADDR:PORT`, each with `TIMEOUT` seconds; one line
/// per attempt: `ok <answer>`, `refused <seconds>`, `timeout <seconds>`
/// or `error <message>`.
const CONNECT: &str = r#"
import socket, sys, time
addr, port, n, tmo = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for _ in range(n):
    t = time.monotonic()
    s = socket.socket()
    s.settimeout(tmo)
    try:
        s.connect((addr, port))
        data = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        print("ok", data.decode(errors="replace"))
    except ConnectionRefusedError:
        print("refused %.3f" % (time.monotonic() - t))
    except socket.timeout:
        print("timeout %.3f" % (time.monotonic() - t))
    except OSError as e:
        print("error", e)
    finally:
        s.close()
    sys.stdout.flush()
"#;

/// What one connection attempt gave.
#[derive(Clone, Debug, PartialEq)]
enum Conn {
    /// Connected; the server's answer (its pod name).
    Ok(String),
    /// Refused (RST) after this many seconds.
    Refused(f64),
    /// No answer within the timeout.
    Timeout,
    /// Anything else.
    Error(String),
}

fn parse_conn(line: &str) -> Conn {
    let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
    match kind {
        "ok" => Conn::Ok(rest.to_string()),
        "refused" => Conn::Refused(rest.parse().unwrap_or(f64::NAN)),
        "timeout" => Conn::Timeout,
        _ => Conn::Error(line.to_string()),
    }
}

/// The second node of two-node tests.
const NODE_B: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-b}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.50.2}]}
"#;

/// A pod of a test: Kubernetes name, namespace, last IP byte, `app`
/// label, node (0: node-a with 10.244.1.0/24, 1: node-b with
/// 10.244.2.0/24).
struct PodSpec {
    name: &'static str,
    namespace: &'static str,
    host: u8,
    app: &'static str,
    node: u8,
}

fn spec(name: &'static str, namespace: &'static str, host: u8, app: &'static str) -> PodSpec {
    PodSpec {
        name,
        namespace,
        host,
        app,
        node: 0,
    }
}

impl PodSpec {
    /// The same pod on node-b.
    fn on_b(mut self) -> PodSpec {
        self.node = 1;
        self
    }

    fn node_name(&self) -> &'static str {
        ["node-a", "node-b"][usize::from(self.node)]
    }
}

/// An agent for node-a driving `sw`, pod ports as AF_XDP ports.
fn agent_for(sw: &Ferrovsd, cni: &TempDir) -> Agent {
    agent_on("node-a", sw, cni, None)
}

/// An agent for `node` driving `sw`; other nodes are reached over the
/// VLAN trunk port `trunk` when given, else through `vxlan0`.
fn agent_on(node: &str, sw: &Ferrovsd, cni: &TempDir, trunk: Option<&str>) -> Agent {
    Agent::new(AgentConfig {
        node: node.into(),
        socket: sw.socket.clone(),
        cni_state: cni.0.clone(),
        tunnel_port: "vxlan0".into(),
        trunk_port: trunk.map(String::from),
        gateway_mac: [2, 0xfe, 0, 0, 0, 1],
        port_args: vec![],
    })
}

/// node-b of a two-node cluster.
struct Remote {
    sw: Ferrovsd,
    agent: Agent,
    _cni: TempDir,
}

/// The `vxlan0` port of a node whose underlay is `dev`.
fn vxlan_port(dev: &str, local_ip: &str) -> String {
    format!(
        "[[port]]\nname = \"vxlan0\"\nofport = 100\ntype = \"vxlan\"\nunderlay = \"{dev}\"\n\
         local_ip = \"{local_ip}\"\nremote_ip = \"flow\"\nkey = \"flow\"\n"
    )
}

/// A running node (or two, joined by VXLAN over a veth underlay when a
/// pod is on node-b): ferrovsd, the pods (each serving, see [`SERVER`]),
/// the manifest directory and the agents. Field order is drop order.
struct Cluster {
    sw: Ferrovsd,
    remote: Option<Remote>,
    _underlay: Option<tests::VethPair>,
    _servers: Vec<ChildGuard>,
    pods: BTreeMap<&'static str, Pod>,
    /// Pod manifest text by pod name.
    manifests_of: BTreeMap<&'static str, String>,
    agent: Agent,
    dir: TempDir,
    cni: TempDir,
}

impl Cluster {
    /// Starts ferrovsd (only a memory `vxlan0` port), creates the pods
    /// with their servers, writes the node, `namespaces` (YAML) and pod
    /// manifests, runs the agent's first round and waits until the first
    /// pod reaches every other one.
    fn new(namespaces: &str, specs: &[PodSpec]) -> Cluster {
        Cluster::build(namespaces, specs, false)
    }

    /// Like [`Cluster::new`]; with `trunk`, the two nodes are joined by the
    /// underlay veth as a VLAN trunk (AF_XDP port on each side) instead of
    /// VXLAN.
    fn build(namespaces: &str, specs: &[PodSpec], trunk: bool) -> Cluster {
        let mut pods = BTreeMap::new();
        let mut manifests_of = BTreeMap::new();
        let mut servers = Vec::new();
        let two = specs.iter().any(|s| s.node == 1);
        for s in specs {
            let net = s.node + 1;
            let ip = format!("10.244.{net}.{}", s.host);
            let mac = format!("0a:58:0a:f4:{net:02x}:{:02x}", s.host);
            let prefix: String = format!("fvt{}", s.name.replace('-', ""));
            let pod = Pod::new(&prefix, &format!("{ip}/24"), &mac);
            if two {
                pod.ns
                    .exec_ok(&["ip", "link", "set", "eth0", "mtu", "1450"]);
            }
            let gw = format!("10.244.{net}.1");
            pod.ns
                .exec_ok(&["ip", "route", "add", "default", "via", &gw]);
            servers.push(pod.ns.spawn(&["python3", "-c", SERVER, s.name]).unwrap());
            manifests_of.insert(
                s.name,
                format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {{app: {}}}\n  annotations: {{ferrovs.io/interface: {}}}\nspec:\n  nodeName: {}\n  containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]\nstatus: {{podIP: {ip}}}\n",
                    s.name, s.namespace, s.app, pod.host, s.node_name()
                ),
            );
            pods.insert(s.name, pod);
        }
        let underlay = two.then(|| {
            let ul = tests::VethPair::new("fvtula", "fvtulb", None);
            for d in [&ul.host, &ul.peer] {
                let _ = tests::sh(&[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{d}.disable_ipv6=1"),
                ]);
            }
            ul
        });
        let trunk_port = |dev: &str| format!("[[port]]\nname = \"{dev}\"\nofport = 90\n");
        let port_a = match &underlay {
            Some(ul) if trunk => trunk_port(&ul.host),
            Some(ul) => vxlan_port(&ul.host, "192.168.50.1"),
            None => "[[port]]\nname = \"vxlan0\"\nofport = 100\ntype = \"memory\"\n".into(),
        };
        let sw = Ferrovsd::start("fvtnode", &port_a, None).unwrap();
        let remote = underlay.as_ref().map(|ul| {
            let cfg = if trunk {
                trunk_port(&ul.peer)
            } else {
                vxlan_port(&ul.peer, "192.168.50.2")
            };
            let sw = Ferrovsd::start("fvtnodeb", &cfg, None).unwrap();
            let cni = TempDir::new("fvtcni");
            let agent = agent_on("node-b", &sw, &cni, trunk.then_some(ul.peer.as_str()));
            Remote {
                agent,
                sw,
                _cni: cni,
            }
        });
        let dir = TempDir::new("fvtman");
        let cni = TempDir::new("fvtcni");
        let trunk_a = underlay
            .as_ref()
            .filter(|_| trunk)
            .map(|ul| ul.host.as_str());
        let agent = agent_on("node-a", &sw, &cni, trunk_a);
        let mut c = Cluster {
            sw,
            remote,
            _underlay: underlay,
            _servers: servers,
            pods,
            manifests_of,
            agent,
            dir,
            cni,
        };
        let nodes = if two {
            format!("{NODE}---\n{NODE_B}")
        } else {
            NODE.to_string()
        };
        c.write("00-cluster.yaml", &format!("{nodes}---\n{namespaces}"));
        c.write_pods(&specs.iter().map(|s| s.name).collect::<Vec<_>>());
        let (r, rb) = c.reload_all();
        assert!(r.full, "{r:?}");
        let on_a = specs.iter().filter(|s| s.node == 0).count();
        assert_eq!(r.ports_added, on_a, "{r:?}");
        if let Some(rb) = rb {
            assert_eq!(rb.ports_added, specs.len() - on_a, "{rb:?}");
        }
        for p in c.pods.values() {
            for port in [8080, 8081] {
                assert!(
                    common::wait_listen(&p.ns, port),
                    "server on {port} in {}",
                    p.ns.name()
                );
            }
        }
        c
    }

    fn pod(&self, name: &str) -> &Pod {
        &self.pods[name]
    }

    fn ip(&self, name: &str) -> String {
        self.pod(name).ip.clone()
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.dir.0.join(file), text).unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.0.join(file)).unwrap();
    }

    /// Writes `10-pods.yaml` with the manifests of `names`.
    fn write_pods(&self, names: &[&str]) {
        let text: String = names.iter().map(|n| self.manifests_of[n].clone()).collect();
        self.write("10-pods.yaml", &text);
    }

    /// Re-reads the manifests and runs one agent round (on every node);
    /// node-a's counters.
    fn reload(&mut self) -> Round {
        self.reload_all().0
    }

    /// Re-reads the manifests and runs one round on node-a and node-b.
    fn reload_all(&mut self) -> (Round, Option<Round>) {
        let snap = load_manifests(&self.dir.0).unwrap();
        let changed = self.agent.set_snapshot(snap.clone());
        let r = self.agent.round(changed).unwrap();
        let rb = self.remote.as_mut().map(|b| {
            let changed = b.agent.set_snapshot(snap);
            b.agent.round(changed).unwrap()
        });
        (r, rb)
    }

    /// `n` connections from pod `from` to `addr:port`, `timeout` each.
    fn connect_n(&self, from: &str, addr: &str, port: u16, n: u32, timeout: f64) -> Vec<Conn> {
        self.run_client(CONNECT, from, addr, port, n, timeout)
    }

    /// `n` UDP requests from pod `from` to `addr:port`, `timeout` each.
    fn ask_udp_n(&self, from: &str, addr: &str, port: u16, n: u32, timeout: f64) -> Vec<Conn> {
        self.run_client(UDP_ASK, from, addr, port, n, timeout)
    }

    fn run_client(
        &self,
        program: &str,
        from: &str,
        addr: &str,
        port: u16,
        n: u32,
        timeout: f64,
    ) -> Vec<Conn> {
        let wall = Duration::from_secs_f64(f64::from(n) * (timeout + 1.0) + 10.0);
        let args = [
            "ip",
            "netns",
            "exec",
            self.pod(from).ns.name(),
            "python3",
            "-c",
            program,
            addr,
            &port.to_string(),
            &n.to_string(),
            &timeout.to_string(),
        ];
        let out = tests::run_timeout(std::process::Command::new(args[0]).args(&args[1..]), wall)
            .unwrap_or_else(|e| panic!("{from} -> {addr}:{port}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{from} -> {addr}:{port}: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines().map(parse_conn).collect()
    }

    /// One connection attempt.
    fn connect(&self, from: &str, addr: &str, port: u16, timeout: f64) -> Conn {
        self.connect_n(from, addr, port, 1, timeout)
            .pop()
            .unwrap_or(Conn::Error("no output".into()))
    }

    /// Echoes `n` bytes from pod `from` through `addr:port`; the report.
    fn bulk(&self, from: &str, addr: &str, port: u16, n: usize) -> String {
        let args = [
            "ip",
            "netns",
            "exec",
            self.pod(from).ns.name(),
            "python3",
            "-c",
            BULK,
            addr,
            &port.to_string(),
            &n.to_string(),
        ];
        match tests::run_timeout(
            std::process::Command::new(args[0]).args(&args[1..]),
            Duration::from_secs(30),
        ) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => e,
        }
    }

    /// Retries connecting (1 s each) until it succeeds or `within` passes;
    /// the answer.
    fn connect_until(&self, from: &str, addr: &str, port: u16, within: Duration) -> Conn {
        let deadline = Instant::now() + within;
        loop {
            let c = self.connect(from, addr, port, 1.0);
            if matches!(c, Conn::Ok(_)) || Instant::now() > deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Panics with the switches' flows and conntrack tables.
    fn fail(&self, what: &str) -> ! {
        let dump = |sw: &Ferrovsd| {
            format!(
                "--- {} flows ---\n{}\n--- groups ---\n{}\n--- conntrack ---\n{}",
                sw.name,
                sw.ctl(&["dump-flows"]).unwrap_or_default(),
                sw.ctl(&["dump-groups"]).unwrap_or_default(),
                sw.ctl(&["dump-conntrack"]).unwrap_or_default()
            )
        };
        let b = self
            .remote
            .as_ref()
            .map(|r| dump(&r.sw))
            .unwrap_or_default();
        panic!("{what}\n{}\n{b}", dump(&self.sw))
    }

    /// Asserts that `from` reaches pod `to` on 8080 and gets its name.
    fn assert_reaches(&self, from: &str, to: &str) {
        let got = self.connect(from, &self.ip(to), 8080, 2.0);
        if got != Conn::Ok(to.to_string()) {
            self.fail(&format!("{from} -> {to}:8080 gave {got:?}"));
        }
    }

    /// Asserts that a connection from `from` to pod `to` gets no answer.
    fn assert_blocked(&self, from: &str, to: &str) {
        let got = self.connect(from, &self.ip(to), 8080, 1.0);
        if got != Conn::Timeout {
            self.fail(&format!("{from} -> {to}:8080 must time out, gave {got:?}"));
        }
    }
}

/// A long-lived connection ([`HOLD`]) running in the background; killed
/// on drop.
struct Hold {
    child: Option<std::process::Child>,
    flags: TempDir,
}

impl Hold {
    /// Connects from pod `from` to `addr:port` and waits for the first echo.
    fn start(c: &Cluster, from: &str, addr: &str, port: u16) -> Hold {
        let flags = TempDir::new("fvthold");
        let ready = flags.0.join("ready");
        let go = flags.0.join("go");
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                c.pod(from).ns.name(),
                "python3",
                "-c",
                HOLD,
            ])
            .arg(addr)
            .arg(port.to_string())
            .arg(&ready)
            .arg(&go)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut h = Hold {
            child: Some(child),
            flags,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            if Instant::now() > deadline {
                let out = h.finish();
                c.fail(&format!("long-lived connection to {addr}:{port}: {out}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// Lets the connection echo again; its report (`ok PEER` on success).
    fn finish(&mut self) -> String {
        std::fs::write(self.flags.0.join("go"), "").unwrap();
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const SHOP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 8080}]
"#;

#[test]
fn agent_policy_real_traffic() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let mut c = Cluster::new(
        SHOP,
        &[
            spec("client", "shop", 20, "client"),
            spec("web", "shop", 10, "web"),
            spec("other", "shop", 30, "other"),
        ],
    );
    let first = c.connect_until("client", &c.ip("web"), 8080, Duration::from_secs(10));
    if first != Conn::Ok("web".into()) {
        c.fail(&format!("client -> web before any policy: {first:?}"));
    }
    println!("ready after {:?}", t0.elapsed());
    // No policy: everybody reaches everybody.
    c.assert_reaches("other", "web");
    c.assert_reaches("web", "other");
    c.assert_reaches("other", "client");

    // web isolated for ingress, only client may connect to 8080.
    c.write("30-policy.yaml", POLICY);
    let r = c.reload();
    assert!(!r.full && r.changed == 1, "{r:?}");
    c.assert_reaches("client", "web");
    c.assert_blocked("other", "web");
    // Egress of web is not isolated; other's answer comes back as a reply.
    c.assert_reaches("web", "other");
    c.assert_reaches("other", "client");
    // Through the Service the policy applies after DNAT: client in, other
    // not, not even with its SYN retransmitted to the committed connection.
    c.write("20-services.yaml", SERVICES);
    c.reload();
    let got = c.connect("client", "10.96.0.10", 80, 2.0);
    if got != Conn::Ok("web".into()) {
        c.fail(&format!("client -> Service: {got:?}"));
    }
    let got = c.connect("other", "10.96.0.10", 80, 3.5);
    if got != Conn::Timeout {
        c.fail(&format!("other -> Service must time out, gave {got:?}"));
    }
    let pf = c.sw.ctl_ok(&["dump-flows", "object=shop/web-from-client"]);
    let isolation = pf
        .lines()
        .find(|l| l.contains("priority=100"))
        .unwrap_or_else(|| panic!("no isolation flow:\n{pf}"));
    let dropped = common::n_packets(isolation).unwrap();
    assert!(dropped >= 1, "{pf}");

    // Policy deleted: other connects again.
    c.remove("30-policy.yaml");
    let r = c.reload();
    assert_eq!(r.changed, 1, "{r:?}");
    c.assert_reaches("other", "web");
    c.assert_reaches("client", "web");
    let got = c.connect("other", "10.96.0.10", 80, 2.0);
    if got != Conn::Ok("web".into()) {
        c.fail(&format!("other -> Service without policy: {got:?}"));
    }

    // client isolated for egress: only to app=web on the named port
    // `http` (resolved on the peers), directly or through the Service.
    c.write("31-egress.yaml", EGRESS_POLICY);
    let r = c.reload();
    assert_eq!(r.changed, 1, "{r:?}");
    c.assert_reaches("client", "web");
    let got = c.connect("client", "10.96.0.10", 80, 2.0);
    if got != Conn::Ok("web".into()) {
        c.fail(&format!("client -> Service under egress policy: {got:?}"));
    }
    c.assert_blocked("client", "other");
    // Ingress of client is not isolated: other connects, the replies pass.
    c.assert_reaches("other", "client");
    c.remove("31-egress.yaml");
    c.reload();
    c.assert_reaches("client", "other");
    println!("agent_policy_real_traffic: {:?}", t0.elapsed());
}

const EGRESS_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
"#;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: echo, port: 81, targetPort: 8081}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
  - {name: closed-tcp, port: 82, targetPort: 8082}
  - {name: closed-udp, port: 54, protocol: UDP, targetPort: 5354}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: shop}
spec:
  clusterIP: 10.96.0.12
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: nobody}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
"#;

/// The `web` Service's endpoints with web-2 not ready.
const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-x1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: echo, port: 8081}]
endpoints:
- {addresses: [10.244.1.11], nodeName: node-a, conditions: {ready: true}}
- {addresses: [10.244.1.12], nodeName: node-a, conditions: {ready: false}}
"#;

/// Answers per backend of `conns`; panics on anything but `Ok`.
fn per_backend(c: &Cluster, conns: &[Conn]) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for x in conns {
        match x {
            Conn::Ok(who) => *m.entry(who.clone()).or_insert(0) += 1,
            other => c.fail(&format!(
                "connection to the Service: {other:?} in {conns:?}"
            )),
        }
    }
    m
}

#[test]
fn agent_service_spreads_and_survives_backend_removal() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let mut c = Cluster::new(
        SHOP,
        &[
            spec("client", "shop", 20, "client"),
            spec("web-1", "shop", 11, "web"),
            spec("web-2", "shop", 12, "web"),
        ],
    );
    c.write("20-services.yaml", SERVICES);
    let r = c.reload();
    assert!(!r.full && r.changed == 3, "{r:?}");
    for w in ["web-1", "web-2"] {
        let got = c.connect_until("client", &c.ip(w), 8080, Duration::from_secs(10));
        if got != Conn::Ok(w.into()) {
            c.fail(&format!("client -> {w} directly: {got:?}"));
        }
    }
    println!("ready after {:?}", t0.elapsed());

    let conns = c.connect_n("client", "10.96.0.10", 80, 20, 2.0);
    let counts = per_backend(&c, &conns);
    println!("20 connections to 10.96.0.10:80: {counts:?}");
    assert_eq!(counts.values().sum::<u32>(), 20, "{counts:?}");
    for w in ["web-1", "web-2"] {
        assert!(counts.get(w).copied().unwrap_or(0) >= 3, "{counts:?}");
    }
    let ct = c.sw.ctl_ok(&["dump-conntrack"]);
    assert!(ct.contains("10.96.0.10"), "{ct}");

    // NodePort on the node's address, UDP through the same Service.
    let conns = c.connect_n("client", "192.168.50.1", 30080, 4, 2.0);
    assert_eq!(per_backend(&c, &conns).values().sum::<u32>(), 4);
    let answers = c.ask_udp_n("client", "10.96.0.10", 53, 12, 2.0);
    let counts = per_backend(&c, &answers);
    println!("12 UDP requests to 10.96.0.10:53: {counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");

    // A Service without endpoints refuses at once: TCP RST, or ICMP port
    // unreachable for UDP, sent by the switch.
    let tcp = c.connect("client", "10.96.0.11", 80, 3.0);
    let udp = c.ask_udp_n("client", "10.96.0.11", 53, 1, 3.0);
    for (what, got) in [("TCP", &tcp), ("UDP", &udp[0])] {
        match got {
            Conn::Refused(t) => {
                println!("{what} to 10.96.0.11 refused after {t:.3} s");
                assert!(*t < 1.0, "refused after {t} s");
            }
            other => c.fail(&format!("{what} to a Service without endpoints: {other:?}")),
        }
    }

    // A backend refusing (RST, ICMP port unreachable un-NATed as related):
    // the client sees the Service address refuse.
    let tcp = c.connect("client", "10.96.0.10", 82, 3.0);
    let udp = c.ask_udp_n("client", "10.96.0.10", 54, 1, 3.0);
    for (what, got) in [("TCP", &tcp), ("UDP", &udp[0])] {
        if !matches!(got, Conn::Refused(t) if *t < 1.0) {
            c.fail(&format!("{what} to a closed backend port: {got:?}"));
        }
    }

    // sessionAffinity: ClientIP keeps the client on one backend.
    let conns = c.connect_n("client", "10.96.0.12", 80, 12, 2.0);
    let counts = per_backend(&c, &conns);
    assert_eq!(counts.len(), 1, "sticky Service: {counts:?}");

    // An EndpointSlice takes over from the selector: web-2 not ready.
    c.write("21-slice.yaml", SLICE);
    let r = c.reload();
    assert_eq!(r.changed, 1, "{r:?}");
    let conns = c.connect_n("client", "10.96.0.10", 80, 8, 2.0);
    let counts = per_backend(&c, &conns);
    assert_eq!(counts.get("web-1").copied(), Some(8), "{counts:?}");
    c.remove("21-slice.yaml");
    c.reload();

    // A restarted agent resyncs without disturbing a live connection.
    let mut hold = Hold::start(&c, "client", "10.96.0.10", 81);
    c.agent = agent_for(&c.sw, &c.cni);
    let r = c.reload();
    assert!(
        r.full && r.ports_added == 0 && r.ports_removed == 0,
        "{r:?}"
    );
    let report = hold.finish();
    if report != "ok 10.96.0.10:81" {
        c.fail(&format!("connection across an agent restart: {report}"));
    }

    // web-2 goes away: its port and endpoint are removed.
    c.write_pods(&["client", "web-1"]);
    let r = c.reload();
    assert_eq!(r.ports_removed, 1, "{r:?}");
    assert!(!c.sw.ctl_ok(&["list-ports"]).contains(&c.pod("web-2").host));
    let conns = c.connect_n("client", "10.96.0.10", 80, 10, 2.0);
    let counts = per_backend(&c, &conns);
    println!("10 connections after removing web-2: {counts:?}");
    assert_eq!(counts.get("web-1").copied(), Some(10), "{counts:?}");
    // web-2 back on the same interface: its port is added again.
    c.write_pods(&["client", "web-1", "web-2"]);
    let r = c.reload();
    assert_eq!(r.ports_added, 1, "{r:?}");
    let got = c.connect_until("client", &c.ip("web-2"), 8080, Duration::from_secs(10));
    if got != Conn::Ok("web-2".into()) {
        c.fail(&format!(
            "client -> web-2 after its port came back: {got:?}"
        ));
    }
    let conns = c.connect_n("client", "10.96.0.10", 80, 12, 2.0);
    let counts = per_backend(&c, &conns);
    println!("12 connections after web-2 came back: {counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    c.write_pods(&["client", "web-1"]);
    c.reload();
    // Hairpin: web-1 reaches itself through the Service (source NATed to
    // the gateway, sent back out of the port it came in on).
    let conns = c.connect_n("web-1", "10.96.0.10", 80, 5, 2.0);
    let counts = per_backend(&c, &conns);
    assert_eq!(counts.get("web-1").copied(), Some(5), "{counts:?}");
    let ct = c.sw.ctl_ok(&["dump-conntrack"]);
    assert!(ct.contains("10.244.1.1,"), "no hairpin SNAT entry:\n{ct}");
    // Bulk data both ways through DNAT, and through DNAT + hairpin SNAT.
    for from in ["client", "web-1"] {
        let report = c.bulk(from, "10.96.0.10", 81, 2_000_000);
        if report != "ok 10.96.0.10:81" {
            c.fail(&format!(
                "{from}: 2 MB echoed through the Service: {report}"
            ));
        }
    }
    println!(
        "agent_service_spreads_and_survives_backend_removal: {:?}",
        t0.elapsed()
    );
}

const TENANTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: red, labels: {ferrovs.io/tenant: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: blue, labels: {ferrovs.io/tenant: blue}}
"#;

#[test]
fn agent_tenants_isolated() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let mut c = Cluster::new(
        TENANTS,
        &[
            spec("red-1", "red", 21, "a"),
            spec("red-2", "red", 22, "b"),
            spec("blue-1", "blue", 31, "a"),
            spec("blue-2", "blue", 32, "b"),
            spec("red-3", "red", 40, "c"),
            spec("blue-3", "blue", 40, "c"),
        ],
    );
    for (from, to) in [("red-1", "red-2"), ("blue-1", "blue-2")] {
        let got = c.connect_until(from, &c.ip(to), 8080, Duration::from_secs(10));
        if got != Conn::Ok(to.into()) {
            c.fail(&format!("{from} -> {to} (same tenant): {got:?}"));
        }
    }
    println!("ready after {:?}", t0.elapsed());
    c.assert_reaches("red-2", "red-1");
    c.assert_reaches("blue-2", "blue-1");
    for (from, to) in [
        ("red-1", "blue-1"),
        ("blue-1", "red-1"),
        ("red-2", "blue-2"),
        ("blue-2", "red-1"),
    ] {
        c.assert_blocked(from, to);
    }
    // The same address in both tenants: each tenant reaches its own pod.
    for (from, to) in [("red-1", "red-3"), ("blue-1", "blue-3")] {
        let got = c.connect(from, "10.244.1.40", 8080, 2.0);
        if got != Conn::Ok(to.into()) {
            c.fail(&format!("{from} -> 10.244.1.40 must reach {to}: {got:?}"));
        }
    }
    // A policy of the blue tenant admits red-1 (app a) into blue-1: the
    // only way traffic crosses tenants. Real TCP, both directions.
    c.write(
        "50-from-red.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-red, namespace: blue}\n\
         spec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: \
         {kubernetes.io/metadata.name: red}}, podSelector: {matchLabels: {app: a}}}]\n    ports: [{port: 8080}]\n",
    );
    c.reload();
    c.assert_reaches("red-1", "blue-1");
    c.assert_blocked("red-2", "blue-1");
    c.assert_blocked("blue-1", "red-1");
    c.remove("50-from-red.yaml");
    c.reload();
    c.assert_blocked("red-1", "blue-1");
    // ferrovsd restarts between two agent rounds: the agent notices,
    // re-adds the AF_XDP ports and resends everything.
    c.sw.restart().unwrap();
    let r = c.agent.round(vec![]).unwrap();
    assert!(r.full && r.ports_added == 6, "{r:?}");
    let got = c.connect_until("red-1", &c.ip("red-2"), 8080, Duration::from_secs(10));
    if got != Conn::Ok("red-2".into()) {
        c.fail(&format!("red-1 -> red-2 after a ferrovsd restart: {got:?}"));
    }
    c.assert_reaches("blue-1", "blue-3");
    c.assert_blocked("red-1", "blue-1");
    println!("agent_tenants_isolated: {:?}", t0.elapsed());
}

#[test]
fn agent_two_nodes_overlay() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let mut c = Cluster::new(
        &format!("{SHOP}---\n{TENANTS}"),
        &[
            spec("client", "shop", 20, "client"),
            spec("other", "shop", 40, "other"),
            spec("web-a", "shop", 10, "web"),
            spec("web-b", "shop", 10, "web").on_b(),
            spec("red-a", "red", 30, "a"),
            spec("red-b", "red", 30, "b").on_b(),
            spec("blue-b", "blue", 31, "b").on_b(),
        ],
    );
    // Across the overlay, both ways (the underlay ARP resolves first).
    let got = c.connect_until("client", &c.ip("web-b"), 8080, Duration::from_secs(10));
    if got != Conn::Ok("web-b".into()) {
        c.fail(&format!("client -> web-b over VXLAN: {got:?}"));
    }
    println!("ready after {:?}", t0.elapsed());
    c.assert_reaches("web-b", "client");
    c.assert_reaches("red-b", "red-a");
    // Tenants stay apart across nodes (VNI = tenant).
    c.assert_blocked("red-a", "blue-b");
    c.assert_blocked("blue-b", "red-a");
    c.assert_blocked("client", "red-b");
    // Full-sized segments over the tunnel.
    let report = c.bulk("client", &c.ip("web-b"), 8081, 2_000_000);
    if !report.starts_with("ok ") {
        c.fail(&format!("2 MB client <-> web-b: {report}"));
    }

    // A Service with one local and one remote backend.
    c.write("20-services.yaml", SERVICES);
    c.reload();
    let conns = c.connect_n("client", "10.96.0.10", 80, 20, 2.0);
    let counts = per_backend(&c, &conns);
    println!("20 connections over two nodes: {counts:?}");
    for w in ["web-a", "web-b"] {
        assert!(counts.get(w).copied().unwrap_or(0) >= 3, "{counts:?}");
    }
    let report = c.bulk("client", "10.96.0.10", 81, 1_000_000);
    if report != "ok 10.96.0.10:81" {
        c.fail(&format!("1 MB through the Service: {report}"));
    }

    // Ingress policy enforced on node-b for traffic from node-a.
    c.write("30-policy.yaml", POLICY);
    c.reload();
    c.assert_reaches("client", "web-b");
    c.assert_blocked("other", "web-b");
    c.assert_reaches("web-b", "other");
    println!("agent_two_nodes_overlay: {:?}", t0.elapsed());
}

/// Two nodes joined by a VLAN trunk instead of VXLAN: each tenant crosses
/// it tagged with its own VLAN id.
#[test]
fn agent_two_nodes_trunk() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let c = Cluster::build(
        &format!("{SHOP}---\n{TENANTS}"),
        &[
            spec("client", "shop", 20, "client"),
            spec("web-b", "shop", 10, "web").on_b(),
            spec("red-a", "red", 30, "a"),
            spec("red-b", "red", 30, "b").on_b(),
            spec("blue-b", "blue", 31, "b").on_b(),
        ],
        true,
    );
    let got = c.connect_until("client", &c.ip("web-b"), 8080, Duration::from_secs(10));
    if got != Conn::Ok("web-b".into()) {
        c.fail(&format!("client -> web-b over the trunk: {got:?}"));
    }
    c.assert_reaches("web-b", "client");
    c.assert_reaches("red-b", "red-a");
    c.assert_reaches("red-a", "red-b");
    c.assert_blocked("red-a", "blue-b");
    c.assert_blocked("blue-b", "red-a");
    c.assert_blocked("client", "red-b");
    let report = c.bulk("client", &c.ip("web-b"), 8081, 2_000_000);
    if !report.starts_with("ok ") {
        c.fail(&format!("2 MB client <-> web-b over the trunk: {report}"));
    }
    println!("agent_two_nodes_trunk: {:?}", t0.elapsed());
}
