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
                // A retransmitted SYN+ACK (the originator's final ACK was
                // lost after we saw it) must reach the originator so it
                // acknowledges again; OVS and Linux let it through.
                return if reply && ack {
                    TcpVerdict::Valid
                } else {
                    TcpVerdict::Invalid
                };
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
        self.lookup(
            &CtKey {
                zone,
                tuple: *tuple,
            },
            now_ms,
        )
        .is_some()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::tcp_flags::{ACK, FIN, PSH, RST, SYN};
    use super::*;
    use proptest::prelude::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const D1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const NATIP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 100);
    const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);

    fn timeouts() -> CtTimeouts {
        CtTimeouts {
            tcp_syn_sent: 1_000,
            tcp_established: 100_000,
            tcp_fin_wait: 10_000,
            tcp_closed: 500,
            udp_first: 2_000,
            udp_multiple: 7_000,
            icmp: 3_000,
            other: 4_000,
        }
    }

    fn ct() -> ConnTrack {
        ConnTrack::new(CtConfig {
            max_conns: 1000,
            timeouts: timeouts(),
        })
    }

    fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Tuple {
        Tuple::new(src, dst, ipproto::TCP, sport, dport)
    }

    fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Tuple {
        Tuple::new(src, dst, ipproto::UDP, sport, dport)
    }

    fn seg(t: Tuple, flags: u8, commit: bool) -> CtInput {
        CtInput {
            tcp_flags: flags,
            commit,
            ..CtInput::new(t, 0)
        }
    }

    fn pkt(t: Tuple, commit: bool) -> CtInput {
        CtInput {
            commit,
            ..CtInput::new(t, 0)
        }
    }

    fn with_nat(mut i: CtInput, nat: Nat) -> CtInput {
        i.nat = Some(nat);
        i
    }

    fn nat(kind: NatKind, ip_min: Ipv4Addr, ip_max: Ipv4Addr, pmin: u16, pmax: u16) -> Nat {
        Nat {
            kind: Some(kind),
            ip_min,
            ip_max,
            port_min: pmin,
            port_max: pmax,
        }
    }

    fn tcp_state(ct: &ConnTrack) -> TcpState {
        ct.dump().next().unwrap().tcp_state.unwrap()
    }

    /// Runs a full handshake of `t` at `now`, committing.
    fn handshake(ct: &mut ConnTrack, t: Tuple, now: u64) {
        assert_eq!(ct.execute(&seg(t, SYN, true), now).state, TRK | NEW);
        assert_eq!(
            ct.execute(&seg(t.reverse(), SYN | ACK, false), now).state,
            TRK | EST | RPL
        );
        assert_eq!(ct.execute(&seg(t, ACK, false), now).state, TRK | EST);
    }

    #[test]
    fn tuple_reverse() {
        let t = tcp(A, 1234, B, 80);
        assert_eq!(t.reverse(), tcp(B, 80, A, 1234));
        assert_eq!(t.reverse().reverse(), t);
        let i = Tuple::new(A, B, ipproto::ICMP, 77, 0);
        assert_eq!(i.reverse(), Tuple::new(B, A, ipproto::ICMP, 77, 0));
    }

    #[test]
    fn tcp_handshake_new_then_est() {
        let mut ct = ct();
        let t = tcp(A, 1234, B, 80);
        assert_eq!(ct.execute(&seg(t, SYN, true), 0).state, TRK | NEW);
        assert_eq!(ct.len(), 1);
        assert_eq!(tcp_state(&ct), TcpState::SynSent);
        // SYN retransmit: still new.
        assert_eq!(ct.execute(&seg(t, SYN, false), 10).state, TRK | NEW);
        let out = ct.execute(&seg(t.reverse(), SYN | ACK, false), 20);
        assert_eq!(out.state, TRK | EST | RPL);
        assert_eq!(out.rewrite, None);
        assert_eq!(tcp_state(&ct), TcpState::SynRecv);
        assert_eq!(ct.execute(&seg(t, ACK, false), 30).state, TRK | EST);
        assert_eq!(tcp_state(&ct), TcpState::Established);
        assert_eq!(ct.execute(&seg(t, ACK | PSH, false), 40).state, TRK | EST);
        assert_eq!(
            ct.execute(&seg(t.reverse(), ACK, false), 50).state,
            TRK | EST | RPL
        );
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn tcp_synack_retransmit_after_established_is_valid() {
        let mut ct = ct();
        let t = tcp(A, 1234, B, 80);
        ct.execute(&seg(t, SYN, true), 0);
        ct.execute(&seg(t.reverse(), SYN | ACK, false), 10);
        ct.execute(&seg(t, ACK, false), 20);
        assert_eq!(tcp_state(&ct), TcpState::Established);
        // The ACK was lost past the switch: the server sends SYN+ACK again.
        let out = ct.execute(&seg(t.reverse(), SYN | ACK, false), 30);
        assert_eq!(out.state, TRK | EST | RPL);
        assert_eq!(tcp_state(&ct), TcpState::Established);
        // A SYN from either side of an established connection is not.
        assert_eq!(ct.execute(&seg(t, SYN, false), 40).state, TRK | INV);
        assert_eq!(
            ct.execute(&seg(t.reverse(), SYN, false), 50).state,
            TRK | INV
        );
    }

    #[test]
    fn tcp_non_syn_first_packet_is_invalid() {
        let mut ct = ct();
        let t = tcp(A, 1234, B, 80);
        for flags in [ACK, ACK | PSH, FIN | ACK, RST, SYN | ACK, 0] {
            assert_eq!(
                ct.execute(&seg(t, flags, true), 0).state,
                TRK | INV,
                "{flags:#x}"
            );
        }
        assert!(ct.is_empty());
    }

    #[test]
    fn tcp_invalid_flag_combinations_on_known_connection() {
        let mut ct = ct();
        let t = tcp(A, 1234, B, 80);
        handshake(&mut ct, t, 0);
        for flags in [SYN | FIN, SYN | RST, FIN, PSH, 0, SYN] {
            assert_eq!(
                ct.execute(&seg(t, flags, false), 1).state,
                TRK | INV,
                "{flags:#x}"
            );
        }
        assert_eq!(tcp_state(&ct), TcpState::Established);
        // Invalid packets do not refresh the timeout.
        assert_eq!(ct.dump().next().unwrap().expires_ms, 100_000);
    }

    #[test]
    fn tcp_ack_before_synack_is_invalid() {
        let mut ct = ct();
        let t = tcp(A, 1234, B, 80);
        ct.execute(&seg(t, SYN, true), 0);
        assert_eq!(ct.execute(&seg(t, ACK, false), 1).state, TRK | INV);
        assert_eq!(
            ct.execute(&seg(t.reverse(), ACK, false), 1).state,
            TRK | INV
        );
        assert_eq!(tcp_state(&ct), TcpState::SynSent);
    }

    #[test]
    fn tcp_rst_closes_and_expires() {
        let mut ct = ct();
        let t = tcp(A, 1234, B, 80);
        handshake(&mut ct, t, 0);
        assert_eq!(
            ct.execute(&seg(t.reverse(), RST, false), 100).state,
            TRK | EST | RPL
        );
        assert_eq!(tcp_state(&ct), TcpState::Closed);
        assert_eq!(ct.dump().next().unwrap().expires_ms, 600);
        assert_eq!(ct.expire(599), 0);
        assert_eq!(ct.expire(600), 1);
        assert!(ct.is_empty());
        // Gone: a new SYN is new again.
        assert_eq!(ct.execute(&seg(t, SYN, false), 700).state, TRK | NEW);
    }

    #[test]
    fn tcp_rst_answering_syn() {
        let mut ct = ct();
        let t = tcp(A, 1234, B, 81);
        ct.execute(&seg(t, SYN, true), 0);
        assert_eq!(
            ct.execute(&seg(t.reverse(), RST | ACK, false), 1).state,
            TRK | EST | RPL
        );
        assert_eq!(tcp_state(&ct), TcpState::Closed);
    }

    #[test]
    fn tcp_fin_teardown() {
        let mut ct = ct();
        let t = tcp(A, 1234, B, 80);
        handshake(&mut ct, t, 0);
        assert_eq!(ct.execute(&seg(t, FIN | ACK, false), 10).state, TRK | EST);
        assert_eq!(tcp_state(&ct), TcpState::FinWait);
        assert_eq!(ct.dump().next().unwrap().expires_ms, 10_010);
        // Peer acks, then sends its own FIN.
        ct.execute(&seg(t.reverse(), ACK, false), 20);
        assert_eq!(tcp_state(&ct), TcpState::FinWait);
        assert_eq!(
            ct.execute(&seg(t.reverse(), FIN | ACK, false), 30).state,
            TRK | EST | RPL
        );
        assert_eq!(tcp_state(&ct), TcpState::Closing);
        // Last ACK from the first closer.
        ct.execute(&seg(t, ACK, false), 40);
        assert_eq!(tcp_state(&ct), TcpState::TimeWait);
        assert_eq!(ct.dump().next().unwrap().expires_ms, 540);
        assert_eq!(ct.expire(539), 0);
        assert_eq!(ct.expire(540), 1);
        assert!(ct.is_empty());
    }

    #[test]
    fn tcp_syn_reopens_time_wait() {
        let mut ct = ct();
        let t = tcp(A, 1234, B, 80);
        handshake(&mut ct, t, 0);
        ct.execute(&seg(t, RST, false), 1);
        assert_eq!(tcp_state(&ct), TcpState::Closed);
        // Without commit the old entry goes and nothing replaces it.
        assert_eq!(ct.execute(&seg(t, SYN, false), 2).state, TRK | NEW);
        assert!(ct.is_empty());
        handshake(&mut ct, t, 3);
        ct.execute(&seg(t, RST, false), 4);
        assert_eq!(ct.execute(&seg(t, SYN, true), 5).state, TRK | NEW);
        assert_eq!(ct.len(), 1);
        assert_eq!(tcp_state(&ct), TcpState::SynSent);
    }

    #[test]
    fn tcp_timeout_expiry_and_refresh() {
        let mut ct = ct();
        let t = tcp(A, 1234, B, 80);
        ct.execute(&seg(t, SYN, true), 0);
        // SYN_SENT times out after 1 s unless refreshed.
        ct.execute(&seg(t, SYN, false), 900);
        assert_eq!(ct.expire(1_500), 0);
        assert_eq!(ct.expire(1_900), 1);
        // Established: lookup of an expired entry treats it as gone even
        // before `expire` runs.
        handshake(&mut ct, t, 10_000);
        assert_eq!(ct.execute(&seg(t, ACK, false), 109_999).state, TRK | EST);
        assert_eq!(ct.execute(&seg(t, ACK, false), 209_999).state, TRK | INV);
        assert!(ct.is_empty());
    }

    #[test]
    fn udp_first_and_multiple() {
        let mut ct = ct();
        let t = udp(A, 5000, B, 53);
        assert_eq!(ct.execute(&pkt(t, true), 0).state, TRK | NEW);
        assert_eq!(ct.execute(&pkt(t, false), 100).state, TRK | NEW);
        assert_eq!(ct.dump().next().unwrap().expires_ms, 2_100);
        assert_eq!(
            ct.execute(&pkt(t.reverse(), false), 200).state,
            TRK | EST | RPL
        );
        assert_eq!(ct.dump().next().unwrap().expires_ms, 7_200);
        assert_eq!(ct.execute(&pkt(t, false), 300).state, TRK | EST);
        assert_eq!(ct.expire(7_299), 0);
        assert_eq!(ct.expire(7_300), 1);
        // Unanswered UDP uses the first timeout.
        ct.execute(&pkt(t, true), 10_000);
        assert_eq!(ct.expire(11_999), 0);
        assert_eq!(ct.expire(12_000), 1);
    }

    #[test]
    fn other_protocol_tracked() {
        let mut ct = ct();
        let t = Tuple::new(A, B, 47, 0, 0);
        assert_eq!(ct.execute(&pkt(t, true), 0).state, TRK | NEW);
        assert_eq!(
            ct.execute(&pkt(t.reverse(), false), 1).state,
            TRK | EST | RPL
        );
        assert_eq!(ct.dump().next().unwrap().expires_ms, 4_001);
        assert_eq!(
            ct.dump().next().unwrap().to_string(),
            "47,orig=(src=10.0.0.1,dst=10.0.0.2),reply=(src=10.0.0.2,dst=10.0.0.1)"
        );
    }

    fn icmp(t: Tuple, ty: u8, commit: bool) -> CtInput {
        CtInput {
            icmp_type: ty,
            commit,
            ..CtInput::new(t, 0)
        }
    }

    fn icmp_err(outer: Tuple, ty: u8, inner: Tuple) -> CtInput {
        CtInput {
            icmp_type: ty,
            related_inner: Some(inner),
            ..CtInput::new(outer, 0)
        }
    }

    #[test]
    fn icmp_echo() {
        let mut ct = ct();
        let req = Tuple::new(A, B, ipproto::ICMP, 42, 0);
        // A reply without request is invalid.
        assert_eq!(
            ct.execute(&icmp(req.reverse(), icmp_type::ECHO_REPLY, true), 0)
                .state,
            TRK | INV
        );
        assert_eq!(
            ct.execute(&icmp(req, icmp_type::ECHO_REQUEST, true), 0)
                .state,
            TRK | NEW
        );
        assert_eq!(
            ct.execute(&icmp(req.reverse(), icmp_type::ECHO_REPLY, false), 1)
                .state,
            TRK | EST | RPL
        );
        assert_eq!(
            ct.execute(&icmp(req, icmp_type::ECHO_REQUEST, false), 2)
                .state,
            TRK | EST
        );
        // Another identifier is another connection.
        let other = Tuple { sport: 43, ..req };
        assert_eq!(
            ct.execute(&icmp(other, icmp_type::ECHO_REQUEST, false), 2)
                .state,
            TRK | NEW
        );
        // Non-query, non-error types are invalid.
        assert_eq!(ct.execute(&icmp(req, 9, true), 2).state, TRK | INV);
        assert_eq!(
            ct.dump().next().unwrap().to_string(),
            "icmp,orig=(src=10.0.0.1,dst=10.0.0.2,id=42,type=8,code=0),\
             reply=(src=10.0.0.2,dst=10.0.0.1,id=42,type=0,code=0)"
        );
        assert_eq!(ct.expire(3_001), 0);
        assert_eq!(ct.expire(3_002), 1);
    }

    #[test]
    fn icmp_error_related() {
        let mut ct = ct();
        let t = udp(A, 5000, B, 53);
        ct.execute(&pkt(t, true), 0);
        // Port unreachable from B about A's datagram: reply direction.
        let out = ct.execute(
            &icmp_err(
                Tuple::new(B, A, ipproto::ICMP, 0, 0),
                icmp_type::DEST_UNREACH,
                t,
            ),
            1,
        );
        assert_eq!(out.state, TRK | REL | RPL);
        assert_eq!((out.rewrite, out.rewrite_inner), (None, None));
        // Time exceeded from a router on the path, same thing.
        let out = ct.execute(
            &icmp_err(
                Tuple::new(ROUTER, A, ipproto::ICMP, 0, 0),
                icmp_type::TIME_EXCEEDED,
                t,
            ),
            1,
        );
        assert_eq!(out.state, TRK | REL | RPL);
        // A's error about B's reply: original direction.
        let out = ct.execute(
            &icmp_err(
                Tuple::new(A, B, ipproto::ICMP, 0, 0),
                icmp_type::DEST_UNREACH,
                t.reverse(),
            ),
            1,
        );
        assert_eq!(out.state, TRK | REL);
        // Unknown embedded connection, or none given: invalid.
        let out = ct.execute(
            &icmp_err(
                Tuple::new(B, A, ipproto::ICMP, 0, 0),
                icmp_type::DEST_UNREACH,
                udp(A, 5001, B, 53),
            ),
            1,
        );
        assert_eq!(out.state, TRK | INV);
        let mut no_inner = icmp_err(
            Tuple::new(B, A, ipproto::ICMP, 0, 0),
            icmp_type::DEST_UNREACH,
            t,
        );
        no_inner.related_inner = None;
        assert_eq!(ct.execute(&no_inner, 1).state, TRK | INV);
        // Errors never create or refresh connections.
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.dump().next().unwrap().expires_ms, 2_000);
    }

    #[test]
    fn icmp_error_related_under_dnat() {
        let mut ct = ct();
        let t = tcp(A, 40000, VIP, 80);
        let dnat = nat(NatKind::Dst, D1, D1, 8080, 8080);
        let out = ct.execute(&with_nat(seg(t, SYN, true), dnat), 0);
        assert_eq!(out.rewrite, Some(tcp(A, 40000, D1, 8080)));
        // D1 (or a router near it) reports on the translated SYN.
        let mut err = icmp_err(
            Tuple::new(D1, A, ipproto::ICMP, 0, 0),
            icmp_type::DEST_UNREACH,
            tcp(A, 40000, D1, 8080),
        );
        err.nat = Some(Nat::UNNAT);
        let out = ct.execute(&err, 1);
        assert_eq!(out.state, TRK | REL | RPL | SNAT);
        assert_eq!(out.rewrite, Some(Tuple::new(VIP, A, ipproto::ICMP, 0, 0)));
        assert_eq!(out.rewrite_inner, Some(t));
        // Without nat in the ct action, nothing is rewritten.
        err.nat = None;
        let out = ct.execute(&err, 1);
        assert_eq!(out.state, TRK | REL | RPL);
        assert_eq!((out.rewrite, out.rewrite_inner), (None, None));
        // A reports on the un-NATed reply it got from the VIP.
        let mut err = icmp_err(
            Tuple::new(A, VIP, ipproto::ICMP, 0, 0),
            icmp_type::DEST_UNREACH,
            tcp(VIP, 80, A, 40000),
        );
        err.nat = Some(Nat::UNNAT);
        let out = ct.execute(&err, 1);
        assert_eq!(out.state, TRK | REL | DNAT);
        assert_eq!(out.rewrite, Some(Tuple::new(A, D1, ipproto::ICMP, 0, 0)));
        assert_eq!(out.rewrite_inner, Some(tcp(D1, 8080, A, 40000)));
    }

    #[test]
    fn zones_isolate() {
        let mut ct = ct();
        let t = udp(A, 5000, B, 53);
        let mut z1 = pkt(t, true);
        z1.zone = 1;
        let mut z2 = pkt(t, true);
        z2.zone = 2;
        assert_eq!(ct.execute(&z1, 0).state, TRK | NEW);
        let mut r1 = pkt(t.reverse(), false);
        r1.zone = 1;
        assert_eq!(ct.execute(&r1, 1).state, TRK | EST | RPL);
        // Same tuple in zone 2 is a different connection.
        z2.commit = false;
        assert_eq!(ct.execute(&z2, 2).state, TRK | NEW);
        z2.commit = true;
        assert_eq!(ct.execute(&z2, 2).state, TRK | NEW);
        assert_eq!(ct.len(), 2);
        let mut r2 = pkt(t.reverse(), false);
        r2.zone = 2;
        assert_eq!(ct.execute(&r2, 3).state, TRK | EST | RPL);
        // Zone 0 knows nothing.
        assert_eq!(ct.execute(&pkt(t, false), 3).state, TRK | NEW);
        assert_eq!(ct.flush(Some(1)), 1);
        assert_eq!(ct.execute(&r1, 4).state, TRK | NEW);
        assert_eq!(ct.execute(&r2, 4).state, TRK | EST | RPL);
        assert_eq!(ct.flush(None), 1);
        assert!(ct.is_empty());
    }

    #[test]
    fn dnat_to_backend_and_unnat_reply() {
        let mut ct = ct();
        let t = tcp(A, 40000, VIP, 80);
        let dnat = nat(NatKind::Dst, D1, D1, 8080, 8080);
        let out = ct.execute(&with_nat(seg(t, SYN, true), dnat), 0);
        assert_eq!(out.state, TRK | NEW | DNAT);
        assert_eq!(out.rewrite, Some(tcp(A, 40000, D1, 8080)));
        // The backend answers to the client; un-DNAT restores the VIP.
        let back = tcp(D1, 8080, A, 40000);
        let out = ct.execute(&with_nat(seg(back, SYN | ACK, false), Nat::UNNAT), 1);
        assert_eq!(out.state, TRK | EST | RPL | SNAT);
        assert_eq!(out.rewrite, Some(tcp(VIP, 80, A, 40000)));
        // Later client packets through ct(nat) keep going to the backend,
        // whatever range a re-evaluated nat(dst=...) gives.
        let out = ct.execute(&with_nat(seg(t, ACK, false), Nat::UNNAT), 2);
        assert_eq!(out.state, TRK | EST | DNAT);
        assert_eq!(out.rewrite, Some(tcp(A, 40000, D1, 8080)));
        let other = nat(NatKind::Dst, C, C, 0, 0);
        let out = ct.execute(&with_nat(seg(t, ACK, true), other), 3);
        assert_eq!(out.rewrite, Some(tcp(A, 40000, D1, 8080)));
        // ct without nat: tracked, not translated.
        let out = ct.execute(&seg(t, ACK, false), 4);
        assert_eq!((out.state, out.rewrite), (TRK | EST, None));
        assert_eq!(
            ct.dump().next().unwrap().to_string(),
            "tcp,orig=(src=10.0.0.1,dst=10.96.0.10,sport=40000,dport=80),\
             reply=(src=10.244.1.5,dst=10.0.0.1,sport=8080,dport=40000),\
             protoinfo=(state=ESTABLISHED)"
        );
        assert_eq!(ct.dump().next().unwrap().nat, Some(NatKind::Dst));
    }

    #[test]
    fn dnat_address_range_is_deterministic_and_keeps_port() {
        let lo = Ipv4Addr::new(10, 244, 0, 1);
        let hi = Ipv4Addr::new(10, 244, 0, 8);
        let range = nat(NatKind::Dst, lo, hi, 0, 0);
        let mut seen = std::collections::HashSet::new();
        for sport in 1000..1064u16 {
            let t = tcp(A, sport, VIP, 80);
            let mut c1 = ct();
            let mut c2 = ct();
            let o1 = c1.execute(&with_nat(seg(t, SYN, true), range), 0);
            let o2 = c2.execute(&with_nat(seg(t, SYN, true), range), 0);
            assert_eq!(o1, o2);
            let r = o1.rewrite.unwrap();
            assert!(r.dst >= lo && r.dst <= hi);
            assert_eq!((r.src, r.sport, r.dport), (A, sport, 80));
            seen.insert(r.dst);
        }
        // The hash spreads connections over the range.
        assert!(seen.len() >= 6, "{seen:?}");
    }

    #[test]
    fn snat_port_range_with_collisions() {
        let mut ct = ct();
        let snat = nat(NatKind::Src, NATIP, NATIP, 5000, 5003);
        let mut ports = Vec::new();
        for sport in 0..4u16 {
            let t = udp(A, 10000 + sport, B, 53);
            let out = ct.execute(&with_nat(pkt(t, true), snat), 0);
            assert_eq!(out.state, TRK | NEW | SNAT);
            let r = out.rewrite.unwrap();
            assert_eq!((r.src, r.dst, r.dport), (NATIP, B, 53));
            assert!((5000..=5003).contains(&r.sport));
            ports.push(r.sport);
            // The server's reply to the translated port is un-NATed.
            let out = ct.execute(
                &with_nat(pkt(udp(B, 53, NATIP, r.sport), false), Nat::UNNAT),
                1,
            );
            assert_eq!(out.state, TRK | EST | RPL | DNAT);
            assert_eq!(out.rewrite, Some(t.reverse()));
        }
        ports.sort_unstable();
        assert_eq!(ports, [5000, 5001, 5002, 5003]);
        // Range exhausted: invalid, nothing created.
        let out = ct.execute(&with_nat(pkt(udp(A, 20000, B, 53), true), snat), 2);
        assert_eq!(out.state, TRK | INV);
        assert_eq!(ct.len(), 4);
        // A different destination does not collide.
        let out = ct.execute(&with_nat(pkt(udp(A, 20000, C, 53), true), snat), 2);
        assert_eq!(out.state, TRK | NEW | SNAT);
        // Expired holders free their ports.
        let out = ct.execute(&with_nat(pkt(udp(A, 20000, B, 53), true), snat), 60_000);
        assert_eq!(out.state, TRK | NEW | SNAT);
    }

    #[test]
    fn snat_without_port_range_keeps_port_then_ephemeral() {
        let mut ct = ct();
        let snat = nat(NatKind::Src, NATIP, NATIP, 0, 0);
        let out = ct.execute(&with_nat(pkt(udp(A, 3333, B, 53), true), snat), 0);
        assert_eq!(out.rewrite, Some(udp(NATIP, 3333, B, 53)));
        // Another client with the same source port collides.
        let out = ct.execute(&with_nat(pkt(udp(C, 3333, B, 53), true), snat), 0);
        let r = out.rewrite.unwrap();
        assert_eq!(r.src, NATIP);
        assert!(r.sport >= 1024 && r.sport != 3333, "{r:?}");
        assert_eq!(out.state, TRK | NEW | SNAT);
    }

    #[test]
    fn snat_address_range_collisions_walk_addresses() {
        let mut ct = ct();
        let lo = Ipv4Addr::new(192, 168, 0, 1);
        let hi = Ipv4Addr::new(192, 168, 0, 3);
        // One port, three addresses: three connections fit.
        let snat = nat(NatKind::Src, lo, hi, 7000, 7000);
        let mut addrs = Vec::new();
        for sport in 0..3u16 {
            let out = ct.execute(&with_nat(pkt(udp(A, sport + 1, B, 53), true), snat), 0);
            let r = out.rewrite.unwrap();
            assert_eq!(r.sport, 7000);
            addrs.push(r.src);
        }
        addrs.sort_unstable();
        assert_eq!(addrs, [lo, Ipv4Addr::new(192, 168, 0, 2), hi]);
        let out = ct.execute(&with_nat(pkt(udp(A, 9, B, 53), true), snat), 0);
        assert_eq!(out.state, TRK | INV);
    }

    #[test]
    fn snat_icmp_translates_identifier() {
        let mut ct = ct();
        let snat = nat(NatKind::Src, NATIP, NATIP, 0, 0);
        let req_a = Tuple::new(A, B, ipproto::ICMP, 7, 0);
        let req_c = Tuple::new(C, B, ipproto::ICMP, 7, 0);
        let out = ct.execute(
            &with_nat(icmp(req_a, icmp_type::ECHO_REQUEST, true), snat),
            0,
        );
        assert_eq!(out.rewrite, Some(Tuple::new(NATIP, B, ipproto::ICMP, 7, 0)));
        let out = ct.execute(
            &with_nat(icmp(req_c, icmp_type::ECHO_REQUEST, true), snat),
            0,
        );
        let r = out.rewrite.unwrap();
        assert_ne!(r.sport, 7);
        let mut reply = icmp(r.reverse(), icmp_type::ECHO_REPLY, false);
        reply.nat = Some(Nat::UNNAT);
        let out = ct.execute(&reply, 1);
        assert_eq!(out.state, TRK | EST | RPL | DNAT);
        assert_eq!(out.rewrite, Some(req_c.reverse()));
    }

    #[test]
    fn nat_needs_commit_and_invalid_range() {
        let mut ct = ct();
        let t = tcp(A, 40000, VIP, 80);
        let dnat = nat(NatKind::Dst, D1, D1, 0, 0);
        let out = ct.execute(&with_nat(seg(t, SYN, false), dnat), 0);
        assert_eq!((out.state, out.rewrite), (TRK | NEW, None));
        let bad = nat(NatKind::Dst, D1, Ipv4Addr::new(10, 0, 0, 0), 0, 0);
        assert_eq!(
            ct.execute(&with_nat(seg(t, SYN, true), bad), 0).state,
            TRK | INV
        );
        // Plain nat on a new connection commits it without translation.
        let out = ct.execute(&with_nat(seg(t, SYN, true), Nat::UNNAT), 0);
        assert_eq!((out.state, out.rewrite), (TRK | NEW, None));
        assert_eq!(ct.dump().next().unwrap().nat, None);
    }

    #[test]
    fn reverse_tuple_owned_by_natted_connection() {
        let mut ct = ct();
        // A → VIP is DNATed to D1; its reply key is D1 → A.
        let dnat = nat(NatKind::Dst, D1, D1, 0, 0);
        ct.execute(&with_nat(seg(tcp(A, 40000, VIP, 80), SYN, true), dnat), 0);
        // A direct A → D1 connection on the same ports cannot be told apart.
        assert_eq!(
            ct.execute(&seg(tcp(A, 40000, D1, 80), SYN, true), 0).state,
            TRK | INV
        );
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn max_conns_limit() {
        let mut ct = ConnTrack::new(CtConfig {
            max_conns: 2,
            timeouts: timeouts(),
        });
        assert_eq!(ct.execute(&pkt(udp(A, 1, B, 53), true), 0).state, TRK | NEW);
        assert_eq!(ct.execute(&pkt(udp(A, 2, B, 53), true), 0).state, TRK | NEW);
        assert_eq!(ct.execute(&pkt(udp(A, 3, B, 53), true), 0).state, TRK | INV);
        // Without commit the packet is merely new.
        assert_eq!(
            ct.execute(&pkt(udp(A, 3, B, 53), false), 0).state,
            TRK | NEW
        );
        // Existing connections keep working.
        assert_eq!(
            ct.execute(&pkt(udp(B, 53, A, 1), false), 1).state,
            TRK | EST | RPL
        );
        assert_eq!(ct.len(), 2);
        ct.flush(None);
        assert_eq!(ct.execute(&pkt(udp(A, 3, B, 53), true), 2).state, TRK | NEW);
        ct.set_max_conns(1);
        assert_eq!(ct.execute(&pkt(udp(A, 4, B, 53), true), 2).state, TRK | INV);
    }

    #[test]
    fn uncommitted_not_remembered() {
        let mut ct = ct();
        let t = tcp(A, 1234, B, 80);
        assert_eq!(ct.execute(&seg(t, SYN, false), 0).state, TRK | NEW);
        assert!(ct.is_empty());
        assert_eq!(ct.dump().count(), 0);
        // The answer is not recognised either: a SYN+ACK cannot start one.
        assert_eq!(
            ct.execute(&seg(t.reverse(), SYN | ACK, false), 1).state,
            TRK | INV
        );
        let u = udp(A, 1, B, 2);
        assert_eq!(ct.execute(&pkt(u, false), 0).state, TRK | NEW);
        assert_eq!(ct.execute(&pkt(u.reverse(), false), 0).state, TRK | NEW);
        assert!(ct.is_empty());
    }

    #[test]
    fn dump_format() {
        let mut ct = ct();
        let mut i = seg(tcp(A, 1234, B, 80), SYN, true);
        i.zone = 1;
        ct.execute(&i, 0);
        let mut r = seg(tcp(B, 80, A, 1234), SYN | ACK, false);
        r.zone = 1;
        ct.execute(&r, 0);
        i.tcp_flags = ACK;
        ct.execute(&i, 0);
        ct.execute(&pkt(udp(A, 5000, B, 53), true), 0);
        let lines: Vec<String> = ct.dump().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            [
                "tcp,orig=(src=10.0.0.1,dst=10.0.0.2,sport=1234,dport=80),\
                 reply=(src=10.0.0.2,dst=10.0.0.1,sport=80,dport=1234),\
                 zone=1,protoinfo=(state=ESTABLISHED)",
                "udp,orig=(src=10.0.0.1,dst=10.0.0.2,sport=5000,dport=53),\
                 reply=(src=10.0.0.2,dst=10.0.0.1,sport=53,dport=5000)",
            ]
        );
    }

    #[test]
    fn slots_are_reused() {
        let mut ct = ct();
        for round in 0..3u64 {
            for p in 0..10u16 {
                ct.execute(&pkt(udp(A, p, B, 53), true), round * 10_000);
            }
            assert_eq!(ct.len(), 10);
            assert_eq!(ct.expire(round * 10_000 + 5_000), 10);
        }
        assert_eq!(ct.conns.len(), 10);
        assert!(ct.map.is_empty());
    }

    /// Every key points at a live connection whose matching direction holds
    /// that key, and every connection has its keys.
    fn check_invariants(ct: &ConnTrack) {
        let mut n = 0;
        for (key, slot) in &ct.map {
            let c = ct.conn(slot.idx).expect("key points at a live connection");
            let t = if slot.reply { c.reply } else { c.orig };
            assert_eq!((key.zone, key.tuple), (c.zone, t));
            n += 1;
        }
        let mut keys = 0;
        for c in ct.conns.iter().flatten() {
            keys += if c.orig == c.reply { 1 } else { 2 };
        }
        assert_eq!(n, keys);
        assert_eq!(ct.conns.iter().flatten().count(), ct.len());
        assert!(ct.len() <= ct.config.max_conns);
    }

    proptest! {
        #[test]
        fn random_traffic_keeps_table_consistent(
            ops in proptest::collection::vec(
                (0u8..4, 0u16..4, 0u16..4, any::<bool>(), any::<bool>(), 0u8..6, 0u8..5, 0u64..3000),
                1..200,
            )
        ) {
            let mut ct = ConnTrack::new(CtConfig { max_conns: 12, timeouts: timeouts() });
            let hosts = [A, B, C, NATIP];
            let mut now = 0;
            for (proto_sel, h, p, commit, rev, flags_sel, nat_sel, dt) in ops {
                now += dt;
                let proto = [ipproto::TCP, ipproto::UDP, ipproto::ICMP, 47][proto_sel as usize];
                let mut t = Tuple::new(hosts[h as usize], hosts[(h as usize + 1) % 4], proto, 1000 + p, 80);
                if proto == ipproto::ICMP { t.dport = 0; }
                if proto == 47 { t.sport = 0; t.dport = 0; }
                if rev { t = t.reverse(); }
                let flags = [SYN, SYN | ACK, ACK, FIN | ACK, RST, ACK | PSH][flags_sel as usize];
                let nat_arg = match nat_sel {
                    0 => None,
                    1 => Some(Nat::UNNAT),
                    2 => Some(nat(NatKind::Src, NATIP, NATIP, 5000, 5002)),
                    3 => Some(nat(NatKind::Dst, D1, Ipv4Addr::new(10, 244, 1, 6), 0, 0)),
                    _ => Some(nat(NatKind::Src, NATIP, NATIP, 0, 0)),
                };
                let input = CtInput {
                    tuple: t,
                    zone: h % 2,
                    tcp_flags: if proto == ipproto::TCP { flags } else { 0 },
                    icmp_type: if proto == ipproto::ICMP {
                        if rev { icmp_type::ECHO_REPLY } else { icmp_type::ECHO_REQUEST }
                    } else { 0 },
                    icmp_code: 0,
                    commit,
                    nat: nat_arg,
                    related_inner: None,
                };
                let out = ct.execute(&input, now);
                prop_assert!(out.state & TRK != 0);
                prop_assert_eq!(out.state & (NEW | EST | INV | REL) != 0, true);
                if out.state & INV != 0 {
                    prop_assert_eq!(out.state, TRK | INV);
                }
                check_invariants(&ct);
                if now % 7 == 0 {
                    ct.expire(now);
                    check_invariants(&ct);
                }
            }
        }
    }
}
