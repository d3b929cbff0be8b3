//! Actions after `actions=` (and in group buckets): parsing and printing in
//! `ovs-ofctl` spelling.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::value::{
    fmt_field_value, fmt_mac, fmt_port, hash_hex, maskable, parse_field_value, parse_ip, parse_mac,
    parse_max, parse_num,
};
use super::{prereq_ok, prereq_text, Src, SyntaxError, SyntaxErrorKind};
use crate::action::{port, Action, CtArgs, Nat, NatKind, PortNo, SubField};
use crate::field::Field;
use crate::flow_match::Match;
use crate::key::width_mask;

/// Splits `s` at top-level commas (not inside parentheses); pieces are
/// trimmed. An all-blank `s` gives no pieces.
pub(crate) fn split_top<'a>(src: Src<'_>, s: &'a str) -> Result<Vec<&'a str>, SyntaxError> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Ok(out);
    }
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                if depth == 0 {
                    return Err(src.err(&s[i..], SyntaxErrorKind::Syntax("unbalanced ')'".into())));
                }
                depth -= 1;
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(src.err(&s[s.len()..], SyntaxErrorKind::Syntax("missing ')'".into())));
    }
    out.push(&s[start..]);
    for p in out.iter_mut() {
        *p = p.trim();
        if p.is_empty() {
            return Err(src.err(
                p,
                SyntaxErrorKind::Syntax("empty item between commas".into()),
            ));
        }
    }
    Ok(out)
}

/// OVS actions ferrovs knows by name but does not implement.
const UNSUPPORTED: &[&str] = &[
    "learn",
    "note",
    "enqueue",
    "multipath",
    "bundle",
    "bundle_load",
    "output_reg",
    "output_trunc",
    "meter",
    "clone",
    "check_pkt_larger",
    "set_queue",
    "pop_queue",
    "write_metadata",
    "fin_timeout",
    "sample",
    "exit",
    "push_mpls",
    "pop_mpls",
    "mod_nw_tos",
    "mod_nw_ecn",
    "mod_nw_ttl",
    "set_mpls_label",
    "set_mpls_tc",
    "set_mpls_ttl",
    "dec_mpls_ttl",
    "write_actions",
    "clear_actions",
    "encap",
    "decap",
    "dec_nsh_ttl",
    "stack_push",
    "stack_pop",
    "controller_id",
    "debug_recirc",
    "debug_slow",
    "delete_field",
];

/// Parses an action list. `m` is the flow's match, used to check the
/// prerequisites of fields written by `set_field`/`load`/`move` (as OVS
/// does); `None` skips that check (group buckets).
pub(crate) fn parse_actions(
    src: Src<'_>,
    s: &str,
    m: Option<&Match>,
) -> Result<Vec<Action>, SyntaxError> {
    let items = split_top(src, s)?;
    parse_action_items(src, &items, m)
}

/// Parses already-split action items (see [`parse_actions`]).
pub(crate) fn parse_action_items(
    src: Src<'_>,
    items: &[&str],
    m: Option<&Match>,
) -> Result<Vec<Action>, SyntaxError> {
    let mut out = Vec::with_capacity(items.len());
    let mut drop_at = None;
    for item in items.iter().copied() {
        match parse_action(src, item, m)? {
            Some(a) => out.push(a),
            None => drop_at = Some(item),
        }
    }
    let n_conj = out.iter().filter(|a| a.is_conjunction()).count();
    if n_conj > 0 && (n_conj < items.len() || m.is_none()) {
        let at = items
            .iter()
            .copied()
            .find(|i| !i.starts_with("conjunction"))
            .unwrap_or(items[0]);
        let msg = if m.is_none() {
            "not allowed in a group bucket"
        } else {
            "cannot be mixed with other actions (a conjunctive flow's actions are all conjunction(...))"
        };
        return Err(src.err(
            at,
            SyntaxErrorKind::Action {
                action: "conjunction".into(),
                msg: msg.into(),
            },
        ));
    }
    if let Some(at) = drop_at {
        if items.len() > 1 {
            return Err(src.err(
                at,
                SyntaxErrorKind::Action {
                    action: "drop".into(),
                    msg: "must be the only action".into(),
                },
            ));
        }
    }
    Ok(out)
}

fn output_to(p: PortNo) -> Result<Action, String> {
    Ok(match p {
        port::IN_PORT => Action::InPort,
        port::NORMAL => Action::Normal,
        port::FLOOD => Action::Flood,
        port::ALL => Action::All,
        port::CONTROLLER => Action::Controller { max_len: u16::MAX },
        port::LOCAL => Action::Output(port::LOCAL),
        p if p >= 0xff00 => return Err(format!("cannot output to reserved port {p}")),
        p => Action::Output(p),
    })
}

/// Parses one action; `Ok(None)` is `drop`.
fn parse_action(
    src: Src<'_>,
    item: &str,
    m: Option<&Match>,
) -> Result<Option<Action>, SyntaxError> {
    let split = item.find([':', '(']);
    let (name, arg, paren) = match split {
        Some(i) if item.as_bytes()[i] == b':' => (&item[..i], Some(&item[i + 1..]), None),
        Some(i) => {
            let Some(inner) = item[i + 1..].strip_suffix(')') else {
                return Err(src.err(
                    item,
                    SyntaxErrorKind::Action {
                        action: item[..i].to_string(),
                        msg: "unexpected text after ')'".into(),
                    },
                ));
            };
            (&item[..i], None, Some(inner))
        }
        None => (item, None, None),
    };
    let lower = name.to_ascii_lowercase();
    let aerr = |at: &str, msg: String| {
        src.err(
            at,
            SyntaxErrorKind::Action {
                action: lower.clone(),
                msg,
            },
        )
    };
    let need_arg = || -> Result<&str, SyntaxError> {
        match arg {
            Some(a) if !a.is_empty() => Ok(a),
            _ => Err(aerr(
                item,
                format!("missing argument (write {lower}:VALUE)"),
            )),
        }
    };
    let no_arg = |a: Action| -> Result<Option<Action>, SyntaxError> {
        if arg.is_some() || paren.is_some() {
            return Err(aerr(item, "takes no argument".into()));
        }
        Ok(Some(a))
    };
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        if arg.is_some() || paren.is_some() {
            return Err(src.err(item, SyntaxErrorKind::UnknownAction(item.to_string())));
        }
        let p = src.port(name).map_err(|e| aerr(item, e))?;
        return output_to(p).map(Some).map_err(|e| aerr(item, e));
    }
    let a = match lower.as_str() {
        "drop" => {
            no_arg(Action::Drop)?;
            return Ok(None);
        }
        "output" => {
            if paren.is_some() {
                return Err(aerr(item, "only output:PORT is supported".into()));
            }
            let a = need_arg()?;
            let p = src.port(a).map_err(|e| aerr(a, e))?;
            output_to(p).map_err(|e| aerr(a, e))?
        }
        "in_port" => return no_arg(Action::InPort),
        "normal" => return no_arg(Action::Normal),
        "flood" => return no_arg(Action::Flood),
        "all" => return no_arg(Action::All),
        "local" => return no_arg(Action::Output(port::LOCAL)),
        "controller" => {
            let mut max_len = u16::MAX;
            if let Some(a) = arg {
                max_len = parse_max(a, u16::MAX as u64).map_err(|e| aerr(a, e))? as u16;
            }
            if let Some(inner) = paren {
                for p in split_top(src, inner)? {
                    if let Some(v) = p.strip_prefix("max_len=") {
                        max_len = parse_max(v, u16::MAX as u64).map_err(|e| aerr(v, e))? as u16;
                    } else if p == "reason=action" {
                    } else {
                        return Err(aerr(
                            p,
                            format!("unknown argument '{p}' (ferrovs supports max_len=N)"),
                        ));
                    }
                }
            }
            Action::Controller { max_len }
        }
        "push_vlan" => {
            let a = need_arg()?;
            let t = parse_max(a, u16::MAX as u64).map_err(|e| aerr(a, e))? as u16;
            if t != 0x8100 && t != 0x88a8 {
                return Err(aerr(a, format!("ethertype '{a}' is not 0x8100 or 0x88a8")));
            }
            Action::PushVlan(t)
        }
        "strip_vlan" | "pop_vlan" => return no_arg(Action::PopVlan),
        "mod_vlan_vid" => {
            let a = need_arg()?;
            Action::SetVlanVid(parse_max(a, 4095).map_err(|e| aerr(a, e))? as u16)
        }
        "mod_vlan_pcp" => {
            let a = need_arg()?;
            Action::SetVlanPcp(parse_max(a, 7).map_err(|e| aerr(a, e))? as u8)
        }
        "mod_dl_src" | "mod_dl_dst" => {
            let a = need_arg()?;
            let mac = parse_mac(a).map_err(|e| aerr(a, e))?;
            if lower == "mod_dl_src" {
                Action::SetDlSrc(mac)
            } else {
                Action::SetDlDst(mac)
            }
        }
        "mod_nw_src" | "mod_nw_dst" => {
            let a = need_arg()?;
            let ip = parse_ip(a).map_err(|e| aerr(a, e))?;
            if lower == "mod_nw_src" {
                Action::SetNwSrc(ip)
            } else {
                Action::SetNwDst(ip)
            }
        }
        "mod_tp_src" | "mod_tp_dst" => {
            let a = need_arg()?;
            let p = parse_max(a, u16::MAX as u64).map_err(|e| aerr(a, e))? as u16;
            if lower == "mod_tp_src" {
                Action::SetTpSrc(p)
            } else {
                Action::SetTpDst(p)
            }
        }
        "set_tunnel" | "set_tunnel64" => {
            let a = need_arg()?;
            Action::SetTunnel(parse_num(a).map_err(|e| aerr(a, e))?)
        }
        "set_field" => {
            let a = need_arg()?;
            let Some((v, f)) = a.split_once("->") else {
                return Err(aerr(a, "expected VALUE->FIELD".into()));
            };
            let field = Field::from_name(f)
                .ok_or_else(|| src.err(f, SyntaxErrorKind::UnknownField(f.to_string())))?;
            let (value, mask) = parse_field_value(field, v, src.names).map_err(|e| {
                src.err(
                    v,
                    SyntaxErrorKind::Field {
                        field: f.to_string(),
                        msg: e,
                    },
                )
            })?;
            if mask.is_some() && !maskable(field) {
                return Err(aerr(v, format!("field {f} cannot be set with a mask")));
            }
            check_prereq(src, m, field, f, &lower)?;
            check_writable(src, field, f, &lower)?;
            Action::SetField {
                field,
                value,
                mask: mask.unwrap_or(width_mask(field.width())),
            }
        }
        "load" => {
            let a = need_arg()?;
            let Some((v, d)) = a.split_once("->") else {
                return Err(aerr(a, "expected VALUE->FIELD[a..b]".into()));
            };
            let value = parse_num(v).map_err(|e| aerr(v, e))?;
            let dst = parse_subfield(src, &lower, d)?;
            if value > width_mask(dst.n_bits) {
                return Err(aerr(
                    v,
                    format!("value {v} does not fit in {} bits", dst.n_bits),
                ));
            }
            check_prereq(src, m, dst.field, d, &lower)?;
            check_writable(src, dst.field, d, &lower)?;
            Action::Load { value, dst }
        }
        "move" => {
            let a = need_arg()?;
            let Some((s, d)) = a.split_once("->") else {
                return Err(aerr(a, "expected SRC[a..b]->DST[c..d]".into()));
            };
            let srcf = parse_subfield(src, &lower, s)?;
            let dst = parse_subfield(src, &lower, d)?;
            if srcf.n_bits != dst.n_bits {
                return Err(aerr(
                    a,
                    format!(
                        "source is {} bits wide but destination is {} bits wide",
                        srcf.n_bits, dst.n_bits
                    ),
                ));
            }
            check_prereq(src, m, srcf.field, s, &lower)?;
            check_prereq(src, m, dst.field, d, &lower)?;
            check_writable(src, dst.field, d, &lower)?;
            Action::Move { src: srcf, dst }
        }
        "resubmit" => {
            let port_of = |p: &str| -> Result<Option<PortNo>, SyntaxError> {
                if p.is_empty() {
                    return Ok(None);
                }
                match src.port(p).map_err(|e| aerr(p, e))? {
                    port::IN_PORT => Ok(None),
                    n => Ok(Some(n)),
                }
            };
            if let Some(inner) = paren {
                let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
                if parts.len() > 2 {
                    return Err(aerr(
                        parts[2],
                        format!(
                            "unsupported argument '{}' (write resubmit(PORT,TABLE))",
                            parts[2]
                        ),
                    ));
                }
                let port = port_of(parts[0])?;
                let table = match parts.get(1) {
                    Some(t) if !t.is_empty() => {
                        Some(parse_max(t, 254).map_err(|e| aerr(t, e))? as u8)
                    }
                    _ => None,
                };
                Action::Resubmit { port, table }
            } else {
                let a = need_arg()?;
                Action::Resubmit {
                    port: port_of(a)?,
                    table: None,
                }
            }
        }
        "goto_table" => {
            let a = need_arg()?;
            Action::GotoTable(parse_max(a, 254).map_err(|e| aerr(a, e))? as u8)
        }
        "group" => {
            let a = need_arg()?;
            Action::Group(parse_max(a, u32::MAX as u64).map_err(|e| aerr(a, e))? as u32)
        }
        "ct" => {
            if arg.is_some() {
                return Err(aerr(item, "write ct(ARG,...)".into()));
            }
            Action::Ct(parse_ct(src, paren.unwrap_or(""))?)
        }
        "conjunction" => {
            if arg.is_some() {
                return Err(aerr(item, "write conjunction(ID,K/N)".into()));
            }
            parse_conjunction(paren.unwrap_or("")).map_err(|(at, e)| aerr(at, e))?
        }
        "ct_clear" => return no_arg(Action::CtClear),
        "dec_ttl" => return no_arg(Action::DecTtl),
        "arp_reply" => {
            let a = need_arg()?;
            let mac = parse_mac(a).map_err(|e| aerr(a, e))?;
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(aerr(a, format!("'{a}' is not a unicast MAC address")));
            }
            Action::ArpReply(mac)
        }
        "reject" => return no_arg(Action::Reject),
        "nat" => {
            return Err(aerr(
                item,
                "nat is only valid inside ct(...), e.g. ct(commit,nat(src=10.0.0.1))".into(),
            ))
        }
        other if UNSUPPORTED.contains(&other) => {
            return Err(aerr(item, "not supported by ferrovs".into()))
        }
        _ => {
            if let Ok(p) = src.port(name) {
                if arg.is_none() && paren.is_none() {
                    return output_to(p).map(Some).map_err(|e| aerr(item, e));
                }
            }
            return Err(src.err(name, SyntaxErrorKind::UnknownAction(name.to_string())));
        }
    };
    Ok(Some(a))
}

/// Parses the inside of `conjunction(ID,K/N)`; errors give the offending
/// text.
fn parse_conjunction(inner: &str) -> Result<Action, (&str, String)> {
    let Some((id, kn)) = inner.split_once(',') else {
        return Err((inner, format!("'{inner}': expected ID,K/N")));
    };
    let (id, kn) = (id.trim(), kn.trim());
    let Some((k, n)) = kn.split_once('/') else {
        return Err((kn, format!("'{kn}': expected K/N (clause K of N)")));
    };
    let id = parse_max(id, u32::MAX as u64).map_err(|e| (id, e))? as u32;
    let n_clauses = parse_max(n, 64).map_err(|e| (n, e))? as u8;
    if n_clauses < 2 {
        return Err((n, format!("'{n}': a conjunction has 2 to 64 clauses")));
    }
    let clause = parse_max(k, n_clauses as u64).map_err(|e| (k, e))? as u8;
    if clause < 1 {
        return Err((k, format!("'{k}': clauses are numbered from 1")));
    }
    Ok(Action::Conjunction {
        id,
        clause,
        n_clauses,
    })
}

/// Refuses writes to fields that are not writable (`conj_id`).
fn check_writable(src: Src<'_>, field: Field, at: &str, action: &str) -> Result<(), SyntaxError> {
    if field == Field::ConjId {
        return Err(src.err(
            at,
            SyntaxErrorKind::Action {
                action: action.to_string(),
                msg: "field conj_id is read-only".into(),
            },
        ));
    }
    Ok(())
}

fn check_prereq(
    src: Src<'_>,
    m: Option<&Match>,
    field: Field,
    at: &str,
    action: &str,
) -> Result<(), SyntaxError> {
    if let Some(m) = m {
        if !prereq_ok(field, m) {
            return Err(src.err(
                at,
                SyntaxErrorKind::Action {
                    action: action.to_string(),
                    msg: format!(
                        "field {} needs {} in the flow's match",
                        field.name(),
                        prereq_text(field.prerequisite())
                    ),
                },
            ));
        }
    }
    Ok(())
}

/// Parses `FIELD[]`, `FIELD[5]`, `FIELD[0..15]` or a bare `FIELD`.
fn parse_subfield(src: Src<'_>, action: &str, s: &str) -> Result<SubField, SyntaxError> {
    let (name, bits) = match s.find('[') {
        Some(i) => (&s[..i], Some(&s[i..])),
        None => (s, None),
    };
    let field = Field::from_name(name)
        .ok_or_else(|| src.err(name, SyntaxErrorKind::UnknownField(name.to_string())))?;
    let width = field.width();
    let err = |msg: String| {
        src.err(
            s,
            SyntaxErrorKind::Action {
                action: action.to_string(),
                msg,
            },
        )
    };
    let Some(bits) = bits else {
        return Ok(SubField::whole(field));
    };
    let Some(inner) = bits.strip_prefix('[').and_then(|b| b.strip_suffix(']')) else {
        return Err(err(format!("'{s}': expected FIELD[a..b]")));
    };
    if inner.is_empty() {
        return Ok(SubField::whole(field));
    }
    let (a, b) = match inner.split_once("..") {
        Some((a, b)) => (a, b),
        None => (inner, inner),
    };
    let a = parse_num(a).map_err(|e| err(format!("'{s}': {e}")))?;
    let b = parse_num(b).map_err(|e| err(format!("'{s}': {e}")))?;
    if a > b {
        return Err(err(format!("'{s}': start bit {a} is after end bit {b}")));
    }
    if b >= width as u64 {
        return Err(err(format!(
            "'{s}': bit {b} is outside {name}, which is {width} bits wide"
        )));
    }
    Ok(SubField {
        field,
        ofs: a as u32,
        n_bits: (b - a + 1) as u32,
    })
}

fn parse_ct(src: Src<'_>, inner: &str) -> Result<CtArgs, SyntaxError> {
    let mut ct = CtArgs::default();
    let err = |at: &str, msg: String| {
        src.err(
            at,
            SyntaxErrorKind::Action {
                action: "ct".into(),
                msg,
            },
        )
    };
    for arg in split_top(src, inner)? {
        if arg == "commit" {
            ct.commit = true;
        } else if let Some(z) = arg.strip_prefix("zone=") {
            if !z.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(err(z, format!("zone '{z}': only a number is supported")));
            }
            ct.zone =
                parse_max(z, u16::MAX as u64).map_err(|e| err(z, format!("zone {e}")))? as u16;
        } else if let Some(t) = arg.strip_prefix("table=") {
            ct.table = Some(parse_max(t, 254).map_err(|e| err(t, format!("table {e}")))? as u8);
        } else if arg == "nat" {
            ct.nat = Some(Nat {
                kind: None,
                ip_min: Ipv4Addr::UNSPECIFIED,
                ip_max: Ipv4Addr::UNSPECIFIED,
                port_min: 0,
                port_max: 0,
            });
        } else if let Some(n) = arg.strip_prefix("nat(").and_then(|n| n.strip_suffix(')')) {
            ct.nat = Some(parse_nat(src, n)?);
        } else if arg == "force"
            || arg.starts_with("exec(")
            || arg.starts_with("alg=")
            || arg.starts_with("zone=NXM")
        {
            return Err(err(arg, format!("'{arg}' is not supported by ferrovs")));
        } else {
            return Err(err(arg, format!("unknown argument '{arg}'")));
        }
    }
    Ok(ct)
}

fn parse_nat(src: Src<'_>, inner: &str) -> Result<Nat, SyntaxError> {
    let err = |at: &str, msg: String| {
        src.err(
            at,
            SyntaxErrorKind::Action {
                action: "nat".into(),
                msg,
            },
        )
    };
    let mut nat = Nat {
        kind: None,
        ip_min: Ipv4Addr::UNSPECIFIED,
        ip_max: Ipv4Addr::UNSPECIFIED,
        port_min: 0,
        port_max: 0,
    };
    for arg in split_top(src, inner)? {
        let (k, range) = match arg.split_once('=') {
            Some((k, r)) => (k, Some(r)),
            None => (arg, None),
        };
        let kind = match k {
            "src" => NatKind::Src,
            "dst" => NatKind::Dst,
            "persistent" | "random" | "hash" => {
                return Err(err(arg, format!("'{arg}' is not supported by ferrovs")))
            }
            _ => {
                return Err(err(
                    arg,
                    format!("unknown argument '{arg}' (expected src=... or dst=...)"),
                ))
            }
        };
        if nat.kind.is_some() {
            return Err(err(arg, "only one of src and dst may be given".into()));
        }
        nat.kind = Some(kind);
        let Some(range) = range else { continue };
        let (ips, ports) = match range.split_once(':') {
            Some((i, p)) => (i, Some(p)),
            None => (range, None),
        };
        let (a, b) = ips.split_once('-').unwrap_or((ips, ips));
        nat.ip_min = parse_ip(a).map_err(|e| err(a, e))?;
        nat.ip_max = parse_ip(b).map_err(|e| err(b, e))?;
        if nat.ip_min.is_unspecified() {
            return Err(err(a, "address 0.0.0.0 is not allowed".into()));
        }
        if u32::from(nat.ip_max) < u32::from(nat.ip_min) {
            return Err(err(ips, format!("address range '{ips}' is backwards")));
        }
        if let Some(p) = ports {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            nat.port_min = parse_max(a, u16::MAX as u64).map_err(|e| err(a, e))? as u16;
            nat.port_max = parse_max(b, u16::MAX as u64).map_err(|e| err(b, e))? as u16;
            if nat.port_min == 0 {
                return Err(err(a, "port 0 is not allowed".into()));
            }
            if nat.port_max < nat.port_min {
                return Err(err(p, format!("port range '{p}' is backwards")));
            }
        }
    }
    Ok(nat)
}

/// The NXM/OXM name OVS prints for a field in `load`/`move`.
fn nxm_name(f: Field) -> &'static str {
    match f {
        Field::InPort => "NXM_OF_IN_PORT",
        Field::DlDst => "NXM_OF_ETH_DST",
        Field::DlSrc => "NXM_OF_ETH_SRC",
        Field::DlType => "NXM_OF_ETH_TYPE",
        Field::VlanTci => "NXM_OF_VLAN_TCI",
        Field::NwSrc => "NXM_OF_IP_SRC",
        Field::NwDst => "NXM_OF_IP_DST",
        Field::NwProto => "NXM_OF_IP_PROTO",
        Field::NwTos => "NXM_OF_IP_TOS",
        Field::TpSrc => "NXM_OF_TCP_SRC",
        Field::TpDst => "NXM_OF_TCP_DST",
        Field::IcmpType => "NXM_OF_ICMP_TYPE",
        Field::IcmpCode => "NXM_OF_ICMP_CODE",
        Field::ArpOp => "NXM_OF_ARP_OP",
        Field::ArpSpa => "NXM_OF_ARP_SPA",
        Field::ArpTpa => "NXM_OF_ARP_TPA",
        Field::TunId => "NXM_NX_TUN_ID",
        Field::TunSrc => "NXM_NX_TUN_IPV4_SRC",
        Field::TunDst => "NXM_NX_TUN_IPV4_DST",
        Field::Metadata => "OXM_OF_METADATA",
        Field::Reg(n) => [
            "NXM_NX_REG0",
            "NXM_NX_REG1",
            "NXM_NX_REG2",
            "NXM_NX_REG3",
            "NXM_NX_REG4",
            "NXM_NX_REG5",
            "NXM_NX_REG6",
            "NXM_NX_REG7",
        ][n as usize & 7],
        Field::CtState => "NXM_NX_CT_STATE",
        Field::CtZone => "NXM_NX_CT_ZONE",
        Field::ConjId => "NXM_NX_CONJ_ID",
        Field::DlVlan | Field::DlVlanPcp | Field::RecircId => f.name(),
    }
}

/// The name OVS prints after `set_field:...->`.
fn set_field_name(f: Field) -> &'static str {
    match f {
        Field::NwSrc => "ip_src",
        Field::NwDst => "ip_dst",
        Field::DlSrc => "eth_src",
        Field::DlDst => "eth_dst",
        Field::DlType => "eth_type",
        _ => f.name(),
    }
}

fn fmt_subfield(out: &mut String, sf: &SubField) {
    out.push_str(nxm_name(sf.field));
    if sf.ofs == 0 && sf.n_bits >= sf.field.width() {
        out.push_str("[]");
    } else if sf.n_bits == 1 {
        let _ = write!(out, "[{}]", sf.ofs);
    } else {
        let _ = write!(
            out,
            "[{}..{}]",
            sf.ofs,
            sf.ofs + sf.n_bits.saturating_sub(1)
        );
    }
}

fn fmt_nat(out: &mut String, n: &Nat) {
    out.push_str("nat");
    let Some(kind) = n.kind else { return };
    out.push_str(match kind {
        NatKind::Src => "(src",
        NatKind::Dst => "(dst",
    });
    if !n.ip_min.is_unspecified() {
        let _ = write!(out, "={}", n.ip_min);
        if !n.ip_max.is_unspecified() && n.ip_max != n.ip_min {
            let _ = write!(out, "-{}", n.ip_max);
        }
        if n.port_min != 0 {
            let _ = write!(out, ":{}", n.port_min);
            if n.port_max != 0 && n.port_max != n.port_min {
                let _ = write!(out, "-{}", n.port_max);
            }
        }
    }
    out.push(')');
}

/// Formats one action in `ovs-ofctl dump-flows` spelling.
pub(crate) fn fmt_action(out: &mut String, a: &Action) {
    match a {
        Action::Output(p) if *p < 0xff00 => {
            let _ = write!(out, "output:{p}");
        }
        Action::Output(port::CONTROLLER) => out.push_str("CONTROLLER:65535"),
        Action::Output(p) => fmt_port(out, *p),
        Action::InPort => out.push_str("IN_PORT"),
        Action::Normal => out.push_str("NORMAL"),
        Action::Flood => out.push_str("FLOOD"),
        Action::All => out.push_str("ALL"),
        Action::Controller { max_len } => {
            let _ = write!(out, "CONTROLLER:{max_len}");
        }
        Action::Drop => out.push_str("drop"),
        Action::PushVlan(t) => {
            let _ = write!(out, "push_vlan:{t:#x}");
        }
        Action::PopVlan => out.push_str("strip_vlan"),
        Action::SetVlanVid(v) => {
            let _ = write!(out, "mod_vlan_vid:{v}");
        }
        Action::SetVlanPcp(v) => {
            let _ = write!(out, "mod_vlan_pcp:{v}");
        }
        Action::SetDlSrc(m) => {
            out.push_str("mod_dl_src:");
            fmt_mac(out, *m);
        }
        Action::SetDlDst(m) => {
            out.push_str("mod_dl_dst:");
            fmt_mac(out, *m);
        }
        Action::SetNwSrc(ip) => {
            let _ = write!(out, "mod_nw_src:{ip}");
        }
        Action::SetNwDst(ip) => {
            let _ = write!(out, "mod_nw_dst:{ip}");
        }
        Action::SetTpSrc(p) => {
            let _ = write!(out, "mod_tp_src:{p}");
        }
        Action::SetTpDst(p) => {
            let _ = write!(out, "mod_tp_dst:{p}");
        }
        Action::SetTunnel(id) => {
            out.push_str(if *id > u32::MAX as u64 {
                "set_tunnel64:"
            } else {
                "set_tunnel:"
            });
            hash_hex(out, *id);
        }
        Action::SetField { field, value, mask } => {
            out.push_str("set_field:");
            fmt_field_value(out, *field, *value, *mask);
            out.push_str("->");
            out.push_str(set_field_name(*field));
        }
        Action::Load { value, dst } => {
            out.push_str("load:");
            hash_hex(out, *value);
            out.push_str("->");
            fmt_subfield(out, dst);
        }
        Action::Move { src, dst } => {
            out.push_str("move:");
            fmt_subfield(out, src);
            out.push_str("->");
            fmt_subfield(out, dst);
        }
        Action::Resubmit { port, table } => match (port, table) {
            (Some(p), None) => {
                out.push_str("resubmit:");
                fmt_port(out, *p);
            }
            _ => {
                out.push_str("resubmit(");
                if let Some(p) = port {
                    fmt_port(out, *p);
                }
                out.push(',');
                if let Some(t) = table {
                    let _ = write!(out, "{t}");
                }
                out.push(')');
            }
        },
        Action::GotoTable(t) => {
            let _ = write!(out, "goto_table:{t}");
        }
        Action::Group(g) => {
            let _ = write!(out, "group:{g}");
        }
        Action::Ct(ct) => {
            out.push_str("ct(");
            let start = out.len();
            if ct.commit {
                out.push_str("commit,");
            }
            if let Some(t) = ct.table {
                let _ = write!(out, "table={t},");
            }
            if ct.zone != 0 {
                let _ = write!(out, "zone={},", ct.zone);
            }
            if let Some(n) = &ct.nat {
                fmt_nat(out, n);
                out.push(',');
            }
            if out.len() > start {
                out.pop();
            }
            out.push(')');
        }
        Action::CtClear => out.push_str("ct_clear"),
        Action::DecTtl => out.push_str("dec_ttl"),
        Action::Conjunction {
            id,
            clause,
            n_clauses,
        } => {
            let _ = write!(out, "conjunction({id},{clause}/{n_clauses})");
        }
        Action::ArpReply(m) => {
            out.push_str("arp_reply:");
            fmt_mac(out, *m);
        }
        Action::Reject => out.push_str("reject"),
    }
}

/// Formats an action list; empty is `drop`.
pub(crate) fn fmt_actions(out: &mut String, actions: &[Action]) {
    if actions.is_empty() {
        out.push_str("drop");
        return;
    }
    for (i, a) in actions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        fmt_action(out, a);
    }
}
