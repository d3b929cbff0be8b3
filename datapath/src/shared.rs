//! State shared by the management side ([`crate::switch::Switch`]) and
//! every poll thread ([`crate::worker`]): the published pipeline and port
//! table, MAC learning, session affinity, conntrack, tunnel neighbours and per-thread
//! counters. Poll threads only read what is published here (one atomic
//! load per batch); the management side replaces it, never edits it in
//! place.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use crossbeam::utils::CachePadded;
use flows::action::PortNo;
use flows::affinity::AffinityTable;
use flows::mac_learning::MacTable;
use flows::pipeline::Pipeline;

use crate::conntrack::{ConnTrack, CtConfig};
use crate::extract::DropReason;
use crate::port::PortTx;

/// Frames per batch (a poll of one port). 64 rather than 32: under TCP
/// load it halves the transmit kicks per packet, measurably (about 5 %)
/// ahead of 32 with `bench/scripts/tcp-compare.sh`.
pub const BATCH: usize = 64;

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
    /// The kernel's counters below the port (AF_XDP sockets), if any.
    pub kernel: Option<Arc<dyn crate::port::KernelStats>>,
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
    /// Frames sent by the `arp_reply` and `reject` actions.
    pub replies_sent: AtomicU64,
    /// Packets processed.
    pub packets: AtomicU64,
    /// Drops by reason (indexed by `DropReason as usize`).
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Poll rounds that went to sleep (idle back-off).
    pub sleeps: AtomicU64,
    /// Nanoseconds in poll rounds that moved frames (OVS: processing
    /// cycles). Written only by the owning thread.
    pub busy_ns: AtomicU64,
    /// Nanoseconds in empty poll rounds and spinning (OVS: idle cycles).
    pub idle_ns: AtomicU64,
    /// Nanoseconds asleep: naps and waits for frames.
    pub asleep_ns: AtomicU64,
    /// The thread's niceness, as the kernel reports it once the thread
    /// has started (see [`crate::switch::SwitchConfig::poll_nice`]).
    pub nice: AtomicI32,
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
    /// Session affinity of select groups with `affinity_timeout` (touched
    /// on the slow path only; lock it after `macs` when holding both).
    pub affinity: Mutex<AffinityTable>,
    /// [`learned_generation`] of `macs` and `affinity`, readable without
    /// the locks: cached translations that depend on either table are
    /// dropped when it changes.
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

impl Shared {
    /// Fresh state with an empty pipeline and no ports, for `threads`
    /// poll threads.
    pub fn new(threads: usize, conntrack: CtConfig) -> Shared {
        Shared {
            pipeline: ArcSwap::from_pointee(Pipeline::new()),
            ports: ArcSwap::from_pointee(PortTable::default()),
            macs: Mutex::new(MacTable::default()),
            affinity: Mutex::new(AffinityTable::default()),
            mac_gen: AtomicU64::new(0),
            ct: Mutex::new(ConnTrack::new(conntrack)),
            neigh: ArcSwap::from_pointee(HashMap::new()),
            threads: (0..threads)
                .map(|_| CachePadded::new(ThreadStats::default()))
                .collect(),
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }
}

/// One generation for both learned tables: it changes whenever either
/// table's generation does (both only grow).
pub fn learned_generation(macs: &MacTable, affinity: &AffinityTable) -> u64 {
    macs.generation().wrapping_add(affinity.generation())
}

/// Locks a mutex, recovering the data if a thread panicked while holding
/// it (the switch keeps forwarding rather than cascading the panic).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
