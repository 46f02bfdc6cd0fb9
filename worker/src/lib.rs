//! surgery-worker: runs stage tasks with LibTorch through tch. It is the only crate that
//! links LibTorch; the coordinator and surgeryctl never depend on it.
//!
//! What is here now is the LibTorch runtime setup every binary of this crate needs first
//! ([`runtime::init`]); the model, stage executors and the worker loop come next.

pub mod runtime;
