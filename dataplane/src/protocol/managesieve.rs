//! ManageSieve on the client leg (RFC 5804): the proxy's own capability greeting and
//! non-authenticated commands, AUTHENTICATE with quoted-string or literal responses, then
//! the credential replayed to the backend as one AUTHENTICATE and its verdict relayed as is.
//! STARTTLS (§2.2) upgrades the client leg in place and re-sends the capabilities. The
//! backend's side is in [`backend`].

use tracing::Instrument;

use crate::client::{ClientConn, Grammar, Parsed, Replay, Replies, Turn};
use crate::codec::mechanism::Mechanism;
use crate::codec::sieve::{self, Arg, Command, SieveParser};
use crate::codec::CodecError;
use crate::config::{ListenerConfig, TlsMode};
use crate::error::Result;
use crate::identity::Identity;
use crate::preauth::{self, End, PreAuth};
use crate::session::SessionCtx;
use crate::tls::MaybeTls;
use backend::ManageSieve;

mod backend;

/// Serves one ManageSieve client: pre-auth conversation (through STARTTLS), then the
/// bridge to its backend.
pub(crate) async fn serve(ctx: SessionCtx, stream: MaybeTls) {
    let identity = Identity::of(&ctx);
    let span = identity.span();
    let conn = ClientConn::new(&ctx, stream);
    preauth::converse(Session { ctx, conn, identity }).instrument(span).await
}

/// ManageSieve's commands and framing in the non-authenticated state; every login's answers.
struct SieveClient;

impl Grammar for SieveClient {
    type Parser = SieveParser;
    type Command = Command;
    const TIMEOUT: &'static [u8] = b"BYE \"Pre-authentication timeout\"\r\n";
    const TOO_MANY_INVALID: &'static [u8] = b"BYE \"Too many invalid commands\"\r\n";
    const ANSWER_LAST_INVALID: bool = false;
    const TOO_MANY_FAILURES: Option<&'static [u8]> = Some(b"BYE \"Too many failed authentication attempts\"\r\n");

    fn parser(listener: &ListenerConfig) -> SieveParser {
        SieveParser::new(listener.max_line_length, listener.max_literal_size)
    }

    fn push(parser: &mut SieveParser, bytes: &[u8]) {
        parser.push(bytes);
    }

    fn next_command(parser: &mut SieveParser) -> Parsed<Command> {
        match parser.next_command() {
            Ok(Some(command)) => Parsed::Command(command),
            Ok(None) => Parsed::Incomplete,
            Err(e) => Parsed::Invalid(no(None, &e.to_string())),
        }
    }

    fn next_response(parser: &mut SieveParser) -> Result<Option<Vec<u8>>, CodecError> {
        parser.next_response()
    }

    fn take_remaining(parser: &mut SieveParser) -> Vec<u8> {
        parser.take_remaining()
    }

    /// RFC 5804 §2.1: the challenge is a base64 string; the client answers with a string.
    fn challenge(challenge: &[u8]) -> Vec<u8> {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(challenge);
        [&sieve::quote(encoded.as_bytes())[..], b"\r\n"].concat()
    }
}

/// The verdict is relayed as the backend sent it.
impl Replies for SieveClient {
    fn refused(&self) -> Vec<u8> {
        b"NO \"Authentication failed\"\r\n".to_vec()
    }

    fn unavailable(&self) -> Vec<u8> {
        b"NO (TRYLATER) \"Backend temporarily unavailable, try again later\"\r\n".to_vec()
    }

    fn cancelled(&self) -> Vec<u8> {
        b"NO \"Authentication cancelled\"\r\n".to_vec()
    }

    fn invalid(&self, e: &CodecError) -> Vec<u8> {
        no(None, &format!("Invalid SASL response: {e}"))
    }
}

/// One client in the non-authenticated state.
struct Session {
    ctx: SessionCtx,
    conn: ClientConn<SieveClient>,
    /// Who the backend is told the client is.
    identity: Identity,
}

impl PreAuth for Session {
    /// The pre-auth conversation; ends authenticated, asking for TLS, or closed.
    async fn run(&mut self) -> Result<End> {
        // RFC 5804 §2.2: after STARTTLS the server MUST send its capabilities again (now
        // with the SASL mechanisms), followed by OK.
        let status = match self.conn.is_tls() && self.ctx.listener.tls != TlsMode::Implicit {
            true => "TLS negotiation successful",
            false => "Switchyard ready",
        };
        let greeting = format!("{}OK \"{status}\"\r\n", self.capabilities());
        self.conn.send(greeting.as_bytes()).await?;
        loop {
            let Some(command) = self.conn.next_command().await? else {
                return Ok(End::Closed);
            };
            let turn = match command.name.as_str() {
                "CAPABILITY" if command.args.is_empty() => {
                    let caps = format!("{}OK \"Capability completed\"\r\n", self.capabilities());
                    self.conn.answer(caps.as_bytes()).await?
                }
                "NOOP" => self.noop(&command.args).await?,
                "LOGOUT" if command.args.is_empty() => {
                    self.conn.send(b"OK \"Logout complete\"\r\n").await?;
                    return Ok(End::Closed);
                }
                "STARTTLS" if command.args.is_empty() && self.ctx.starttls_offered(self.conn.stream()) => {
                    self.conn.send(b"OK \"Begin TLS negotiation now\"\r\n").await?;
                    return Ok(End::StartTls);
                }
                "STARTTLS" if command.args.is_empty() && self.conn.is_tls() => {
                    self.conn.answer(b"NO \"TLS is already active\"\r\n").await?
                }
                "STARTTLS" if command.args.is_empty() => {
                    self.conn.answer(b"NO \"STARTTLS not offered on this connection\"\r\n").await?
                }
                "AUTHENTICATE" => self.authenticate(command).await?,
                "CAPABILITY" | "LOGOUT" | "STARTTLS" => self.bad("Too many arguments").await?,
                _ => self.bad("Unknown command or not valid before authentication").await?,
            };
            if let Some(end) = self.conn.conclude(turn).await? {
                return Ok(end);
            }
        }
    }

    async fn upgrade(self) -> Result<Session> {
        let conn = self.conn.upgrade(&self.ctx).await?;
        Ok(Session { conn, ..self })
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
    /// RFC 5804 §1.7 capability lines (the status line is the caller's).
    fn capabilities(&self) -> String {
        let sasl = if self.conn.credentials_allowed() { Mechanism::advertised() } else { String::new() };
        let mut caps = format!("\"IMPLEMENTATION\" \"Switchyard\"\r\n\"SASL\" \"{sasl}\"\r\n");
        if self.ctx.starttls_offered(self.conn.stream()) {
            caps.push_str("\"STARTTLS\"\r\n");
        }
        caps.push_str("\"VERSION\" \"1.0\"\r\n");
        caps
    }

    /// `NO "<why>"`; past the limit a `BYE` instead, and the session ends.
    async fn bad(&mut self, why: &str) -> Result<Turn> {
        self.conn.bad(&no(None, why)).await
    }

    /// RFC 5804 §2.6: a string argument is echoed back in a `TAG` response code.
    async fn noop(&mut self, args: &[Arg]) -> Result<Turn> {
        let reply = match args {
            [] => b"OK \"NOOP completed\"\r\n".to_vec(),
            [arg] => match arg.as_string() {
                Some(tag) => [b"OK (TAG ", &sieve::quote(tag)[..], b") \"NOOP completed\"\r\n"].concat(),
                None => return self.bad("NOOP takes a string").await,
            },
            _ => return self.bad("Too many arguments").await,
        };
        self.conn.answer(&reply).await
    }

    async fn authenticate(&mut self, command: Command) -> Result<Turn> {
        // The mechanism is a string in RFC 5804; an atom is accepted as the same name.
        let (name, initial) = match command.args.as_slice() {
            [name] => (name, None),
            [name, initial] => match initial.as_string() {
                Some(initial) => (name, Some(initial)),
                None => return self.bad("The initial response must be a string").await,
            },
            _ => return self.bad("AUTHENTICATE expects a mechanism and an optional initial response").await,
        };
        let Some(mechanism) = std::str::from_utf8(name.as_bytes()).ok().and_then(Mechanism::from_name) else {
            return self.bad("Unsupported authentication mechanism").await;
        };
        if !self.conn.credentials_allowed() {
            let refusal = no(Some("ENCRYPT-NEEDED"), "Authentication is disabled on this connection before TLS");
            return self.conn.answer(&refusal).await;
        }
        let login = Replay { ctx: &self.ctx, dialect: &mut ManageSieve::default(), identity: &self.identity };
        self.conn.authenticate(login, mechanism, initial, &SieveClient).await
    }
}

/// `NO [(CODE)] "<why>"` with CRLF.
fn no(code: Option<&str>, why: &str) -> Vec<u8> {
    let code = code.map(|c| format!("({c}) ")).unwrap_or_default();
    [format!("NO {code}").as_bytes(), &sieve::quote(why.as_bytes()), b"\r\n"].concat()
}

#[cfg(test)]
mod tests;
