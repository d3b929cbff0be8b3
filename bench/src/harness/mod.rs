//! `ferrovs-bench`: the end-to-end harness that runs ferrovs, Open vSwitch
//! (userspace datapath, AF_XDP ports) and the Linux bridge side by side on
//! one netns/veth topology and reports packets/s, loss, CPU and latency.
//!
//! Pure parts: [`gen`] (trafgen configs, rule sets), [`report`] (Markdown,
//! CSV, SVG from a list of [`Sample`]s). I/O parts: [`topo`] (namespaces and
//! veths as guards), [`systems`] (start/stop each switch), [`traffic`]
//! (trafgen, iperf3, counters, CPU), [`latency`] (UDP request/response),
//! [`pace`] (the evenly paced AF_XDP sender for fixed rates).

pub mod gen;
pub mod latency;
pub mod pace;
pub mod report;
pub mod systems;
pub mod topo;
pub mod traffic;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// A switch under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    /// ferrovsd, AF_XDP ports, one poll thread.
    Ferrovs,
    /// Open vSwitch, `datapath_type=netdev`, `type=afxdp` ports, one PMD.
    Ovs,
    /// The Linux bridge (in-kernel, no rule table).
    Bridge,
}

impl System {
    /// All systems, in run order.
    pub const ALL: [System; 3] = [System::Ferrovs, System::Ovs, System::Bridge];

    /// Short name used in CSV and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            System::Ferrovs => "ferrovs",
            System::Ovs => "ovs",
            System::Bridge => "bridge",
        }
    }

    /// Parses [`System::name`].
    pub fn from_name(s: &str) -> Option<System> {
        System::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Long name for tables and the chart legend.
    pub fn label(self) -> &'static str {
        match self {
            System::Ferrovs => "ferrovs (AF_XDP, 1 poll thread)",
            System::Ovs => "OVS 3.1 (netdev, afxdp, 1 PMD)",
            System::Bridge => "Linux bridge",
        }
    }

    /// Whether the system has a rule table (the bridge has none).
    pub fn has_rules(self) -> bool {
        !matches!(self, System::Bridge)
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Kind of traffic of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// 64-byte UDP frames from trafgen; `None` = no rate limit (max).
    Udp(Option<u64>),
    /// iperf3 TCP throughput.
    Tcp,
    /// UDP request/response round-trip time.
    Latency,
}

impl Kind {
    /// Name used in CSV: `udp`, `tcp`, `latency`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Udp(_) => "udp",
            Kind::Tcp => "tcp",
            Kind::Latency => "latency",
        }
    }
}

/// One test: traffic kind, number of concurrent flows, rule-set size
/// (`None` for the Linux bridge, which has no rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Test {
    /// Traffic.
    pub kind: Kind,
    /// Concurrent flows (source ports / TCP streams / sockets).
    pub flows: u32,
    /// Flows installed in the switch.
    pub rules: Option<u32>,
}

/// Compact count: 1000 -> `1k`, 10000 -> `10k`, 1500 -> `1500`.
pub fn short_count(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

impl Test {
    /// Same test with another rule-set size.
    pub fn with_rules(self, rules: Option<u32>) -> Test {
        Test { rules, ..self }
    }

    /// Rate column: offered pps, `max`, or empty for TCP/latency.
    pub fn rate_label(&self) -> String {
        match self.kind {
            Kind::Udp(Some(r)) => format!("{}pps", short_count(r)),
            Kind::Udp(None) => "max".to_string(),
            _ => String::new(),
        }
    }

    /// Human label, e.g. `udp max, 1k flows, 10k rules`.
    pub fn label(&self) -> String {
        let kind = match self.kind {
            Kind::Udp(_) => format!("udp {}", self.rate_label()),
            Kind::Tcp => "tcp".to_string(),
            Kind::Latency => "latency".to_string(),
        };
        let rules = match self.rules {
            Some(r) => format!("{} rules", short_count(r.into())),
            None => "no rules".to_string(),
        };
        format!("{kind}, {} flows, {rules}", short_count(self.flows.into()))
    }

    /// Short label for chart groups, e.g. `max 1k/10k`.
    pub fn short_label(&self) -> String {
        let head = match self.kind {
            Kind::Udp(_) => self.rate_label(),
            Kind::Tcp => "tcp".into(),
            Kind::Latency => "rr".into(),
        };
        let rules = self.rules.map_or("-".into(), |r| short_count(r.into()));
        format!("{head} {}fl/{rules}r", short_count(self.flows.into()))
    }
}

/// One measurement of one system in one test and round.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    /// Round number, from 1.
    pub round: u32,
    /// System (as [`System`]); `None` only in `Default`.
    pub system: Option<System>,
    /// Test; `None` only in `Default`.
    pub test: Option<Test>,
    /// Measurement time in seconds.
    pub secs: f64,
    /// Packets sent by the sender's eth0 (tx counter).
    pub sent: u64,
    /// Packets received by the receiver's eth0 (rx counter).
    pub received: u64,
    /// Packets received by both ends (both directions): what the switch forwarded.
    pub switched: u64,
    /// TCP: Gbit/s received (iperf3).
    pub gbps: Option<f64>,
    /// Latency: round trips completed.
    pub rtts: u64,
    /// Latency: median round-trip time, microseconds.
    pub p50_us: Option<f64>,
    /// Latency: 99th percentile round-trip time, microseconds.
    pub p99_us: Option<f64>,
    /// Switch process CPU seconds (utime+stime, all threads); `None` for the bridge.
    pub cpu_s: Option<f64>,
    /// Poll thread (PMD) busy seconds: time in rounds that moved packets,
    /// as the switch itself counts it (ferrovs `stats`, OVS
    /// `pmd-perf-show`); `None` for the bridge or when unavailable.
    pub busy_s: Option<f64>,
    /// Softirq seconds over all CPUs (from /proc/stat) during the measurement.
    pub softirq_s: f64,
    /// Why the measurement failed, if it did.
    pub error: Option<String>,
}

impl Sample {
    /// Delivered packets/s at the receiver.
    pub fn pps(&self) -> Option<f64> {
        (self.secs > 0.0 && self.error.is_none()).then(|| self.received as f64 / self.secs)
    }

    /// Loss in percent: `1 - received/sent` (UDP tests).
    pub fn loss_pct(&self) -> Option<f64> {
        (self.sent > 0 && self.error.is_none())
            .then(|| (1.0 - self.received as f64 / self.sent as f64).max(0.0) * 100.0)
    }

    /// CPU seconds per million switched packets: the switch process for
    /// ferrovs/OVS, softirq over all CPUs for the bridge.
    pub fn cpu_per_mpkt(&self) -> Option<f64> {
        if self.switched == 0 || self.error.is_some() {
            return None;
        }
        let cpu = match self.system {
            Some(System::Bridge) => Some(self.softirq_s),
            _ => self.cpu_s,
        }?;
        Some(cpu / (self.switched as f64 / 1e6))
    }

    /// Poll-thread busy seconds per million switched packets.
    pub fn busy_per_mpkt(&self) -> Option<f64> {
        if self.switched == 0 || self.error.is_some() {
            return None;
        }
        Some(self.busy_s? / (self.switched as f64 / 1e6))
    }
}

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Registers SIGINT/SIGTERM to set the stop flag checked by [`stopped`].
pub fn install_signal_flag() -> std::io::Result<()> {
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false)));
    signal_hook::flag::register(signal_hook::consts::SIGINT, flag.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.clone())?;
    Ok(())
}

/// The stop flag itself (set by SIGINT/SIGTERM once
/// [`install_signal_flag`] ran), for loops that poll it directly.
pub fn stop_flag() -> Arc<AtomicBool> {
    STOP.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// Whether a stop was requested (SIGINT/SIGTERM).
pub fn stopped() -> bool {
    STOP.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Sleeps up to `d`, returning early (false) when a stop was requested.
pub fn sleep_unless_stopped(d: std::time::Duration) -> bool {
    let end = std::time::Instant::now() + d;
    loop {
        if stopped() {
            return false;
        }
        let now = std::time::Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(std::time::Duration::from_millis(50)));
    }
}
