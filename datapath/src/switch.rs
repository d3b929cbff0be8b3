//! The switch: ports, poll threads, and the published pipeline version.
//!
//! [`Switch`] is the handle the management side (ferrovsd, tests) holds.
//! Flow edits are applied to a private copy of the pipeline and published
//! with one atomic pointer swap (`arc-swap`): poll threads pick the new
//! version up at their next batch and never wait for the writer. Port
//! changes are published the same way and handed to the poll threads over a
//! channel.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;
use crossbeam::channel::{unbounded, Sender};
use crossbeam::utils::CachePadded;
use flows::action::PortNo;
use flows::key::FlowKey;
use flows::mac_learning::MacTable;
use flows::pipeline::{ApplySummary, FlowMod, Pipeline, PipelineError, PortInfo, VlanMode};
use flows::xlate::{translate, Trace, XlateEnv, Xlation};

use crate::conntrack::ConnTrack;
use crate::extract::DropReason;
use crate::port::{Port, PortTx};
use crate::worker::{Worker, WorkerCmd};

/// Frames per batch.
pub const BATCH: usize = 32;

/// First internal port number used for underlay interfaces of tunnels;
/// they are not OpenFlow ports and do not appear in the pipeline.
pub const UNDERLAY_BASE: PortNo = 0xff00;

/// Port counters (updated once per batch by the poll threads).
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames received.
    pub rx_packets: AtomicU64,
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Frames received and dropped (any reason).
    pub rx_dropped: AtomicU64,
    /// Frames sent.
    pub tx_packets: AtomicU64,
    /// Bytes sent.
    pub tx_bytes: AtomicU64,
    /// Frames that could not be sent (ring full).
    pub tx_dropped: AtomicU64,
}

/// A snapshot of [`PortCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCountersSnapshot {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames received and dropped.
    pub rx_dropped: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames not sent.
    pub tx_dropped: u64,
}

impl PortCounters {
    /// Reads all counters.
    pub fn snapshot(&self) -> PortCountersSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PortCountersSnapshot {
            rx_packets: r(&self.rx_packets),
            rx_bytes: r(&self.rx_bytes),
            rx_dropped: r(&self.rx_dropped),
            tx_packets: r(&self.tx_packets),
            tx_bytes: r(&self.tx_bytes),
            tx_dropped: r(&self.tx_dropped),
        }
    }
}

/// VXLAN port settings (OVS `type=vxlan` options).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    /// Underlay interface the encapsulated frames go through.
    pub underlay: String,
    /// Local tunnel endpoint address (answered for ARP on the underlay).
    pub local_ip: Ipv4Addr,
    /// Local MAC on the underlay (the interface's own MAC by default).
    pub local_mac: [u8; 6],
    /// `options:remote_ip`; `None` = `remote_ip=flow` (taken from `tun_dst`).
    pub remote_ip: Option<Ipv4Addr>,
    /// `options:key`; `None` = `key=flow` (taken from `tun_id`).
    pub key: Option<u64>,
    /// UDP destination port (4789).
    pub udp_port: u16,
}

/// What kind of port, as the datapath sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRole {
    /// An ordinary port with its own rx/tx.
    Plain,
    /// A VXLAN tunnel port (virtual; sends through `underlay`).
    Vxlan {
        /// Settings.
        cfg: VxlanConfig,
        /// Internal number of the underlay port.
        underlay: PortNo,
    },
    /// An underlay interface owned by tunnels: VXLAN to `local_ip` is
    /// decapsulated, ARP for it answered, everything else dropped.
    Underlay {
        /// Local tunnel address.
        local_ip: Ipv4Addr,
        /// Local MAC.
        local_mac: [u8; 6],
        /// UDP port of VXLAN.
        udp_port: u16,
    },
}

/// One port as published to the poll threads.
pub struct PortState {
    /// Port number (OpenFlow number, or ≥ [`UNDERLAY_BASE`] for underlays).
    pub no: PortNo,
    /// Name.
    pub name: String,
    /// `afxdp`, `memory`, `vxlan`.
    pub kind: &'static str,
    /// Role.
    pub role: PortRole,
    /// Transmit half (none for tunnel ports).
    pub tx: Option<Mutex<Box<dyn PortTx>>>,
    /// Counters.
    pub counters: PortCounters,
}

impl std::fmt::Debug for PortState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortState")
            .field("no", &self.no)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("role", &self.role)
            .finish()
    }
}

/// All ports, sorted by number.
#[derive(Debug, Default)]
pub struct PortTable {
    /// Ports sorted by `no`.
    pub ports: Vec<Arc<PortState>>,
}

impl PortTable {
    /// Dense index of port `no`.
    #[inline]
    pub fn index(&self, no: PortNo) -> Option<usize> {
        self.ports.binary_search_by_key(&no, |p| p.no).ok()
    }
    /// Port `no`.
    pub fn get(&self, no: PortNo) -> Option<&Arc<PortState>> {
        self.index(no).map(|i| &self.ports[i])
    }
}

/// Per-thread counters, each on its own cache line.
#[derive(Debug, Default)]
pub struct ThreadStats {
    /// Flow-cache hits.
    pub emc_hits: AtomicU64,
    /// Flow-cache misses.
    pub emc_misses: AtomicU64,
    /// Translations (slow path).
    pub upcalls: AtomicU64,
    /// Packets punted to `controller`.
    pub controller: AtomicU64,
    /// Packets processed.
    pub packets: AtomicU64,
    /// Drops by reason (indexed by `DropReason as usize`).
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Poll rounds that went to sleep (idle back-off).
    pub sleeps: AtomicU64,
}

/// State shared by the management side and every poll thread.
#[derive(Debug)]
pub struct Shared {
    /// The current pipeline version.
    pub pipeline: ArcSwap<Pipeline>,
    /// The current port table.
    pub ports: ArcSwap<PortTable>,
    /// MAC learning (touched on the slow path only).
    pub macs: Mutex<MacTable>,
    /// `macs.generation()`, readable without the lock.
    pub mac_gen: AtomicU64,
    /// Connection tracker.
    pub ct: Mutex<ConnTrack>,
    /// Tunnel neighbours: remote IP -> MAC (learned from ARP on underlays).
    pub neigh: ArcSwap<HashMap<Ipv4Addr, [u8; 6]>>,
    /// Per poll thread counters.
    pub threads: Vec<CachePadded<ThreadStats>>,
    /// Set to stop the poll threads.
    pub stop: AtomicBool,
    epoch: Instant,
}

impl Shared {
    /// Milliseconds since the switch started (the datapath's clock).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

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
    /// Packets processed.
    pub packets: u64,
    /// Drops by reason name.
    pub drops: Vec<(&'static str, u64)>,
    /// Idle sleeps.
    pub sleeps: u64,
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
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            threads: 1,
            cores: Vec::new(),
            conntrack: Default::default(),
        }
    }
}

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
        let shared = Arc::new(Shared {
            pipeline: ArcSwap::from_pointee(Pipeline::new()),
            ports: ArcSwap::from_pointee(PortTable::default()),
            macs: Mutex::new(MacTable::default()),
            mac_gen: AtomicU64::new(0),
            ct: Mutex::new(ConnTrack::new(cfg.conntrack)),
            neigh: ArcSwap::from_pointee(HashMap::new()),
            threads: (0..n)
                .map(|_| CachePadded::new(ThreadStats::default()))
                .collect(),
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        let mut workers = Vec::new();
        for i in 0..n {
            let (tx, rx) = unbounded();
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), crate::worker::WAKE_TOKEN)?);
            let core = cfg.cores.get(i).copied();
            let sh = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ferrovs-poll{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        crate::worker::pin_to_core(c);
                    }
                    Worker::new(i, sh, rx).run(poll);
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

    /// Removes expired flows and conntrack entries, ages MAC entries.
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
            let mut m = lock(&self.shared.macs);
            m.expire(now);
            self.shared.mac_gen.store(m.generation(), Ordering::Release);
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
        let (rx, tx) = port.split();
        let state = Arc::new(PortState {
            no,
            name: name.clone(),
            kind,
            role: PortRole::Plain,
            tx: Some(Mutex::new(tx)),
            counters: PortCounters::default(),
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

    /// Translates `key` with a trace, without touching counters or the
    /// MAC table (`ferrovs-ctl trace`).
    pub fn trace(&self, key: &FlowKey) -> (Xlation, Trace) {
        let p = self.pipeline();
        let mut macs = lock(&self.shared.macs).clone();
        let mut env = XlateEnv {
            macs: &mut macs,
            now_ms: self.shared.now_ms(),
        };
        let mut trace = Trace::default();
        let x = translate(&p, key, &mut env, Some(&mut trace));
        (x, trace)
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
            s.packets += r(&t.packets);
            s.sleeps += r(&t.sleeps);
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

/// Locks a mutex, recovering the data if a thread panicked while holding
/// it (the switch keeps forwarding rather than cascading the panic).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
