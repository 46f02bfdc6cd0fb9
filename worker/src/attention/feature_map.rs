//! Placeholder while the feature maps are being written.
