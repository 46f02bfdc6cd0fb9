//! The surgery.v1 gRPC protocol: generated messages and services, the encoded file
//! descriptor set for server reflection, and [`ServiceError`] helpers that carry a typed
//! error through a `tonic::Status` so clients print the server's real reason.
//! Domain types live in surgery-core and the coordinator; this crate only holds wire types.

pub mod v1 {
    tonic::include_proto!("surgery.v1");
}

pub mod error;

/// Encoded `FileDescriptorSet` of surgery.v1, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/surgery_descriptor.bin"));
