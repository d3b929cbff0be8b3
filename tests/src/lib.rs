//! Helpers for ferrovs integration tests: network namespaces and veth pairs
//! that are removed again when the test ends, also when it fails.
#![forbid(unsafe_code)]
