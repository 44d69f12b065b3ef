//! POP3 on the client leg (RFC 1939, 2449 CAPA, 5034 AUTH, 3206 response codes): the
//! proxy's own greeting and AUTHORIZATION-state commands, USER/PASS and AUTH, then the
//! credential replayed to the backend as one AUTH and the backend's verdict relayed as is.
//! STLS (RFC 2595) upgrades the client leg in place. A trusted upstream proxy may state the
//! real client with Dovecot's `XCLIENT`. The backend's side is in [`backend`].

use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::{self, Response, SaslChannel, SaslOutcome};
use crate::backend::{BackendConn, Login};
use crate::client::{self, Read};
use crate::codec::line::LineBuffer;
use crate::codec::mechanism::{Credential, Mechanism};
use crate::config::TlsMode;
use crate::error::{Error, Result};
use crate::identity::{self, Identity, Upstream};
use crate::pipeline::{Route, SessionCtx};
use crate::preauth::{self, End, PreAuth};
use crate::tls::MaybeTls;
use backend::Pop3;

mod backend;

/// Erroneous commands tolerated before the client is disconnected.
const MAX_BAD_COMMANDS: u32 = 10;
const UNAVAILABLE: &[u8] = b"-ERR [SYS/TEMP] Backend temporarily unavailable, try again later\r\n";
const TIMEOUT: &[u8] = b"-ERR Pre-authentication timeout\r\n";
/// No RFC 3206 code fits a policy refusal: `[AUTH]` would make clients ask for a new
/// password, and `[SYS/PERM]` is untrue when STLS would cure it.
const CLEARTEXT_REFUSED: &[u8] = b"-ERR Plaintext authentication disallowed on non-secure connection\r\n";

/// Serves one POP3 client: pre-auth conversation (through STLS), then the bridge to its backend.
pub async fn serve(ctx: SessionCtx, stream: MaybeTls) {
    let identity = Identity::of(&ctx);
    let span = identity.span();
    preauth::converse(start(ctx, stream, identity)).instrument(span).await
}

/// The session in its first state, before the greeting.
fn start(ctx: SessionCtx, stream: MaybeTls, identity: Identity) -> Session {
    let deadline = ctx.preauth_deadline();
    Session { lines: lines(&ctx), ctx, client: stream, identity, deadline, user: None, failures: 0, bad: 0 }
}

fn lines(ctx: &SessionCtx) -> LineBuffer {
    LineBuffer::new(ctx.listener.max_line_length)
}

/// One client in the AUTHORIZATION state. `client` is the only stream field and every
/// read goes through [`Session::fill`], so STLS swaps the stream in one place.
struct Session {
    ctx: SessionCtx,
    client: MaybeTls,
    lines: LineBuffer,
    /// Who the backend is told the client is; a trusted upstream's `XCLIENT` may amend it.
    identity: Identity,
    /// The pre-auth budget's end, kept across STLS.
    deadline: Instant,
    /// The name from `USER`, waiting for `PASS`.
    user: Option<String>,
    failures: u32,
    bad: u32,
}

/// What an authentication command ended in.
enum Outcome {
    Authenticated(Route, BackendConn),
    Rejected,
    /// Answered without an authentication attempt (refusal, cancel, syntax).
    Answered,
    Closed,
}

impl PreAuth for Session {
    /// The pre-auth conversation; ends authenticated, asking for TLS, or closed.
    async fn run(&mut self) -> Result<End> {
        // After STLS the client asks CAPA again itself; no second greeting (RFC 2595 §4).
        if !self.client.is_tls() || self.ctx.listener.tls == TlsMode::Implicit {
            // Dovecot's way of telling a trusted proxy that XCLIENT is welcome.
            let offer = if identity::trusted(&self.ctx) { "[XCLIENT] " } else { "" };
            self.send(format!("+OK {offer}Switchyard ready\r\n").as_bytes()).await?;
        }
        loop {
            let Some(line) = self.next_line().await? else {
                return Ok(End::Closed);
            };
            let (keyword, arg) = split_command(&line);
            let outcome = match keyword.as_str() {
                "CAPA" => {
                    let capa = self.capabilities();
                    self.send(capa.as_bytes()).await?;
                    continue;
                }
                "QUIT" => {
                    self.send(b"+OK Switchyard signing off\r\n").await?;
                    return Ok(End::Closed);
                }
                "STLS" if self.ctx.starttls_offered(&self.client) => {
                    self.send(b"+OK Begin TLS negotiation\r\n").await?;
                    return Ok(End::StartTls);
                }
                "STLS" if self.client.is_tls() => {
                    self.answer(b"-ERR Command not permitted when TLS active\r\n").await?
                }
                "STLS" => self.answer(b"-ERR STLS not offered on this connection\r\n").await?,
                "USER" => self.user(arg).await?,
                "PASS" => self.pass(arg).await?,
                "AUTH" => self.auth(arg).await?,
                "XCLIENT" => self.xclient(arg.unwrap_or_default()).await?,
                _ => self.bad(b"-ERR Unknown command or not valid before authentication\r\n").await?,
            };
            match outcome {
                Outcome::Authenticated(route, backend) => return Ok(End::Authenticated(route, backend)),
                Outcome::Rejected => {
                    self.failures += 1;
                    // POP3 has no unsolicited responses: the relayed -ERR was the last word.
                    if self.failures >= self.ctx.listener.max_auth_attempts {
                        return Ok(End::Closed);
                    }
                }
                Outcome::Answered => {}
                Outcome::Closed => return Ok(End::Closed),
            }
        }
    }

    /// Completes STLS: the handshake, then a fresh line buffer and no pending USER, so
    /// nothing the client sent in plaintext after the command survives into the encrypted
    /// session.
    async fn upgrade(self) -> Result<Session> {
        let client = self.ctx.accept_tls(self.client, self.deadline).await?;
        Ok(Session { client, lines: lines(&self.ctx), user: None, ..self })
    }

    fn ctx(&self) -> &SessionCtx {
        &self.ctx
    }

    fn into_parts(mut self) -> (SessionCtx, MaybeTls, Vec<u8>) {
        let remaining = self.lines.take_remaining();
        (self.ctx, self.client, remaining)
    }
}

impl Session {
    fn plaintext_allowed(&self) -> bool {
        auth::credentials_allowed(&self.ctx.listener, self.client.is_tls())
    }

    fn capabilities(&self) -> String {
        let mut capa = String::from("+OK Capability list follows\r\nCAPA\r\n");
        if self.plaintext_allowed() {
            capa.push_str(&format!("USER\r\nSASL {}\r\n", Mechanism::advertised()));
        }
        if self.ctx.starttls_offered(&self.client) {
            capa.push_str("STLS\r\n");
        }
        capa.push_str("RESP-CODES\r\nAUTH-RESP-CODE\r\nIMPLEMENTATION Switchyard\r\n.\r\n");
        capa
    }

    /// A write the client must take before the pre-auth budget ends (the reply under way
    /// when it ends, such as a late verdict or the timeout's goodbye, still gets a moment).
    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        client::send(&mut self.client, bytes, client::at_least_goodbye(self.deadline)).await
    }

    /// Answers an erroneous command; past the limit the answer also closes the session.
    async fn bad(&mut self, reply: &[u8]) -> Result<Outcome> {
        self.bad += 1;
        if self.bad >= MAX_BAD_COMMANDS {
            self.send(b"-ERR Too many invalid commands\r\n").await?;
            return Ok(Outcome::Closed);
        }
        self.send(reply).await?;
        Ok(Outcome::Answered)
    }

    /// The next command line; over-long lines are answered here. Past the pre-auth
    /// deadline nothing more is served, however much was pipelined.
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        if Instant::now() >= self.deadline {
            self.send(TIMEOUT).await?;
            return Ok(None);
        }
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
                Err(e) => {
                    if let Outcome::Closed = self.bad(format!("-ERR {e}\r\n").as_bytes()).await? {
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
                self.lines.push(&buf[..n]);
                Ok(true)
            }
            Read::Closed => Ok(false),
            Read::TimedOut => {
                self.send(TIMEOUT).await?;
                Ok(false)
            }
        }
    }

    async fn answer(&mut self, reply: &[u8]) -> Result<Outcome> {
        self.send(reply).await?;
        Ok(Outcome::Answered)
    }

    async fn user(&mut self, arg: Option<&[u8]>) -> Result<Outcome> {
        if !self.plaintext_allowed() {
            // Refused at USER so the password is never asked for.
            return self.answer(CLEARTEXT_REFUSED).await;
        }
        match arg.filter(|a| !a.is_empty()).map(std::str::from_utf8) {
            Some(Ok(name)) => {
                self.user = Some(name.to_owned());
                self.send(b"+OK Send the password\r\n").await?;
                Ok(Outcome::Answered)
            }
            Some(Err(_)) => self.bad(b"-ERR The user name must be UTF-8\r\n").await,
            None => self.bad(b"-ERR USER expects a user name\r\n").await,
        }
    }

    async fn pass(&mut self, arg: Option<&[u8]>) -> Result<Outcome> {
        // RFC 1939: a failed PASS needs a new USER, so the name is consumed either way.
        let Some(user) = self.user.take() else {
            return self.bad(b"-ERR Send USER first\r\n").await;
        };
        match arg.filter(|a| !a.is_empty()).map(std::str::from_utf8) {
            Some(Ok(pass)) => self.replay(Credential::password(&user, pass)).await,
            Some(Err(_)) => self.bad(b"-ERR The password must be UTF-8\r\n").await,
            None => self.bad(b"-ERR PASS expects a password\r\n").await,
        }
    }

    /// Dovecot's XCLIENT from a trusted upstream proxy: the real client, session id and TTL.
    async fn xclient(&mut self, arg: &[u8]) -> Result<Outcome> {
        if !identity::trusted(&self.ctx) {
            return self.bad(b"-ERR You are not from a trusted address\r\n").await;
        }
        match Upstream::from_xclient(arg) {
            Ok(upstream) => {
                self.identity.adopt(&self.ctx, upstream);
                self.answer(b"+OK Updated\r\n").await
            }
            Err(why) => self.bad(format!("-ERR {why}\r\n").as_bytes()).await,
        }
    }

    async fn auth(&mut self, arg: Option<&[u8]>) -> Result<Outcome> {
        let Some(arg) = arg.filter(|a| !a.is_empty()) else {
            // Not in RFC 5034, but clients probe with a bare AUTH for the mechanism list.
            let mut list = String::from("+OK\r\n");
            if self.plaintext_allowed() {
                Mechanism::ALL.iter().for_each(|m| list.push_str(&format!("{m}\r\n")));
            }
            list.push_str(".\r\n");
            self.send(list.as_bytes()).await?;
            return Ok(Outcome::Answered);
        };
        let mut words = arg.splitn(2, |&b| b == b' ');
        let name = words.next().and_then(|n| std::str::from_utf8(n).ok());
        let initial = words.next().map(<[u8]>::to_vec);
        let Some(mechanism) = name.and_then(Mechanism::from_name) else {
            return self.bad(b"-ERR Unsupported authentication mechanism\r\n").await;
        };
        if !self.plaintext_allowed() {
            return self.answer(CLEARTEXT_REFUSED).await;
        }
        let max_line = self.ctx.listener.max_line_length;
        let reply = match auth::exchange(self, mechanism, initial.as_deref(), max_line).await? {
            SaslOutcome::Done(credential) => return self.replay(credential).await,
            SaslOutcome::Closed => return Ok(Outcome::Closed),
            SaslOutcome::Cancelled => return self.answer(b"-ERR Authentication cancelled\r\n").await,
            SaslOutcome::Invalid(e) => format!("-ERR Invalid SASL response: {e}\r\n"),
        };
        self.send(reply.as_bytes()).await?;
        Ok(Outcome::Rejected)
    }

    /// Steps 4–6 through the shared pipeline; the verdict line is relayed as the backend sent it.
    async fn replay(&mut self, credential: Credential) -> Result<Outcome> {
        match self.ctx.login(&mut Pop3::default(), &credential, &self.identity).await {
            Ok(Login::Accepted { route, backend, verdict }) => {
                self.send(&verdict.to_wire()).await?;
                Ok(Outcome::Authenticated(route, backend))
            }
            Ok(Login::Rejected(verdict)) => {
                self.send(&verdict.to_wire()).await?;
                Ok(Outcome::Rejected)
            }
            Err(Error::Client(why)) => {
                tracing::debug!(reason = %why, "login refused");
                self.send(b"-ERR [AUTH] Authentication failed\r\n").await?;
                Ok(Outcome::Rejected)
            }
            Err(e) => {
                tracing::warn!(error = %e, "backend unavailable");
                self.send(UNAVAILABLE).await?;
                Ok(Outcome::Rejected)
            }
        }
    }
}

impl SaslChannel for Session {
    async fn challenge(&mut self, challenge: &[u8]) -> Result<Response> {
        self.send(&auth::plus_challenge(challenge)).await?;
        loop {
            if let Some(response) = auth::response(self.lines.next_line()) {
                return Ok(response);
            }
            if !self.fill().await? {
                return Ok(Response::Closed);
            }
        }
    }
}

/// A command line as its upper-cased keyword and the text after the first space (kept
/// exactly: RFC 1939 lets a password contain spaces).
fn split_command(line: &[u8]) -> (String, Option<&[u8]>) {
    let (keyword, arg) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], line.get(i + 1..)),
        None => (line, None),
    };
    (String::from_utf8_lossy(keyword).to_ascii_uppercase(), arg)
}

#[cfg(test)]
mod tests;
