//! SMTP submission on the client leg (RFC 6409, 4954 AUTH, 3207 STARTTLS): the proxy's own
//! greeting and pre-auth commands, AUTH with `334` challenges, then the credential replayed
//! to the backend as one AUTH after the proxy's own EHLO, the verdict relayed as is and the
//! session bridged (the backend already saw EHLO, so the client's MAIL FROM is valid there).
//! The backend's side, XCLIENT included, is in [`backend`].

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::{self, Response, SaslChannel, SaslOutcome};
use crate::backend::{BackendConn, Login};
use crate::client::{self, Read};
use crate::codec::mechanism::{Credential, Mechanism};
use crate::codec::smtp::{self, Command, CommandParser, Hello};
use crate::config::TlsMode;
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::pipeline::{Route, SessionCtx};
use crate::preauth::{self, End, PreAuth};
use crate::tls::MaybeTls;
use backend::Submission;

mod backend;

/// Erroneous commands tolerated before the client is disconnected.
const MAX_BAD_COMMANDS: u32 = 10;
/// 421 tells the client the proxy closes the connection, which it then does.
const UNAVAILABLE: &[u8] = b"421 4.3.0 Backend temporarily unavailable, try again later\r\n";
const TIMEOUT: &[u8] = b"421 4.4.2 Timeout before authentication, closing connection\r\n";

/// Serves one submission client: pre-auth conversation (through STARTTLS), then the
/// bridge to its backend.
pub async fn serve(ctx: SessionCtx, stream: MaybeTls) {
    let identity = Identity::of(&ctx);
    let span = identity.span();
    preauth::converse(start(ctx, stream, identity)).instrument(span).await
}

/// The session in its first state, before the greeting.
fn start(ctx: SessionCtx, stream: MaybeTls, identity: Identity) -> Session {
    let deadline = ctx.preauth_deadline();
    Session { parser: parser(&ctx), ctx, client: stream, identity, deadline, greeted: false, failures: 0, bad: 0 }
}

fn parser(ctx: &SessionCtx) -> CommandParser {
    CommandParser::new(ctx.listener.max_line_length)
}

/// One client before authentication. `client` is the only stream field and every read
/// goes through [`Session::fill`], so STARTTLS swaps the stream in one place.
struct Session {
    ctx: SessionCtx,
    client: MaybeTls,
    parser: CommandParser,
    /// Who the backend is told the client is.
    identity: Identity,
    /// The pre-auth budget's end, kept across STARTTLS.
    deadline: Instant,
    /// EHLO or HELO seen: RFC 4954 §4 allows AUTH only after it.
    greeted: bool,
    failures: u32,
    bad: u32,
}

/// What an AUTH command ended in.
enum Outcome {
    Authenticated(Route, BackendConn),
    Rejected,
    /// Answered without an authentication attempt (refusal, cancel, syntax).
    Answered,
    /// The client left, or was told (421) that the proxy closes the connection.
    Closed,
}

impl PreAuth for Session {
    /// The pre-auth conversation; ends authenticated, asking for TLS, or closed.
    async fn run(&mut self) -> Result<End> {
        // RFC 3207 §4.2: after STARTTLS the client starts over with EHLO; no new greeting.
        if !self.client.is_tls() || self.ctx.listener.tls == TlsMode::Implicit {
            let greeting = format!("220 {} ESMTP Switchyard\r\n", self.ctx.node.id);
            self.send(greeting.as_bytes()).await?;
        }
        loop {
            let Some(command) = self.next_command().await? else {
                return Ok(End::Closed);
            };
            let outcome = match command {
                Command::Hello { verb: Hello::Ehlo, .. } => {
                    self.greeted = true;
                    let reply = self.ehlo_reply();
                    self.send(&reply).await?;
                    Outcome::Answered
                }
                Command::Hello { verb: Hello::Helo, .. } => {
                    self.greeted = true;
                    self.send(format!("250 {}\r\n", self.ctx.node.id).as_bytes()).await?;
                    Outcome::Answered
                }
                Command::Noop | Command::Rset => self.answer(b"250 2.0.0 Ok\r\n").await?,
                Command::Quit => {
                    self.send(b"221 2.0.0 Bye\r\n").await?;
                    return Ok(End::Closed);
                }
                Command::StartTls if self.ctx.starttls_offered(&self.client) => {
                    self.send(b"220 2.0.0 Ready to start TLS\r\n").await?;
                    return Ok(End::StartTls);
                }
                Command::StartTls if self.client.is_tls() => self.answer(b"503 5.5.1 TLS already active\r\n").await?,
                Command::StartTls => self.answer(b"502 5.5.1 STARTTLS not offered\r\n").await?,
                Command::Auth { mechanism, initial } => self.auth(&mechanism, initial).await?,
                Command::Mail { .. } | Command::Rcpt { .. } | Command::Data => {
                    self.answer(b"530 5.7.0 Authentication required\r\n").await?
                }
                Command::Vrfy => self.answer(b"252 2.5.2 Cannot VRFY user\r\n").await?,
                Command::Help => self.answer(b"214 2.0.0 See RFC 6409\r\n").await?,
                Command::Hello { verb: Hello::Lhlo, .. } | Command::Unknown(_) => {
                    self.answer(b"502 5.5.2 Command not recognized\r\n").await?
                }
            };
            match outcome {
                Outcome::Authenticated(route, backend) => return Ok(End::Authenticated(route, backend)),
                Outcome::Rejected => {
                    self.failures += 1;
                    if self.failures >= self.ctx.listener.max_auth_attempts {
                        self.send(b"421 4.7.0 Too many authentication failures\r\n").await?;
                        return Ok(End::Closed);
                    }
                }
                Outcome::Answered => {}
                Outcome::Closed => return Ok(End::Closed),
            }
        }
    }

    /// Completes STARTTLS: the handshake, then a fresh parser and no EHLO (RFC 3207 §4.2:
    /// the server forgets what the client said before), so nothing pipelined in plaintext
    /// after the command survives into the encrypted session.
    async fn upgrade(self) -> Result<Session> {
        let client = self.ctx.accept_tls(self.client, self.deadline).await?;
        Ok(Session { client, parser: parser(&self.ctx), greeted: false, ..self })
    }

    fn ctx(&self) -> &SessionCtx {
        &self.ctx
    }

    fn into_parts(mut self) -> (SessionCtx, MaybeTls, Vec<u8>) {
        let remaining = self.parser.take_remaining();
        (self.ctx, self.client, remaining)
    }
}

impl Session {
    fn credentials_allowed(&self) -> bool {
        auth::credentials_allowed(&self.ctx.listener, self.client.is_tls())
    }

    /// PIPELINING holds: commands are answered strictly in order from the buffer.
    fn ehlo_reply(&self) -> Vec<u8> {
        let auth = format!("AUTH {}", Mechanism::advertised());
        let mut lines = vec![self.ctx.node.id.as_str(), "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"];
        if self.ctx.starttls_offered(&self.client) {
            lines.push("STARTTLS");
        }
        if self.credentials_allowed() {
            lines.push(&auth);
        }
        smtp::format_reply(250, &lines)
    }

    async fn auth(&mut self, mechanism: &str, initial: Option<Vec<u8>>) -> Result<Outcome> {
        if !self.greeted {
            return self.answer(b"503 5.5.1 Send EHLO first\r\n").await;
        }
        if !self.credentials_allowed() {
            return self.answer(b"538 5.7.11 Encryption required for requested authentication mechanism\r\n").await;
        }
        let Some(mechanism) = Mechanism::from_name(mechanism) else {
            return self.answer(b"504 5.5.4 Unrecognized authentication type\r\n").await;
        };
        let max_line = self.ctx.listener.max_line_length;
        match auth::exchange(self, mechanism, initial.as_deref(), max_line).await? {
            SaslOutcome::Done(credential) => self.replay(credential).await,
            SaslOutcome::Cancelled => self.answer(b"501 5.7.0 Authentication cancelled\r\n").await,
            SaslOutcome::Invalid(e) => {
                self.send(format!("501 5.5.2 Invalid SASL response: {e}\r\n").as_bytes()).await?;
                Ok(Outcome::Rejected)
            }
            SaslOutcome::Closed => Ok(Outcome::Closed),
        }
    }

    /// Steps 4–6 through the shared pipeline; the backend's reply is relayed as is.
    async fn replay(&mut self, credential: Credential) -> Result<Outcome> {
        let mut dialect = Submission::new(self.ctx.node.id.clone());
        match self.ctx.login(&mut dialect, &credential, &self.identity).await {
            Ok(Login::Accepted { route, backend, verdict }) => {
                self.send(&verdict.to_wire()).await?;
                Ok(Outcome::Authenticated(route, backend))
            }
            Ok(Login::Rejected(verdict)) => {
                self.send(&verdict.to_wire()).await?;
                // A backend closing with 421 takes the client session with it.
                let closing = verdict.lines.first().is_some_and(|l| l.starts_with(b"421"));
                Ok(if closing { Outcome::Closed } else { Outcome::Rejected })
            }
            Err(Error::Client(why)) => {
                tracing::debug!(reason = %why, "login refused");
                self.send(b"535 5.7.8 Authentication credentials invalid\r\n").await?;
                Ok(Outcome::Rejected)
            }
            Err(e) => {
                tracing::warn!(error = %e, "backend unavailable");
                self.send(UNAVAILABLE).await?;
                Ok(Outcome::Closed)
            }
        }
    }

    async fn answer(&mut self, reply: &[u8]) -> Result<Outcome> {
        self.send(reply).await?;
        Ok(Outcome::Answered)
    }

    /// A write the client must take before the pre-auth budget ends (the reply under way
    /// when it ends, such as a late verdict or the timeout's goodbye, still gets a moment).
    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        client::send(&mut self.client, bytes, client::at_least_goodbye(self.deadline)).await
    }

    /// Reads until one complete command; answers syntax errors itself. Past the pre-auth
    /// deadline nothing more is served, however much was pipelined.
    async fn next_command(&mut self) -> Result<Option<Command>> {
        if Instant::now() >= self.deadline {
            self.send(TIMEOUT).await?;
            return Ok(None);
        }
        loop {
            match self.parser.next_command() {
                Ok(Some(command)) => return Ok(Some(command)),
                Ok(None) => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
                Err(e) => {
                    self.bad += 1;
                    self.send(&smtp::syntax_reply(&e)).await?;
                    if self.bad >= MAX_BAD_COMMANDS {
                        self.send(b"421 4.7.0 Too many errors, closing connection\r\n").await?;
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Reads more client bytes before the pre-auth deadline; false when the client left.
    async fn fill(&mut self) -> Result<bool> {
        let mut buf = [0u8; 4096];
        match client::read(&mut self.client, &mut &mut buf[..], self.deadline).await? {
            Read::Data(n) => {
                self.parser.push(&buf[..n]);
                Ok(true)
            }
            Read::Closed => Ok(false),
            Read::TimedOut => {
                self.send(TIMEOUT).await?;
                Ok(false)
            }
        }
    }
}

impl SaslChannel for Session {
    async fn challenge(&mut self, challenge: &[u8]) -> Result<Response> {
        self.send(format!("334 {}\r\n", STANDARD.encode(challenge)).as_bytes()).await?;
        loop {
            if let Some(response) = auth::response(self.parser.next_line()) {
                return Ok(response);
            }
            if !self.fill().await? {
                return Ok(Response::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests;
