//! Traffic and meters: trafgen UDP at a fixed or unlimited rate, iperf3
//! TCP with one or many streams, the UDP request/response client, and the
//! [`Meter`] that reads interface counters inside the namespaces, CPU
//! time from /proc and the switch's poll-thread busy time around a
//! measurement.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::topo::{run, run_in, ChildGuard, DEV, ENDPOINTS, NS_RCV, NS_SND};
use super::{sleep_unless_stopped, stopped, Sample};

/// A measurement that failed.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// A command failed.
    #[error(transparent)]
    Cmd(#[from] super::topo::CmdError),
    /// Output we could not read.
    #[error("{what}: unexpected output: {detail}")]
    Parse {
        /// Which tool or file.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Stop requested.
    #[error("interrupted")]
    Interrupted,
}

fn parse_err(what: &'static str, detail: impl Into<String>) -> TrafficError {
    TrafficError::Parse {
        what,
        detail: detail.into(),
    }
}

/// `(rx_packets, tx_packets)` of eth0 in `ns`.
pub fn counters(ns: &str) -> Result<(u64, u64), TrafficError> {
    let out = run(&["ip", "-n", ns, "-s", "-j", "link", "show", DEV])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| parse_err("ip -s -j link", e.to_string()))?;
    let stats = &v[0]["stats64"];
    let get = |dir: &str| stats[dir]["packets"].as_u64();
    match (get("rx"), get("tx")) {
        (Some(rx), Some(tx)) => Ok((rx, tx)),
        _ => Err(parse_err("ip -s -j link", format!("no stats64 in {ns}"))),
    }
}

/// utime+stime ticks of a process (all threads), from /proc/PID/stat.
pub fn proc_ticks(pid: u32) -> Result<u64, TrafficError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| parse_err("/proc/PID/stat", format!("{pid}: {e}")))?;
    parse_proc_ticks(&text)
        .ok_or_else(|| parse_err("/proc/PID/stat", format!("{pid}: no utime/stime")))
}

/// utime (field 14) + stime (field 15) of a /proc/PID/stat line.
pub fn parse_proc_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")" the fields start at 3 (state): utime = index 11, stime = 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Softirq ticks over all CPUs (the `cpu` line of /proc/stat).
pub fn softirq_ticks() -> Result<u64, TrafficError> {
    let text = std::fs::read_to_string("/proc/stat")
        .map_err(|e| parse_err("/proc/stat", e.to_string()))?;
    parse_softirq(&text).ok_or_else(|| parse_err("/proc/stat", "no cpu line"))
}

/// The softirq column (7th number) of the aggregate `cpu` line.
pub fn parse_softirq(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(7)?.parse().ok()
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if unknown).
pub fn clk_tck() -> f64 {
    run(&["getconf", "CLK_TCK"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Where the poll thread's busy time (rounds that moved packets) comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BusySource {
    /// Not available (the Linux bridge).
    #[default]
    None,
    /// ferrovsd's `stats` (poll time: busy=), over its management socket.
    Ferrovs(PathBuf),
    /// OVS: `ovs-appctl dpif-netdev/pmd-stats-clear`, then `pmd-perf-show`.
    Ovs,
}

/// The switch under test, as the meter sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// The switch process (ferrovsd, ovs-vswitchd): CPU from /proc.
    pub pid: Option<u32>,
    /// Its poll-thread busy time.
    pub busy: BusySource,
}

/// Busy seconds from ferrovs's `stats` text (`poll time: busy=1.234 s`).
pub fn parse_ferrovs_busy(stats: &str) -> Option<f64> {
    let rest = stats
        .lines()
        .find_map(|l| l.strip_prefix("poll time: busy="))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Busy seconds from `ovs-appctl dpif-netdev/pmd-perf-show` (one PMD):
/// measurement duration x share of used TSC cycles x share of those in
/// busy iterations.
pub fn parse_pmd_perf_busy(text: &str) -> Option<f64> {
    let num_after = |key: &str| -> Option<f64> {
        let l = text.lines().find(|l| l.trim_start().starts_with(key))?;
        l.trim_start()[key.len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    // "- busy iterations:  471194  ( 98.9 % of used cycles)"
    let pct_in = |key: &str| -> Option<f64> {
        let l = text.lines().find(|l| l.trim_start().starts_with(key))?;
        let inner = &l[l.find('(')? + 1..];
        inner.split_whitespace().next()?.parse().ok()
    };
    let secs = num_after("Measurement duration:")?;
    let used = pct_in("- Used TSC cycles:")?;
    let busy = pct_in("- busy iterations:")?;
    Some(secs * used / 100.0 * busy / 100.0)
}

impl BusySource {
    /// Starts a measurement: ferrovs's busy seconds so far (OVS: clears
    /// the PMD statistics, so `Some(0.0)`).
    fn start(&self) -> Option<f64> {
        match self {
            BusySource::None => None,
            BusySource::Ferrovs(sock) => ferrovs_busy(sock),
            BusySource::Ovs => run(&["ovs-appctl", "dpif-netdev/pmd-stats-clear"])
                .ok()
                .map(|_| 0.0),
        }
    }

    /// Busy seconds since `start` returned `b0`.
    fn finish(&self, b0: Option<f64>) -> Option<f64> {
        let b1 = match self {
            BusySource::None => None,
            BusySource::Ferrovs(sock) => ferrovs_busy(sock),
            BusySource::Ovs => run(&["ovs-appctl", "dpif-netdev/pmd-perf-show"])
                .ok()
                .and_then(|t| parse_pmd_perf_busy(&t)),
        }?;
        Some((b1 - b0?).max(0.0))
    }
}

fn ferrovs_busy(sock: &Path) -> Option<f64> {
    let req = tools::mgmt::Request {
        args: vec!["stats".into()],
        input: None,
    };
    let resp = tools::mgmt::call(sock, &req).ok()?;
    resp.ok.then(|| parse_ferrovs_busy(&resp.output)).flatten()
}

/// Counters and CPU at the start of a measurement.
#[derive(Debug)]
pub struct Meter {
    t0: Instant,
    snd: (u64, u64),
    rcv: (u64, u64),
    cpu: Option<u64>,
    busy: Option<f64>,
    softirq: u64,
    probe: Probe,
    tck: f64,
}

impl Meter {
    /// Snapshot now of the counters and of the switch in `probe`.
    pub fn start(probe: &Probe, tck: f64) -> Result<Meter, TrafficError> {
        Ok(Meter {
            snd: counters(NS_SND)?,
            rcv: counters(NS_RCV)?,
            cpu: probe.pid.map(proc_ticks).transpose()?,
            busy: probe.busy.start(),
            softirq: softirq_ticks()?,
            t0: Instant::now(),
            probe: probe.clone(),
            tck,
        })
    }

    /// Fills `secs`, `sent`, `received`, `switched`, `cpu_s`, `busy_s`,
    /// `softirq_s`.
    pub fn finish(&self, s: &mut Sample) -> Result<(), TrafficError> {
        s.busy_s = self.probe.busy.finish(self.busy);
        let cpu1 = self.probe.pid.map(proc_ticks).transpose()?;
        let si1 = softirq_ticks()?;
        let snd = counters(NS_SND)?;
        let rcv = counters(NS_RCV)?;
        s.secs = self.t0.elapsed().as_secs_f64();
        s.sent = snd.1.saturating_sub(self.snd.1);
        s.received = rcv.0.saturating_sub(self.rcv.0);
        s.switched = s.received + snd.0.saturating_sub(self.snd.0);
        s.cpu_s = match (self.cpu, cpu1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / self.tck),
            _ => None,
        };
        s.softirq_s = si1.saturating_sub(self.softirq) as f64 / self.tck;
        Ok(())
    }
}

/// Where the load generators run (`taskset -c LIST`).
#[derive(Debug, Clone)]
pub struct Gen {
    /// CPU list for generators, clients and servers (not the poll core).
    pub cpus: String,
    /// This executable (for the latency client/server).
    pub exe: String,
    /// Warm-up before the measurement window.
    pub warmup: Duration,
    /// The maximum-rate UDP sender.
    pub max_gen: MaxGen,
    /// Directory for the senders' stderr, quoted when one fails.
    pub logs: PathBuf,
}

/// Which sender the maximum-rate UDP tests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MaxGen {
    /// `ferrovs-bench pace` without a rate limit: AF_XDP, 32 frames per
    /// `sendto`, about 0.75 Mpps here, more than either AF_XDP switch
    /// forwards, so the switch is what is measured.
    Pace,
    /// trafgen (netsniff-ng) on its TX_RING path: about 0.5 Mpps here,
    /// which both AF_XDP switches keep up with.
    Trafgen,
}

/// UDP for `secs` after the warm-up: at a fixed `rate` with the paced
/// AF_XDP sender ([`super::pace`], `flows` flows), or at maximum (`None`)
/// with the sender [`Gen::max_gen`] names: the paced sender without a
/// limit, or trafgen with `cfg` (its fast TX_RING path, which has no
/// rate limit to be bursty about).
#[allow(clippy::too_many_arguments)]
pub fn udp(
    gen: &Gen,
    cfg: &Path,
    flows: u32,
    rate: Option<u64>,
    secs: Duration,
    probe: &Probe,
    tck: f64,
    s: &mut Sample,
) -> Result<(), TrafficError> {
    let cfg = cfg.display().to_string();
    let (rate_s, flows_s) = (rate.unwrap_or(0).to_string(), flows.to_string());
    // Runs past the window; stopped with SIGINT once it is measured.
    let millis = (gen.warmup + secs + Duration::from_secs(5))
        .as_millis()
        .to_string();
    let mut args = vec!["taskset", "-c", &gen.cpus];
    // Rate 0 tells the paced sender to send as fast as it can.
    let what = if rate.is_some() || gen.max_gen == MaxGen::Pace {
        args.extend_from_slice(&[
            &gen.exe, "pace", "--dev", DEV, "--rate", &rate_s, "--flows", &flows_s, "--millis",
            &millis,
        ]);
        "ferrovs-bench pace"
    } else {
        args.extend_from_slice(&[
            "trafgen",
            "-i",
            &cfg,
            "-o",
            DEV,
            "-P",
            "1",
            "--no-sock-mem",
            "-Q",
            "-C",
        ]);
        "trafgen"
    };
    let port = super::gen::UDP_DPORT.to_string();
    let _sink = ChildGuard::spawn(
        Some(NS_RCV),
        &[
            "taskset", "-c", &gen.cpus, &gen.exe, "sink", "--port", &port,
        ],
        None,
    )?;
    let err_path = gen.logs.join("udp-sender.err");
    let err_file = std::fs::File::create(&err_path)
        .map_err(|e| parse_err(what, format!("{}: {e}", err_path.display())))?;
    let mut child = ChildGuard::spawn(Some(NS_SND), &args, Some(err_file))?;
    if !sleep_unless_stopped(gen.warmup) {
        return Err(TrafficError::Interrupted);
    }
    if child.exited() {
        let why = super::topo::log_tail(&err_path);
        return Err(parse_err(
            what,
            if why.is_empty() {
                format!("exited early, saying nothing (ip netns exec {NS_SND} {what} ...)")
            } else {
                format!("exited early: {why}")
            },
        ));
    }
    let m = Meter::start(probe, tck)?;
    let ok = sleep_unless_stopped(secs);
    m.finish(s)?;
    child.stop("INT", Duration::from_secs(2));
    if !ok {
        return Err(TrafficError::Interrupted);
    }
    Ok(())
}

/// The receiver of the UDP tests: a bound UDP socket on `port` (discard)
/// that is never read, until SIGINT/SIGTERM. Frames are counted when
/// they arrive on the receiver's interface; the socket only keeps the
/// receiving stack from answering each one with an ICMP port
/// unreachable (route lookups for every frame, on the switch's core,
/// since veth delivers in the sender's context). Once its buffer is full
/// the kernel drops at the socket, the cheapest place it can.
pub fn sink(port: u16) -> std::io::Result<()> {
    let _sock = std::net::UdpSocket::bind(("0.0.0.0", port))?;
    while !super::stopped() {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Sum of `end.sum_received.bits_per_second` of iperf3 JSON outputs.
pub fn iperf3_bps(json: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["end"]["sum_received"]["bits_per_second"].as_f64()
}

/// Streams per iperf3 client (iperf3 caps -P at 128, and clients with
/// more than ~50 streams often hang in the end-of-test exchange).
pub const STREAMS_PER_CLIENT: u32 = 32;

/// TCP: `streams` iperf3 streams (over ceil(streams/32) client/server
/// pairs) for `secs`; Gbit/s summed over the clients.
pub fn tcp(
    gen: &Gen,
    streams: u32,
    secs: Duration,
    probe: &Probe,
    tck: f64,
    s: &mut Sample,
) -> Result<(), TrafficError> {
    let clients = streams.div_ceil(STREAMS_PER_CLIENT).max(1);
    let mut servers = Vec::new();
    for i in 0..clients {
        let port = (5201 + i).to_string();
        servers.push(ChildGuard::spawn(
            Some(NS_RCV),
            &[
                "taskset", "-c", &gen.cpus, "iperf3", "-s", "-1", "-p", &port,
            ],
            None,
        )?);
    }
    if !sleep_unless_stopped(Duration::from_millis(400)) {
        return Err(TrafficError::Interrupted);
    }
    let dst = ENDPOINTS.dst_ip.to_string();
    let t = secs.as_secs().max(1).to_string();
    let m = Meter::start(probe, tck)?;
    let mut cl = Vec::new();
    let mut outs = Vec::new();
    for i in 0..clients {
        let port = (5201 + i).to_string();
        let per = (streams - i * STREAMS_PER_CLIENT)
            .min(STREAMS_PER_CLIENT)
            .to_string();
        // JSON of many streams is larger than a pipe: to a file.
        let path = std::env::temp_dir().join(format!("fb-iperf3-{}-{i}.json", std::process::id()));
        let file = std::fs::File::create(&path)
            .map_err(|e| parse_err("iperf3 output file", format!("{}: {e}", path.display())))?;
        outs.push(RemoveFile(path));
        cl.push(ChildGuard::spawn_to(
            Some(NS_SND),
            &[
                "taskset", "-c", &gen.cpus, "iperf3", "-c", &dst, "-p", &port, "-t", &t, "-P",
                &per, "-J",
            ],
            Stdio::from(file),
            None,
        )?);
    }
    let deadline = Instant::now() + secs + Duration::from_secs(30);
    while cl.iter_mut().any(|c| !c.exited()) {
        if stopped() {
            return Err(TrafficError::Interrupted);
        }
        if Instant::now() > deadline {
            return Err(parse_err("iperf3", "client did not finish"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    m.finish(s)?;
    let mut bps = 0.0;
    for o in &outs {
        let out = std::fs::read_to_string(&o.0).unwrap_or_default();
        bps += iperf3_bps(&out)
            .ok_or_else(|| parse_err("iperf3 -J", out.chars().take(200).collect::<String>()))?;
    }
    s.gbps = Some(bps / 1e9);
    drop(servers);
    Ok(())
}

/// Removes a file on drop.
#[derive(Debug)]
struct RemoveFile(std::path::PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Latency: the request/response server in the receiver namespace and
/// the client over `flows` sockets in the sender namespace, for `secs`.
pub fn latency(
    gen: &Gen,
    flows: u32,
    secs: Duration,
    probe: &Probe,
    tck: f64,
    s: &mut Sample,
) -> Result<(), TrafficError> {
    let port = super::latency::PORT.to_string();
    let _server = ChildGuard::spawn(
        Some(NS_RCV),
        &[
            "taskset",
            "-c",
            &gen.cpus,
            &gen.exe,
            "rr-server",
            "--port",
            &port,
        ],
        None,
    )?;
    if !sleep_unless_stopped(Duration::from_millis(300)) {
        return Err(TrafficError::Interrupted);
    }
    let dst = format!("{}:{port}", ENDPOINTS.dst_ip);
    let ms = secs.as_millis().to_string();
    let m = Meter::start(probe, tck)?;
    let mut client = ChildGuard::spawn(
        Some(NS_SND),
        &[
            "taskset",
            "-c",
            &gen.cpus,
            &gen.exe,
            "rr-client",
            "--dst",
            &dst,
            "--flows",
            &flows.to_string(),
            "--millis",
            &ms,
        ],
        None,
    )?;
    let deadline = Instant::now() + secs + Duration::from_secs(30);
    while !client.exited() {
        if stopped() {
            return Err(TrafficError::Interrupted);
        }
        if Instant::now() > deadline {
            return Err(parse_err("rr-client", "did not finish"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    m.finish(s)?;
    let mut out = String::new();
    if let Some(o) = client.0.stdout.as_mut() {
        let _ = o.read_to_string(&mut out);
    }
    let r =
        super::latency::Summary::parse(&out).ok_or_else(|| parse_err("rr-client", out.clone()))?;
    s.rtts = r.count;
    s.p50_us = r.p50_us;
    s.p99_us = r.p99_us;
    if r.count == 0 {
        return Err(parse_err(
            "rr-client",
            format!("no responses ({} lost)", r.lost),
        ));
    }
    Ok(())
}

/// Is `tool` on PATH?
pub fn have(tool: &str) -> bool {
    run(&["sh", "-c", &format!("command -v {tool}")]).is_ok()
}

/// Runs something in the sender namespace (used by checks).
pub fn in_sender(args: &[&str]) -> Result<String, TrafficError> {
    Ok(run_in(NS_SND, args)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields() {
        let line =
            "1234 (ferro vsd) S 1 1234 1234 0 -1 4194560 500 0 0 0 731 264 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_proc_ticks(line), Some(731 + 264));
        let stat = "cpu  10 20 30 40 50 60 70 0 0 0\ncpu0 1 2 3 4 5 6 7 0 0 0\n";
        assert_eq!(parse_softirq(stat), Some(70));
    }

    #[test]
    fn iperf3_json() {
        let j = r#"{"end":{"sum_received":{"bytes":100,"bits_per_second":2.5e9}}}"#;
        assert_eq!(iperf3_bps(j), Some(2.5e9));
        assert_eq!(iperf3_bps("{}"), None);
    }
    #[test]
    fn busy_time_from_ferrovs_stats_and_pmd_perf_show() {
        let stats = "packets: 5\nidle sleeps: 0\npoll time: busy=11.953 s (61.0%), idle=7.641 s, asleep=0.373 s\n";
        assert_eq!(parse_ferrovs_busy(stats), Some(11.953));
        assert_eq!(parse_ferrovs_busy("packets: 5\n"), None);
        let perf = "\nTime: 20:41:47.372\nMeasurement duration: 3.021 s\n\npmd thread numa_id 0 core_id 1:\n\n  Iterations:             28752090  (0.10 us/it)\n  - Used TSC cycles:    7831801848  ( 99.7 % of total cycles)\n  - idle iterations:      28457685  ( 68.2 % of used cycles)\n  - busy iterations:        294405  ( 40.5 % of used cycles)\n  - sleep iterations:            0  (  0.0 % of iterations)\n";
        let b = parse_pmd_perf_busy(perf).unwrap();
        assert!((b - 3.021 * 0.997 * 0.405).abs() < 1e-9, "{b}");
        assert_eq!(parse_pmd_perf_busy("Measurement duration: 3.0 s\n"), None);
    }
}
