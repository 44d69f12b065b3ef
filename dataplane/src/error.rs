//! The data plane's error type; each error says who is to blame ([`Error::blame`]).
//!
//! Blame is decided where the fault is detected, not where the error is caught: whatever
//! the backend leg's stream or a backend dialect notices (a reply that is no reply, a
//! close, silence) is the backend's, even when the code noticing it is a parser. Only
//! backend-blamed errors feed a destination's circuit breaker: a client that sends garbage,
//! a control plane that is away or the node's own set-up say nothing about a backend's
//! health.

use std::io;

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client misbehaved, went away, or asked for something it may not have.
    Client,
    /// The backend could not be reached, broke its protocol or did not answer in time.
    Backend,
    /// The node itself: its own set-up (a certificate it cannot read, a port it cannot
    /// bind), a background task that stopped, or its shutdown.
    Node,
    /// The control plane or the fleet settings it pushed (no route, no endpoint, policy).
    Control,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client misbehaved or went away.
    #[error("client: {0}")]
    Client(String),
    /// The backend could not be reached or broke the protocol.
    #[error("backend {destination}: {reason}")]
    Backend { destination: String, reason: String },
    /// The backend did not answer (or read) within the current step's deadline.
    #[error("backend {destination}: {reason}")]
    BackendTimeout { destination: String, reason: String },
    /// The destination's breaker is open: the destination failed recently.
    #[error("destination {destination} unavailable: circuit breaker open")]
    BreakerOpen { destination: String },
    /// No route: the control plane is unreachable and the cache has nothing usable.
    #[error("routing: {0}")]
    Routing(String),
    /// The route exists but the fleet settings close it to this session (no endpoint,
    /// policy, a destination that is not declared or points back at this node).
    #[error("destination {destination} unavailable: {reason}")]
    Unavailable { destination: String, reason: String },
    #[error("control plane: {0}")]
    Control(String),
    /// The node itself failed: its own set-up, or one of its background tasks stopped or
    /// panicked.
    #[error("node: {0}")]
    Node(String),
    /// The control plane refused this process: another live one holds its node id.
    #[error("node id in use: {0}")]
    NodeIdInUse(String),
    /// An io error on the client leg: the backend leg's stream builds its own errors
    /// (`Backend`, `BackendTimeout`) instead.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    pub fn backend(destination: &str, reason: impl std::fmt::Display) -> Self {
        Self::Backend { destination: destination.to_string(), reason: reason.to_string() }
    }

    pub fn backend_timeout(destination: &str, reason: impl std::fmt::Display) -> Self {
        Self::BackendTimeout { destination: destination.to_string(), reason: reason.to_string() }
    }

    pub fn unavailable(destination: &str, reason: impl std::fmt::Display) -> Self {
        Self::Unavailable { destination: destination.to_string(), reason: reason.to_string() }
    }

    /// Whose fault this is; the breaker counts only [`Blame::Backend`].
    pub fn blame(&self) -> Blame {
        match self {
            Self::Client(_) | Self::Io(_) => Blame::Client,
            Self::Backend { .. } | Self::BackendTimeout { .. } | Self::BreakerOpen { .. } => Blame::Backend,
            Self::Node(_) => Blame::Node,
            Self::Routing(_) | Self::Unavailable { .. } | Self::Control(_) | Self::NodeIdInUse(_) => Blame::Control,
        }
    }

    /// Whether the backend let a deadline pass (the one backend fault a login's breaker
    /// permit is failed for once the credential was sent).
    pub fn timed_out(&self) -> bool {
        matches!(self, Self::BackendTimeout { .. })
    }

    /// The same error, with the same blame, its reason prefixed by the step it ended.
    pub fn during(self, step: &str) -> Self {
        match self {
            Self::Backend { destination, reason } => Self::Backend { destination, reason: format!("{step}: {reason}") },
            Self::BackendTimeout { destination, reason } => {
                Self::BackendTimeout { destination, reason: format!("{step}: {reason}") }
            }
            other => other,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use switchyard_common::error::chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_constructor_names_its_blame() {
        let cases = [
            (Error::Client("bad syntax".into()), Blame::Client),
            (Error::Io(io::ErrorKind::BrokenPipe.into()), Blame::Client),
            (Error::backend("d", "unexpected greeting"), Blame::Backend),
            (Error::backend_timeout("d", "no reply in time"), Blame::Backend),
            (Error::BreakerOpen { destination: "d".into() }, Blame::Backend),
            (Error::Node("control link stopped".into()), Blame::Node),
            (Error::Routing("no route cache yet".into()), Blame::Control),
            (Error::unavailable("d", "no imap endpoint"), Blame::Control),
            (Error::Control("connect: refused".into()), Blame::Control),
            (Error::NodeIdInUse("n".into()), Blame::Control),
        ];
        for (error, blame) in cases {
            assert_eq!(error.blame(), blame, "{error}");
        }
    }

    #[test]
    fn only_a_backend_timeout_is_timed_out() {
        assert!(Error::backend_timeout("d", "x").timed_out());
        assert!(!Error::backend("d", "x").timed_out());
        assert!(!Error::Io(io::ErrorKind::TimedOut.into()).timed_out(), "a client's timeout is not the backend's");
    }

    #[test]
    fn a_step_keeps_the_blame_and_prefixes_the_reason() {
        let e = Error::backend_timeout("d", "no reply in time").during("no verdict");
        assert!(e.timed_out());
        assert_eq!(e.to_string(), "backend d: no verdict: no reply in time");
        let e = Error::Client("gone".into()).during("no verdict");
        assert_eq!((e.blame(), e.to_string()), (Blame::Client, "client: gone".to_string()));
    }
}
