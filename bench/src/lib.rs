//! Benchmarks for ferrovs (micro-benchmarks and the end-to-end harness).
#![forbid(unsafe_code)]
