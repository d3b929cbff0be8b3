//! Pure reporting: every round as CSV, medians per system and test as a
//! Markdown report with ferrovs/OVS ratios, and an SVG chart of grouped
//! bars. Input is the list of [`Sample`]s, output is text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Kind, Sample, System, Test};

/// Median; the mean of the two middle values for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    })
}

/// `a / b` when both exist and `b` is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// Medians of one system in one test over its successful rounds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// Successful rounds.
    pub rounds: usize,
    /// Failed rounds.
    pub failed: usize,
    /// Delivered packets/s.
    pub pps: Option<f64>,
    /// Loss %.
    pub loss_pct: Option<f64>,
    /// TCP Gbit/s.
    pub gbps: Option<f64>,
    /// Latency p50, µs.
    pub p50_us: Option<f64>,
    /// Latency p99, µs.
    pub p99_us: Option<f64>,
    /// CPU s per million switched packets (softirq for the bridge).
    pub cpu_per_mpkt: Option<f64>,
    /// Poll-thread busy s per million switched packets.
    pub busy_per_mpkt: Option<f64>,
}

fn med_of(v: &[&Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    median(&v.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
}

/// Medians per (test, system).
pub fn summarize(samples: &[Sample]) -> BTreeMap<(Test, System), Summary> {
    let mut groups: BTreeMap<(Test, System), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        if let (Some(t), Some(sys)) = (s.test, s.system) {
            groups.entry((t, sys)).or_default().push(s);
        }
    }
    groups
        .into_iter()
        .map(|(k, all)| {
            let ok: Vec<&Sample> = all.iter().copied().filter(|s| s.error.is_none()).collect();
            let udp = matches!(k.0.kind, Kind::Udp(_));
            let sum = Summary {
                rounds: ok.len(),
                failed: all.len() - ok.len(),
                pps: med_of(&ok, Sample::pps),
                loss_pct: if udp {
                    med_of(&ok, Sample::loss_pct)
                } else {
                    None
                },
                gbps: med_of(&ok, |s| s.gbps),
                p50_us: med_of(&ok, |s| s.p50_us),
                p99_us: med_of(&ok, |s| s.p99_us),
                cpu_per_mpkt: med_of(&ok, Sample::cpu_per_mpkt),
                busy_per_mpkt: med_of(&ok, Sample::busy_per_mpkt),
            };
            (k, sum)
        })
        .collect()
}

/// The tests that make the report's rows: those of the systems with rules
/// (the bridge's rule-less result is shown in every rule-set row).
pub fn row_tests(samples: &[Sample]) -> Vec<Test> {
    let mut rows: Vec<Test> = samples
        .iter()
        .filter(|s| s.system.is_some_and(System::has_rules))
        .filter_map(|s| s.test)
        .collect();
    if rows.is_empty() {
        rows = samples.iter().filter_map(|s| s.test).collect();
    }
    // UDP by rate with max last, then TCP, then latency.
    rows.sort_by_key(|t| {
        let (rank, rate) = match t.kind {
            Kind::Udp(r) => (0, r.unwrap_or(u64::MAX)),
            Kind::Tcp => (1, 0),
            Kind::Latency => (2, 0),
        };
        (rank, rate, t.flows, t.rules)
    });
    rows.dedup();
    rows
}

/// The summary shown for `sys` in row `t`.
pub fn lookup(sums: &BTreeMap<(Test, System), Summary>, t: Test, sys: System) -> Option<&Summary> {
    let t = if sys.has_rules() {
        t
    } else {
        t.with_rules(None)
    };
    sums.get(&(t, sys))
}

fn csv_num(v: Option<f64>, prec: usize) -> String {
    v.map_or(String::new(), |v| format!("{v:.prec$}"))
}

/// Every sample as CSV with a header line.
pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from(
        "round,system,test,rate,flows,rules,secs,sent,received,switched,pps,loss_pct,gbps,rtts,p50_us,p99_us,switch_cpu_s,softirq_s,cpu_s_per_mpkt,busy_s,busy_s_per_mpkt,error\n",
    );
    for s in samples {
        let (kind, rate, flows, rules) = match s.test {
            Some(t) => (
                t.kind.name(),
                t.rate_label(),
                t.flows.to_string(),
                t.rules.map_or("n/a".to_string(), |r| r.to_string()),
            ),
            None => ("", String::new(), String::new(), String::new()),
        };
        let err = s
            .error
            .as_deref()
            .unwrap_or("")
            .replace([',', '\n', '"'], " ");
        let _ = writeln!(
            out,
            "{},{},{kind},{rate},{flows},{rules},{:.3},{},{},{},{},{},{},{},{},{},{},{:.3},{},{},{},{err}",
            s.round,
            s.system.map_or("", System::name),
            s.secs,
            s.sent,
            s.received,
            s.switched,
            csv_num(s.pps(), 0),
            csv_num(s.loss_pct(), 3),
            csv_num(s.gbps, 3),
            s.rtts,
            csv_num(s.p50_us, 1),
            csv_num(s.p99_us, 1),
            csv_num(s.cpu_s, 3),
            s.softirq_s,
            csv_num(s.cpu_per_mpkt(), 3),
            csv_num(s.busy_s, 4),
            csv_num(s.busy_per_mpkt(), 3),
        );
    }
    out
}

/// A results.csv line that could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("results.csv line {line}: {what}")]
pub struct CsvError {
    /// Line number, from 1 (the header is line 1).
    pub line: usize,
    /// What was wrong.
    pub what: String,
}

fn parse_rate(s: &str) -> Option<Option<u64>> {
    if s == "max" {
        return Some(None);
    }
    let n = s.strip_suffix("pps")?;
    let (num, mul) = match n.as_bytes().last()? {
        b'k' => (&n[..n.len() - 1], 1_000),
        b'M' => (&n[..n.len() - 1], 1_000_000),
        _ => (n, 1),
    };
    Some(Some(num.parse::<u64>().ok()? * mul))
}

/// Reads back what [`csv`] wrote (to re-render a report from a run).
/// Files of earlier versions, without the two busy-time columns, are read
/// too.
pub fn parse_csv(text: &str) -> Result<Vec<Sample>, CsvError> {
    let mut out = Vec::new();
    // 22 columns; 20 before busy_s and busy_s_per_mpkt were added.
    let cols = match text.lines().next().map(|h| h.split(',').count()) {
        Some(20) => 20,
        _ => 22,
    };
    let err_col = cols - 1;
    for (i, l) in text.lines().enumerate().skip(1) {
        let line = i + 1;
        let err = |what: String| CsvError { line, what };
        let f: Vec<&str> = l.splitn(cols, ',').collect();
        if f.len() != cols {
            return Err(err(format!("{} columns, expected {cols}", f.len())));
        }
        let num = |idx: usize| -> Result<u64, CsvError> {
            f[idx]
                .parse()
                .map_err(|_| err(format!("column {}: '{}' is not a count", idx + 1, f[idx])))
        };
        let opt = |idx: usize| -> Result<Option<f64>, CsvError> {
            if f[idx].is_empty() {
                return Ok(None);
            }
            f[idx]
                .parse()
                .map(Some)
                .map_err(|_| err(format!("column {}: '{}' is not a number", idx + 1, f[idx])))
        };
        let system =
            System::from_name(f[1]).ok_or_else(|| err(format!("unknown system '{}'", f[1])))?;
        let kind = match f[2] {
            "udp" => {
                Kind::Udp(parse_rate(f[3]).ok_or_else(|| err(format!("bad rate '{}'", f[3])))?)
            }
            "tcp" => Kind::Tcp,
            "latency" => Kind::Latency,
            other => return Err(err(format!("unknown test '{other}'"))),
        };
        let rules = if f[5] == "n/a" {
            None
        } else {
            Some(
                f[5].parse()
                    .map_err(|_| err(format!("bad rules '{}'", f[5])))?,
            )
        };
        out.push(Sample {
            round: num(0)? as u32,
            system: Some(system),
            test: Some(Test {
                kind,
                flows: num(4)? as u32,
                rules,
            }),
            secs: opt(6)?.unwrap_or(0.0),
            sent: num(7)?,
            received: num(8)?,
            switched: num(9)?,
            gbps: opt(12)?,
            rtts: num(13)?,
            p50_us: opt(14)?,
            p99_us: opt(15)?,
            cpu_s: opt(16)?,
            softirq_s: opt(17)?.unwrap_or(0.0),
            busy_s: if cols == 22 { opt(19)? } else { None },
            error: (!f[err_col].is_empty()).then(|| f[err_col].to_string()),
        });
    }
    Ok(out)
}

fn cell(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.prec$}"))
}

/// The ferrovs/OVS ratio of the medians of `f` in test `t`, marked `≈`
/// when the two systems' rounds overlap: some round of each beats some
/// round of the other, so the difference is within the run's spread.
/// (Unmarked with three rounds each: every round of one system beat
/// every round of the other, which chance alone gives one time in ten.)
fn ratio_cell(samples: &[Sample], t: Test, f: impl Fn(&Sample) -> Option<f64>) -> String {
    let rounds = |sys: System| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.test == Some(t) && s.system == Some(sys) && s.error.is_none())
            .filter_map(&f)
            .filter(|v| v.is_finite())
            .collect()
    };
    let (a, b) = (rounds(System::Ferrovs), rounds(System::Ovs));
    let Some(r) = ratio(median(&a), median(&b)) else {
        return "-".to_string();
    };
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    let ((a0, a1), (b0, b1)) = (range(&a), range(&b));
    if a.len() > 1 && b.len() > 1 && a0 <= b1 && b0 <= a1 {
        format!("≈{r:.2}x")
    } else {
        format!("{r:.2}x")
    }
}

fn test_cell(t: &Test) -> String {
    let rules = t.rules.map_or("-".into(), |r| super::short_count(r.into()));
    let flows = super::short_count(t.flows.into());
    match t.kind {
        Kind::Udp(_) => format!("{} | {flows} | {rules}", t.rate_label()),
        _ => format!("{flows} | {rules}"),
    }
}

/// Markdown report: one table per traffic kind, median per system, and
/// ferrovs/OVS ratios. `header` (free text: machine, command, durations)
/// goes first.
pub fn markdown(samples: &[Sample], header: &str) -> String {
    let sums = summarize(samples);
    let rows = row_tests(samples);
    let systems: Vec<System> = System::ALL
        .into_iter()
        .filter(|s| samples.iter().any(|x| x.system == Some(*s)))
        .collect();
    let rounds = samples.iter().map(|s| s.round).max().unwrap_or(0);
    let mut out = String::new();
    out.push_str("# ferrovs-bench\n\n");
    out.push_str(header.trim_end());
    let _ = writeln!(
        out,
        "\n\nMedian of {rounds} round(s) per system, systems alternating round by round. \
         CPU = switch process utime+stime (all threads) per million packets received by \
         both ends; for the Linux bridge (in-kernel) it is softirq time over all CPUs \
         (marked `si`). The Linux bridge has no rule table: its figure is repeated in \
         each rule-set row. Busy = the poll thread's time in rounds that moved packets, \
         as each switch counts it (ferrovs `stats`, OVS `dpif-netdev/pmd-perf-show`), per \
         million packets: what forwarding costs when busy polling makes the CPU figure \
         one core whatever the load. Ratios are ferrovs/OVS (pps, Gbit/s: higher is better; \
         CPU, busy, latency: lower is better); a ratio marked ≈ is within the spread \
         of the rounds (some round of each system beat some round of the other).\n"
    );
    // Busy time exists only for the switches with a poll thread.
    let pollers: Vec<System> = systems.iter().copied().filter(|s| s.has_rules()).collect();
    let hdr = |out: &mut String, lead: &str, per_sys: &[&str], busy: bool, ratios: &[&str]| {
        let mut cols = vec![lead.to_string()];
        for what in per_sys {
            for s in &systems {
                cols.push(format!("{} {what}", s.name()));
            }
        }
        if busy {
            for s in &pollers {
                cols.push(format!("{} busy s/Mpkt", s.name()));
            }
        }
        cols.extend(ratios.iter().map(|r| r.to_string()));
        let _ = writeln!(out, "| {} |", cols.join(" | "));
        let lead_cols = lead.matches('|').count() + 1;
        let mut aligns = vec!["---"; lead_cols];
        aligns.extend(std::iter::repeat_n("---:", cols.len() - 1));
        let _ = writeln!(out, "|{}|", aligns.join("|"));
    };
    let get = |t: Test, s: System| lookup(&sums, t, s);
    let cpu_cell = |t: Test, s: System| {
        let v = cell(get(t, s).and_then(|x| x.cpu_per_mpkt), 2);
        if s == System::Bridge && v != "-" {
            format!("{v} si")
        } else {
            v
        }
    };
    let busy_cell = |t: Test, s: System| cell(get(t, s).and_then(|x| x.busy_per_mpkt), 2);

    let udp: Vec<Test> = rows
        .iter()
        .copied()
        .filter(|t| matches!(t.kind, Kind::Udp(_)))
        .collect();
    if !udp.is_empty() {
        out.push_str("## UDP, 64-byte frames\n\nFixed rates: evenly paced by `ferrovs-bench pace` (AF_XDP, at most 32 frames back to back); max: as fast as the sender goes (the header says which sender; by default the same sender without a rate limit, so loss there is what the switch could not forward). The receiver has a bound, unread discard socket. Delivered Mpps at the receiver (loss %), CPU s per Mpkt.\n\n");
        hdr(
            &mut out,
            "rate | flows | rules",
            &["Mpps (loss)", "CPU s/Mpkt"],
            true,
            &["ferrovs/OVS pps", "ferrovs/OVS CPU", "ferrovs/OVS busy"],
        );
        for t in &udp {
            let mut cols = vec![test_cell(t)];
            for s in &systems {
                cols.push(match get(*t, *s) {
                    Some(x) => format!(
                        "{} ({}%)",
                        cell(x.pps.map(|p| p / 1e6), 3),
                        cell(x.loss_pct, 1)
                    ),
                    None => "-".into(),
                });
            }
            for s in &systems {
                cols.push(cpu_cell(*t, *s));
            }
            for s in &pollers {
                cols.push(busy_cell(*t, *s));
            }
            cols.push(ratio_cell(samples, *t, Sample::pps));
            cols.push(ratio_cell(samples, *t, Sample::cpu_per_mpkt));
            cols.push(ratio_cell(samples, *t, Sample::busy_per_mpkt));
            let _ = writeln!(out, "| {} |", cols.join(" | "));
        }
        out.push('\n');
    }
    let tcp: Vec<Test> = rows
        .iter()
        .copied()
        .filter(|t| t.kind == Kind::Tcp)
        .collect();
    if !tcp.is_empty() {
        out.push_str("## TCP throughput (iperf3)\n\nGbit/s received; flows = TCP streams.\n\n");
        hdr(
            &mut out,
            "streams | rules",
            &["Gbit/s", "CPU s/Mpkt"],
            true,
            &["ferrovs/OVS Gbit/s", "ferrovs/OVS CPU", "ferrovs/OVS busy"],
        );
        for t in &tcp {
            let mut cols = vec![test_cell(t)];
            for s in &systems {
                cols.push(cell(get(*t, *s).and_then(|x| x.gbps), 2));
            }
            for s in &systems {
                cols.push(cpu_cell(*t, *s));
            }
            for s in &pollers {
                cols.push(busy_cell(*t, *s));
            }
            cols.push(ratio_cell(samples, *t, |x| x.gbps));
            cols.push(ratio_cell(samples, *t, Sample::cpu_per_mpkt));
            cols.push(ratio_cell(samples, *t, Sample::busy_per_mpkt));
            let _ = writeln!(out, "| {} |", cols.join(" | "));
        }
        out.push('\n');
    }
    let lat: Vec<Test> = rows
        .iter()
        .copied()
        .filter(|t| t.kind == Kind::Latency)
        .collect();
    if !lat.is_empty() {
        out.push_str("## UDP request/response latency\n\nRound-trip time p50 / p99 in µs, one request in flight; flows = client sockets used in turn.\n\n");
        hdr(
            &mut out,
            "flows | rules",
            &["p50 / p99 µs"],
            false,
            &["ferrovs/OVS p50", "ferrovs/OVS p99"],
        );
        for t in &lat {
            let mut cols = vec![test_cell(t)];
            for s in &systems {
                cols.push(match get(*t, *s) {
                    Some(x) => format!("{} / {}", cell(x.p50_us, 1), cell(x.p99_us, 1)),
                    None => "-".into(),
                });
            }
            cols.push(ratio_cell(samples, *t, |x| x.p50_us));
            cols.push(ratio_cell(samples, *t, |x| x.p99_us));
            let _ = writeln!(out, "| {} |", cols.join(" | "));
        }
        out.push('\n');
    }
    let failed: Vec<String> = sums
        .iter()
        .filter(|(_, s)| s.failed > 0)
        .map(|((t, sys), s)| format!("- {sys}, {}: {} failed round(s)", t.label(), s.failed))
        .collect();
    if !failed.is_empty() {
        out.push_str("## Failures\n\n");
        out.push_str(&failed.join("\n"));
        out.push_str("\n\n(see results.csv for the messages)\n");
    }
    out
}

const COLORS: [&str; 3] = ["#d95f02", "#1b9e77", "#7570b3"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum and tick step for values up to `max`.
pub fn nice_axis(max: f64) -> (f64, f64) {
    if max.is_nan() || max <= 0.0 {
        return (1.0, 0.25);
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| s * 4.0 >= max)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

struct Panel {
    title: String,
    unit: String,
    groups: Vec<(String, Vec<Option<f64>>)>,
}

const PANEL_H: f64 = 260.0;
const LEFT: f64 = 70.0;

fn draw_panel(out: &mut String, p: &Panel, y0: f64, width: f64, systems: &[System]) {
    let plot_top = y0 + 40.0;
    let plot_h = PANEL_H - 100.0;
    let plot_w = width - LEFT - 20.0;
    let max = p
        .groups
        .iter()
        .flat_map(|g| g.1.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let (ymax, step) = nice_axis(max);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        LEFT,
        y0 + 22.0,
        esc(&p.title)
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(16,{}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"#,
        plot_top + plot_h / 2.0,
        esc(&p.unit)
    );
    let mut v = 0.0;
    while v <= ymax + step / 2.0 {
        let y = plot_top + plot_h - v / ymax * plot_h;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
        v += step;
    }
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        plot_top + plot_h,
        LEFT + plot_w,
        plot_top + plot_h
    );
    let n = p.groups.len().max(1) as f64;
    let gw = plot_w / n;
    let bw = (gw * 0.8 / systems.len().max(1) as f64).min(40.0);
    for (gi, (label, vals)) in p.groups.iter().enumerate() {
        let gx = LEFT + gi as f64 * gw + (gw - bw * systems.len() as f64) / 2.0;
        for (si, val) in vals.iter().enumerate() {
            let x = gx + si as f64 * bw;
            let color = COLORS[systems[si] as usize % COLORS.len()];
            match val {
                Some(v) => {
                    let h = (v / ymax * plot_h).max(0.5);
                    let _ = writeln!(
                        out,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"><title>{}: {}</title></rect>"#,
                        plot_top + plot_h - h,
                        bw - 2.0,
                        systems[si].name(),
                        fmt_tick(*v)
                    );
                    let _ = writeln!(
                        out,
                        r##"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="#333">{}</text>"##,
                        x + (bw - 2.0) / 2.0,
                        plot_top + plot_h - h - 3.0,
                        fmt_value(*v)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#999">n/a</text>"##,
                        x + bw / 2.0,
                        plot_top + plot_h - 4.0
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            LEFT + gi as f64 * gw + gw / 2.0,
            plot_top + plot_h + 16.0,
            esc(label)
        );
    }
}

/// Bar label: 3 significant digits.
fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// SVG chart: one panel per metric (UDP Mpps, UDP CPU s/Mpkt, TCP Gbit/s,
/// latency p99 µs), grouped bars per test, one color per system, legend.
pub fn svg(samples: &[Sample], title: &str) -> String {
    let sums = summarize(samples);
    let rows = row_tests(samples);
    let systems: Vec<System> = System::ALL
        .into_iter()
        .filter(|s| samples.iter().any(|x| x.system == Some(*s)))
        .collect();
    let group = |pred: &dyn Fn(&Test) -> bool, f: &dyn Fn(&Summary) -> Option<f64>| {
        rows.iter()
            .filter(|t| pred(t))
            .map(|t| {
                (
                    t.short_label(),
                    systems
                        .iter()
                        .map(|s| lookup(&sums, *t, *s).and_then(f))
                        .collect(),
                )
            })
            .collect::<Vec<_>>()
    };
    let is_udp = |t: &Test| matches!(t.kind, Kind::Udp(_));
    let panels: Vec<Panel> = [
        Panel {
            title: "UDP 64 B: delivered packets/s (higher is better)".into(),
            unit: "Mpps".into(),
            groups: group(&is_udp, &|x| x.pps.map(|p| p / 1e6)),
        },
        Panel {
            title: "UDP 64 B: CPU s per million packets (lower is better; bridge = softirq)".into(),
            unit: "CPU s / Mpkt".into(),
            groups: group(&is_udp, &|x| x.cpu_per_mpkt),
        },
        Panel {
            title: "TCP throughput, iperf3 (higher is better)".into(),
            unit: "Gbit/s".into(),
            groups: group(&|t| t.kind == Kind::Tcp, &|x| x.gbps),
        },
        Panel {
            title: "UDP request/response round trip p99 (lower is better)".into(),
            unit: "µs".into(),
            groups: group(&|t| t.kind == Kind::Latency, &|x| x.p99_us),
        },
    ]
    .into_iter()
    .filter(|p| !p.groups.is_empty())
    .collect();
    let max_groups = panels.iter().map(|p| p.groups.len()).max().unwrap_or(1);
    let width = (LEFT + 20.0 + max_groups as f64 * 110.0).max(720.0);
    let height = 80.0 + panels.len() as f64 * PANEL_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="26" font-size="18" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let mut lx = LEFT;
    for s in &systems {
        let _ = writeln!(
            out,
            r#"<rect x="{lx:.0}" y="40" width="14" height="14" fill="{}"/><text x="{:.0}" y="52" font-size="12">{}</text>"#,
            COLORS[*s as usize % COLORS.len()],
            lx + 18.0,
            esc(s.label())
        );
        lx += 24.0 + 7.0 * s.label().len() as f64;
    }
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="72" font-size="11" fill="#555">groups: rate or test, flows (fl) / rules (r); medians over rounds; bridge has no rules</text>"##
    );
    for (i, p) in panels.iter().enumerate() {
        draw_panel(&mut out, p, 80.0 + i as f64 * PANEL_H, width, &systems);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn udp(rules: Option<u32>) -> Test {
        Test {
            kind: Kind::Udp(None),
            flows: 1000,
            rules,
        }
    }

    fn s(round: u32, sys: System, t: Test, received: u64, cpu: Option<f64>) -> Sample {
        Sample {
            round,
            system: Some(sys),
            test: Some(t),
            secs: 2.0,
            sent: 2_000_000,
            received,
            switched: received,
            cpu_s: cpu,
            // The poll thread busy half the time.
            busy_s: cpu.map(|c| c / 2.0),
            softirq_s: 0.5,
            ..Sample::default()
        }
    }

    /// One latency round of `sys` in test `t`.
    fn rtt(round: u32, sys: System, t: Test, p50: f64, p99: f64) -> Sample {
        Sample {
            round,
            system: Some(sys),
            test: Some(t),
            secs: 1.0,
            rtts: 10_000,
            p50_us: Some(p50),
            p99_us: Some(p99),
            ..Sample::default()
        }
    }

    fn fixture() -> Vec<Sample> {
        let t = udp(Some(10_000));
        let lat = Test {
            kind: Kind::Latency,
            flows: 1,
            rules: Some(10_000),
        };
        let mut v = vec![
            s(1, System::Ferrovs, t, 1_000_000, Some(1.0)),
            s(1, System::Ovs, t, 800_000, Some(1.0)),
            s(1, System::Bridge, udp(None), 1_600_000, None),
            s(2, System::Ferrovs, t, 1_200_000, Some(1.2)),
            s(2, System::Ovs, t, 600_000, Some(0.9)),
            s(2, System::Bridge, udp(None), 1_400_000, None),
            s(3, System::Ferrovs, t, 1_100_000, Some(1.1)),
            s(3, System::Ovs, t, 0, None),
        ];
        v[7].error = Some("ovs: no connectivity".into());
        v.push(rtt(1, System::Ferrovs, lat, 40.0, 90.0));
        v.push(rtt(1, System::Ovs, lat, 50.0, 100.0));
        v
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
        let sums = summarize(&fixture());
        let t = udp(Some(10_000));
        let f = &sums[&(t, System::Ferrovs)];
        assert_eq!(f.rounds, 3);
        assert_eq!(f.pps, Some(550_000.0)); // median of 500k, 600k, 550k
        assert!((f.loss_pct.unwrap() - 45.0).abs() < 1e-9);
        assert_eq!(f.cpu_per_mpkt, Some(1.0)); // 1.0/1.0, 1.2/1.2, 1.1/1.1
        let o = &sums[&(t, System::Ovs)];
        assert_eq!((o.rounds, o.failed), (2, 1));
        assert_eq!(o.pps, Some(350_000.0)); // (400k + 300k) / 2
        let b = lookup(&sums, t, System::Bridge).unwrap();
        assert_eq!(b.pps, Some(750_000.0));
        // Bridge CPU is softirq: 0.5 s over 1.6 M and 1.4 M packets.
        let want = (0.5 / 1.6 + 0.5 / 1.4) / 2.0;
        assert!((b.cpu_per_mpkt.unwrap() - want).abs() < 1e-9);
    }

    #[test]
    fn csv_has_every_round() {
        let text = csv(&fixture());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11);
        assert!(lines[0].starts_with("round,system,test,rate,flows,rules,"));
        assert_eq!(
            lines[1],
            "1,ferrovs,udp,max,1000,10000,2.000,2000000,1000000,1000000,500000,50.000,,0,,,1.000,0.500,1.000,0.5000,0.500,"
        );
        assert!(lines[3].starts_with("1,bridge,udp,max,1000,n/a,"));
        assert!(lines[3].ends_with(",,0.500,0.312,,,"));
        assert!(lines[8].ends_with(",ovs: no connectivity"));
        let cols = lines[0].split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == cols));
    }

    #[test]
    fn markdown_tables_and_ratios() {
        let md = markdown(&fixture(), "machine: test box");
        assert!(md.starts_with("# ferrovs-bench\n\nmachine: test box\n"));
        assert!(md.contains(
            "| rate | flows | rules | ferrovs Mpps (loss) | ovs Mpps (loss) | bridge Mpps (loss) | ferrovs CPU s/Mpkt | ovs CPU s/Mpkt | bridge CPU s/Mpkt | ferrovs busy s/Mpkt | ovs busy s/Mpkt | ferrovs/OVS pps | ferrovs/OVS CPU | ferrovs/OVS busy |"
        ));
        assert!(md.contains("|---|---|---|---:|"));
        // ferrovs 0.55 Mpps vs OVS 0.35: 1.57x; CPU 1.0 vs (1.25 + 1.5) / 2;
        // busy half of that; the bridge has no busy column.
        assert!(
            md.contains("| max | 1k | 10k | 0.550 (45.0%) | 0.350 (65.0%) | 0.750 (25.0%) | 1.00 | 1.38 | 0.33 si | 0.50 | 0.69 | 1.57x | 0.73x | 0.73x |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | 10k | 40.0 / 90.0 | 50.0 / 100.0 | - | 0.80x | 0.90x |"),
            "{md}"
        );
        assert!(md.contains("- ovs, udp max, 1k flows, 10k rules: 1 failed round(s)"));
        assert!(!md.contains("## TCP"));
    }

    #[test]
    fn ratios_within_the_spread_are_marked() {
        let lat = Test {
            kind: Kind::Latency,
            flows: 1,
            rules: Some(10),
        };
        // p50: ferrovs 40 and 60 against OVS 50 and 70 overlap; p99: every
        // ferrovs round below every OVS round.
        let v = vec![
            rtt(1, System::Ferrovs, lat, 40.0, 90.0),
            rtt(1, System::Ovs, lat, 50.0, 100.0),
            rtt(2, System::Ferrovs, lat, 60.0, 95.0),
            rtt(2, System::Ovs, lat, 70.0, 110.0),
        ];
        assert_eq!(ratio_cell(&v, lat, |x| x.p50_us), "≈0.83x");
        assert_eq!(ratio_cell(&v, lat, |x| x.p99_us), "0.88x");
        // One round each: no spread to compare with.
        assert_eq!(ratio_cell(&v[..2], lat, |x| x.p50_us), "0.80x");
        assert_eq!(ratio_cell(&v[..1], lat, |x| x.p50_us), "-");
    }

    #[test]
    fn svg_is_well_formed_with_legend_and_axes() {
        let svg = svg(&fixture(), "ferrovs-bench <test>");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("ferrovs-bench &lt;test&gt;"));
        for label in [
            "ferrovs (AF_XDP, 1 poll thread)",
            "OVS 3.1 (netdev, afxdp, 1 PMD)",
            "Linux bridge",
        ] {
            assert!(svg.contains(label), "legend {label}");
        }
        assert!(svg.contains(">Mpps</text>"));
        assert!(svg.contains(">µs</text>"));
        assert!(svg.contains("max 1kfl/10kr"));
        // 3 UDP bars + 3 CPU bars + 2 latency bars (bridge latency n/a).
        assert_eq!(svg.matches("<rect x=").count() - 3, 8);
        assert!(svg.contains(">n/a</text>"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    #[test]
    fn rows_fixed_rates_before_max() {
        let t = |kind, flows| Test {
            kind,
            flows,
            rules: Some(10),
        };
        let v: Vec<Sample> = [
            t(Kind::Latency, 1),
            t(Kind::Udp(None), 1),
            t(Kind::Tcp, 1),
            t(Kind::Udp(Some(300_000)), 1),
            t(Kind::Udp(Some(100_000)), 1000),
            t(Kind::Udp(Some(100_000)), 1),
        ]
        .into_iter()
        .map(|t| s(1, System::Ovs, t, 1, None))
        .collect();
        let labels: Vec<String> = row_tests(&v).iter().map(Test::short_label).collect();
        assert_eq!(
            labels,
            [
                "100kpps 1fl/10r",
                "100kpps 1kfl/10r",
                "300kpps 1fl/10r",
                "max 1fl/10r",
                "tcp 1fl/10r",
                "rr 1fl/10r"
            ]
        );
    }

    #[test]
    fn csv_reads_back() {
        let mut v = fixture();
        v.push(Sample {
            round: 1,
            system: Some(System::Ferrovs),
            test: Some(Test {
                kind: Kind::Udp(Some(100_000)),
                flows: 1,
                rules: Some(10),
            }),
            secs: 5.0,
            sent: 500_000,
            received: 499_000,
            switched: 499_010,
            cpu_s: Some(2.5),
            softirq_s: 0.25,
            ..Sample::default()
        });
        let back = parse_csv(&csv(&v)).unwrap();
        assert_eq!(back, v);
        assert_eq!(parse_rate("1500pps"), Some(Some(1500)));
        assert_eq!(parse_rate("2Mpps"), Some(Some(2_000_000)));
        let e = parse_csv("h\n1,ovs,udp,max,1,10").unwrap_err();
        assert_eq!(e.to_string(), "results.csv line 2: 6 columns, expected 22");
        // Files from before the busy columns: 20 columns, no busy time.
        let old = "round,system,test,rate,flows,rules,secs,sent,received,switched,pps,loss_pct,gbps,rtts,p50_us,p99_us,switch_cpu_s,softirq_s,cpu_s_per_mpkt,error\n\
                   1,ovs,udp,max,1,10,5.000,10,9,9,2,10.000,,0,,,0.100,0.000,11.111,\n";
        let back = parse_csv(old).unwrap();
        assert_eq!(
            (back[0].cpu_s, back[0].busy_s, back[0].error.clone()),
            (Some(0.1), None, None)
        );
        let e = parse_csv("round,a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s\n1,ovs").unwrap_err();
        assert_eq!(e.to_string(), "results.csv line 2: 2 columns, expected 20");
    }

    #[test]
    fn nice_axes() {
        assert_eq!(nice_axis(0.0), (1.0, 0.25));
        assert_eq!(nice_axis(3.7), (4.0, 1.0));
        assert_eq!(nice_axis(1.3), (1.5, 0.5));
        assert_eq!(nice_axis(95.0), (100.0, 25.0));
    }
}
