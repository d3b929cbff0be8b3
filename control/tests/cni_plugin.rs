//! Runs the built `ferrovs-cni` binary the way a container runtime does.
//! VERSION and error replies run everywhere; ADD/CHECK/DEL need root (they
//! create network namespaces and veth pairs) and are skipped otherwise.
//! Namespaces and interfaces are removed by guards, also when a test fails.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use control::attach;
use control::cni::host_ifname;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ferrovs-cni");

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

fn plugin(env: &[(&str, &str)], config: &str) -> Run {
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn config(state_dir: &Path, subnet: &str) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": "ferrovs-test",
        "type": "ferrovs-cni",
        "stateDir": state_dir,
        "mtu": 1400,
        "ipam": {"subnet": subnet},
    })
    .to_string()
}

#[test]
fn version_reply() {
    let r = plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        r.json(),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]})
    );
}

#[test]
fn error_replies_are_cni_error_json() {
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "x1"),
        ("CNI_NETNS", "/nonexistent/netns"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"),
    ];
    let bad_mtu = r#"{"cniVersion":"0.4.0","name":"n","type":"ferrovs-cni","mtu":9,"ipam":{"subnet":"10.9.0.0/24"}}"#;
    let r = plugin(&env, bad_mtu);
    assert!(!r.ok);
    assert_eq!(
        r.json(),
        json!({"cniVersion": "0.4.0", "code": 7, "msg": "network config field mtu: 9 is not 68-65535", "details": ""})
    );
    assert!(r.stderr.contains("mtu"), "{}", r.stderr);

    let dir = tempfile::tempdir().unwrap();
    let r = plugin(&env, &config(dir.path(), "10.9.0.0/24"));
    assert!(!r.ok);
    assert_eq!(r.json()["code"], 4);
    assert_eq!(
        r.json()["msg"],
        "environment variable CNI_NETNS: /nonexistent/netns does not exist"
    );

    let r = plugin(
        &[("CNI_COMMAND", "ADD")],
        &config(dir.path(), "10.9.0.0/24"),
    );
    assert_eq!(
        r.json()["msg"],
        "environment variable CNI_CONTAINERID: not set"
    );
    // Nothing was allocated by the failed runs.
    let (atts, errs) = attach::read_all(dir.path());
    assert!(atts.is_empty() && errs.is_empty());
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn require_root() -> bool {
    if !is_root() {
        println!("SKIPPED: this test needs root (network namespaces, veth)");
        return false;
    }
    for tool in [
        &["ip", "-V"][..],
        &["nsenter", "--version"],
        &["ethtool", "--version"],
    ] {
        if sh(tool).is_err() {
            println!("SKIPPED: `{}` is not available", tool[0]);
            return false;
        }
    }
    true
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("fvscni{}{tag}", std::process::id());
        let _ = sh(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]).unwrap();
        Netns(name)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
    fn exec(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// Host interfaces deleted on drop (when a test fails half-way).
struct HostLinks(Vec<String>);

impl Drop for HostLinks {
    fn drop(&mut self) {
        for l in &self.0 {
            if host_exists(l) {
                let _ = sh(&["ip", "link", "del", "dev", l]);
            }
        }
    }
}

fn host_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

struct Pod {
    cid: String,
    netns: String,
    pod: &'static str,
}

impl Pod {
    fn env(&self, cmd: &'static str) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", self.cid.clone()),
            ("CNI_NETNS", self.netns.clone()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={}",
                    self.pod
                ),
            ),
            ("CNI_PATH", "/opt/cni/bin".to_string()),
        ]
    }
    fn run(&self, cmd: &'static str, config: &str) -> Run {
        let env = self.env(cmd);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        plugin(&env, config)
    }
}

#[test]
fn add_check_del_in_netns() {
    if !require_root() {
        return;
    }
    let pid = std::process::id();
    let third = pid % 250 + 1;
    let subnet = format!("10.251.{third}.0/24");
    let ip = |d: u8| format!("10.251.{third}.{d}");
    let mac = |d: u8| format!("0a:58:0a:fb:{third:02x}:{d:02x}");
    let state = tempfile::tempdir().unwrap();
    let cfg = config(state.path(), &subnet);

    let ns_a = Netns::new("a");
    let ns_b = Netns::new("b");
    let a = Pod {
        cid: format!("cnitest{pid}a"),
        netns: ns_a.path(),
        pod: "web-1",
    };
    let b = Pod {
        cid: format!("cnitest{pid}b"),
        netns: ns_b.path(),
        pod: "web-2",
    };
    let (host_a, host_b) = (host_ifname(&a.cid), host_ifname(&b.cid));
    let _links = HostLinks(vec![host_a.clone(), host_b.clone()]);

    // ADD
    let r = a.run("ADD", &cfg);
    assert!(r.ok, "ADD failed: {}\n{}", r.stdout, r.stderr);
    let res = r.json();
    let host_mac = std::fs::read_to_string(format!("/sys/class/net/{host_a}/address")).unwrap();
    assert_eq!(
        res,
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": host_a, "mac": host_mac.trim()},
                {"name": "eth0", "mac": mac(2), "sandbox": ns_a.path()},
            ],
            "ips": [{"address": format!("{}/24", ip(2)), "gateway": ip(1), "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": ip(1)}],
            "dns": {},
        })
    );
    let link = ns_a
        .exec(&["ip", "-o", "link", "show", "dev", "eth0"])
        .unwrap();
    assert!(link.contains(&format!("link/ether {} ", mac(2))), "{link}");
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let addr = ns_a
        .exec(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(addr.contains(&format!("inet {}/24 ", ip(2))), "{addr}");
    let route = ns_a
        .exec(&["ip", "-4", "route", "show", "default"])
        .unwrap();
    assert!(
        route.contains(&format!("default via {} dev eth0", ip(1))),
        "{route}"
    );
    let features = ns_a.exec(&["ethtool", "-k", "eth0"]).unwrap();
    assert!(features.contains("tx-checksumming: off"), "{features}");
    let host = sh(&["ip", "-o", "link", "show", "dev", &host_a]).unwrap();
    assert!(host.contains(",UP") && host.contains("mtu 1400"), "{host}");
    let rec = attach::read(state.path(), "default", "web-1")
        .unwrap()
        .unwrap();
    assert_eq!(rec.container_id, a.cid);
    assert_eq!(rec.host_ifname, host_a);
    assert_eq!(rec.ip.to_string(), ip(2));
    assert_eq!(rec.prefix_len, 24);
    assert_eq!(attach::format_mac(&rec.mac), mac(2));
    assert_eq!(rec.gateway.to_string(), ip(1));
    assert_eq!(rec.netns, ns_a.path());

    // ADD again: same answer, nothing new.
    let r2 = a.run("ADD", &cfg);
    assert!(r2.ok, "second ADD failed: {}\n{}", r2.stdout, r2.stderr);
    assert_eq!(r2.json(), res);
    assert_eq!(
        attach::read(state.path(), "default", "web-1").unwrap(),
        Some(rec)
    );

    // CHECK passes.
    let c = a.run("CHECK", &cfg);
    assert!(c.ok, "CHECK failed: {}\n{}", c.stdout, c.stderr);
    assert_eq!(c.stdout, "");

    // A second pod gets the next address.
    let rb = b.run("ADD", &cfg);
    assert!(rb.ok, "ADD b failed: {}\n{}", rb.stdout, rb.stderr);
    assert_eq!(rb.json()["ips"][0]["address"], format!("{}/24", ip(3)));
    let (atts, errs) = attach::read_all(state.path());
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(atts.len(), 2);

    // CHECK notices a missing address.
    ns_b.exec(&["ip", "addr", "flush", "dev", "eth0"]).unwrap();
    let c = b.run("CHECK", &cfg);
    assert!(!c.ok);
    assert_eq!(c.json()["code"], 101);
    assert!(
        c.json()["msg"]
            .as_str()
            .unwrap()
            .contains(&format!("does not have address {}/24", ip(3))),
        "{}",
        c.stdout
    );

    // DEL removes veth, record and allocation; again is fine.
    for pod in [&a, &b] {
        let d = pod.run("DEL", &cfg);
        assert!(d.ok, "DEL failed: {}\n{}", d.stdout, d.stderr);
        assert_eq!(d.stdout, "");
    }
    assert!(!host_exists(&host_a) && !host_exists(&host_b));
    assert!(ns_a.exec(&["ip", "link", "show", "dev", "eth0"]).is_err());
    assert_eq!(attach::read_all(state.path()).0, vec![]);
    let ipam: Value = serde_json::from_slice(
        &std::fs::read(state.path().join("ipam/ferrovs-test.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ipam["allocations"], json!({}));
    let d = a.run("DEL", &cfg);
    assert!(d.ok, "second DEL failed: {}\n{}", d.stdout, d.stderr);
    let c = a.run("CHECK", &cfg);
    assert_eq!(c.json()["code"], 3);

    // DEL after the netns is gone is fine too.
    let r = a.run("ADD", &cfg);
    assert!(r.ok, "{}", r.stderr);
    drop(ns_a);
    let d = a.run("DEL", &cfg);
    assert!(d.ok, "DEL without netns failed: {}\n{}", d.stdout, d.stderr);
    assert!(!host_exists(&host_a));
    assert_eq!(attach::read_all(state.path()).0, vec![]);
}

#[test]
fn failed_add_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let pid = std::process::id();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(state.path(), &format!("10.252.{}.0/24", pid % 250 + 1));
    let ns = Netns::new("c");
    // The netns already has an eth0 that is not ours.
    ns.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ])
    .unwrap();
    let pod = Pod {
        cid: format!("cnitest{pid}c"),
        netns: ns.path(),
        pod: "web-3",
    };
    let host = host_ifname(&pod.cid);
    let _links = HostLinks(vec![host.clone()]);
    let r = pod.run("ADD", &cfg);
    assert!(!r.ok);
    assert_eq!(r.json()["code"], 5);
    assert!(
        r.json()["msg"]
            .as_str()
            .unwrap()
            .contains("interface eth0 already exists"),
        "{}",
        r.stdout
    );
    assert!(!host_exists(&host));
    assert_eq!(attach::read_all(state.path()).0, vec![]);
    let ipam: Value = serde_json::from_slice(
        &std::fs::read(state.path().join("ipam/ferrovs-test.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ipam["allocations"], json!({}));
}
