//! The management commands of `ferrovsd`: what `ferrovs-ctl` asks for over
//! the Unix socket, executed against the running [`Switch`].
//!
//! Wire protocol: one JSON object per line each way. Request
//! `{"args": ["dump-flows", "--no-stats"], "input": "..."}` (`input`
//! carries file contents for `add-flows`/`replace-flows`); response
//! `{"ok": true, "output": "..."}` or `{"ok": false, "error": "..."}`.
//! All parsing happens here, so every client gets the same error text.

use std::sync::atomic::Ordering;

use datapath::port::Port;
use datapath::shared::{PortRole, VxlanConfig};
use datapath::switch::{Switch, SwitchError};
use flows::action::PortNo;
use flows::pipeline::{FlowFilter, FlowMod, Pipeline, VlanMode};
use flows::syntax;
use flows::trace::COOKIE_OBJECT_MASK;
use serde::{Deserialize, Serialize};

use crate::config::{port_from_args, PortConfig, PortKind};

/// A request from `ferrovs-ctl`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// Command and arguments.
    pub args: Vec<String>,
    /// File contents, for commands that take a file.
    #[serde(default)]
    pub input: Option<String>,
}

/// The answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    /// Success.
    pub ok: bool,
    /// Output text on success.
    #[serde(default)]
    pub output: String,
    /// Error text on failure.
    #[serde(default)]
    pub error: String,
}

/// `(cookie, name)` pairs from `bundle` `name` lines.
pub type CookieNames = Vec<(u64, String)>;

/// Parses `bundle` text: one edit per line, `#` comments.
///
/// `add FLOW`, `delete MATCH`, `delete_strict MATCH` (table= and priority=
/// included), `add-group GROUP`/`mod-group GROUP`, `delete-group
/// [group_id=N]`, `name COOKIE TEXT`. Errors name the line.
pub fn parse_bundle(
    parser: &syntax::Parser<'_>,
    text: &str,
) -> Result<(Vec<FlowMod>, CookieNames), String> {
    let mut mods = Vec::new();
    let mut names = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        let err = |e: String| format!("bundle: line {}: {e}", i + 1);
        match verb {
            "add" => mods.push(FlowMod::Add(parser.flow(rest).map_err(|e| err(e.to_string()))?)),
            "delete" | "delete_strict" => mods.push(FlowMod::Delete(
                parser
                    .filter(rest, verb == "delete_strict")
                    .map_err(|e| err(e.to_string()))?,
            )),
            "add-group" | "mod-group" => {
                mods.push(FlowMod::AddGroup(parser.group(rest).map_err(|e| err(e.to_string()))?))
            }
            "delete-group" => {
                let id = match rest {
                    "" => None,
                    s => Some(
                        s.strip_prefix("group_id=")
                            .and_then(|v| v.parse::<u32>().ok())
                            .ok_or_else(|| err(format!("'{s}' is not group_id=N")))?,
                    ),
                };
                mods.push(FlowMod::DeleteGroup(id));
            }
            "name" => {
                let (c, n) = rest.split_once(' ').unwrap_or((rest, ""));
                let c = c.trim_start_matches("0x");
                let c = u64::from_str_radix(c, 16)
                    .map_err(|_| err(format!("'{c}' is not a hex cookie")))?;
                names.push((c, n.trim().to_string()));
            }
            other => {
                return Err(err(format!(
                    "unknown verb '{other}' (add, delete, delete_strict, add-group, mod-group, delete-group, name)"
                )))
            }
        }
    }
    Ok((mods, names))
}

/// Parses `--ct-next=` flags: `new`, `est,rpl`, `est|rpl` (trk is implied).
fn parse_ct_flags(v: &str) -> Result<u64, String> {
    let mut bits = 0;
    for w in v.split([',', '|', '+']).filter(|w| !w.is_empty()) {
        let (_, b) = flows::key::ct_state::NAMES
            .iter()
            .find(|(n, _)| *n == w)
            .ok_or_else(|| format!("trace: --ct-next: unknown connection state '{w}' (new, est, rel, rpl, inv, snat, dnat)"))?;
        bits |= b;
    }
    Ok(bits)
}

/// Opens the datapath side of a configured port.
pub type PortOpener = dyn Fn(&PortConfig) -> Result<Box<dyn Port>, String> + Send;

/// Opens an underlay interface for a VXLAN port: the port and its MAC.
pub type UnderlayOpener = dyn Fn(&str) -> Result<(Box<dyn Port>, [u8; 6]), String> + Send;

/// The daemon's state behind the socket.
pub struct Daemon {
    /// The switch.
    pub switch: Switch,
    /// Bridge name.
    pub bridge: String,
    /// Names of cookies (set by `bundle` `name` lines): a full cookie, or
    /// its object part (low 32 bits zero), to the object it came from.
    pub names: std::collections::BTreeMap<u64, String>,
    open_port: Box<PortOpener>,
    open_underlay: Box<UnderlayOpener>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("bridge", &self.bridge)
            .finish()
    }
}

/// Usage text for `help`.
pub const COMMANDS: &str = "\
show                          bridge and ports
add-port NAME [ofport=N] [type=afxdp|vxlan|memory] [tag=N|trunks=A,B] [mode=auto|native|skb]
         [underlay=IF local_ip=IP remote_ip=IP|flow key=N|flow dst_port=N]
del-port NAME
add-flow FLOW                 add or replace one flow
add-flows FILE                one flow a line, '#' comments
del-flows [--strict] [MATCH]  (cookie=V/M, table=N, out_port=N)
mod-flows [--strict] FLOW     replace actions of matching flows
replace-flows FILE            make the table equal to FILE (only the difference is applied)
bundle [--replace] FILE       apply add/delete/delete_strict/add-group/delete-group/name lines atomically
                              (--replace: the file is the whole table; only the difference is applied)
list-ports                    'NUMBER NAME' per port
dump-flows [--no-stats] [object=NAME] [MATCH]
dump-names                    cookie -> object names (set by ferrovs-agent)
dump-ports [PORT]
dump-tables
add-group GROUP | del-groups [group_id=N] | dump-groups
trace [--ct-next=est,rpl] PACKET  e.g. in_port=1,tcp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=80
                              (follows conntrack recirculation, as a new connection by default)
dump-conntrack
fdb-show
stats                         datapath counters (cache, upcalls, replies, drops by reason)";

impl Daemon {
    /// Wraps a started switch.
    pub fn new(
        switch: Switch,
        bridge: &str,
        open_port: Box<PortOpener>,
        open_underlay: Box<UnderlayOpener>,
    ) -> Self {
        Daemon {
            switch,
            bridge: bridge.to_string(),
            names: std::collections::BTreeMap::new(),
            open_port,
            open_underlay,
        }
    }

    /// Executes one request.
    pub fn handle(&mut self, req: &Request) -> Response {
        match self.dispatch(req) {
            Ok(output) => Response {
                ok: true,
                output,
                error: String::new(),
            },
            Err(error) => Response {
                ok: false,
                output: String::new(),
                error,
            },
        }
    }

    fn dispatch(&mut self, req: &Request) -> Result<String, String> {
        let Some((cmd, rest)) = req.args.split_first() else {
            return Err("no command given".into());
        };
        let (flags, words): (Vec<&String>, Vec<&String>) =
            rest.iter().partition(|a| a.starts_with("--"));
        let has = |f: &str| flags.iter().any(|x| x.as_str() == f);
        let arg = words
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        // Port names work wherever a port number does (`output:veth-a`).
        let ports = self.switch.ports();
        let by_name = |n: &str| {
            ports
                .ports
                .iter()
                .find(|p| p.name == n && p.no < datapath::shared::UNDERLAY_BASE)
                .map(|p| p.no)
        };
        let parser = syntax::Parser::with_port_names(&by_name);
        let input = || {
            req.input
                .clone()
                .ok_or_else(|| format!("{cmd}: needs a file (ferrovs-ctl {cmd} FILE)"))
        };
        match cmd.as_str() {
            "show" => Ok(self.show()),
            "add-port" => {
                let Some((name, kv)) = words.split_first() else {
                    return Err("add-port: needs a port name".into());
                };
                let kv: Vec<String> = kv.iter().map(|s| s.to_string()).collect();
                let pc = port_from_args(name, &kv)?;
                self.add_port(&pc)
                    .map(|no| format!("added port {name} as ofport {no}\n"))
            }
            "del-port" => {
                let name = words.first().ok_or("del-port: needs a port name")?;
                self.switch.del_port(name).map_err(|e| e.to_string())?;
                Ok(String::new())
            }
            "add-flow" => {
                let spec = parser.flow(&arg).map_err(|e| format!("add-flow: {e}"))?;
                self.apply(&[FlowMod::Add(spec)])
            }
            "add-flows" => {
                let specs = parser
                    .flows_file(&input()?)
                    .map_err(|e| format!("add-flows: {e}"))?;
                let mods: Vec<FlowMod> = specs.into_iter().map(FlowMod::Add).collect();
                self.apply(&mods)
            }
            "del-flows" => {
                let f = parser
                    .filter(&arg, has("--strict"))
                    .map_err(|e| format!("del-flows: {e}"))?;
                self.apply(&[FlowMod::Delete(f)])
            }
            "mod-flows" => {
                let (mut filter, actions) = parser
                    .mod_flow(&arg)
                    .map_err(|e| format!("mod-flows: {e}"))?;
                filter.strict = has("--strict");
                self.apply(&[FlowMod::Modify { filter, actions }])
            }
            "replace-flows" => {
                let specs = parser
                    .flows_file(&input()?)
                    .map_err(|e| format!("replace-flows: {e}"))?;
                let cur = self.switch.pipeline();
                let mut target = Pipeline::new();
                let groups: Vec<FlowMod> = cur
                    .groups()
                    .map(|g| FlowMod::AddGroup((**g).clone()))
                    .collect();
                let mut mods = groups;
                mods.extend(specs.into_iter().map(FlowMod::Add));
                target
                    .apply(&mods, 0)
                    .map_err(|e| format!("replace-flows: {e}"))?;
                let sum = self.switch.replace(target);
                Ok(format!(
                    "replace-flows: {} added, {} deleted\n",
                    sum.added, sum.deleted
                ))
            }
            "bundle" => {
                let (mods, names) = parse_bundle(&parser, &input()?)?;
                let sum = if has("--replace") {
                    // The bundle is the whole table: build it, then apply
                    // only the difference (unchanged flows keep counters).
                    if mods
                        .iter()
                        .any(|m| matches!(m, FlowMod::Delete(_) | FlowMod::DeleteGroup(_)))
                    {
                        return Err(
                            "bundle --replace: only add and add-group lines are allowed".into()
                        );
                    }
                    let mut target = Pipeline::new();
                    target
                        .apply(&mods, 0)
                        .map_err(|e| format!("bundle: {e} (nothing was applied)"))?;
                    self.names.clear();
                    self.switch.replace(target)
                } else {
                    self.switch
                        .apply(&mods)
                        .map_err(|e| format!("bundle: {e} (nothing was applied)"))?
                };
                self.names.extend(names);
                Ok(format!(
                    "bundle: {} flows added, {} deleted\n",
                    sum.added, sum.deleted
                ))
            }
            "list-ports" => {
                let mut out = String::new();
                for p in self.switch.ports().ports.iter() {
                    if p.no < datapath::shared::UNDERLAY_BASE {
                        out.push_str(&format!("{} {}\n", p.no, p.name));
                    }
                }
                Ok(out)
            }
            "dump-names" => {
                let mut out = String::new();
                for (c, n) in &self.names {
                    out.push_str(&format!("{c:#018x} {n}\n"));
                }
                Ok(out)
            }
            "dump-flows" => {
                let (objects, rest): (Vec<&str>, Vec<&str>) = words
                    .iter()
                    .map(|w| w.as_str())
                    .partition(|w| w.starts_with("object="));
                let f = parser
                    .filter(&rest.join(" "), false)
                    .map_err(|e| format!("dump-flows: {e}"))?;
                let cookies = match objects.first() {
                    None => None,
                    Some(o) => Some(self.object_cookies(&o["object=".len()..])?),
                };
                Ok(self.dump_flows(&f, !has("--no-stats"), cookies.as_deref()))
            }
            "dump-ports" => self.dump_ports(words.first().map(|s| s.as_str())),
            "dump-tables" => Ok(self.dump_tables()),
            "add-group" | "mod-group" => {
                let g = parser.group(&arg).map_err(|e| format!("{cmd}: {e}"))?;
                self.apply(&[FlowMod::AddGroup(g)])
            }
            "del-groups" => {
                let id = match arg.trim() {
                    "" => None,
                    s => Some(
                        s.strip_prefix("group_id=")
                            .and_then(|v| v.parse::<u32>().ok())
                            .ok_or_else(|| format!("del-groups: '{s}' is not group_id=N"))?,
                    ),
                };
                self.apply(&[FlowMod::DeleteGroup(id)])
            }
            "dump-groups" => {
                let p = self.switch.pipeline();
                let mut out = String::from("OFPST_GROUP_DESC reply (OF1.3):\n");
                for g in p.groups() {
                    out.push(' ');
                    out.push_str(&syntax::format_group(g));
                    out.push('\n');
                }
                Ok(out)
            }
            "trace" => {
                let key = parser.packet(&arg).map_err(|e| format!("trace: {e}"))?;
                let ct_next = match flags.iter().find_map(|f| f.strip_prefix("--ct-next=")) {
                    None => flows::key::ct_state::NEW,
                    Some(v) => parse_ct_flags(v)?,
                };
                let passes = self.switch.trace_through(&key, ct_next);
                let mut out = flows::trace::format_trace_through(&self.bridge, &passes);
                out.push_str(&self.trace_objects(&passes));
                Ok(out)
            }
            "dump-conntrack" => {
                let ct = datapath::shared::lock(&self.switch.shared().ct);
                let mut out = String::new();
                for c in ct.dump() {
                    out.push_str(&c.to_string());
                    out.push('\n');
                }
                Ok(out)
            }
            "fdb-show" => {
                let now = self.switch.shared().now_ms();
                let macs = datapath::shared::lock(&self.switch.shared().macs);
                let mut out = String::from(" port  VLAN  MAC                Age\n");
                for e in macs.entries(now) {
                    let m = flows::key::mac_from_u64(e.mac);
                    out.push_str(&format!(
                        "{:>5}  {:>4}  {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}  {:>3}\n",
                        e.port, e.vlan, m[0], m[1], m[2], m[3], m[4], m[5], e.age_s
                    ));
                }
                Ok(out)
            }
            "stats" => Ok(self.stats_text()),
            "help" => Ok(format!("{COMMANDS}\n")),
            other => Err(format!(
                "unknown command '{other}' (try 'ferrovs-ctl help')"
            )),
        }
    }

    fn apply(&self, mods: &[FlowMod]) -> Result<String, String> {
        self.switch.apply(mods).map_err(|e| e.to_string())?;
        Ok(String::new())
    }

    /// Adds a configured port; returns its OpenFlow number.
    pub fn add_port(&mut self, pc: &PortConfig) -> Result<PortNo, String> {
        let pt = self.switch.ports();
        if pt.ports.iter().any(|p| p.name == pc.name) {
            return Err(SwitchError::PortNameInUse(pc.name.clone()).to_string());
        }
        let no = match pc.ofport {
            Some(n) => n,
            None => (1..0xff00u16)
                .find(|n| pt.get(*n).is_none())
                .ok_or("no free port number")?,
        };
        match &pc.kind {
            PortKind::Vxlan {
                underlay,
                local_ip,
                remote_ip,
                key,
                dst_port,
            } => {
                let existing = pt
                    .ports
                    .iter()
                    .find(|p| p.name == *underlay && matches!(p.role, PortRole::Underlay { .. }));
                let (port, mac) = match existing {
                    Some(p) => match p.role {
                        PortRole::Underlay { local_mac, .. } => (None, local_mac),
                        _ => (None, [0; 6]),
                    },
                    None => {
                        let (p, m) = (self.open_underlay)(underlay)?;
                        (Some(p), m)
                    }
                };
                let cfg = VxlanConfig {
                    underlay: underlay.clone(),
                    local_ip: *local_ip,
                    local_mac: mac,
                    remote_ip: *remote_ip,
                    key: *key,
                    udp_port: *dst_port,
                };
                self.switch
                    .add_vxlan_port(no, &pc.name, cfg, port, pc.vlan.clone())
                    .map_err(|e| e.to_string())?;
            }
            _ => {
                let port = (self.open_port)(pc)?;
                self.switch
                    .add_port(no, port, pc.vlan.clone())
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(no)
    }

    fn show(&self) -> String {
        let pt = self.switch.ports();
        let p = self.switch.pipeline();
        let mut out = format!(
            "bridge {}: {} flows, {} groups, pipeline version {}\n",
            self.bridge,
            p.n_flows(),
            p.groups().count(),
            p.version
        );
        for st in &pt.ports {
            let vlan = p.port(st.no).map(|i| i.vlan.clone());
            let vlan = match vlan {
                Some(VlanMode::Access(t)) => format!(" tag={t}"),
                Some(VlanMode::Trunks(l)) => format!(
                    " trunks={}",
                    l.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                _ => String::new(),
            };
            let extra = match &st.role {
                PortRole::Vxlan { cfg, .. } => format!(
                    " underlay={} local_ip={} remote_ip={} key={} dst_port={}",
                    cfg.underlay,
                    cfg.local_ip,
                    cfg.remote_ip
                        .map(|i| i.to_string())
                        .unwrap_or("flow".into()),
                    cfg.key.map(|k| k.to_string()).unwrap_or("flow".into()),
                    cfg.udp_port
                ),
                PortRole::Underlay { local_ip, .. } => {
                    format!(" (tunnel underlay, local_ip={local_ip})")
                }
                PortRole::Plain => String::new(),
            };
            if st.no >= datapath::shared::UNDERLAY_BASE {
                out.push_str(&format!(" {}: type={}{}\n", st.name, st.kind, extra));
            } else {
                out.push_str(&format!(
                    " {}({}): type={}{}{}\n",
                    st.no, st.name, st.kind, vlan, extra
                ));
            }
        }
        out
    }

    /// Object parts of cookies whose name is `want`, written as
    /// `Kind/ns/name`, `ns/name` or the name as `dump-names` shows it.
    fn object_cookies(&self, want: &str) -> Result<Vec<u64>, String> {
        let norm = |s: &str| s.replace(' ', "/").to_ascii_lowercase();
        let want = norm(want);
        let found: Vec<u64> = self
            .names
            .iter()
            .filter(|(c, n)| {
                **c & !COOKIE_OBJECT_MASK == 0 && {
                    let n = norm(n);
                    n == want || n.split_once('/').is_some_and(|(_, rest)| rest == want)
                }
            })
            .map(|(c, _)| *c)
            .collect();
        if found.is_empty() {
            return Err(format!(
                "dump-flows: no object named '{want}' (see ferrovs-ctl dump-names)"
            ));
        }
        Ok(found)
    }

    /// The "what decided" section of a trace: the object of every flow the
    /// packet hit, and the verdict.
    fn trace_objects(&self, passes: &[flows::trace::Pass]) -> String {
        let Some(final_pass) = passes.last() else {
            return String::new();
        };
        if self.names.is_empty() {
            return String::new();
        }
        let x = &final_pass.x;
        let mut out = String::from("\nObjects:\n");
        let hit = flows::trace::objects_hit(&self.names, passes);
        for (table, n) in &hit {
            out.push_str(&format!("  table {table}: {n}\n"));
        }
        let last = hit.last().map(|h| h.1);
        let delivered = x
            .actions
            .iter()
            .any(|a| matches!(a, flows::xlate::DpAction::Output(_)));
        match (delivered, last) {
            (true, _) => out.push_str("Verdict: forwarded\n"),
            (false, Some(n)) => out.push_str(&format!("Verdict: dropped, decided by {n}\n")),
            (false, None) => out.push_str("Verdict: dropped\n"),
        }
        out
    }

    fn dump_flows(&self, f: &FlowFilter, stats: bool, cookies: Option<&[u64]>) -> String {
        let p = self.switch.pipeline();
        let now = self.switch.shared().now_ms();
        let mut out = String::new();
        for e in p.flows(f) {
            if cookies.is_some_and(|c| !c.contains(&(e.spec.cookie & COOKIE_OBJECT_MASK))) {
                continue;
            }
            out.push_str(&syntax::format_flow(e, now, stats));
            out.push('\n');
        }
        out
    }

    fn dump_ports(&self, which: Option<&str>) -> Result<String, String> {
        let pt = self.switch.ports();
        let sel: Vec<_> = match which {
            None => pt
                .ports
                .iter()
                .filter(|p| p.no < datapath::shared::UNDERLAY_BASE)
                .collect(),
            Some(w) => {
                let found: Vec<_> = pt
                    .ports
                    .iter()
                    .filter(|p| p.name == w || w.parse::<PortNo>().ok() == Some(p.no))
                    .collect();
                if found.is_empty() {
                    return Err(format!("dump-ports: no port named '{w}'"));
                }
                found
            }
        };
        let mut out = format!("OFPST_PORT reply (OF1.3): {} ports\n", sel.len());
        for p in sel {
            let c = p.counters.snapshot();
            let k = p.kernel.as_ref().and_then(|k| k.read());
            // Frames the kernel dropped before the switch saw them count as
            // receive drops too, as they do in OVS's afxdp ports.
            let rx_drop = c.rx_dropped + k.map_or(0, |k| k.rx_lost());
            out.push_str(&format!(
                "  port {:>2}: rx pkts={}, bytes={}, drop={}, errs=0, frame=0, over=0, crc=0\n           tx pkts={}, bytes={}, drop={}, errs=0, coll=0\n",
                p.no, c.rx_packets, c.rx_bytes, rx_drop, c.tx_packets, c.tx_bytes, c.tx_dropped
            ));
            if let Some(k) = k {
                out.push_str(&format!(
                    "           xsk rx_ring_full={}, rx_fill_ring_empty={}, rx_dropped={}, invalid_descs={}, tx_ring_empty={}, tx_wakeups={}\n",
                    k.rx_ring_full, k.rx_fill_empty, k.rx_dropped, k.invalid_descs, k.tx_ring_empty, k.tx_wakeups
                ));
            }
        }
        Ok(out)
    }

    fn dump_tables(&self) -> String {
        let p = self.switch.pipeline();
        let mut out = String::from("OFPST_TABLE reply (OF1.3):\n");
        for (id, t) in p.tables() {
            let lookups = t.stats.lookups.load(Ordering::Relaxed);
            if t.cls.is_empty() && lookups == 0 {
                continue;
            }
            out.push_str(&format!(
                "  table {id}:\n    active={}, lookup={}, matched={}\n",
                t.cls.len(),
                lookups,
                t.stats.matched.load(Ordering::Relaxed)
            ));
        }
        out
    }

    fn stats_text(&self) -> String {
        format_stats(&self.switch.stats())
    }
}

/// Sends one request to ferrovsd's management socket and reads the answer
/// (the client side of `ferrovs-ctl`).
pub fn call(socket: &std::path::Path, req: &Request) -> std::io::Result<Response> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let text = serde_json::to_string(req).map_err(std::io::Error::other)?;
    writeln!(s, "{text}")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// The `stats` reply. Poll time is split as OVS's `pmd-stats-show` splits
/// a PMD's cycles: busy (rounds that moved frames), idle (empty rounds,
/// spinning), and asleep (naps, waits for frames); the busy share is of
/// busy + idle.
pub fn format_stats(s: &datapath::switch::SwitchStats) -> String {
    let secs = |ns: u64| ns as f64 / 1e9;
    let polling = s.busy_ns.saturating_add(s.idle_ns);
    let share = if polling == 0 {
        0.0
    } else {
        s.busy_ns as f64 * 100.0 / polling as f64
    };
    let per_packet = s
        .busy_ns
        .checked_div(s.packets)
        .map_or_else(|| "-".to_string(), |ns| format!("{ns} ns"));
    let nice = s
        .poll_nice
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = format!(
        "packets: {}\nflow cache: hits={} misses={}\nupcalls: {}\ncontroller punts: {}\nreplies sent: {}\nidle sleeps: {}\n\
         poll time: busy={:.3} s ({share:.1}%), idle={:.3} s, asleep={:.3} s\nbusy time per packet: {per_packet}\n\
         poll thread niceness: {nice}\nconntrack entries: {}\ndrops:\n",
        s.packets,
        s.emc_hits,
        s.emc_misses,
        s.upcalls,
        s.controller,
        s.replies_sent,
        s.sleeps,
        secs(s.busy_ns),
        secs(s.idle_ns),
        secs(s.asleep_ns),
        s.conntrack
    );
    for (name, n) in &s.drops {
        out.push_str(&format!("  {name}: {n}\n"));
    }
    out
}

/// Reads the MAC address of a local interface.
pub fn interface_mac(ifname: &str) -> Result<[u8; 6], String> {
    let path = format!("/sys/class/net/{ifname}/address");
    let text =
        std::fs::read_to_string(&path).map_err(|_| format!("no such interface '{ifname}'"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{path}: '{}' is not a MAC address", text.trim()));
    }
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| format!("{path}: bad MAC"))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datapath::switch::SwitchStats;

    #[test]
    fn stats_split_poll_time_like_pmd_stats() {
        let s = SwitchStats {
            packets: 1_000_000,
            busy_ns: 990_000_000,
            idle_ns: 10_000_000,
            asleep_ns: 2_500_000_000,
            drops: vec![("no_port", 3)],
            poll_nice: vec![-10, -10],
            ..SwitchStats::default()
        };
        let text = format_stats(&s);
        assert!(
            text.contains("poll time: busy=0.990 s (99.0%), idle=0.010 s, asleep=2.500 s\n"),
            "{text}"
        );
        assert!(text.contains("busy time per packet: 990 ns\n"), "{text}");
        assert!(text.contains("poll thread niceness: -10 -10\n"), "{text}");
        assert!(text.ends_with("drops:\n  no_port: 3\n"), "{text}");
        // Nothing polled yet: no division by zero.
        let idle = format_stats(&SwitchStats::default());
        assert!(idle.contains("busy=0.000 s (0.0%)"), "{idle}");
        assert!(idle.contains("busy time per packet: -\n"), "{idle}");
    }
}
