//! Text of `ferrovs-ctl trace`, laid out like `ovs-appctl ofproto/trace`:
//! the packet, each table visited (indented by resubmit depth) with the
//! flow that matched and its actions, the final flow and the datapath
//! actions.

use std::fmt::Write;

use crate::field::Field;
use crate::key::{ct_state, FlowKey};
use crate::syntax::{format_actions, format_match, format_packet};
use crate::xlate::{DpAction, TraceEvent, XlateDrop, Xlation};

/// Formats a datapath action list the way OVS prints `Datapath actions:`.
pub fn format_dp_actions(actions: &[DpAction]) -> String {
    if actions.is_empty() {
        return "drop".to_string();
    }
    let parts: Vec<String> = actions.iter().map(format_dp_action).collect();
    parts.join(",")
}

fn format_dp_action(a: &DpAction) -> String {
    match a {
        DpAction::Output(p) => p.to_string(),
        DpAction::SetField(f, v) => {
            let mut k = FlowKey::ZERO;
            let mut m = crate::flow_match::Match::ANY;
            k.set(*f, *v);
            m.set(*f, *v);
            let shown = format_match(&m, crate::pipeline::DEFAULT_PRIORITY);
            let value = shown.split_once('=').map(|x| x.1).unwrap_or(&shown);
            format!("set_field:{value}->{}", f.name())
        }
        DpAction::PushVlan(tci) => format!("push_vlan(vid={},pcp={})", tci & 0xfff, tci >> 13),
        DpAction::PopVlan => "pop_vlan".into(),
        DpAction::SetVlan(tci) => format!("set_vlan(vid={},pcp={})", tci & 0xfff, tci >> 13),
        DpAction::SetTunnel { id, src, dst } => {
            format!("set(tunnel(tun_id={id:#x},src={src},dst={dst}))")
        }
        DpAction::DecTtl => "dec_ttl".into(),
        DpAction::Controller => "userspace(controller)".into(),
        DpAction::Reply(crate::xlate::ReplyKind::Arp(m)) => {
            let mut s = String::from("arp_reply(");
            for (i, b) in m.iter().enumerate() {
                let _ = write!(s, "{}{b:02x}", if i > 0 { ":" } else { "" });
            }
            s.push(')');
            s
        }
        DpAction::Reply(crate::xlate::ReplyKind::Reject) => "reject".into(),
        DpAction::Ct { args, .. } => {
            let mut s = String::from("ct(");
            let mut parts = Vec::new();
            if args.commit {
                parts.push("commit".to_string());
            }
            if args.zone != 0 {
                parts.push(format!("zone={}", args.zone));
            }
            let text = format_actions(&[crate::action::Action::Ct(*args)]);
            if let Some(nat) = text.find("nat") {
                let t = &text[nat..text.len() - 1];
                parts.push(t.to_string());
            }
            s.push_str(&parts.join(","));
            s.push(')');
            if let Some(t) = args.table {
                let _ = write!(s, ",recirc({:#x})", t as u32 + 1);
            }
            s
        }
    }
}

fn ct_text(v: u64) -> String {
    let mut s = String::new();
    for (n, b) in ct_state::NAMES {
        if v & b != 0 {
            if !s.is_empty() {
                s.push('|');
            }
            s.push_str(n);
        }
    }
    s
}

/// The whole trace text.
pub fn format_trace(bridge: &str, key: &FlowKey, x: &Xlation, t: &crate::xlate::Trace) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Flow: {}", format_packet(key));
    let _ = writeln!(out);
    let title = format!("bridge(\"{bridge}\")");
    let _ = writeln!(out, "{title}");
    let _ = writeln!(out, "{}", "-".repeat(title.len()));
    for ev in &t.events {
        match ev {
            TraceEvent::Table { depth, table, flow } => {
                let ind = "    ".repeat(*depth);
                match flow {
                    Some(e) => {
                        let m = format_match(&e.spec.m, e.spec.priority);
                        // OVS prints the match without the priority, then
                        // ", priority N, cookie 0xC".
                        let m = strip_priority(&m);
                        let m = if m.is_empty() {
                            String::new()
                        } else {
                            format!("{m}, ")
                        };
                        let _ = write!(out, "{ind}{table:>2}. {m}priority {}", e.spec.priority);
                        if e.spec.cookie != 0 {
                            let _ = write!(out, ", cookie {:#x}", e.spec.cookie);
                        }
                        let _ = writeln!(out);
                        if e.spec.actions.is_empty() {
                            let _ = writeln!(out, "{ind}    drop");
                        }
                        for a in &e.spec.actions {
                            let _ = writeln!(
                                out,
                                "{ind}    {}",
                                format_actions(std::slice::from_ref(a))
                            );
                        }
                    }
                    None => {
                        let _ = writeln!(out, "{ind}{table:>2}. No match.");
                        let _ = writeln!(out, "{ind}    drop");
                    }
                }
            }
            TraceEvent::Note { depth, text } => {
                let ind = "    ".repeat(*depth + 1);
                let _ = writeln!(out, "{ind} -> {text}");
            }
        }
    }
    let _ = writeln!(out);
    if t.final_key == *key {
        let _ = writeln!(out, "Final flow: unchanged");
    } else {
        let _ = writeln!(out, "Final flow: {}", format_packet(&t.final_key));
    }
    let ct = key.get(Field::CtState);
    if ct != 0 {
        let _ = writeln!(out, "Connection state: {}", ct_text(ct));
    }
    let _ = writeln!(out, "Datapath actions: {}", format_dp_actions(&x.actions));
    if x.actions.is_empty() {
        let why = match x.drop {
            Some(XlateDrop::TableMiss) => "no flow matched (table miss)",
            Some(XlateDrop::TooDeep) => "resubmit depth exceeded",
            Some(XlateDrop::VlanNotAllowed) => "VLAN not allowed on the input port",
            Some(XlateDrop::CannotReply) => "arp_reply or reject found nothing to answer",
            None => "the actions drop it",
        };
        let _ = writeln!(out, "Drop reason: {why}");
    }
    if x.actions
        .iter()
        .any(|a| matches!(a, DpAction::Ct { args, .. } if args.table.is_some()))
    {
        let _ = writeln!(
            out,
            "\nThe packet recirculates after conntrack; trace it again with ct_state=... and recirc_id=N to follow it."
        );
    }
    out
}

/// One translation pass of a trace that follows recirculation.
#[derive(Clone, Debug)]
pub struct Pass {
    /// The key the pass started with.
    pub key: FlowKey,
    /// Its translation.
    pub x: Xlation,
    /// Its trace.
    pub trace: crate::xlate::Trace,
}

/// Mask of the object part of a cookie: a kind byte and a 24-bit object id,
/// the convention of ferrovs-agent, whose low 32 bits say which rule or
/// port of the object a flow is for.
pub const COOKIE_OBJECT_MASK: u64 = 0xffff_ffff_0000_0000;

/// The name registered for `cookie`: its own, or its object part's.
pub fn cookie_name(names: &std::collections::BTreeMap<u64, String>, cookie: u64) -> Option<&str> {
    names
        .get(&cookie)
        .or_else(|| names.get(&(cookie & COOKIE_OBJECT_MASK)))
        .map(String::as_str)
}

/// The named objects whose flows `passes` hit, as `(table, name)` in order;
/// consecutive tables of one object appear once.
pub fn objects_hit<'a>(
    names: &'a std::collections::BTreeMap<u64, String>,
    passes: &[Pass],
) -> Vec<(u8, &'a str)> {
    let mut v: Vec<(u8, &str)> = Vec::new();
    for ev in passes.iter().flat_map(|p| p.trace.events.iter()) {
        if let TraceEvent::Table {
            table,
            flow: Some(e),
            ..
        } = ev
        {
            if let Some(n) = cookie_name(names, e.spec.cookie) {
                if v.last().map(|l| l.1) != Some(n) {
                    v.push((*table, n));
                }
            }
        }
    }
    v
}

/// Passes followed at most (a pipeline that recirculates forever is cut).
pub const MAX_PASSES: usize = 8;

/// Translates `key` and, as `ofproto/trace` does, follows every
/// `ct(...,table=N)` into the next pass: the frozen key with `ct_state` =
/// `ct_next | trk`, the zone, `recirc_id` = N + 1, and the `nat(src=|dst=)`
/// of the action applied to the addresses and ports (first address and
/// port of the range, `snat`/`dnat` added to `ct_state`), as the connection
/// tracker would for a new connection. Pure: no connection is created.
pub fn trace_through(
    p: &crate::pipeline::Pipeline,
    key: &FlowKey,
    env: &mut crate::xlate::XlateEnv<'_>,
    ct_next: u64,
) -> Vec<Pass> {
    use crate::action::NatKind;
    let mut passes = Vec::new();
    let mut k = *key;
    for _ in 0..MAX_PASSES {
        let mut trace = crate::xlate::Trace::default();
        let x = crate::xlate::translate(p, &k, env, Some(&mut trace));
        let next = x.actions.iter().find_map(|a| match a {
            DpAction::Ct { args, frozen } => args.table.map(|t| (*args, **frozen, t)),
            _ => None,
        });
        passes.push(Pass { key: k, x, trace });
        let Some((args, frozen, table)) = next else {
            break;
        };
        let mut n = frozen;
        let mut state = ct_next | ct_state::TRK;
        if let Some(nat) = args.nat {
            match nat.kind {
                Some(NatKind::Dst) => {
                    n.set(Field::NwDst, u64::from(u32::from(nat.ip_min)));
                    if nat.port_min != 0 {
                        n.set(Field::TpDst, u64::from(nat.port_min));
                    }
                    state |= ct_state::DNAT;
                }
                Some(NatKind::Src) => {
                    n.set(Field::NwSrc, u64::from(u32::from(nat.ip_min)));
                    if nat.port_min != 0 {
                        n.set(Field::TpSrc, u64::from(nat.port_min));
                    }
                    state |= ct_state::SNAT;
                }
                None => {}
            }
        }
        n.set(Field::CtState, state);
        n.set(Field::CtZone, u64::from(args.zone));
        n.set(Field::RecircId, u64::from(table) + 1);
        k = n;
    }
    passes
}

/// Formats passes from [`trace_through`], separated the way
/// `ofproto/trace` separates recirculations.
pub fn format_trace_through(bridge: &str, passes: &[Pass]) -> String {
    let mut out = String::new();
    for (i, pass) in passes.iter().enumerate() {
        if i > 0 {
            let rule = "=".repeat(79);
            let _ = writeln!(
                out,
                "\n{rule}\nrecirc({:#x}) - resume conntrack with ct_state={}\n{rule}\n",
                pass.key.get(Field::RecircId),
                ct_text(pass.key.get(Field::CtState))
            );
        }
        let text = format_trace(bridge, &pass.key, &pass.x, &pass.trace);
        let text = match text.find("\nThe packet recirculates after conntrack") {
            Some(at) if i + 1 < passes.len() => text[..at].to_string(),
            _ => text,
        };
        out.push_str(&text);
    }
    out
}

fn strip_priority(m: &str) -> String {
    m.split(',')
        .filter(|p| !p.starts_with("priority="))
        .collect::<Vec<_>>()
        .join(",")
}
