//! The bridge's byte relay: both directions of a bridged session, each holding a transfer
//! buffer only while bytes flow through it.
//!
//! A session spends nearly all of its life idle (a mail client parked in IDLE), so a
//! buffer per direction held for the whole session would dominate a node's memory. Here a
//! direction borrows a 64 KiB buffer from a shared [`BufferPool`] when it polls its reader,
//! and gives it back as soon as the read would block with nothing left to write. A read
//! that would block moves no bytes (the `AsyncRead` contract), and TLS streams keep their
//! decrypted-but-unread plaintext inside rustls, so nothing is lost by not holding a
//! buffer between reads. Buffers are allocated uninitialised, so a direction that only
//! ever carries short command lines touches one page of its buffer, not sixteen.
//!
//! Semantics follow `tokio::io::copy_bidirectional`: EOF from one side flushes and shuts
//! down writing on the other while the opposite direction carries on; the relay ends when
//! both directions have ended, or at the first error.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::bytes::BytesMut;
use tokio_util::io::poll_read_buf;

use crate::idle::Activity;

/// One direction's transfer buffer: large enough that a bulk FETCH or message moves in few
/// system calls (8 KiB buffers cost a third of the throughput on loopback).
pub(crate) const BUFFER_SIZE: usize = 64 * 1024;
/// Buffers the shared pool keeps for reuse; more in flight at once are freed on return.
const POOL_KEEPS: usize = 64;

/// Transfer buffers lent to relay directions while their bytes flow.
pub(crate) struct BufferPool {
    free: Mutex<Vec<BytesMut>>,
    keeps: usize,
    lent: std::sync::atomic::AtomicUsize,
}

impl BufferPool {
    pub(crate) fn new(keeps: usize) -> Self {
        Self { free: Mutex::new(Vec::new()), keeps, lent: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// The pool every session of this process shares.
    pub(crate) fn shared() -> &'static BufferPool {
        static POOL: OnceLock<BufferPool> = OnceLock::new();
        POOL.get_or_init(|| BufferPool::new(POOL_KEEPS))
    }

    /// How many buffers are out with directions right now.
    #[cfg(test)]
    pub(crate) fn lent(&self) -> usize {
        self.lent.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self) -> BytesMut {
        self.lent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(|| BytesMut::with_capacity(BUFFER_SIZE))
    }

    fn give(&self, mut buf: BytesMut) {
        self.lent.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keeps && buf.capacity() >= BUFFER_SIZE {
            free.push(buf);
        }
    }
}

/// Bytes relayed so far, readable even when the relay was cut short (kick, idle timeout).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub from_client: u64,
    pub to_client: u64,
    /// Nothing is pending towards the client and what it got last ended a line, so the
    /// node may add a line of its own (a goodbye). [`relay`] starts from the value it finds.
    pub to_client_between_lines: bool,
}

/// Relays between `client` and `backend` until both directions have ended (or one
/// failed), counting into `moved` and stamping `activity` whenever bytes move.
pub(crate) async fn relay<C, B>(
    client: &mut C,
    backend: &mut B,
    pool: &BufferPool,
    activity: &Activity,
    moved: &mut Moved,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Direction::new(pool, false);
    let mut down = Direction::new(pool, moved.to_client_between_lines);
    poll_fn(|cx| {
        let to_backend = up.poll(cx, Pin::new(&mut *client), Pin::new(&mut *backend), activity);
        let to_client = down.poll(cx, Pin::new(&mut *backend), Pin::new(&mut *client), activity);
        (moved.from_client, moved.to_client) = (up.moved, down.moved);
        moved.to_client_between_lines = down.between_lines();
        match (to_backend, to_client) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Where one direction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Open,
    /// The reader reached EOF: flush, then shut the writer down.
    Closing,
    Done,
}

/// One direction of the relay. `buf[start..]` is read but not yet written; `buf` is
/// `None` whenever the direction waits on its reader with nothing to write.
struct Direction<'p> {
    pool: &'p BufferPool,
    flow: Flow,
    buf: Option<BytesMut>,
    start: usize,
    /// Written since the last flush (a TLS writer may hold records until flushed).
    unflushed: bool,
    moved: u64,
    /// The last byte written was a line end.
    ended_line: bool,
}

impl Drop for Direction<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give(buf);
        }
    }
}

impl<'p> Direction<'p> {
    fn new(pool: &'p BufferPool, ended_line: bool) -> Self {
        Self { pool, flow: Flow::Open, buf: None, start: 0, unflushed: false, moved: 0, ended_line }
    }

    /// Everything read was written, and it ended a line.
    fn between_lines(&self) -> bool {
        self.ended_line && self.buf.as_ref().is_none_or(|buf| self.start >= buf.len())
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        activity: &Activity,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self.flow {
                Flow::Open => {
                    ready!(self.poll_write_out(cx, writer.as_mut(), activity))?;
                    let mut buf = self.buf.take().unwrap_or_else(|| self.pool.take());
                    buf.clear();
                    self.start = 0;
                    match poll_read_buf(reader.as_mut(), cx, &mut buf) {
                        Poll::Pending => {
                            // Nothing to write and nothing arrived: the buffer goes back
                            // until the reader is ready again.
                            self.pool.give(buf);
                            if self.unflushed {
                                ready!(writer.as_mut().poll_flush(cx))?;
                                self.unflushed = false;
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => {
                            self.pool.give(buf);
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(0)) => {
                            self.pool.give(buf);
                            self.flow = Flow::Closing;
                        }
                        Poll::Ready(Ok(_)) => {
                            activity.touch();
                            self.buf = Some(buf);
                        }
                    }
                }
                Flow::Closing => {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    ready!(writer.as_mut().poll_shutdown(cx))?;
                    self.flow = Flow::Done;
                }
                Flow::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Writes whatever was read and not yet written; ready once nothing is pending.
    fn poll_write_out<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
        activity: &Activity,
    ) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + ?Sized,
    {
        let Some(buf) = &self.buf else {
            return Poll::Ready(Ok(()));
        };
        while self.start < buf.len() {
            let n = ready!(writer.as_mut().poll_write(cx, &buf[self.start..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.start += n;
            self.ended_line = buf.get(self.start - 1) == Some(&b'\n');
            self.moved += n as u64;
            self.unflushed = true;
            activity.touch();
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
