//! Shared code of the ferrovs binaries: `ferrovsd` (the per-node switch
//! service: [`config`], [`mgmt`], [`metrics`]) and `ferrovs-ctl` (the
//! OVS-style command line, a thin client of [`mgmt`]'s socket protocol).
#![forbid(unsafe_code)]

pub mod config;
pub mod metrics;
pub mod mgmt;
