//! The surgery.v1 gRPC protocol: generated messages and services, the encoded file
//! descriptor set for server reflection, and [`ServiceError`] helpers that carry a typed
//! error through a `tonic::Status` so clients print the server's real reason.
//! Domain types live in surgery-core and the coordinator; this crate holds wire types and
//! [`words`], the conversions of surgery-core's shared vocabulary to and from them.

pub mod v1 {
    tonic::include_proto!("surgery.v1");
}

pub mod error;
pub mod words;

/// Encoded `FileDescriptorSet` of surgery.v1, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/surgery_descriptor.bin"));
