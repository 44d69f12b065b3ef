//! SMTP on port 25 and LMTP (RFC 5321, 2033), routed by recipient: the proxy answers the
//! greeting, EHLO/LHLO and MAIL itself; each RCPT is routed and the first recipient's
//! destination becomes the transaction's (a recipient of another one gets a 4xx so the
//! sender retries it alone); the message is streamed there and the replies relayed.
//! STARTTLS (RFC 3207) upgrades the client leg in place: confidentiality only, as these
//! listeners take no credentials.

mod delivery;
mod limits;
mod message;

use tokio::time::Instant;

use crate::client;
use crate::codec::smtp::{self, Command, CommandParser, Hello};
use crate::config::TlsMode;
use crate::error::{Error, Result};
use crate::route::ResolveBudget;
use crate::session::{Route, SessionCtx};
use crate::tls::MaybeTls;
use delivery::{Delivery, Opened};

/// SMTP and LMTP differ in the greeting command and in LMTP's reply per recipient after
/// the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Smtp,
    Lmtp,
}

impl Flavor {
    fn hello(self) -> &'static str {
        match self {
            Flavor::Smtp => "EHLO",
            Flavor::Lmtp => "LHLO",
        }
    }
}

const ANOTHER_SERVER: &[u8] = b"451 4.4.1 Recipient belongs to another server; try again in a separate transaction\r\n";
const UNROUTABLE: &[u8] = b"451 4.4.1 Recipient's server temporarily unavailable, try again later\r\n";
/// RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction.
const TOO_MANY_RECIPIENTS: &[u8] = b"452 4.5.3 Too many recipients\r\n";
/// The session's `max_resolves` is spent: a sender retries later, in a new session.
const TOO_MANY_LOOKUPS: &[u8] = b"451 4.7.1 Too many new recipients in this session, try again later\r\n";
/// 421 tells the client the proxy closes the connection, which it then does.
const UNAVAILABLE: &[u8] = b"421 4.3.0 Backend temporarily unavailable, try again later\r\n";
/// One client read of commands.
const READ_CHUNK: usize = 8 * 1024;
/// One client read of message data: the message passes through in pieces of at most this
/// size (8 KiB pieces cost a third of the throughput).
const MESSAGE_CHUNK: usize = 64 * 1024;

pub(crate) async fn serve(ctx: SessionCtx, stream: MaybeTls, flavor: Flavor) {
    let started = Instant::now();
    let session = Session {
        parser: parser(&ctx),
        deadline: ctx.accepted + ctx.listener.session_timeout(),
        resolves: ResolveBudget::new(ctx.listener.resolve_limit()),
        ctx,
        client: stream,
        flavor,
        greeted: false,
        tx: Transaction::Idle,
        recipients: 0,
        bad: 0,
        junk: 0,
        messages: 0,
        bytes: 0,
    };
    let (ctx, messages, bytes) = converse(session).await;
    ctx.node.sessions.add_bytes(bytes, 0);
    tracing::info!(
        protocol = %ctx.protocol(),
        messages,
        bytes_from_client = bytes,
        duration_ms = started.elapsed().as_millis() as u64,
        "session closed"
    );
}

/// Runs the conversation through any STARTTLS; returns what the closing log needs
/// (messages relayed, message bytes received). When the node closes its sessions (the
/// shutdown grace period is over) whatever the session waits for is dropped, an open
/// transaction with it (its backend sees the connection close, not a message), and the
/// client gets `421`.
async fn converse(mut session: Session) -> (SessionCtx, u64, u64) {
    let closing = session.ctx.node.kill_sessions.clone();
    loop {
        let ran = tokio::select! {
            biased;
            _ = closing.cancelled() => None,
            ran = session.run() => Some(ran),
        };
        match ran {
            None => return session.shut_down().await,
            Some(Ok(End::StartTls)) => {
                let (ctx, messages, bytes) = (session.ctx.clone(), session.messages, session.bytes);
                let upgraded = tokio::select! {
                    biased;
                    _ = closing.cancelled() => return (ctx, messages, bytes),
                    upgraded = session.upgrade() => upgraded,
                };
                match upgraded {
                    Ok(upgraded) => session = upgraded,
                    Err(e) => {
                        tracing::debug!(error = %e, "STARTTLS failed");
                        return (ctx, messages, bytes);
                    }
                }
            }
            Some(Ok(End::Closed)) => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "session ended");
                break;
            }
        }
    }
    session.end_transaction().await;
    let (ctx, messages, bytes) = (session.ctx.clone(), session.messages, session.bytes);
    session.close().await;
    (ctx, messages, bytes)
}

fn parser(ctx: &SessionCtx) -> CommandParser {
    CommandParser::new(ctx.listener.max_line_length)
}

/// One client. `client` is the only stream field and every read goes through
/// [`Session::fill`], so STARTTLS swaps the stream in one place.
struct Session {
    ctx: SessionCtx,
    client: MaybeTls,
    parser: CommandParser,
    flavor: Flavor,
    greeted: bool,
    tx: Transaction,
    /// The session's end (`session_timeout` after accept), however busy the client is.
    deadline: Instant,
    /// RCPT commands in the current transaction, whatever their answers.
    recipients: u32,
    /// Lookups of recipients not in the route cache left to this session.
    resolves: ResolveBudget,
    bad: u32,
    /// Commands without progress since the session began or its last delivered message.
    junk: u32,
    messages: u64,
    /// Message bytes received from the client.
    bytes: u64,
}

enum Transaction {
    Idle,
    /// MAIL accepted by the proxy (the line to replay); no backend yet.
    Mail {
        mail: String,
    },
    /// Recipients go to this backend; `accepted` counts the ones it took.
    Open {
        mail: String,
        delivery: Delivery,
        accepted: usize,
    },
}

/// Whether the session goes on after a command.
enum Next {
    Continue,
    /// The client was told to go ahead with TLS.
    StartTls,
    Close,
}

/// How a stretch of the conversation ended.
enum End {
    StartTls,
    Closed,
}

impl Session {
    async fn run(&mut self) -> Result<End> {
        // RFC 3207 §4.2: after STARTTLS the client starts over with EHLO; no new greeting.
        if !self.client.is_tls() || self.ctx.listener.tls == TlsMode::Implicit {
            let kind = if self.flavor == Flavor::Lmtp { "LMTP" } else { "ESMTP" };
            self.send(format!("220 {} {kind} Switchyard\r\n", self.ctx.node.id).as_bytes()).await?;
        }
        loop {
            let Some(command) = self.next_command().await? else {
                return Ok(End::Closed);
            };
            if self.over_junk_limit(&command) {
                self.send(limits::TOO_MUCH_JUNK).await?;
                return Ok(End::Closed);
            }
            let next = match &command {
                Command::Hello { verb, .. } => self.hello(*verb).await?,
                Command::Mail { .. } => self.mail(&command).await?,
                Command::Rcpt { to, .. } => self.rcpt(&to.mailbox, &command).await?,
                Command::Data => self.data().await?,
                Command::Rset => {
                    self.end_transaction().await;
                    self.answer(b"250 2.0.0 Ok\r\n").await?
                }
                Command::Noop => self.answer(b"250 2.0.0 Ok\r\n").await?,
                Command::Quit => {
                    self.send(b"221 2.0.0 Bye\r\n").await?;
                    Next::Close
                }
                Command::StartTls => self.starttls().await?,
                Command::Vrfy => self.answer(b"252 2.5.2 Cannot VRFY user; try RCPT\r\n").await?,
                Command::Help => self.answer(b"214 2.0.0 See RFC 5321 and RFC 2033\r\n").await?,
                Command::Auth { .. } | Command::Unknown(_) => {
                    self.answer(b"502 5.5.2 Command not recognized\r\n").await?
                }
            };
            match next {
                Next::Continue => {}
                Next::StartTls => return Ok(End::StartTls),
                Next::Close => return Ok(End::Closed),
            }
        }
    }

    /// Completes STARTTLS: ends any transaction, then the handshake, a fresh parser and no
    /// greeting (RFC 3207 §4.2: the server forgets what the client said before), so
    /// nothing pipelined in plaintext after the command survives into the encrypted session.
    async fn upgrade(mut self) -> Result<Session> {
        self.end_transaction().await;
        let deadline = self.step_deadline();
        let client = self.ctx.accept_tls(self.client, deadline).await?;
        Ok(Session { client, parser: parser(&self.ctx), greeted: false, ..self })
    }

    /// Ends a connection the proxy closes: over TLS with a close_notify first (RFC 8446
    /// §6.1), without which a client cannot tell the end from a truncation.
    async fn close(mut self) {
        client::close(&mut self.client).await;
    }

    /// At shutdown: the open transaction dropped, `421` and the close.
    async fn shut_down(mut self) -> (SessionCtx, u64, u64) {
        // Dropped rather than ended with QUIT: its backend must not wait on a courtesy.
        self.tx = Transaction::Idle;
        client::goodbye(&mut self.client, crate::protocol::shutting_down(self.ctx.protocol())).await;
        (self.ctx, self.messages, self.bytes)
    }

    async fn hello(&mut self, verb: Hello) -> Result<Next> {
        let fits = (verb == Hello::Lhlo) == (self.flavor == Flavor::Lmtp);
        if !fits {
            return self.answer(format!("500 5.5.1 Use {}\r\n", self.flavor.hello()).as_bytes()).await;
        }
        // RFC 5321 §4.1.4: a new greeting ends any transaction in progress.
        self.end_transaction().await;
        self.greeted = true;
        let name = self.ctx.node.id.clone();
        if verb == Hello::Helo {
            return self.answer(format!("250 {name}\r\n").as_bytes()).await;
        }
        // PIPELINING holds (and LMTP requires it): commands are answered strictly in order.
        let mut lines = vec![name.as_str(), "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"];
        if self.ctx.starttls_offered(&self.client) {
            lines.push("STARTTLS");
        }
        self.answer(&smtp::format_reply(250, &lines)).await
    }

    async fn starttls(&mut self) -> Result<Next> {
        if self.ctx.starttls_offered(&self.client) {
            self.send(b"220 2.0.0 Ready to start TLS\r\n").await?;
            return Ok(Next::StartTls);
        }
        match self.client.is_tls() {
            true => self.answer(b"503 5.5.1 TLS already active\r\n").await,
            false => self.answer(b"502 5.5.1 STARTTLS not offered\r\n").await,
        }
    }

    async fn mail(&mut self, command: &Command) -> Result<Next> {
        if !self.greeted {
            return self.answer(format!("503 5.5.1 Send {} first\r\n", self.flavor.hello()).as_bytes()).await;
        }
        if !matches!(self.tx, Transaction::Idle) {
            return self.answer(b"503 5.5.1 Nested MAIL command\r\n").await;
        }
        let mail = command.replay().unwrap_or_default();
        self.tx = Transaction::Mail { mail };
        self.recipients = 0;
        self.answer(b"250 2.1.0 Ok\r\n").await
    }

    /// Routes one recipient and, if it shares the transaction's destination (or opens
    /// the transaction), hands it to that backend and relays the backend's answer.
    async fn rcpt(&mut self, mailbox: &str, command: &Command) -> Result<Next> {
        let mail = match &self.tx {
            Transaction::Idle => return self.answer(b"503 5.5.1 Need MAIL command\r\n").await,
            Transaction::Mail { mail } | Transaction::Open { mail, .. } => mail.clone(),
        };
        if self.recipients >= self.ctx.listener.recipient_limit() {
            return self.answer(TOO_MANY_RECIPIENTS).await;
        }
        self.recipients += 1;
        let route = match self.route(mailbox).await {
            Ok(Some(route)) => route,
            Ok(None) => return self.answer(TOO_MANY_LOOKUPS).await,
            Err(Error::Client(why)) => {
                tracing::debug!(reason = %why, "recipient refused");
                return self.answer(b"550 5.1.3 Bad recipient address syntax\r\n").await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "recipient cannot be routed now");
                return self.answer(UNROUTABLE).await;
            }
        };
        let (mut delivery, accepted) = match std::mem::replace(&mut self.tx, Transaction::Idle) {
            Transaction::Open { delivery, accepted, .. } if delivery.destination() == route.destination.id => {
                (delivery, accepted)
            }
            Transaction::Open { mail, delivery, accepted } if accepted > 0 => {
                self.tx = Transaction::Open { mail, delivery, accepted };
                return self.answer(ANOTHER_SERVER).await;
            }
            other => {
                // Nothing accepted yet, so the transaction may still move to this
                // recipient's destination.
                if let Transaction::Open { delivery, .. } = other {
                    delivery.quit().await;
                }
                match self.open(&route, &mail).await? {
                    Some(delivery) => (delivery, 0),
                    None => return Ok(Next::Continue),
                }
            }
        };
        let reply = match delivery.command(&command.replay().unwrap_or_default()).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(destination = delivery.destination(), error = %e, "backend failed during RCPT");
                delivery.quit().await;
                self.tx = Transaction::Mail { mail };
                // Recipients it had accepted are lost with it: only a retry of the whole
                // transaction delivers them.
                return self.close_or(accepted > 0, UNROUTABLE).await;
            }
        };
        let accepted = accepted + usize::from(reply.is_positive());
        self.send(&reply.to_bytes()).await?;
        self.tx = Transaction::Open { mail, delivery, accepted };
        Ok(if reply.code == 421 { Next::Close } else { Next::Continue })
    }

    /// Starts the transaction at `route`; `None` once the client has its answer.
    async fn open(&mut self, route: &Route, mail: &str) -> Result<Option<Delivery>> {
        self.tx = Transaction::Mail { mail: mail.to_owned() };
        let hello = format!("{} {}", self.flavor.hello(), self.ctx.node.id);
        match Delivery::open(&self.ctx, route, &hello, mail).await {
            Ok(Opened::Ready(delivery)) => Ok(Some(delivery)),
            Ok(Opened::Refused(reply)) => {
                self.send(&reply.to_bytes()).await?;
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(destination = %route.destination.id, error = %e, "backend unavailable");
                self.send(UNROUTABLE).await?;
                Ok(None)
            }
        }
    }

    /// A recipient goes only where `ctx` positively routes it (or to the listener's fixed
    /// pass-through): never to the default destination because a lookup failed. `None`
    /// once the session's lookups are spent and the recipient is not cached.
    async fn route(&self, mailbox: &str) -> Result<Option<Route>> {
        match &self.ctx.listener.pass_through {
            Some(destination) => self.ctx.route_fixed(destination).map(Some),
            None => {
                let route = self.ctx.route_delivery_within(mailbox, &self.resolves).await?;
                if route.is_none() && self.resolves.refused() == 1 {
                    // Once per session: a sender that hits this is spraying addresses or
                    // should spread its recipients over sessions.
                    tracing::info!(
                        limit = self.ctx.listener.resolve_limit(),
                        "recipient lookups of this session spent"
                    );
                }
                Ok(route)
            }
        }
    }

    /// Ends the open transaction, if any, at its backend.
    async fn end_transaction(&mut self) {
        if let Transaction::Open { delivery, .. } = std::mem::replace(&mut self.tx, Transaction::Idle) {
            delivery.quit().await;
        }
    }

    /// `reply` when the session can go on, else 421 and close.
    async fn close_or(&mut self, close: bool, reply: &[u8]) -> Result<Next> {
        if close {
            self.send(UNAVAILABLE).await?;
            return Ok(Next::Close);
        }
        self.answer(reply).await
    }

    async fn answer(&mut self, reply: &[u8]) -> Result<Next> {
        self.send(reply).await?;
        Ok(Next::Continue)
    }
}

#[cfg(test)]
mod tests;
