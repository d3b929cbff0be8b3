//! The switch: ports, poll threads, and the published pipeline version.
//!
//! [`Switch`] is the handle the management side (ferrovsd, tests) holds.
//! Flow edits are applied to a private copy of the pipeline and published
//! with one atomic pointer swap (`arc-swap`): poll threads pick the new
//! version up at their next batch and never wait for the writer. Port
//! changes are published the same way and handed to the poll threads over a
//! channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{unbounded, Sender};
use flows::action::PortNo;
use flows::key::FlowKey;
use flows::pipeline::{ApplySummary, FlowMod, Pipeline, PipelineError, PortInfo, VlanMode};
use flows::xlate::{translate, Trace, XlateEnv, Xlation};

use crate::extract::DropReason;
use crate::port::Port;
use crate::shared::{
    learned_generation, lock, PortCounters, PortRole, PortState, PortTable, Shared, VxlanConfig,
    UNDERLAY_BASE,
};
use crate::worker::{Worker, WorkerCmd};

/// Errors of port and flow management.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// Port number already used.
    #[error("port number {0} is already in use")]
    PortNumberInUse(PortNo),
    /// Port name already used.
    #[error("port name '{0}' is already in use")]
    PortNameInUse(String),
    /// No such port.
    #[error("no port named '{0}'")]
    NoSuchPort(String),
    /// Port number out of the OpenFlow range.
    #[error("port number {0} is reserved (use 1..=65279)")]
    ReservedPortNumber(PortNo),
    /// Flow table error.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Opening an interface failed.
    #[error("{0}")]
    Open(String),
}

/// Switch-wide statistics.
#[derive(Clone, Debug, Default)]
pub struct SwitchStats {
    /// Flow-cache hits.
    pub emc_hits: u64,
    /// Flow-cache misses.
    pub emc_misses: u64,
    /// Translations.
    pub upcalls: u64,
    /// Controller punts.
    pub controller: u64,
    /// Frames sent by `arp_reply` and `reject`.
    pub replies_sent: u64,
    /// Packets processed.
    pub packets: u64,
    /// Drops by reason name.
    pub drops: Vec<(&'static str, u64)>,
    /// Idle sleeps.
    pub sleeps: u64,
    /// Nanoseconds the poll threads spent in rounds that moved frames.
    pub busy_ns: u64,
    /// Nanoseconds in empty rounds and spinning.
    pub idle_ns: u64,
    /// Nanoseconds asleep (naps, waits for frames).
    pub asleep_ns: u64,
    /// Each poll thread's niceness.
    pub poll_nice: Vec<i32>,
    /// Tracked connections.
    pub conntrack: usize,
}

/// Switch configuration.
#[derive(Clone, Debug)]
pub struct SwitchConfig {
    /// Number of poll threads.
    pub threads: usize,
    /// CPUs to pin poll threads to (by index; empty = no pinning).
    pub cores: Vec<usize>,
    /// Connection-tracker limits and timeouts.
    pub conntrack: crate::conntrack::CtConfig,
    /// Longest nap of a poll thread under light load (like OVS's
    /// `pmd-maxsleep`): while its batches stay small, a poll thread sleeps
    /// between polls, 1 µs longer each time up to this, and polls
    /// without pause again as soon as a batch is half full. Zero (the
    /// default) means busy polling: lowest latency, a whole core always.
    pub max_sleep: Duration,
    /// Longest a frame may wait for more output under load (like OVS's
    /// `tx-flush-interval`, but only while a poll thread receives more
    /// than 200,000 frames per second; below that every frame is sent at
    /// once). One kernel wake-up then sends the frames of several rounds.
    /// Zero sends every round's output at once. See [`crate::txbatch`].
    pub tx_flush_interval: Duration,
    /// Niceness of the poll threads (-20..19), so that other work on their
    /// cores gets a small share instead of half: a poll thread that waits
    /// out another thread's time slice of several milliseconds loses
    /// frames once its receive ring (2,048 frames, 7 ms at 300 kpps) is
    /// full. OVS's `ovs-ctl` starts `ovs-vswitchd` at -10. Niceness weighs
    /// threads within one scheduling group: a cgroup, or with autogroup
    /// scheduling a session, so the daemon should have its own (a service
    /// manager gives it one). Lowering it needs `CAP_SYS_NICE`; without it
    /// the threads keep the inherited niceness and a warning is logged.
    /// `None` (the default here; ferrovsd uses [`DEFAULT_POLL_NICE`])
    /// leaves the niceness alone.
    pub poll_nice: Option<i32>,
}

/// The poll threads' niceness in ferrovsd unless configured: OVS's.
pub const DEFAULT_POLL_NICE: i32 = -10;

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            threads: 1,
            cores: Vec::new(),
            conntrack: Default::default(),
            max_sleep: DEFAULT_MAX_SLEEP,
            tx_flush_interval: crate::txbatch::DEFAULT_TX_FLUSH_INTERVAL,
            poll_nice: None,
        }
    }
}

/// Default [`SwitchConfig::max_sleep`].
pub const DEFAULT_MAX_SLEEP: Duration = Duration::ZERO;

/// The running switch.
#[derive(Debug)]
pub struct Switch {
    shared: Arc<Shared>,
    workers: Vec<(Sender<WorkerCmd>, Arc<mio::Waker>, JoinHandle<()>)>,
    edit: Mutex<()>,
    next_worker: Mutex<usize>,
    rx_owner: Mutex<HashMap<PortNo, usize>>,
}

impl Switch {
    /// Starts the poll threads with an empty pipeline and no ports.
    pub fn start(cfg: &SwitchConfig) -> std::io::Result<Switch> {
        let n = cfg.threads.max(1);
        let shared = Arc::new(Shared::new(n, cfg.conntrack));
        let mut workers = Vec::new();
        for i in 0..n {
            let (tx, rx) = unbounded();
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), crate::worker::WAKE_TOKEN)?);
            let core = cfg.cores.get(i).copied();
            let sh = shared.clone();
            let max_sleep = cfg.max_sleep;
            let tx_flush = cfg.tx_flush_interval;
            let nice = cfg.poll_nice;
            let handle = std::thread::Builder::new()
                .name(format!("ferrovs-poll{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        crate::worker::pin_to_core(c);
                    }
                    crate::worker::set_nice(i, nice, &sh.threads[i]);
                    Worker::new(i, sh, rx)
                        .with_max_sleep(max_sleep)
                        .with_tx_flush_interval(tx_flush)
                        .run(poll);
                })?;
            workers.push((tx, waker, handle));
        }
        Ok(Switch {
            shared,
            workers,
            edit: Mutex::new(()),
            next_worker: Mutex::new(0),
            rx_owner: Mutex::new(HashMap::new()),
        })
    }

    /// State shared with the poll threads.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The current pipeline version.
    pub fn pipeline(&self) -> Arc<Pipeline> {
        self.shared.pipeline.load_full()
    }

    /// The current ports.
    pub fn ports(&self) -> Arc<PortTable> {
        self.shared.ports.load_full()
    }

    /// Applies flow mods atomically (all or nothing) and publishes them.
    pub fn apply(&self, mods: &[FlowMod]) -> Result<ApplySummary, PipelineError> {
        let _g = lock(&self.edit);
        let mut next = (*self.shared.pipeline.load_full()).clone();
        let sum = next.apply(mods, self.shared.now_ms())?;
        self.shared.pipeline.store(Arc::new(next));
        Ok(sum)
    }

    /// Replaces the whole flow table with `mods`' result, applying only
    /// the difference so that unchanged flows keep their counters.
    pub fn replace(&self, target: Pipeline) -> ApplySummary {
        let _g = lock(&self.edit);
        let cur = self.shared.pipeline.load_full();
        let (next, sum) = flows::pipeline::replace_flows(&cur, target);
        self.shared.pipeline.store(Arc::new(next));
        sum
    }

    /// Removes expired flows and conntrack entries, ages MAC entries and
    /// session-affinity entries (and drops those of groups that no longer
    /// have `affinity_timeout`).
    pub fn expire(&self) -> usize {
        let now = self.shared.now_ms();
        let n = {
            let _g = lock(&self.edit);
            let cur = self.shared.pipeline.load_full();
            let mut next = (*cur).clone();
            let n = next.expire(now);
            if n > 0 {
                self.shared.pipeline.store(Arc::new(next));
            }
            n
        };
        {
            let p = self.pipeline();
            let mut m = lock(&self.shared.macs);
            let mut a = lock(&self.shared.affinity);
            m.expire(now);
            a.expire(now);
            // Entries of groups that are gone or lost `affinity_timeout`.
            a.retain_groups(|id| p.group(id).is_some_and(|g| g.affinity_timeout.is_some()));
            self.shared
                .mac_gen
                .store(learned_generation(&m, &a), Ordering::Release);
        }
        lock(&self.shared.ct).expire(now);
        n
    }

    fn check_new_port(&self, no: PortNo, name: &str) -> Result<(), SwitchError> {
        if no == 0 || no >= UNDERLAY_BASE {
            return Err(SwitchError::ReservedPortNumber(no));
        }
        let pt = self.shared.ports.load();
        if pt.get(no).is_some() {
            return Err(SwitchError::PortNumberInUse(no));
        }
        if pt.ports.iter().any(|p| p.name == name) {
            return Err(SwitchError::PortNameInUse(name.to_string()));
        }
        Ok(())
    }

    /// Adds a port with OpenFlow number `no`.
    pub fn add_port(
        &self,
        no: PortNo,
        port: Box<dyn Port>,
        vlan: VlanMode,
    ) -> Result<(), SwitchError> {
        let _g = lock(&self.edit);
        self.check_new_port(no, port.name())?;
        let name = port.name().to_string();
        let kind = port.kind();
        let kernel = port.kernel_stats();
        let (rx, tx) = port.split();
        let state = Arc::new(PortState {
            no,
            name: name.clone(),
            kind,
            role: PortRole::Plain,
            tx: Some(Mutex::new(tx)),
            counters: PortCounters::default(),
            kernel,
        });
        self.publish_port(state.clone(), Some(vlan), false);
        self.give_rx(no, rx, state);
        Ok(())
    }

    /// Adds a VXLAN port; `underlay` is opened by the caller (an AF_XDP or
    /// memory port on the underlay interface) unless an earlier tunnel
    /// already uses that interface, in which case pass `None`.
    pub fn add_vxlan_port(
        &self,
        no: PortNo,
        name: &str,
        cfg: VxlanConfig,
        underlay: Option<Box<dyn Port>>,
        vlan: VlanMode,
    ) -> Result<(), SwitchError> {
        let _g = lock(&self.edit);
        self.check_new_port(no, name)?;
        let pt = self.shared.ports.load_full();
        let existing = pt
            .ports
            .iter()
            .find(|p| p.name == cfg.underlay && matches!(p.role, PortRole::Underlay { .. }))
            .map(|p| p.no);
        let under_no = match (existing, underlay) {
            (Some(n), _) => n,
            (None, Some(port)) => {
                let n = (UNDERLAY_BASE..=0xfff0)
                    .find(|n| pt.get(*n).is_none())
                    .ok_or_else(|| SwitchError::Open("too many underlay ports".into()))?;
                let kind = port.kind();
                let kernel = port.kernel_stats();
                let (rx, tx) = port.split();
                let st = Arc::new(PortState {
                    no: n,
                    name: cfg.underlay.clone(),
                    kind,
                    role: PortRole::Underlay {
                        local_ip: cfg.local_ip,
                        local_mac: cfg.local_mac,
                        udp_port: cfg.udp_port,
                    },
                    tx: Some(Mutex::new(tx)),
                    counters: PortCounters::default(),
                    kernel,
                });
                self.publish_port(st.clone(), None, false);
                self.give_rx(n, rx, st);
                n
            }
            (None, None) => return Err(SwitchError::NoSuchPort(cfg.underlay.clone())),
        };
        let st = Arc::new(PortState {
            no,
            name: name.to_string(),
            kind: "vxlan",
            role: PortRole::Vxlan {
                cfg,
                underlay: under_no,
            },
            tx: None,
            counters: PortCounters::default(),
            kernel: None,
        });
        self.publish_port(st, Some(vlan), true);
        Ok(())
    }

    /// Removes a port by name (and its underlay if no tunnel uses it).
    pub fn del_port(&self, name: &str) -> Result<(), SwitchError> {
        let _g = lock(&self.edit);
        let pt = self.shared.ports.load_full();
        let Some(p) = pt
            .ports
            .iter()
            .find(|p| p.name == name && p.no < UNDERLAY_BASE)
        else {
            return Err(SwitchError::NoSuchPort(name.to_string()));
        };
        let no = p.no;
        let mut remove = vec![no];
        if let PortRole::Vxlan { underlay, .. } = p.role {
            let still_used = pt.ports.iter().any(|q| {
                q.no != no && matches!(q.role, PortRole::Vxlan { underlay: u, .. } if u == underlay)
            });
            if !still_used {
                remove.push(underlay);
            }
        }
        for r in &remove {
            if let Some(w) = lock(&self.rx_owner).remove(r) {
                let (tx, waker, _) = &self.workers[w];
                let _ = tx.send(WorkerCmd::DelRx(*r));
                let _ = waker.wake();
            }
        }
        let ports: Vec<Arc<PortState>> = pt
            .ports
            .iter()
            .filter(|p| !remove.contains(&p.no))
            .cloned()
            .collect();
        self.shared.ports.store(Arc::new(PortTable { ports }));
        let mut next = (*self.shared.pipeline.load_full()).clone();
        let infos: Vec<PortInfo> = next
            .ports()
            .iter()
            .filter(|i| i.no != no)
            .cloned()
            .collect();
        next.set_ports(infos);
        self.shared.pipeline.store(Arc::new(next));
        let mut m = lock(&self.shared.macs);
        m.flush_port(no);
        self.shared.mac_gen.store(m.generation(), Ordering::Release);
        Ok(())
    }

    fn publish_port(&self, st: Arc<PortState>, vlan: Option<VlanMode>, is_tunnel: bool) {
        let pt = self.shared.ports.load_full();
        let mut ports = pt.ports.clone();
        ports.push(st.clone());
        ports.sort_by_key(|p| p.no);
        self.shared.ports.store(Arc::new(PortTable { ports }));
        if let Some(vlan) = vlan {
            let mut next = (*self.shared.pipeline.load_full()).clone();
            let mut infos = next.ports().to_vec();
            infos.push(PortInfo {
                no: st.no,
                name: st.name.clone(),
                vlan,
                is_tunnel,
            });
            next.set_ports(infos);
            self.shared.pipeline.store(Arc::new(next));
        }
    }

    fn give_rx(&self, no: PortNo, rx: Box<dyn crate::port::PortRx>, st: Arc<PortState>) {
        let mut nw = lock(&self.next_worker);
        let w = *nw % self.workers.len();
        *nw += 1;
        lock(&self.rx_owner).insert(no, w);
        let (tx, waker, _) = &self.workers[w];
        let _ = tx.send(WorkerCmd::AddRx { no, rx, state: st });
        let _ = waker.wake();
    }

    /// Runs `f` on the current pipeline with copies of the MAC and affinity
    /// tables, so a trace changes nothing.
    fn dry_run<R>(&self, f: impl FnOnce(&flows::pipeline::Pipeline, &mut XlateEnv<'_>) -> R) -> R {
        let p = self.pipeline();
        let mut macs = lock(&self.shared.macs).clone();
        let mut affinity = lock(&self.shared.affinity).clone();
        let mut env = XlateEnv {
            macs: &mut macs,
            affinity: &mut affinity,
            now_ms: self.shared.now_ms(),
        };
        f(&p, &mut env)
    }

    /// Translates `key` with a trace, without touching counters, the MAC
    /// table or the affinity table (`ferrovs-ctl trace`).
    pub fn trace(&self, key: &FlowKey) -> (Xlation, Trace) {
        self.dry_run(|p, env| {
            let mut trace = Trace::default();
            let x = translate(p, key, env, Some(&mut trace));
            (x, trace)
        })
    }

    /// Like [`trace`](Self::trace), following conntrack recirculations
    /// with `ct_next` as the connection state (see
    /// [`flows::trace::trace_through`]).
    pub fn trace_through(&self, key: &FlowKey, ct_next: u64) -> Vec<flows::trace::Pass> {
        self.dry_run(|p, env| flows::trace::trace_through(p, key, env, ct_next))
    }

    /// Switch-wide counters.
    pub fn stats(&self) -> SwitchStats {
        let mut s = SwitchStats::default();
        let mut drops = [0u64; DropReason::COUNT];
        for t in &self.shared.threads {
            let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
            s.emc_hits += r(&t.emc_hits);
            s.emc_misses += r(&t.emc_misses);
            s.upcalls += r(&t.upcalls);
            s.controller += r(&t.controller);
            s.replies_sent += r(&t.replies_sent);
            s.packets += r(&t.packets);
            s.sleeps += r(&t.sleeps);
            s.busy_ns += r(&t.busy_ns);
            s.idle_ns += r(&t.idle_ns);
            s.asleep_ns += r(&t.asleep_ns);
            s.poll_nice.push(t.nice.load(Ordering::Relaxed));
            for (i, d) in t.drops.iter().enumerate() {
                drops[i] += r(d);
            }
        }
        s.drops = DropReason::ALL
            .iter()
            .map(|d| (d.name(), drops[*d as usize]))
            .collect();
        s.conntrack = lock(&self.shared.ct).len();
        s
    }

    /// Stops the poll threads and closes every port (AF_XDP ports detach
    /// their XDP programs when dropped).
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for (tx, waker, _) in &self.workers {
            let _ = tx.send(WorkerCmd::Stop);
            let _ = waker.wake();
        }
        for (_, _, h) in self.workers.drain(..) {
            let _ = h.join();
        }
        self.shared.ports.store(Arc::new(PortTable::default()));
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop_threads();
    }
}
