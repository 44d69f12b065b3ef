//! The backend leg of one SMTP/LMTP transaction: connect through the breaker, greeting and
//! LHLO/EHLO (the part the breaker judges), then MAIL, RCPT, the message and the replies.

use std::time::Duration;

use crate::tls::MaybeTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use crate::codec::smtp::{Reply, ReplyParser};
use crate::error::{Error, Result};
use crate::pipeline::{Route, SessionCtx};

/// RFC 5321 §4.5.3.2: a client waits 5 minutes for the reply to MAIL, RCPT or DATA…
const REPLY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// …and 10 minutes after the end of the message, while the server delivers it.
const FINAL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The QUIT at the end is a courtesy; a slow backend does not hold the session for it.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The backend's longest acceptable reply line.
const MAX_LINE: usize = 64 * 1024;

/// An open transaction at one destination: MAIL was accepted there.
pub(super) struct Delivery {
    destination: String,
    stream: MaybeTls,
    replies: ReplyParser,
}

/// How opening a transaction at the backend went.
pub(super) enum Opened {
    Ready(Delivery),
    /// The backend refused the replayed MAIL; its reply is the recipient's answer.
    Refused(Reply),
}

impl Delivery {
    /// Connects, greets with `hello` (`LHLO name` / `EHLO name`) and replays `mail`.
    pub async fn open(ctx: &SessionCtx, route: &Route, hello: &str, mail: &str) -> Result<Opened> {
        let (stream, permit) = ctx.connect(route).await?;
        let wait = ctx.node.settings().map_or(REPLY_TIMEOUT, |s| s.breaker.connect_timeout);
        let id = &route.destination.id;
        let mut delivery = Delivery { destination: id.clone(), stream, replies: ReplyParser::new(MAX_LINE) };
        match delivery.greet(hello, wait).await {
            Ok(()) => permit.success(),
            Err(e) => {
                permit.failure();
                return Err(Error::backend(id, e));
            }
        }
        let reply = delivery.command(mail).await?;
        if reply.is_positive() {
            Ok(Opened::Ready(delivery))
        } else {
            delivery.quit().await;
            Ok(Opened::Refused(reply))
        }
    }

    async fn greet(&mut self, hello: &str, wait: Duration) -> Result<()> {
        let greeting = self.reply(wait).await?;
        if greeting.code != 220 {
            return Err(unexpected("greeting", &greeting));
        }
        self.send(format!("{hello}\r\n").as_bytes()).await?;
        let reply = self.reply(wait).await?;
        if reply.code != 250 {
            return Err(unexpected("hello reply", &reply));
        }
        Ok(())
    }

    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Sends one command line and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply(REPLY_TIMEOUT).await
    }

    /// Writes raw bytes (message data); a backend that stops reading is an error in time.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        timeout(REPLY_TIMEOUT, self.stream.write_all(bytes)).await.map_err(|_| timed_out())??;
        Ok(())
    }

    /// A reply after the end of the message (one per accepted recipient in LMTP).
    pub async fn final_reply(&mut self) -> Result<Reply> {
        self.reply(FINAL_TIMEOUT).await
    }

    async fn reply(&mut self, wait: Duration) -> Result<Reply> {
        let deadline = Instant::now() + wait;
        loop {
            let parsed = self.replies.next_reply().map_err(|e| Error::backend(&self.destination, e))?;
            if let Some(reply) = parsed {
                return Ok(reply);
            }
            let mut buf = [0u8; 4096];
            let n = timeout_at(deadline, self.stream.read(&mut buf)).await.map_err(|_| timed_out())??;
            if n == 0 {
                return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.replies.push(&buf[..n]);
        }
    }

    /// Ends the backend session; its answer does not matter any more.
    pub async fn quit(mut self) {
        let _ = timeout(QUIT_TIMEOUT, async {
            self.stream.write_all(b"QUIT\r\n").await?;
            self.stream.shutdown().await
        })
        .await;
    }
}

fn timed_out() -> Error {
    Error::Io(std::io::ErrorKind::TimedOut.into())
}

fn unexpected(what: &str, reply: &Reply) -> Error {
    Error::Client(format!("unexpected {what} {:?}", reply.excerpt()))
}
