//! The `ovs-ofctl` flow text syntax: parsing what users type for
//! `add-flow`/`add-flows`/`del-flows`/`mod-flows`/`add-group` and
//! `ferrovs-ctl trace`, and printing flows, matches, actions and groups
//! exactly the way `ovs-ofctl dump-flows`/`dump-groups` does.
//!
//! Everything here is a pure function on strings. Errors carry the byte
//! column (1-based) of the offending text, the field or action concerned,
//! and, for files, the line number:
//! `line 3, column 12, field tp_dst: '70000' is above 65535`.
//!
//! Printing follows OVS 3.x (`match_format`, `ofputil_flow_stats_format`):
//! the protocol shorthand (`tcp`, `arp`, ...) replaces `dl_type`/`nw_proto`,
//! fields come in OVS's fixed order, masks that are prefixes print as CIDR,
//! and `parse(format(x)) == x` for every valid flow.

mod actions;
mod value;

#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::action::{Action, Bucket, Group, GroupType, PortNo};
use crate::field::{ethertype, ipproto, Field, Prereq};
use crate::flow_match::Match;
use crate::key::{width_mask, FlowKey, VLAN_CFI};
use crate::pipeline::{FlowEntry, FlowFilter, FlowSpec, DEFAULT_PRIORITY};

pub use value::PortNames;
use value::{fmt_field_value, maskable, parse_field_value, parse_max, parse_num, parse_port_with};

/// What went wrong, without the position (see [`SyntaxError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxErrorKind {
    /// A match key that is neither a field nor a flow property.
    #[error("unknown field '{0}'")]
    UnknownField(String),
    /// A bad value for a known field or flow property.
    #[error("field {field}: {msg}")]
    Field {
        /// The field or property, as written.
        field: String,
        /// What is wrong with it.
        msg: String,
    },
    /// An action name that does not exist.
    #[error("unknown action '{0}'")]
    UnknownAction(String),
    /// A bad argument to a known action.
    #[error("action {action}: {msg}")]
    Action {
        /// The action.
        action: String,
        /// What is wrong.
        msg: String,
    },
    /// A field is matched without the protocol it belongs to (as OVS).
    #[error("field {field} needs {needs}")]
    Prerequisite {
        /// The field, as written.
        field: String,
        /// What the match must also contain.
        needs: &'static str,
    },
    /// Anything else (structure of the text).
    #[error("{0}")]
    Syntax(String),
}

/// A parse error: where (line for files, 1-based byte column) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line number when parsing a file.
    pub line: Option<usize>,
    /// 1-based byte column within the line.
    pub column: usize,
    /// What is wrong.
    pub kind: SyntaxErrorKind,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}, ")?;
        }
        write!(f, "column {}, {}", self.column, self.kind)
    }
}

impl std::error::Error for SyntaxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}

/// The text being parsed, so that sub-slices can be turned into columns.
#[derive(Clone, Copy)]
pub(crate) struct Src<'a> {
    base: &'a str,
    names: Option<PortNames<'a>>,
}

impl<'a> Src<'a> {
    fn new(base: &'a str, names: Option<PortNames<'a>>) -> Self {
        Src { base, names }
    }

    /// Parses a port number, reserved name or (with a resolver) port name.
    pub(crate) fn port(&self, s: &str) -> Result<PortNo, String> {
        parse_port_with(s, self.names)
    }

    /// 1-based column of `at`, which must be a sub-slice of the base text
    /// (anything else reports column 1).
    fn col(&self, at: &str) -> usize {
        let b = self.base.as_ptr() as usize;
        let p = at.as_ptr() as usize;
        if p >= b && p <= b + self.base.len() {
            p - b + 1
        } else {
            1
        }
    }

    pub(crate) fn err(&self, at: &str, kind: SyntaxErrorKind) -> SyntaxError {
        SyntaxError {
            line: None,
            column: self.col(at),
            kind,
        }
    }

    fn field_err(&self, at: &str, field: &str, msg: impl Into<String>) -> SyntaxError {
        self.err(
            at,
            SyntaxErrorKind::Field {
                field: field.to_string(),
                msg: msg.into(),
            },
        )
    }
}

/// True if `m` satisfies `field`'s prerequisite (checked per written name,
/// so `arp_spa` on an `ip` match is refused, as in OVS).
pub(crate) fn prereq_ok(field: Field, m: &Match) -> bool {
    let exact = |f: Field| m.is_exact(f).then(|| m.key.get(f));
    let dl = exact(Field::DlType);
    let proto = exact(Field::NwProto);
    let ip = dl == Some(ethertype::IPV4 as u64);
    match field.prerequisite() {
        Prereq::None => true,
        Prereq::IpOrArp => ip || dl == Some(ethertype::ARP as u64),
        Prereq::Arp => dl == Some(ethertype::ARP as u64),
        Prereq::TcpUdpSctp => {
            ip && matches!(proto, Some(p) if p == ipproto::TCP as u64 || p == ipproto::UDP as u64 || p == ipproto::SCTP as u64)
        }
        Prereq::Icmp => ip && proto == Some(ipproto::ICMP as u64),
    }
}

/// Human text for a prerequisite.
pub(crate) fn prereq_text(p: Prereq) -> &'static str {
    match p {
        Prereq::None => "nothing",
        Prereq::IpOrArp => "ip or arp",
        Prereq::Arp => "arp",
        Prereq::TcpUdpSctp => "tcp, udp or sctp",
        Prereq::Icmp => "icmp",
    }
}

// ---------------------------------------------------------------------------
// Parsing

/// Which command the text is for; decides which keys are allowed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `add-flow`: actions required, timeouts allowed, cookie without mask.
    Add,
    /// `del-flows`/`dump-flows`: no actions, `out_port`, cookie mask.
    Filter,
    /// `mod-flows`: like `Filter` plus actions.
    Modify,
    /// `trace` packet: fields only, no masks.
    Packet,
}

/// Everything the text can say.
#[derive(Default)]
struct Parsed {
    table: Option<u8>,
    priority: Option<u16>,
    cookie: Option<(u64, u64)>,
    idle_timeout: u16,
    hard_timeout: u16,
    out_port: Option<PortNo>,
    m: Match,
    actions: Option<Vec<Action>>,
}

/// Splits off the actions: returns `(match part, actions part)` where the
/// actions part follows the first `actions=` (or `action=`) keyword.
fn split_actions(s: &str) -> (&str, Option<&str>) {
    for (i, _) in s.match_indices("action") {
        let boundary = i == 0 || matches!(s.as_bytes()[i - 1], b',' | b' ' | b'\t');
        if !boundary {
            continue;
        }
        let mut rest = &s[i + "action".len()..];
        rest = rest.strip_prefix('s').unwrap_or(rest);
        if let Some(r) = rest.trim_start().strip_prefix('=') {
            return (&s[..i], Some(r));
        }
    }
    (s, None)
}

/// Splits a match into `key[=value]` items separated by commas or spaces.
fn match_items(s: &str) -> Vec<(&str, Option<&str>)> {
    let b = s.as_bytes();
    let is_sep = |c: u8| c == b',' || c.is_ascii_whitespace();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && is_sep(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !is_sep(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        let mut value = None;
        if i < b.len() && b[i] == b'=' {
            i += 1;
            let vs = i;
            while i < b.len() && !is_sep(b[i]) {
                i += 1;
            }
            value = Some(&s[vs..i]);
        }
        out.push((key, value));
    }
    out
}

/// The protocol shorthands: `(name, dl_type, nw_proto)`.
const SHORTHANDS: [(&str, u16, Option<u8>); 7] = [
    ("ip", ethertype::IPV4, None),
    ("arp", ethertype::ARP, None),
    ("ipv6", ethertype::IPV6, None),
    ("icmp", ethertype::IPV4, Some(ipproto::ICMP)),
    ("tcp", ethertype::IPV4, Some(ipproto::TCP)),
    ("udp", ethertype::IPV4, Some(ipproto::UDP)),
    ("sctp", ethertype::IPV4, Some(ipproto::SCTP)),
];

/// OVS match fields and shorthands that ferrovs does not implement (so the
/// error says "not supported" rather than "unknown").
const UNSUPPORTED_FIELDS: &[&str] = &[
    "ipv6_src",
    "ipv6_dst",
    "ipv6_label",
    "nd_target",
    "nd_sll",
    "nd_tll",
    "tcp6",
    "udp6",
    "sctp6",
    "icmp6",
    "icmpv6_type",
    "icmpv6_code",
    "rarp",
    "mpls",
    "mplsm",
    "mpls_label",
    "mpls_tc",
    "mpls_bos",
    "mpls_ttl",
    "igmp",
    "nw_ttl",
    "nw_ecn",
    "ip_ecn",
    "ip_dscp",
    "nw_frag",
    "ip_frag",
    "tcp_flags",
    "arp_sha",
    "arp_tha",
    "ct_mark",
    "ct_label",
    "ct_nw_src",
    "ct_nw_dst",
    "ct_nw_proto",
    "ct_tp_src",
    "ct_tp_dst",
    "pkt_mark",
    "skb_priority",
    "dp_hash",
    "actset_output",
    "packet_type",
    "tun_flags",
    "tun_gbp_id",
    "tun_gbp_flags",
    "tun_tos",
    "tun_ttl",
    "tun_ipv6_src",
    "tun_ipv6_dst",
    "dl_vlan1",
    "vlan_tci1",
    "xreg0",
    "xxreg0",
    "reg8",
    "reg9",
    "reg10",
    "reg11",
    "reg12",
    "reg13",
    "reg14",
    "reg15",
];

/// Applies `key=value` for a match field to `m`.
fn apply_field(
    src: Src<'_>,
    m: &mut Match,
    field: Field,
    key: &str,
    value: &str,
    packet: bool,
) -> Result<(), SyntaxError> {
    let ferr = |msg: String| src.field_err(value, key, msg);
    let no_mask = |what: &str| -> Result<(), SyntaxError> {
        if value.contains('/') {
            return Err(ferr(format!("'{value}': {what}")));
        }
        Ok(())
    };
    // ct_state's `+trk-new` and `0x100/0xffff` forms are fine in a packet:
    // only the value counts.
    if packet && field != Field::CtState {
        no_mask("masks are not allowed in a packet description")?;
    }
    let cfi = VLAN_CFI as u64;
    match field {
        Field::DlVlan => {
            no_mask("dl_vlan cannot be masked (use vlan_tci=VALUE/MASK)")?;
            let v = parse_num(value).map_err(ferr)?;
            if v == 0xffff {
                m.set_masked(Field::VlanTci, 0, 0xffff);
            } else if v > 4095 {
                return Err(ferr(format!(
                    "'{value}' is above 4095 (0xffff means no VLAN)"
                )));
            } else {
                m.set_masked(Field::VlanTci, v | cfi, 0x0fff | cfi);
            }
        }
        Field::DlVlanPcp => {
            no_mask("dl_vlan_pcp cannot be masked")?;
            let v = parse_max(value, 7).map_err(ferr)?;
            m.set_masked(Field::VlanTci, (v << 13) | cfi, 0xe000 | cfi);
        }
        Field::IcmpType | Field::IcmpCode => {
            no_mask(&format!("{key} cannot be masked"))?;
            let v = parse_max(value, 255).map_err(ferr)?;
            m.set(field, v);
        }
        Field::NwTos => {
            no_mask("nw_tos cannot be masked")?;
            let v = parse_max(value, 255).map_err(ferr)?;
            if v & 3 != 0 {
                return Err(ferr(format!(
                    "'{value}' has ECN bits set (nw_tos is the DSCP byte, a multiple of 4)"
                )));
            }
            m.set_masked(Field::NwTos, v, 0xfc);
        }
        _ => {
            let (v, mask) = parse_field_value(field, value, src.names).map_err(ferr)?;
            let mask = match mask {
                Some(_) if packet => None,
                Some(_) if !maskable(field) => {
                    return Err(ferr(format!("'{value}': {key} cannot be masked")))
                }
                mask => mask,
            };
            let full = width_mask(field.width());
            if packet {
                m.set(field, v);
            } else {
                m.set_masked(field, v, mask.unwrap_or(full));
            }
        }
    }
    Ok(())
}

fn parse_common(
    text: &str,
    mode: Mode,
    names: Option<PortNames<'_>>,
) -> Result<Parsed, SyntaxError> {
    let src = Src::new(text, names);
    let (match_part, actions_part) = split_actions(text);
    let mut p = Parsed::default();
    let mut fields: Vec<(Field, &str)> = Vec::new();
    let not_here =
        |key: &str, what: &str| src.field_err(key, key, format!("not allowed in {what}"));
    let what = match mode {
        Mode::Add => "add-flow",
        Mode::Filter => "a flow filter",
        Mode::Modify => "mod-flows",
        Mode::Packet => "a packet description",
    };
    for (key, value) in match_items(match_part) {
        if key.is_empty() {
            return Err(src.err(
                key,
                SyntaxErrorKind::Syntax("missing field name before '='".into()),
            ));
        }
        let val = || -> Result<&str, SyntaxError> {
            match value {
                Some(v) if !v.is_empty() => Ok(v),
                Some(v) => Err(src.field_err(v, key, "missing value after '='")),
                None => Err(src.field_err(key, key, format!("missing value (write {key}=VALUE)"))),
            }
        };
        match key {
            "table" | "priority" | "cookie" if mode == Mode::Packet => {
                return Err(not_here(key, what))
            }
            "table" => {
                let v = val()?;
                let max = if mode == Mode::Add { 254 } else { 255 };
                let t = parse_max(v, max).map_err(|e| src.field_err(v, key, e))?;
                p.table = (t != 255).then_some(t as u8);
            }
            "priority" => {
                let v = val()?;
                p.priority =
                    Some(parse_max(v, 65535).map_err(|e| src.field_err(v, key, e))? as u16);
            }
            "cookie" => {
                let v = val()?;
                let (c, m) = match v.split_once('/') {
                    Some((c, m)) => (c, Some(m)),
                    None => (v, None),
                };
                let c = parse_num(c).map_err(|e| src.field_err(v, key, e))?;
                let m = match m {
                    Some(_) if mode == Mode::Add => {
                        return Err(src.field_err(
                            v,
                            key,
                            "flow additions cannot use a cookie mask",
                        ))
                    }
                    Some("-1") => u64::MAX,
                    Some(m) => parse_num(m).map_err(|e| src.field_err(m, key, e))?,
                    None => u64::MAX,
                };
                p.cookie = Some((c, m));
            }
            "idle_timeout" | "hard_timeout" => {
                if mode != Mode::Add {
                    return Err(not_here(key, what));
                }
                let v = val()?;
                let t = parse_max(v, 65535).map_err(|e| src.field_err(v, key, e))? as u16;
                if key == "idle_timeout" {
                    p.idle_timeout = t;
                } else {
                    p.hard_timeout = t;
                }
            }
            "out_port" => {
                if !matches!(mode, Mode::Filter | Mode::Modify) {
                    return Err(not_here(key, what));
                }
                let v = val()?;
                p.out_port = Some(src.port(v).map_err(|e| src.field_err(v, key, e))?);
            }
            "importance" | "send_flow_rem" | "check_overlap" | "reset_counts"
            | "no_packet_counts" | "no_byte_counts" | "out_group" | "duration" | "n_packets"
            | "n_bytes" | "idle_age" | "hard_age" => {
                return Err(src.field_err(key, key, "not supported by ferrovs"));
            }
            _ => {
                if let Some((_, dl, proto)) = SHORTHANDS.iter().find(|(n, _, _)| *n == key) {
                    if value.is_some() {
                        return Err(src.field_err(key, key, "protocol shorthand takes no value"));
                    }
                    p.m.set(Field::DlType, *dl as u64);
                    if let Some(pr) = proto {
                        p.m.set(Field::NwProto, *pr as u64);
                    }
                    continue;
                }
                let Some(field) = Field::from_name(key) else {
                    if UNSUPPORTED_FIELDS.contains(&key) {
                        return Err(src.field_err(key, key, "not supported by ferrovs"));
                    }
                    return Err(src.err(key, SyntaxErrorKind::UnknownField(key.to_string())));
                };
                let v = val()?;
                apply_field(src, &mut p.m, field, key, v, mode == Mode::Packet)?;
                fields.push((field, key));
            }
        }
    }
    for (field, key) in &fields {
        let (_, mask) = p.m.get(*field);
        if mask != 0 && !prereq_ok(*field, &p.m) {
            return Err(src.err(
                key,
                SyntaxErrorKind::Prerequisite {
                    field: key.to_string(),
                    needs: prereq_text(field.prerequisite()),
                },
            ));
        }
    }
    if let Err((f, pr)) = p.m.check_prerequisites() {
        return Err(src.err(
            match_part,
            SyntaxErrorKind::Prerequisite {
                field: f.name().to_string(),
                needs: prereq_text(pr),
            },
        ));
    }
    match (mode, actions_part) {
        (Mode::Add | Mode::Modify, Some(a)) => {
            p.actions = Some(actions::parse_actions(src, a, Some(&p.m))?);
        }
        (Mode::Add | Mode::Modify, None) => {
            return Err(src.err(
                &text[text.len()..],
                SyntaxErrorKind::Syntax("missing actions= (write actions=drop to drop)".into()),
            ));
        }
        (Mode::Filter | Mode::Packet, Some(a)) => {
            return Err(src.err(
                a,
                SyntaxErrorKind::Syntax(format!("actions are not allowed in {what}")),
            ));
        }
        (Mode::Filter | Mode::Packet, None) => {}
    }
    Ok(p)
}

/// Parses an `add-flow` line: `table=0,priority=100,tcp,tp_dst=80 actions=output:2`.
pub fn parse_flow(text: &str) -> Result<FlowSpec, SyntaxError> {
    Parser::new().flow(text)
}

fn flow_of(text: &str, names: Option<PortNames<'_>>) -> Result<FlowSpec, SyntaxError> {
    let p = parse_common(text, Mode::Add, names)?;
    Ok(FlowSpec {
        table: p.table.unwrap_or(0),
        priority: p.priority.unwrap_or(DEFAULT_PRIORITY),
        m: p.m,
        actions: p.actions.unwrap_or_default(),
        cookie: p.cookie.map(|c| c.0).unwrap_or(0),
        idle_timeout: p.idle_timeout,
        hard_timeout: p.hard_timeout,
    })
}

/// Runs `parse` on each non-blank, non-`#` line; errors get the line number.
fn parse_lines<T>(
    text: &str,
    parse: impl Fn(&str) -> Result<T, SyntaxError>,
) -> Result<Vec<T>, SyntaxError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        out.push(parse(line).map_err(|mut e| {
            e.line = Some(i + 1);
            e
        })?);
    }
    Ok(out)
}

/// Parses an `add-flows FILE`: one flow a line, `#` comments and blank
/// lines skipped; errors carry the 1-based line number.
pub fn parse_flows_file(text: &str) -> Result<Vec<FlowSpec>, SyntaxError> {
    Parser::new().flows_file(text)
}

fn filter_of(p: &Parsed, strict: bool) -> FlowFilter {
    let (cookie, cookie_mask) = p.cookie.unwrap_or((0, 0));
    FlowFilter {
        table: p.table,
        m: p.m,
        priority: p.priority.unwrap_or(DEFAULT_PRIORITY),
        cookie: cookie & cookie_mask,
        cookie_mask,
        out_port: p.out_port,
        strict,
    }
}

/// Parses the match text of `del-flows`/`dump-flows`: `table=`, `cookie=V/M`
/// (`cookie=V` means `V/-1`), `out_port=`, `priority=` (strict only) and
/// match fields. The empty string selects everything.
pub fn parse_filter(text: &str, strict: bool) -> Result<FlowFilter, SyntaxError> {
    Parser::new().filter(text, strict)
}

/// Parses `mod-flows` text, `MATCH actions=...`, into a non-strict filter and
/// the new actions (set `filter.strict` for `--strict`).
pub fn parse_mod_flow(text: &str) -> Result<(FlowFilter, Vec<Action>), SyntaxError> {
    Parser::new().mod_flow(text)
}

/// Parses a packet description for `ferrovs-ctl trace`, in `ofproto/trace`
/// style: `in_port=1,tcp,nw_src=10.0.0.1,tp_dst=80`. Fields not given are 0.
pub fn parse_packet(text: &str) -> Result<FlowKey, SyntaxError> {
    Parser::new().packet(text)
}

/// The parsers, optionally resolving port names (`in_port=veth0`,
/// `output:veth1`, `out_port=veth1`) through the caller's port table.
/// Numbers and reserved names (`LOCAL`, ...) take precedence over names.
/// The free functions ([`parse_flow`], ...) are `Parser::new()` methods.
#[derive(Clone, Copy, Default)]
pub struct Parser<'a> {
    names: Option<PortNames<'a>>,
}

impl std::fmt::Debug for Parser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parser")
            .field("port_names", &self.names.is_some())
            .finish()
    }
}

impl<'a> Parser<'a> {
    /// A parser that knows only port numbers and reserved names.
    pub fn new() -> Self {
        Parser { names: None }
    }

    /// A parser that also resolves port names with `names`.
    pub fn with_port_names(names: PortNames<'a>) -> Self {
        Parser { names: Some(names) }
    }

    /// See [`parse_flow`].
    pub fn flow(&self, text: &str) -> Result<FlowSpec, SyntaxError> {
        flow_of(text, self.names)
    }

    /// See [`parse_flows_file`].
    pub fn flows_file(&self, text: &str) -> Result<Vec<FlowSpec>, SyntaxError> {
        parse_lines(text, |l| self.flow(l))
    }

    /// See [`parse_filter`].
    pub fn filter(&self, text: &str, strict: bool) -> Result<FlowFilter, SyntaxError> {
        let p = parse_common(text, Mode::Filter, self.names)?;
        Ok(filter_of(&p, strict))
    }

    /// See [`parse_mod_flow`].
    pub fn mod_flow(&self, text: &str) -> Result<(FlowFilter, Vec<Action>), SyntaxError> {
        let p = parse_common(text, Mode::Modify, self.names)?;
        let f = filter_of(&p, false);
        Ok((f, p.actions.unwrap_or_default()))
    }

    /// See [`parse_packet`].
    pub fn packet(&self, text: &str) -> Result<FlowKey, SyntaxError> {
        Ok(parse_common(text, Mode::Packet, self.names)?.m.key)
    }

    /// See [`parse_group`].
    pub fn group(&self, text: &str) -> Result<Group, SyntaxError> {
        parse_group_with(text, self.names)
    }

    /// See [`parse_groups_file`].
    pub fn groups_file(&self, text: &str) -> Result<Vec<Group>, SyntaxError> {
        parse_lines(text, |l| self.group(l))
    }
}

// ---------------------------------------------------------------------------
// Groups

/// Parses `add-group` text:
/// `group_id=1,type=select,bucket=weight:100,output:1,bucket=output:2`.
/// Buckets without `bucket_id:` are numbered on from the previous bucket
/// (starting at 0); select buckets weigh 1 unless `weight:` says otherwise.
/// `affinity_timeout=SECONDS` (ferrovs extension, with
/// `selection_method=hash,fields(...)`) makes the choice per client sticky
/// (see [`crate::affinity`]).
pub fn parse_group(text: &str) -> Result<Group, SyntaxError> {
    Parser::new().group(text)
}

fn parse_group_with(text: &str, names: Option<PortNames<'_>>) -> Result<Group, SyntaxError> {
    let src = Src::new(text, names);
    // Split at every `bucket=` that starts an item.
    let mut starts = Vec::new();
    for (i, _) in text.match_indices("bucket=") {
        if i == 0 || matches!(text.as_bytes()[i - 1], b',' | b' ' | b'\t') {
            starts.push(i);
        }
    }
    let head_end = starts.first().copied().unwrap_or(text.len());
    let head = &text[..head_end];
    let mut id = None;
    let mut kind = GroupType::All;
    let mut method: Option<&str> = None;
    let mut fields: Option<(&str, Vec<Field>)> = None;
    let mut affinity: Option<(&str, u32)> = None;
    for item in actions::split_top(src, head.trim_end_matches([',', ' ', '\t']))? {
        if let Some(inner) = item.strip_prefix("fields(") {
            let Some(inner) = inner.strip_suffix(')') else {
                return Err(src.field_err(item, "fields", "write fields(FIELD,...)"));
            };
            fields = Some((item, parse_hash_fields(src, inner)?));
            continue;
        }
        for (key, value) in match_items(item) {
            let v = match value {
                Some(v) if !v.is_empty() => v,
                _ => {
                    return Err(src.field_err(
                        key,
                        key,
                        format!("missing value (write {key}=VALUE)"),
                    ))
                }
            };
            match key {
                "group_id" => {
                    id = Some(
                        parse_max(v, 0xffff_ff00).map_err(|e| src.field_err(v, key, e))? as u32,
                    );
                }
                "type" => {
                    kind = match v {
                        "all" => GroupType::All,
                        "select" => GroupType::Select,
                        "indirect" => GroupType::Indirect,
                        "ff" | "fast_failover" => {
                            return Err(src.field_err(
                                v,
                                key,
                                "fast_failover groups are not supported by ferrovs",
                            ))
                        }
                        _ => {
                            return Err(src.field_err(
                                v,
                                key,
                                format!("unknown group type '{v}' (all, select or indirect)"),
                            ))
                        }
                    }
                }
                "selection_method" => match v {
                    "hash" | "dp_hash" => method = Some(v),
                    _ => {
                        return Err(src.field_err(
                            v,
                            key,
                            format!("unknown selection method '{v}' (hash or dp_hash)"),
                        ))
                    }
                },
                "affinity_timeout" => {
                    let secs =
                        parse_max(v, u32::MAX as u64).map_err(|e| src.field_err(v, key, e))?;
                    if secs == 0 {
                        return Err(src.field_err(v, key, "must be at least 1 (seconds)"));
                    }
                    affinity = Some((key, secs as u32));
                }
                "selection_method_param" | "fields" => {
                    return Err(src.field_err(key, key, "not supported by ferrovs"))
                }
                _ => return Err(src.err(key, SyntaxErrorKind::UnknownField(key.to_string()))),
            }
        }
    }
    let selection = match (method, fields) {
        (Some(m), _) if kind != GroupType::Select => {
            return Err(src.field_err(
                m,
                "selection_method",
                "only select groups have a selection method",
            ))
        }
        (Some("hash"), Some((_, f))) => Some(f),
        (Some(m @ "hash"), None) => {
            return Err(src.field_err(
                m,
                "selection_method",
                "hash needs the fields to hash, e.g. fields(nw_src)",
            ))
        }
        (_, Some((at, _))) => {
            return Err(src.field_err(at, "fields", "needs selection_method=hash"))
        }
        (_, None) => None,
    };
    let affinity_timeout = match affinity {
        Some((at, _)) if selection.is_none() => {
            return Err(src.field_err(
                at,
                "affinity_timeout",
                "needs selection_method=hash,fields(...) (the client to remember)",
            ))
        }
        a => a.map(|(_, secs)| secs),
    };
    let Some(id) = id else {
        return Err(src.err(head, SyntaxErrorKind::Syntax("missing group_id=N".into())));
    };
    let mut buckets: Vec<Bucket> = Vec::new();
    for (n, &s) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        let body = text[s + "bucket=".len()..end].trim_end_matches([',', ' ', '\t']);
        let b = parse_bucket(
            src,
            body,
            kind,
            buckets.last().map(|b| b.id + 1).unwrap_or(0),
        )?;
        if buckets.iter().any(|x| x.id == b.id) {
            return Err(src.err(
                &text[s..],
                SyntaxErrorKind::Syntax(format!("duplicate bucket_id {}", b.id)),
            ));
        }
        buckets.push(b);
    }
    if kind == GroupType::Indirect && buckets.len() > 1 {
        return Err(src.err(
            text,
            SyntaxErrorKind::Syntax("an indirect group has at most one bucket".into()),
        ));
    }
    Ok(Group {
        id,
        kind,
        buckets,
        selection,
        affinity_timeout,
    })
}

/// Parses the inside of a group's `fields(...)`: field names (OVS and
/// ferrovs spellings, `ip_src` = `nw_src`), without masks.
fn parse_hash_fields(src: Src<'_>, inner: &str) -> Result<Vec<Field>, SyntaxError> {
    let mut out: Vec<Field> = Vec::new();
    for name in actions::split_top(src, inner)? {
        if name.contains('=') {
            return Err(src.field_err(
                name,
                "fields",
                format!("'{name}': masks are not supported"),
            ));
        }
        let Some(f) = Field::from_name(name) else {
            return Err(src.field_err(name, "fields", format!("unknown field '{name}'")));
        };
        if f == Field::ConjId {
            return Err(src.field_err(name, "fields", "conj_id cannot be hashed"));
        }
        if !out.contains(&f) {
            out.push(f);
        }
    }
    if out.is_empty() {
        return Err(src.field_err(inner, "fields", "name at least one field"));
    }
    Ok(out)
}

fn parse_bucket(
    src: Src<'_>,
    body: &str,
    kind: GroupType,
    next_id: u32,
) -> Result<Bucket, SyntaxError> {
    let mut b = Bucket {
        id: next_id,
        weight: if kind == GroupType::Select { 1 } else { 0 },
        actions: Vec::new(),
    };
    let items = actions::split_top(src, body)?;
    let mut acts: Vec<&str> = Vec::new();
    let mut in_actions = false;
    for item in items {
        if in_actions {
            acts.push(item);
            continue;
        }
        if let Some(a) = item
            .strip_prefix("actions=")
            .or_else(|| item.strip_prefix("action="))
        {
            in_actions = true;
            if !a.trim().is_empty() {
                acts.push(a.trim());
            }
            continue;
        }
        let (k, v) = item.split_once([':', '=']).unwrap_or((item, ""));
        match k {
            "weight" => {
                if kind != GroupType::Select {
                    return Err(src.field_err(
                        item,
                        "weight",
                        "only select groups have bucket weights",
                    ));
                }
                b.weight = parse_max(v, u16::MAX as u64)
                    .map_err(|e| src.field_err(v, "weight", e))? as u16;
            }
            "bucket_id" => {
                b.id =
                    parse_max(v, 0xffff_ff00).map_err(|e| src.field_err(v, "bucket_id", e))? as u32;
            }
            "watch_port" | "watch_group" => {
                return Err(src.field_err(item, k, "not supported by ferrovs"));
            }
            _ => acts.push(item),
        }
    }
    b.actions = actions::parse_action_items(src, &acts, None)?;
    Ok(b)
}

/// Formats a group like `ovs-ofctl dump-groups`:
/// `group_id=1,type=select,bucket=bucket_id:0,weight:100,actions=output:1`.
pub fn format_group(g: &Group) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "group_id={},type={}",
        g.id,
        match g.kind {
            GroupType::All => "all",
            GroupType::Select => "select",
            GroupType::Indirect => "indirect",
        }
    );
    if let Some(fields) = &g.selection {
        s.push_str(",selection_method=hash,fields(");
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(f.name());
        }
        s.push(')');
    }
    if let Some(t) = g.affinity_timeout {
        let _ = write!(s, ",affinity_timeout={t}");
    }
    for b in &g.buckets {
        let _ = write!(s, ",bucket=bucket_id:{},", b.id);
        let default_weight = if g.kind == GroupType::Select { 1 } else { 0 };
        if b.weight != default_weight {
            let _ = write!(s, "weight:{},", b.weight);
        }
        s.push_str("actions=");
        actions::fmt_actions(&mut s, &b.actions);
    }
    s
}

/// Parses an `add-groups FILE`: one group a line, `#` comments skipped.
pub fn parse_groups_file(text: &str) -> Result<Vec<Group>, SyntaxError> {
    Parser::new().groups_file(text)
}

// ---------------------------------------------------------------------------
// Printing

fn push_field(out: &mut Vec<String>, name: &str, field: Field, m: &Match) {
    let (v, mask) = m.get(field);
    if mask != 0 {
        let mut s = format!("{name}=");
        fmt_field_value(&mut s, field, v, mask);
        out.push(s);
    }
}

/// Formats a match (and priority) like `ovs-ofctl dump-flows`:
/// `priority=100,ct_state=+est+trk,tcp,in_port=1,nw_src=10.0.0.0/8,tp_dst=80`.
/// The priority is left out when it is the default (32768).
pub fn format_match(m: &Match, priority: u16) -> String {
    let mut parts: Vec<String> = Vec::new();
    if priority != DEFAULT_PRIORITY {
        parts.push(format!("priority={priority}"));
    }
    push_field(&mut parts, "recirc_id", Field::RecircId, m);
    push_field(&mut parts, "conj_id", Field::ConjId, m);
    push_field(&mut parts, "ct_state", Field::CtState, m);
    push_field(&mut parts, "ct_zone", Field::CtZone, m);

    let (dl, dl_mask) = m.get(Field::DlType);
    let (proto, proto_mask) = m.get(Field::NwProto);
    let dl_exact = dl_mask == 0xffff;
    let is_ip = dl_exact && dl == ethertype::IPV4 as u64;
    let is_arp = dl_exact && dl == ethertype::ARP as u64;
    let mut skip_type = false;
    let mut skip_proto = false;
    if dl_exact {
        let short = if is_ip {
            let named = (proto_mask == 0xff)
                .then(|| SHORTHANDS.iter().find(|(_, _, p)| *p == Some(proto as u8)))
                .flatten();
            match named {
                Some((n, _, _)) => {
                    skip_proto = true;
                    Some(*n)
                }
                None => Some("ip"),
            }
        } else if is_arp {
            Some("arp")
        } else if dl == ethertype::IPV6 as u64 {
            Some("ipv6")
        } else {
            None
        };
        if let Some(n) = short {
            parts.push(n.to_string());
            skip_type = true;
        }
    }
    for r in 0..8 {
        push_field(&mut parts, Field::Reg(r).name(), Field::Reg(r), m);
    }
    push_field(&mut parts, "tun_id", Field::TunId, m);
    push_field(&mut parts, "tun_src", Field::TunSrc, m);
    push_field(&mut parts, "tun_dst", Field::TunDst, m);
    push_field(&mut parts, "metadata", Field::Metadata, m);
    push_field(&mut parts, "in_port", Field::InPort, m);

    let (tci, tci_mask) = m.get(Field::VlanTci);
    if tci_mask != 0 {
        let cfi = VLAN_CFI as u64;
        let vid_m = tci_mask & 0x0fff;
        let pcp_m = tci_mask & 0xe000;
        if tci_mask & cfi != 0
            && tci & cfi != 0
            && (vid_m == 0 || vid_m == 0x0fff)
            && (pcp_m == 0 || pcp_m == 0xe000)
            && (vid_m | pcp_m) != 0
        {
            if vid_m != 0 {
                parts.push(format!("dl_vlan={}", tci & 0x0fff));
            }
            if pcp_m != 0 {
                parts.push(format!("dl_vlan_pcp={}", tci >> 13));
            }
        } else {
            push_field(&mut parts, "vlan_tci", Field::VlanTci, m);
        }
    }
    push_field(&mut parts, "dl_src", Field::DlSrc, m);
    push_field(&mut parts, "dl_dst", Field::DlDst, m);
    if !skip_type {
        push_field(&mut parts, "dl_type", Field::DlType, m);
    }
    if is_arp {
        push_field(&mut parts, "arp_spa", Field::ArpSpa, m);
        push_field(&mut parts, "arp_tpa", Field::ArpTpa, m);
    } else {
        push_field(&mut parts, "nw_src", Field::NwSrc, m);
        push_field(&mut parts, "nw_dst", Field::NwDst, m);
    }
    if !skip_proto {
        push_field(
            &mut parts,
            if is_arp { "arp_op" } else { "nw_proto" },
            Field::NwProto,
            m,
        );
    }
    let (tos, tos_mask) = m.get(Field::NwTos);
    if tos_mask == 0xfc {
        parts.push(format!("nw_tos={tos}"));
    } else {
        push_field(&mut parts, "nw_tos", Field::NwTos, m);
    }
    if is_ip && proto_mask == 0xff && proto == ipproto::ICMP as u64 {
        push_field(&mut parts, "icmp_type", Field::IcmpType, m);
        push_field(&mut parts, "icmp_code", Field::IcmpCode, m);
    } else {
        push_field(&mut parts, "tp_src", Field::TpSrc, m);
        push_field(&mut parts, "tp_dst", Field::TpDst, m);
    }
    parts.join(",")
}

/// Formats an action list in `ovs-ofctl` output spelling (`drop` if empty).
pub fn format_actions(a: &[Action]) -> String {
    let mut s = String::new();
    actions::fmt_actions(&mut s, a);
    s
}

/// Formats a `FlowSpec` as `add-flow` text that [`parse_flow`] reads back
/// to the same spec (table, cookie and timeouts only when not default).
pub fn format_flow_spec(spec: &FlowSpec) -> String {
    let mut s = String::new();
    if spec.cookie != 0 {
        let _ = write!(s, "cookie={:#x},", spec.cookie);
    }
    if spec.table != 0 {
        let _ = write!(s, "table={},", spec.table);
    }
    if spec.idle_timeout != 0 {
        let _ = write!(s, "idle_timeout={},", spec.idle_timeout);
    }
    if spec.hard_timeout != 0 {
        let _ = write!(s, "hard_timeout={},", spec.hard_timeout);
    }
    let m = format_match(&spec.m, spec.priority);
    s.push_str(&m);
    if !s.is_empty() {
        s.push(' ');
    }
    s.push_str("actions=");
    actions::fmt_actions(&mut s, &spec.actions);
    s
}

/// Formats a packet's flow key the way `ofproto/trace` shows a flow
/// (`tcp,in_port=1,vlan_tci=0x0000,dl_src=..,dl_dst=..,nw_src=..,...`):
/// the L2 fields always, L3/L4 fields when the ethertype/protocol has them,
/// metadata (registers, tunnel, conntrack) only when not zero.
/// [`parse_packet`] reads it back (the ECN bits of `nw_tos` are not shown).
pub fn format_packet(k: &FlowKey) -> String {
    let mut m = Match {
        key: *k,
        mask: FlowKey::ZERO,
    };
    let mut pin = |f: Field, mask: u64| {
        if mask != 0 {
            m.mask.set(f, mask);
        }
    };
    let nz = |f: Field| if k.get(f) != 0 { u64::MAX } else { 0 };
    pin(Field::RecircId, nz(Field::RecircId));
    pin(Field::ConjId, nz(Field::ConjId));
    pin(
        Field::CtState,
        if k.get(Field::CtState) & !0xff != 0 {
            u64::MAX
        } else {
            nz(Field::CtState) & 0xff
        },
    );
    pin(Field::CtZone, nz(Field::CtZone));
    for r in 0..8 {
        pin(Field::Reg(r), nz(Field::Reg(r)));
    }
    for f in [Field::TunId, Field::TunSrc, Field::TunDst, Field::Metadata] {
        pin(f, nz(f));
    }
    for f in [
        Field::InPort,
        Field::VlanTci,
        Field::DlSrc,
        Field::DlDst,
        Field::DlType,
    ] {
        pin(f, u64::MAX);
    }
    let dl = k.get(Field::DlType);
    let proto = k.get(Field::NwProto);
    if dl == ethertype::IPV4 as u64 {
        pin(Field::NwSrc, u64::MAX);
        pin(Field::NwDst, u64::MAX);
        pin(Field::NwProto, u64::MAX);
        pin(Field::NwTos, 0xfc);
        if [ipproto::TCP, ipproto::UDP, ipproto::SCTP, ipproto::ICMP]
            .iter()
            .any(|p| *p as u64 == proto)
        {
            pin(Field::TpSrc, u64::MAX);
            pin(Field::TpDst, u64::MAX);
        }
    } else if dl == ethertype::ARP as u64 {
        pin(Field::NwSrc, u64::MAX);
        pin(Field::NwDst, u64::MAX);
        pin(Field::NwProto, u64::MAX);
    }
    m.key = k.masked(&m.mask);
    format_match(&m, DEFAULT_PRIORITY)
}

/// `ofp_print_duration`: whole seconds, or 3 decimals for milliseconds.
fn fmt_duration(out: &mut String, ms: u64) {
    let _ = write!(out, "{}", ms / 1000);
    let frac = ms % 1000;
    if frac > 0 {
        let _ = write!(out, ".{frac:03}");
    }
    out.push('s');
}

/// Formats one `ovs-ofctl dump-flows` line (with its leading space):
/// ` cookie=0x0, duration=12.345s, table=0, n_packets=5, n_bytes=420,
/// idle_timeout=10, idle_age=2, priority=100,tcp actions=output:2`.
///
/// With `stats == false` (`--no-stats`) the cookie and table appear only
/// when not zero, and duration, counters and ages are left out.
pub fn format_flow(e: &FlowEntry, now_ms: u64, stats: bool) -> String {
    let spec = &e.spec;
    let mut s = String::from(" ");
    if stats || spec.cookie != 0 {
        let _ = write!(s, "cookie={:#x}, ", spec.cookie);
    }
    if stats {
        s.push_str("duration=");
        fmt_duration(&mut s, now_ms.saturating_sub(e.created_ms));
        s.push_str(", ");
    }
    if stats || spec.table != 0 {
        let _ = write!(s, "table={}, ", spec.table);
    }
    if stats {
        let _ = write!(
            s,
            "n_packets={}, n_bytes={}, ",
            e.stats.n_packets.load(Ordering::Relaxed),
            e.stats.n_bytes.load(Ordering::Relaxed)
        );
    }
    if spec.idle_timeout != 0 {
        let _ = write!(s, "idle_timeout={}, ", spec.idle_timeout);
    }
    if spec.hard_timeout != 0 {
        let _ = write!(s, "hard_timeout={}, ", spec.hard_timeout);
    }
    if stats {
        let used = e
            .stats
            .last_used_ms
            .load(Ordering::Relaxed)
            .max(e.created_ms);
        let _ = write!(s, "idle_age={}, ", now_ms.saturating_sub(used) / 1000);
    }
    let m = format_match(&spec.m, spec.priority);
    if !m.is_empty() {
        s.push_str(&m);
        s.push(' ');
    }
    s.push_str("actions=");
    actions::fmt_actions(&mut s, &spec.actions);
    s
}
