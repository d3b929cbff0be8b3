//! Attachment records: how `ferrovs-cni` tells `ferrovs-agent` that a pod's
//! veth exists.
//!
//! The CNI plugin never talks to `ferrovsd`. After it has created and
//! addressed a pod's veth pair it writes one JSON file per pod,
//! `<namespace>_<pod>.json`, into the state directory (`stateDir` of the CNI
//! network config, `/run/ferrovs` by default). The agent reads them all with
//! [`read_all`] and adds each [`Attachment::host_ifname`] as a switch port.
//! Kubernetes names never contain `_`, so the file name is unambiguous.
//!
//! Files are written atomically (a temporary `.<name>.tmp.<pid>` file in the
//! same directory, then `rename`), so a reader sees either the old or the new
//! record, never half of one. [`read_all`] only reads `*.json` regular files
//! whose name does not start with `.`; subdirectories (the plugin keeps its
//! address allocations in `ipam/`) are skipped.
//!
//! A pod's MAC address is derived from its IP ([`pod_mac`]:
//! `0a:58:a:b:c:d` for `a.b.c.d`, as OVN-Kubernetes does), so every component
//! can compute it without reading the record.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// One pod's attachment to the switch, as written by `ferrovs-cni`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The CNI container id (the pod sandbox id).
    pub container_id: String,
    /// The host end of the pod's veth pair (`fvs` + 8 hex digits): the
    /// interface the agent adds as a switch port.
    pub host_ifname: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The prefix length of the node's pod subnet.
    pub prefix_len: u8,
    /// The pod interface's MAC, [`pod_mac`] of `ip`; written as
    /// `"0a:58:0a:f4:01:05"`.
    #[serde(serialize_with = "ser_mac", deserialize_with = "de_mac")]
    pub mac: [u8; 6],
    /// The pod's default gateway: the first address of the pod subnet.
    pub gateway: Ipv4Addr,
    /// The pod's network namespace (the CNI_NETNS path).
    pub netns: String,
}

impl Attachment {
    /// The record's file name, `<namespace>_<pod>.json`.
    pub fn file_name(&self) -> String {
        file_name(&self.namespace, &self.pod)
    }
}

/// The MAC address of the pod with address `ip`: `0a:58` followed by the four
/// address bytes (locally administered, unicast).
pub fn pod_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x0a, 0x58, a, b, c, d]
}

/// Formats a MAC as `0a:58:0a:f4:01:05`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    MacDisplay(mac).to_string()
}

/// Parses `0a:58:0a:f4:01:05` (case-insensitive).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

struct MacDisplay<'a>(&'a [u8; 6]);

impl fmt::Display for MacDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

fn ser_mac<S: Serializer>(mac: &[u8; 6], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&MacDisplay(mac))
}

fn de_mac<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 6], D::Error> {
    let s = String::deserialize(d)?;
    parse_mac(&s).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid MAC address {s:?}, expected six hex bytes like 0a:58:0a:f4:01:05"
        ))
    })
}

/// Why an attachment record could not be written, removed or read.
#[derive(Debug, Error)]
pub enum AttachError {
    /// A file or directory operation failed.
    #[error("{}: cannot {op}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A record is not valid JSON or lacks/mistypes a field.
    #[error("{}: invalid attachment record: {source}", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A record's namespace/pod do not match its file name.
    #[error("{}: record is for {namespace}/{pod}, but the file name should then be {expected}", .path.display())]
    NameMismatch {
        path: PathBuf,
        namespace: String,
        pod: String,
        expected: String,
    },
    /// A namespace or pod name that cannot be part of a record's file name.
    #[error("invalid {what} {value:?}: must be 1-253 characters of a-z, 0-9, '-' and '.'")]
    InvalidName { what: &'static str, value: String },
}

/// The file name of the record of `namespace`/`pod`.
pub fn file_name(namespace: &str, pod: &str) -> String {
    format!("{namespace}_{pod}.json")
}

/// Checks that `value` is a Kubernetes object name (lowercase DNS subdomain
/// characters), so that it is safe in a file name and `_` separates the
/// namespace from the pod.
pub fn check_name(what: &'static str, value: &str) -> Result<(), AttachError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(AttachError::InvalidName {
            what,
            value: value.to_string(),
        })
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> AttachError + 'a {
    move |source| AttachError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Writes `att` to `dir/<namespace>_<pod>.json` atomically (temporary file,
/// fsync, rename), replacing an older record of the same pod. Creates `dir`
/// when missing.
pub fn write(dir: &Path, att: &Attachment) -> Result<PathBuf, AttachError> {
    check_name("namespace", &att.namespace)?;
    check_name("pod name", &att.pod)?;
    fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
    let name = att.file_name();
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut json = serde_json::to_vec_pretty(att).map_err(|source| AttachError::Parse {
        path: path.clone(),
        source,
    })?;
    json.push(b'\n');
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp, "create"))?;
        f.write_all(&json).map_err(io_err(&tmp, "write"))?;
        f.sync_all().map_err(io_err(&tmp, "sync"))?;
        fs::rename(&tmp, &path).map_err(io_err(&path, "rename temporary file to"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

/// Reads the record of `namespace`/`pod`; `Ok(None)` when there is none.
pub fn read(dir: &Path, namespace: &str, pod: &str) -> Result<Option<Attachment>, AttachError> {
    check_name("namespace", namespace)?;
    check_name("pod name", pod)?;
    let path = dir.join(file_name(namespace, pod));
    match fs::read(&path) {
        Ok(bytes) => parse(&path, &bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path, "read")(e)),
    }
}

/// Removes the record of `namespace`/`pod`. Returns whether there was one; a
/// missing record (or directory) is not an error.
pub fn remove(dir: &Path, namespace: &str, pod: &str) -> Result<bool, AttachError> {
    check_name("namespace", namespace)?;
    check_name("pod name", pod)?;
    let path = dir.join(file_name(namespace, pod));
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(&path, "remove")(e)),
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Attachment, AttachError> {
    let att: Attachment = serde_json::from_slice(bytes).map_err(|source| AttachError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let expected = att.file_name();
    if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        return Err(AttachError::NameMismatch {
            path: path.to_path_buf(),
            namespace: att.namespace,
            pod: att.pod,
            expected,
        });
    }
    Ok(att)
}

/// Reads every record in `dir`, in file-name order. A file that cannot be
/// read or parsed is reported in the second list (by path) and skipped. A
/// missing `dir` means no records.
pub fn read_all(dir: &Path) -> (Vec<Attachment>, Vec<AttachError>) {
    let mut atts = Vec::new();
    let mut errs = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (atts, errs),
        Err(e) => {
            errs.push(io_err(dir, "read directory")(e));
            return (atts, errs);
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                errs.push(io_err(dir, "read directory")(e));
                continue;
            }
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_file() => paths.push(path),
            Ok(_) => {}
            Err(e) => errs.push(io_err(&path, "stat")(e)),
        }
    }
    paths.sort();
    for path in paths {
        match fs::read(&path) {
            Ok(bytes) => match parse(&path, &bytes) {
                Ok(a) => atts.push(a),
                Err(e) => errs.push(e),
            },
            // Removed between listing and reading: the pod is gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errs.push(io_err(&path, "read")(e)),
        }
    }
    (atts, errs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(ns: &str, pod: &str, ip: [u8; 4]) -> Attachment {
        let ip = Ipv4Addr::from(ip);
        Attachment {
            namespace: ns.into(),
            pod: pod.into(),
            container_id: "c0ffee".into(),
            host_ifname: "fvs0123abcd".into(),
            ip,
            prefix_len: 24,
            mac: pod_mac(ip),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            netns: "/var/run/netns/cni-1".into(),
        }
    }

    #[test]
    fn pod_mac_is_0a58_plus_ip() {
        assert_eq!(
            pod_mac(Ipv4Addr::new(10, 244, 1, 5)),
            [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]
        );
        assert_eq!(
            format_mac(&pod_mac(Ipv4Addr::new(10, 244, 1, 5))),
            "0a:58:0a:f4:01:05"
        );
        assert_eq!(
            parse_mac("0A:58:0a:f4:01:05"),
            Some([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05])
        );
        assert_eq!(parse_mac("0a:58:0a:f4:01"), None);
        assert_eq!(parse_mac("0a:58:0a:f4:01:05:00"), None);
        assert_eq!(parse_mac("0a:58:0a:f4:01:5"), None);
    }

    #[test]
    fn json_has_mac_as_string() {
        let a = sample("default", "web-1", [10, 244, 1, 5]);
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["mac"], "0a:58:0a:f4:01:05");
        assert_eq!(v["ip"], "10.244.1.5");
        assert_eq!(v["host_ifname"], "fvs0123abcd");
        let back: Attachment = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn write_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("state");
        let a = sample("default", "web-1", [10, 244, 1, 5]);
        let path = write(&d, &a).unwrap();
        assert_eq!(path, d.join("default_web-1.json"));
        assert_eq!(read(&d, "default", "web-1").unwrap(), Some(a.clone()));
        // Overwrite: the newer record wins, no temporary file is left.
        let mut b = a.clone();
        b.container_id = "beef".into();
        write(&d, &b).unwrap();
        assert_eq!(read(&d, "default", "web-1").unwrap(), Some(b));
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["default_web-1.json"]);
        assert!(remove(&d, "default", "web-1").unwrap());
        assert!(!remove(&d, "default", "web-1").unwrap());
        assert_eq!(read(&d, "default", "web-1").unwrap(), None);
        // A missing directory is fine too.
        assert!(!remove(&dir.path().join("nope"), "default", "web-1").unwrap());
    }

    #[test]
    fn rejects_unsafe_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = sample("../etc", "x", [10, 0, 0, 2]);
        let e = write(dir.path(), &a).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid namespace \"../etc\": must be 1-253 characters of a-z, 0-9, '-' and '.'"
        );
        assert!(remove(dir.path(), "a_b", "c").is_err());
        assert!(read(dir.path(), "ns", "").is_err());
    }

    #[test]
    fn read_all_reports_bad_files_and_keeps_going() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, &sample("kube-system", "dns", [10, 244, 1, 3])).unwrap();
        write(d, &sample("default", "web-1", [10, 244, 1, 5])).unwrap();
        fs::write(d.join("bad_json.json"), b"{\"namespace\": ").unwrap();
        let mut wrong_mac = serde_json::to_value(sample("x", "y", [10, 244, 1, 9])).unwrap();
        wrong_mac["mac"] = "zz".into();
        fs::write(d.join("x_y.json"), wrong_mac.to_string()).unwrap();
        fs::write(
            d.join("other_name.json"),
            serde_json::to_vec(&sample("default", "web-2", [10, 244, 1, 6])).unwrap(),
        )
        .unwrap();
        // Ignored: temporary files, other extensions, directories.
        fs::write(d.join(".default_web-3.json.tmp.1"), b"{").unwrap();
        fs::write(d.join("notes.txt"), b"hello").unwrap();
        fs::create_dir(d.join("ipam")).unwrap();
        fs::create_dir(d.join("dir.json")).unwrap();

        let (atts, errs) = read_all(d);
        let pods: Vec<_> = atts.iter().map(|a| a.pod.as_str()).collect();
        assert_eq!(pods, ["web-1", "dns"]);
        let msgs: Vec<_> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        let p = |n: &str| d.join(n).display().to_string();
        assert!(
            msgs[0].starts_with(&format!(
                "{}: invalid attachment record: EOF while parsing",
                p("bad_json.json")
            )),
            "{}",
            msgs[0]
        );
        assert_eq!(
            msgs[1],
            format!(
                "{}: record is for default/web-2, but the file name should then be default_web-2.json",
                p("other_name.json")
            )
        );
        assert!(
            msgs[2].starts_with(&format!(
                "{}: invalid attachment record: invalid MAC address \"zz\"",
                p("x_y.json")
            )),
            "{}",
            msgs[2]
        );
    }

    #[test]
    fn read_all_of_missing_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (atts, errs) = read_all(&dir.path().join("missing"));
        assert!(atts.is_empty() && errs.is_empty());
    }
}
