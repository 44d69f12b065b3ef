//! The backend leg of one SMTP/LMTP transaction: connect through the breaker, greeting and
//! LHLO/EHLO, on a `starttls` endpoint STARTTLS and the hello again, on an `xclient` one
//! the client's identity (the part the breaker judges), then MAIL, RCPT, the message and
//! the replies. A `starttls` endpoint that cannot be upgraded (no STARTTLS offered, a
//! refusal, a certificate that does not verify) is a failure like a dead backend: nothing
//! of the transaction ever crosses that leg in clear.
//!
//! The steps mirror [`crate::backend::Dialect`] for logins, over SMTP replies instead of
//! lines; the transport (breaker, PROXY header, implicit TLS, certificate checks) is the
//! logins' own ([`SessionCtx::connect`], [`SessionCtx::backend_tls`]).

use std::time::Duration;

use crate::tls::MaybeTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use crate::codec::smtp::{Extensions, Reply, ReplyParser};
use crate::config::{Forwarding, TlsMode};
use crate::error::{Error, Result};
use crate::identity::{wire, Identity};
use crate::pipeline::{BackendTlsError, Route, SessionCtx};

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

/// What setting one leg up needs: the session (its client is the one forwarded), the
/// route, the `LHLO name` / `EHLO name` line and the wait for each reply.
struct Setup<'a> {
    ctx: &'a SessionCtx,
    route: &'a Route,
    hello: &'a str,
    wait: Duration,
}

impl Delivery {
    /// Connects, sets the leg up with `hello` (`LHLO name` / `EHLO name`; see
    /// [`Delivery::establish`]) and replays `mail`.
    pub async fn open(ctx: &SessionCtx, route: &Route, hello: &str, mail: &str) -> Result<Opened> {
        let (stream, permit) = ctx.connect(route).await?;
        let wait = ctx.node.settings().map_or(REPLY_TIMEOUT, |s| s.breaker.connect_timeout);
        let id = &route.destination.id;
        let delivery = Delivery { destination: id.clone(), stream, replies: ReplyParser::new(MAX_LINE) };
        let mut delivery = match delivery.establish(&Setup { ctx, route, hello, wait }).await {
            Ok(delivery) => {
                permit.success();
                delivery
            }
            // The node's own TLS set-up (its client certificate): not the backend's fault.
            Err(BackendTlsError::Node(e)) => return Err(e),
            Err(BackendTlsError::Backend(e)) => {
                permit.failure();
                return Err(Error::backend(id, e));
            }
        };
        let reply = delivery.command(mail).await?;
        if reply.is_positive() {
            Ok(Opened::Ready(delivery))
        } else {
            delivery.quit().await;
            Ok(Opened::Refused(reply))
        }
    }

    /// The greeting and the hello, then on a `starttls` endpoint the upgrade and the hello
    /// again, then on an `xclient` endpoint the client's identity.
    async fn establish(mut self, s: &Setup<'_>) -> Result<Self, BackendTlsError> {
        let mut offered = self.greet(s).await.map_err(backend)?;
        if s.route.endpoint.tls == TlsMode::Starttls {
            self = self.starttls(s, &offered).await?;
            // RFC 3207 §4.2: what the server said before TLS is void; ask again.
            offered = self.hello(s).await.map_err(backend)?;
        }
        if s.route.endpoint.forwarding == Forwarding::Xclient {
            self.forward_identity(s, &offered).await.map_err(backend)?;
        }
        Ok(self)
    }

    /// The `220` greeting and the hello; returns the hello's reply (what the server offers).
    async fn greet(&mut self, s: &Setup<'_>) -> Result<Reply> {
        let greeting = self.reply(s.wait).await?;
        if greeting.code != 220 {
            return Err(unexpected("greeting", &greeting));
        }
        self.hello(s).await
    }

    async fn hello(&mut self, s: &Setup<'_>) -> Result<Reply> {
        self.send(format!("{}\r\n", s.hello).as_bytes()).await?;
        let reply = self.reply(s.wait).await?;
        if reply.code != 250 {
            return Err(unexpected("hello reply", &reply));
        }
        Ok(reply)
    }

    /// STARTTLS where the hello reply offers it, and the handshake with the destination's
    /// verification. A server that does not offer it is refused rather than asked blindly:
    /// the error then says why.
    async fn starttls(mut self, s: &Setup<'_>, offered: &Reply) -> Result<Self, BackendTlsError> {
        if !Extensions::from_ehlo(offered).starttls {
            return Err(BackendTlsError::Backend("the hello reply offers no STARTTLS".into()));
        }
        self.send(b"STARTTLS\r\n").await.map_err(backend)?;
        let reply = self.reply(s.wait).await.map_err(backend)?;
        if reply.code != 220 {
            return Err(backend(unexpected("STARTTLS reply", &reply)));
        }
        // Anything the server sent after its go-ahead was not protected: refuse it.
        if !self.replies.is_empty() {
            return Err(BackendTlsError::Backend("data after the STARTTLS reply".into()));
        }
        self.stream = s.ctx.backend_tls(s.route, self.stream).await?;
        Ok(self)
    }

    /// XCLIENT with the attributes the hello reply offered. Its success reply is a new
    /// greeting (Postfix, Dovecot): the session starts over, so the hello is sent again. A
    /// server that does not offer or refuses it still gets the message, as a login does.
    async fn forward_identity(&mut self, s: &Setup<'_>, offered: &Reply) -> Result<()> {
        let identity = Identity::of(s.ctx);
        let Some(command) = identity.smtp_xclient(&wire::xclient_attributes(offered)) else {
            declined(
                s.route,
                "the hello reply offers no XCLIENT ADDR (smtpd_authorized_xclient_hosts, login_trusted_networks?)",
            );
            return Ok(());
        };
        tracing::debug!(session = %identity.session, "forwarding the client identity with XCLIENT");
        self.send(command.as_bytes()).await?;
        let reply = self.reply(s.wait).await?;
        match reply.code {
            220 => self.hello(s).await.map(drop),
            421 => Err(unexpected("XCLIENT reply", &reply)),
            _ => {
                declined(s.route, &format!("XCLIENT answered {:?}", reply.excerpt()));
                Ok(())
            }
        }
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

/// The backend could not be set up: a breaker failure.
fn backend(e: Error) -> BackendTlsError {
    BackendTlsError::Backend(e.to_string())
}

/// The delivery goes on; the backend's logs and restrictions see the node's address.
fn declined(route: &Route, why: &str) {
    tracing::warn!(
        destination = %route.destination.id,
        reason = %why,
        "backend did not take the client identity; it sees the node's address"
    );
}

fn timed_out() -> Error {
    Error::Io(std::io::ErrorKind::TimedOut.into())
}

fn unexpected(what: &str, reply: &Reply) -> Error {
    Error::Client(format!("unexpected {what} {:?}", reply.excerpt()))
}
