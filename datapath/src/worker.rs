//! A poll thread: receives batches from its ports, looks each packet up in
//! its exact-match cache (translating on a miss), executes the datapath
//! actions, and sends the results out in per-port batches.
//!
//! Per packet nothing is allocated, logged or locked (conntrack aside, see
//! below): outputs are copied into per-destination staging arenas that are
//! reused across batches, and each destination's transmit lock is taken
//! once per batch. Conntrack takes its mutex per tracked packet; with one
//! poll thread it is never contended.
//!
//! When a full round over its ports finds nothing, the thread backs off:
//! it spins a little, then sleeps in `epoll` on the ports' AF_XDP sockets
//! (and a waker for management commands), so an idle node burns no core.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;
use flows::action::PortNo;
use flows::field::{ethertype, ipproto, Field};
use flows::key::FlowKey;
use flows::pipeline::Pipeline;
use flows::xlate::{translate, DpAction, ReplyKind, XlateDrop, XlateEnv};

use crate::conntrack::{CtInput, Tuple};
use crate::emc::{
    key_hash_meta, meta_is_zero, same_header, CachedFlow, Emc, Op, HEADER_WORDS, NO_FAST_OUT,
};
use crate::extract::{extract, DropReason, Layout};
use crate::packet;
use crate::port::{PortRx, MAX_FRAME};
use crate::reply;
use crate::shared::{
    learned_generation, lock, PortRole, PortState, PortTable, Shared, ThreadStats, VxlanConfig,
    BATCH,
};
use crate::tunnel;
use crate::txbatch::TxBatching;
use crate::wakepace::WakePacer;

/// mio token of the management waker.
pub const WAKE_TOKEN: mio::Token = mio::Token(usize::MAX);
/// Empty rounds before the thread sleeps.
const IDLE_SPINS: u32 = 2000;
/// Empty rounds between two yields of the CPU while spinning.
const YIELD_EVERY: u32 = 8;
/// Empty rounds before the first yield (some 25-50 µs): gaps shorter than
/// this, such as between a request and its answer, are polled through.
/// Yielding in them let other work on the core delay the answer: p99
/// round trips of 70-82 µs in some rounds, against 53-61 µs without.
const YIELD_AFTER: u32 = 512;
/// Empty rounds, each after a nap, before a napping thread sleeps until
/// a frame arrives.
const IDLE_NAPS: u32 = 64;
/// How much each nap grows while batches stay small.
const NAP_STEP: Duration = Duration::from_micros(1);
/// Timer slack of the poll threads, so their naps end on time.
const NAP_SLACK_NS: u64 = 1_000;
/// Longest sleep (also bounds how late timeouts are noticed).
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Sleep when some port cannot be waited on (in-memory ports).
const POLL_SLEEP: Duration = Duration::from_millis(1);
/// Minimum time between two ARP requests for the same tunnel remote.
pub const ARP_RETRY_MS: u64 = 200;
/// Recirculations allowed per packet.
const MAX_RECIRC: usize = 4;
/// Room kept in front of a frame in scratch space for pushes/encap.
const HEADROOM: usize = 128;
/// Frames handed to a port's transmit half per call when flushing.
const TX_CHUNK: usize = BATCH;

/// Commands from the management side.
pub enum WorkerCmd {
    /// Start polling a port.
    AddRx {
        /// Port number.
        no: PortNo,
        /// Its receive half.
        rx: Box<dyn PortRx>,
        /// Its published state.
        state: Arc<PortState>,
    },
    /// Stop polling a port (and drop its receive half).
    DelRx(PortNo),
    /// Exit.
    Stop,
}

impl std::fmt::Debug for WorkerCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerCmd::AddRx { no, .. } => write!(f, "AddRx({no})"),
            WorkerCmd::DelRx(no) => write!(f, "DelRx({no})"),
            WorkerCmd::Stop => write!(f, "Stop"),
        }
    }
}

struct RxPort {
    no: PortNo,
    rx: Box<dyn PortRx>,
    state: Arc<PortState>,
}

/// Frames staged for one destination during a batch.
///
/// `data` only grows (zero-filled once, when it does); `used` is how much
/// of it holds staged frames, so staging a frame never clears memory.
#[derive(Default, Debug)]
struct StageQ {
    data: Vec<u8>,
    used: usize,
    frames: Vec<(u32, u32)>,
    /// Received frames queued by reference: (batch index, offset, length),
    /// or, with offset [`WHOLE`], a run of `length` whole frames from the
    /// batch index on.
    refs: Vec<(u16, u16, u16)>,
    /// Whether to wait before this port's transmit wake-ups.
    pacer: WakePacer,
}

/// Offset marking a run of whole received frames in [`StageQ::refs`].
const WHOLE: u16 = u16::MAX;
/// No open run in [`Engine::stage_whole`].
const NO_RUN: u32 = u32::MAX;

impl StageQ {
    /// Room for one more frame of up to `MAX_FRAME + HEADROOM` bytes.
    #[inline]
    fn room(&mut self) -> &mut [u8] {
        let need = self.used + MAX_FRAME + HEADROOM;
        if self.data.len() < need {
            self.grow(need);
        }
        &mut self.data[self.used..need]
    }
    #[cold]
    fn grow(&mut self, need: usize) {
        self.data.resize(need, 0);
    }
    /// Records the `n` bytes just written at the start of [`StageQ::room`].
    #[inline]
    fn commit(&mut self, n: usize) {
        self.frames.push((self.used as u32, n as u32));
        self.used += n;
    }
    /// Frames queued by reference.
    fn n_refs(&self) -> usize {
        self.refs
            .iter()
            .map(|&(_, off, len)| if off == WHOLE { len as usize } else { 1 })
            .sum()
    }
}

/// The previous packet of a batch, when it hit a cache entry with a single
/// output: a packet with the same header words (from the same plain port)
/// hits the same slot, found without hashing. The first packet of such a
/// run is credited and staged as usual; the `extra` ones after it only
/// counted here, then credited to the slot and appended to the engine's
/// open run of whole frames at once ([`Engine::commit_last`]).
#[derive(Clone, Copy, Debug)]
struct LastHit {
    words: [u64; HEADER_WORDS],
    slot: usize,
    fast: u32,
    extra: u16,
    extra_bytes: u64,
}

/// Frames gathered for one call to [`crate::port::PortTx::send_batch`].
struct TxGather<'a> {
    buf: [&'a [u8]; TX_CHUNK],
    k: usize,
    sent: u64,
    bytes: u64,
    failed: u64,
}

impl<'a> TxGather<'a> {
    #[inline(always)]
    fn push(&mut self, tx: &mut dyn crate::port::PortTx, f: &'a [u8]) {
        if self.k >= TX_CHUNK {
            self.send(tx);
        }
        if let Some(b) = self.buf.get_mut(self.k) {
            *b = f;
            self.k += 1;
        }
    }
    fn send(&mut self, tx: &mut dyn crate::port::PortTx) {
        let chunk = &self.buf[..self.k.min(TX_CHUNK)];
        if chunk.is_empty() {
            return;
        }
        let (n, b) = tx.send_batch(chunk);
        self.sent += n as u64;
        self.bytes += b;
        self.failed += (chunk.len() - n.min(chunk.len())) as u64;
        self.k = 0;
    }
}

/// Everything a poll thread needs except its receive ports, so packet
/// processing can borrow it while a port's batch is borrowed.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    id: usize,
    emc: Emc,
    pipeline: Arc<Pipeline>,
    ports: Arc<PortTable>,
    stage: Vec<StageQ>,
    /// Indices of `stage` queues that hold something this batch.
    staged: Vec<u32>,
    /// Open run of whole received frames `run_start..run_end` for the
    /// port at index `run_port` ([`NO_RUN`]: none), not yet in `stage`.
    run_port: u32,
    run_start: u16,
    run_end: u16,
    mac_gen: u64,
    now_ms: u64,
    /// When this thread last asked ARP for a tunnel remote (rate limit).
    arp_asked: std::collections::HashMap<Ipv4Addr, u64>,
    // local counters, published once per batch
    packets: u64,
    upcalls: u64,
    controller: u64,
    /// Frames sent by `arp_reply`/`reject`.
    replies: u64,
    drops: [u64; DropReason::COUNT],
    /// Some of `drops` is not zero.
    dropped: bool,
    /// Output may wait for a later wake-up ([`crate::txbatch`]).
    tx_hold: bool,
    /// Port-table indices with frames waiting for a wake-up.
    held_ports: Vec<u32>,
    /// Frames left waiting since the last [`Engine::take_held`].
    held_frames: usize,
}

/// A packet being processed: in its receive buffer, or moved to scratch
/// space once its size must change.
struct Pkt<'a> {
    rx: &'a mut [u8],
    /// Index of the frame in its receive batch, and how far `rx` has been
    /// advanced into it (tunnel decap, VLAN pop), for sending by reference.
    rx_idx: u16,
    rx_off: u16,
    scratch: &'a mut [u8],
    in_scratch: bool,
    start: usize,
    len: usize,
}

impl<'a> Pkt<'a> {
    /// A packet still in its receive buffer (frame `rx_idx` of the batch).
    #[inline(always)]
    fn new(frame: &'a mut [u8], rx_idx: u16, scratch: &'a mut [u8]) -> Self {
        Pkt {
            len: frame.len(),
            rx: frame,
            rx_idx,
            rx_off: 0,
            scratch,
            in_scratch: false,
            start: 0,
        }
    }
    #[inline]
    fn bytes(&self) -> &[u8] {
        if self.in_scratch {
            &self.scratch[self.start..self.start + self.len]
        } else {
            &self.rx[..self.len]
        }
    }
    #[inline]
    fn bytes_mut(&mut self) -> &mut [u8] {
        if self.in_scratch {
            &mut self.scratch[self.start..self.start + self.len]
        } else {
            &mut self.rx[..self.len]
        }
    }
    /// Moves the frame to scratch space with [`HEADROOM`] in front.
    fn move_to_scratch(&mut self) -> bool {
        if self.in_scratch {
            return true;
        }
        if HEADROOM + self.len > self.scratch.len() {
            return false;
        }
        self.scratch[HEADROOM..HEADROOM + self.len].copy_from_slice(&self.rx[..self.len]);
        self.start = HEADROOM;
        self.in_scratch = true;
        true
    }
}

impl Engine {
    /// An engine for thread `id` (also used directly by benchmarks).
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        let pipeline = shared.pipeline.load_full();
        let ports = shared.ports.load_full();
        Engine {
            shared,
            id,
            emc: Emc::new(),
            pipeline,
            ports,
            stage: Vec::new(),
            staged: Vec::with_capacity(64),
            run_port: NO_RUN,
            run_start: 0,
            run_end: 0,
            mac_gen: 0,
            now_ms: 0,
            arp_asked: std::collections::HashMap::new(),
            packets: 0,
            upcalls: 0,
            controller: 0,
            replies: 0,
            drops: [0; DropReason::COUNT],
            dropped: false,
            tx_hold: false,
            held_ports: Vec::with_capacity(64),
            held_frames: 0,
        }
    }

    /// Picks up the newest pipeline and port table; call once per batch.
    #[inline]
    pub fn refresh(&mut self) {
        self.close_run();
        let p = self.shared.pipeline.load();
        if !Arc::ptr_eq(&p, &self.pipeline) {
            self.pipeline = arc_swap::Guard::into_inner(p);
        }
        let pt = self.shared.ports.load();
        if !Arc::ptr_eq(&pt, &self.ports) {
            // Held frames are noted by index into the old table.
            self.wake_held();
            self.ports = arc_swap::Guard::into_inner(pt);
            // Cached actions hold port-table indices.
            self.emc.clear(self.now_ms);
        }
        if self.stage.len() != self.ports.ports.len() {
            self.stage
                .resize_with(self.ports.ports.len(), StageQ::default);
        }
        self.mac_gen = self.shared.mac_gen.load(Ordering::Acquire);
        self.now_ms = self.shared.now_ms();
        self.emc
            .sync(self.pipeline.version, self.mac_gen, self.now_ms);
    }

    #[inline]
    fn drop_pkt(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
        self.dropped = true;
    }

    /// Processes one received frame from port `in_port`. `scratch` must be
    /// at least `MAX_FRAME + HEADROOM` bytes.
    #[inline]
    pub fn process(
        &mut self,
        in_port: &PortState,
        rx_idx: u16,
        frame: &mut [u8],
        scratch: &mut [u8],
    ) {
        self.packets += 1;
        let mut last = None;
        self.process_one(in_port, rx_idx, frame, scratch, &mut last);
        self.commit_last(&mut last);
    }

    /// [`Engine::process`] without counting the packet (the caller counts
    /// a batch at once).
    #[inline(always)]
    fn process_one(
        &mut self,
        in_port: &PortState,
        rx_idx: u16,
        frame: &mut [u8],
        scratch: &mut [u8],
        last: &mut Option<LastHit>,
    ) {
        if !matches!(in_port.role, PortRole::Plain) {
            self.commit_last(last);
            return self.process_tunnel(in_port, rx_idx, frame, scratch);
        }
        // Straight from a plain port: the key's tunnel, metadata and
        // register words are zero, so only its header words are hashed
        // and compared.
        let mut key = FlowKey::ZERO;
        let layout = match extract(frame, in_port.no, &mut key) {
            Ok(l) => l,
            Err(r) => {
                self.commit_last(last);
                return self.drop_pkt(r);
            }
        };
        let len = frame.len();
        // A run of packets of one flow: same slot as the previous packet.
        if let Some(l) = last {
            if same_header(&key, &l.words) {
                l.extra += 1;
                l.extra_bytes += len as u64;
                return;
            }
        }
        self.commit_last(last);
        let hash = key_hash_meta(&key, true);
        let hit = self.emc.lookup_synced(&key, true, hash, len as u64);
        if let Some((slot, fast)) = hit {
            if fast != NO_FAST_OUT {
                let mut words = [0; HEADER_WORDS];
                words.copy_from_slice(&key.w[..HEADER_WORDS]);
                *last = Some(LastHit {
                    words,
                    slot,
                    fast,
                    extra: 0,
                    extra_bytes: 0,
                });
                self.stage_whole(fast, rx_idx);
                return;
            }
        }
        let mut pkt = Pkt::new(frame, rx_idx, scratch);
        self.run(&mut key, layout, &mut pkt, true, Some((hash, hit)));
    }

    /// [`Engine::process_one`] for a frame from an underlay port.
    #[inline(never)]
    fn process_tunnel(
        &mut self,
        in_port: &PortState,
        rx_idx: u16,
        frame: &mut [u8],
        scratch: &mut [u8],
    ) {
        let mut key = FlowKey::ZERO;
        let mut pkt = Pkt::new(frame, rx_idx, scratch);
        let mut port_no = in_port.no;
        if let PortRole::Underlay {
            local_ip,
            local_mac,
            udp_port,
        } = in_port.role
        {
            match self.underlay_rx(in_port, &mut pkt, local_ip, local_mac, udp_port, &mut key) {
                Some(vx) => port_no = vx,
                None => return,
            }
        }
        let layout = match extract(pkt.bytes(), port_no, &mut key) {
            Ok(l) => l,
            Err(r) => return self.drop_pkt(r),
        };
        let meta_zero = port_no == in_port.no;
        self.run(&mut key, layout, &mut pkt, meta_zero, None);
    }

    /// Tunnel endpoint on an underlay port: decapsulates VXLAN for us (and
    /// returns the VXLAN port it arrived on, with tunnel fields in `key`),
    /// answers ARP for the local address, learns neighbours, drops the rest.
    fn underlay_rx(
        &mut self,
        under: &PortState,
        pkt: &mut Pkt<'_>,
        local_ip: Ipv4Addr,
        local_mac: [u8; 6],
        udp_port: u16,
        key: &mut FlowKey,
    ) -> Option<PortNo> {
        if let Some(d) = crate::vxlan::decap(pkt.bytes(), local_ip, udp_port) {
            tunnel::learn_neighbour(&self.shared, d.outer_src, d.outer_src_mac);
            // Which VXLAN port: one on this underlay whose remote matches
            // (or that takes any remote).
            let vx = self.ports.ports.iter().find(|p| match &p.role {
                PortRole::Vxlan { cfg, underlay } => {
                    *underlay == under.no
                        && cfg.remote_ip.is_none_or(|r| r == d.outer_src)
                        && cfg.key.is_none_or(|k| k == d.vni as u64)
                }
                _ => false,
            });
            let Some(vx) = vx else {
                self.drop_pkt(DropReason::TunnelNoPort);
                return None;
            };
            vx.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
            vx.counters
                .rx_bytes
                .fetch_add((pkt.len - d.inner_offset) as u64, Ordering::Relaxed);
            key.set(Field::TunId, d.vni as u64);
            key.set(Field::TunSrc, u32::from(d.outer_src) as u64);
            key.set(Field::TunDst, u32::from(d.outer_dst) as u64);
            pkt.start += d.inner_offset;
            if !pkt.in_scratch {
                // Receive buffers are sliced from the front instead.
                let rx = std::mem::take(&mut pkt.rx);
                pkt.rx = &mut rx[d.inner_offset..];
                pkt.rx_off += d.inner_offset as u16;
                pkt.start = 0;
            }
            pkt.len -= d.inner_offset;
            return Some(vx.no);
        }
        let reply = tunnel::handle_arp(&self.shared, pkt.bytes_mut(), local_ip, local_mac);
        if reply {
            let f = pkt.bytes().len();
            self.stage_frame(under.no, |out| {
                out[..f].copy_from_slice(&pkt.bytes()[..f]);
                f
            });
        } else {
            self.drop_pkt(DropReason::NotForTunnel);
        }
        None
    }

    #[inline(always)]
    fn run(
        &mut self,
        key: &mut FlowKey,
        mut layout: Layout,
        pkt: &mut Pkt<'_>,
        mut meta_zero: bool,
        mut first: Option<(u32, Option<(usize, u32)>)>,
    ) {
        let mut recircs = 0;
        'recirc: loop {
            let key: &mut FlowKey = &mut *key;
            let bytes = pkt.len as u64;
            let (hash, hit) = match first.take() {
                Some(done) => done,
                None => {
                    let hash = key_hash_meta(key, meta_zero);
                    let hit = self.emc.lookup_synced(key, meta_zero, hash, bytes);
                    (hash, hit)
                }
            };
            let slot = match hit {
                Some((i, fast)) => {
                    if fast != NO_FAST_OUT && !pkt.in_scratch {
                        self.stage_ref(fast as usize, pkt.rx_idx, pkt.rx_off, pkt.len);
                        return;
                    }
                    i
                }
                None => {
                    let f = self.upcall(key);
                    self.emc.insert(key, hash, f, bytes, self.now_ms)
                }
            };
            // The translation stays in its cache slot while its actions run
            // (nothing below inserts), so it is borrowed afresh per action
            // instead of holding a reference count per packet.
            let Some(flow) = self.emc.flow_at(slot) else {
                return;
            };
            let n_ops = flow.ops.len();
            if n_ops == 0 {
                let r = match flow.x.drop {
                    Some(XlateDrop::TableMiss) => DropReason::NoFlow,
                    Some(XlateDrop::TooDeep) => DropReason::TooDeep,
                    Some(XlateDrop::VlanNotAllowed) => DropReason::VlanNotAllowed,
                    Some(XlateDrop::CannotReply) => DropReason::NoReply,
                    None => DropReason::ActionDrop,
                };
                return self.drop_pkt(r);
            }
            let mut tun = (0u64, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED);
            for oi in 0..n_ops {
                let Some(flow) = self.emc.flow_at(slot) else {
                    break;
                };
                let a = match flow.ops.get(oi) {
                    Some(Op::Out { idx, by_ref }) => {
                        let (idx, by_ref) = (*idx as usize, *by_ref);
                        if by_ref && !pkt.in_scratch {
                            self.stage_ref(idx, pkt.rx_idx, pkt.rx_off, pkt.len);
                        } else {
                            let b = pkt.bytes();
                            self.stage_at(idx, |out| {
                                out[..b.len()].copy_from_slice(b);
                                b.len()
                            });
                        }
                        continue;
                    }
                    Some(Op::Act(ai)) => match flow.x.actions.get(*ai as usize) {
                        Some(a) => a,
                        None => break,
                    },
                    None => break,
                };
                match a {
                    DpAction::Output(p) => {
                        let p = *p;
                        self.output(p, pkt, key, tun)
                    }
                    DpAction::SetField(f, v) => {
                        packet::set_field(pkt.bytes_mut(), &layout, *f, *v);
                    }
                    DpAction::PushVlan(tci) => {
                        let tci = *tci;
                        if !pkt.move_to_scratch() || pkt.start < 4 {
                            return self.drop_pkt(DropReason::TooBig);
                        }
                        pkt.start -= 4;
                        pkt.len += 4;
                        packet::push_vlan_front(pkt.bytes_mut(), &mut layout, tci);
                    }
                    DpAction::PopVlan => {
                        if packet::pop_vlan_front(pkt.bytes_mut(), &mut layout) {
                            if pkt.in_scratch {
                                pkt.start += 4;
                            } else {
                                let rx = std::mem::take(&mut pkt.rx);
                                pkt.rx = &mut rx[4..];
                                pkt.rx_off += 4;
                            }
                            pkt.len -= 4;
                        }
                    }
                    DpAction::SetVlan(tci) => {
                        packet::set_vlan_tci(pkt.bytes_mut(), &layout, *tci);
                    }
                    DpAction::SetTunnel { id, src, dst } => tun = (*id, *src, *dst),
                    DpAction::DecTtl => {
                        if !packet::dec_ttl(pkt.bytes_mut(), &layout) {
                            return self.drop_pkt(DropReason::TtlExpired);
                        }
                    }
                    DpAction::Controller => self.controller += 1,
                    DpAction::Reply(kind) => {
                        let kind = *kind;
                        self.reply(kind, pkt, &layout, key);
                    }
                    DpAction::Ct { args, frozen } => {
                        let (args, frozen) = (*args, **frozen);
                        let state = self.conntrack(&args, pkt, &layout, key);
                        let Some(t) = args.table else { continue };
                        recircs += 1;
                        if recircs > MAX_RECIRC {
                            return self.drop_pkt(DropReason::TooDeep);
                        }
                        *key = frozen;
                        match extract(pkt.bytes(), key.get(Field::InPort) as PortNo, key) {
                            Ok(l) => layout = l,
                            Err(r) => return self.drop_pkt(r),
                        }
                        key.set(Field::CtState, state as u64);
                        key.set(Field::CtZone, args.zone as u64);
                        key.set(Field::RecircId, t as u64 + 1);
                        meta_zero = meta_is_zero(key);
                        continue 'recirc;
                    }
                }
            }
            return;
        }
    }

    /// Runs the connection tracker on the packet, applies NAT, and returns
    /// the `ct_state` bits.
    fn conntrack(
        &mut self,
        args: &flows::action::CtArgs,
        pkt: &mut Pkt<'_>,
        layout: &Layout,
        key: &FlowKey,
    ) -> u16 {
        let dl_type = key.get(Field::DlType) as u16;
        if dl_type != ethertype::IPV4 {
            return flows::key::ct_state::INV as u16 | flows::key::ct_state::TRK as u16;
        }
        let Some(input) = ct_input(key, layout, pkt.bytes(), args) else {
            return (flows::key::ct_state::INV | flows::key::ct_state::TRK) as u16;
        };
        let out = lock(&self.shared.ct).execute(&input, self.now_ms);
        if let Some(t) = out.rewrite {
            let b = pkt.bytes_mut();
            let orig = input.tuple;
            if t.src != orig.src {
                packet::set_field(b, layout, Field::NwSrc, u32::from(t.src) as u64);
            }
            if t.dst != orig.dst {
                packet::set_field(b, layout, Field::NwDst, u32::from(t.dst) as u64);
            }
            if orig.proto == ipproto::ICMP {
                if t.sport != orig.sport {
                    packet::set_icmp_id(b, layout, t.sport);
                }
            } else {
                if t.sport != orig.sport {
                    packet::set_field(b, layout, Field::TpSrc, t.sport as u64);
                }
                if t.dport != orig.dport {
                    packet::set_field(b, layout, Field::TpDst, t.dport as u64);
                }
            }
        }
        if let Some(t) = out.rewrite_inner {
            // A related ICMP error: the embedded packet is NATed too.
            packet::set_icmp_inner(pkt.bytes_mut(), layout, (t.src, t.dst, t.sport, t.dport));
        }
        out.state
    }

    /// Queues the received frame itself (no copy) for the port at index
    /// `i`; it is sent at the end of the batch, before the batch's buffers
    /// are given back.
    #[inline]
    fn stage_ref(&mut self, i: usize, rx_idx: u16, rx_off: u16, len: usize) {
        self.close_run();
        if let Some(q) = self.stage.get_mut(i) {
            if q.refs.is_empty() && q.frames.is_empty() {
                self.staged.push(i as u32);
            }
            q.refs.push((rx_idx, rx_off, len as u16));
        }
    }

    /// [`Engine::stage_ref`] for received frame `rx_idx` whole and
    /// unchanged. Consecutive frames for the same port extend the open run
    /// of whole frames, kept in the engine until something else is staged.
    #[inline(always)]
    fn stage_whole(&mut self, i: u32, rx_idx: u16) {
        if i == self.run_port && rx_idx == self.run_end {
            self.run_end += 1;
        } else {
            self.open_run(i, rx_idx);
        }
    }

    #[inline(never)]
    fn open_run(&mut self, i: u32, rx_idx: u16) {
        self.close_run();
        self.run_port = i;
        self.run_start = rx_idx;
        self.run_end = rx_idx.saturating_add(1);
    }

    /// Credits and stages the packets counted in `last` (see [`LastHit`]);
    /// call before anything else is staged or the cache changes.
    #[inline(always)]
    fn commit_last(&mut self, last: &mut Option<LastHit>) {
        if last.is_some() {
            self.commit_last_run(last);
        }
    }

    #[inline(never)]
    fn commit_last_run(&mut self, last: &mut Option<LastHit>) {
        if let Some(l) = last.take() {
            if l.extra > 0 {
                self.emc.credit_hits(l.slot, l.extra as u64, l.extra_bytes);
                // The run's first packet opened or extended the engine's
                // open run, and nothing was staged since.
                debug_assert_eq!(self.run_port, l.fast);
                self.run_end = self.run_end.saturating_add(l.extra);
            }
        }
    }

    /// Queues the open run of whole frames (see [`Engine::stage_whole`]);
    /// call before staging anything else, so each port's frames keep their
    /// order.
    #[inline]
    fn close_run(&mut self) {
        if self.run_port == NO_RUN {
            return;
        }
        let i = self.run_port as usize;
        self.run_port = NO_RUN;
        if let Some(q) = self.stage.get_mut(i) {
            if q.refs.is_empty() && q.frames.is_empty() {
                self.staged.push(i as u32);
            }
            q.refs
                .push((self.run_start, WHOLE, self.run_end - self.run_start));
        }
    }

    fn upcall(&mut self, key: &FlowKey) -> Arc<CachedFlow> {
        self.upcalls += 1;
        let mut macs = lock(&self.shared.macs);
        let mut affinity = lock(&self.shared.affinity);
        let mut env = XlateEnv {
            macs: &mut macs,
            affinity: &mut affinity,
            now_ms: self.now_ms,
        };
        let x = translate(&self.pipeline, key, &mut env, None);
        let gen = learned_generation(&macs, &affinity);
        drop(affinity);
        drop(macs);
        if gen != self.mac_gen {
            self.shared.mac_gen.store(gen, Ordering::Release);
            self.mac_gen = gen;
        }
        let ops = compile_ops(&x.actions, &self.ports);
        let fast_out = match ops.as_slice() {
            [Op::Out { idx, by_ref: true }] => *idx,
            _ => NO_FAST_OUT,
        };
        Arc::new(CachedFlow {
            x,
            version: self.pipeline.version,
            mac_gen: gen,
            ops,
            fast_out,
        })
    }

    /// Stages a frame for port `no`: `fill` writes it into the given
    /// buffer and returns its length. The buffer holds stale bytes of
    /// earlier frames, so `fill` must write every byte it counts.
    #[inline]
    fn stage_frame(&mut self, no: PortNo, fill: impl FnOnce(&mut [u8]) -> usize) -> bool {
        let Some(i) = self.ports.index(no) else {
            self.drop_pkt(DropReason::NoSuchPort);
            return false;
        };
        self.stage_at(i, fill)
    }

    /// [`Engine::stage_frame`] for the port at dense index `i`.
    #[inline]
    fn stage_at(&mut self, i: usize, fill: impl FnOnce(&mut [u8]) -> usize) -> bool {
        self.close_run();
        let Some(q) = self.stage.get_mut(i) else {
            return false;
        };
        if q.refs.is_empty() && q.frames.is_empty() {
            self.staged.push(i as u32);
        }
        let n = fill(q.room());
        if n == 0 {
            return false;
        }
        q.commit(n);
        if q.frames.len() >= 2 * BATCH {
            self.flush_one(i, None);
        }
        true
    }

    #[inline]
    fn output(&mut self, no: PortNo, pkt: &Pkt<'_>, key: &FlowKey, tun: (u64, Ipv4Addr, Ipv4Addr)) {
        let Some(i) = self.ports.index(no) else {
            return self.drop_pkt(DropReason::NoSuchPort);
        };
        if matches!(self.ports.ports[i].role, PortRole::Vxlan { .. }) {
            let port = self.ports.ports[i].clone();
            return self.output_tunnel(&port, pkt.bytes(), key, tun);
        }
        let b = pkt.bytes();
        self.stage_at(i, |out| {
            out[..b.len()].copy_from_slice(b);
            b.len()
        });
    }

    /// Output to a VXLAN port: encapsulates onto its underlay.
    #[inline(never)]
    fn output_tunnel(
        &mut self,
        port: &PortState,
        inner: &[u8],
        key: &FlowKey,
        tun: (u64, Ipv4Addr, Ipv4Addr),
    ) {
        match &port.role {
            PortRole::Vxlan { cfg, underlay } => {
                let remote = if tun.2.is_unspecified() {
                    cfg.remote_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
                } else {
                    tun.2
                };
                let vni = cfg.key.unwrap_or(tun.0);
                if remote.is_unspecified() {
                    return self.drop_pkt(DropReason::TunnelNoRoute);
                }
                let Some(mac) = self.shared.neigh.load().get(&remote).copied() else {
                    self.ask_neighbour(*underlay, cfg, remote);
                    return self.drop_pkt(DropReason::TunnelNoRoute);
                };
                let ep = crate::vxlan::TunnelEndpoint {
                    local_ip: cfg.local_ip,
                    local_mac: cfg.local_mac,
                    udp_port: cfg.udp_port,
                };
                let hash = crate::emc::key_hash(key);
                let mut err = None;
                self.stage_frame(*underlay, |out| {
                    match crate::vxlan::encap(inner, out, &ep, remote, mac, vni as u32, hash) {
                        Ok(n) => n,
                        Err(e) => {
                            err = Some(e);
                            0
                        }
                    }
                });
                match err {
                    Some(e) => self.drop_pkt(e),
                    None => {
                        port.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
                        port.counters
                            .tx_bytes
                            .fetch_add(inner.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            _ => {
                self.stage_frame(port.no, |out| {
                    out[..inner.len()].copy_from_slice(inner);
                    inner.len()
                });
            }
        }
    }

    /// Executes [`DpAction::Reply`]: builds the answer to the packet and
    /// sends it out of the packet's ingress port (through the tunnel it
    /// came from, for a VXLAN port), or counts [`DropReason::NoReply`].
    #[inline(never)]
    fn reply(&mut self, kind: ReplyKind, pkt: &Pkt<'_>, layout: &Layout, key: &FlowKey) {
        let no = key.get(Field::InPort) as PortNo;
        let Some(i) = self.ports.index(no) else {
            return self.drop_pkt(DropReason::NoSuchPort);
        };
        let frame = pkt.bytes();
        if matches!(self.ports.ports[i].role, PortRole::Vxlan { .. }) {
            let mut buf = [0u8; reply::MAX_REPLY];
            let Some(n) = reply::build(kind, frame, layout, &mut buf) else {
                return self.drop_pkt(DropReason::NoReply);
            };
            // Back to the endpoint it came from, in the same VNI.
            let tun = (
                key.get(Field::TunId),
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::from(key.get(Field::TunSrc) as u32),
            );
            let port = self.ports.ports[i].clone();
            self.replies += 1;
            return self.output_tunnel(&port, &buf[..n], key, tun);
        }
        let mut built = false;
        self.stage_at(i, |out| match reply::build(kind, frame, layout, out) {
            Some(n) => {
                built = true;
                n
            }
            None => 0,
        });
        if built {
            self.replies += 1;
        } else {
            self.drop_pkt(DropReason::NoReply);
        }
    }

    /// Broadcasts an ARP request for tunnel remote `remote` out of
    /// underlay port `underlay`, at most once per [`ARP_RETRY_MS`].
    fn ask_neighbour(&mut self, underlay: PortNo, cfg: &VxlanConfig, remote: Ipv4Addr) {
        let now = self.now_ms;
        if let Some(&t) = self.arp_asked.get(&remote) {
            if now.saturating_sub(t) < ARP_RETRY_MS {
                return;
            }
        }
        if self.arp_asked.len() > 4096 {
            self.arp_asked.clear();
        }
        self.arp_asked.insert(remote, now);
        self.stage_frame(underlay, |out| tunnel::build_arp_request(out, cfg, remote));
    }

    fn flush_one(&mut self, i: usize, rx: Option<&[&[u8]]>) {
        let q = &mut self.stage[i];
        if q.frames.is_empty() && (q.refs.is_empty() || rx.is_none()) {
            return;
        }
        let port = &self.ports.ports[i];
        let (sent, bytes, failed, wait);
        if let Some(tx) = &port.tx {
            let mut tx = lock(tx);
            // The common case, one run of whole received frames, is sent
            // straight from the batch.
            let direct = match (rx, q.frames.is_empty(), q.refs.as_slice()) {
                (Some(rx), true, &[(idx, WHOLE, len)]) => {
                    rx.get(idx as usize..idx as usize + len as usize)
                }
                _ => None,
            };
            if let Some(run) = direct {
                let (n, b) = tx.send_batch(run);
                (sent, bytes) = (n as u64, b);
                failed = (run.len() - n.min(run.len())) as u64;
                q.refs.clear();
                q.frames.clear();
                q.used = 0;
                let wait = finish(&mut **tx, self.tx_hold, &mut q.pacer);
                drop(tx);
                self.note_held(i, wait, sent);
                return self.count_tx(i, sent, bytes, failed);
            }
            // Otherwise slices of everything to send, handed over a chunk
            // at a time: one call to the port per chunk, not per frame.
            let mut g = TxGather {
                buf: [&[]; TX_CHUNK],
                k: 0,
                sent: 0,
                bytes: 0,
                failed: 0,
            };
            let tx: &mut dyn crate::port::PortTx = &mut **tx;
            let data = &q.data;
            for chunk in q.frames.chunks(TX_CHUNK) {
                for (b, &(s, n)) in g.buf.iter_mut().zip(chunk) {
                    *b = &data[s as usize..(s + n) as usize];
                }
                g.k = chunk.len();
                g.send(tx);
            }
            if let Some(rx) = rx {
                for &(idx, off, len) in &q.refs {
                    let (idx, off, len) = (idx as usize, off, len as usize);
                    if off == WHOLE {
                        let Some(run) = rx.get(idx..idx + len) else {
                            continue;
                        };
                        if let Some(room) = g.buf.get_mut(g.k..g.k + len) {
                            for (b, f) in room.iter_mut().zip(run) {
                                *b = f;
                            }
                            g.k += len;
                            continue;
                        }
                        for f in run {
                            g.push(tx, f);
                        }
                    } else {
                        let off = off as usize;
                        if let Some(f) = rx.get(idx).and_then(|f| f.get(off..off + len)) {
                            g.push(tx, f);
                        }
                    }
                }
            }
            g.send(tx);
            (sent, bytes, failed) = (g.sent, g.bytes, g.failed);
            if rx.is_some() {
                q.refs.clear();
            }
            wait = finish(tx, self.tx_hold, &mut q.pacer);
        } else {
            (sent, bytes) = (0, 0);
            failed = (q.frames.len() + q.n_refs()) as u64;
            q.refs.clear();
            wait = false;
        }
        q.frames.clear();
        q.used = 0;
        self.note_held(i, wait, sent);
        self.count_tx(i, sent, bytes, failed);
    }

    /// Notes that the port at index `i` holds `sent` more frames, if `wait`.
    #[inline]
    fn note_held(&mut self, i: usize, wait: bool, sent: u64) {
        if !wait {
            return;
        }
        self.held_frames += sent as usize;
        let i = i as u32;
        if !self.held_ports.contains(&i) {
            self.held_ports.push(i);
        }
    }

    /// Lets the output of the batches that follow wait for a later
    /// [`Engine::wake_held`] (true) or sends it at once (false).
    #[inline]
    pub fn hold_output(&mut self, hold: bool) {
        self.tx_hold = hold;
    }

    /// Frames left waiting since the last call.
    #[inline]
    pub fn take_held(&mut self) -> usize {
        std::mem::take(&mut self.held_frames)
    }

    /// Wakes every port holding frames, so they are sent now.
    pub fn wake_held(&mut self) {
        for i in self.held_ports.drain(..) {
            if let Some(tx) = self.ports.ports.get(i as usize).and_then(|p| p.tx.as_ref()) {
                lock(tx).flush();
            }
        }
    }

    /// Publishes what [`Engine::flush_one`] sent to the port at index `i`.
    #[inline]
    fn count_tx(&mut self, i: usize, sent: u64, bytes: u64, failed: u64) {
        let c = &self.ports.ports[i].counters;
        c.tx_packets.fetch_add(sent, Ordering::Relaxed);
        c.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        if failed > 0 {
            c.tx_dropped.fetch_add(failed, Ordering::Relaxed);
            self.drops[DropReason::TxFull as usize] += failed;
            self.dropped = true;
        }
    }

    /// Sends everything staged (frames queued by reference are read from
    /// `rx`, the port the batch came from) and publishes counters; call
    /// after a batch, before giving `rx`'s buffers back.
    pub fn flush(&mut self, rx: Option<&mut (dyn PortRx + 'static)>) {
        let mut frames: [&mut [u8]; BATCH] = std::array::from_fn(|_| <&mut [u8]>::default());
        match rx {
            Some(rx) => {
                let n = rx.frames_mut(&mut frames);
                let frames = frames.map(|f| -> &[u8] { f });
                self.flush_frames(Some(&frames[..n]));
            }
            None => self.flush_frames(None),
        }
    }

    /// [`Engine::flush`] with the batch's frames already in hand.
    fn flush_frames(&mut self, rx: Option<&[&[u8]]>) {
        self.close_run();
        for k in 0..self.staged.len() {
            let i = self.staged[k] as usize;
            self.flush_one(i, rx);
        }
        self.staged.clear();
        self.emc.flush_stats(self.now_ms);
        let t = &self.shared.threads[self.id];
        let add = |a: &std::sync::atomic::AtomicU64, v: &mut u64| {
            if *v != 0 {
                a.fetch_add(*v, Ordering::Relaxed);
                *v = 0;
            }
        };
        add(&t.packets, &mut self.packets);
        add(&t.upcalls, &mut self.upcalls);
        add(&t.controller, &mut self.controller);
        add(&t.replies_sent, &mut self.replies);
        let mut h = std::mem::take(&mut self.emc.hits);
        add(&t.emc_hits, &mut h);
        let mut m = std::mem::take(&mut self.emc.misses);
        add(&t.emc_misses, &mut m);
        if std::mem::take(&mut self.dropped) {
            for (a, d) in t.drops.iter().zip(self.drops.iter_mut()) {
                add(a, d);
            }
        }
    }

    /// Receives and processes one batch from `rx` (port `state`): every
    /// frame through the cache and actions, then everything sent. Returns
    /// the number of frames. The caller gives the buffers back
    /// ([`PortRx::release`]).
    #[inline]
    pub fn process_batch(
        &mut self,
        state: &PortState,
        rx: &mut (dyn PortRx + 'static),
        scratch: &mut [u8],
    ) -> usize {
        let n = rx.recv(BATCH);
        if n == 0 {
            return 0;
        }
        // Refresh after the frames are in hand, not before: a pipeline
        // published before a frame was queued must apply to it, or a
        // `Switch::apply` that has returned could still be ignored by
        // the packets that follow it.
        self.refresh();
        let mut frames: [&mut [u8]; BATCH] = std::array::from_fn(|_| <&mut [u8]>::default());
        let n = rx.frames_mut(&mut frames).min(n);
        let mut bytes = 0u64;
        self.packets += n as u64;
        let mut last = None;
        for (i, f) in frames[..n].iter_mut().enumerate() {
            bytes += f.len() as u64;
            self.process_one(state, i as u16, f, scratch, &mut last);
        }
        self.commit_last(&mut last);
        state
            .counters
            .rx_packets
            .fetch_add(n as u64, Ordering::Relaxed);
        state.counters.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        let frames = frames.map(|f| -> &[u8] { f });
        self.flush_frames(Some(&frames[..n]));
        n
    }
}

/// Ends a transmit: submits and, unless `hold`, wakes the kernel.
/// Returns whether frames wait for a later wake-up.
#[inline]
fn finish(tx: &mut dyn crate::port::PortTx, hold: bool, pacer: &mut WakePacer) -> bool {
    if hold {
        tx.submit()
    } else {
        // Light load: each round's output is sent at once, after the wait
        // the port's pacer found to make the wake-up cheapest (usually 0).
        // The clock is read only to wait, or to time a trial's wake-up.
        let wait = pacer.wait_ns();
        if wait > 0 {
            let start = Instant::now();
            while (start.elapsed().as_nanos() as u64) < wait {
                std::hint::spin_loop();
            }
        }
        let took = if pacer.timing() {
            let woke = Instant::now();
            tx.flush();
            woke.elapsed().as_nanos() as u64
        } else {
            tx.flush();
            0
        };
        pacer.record(took);
        false
    }
}

/// Compiles datapath actions for the current port table: plain outputs
/// become [`Op::Out`] with the port's index, sent by reference when no
/// later action changes the packet.
fn compile_ops(actions: &[DpAction], ports: &PortTable) -> Vec<Op> {
    let changes = |a: &DpAction| {
        matches!(
            a,
            DpAction::SetField(..)
                | DpAction::PushVlan(_)
                | DpAction::PopVlan
                | DpAction::SetVlan(_)
                | DpAction::DecTtl
                | DpAction::Ct { .. }
        )
    };
    let mut ops = Vec::with_capacity(actions.len());
    for (i, a) in actions.iter().enumerate() {
        let op = match a {
            DpAction::Output(no) => match ports.index(*no) {
                Some(idx) if matches!(ports.ports[idx].role, PortRole::Plain) => Op::Out {
                    idx: idx as u32,
                    by_ref: !actions[i + 1..].iter().any(changes),
                },
                _ => Op::Act(i as u32),
            },
            _ => Op::Act(i as u32),
        };
        ops.push(op);
    }
    ops
}

/// Builds the conntrack input from the key and packet.
fn ct_input(
    key: &FlowKey,
    layout: &Layout,
    frame: &[u8],
    args: &flows::action::CtArgs,
) -> Option<CtInput> {
    let proto = key.get(Field::NwProto) as u8;
    let src = Ipv4Addr::from(key.get(Field::NwSrc) as u32);
    let dst = Ipv4Addr::from(key.get(Field::NwDst) as u32);
    let (mut sport, mut dport) = (key.get(Field::TpSrc) as u16, key.get(Field::TpDst) as u16);
    let mut icmp = (0u8, 0u8);
    let mut related_inner = None;
    if proto == ipproto::ICMP {
        icmp = (sport as u8, dport as u8);
        let l4 = layout.l4? as usize;
        match icmp.0 {
            0 | 8 => {
                let id = frame.get(l4 + 4..l4 + 6)?;
                sport = u16::from_be_bytes([id[0], id[1]]);
                dport = 0;
            }
            3 | 11 | 12 => {
                related_inner =
                    packet::icmp_inner_tuple(frame, l4).map(|(s, d, p, sp, dp)| Tuple {
                        src: s,
                        dst: d,
                        proto: p,
                        sport: sp,
                        dport: dp,
                    });
                sport = 0;
                dport = 0;
            }
            _ => {
                sport = 0;
                dport = 0;
            }
        }
    }
    Some(CtInput {
        tuple: Tuple {
            src,
            dst,
            proto,
            sport,
            dport,
        },
        zone: args.zone,
        tcp_flags: layout.tcp_flags,
        icmp_type: icmp.0,
        icmp_code: icmp.1,
        commit: args.commit,
        nat: args.nat,
        related_inner,
    })
}

/// Where a poll thread's time goes, as OVS splits a PMD's cycles: rounds
/// that moved frames (busy), empty rounds and spinning (idle), naps and
/// waits (asleep). One clock read per round; the totals are published
/// with plain stores (the thread is their only writer).
struct PollClock {
    start: Instant,
    mark: Instant,
    busy: u64,
    idle: u64,
    asleep: u64,
}

/// Where a stretch of time is counted.
#[derive(Clone, Copy)]
enum Spent {
    Busy,
    Idle,
    Asleep,
}

impl PollClock {
    fn new(stats: &ThreadStats) -> Self {
        let start = Instant::now();
        PollClock {
            start,
            mark: start,
            busy: stats.busy_ns.load(Ordering::Relaxed),
            idle: stats.idle_ns.load(Ordering::Relaxed),
            asleep: stats.asleep_ns.load(Ordering::Relaxed),
        }
    }

    /// When the last lap ended, in ns since the clock started.
    fn mark_ns(&self) -> u64 {
        u64::try_from(self.mark.duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts the time since the last call as `spent`; returns the new
    /// [`PollClock::mark_ns`].
    fn lap(&mut self, spent: Spent, stats: &ThreadStats) -> u64 {
        let now = Instant::now();
        let dt = u64::try_from(now.duration_since(self.mark).as_nanos()).unwrap_or(u64::MAX);
        self.mark = now;
        let (total, cell) = match spent {
            Spent::Busy => (&mut self.busy, &stats.busy_ns),
            Spent::Idle => (&mut self.idle, &stats.idle_ns),
            Spent::Asleep => (&mut self.asleep, &stats.asleep_ns),
        };
        *total = total.saturating_add(dt);
        cell.store(*total, Ordering::Relaxed);
        self.mark_ns()
    }
}

/// The poll thread proper.
#[allow(missing_debug_implementations)]
pub struct Worker {
    rx: Vec<RxPort>,
    eng: Engine,
    scratch: Vec<u8>,
    cmds: Receiver<WorkerCmd>,
    max_nap: Duration,
    batching: TxBatching,
}

impl Worker {
    /// A worker for thread `id`.
    pub fn new(id: usize, shared: Arc<Shared>, cmds: Receiver<WorkerCmd>) -> Self {
        Worker {
            rx: Vec::new(),
            eng: Engine::new(id, shared),
            scratch: vec![0; MAX_FRAME + 2 * HEADROOM],
            cmds,
            max_nap: Duration::ZERO,
            batching: TxBatching::new(Duration::ZERO),
        }
    }

    /// Lets output wait up to `interval` under load, so one wake-up sends
    /// several rounds' frames (zero: send every round); see
    /// [`crate::txbatch`] and [`crate::switch::SwitchConfig::tx_flush_interval`].
    pub fn with_tx_flush_interval(mut self, interval: Duration) -> Self {
        self.batching = TxBatching::new(interval);
        self
    }

    /// Sends everything held, before the thread stops polling for a while.
    fn wake_held(&mut self) {
        if self.batching.holding() {
            self.eng.wake_held();
            self.batching.sent();
        }
    }

    /// Naps between polls under light load, up to `max` (zero: busy
    /// polling); see [`crate::switch::SwitchConfig::max_sleep`].
    pub fn with_max_sleep(mut self, max: Duration) -> Self {
        self.max_nap = max;
        self
    }

    fn handle_cmds(&mut self) -> bool {
        while let Ok(c) = self.cmds.try_recv() {
            match c {
                WorkerCmd::AddRx { no, rx, state } => {
                    self.rx.push(RxPort { no, rx, state });
                }
                WorkerCmd::DelRx(no) => {
                    if let Some(i) = self.rx.iter().position(|r| r.no == no) {
                        self.rx.remove(i);
                    }
                }
                WorkerCmd::Stop => return false,
            }
        }
        true
    }

    /// One round over all ports; returns frames processed.
    pub fn poll_once(&mut self) -> usize {
        let mut total = 0;
        for r in &mut self.rx {
            let n = self
                .eng
                .process_batch(&r.state, &mut *r.rx, &mut self.scratch);
            if n > 0 {
                r.rx.release();
                total += n;
            }
        }
        if total == 0 {
            // Idle: still drop references to old port tables promptly so
            // removed ports close.
            self.eng.refresh();
        }
        total
    }

    /// Waits up to `timeout` for a frame on any port (or a command).
    fn sleep(&self, poll: &mut mio::Poll, events: &mut mio::Events, timeout: Duration) {
        for r in &self.rx {
            if let Some(fd) = r.rx.wait_fd() {
                let _ = poll.registry().register(
                    &mut mio::unix::SourceFd(&fd),
                    mio::Token(r.no as usize),
                    mio::Interest::READABLE,
                );
            }
        }
        let _ = poll.poll(events, Some(timeout));
        for r in &self.rx {
            if let Some(fd) = r.rx.wait_fd() {
                let _ = poll.registry().deregister(&mut mio::unix::SourceFd(&fd));
            }
        }
    }

    /// Runs until told to stop.
    pub fn run(mut self, mut poll: mio::Poll) {
        let mut events = mio::Events::with_capacity(64);
        let mut idle = 0u32;
        let mut nap = Duration::ZERO;
        if !self.max_nap.is_zero() {
            crate::xsk::set_current_thread_timer_slack(NAP_SLACK_NS);
        }
        let shared = Arc::clone(&self.eng.shared);
        let stats = &shared.threads[self.eng.id];
        let mut clock = PollClock::new(stats);
        loop {
            if !self.handle_cmds() || shared.stop.load(Ordering::Relaxed) {
                break;
            }
            self.eng
                .hold_output(self.batching.may_hold(clock.mark_ns()));
            let n = self.poll_once();
            let now = if n > 0 {
                idle = 0;
                clock.lap(Spent::Busy, stats)
            } else {
                idle += 1;
                clock.lap(Spent::Idle, stats)
            };
            if self.batching.after_round(now, n, self.eng.take_held()) {
                self.eng.wake_held();
            }
            if !self.max_nap.is_zero() {
                // Load-based naps: a half-full batch means the load is
                // real, so poll again at once; small batches let the
                // thread sleep a little longer each round while the
                // rings collect the frames. (Waking on each frame
                // instead saved no CPU and, on a VM whose idle vCPU must
                // be rescheduled, cost as much latency.)
                if n >= BATCH / 2 {
                    nap = Duration::ZERO;
                    continue;
                }
                if idle < IDLE_NAPS {
                    self.wake_held();
                    nap = (nap + NAP_STEP).min(self.max_nap);
                    std::thread::sleep(nap);
                    clock.lap(Spent::Asleep, stats);
                    continue;
                }
            } else {
                if n > 0 {
                    continue;
                }
                if idle < IDLE_SPINS {
                    // On a small node the poll core is shared with the pods'
                    // own work: give it up now and then while nothing has
                    // arrived for a while (a yield with nothing else
                    // runnable returns at once).
                    if idle >= YIELD_AFTER && idle.is_multiple_of(YIELD_EVERY) {
                        std::thread::yield_now();
                        clock.lap(Spent::Idle, stats);
                    } else {
                        std::hint::spin_loop();
                    }
                    continue;
                }
            }
            self.wake_held();
            let all_waitable = self.rx.iter().all(|r| r.rx.wait_fd().is_some());
            let timeout = if all_waitable { MAX_SLEEP } else { POLL_SLEEP };
            stats.sleeps.fetch_add(1, Ordering::Relaxed);
            // The sockets are in the epoll set only while the thread
            // sleeps. A registered socket makes the kernel run the epoll
            // callback on every receive flush and every transmit
            // completion (its wait queue has a sleeper), about 5% of a
            // core at full rate on each side. Registering checks
            // readiness, so frames that arrived just before are not missed.
            self.sleep(&mut poll, &mut events, timeout);
            clock.lap(Spent::Asleep, stats);
            idle = if self.max_nap.is_zero() {
                IDLE_SPINS / 2
            } else {
                0
            };
            // Woken by a frame: back to light-load naps from the start.
            nap = Duration::ZERO;
        }
        self.wake_held();
        // Drop receive halves before the transmit halves go away.
        self.rx.clear();
    }
}

/// Gives poll thread `id` (the calling thread) niceness `nice` if set,
/// warning if the kernel refuses, and records the niceness it runs at.
pub fn set_nice(id: usize, nice: Option<i32>, stats: &ThreadStats) {
    if let Some(n) = nice {
        if let Err(e) = crate::xsk::set_current_thread_nice(n) {
            tracing::warn!(
                thread = id,
                nice = n,
                "cannot set the poll thread's niceness ({e}; lowering it needs CAP_SYS_NICE): \
                 other work on its core may delay it"
            );
        }
    }
    stats
        .nice
        .store(crate::xsk::current_thread_nice(), Ordering::Relaxed);
}

/// Pins the calling thread to CPU `core` (best effort).
pub fn pin_to_core(core: usize) {
    crate::xsk::pin_current_thread(core);
}
