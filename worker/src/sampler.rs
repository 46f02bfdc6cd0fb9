//! Placeholder: the flow-matching sampler is being written.
