//! `control` is the foundation of `ferrovs-agent`, which turns Kubernetes
//! state (Nodes, Namespaces, Pods, Services, EndpointSlices, NetworkPolicies)
//! into ferrovs flows. It only knows [`flows`]; the datapath never sees
//! Kubernetes.
//!
//! Today it holds the cluster-state model and a way to fill it:
//! - [`snapshot`]: [`ClusterSnapshot`], the objects the agent uses (real
//!   `k8s-openapi` types) in `BTreeMap`s keyed by [`ObjectRef`], so that
//!   iteration is deterministic; [`Object`] is one object of a used [`Kind`].
//! - [`manifests`]: [`load_dir`] reads a directory of YAML/JSON manifests
//!   (multi-document files, `kind: List`, `PodList`, ...) into a snapshot,
//!   reporting each bad object as a [`ManifestError`] and loading the rest.
//! - [`watch`]: [`watch_cluster`] follows a live API server (`kube` watchers)
//!   as [`WatchEvent`]s; [`apply_event`] folds them into a snapshot.
//!
//! The flow compiler, the Kubernetes watcher and the daemon come later.
#![forbid(unsafe_code)]

pub mod agent;
pub mod attach;
pub mod cni;
pub mod compile;
pub mod manifests;
pub mod model;
pub mod sim;
pub mod snapshot;
pub mod watch;

pub use manifests::{load, load_dir, Loaded, Loader, ManifestError, Problem, Severity};
pub use snapshot::{ClusterSnapshot, Kind, Object, ObjectRef};
pub use watch::{
    apply_event, client_from_env, client_from_kubeconfig, watch_cluster, watch_kinds, WatchError,
    WatchEvent,
};
