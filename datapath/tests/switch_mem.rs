//! End-to-end tests of the switch on in-memory ports: real poll threads,
//! cache, translation and actions, no kernel involved.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test
use std::time::{Duration, Instant};

use datapath::port::{FrameQueue, MemPort};
use datapath::switch::{Switch, SwitchConfig};
use flows::pipeline::{FlowMod, VlanMode};
use flows::syntax::parse_flow;

fn frame(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    // IPv4/UDP 10.0.0.1:1000 -> 10.0.0.2:2000, 4 bytes payload
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[
        0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 0x03, 0xe8, 0x07, 0xd0,
        0, 12, 0, 0, 1, 2, 3, 4,
    ]);
    f
}

fn wait_for(q: &datapath::port::FrameQueue, n: usize) -> Vec<Vec<u8>> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if q.lock().unwrap().len() >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    q.lock().unwrap().drain(..).collect()
}

/// A switch with in-memory trunk ports 1 and 2: port 1's inject queue and
/// port 2's sent queue.
fn two_ports() -> (Switch, FrameQueue, FrameQueue) {
    let sw = Switch::start(&SwitchConfig::default()).unwrap();
    let (a, b) = (MemPort::new("a"), MemPort::new("b"));
    let (ai, bs) = (a.inject.clone(), b.sent.clone());
    sw.add_port(1, Box::new(a), VlanMode::Trunk).unwrap();
    sw.add_port(2, Box::new(b), VlanMode::Trunk).unwrap();
    (sw, ai, bs)
}

fn add(sw: &Switch, flows: &[&str]) {
    let mods: Vec<FlowMod> = flows
        .iter()
        .map(|f| FlowMod::Add(parse_flow(f).unwrap()))
        .collect();
    sw.apply(&mods).unwrap();
}

#[test]
fn output_and_counters() {
    let (sw, ai, bs) = two_ports();
    add(
        &sw,
        &["in_port=1 actions=mod_dl_dst:02:00:00:00:00:99,output:2"],
    );
    let f = frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], None);
    for _ in 0..10 {
        ai.lock().unwrap().push_back(f.clone());
    }
    let got = wait_for(&bs, 10);
    assert_eq!(got.len(), 10);
    assert_eq!(&got[0][0..6], &[2, 0, 0, 0, 0, 0x99]);
    assert_eq!(&got[0][6..], &f[6..]);
    let st = sw.stats();
    assert_eq!(st.upcalls, 1, "one translation, then cache hits");
    assert_eq!(st.emc_hits, 9);
    std::thread::sleep(Duration::from_millis(20));
    let p = sw.pipeline();
    let e = p.flows(&Default::default())[0]
        .stats
        .n_packets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(e, 10);
}

/// Poll time is split into busy, idle and asleep (`ferrovs-ctl stats`,
/// the `ferrovs_poll_seconds` metric), adding up to at most the wall time.
#[test]
fn poll_time_split_busy_idle_asleep() {
    let t0 = std::time::Instant::now();
    let (sw, ai, bs) = two_ports();
    add(&sw, &["in_port=1 actions=output:2"]);
    let f = frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], None);
    for _ in 0..100 {
        ai.lock().unwrap().push_back(f.clone());
    }
    assert_eq!(wait_for(&bs, 100).len(), 100);
    // Long enough to spin out and sleep (in-memory ports: 1 ms naps).
    std::thread::sleep(Duration::from_millis(200));
    let st = sw.stats();
    let wall = u64::try_from(t0.elapsed().as_nanos()).unwrap();
    assert!(st.busy_ns > 0, "{st:?}");
    assert!(st.idle_ns > 0, "{st:?}");
    assert!(st.asleep_ns > 0, "{st:?}");
    assert!(
        st.busy_ns + st.idle_ns + st.asleep_ns <= wall,
        "{st:?} > {wall}"
    );
}

/// Poll threads take the configured niceness (raising it needs no
/// privilege), and `stats` reports what each runs at.
#[test]
fn poll_threads_run_at_configured_niceness() {
    let sw = Switch::start(&SwitchConfig {
        threads: 2,
        poll_nice: Some(5),
        ..SwitchConfig::default()
    })
    .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while sw.stats().poll_nice != [5, 5] && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sw.stats().poll_nice, [5, 5]);
}

#[test]
fn flow_change_takes_effect_without_flush() {
    let sw = Switch::start(&SwitchConfig::default()).unwrap();
    let (a, b, c) = (MemPort::new("a"), MemPort::new("b"), MemPort::new("c"));
    let (ai, bs, cs) = (a.inject.clone(), b.sent.clone(), c.sent.clone());
    sw.add_port(1, Box::new(a), VlanMode::Trunk).unwrap();
    sw.add_port(2, Box::new(b), VlanMode::Trunk).unwrap();
    sw.add_port(3, Box::new(c), VlanMode::Trunk).unwrap();
    add(&sw, &["in_port=1 actions=output:2"]);
    let f = frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], None);
    ai.lock().unwrap().push_back(f.clone());
    assert_eq!(wait_for(&bs, 1).len(), 1);
    add(&sw, &["in_port=1 actions=output:3"]);
    ai.lock().unwrap().push_back(f.clone());
    assert_eq!(wait_for(&cs, 1).len(), 1);
    assert!(bs.lock().unwrap().is_empty());
}

#[test]
fn normal_vlan_push_pop_and_isolation() {
    let sw = Switch::start(&SwitchConfig::default()).unwrap();
    let ports: Vec<MemPort> = ["a10", "b10", "c20", "trunk"]
        .iter()
        .map(|n| MemPort::new(n))
        .collect();
    let q: Vec<_> = ports
        .iter()
        .map(|p| (p.inject.clone(), p.sent.clone()))
        .collect();
    let modes = [
        VlanMode::Access(10),
        VlanMode::Access(10),
        VlanMode::Access(20),
        VlanMode::Trunk,
    ];
    for (i, (p, m)) in ports.into_iter().zip(modes).enumerate() {
        sw.add_port(i as u16 + 1, Box::new(p), m).unwrap();
    }
    add(&sw, &["priority=0 actions=normal"]);
    // Broadcast from VLAN 10 access port: to b10 untagged and trunk tagged 10.
    let bcast = frame([0xff; 6], [2, 0, 0, 0, 0, 1], None);
    q[0].0.lock().unwrap().push_back(bcast.clone());
    let b = wait_for(&q[1].1, 1);
    let t = wait_for(&q[3].1, 1);
    assert_eq!(b, vec![bcast.clone()]);
    assert_eq!(t.len(), 1);
    assert_eq!(&t[0][12..16], &[0x81, 0x00, 0x00, 10]);
    assert_eq!(&t[0][16..], &bcast[12..]);
    assert!(
        q[2].1.lock().unwrap().is_empty(),
        "VLAN 20 must not see VLAN 10 broadcast"
    );
    // Tagged frame from the trunk for VLAN 10 to the learned MAC: popped, to a10 only.
    let tagged = frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 7], Some(10));
    q[3].0.lock().unwrap().push_back(tagged);
    let a = wait_for(&q[0].1, 1);
    assert_eq!(a.len(), 1);
    assert_eq!(&a[0][12..14], &[0x08, 0x00], "tag removed");
    // Same MAC on VLAN 20 is unknown there: flooded to c20 only.
    let other = frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 8], Some(20));
    q[3].0.lock().unwrap().push_back(other);
    assert_eq!(wait_for(&q[2].1, 1).len(), 1);
    std::thread::sleep(Duration::from_millis(20));
    assert!(q[0].1.lock().unwrap().is_empty());
    assert!(q[1].1.lock().unwrap().is_empty());
}

#[test]
fn malformed_frames_are_counted_not_fatal() {
    let (sw, ai, bs) = two_ports();
    add(&sw, &["actions=output:2"]);
    let good = frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], None);
    for n in [0, 5, 13, 20, 30] {
        ai.lock().unwrap().push_back(good[..n].to_vec());
    }
    ai.lock().unwrap().push_back(good.clone());
    assert_eq!(wait_for(&bs, 1), vec![good]);
    let st = sw.stats();
    let truncated = st.drops.iter().find(|d| d.0 == "truncated").unwrap().1;
    assert!(truncated >= 3, "{:?}", st.drops);
}

/// Frames of one batch to the same port, sent whole by reference (runs),
/// by reference after another output, and as modified copies: each
/// arrives once, unmodified where it should be, in order within its flow.
#[test]
fn batch_refs_runs_and_copies() {
    let sw = Switch::start(&SwitchConfig::default()).unwrap();
    let (a, b, c) = (MemPort::new("a"), MemPort::new("b"), MemPort::new("c"));
    let (ai, bs, cs) = (a.inject.clone(), b.sent.clone(), c.sent.clone());
    sw.add_port(1, Box::new(a), VlanMode::Trunk).unwrap();
    sw.add_port(2, Box::new(b), VlanMode::Trunk).unwrap();
    sw.add_port(3, Box::new(c), VlanMode::Trunk).unwrap();
    add(
        &sw,
        &[
            "in_port=1,dl_src=02:00:00:00:00:01 actions=output:2",
            "in_port=1,dl_src=02:00:00:00:00:03 actions=output:2,mod_dl_dst:02:00:00:00:00:99,output:3",
            "in_port=1,dl_src=02:00:00:00:00:04 actions=output:3,output:2",
        ],
    );
    // Runs of the fast flow broken by the others; the last byte numbers
    // the frames.
    let srcs = [1u8, 1, 1, 3, 1, 4, 4, 1, 1, 3];
    let mut sent = Vec::new();
    {
        let mut q = ai.lock().unwrap();
        for i in 0..70u8 {
            let s = srcs[i as usize % srcs.len()];
            let mut f = frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, s], None);
            *f.last_mut().unwrap() = i;
            q.push_back(f.clone());
            sent.push(f);
        }
    }
    let n_to = |want: &[u8]| sent.iter().filter(|f| want.contains(&f[11])).count();
    let got2 = wait_for(&bs, n_to(&[1, 3, 4]));
    let got3 = wait_for(&cs, n_to(&[3, 4]));
    assert_eq!(got2.len(), n_to(&[1, 3, 4]));
    assert_eq!(got3.len(), n_to(&[3, 4]));
    for s in [1u8, 3, 4] {
        let want: Vec<&Vec<u8>> = sent.iter().filter(|f| f[11] == s).collect();
        let on2: Vec<&Vec<u8>> = got2.iter().filter(|f| f[11] == s).collect();
        assert_eq!(on2, want, "port 2, source {s}: unmodified, in order");
        if s != 1 {
            let on3: Vec<&Vec<u8>> = got3.iter().filter(|f| f[11] == s).collect();
            assert_eq!(on3.len(), want.len());
            for (g, w) in on3.iter().zip(&want) {
                let dst: &[u8] = if s == 3 {
                    &[2, 0, 0, 0, 0, 0x99]
                } else {
                    &w[..6]
                };
                assert_eq!(&g[..6], dst, "port 3, source {s}");
                assert_eq!(&g[6..], &w[6..], "port 3, source {s}");
            }
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    // Every frame credited once to its flow, and counted once by the cache.
    let p = sw.pipeline();
    let credited: u64 = p
        .flows(&Default::default())
        .iter()
        .map(|e| e.stats.n_packets.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(credited, sent.len() as u64);
    let st = sw.stats();
    assert_eq!(st.emc_hits + st.emc_misses, sent.len() as u64);
    assert_eq!(st.packets, sent.len() as u64);
    let ports = sw.ports();
    let tx = |no| ports.get(no).map(|p| p.counters.snapshot().tx_packets);
    assert_eq!(tx(2), Some(n_to(&[1, 3, 4]) as u64));
    assert_eq!(tx(3), Some(n_to(&[3, 4]) as u64));
    assert_eq!(
        tx(2).map(|_| ports.get(2).unwrap().counters.snapshot().tx_bytes),
        Some(n_to(&[1, 3, 4]) as u64 * sent[0].len() as u64)
    );
    sw.shutdown();
}

/// What [`HoldingPort`]'s transmit half saw: frames submitted but not yet
/// woken, frames woken (sent), and the calls.
#[derive(Default)]
struct TxLog {
    waiting: usize,
    sent: usize,
    submits: usize,
    wakes: usize,
}

/// An in-memory port whose transmit half, like an AF_XDP socket, needs a
/// wake-up ([`PortTx::flush`]) to send what was submitted.
struct HoldingPort {
    inner: MemPort,
    log: std::sync::Arc<std::sync::Mutex<TxLog>>,
}

struct HoldingTx(std::sync::Arc<std::sync::Mutex<TxLog>>);

impl datapath::port::PortTx for HoldingTx {
    fn send(&mut self, _frame: &[u8]) -> bool {
        self.0.lock().unwrap().waiting += 1;
        true
    }
    fn flush(&mut self) {
        let mut l = self.0.lock().unwrap();
        l.wakes += 1;
        l.sent += std::mem::take(&mut l.waiting);
    }
    fn submit(&mut self) -> bool {
        let mut l = self.0.lock().unwrap();
        l.submits += 1;
        l.waiting > 0
    }
}

impl datapath::port::Port for HoldingPort {
    fn name(&self) -> &str {
        "holding"
    }
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn split(
        self: Box<Self>,
    ) -> (
        Box<dyn datapath::port::PortRx>,
        Box<dyn datapath::port::PortTx>,
    ) {
        let (rx, _) = Box::new(self.inner).split();
        (rx, Box::new(HoldingTx(self.log)))
    }
}

/// Forwards `frames` frames from port 1 to a [`HoldingPort`] 2, injected
/// one at a time `gap` apart; returns the log once all were sent (or 5 s).
fn forward_paced(interval: Duration, frames: usize, gap: Duration) -> TxLog {
    let sw = Switch::start(&SwitchConfig {
        tx_flush_interval: interval,
        ..SwitchConfig::default()
    })
    .unwrap();
    let a = MemPort::new("a");
    let ai = a.inject.clone();
    let log = std::sync::Arc::new(std::sync::Mutex::new(TxLog::default()));
    let b = HoldingPort {
        inner: MemPort::new("b"),
        log: log.clone(),
    };
    sw.add_port(1, Box::new(a), VlanMode::Trunk).unwrap();
    sw.add_port(2, Box::new(b), VlanMode::Trunk).unwrap();
    add(&sw, &["in_port=1 actions=output:2"]);
    let f = frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], None);
    for _ in 0..frames {
        let t = Instant::now();
        ai.lock().unwrap().push_back(f.clone());
        while t.elapsed() < gap {
            std::hint::spin_loop();
        }
    }
    let t = Instant::now();
    while log.lock().unwrap().sent < frames && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(sw);
    let l = log.lock().unwrap();
    TxLog { ..*l }
}

#[test]
fn output_waits_for_company_only_under_load() {
    // 1 µs apart (1 Mpps): frames wait for each other, one wake-up sends
    // many, and the last ones go out once the load stops.
    let l = forward_paced(Duration::from_micros(20), 20_000, Duration::from_micros(1));
    assert_eq!((l.sent, l.waiting), (20_000, 0));
    assert!(l.submits > 0, "output held under load");
    assert!(
        l.wakes * 4 < l.sent,
        "{} wake-ups for {} frames",
        l.wakes,
        l.sent
    );
    // 50 µs apart (20 kpps): every frame is sent at once.
    let l = forward_paced(Duration::from_micros(20), 200, Duration::from_micros(50));
    assert_eq!((l.sent, l.waiting, l.submits), (200, 0, 0));
    // Interval 0: never held, whatever the load.
    let l = forward_paced(Duration::ZERO, 5_000, Duration::from_micros(1));
    assert_eq!((l.sent, l.waiting, l.submits), (5_000, 0, 0));
}
