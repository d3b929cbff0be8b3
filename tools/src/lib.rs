//! Shared code of the ferrovs binaries: `ferrovsd` (the per-node switch
//! service) and `ferrovs-ctl` (the OVS-style command line).
#![forbid(unsafe_code)]
