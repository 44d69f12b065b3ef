//! Error rendering both binaries log with.

/// An error with its causes, `: `-separated: tonic's and reqwest's own messages are only
/// "transport error" / "error sending request", the reason (refused, unknown CA,
/// certificate required) is further down.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
