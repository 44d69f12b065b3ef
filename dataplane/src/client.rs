//! The client leg's time bounds, shared by every protocol: a write waits for the client to
//! read only until a deadline, a read never outlives its deadline even when the client
//! always has bytes waiting, and the last words to a client the node closes get a short
//! wait of their own. The login protocols' client leg before authentication is
//! [`ClientConn`].

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};
use tokio_util::bytes::BufMut;

use crate::error::{Error, Result};

mod conn;

pub(crate) use conn::{ClientConn, Grammar, LoginOutcome, Parsed, Replay, Replies, Turn};

/// How long a goodbye (timeout, limit, shutdown) and the closing handshake after it may
/// wait for the client: a few bytes, which a client that still reads takes at once.
pub(crate) const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// What a bounded read got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    Data(usize),
    /// The client closed its side.
    Closed,
    /// The deadline passed first.
    TimedOut,
}

/// Writes and flushes all of `bytes` before `deadline`. A client that does not read them
/// in time (its receive window stays full) is at fault, and its session ends.
pub(crate) async fn send<S: AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    bytes: &[u8],
    deadline: Instant,
) -> Result<()> {
    let written = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    match timeout_at(deadline, written).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Error::Client("the client did not read its replies in time".into())),
    }
}

/// The deadline for the last words of a session: `deadline`, but at least
/// [`GOODBYE_WAIT`] from now, so a goodbye still reaches a client that reads.
pub(crate) fn at_least_goodbye(deadline: Instant) -> Instant {
    deadline.max(Instant::now() + GOODBYE_WAIT)
}

/// Reads what the client sent next into `buf` before `deadline`. Past the deadline this
/// is `TimedOut` even with bytes waiting: a client that keeps its socket busy (or pipelines
/// ahead) must not outrun its deadline.
pub(crate) async fn read<S, B>(stream: &mut S, buf: &mut B, deadline: Instant) -> Result<Read>
where
    S: AsyncRead + Unpin + ?Sized,
    B: BufMut + Send,
{
    if Instant::now() >= deadline {
        return Ok(Read::TimedOut);
    }
    match timeout_at(deadline, stream.read_buf(buf)).await {
        Ok(Ok(0)) => Ok(Read::Closed),
        Ok(Ok(n)) => Ok(Read::Data(n)),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Ok(Read::TimedOut),
    }
}

/// Sends `goodbye` within [`GOODBYE_WAIT`] and closes the stream; a client that cannot
/// take it is dropped all the same.
pub(crate) async fn goodbye<S: AsyncWrite + Unpin + ?Sized>(stream: &mut S, goodbye: &[u8]) {
    if send(stream, goodbye, Instant::now() + GOODBYE_WAIT).await.is_ok() {
        close(stream).await;
    }
}

/// An orderly close (a TLS client gets its close_notify, RFC 8446 §6.1, and can tell the
/// end from a truncation), given up after [`GOODBYE_WAIT`].
pub(crate) async fn close<S: AsyncWrite + Unpin + ?Sized>(stream: &mut S) {
    let _ = tokio::time::timeout(GOODBYE_WAIT, stream.shutdown()).await;
}

#[cfg(test)]
mod tests;
