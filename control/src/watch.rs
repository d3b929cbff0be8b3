//! Cluster state from a live Kubernetes API server.
//!
//! [`watch_cluster`] runs one `kube` watcher per [`Kind`] (cluster-wide: all
//! namespaces) and turns what they see into [`WatchEvent`]s on a channel:
//! - a list (the first one, and every re-list after the API server lost our
//!   place in its history, e.g. `410 Gone`) becomes one [`WatchEvent::Resync`]
//!   holding every object of that kind, sent only once the list is complete;
//! - each watch `ADDED`/`MODIFIED` becomes [`WatchEvent::Apply`], each
//!   `DELETED` a [`WatchEvent::Delete`].
//!
//! Errors (API server unreachable, HTTP 5xx, RBAC, a broken watch) are logged
//! with `tracing` naming the kind and retried with exponential back-off
//! (kube's default: 0.8 s doubling up to 30 s, with jitter). They never
//! produce an event: while the API server is away the agent keeps the state it
//! has, and a half-finished list is dropped rather than sent as a `Resync`.
//!
//! The agent's ServiceAccount needs `list` and `watch` on nodes, namespaces,
//! pods, services, `discovery.k8s.io` endpointslices and `networking.k8s.io`
//! networkpolicies, cluster-wide.
//!
//! [`apply_event`] is the pure half: it folds an event into a
//! [`ClusterSnapshot`] and says which objects changed, so the flow compiler can
//! recompile only what it must. [`client_from_env`] builds the client from a
//! kubeconfig (`KUBECONFIG` or `~/.kube/config`) or the in-cluster service
//! account.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use futures::future::{join_all, BoxFuture};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::Sender;

use crate::snapshot::{ClusterSnapshot, Kind, Object, ObjectRef};

/// What the agent learns from the API server, one kind at a time.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum WatchEvent {
    /// An object was added or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(ObjectRef),
    /// The complete current list of one kind (after the first list or a
    /// re-list): objects of `kind` not in `objects` no longer exist.
    Resync { kind: Kind, objects: Vec<Object> },
}

impl WatchEvent {
    /// The kind of object the event is about.
    pub fn kind(&self) -> Kind {
        match self {
            WatchEvent::Apply(o) => o.kind(),
            WatchEvent::Delete(r) => r.kind,
            WatchEvent::Resync { kind, .. } => *kind,
        }
    }
}

/// Folds `ev` into `snapshot`; returns the identities of the objects that
/// were added, changed or removed (sorted, no duplicates; empty if nothing
/// changed). A `Resync` removes every object of its kind that is not in its
/// list and applies the others; objects of other kinds are untouched.
pub fn apply_event(snapshot: &mut ClusterSnapshot, ev: WatchEvent) -> Vec<ObjectRef> {
    match ev {
        WatchEvent::Apply(object) => {
            let r = object.object_ref();
            if snapshot.apply(object) {
                vec![r]
            } else {
                Vec::new()
            }
        }
        WatchEvent::Delete(r) => {
            if snapshot.remove(&r) {
                vec![r]
            } else {
                Vec::new()
            }
        }
        WatchEvent::Resync { kind, objects } => {
            let listed: BTreeSet<ObjectRef> = objects
                .iter()
                .filter(|o| o.kind() == kind)
                .map(Object::object_ref)
                .collect();
            let gone: Vec<ObjectRef> = snapshot
                .refs()
                .filter(|r| r.kind == kind && !listed.contains(*r))
                .cloned()
                .collect();
            let mut changed = BTreeSet::new();
            for r in gone {
                if snapshot.remove(&r) {
                    changed.insert(r);
                }
            }
            for object in objects {
                // A list of one kind holds only that kind; ignore strays so a
                // Resync can never touch another kind's objects.
                if object.kind() != kind {
                    continue;
                }
                let r = object.object_ref();
                if snapshot.apply(object) {
                    changed.insert(r);
                }
            }
            changed.into_iter().collect()
        }
    }
}

/// Failure to set up a Kubernetes client.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Neither a kubeconfig nor an in-cluster service account was usable.
    #[error("no Kubernetes configuration found (tried KUBECONFIG or ~/.kube/config, then the in-cluster service account): {0}")]
    Infer(#[source] InferConfigError),
    /// The given kubeconfig file could not be read or used.
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    /// The configuration was found but no client could be built from it
    /// (bad TLS material, bad proxy settings, ...).
    #[error("cannot create a Kubernetes client for API server {cluster_url}: {source}")]
    Client {
        cluster_url: String,
        #[source]
        source: kube::Error,
    },
}

fn client_from_config(config: kube::Config) -> Result<Client, WatchError> {
    let cluster_url = config.cluster_url.to_string();
    Client::try_from(config).map_err(|source| WatchError::Client {
        cluster_url,
        source,
    })
}

/// A client configured the way `kubectl` finds its cluster: the kubeconfig
/// named by `KUBECONFIG` (or `~/.kube/config`) and its current context, or,
/// failing that, the in-cluster service account
/// (`KUBERNETES_SERVICE_HOST` and `/var/run/secrets/kubernetes.io/serviceaccount`).
pub async fn client_from_env() -> Result<Client, WatchError> {
    let config = kube::Config::infer().await.map_err(WatchError::Infer)?;
    client_from_config(config)
}

/// A client from the kubeconfig file at `path`, using `context` or the
/// file's current context.
pub async fn client_from_kubeconfig(
    path: &Path,
    context: Option<&str>,
) -> Result<Client, WatchError> {
    let kubeconfig_err = |source| WatchError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_err)?;
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(kubeconfig_err)?;
    client_from_config(config)
}

/// Watches all six kinds the agent uses, cluster-wide, sending what changes
/// to `tx`. Runs until `tx`'s receiver is dropped; API errors are logged and
/// retried, never returned.
pub async fn watch_cluster(client: Client, tx: Sender<WatchEvent>) {
    watch_kinds(client, &Kind::ALL, tx).await;
}

/// [`watch_cluster`] for a chosen set of kinds.
pub async fn watch_kinds(client: Client, kinds: &[Kind], tx: Sender<WatchEvent>) {
    let kinds: BTreeSet<Kind> = kinds.iter().copied().collect();
    let watches: Vec<BoxFuture<'static, ()>> = kinds
        .into_iter()
        .map(|kind| {
            let (c, t) = (client.clone(), tx.clone());
            match kind {
                Kind::Node => watch_kind::<Node>(c, kind, Object::Node, t).boxed(),
                Kind::Namespace => watch_kind::<Namespace>(c, kind, Object::Namespace, t).boxed(),
                Kind::Pod => watch_kind::<Pod>(c, kind, Object::Pod, t).boxed(),
                Kind::Service => watch_kind::<Service>(c, kind, Object::Service, t).boxed(),
                Kind::EndpointSlice => {
                    watch_kind::<EndpointSlice>(c, kind, Object::EndpointSlice, t).boxed()
                }
                Kind::NetworkPolicy => {
                    watch_kind::<NetworkPolicy>(c, kind, Object::NetworkPolicy, t).boxed()
                }
            }
        })
        .collect();
    drop(tx);
    join_all(watches).await;
}

/// Where one kind's watcher is: buffering a list, or following the watch.
#[derive(Debug)]
enum Phase {
    Listing(Vec<Object>),
    Watching,
}

/// One kind's watch loop; returns when the receiver of `tx` is gone.
async fn watch_kind<K>(client: Client, kind: Kind, wrap: fn(K) -> Object, tx: Sender<WatchEvent>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let api: Api<K> = Api::all(client);
    let stream = watcher(api, watcher::Config::default())
        // managedFields are large and change on every write; the agent never
        // reads them.
        .map(|r| r.map(|ev| ev.modify(|o| o.meta_mut().managed_fields = None)))
        .default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut phase = Phase::Watching;
    loop {
        let item = tokio::select! {
            _ = tx.closed() => return,
            item = stream.next() => item,
        };
        let out = match item {
            // The watcher retries forever; it does not end on its own.
            None => return,
            Some(Err(err)) => {
                log_error(kind, &err);
                None
            }
            Some(Ok(watcher::Event::Init)) => {
                phase = Phase::Listing(Vec::new());
                None
            }
            Some(Ok(watcher::Event::InitApply(o))) => match &mut phase {
                Phase::Listing(objects) => {
                    objects.push(wrap(o));
                    None
                }
                // Not expected without an Init first; an upsert is still right.
                Phase::Watching => Some(WatchEvent::Apply(wrap(o))),
            },
            Some(Ok(watcher::Event::InitDone)) => {
                match std::mem::replace(&mut phase, Phase::Watching) {
                    Phase::Listing(objects) => {
                        tracing::debug!(%kind, count = objects.len(), "listed");
                        Some(WatchEvent::Resync { kind, objects })
                    }
                    Phase::Watching => None,
                }
            }
            Some(Ok(watcher::Event::Apply(o))) => Some(WatchEvent::Apply(wrap(o))),
            Some(Ok(watcher::Event::Delete(o))) => Some(WatchEvent::Delete(wrap(o).object_ref())),
        };
        if let Some(ev) = out {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

fn log_error(kind: Kind, err: &watcher::Error) {
    let forbidden = match err {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => {
            matches!(e, kube::Error::Api(status) if status.is_forbidden())
        }
        watcher::Error::WatchError(status) => status.is_forbidden(),
        watcher::Error::NoResourceVersion => false,
    };
    match err {
        // The API server compacted past our resourceVersion: routine, a
        // re-list follows.
        watcher::Error::WatchError(status) if status.code == 410 => {
            tracing::info!(%kind, error = %err, "watch of {kind} expired, re-listing");
        }
        _ if forbidden => tracing::warn!(
            %kind,
            error = %err,
            "watching {kind} is forbidden: the agent's ServiceAccount needs get, list and \
             watch on {kind} in all namespaces; retrying with back-off"
        ),
        _ => tracing::warn!(%kind, error = %err, "watching {kind} failed, retrying with back-off"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::client::Body;
    use serde_json::{json, Value};
    use tokio::sync::mpsc;

    // ---- apply_event ----

    fn pod(ns: &str, name: &str, ip: &str) -> Object {
        Object::Pod(Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.to_owned()),
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            status: Some(k8s_openapi::api::core::v1::PodStatus {
                pod_ip: Some(ip.to_owned()),
                ..Default::default()
            }),
            ..Pod::default()
        })
    }

    fn node(name: &str) -> Object {
        Object::Node(Node {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        })
    }

    fn pod_ref(ns: &str, name: &str) -> ObjectRef {
        ObjectRef::new(Kind::Pod, ns, name)
    }

    #[test]
    fn apply_and_delete_report_only_real_changes() {
        let mut s = ClusterSnapshot::new();
        let ev = WatchEvent::Apply(pod("a", "p", "10.0.0.1"));
        assert_eq!(ev.kind(), Kind::Pod);
        assert_eq!(apply_event(&mut s, ev.clone()), [pod_ref("a", "p")]);
        assert!(apply_event(&mut s, ev).is_empty(), "same object again");
        let changed = apply_event(&mut s, WatchEvent::Apply(pod("a", "p", "10.0.0.2")));
        assert_eq!(changed, [pod_ref("a", "p")]);
        let del = WatchEvent::Delete(pod_ref("a", "p"));
        assert_eq!(apply_event(&mut s, del.clone()), [pod_ref("a", "p")]);
        assert!(apply_event(&mut s, del).is_empty(), "already gone");
        assert!(s.is_empty());
    }

    #[test]
    fn resync_removes_unlisted_objects_of_its_kind_only() {
        let mut s = ClusterSnapshot::new();
        for o in [
            pod("a", "keep", "10.0.0.1"),
            pod("a", "change", "10.0.0.2"),
            pod("b", "gone", "10.0.0.3"),
            node("n1"),
        ] {
            s.apply(o);
        }
        let changed = apply_event(
            &mut s,
            WatchEvent::Resync {
                kind: Kind::Pod,
                objects: vec![
                    pod("a", "keep", "10.0.0.1"),
                    pod("c", "new", "10.0.0.9"),
                    pod("a", "change", "10.0.0.22"),
                    node("stray"),
                ],
            },
        );
        assert_eq!(
            changed,
            [
                pod_ref("a", "change"),
                pod_ref("b", "gone"),
                pod_ref("c", "new")
            ]
        );
        assert!(s.pod("b", "gone").is_none());
        assert!(s.node("n1").is_some(), "other kinds untouched");
        assert!(s.node("stray").is_none(), "wrong-kind entries ignored");
        assert_eq!(s.count(Kind::Pod), 3);

        // An empty list of a kind empties that kind.
        let changed = apply_event(
            &mut s,
            WatchEvent::Resync {
                kind: Kind::Node,
                objects: Vec::new(),
            },
        );
        assert_eq!(changed, [ObjectRef::new(Kind::Node, "", "n1")]);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn resync_defaults_missing_namespace_like_apply() {
        let mut s = ClusterSnapshot::new();
        s.apply(pod("default", "p", "10.0.0.1"));
        let mut unnamespaced = pod("x", "p", "10.0.0.1");
        if let Object::Pod(p) = &mut unnamespaced {
            p.metadata.namespace = None;
        }
        let changed = apply_event(
            &mut s,
            WatchEvent::Resync {
                kind: Kind::Pod,
                objects: vec![unnamespaced],
            },
        );
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(s.len(), 1);
    }

    // ---- a scripted API server behind tower-test's mock service ----

    /// What the fake API server answers to one request.
    enum Reply {
        /// A JSON body with this HTTP status.
        Json(StatusCode, Value),
        /// A watch response: these events as JSON lines, then end of stream.
        Events(Vec<Value>),
        /// No HTTP response at all: the connection failed.
        ConnectionRefused,
    }

    /// One request the fake API server saw.
    #[derive(Debug, Clone)]
    struct Seen {
        kind: Kind,
        watch: bool,
        query: String,
    }

    fn kind_of_path(path: &str) -> Kind {
        match path {
            "/api/v1/nodes" => Kind::Node,
            "/api/v1/namespaces" => Kind::Namespace,
            "/api/v1/pods" => Kind::Pod,
            "/api/v1/services" => Kind::Service,
            "/apis/discovery.k8s.io/v1/endpointslices" => Kind::EndpointSlice,
            "/apis/networking.k8s.io/v1/networkpolicies" => Kind::NetworkPolicy,
            other => panic!("unexpected request path {other}"),
        }
    }

    /// Serves the scripted replies per (kind, is-watch) in order. Unscripted
    /// lists are empty; unscripted watches never answer (an idle watch).
    fn spawn_api(
        mut script: HashMap<(Kind, bool), VecDeque<Reply>>,
    ) -> (Client, Arc<Mutex<Vec<Seen>>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut idle = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                assert_eq!(req.method(), http::Method::GET);
                let kind = kind_of_path(req.uri().path());
                let query = req.uri().query().unwrap_or("").to_owned();
                let watch = query.split('&').any(|p| p == "watch=true");
                log.lock().unwrap().push(Seen { kind, watch, query });
                let reply = script.get_mut(&(kind, watch)).and_then(VecDeque::pop_front);
                let (status, body) = match reply {
                    Some(Reply::Json(status, v)) => (status, serde_json::to_vec(&v).unwrap()),
                    Some(Reply::Events(events)) => {
                        let mut body = Vec::new();
                        for e in events {
                            body.extend(serde_json::to_vec(&e).unwrap());
                            body.push(b'\n');
                        }
                        (StatusCode::OK, body)
                    }
                    Some(Reply::ConnectionRefused) => {
                        let err = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                        send.send_error(err);
                        continue;
                    }
                    None if watch => {
                        idle.push(send);
                        continue;
                    }
                    None => (
                        StatusCode::OK,
                        serde_json::to_vec(&list(kind, "1", vec![])).unwrap(),
                    ),
                };
                let resp = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap();
                send.send_response(resp);
            }
        });
        (Client::new(service, "default"), seen)
    }

    /// A list response as the API server sends it: its items carry no
    /// `kind` or `apiVersion`.
    fn list(kind: Kind, rv: &str, items: Vec<Value>) -> Value {
        page(kind, rv, None, items)
    }

    /// One page of a list; `next` is the `continue` token of the next page.
    fn page(kind: Kind, rv: &str, next: Option<&str>, mut items: Vec<Value>) -> Value {
        for item in &mut items {
            let obj = item.as_object_mut().unwrap();
            obj.remove("kind");
            obj.remove("apiVersion");
        }
        let mut metadata = json!({ "resourceVersion": rv });
        if let Some(next) = next {
            metadata["continue"] = json!(next);
        }
        json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{kind}List"),
            "metadata": metadata,
            "items": items,
        })
    }

    fn node_json(name: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "resourceVersion": "3"},
            "spec": {"podCIDR": "10.244.0.0/24"},
        })
    }

    fn pod_json(name: &str, rv: &str, ip: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv,
                         "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"podIP": ip},
        })
    }

    fn svc_json(name: &str, rv: &str, cluster_ip: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
            "spec": {"clusterIP": cluster_ip, "ports": [{"port": 80, "protocol": "TCP"}]},
        })
    }

    fn event(ty: &str, object: Value) -> Value {
        json!({"type": ty, "object": object})
    }

    fn status(code: u16, reason: &str, message: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
               "reason": reason, "message": message, "code": code})
    }

    /// Receives events, handing them out per kind.
    struct Events {
        rx: mpsc::Receiver<WatchEvent>,
        pending: Vec<WatchEvent>,
        /// Every event handed out, in the order of the channel per kind.
        history: Vec<WatchEvent>,
    }

    impl Events {
        async fn next(&mut self, kind: Kind) -> WatchEvent {
            let ev = self.recv(kind).await;
            self.history.push(ev.clone());
            ev
        }

        async fn recv(&mut self, kind: Kind) -> WatchEvent {
            if let Some(i) = self.pending.iter().position(|e| e.kind() == kind) {
                return self.pending.remove(i);
            }
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(3600), self.rx.recv())
                    .await
                    .unwrap_or_else(|_| panic!("no {kind} event"))
                    .expect("watch_cluster ended");
                if ev.kind() == kind {
                    return ev;
                }
                self.pending.push(ev);
            }
        }
    }

    fn start(
        script: HashMap<(Kind, bool), VecDeque<Reply>>,
    ) -> (Events, Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
        let (client, seen) = spawn_api(script);
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(watch_cluster(client, tx));
        let events = Events {
            rx,
            pending: Vec::new(),
            history: Vec::new(),
        };
        (events, seen, task)
    }

    fn names(ev: &WatchEvent) -> Vec<String> {
        match ev {
            WatchEvent::Resync { objects, .. } => objects
                .iter()
                .map(|o| o.metadata().name.clone().unwrap())
                .collect(),
            other => panic!("expected a Resync, got {other:?}"),
        }
    }

    fn pod_ip(ev: &WatchEvent) -> (String, String) {
        match ev {
            WatchEvent::Apply(Object::Pod(p)) => (
                p.metadata.name.clone().unwrap(),
                p.status.as_ref().unwrap().pod_ip.clone().unwrap(),
            ),
            other => panic!("expected a Pod Apply, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn list_then_watch_events_for_pods_and_services() {
        let script = HashMap::from([
            (
                (Kind::Pod, false),
                VecDeque::from([Reply::Json(
                    StatusCode::OK,
                    list(
                        Kind::Pod,
                        "100",
                        vec![
                            pod_json("web-1", "90", "10.1.0.1"),
                            pod_json("web-2", "91", "10.1.0.2"),
                        ],
                    ),
                )]),
            ),
            (
                (Kind::Pod, true),
                VecDeque::from([Reply::Events(vec![
                    event("ADDED", pod_json("web-3", "101", "10.1.0.3")),
                    event("MODIFIED", pod_json("web-1", "102", "10.1.0.11")),
                    event(
                        "BOOKMARK",
                        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"resourceVersion": "103"}}),
                    ),
                    event("DELETED", pod_json("web-2", "104", "10.1.0.2")),
                ])]),
            ),
            (
                (Kind::Service, false),
                VecDeque::from([Reply::Json(
                    StatusCode::OK,
                    list(
                        Kind::Service,
                        "200",
                        vec![svc_json("web", "150", "10.96.0.10")],
                    ),
                )]),
            ),
            (
                (Kind::Service, true),
                VecDeque::from([Reply::Events(vec![
                    event("ADDED", svc_json("db", "201", "10.96.0.20")),
                    event("DELETED", svc_json("web", "202", "10.96.0.10")),
                ])]),
            ),
        ]);
        let (mut events, seen, task) = start(script);

        let resync = events.next(Kind::Pod).await;
        assert_eq!(names(&resync), ["web-1", "web-2"]);
        if let WatchEvent::Resync { objects, .. } = &resync {
            assert!(
                objects[0].metadata().managed_fields.is_none(),
                "managedFields are dropped"
            );
        }
        assert_eq!(
            pod_ip(&events.next(Kind::Pod).await),
            ("web-3".into(), "10.1.0.3".into())
        );
        assert_eq!(
            pod_ip(&events.next(Kind::Pod).await),
            ("web-1".into(), "10.1.0.11".into())
        );
        assert_eq!(
            events.next(Kind::Pod).await,
            WatchEvent::Delete(pod_ref("default", "web-2"))
        );

        assert_eq!(names(&events.next(Kind::Service).await), ["web"]);
        match events.next(Kind::Service).await {
            WatchEvent::Apply(Object::Service(s)) => {
                assert_eq!(s.metadata.name.as_deref(), Some("db"));
                assert_eq!(s.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.20"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            events.next(Kind::Service).await,
            WatchEvent::Delete(ObjectRef::new(Kind::Service, "default", "web"))
        );

        // The unscripted kinds are listed (empty) too.
        for kind in [
            Kind::Node,
            Kind::Namespace,
            Kind::EndpointSlice,
            Kind::NetworkPolicy,
        ] {
            assert_eq!(
                events.next(kind).await,
                WatchEvent::Resync {
                    kind,
                    objects: vec![]
                }
            );
        }

        let mut extra = events.pending.clone();
        while let Ok(ev) = events.rx.try_recv() {
            extra.push(ev);
        }
        assert!(extra.is_empty(), "unexpected extra events {extra:?}");

        // Folding the events gives the cluster as it now is.
        let mut snap = ClusterSnapshot::new();
        for ev in events.history.clone() {
            apply_event(&mut snap, ev);
        }
        let refs: Vec<String> = snap.refs().map(ToString::to_string).collect();
        assert_eq!(
            refs,
            [
                "Pod default/web-1",
                "Pod default/web-3",
                "Service default/db"
            ]
        );
        assert_eq!(
            snap.pod("default", "web-1")
                .unwrap()
                .status
                .as_ref()
                .unwrap()
                .pod_ip
                .as_deref(),
            Some("10.1.0.11")
        );

        // kube listed, then watched from the list's resourceVersion; after
        // the watch stream ended it resumed from the last event's.
        let pods: Vec<Seen> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.kind == Kind::Pod)
            .cloned()
            .collect();
        assert!(!pods[0].watch, "{pods:?}");
        assert!(
            pods[1].watch && pods[1].query.contains("resourceVersion=100"),
            "{pods:?}"
        );
        assert!(
            pods[2].watch && pods[2].query.contains("resourceVersion=104"),
            "{pods:?}"
        );
        assert_eq!(pods.len(), 3, "{pods:?}");
        for kind in Kind::ALL {
            assert!(
                seen.lock()
                    .unwrap()
                    .iter()
                    .any(|s| s.kind == kind && s.watch),
                "{kind} watched"
            );
        }

        // Dropping the receiver stops watch_cluster.
        drop(events);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
    }

    fn seen_of(seen: &Mutex<Vec<Seen>>, kind: Kind) -> Vec<(bool, String)> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| (s.watch, s.query.clone()))
            .collect()
    }

    fn rv_of(query: &str) -> &str {
        query
            .split('&')
            .find_map(|p| p.strip_prefix("resourceVersion="))
            .unwrap_or("")
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_retried_and_a_relist_drops_what_was_deleted_meanwhile() {
        let a = pod_json("a", "9", "10.1.0.1");
        let a2 = pod_json("a", "11", "10.1.0.11");
        let b = pod_json("b", "9", "10.1.0.2");
        let script = HashMap::from([
            (
                (Kind::Pod, false),
                VecDeque::from([
                    Reply::Json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        status(500, "InternalError", "etcdserver: request timed out"),
                    ),
                    Reply::Json(StatusCode::OK, list(Kind::Pod, "10", vec![a, b])),
                    // The re-list after 410 Gone: b was deleted while we
                    // were not watching.
                    Reply::Json(StatusCode::OK, list(Kind::Pod, "20", vec![a2.clone()])),
                ]),
            ),
            (
                (Kind::Pod, true),
                VecDeque::from([
                    Reply::Json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        status(503, "ServiceUnavailable", "apiserver shutting down"),
                    ),
                    Reply::Events(vec![
                        event("MODIFIED", a2),
                        event(
                            "ERROR",
                            status(410, "Expired", "too old resource version: 11 (15)"),
                        ),
                    ]),
                ]),
            ),
            (
                (Kind::Service, false),
                VecDeque::from([Reply::Json(
                    StatusCode::OK,
                    list(Kind::Service, "5", vec![svc_json("web", "4", "10.96.0.10")]),
                )]),
            ),
            (
                // RBAC not granted yet: retried until it is.
                (Kind::EndpointSlice, false),
                VecDeque::from([
                    Reply::Json(
                        StatusCode::FORBIDDEN,
                        status(
                            403,
                            "Forbidden",
                            "endpointslices.discovery.k8s.io is forbidden",
                        ),
                    ),
                    Reply::Json(
                        StatusCode::FORBIDDEN,
                        status(
                            403,
                            "Forbidden",
                            "endpointslices.discovery.k8s.io is forbidden",
                        ),
                    ),
                ]),
            ),
            (
                (Kind::Service, true),
                VecDeque::from([
                    Reply::ConnectionRefused,
                    Reply::ConnectionRefused,
                    Reply::Events(vec![
                        event("ERROR", status(500, "InternalError", "transient")),
                        event("ADDED", svc_json("db", "6", "10.96.0.20")),
                    ]),
                ]),
            ),
        ]);
        let t0 = tokio::time::Instant::now();
        let (mut events, seen, task) = start(script);
        let mut snap = ClusterSnapshot::new();

        // The failed first list sends nothing; the second is one Resync.
        let ev = events.next(Kind::Pod).await;
        assert_eq!(names(&ev), ["a", "b"]);
        assert_eq!(apply_event(&mut snap, ev).len(), 2);
        // The failed watch start is retried from the same resourceVersion,
        // without a re-list.
        let ev = events.next(Kind::Pod).await;
        assert_eq!(pod_ip(&ev), ("a".into(), "10.1.0.11".into()));
        assert_eq!(apply_event(&mut snap, ev), [pod_ref("default", "a")]);
        // 410 Gone: re-list; the Resync removes b.
        let ev = events.next(Kind::Pod).await;
        assert_eq!(names(&ev), ["a"]);
        assert_eq!(apply_event(&mut snap, ev), [pod_ref("default", "b")]);
        assert_eq!(snap.count(Kind::Pod), 1);

        let pods = seen_of(&seen, Kind::Pod);
        let shape: Vec<(bool, &str)> = pods.iter().map(|(w, q)| (*w, rv_of(q))).collect();
        assert_eq!(
            shape[..5],
            [
                (false, ""),
                (false, ""),
                (true, "10"),
                (true, "10"),
                (false, "")
            ],
            "{pods:?}"
        );

        // Services: the API server is unreachable twice, then an ERROR event
        // that is not 410 leaves the watch running. Nothing is flushed.
        let ev = events.next(Kind::Service).await;
        assert_eq!(names(&ev), ["web"]);
        apply_event(&mut snap, ev);
        let ev = events.next(Kind::Service).await;
        assert!(
            matches!(&ev, WatchEvent::Apply(Object::Service(_))),
            "{ev:?}"
        );
        apply_event(&mut snap, ev);
        assert_eq!(snap.count(Kind::Service), 2);
        let svcs = seen_of(&seen, Kind::Service);
        let lists = svcs.iter().filter(|(w, _)| !w).count();
        assert_eq!(lists, 1, "no re-list after connection errors: {svcs:?}");
        assert!(
            svcs.iter()
                .filter(|(w, _)| *w)
                .take(3)
                .all(|(_, q)| rv_of(q) == "5"),
            "{svcs:?}"
        );
        // Retries waited (kube's back-off starts at 0.8 s and doubles).
        assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());

        // Two 403s, then the (default, empty) list: one Resync.
        assert_eq!(
            events.next(Kind::EndpointSlice).await,
            WatchEvent::Resync {
                kind: Kind::EndpointSlice,
                objects: vec![]
            }
        );
        let lists = seen_of(&seen, Kind::EndpointSlice);
        assert_eq!(lists.iter().filter(|(w, _)| !w).count(), 3, "{lists:?}");

        // Nothing else happened to pods or services.
        for kind in [Kind::Pod, Kind::Service] {
            assert!(
                !events.pending.iter().any(|e| e.kind() == kind),
                "{:?}",
                events.pending
            );
        }
        drop(events);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
    }

    const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: https://127.0.0.1:6443
    insecure-skip-tls-verify: true
contexts:
- name: lab
  context: {cluster: lab, user: agent, namespace: kube-system}
current-context: lab
users:
- name: agent
  user: {token: not-a-real-token}
";

    #[tokio::test]
    async fn client_from_kubeconfig_reads_the_file_and_names_it_on_error() {
        let dir = std::env::temp_dir().join(format!("ferrovs-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        std::fs::write(&path, KUBECONFIG).unwrap();

        let client = client_from_kubeconfig(&path, None).await.unwrap();
        assert_eq!(client.default_namespace(), "kube-system");
        let client = client_from_kubeconfig(&path, Some("lab")).await.unwrap();
        assert_eq!(client.default_namespace(), "kube-system");

        let err = client_from_kubeconfig(&path, Some("prod"))
            .await
            .err()
            .expect("unknown context must fail");
        let msg = err.to_string();
        assert!(matches!(err, WatchError::Kubeconfig { .. }), "{msg}");
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("prod"),
            "{msg}"
        );

        let missing = dir.join("nope");
        let msg = client_from_kubeconfig(&missing, None)
            .await
            .err()
            .expect("missing file must fail")
            .to_string();
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_paged_list_is_one_resync_and_a_list_failing_midway_sends_nothing() {
        let ok = |v| Reply::Json(StatusCode::OK, v);
        let script = HashMap::from([(
            (Kind::Node, false),
            VecDeque::from([
                ok(page(Kind::Node, "7", Some("tok1"), vec![node_json("n1")])),
                // The second page fails: the half list must not be sent.
                Reply::Json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    status(500, "InternalError", "etcd leader changed"),
                ),
                // The retry starts over from the first page.
                ok(page(Kind::Node, "8", Some("tok2"), vec![node_json("n1")])),
                ok(page(Kind::Node, "8", Some("tok3"), vec![node_json("n2")])),
                ok(page(Kind::Node, "8", None, vec![node_json("n3")])),
            ]),
        )]);
        let (mut events, seen, task) = start(script);
        let ev = events.next(Kind::Node).await;
        assert_eq!(names(&ev), ["n1", "n2", "n3"]);
        let nodes = seen_of(&seen, Kind::Node);
        let conts: Vec<Option<&str>> = nodes
            .iter()
            .filter(|(w, _)| !w)
            .map(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("continue=")))
            .collect();
        assert_eq!(
            conts,
            [None, Some("tok1"), None, Some("tok2"), Some("tok3")],
            "{nodes:?}"
        );
        assert!(
            nodes.iter().any(|(w, q)| *w && rv_of(q) == "8"),
            "{nodes:?}"
        );
        assert!(events.pending.iter().all(|e| e.kind() != Kind::Node));
        drop(events);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
    }
}
