//! Helpers for ferrovs integration tests: network namespaces and veth pairs
//! that are removed again when the test ends, also when it fails.
//!
//! Every name is made unique per process and call (`prefix` + pid + counter,
//! at most 15 characters so it is a valid interface name), so tests can run
//! in parallel. Traffic only ever flows between namespaces a test created.
//! Every external command runs with a timeout so a test cannot hang.
#![forbid(unsafe_code)]

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Default timeout for configuration commands.
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn base36(mut v: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A name unique to this process and call: `prefix` (cut to 6 characters)
/// + pid + counter in base 36, at most 15 characters.
pub fn unique_name(prefix: &str) -> String {
    let p: String = prefix.chars().take(6).collect();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{p}{}x{}", base36(std::process::id()), base36(n % 1296))
}

/// A small number (1..=250) unique-ish per call, for addresses like 10.99.N.1.
pub fn unique_subnet() -> u8 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (((std::process::id().wrapping_mul(7)).wrapping_add(n)) % 250 + 1) as u8
}

/// Runs a command with a timeout; returns its output or a message.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{desc}: cannot start: {e}"))?;
    let out_reader = reader(child.stdout.take());
    let err_reader = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{desc}: timed out after {timeout:?}"));
            }
            Err(e) => return Err(format!("{desc}: wait failed: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `args` (program first) and returns stdout, or a message with stderr.
pub fn sh(args: &[&str]) -> Result<String, String> {
    let (prog, rest) = args.split_first().ok_or("empty command")?;
    let out = run_timeout(Command::new(prog).args(rest), CMD_TIMEOUT)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Like [`sh`] but panics on failure (for test setup).
pub fn must(args: &[&str]) -> String {
    match sh(args) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// Prefixes `args` with `ip netns exec <ns>` when `ns` is given.
fn in_ns<'a>(ns: Option<&'a Netns>, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = Vec::new();
    if let Some(ns) = ns {
        v.extend(["ip", "netns", "exec", ns.name()]);
    }
    v.extend_from_slice(args);
    v
}

/// Returns true when the test can run: root, the `ip` tool and AF_XDP
/// sockets available. Otherwise prints why the test is skipped.
pub fn require_root() -> bool {
    let uid_zero = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if !uid_zero {
        println!("SKIPPED: this test needs root (network namespaces, veth, AF_XDP)");
        return false;
    }
    if sh(&["ip", "-V"]).is_err() {
        println!("SKIPPED: the `ip` tool (iproute2) is not installed");
        return false;
    }
    if !datapath::xsk::af_xdp_available() {
        println!("SKIPPED: AF_XDP sockets are not available (CONFIG_XDP_SOCKETS?)");
        return false;
    }
    true
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `prefix` + pid + counter, with `lo` up.
    pub fn new(prefix: &str) -> Netns {
        let name = unique_name(prefix);
        must(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        sh(&in_ns(Some(self), args))
    }

    /// Runs a command inside the namespace, panicking on failure.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        must(&in_ns(Some(self), args))
    }

    /// Starts a long-running command inside the namespace; it is killed
    /// when the returned guard is dropped.
    pub fn spawn(&self, args: &[&str]) -> Result<ChildGuard, String> {
        let full = in_ns(Some(self), args);
        let child = Command::new(full[0])
            .args(&full[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: cannot start: {e}", full.join(" ")))?;
        Ok(ChildGuard(child))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// A child process that is killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A veth pair, deleted on drop. The host end stays in the current
/// namespace; the peer end optionally moves into `peer_ns`.
#[derive(Debug)]
pub struct VethPair {
    /// Host-side interface name.
    pub host: String,
    /// Peer interface name (inside `peer_ns` if one was given).
    pub peer: String,
}

impl VethPair {
    /// Creates `host_prefix`+id <-> `peer_prefix`+id; both ends are set up.
    pub fn new(host_prefix: &str, peer_prefix: &str, peer_ns: Option<&Netns>) -> VethPair {
        let host = unique_name(host_prefix);
        let peer = unique_name(peer_prefix);
        must(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
        ]);
        let pair = VethPair { host, peer };
        if let Some(ns) = peer_ns {
            must(&["ip", "link", "set", &pair.peer, "netns", ns.name()]);
        }
        link_up(None, &pair.host);
        link_up(peer_ns, &pair.peer);
        pair
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting one end deletes both; if the peer's namespace is already
        // gone the pair is gone too and this fails harmlessly.
        let _ = sh(&["ip", "link", "del", &self.host]);
    }
}

/// `ip link set <dev> up` (inside `ns` if given).
pub fn link_up(ns: Option<&Netns>, dev: &str) {
    must(&in_ns(ns, &["ip", "link", "set", dev, "up"]));
}

/// `ip link set <dev> address <mac>`.
pub fn set_mac(ns: Option<&Netns>, dev: &str, mac: &str) {
    must(&in_ns(ns, &["ip", "link", "set", dev, "address", mac]));
}

/// `ip addr add <cidr> dev <dev>`.
pub fn add_addr(ns: Option<&Netns>, dev: &str, cidr: &str) {
    must(&in_ns(ns, &["ip", "addr", "add", cidr, "dev", dev]));
}

/// Turns transmit checksum offload off (`ethtool -K <dev> tx off`): needed for
/// TCP through XDP, which does not carry partial checksums along.
pub fn tx_checksum_off(ns: Option<&Netns>, dev: &str) {
    must(&in_ns(ns, &["ethtool", "-K", dev, "tx", "off"]));
}

/// Whether an XDP program (native or generic) is attached to `dev`.
pub fn xdp_attached(ns: Option<&Netns>, dev: &str) -> bool {
    must(&in_ns(ns, &["ip", "link", "show", "dev", dev])).contains("xdp")
}

/// Pings `addr` from inside `ns`; true if all `count` replies arrived.
pub fn ping(ns: &Netns, addr: &str, count: u32) -> bool {
    ping_rtt(ns, addr, count).is_some()
}

/// Pings `addr` from inside `ns`; the average round-trip time in
/// milliseconds if all `count` replies arrived.
pub fn ping_rtt(ns: &Netns, addr: &str, count: u32) -> Option<f64> {
    let c = count.to_string();
    let timeout = Duration::from_secs(u64::from(count) + 5);
    let args = in_ns(
        Some(ns),
        &["ping", "-n", "-q", "-c", &c, "-i", "0.2", "-W", "1", addr],
    );
    let out = run_timeout(Command::new(args[0]).args(&args[1..]), timeout).ok()?;
    if !out.status.success() {
        return None;
    }
    // "rtt min/avg/max/mdev = 0.045/0.062/0.080/0.011 ms"
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    let nums = line.split('=').nth(1)?.trim();
    nums.split('/').nth(1)?.trim().parse().ok()
}

/// Pings until one reply arrives or `within` passes (ARP warm-up).
pub fn ping_until(ns: &Netns, addr: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ping(ns, addr, 1) {
            return true;
        }
    }
    false
}

/// Runs an iperf3 TCP test for `secs` seconds from `client_ns` to a server
/// started in `server_ns` on `server_addr`; returns the received Gbit/s.
pub fn iperf3_tcp(
    server_ns: &Netns,
    server_addr: &str,
    client_ns: &Netns,
    secs: u32,
) -> Result<f64, String> {
    let _server = server_ns.spawn(&["iperf3", "-s", "-1", "-B", server_addr, "-p", "5201"])?;
    // Wait until the server listens.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ss = server_ns.exec(&["ss", "-Htln", "sport", "= :5201"])?;
        if !ss.trim().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err("iperf3 server did not start listening".into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    let t = secs.to_string();
    let args = in_ns(
        Some(client_ns),
        &[
            "iperf3",
            "-c",
            server_addr,
            "-p",
            "5201",
            "-t",
            &t,
            "-J",
            "--connect-timeout",
            "3000",
        ],
    );
    let out = run_timeout(
        Command::new(args[0]).args(&args[1..]),
        Duration::from_secs(u64::from(secs) + 20),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("iperf3 output is not JSON: {e}"))?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    json.pointer("/end/sum_received/bits_per_second")
        .and_then(|v| v.as_f64())
        .map(|bps| bps / 1e9)
        .ok_or_else(|| "iperf3 output has no end.sum_received.bits_per_second".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_short() {
        let a = unique_name("fvsabcdefgh");
        let b = unique_name("fvsabcdefgh");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
        assert!(a.starts_with("fvsabc"));
    }
}
