//! Shared helpers of the `tools` integration tests: a RAII guard around a
//! running `ferrovsd` (config file, log, management socket) and parsers
//! for `ferrovs-ctl` output.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tests::{run_timeout, unique_name};

/// Path of the `ferrovsd` binary built by cargo.
pub const FERROVSD: &str = env!("CARGO_BIN_EXE_ferrovsd");
/// Path of the `ferrovs-ctl` binary built by cargo.
pub const FERROVS_CTL: &str = env!("CARGO_BIN_EXE_ferrovs-ctl");

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/<unique>`.
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `ferrovsd`: stopped with SIGTERM (then SIGKILL) on drop; its
/// log is printed when the test is failing.
#[derive(Debug)]
pub struct Ferrovsd {
    /// Bridge name.
    pub name: String,
    child: Option<Child>,
    /// Management socket.
    pub socket: PathBuf,
    /// Daemon log (stderr and stdout).
    pub log: PathBuf,
    cfg: PathBuf,
    dir: TempDir,
}

impl Ferrovsd {
    /// Writes a config (`bridge`, `socket`, optional initial `flows`, then
    /// `ports`, the `[[port]]` tables in TOML), starts the daemon and waits
    /// until it answers on its socket.
    pub fn start(name: &str, ports: &str, flows: Option<&str>) -> Result<Ferrovsd, String> {
        let dir = TempDir::new("fvsd");
        let socket = dir.0.join(format!("{name}.sock"));
        let log = dir.0.join(format!("{name}.log"));
        let mut cfg = format!("bridge = \"{name}\"\nsocket = \"{}\"\n", socket.display());
        if let Some(f) = flows {
            let fp = dir.0.join("flows.txt");
            std::fs::write(&fp, f).map_err(|e| e.to_string())?;
            cfg.push_str(&format!("flows = \"{}\"\n", fp.display()));
        }
        cfg.push_str(ports);
        let cfg_path = dir.0.join(format!("{name}.toml"));
        std::fs::write(&cfg_path, &cfg).map_err(|e| e.to_string())?;
        std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut d = Ferrovsd {
            name: name.to_string(),
            child: None,
            socket,
            log,
            cfg: cfg_path,
            dir,
        };
        d.spawn()?;
        Ok(d)
    }

    /// Stops the daemon and starts it again with the same config (and
    /// socket); waits until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }

    /// Starts the daemon (log appended) and waits until it answers.
    fn spawn(&mut self) -> Result<(), String> {
        let name = self.name.clone();
        let cfg = std::fs::read_to_string(&self.cfg).unwrap_or_default();
        let logf = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let logf2 = logf.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(FERROVSD)
            .arg("--config")
            .arg(&self.cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2)
            .spawn()
            .map_err(|e| format!("cannot start ferrovsd: {e}"))?;
        self.child = Some(child);
        let d = self;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(c) = d.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    d.child = None;
                    return Err(format!(
                        "ferrovsd {name} exited at start ({st}):\n{}\nconfig:\n{cfg}",
                        d.log_text()
                    ));
                }
            }
            if d.socket.exists() && d.ctl(&["show"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "ferrovsd {name} did not answer within 15 s:\n{}",
                    d.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Runs `ferrovs-ctl --socket S args...`: stdout, or stderr on failure.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        ctl_at(&self.socket, args)
    }

    /// Like [`Ferrovsd::ctl`] but panics (with the daemon log) on failure.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        match self.ctl(args) {
            Ok(s) => s,
            Err(e) => panic!("ferrovs-ctl {}: {e}", args.join(" ")),
        }
    }

    /// Writes `text` to a file in the daemon's directory; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> String {
        let p = self.dir.0.join(name);
        std::fs::write(&p, text).expect("write file");
        p.display().to_string()
    }

    /// Installs flows from `text` with `add-flows`.
    pub fn add_flows(&self, text: &str) {
        let f = self.write_file("add.txt", text);
        self.ctl_ok(&["add-flows", &f]);
    }

    /// `dump-ports` as port -> (rx packets, tx packets).
    pub fn port_counters(&self) -> BTreeMap<u16, (u64, u64)> {
        parse_dump_ports(&self.ctl_ok(&["dump-ports"]))
    }

    /// n_packets of the first flow `dump-flows FILTER` shows.
    pub fn flow_packets(&self, filter: &str) -> u64 {
        let out = self.ctl_ok(&["dump-flows", filter]);
        n_packets(&out).unwrap_or_else(|| panic!("no flow for '{filter}' in:\n{out}"))
    }

    /// n_packets of the flow whose `dump-flows` line contains `needle`.
    pub fn flow_packets_where(&self, needle: &str) -> u64 {
        let out = self.ctl_ok(&["dump-flows"]);
        out.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| field_u64(l, "n_packets="))
            .unwrap_or_else(|| panic!("no flow line containing '{needle}' in:\n{out}"))
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL; returns the exit status
    /// (`None` if it had to be killed or was already reaped).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = run_timeout(
            Command::new("kill").args(["-TERM", &child.id().to_string()]),
            Duration::from_secs(5),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Ferrovsd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- ferrovsd {} log -----\n{}----- end of log -----",
                self.name,
                self.log_text()
            );
        }
    }
}

/// Runs `ferrovs-ctl --socket S args...` with a timeout.
pub fn ctl_at(socket: &Path, args: &[&str]) -> Result<String, String> {
    let out = run_timeout(
        Command::new(FERROVS_CTL)
            .arg("--socket")
            .arg(socket)
            .args(args),
        Duration::from_secs(20),
    )?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Parses `dump-ports` output into port -> (rx packets, tx packets).
pub fn parse_dump_ports(text: &str) -> BTreeMap<u16, (u64, u64)> {
    let mut m = BTreeMap::new();
    let mut cur: Option<(u16, u64)> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("port ") {
            let (no, rest) = rest.split_once(':').unwrap_or(("", ""));
            let rx = field_u64(rest, "pkts=");
            cur = no.trim().parse().ok().zip(rx);
        } else if let Some(rest) = t.strip_prefix("tx ") {
            if let (Some((no, rx)), Some(tx)) = (cur.take(), field_u64(rest, "pkts=")) {
                m.insert(no, (rx, tx));
            }
        }
    }
    m
}

/// The number right after `name` in `text` (e.g. `tx_wakeups=`).
pub fn field_u64(text: &str, name: &str) -> Option<u64> {
    let i = text.find(name)? + name.len();
    let digits: String = text[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The first `n_packets=` value in `dump-flows` output.
pub fn n_packets(text: &str) -> Option<u64> {
    text.lines().find_map(|l| field_u64(l, "n_packets="))
}

/// A pod: a namespace with `eth0` (IPv6 off, tx checksum offload off),
/// joined by a veth pair to the host side interface `host`.
#[derive(Debug)]
pub struct Pod {
    /// Host side interface (a switch port).
    pub host: String,
    /// IPv4 address (no prefix length).
    pub ip: String,
    /// MAC of eth0.
    pub mac: String,
    // Drop order: the host link, then the namespace.
    _veth: tests::VethPair,
    /// The namespace.
    pub ns: tests::Netns,
}

impl Pod {
    /// Creates a pod with `cidr` (e.g. `10.0.0.1/24`) and `mac` on eth0.
    pub fn new(prefix: &str, cidr: &str, mac: &str) -> Pod {
        let ns = tests::Netns::new(prefix);
        for k in ["all", "default"] {
            ns.exec_ok(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
            ]);
        }
        let host = unique_name(prefix);
        tests::must(&[
            "ip",
            "link",
            "add",
            &host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        let veth = tests::VethPair {
            host: host.clone(),
            peer: "eth0".into(),
        };
        tests::must(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{host}.disable_ipv6=1"),
        ]);
        tests::set_mac(Some(&ns), "eth0", mac);
        if !cidr.is_empty() {
            tests::add_addr(Some(&ns), "eth0", cidr);
        }
        tests::tx_checksum_off(Some(&ns), "eth0");
        tests::link_up(Some(&ns), "eth0");
        tests::link_up(None, &host);
        Pod {
            host,
            ip: cidr.split('/').next().unwrap_or_default().to_string(),
            mac: mac.to_string(),
            _veth: veth,
            ns,
        }
    }

    /// Runs a command in the pod, returning stdout or the error.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        self.ns.exec(args)
    }

    /// The `[[port]]` table for this pod's host side.
    pub fn port_toml(&self, ofport: u16, extra: &str) -> String {
        format!(
            "[[port]]\nname = \"{}\"\nofport = {ofport}\n{extra}\n",
            self.host
        )
    }
}

/// Runs a python3 program inside `ns` with a timeout; stdout or the error.
pub fn python(ns: &tests::Netns, program: &str, timeout: Duration) -> Result<String, String> {
    let out = run_timeout(
        Command::new("ip").args(["netns", "exec", ns.name(), "python3", "-c", program]),
        timeout,
    )?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "python3 failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Waits until something listens on TCP `port` inside `ns`.
pub fn wait_listen(ns: &tests::Netns, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let f = format!("= :{port}");
        if let Ok(s) = ns.exec(&["ss", "-Htln", "sport", &f]) {
            if !s.trim().is_empty() {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Tries a TCP connect from `ns` to `addr:port` within `secs` seconds
/// (bash `/dev/tcp`); true if the connection was established.
pub fn tcp_connects(ns: &tests::Netns, addr: &str, port: u16, secs: u32) -> bool {
    let script = format!("exec 3<>/dev/tcp/{addr}/{port}");
    let out = run_timeout(
        Command::new("ip").args([
            "netns",
            "exec",
            ns.name(),
            "timeout",
            &secs.to_string(),
            "bash",
            "-c",
            &script,
        ]),
        Duration::from_secs(u64::from(secs) + 5),
    );
    matches!(out, Ok(o) if o.status.success())
}
