//! The whole in-memory packet pipeline, driven the way a poll thread drives
//! it: per batch of [`BATCH`] received frames, `refresh`, `process` each
//! frame, then `flush` (staged frames go to the ports' transmit halves).
//!
//! A [`Bench`] builds a real [`Switch`] with [`SinkPort`]s (transmit halves
//! that count and discard, receive halves that never receive), stops its
//! poll thread, and runs its own [`Engine`] on the switch's shared state, so
//! the measured code is exactly the datapath's: extraction, the exact-match
//! cache, the actions (rewrites, VLAN push, conntrack with NAT,
//! recirculation), staging and the per-batch flush.
//!
//! Cases ([`Case`]):
//! * `L2`: one flow `in_port=1 actions=output:2`, 64-byte UDP frames.
//! * `NormalVlan`: `actions=normal`, access port (VLAN 10) to a trunk: every
//!   frame gets a VLAN tag pushed.
//! * `K8s`: a Kubernetes-like pipeline (classifier, conntrack with NAT,
//!   service table with a select group doing DNAT, ~50 ACL flows, L3
//!   forwarding) on established UDP connections, both directions.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datapath::port::{Port, PortRx, PortTx, MAX_FRAME};
use datapath::shared::{PortState, BATCH};
use datapath::switch::{Switch, SwitchConfig};
use datapath::worker::Engine;
use flows::action::PortNo;
use flows::pipeline::{FlowMod, VlanMode};
use flows::syntax::{parse_flow, parse_group};

/// Room the engine needs in its scratch buffer besides the frame.
const SCRATCH: usize = MAX_FRAME + 256;

/// A port whose transmit half counts frames and drops them and whose
/// receive half never has anything: the benchmark feeds the engine itself.
#[derive(Debug)]
pub struct SinkPort {
    name: String,
    /// Frames sent to this port.
    pub sent: Arc<AtomicU64>,
}

impl SinkPort {
    /// A sink named `name`.
    pub fn new(name: &str) -> Self {
        SinkPort {
            name: name.to_string(),
            sent: Arc::default(),
        }
    }
}

struct SinkRx;
struct SinkTx(Arc<AtomicU64>);

impl PortRx for SinkRx {
    fn recv(&mut self, _max: usize) -> usize {
        0
    }
    fn frame(&mut self, _i: usize) -> &mut [u8] {
        &mut []
    }
    fn frames_mut<'a>(&'a mut self, _out: &mut [&'a mut [u8]]) -> usize {
        0
    }
    fn release(&mut self) {}
    fn wait_fd(&self) -> Option<RawFd> {
        None
    }
}

impl PortTx for SinkTx {
    #[inline]
    fn send(&mut self, frame: &[u8]) -> bool {
        std::hint::black_box(frame);
        self.0.fetch_add(1, Ordering::Relaxed);
        true
    }
    #[inline]
    fn send_batch(&mut self, frames: &[&[u8]]) -> (usize, u64) {
        std::hint::black_box(frames);
        let bytes = frames.iter().map(|f| f.len() as u64).sum();
        self.0.fetch_add(frames.len() as u64, Ordering::Relaxed);
        (frames.len(), bytes)
    }
    fn flush(&mut self) {}
}

impl Port for SinkPort {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "sink"
    }
    fn split(self: Box<Self>) -> (Box<dyn PortRx>, Box<dyn PortTx>) {
        (Box::new(SinkRx), Box::new(SinkTx(self.sent)))
    }
}

/// A benchmark scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// `in_port=1 actions=output:2`, one 64-byte UDP flow.
    L2,
    /// `actions=normal` from an access port (VLAN 10) to a trunk.
    NormalVlan,
    /// Kubernetes-like: conntrack, service DNAT via a select group, ACLs.
    K8s,
}

impl Case {
    /// All cases.
    pub const ALL: [Case; 3] = [Case::L2, Case::NormalVlan, Case::K8s];

    /// Short name (`l2`, `normal_vlan`, `k8s`).
    pub fn name(self) -> &'static str {
        match self {
            Case::L2 => "l2",
            Case::NormalVlan => "normal_vlan",
            Case::K8s => "k8s",
        }
    }

    /// Parses [`Case::name`].
    pub fn from_name(s: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// MAC address `02:00:00:00:00:n`.
pub fn mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, n]
}

/// A 60-byte (64 on the wire with FCS) Ethernet/IPv4/UDP frame, with an
/// optional 802.1Q tag (then 64 bytes) and a correct IPv4 checksum.
pub fn udp_frame(
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ip_src: Ipv4Addr,
    ip_dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    const PAYLOAD: usize = 18;
    let ip_len = (20 + 8 + PAYLOAD) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[4..6].copy_from_slice(&1u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&ip_src.octets());
    ip[16..20].copy_from_slice(&ip_dst.octets());
    let mut sum = 0u32;
    for w in ip.chunks(2) {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(8 + PAYLOAD as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..PAYLOAD).map(|i| i as u8));
    f
}

/// One receive batch: the port it arrives on and its frames.
struct RxBatch {
    port: Arc<PortState>,
    /// Pristine frames (copied into `bufs` before each run, as a NIC would
    /// DMA them; rewrites happen in place).
    frames: Vec<Vec<u8>>,
    bufs: BatchRx,
}

/// A receive half over a fixed batch of frames: `recv` hands out the whole
/// batch once per [`Bench::reload`], like a ring a NIC has just filled.
#[derive(Debug)]
struct BatchRx {
    frames: Vec<Vec<u8>>,
    armed: bool,
}

impl PortRx for BatchRx {
    fn recv(&mut self, max: usize) -> usize {
        if !self.armed {
            return 0;
        }
        self.armed = false;
        self.frames.len().min(max)
    }
    fn frame(&mut self, i: usize) -> &mut [u8] {
        match self.frames.get_mut(i) {
            Some(f) => f.as_mut_slice(),
            None => &mut [],
        }
    }
    fn frames_mut<'a>(&'a mut self, out: &mut [&'a mut [u8]]) -> usize {
        let mut k = 0;
        for (o, f) in out.iter_mut().zip(self.frames.iter_mut()) {
            *o = f.as_mut_slice();
            k += 1;
        }
        k
    }
    fn release(&mut self) {}
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// A switch with its pipeline installed and an engine driven by hand.
#[derive(Debug)]
pub struct Bench {
    /// The switch (its poll thread stopped).
    pub switch: Switch,
    /// The engine under test.
    pub engine: Engine,
    batches: Vec<RxBatch>,
    scratch: Vec<u8>,
    sinks: Vec<Arc<AtomicU64>>,
}

impl std::fmt::Debug for RxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RxBatch(port {}, {} frames)",
            self.port.no,
            self.frames.len()
        )
    }
}

fn flow_mods(flows: &[String]) -> Vec<FlowMod> {
    flows
        .iter()
        .map(|f| FlowMod::Add(parse_flow(f).unwrap_or_else(|e| panic!("{f}: {e}"))))
        .collect()
}

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 20);
const POD_C: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 30);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Connections of the K8s case (client source ports 40000..).
const K8S_CONNS: u16 = 8;

/// The K8s case's flow table: classifier (0), conntrack (10), services
/// (20), ACLs (30, 50 rules), commit (35), L3 forwarding (40).
pub fn k8s_flows() -> (Vec<String>, Vec<String>) {
    let mut f = vec![
        "table=0,priority=200,in_port=1 actions=load:0x1->NXM_NX_REG0[0..15],goto_table:10".into(),
        "table=0,priority=200,in_port=2 actions=load:0x2->NXM_NX_REG0[0..15],goto_table:10".into(),
        "table=0,priority=200,in_port=3 actions=load:0x3->NXM_NX_REG0[0..15],goto_table:10".into(),
        "table=0,priority=0 actions=drop".into(),
        "table=10,priority=100,ip actions=ct(table=20,zone=1,nat)".into(),
        "table=10,priority=0 actions=drop".into(),
        "table=20,priority=200,ct_state=+new+trk,udp,nw_dst=10.96.0.10,tp_dst=80 actions=group:1"
            .into(),
        "table=20,priority=100,ct_state=+est+trk,ip actions=goto_table:40".into(),
        "table=20,priority=100,ct_state=+rel+trk,ip actions=goto_table:40".into(),
        "table=20,priority=50,ct_state=+inv+trk actions=drop".into(),
        "table=20,priority=0 actions=goto_table:30".into(),
    ];
    // ACLs: 48 allow rules for other sources/ports, then the ones the
    // traffic needs, then default deny.
    for i in 0..48u32 {
        f.push(format!(
            "table=30,priority={},udp,nw_src=10.{}.{}.0/24,nw_dst=10.244.0.{},tp_dst={} actions=goto_table:35",
            1000 + i,
            100 + i / 10,
            i % 10,
            20 + i % 20,
            5000 + i
        ));
    }
    f.push("table=30,priority=900,udp,reg0=0x1/0xffff,nw_dst=10.244.0.0/24,tp_dst=8080 actions=goto_table:35".into());
    f.push("table=30,priority=900,tcp,reg0=0x1/0xffff,nw_dst=10.244.0.0/24,tp_dst=8080 actions=goto_table:35".into());
    f.push("table=30,priority=0 actions=drop".into());
    f.push(
        "table=35,priority=100,ct_state=+new+trk,ip actions=ct(commit,zone=1),goto_table:40".into(),
    );
    f.push("table=35,priority=0 actions=goto_table:40".into());
    for (ip, port) in [(POD_A, 1), (POD_B, 2), (POD_C, 3)] {
        f.push(format!(
            "table=40,priority=100,ip,nw_dst={ip} actions=mod_dl_dst:02:00:00:00:00:{:02x},dec_ttl,output:{port}",
            ip.octets()[3]
        ));
    }
    f.push("table=40,priority=0 actions=drop".into());
    let groups = vec![format!(
        "group_id=1,type=select,bucket=ct(commit,table=30,zone=1,nat(dst={POD_B}:8080)),bucket=ct(commit,table=30,zone=1,nat(dst={POD_C}:8080))"
    )];
    (f, groups)
}

impl Bench {
    /// Builds the switch for `case`, installs its flows and warms the cache
    /// (and MAC table, and conntrack) up.
    pub fn new(case: Case) -> Bench {
        let switch = Switch::start(&SwitchConfig::default()).expect("start switch");
        // The benchmark drives its own engine; the poll thread is not needed.
        switch.shared().stop.store(true, Ordering::SeqCst);
        let n_ports: PortNo = if case == Case::K8s { 3 } else { 2 };
        let mut sinks = Vec::new();
        for no in 1..=n_ports {
            let vlan = match (case, no) {
                (Case::NormalVlan, 1) => VlanMode::Access(10),
                _ => VlanMode::Trunk,
            };
            let p = SinkPort::new(&format!("p{no}"));
            sinks.push(p.sent.clone());
            switch.add_port(no, Box::new(p), vlan).expect("add port");
        }
        let ports = switch.ports();
        let port = |no: PortNo| ports.get(no).expect("port").clone();
        let engine = Engine::new(0, switch.shared().clone());
        let mut b = Bench {
            switch,
            engine,
            batches: Vec::new(),
            scratch: vec![0; SCRATCH],
            sinks,
        };
        let batch = |port: Arc<PortState>, frames: Vec<Vec<u8>>| RxBatch {
            port,
            bufs: BatchRx {
                frames: frames.clone(),
                armed: false,
            },
            frames,
        };
        match case {
            Case::L2 => {
                b.switch
                    .apply(&flow_mods(&["in_port=1 actions=output:2".into()]))
                    .expect("flows");
                let f = udp_frame(mac(2), mac(1), None, POD_A, POD_B, 1000, 2000);
                b.batches.push(batch(port(1), vec![f; BATCH]));
            }
            Case::NormalVlan => {
                b.switch
                    .apply(&flow_mods(&["priority=0 actions=normal".into()]))
                    .expect("flows");
                // Teach the switch where mac(2) is: a tagged frame on the trunk.
                let back = udp_frame(mac(1), mac(2), Some(10), POD_B, POD_A, 2000, 1000);
                b.batches.push(batch(port(2), vec![back]));
                b.run_all();
                b.batches.clear();
                let f = udp_frame(mac(2), mac(1), None, POD_A, POD_B, 1000, 2000);
                b.batches.push(batch(port(1), vec![f; BATCH]));
            }
            Case::K8s => {
                let (flows, groups) = k8s_flows();
                let mut mods: Vec<FlowMod> = groups
                    .iter()
                    .map(|g| {
                        FlowMod::AddGroup(parse_group(g).unwrap_or_else(|e| panic!("{g}: {e}")))
                    })
                    .collect();
                mods.extend(flow_mods(&flows));
                b.switch.apply(&mods).expect("flows");
                // Open the connections: one request each.
                let req = |i: u16| udp_frame(mac(0xfe), mac(10), None, POD_A, VIP, 40000 + i, 80);
                b.batches
                    .push(batch(port(1), (0..K8S_CONNS).map(req).collect()));
                b.run_all();
                b.batches.clear();
                // Where did each go? Reply from that backend.
                let conns: Vec<_> = datapath::shared::lock(&b.switch.shared().ct)
                    .dump()
                    .collect();
                assert_eq!(conns.len(), K8S_CONNS as usize, "connections committed");
                let mut replies: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 2];
                for c in &conns {
                    let be = c.reply.src;
                    let side = usize::from(be == POD_C);
                    let f = udp_frame(
                        mac(10),
                        mac(be.octets()[3]),
                        None,
                        be,
                        POD_A,
                        8080,
                        c.orig.sport,
                    );
                    replies[side].push(f);
                }
                for (side, fr) in replies.iter().enumerate() {
                    if !fr.is_empty() {
                        b.batches.push(batch(port(2 + side as PortNo), fr.clone()));
                    }
                }
                b.run_all();
                b.batches.clear();
                // Steady state: full batches from the client and from each
                // backend that has connections.
                let fwd: Vec<Vec<u8>> = (0..BATCH as u16).map(|i| req(i % K8S_CONNS)).collect();
                b.batches.push(batch(port(1), fwd));
                for (side, fr) in replies.iter().enumerate() {
                    if !fr.is_empty() {
                        let full = fr.iter().cycle().take(BATCH).cloned().collect();
                        b.batches.push(batch(port(2 + side as PortNo), full));
                    }
                }
            }
        }
        // Warm up: translations, MAC learning settles, connections established.
        for _ in 0..4 {
            b.run_all();
        }
        b
    }

    /// Frames per [`Bench::run_all`].
    pub fn packets_per_round(&self) -> usize {
        self.batches.iter().map(|b| b.frames.len()).sum()
    }

    /// Frames sent to each port so far (port 1 first).
    pub fn sent(&self) -> Vec<u64> {
        self.sinks
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect()
    }

    /// Restores the receive buffers of every batch (rewrites are done in
    /// place, as in an AF_XDP receive ring).
    #[inline(never)]
    pub fn reload(&mut self) {
        for b in &mut self.batches {
            for (buf, f) in b.bufs.frames.iter_mut().zip(&b.frames) {
                buf.copy_from_slice(f);
            }
            b.bufs.armed = true;
        }
    }

    /// Processes every batch once (without reloading): per batch,
    /// `refresh`, `process` each frame, count, `flush` — the poll loop's
    /// body. Returns frames processed.
    #[inline]
    pub fn process_all(&mut self) -> usize {
        let mut total = 0;
        for b in &mut self.batches {
            total += self
                .engine
                .process_batch(&b.port, &mut b.bufs, &mut self.scratch);
        }
        total
    }

    /// [`Bench::reload`] then [`Bench::process_all`].
    pub fn run_all(&mut self) -> usize {
        self.reload();
        self.process_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case forwards every frame where it should, from the cache.
    #[test]
    fn cases_forward_from_the_cache() {
        for case in Case::ALL {
            let mut b = Bench::new(case);
            let before = b.sent();
            let st0 = b.switch.stats();
            let n = b.run_all();
            let after = b.sent();
            let st = b.switch.stats();
            let out: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
            assert_eq!(out, n as u64, "{case:?}: every frame sent once");
            assert_eq!(
                st.upcalls, st0.upcalls,
                "{case:?}: no upcalls in steady state"
            );
            let drops: u64 = st.drops.iter().map(|d| d.1).sum();
            assert_eq!(drops, 0, "{case:?}: drops {:?}", st.drops);
            match case {
                Case::L2 | Case::NormalVlan => assert_eq!(after[1] - before[1], n as u64),
                Case::K8s => assert_eq!(
                    after[0] - before[0],
                    (n - BATCH) as u64,
                    "replies to the client"
                ),
            }
        }
    }
}
