//! The backend leg of one SMTP/LMTP transaction: set up like a login's
//! ([`SessionCtx::establish`] with the SMTP family's dialect, [`Smtp`]: connect through the
//! breaker, greeting and LHLO/EHLO, on a `starttls` endpoint STARTTLS and the hello again,
//! on an `xclient` one the client's identity), then MAIL, RCPT, the message and the
//! replies. A `starttls` endpoint that cannot be upgraded (no STARTTLS offered, a refusal,
//! a certificate that does not verify) is a failure like a dead backend: nothing of the
//! transaction ever crosses that leg in clear.

use std::time::Duration;

use crate::tls::MaybeTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use crate::backend::smtp::Smtp;
use crate::codec::smtp::{Reply, ReplyParser};
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::session::{Route, SessionCtx};

/// RFC 5321 §4.5.3.2: a client waits 5 minutes for the reply to MAIL, RCPT or DATA…
const REPLY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// …and 10 minutes after the end of the message, while the server delivers it.
const FINAL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The QUIT at the end is a courtesy; a slow backend does not hold the session for it.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The backend's longest acceptable reply line.
const MAX_LINE: usize = 64 * 1024;

/// An open transaction at one destination: MAIL was accepted there. Every error its
/// stream returns is the backend's.
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
    /// Establishes the leg with `hello` (`LHLO name` / `EHLO name`) as the session's
    /// client, and replays `mail`. A set-up leg is the backend working: its breaker permit
    /// succeeds there, whatever MAIL gets.
    pub(super) async fn open(ctx: &SessionCtx, route: &Route, hello: &str, mail: &str) -> Result<Opened> {
        let mut dialect = Smtp::new(hello.to_owned());
        let (leg, permit) = ctx.establish(route, &mut dialect, &Identity::of(ctx)).await?;
        permit.success();
        let (stream, rest) = leg.into_parts();
        let mut replies = ReplyParser::new(MAX_LINE);
        replies.push(&rest);
        let mut delivery = Delivery { destination: route.destination.id.clone(), stream, replies };
        let reply = delivery.command(mail).await?;
        if reply.is_positive() {
            Ok(Opened::Ready(delivery))
        } else {
            delivery.quit().await;
            Ok(Opened::Refused(reply))
        }
    }

    pub(super) fn destination(&self) -> &str {
        &self.destination
    }

    /// Sends one command line and reads its reply.
    pub(super) async fn command(&mut self, line: &str) -> Result<Reply> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply(REPLY_TIMEOUT).await
    }

    /// Writes raw bytes (message data); a backend that stops reading is an error in time.
    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        match timeout(REPLY_TIMEOUT, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::backend(&self.destination, format!("write: {e}"))),
            Err(_) => Err(Error::backend_timeout(&self.destination, "not reading in time")),
        }
    }

    /// A reply after the end of the message (one per accepted recipient in LMTP).
    pub(super) async fn final_reply(&mut self) -> Result<Reply> {
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
            let n = match timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(Error::backend(&self.destination, format!("read: {e}"))),
                Err(_) => return Err(Error::backend_timeout(&self.destination, "no reply in time")),
            };
            if n == 0 {
                return Err(Error::backend(&self.destination, "closed the connection"));
            }
            self.replies.push(&buf[..n]);
        }
    }

    /// Ends the backend session; its answer does not matter any more.
    pub(super) async fn quit(mut self) {
        let _ = timeout(QUIT_TIMEOUT, async {
            self.stream.write_all(b"QUIT\r\n").await?;
            self.stream.shutdown().await
        })
        .await;
    }
}
