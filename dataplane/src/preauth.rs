//! The loop every login protocol (IMAP, POP3, ManageSieve, submission) runs before
//! authentication: converse until the client authenticated (then bridge), asked for TLS
//! (then upgrade and converse again on the new stream) or left.

use std::future::Future;

use tokio::io::AsyncWriteExt;

use crate::backend::BackendConn;
use crate::error::Result;
use crate::pipeline::{Route, SessionCtx};
use crate::tls::MaybeTls;

/// How one pre-auth conversation ended.
pub enum End {
    Authenticated(Route, BackendConn),
    /// The client asked for TLS and was told to go ahead.
    StartTls,
    Closed,
}

/// A protocol's client session before authentication.
pub trait PreAuth: Sized + Send {
    /// The conversation until it ends; runs again after a TLS upgrade.
    fn run(&mut self) -> impl Future<Output = Result<End>> + Send;
    /// The same session over TLS, with a parser that holds nothing from before.
    fn upgrade(self) -> impl Future<Output = Result<Self>> + Send;
    /// The session's context, its client stream and what the client sent past the login.
    fn into_parts(self) -> (SessionCtx, MaybeTls, Vec<u8>);
}

/// Drives `session` to its end and bridges it once authenticated.
pub async fn converse<S: PreAuth>(mut session: S) {
    loop {
        match session.run().await {
            Ok(End::Authenticated(route, backend)) => {
                let (ctx, client, remaining) = session.into_parts();
                let (stream, pending, kick) = backend.into_parts();
                ctx.bridge(&route, kick, client, remaining, stream, pending).await;
                return;
            }
            Ok(End::StartTls) => match session.upgrade().await {
                Ok(upgraded) => session = upgraded,
                Err(e) => return tracing::debug!(error = %e, "TLS upgrade failed"),
            },
            Ok(End::Closed) => {
                // An orderly close, so a TLS client gets its close_notify (RFC 8446 §6.1)
                // and can tell the end from a truncation.
                let (_, mut client, _) = session.into_parts();
                let _ = client.shutdown().await;
                return;
            }
            Err(e) => return tracing::debug!(error = %e, "session ended before authentication"),
        }
    }
}
