//! The loop every login protocol (IMAP, POP3, ManageSieve, submission) runs before
//! authentication: converse until the client authenticated (then bridge), asked for TLS
//! (then upgrade and converse again on the new stream), left, or the node closes its
//! sessions at shutdown (then the protocol's goodbye).

use std::future::Future;

use crate::backend::BackendConn;
use crate::client;
use crate::error::Result;
use crate::protocol;
use crate::session::{Route, SessionCtx};
use crate::tls::MaybeTls;

/// How one pre-auth conversation ended.
pub(crate) enum End {
    Authenticated(Route, BackendConn),
    /// The client asked for TLS and was told to go ahead.
    StartTls,
    Closed,
}

/// A protocol's client session before authentication.
pub(crate) trait PreAuth: Sized + Send {
    /// The conversation until it ends; runs again after a TLS upgrade.
    fn run(&mut self) -> impl Future<Output = Result<End>> + Send;
    /// The same session over TLS, with a parser that holds nothing from before.
    fn upgrade(self) -> impl Future<Output = Result<Self>> + Send;
    /// The session's context.
    fn ctx(&self) -> &SessionCtx;
    /// The session's context, its client stream and what the client sent past the login.
    fn into_parts(self) -> (SessionCtx, MaybeTls, Vec<u8>);
}

/// Drives `session` to its end and bridges it once authenticated. When the node closes
/// its sessions (the shutdown grace period is over), whatever the session waits for (the
/// client, a login delay, the backend) is dropped and the client gets its goodbye.
pub(crate) async fn converse<S: PreAuth>(mut session: S) {
    let closing = session.ctx().node.kill_sessions.clone();
    loop {
        let ran = tokio::select! {
            biased;
            _ = closing.cancelled() => None,
            ran = session.run() => Some(ran),
        };
        match ran {
            None => return shut_down(session).await,
            Some(Ok(End::Authenticated(route, backend))) => {
                let (ctx, client, remaining) = session.into_parts();
                let (stream, pending, kick) = backend.into_parts();
                ctx.bridge(&route, kick, client, remaining, stream, pending).await;
                return;
            }
            Some(Ok(End::StartTls)) => {
                // Mid-handshake there is no way to say goodbye: the connection just closes.
                let upgraded = tokio::select! {
                    biased;
                    _ = closing.cancelled() => return,
                    upgraded = session.upgrade() => upgraded,
                };
                match upgraded {
                    Ok(upgraded) => session = upgraded,
                    Err(e) => return tracing::debug!(error = %e, "TLS upgrade failed"),
                }
            }
            Some(Ok(End::Closed)) => {
                let (_, mut client, _) = session.into_parts();
                client::close(&mut client).await;
                return;
            }
            Some(Err(e)) => return tracing::debug!(error = %e, "session ended before authentication"),
        }
    }
}

/// The protocol's goodbye at shutdown, then the close.
async fn shut_down<S: PreAuth>(session: S) {
    let (ctx, mut client, _) = session.into_parts();
    client::goodbye(&mut client, protocol::shutting_down(ctx.protocol())).await;
}
