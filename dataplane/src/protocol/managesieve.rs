//! ManageSieve on the client leg (RFC 5804): the proxy's own capability greeting and
//! non-authenticated commands, AUTHENTICATE with quoted-string or literal responses, then
//! the credential replayed to the backend as one AUTHENTICATE and its verdict relayed as is.
//! STARTTLS (§2.2) upgrades the client leg in place and re-sends the capabilities. The
//! backend's side is in [`backend`].

use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::{self, Response, SaslChannel, SaslOutcome};
use crate::backend::{BackendConn, Login};
use crate::client::{self, Read};
use crate::codec::mechanism::{Credential, Mechanism};
use crate::codec::sieve::{self, Arg, Command, SieveParser};
use crate::config::TlsMode;
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::pipeline::{Route, SessionCtx};
use crate::preauth::{self, End, PreAuth};
use crate::tls::MaybeTls;
use backend::ManageSieve;

mod backend;

/// Erroneous commands tolerated before the client is disconnected.
const MAX_BAD_COMMANDS: u32 = 10;
const UNAVAILABLE: &[u8] = b"NO (TRYLATER) \"Backend temporarily unavailable, try again later\"\r\n";
const TIMEOUT: &[u8] = b"BYE \"Pre-authentication timeout\"\r\n";

/// Serves one ManageSieve client: pre-auth conversation (through STARTTLS), then the
/// bridge to its backend.
pub async fn serve(ctx: SessionCtx, stream: MaybeTls) {
    let identity = Identity::of(&ctx);
    let span = identity.span();
    preauth::converse(start(ctx, stream, identity)).instrument(span).await
}

/// The session in its first state, before the greeting.
fn start(ctx: SessionCtx, stream: MaybeTls, identity: Identity) -> Session {
    let deadline = ctx.preauth_deadline();
    Session { parser: parser(&ctx), ctx, client: stream, identity, deadline, failures: 0, bad: 0 }
}

fn parser(ctx: &SessionCtx) -> SieveParser {
    SieveParser::new(ctx.listener.max_line_length, ctx.listener.max_literal_size)
}

/// One client in the non-authenticated state. `client` is the only stream field and every
/// read goes through [`Session::fill`], so STARTTLS swaps the stream in one place.
struct Session {
    ctx: SessionCtx,
    client: MaybeTls,
    parser: SieveParser,
    /// Who the backend is told the client is.
    identity: Identity,
    /// The pre-auth budget's end, kept across STARTTLS.
    deadline: Instant,
    failures: u32,
    bad: u32,
}

/// What a command ended in.
enum Outcome {
    Authenticated(Route, BackendConn),
    Rejected,
    /// Answered without an authentication attempt.
    Answered,
    Closed,
}

impl PreAuth for Session {
    /// The pre-auth conversation; ends authenticated, asking for TLS, or closed.
    async fn run(&mut self) -> Result<End> {
        // RFC 5804 §2.2: after STARTTLS the server MUST send its capabilities again (now
        // with the SASL mechanisms), followed by OK.
        let status = match self.client.is_tls() && self.ctx.listener.tls != TlsMode::Implicit {
            true => "TLS negotiation successful",
            false => "Switchyard ready",
        };
        let greeting = format!("{}OK \"{status}\"\r\n", self.capabilities());
        self.send(greeting.as_bytes()).await?;
        loop {
            let Some(command) = self.next_command().await? else {
                return Ok(End::Closed);
            };
            let outcome = match command.name.as_str() {
                "CAPABILITY" if command.args.is_empty() => {
                    let caps = format!("{}OK \"Capability completed\"\r\n", self.capabilities());
                    self.answer(caps.as_bytes()).await?
                }
                "NOOP" => self.noop(&command.args).await?,
                "LOGOUT" if command.args.is_empty() => {
                    self.send(b"OK \"Logout complete\"\r\n").await?;
                    return Ok(End::Closed);
                }
                "STARTTLS" if command.args.is_empty() && self.ctx.starttls_offered(&self.client) => {
                    self.send(b"OK \"Begin TLS negotiation now\"\r\n").await?;
                    return Ok(End::StartTls);
                }
                "STARTTLS" if command.args.is_empty() && self.client.is_tls() => {
                    self.answer(b"NO \"TLS is already active\"\r\n").await?
                }
                "STARTTLS" if command.args.is_empty() => {
                    self.answer(b"NO \"STARTTLS not offered on this connection\"\r\n").await?
                }
                "AUTHENTICATE" => self.authenticate(command).await?,
                "CAPABILITY" | "LOGOUT" | "STARTTLS" => self.bad("Too many arguments").await?,
                _ => self.bad("Unknown command or not valid before authentication").await?,
            };
            match outcome {
                Outcome::Authenticated(route, backend) => return Ok(End::Authenticated(route, backend)),
                Outcome::Rejected => {
                    self.failures += 1;
                    if self.failures >= self.ctx.listener.max_auth_attempts {
                        self.send(b"BYE \"Too many failed authentication attempts\"\r\n").await?;
                        return Ok(End::Closed);
                    }
                }
                Outcome::Answered => {}
                Outcome::Closed => return Ok(End::Closed),
            }
        }
    }

    /// Completes STARTTLS: the handshake, then a fresh parser, so nothing the client
    /// pipelined in plaintext after the command survives into the encrypted session.
    async fn upgrade(self) -> Result<Session> {
        let client = self.ctx.accept_tls(self.client, self.deadline).await?;
        Ok(Session { client, parser: parser(&self.ctx), ..self })
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
    fn plaintext_allowed(&self) -> bool {
        auth::credentials_allowed(&self.ctx.listener, self.client.is_tls())
    }

    /// RFC 5804 §1.7 capability lines (the status line is the caller's).
    fn capabilities(&self) -> String {
        let sasl = if self.plaintext_allowed() { Mechanism::advertised() } else { String::new() };
        let mut caps = format!("\"IMPLEMENTATION\" \"Switchyard\"\r\n\"SASL\" \"{sasl}\"\r\n");
        if self.ctx.starttls_offered(&self.client) {
            caps.push_str("\"STARTTLS\"\r\n");
        }
        caps.push_str("\"VERSION\" \"1.0\"\r\n");
        caps
    }

    /// A write the client must take before the pre-auth budget ends (the reply under way
    /// when it ends, such as a late verdict or the timeout's goodbye, still gets a moment).
    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        client::send(&mut self.client, bytes, client::at_least_goodbye(self.deadline)).await
    }

    /// `NO "<why>"`; past the limit a `BYE` instead, and the session ends.
    async fn bad(&mut self, why: &str) -> Result<Outcome> {
        self.bad += 1;
        if self.bad >= MAX_BAD_COMMANDS {
            self.send(b"BYE \"Too many invalid commands\"\r\n").await?;
            return Ok(Outcome::Closed);
        }
        self.send(&no(None, why)).await?;
        Ok(Outcome::Answered)
    }

    /// Reads until one complete command; answers parse errors. Past the pre-auth deadline
    /// nothing more is served, however much was pipelined.
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
                    if let Outcome::Closed = self.bad(&e.to_string()).await? {
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

    /// RFC 5804 §2.6: a string argument is echoed back in a `TAG` response code.
    async fn noop(&mut self, args: &[Arg]) -> Result<Outcome> {
        let reply = match args {
            [] => b"OK \"NOOP completed\"\r\n".to_vec(),
            [arg] => match arg.as_string() {
                Some(tag) => [b"OK (TAG ", &sieve::quote(tag)[..], b") \"NOOP completed\"\r\n"].concat(),
                None => return self.bad("NOOP takes a string").await,
            },
            _ => return self.bad("Too many arguments").await,
        };
        self.send(&reply).await?;
        Ok(Outcome::Answered)
    }

    async fn answer(&mut self, reply: &[u8]) -> Result<Outcome> {
        self.send(reply).await?;
        Ok(Outcome::Answered)
    }

    async fn authenticate(&mut self, command: Command) -> Result<Outcome> {
        // The mechanism is a string in RFC 5804; an atom is accepted as the same name.
        let (name, initial) = match command.args.as_slice() {
            [name] => (name, None),
            [name, initial] => match initial.as_string() {
                Some(initial) => (name, Some(initial.to_vec())),
                None => return self.bad("The initial response must be a string").await,
            },
            _ => return self.bad("AUTHENTICATE expects a mechanism and an optional initial response").await,
        };
        let Some(mechanism) = std::str::from_utf8(name.as_bytes()).ok().and_then(Mechanism::from_name) else {
            return self.bad("Unsupported authentication mechanism").await;
        };
        if !self.plaintext_allowed() {
            return self
                .answer(&no(Some("ENCRYPT-NEEDED"), "Authentication is disabled on this connection before TLS"))
                .await;
        }
        let max_line = self.ctx.listener.max_line_length;
        let why = match auth::exchange(self, mechanism, initial.as_deref(), max_line).await? {
            SaslOutcome::Done(credential) => return self.replay(credential).await,
            SaslOutcome::Closed => return Ok(Outcome::Closed),
            SaslOutcome::Cancelled => return self.answer(b"NO \"Authentication cancelled\"\r\n").await,
            SaslOutcome::Invalid(e) => e.to_string(),
        };
        self.send(&no(None, &format!("Invalid SASL response: {why}"))).await?;
        Ok(Outcome::Rejected)
    }

    /// Steps 4–6 through the shared pipeline; the verdict is relayed as the backend sent it.
    async fn replay(&mut self, credential: Credential) -> Result<Outcome> {
        match self.ctx.login(&mut ManageSieve::default(), &credential, &self.identity).await {
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
                self.send(b"NO \"Authentication failed\"\r\n").await?;
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
    /// RFC 5804 §2.1: the challenge is a base64 string; the client answers with a string.
    async fn challenge(&mut self, challenge: &[u8]) -> Result<Response> {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(challenge);
        self.send(&[&sieve::quote(encoded.as_bytes())[..], b"\r\n"].concat()).await?;
        loop {
            if let Some(response) = auth::response(self.parser.next_response()) {
                return Ok(response);
            }
            if !self.fill().await? {
                return Ok(Response::Closed);
            }
        }
    }
}

/// `NO [(CODE)] "<why>"` with CRLF.
fn no(code: Option<&str>, why: &str) -> Vec<u8> {
    let code = code.map(|c| format!("({c}) ")).unwrap_or_default();
    [format!("NO {code}").as_bytes(), &sieve::quote(why.as_bytes()), b"\r\n"].concat()
}

#[cfg(test)]
mod tests;
