//! Socket-free protocol codecs: bounded line reading, IMAP and ManageSieve command tokens,
//! SMTP commands and replies, and SASL decoding.
//!
//! Everything here is synchronous and pure. Parsers are fed bytes with `push` and answer
//! `Ok(None)` when they need more data, so protocol sessions own all I/O and timeouts and
//! these parsers can be tested by feeding scripts in arbitrary chunks.

#![warn(unreachable_pub, missing_debug_implementations)]

pub mod identifier;
pub mod imap;
pub mod line;
pub mod mechanism;
pub mod proxy;
pub mod sasl;
pub mod sieve;
pub mod smtp;

/// What was wrong with client input. The messages are safe to echo back to the client
/// (they never contain the input itself, which may hold credentials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("line exceeds {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("literal of {size} bytes exceeds {limit} bytes")]
    LiteralTooLarge { size: u64, limit: usize },
    #[error("payload of {size} bytes exceeds {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    Malformed(&'static str),
    #[error("invalid base64")]
    Base64,
    #[error("invalid UTF-8")]
    InvalidUtf8,
}
