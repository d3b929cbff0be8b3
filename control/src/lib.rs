//! `control` is `ferrovs-agent`, which turns Kubernetes state (Nodes,
//! Namespaces, Pods, Services, EndpointSlices, NetworkPolicies) into ferrovs
//! flows, and the CNI plugin `ferrovs-cni`. It only knows [`flows`]; the
//! datapath never sees Kubernetes, and the agent talks to ferrovsd through
//! its management socket.
//!
//! From state to flows:
//! - [`snapshot`]: [`ClusterSnapshot`], the objects the agent uses (real
//!   `k8s-openapi` types) in `BTreeMap`s keyed by [`ObjectRef`], so that
//!   iteration is deterministic; [`Object`] is one object of a used [`Kind`].
//! - [`manifests`]: [`load_dir`] reads a directory of YAML/JSON manifests
//!   (multi-document files, `kind: List`, `PodList`, ...) into a snapshot,
//!   reporting each bad object as a [`ManifestError`] and loading the rest.
//! - [`watch`]: [`watch_cluster`] follows a live API server (`kube` watchers)
//!   as [`WatchEvent`]s; [`apply_event`] folds them into a snapshot.
//! - [`model`]: the resolved view (nodes, tenants, pods, label selectors).
//! - [`compile`]: the pure compiler, in units, with per-unit diffs
//!   ([`compile::Compiler`]); its pipeline layout is [`compile::layout`].
//! - [`sim`]: compiled flows evaluated in a pipeline without a switch.
//! - [`agent`]: the daemon's rounds: pod ports, full resync, incremental
//!   bundles to ferrovsd.
//! - [`attach`] and [`cni`]: the CNI plugin's attachment records and logic.
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
