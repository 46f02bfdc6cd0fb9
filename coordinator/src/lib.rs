//! surgery-coordinator: plans jobs into tasks, schedules them onto workers, and keeps
//! every state change durable in an embedded redb file. It owns the job and task state
//! machine; it never links LibTorch and never touches tensors.
//!
//! Pure decision code ([`planner`], [`scheduler`], [`select_stage`], [`cluster`]'s
//! transitions) is kept apart from I/O ([`store`], the gRPC services, the HTTP page).

pub mod cluster;
pub mod model;
pub mod planner;
pub mod scheduler;
pub mod select_stage;
