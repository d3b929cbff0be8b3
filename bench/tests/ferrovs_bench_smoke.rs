//! CI smoke test of the side-by-side harness: `ferrovs-bench --quick`
//! (root; ferrovs, OVS and the Linux bridge, under 2 minutes). Runs only
//! with `FERROVS_BENCH_SMOKE=1` so ordinary test runs stay fast; needs
//! ferrovsd built (`cargo build --release -p tools`, or `FERROVSD=path`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

fn ferrovsd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERROVSD") {
        return Some(PathBuf::from(p));
    }
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ferrovs-bench"));
    let dir = exe.parent()?;
    [
        dir.join("ferrovsd"),
        dir.parent()?.join("release").join("ferrovsd"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

#[test]
fn quick_run_writes_reports_and_cleans_up() {
    if std::env::var("FERROVS_BENCH_SMOKE").as_deref() != Ok("1") {
        eprintln!("set FERROVS_BENCH_SMOKE=1 to run ferrovs-bench --quick (root)");
        return;
    }
    let out = std::env::temp_dir().join(format!("fb-smoke-{}", std::process::id()));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovs-bench"));
    cmd.arg("--quick").arg("--out").arg(&out);
    if let Some(f) = ferrovsd() {
        cmd.arg("--ferrovsd").arg(f);
    }
    let t0 = Instant::now();
    let res = cmd.output().expect("ferrovs-bench runs");
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(took < Duration::from_secs(120), "--quick took {took:?}");
    let csv = std::fs::read_to_string(out.join("results.csv")).expect("results.csv");
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert!(!rows.is_empty(), "{csv}");
    // Every system that ran has a row without an error for the TCP test.
    for line in rows.iter().filter(|l| l.contains(",tcp,")) {
        assert!(line.ends_with(','), "failed: {line}");
    }
    // ferrovs's UDP rows carry its poll thread's busy time (the column
    // before busy_s_per_mpkt and error).
    for line in rows
        .iter()
        .filter(|l| l.contains(",ferrovs,udp,") && l.ends_with(','))
    {
        let f: Vec<&str> = line.split(',').collect();
        let busy: f64 = f[f.len() - 3].parse().unwrap_or(0.0);
        assert!(busy > 0.0, "no busy time: {line}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("## UDP, 64-byte frames"), "{md}");
    let svg = std::fs::read_to_string(out.join("chart.svg")).expect("chart.svg");
    assert!(svg.trim_end().ends_with("</svg>"));
    // Nothing left behind.
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        !netns.iter().any(|n| n == "fb-snd" || n == "fb-rcv"),
        "{netns:?}"
    );
    for l in ["fb-a", "fb-b", "fbbr"] {
        assert!(
            !std::path::Path::new("/sys/class/net").join(l).exists(),
            "{l} left behind"
        );
    }
    eprintln!("ferrovs-bench --quick took {:.1} s", took.as_secs_f64());
    let _ = std::fs::remove_dir_all(&out);
}
