//! `flows` is the pure heart of ferrovs: the OpenFlow-style pipeline that a
//! network engineer programs with `ovs-ofctl`-style text, and the translation
//! of one packet's [`FlowKey`](key::FlowKey) through it into the small list
//! of datapath actions ([`xlate::DpAction`]) that the poll threads execute
//! and cache.
//!
//! It owns no socket, no thread and no clock: time comes in as an argument,
//! so everything here is tested with plain unit and property tests.
//!
//! Main types, from the bottom up:
//! - [`key::FlowKey`] and [`field::Field`]: the packed flow key and the
//!   fields that can be matched and set.
//! - [`flow_match::Match`]: a masked match over the key.
//! - [`action::Action`] and [`action::Group`]: what a flow does.
//! - [`classifier::Classifier`]: tuple-space search (one hash subtable per
//!   mask, priority-ordered, early exit).
//! - [`pipeline::Pipeline`]: 255 tables of [`pipeline::FlowEntry`], groups and
//!   port configuration; one immutable version that the datapath reads while
//!   the next one is built ([`pipeline::FlowMod`] edits).
//! - [`xlate`]: evaluates the pipeline for one key (resubmit, goto_table,
//!   groups, `normal` MAC learning) and records a trace for `ferrovs-ctl trace`.
//! - [`affinity::AffinityTable`]: session affinity of select groups with
//!   `affinity_timeout` (client -> bucket until unused for the timeout).
//! - [`syntax`]: parsing and printing of the `ovs-ofctl` flow syntax and
//!   `dump-flows` lines.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod action;
pub mod affinity;
pub mod classifier;
pub mod field;
pub mod flow_match;
pub mod key;
pub mod mac_learning;
pub mod pipeline;
pub mod syntax;
pub mod trace;
pub mod xlate;
