//! Placeholder: training primitives are being written.
