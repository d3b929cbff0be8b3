//! `ferrovs-bench`: ferrovs, Open vSwitch (AF_XDP, userspace datapath) and
//! the Linux bridge side by side on one netns/veth topology, alternating
//! the systems round by round: 64-byte UDP (trafgen) at fixed rates and at
//! maximum, TCP (iperf3), UDP request/response latency, each with 1 and
//! 1,000 concurrent flows and rule sets of 10 and 10,000 flows. Writes
//! results.csv (every round), report.md (medians, ferrovs/OVS ratios) and
//! chart.svg to the output directory. Root only. See `--help`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bench::harness::gen::{self, rule_set};
use bench::harness::systems::{self, Env, OvsDaemon};
use bench::harness::topo::{self, Links, Namespaces, ENDPOINTS};
use bench::harness::traffic::{self, Gen, MaxGen};
use bench::harness::{latency, pace, report, stopped, Kind, Sample, System, Test};
use clap::{Parser, Subcommand};
use datapath::txbatch;

#[derive(Parser, Debug)]
#[command(
    name = "ferrovs-bench",
    about = "ferrovs vs Open vSwitch vs Linux bridge: UDP pps, TCP, latency, CPU"
)]
struct Args {
    /// CI smoke: max-rate UDP (1 and 1,000 flows), TCP 1 stream, latency, 10,000 rules, 1 round, 2 s (under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// Rounds (systems alternate within each round).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds per UDP/TCP measurement.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Seconds per latency measurement.
    #[arg(long, default_value_t = 3)]
    latency_secs: u64,
    /// Fixed UDP offered rates in packets/s (max is always run too).
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 300_000])]
    rates: Vec<u64>,
    /// Concurrent flows per test.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 1000])]
    flows: Vec<u32>,
    /// Rule-set sizes (flows installed in ferrovs and OVS; at least 2).
    #[arg(long, value_delimiter = ',', default_values_t = [10u32, 10_000])]
    rules: Vec<u32>,
    /// TCP streams cap: the many-flows TCP test uses min(flows, this)
    /// streams, over ceil(streams/32) iperf3 clients. Default 32: iperf3
    /// 3.12 clients with many more streams per process (128, or 1,000 over
    /// 8 clients) often never finished here (its end-of-test results
    /// exchange; esnet/iperf#1786 reports the same above ~50 streams).
    #[arg(long, default_value_t = 32)]
    tcp_streams: u32,
    /// Systems: ferrovs, ovs, bridge.
    #[arg(long, value_delimiter = ',', default_values_t = ["ferrovs".to_string(), "ovs".into(), "bridge".into()])]
    systems: Vec<String>,
    /// Tests: udp, tcp, latency.
    #[arg(long, value_delimiter = ',', default_values_t = ["udp".to_string(), "tcp".into(), "latency".into()])]
    tests: Vec<String>,
    /// Core for the ferrovs poll thread and the OVS PMD; generators run on the others.
    #[arg(long, default_value_t = 1)]
    core: usize,
    /// Longest nap of the poll thread under light load, in µs, for both switches: ferrovsd's `poll_max_sleep_us` and OVS's `other_config:pmd-maxsleep`. 0 (both defaults) busy-polls; e.g. 50: less CPU at light load, more latency
    #[arg(long, alias = "ferrovs-poll-max-sleep-us", default_value_t = 0)]
    poll_max_sleep_us: u64,
    /// Longest an output frame may wait for more, in µs, for both switches: ferrovsd's `tx_flush_interval_us` (applied only above 200 kpps per poll thread) and OVS's `other_config:tx-flush-interval` (always applied). Default: each switch's own (ferrovs 20, OVS 0)
    #[arg(long)]
    tx_flush_interval_us: Option<u64>,
    /// Sender of the maximum-rate UDP tests: pace (the harness's AF_XDP sender without a rate limit, faster than either switch here) or trafgen (netsniff-ng; about as fast as the switches here, so it measures the sender)
    #[arg(long, value_enum, default_value_t = MaxGen::Pace)]
    max_gen: MaxGen,
    /// Idle halt polling of the guest's vCPUs during the latency tests, in ns (`cpuidle-haltpoll`'s `guest_halt_poll_ns`, put back afterwards). Default 200000, the kernel's own default: an idle vCPU polls that long before it halts, so a round trip measures the switches rather than how long a halted vCPU takes to be rescheduled. 0 leaves the machine's setting
    #[arg(long, default_value_t = 200_000)]
    latency_halt_poll_ns: u64,
    /// Output directory (default bench/results/ferrovs-bench-<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// ferrovsd binary (default: next to this executable).
    #[arg(long)]
    ferrovsd: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Re-render report.md and chart.svg of a finished run from its results.csv (no root needed).
    Render {
        /// The run's output directory.
        dir: PathBuf,
    },
    /// UDP echo server (runs in the receiver namespace).
    #[command(hide = true)]
    RrServer {
        #[arg(long)]
        port: u16,
    },
    /// Discard sink for the UDP tests (runs in the receiver namespace).
    #[command(hide = true)]
    Sink {
        #[arg(long)]
        port: u16,
    },
    /// Paced UDP sender for the fixed-rate tests (runs in the sender namespace).
    #[command(hide = true)]
    Pace {
        #[arg(long)]
        dev: String,
        #[arg(long)]
        rate: u64,
        #[arg(long)]
        flows: u16,
        #[arg(long)]
        millis: u64,
    },
    /// UDP request/response client (runs in the sender namespace).
    #[command(hide = true)]
    RrClient {
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        flows: u16,
        #[arg(long)]
        millis: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.cmd {
        Some(Cmd::RrServer { port }) => {
            if let Err(e) = latency::serve(*port) {
                eprintln!("rr-server: {e}");
            }
            return ExitCode::FAILURE;
        }
        Some(Cmd::RrClient { dst, flows, millis }) => {
            return match latency::client(*dst, *flows, Duration::from_millis(*millis)) {
                Ok(s) => {
                    println!("{}", s.line());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rr-client: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Cmd::Sink { port }) => {
            let r = bench::harness::install_signal_flag().and_then(|()| traffic::sink(*port));
            return match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sink: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Cmd::Pace {
            dev,
            rate,
            flows,
            millis,
        }) => {
            if let Err(e) = bench::harness::install_signal_flag() {
                eprintln!("pace: signal handler: {e}");
                return ExitCode::FAILURE;
            }
            let stop = bench::harness::stop_flag();
            return match pace::run(
                dev,
                &ENDPOINTS,
                *flows,
                *rate,
                Duration::from_millis(*millis),
                &stop,
            ) {
                Ok(r) => {
                    println!(
                        "sent={} skipped={} ring_full={}",
                        r.sent, r.skipped, r.ring_full
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Cmd::Render { dir }) => {
            return match render(dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ferrovs-bench render: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrovs-bench: {e}");
            ExitCode::from(if stopped() { 130 } else { 1 })
        }
    }
}

fn tests_of(args: &Args) -> Vec<Test> {
    let want = |t: &str| args.tests.iter().any(|x| x == t);
    let mut kinds: Vec<(Kind, Vec<u32>)> = Vec::new();
    if args.quick {
        kinds.push((Kind::Udp(None), vec![1, 1000]));
        kinds.push((Kind::Tcp, vec![1]));
        kinds.push((Kind::Latency, vec![1000]));
    } else {
        for r in &args.rates {
            kinds.push((Kind::Udp(Some(*r)), args.flows.clone()));
        }
        kinds.push((Kind::Udp(None), args.flows.clone()));
        kinds.push((Kind::Tcp, args.flows.clone()));
        kinds.push((Kind::Latency, args.flows.clone()));
    }
    kinds
        .into_iter()
        .filter(|(k, _)| want(k.name()))
        .flat_map(|(kind, flows)| {
            let cap = if kind == Kind::Tcp {
                args.tcp_streams.max(1)
            } else {
                u32::MAX
            };
            flows.into_iter().map(move |flows| Test {
                kind,
                flows: flows.min(cap),
                rules: None,
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(Vec::new(), |mut v, t| {
            if !v.contains(&t) {
                v.push(t);
            }
            v
        })
}

/// One system's turn: a round, a rule set, its tests.
struct Session {
    round: u32,
    system: System,
    rules: Option<u32>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let ncpu = topo::run(&["nproc"]).unwrap_or_default();
    let kernel = topo::run(&["uname", "-r"]).unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(String::new(), |kb| {
            format!(", {} GiB RAM", kb / 1024 / 1024)
        });
    let ovs = topo::run(&["ovs-vsctl", "--version"])
        .ok()
        .and_then(|v| v.lines().next().map(str::to_string))
        .unwrap_or_else(|| "OVS not installed".into());
    let trafgen = topo::run(&["sh", "-c", "trafgen -v 2>&1 | head -1"])
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    format!(
        "{} vCPU {cpu}{mem}, Linux {}; {ovs}; {trafgen}",
        ncpu.trim(),
        kernel.trim()
    )
}

fn progress(done: usize, total: usize, t: &Test, s: &Session) {
    use std::io::IsTerminal;
    let line = format!(
        "[{done}/{total}] {} — {} round {}",
        t.label(),
        s.system,
        s.round
    );
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K{line}");
    } else {
        eprintln!("{line}");
    }
}

/// Writes results.csv, then the report and chart from what the CSV holds,
/// so `render` redraws them to the digit.
fn write_outputs(out: &Path, samples: &[Sample], header: &str) -> Result<(), String> {
    let text = report::csv(samples);
    write_file(out, "results.csv", &text)?;
    let stored = report::parse_csv(&text).map_err(|e| format!("results.csv: {e}"))?;
    write_report(out, &stored, header)
}

/// Writes report.md and chart.svg.
fn write_report(out: &Path, samples: &[Sample], header: &str) -> Result<(), String> {
    write_file(out, "report.md", &report::markdown(samples, header))?;
    write_file(
        out,
        "chart.svg",
        &report::svg(samples, "ferrovs vs Open vSwitch vs Linux bridge"),
    )
}

fn write_file(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    std::fs::write(dir.join(name), text)
        .map_err(|e| format!("writing {}: {e}", dir.join(name).display()))
}

fn run(mut args: Args) -> Result<(), String> {
    let started = Instant::now();
    if !topo::run(&["id", "-u"]).is_ok_and(|s| s.trim() == "0") {
        return Err("run as root (namespaces, AF_XDP, OVS)".into());
    }
    bench::harness::install_signal_flag().map_err(|e| format!("signal handler: {e}"))?;
    if args.quick {
        args.rounds = 1;
        args.secs = 2;
        args.latency_secs = 1;
        args.rules = vec![10_000];
    }
    for tool in ["ip", "ethtool", "taskset", "ping"] {
        if !traffic::have(tool) {
            return Err(format!("{tool} not found (run scripts/deps.sh)"));
        }
    }
    let mut tests = tests_of(&args);
    let mut tools = vec![("iperf3", "tcp", "iperf3")];
    if args.max_gen == MaxGen::Trafgen {
        tools.push(("trafgen", "udp", "netsniff-ng"));
    }
    for (tool, kind, pkg) in tools {
        if !traffic::have(tool) && tests.iter().any(|t| t.kind.name() == kind) {
            eprintln!("ferrovs-bench: {tool} not found (apt-get install {pkg}, or scripts/deps.sh): skipping the {kind} tests");
            tests.retain(|t| t.kind.name() != kind);
        }
    }
    if args.rules.iter().any(|r| *r < 2) {
        return Err("--rules: each rule set needs at least the 2 forwarding flows".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let work = std::env::temp_dir().join(format!("fb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let _work_guard = RemoveDir(work.clone());
    let env = Env {
        ferrovsd: args
            .ferrovsd
            .clone()
            .unwrap_or_else(|| exe.with_file_name("ferrovsd")),
        core: args.core,
        work: work.clone(),
        poll_max_sleep_us: args.poll_max_sleep_us,
        tx_flush_interval_us: args.tx_flush_interval_us,
    };
    let mut systems_list = Vec::new();
    for name in &args.systems {
        let sys = System::from_name(name)
            .ok_or_else(|| format!("--systems: unknown system '{name}' (ferrovs, ovs, bridge)"))?;
        match systems::unavailable(sys, &env) {
            Some(why) => eprintln!("ferrovs-bench: skipping {sys}: {why}"),
            None => systems_list.push(sys),
        }
    }
    if systems_list.is_empty() || tests.is_empty() {
        return Err("nothing to run".into());
    }
    let ncpu: usize = topo::run(&["nproc"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    let cpus: Vec<String> = (0..ncpu)
        .filter(|c| *c != args.core || ncpu == 1)
        .map(|c| c.to_string())
        .collect();
    let gen_cfg = Gen {
        cpus: cpus.join(","),
        exe: exe.display().to_string(),
        warmup: Duration::from_millis(if args.quick { 300 } else { 500 }),
        max_gen: args.max_gen,
        logs: work.clone(),
    };
    let out = match &args.out {
        Some(o) => o.clone(),
        None => {
            let ts = topo::run(&["date", "-u", "+%Y%m%dT%H%M%SZ"]).unwrap_or_default();
            let base = if Path::new("bench/results").is_dir() {
                PathBuf::from("bench/results")
            } else {
                PathBuf::from(".")
            };
            base.join(format!("ferrovs-bench-{}", ts.trim()))
        }
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut trafgen_cfgs = Vec::new();
    for f in args.flows.iter().chain([1, 1000].iter()) {
        let p = work.join(format!("udp-{f}.cfg"));
        let n = u16::try_from(*f).map_err(|_| format!("--flows: {f} is above 65535"))?;
        std::fs::write(&p, gen::trafgen_config(&ENDPOINTS, n))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        trafgen_cfgs.push((*f, p));
    }

    // Plan: rule sets outer, rounds, systems alternating; the bridge (no rules) once per round.
    let mut plan = Vec::new();
    for (ri, rules) in args.rules.iter().enumerate() {
        for round in 1..=args.rounds {
            for sys in &systems_list {
                if sys.has_rules() {
                    plan.push(Session {
                        round,
                        system: *sys,
                        rules: Some(*rules),
                    });
                } else if ri == 0 {
                    plan.push(Session {
                        round,
                        system: *sys,
                        rules: None,
                    });
                }
            }
        }
    }
    let total = plan.len() * tests.len();
    let header = format!(
        "Machine: {}.\nCommand: `ferrovs-bench {}`; {} s per UDP/TCP test (after {} ms warm-up), {} s per latency test; \
         switch poll core {}, generators on CPU {}; each switch daemon in a session of its own, poll thread at nice {} \
         (ferrovsd poll_nice, ovs-ctl's default); {}; {}; UDP max from {}; {}.",
        machine(),
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        args.secs,
        gen_cfg.warmup.as_millis(),
        args.latency_secs,
        args.core,
        gen_cfg.cpus,
        datapath::switch::DEFAULT_POLL_NICE,
        if args.poll_max_sleep_us == 0 {
            "both switches busy-poll".to_string()
        } else {
            format!(
                "poll threads nap up to {} µs under light load (ferrovs poll_max_sleep_us, OVS pmd-maxsleep)",
                args.poll_max_sleep_us
            )
        },
        match args.tx_flush_interval_us {
            None => format!(
                "output waits up to {} µs in ferrovs above {} kpps (its default), never in OVS (its default)",
                txbatch::DEFAULT_TX_FLUSH_INTERVAL.as_micros(),
                1_000_000 / txbatch::LOADED_NS_PER_FRAME
            ),
            Some(us) => format!(
                "output waits up to {us} µs in both (ferrovs tx_flush_interval_us above {} kpps, OVS tx-flush-interval)",
                1_000_000 / txbatch::LOADED_NS_PER_FRAME
            ),
        },
        match args.max_gen {
            MaxGen::Pace => "`ferrovs-bench pace` without a rate limit",
            MaxGen::Trafgen => "trafgen",
        },
        match (topo::halt_poll_ns(), args.latency_halt_poll_ns) {
            (None, _) => "no guest halt polling on this machine".to_string(),
            (Some(own), 0) => format!("guest halt polling left at the machine's {own} ns"),
            (Some(own), ns) if own == ns => format!("guest halt polling {ns} ns (the machine's own)"),
            (Some(own), ns) => format!(
                "latency tests with guest halt polling at {ns} ns (cpuidle-haltpoll; the machine's own is {own} ns)"
            ),
        }
    );
    eprintln!(
        "ferrovs-bench: {} sessions x {} tests = {total} measurements -> {}",
        plan.len(),
        tests.len(),
        out.display()
    );

    let tck = traffic::clk_tck();
    let _ns = Namespaces::create().map_err(|e| e.to_string())?;
    let _ovs = if systems_list.contains(&System::Ovs) {
        match OvsDaemon::start(args.core, args.poll_max_sleep_us, args.tx_flush_interval_us) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("ferrovs-bench: skipping ovs: {e}");
                plan.retain(|s| s.system != System::Ovs);
                None
            }
        }
    } else {
        None
    };
    let mut samples: Vec<Sample> = Vec::new();
    let mut done = 0;
    for s in &plan {
        if stopped() {
            break;
        }
        let rules_text = rule_set(s.rules.unwrap_or(2));
        let session_tests: Vec<Test> = tests.iter().map(|t| t.with_rules(s.rules)).collect();
        let links = Links::create().map_err(|e| e.to_string())?;
        let running = systems::start(s.system, &env, &rules_text);
        for t in &session_tests {
            done += 1;
            if stopped() {
                break;
            }
            progress(done, total, t, s);
            let mut sample = Sample {
                round: s.round,
                system: Some(s.system),
                test: Some(*t),
                ..Sample::default()
            };
            let result = match &running {
                Err(e) => Err(e.to_string()),
                Ok(r) => {
                    let probe = r.probe(&env);
                    let secs = Duration::from_secs(args.secs);
                    match t.kind {
                        Kind::Udp(rate) => {
                            let cfg = trafgen_cfgs
                                .iter()
                                .find(|(f, _)| *f == t.flows)
                                .map(|(_, p)| p.clone())
                                .unwrap_or_default();
                            traffic::udp(
                                &gen_cfg,
                                &cfg,
                                t.flows,
                                rate,
                                secs,
                                &probe,
                                tck,
                                &mut sample,
                            )
                        }
                        Kind::Tcp => {
                            traffic::tcp(&gen_cfg, t.flows, secs, &probe, tck, &mut sample)
                        }
                        Kind::Latency => {
                            let _halt_poll = (args.latency_halt_poll_ns > 0)
                                .then(|| topo::HaltPoll::set(args.latency_halt_poll_ns))
                                .flatten();
                            traffic::latency(
                                &gen_cfg,
                                t.flows,
                                Duration::from_secs(args.latency_secs),
                                &probe,
                                tck,
                                &mut sample,
                            )
                        }
                    }
                    .map_err(|e| e.to_string())
                }
            };
            if stopped() {
                break;
            }
            if let Err(e) = result {
                eprintln!(
                    "\nferrovs-bench: {} {} round {}: {e}",
                    s.system,
                    t.label(),
                    s.round
                );
                sample.error = Some(e);
            }
            samples.push(sample);
        }
        drop(running);
        drop(links);
        write_outputs(&out, &samples, &header)?;
    }
    eprintln!();
    write_outputs(&out, &samples, &header)?;
    if stopped() {
        return Err(format!(
            "interrupted: cleaned up; partial results in {}",
            out.display()
        ));
    }
    print!("{}", report::markdown(&samples, &header));
    eprintln!(
        "ferrovs-bench: done in {:.0} s: {}/report.md, results.csv, chart.svg",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// Re-renders `dir`/report.md and chart.svg from `dir`/results.csv,
/// keeping the machine/command header of the existing report.md.
fn render(dir: &Path) -> Result<(), String> {
    let csv_path = dir.join("results.csv");
    let text =
        std::fs::read_to_string(&csv_path).map_err(|e| format!("{}: {e}", csv_path.display()))?;
    let samples = report::parse_csv(&text).map_err(|e| format!("{}: {e}", csv_path.display()))?;
    let old = std::fs::read_to_string(dir.join("report.md")).unwrap_or_default();
    let header: String = old
        .lines()
        .skip_while(|l| l.starts_with("# ") || l.is_empty())
        .take_while(|l| !l.starts_with("Median of"))
        .collect::<Vec<_>>()
        .join("\n");
    write_report(dir, &samples, header.trim())?;
    print!("{}", report::markdown(&samples, header.trim()));
    Ok(())
}

/// Removes the scratch directory on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
