//! Protocol dispatch: the only `match` on the listener's protocol.

pub(crate) mod imap;
pub(crate) mod lmtp;
pub(crate) mod managesieve;
pub(crate) mod pop3;
pub(crate) mod submission;
#[cfg(test)]
pub(crate) mod testing;

use crate::config::Protocol;
use crate::session::SessionCtx;
use crate::tls::MaybeTls;

/// Serves one client connection with the listener's protocol.
pub(crate) async fn serve(ctx: SessionCtx, stream: MaybeTls) {
    match ctx.protocol() {
        Protocol::Imap => imap::serve(ctx, stream).await,
        Protocol::Pop3 => pop3::serve(ctx, stream).await,
        Protocol::Managesieve => managesieve::serve(ctx, stream).await,
        Protocol::Submission => submission::serve(ctx, stream).await,
        Protocol::Smtp => lmtp::serve(ctx, stream, lmtp::Flavor::Smtp).await,
        Protocol::Lmtp => lmtp::serve(ctx, stream, lmtp::Flavor::Lmtp).await,
        // Config validation refuses listeners for protocols this build does not serve.
        other => tracing::error!(protocol = other.as_str(), "protocol not available in this build"),
    }
}

/// The protocol's "too busy, try later" reply for a connection past the limit.
pub(crate) fn busy(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Imap => b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
        Protocol::Pop3 => b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
        Protocol::Managesieve => b"BYE (TRYLATER) \"Too many connections, try again later\"\r\n",
        Protocol::Submission | Protocol::Smtp | Protocol::Lmtp => {
            b"421 4.3.2 Too many connections, try again later\r\n"
        }
        Protocol::Http => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    }
}

/// The protocol's goodbye to a client the node closes because it shuts down: a temporary
/// condition, so clients reconnect (to another node) rather than report an error.
pub(crate) fn shutting_down(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Imap => b"* BYE [UNAVAILABLE] Server shutting down, try again later\r\n",
        Protocol::Pop3 => b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n",
        Protocol::Managesieve => b"BYE (TRYLATER) \"Server shutting down, try again later\"\r\n",
        Protocol::Submission | Protocol::Smtp | Protocol::Lmtp => {
            b"421 4.3.2 Service shutting down, closing connection\r\n"
        }
        Protocol::Http => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    }
}
