//! Starting and stopping each switch on the topology's `fb-a`/`fb-b`:
//! ferrovsd (config TOML + flows file), Open vSwitch (netdev bridge,
//! afxdp ports, one PMD on the poll core, flows with `ovs-ofctl
//! add-flows`), the Linux bridge. A [`Running`] system tears itself down
//! when dropped and names the process to charge CPU to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::topo::{self, run, run_quiet, ChildGuard, BRIDGE, LINK_A, LINK_B};
use super::System;

/// Why a system could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// A setup command failed.
    #[error(transparent)]
    Cmd(#[from] topo::CmdError),
    /// Writing a config file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The daemon exited.
    #[error("{what} exited during start-up: {log}")]
    Exited {
        /// Which.
        what: &'static str,
        /// Tail of its log.
        log: String,
    },
    /// No ping through the switch.
    #[error("{0}: no connectivity through the switch within 15 s")]
    NoConnectivity(&'static str),
    /// Stop requested.
    #[error("interrupted")]
    Interrupted,
}

/// Path of the OVS control script (Debian).
pub const OVS_CTL: &str = "/usr/share/openvswitch/scripts/ovs-ctl";
const OVS_PIDFILE: &str = "/var/run/openvswitch/ovs-vswitchd.pid";

/// Settings shared by all systems.
#[derive(Debug, Clone)]
pub struct Env {
    /// ferrovsd binary.
    pub ferrovsd: PathBuf,
    /// Core for the ferrovs poll thread and the OVS PMD.
    pub core: usize,
    /// Scratch directory.
    pub work: PathBuf,
    /// Longest poll-thread nap in µs: ferrovsd's `poll_max_sleep_us`, OVS's
    /// `pmd-maxsleep` (0: busy polling, both defaults).
    pub poll_max_sleep_us: u64,
    /// Longest output wait in µs for both switches: ferrovsd's
    /// `tx_flush_interval_us` (under load only), OVS's `tx-flush-interval`.
    /// `None`: each switch's default (ferrovs 20 µs under load, OVS 0).
    pub tx_flush_interval_us: Option<u64>,
}

/// Why `sys` cannot run here, if it cannot.
pub fn unavailable(sys: System, env: &Env) -> Option<String> {
    match sys {
        System::Ferrovs => (!env.ferrovsd.exists()).then(|| {
            format!(
                "{} not found (build it: cargo build --release -p tools -p bench, or pass --ferrovsd)",
                env.ferrovsd.display()
            )
        }),
        System::Ovs => {
            if run(&["ovs-vsctl", "--version"]).is_err() || !Path::new(OVS_CTL).exists() {
                Some("Open vSwitch not installed (apt-get install openvswitch-switch, or scripts/deps.sh)".into())
            } else {
                None
            }
        }
        System::Bridge => None,
    }
}

fn ovs_running() -> bool {
    std::fs::read_to_string(OVS_PIDFILE)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// The OVS daemons for the whole run: started if they were not running,
/// and then stopped on drop; if they were already running they are left
/// running (only our bridge is removed).
#[derive(Debug)]
pub struct OvsDaemon {
    started: bool,
}

impl OvsDaemon {
    /// Starts ovsdb-server and ovs-vswitchd unless running, with the PMD
    /// on `core`, naps up to `max_sleep_us` (0: busy polling) and output
    /// waiting up to `tx_flush_us` (None: OVS's default, 0); both set
    /// either way, as the database keeps them from earlier runs.
    pub fn start(
        core: usize,
        max_sleep_us: u64,
        tx_flush_us: Option<u64>,
    ) -> Result<OvsDaemon, SystemError> {
        let started = !ovs_running();
        let guard = OvsDaemon { started };
        if started {
            run(&[OVS_CTL, "start", "--system-id=random"])?;
        }
        run_quiet(&["ovs-vsctl", "--if-exists", "--timeout=5", "del-br", BRIDGE]);
        run(&[
            "ovs-vsctl",
            "--timeout=10",
            "set",
            "Open_vSwitch",
            ".",
            &format!("other_config:pmd-cpu-mask=0x{:x}", 1u64 << core),
            &format!("other_config:pmd-maxsleep={max_sleep_us}"),
            &format!(
                "other_config:tx-flush-interval={}",
                tx_flush_us.unwrap_or(0)
            ),
        ])?;
        Ok(guard)
    }
}

impl Drop for OvsDaemon {
    fn drop(&mut self) {
        run_quiet(&["ovs-vsctl", "--if-exists", "--timeout=5", "del-br", BRIDGE]);
        if self.started {
            run_quiet(&[OVS_CTL, "stop"]);
        }
    }
}

/// A started system; torn down on drop.
#[derive(Debug)]
pub enum Running {
    /// ferrovsd child.
    Ferrovs(ChildGuard),
    /// OVS bridge `fbbr` on the running daemon.
    Ovs(u32),
    /// Linux bridge `fbbr`.
    Bridge,
}

impl Running {
    /// What the meter reads of this system (`env`: where ferrovsd's
    /// management socket is).
    pub fn probe(&self, env: &Env) -> super::traffic::Probe {
        use super::traffic::BusySource;
        let busy = match self {
            Running::Ferrovs(_) => BusySource::Ferrovs(env.work.join("ferrovs.sock")),
            Running::Ovs(_) => BusySource::Ovs,
            Running::Bridge => BusySource::None,
        };
        super::traffic::Probe {
            pid: self.pid(),
            busy,
        }
    }

    /// Process to charge CPU to (none for the in-kernel bridge).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Running::Ferrovs(c) => Some(c.id()),
            Running::Ovs(pid) => Some(*pid),
            Running::Bridge => None,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::Ferrovs(c) => c.stop("TERM", Duration::from_secs(5)),
            Running::Ovs(_) => {
                run_quiet(&["ovs-vsctl", "--if-exists", "--timeout=5", "del-br", BRIDGE])
            }
            Running::Bridge => run_quiet(&["ip", "link", "del", BRIDGE]),
        }
    }
}

fn write(path: &Path, text: &str) -> Result<(), SystemError> {
    std::fs::write(path, text).map_err(|source| SystemError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Starts `sys` on fresh links with `rules` (ovs-ofctl syntax; ignored by
/// the bridge) and waits until a ping goes through.
pub fn start(sys: System, env: &Env, rules: &str) -> Result<Running, SystemError> {
    let rules_path = env.work.join("rules.txt");
    write(&rules_path, rules)?;
    let running = match sys {
        System::Ferrovs => {
            let cfg = env.work.join("ferrovs.toml");
            let tx_flush = env
                .tx_flush_interval_us
                .map(|us| format!("tx_flush_interval_us = {us}\n"))
                .unwrap_or_default();
            write(
                &cfg,
                &format!(
                    "bridge = \"{BRIDGE}\"\nthreads = 1\ncores = [{}]\npoll_max_sleep_us = {}\n{tx_flush}socket = \"{}\"\nflows = \"{}\"\n\n\
                     [[port]]\nname = \"{LINK_A}\"\nofport = 1\n\n[[port]]\nname = \"{LINK_B}\"\nofport = 2\n",
                    env.core,
                    env.poll_max_sleep_us,
                    env.work.join("ferrovs.sock").display(),
                    rules_path.display()
                ),
            )?;
            let log_path = env.work.join("ferrovsd.log");
            let log = std::fs::File::create(&log_path).map_err(|source| SystemError::Write {
                path: log_path.display().to_string(),
                source,
            })?;
            let ferrovsd = env.ferrovsd.display().to_string();
            let cfg_s = cfg.display().to_string();
            let mut child =
                ChildGuard::spawn_daemon(&["env", "RUST_LOG=warn", &ferrovsd, "-c", &cfg_s], log)?;
            std::thread::sleep(Duration::from_millis(300));
            if child.exited() {
                return Err(SystemError::Exited {
                    what: "ferrovsd",
                    log: topo::log_tail(&log_path),
                });
            }
            Running::Ferrovs(child)
        }
        System::Ovs => {
            run_quiet(&["ovs-vsctl", "--if-exists", "--timeout=5", "del-br", BRIDGE]);
            // Guard first: a failing step below still removes the bridge.
            let mut running = Running::Ovs(0);
            run(&[
                "ovs-vsctl",
                "--timeout=10",
                "add-br",
                BRIDGE,
                "--",
                "set",
                "bridge",
                BRIDGE,
                "datapath_type=netdev",
            ])?;
            for (i, l) in [LINK_A, LINK_B].iter().enumerate() {
                run(&[
                    "ovs-vsctl",
                    "--timeout=10",
                    "add-port",
                    BRIDGE,
                    l,
                    "--",
                    "set",
                    "interface",
                    l,
                    "type=afxdp",
                    "options:xdp-mode=native",
                    &format!("ofport_request={}", i + 1),
                ])?;
            }
            run(&["ovs-ofctl", "del-flows", BRIDGE])?;
            run(&[
                "ovs-ofctl",
                "add-flows",
                BRIDGE,
                &rules_path.display().to_string(),
            ])?;
            let pid = std::fs::read_to_string(OVS_PIDFILE)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .ok_or(SystemError::Exited {
                    what: "ovs-vswitchd",
                    log: format!("no pid in {OVS_PIDFILE}"),
                })?;
            if let Running::Ovs(p) = &mut running {
                *p = pid;
            }
            running
        }
        System::Bridge => {
            run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
            let running = Running::Bridge;
            run(&["ip", "link", "set", LINK_A, "master", BRIDGE])?;
            run(&["ip", "link", "set", LINK_B, "master", BRIDGE])?;
            run(&["ip", "link", "set", BRIDGE, "up"])?;
            running
        }
    };
    if !topo::wait_connectivity(Duration::from_secs(15)) {
        if super::stopped() {
            return Err(SystemError::Interrupted);
        }
        if matches!(running, Running::Ferrovs(_)) {
            return Err(SystemError::Exited {
                what: "ferrovsd (or no connectivity through it)",
                log: topo::log_tail(&env.work.join("ferrovsd.log")),
            });
        }
        return Err(SystemError::NoConnectivity(sys.name()));
    }
    Ok(running)
}
