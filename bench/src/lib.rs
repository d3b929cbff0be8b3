//! Benchmarks for ferrovs (micro-benchmarks and the end-to-end harness).
//!
//! [`pipeline`] drives the datapath's [`datapath::worker::Engine`] by hand,
//! batch by batch like the poll loop, for the criterion benchmark
//! `benches/pipeline.rs` and the instruction counter `ferrovs-icount`.
#![forbid(unsafe_code)]

pub mod pipeline;
