//! The agent scale benchmark runs (small size) and its incremental result
//! agrees with a fresh compile (the binary asserts that itself).

#[test]
fn agent_scale_small_runs() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovs-agent-scale"))
        .args(["--small", "--repeat", "5"])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cold start total"), "{text}");
    assert!(text.contains("(0 issues)"), "{text}");
}
