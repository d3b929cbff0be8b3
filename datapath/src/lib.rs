//! `datapath` moves real packets: it owns the ports (AF_XDP sockets on veth
//! or NIC queues, in-memory ports for tests), the poll threads that receive
//! them in batches, the per-thread exact-match flow cache in front of the
//! [`flows`] pipeline, connection tracking with NAT, and VXLAN encap/decap.
//!
//! Layering: everything here except [`xsk`] is safe Rust; the AF_XDP ring
//! and UMEM handling with its `unsafe` lives in [`xsk`] alone.
#![warn(missing_docs)]

pub mod conntrack;
pub mod drop;
pub mod emc;
pub mod extract;
pub mod packet;
pub mod port;
pub mod reply;
pub mod shared;
pub mod switch;
pub mod tunnel;
pub mod txbatch;
pub mod vxlan;
pub mod wakepace;
pub mod worker;
pub mod xsk;
