//! The `switchyard.v1` gRPC contract between data-plane nodes and the control plane.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("switchyard.v1");
}
