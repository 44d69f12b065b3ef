//! SMTP submission on the client leg (RFC 6409, 4954 AUTH, 3207 STARTTLS): the proxy's own
//! greeting and pre-auth commands, AUTH with `334` challenges, then the credential replayed
//! to the backend as one AUTH after the proxy's own EHLO, the verdict relayed as is and the
//! session bridged (the backend already saw EHLO, so the client's MAIL FROM is valid there).
//! The backend's side, XCLIENT included, is in [`backend`].

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tracing::Instrument;

use crate::backend::Verdict;
use crate::client::{ClientConn, Grammar, LoginOutcome, Parsed, Replay, Replies, Turn};
use crate::codec::mechanism::Mechanism;
use crate::codec::smtp::{self, Command, CommandParser, Hello};
use crate::codec::CodecError;
use crate::config::{ListenerConfig, TlsMode};
use crate::error::Result;
use crate::identity::Identity;
use crate::preauth::{self, End, PreAuth};
use crate::session::SessionCtx;
use crate::tls::MaybeTls;
use backend::Submission;

mod backend;

/// Serves one submission client: pre-auth conversation (through STARTTLS), then the
/// bridge to its backend.
pub(crate) async fn serve(ctx: SessionCtx, stream: MaybeTls) {
    let identity = Identity::of(&ctx);
    let span = identity.span();
    let conn = ClientConn::new(&ctx, stream);
    preauth::converse(Session { ctx, conn, identity, greeted: false }).instrument(span).await
}

/// Submission's command lines and framing before authentication; every login's answers.
struct SubmissionClient;

impl Grammar for SubmissionClient {
    type Parser = CommandParser;
    type Command = Command;
    const TIMEOUT: &'static [u8] = b"421 4.4.2 Timeout before authentication, closing connection\r\n";
    const TOO_MANY_INVALID: &'static [u8] = b"421 4.7.0 Too many errors, closing connection\r\n";
    const ANSWER_LAST_INVALID: bool = true;
    const TOO_MANY_FAILURES: Option<&'static [u8]> = Some(b"421 4.7.0 Too many authentication failures\r\n");

    fn parser(listener: &ListenerConfig) -> CommandParser {
        CommandParser::new(listener.max_line_length)
    }

    fn push(parser: &mut CommandParser, bytes: &[u8]) {
        parser.push(bytes);
    }

    fn next_command(parser: &mut CommandParser) -> Parsed<Command> {
        match parser.next_command() {
            Ok(Some(command)) => Parsed::Command(command),
            Ok(None) => Parsed::Incomplete,
            Err(e) => Parsed::Invalid(smtp::syntax_reply(&e)),
        }
    }

    fn next_response(parser: &mut CommandParser) -> Result<Option<Vec<u8>>, CodecError> {
        parser.next_line()
    }

    fn take_remaining(parser: &mut CommandParser) -> Vec<u8> {
        parser.take_remaining()
    }

    fn challenge(challenge: &[u8]) -> Vec<u8> {
        format!("334 {}\r\n", STANDARD.encode(challenge)).into_bytes()
    }
}

/// The backend's reply is relayed as is.
impl Replies for SubmissionClient {
    fn refused(&self) -> Vec<u8> {
        b"535 5.7.8 Authentication credentials invalid\r\n".to_vec()
    }

    /// RFC 4954 §6's temporary authentication failure: the session stays open for a retry.
    fn unavailable(&self) -> Vec<u8> {
        b"454 4.7.0 Backend temporarily unavailable, try again later\r\n".to_vec()
    }

    fn cancelled(&self) -> Vec<u8> {
        b"501 5.7.0 Authentication cancelled\r\n".to_vec()
    }

    fn invalid(&self, e: &CodecError) -> Vec<u8> {
        format!("501 5.5.2 Invalid SASL response: {e}\r\n").into_bytes()
    }
}

/// One client before authentication.
struct Session {
    ctx: SessionCtx,
    conn: ClientConn<SubmissionClient>,
    /// Who the backend is told the client is.
    identity: Identity,
    /// EHLO or HELO seen: RFC 4954 §4 allows AUTH only after it.
    greeted: bool,
}

impl PreAuth for Session {
    /// The pre-auth conversation; ends authenticated, asking for TLS, or closed.
    async fn run(&mut self) -> Result<End> {
        // RFC 3207 §4.2: after STARTTLS the client starts over with EHLO; no new greeting.
        if !self.conn.is_tls() || self.ctx.listener.tls == TlsMode::Implicit {
            let greeting = format!("220 {} ESMTP Switchyard\r\n", self.ctx.node.id);
            self.conn.send(greeting.as_bytes()).await?;
        }
        loop {
            let Some(command) = self.conn.next_command().await? else {
                return Ok(End::Closed);
            };
            let turn = match command {
                Command::Hello { verb: Hello::Ehlo, .. } => {
                    self.greeted = true;
                    let reply = self.ehlo_reply();
                    self.conn.answer(&reply).await?
                }
                Command::Hello { verb: Hello::Helo, .. } => {
                    self.greeted = true;
                    self.conn.answer(format!("250 {}\r\n", self.ctx.node.id).as_bytes()).await?
                }
                Command::Noop | Command::Rset => self.conn.answer(b"250 2.0.0 Ok\r\n").await?,
                Command::Quit => {
                    self.conn.send(b"221 2.0.0 Bye\r\n").await?;
                    return Ok(End::Closed);
                }
                Command::StartTls if self.ctx.starttls_offered(self.conn.stream()) => {
                    self.conn.send(b"220 2.0.0 Ready to start TLS\r\n").await?;
                    return Ok(End::StartTls);
                }
                Command::StartTls if self.conn.is_tls() => {
                    self.conn.answer(b"503 5.5.1 TLS already active\r\n").await?
                }
                Command::StartTls => self.conn.answer(b"502 5.5.1 STARTTLS not offered\r\n").await?,
                Command::Auth { mechanism, initial } => self.auth(&mechanism, initial).await?,
                Command::Mail { .. } | Command::Rcpt { .. } | Command::Data => {
                    self.conn.answer(b"530 5.7.0 Authentication required\r\n").await?
                }
                Command::Vrfy => self.conn.answer(b"252 2.5.2 Cannot VRFY user\r\n").await?,
                Command::Help => self.conn.answer(b"214 2.0.0 See RFC 6409\r\n").await?,
                Command::Hello { verb: Hello::Lhlo, .. } | Command::Unknown(_) => {
                    self.conn.answer(b"502 5.5.2 Command not recognized\r\n").await?
                }
            };
            if let Some(end) = self.conn.conclude(turn).await? {
                return Ok(end);
            }
        }
    }

    /// Completes STARTTLS; the EHLO is forgotten too (RFC 3207 §4.2: the server forgets
    /// what the client said before).
    async fn upgrade(self) -> Result<Session> {
        let conn = self.conn.upgrade(&self.ctx).await?;
        Ok(Session { conn, greeted: false, ..self })
    }

    fn ctx(&self) -> &SessionCtx {
        &self.ctx
    }

    fn into_parts(self) -> (SessionCtx, MaybeTls, Vec<u8>) {
        let (client, remaining) = self.conn.into_parts();
        (self.ctx, client, remaining)
    }
}

impl Session {
    /// PIPELINING holds: commands are answered strictly in order from the buffer.
    fn ehlo_reply(&self) -> Vec<u8> {
        let auth = format!("AUTH {}", Mechanism::advertised());
        let mut lines = vec![self.ctx.node.id.as_str(), "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"];
        if self.ctx.starttls_offered(self.conn.stream()) {
            lines.push("STARTTLS");
        }
        if self.conn.credentials_allowed() {
            lines.push(&auth);
        }
        smtp::format_reply(250, &lines)
    }

    async fn auth(&mut self, mechanism: &str, initial: Option<Vec<u8>>) -> Result<Turn> {
        if !self.greeted {
            return self.conn.answer(b"503 5.5.1 Send EHLO first\r\n").await;
        }
        if !self.conn.credentials_allowed() {
            let refusal = b"538 5.7.11 Encryption required for requested authentication mechanism\r\n";
            return self.conn.answer(refusal).await;
        }
        let Some(mechanism) = Mechanism::from_name(mechanism) else {
            return self.conn.answer(b"504 5.5.4 Unrecognized authentication type\r\n").await;
        };
        let mut dialect = Submission::new(self.ctx.node.id.clone());
        let login = Replay { ctx: &self.ctx, dialect: &mut dialect, identity: &self.identity };
        match self.conn.authenticate(login, mechanism, initial.as_deref(), &SubmissionClient).await? {
            // A backend closing with 421 takes the client session with it.
            Turn::Login(LoginOutcome::Rejected(verdict)) if closing(&verdict) => Ok(Turn::Closed),
            turn => Ok(turn),
        }
    }
}

/// Whether the backend's verdict says it closes the connection.
fn closing(verdict: &Verdict) -> bool {
    verdict.lines.first().is_some_and(|l| l.starts_with(b"421"))
}

#[cfg(test)]
mod tests;
