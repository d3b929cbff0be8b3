//! Benchmarks for ferrovs (micro-benchmarks and the end-to-end harness).
//!
//! [`pipeline`] drives the datapath's [`datapath::worker::Engine`] by hand,
//! batch by batch like the poll loop, for the criterion benchmark
//! `benches/pipeline.rs` and the instruction counter `ferrovs-icount`.
//! [`harness`] is the side-by-side harness `ferrovs-bench` (ferrovs, OVS,
//! Linux bridge on one netns/veth topology).
//! [`agent_scale`] builds the synthetic cluster of `ferrovs-agent-scale`.
#![forbid(unsafe_code)]

pub mod agent_scale;
pub mod harness;
pub mod pipeline;
