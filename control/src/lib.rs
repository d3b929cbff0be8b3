//! `control` will turn Kubernetes state (Pods, Namespaces, Nodes, Services,
//! EndpointSlices, NetworkPolicies) into ferrovs flows. It only knows
//! [`flows`]; the datapath never sees Kubernetes. This crate is a stub until
//! the Kubernetes agent issue is taken.
#![forbid(unsafe_code)]
