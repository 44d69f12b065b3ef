//! The fuzz targets' view of the data plane: its codec module compiled on its own, plus
//! the small input conventions every target shares.
//!
//! `dataplane/src/codec/` is pure (no I/O, no other module of the crate), so it is built
//! here from the same source files instead of through the `dataplane` crate: an
//! instrumented build of the whole node (tokio, tonic, rustls, ...) would take minutes on
//! CI's two cores, and a half-edited protocol file elsewhere would stop the fuzzers. A
//! codec that starts to use another part of the crate fails this build, which CI runs.

#[path = "../../dataplane/src/codec/mod.rs"]
pub mod codec;

pub mod script;
