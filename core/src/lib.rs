//! surgery-core: what the coordinator, the worker and surgeryctl all need and agree on:
//! the job spec and its validation ([`spec`]), the task plan's names ([`ids`]), the FLOP
//! cost model ([`cost`]), the block-rate selection ([`select`]) and the object-store
//! layout ([`layout`]). Pure code: no tch, no network, no clocks.

pub mod cost;
pub mod ids;
pub mod layout;
pub mod results;
pub mod select;
pub mod spec;
