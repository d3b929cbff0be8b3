//! The benchmark topology as guards that remove what they created:
//!
//! ```text
//! netns fb-snd: eth0 10.251.0.1/24 <-veth-> fb-a  [switch]  fb-b <-veth-> netns fb-rcv: eth0 10.251.0.2/24
//! ```
//!
//! [`Namespaces`] lives for the whole run; [`Links`] are created fresh for
//! every system so the AF_XDP programs of one never meet another's. Both
//! endpoints have tx checksum offload off (the switches do not offload, so
//! the sender fills in checksums). Also the small command runner used by
//! the other I/O modules.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::gen::Endpoints;

/// Sender namespace.
pub const NS_SND: &str = "fb-snd";
/// Receiver namespace.
pub const NS_RCV: &str = "fb-rcv";
/// Switch port 1 (towards the sender).
pub const LINK_A: &str = "fb-a";
/// Switch port 2 (towards the receiver).
pub const LINK_B: &str = "fb-b";
/// Bridge name (OVS bridge, Linux bridge, ferrovs bridge name).
pub const BRIDGE: &str = "fbbr";
/// Interface name inside both namespaces.
pub const DEV: &str = "eth0";

/// Sender/receiver addresses.
pub const ENDPOINTS: Endpoints = Endpoints {
    src_mac: [0x02, 0xfb, 0, 0, 0, 1],
    dst_mac: [0x02, 0xfb, 0, 0, 0, 2],
    src_ip: Ipv4Addr::new(10, 251, 0, 1),
    dst_ip: Ipv4Addr::new(10, 251, 0, 2),
};

/// A command that failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// Could not start it.
    #[error("{cmd}: {source}")]
    Spawn {
        /// Command line.
        cmd: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Exited non-zero.
    #[error("{cmd}: exit {code:?}: {stderr}")]
    Failed {
        /// Command line.
        cmd: String,
        /// Exit code.
        code: Option<i32>,
        /// Its stderr, trimmed.
        stderr: String,
    },
}

fn line(args: &[&str]) -> String {
    args.join(" ")
}

/// Runs `args` and returns its stdout, or an error with its stderr.
pub fn run(args: &[&str]) -> Result<String, CmdError> {
    let (prog, rest) = args.split_first().ok_or_else(|| CmdError::Failed {
        cmd: String::new(),
        code: None,
        stderr: "empty command".into(),
    })?;
    let out = Command::new(prog)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CmdError::Spawn {
            cmd: line(args),
            source,
        })?;
    if !out.status.success() {
        return Err(CmdError::Failed {
            cmd: line(args),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `args`, ignoring failure (cleanup paths).
pub fn run_quiet(args: &[&str]) {
    let _ = run(args);
}

/// Runs `args` inside namespace `ns`.
pub fn run_in(ns: &str, args: &[&str]) -> Result<String, CmdError> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

/// The last five lines of a log file, joined with " / " (empty if the
/// file is missing).
pub fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

/// The guest kernel's idle halt-polling window (`cpuidle-haltpoll`).
pub const HALT_POLL_NS: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// The idle halt-polling window in ns, if this guest has the driver.
pub fn halt_poll_ns() -> Option<u64> {
    std::fs::read_to_string(HALT_POLL_NS)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The idle halt-polling window set to another value for a while, and
/// put back when dropped (also when the run is interrupted).
#[derive(Debug)]
pub struct HaltPoll {
    old: u64,
}

impl HaltPoll {
    /// Sets the window to `ns`. `None` when the guest has no haltpoll
    /// driver, the window already is `ns`, or it cannot be written.
    pub fn set(ns: u64) -> Option<HaltPoll> {
        let old = halt_poll_ns()?;
        if old == ns || std::fs::write(HALT_POLL_NS, ns.to_string()).is_err() {
            return None;
        }
        Some(HaltPoll { old })
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        let _ = std::fs::write(HALT_POLL_NS, self.old.to_string());
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Spawns `args` (inside `ns` if given) with stdout piped and stderr
    /// to `stderr` (or discarded).
    pub fn spawn(
        ns: Option<&str>,
        args: &[&str],
        stderr: Option<std::fs::File>,
    ) -> Result<ChildGuard, CmdError> {
        Self::spawn_to(ns, args, Stdio::piped(), stderr)
    }

    /// Like [`ChildGuard::spawn`] with stdout to `stdout` (a file for large
    /// outputs: nobody reads a pipe while the child runs).
    pub fn spawn_to(
        ns: Option<&str>,
        args: &[&str],
        stdout: Stdio,
        stderr: Option<std::fs::File>,
    ) -> Result<ChildGuard, CmdError> {
        let mut v: Vec<&str> = Vec::new();
        if let Some(ns) = ns {
            v.extend_from_slice(&["ip", "netns", "exec", ns]);
        }
        v.extend_from_slice(args);
        Self::launch(&v, true, stdout, stderr)
    }

    /// Spawns a switch daemon in a session of its own (`setsid`), as a
    /// service manager or `ovs-ctl` starts one. The scheduler's
    /// autogroups then weigh the daemon's threads apart from the
    /// harness's traffic generators, as it weighs `ovs-vswitchd`'s.
    /// Stdout is discarded.
    pub fn spawn_daemon(args: &[&str], stderr: std::fs::File) -> Result<ChildGuard, CmdError> {
        let mut v = vec!["setsid"];
        v.extend_from_slice(args);
        // Not a group leader, so setsid(1) makes the child itself the
        // leader of the new session and process group: the group
        // signals below reach it.
        Self::launch(&v, false, Stdio::null(), Some(stderr))
    }

    fn launch(
        v: &[&str],
        own_group: bool,
        stdout: Stdio,
        stderr: Option<std::fs::File>,
    ) -> Result<ChildGuard, CmdError> {
        let (prog, rest) = v.split_first().ok_or_else(|| CmdError::Failed {
            cmd: String::new(),
            code: None,
            stderr: "empty command".into(),
        })?;
        let mut cmd = Command::new(prog);
        if own_group {
            // Own process group: signals reach the whole tree (trafgen
            // forks its workers; a signal to the parent alone leaves them
            // running).
            cmd.process_group(0);
        }
        let child = cmd
            .args(rest)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr.map_or(Stdio::null(), Stdio::from))
            .spawn()
            .map_err(|source| CmdError::Spawn {
                cmd: line(v),
                source,
            })?;
        Ok(ChildGuard(child))
    }

    /// Process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends a signal by name (`INT`, `TERM`, `KILL`) with kill(1) to
    /// the child's process group, and to the child itself (a daemon
    /// signalled before `setsid` made its group has none yet).
    pub fn signal(&self, sig: &str) {
        let pid = self.id().to_string();
        run_quiet(&["kill", &format!("-{sig}"), "--", &format!("-{pid}"), &pid]);
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.0.try_wait(), Ok(None))
    }

    /// Signals `sig` to the group, waits up to `grace` for the leader to
    /// exit, then SIGKILLs whatever is left of the group.
    pub fn stop(&mut self, sig: &str, grace: Duration) {
        self.signal(sig);
        let end = Instant::now() + grace;
        while Instant::now() < end && !self.exited() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal("KILL");
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // The group, even if the leader has exited (forked workers).
        self.signal("KILL");
        let _ = self.0.wait();
    }
}

/// Removes leftovers of an earlier, killed run.
pub fn remove_stale() {
    for l in [LINK_A, LINK_B, BRIDGE] {
        if std::path::Path::new("/sys/class/net").join(l).exists() {
            run_quiet(&["ip", "link", "del", l]);
        }
    }
    for ns in [NS_SND, NS_RCV] {
        if std::path::Path::new("/run/netns").join(ns).exists() {
            run_quiet(&["ip", "netns", "del", ns]);
        }
    }
}

/// The two namespaces; deleted on drop.
#[derive(Debug)]
pub struct Namespaces(());

impl Namespaces {
    /// Creates `fb-snd` and `fb-rcv` with loopback up.
    pub fn create() -> Result<Namespaces, CmdError> {
        remove_stale();
        let guard = Namespaces(());
        for ns in [NS_SND, NS_RCV] {
            run(&["ip", "netns", "add", ns])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(guard)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [NS_SND, NS_RCV] {
            run_quiet(&["ip", "netns", "del", ns]);
        }
    }
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The two veth pairs; deleted on drop.
#[derive(Debug)]
pub struct Links(());

impl Links {
    /// Creates both pairs, addresses, MACs, static ARP entries, tx offload
    /// off, IPv6 off (no stray router solicitations through the switch).
    pub fn create() -> Result<Links, CmdError> {
        for l in [LINK_A, LINK_B] {
            if std::path::Path::new("/sys/class/net").join(l).exists() {
                run_quiet(&["ip", "link", "del", l]);
            }
        }
        let guard = Links(());
        let ep = ENDPOINTS;
        let ends = [
            (LINK_A, NS_SND, ep.src_mac, ep.src_ip, ep.dst_mac, ep.dst_ip),
            (LINK_B, NS_RCV, ep.dst_mac, ep.dst_ip, ep.src_mac, ep.src_ip),
        ];
        for (host, ns, m, ip, peer_m, peer_ip) in ends {
            run(&[
                "ip", "link", "add", host, "type", "veth", "peer", "name", DEV, "netns", ns,
            ])?;
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6"), "1");
            run_in(
                ns,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{DEV}.disable_ipv6=1"),
                ],
            )?;
            run(&["ip", "-n", ns, "link", "set", DEV, "address", &mac(m)])?;
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                DEV,
            ])?;
            run(&["ip", "-n", ns, "link", "set", DEV, "up"])?;
            run(&[
                "ip",
                "-n",
                ns,
                "neigh",
                "replace",
                &peer_ip.to_string(),
                "lladdr",
                &mac(peer_m),
                "dev",
                DEV,
                "nud",
                "permanent",
            ])?;
            run_in(ns, &["ethtool", "-K", DEV, "tx", "off"])?;
            run(&["ip", "link", "set", host, "up"])?;
        }
        Ok(guard)
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        for l in [LINK_A, LINK_B] {
            run_quiet(&["ip", "link", "del", l]);
        }
    }
}

/// Pings the receiver from the sender until it answers or `within` passes.
pub fn wait_connectivity(within: Duration) -> bool {
    let end = Instant::now() + within;
    let dst = ENDPOINTS.dst_ip.to_string();
    while Instant::now() < end {
        if super::stopped() {
            return false;
        }
        if run_in(NS_SND, &["ping", "-c1", "-W1", &dst]).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}
