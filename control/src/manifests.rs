//! Loading a [`ClusterSnapshot`] from a directory of Kubernetes manifests:
//! `*.yaml` / `*.yml` (several `---` documents per file allowed) and `*.json`
//! files, in subdirectories too (names starting with `.` are skipped), read
//! in path order. A document may be one object, a `kind: List` (what
//! `kubectl get -o yaml` prints) or a typed list (`PodList`, ... whose items
//! may omit `apiVersion`/`kind`).
//!
//! Objects of kinds the agent does not use are skipped and counted. A bad
//! object (missing `apiVersion`/`kind`/`metadata.name`, a field of the wrong
//! type, an unknown field, an unexpected `apiVersion`) is reported as a
//! [`ManifestError`] and skipped; everything else still loads. When the same
//! object is defined twice, the later definition wins and a
//! [`Severity::Warning`] entry names both files.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::snapshot::{ClusterSnapshot, Kind, Object, ObjectRef};

/// How bad a [`ManifestError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something was not loaded.
    Error,
    /// Everything loaded, but something is suspicious (a duplicate object).
    Warning,
}

/// What is wrong with a manifest.
#[derive(Debug, Error)]
pub enum Problem {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("not an object (a mapping with apiVersion, kind and metadata)")]
    NotAnObject,
    #[error("missing {0}")]
    MissingField(&'static str),
    #[error("{0} is not a string")]
    NotAString(&'static str),
    #[error("items is not a list")]
    ItemsNotAList,
    #[error("apiVersion {found:?} is not supported for {kind}, expected {expected:?}")]
    ApiVersion {
        kind: Kind,
        found: String,
        expected: &'static str,
    },
    #[error("{path}: {message}")]
    Field { path: String, message: String },
    #[error("unknown field {}", .0.join(", "))]
    UnknownFields(Vec<String>),
    #[error("duplicate of the object in {}; this later definition wins", .previous.display())]
    Duplicate { previous: PathBuf },
}

/// A problem in one manifest, with where it is.
///
/// Displays as `pods.yaml: document 3 at line 20 (Pod default/web-1):
/// spec.containers[0].ports[0].containerPort: invalid type: string "http",
/// expected i32`.
#[derive(Debug, Error)]
pub struct ManifestError {
    /// The file, relative to the loaded directory.
    pub file: PathBuf,
    /// 1-based index of the document in the file (documents with content only).
    pub document: Option<usize>,
    /// 0-based index in the `items` of a list document.
    pub item: Option<usize>,
    /// 1-based line: where the YAML document starts, or where a syntax error is.
    pub line: Option<usize>,
    /// The object, when its kind and name are known (`Pod default/web-1`).
    pub object: Option<String>,
    pub severity: Severity,
    #[source]
    pub problem: Problem,
}

impl ManifestError {
    pub fn is_warning(&self) -> bool {
        self.severity == Severity::Warning
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        if let Some(i) = self.item {
            write!(f, " item {i}")?;
        }
        match (self.line, self.document) {
            (Some(l), Some(_)) => write!(f, " at line {l}")?,
            (Some(l), None) => write!(f, ": line {l}")?,
            (None, _) => {}
        }
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// The result of loading manifests.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: ClusterSnapshot,
    /// Errors and warnings, in the order the files were read.
    pub errors: Vec<ManifestError>,
    /// Objects of kinds the agent does not use, counted by `kind`.
    pub skipped: BTreeMap<String, usize>,
}

/// Loads every manifest under `dir` (or the single file `dir`).
pub fn load_dir(dir: impl AsRef<Path>) -> (ClusterSnapshot, Vec<ManifestError>) {
    let loaded = load(dir);
    (loaded.snapshot, loaded.errors)
}

/// Like [`load_dir`], also returning the counts of skipped kinds.
pub fn load(dir: impl AsRef<Path>) -> Loaded {
    let mut loader = Loader::new();
    loader.add_path(dir.as_ref());
    loader.finish()
}

/// Where we are inside a file.
#[derive(Debug, Clone, Default)]
struct Ctx {
    document: Option<usize>,
    item: Option<usize>,
    line: Option<usize>,
}

/// Accumulates objects from several files into one snapshot.
#[derive(Debug, Default)]
pub struct Loader {
    loaded: Loaded,
    /// File each object came from, for duplicate warnings.
    origin: BTreeMap<ObjectRef, PathBuf>,
}

impl Loader {
    pub fn new() -> Loader {
        Loader::default()
    }

    /// Loads a directory tree (manifest files in path order) or one file.
    /// File names in errors are relative to `path` (a single file is named
    /// by its file name).
    pub fn add_path(&mut self, path: &Path) {
        if path.is_file() {
            let name = path.file_name().map_or_else(|| path.into(), PathBuf::from);
            self.add_file(path, &name);
            return;
        }
        let mut files = Vec::new();
        let mut errors = Vec::new();
        collect_files(path, Path::new(""), &mut files, &mut errors);
        for (rel, e) in errors {
            let name = if rel.as_os_str().is_empty() {
                path.into()
            } else {
                rel
            };
            self.error(name, Ctx::default(), None, e.into());
        }
        files.sort();
        for rel in files {
            self.add_file(&path.join(&rel), &rel);
        }
    }

    fn add_file(&mut self, path: &Path, name: &Path) {
        match std::fs::read_to_string(path) {
            Ok(text) => self.add_str(name, &text),
            Err(e) => self.error(name.into(), Ctx::default(), None, e.into()),
        }
    }

    /// Loads the text of one file named `name`: JSON if the name ends in
    /// `.json`, YAML otherwise.
    pub fn add_str(&mut self, name: &Path, text: &str) {
        let is_json = name.extension().is_some_and(|e| e == "json");
        if is_json {
            let ctx = Ctx {
                document: Some(1),
                ..Ctx::default()
            };
            match serde_json::from_str::<Value>(text) {
                Ok(v) => self.add_value(name, ctx, v),
                Err(e) => {
                    let ctx = Ctx {
                        line: Some(e.line()),
                        ..ctx
                    };
                    let msg = strip_location(&e.to_string(), 0);
                    self.error(name.into(), ctx, None, Problem::Json(msg));
                }
            }
            return;
        }
        for (index, doc) in split_yaml(text).into_iter().enumerate() {
            let mut ctx = Ctx {
                document: Some(index + 1),
                item: None,
                line: Some(doc.line),
            };
            match parse_yaml(&doc.text) {
                Ok(v) => self.add_value(name, ctx, v),
                Err(e) => {
                    if let Some(loc) = e.location() {
                        ctx.line = Some(doc.first_line + loc.line() - 1);
                    }
                    let msg = strip_location(&e.to_string(), doc.first_line - 1);
                    self.error(name.into(), ctx, None, Problem::Yaml(msg));
                }
            }
        }
    }

    /// One parsed document: an object, a list of objects, or nothing.
    fn add_value(&mut self, file: &Path, ctx: Ctx, value: Value) {
        let map = match value {
            Value::Null => return,
            Value::Array(items) => {
                return self.add_items(file, &ctx, items, None);
            }
            Value::Object(map) => map,
            _ => return self.error(file.into(), ctx, None, Problem::NotAnObject),
        };
        let kind = match map.get("kind") {
            Some(Value::String(k)) => k.clone(),
            Some(_) => return self.error(file.into(), ctx, None, Problem::NotAString("kind")),
            None => return self.error(file.into(), ctx, None, Problem::MissingField("kind")),
        };
        let is_list = kind == "List" || (kind.ends_with("List") && map.contains_key("items"));
        if !is_list {
            return self.add_object(file, ctx, map);
        }
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        let api_version = map.get("apiVersion").cloned();
        let mut map = map;
        match map.remove("items") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                let defaults = item_kind.map(|k| (k.to_owned(), api_version));
                self.add_items(file, &ctx, items, defaults);
            }
            Some(_) => self.error(file.into(), ctx, None, Problem::ItemsNotAList),
        }
    }

    /// The items of a list; `defaults` are the kind and apiVersion of a typed
    /// list (`PodList`), given to items that lack them.
    fn add_items(
        &mut self,
        file: &Path,
        ctx: &Ctx,
        items: Vec<Value>,
        defaults: Option<(String, Option<Value>)>,
    ) {
        for (i, item) in items.into_iter().enumerate() {
            let ctx = Ctx {
                item: Some(i),
                ..ctx.clone()
            };
            let mut map = match item {
                Value::Object(map) => map,
                _ => {
                    self.error(file.into(), ctx, None, Problem::NotAnObject);
                    continue;
                }
            };
            if let Some((kind, api_version)) = &defaults {
                if !map.contains_key("kind") {
                    map.insert("kind".into(), Value::String(kind.clone()));
                }
                if let (false, Some(v)) = (map.contains_key("apiVersion"), api_version) {
                    map.insert("apiVersion".into(), v.clone());
                }
            }
            self.add_object(file, ctx, map);
        }
    }

    fn add_object(&mut self, file: &Path, ctx: Ctx, map: Map<String, Value>) {
        match parse_object(map) {
            Ok(Parsed::Used(object)) => self.insert(file, ctx, *object),
            Ok(Parsed::Skipped(kind)) => *self.loaded.skipped.entry(kind).or_default() += 1,
            Err((object, problem)) => self.error(file.into(), ctx, object, problem),
        }
    }

    fn insert(&mut self, file: &Path, ctx: Ctx, object: Object) {
        let key = object.object_ref();
        if let Some(previous) = self.origin.insert(key.clone(), file.into()) {
            self.loaded.errors.push(ManifestError {
                file: file.into(),
                document: ctx.document,
                item: ctx.item,
                line: ctx.line,
                object: Some(key.to_string()),
                severity: Severity::Warning,
                problem: Problem::Duplicate { previous },
            });
        }
        self.loaded.snapshot.apply(object);
    }

    fn error(&mut self, file: PathBuf, ctx: Ctx, object: Option<String>, problem: Problem) {
        self.loaded.errors.push(ManifestError {
            file,
            document: ctx.document,
            item: ctx.item,
            line: ctx.line,
            object,
            severity: Severity::Error,
            problem,
        });
    }

    /// Errors and warnings so far.
    pub fn errors(&self) -> &[ManifestError] {
        &self.loaded.errors
    }

    pub fn finish(self) -> Loaded {
        self.loaded
    }
}

/// Loads objects given as JSON values (each a manifest, a `List`, ...), as
/// if they were one JSON file named `name`: for tests and generated state.
pub fn load_values(name: &str, values: &[Value]) -> Loaded {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": values});
    let mut l = Loader::new();
    l.add_str(Path::new(name), &list.to_string());
    l.finish()
}

/// Relative paths of the manifest files under `dir.join(rel)`, and the
/// entries that could not be read. Entries whose name starts with `.` are
/// skipped (hidden files, and the `..data` links of a mounted ConfigMap,
/// which would otherwise load every file twice); symlinks to files are
/// followed, symlinks to directories are not.
fn collect_files(
    dir: &Path,
    rel: &Path,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<(PathBuf, std::io::Error)>,
) {
    let entries = match std::fs::read_dir(dir.join(rel)) {
        Ok(entries) => entries,
        Err(e) => return errors.push((rel.into(), e)),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                errors.push((rel.into(), e));
                continue;
            }
        };
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let rel = rel.join(&name);
        let is_manifest = rel
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        match (entry.file_type(), std::fs::metadata(entry.path())) {
            (Ok(t), Ok(m)) if m.is_dir() => {
                if !t.is_symlink() {
                    collect_files(dir, &rel, files, errors);
                }
            }
            (_, Ok(_)) if is_manifest => files.push(rel),
            (_, Ok(_)) => {}
            (Err(e), _) | (_, Err(e)) if is_manifest => errors.push((rel, e)),
            (Err(_), _) | (_, Err(_)) => {}
        }
    }
}

/// One YAML document of a multi-document file.
#[derive(Debug)]
struct Doc {
    /// The document's text, from its separator line on (so that parser line
    /// numbers map back to the file).
    text: String,
    /// 1-based file line of `text`'s first line.
    first_line: usize,
    /// 1-based file line of the document's first content line.
    line: usize,
}

/// Splits at `---` (and `...`) lines; documents holding only blank and
/// comment lines are dropped.
fn split_yaml(text: &str) -> Vec<Doc> {
    fn is_marker(line: &str, marker: &str) -> bool {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
    }
    fn push(docs: &mut Vec<Doc>, text: &mut String, first_line: usize, content: Option<usize>) {
        if let Some(line) = content {
            docs.push(Doc {
                text: std::mem::take(text),
                first_line,
                line,
            });
        }
        text.clear();
    }
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut first_line = 1;
    let mut content = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if is_marker(line, "---") || is_marker(line, "...") {
            push(&mut docs, &mut cur, first_line, content.take());
            first_line = n;
            // Keep the line (as a bare marker) so the parser's line numbers stay aligned.
            if is_marker(line, "---") {
                let rest = line[3..].trim();
                if !rest.is_empty() && !rest.starts_with('#') {
                    content = Some(n);
                }
                cur.push_str(line);
            }
            cur.push('\n');
            continue;
        }
        let t = line.trim();
        if content.is_none() && !t.is_empty() && !t.starts_with('#') && !t.starts_with('%') {
            content = Some(n);
        }
        cur.push_str(line);
        cur.push('\n');
    }
    push(&mut docs, &mut cur, first_line, content);
    docs
}

/// One YAML document as JSON, with `<<` merge keys applied.
fn parse_yaml(text: &str) -> Result<Value, serde_yaml_ng::Error> {
    let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
    yaml.apply_merge()?;
    serde_json::to_value(yaml).map_err(serde::de::Error::custom)
}

/// Makes a parser message's locations file-relative: drops a trailing
/// ` at line L column C` (we report the line ourselves) and adds `offset` to
/// any other `line N` in it.
fn strip_location(msg: &str, offset: usize) -> String {
    let mut msg = msg;
    if let Some(i) = msg.rfind(" at line ") {
        let tail = &msg[i + " at line ".len()..];
        let is_location = tail
            .split_once(" column ")
            .is_some_and(|(l, c)| is_number(l) && is_number(c));
        if is_location {
            msg = &msg[..i];
        }
    }
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("line ") {
        let (head, tail) = rest.split_at(i + "line ".len());
        out.push_str(head);
        let digits = tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match tail[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&tail[..digits]),
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

enum Parsed {
    Used(Box<Object>),
    Skipped(String),
}

type ObjectProblem = (Option<String>, Problem);

fn get_str<'a>(map: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, Problem> {
    match map.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Null) | None => Err(Problem::MissingField(field)),
        Some(_) => Err(Problem::NotAString(field)),
    }
}

/// Checks and converts one object's JSON into a typed [`Object`].
fn parse_object(map: Map<String, Value>) -> Result<Parsed, ObjectProblem> {
    let kind_name = get_str(&map, "kind").map_err(|p| (None, p))?.to_owned();
    let meta = map.get("metadata").and_then(Value::as_object);
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    let kind = Kind::from_name(&kind_name);
    let label = match (kind, name) {
        (Some(k), Some(n)) => {
            Some(ObjectRef::new(k, namespace.unwrap_or("default"), n).to_string())
        }
        (None, Some(n)) => Some(match namespace {
            Some(ns) => format!("{kind_name} {ns}/{n}"),
            None => format!("{kind_name} {n}"),
        }),
        (_, None) => None,
    };
    let api_version = get_str(&map, "apiVersion").map_err(|p| (label.clone(), p))?;
    if name.is_none() {
        let problem = match meta.and_then(|m| m.get("name")) {
            Some(v) if !v.is_null() => Problem::NotAString("metadata.name"),
            _ => Problem::MissingField("metadata.name"),
        };
        return Err((Some(kind_name), problem));
    }
    let Some(kind) = kind else {
        return Ok(Parsed::Skipped(kind_name));
    };
    if api_version != kind.api_version() {
        let problem = Problem::ApiVersion {
            kind,
            found: api_version.to_owned(),
            expected: kind.api_version(),
        };
        return Err((label, problem));
    }
    let value = Value::Object(map);
    let object = match kind {
        Kind::Node => typed(&value).map(Object::Node),
        Kind::Namespace => typed(&value).map(Object::Namespace),
        Kind::Pod => typed(&value).map(Object::Pod),
        Kind::Service => typed(&value).map(Object::Service),
        Kind::EndpointSlice => typed(&value).map(Object::EndpointSlice),
        Kind::NetworkPolicy => typed(&value).map(Object::NetworkPolicy),
    };
    object
        .map(|o| Parsed::Used(Box::new(o)))
        .map_err(|p| (label, p))
}

/// Deserializes `value` as `T`, naming the path of a bad field, and rejects
/// fields `T` does not know (k8s-openapi ignores them; `kubectl` rejects them).
fn typed<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, Problem> {
    let object: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        Problem::Field {
            path: if path == "." { "object".into() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    let back = serde_json::to_value(&object).map_err(|e| Problem::Field {
        path: "object".into(),
        message: e.to_string(),
    })?;
    let mut unknown = Vec::new();
    unknown_fields(value, &back, &mut String::new(), &mut unknown);
    if unknown.is_empty() {
        Ok(object)
    } else {
        Err(Problem::UnknownFields(unknown))
    }
}

/// Paths of the non-null fields of `input` that `output` (the object
/// serialized back) lacks.
fn unknown_fields(input: &Value, output: &Value, path: &mut String, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match b.get(k) {
                    Some(w) => unknown_fields(v, w, path, out),
                    None => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                unknown_fields(v, w, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load_str(name: &str, text: &str) -> Loaded {
        let mut l = Loader::new();
        l.add_str(Path::new(name), text);
        l.finish()
    }

    fn messages(l: &Loaded) -> Vec<String> {
        l.errors.iter().map(|e| e.to_string()).collect()
    }

    const PODS: &str = "\
# leading comment
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default, labels: {app: web}}
spec:
  containers:
  - name: c
    image: nginx
    ports: [{containerPort: 80, name: http}]
status: {podIP: 10.1.0.5}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
# comment only
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: default
spec:
  containers:
  - name: c
    ports:
    - containerPort: http
";

    #[test]
    fn multi_document_yaml_with_bad_field() {
        let l = load_str("pods.yaml", PODS);
        assert_eq!(l.snapshot.count(Kind::Pod), 1);
        let p = l.snapshot.pod("default", "web-0").unwrap();
        assert_eq!(
            p.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.1.0.5")
        );
        assert_eq!(l.skipped.get("Deployment"), Some(&1));
        assert_eq!(
            messages(&l),
            ["pods.yaml: document 3 at line 19 (Pod default/web-1): \
              spec.containers[0].ports[0].containerPort: invalid type: string \"http\", expected i32"]
        );
    }

    #[test]
    fn unknown_fields_are_errors() {
        let l = load_str(
            "x.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labelz: {x: y}, creationTimestamp: null}\nspec: {finalizers: [kubernetes], foo: 1}\n",
        );
        assert!(l.snapshot.is_empty());
        assert_eq!(
            messages(&l),
            ["x.yaml: document 1 at line 1 (Namespace a): unknown field metadata.labelz, spec.foo"]
        );
    }

    #[test]
    fn missing_identity_fields() {
        let l = load_str(
            "m.yaml",
            "kind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nmetadata: {name: b}\n---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: []}\n",
        );
        assert_eq!(
            messages(&l),
            [
                "m.yaml: document 1 at line 1 (Pod default/a): missing apiVersion",
                "m.yaml: document 2 at line 4: missing kind",
                "m.yaml: document 3 at line 7 (Pod): missing metadata.name",
            ]
        );
        // Namespace defaults to `default`.
        assert!(l.snapshot.pod("default", "ok").is_some());
    }

    #[test]
    fn wrong_api_version() {
        let l = load_str(
            "e.yaml",
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s, namespace: n}\naddressType: IPv4\nendpoints: []\n",
        );
        assert_eq!(
            messages(&l),
            ["e.yaml: document 1 at line 1 (EndpointSlice n/s): apiVersion \"discovery.k8s.io/v1beta1\" \
              is not supported for EndpointSlice, expected \"discovery.k8s.io/v1\""]
        );
    }

    #[test]
    fn yaml_syntax_error_has_file_line() {
        let l = load_str(
            "s.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: [b}\n",
        );
        assert_eq!(l.snapshot.count(Kind::Namespace), 1);
        assert_eq!(l.errors.len(), 1);
        let e = &l.errors[0];
        assert_eq!((e.document, e.line), (Some(2), Some(7)), "{e}");
        assert!(
            e.to_string()
                .starts_with("s.yaml: document 2 at line 7: invalid YAML: "),
            "{e}"
        );
    }

    #[test]
    fn json_object_and_typed_list() {
        let json = r#"{"apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [
              {"metadata": {"name": "a", "namespace": "n"}, "spec": {"containers": []}},
              {"metadata": {"name": "b", "namespace": "n"}, "spec": {"containers": 5}}
            ]}"#;
        let l = load_str("pods.json", json);
        assert!(l.snapshot.pod("n", "a").is_some());
        assert_eq!(
            messages(&l),
            ["pods.json: document 1 item 1 (Pod n/b): spec.containers: invalid type: integer `5`, expected a sequence"]
        );
        let l = load_str("bad.json", "{\"kind\": \n");
        assert_eq!(l.errors.len(), 1);
        assert!(
            l.errors[0]
                .to_string()
                .starts_with("bad.json: document 1 at line 2: invalid JSON: "),
            "{}",
            l.errors[0]
        );
    }

    #[test]
    fn kind_list_with_mixed_items() {
        let text = "\
apiVersion: v1
kind: List
metadata:
  resourceVersion: \"\"
items:
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  spec: {podCIDR: 10.1.0.0/24}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: c, namespace: x}
- apiVersion: v1
  kind: Service
  metadata: {name: s, namespace: x}
  spec: {ports: [{port: 80, targetPort: http}]}
";
        let l = load_str("all.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", messages(&l));
        assert!(l.snapshot.node("n1").is_some());
        assert!(l.snapshot.service("x", "s").is_some());
        assert_eq!(l.skipped.get("ConfigMap"), Some(&1));
    }

    #[test]
    fn duplicates_later_wins_with_warning() {
        let mut l = Loader::new();
        let ns = |v: &str| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: a, labels: {{v: \"{v}\"}}}}\n"
            )
        };
        l.add_str(Path::new("a.yaml"), &ns("1"));
        l.add_str(Path::new("b.yaml"), &ns("2"));
        let l = l.finish();
        assert_eq!(l.errors.len(), 1);
        assert!(l.errors[0].is_warning());
        assert_eq!(
            l.errors[0].to_string(),
            "b.yaml: document 1 at line 1 (Namespace a): duplicate of the object in a.yaml; this later definition wins"
        );
        let labels = l.snapshot.namespace("a").unwrap().metadata.labels.clone();
        assert_eq!(labels.unwrap()["v"], "2");
    }

    #[test]
    fn yaml_anchors_and_merge_keys() {
        let text = "\
apiVersion: v1
kind: Pod
metadata:
  name: p
  labels: &l {app: web}
  annotations:
    <<: *l
    extra: \"1\"
spec:
  containers: []
";
        let l = load_str("m.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", messages(&l));
        let meta = &l.snapshot.pod("default", "p").unwrap().metadata;
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations["app"], "web");
        assert_eq!(annotations.len(), 2);
    }

    #[test]
    fn parser_locations_become_file_lines() {
        assert_eq!(
            strip_location(
                "bad at line 6 column 1, while parsing at line 5 column 10",
                4
            ),
            "bad at line 10 column 1, while parsing"
        );
        assert_eq!(strip_location("EOF at line 2 column 0", 0), "EOF");
        assert_eq!(strip_location("no location", 3), "no location");
    }

    #[test]
    fn split_keeps_line_numbers() {
        let docs = split_yaml("a: 1\n---\n\n# c\nb: 2\n...\n---   # x\n--- \nc: 3\n");
        let lines: Vec<_> = docs.iter().map(|d| (d.first_line, d.line)).collect();
        assert_eq!(lines, [(1, 1), (2, 5), (8, 9)]);
    }
}
