//! `ferrovs-ctl` against a running `ferrovsd` whose ports are in-memory
//! (`type = "memory"`): no root, no namespaces. Bad input must change
//! nothing and say what is wrong where; `dump-flows` and `trace` output is
//! compared with golden files (`FERROVS_BLESS=1` rewrites them).
// Tests may unwrap (project conventions).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Ferrovsd, TempDir, FERROVSD};

fn memory_ports(n: u16) -> String {
    (1..=n)
        .map(|i| format!("[[port]]\nname = \"mem{i}\"\nofport = {i}\ntype = \"memory\"\n"))
        .collect()
}

/// Asserts that `ferrovs-ctl args` fails with a one-line message that
/// contains every word of `expect`.
fn assert_fails(sw: &Ferrovsd, args: &[&str], expect: &[&str]) {
    match sw.ctl(args) {
        Ok(out) => panic!("ferrovs-ctl {} succeeded: {out}", args.join(" ")),
        Err(e) => {
            println!("ferrovs-ctl {} -> {}", args.join(" "), e.trim_end());
            assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
            for w in expect {
                assert!(e.contains(w), "error for {args:?} does not name '{w}': {e}");
            }
        }
    }
}

#[test]
fn bad_input_changes_nothing() {
    let sw = Ferrovsd::start(
        "fvsbad",
        &memory_ports(2),
        Some("priority=10,ip,nw_dst=10.0.0.2 actions=output:2\npriority=0 actions=normal\n"),
    )
    .unwrap();
    let flows_before = sw.ctl_ok(&["dump-flows", "--no-stats"]);
    let show_before = sw.ctl_ok(&["show"]);
    assert_eq!(flows_before.lines().count(), 2, "{flows_before}");

    assert_fails(
        &sw,
        &["add-flow", "tcp,tp_dst=70000,actions=drop"],
        &["tp_dst", "70000"],
    );
    assert_fails(
        &sw,
        &["add-flow", "ip,colour=red,actions=drop"],
        &["colour"],
    );
    assert_fails(
        &sw,
        &["add-flow", "ip,actions=frobnicate:1"],
        &["frobnicate"],
    );
    let file = sw.write_file(
        "bad.txt",
        "# two good flows, then a bad one\n\
         priority=5,arp actions=normal\n\
         priority=6,udp,tp_dst=99999 actions=drop\n\
         priority=7,tcp actions=normal\n",
    );
    assert_fails(&sw, &["add-flows", &file], &["line 3", "tp_dst", "99999"]);
    assert_fails(&sw, &["del-port", "nosuch"], &["nosuch"]);
    assert_fails(&sw, &["add-port", "fvsnoifx0"], &["fvsnoifx0"]);
    assert_fails(
        &sw,
        &["add-port", "mem3", "type=memory", "tag=5000"],
        &["tag", "5000"],
    );

    assert_eq!(sw.ctl_ok(&["dump-flows", "--no-stats"]), flows_before);
    assert_eq!(sw.ctl_ok(&["show"]), show_before);
}

#[test]
fn bad_config_file_names_file_and_field() {
    let dir = TempDir::new("fvscfg");
    for (text, field) in [
        (
            "bridge = \"b\"\n[[port]]\nname = \"m1\"\ntype = \"memory\"\ntag = 5000\n",
            "tag",
        ),
        ("bridge = \"b\"\ncolour = \"red\"\n", "colour"),
        (
            "[[port]]\nname = \"m1\"\ntype = \"memory\"\nofport = 0\n",
            "ofport",
        ),
    ] {
        let path = dir.0.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = tests::run_timeout(
            Command::new(FERROVSD).arg("--config").arg(&path),
            Duration::from_secs(10),
        )
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{}", err.trim_end());
        assert!(!out.status.success(), "ferrovsd accepted:\n{text}");
        assert!(
            err.contains(&path.display().to_string()),
            "no file name: {err}"
        );
        assert!(err.contains(field), "no field {field}: {err}");
    }
}

const GOLDEN_FLOWS: &str = "\
cookie=0x10,table=0,priority=100,arp actions=normal
cookie=0x11,table=0,priority=50,ip,ct_state=-trk actions=ct(table=1,zone=5,nat)
cookie=0x20,table=1,priority=100,tcp,ct_state=+new+trk,nw_dst=10.96.0.10,tp_dst=80 actions=group:1
cookie=0x21,table=1,priority=90,ip,ct_state=+est+trk actions=resubmit(,2)
cookie=0x22,table=1,priority=80,tcp,ct_state=+new+trk,in_port=1 actions=ct(commit,zone=5),resubmit(,2)
cookie=0x30,table=2,priority=10,ip,nw_dst=10.0.0.2 actions=set_field:02:00:00:00:00:02->eth_dst,dec_ttl,output:2
cookie=0x31,table=2,priority=10,ip,nw_dst=10.0.0.3 actions=mod_dl_dst:02:00:00:00:00:03,output:3
table=2,priority=0 actions=drop
";

const GOLDEN_GROUP: &str = "group_id=1,type=select,\
bucket=actions=ct(commit,zone=5,nat(dst=10.0.0.2:8080)),set_field:02:00:00:00:00:02->eth_dst,output:2,\
bucket=actions=ct(commit,zone=5,nat(dst=10.0.0.3:8080)),set_field:02:00:00:00:00:03->eth_dst,output:3";

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("FERROVS_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        println!("blessed {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with FERROVS_BLESS=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs (FERROVS_BLESS=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn golden_dump_flows_and_trace() {
    let sw = Ferrovsd::start("br-golden", &memory_ports(3), None).unwrap();
    sw.ctl_ok(&["add-group", GOLDEN_GROUP]);
    sw.add_flows(GOLDEN_FLOWS);
    golden("dump-flows.txt", &sw.ctl_ok(&["dump-flows", "--no-stats"]));
    golden("dump-groups.txt", &sw.ctl_ok(&["dump-groups"]));
    golden(
        "trace-tcp.txt",
        &sw.ctl_ok(&[
            "trace",
            "in_port=1,tcp,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:fe,nw_src=10.0.0.1,nw_dst=10.96.0.10,tp_src=40000,tp_dst=80",
        ]),
    );
    golden(
        "trace-tcp-recirc.txt",
        &sw.ctl_ok(&[
            "trace",
            "recirc_id=2,ct_state=+new+trk,ct_zone=5,in_port=1,tcp,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:fe,nw_src=10.0.0.1,nw_dst=10.96.0.10,tp_src=40000,tp_dst=80",
        ]),
    );
    golden(
        "trace-arp.txt",
        &sw.ctl_ok(&[
            "trace",
            "in_port=3,arp,dl_src=02:00:00:00:00:03,dl_dst=ff:ff:ff:ff:ff:ff,arp_op=1,arp_spa=10.0.0.3,arp_tpa=10.0.0.2",
        ]),
    );
}

/// `bundle` (what ferrovs-agent sends): all lines apply or none; `name`
/// lines make `trace` say which object decided and `dump-flows object=`
/// select an object's flows.
#[test]
fn bundle_is_atomic_and_names_objects() {
    let sw = Ferrovsd::start("fvsbundle", &memory_ports(2), None).unwrap();
    let bad = sw.write_file(
        "bad.bundle",
        "add-group group_id=7,type=select,bucket=output:2\n\
         add cookie=0x0500000100000000,priority=10,ip,nw_dst=10.0.0.2 actions=group:7\n\
         add priority=5,tcp,tp_dst=99999 actions=drop\n",
    );
    assert_fails(&sw, &["bundle", &bad], &["line 3", "tp_dst", "99999"]);
    assert_eq!(sw.ctl_ok(&["dump-flows", "--no-stats"]), "");
    assert!(!sw.ctl_ok(&["dump-groups"]).contains("group_id=7"));
    // A group that does not exist: rejected by the switch, nothing applied.
    let missing = sw.write_file(
        "missing.bundle",
        "add priority=10,ip actions=output:2\nadd priority=11,ip actions=group:9\n",
    );
    assert_fails(
        &sw,
        &["bundle", &missing],
        &["group 9", "nothing was applied"],
    );
    assert_eq!(sw.ctl_ok(&["dump-flows", "--no-stats"]), "");

    let good = sw.write_file(
        "good.bundle",
        "name 0x0500000100000000 NetworkPolicy default/deny-all\n\
         name 0x0300000200000000 Pod default/web\n\
         add cookie=0x0300000200000000,priority=10,ip,in_port=1 actions=goto_table:1\n\
         add cookie=0x0500000100000000,table=1,priority=100,ip,nw_dst=10.0.0.2 actions=drop\n\
         add cookie=0x0300000200000000,table=1,priority=50,ip actions=output:2\n",
    );
    let out = sw.ctl_ok(&["bundle", &good]);
    assert!(out.contains("3 flows added"), "{out}");
    let t = sw.ctl_ok(&["trace", "in_port=1,ip,nw_src=10.0.0.1,nw_dst=10.0.0.2"]);
    assert!(t.contains("table 1: NetworkPolicy default/deny-all"), "{t}");
    assert!(
        t.contains("Verdict: dropped, decided by NetworkPolicy default/deny-all"),
        "{t}"
    );
    let t = sw.ctl_ok(&["trace", "in_port=1,ip,nw_src=10.0.0.1,nw_dst=10.0.0.3"]);
    assert!(t.contains("Verdict: forwarded"), "{t}");
    let d = sw.ctl_ok(&["dump-flows", "--no-stats", "object=default/web"]);
    assert_eq!(d.lines().count(), 2, "{d}");
    let d = sw.ctl_ok(&[
        "dump-flows",
        "--no-stats",
        "object=NetworkPolicy/default/deny-all",
    ]);
    assert_eq!(d.lines().count(), 1, "{d}");
    assert_fails(
        &sw,
        &["dump-flows", "object=default/nope"],
        &["default/nope", "dump-names"],
    );
    let del = sw.write_file(
        "del.bundle",
        "delete_strict table=1,priority=100,ip,nw_dst=10.0.0.2\n",
    );
    sw.ctl_ok(&["bundle", &del]);
    assert_eq!(sw.ctl_ok(&["dump-flows", "--no-stats"]).lines().count(), 2);
    // --replace: the file becomes the whole table (an agent's resync).
    let full = sw.write_file(
        "full.bundle",
        "name 0x0300000200000000 Pod default/web\n\
         add cookie=0x0300000200000000,priority=10,ip,in_port=1 actions=goto_table:1\n\
         add cookie=0x0300000200000000,table=1,priority=60,ip actions=output:2\n",
    );
    let out = sw.ctl_ok(&["bundle", "--replace", &full]);
    assert!(out.contains("1 flows added, 1 deleted"), "{out}");
    assert_eq!(sw.ctl_ok(&["dump-names"]).lines().count(), 1);
    assert_fails(&sw, &["bundle", "--replace", &del], &["only add"]);
    assert_eq!(sw.ctl_ok(&["list-ports"]), "1 mem1\n2 mem2\n");
}
