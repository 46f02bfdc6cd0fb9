//! Placeholder: the Wan2.1 transformer is being written.
