//! The fuzz targets' view of the data plane: its codec crate (`switchyard-codec`), plus the
//! small input conventions every target shares.
//!
//! The codecs are a crate of their own, pure (no I/O, no other part of the node), so this
//! build instruments only them: an instrumented build of the whole node (tokio, tonic,
//! rustls, ...) would take minutes on CI's two cores, and a half-edited protocol file
//! elsewhere would stop the fuzzers.

pub use switchyard_codec as codec;

pub mod script;
