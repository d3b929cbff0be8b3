//! `ferrovs-cni`: the CNI plugin that attaches pods to the ferrovs switch.
//!
//! It does not talk to `ferrovsd`. ADD allocates the pod an address of the
//! node's pod subnet, creates a veth pair (host end `fvs` + 8 hex digits of
//! a hash of the container id, pod end `CNI_IFNAME` in `CNI_NETNS`), gives
//! the pod end the MAC `0a:58:<ip>`, the address, a default route via the
//! gateway (the subnet's first address) and turns off its TX checksum
//! offload (TCP through AF_XDP on veth needs complete checksums), then
//! writes an [`control::attach`] record into `stateDir`; `ferrovs-agent`
//! turns the record into a switch port and flows. DEL undoes all of it and
//! succeeds when things are already gone. CHECK verifies the interfaces,
//! address, MAC, route and record.
//!
//! The pure parts (configuration, result JSON, allocator) are in
//! [`control::cni`]; this file runs `ip`, `nsenter` and `ethtool` and keeps
//! the allocation state in `stateDir/ipam/<network>.json`, guarded by an
//! exclusive `flock` on `stateDir/ipam/<network>.lock` so that concurrent
//! plugin runs do not hand out the same address.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode, Stdio};

use control::attach::{self, pod_mac, Attachment};
use control::cni::{
    add_result, host_ifname, version_json, version_of, AddOutcome, CniError, Command, Env,
    IpamState, NetConf,
};
use rustix::fs::{flock, FlockOperation};
use serde_json::Value;

fn main() -> ExitCode {
    let mut config = Vec::new();
    let read = io::stdin().read_to_end(&mut config);
    let version = version_of(&config);
    let result = read
        .map_err(|e| CniError::Io {
            what: "standard input".into(),
            msg: e.to_string(),
        })
        .and_then(|_| Env::from_vars(|k| std::env::var(k).ok()))
        .and_then(|env| run(&env, &config));
    let mut out = io::stdout().lock();
    match result {
        Ok(reply) => {
            if let Some(v) = reply {
                let _ = writeln!(out, "{v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            eprintln!("ferrovs-cni: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; the value is printed on stdout.
fn run(env: &Env, config: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version_json()));
    }
    let conf = NetConf::parse(config)?;
    match env.command {
        Command::Add => cmd_add(env, &conf).map(Some),
        Command::Del => cmd_del(env, &conf).map(|()| None),
        Command::Check => cmd_check(env, &conf).map(|()| None),
        Command::Version => Ok(Some(version_json())),
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> CniError {
    let what = what.into();
    move |e| CniError::Io {
        what,
        msg: e.to_string(),
    }
}

/// `PATH` for the tools: the runtime's `PATH` (which may be empty or lack
/// the `sbin` directories) followed by the usual system directories.
fn tool_path() -> String {
    const SYSTEM: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:{SYSTEM}"),
        _ => SYSTEM.to_string(),
    }
}

/// Runs a command; its stdout, or an error naming it with its stderr.
fn sh(args: &[&str]) -> Result<String, CniError> {
    let cmd = args.join(" ");
    let (prog, rest) = args.split_first().ok_or_else(|| CniError::Io {
        what: "command".into(),
        msg: "empty".into(),
    })?;
    let out = Process::new(prog)
        .args(rest)
        .env("PATH", tool_path())
        .stdin(Stdio::null())
        .output()
        .map_err(io_error(format!("`{cmd}`: cannot start")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CniError::Command {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs a command inside the network namespace at `netns`.
fn sh_ns(netns: &str, args: &[&str]) -> Result<String, CniError> {
    let net = format!("--net={netns}");
    let mut full = vec!["nsenter", net.as_str()];
    full.extend_from_slice(args);
    sh(&full)
}

/// Whether the interface exists in the host namespace.
fn host_link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// `ip -o link show dev <name>` inside `netns`, `None` if it fails.
fn ns_link(netns: &str, name: &str) -> Option<String> {
    sh_ns(netns, &["ip", "-o", "link", "show", "dev", name]).ok()
}

/// Runs `f` on the network's allocation state under an exclusive lock,
/// saving the state (atomically) when `f` changed it.
fn with_ipam<T>(
    state_dir: &Path,
    network: &str,
    f: impl FnOnce(&mut IpamState) -> Result<T, CniError>,
) -> Result<T, CniError> {
    let dir = state_dir.join("ipam");
    fs::create_dir_all(&dir).map_err(io_error(format!("{}: cannot create", dir.display())))?;
    let lock_path = dir.join(format!("{network}.lock"));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(format!("{}: cannot open", lock_path.display())))?;
    flock(&lock, FlockOperation::LockExclusive).map_err(|e| CniError::Io {
        what: format!("{}: cannot lock", lock_path.display()),
        msg: e.to_string(),
    })?;
    let path = dir.join(format!("{network}.json"));
    let mut state: IpamState = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CniError::Io {
            what: path.display().to_string(),
            msg: format!("invalid allocation state: {e}"),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => IpamState::default(),
        Err(e) => return Err(io_error(format!("{}: cannot read", path.display()))(e)),
    };
    let before = state.clone();
    let out = f(&mut state)?;
    if state != before {
        save_json(&path, &state)?;
    }
    drop(lock);
    Ok(out)
}

fn save_json(path: &Path, value: &impl serde::Serialize) -> Result<(), CniError> {
    let tmp = PathBuf::from(format!("{}.tmp.{}", path.display(), std::process::id()));
    let json = serde_json::to_vec_pretty(value).map_err(|e| CniError::Io {
        what: path.display().to_string(),
        msg: e.to_string(),
    })?;
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(format!("{}: cannot write", path.display()))(e)
    })
}

/// The pod's namespace and name from `CNI_ARGS`.
fn pod_of(env: &Env) -> Result<(String, String), CniError> {
    let (Some(ns), Some(pod)) = (&env.pod_namespace, &env.pod_name) else {
        return Err(CniError::Env {
            var: "CNI_ARGS",
            msg: "K8S_POD_NAMESPACE and K8S_POD_NAME are needed (the attachment record is per pod)"
                .into(),
        });
    };
    for (what, v) in [("K8S_POD_NAMESPACE", ns), ("K8S_POD_NAME", pod)] {
        attach::check_name(what, v).map_err(|e| CniError::Env {
            var: "CNI_ARGS",
            msg: e.to_string(),
        })?;
    }
    Ok((ns.clone(), pod.clone()))
}

fn check_netns(netns: &str) -> Result<(), CniError> {
    if Path::new(netns).exists() {
        Ok(())
    } else {
        Err(CniError::Env {
            var: "CNI_NETNS",
            msg: format!("{netns} does not exist"),
        })
    }
}

fn cmd_add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let (namespace, pod) = pod_of(env)?;
    check_netns(&env.netns)?;
    let (cid, ifname) = (env.container_id.as_str(), env.ifname.as_str());
    let (ip, fresh) = with_ipam(&conf.state_dir, &conf.name, |st| {
        st.allocate(&conf.subnet, cid, ifname)
    })?;
    let host = host_ifname(cid);
    let mut created = false;
    let result = setup(env, conf, &host, ip, &mut created).and_then(|outcome| {
        let att = Attachment {
            namespace,
            pod,
            container_id: cid.to_string(),
            host_ifname: host.clone(),
            ip,
            prefix_len: conf.subnet.prefix_len(),
            mac: outcome.mac,
            gateway: outcome.gateway,
            netns: env.netns.clone(),
        };
        attach::write(&conf.state_dir, &att).map_err(|e| CniError::Io {
            what: "attachment record".into(),
            msg: e.to_string(),
        })?;
        Ok(add_result(&conf.cni_version, &outcome))
    });
    if result.is_err() {
        // Undo what this run did; the runtime's DEL cleans up the rest.
        if created {
            let _ = sh(&["ip", "link", "del", "dev", &host]);
        }
        if fresh {
            let _ = with_ipam(&conf.state_dir, &conf.name, |st| {
                st.release(cid, ifname);
                Ok(())
            });
        }
    }
    result
}

/// Creates (or, on a repeated ADD, re-checks) the veth pair and configures it.
fn setup(
    env: &Env,
    conf: &NetConf,
    host: &str,
    ip: Ipv4Addr,
    created: &mut bool,
) -> Result<AddOutcome, CniError> {
    let (netns, ifname) = (env.netns.as_str(), env.ifname.as_str());
    let mtu = conf.mtu.to_string();
    let host_exists = host_link_exists(host);
    let pod_exists = ns_link(netns, ifname).is_some();
    match (host_exists, pod_exists) {
        (true, true) => {} // repeated ADD: configure again below
        (false, true) => {
            return Err(CniError::Io {
                what: format!("CNI_NETNS {netns}"),
                msg: format!("interface {ifname} already exists and is not ferrovs's {host}"),
            })
        }
        (host_exists, false) => {
            if host_exists {
                // A leftover whose peer is not in this netns.
                sh(&["ip", "link", "del", "dev", host])?;
            }
            sh(&[
                "ip", "link", "add", host, "mtu", &mtu, "type", "veth", "peer", "name", ifname,
                "mtu", &mtu, "netns", netns,
            ])?;
            *created = true;
        }
    }
    let mac = pod_mac(ip);
    let mac_s = attach::format_mac(&mac);
    let gateway = conf.subnet.gateway();
    let gw_s = gateway.to_string();
    let cidr = format!("{ip}/{}", conf.subnet.prefix_len());
    sh(&["ip", "link", "set", "dev", host, "mtu", &mtu, "up"])?;
    sh_ns(
        netns,
        &[
            "ip", "link", "set", "dev", ifname, "address", &mac_s, "mtu", &mtu,
        ],
    )?;
    sh_ns(netns, &["ip", "-4", "addr", "flush", "dev", ifname])?;
    sh_ns(netns, &["ip", "addr", "add", &cidr, "dev", ifname])?;
    sh_ns(netns, &["ip", "link", "set", "dev", ifname, "up"])?;
    sh_ns(
        netns,
        &[
            "ip", "route", "replace", "default", "via", &gw_s, "dev", ifname,
        ],
    )?;
    sh_ns(netns, &["ethtool", "-K", ifname, "tx", "off"])?;
    let host_mac = fs::read_to_string(Path::new("/sys/class/net").join(host).join("address"))
        .ok()
        .and_then(|s| attach::parse_mac(s.trim()));
    Ok(AddOutcome {
        host_ifname: host.to_string(),
        host_mac,
        ifname: ifname.to_string(),
        mac,
        netns: netns.to_string(),
        ip,
        prefix_len: conf.subnet.prefix_len(),
        gateway,
    })
}

fn cmd_del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let (cid, ifname) = (env.container_id.as_str(), env.ifname.as_str());
    let host = host_ifname(cid);
    if host_link_exists(&host) {
        // Deleting one end removes the pod end too.
        if let Err(e) = sh(&["ip", "link", "del", "dev", &host]) {
            if host_link_exists(&host) {
                return Err(e);
            }
        }
    }
    with_ipam(&conf.state_dir, &conf.name, |st| {
        st.release(cid, ifname);
        Ok(())
    })?;
    // Remove this container's records only: a newer sandbox of the same pod
    // may already have written its own.
    let (records, _bad) = attach::read_all(&conf.state_dir);
    for a in records.iter().filter(|a| a.container_id == cid) {
        attach::remove(&conf.state_dir, &a.namespace, &a.pod).map_err(|e| CniError::Io {
            what: "attachment record".into(),
            msg: e.to_string(),
        })?;
    }
    Ok(())
}

fn check_failed(msg: String) -> CniError {
    CniError::CheckFailed { msg }
}

fn cmd_check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let (cid, ifname, netns) = (
        env.container_id.as_str(),
        env.ifname.as_str(),
        env.netns.as_str(),
    );
    let ip = with_ipam(&conf.state_dir, &conf.name, |st| Ok(st.find(cid, ifname)))?.ok_or_else(
        || CniError::UnknownContainer {
            container_id: cid.into(),
            ifname: ifname.into(),
            msg: "no address is allocated".into(),
        },
    )?;
    if let Some(prev) = &conf.prev_result {
        let want = format!("{ip}/{}", conf.subnet.prefix_len());
        let listed = prev["ips"]
            .as_array()
            .is_some_and(|ips| ips.iter().any(|i| i["address"] == want.as_str()));
        if !listed {
            return Err(check_failed(format!("prevResult does not list {want}")));
        }
    }
    check_netns(netns)?;
    let host = host_ifname(cid);
    if !host_link_exists(&host) {
        return Err(check_failed(format!(
            "host interface {host} does not exist"
        )));
    }
    let link = ns_link(netns, ifname)
        .ok_or_else(|| check_failed(format!("interface {ifname} does not exist in {netns}")))?;
    let mac = attach::format_mac(&pod_mac(ip));
    if !link.contains(&format!("link/ether {mac} ")) {
        return Err(check_failed(format!(
            "interface {ifname} in {netns} does not have MAC {mac}"
        )));
    }
    let cidr = format!("inet {ip}/{} ", conf.subnet.prefix_len());
    let addrs = sh_ns(netns, &["ip", "-o", "-4", "addr", "show", "dev", ifname])?;
    if !addrs.contains(&cidr) {
        return Err(check_failed(format!(
            "interface {ifname} in {netns} does not have address {ip}/{}",
            conf.subnet.prefix_len()
        )));
    }
    let gw = conf.subnet.gateway();
    let routes = sh_ns(netns, &["ip", "-4", "route", "show", "default"])?;
    if !routes.contains(&format!("default via {gw} dev {ifname}")) {
        return Err(check_failed(format!(
            "{netns} has no default route via {gw} dev {ifname}"
        )));
    }
    if let (Some(ns), Some(pod)) = (&env.pod_namespace, &env.pod_name) {
        let rec =
            attach::read(&conf.state_dir, ns, pod).map_err(|e| check_failed(e.to_string()))?;
        if !rec.is_some_and(|r| r.container_id == cid && r.ip == ip) {
            return Err(check_failed(format!(
                "no attachment record of {ns}/{pod} for this container in {}",
                conf.state_dir.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use control::cni::Subnet;
    use std::collections::BTreeSet;

    #[test]
    fn ipam_state_is_saved_and_locked() {
        let dir = tempfile::tempdir().unwrap();
        let subnet: Subnet = "10.1.0.0/24".parse().unwrap();
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    (0..10)
                        .map(|i| {
                            with_ipam(&d, "net", |st| {
                                st.allocate(&subnet, &format!("c{t}-{i}"), "eth0")
                            })
                            .unwrap()
                            .0
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let ips: BTreeSet<Ipv4Addr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(ips.len(), 60, "every allocation got its own address");
        let saved: IpamState =
            serde_json::from_slice(&fs::read(dir.path().join("ipam/net.json")).unwrap()).unwrap();
        assert_eq!(saved.allocations.len(), 60);
        // Idempotent across runs; release persists.
        let again =
            with_ipam(dir.path(), "net", |st| st.allocate(&subnet, "c0-0", "eth0")).unwrap();
        assert!(!again.1 && ips.contains(&again.0));
        with_ipam(dir.path(), "net", |st| Ok(st.release("c0-0", "eth0"))).unwrap();
        let n = with_ipam(dir.path(), "net", |st| Ok(st.allocations.len())).unwrap();
        assert_eq!(n, 59);
    }

    #[test]
    fn corrupt_ipam_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("ipam")).unwrap();
        fs::write(dir.path().join("ipam/net.json"), b"{\"allocations\": 5}").unwrap();
        let e = with_ipam(dir.path(), "net", |_| Ok(())).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "{}: invalid allocation state: invalid type: integer `5`",
                dir.path().join("ipam/net.json").display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn failing_command_names_itself_and_its_stderr() {
        let e = sh(&["ip", "link", "show", "dev", "fvs-no-such-if"]).unwrap_err();
        let CniError::Command { cmd, stderr, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(cmd, "ip link show dev fvs-no-such-if");
        assert!(stderr.contains("does not exist"), "{stderr}");
        let e = sh(&["/nonexistent/tool"]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("`/nonexistent/tool`: cannot start"));
    }
}
