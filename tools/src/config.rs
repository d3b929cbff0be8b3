//! `ferrovsd` configuration file (TOML).
//!
//! ```toml
//! bridge = "br0"
//! threads = 1            # poll threads
//! cores = [1]            # optional CPU pinning, one entry per thread
//! poll_max_sleep_us = 50 # optional naps under light load (default 0: busy polling)
//! tx_flush_interval_us = 20 # optional: longest output wait under load (0: never wait)
//! poll_nice = -10        # optional niceness of the poll threads (default -10, as OVS)
//! socket = "/run/ferrovs/br0.sock"
//! metrics = "127.0.0.1:9477"   # optional Prometheus endpoint
//! flows = "/etc/ferrovs/flows.txt"  # optional, installed at start
//!
//! [conntrack]            # optional; seconds, OVS defaults
//! max_connections = 3000000
//! tcp_established = 86400
//! udp_first = 30
//!
//! [[port]]
//! name = "veth-a"        # interface name
//! ofport = 1
//! type = "afxdp"         # afxdp (default) | vxlan | memory
//! mode = "auto"          # afxdp: auto | native | skb
//! tag = 10               # access VLAN; or trunks = [10, 20]
//!
//! [[port]]
//! name = "vxlan0"
//! ofport = 10
//! type = "vxlan"
//! underlay = "ul0"       # interface the switch owns for tunnel traffic
//! local_ip = "192.168.50.1"
//! remote_ip = "192.168.50.2"   # or "flow"
//! key = 5000                   # or "flow"
//! dst_port = 4789
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use datapath::conntrack::CtConfig;
use flows::pipeline::VlanMode;
use serde::Deserialize;

/// Config errors, naming the file and what is wrong where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Could not read the file.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax or type error (with line/column from the parser).
    #[error("{path}: {msg}")]
    Syntax {
        /// File.
        path: String,
        /// Parser message (includes line and column).
        msg: String,
    },
    /// A value that parses but makes no sense.
    #[error("{path}: port '{port}', field {field}: {msg}")]
    Port {
        /// File.
        path: String,
        /// Port name.
        port: String,
        /// Field.
        field: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A top-level field is wrong.
    #[error("{path}: field {field}: {msg}")]
    Field {
        /// File.
        path: String,
        /// Field.
        field: &'static str,
        /// What is wrong.
        msg: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    bridge: Option<String>,
    threads: Option<usize>,
    cores: Option<Vec<usize>>,
    poll_max_sleep_us: Option<u64>,
    tx_flush_interval_us: Option<u64>,
    poll_nice: Option<i32>,
    socket: Option<PathBuf>,
    metrics: Option<String>,
    flows: Option<PathBuf>,
    conntrack: Option<RawConntrack>,
    #[serde(default)]
    port: Vec<RawPort>,
}

/// `[conntrack]`: limits and timeouts in seconds (OVS defaults).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConntrack {
    max_connections: Option<usize>,
    tcp_syn_sent: Option<u64>,
    tcp_established: Option<u64>,
    tcp_fin_wait: Option<u64>,
    tcp_closed: Option<u64>,
    udp_first: Option<u64>,
    udp_multiple: Option<u64>,
    icmp: Option<u64>,
    other: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    name: String,
    ofport: Option<u32>,
    #[serde(rename = "type")]
    kind: Option<String>,
    mode: Option<String>,
    tag: Option<u32>,
    trunks: Option<Vec<u32>>,
    underlay: Option<String>,
    local_ip: Option<String>,
    remote_ip: Option<String>,
    key: Option<toml::Value>,
    dst_port: Option<u32>,
}

/// A port as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Interface/port name.
    pub name: String,
    /// OpenFlow port number (assigned if absent: lowest free).
    pub ofport: Option<u16>,
    /// What it is.
    pub kind: PortKind,
    /// VLAN membership.
    pub vlan: VlanMode,
}

/// Port types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// AF_XDP on an interface.
    Afxdp {
        /// `auto`, `native` or `skb`.
        mode: String,
    },
    /// In-memory (testing).
    Memory,
    /// VXLAN tunnel.
    Vxlan {
        /// Underlay interface.
        underlay: String,
        /// Local endpoint.
        local_ip: Ipv4Addr,
        /// `None` = flow.
        remote_ip: Option<Ipv4Addr>,
        /// `None` = flow.
        key: Option<u64>,
        /// UDP port.
        dst_port: u16,
    },
}

/// The whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Bridge name.
    pub bridge: String,
    /// Poll threads.
    pub threads: usize,
    /// CPU pinning.
    pub cores: Vec<usize>,
    /// Longest nap of a poll thread under light load (0: busy polling).
    pub poll_max_sleep: std::time::Duration,
    /// Longest a frame waits for more output under load (0: never).
    pub tx_flush_interval: std::time::Duration,
    /// Niceness of the poll threads.
    pub poll_nice: i32,
    /// Management socket.
    pub socket: PathBuf,
    /// Prometheus endpoint.
    pub metrics: Option<std::net::SocketAddr>,
    /// Flows file installed at start.
    pub flows: Option<PathBuf>,
    /// Connection tracking.
    pub conntrack: CtConfig,
    /// Ports.
    pub ports: Vec<PortConfig>,
}

/// Default management socket for a bridge.
pub fn default_socket(bridge: &str) -> PathBuf {
    PathBuf::from(format!("/run/ferrovs/{bridge}.sock"))
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: p.clone(),
            source: e,
        })?;
        Self::parse(&text, &p)
    }

    /// Parses config text; `path` is used in messages.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_string(),
            msg: e.to_string().trim_end().replace('\n', " "),
        })?;
        let bridge = raw.bridge.unwrap_or_else(|| "br0".to_string());
        let threads = raw.threads.unwrap_or(1);
        if threads == 0 || threads > 64 {
            return Err(ConfigError::Field {
                path: path.into(),
                field: "threads",
                msg: format!("{threads} is not in 1..=64"),
            });
        }
        let cores = raw.cores.unwrap_or_default();
        let ncpu = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if let Some(c) = cores.iter().find(|c| **c >= ncpu) {
            return Err(ConfigError::Field {
                path: path.into(),
                field: "cores",
                msg: format!("CPU {c} does not exist (this machine has {ncpu})"),
            });
        }
        let poll_max_sleep = match raw.poll_max_sleep_us {
            None => datapath::switch::DEFAULT_MAX_SLEEP,
            Some(us) if us <= 10_000 => std::time::Duration::from_micros(us),
            Some(us) => {
                return Err(ConfigError::Field {
                    path: path.into(),
                    field: "poll_max_sleep_us",
                    msg: format!("{us} is above 10000 (10 ms)"),
                })
            }
        };
        let max_flush = datapath::txbatch::MAX_TX_FLUSH_INTERVAL;
        let tx_flush_interval = match raw.tx_flush_interval_us {
            None => datapath::txbatch::DEFAULT_TX_FLUSH_INTERVAL,
            Some(us) if u128::from(us) <= max_flush.as_micros() => {
                std::time::Duration::from_micros(us)
            }
            Some(us) => {
                return Err(ConfigError::Field {
                    path: path.into(),
                    field: "tx_flush_interval_us",
                    msg: format!("{us} is above {} (1 ms)", max_flush.as_micros()),
                })
            }
        };
        let poll_nice = match raw.poll_nice {
            None => datapath::switch::DEFAULT_POLL_NICE,
            Some(n) if (-20..=19).contains(&n) => n,
            Some(n) => {
                return Err(ConfigError::Field {
                    path: path.into(),
                    field: "poll_nice",
                    msg: format!("{n} is outside -20..19"),
                })
            }
        };
        let metrics = match raw.metrics {
            None => None,
            Some(m) => Some(m.parse().map_err(|_| ConfigError::Field {
                path: path.into(),
                field: "metrics",
                msg: format!("'{m}' is not an address:port"),
            })?),
        };
        let socket = raw.socket.unwrap_or_else(|| default_socket(&bridge));
        let mut ports: Vec<PortConfig> = Vec::new();
        for rp in raw.port {
            let pc = port_from_raw(rp, path)?;
            if ports.iter().any(|q| q.name == pc.name) {
                return Err(ConfigError::Port {
                    path: path.into(),
                    port: pc.name,
                    field: "name",
                    msg: "listed twice".into(),
                });
            }
            if let Some(n) = pc.ofport {
                if ports.iter().any(|q| q.ofport == Some(n)) {
                    return Err(ConfigError::Port {
                        path: path.into(),
                        port: pc.name,
                        field: "ofport",
                        msg: format!("{n} is already used by another port"),
                    });
                }
            }
            ports.push(pc);
        }
        let mut conntrack = CtConfig::default();
        if let Some(c) = raw.conntrack {
            if let Some(n) = c.max_connections {
                conntrack.max_conns = n;
            }
            let t = &mut conntrack.timeouts;
            for (v, slot) in [
                (c.tcp_syn_sent, &mut t.tcp_syn_sent),
                (c.tcp_established, &mut t.tcp_established),
                (c.tcp_fin_wait, &mut t.tcp_fin_wait),
                (c.tcp_closed, &mut t.tcp_closed),
                (c.udp_first, &mut t.udp_first),
                (c.udp_multiple, &mut t.udp_multiple),
                (c.icmp, &mut t.icmp),
                (c.other, &mut t.other),
            ] {
                if let Some(secs) = v {
                    if secs == 0 {
                        return Err(ConfigError::Field {
                            path: path.into(),
                            field: "conntrack",
                            msg: "timeouts must be at least 1 second".into(),
                        });
                    }
                    *slot = secs.saturating_mul(1000);
                }
            }
        }
        Ok(Config {
            bridge,
            conntrack,
            threads,
            cores,
            poll_max_sleep,
            tx_flush_interval,
            poll_nice,
            socket,
            metrics,
            flows: raw.flows,
            ports,
        })
    }
}

/// Builds a port from `key=value` words (`ferrovs-ctl add-port NAME k=v...`).
pub fn port_from_args(name: &str, args: &[String]) -> Result<PortConfig, String> {
    let mut t = toml::map::Map::new();
    t.insert("name".into(), toml::Value::String(name.into()));
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            return Err(format!("port '{name}': argument '{a}' is not key=value"));
        };
        let k = if k == "options:remote_ip" {
            "remote_ip"
        } else {
            k
        };
        let k = k.strip_prefix("options:").unwrap_or(k);
        let val = match k {
            "ofport" | "tag" | "dst_port" => v
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| format!("port '{name}', field {k}: '{v}' is not a number"))?,
            "key" => v
                .parse::<i64>()
                .map(toml::Value::Integer)
                .unwrap_or_else(|_| toml::Value::String(v.into())),
            "trunks" => {
                let mut list = Vec::new();
                for x in v.split(',').filter(|s| !s.is_empty()) {
                    list.push(toml::Value::Integer(x.parse::<i64>().map_err(|_| {
                        format!("port '{name}', field trunks: '{x}' is not a number")
                    })?));
                }
                toml::Value::Array(list)
            }
            _ => toml::Value::String(v.into()),
        };
        t.insert(k.into(), val);
    }
    let raw: RawPort = toml::Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| format!("port '{name}': {}", e.message()))?;
    port_from_raw(raw, "add-port").map_err(|e| e.to_string())
}

fn port_from_raw(rp: RawPort, path: &str) -> Result<PortConfig, ConfigError> {
    let err = |field: &'static str, msg: String| ConfigError::Port {
        path: path.to_string(),
        port: rp.name.clone(),
        field,
        msg,
    };
    if rp.name.is_empty() || rp.name.len() > 15 {
        return Err(err(
            "name",
            "must be 1 to 15 characters (an interface name)".into(),
        ));
    }
    let ofport = match rp.ofport {
        None => None,
        Some(n) if (1..0xff00).contains(&n) => Some(n as u16),
        Some(n) => return Err(err("ofport", format!("{n} is not in 1..=65279"))),
    };
    let vlan = match (rp.tag, &rp.trunks) {
        (Some(_), Some(_)) => return Err(err("tag", "tag and trunks cannot both be set".into())),
        (Some(t), None) if (1..4095).contains(&t) => VlanMode::Access(t as u16),
        (Some(t), None) => return Err(err("tag", format!("{t} is not a VLAN id (1..=4094)"))),
        (None, Some(list)) => {
            let mut v = Vec::new();
            for t in list {
                if *t > 4094 {
                    return Err(err("trunks", format!("{t} is not a VLAN id (0..=4094)")));
                }
                v.push(*t as u16);
            }
            VlanMode::Trunks(v)
        }
        (None, None) => VlanMode::Trunk,
    };
    let kind = match rp.kind.as_deref().unwrap_or("afxdp") {
        "afxdp" => {
            let mode = rp.mode.clone().unwrap_or_else(|| "auto".into());
            if !["auto", "native", "skb"].contains(&mode.as_str()) {
                return Err(err("mode", format!("'{mode}' is not auto, native or skb")));
            }
            PortKind::Afxdp { mode }
        }
        "memory" => PortKind::Memory,
        "vxlan" => {
            let underlay = rp
                .underlay
                .clone()
                .ok_or_else(|| err("underlay", "required for type vxlan".into()))?;
            let local_ip = rp
                .local_ip
                .as_deref()
                .ok_or_else(|| err("local_ip", "required for type vxlan".into()))?;
            let local_ip: Ipv4Addr = local_ip
                .parse()
                .map_err(|_| err("local_ip", format!("'{local_ip}' is not an IPv4 address")))?;
            let remote_ip = match rp.remote_ip.as_deref() {
                None | Some("flow") => None,
                Some(s) => Some(s.parse().map_err(|_| {
                    err(
                        "remote_ip",
                        format!("'{s}' is not an IPv4 address or 'flow'"),
                    )
                })?),
            };
            let key = match &rp.key {
                None => None,
                Some(toml::Value::String(s)) if s == "flow" => None,
                Some(toml::Value::Integer(i)) if (0..1 << 24).contains(i) => Some(*i as u64),
                Some(v) => {
                    return Err(err(
                        "key",
                        format!("{v} is not a VNI (0..16777215) or 'flow'"),
                    ))
                }
            };
            let dst_port = match rp.dst_port {
                None => 4789,
                Some(p) if (1..=65535).contains(&p) => p as u16,
                Some(p) => return Err(err("dst_port", format!("{p} is not a UDP port"))),
            };
            PortKind::Vxlan {
                underlay,
                local_ip,
                remote_ip,
                key,
                dst_port,
            }
        }
        other => {
            return Err(err(
                "type",
                format!("'{other}' is not afxdp, vxlan or memory"),
            ));
        }
    };
    Ok(PortConfig {
        name: rp.name,
        ofport,
        kind,
        vlan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config() {
        let c = Config::parse(
            r#"
bridge = "br1"
threads = 1
metrics = "127.0.0.1:9477"
[[port]]
name = "veth-a"
ofport = 1
tag = 10
[[port]]
name = "vx0"
ofport = 10
type = "vxlan"
underlay = "ul0"
local_ip = "192.168.50.1"
remote_ip = "192.168.50.2"
key = 5000
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.bridge, "br1");
        assert_eq!(c.socket, PathBuf::from("/run/ferrovs/br1.sock"));
        assert_eq!(c.ports[0].vlan, VlanMode::Access(10));
        assert!(matches!(
            c.ports[1].kind,
            PortKind::Vxlan {
                key: Some(5000),
                dst_port: 4789,
                ..
            }
        ));
    }

    #[test]
    fn errors_name_file_port_and_field() {
        let e = Config::parse("[[port]]\nname = \"a\"\ntag = 5000\n", "n.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "n.toml: port 'a', field tag: 5000 is not a VLAN id (1..=4094)"
        );
        let e = Config::parse("bogus = 1\n", "n.toml").unwrap_err();
        assert!(e.to_string().starts_with("n.toml: "), "{e}");
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = Config::parse("[[port]]\nname = \"v\"\ntype = \"vxlan\"\n", "n.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "n.toml: port 'v', field underlay: required for type vxlan"
        );
        let e = Config::parse(
            "[[port]]\nname = \"a\"\nofport = 1\n[[port]]\nname = \"b\"\nofport = 1\n",
            "n.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("field ofport: 1 is already used"),
            "{e}"
        );
    }

    #[test]
    fn poll_max_sleep() {
        let c = Config::parse("poll_max_sleep_us = 50\n", "n.toml").unwrap();
        assert_eq!(c.poll_max_sleep, std::time::Duration::from_micros(50));
        let c = Config::parse("", "n.toml").unwrap();
        assert!(c.poll_max_sleep.is_zero(), "busy polling by default");
        let e = Config::parse("poll_max_sleep_us = 20000\n", "n.toml").unwrap_err();
        assert_eq!(
            c.tx_flush_interval,
            datapath::txbatch::DEFAULT_TX_FLUSH_INTERVAL
        );
        let t = Config::parse("tx_flush_interval_us = 0\n", "n.toml").unwrap();
        assert!(t.tx_flush_interval.is_zero());
        let f = Config::parse("tx_flush_interval_us = 5000\n", "n.toml").unwrap_err();
        assert_eq!(
            f.to_string(),
            "n.toml: field tx_flush_interval_us: 5000 is above 1000 (1 ms)"
        );
        assert_eq!(
            e.to_string(),
            "n.toml: field poll_max_sleep_us: 20000 is above 10000 (10 ms)"
        );
    }

    #[test]
    fn poll_nice() {
        let c = Config::parse("", "n.toml").unwrap();
        assert_eq!(c.poll_nice, -10, "OVS's niceness by default");
        let c = Config::parse("poll_nice = 0\n", "n.toml").unwrap();
        assert_eq!(c.poll_nice, 0);
        let e = Config::parse("poll_nice = -21\n", "n.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "n.toml: field poll_nice: -21 is outside -20..19"
        );
    }

    #[test]
    fn add_port_args() {
        let p = port_from_args("veth-x", &["ofport=3".into(), "tag=20".into()]).unwrap();
        assert_eq!(p.ofport, Some(3));
        assert_eq!(p.vlan, VlanMode::Access(20));
        let e = port_from_args("veth-x", &["tag=abc".into()]).unwrap_err();
        assert_eq!(e, "port 'veth-x', field tag: 'abc' is not a number");
        let e = port_from_args("veth-x", &["colour=red".into()]).unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }
}
