//! The pure parts of the `ferrovs-cni` plugin: the CNI environment and
//! network configuration, the result and error JSON, the host interface
//! name, and the address allocator. The binary (`src/bin/ferrovs-cni.rs`)
//! does the I/O: locking the allocation state, running `ip`/`ethtool`,
//! writing the [`crate::attach`] record.
//!
//! Implements CNI spec 1.0.0 and also accepts 0.4.0 configurations
//! ([`SUPPORTED_VERSIONS`]). The network configuration is
//!
//! ```json
//! {"cniVersion":"1.0.0","name":"ferrovs","type":"ferrovs-cni",
//!  "stateDir":"/run/ferrovs","mtu":1500,"ipam":{"subnet":"10.244.1.0/24"}}
//! ```
//!
//! `stateDir` and `mtu` are optional. The first host address of the subnet is
//! the pods' gateway; pods get the following addresses (up to the last one
//! before broadcast), handed out round-robin like the `host-local` IPAM
//! plugin does so that a released address is not reused at once.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

use crate::attach::format_mac;

/// The CNI versions this plugin implements (the `cniVersion` values accepted
/// in a network configuration).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0"];
/// The version reported when none is known (VERSION, errors before the
/// configuration is parsed).
pub const LATEST_VERSION: &str = "1.0.0";
/// `stateDir` when the configuration has none.
pub const DEFAULT_STATE_DIR: &str = "/run/ferrovs";
/// `mtu` when the configuration has none.
pub const DEFAULT_MTU: u32 = 1500;
/// Prefix of the host-side veth names.
pub const HOST_IFNAME_PREFIX: &str = "fvs";

/// CNI error codes (spec section "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Plugin-specific: no free address in the subnet.
    pub const EXHAUSTED: u32 = 100;
    /// Plugin-specific: CHECK found the container's network not as set up.
    pub const CHECK_FAILED: u32 = 101;
}

/// Why the plugin failed; printed as CNI error JSON by [`CniError::to_json`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CniError {
    #[error("cniVersion {version:?} is not supported (supported: {})", SUPPORTED_VERSIONS.join(", "))]
    IncompatibleVersion { version: String },
    #[error("network config field {field}: {msg}")]
    UnsupportedField { field: String, msg: String },
    #[error("environment variable {var}: {msg}")]
    Env { var: &'static str, msg: String },
    #[error("network config: {msg}")]
    Decode { msg: String },
    #[error("network config field {field}: {msg}")]
    Config { field: String, msg: String },
    /// An external command failed; `stderr` becomes the error's `details`.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {msg}")]
    Io { what: String, msg: String },
    #[error("no free address left in subnet {subnet} ({size} pod addresses, all allocated)")]
    Exhausted { subnet: Subnet, size: u32 },
    #[error("container {container_id} interface {ifname}: {msg}")]
    UnknownContainer {
        container_id: String,
        ifname: String,
        msg: String,
    },
    #[error("check failed: {msg}")]
    CheckFailed { msg: String },
}

impl CniError {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            CniError::UnsupportedField { .. } => code::UNSUPPORTED_FIELD,
            CniError::Env { .. } => code::INVALID_ENV,
            CniError::Decode { .. } => code::DECODE,
            CniError::Config { .. } => code::INVALID_CONFIG,
            CniError::Command { .. } | CniError::Io { .. } => code::IO,
            CniError::Exhausted { .. } => code::EXHAUSTED,
            CniError::UnknownContainer { .. } => code::UNKNOWN_CONTAINER,
            CniError::CheckFailed { .. } => code::CHECK_FAILED,
        }
    }

    /// The CNI error object `{"cniVersion","code","msg","details"}`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let details = match self {
            CniError::Command { stderr, .. } => stderr.clone(),
            _ => String::new(),
        };
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": details,
        })
    }

    fn config(field: &str, msg: impl Into<String>) -> CniError {
        CniError::Config {
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}

/// The `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl FromStr for Command {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Command, CniError> {
        match s {
            "ADD" => Ok(Command::Add),
            "DEL" => Ok(Command::Del),
            "CHECK" => Ok(Command::Check),
            "VERSION" => Ok(Command::Version),
            _ => Err(CniError::Env {
                var: "CNI_COMMAND",
                msg: format!("unknown command {s:?}, expected ADD, DEL, CHECK or VERSION"),
            }),
        }
    }
}

/// The CNI environment of one plugin run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION).
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL and VERSION).
    pub netns: String,
    /// `CNI_IFNAME` (empty for VERSION).
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod_name: Option<String>,
}

impl Env {
    /// Reads the CNI variables through `var` (e.g. `|k| std::env::var(k).ok()`)
    /// and checks the ones the command needs.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command: Command = var("CNI_COMMAND")
            .ok_or(CniError::Env {
                var: "CNI_COMMAND",
                msg: "not set".into(),
            })?
            .parse()?;
        let get = |name: &'static str, required: bool| -> Result<String, CniError> {
            match var(name) {
                Some(v) if !v.is_empty() => Ok(v),
                _ if required => Err(CniError::Env {
                    var: name,
                    msg: "not set".into(),
                }),
                _ => Ok(String::new()),
            }
        };
        let needs = command != Command::Version;
        let container_id = get("CNI_CONTAINERID", needs)?;
        let netns = get("CNI_NETNS", needs && command != Command::Del)?;
        let ifname = get("CNI_IFNAME", needs)?;
        if needs {
            check_container_id(&container_id)?;
            check_ifname("CNI_IFNAME", &ifname)?;
        }
        let args = parse_cni_args(&var("CNI_ARGS").unwrap_or_default())?;
        let arg = |k: &str| args.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            pod_namespace: arg("K8S_POD_NAMESPACE"),
            pod_name: arg("K8S_POD_NAME"),
        })
    }
}

/// Checks a CNI container id: letters, digits, `_`, `.`, `-`, starting with
/// a letter or digit (the spec's rule; it is used in file names).
pub fn check_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::Env {
            var: "CNI_CONTAINERID",
            msg: format!("{id:?} is not a valid container id (letters, digits, '_', '.', '-')"),
        })
    }
}

/// Checks a Linux interface name: 1-15 bytes, no `/`, `:` or whitespace,
/// not `.` or `..`.
pub fn check_ifname(var: &'static str, name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(CniError::Env {
            var,
            msg: format!(
                "{name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
            ),
        })
    }
}

/// Parses `CNI_ARGS`, `K1=V1;K2=V2`.
pub fn parse_cni_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for item in s.split(';').filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| CniError::Env {
            var: "CNI_ARGS",
            msg: format!("{item:?} is not KEY=VALUE"),
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The host-side veth name of a container: `fvs` + 8 hex digits of the
/// 32-bit FNV-1a hash of the container id.
pub fn host_ifname(container_id: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in container_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{HOST_IFNAME_PREFIX}{h:08x}")
}

/// An IPv4 subnet, `10.244.1.0/24` (host bits must be zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Subnet {
    /// The subnet `network/prefix_len`; `None` when host bits are set or
    /// `prefix_len` is above 32.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Option<Subnet> {
        let s = Subnet {
            network,
            prefix_len,
        };
        (prefix_len <= 32 && u32::from(network) & !s.mask() == 0).then_some(s)
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The gateway: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(1))
    }

    /// The first and last pod address (after the gateway, before
    /// broadcast); `None` when the subnet is too small (/31, /32).
    pub fn pod_range(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        if self.prefix_len > 30 {
            return None;
        }
        let net = u32::from(self.network);
        Some((
            Ipv4Addr::from(net + 2),
            Ipv4Addr::from((net | !self.mask()) - 1),
        ))
    }

    /// How many pod addresses there are.
    pub fn pod_count(&self) -> u32 {
        self.pod_range()
            .map_or(0, |(a, b)| u32::from(b) - u32::from(a) + 1)
    }

    /// Whether `ip` is a pod address of the subnet.
    pub fn is_pod_address(&self, ip: Ipv4Addr) -> bool {
        self.pod_range()
            .is_some_and(|(a, b)| (u32::from(a)..=u32::from(b)).contains(&u32::from(ip)))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX_LENGTH"))?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} in {s:?} is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("prefix length {len:?} in {s:?} is not 0-32"))?;
        Subnet::new(network, prefix_len).ok_or_else(|| {
            format!("{s:?} has host bits set (the network address is needed, like 10.244.1.0/24)")
        })
    }
}

/// A parsed and checked network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`, one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// `name`, the network name (also names the allocation state file).
    pub name: String,
    /// `stateDir`: where attachment records (and `ipam/`) live.
    pub state_dir: PathBuf,
    /// `mtu` of both veth ends.
    pub mtu: u32,
    /// `ipam.subnet`: the node's pod subnet.
    pub subnet: Subnet,
    /// `prevResult` (given to CHECK and DEL), unparsed.
    pub prev_result: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetConf {
    cni_version: String,
    name: String,
    #[serde(rename = "type")]
    plugin_type: String,
    state_dir: Option<String>,
    mtu: Option<u32>,
    ipam: RawIpam,
    prev_result: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    subnet: String,
}

/// The `cniVersion` of a configuration that may not parse otherwise, for
/// error replies; [`LATEST_VERSION`] when there is none.
pub fn version_of(config: &[u8]) -> String {
    serde_json::from_slice::<Value>(config)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string())
}

impl NetConf {
    /// Parses and checks a network configuration (the plugin's stdin).
    /// Unknown top-level fields (`args`, `runtimeConfig`, `capabilities`,
    /// ...) are ignored, as the spec asks; unknown `ipam` fields are errors.
    pub fn parse(config: &[u8]) -> Result<NetConf, CniError> {
        let de = &mut serde_json::Deserializer::from_slice(config);
        let raw: RawNetConf = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                CniError::Decode {
                    msg: inner.to_string(),
                }
            } else {
                CniError::Decode {
                    msg: format!("field {path}: {inner}"),
                }
            }
        })?;
        if !SUPPORTED_VERSIONS.contains(&raw.cni_version.as_str()) {
            return Err(CniError::IncompatibleVersion {
                version: raw.cni_version,
            });
        }
        let name_ok = raw
            .name
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphanumeric)
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return Err(CniError::config(
                "name",
                format!(
                    "{:?} is not a valid network name (letters, digits, '_', '.', '-')",
                    raw.name
                ),
            ));
        }
        if raw.plugin_type != "ferrovs-cni" {
            return Err(CniError::config(
                "type",
                format!("{:?} is not \"ferrovs-cni\"", raw.plugin_type),
            ));
        }
        let state_dir = match raw.state_dir {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some(d) if d.starts_with('/') => PathBuf::from(d),
            Some(d) => {
                return Err(CniError::config(
                    "stateDir",
                    format!("{d:?} is not an absolute path"),
                ))
            }
        };
        let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
        if !(68..=65535).contains(&mtu) {
            return Err(CniError::config("mtu", format!("{mtu} is not 68-65535")));
        }
        if let Some(t) = raw.ipam.ipam_type.filter(|t| t != "ferrovs-cni") {
            return Err(CniError::UnsupportedField {
                field: "ipam.type".into(),
                msg: format!(
                    "{t:?}: ferrovs-cni allocates addresses itself; omit ipam.type or set it to \"ferrovs-cni\""
                ),
            });
        }
        let subnet: Subnet = raw
            .ipam
            .subnet
            .parse()
            .map_err(|e| CniError::config("ipam.subnet", e))?;
        if subnet.pod_range().is_none() {
            return Err(CniError::config(
                "ipam.subnet",
                format!(
                    "{subnet} is too small: it needs a gateway and pod addresses (/30 or larger)"
                ),
            ));
        }
        Ok(NetConf {
            cni_version: raw.cni_version,
            name: raw.name,
            state_dir,
            mtu,
            subnet,
            prev_result: raw.prev_result,
        })
    }
}

/// The VERSION reply.
pub fn version_json() -> Value {
    json!({ "cniVersion": LATEST_VERSION, "supportedVersions": SUPPORTED_VERSIONS })
}

/// What ADD set up, for [`add_result`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddOutcome {
    /// Host-side veth name and its MAC (if known).
    pub host_ifname: String,
    pub host_mac: Option<[u8; 6]>,
    /// Pod-side interface (`CNI_IFNAME`), its MAC, and `CNI_NETNS`.
    pub ifname: String,
    pub mac: [u8; 6],
    pub netns: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// The ADD result: the two interfaces (host first, pod second with its
/// `sandbox`), the pod address with its gateway, the default route. For
/// 0.4.0 each IP also has `"version":"4"`.
pub fn add_result(cni_version: &str, o: &AddOutcome) -> Value {
    let mut host = json!({ "name": o.host_ifname });
    if let Some(mac) = &o.host_mac {
        host["mac"] = format_mac(mac).into();
    }
    let mut ip = json!({
        "address": format!("{}/{}", o.ip, o.prefix_len),
        "gateway": o.gateway.to_string(),
        "interface": 1,
    });
    if cni_version.starts_with("0.") {
        ip["version"] = "4".into();
    }
    json!({
        "cniVersion": cni_version,
        "interfaces": [
            host,
            { "name": o.ifname, "mac": format_mac(&o.mac), "sandbox": o.netns },
        ],
        "ips": [ip],
        "routes": [{ "dst": "0.0.0.0/0", "gw": o.gateway.to_string() }],
        "dns": {},
    })
}

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamOwner {
    pub container_id: String,
    pub ifname: String,
}

/// The allocation state of one network (kept as JSON in
/// `stateDir/ipam/<name>.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamState {
    /// The last address handed out; the next search starts after it.
    #[serde(default)]
    pub last: Option<Ipv4Addr>,
    /// Allocated addresses.
    #[serde(default)]
    pub allocations: BTreeMap<Ipv4Addr, IpamOwner>,
}

impl IpamState {
    /// The address held by `container_id`/`ifname`.
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<Ipv4Addr> {
        self.allocations
            .iter()
            .find(|(_, o)| o.container_id == container_id && o.ifname == ifname)
            .map(|(ip, _)| *ip)
    }

    /// Allocates an address of `subnet` to `container_id`/`ifname`, or
    /// returns the one it already holds (then the bool is false). An address
    /// it holds outside `subnet` (the subnet changed) is released first.
    pub fn allocate(
        &mut self,
        subnet: &Subnet,
        container_id: &str,
        ifname: &str,
    ) -> Result<(Ipv4Addr, bool), CniError> {
        if let Some(ip) = self.find(container_id, ifname) {
            if subnet.is_pod_address(ip) {
                return Ok((ip, false));
            }
            self.allocations.remove(&ip);
        }
        let (first, last) = subnet.pod_range().ok_or(CniError::Exhausted {
            subnet: *subnet,
            size: 0,
        })?;
        let (first, last) = (u32::from(first), u32::from(last));
        let size = last - first + 1;
        let start = match self.last.map(u32::from) {
            Some(l) if (first..last).contains(&l) => l + 1,
            _ => first,
        };
        for i in 0..size {
            let offset = (u64::from(start - first) + u64::from(i)) % u64::from(size);
            let ip = Ipv4Addr::from(first + offset as u32);
            if let Entry::Vacant(slot) = self.allocations.entry(ip) {
                slot.insert(IpamOwner {
                    container_id: container_id.to_string(),
                    ifname: ifname.to_string(),
                });
                self.last = Some(ip);
                return Ok((ip, true));
            }
        }
        Err(CniError::Exhausted {
            subnet: *subnet,
            size,
        })
    }

    /// Releases the address of `container_id`/`ifname`, if any.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> Option<Ipv4Addr> {
        let ip = self.find(container_id, ifname)?;
        self.allocations.remove(&ip);
        Some(ip)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"ferrovs","type":"ferrovs-cni",
        "stateDir":"/run/ferrovs","mtu":1450,"ipam":{"subnet":"10.244.1.0/24"}}"#;

    fn with(field: &str, value: Value) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        let mut target = &mut v;
        let mut parts: Vec<&str> = field.split('.').collect();
        let last = parts.pop().unwrap();
        for p in parts {
            target = &mut target[p];
        }
        if value.is_null() {
            target.as_object_mut().unwrap().remove(last);
        } else {
            target[last] = value;
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn err(field: &str, value: Value) -> String {
        NetConf::parse(&with(field, value)).unwrap_err().to_string()
    }

    #[test]
    fn parses_good_config() {
        let c = NetConf::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.name, "ferrovs");
        assert_eq!(c.state_dir, PathBuf::from("/run/ferrovs"));
        assert_eq!(c.mtu, 1450);
        assert_eq!(c.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(c.subnet.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(
            c.subnet.pod_range(),
            Some((Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 254)))
        );
        assert_eq!(c.subnet.pod_count(), 253);
        assert_eq!(c.prev_result, None);
    }

    #[test]
    fn defaults_and_extra_fields() {
        let cfg = br#"{"cniVersion":"0.4.0","name":"k8s-pod-network","type":"ferrovs-cni",
            "ipam":{"type":"ferrovs-cni","subnet":"10.244.0.0/16"},
            "runtimeConfig":{"portMappings":[]},"args":{"x":1},"prevResult":{"ips":[]}}"#;
        let c = NetConf::parse(cfg).unwrap();
        assert_eq!(c.cni_version, "0.4.0");
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.mtu, DEFAULT_MTU);
        assert_eq!(c.subnet.pod_count(), 65533);
        assert_eq!(c.prev_result, Some(json!({"ips": []})));
    }

    #[test]
    fn bad_configs_name_the_field() {
        assert_eq!(
            err("cniVersion", "0.2.0".into()),
            "cniVersion \"0.2.0\" is not supported (supported: 0.4.0, 1.0.0)"
        );
        assert!(err("cniVersion", Value::Null)
            .starts_with("network config: missing field `cniVersion` at line 1"));
        assert!(err("mtu", "1500".into()).starts_with(
            "network config: field mtu: invalid type: string \"1500\", expected u32 at line 1"
        ));
        assert_eq!(
            err("mtu", 40.into()),
            "network config field mtu: 40 is not 68-65535"
        );
        assert_eq!(
            err("type", "bridge".into()),
            "network config field type: \"bridge\" is not \"ferrovs-cni\""
        );
        assert_eq!(
            err("name", "a/b".into()),
            "network config field name: \"a/b\" is not a valid network name (letters, digits, '_', '.', '-')"
        );
        assert_eq!(
            err("stateDir", "run/x".into()),
            "network config field stateDir: \"run/x\" is not an absolute path"
        );
        assert!(err("ipam", Value::Null).starts_with("network config: missing field `ipam`"));
        assert!(err("ipam.subnet", Value::Null)
            .starts_with("network config: field ipam: missing field `subnet`"));
        assert!(err("ipam.rangeStart", "10.244.1.10".into())
            .starts_with("network config: field ipam.rangeStart: unknown field `rangeStart`"));
        assert_eq!(
            err("ipam.subnet", "10.244.1.0".into()),
            "network config field ipam.subnet: \"10.244.1.0\" is not ADDRESS/PREFIX_LENGTH"
        );
        assert_eq!(
            err("ipam.subnet", "10.244.1.1/24".into()),
            "network config field ipam.subnet: \"10.244.1.1/24\" has host bits set (the network address is needed, like 10.244.1.0/24)"
        );
        assert_eq!(
            err("ipam.subnet", "10.244.1/24".into()),
            "network config field ipam.subnet: \"10.244.1\" in \"10.244.1/24\" is not an IPv4 address"
        );
        assert_eq!(
            err("ipam.subnet", "10.244.1.0/33".into()),
            "network config field ipam.subnet: prefix length \"33\" in \"10.244.1.0/33\" is not 0-32"
        );
        assert_eq!(
            err("ipam.subnet", "10.244.1.0/31".into()),
            "network config field ipam.subnet: 10.244.1.0/31 is too small: it needs a gateway and pod addresses (/30 or larger)"
        );
        let e = NetConf::parse(&with("ipam.type", "host-local".into())).unwrap_err();
        assert_eq!(e.code(), code::UNSUPPORTED_FIELD);
        assert!(e
            .to_string()
            .starts_with("network config field ipam.type: \"host-local\""));
        let e = NetConf::parse(b"not json").unwrap_err();
        assert_eq!(e.code(), code::DECODE);
        assert_eq!(
            e.to_string(),
            "network config: expected ident at line 1 column 2"
        );
    }

    #[test]
    fn version_of_bad_config() {
        assert_eq!(
            version_of(b"{\"cniVersion\":\"0.4.0\",\"mtu\":\"x\"}"),
            "0.4.0"
        );
        assert_eq!(version_of(b"{\"cniVersion\":\"9.9.9\"}"), LATEST_VERSION);
        assert_eq!(version_of(b"junk"), LATEST_VERSION);
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn env_parsing() {
        let e = Env::from_vars(vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc123",
            ),
        ]))
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.pod_namespace.as_deref(), Some("default"));
        assert_eq!(e.pod_name.as_deref(), Some("web-1"));

        let v = Env::from_vars(vars(&[("CNI_COMMAND", "VERSION")])).unwrap();
        assert_eq!(v.command, Command::Version);
        let d = Env::from_vars(vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!((d.netns.as_str(), d.pod_name), ("", None));

        let msg = |p: &[(&str, &str)]| Env::from_vars(vars(p)).unwrap_err().to_string();
        assert_eq!(msg(&[]), "environment variable CNI_COMMAND: not set");
        assert_eq!(
            msg(&[("CNI_COMMAND", "add")]),
            "environment variable CNI_COMMAND: unknown command \"add\", expected ADD, DEL, CHECK or VERSION"
        );
        assert_eq!(
            msg(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0")
            ]),
            "environment variable CNI_NETNS: not set"
        );
        assert_eq!(
            msg(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "../x"),
                ("CNI_IFNAME", "eth0")
            ]),
            "environment variable CNI_CONTAINERID: \"../x\" is not a valid container id (letters, digits, '_', '.', '-')"
        );
        assert_eq!(
            msg(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "averyverylongname")
            ]),
            "environment variable CNI_IFNAME: \"averyverylongname\" is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        );
        assert_eq!(
            msg(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "K8S_POD_NAME=x;junk")
            ]),
            "environment variable CNI_ARGS: \"junk\" is not KEY=VALUE"
        );
    }

    #[test]
    fn host_ifname_is_stable_and_short() {
        let n = host_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        assert_eq!(n.len(), 11);
        assert!(n.starts_with("fvs"));
        assert!(n[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            n,
            host_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        // FNV-1a of "" is the offset basis; of "a" a known value.
        assert_eq!(host_ifname(""), "fvs811c9dc5");
        assert_eq!(host_ifname("a"), "fvse40c292c");
        assert_ne!(host_ifname("abc1"), host_ifname("abc2"));
    }

    fn outcome() -> AddOutcome {
        AddOutcome {
            host_ifname: "fvs0011aabb".into(),
            host_mac: Some([0xde, 0xad, 0xbe, 0xef, 0, 1]),
            ifname: "eth0".into(),
            mac: [0x0a, 0x58, 10, 244, 1, 2],
            netns: "/var/run/netns/cni-1".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 244, 1, 1),
        }
    }

    #[test]
    fn result_json_1_0_0() {
        assert_eq!(
            add_result("1.0.0", &outcome()),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "fvs0011aabb", "mac": "de:ad:be:ef:00:01"},
                    {"name": "eth0", "mac": "0a:58:0a:f4:01:02", "sandbox": "/var/run/netns/cni-1"}
                ],
                "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn result_json_0_4_0() {
        let mut o = outcome();
        o.host_mac = None;
        let r = add_result("0.4.0", &o);
        assert_eq!(r["cniVersion"], "0.4.0");
        assert_eq!(r["interfaces"][0], json!({"name": "fvs0011aabb"}));
        assert_eq!(
            r["ips"],
            json!([{"version": "4", "address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 1}])
        );
    }

    #[test]
    fn error_and_version_json() {
        let e = CniError::Command {
            cmd: "ip link add x".into(),
            status: "exit status: 2".into(),
            stderr: "RTNETLINK answers: File exists".into(),
        };
        assert_eq!(
            e.to_json("0.4.0"),
            json!({
                "cniVersion": "0.4.0",
                "code": 5,
                "msg": "`ip link add x` failed (exit status: 2): RTNETLINK answers: File exists",
                "details": "RTNETLINK answers: File exists"
            })
        );
        let e = NetConf::parse(&with("mtu", 1.into())).unwrap_err();
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 7, "msg": "network config field mtu: 1 is not 68-65535", "details": ""})
        );
        assert_eq!(
            version_json(),
            json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]})
        );
    }

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    #[test]
    fn ipam_allocate_release_idempotent_exhausted() {
        let s: Subnet = "10.0.0.0/29".parse().unwrap(); // pods .2 - .6
        assert_eq!(s.pod_count(), 5);
        let mut st = IpamState::default();
        assert_eq!(st.allocate(&s, "a", "eth0").unwrap(), (ip(2), true));
        assert_eq!(st.allocate(&s, "b", "eth0").unwrap(), (ip(3), true));
        // Same container and interface: same address, nothing new.
        assert_eq!(st.allocate(&s, "a", "eth0").unwrap(), (ip(2), false));
        // Another interface of the same container is another allocation.
        assert_eq!(st.allocate(&s, "a", "net1").unwrap(), (ip(4), true));
        assert_eq!(st.release("b", "eth0"), Some(ip(3)));
        assert_eq!(st.release("b", "eth0"), None);
        // Round-robin: .3 is free again but .5 comes first.
        assert_eq!(st.allocate(&s, "c", "eth0").unwrap(), (ip(5), true));
        assert_eq!(st.allocate(&s, "d", "eth0").unwrap(), (ip(6), true));
        assert_eq!(st.allocate(&s, "e", "eth0").unwrap(), (ip(3), true));
        let e = st.allocate(&s, "f", "eth0").unwrap_err();
        assert_eq!(e.code(), code::EXHAUSTED);
        assert_eq!(
            e.to_string(),
            "no free address left in subnet 10.0.0.0/29 (5 pod addresses, all allocated)"
        );
        // The failed attempt changed nothing; a holder still gets its address.
        assert_eq!(st.allocate(&s, "d", "eth0").unwrap(), (ip(6), false));
        st.release("a", "eth0");
        assert_eq!(st.allocate(&s, "f", "eth0").unwrap(), (ip(2), true));
        assert_eq!(st.find("f", "eth0"), Some(ip(2)));
    }

    #[test]
    fn ipam_moves_holder_when_subnet_changes() {
        let old: Subnet = "10.0.0.0/29".parse().unwrap();
        let new: Subnet = "10.0.1.0/24".parse().unwrap();
        let mut st = IpamState::default();
        st.allocate(&old, "a", "eth0").unwrap();
        assert_eq!(
            st.allocate(&new, "a", "eth0").unwrap(),
            (Ipv4Addr::new(10, 0, 1, 2), true)
        );
        assert_eq!(st.allocations.len(), 1);
    }

    #[test]
    fn ipam_state_json_roundtrip() {
        let s: Subnet = "10.0.0.0/24".parse().unwrap();
        let mut st = IpamState::default();
        st.allocate(&s, "a", "eth0").unwrap();
        let text = serde_json::to_string(&st).unwrap();
        assert_eq!(
            text,
            r#"{"last":"10.0.0.2","allocations":{"10.0.0.2":{"container_id":"a","ifname":"eth0"}}}"#
        );
        assert_eq!(serde_json::from_str::<IpamState>(&text).unwrap(), st);
        assert_eq!(
            serde_json::from_str::<IpamState>("{}").unwrap(),
            IpamState::default()
        );
    }

    #[test]
    fn subnet_edges() {
        let s: Subnet = "10.0.0.0/30".parse().unwrap();
        assert_eq!(s.pod_range(), Some((ip(2), ip(2))));
        assert!(s.contains(ip(3)) && !s.contains(ip(4)));
        assert!(s.is_pod_address(ip(2)) && !s.is_pod_address(ip(1)) && !s.is_pod_address(ip(3)));
        let all: Subnet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(255, 1, 2, 3)));
        assert_eq!(all.pod_count(), u32::MAX - 2);
    }
}
