//! surgery-coordinator: plans jobs into tasks, schedules them onto workers, and keeps
//! every state change durable in an embedded redb file. It owns the job and task state
//! machine; it never links LibTorch and never touches tensors.
//!
//! Everything that can happen to the state is a [`command::Command`], applied by the
//! [`engine`] through [`cluster::Cluster::apply`]. Pure decision code ([`planner`],
//! [`scheduler`] with its [`decision`]s, [`select_stage`], [`cluster`]'s transitions) is
//! kept apart from I/O ([`store`], [`committer`], [`engine`], the gRPC services, which
//! only decode commands and encode outcomes, the HTTP pages).

pub mod artifacts;
pub mod cli;
pub mod cluster;
pub mod command;
pub mod committer;
pub mod config;
pub mod convert;
pub mod decision;
pub mod engine;
pub mod http;
pub mod job_service;
pub mod metrics;
pub mod model;
pub mod planner;
pub mod scheduler;
pub mod select_stage;
pub mod server;
pub mod store;
pub mod worker_service;
