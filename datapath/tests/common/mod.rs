//! Helpers shared by the integration tests.

pub mod service;
pub mod sim_pod;
