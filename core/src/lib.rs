//! surgery-core: what the coordinator, the worker and surgeryctl all need and agree on:
//! the job spec and its validation ([`spec`]), the block rate ([`rate`]), the words of a
//! job's life ([`state`]), job and task names ([`ids`]), the FLOP cost model ([`cost`]),
//! the block-rate selection ([`select`]), the names of stage results ([`results`]), what a
//! forked job may reuse of its parent ([`reuse`]) and the
//! object-store layout ([`layout`]). Pure code: no tch, no network, no clocks.

pub mod cost;
pub mod ids;
pub mod layout;
pub mod rate;
pub mod results;
pub mod reuse;
pub mod select;
pub mod spec;
pub mod state;
