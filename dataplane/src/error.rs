//! The data plane's error type; each variant says who is to blame.
//!
//! Only `Backend` errors feed a destination's circuit breaker: a client that sends
//! garbage or a control plane that is away says nothing about the backend's health.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client misbehaved or went away.
    #[error("client: {0}")]
    Client(String),
    /// The backend could not be reached or broke the protocol before authentication.
    #[error("backend {destination}: {reason}")]
    Backend { destination: String, reason: String },
    /// No route: the control plane is unreachable and the cache has nothing usable.
    #[error("routing: {0}")]
    Routing(String),
    /// The route exists but this node may not use it (breaker open, no endpoint, policy).
    #[error("destination {destination} unavailable: {reason}")]
    Unavailable { destination: String, reason: String },
    #[error("control plane: {0}")]
    Control(String),
    /// The node itself failed: one of its background tasks stopped or panicked.
    #[error("node: {0}")]
    Node(String),
    /// The control plane refused this process: another live one holds its node id.
    #[error("node id in use: {0}")]
    NodeIdInUse(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    pub fn backend(destination: &str, reason: impl std::fmt::Display) -> Self {
        Self::Backend { destination: destination.to_string(), reason: reason.to_string() }
    }

    pub fn unavailable(destination: &str, reason: impl std::fmt::Display) -> Self {
        Self::Unavailable { destination: destination.to_string(), reason: reason.to_string() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use switchyard_common::error::chain;
