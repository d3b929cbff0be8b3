//! Userspace connection tracking with NAT, after OVS's userspace conntrack.
//!
//! [`ConnTrack`] is pure logic: it sees packets as 5-tuples ([`Tuple`]) plus
//! the few header bits it needs (TCP flags, ICMP type/code), keeps one entry
//! per committed connection, and answers with the packet's `ct_state` bits
//! and, when NAT applies, the tuple the packet must be rewritten to. It does
//! no I/O and reads no clock: time is the `now_ms` argument. It is a plain
//! struct with `&mut self` methods; the datapath decides how to share it
//! (one lock, or one instance per shard).
//!
//! # Model
//!
//! * A connection is found by `(zone, tuple)` in either direction: the map
//!   holds its original key and its reply key, both pointing at one entry.
//!   The reply key is the reverse of the original tuple *after* NAT, so reply
//!   packets are found and un-NATed.
//! * The first packet of an unknown connection is `new` (or `inv` when it
//!   cannot start a connection: a TCP segment that is not a bare SYN, an ICMP
//!   echo reply, ...). It is remembered only with `commit`; when the table is
//!   full (`max_conns`) a committing packet is `inv`.
//! * Original-direction packets stay `new` until a reply has been seen, then
//!   are `est`; reply-direction packets are `est+rpl`.
//! * TCP follows a connection-level state machine driven by flags (no
//!   sequence-number checks): SYN_SENT → SYN_RECV → ESTABLISHED → FIN_WAIT →
//!   CLOSING → TIME_WAIT, and RST → CLOSED. A bare SYN on a TIME_WAIT or
//!   CLOSED connection replaces it with a new one, as OVS does.
//! * Every valid packet refreshes the entry's expiry with the timeout of its
//!   (new) state; an expired entry found by a lookup is removed and the
//!   packet is handled as the first of a new connection. [`ConnTrack::expire`]
//!   sweeps expired entries.
//! * ICMP errors are `rel` when the header they embed belongs to a tracked
//!   connection (the caller parses it and passes it as
//!   [`CtInput::related_inner`]).
//!
//! # Tuples of non-TCP/UDP packets
//!
//! * ICMP queries (echo, timestamp, information): `sport` = the ICMP
//!   identifier, `dport` = 0. Reversing an ICMP tuple swaps the addresses and
//!   keeps the identifier, so a request and its reply share one connection.
//! * ICMP errors: `tuple` holds the outer addresses with `proto` = 1 and both
//!   ports 0; `related_inner` is the embedded (offending) packet's tuple, as
//!   it appears inside the error.
//! * Other protocols: ports 0.
//!
//! # NAT
//!
//! `nat(src=...)` / `nat(dst=...)` is decided on the first committed packet:
//! an address is picked in the range by a deterministic hash of the zone and
//! tuple, and a port the same way when a port range is given. When that reply
//! tuple is already in use, the next ports (then the next addresses) are
//! tried, wrapping around; if all are taken the packet is `inv`. Without a
//! port range, source NAT keeps the original port if it can, then falls back
//! to the ephemeral range 1024-65535 as OVS does; destination NAT keeps the
//! original port. For ICMP, source NAT translates the identifier like a
//! source port. Later packets passing through `ct(nat)` (any `nat` argument,
//! including the plain one) get the connection's translation: the NAT rewrite
//! in the original direction, the reverse rewrite for replies. The `snat` /
//! `dnat` bits tell which side of the packet was rewritten (so a reply of a
//! source-NATed connection is `dnat`, as in OVS).

use flows::action::{Nat, NatKind};
use flows::field::ipproto;
use flows::key::ct_state;
use hashbrown::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

/// TCP flag bits as they appear in the TCP header's flags byte.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
}

/// ICMP types the tracker distinguishes.
pub mod icmp_type {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (error).
    pub const DEST_UNREACH: u8 = 3;
    /// Source quench (error).
    pub const SOURCE_QUENCH: u8 = 4;
    /// Redirect (error).
    pub const REDIRECT: u8 = 5;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded (error).
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem (error).
    pub const PARAM_PROBLEM: u8 = 12;
    /// Timestamp request.
    pub const TIMESTAMP_REQUEST: u8 = 13;
    /// Timestamp reply.
    pub const TIMESTAMP_REPLY: u8 = 14;
    /// Information request.
    pub const INFO_REQUEST: u8 = 15;
    /// Information reply.
    pub const INFO_REPLY: u8 = 16;
}

/// The ICMP reply type answering query type `t`, if `t` is a request.
fn icmp_reply_type(t: u8) -> Option<u8> {
    match t {
        icmp_type::ECHO_REQUEST => Some(icmp_type::ECHO_REPLY),
        icmp_type::TIMESTAMP_REQUEST => Some(icmp_type::TIMESTAMP_REPLY),
        icmp_type::INFO_REQUEST => Some(icmp_type::INFO_REPLY),
        _ => None,
    }
}

fn icmp_is_query(t: u8) -> bool {
    icmp_reply_type(t).is_some()
        || matches!(
            t,
            icmp_type::ECHO_REPLY | icmp_type::TIMESTAMP_REPLY | icmp_type::INFO_REPLY
        )
}

fn icmp_is_error(t: u8) -> bool {
    matches!(
        t,
        icmp_type::DEST_UNREACH
            | icmp_type::SOURCE_QUENCH
            | icmp_type::REDIRECT
            | icmp_type::TIME_EXCEEDED
            | icmp_type::PARAM_PROBLEM
    )
}

/// Per-state timeouts, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP SYN_SENT and SYN_RECV.
    pub tcp_syn_sent: u64,
    /// TCP ESTABLISHED.
    pub tcp_established: u64,
    /// TCP FIN_WAIT and CLOSING.
    pub tcp_fin_wait: u64,
    /// TCP TIME_WAIT and CLOSED.
    pub tcp_closed: u64,
    /// UDP before any reply was seen.
    pub udp_first: u64,
    /// UDP once packets went both ways.
    pub udp_multiple: u64,
    /// ICMP queries.
    pub icmp: u64,
    /// Any other IP protocol.
    pub other: u64,
}

impl Default for CtTimeouts {
    /// OVS's default timeout policy.
    fn default() -> Self {
        CtTimeouts {
            tcp_syn_sent: 30_000,
            tcp_established: 24 * 3600 * 1000,
            tcp_fin_wait: 15 * 60 * 1000,
            tcp_closed: 30_000,
            udp_first: 60_000,
            udp_multiple: 30_000,
            icmp: 30_000,
            other: 60_000,
        }
    }
}

/// Limits of a [`ConnTrack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtConfig {
    /// Most connections held at once (OVS's `ct-set-maxconns`).
    pub max_conns: usize,
    /// Timeouts.
    pub timeouts: CtTimeouts,
}

impl Default for CtConfig {
    /// OVS's defaults: 3,000,000 connections, default timeouts.
    fn default() -> Self {
        CtConfig {
            max_conns: 3_000_000,
            timeouts: CtTimeouts::default(),
        }
    }
}

/// A connection 5-tuple. See the module docs for ICMP and other protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (ICMP queries: the identifier).
    pub sport: u16,
    /// Destination port (ICMP: 0).
    pub dport: u16,
}

impl Tuple {
    /// A tuple from its parts.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, sport: u16, dport: u16) -> Tuple {
        Tuple {
            src,
            dst,
            proto,
            sport,
            dport,
        }
    }

    /// The tuple of a packet going the other way: addresses swapped, ports
    /// swapped (ICMP: the identifier stays in `sport`).
    pub fn reverse(&self) -> Tuple {
        if self.proto == ipproto::ICMP {
            Tuple {
                src: self.dst,
                dst: self.src,
                ..*self
            }
        } else {
            Tuple {
                src: self.dst,
                dst: self.src,
                proto: self.proto,
                sport: self.dport,
                dport: self.sport,
            }
        }
    }
}

/// One packet as seen by `ct(...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtInput {
    /// The packet's tuple (ICMP errors: the outer addresses, ports 0).
    pub tuple: Tuple,
    /// `ct(zone=N)`.
    pub zone: u16,
    /// TCP flags byte (0 for non-TCP).
    pub tcp_flags: u8,
    /// ICMP type (0 for non-ICMP).
    pub icmp_type: u8,
    /// ICMP code (0 for non-ICMP).
    pub icmp_code: u8,
    /// `ct(commit)`.
    pub commit: bool,
    /// `ct(nat...)`.
    pub nat: Option<Nat>,
    /// For ICMP errors: the tuple of the embedded packet, as it appears
    /// inside the error. `None` if the caller could not parse it.
    pub related_inner: Option<Tuple>,
}

impl CtInput {
    /// A non-committing input without NAT, flags or ICMP fields.
    pub fn new(tuple: Tuple, zone: u16) -> CtInput {
        CtInput {
            tuple,
            zone,
            tcp_flags: 0,
            icmp_type: 0,
            icmp_code: 0,
            commit: false,
            nat: None,
            related_inner: None,
        }
    }
}

/// What `ct(...)` decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtOutcome {
    /// `ct_state` bits ([`flows::key::ct_state`]); `trk` is always set.
    pub state: u16,
    /// The tuple the packet must be rewritten to (NAT or un-NAT), `None` if
    /// unchanged. For ICMP errors, only its addresses apply to the outer
    /// header.
    pub rewrite: Option<Tuple>,
    /// For related ICMP errors under NAT: the tuple the embedded packet's
    /// header must be rewritten to. `None` otherwise.
    pub rewrite_inner: Option<Tuple>,
}

const TRK: u16 = ct_state::TRK as u16;
const NEW: u16 = ct_state::NEW as u16;
const EST: u16 = ct_state::EST as u16;
const REL: u16 = ct_state::REL as u16;
const RPL: u16 = ct_state::RPL as u16;
const INV: u16 = ct_state::INV as u16;
const SNAT: u16 = ct_state::SNAT as u16;
const DNAT: u16 = ct_state::DNAT as u16;

impl CtOutcome {
    fn state(state: u16) -> CtOutcome {
        CtOutcome {
            state,
            rewrite: None,
            rewrite_inner: None,
        }
    }

    fn invalid() -> CtOutcome {
        CtOutcome::state(INV | TRK)
    }
}

/// The `snat`/`dnat` bit for a packet of a connection NATed with `kind`:
/// replies get the other side rewritten.
fn nat_bits(kind: NatKind, reply: bool) -> u16 {
    match (kind, reply) {
        (NatKind::Src, false) | (NatKind::Dst, true) => SNAT,
        (NatKind::Dst, false) | (NatKind::Src, true) => DNAT,
    }
}

/// TCP connection states, as `dump-conntrack` prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// SYN seen, no answer yet.
    SynSent,
    /// SYN+ACK seen.
    SynRecv,
    /// Handshake completed.
    Established,
    /// One side sent FIN.
    FinWait,
    /// Both sides sent FIN, last ACK pending.
    Closing,
    /// Both FINs acknowledged.
    TimeWait,
    /// Reset.
    Closed,
}

impl TcpState {
    /// The name OVS prints in `protoinfo=(state=...)`.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT_1",
            TcpState::Closing => "CLOSING",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Closed => "CLOSED",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug)]
struct TcpConn {
    state: TcpState,
    /// Bit 0: the original side sent FIN; bit 1: the reply side did.
    fins: u8,
    /// Direction of the FIN that made both sides closed (true: reply).
    last_fin_reply: bool,
}

#[derive(Clone, Copy, Debug)]
enum ProtoConn {
    Tcp(TcpConn),
    Udp,
    /// Type and code of the request that opened the connection.
    Icmp {
        ty: u8,
        code: u8,
    },
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Conn {
    zone: u16,
    /// Original direction, as the first packet had it (before NAT).
    orig: Tuple,
    /// Expected reply direction (after NAT).
    reply: Tuple,
    nat: Option<NatKind>,
    proto: ProtoConn,
    seen_reply: bool,
    expires_ms: u64,
}

impl Conn {
    fn timeout(&self, t: &CtTimeouts) -> u64 {
        match self.proto {
            ProtoConn::Tcp(tcp) => match tcp.state {
                TcpState::SynSent | TcpState::SynRecv => t.tcp_syn_sent,
                TcpState::Established => t.tcp_established,
                TcpState::FinWait | TcpState::Closing => t.tcp_fin_wait,
                TcpState::TimeWait | TcpState::Closed => t.tcp_closed,
            },
            ProtoConn::Udp if self.seen_reply => t.udp_multiple,
            ProtoConn::Udp => t.udp_first,
            ProtoConn::Icmp { .. } => t.icmp,
            ProtoConn::Other => t.other,
        }
    }

    fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }
}

/// Map key: zone + tuple. Hashes as two packed words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CtKey {
    zone: u16,
    tuple: Tuple,
}

impl Hash for CtKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let t = &self.tuple;
        h.write_u64((u64::from(u32::from(t.src)) << 32) | u64::from(u32::from(t.dst)));
        h.write_u64(
            (u64::from(t.sport) << 48)
                | (u64::from(t.dport) << 32)
                | (u64::from(self.zone) << 16)
                | u64::from(t.proto),
        );
    }
}

/// Where a key points: a connection and which of its directions.
#[derive(Clone, Copy, Debug)]
struct Slot {
    idx: u32,
    reply: bool,
}

enum TcpVerdict {
    Valid,
    Invalid,
    /// A SYN on a closed connection: replace it with a new one.
    Reopen,
}

/// Flag combinations no TCP stack sends.
fn tcp_flags_invalid(flags: u8) -> bool {
    use tcp_flags::*;
    if flags & SYN != 0 {
        if flags & (RST | FIN) != 0 {
            return true;
        }
    } else if flags & (ACK | RST) == 0 {
        return true;
    }
    flags & ACK == 0 && flags & (FIN | PSH | URG) != 0
}

fn tcp_valid_new(flags: u8) -> bool {
    use tcp_flags::*;
    flags & (SYN | ACK | FIN | RST) == SYN
}

fn tcp_update(tcp: &mut TcpConn, reply: bool, flags: u8) -> TcpVerdict {
    use tcp_flags::*;
    if tcp_flags_invalid(flags) {
        return TcpVerdict::Invalid;
    }
    let syn = flags & SYN != 0;
    let ack = flags & ACK != 0;
    let fin = flags & FIN != 0;
    if flags & RST != 0 {
        tcp.state = TcpState::Closed;
        return TcpVerdict::Valid;
    }
    let dir_bit = if reply { 2 } else { 1 };
    match tcp.state {
        TcpState::SynSent => {
            if syn && (reply || !ack) {
                // SYN retransmit, or SYN+ACK / simultaneous open from the peer.
                if reply {
                    tcp.state = TcpState::SynRecv;
                }
                TcpVerdict::Valid
            } else {
                TcpVerdict::Invalid
            }
        }
        TcpState::SynRecv => {
            if syn {
                // SYN+ACK retransmit from the peer, SYN retransmit from us.
                if reply || !ack {
                    TcpVerdict::Valid
                } else {
                    TcpVerdict::Invalid
                }
            } else {
                if fin {
                    tcp.fins |= dir_bit;
                    tcp.state = TcpState::FinWait;
                } else if !reply {
                    tcp.state = TcpState::Established;
                }
                TcpVerdict::Valid
            }
        }
        TcpState::Established | TcpState::FinWait => {
            if syn {
                return TcpVerdict::Invalid;
            }
            if fin {
                tcp.fins |= dir_bit;
                if tcp.fins == 3 {
                    tcp.state = TcpState::Closing;
                    tcp.last_fin_reply = reply;
                } else {
                    tcp.state = TcpState::FinWait;
                }
            }
            TcpVerdict::Valid
        }
        TcpState::Closing => {
            if syn {
                return TcpVerdict::Invalid;
            }
            // The ACK of the last FIN comes from the other side.
            if !fin && reply != tcp.last_fin_reply {
                tcp.state = TcpState::TimeWait;
            }
            TcpVerdict::Valid
        }
        TcpState::TimeWait | TcpState::Closed => {
            if syn && !ack {
                TcpVerdict::Reopen
            } else if syn {
                TcpVerdict::Invalid
            } else {
                TcpVerdict::Valid
            }
        }
    }
}

/// A deterministic hash of a zone and tuple, for NAT range selection.
fn nat_hash(zone: u16, t: &Tuple) -> u64 {
    fn mix(mut x: u64) -> u64 {
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    let a = (u64::from(u32::from(t.src)) << 32) | u64::from(u32::from(t.dst));
    let b = (u64::from(t.sport) << 48)
        | (u64::from(t.dport) << 32)
        | (u64::from(zone) << 16)
        | u64::from(t.proto);
    mix(mix(a) ^ b.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

/// One connection, for `ferrovs-ctl dump-conntrack`. Its `Display` is the
/// OVS line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Zone.
    pub zone: u16,
    /// Original direction (before NAT).
    pub orig: Tuple,
    /// Reply direction (after NAT).
    pub reply: Tuple,
    /// NAT applied to the connection.
    pub nat: Option<NatKind>,
    /// TCP state (TCP connections only).
    pub tcp_state: Option<TcpState>,
    /// ICMP type and code of the opening request (ICMP only).
    pub icmp: Option<(u8, u8)>,
    /// Time at which the entry expires.
    pub expires_ms: u64,
}

impl ConnInfo {
    fn fmt_tuple(&self, f: &mut fmt::Formatter<'_>, t: &Tuple, reply: bool) -> fmt::Result {
        write!(f, "src={},dst={}", t.src, t.dst)?;
        match t.proto {
            ipproto::TCP | ipproto::UDP | ipproto::SCTP => {
                write!(f, ",sport={},dport={}", t.sport, t.dport)
            }
            ipproto::ICMP => {
                let (ty, code) = self.icmp.unwrap_or((0, 0));
                let ty = if reply {
                    icmp_reply_type(ty).unwrap_or(ty)
                } else {
                    ty
                };
                write!(f, ",id={},type={},code={}", t.sport, ty, code)
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.orig.proto {
            ipproto::TCP => f.write_str("tcp")?,
            ipproto::UDP => f.write_str("udp")?,
            ipproto::ICMP => f.write_str("icmp")?,
            ipproto::SCTP => f.write_str("sctp")?,
            p => write!(f, "{p}")?,
        }
        f.write_str(",orig=(")?;
        self.fmt_tuple(f, &self.orig, false)?;
        f.write_str("),reply=(")?;
        self.fmt_tuple(f, &self.reply, true)?;
        f.write_str(")")?;
        if self.zone != 0 {
            write!(f, ",zone={}", self.zone)?;
        }
        if let Some(state) = self.tcp_state {
            write!(f, ",protoinfo=(state={state})")?;
        }
        Ok(())
    }
}

/// The connection tracker. See the module docs.
#[derive(Debug)]
pub struct ConnTrack {
    config: CtConfig,
    map: HashMap<CtKey, Slot>,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    n_conns: usize,
}

impl ConnTrack {
    /// An empty tracker.
    pub fn new(config: CtConfig) -> ConnTrack {
        ConnTrack {
            config,
            map: HashMap::new(),
            conns: Vec::new(),
            free: Vec::new(),
            n_conns: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CtConfig {
        &self.config
    }

    /// Changes the connection limit (existing connections stay).
    pub fn set_max_conns(&mut self, max_conns: usize) {
        self.config.max_conns = max_conns;
    }

    /// Number of connections held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.n_conns
    }

    /// True if no connection is held.
    pub fn is_empty(&self) -> bool {
        self.n_conns == 0
    }

    /// Tracks one packet. Allocates nothing unless it creates a connection.
    pub fn execute(&mut self, input: &CtInput, now_ms: u64) -> CtOutcome {
        let t = &input.tuple;
        if t.proto == ipproto::ICMP {
            if icmp_is_error(input.icmp_type) {
                return self.related(input, now_ms);
            }
            if !icmp_is_query(input.icmp_type) {
                return CtOutcome::invalid();
            }
        }
        let key = CtKey {
            zone: input.zone,
            tuple: *t,
        };
        if let Some(slot) = self.lookup(&key, now_ms) {
            match self.update(slot, input, now_ms) {
                Some(outcome) => return outcome,
                None => self.remove_conn(slot.idx),
            }
        }
        self.not_found(input, now_ms)
    }

    /// Removes expired connections; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        for idx in 0..self.conns.len() {
            if matches!(&self.conns[idx], Some(c) if c.expired(now_ms)) {
                self.remove_conn(idx as u32);
                n += 1;
            }
        }
        n
    }

    /// Removes all connections, or those of one zone; returns how many.
    pub fn flush(&mut self, zone: Option<u16>) -> usize {
        let mut n = 0;
        for idx in 0..self.conns.len() {
            if matches!(&self.conns[idx], Some(c) if zone.is_none() || zone == Some(c.zone)) {
                self.remove_conn(idx as u32);
                n += 1;
            }
        }
        n
    }

    /// The connections held (including expired ones not yet swept).
    pub fn dump(&self) -> impl Iterator<Item = ConnInfo> + '_ {
        self.conns.iter().flatten().map(|c| {
            let (tcp_state, icmp) = match c.proto {
                ProtoConn::Tcp(tcp) => (Some(tcp.state), None),
                ProtoConn::Icmp { ty, code } => (None, Some((ty, code))),
                ProtoConn::Udp | ProtoConn::Other => (None, None),
            };
            ConnInfo {
                zone: c.zone,
                orig: c.orig,
                reply: c.reply,
                nat: c.nat,
                tcp_state,
                icmp,
                expires_ms: c.expires_ms,
            }
        })
    }

    fn conn(&self, idx: u32) -> Option<&Conn> {
        self.conns.get(idx as usize).and_then(Option::as_ref)
    }

    /// Finds a live connection by key; an expired one is removed.
    fn lookup(&mut self, key: &CtKey, now_ms: u64) -> Option<Slot> {
        let slot = *self.map.get(key)?;
        match self.conn(slot.idx) {
            Some(c) if !c.expired(now_ms) => Some(slot),
            Some(_) => {
                self.remove_conn(slot.idx);
                None
            }
            None => {
                // Cannot happen (keys are removed with their connection);
                // heal rather than panic.
                self.map.remove(key);
                None
            }
        }
    }

    fn remove_conn(&mut self, idx: u32) {
        let Some(c) = self.conns.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        for tuple in [c.orig, c.reply] {
            let key = CtKey {
                zone: c.zone,
                tuple,
            };
            if matches!(self.map.get(&key), Some(s) if s.idx == idx) {
                self.map.remove(&key);
            }
        }
        self.free.push(idx);
        self.n_conns -= 1;
    }

    /// Updates a known connection. `None`: the packet reopens it (the
    /// caller removes it and handles the packet as new).
    fn update(&mut self, slot: Slot, input: &CtInput, now_ms: u64) -> Option<CtOutcome> {
        let timeouts = self.config.timeouts;
        let Some(conn) = self
            .conns
            .get_mut(slot.idx as usize)
            .and_then(Option::as_mut)
        else {
            return Some(CtOutcome::invalid());
        };
        let reply = slot.reply;
        if let ProtoConn::Tcp(tcp) = &mut conn.proto {
            match tcp_update(tcp, reply, input.tcp_flags) {
                TcpVerdict::Valid => {}
                TcpVerdict::Invalid => return Some(CtOutcome::invalid()),
                TcpVerdict::Reopen => return None,
            }
        }
        if reply {
            conn.seen_reply = true;
        }
        conn.expires_ms = now_ms.saturating_add(conn.timeout(&timeouts));
        let mut out = CtOutcome::state(if reply {
            TRK | EST | RPL
        } else if conn.seen_reply {
            TRK | EST
        } else {
            TRK | NEW
        });
        if let (Some(_), Some(kind)) = (input.nat, conn.nat) {
            out.state |= nat_bits(kind, reply);
            let target = if reply {
                conn.orig.reverse()
            } else {
                conn.reply.reverse()
            };
            if target != input.tuple {
                out.rewrite = Some(target);
            }
        }
        Some(out)
    }

    /// First packet of a connection the table does not hold.
    fn not_found(&mut self, input: &CtInput, now_ms: u64) -> CtOutcome {
        let t = input.tuple;
        let proto = match t.proto {
            ipproto::TCP => {
                if !tcp_valid_new(input.tcp_flags) {
                    return CtOutcome::invalid();
                }
                ProtoConn::Tcp(TcpConn {
                    state: TcpState::SynSent,
                    fins: 0,
                    last_fin_reply: false,
                })
            }
            ipproto::UDP => ProtoConn::Udp,
            ipproto::ICMP => {
                if icmp_reply_type(input.icmp_type).is_none() {
                    return CtOutcome::invalid();
                }
                ProtoConn::Icmp {
                    ty: input.icmp_type,
                    code: input.icmp_code,
                }
            }
            _ => ProtoConn::Other,
        };
        if !input.commit {
            return CtOutcome::state(TRK | NEW);
        }
        if self.n_conns >= self.config.max_conns {
            return CtOutcome::invalid();
        }
        let nat = input.nat.and_then(|n| n.kind.map(|k| (n, k)));
        let reply = match nat {
            Some((n, kind)) => match self.nat_select(input.zone, &t, &n, kind, now_ms) {
                Some(r) => r,
                None => return CtOutcome::invalid(),
            },
            None => {
                let r = t.reverse();
                if r != t && self.taken(input.zone, &r, now_ms) {
                    // The reverse tuple belongs to another (NATed)
                    // connection: this one cannot be told apart.
                    return CtOutcome::invalid();
                }
                r
            }
        };
        let mut conn = Conn {
            zone: input.zone,
            orig: t,
            reply,
            nat: nat.map(|(_, k)| k),
            proto,
            seen_reply: false,
            expires_ms: 0,
        };
        conn.expires_ms = now_ms.saturating_add(conn.timeout(&self.config.timeouts));
        let idx = match self.free.pop() {
            Some(i) => {
                self.conns[i as usize] = Some(conn);
                i
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        };
        self.n_conns += 1;
        self.map.insert(
            CtKey {
                zone: input.zone,
                tuple: t,
            },
            Slot { idx, reply: false },
        );
        if reply != t {
            self.map.insert(
                CtKey {
                    zone: input.zone,
                    tuple: reply,
                },
                Slot { idx, reply: true },
            );
        }
        let mut out = CtOutcome::state(TRK | NEW);
        if let Some((_, kind)) = nat {
            out.state |= nat_bits(kind, false);
            let target = reply.reverse();
            if target != t {
                out.rewrite = Some(target);
            }
        }
        out
    }

    /// True if `tuple` is a live key in `zone` (an expired holder is swept).
    fn taken(&mut self, zone: u16, tuple: &Tuple, now_ms: u64) -> bool {
        self.lookup(&CtKey { zone, tuple: *tuple }, now_ms).is_some()
    }

    /// Picks the NATed reply tuple of a new connection, or `None` if the
    /// range is exhausted (or empty).
    fn nat_select(
        &mut self,
        zone: u16,
        orig: &Tuple,
        nat: &Nat,
        kind: NatKind,
        now_ms: u64,
    ) -> Option<Tuple> {
        let lo = u32::from(nat.ip_min);
        let hi = u32::from(nat.ip_max);
        if hi < lo {
            return None;
        }
        let n_addr = u64::from(hi - lo) + 1;
        let h = nat_hash(zone, orig);
        let addr_start = h % n_addr;
        let has_ports = match orig.proto {
            ipproto::TCP | ipproto::UDP | ipproto::SCTP => true,
            ipproto::ICMP => kind == NatKind::Src,
            _ => false,
        };
        let orig_port = match kind {
            NatKind::Src => orig.sport,
            NatKind::Dst => orig.dport,
        };
        let explicit = nat.port_min != 0 || nat.port_max != 0;
        let candidate = |i: u64, port: u16| -> Tuple {
            // `i < n_addr <= 2^32` and the sum stays within the range.
            let addr = Ipv4Addr::from(lo.wrapping_add(((addr_start + i) % n_addr) as u32));
            let translated = match kind {
                NatKind::Src => Tuple {
                    src: addr,
                    sport: port,
                    ..*orig
                },
                NatKind::Dst => Tuple {
                    dst: addr,
                    dport: port,
                    ..*orig
                },
            };
            translated.reverse()
        };
        // A candidate is rejected only if a live key holds it, so each loop
        // below ends after at most `map.len() + 1` candidates.
        if !has_ports || !explicit {
            for i in 0..n_addr {
                let r = candidate(i, orig_port);
                if !self.taken(zone, &r, now_ms) {
                    return Some(r);
                }
            }
            if !has_ports || kind == NatKind::Dst {
                return None;
            }
        }
        let (p_lo, p_hi) = if explicit {
            let max = if nat.port_max == 0 {
                nat.port_min
            } else {
                nat.port_max
            };
            (nat.port_min, max)
        } else {
            (1024, 65535)
        };
        if p_hi < p_lo {
            return None;
        }
        let n_port = u64::from(p_hi - p_lo) + 1;
        let port_start = (h >> 32) % n_port;
        for i in 0..n_addr {
            for j in 0..n_port {
                let port = p_lo + ((port_start + j) % n_port) as u16;
                let r = candidate(i, port);
                if !self.taken(zone, &r, now_ms) {
                    return Some(r);
                }
            }
        }
        None
    }

    /// An ICMP error: `rel` if its embedded packet belongs to a connection.
    fn related(&mut self, input: &CtInput, now_ms: u64) -> CtOutcome {
        let Some(inner) = input.related_inner else {
            return CtOutcome::invalid();
        };
        // The embedded packet travelled the opposite way of the error.
        let key = CtKey {
            zone: input.zone,
            tuple: inner.reverse(),
        };
        let Some(slot) = self.lookup(&key, now_ms) else {
            return CtOutcome::invalid();
        };
        let Some(conn) = self.conn(slot.idx) else {
            return CtOutcome::invalid();
        };
        let reply = slot.reply;
        let mut out = CtOutcome::state(if reply { TRK | REL | RPL } else { TRK | REL });
        if let (Some(_), Some(kind)) = (input.nat, conn.nat) {
            out.state |= nat_bits(kind, reply);
            let mut outer = input.tuple;
            match (kind, reply) {
                (NatKind::Src, false) => outer.src = conn.reply.dst,
                (NatKind::Dst, false) => outer.dst = conn.reply.src,
                (NatKind::Src, true) => outer.dst = conn.orig.src,
                (NatKind::Dst, true) => outer.src = conn.orig.dst,
            }
            if outer != input.tuple {
                out.rewrite = Some(outer);
            }
            let new_inner = if reply { conn.orig } else { conn.reply };
            if new_inner != inner {
                out.rewrite_inner = Some(new_inner);
            }
        }
        out
    }
}
