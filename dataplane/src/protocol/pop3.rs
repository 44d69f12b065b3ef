//! POP3 on the client leg (RFC 1939, 2449 CAPA, 5034 AUTH, 3206 response codes): the
//! proxy's own greeting and AUTHORIZATION-state commands, USER/PASS and AUTH, then the
//! credential replayed to the backend as one AUTH and the backend's verdict relayed as is.
//! STLS (RFC 2595) upgrades the client leg in place. A trusted upstream proxy may state the
//! real client with Dovecot's `XCLIENT`. The backend's side is in [`backend`].

use tracing::Instrument;

use crate::auth;
use crate::client::{ClientConn, Grammar, Parsed, Replay, Replies, Turn};
use crate::codec::line::LineBuffer;
use crate::codec::mechanism::{Credential, Mechanism};
use crate::codec::CodecError;
use crate::config::{ListenerConfig, TlsMode};
use crate::error::Result;
use crate::identity::{self, Identity, UpstreamClaim};
use crate::preauth::{self, End, PreAuth};
use crate::session::SessionCtx;
use crate::tls::MaybeTls;
use backend::Pop3;

mod backend;

/// No RFC 3206 code fits a policy refusal: `[AUTH]` would make clients ask for a new
/// password, and `[SYS/PERM]` is untrue when STLS would cure it.
const CLEARTEXT_REFUSED: &[u8] = b"-ERR Plaintext authentication disallowed on non-secure connection\r\n";

/// Serves one POP3 client: pre-auth conversation (through STLS), then the bridge to its backend.
pub(crate) async fn serve(ctx: SessionCtx, stream: MaybeTls) {
    let identity = Identity::of(&ctx);
    let span = identity.span();
    let conn = ClientConn::new(&ctx, stream);
    preauth::converse(Session { ctx, conn, identity, user: None }).instrument(span).await
}

/// POP3's command lines and framing in the AUTHORIZATION state; every login's answers.
struct Pop3Client;

impl Grammar for Pop3Client {
    type Parser = LineBuffer;
    type Command = Vec<u8>;
    const TIMEOUT: &'static [u8] = b"-ERR Pre-authentication timeout\r\n";
    const TOO_MANY_INVALID: &'static [u8] = b"-ERR Too many invalid commands\r\n";
    const ANSWER_LAST_INVALID: bool = false;
    /// POP3 has no unsolicited responses: the failure's -ERR was the last word.
    const TOO_MANY_FAILURES: Option<&'static [u8]> = None;

    fn parser(listener: &ListenerConfig) -> LineBuffer {
        LineBuffer::new(listener.max_line_length)
    }

    fn push(parser: &mut LineBuffer, bytes: &[u8]) {
        parser.push(bytes);
    }

    fn next_command(parser: &mut LineBuffer) -> Parsed<Vec<u8>> {
        match parser.next_line() {
            Ok(Some(line)) => Parsed::Command(line),
            Ok(None) => Parsed::Incomplete,
            Err(e) => Parsed::Invalid(format!("-ERR {e}\r\n").into_bytes()),
        }
    }

    fn next_response(parser: &mut LineBuffer) -> Result<Option<Vec<u8>>, CodecError> {
        parser.next_line()
    }

    fn take_remaining(parser: &mut LineBuffer) -> Vec<u8> {
        parser.take_remaining()
    }

    fn challenge(challenge: &[u8]) -> Vec<u8> {
        auth::plus_challenge(challenge)
    }
}

/// The verdict line is relayed as the backend sent it.
impl Replies for Pop3Client {
    fn refused(&self) -> Vec<u8> {
        b"-ERR [AUTH] Authentication failed\r\n".to_vec()
    }

    fn unavailable(&self) -> Vec<u8> {
        b"-ERR [SYS/TEMP] Backend temporarily unavailable, try again later\r\n".to_vec()
    }

    fn cancelled(&self) -> Vec<u8> {
        b"-ERR Authentication cancelled\r\n".to_vec()
    }

    fn invalid(&self, e: &CodecError) -> Vec<u8> {
        format!("-ERR Invalid SASL response: {e}\r\n").into_bytes()
    }
}

/// One client in the AUTHORIZATION state.
struct Session {
    ctx: SessionCtx,
    conn: ClientConn<Pop3Client>,
    /// Who the backend is told the client is; a trusted upstream's `XCLIENT` may amend it.
    identity: Identity,
    /// The name from `USER`, waiting for `PASS`.
    user: Option<String>,
}

impl PreAuth for Session {
    /// The pre-auth conversation; ends authenticated, asking for TLS, or closed.
    async fn run(&mut self) -> Result<End> {
        // After STLS the client asks CAPA again itself; no second greeting (RFC 2595 §4).
        if !self.conn.is_tls() || self.ctx.listener.tls == TlsMode::Implicit {
            // Dovecot's way of telling a trusted proxy that XCLIENT is welcome.
            let offer = if identity::trusted(&self.ctx) { "[XCLIENT] " } else { "" };
            self.conn.send(format!("+OK {offer}Switchyard ready\r\n").as_bytes()).await?;
        }
        loop {
            let Some(line) = self.conn.next_command().await? else {
                return Ok(End::Closed);
            };
            let (keyword, arg) = split_command(&line);
            let turn = match keyword.as_str() {
                "CAPA" => {
                    let capa = self.capabilities();
                    self.conn.answer(capa.as_bytes()).await?
                }
                "QUIT" => {
                    self.conn.send(b"+OK Switchyard signing off\r\n").await?;
                    return Ok(End::Closed);
                }
                "STLS" if self.ctx.starttls_offered(self.conn.stream()) => {
                    self.conn.send(b"+OK Begin TLS negotiation\r\n").await?;
                    return Ok(End::StartTls);
                }
                "STLS" if self.conn.is_tls() => {
                    self.conn.answer(b"-ERR Command not permitted when TLS active\r\n").await?
                }
                "STLS" => self.conn.answer(b"-ERR STLS not offered on this connection\r\n").await?,
                "USER" => self.user(arg).await?,
                "PASS" => self.pass(arg).await?,
                "AUTH" => self.auth(arg).await?,
                "XCLIENT" => self.xclient(arg.unwrap_or_default()).await?,
                _ => self.conn.bad(b"-ERR Unknown command or not valid before authentication\r\n").await?,
            };
            if let Some(end) = self.conn.conclude(turn).await? {
                return Ok(end);
            }
        }
    }

    /// Completes STLS; no pending USER survives into the encrypted session either.
    async fn upgrade(self) -> Result<Session> {
        let conn = self.conn.upgrade(&self.ctx).await?;
        Ok(Session { conn, user: None, ..self })
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
    fn capabilities(&self) -> String {
        let mut capa = String::from("+OK Capability list follows\r\nCAPA\r\n");
        if self.conn.credentials_allowed() {
            capa.push_str(&format!("USER\r\nSASL {}\r\n", Mechanism::advertised()));
        }
        if self.ctx.starttls_offered(self.conn.stream()) {
            capa.push_str("STLS\r\n");
        }
        capa.push_str("RESP-CODES\r\nAUTH-RESP-CODE\r\nIMPLEMENTATION Switchyard\r\n.\r\n");
        capa
    }

    async fn user(&mut self, arg: Option<&[u8]>) -> Result<Turn> {
        if !self.conn.credentials_allowed() {
            // Refused at USER so the password is never asked for.
            return self.conn.answer(CLEARTEXT_REFUSED).await;
        }
        match arg.filter(|a| !a.is_empty()).map(std::str::from_utf8) {
            Some(Ok(name)) => {
                self.user = Some(name.to_owned());
                self.conn.answer(b"+OK Send the password\r\n").await
            }
            Some(Err(_)) => self.conn.bad(b"-ERR The user name must be UTF-8\r\n").await,
            None => self.conn.bad(b"-ERR USER expects a user name\r\n").await,
        }
    }

    async fn pass(&mut self, arg: Option<&[u8]>) -> Result<Turn> {
        // RFC 1939: a failed PASS needs a new USER, so the name is consumed either way.
        let Some(user) = self.user.take() else {
            return self.conn.bad(b"-ERR Send USER first\r\n").await;
        };
        match arg.filter(|a| !a.is_empty()).map(std::str::from_utf8) {
            Some(Ok(pass)) => {
                let login = Replay { ctx: &self.ctx, dialect: &mut Pop3::default(), identity: &self.identity };
                self.conn.replay(login, &Credential::password(&user, pass), &Pop3Client).await.map(Turn::Login)
            }
            Some(Err(_)) => self.conn.bad(b"-ERR The password must be UTF-8\r\n").await,
            None => self.conn.bad(b"-ERR PASS expects a password\r\n").await,
        }
    }

    /// Dovecot's XCLIENT from a trusted upstream proxy: the real client, session id and TTL.
    async fn xclient(&mut self, arg: &[u8]) -> Result<Turn> {
        if !identity::trusted(&self.ctx) {
            return self.conn.bad(b"-ERR You are not from a trusted address\r\n").await;
        }
        match UpstreamClaim::from_xclient(arg) {
            Ok(upstream) => {
                self.identity.adopt(&self.ctx, upstream);
                self.conn.answer(b"+OK Updated\r\n").await
            }
            Err(why) => self.conn.bad(format!("-ERR {why}\r\n").as_bytes()).await,
        }
    }

    async fn auth(&mut self, arg: Option<&[u8]>) -> Result<Turn> {
        let Some(arg) = arg.filter(|a| !a.is_empty()) else {
            // Not in RFC 5034, but clients probe with a bare AUTH for the mechanism list.
            let mut list = String::from("+OK\r\n");
            if self.conn.credentials_allowed() {
                Mechanism::ALL.iter().for_each(|m| list.push_str(&format!("{m}\r\n")));
            }
            list.push_str(".\r\n");
            return self.conn.answer(list.as_bytes()).await;
        };
        let mut words = arg.splitn(2, |&b| b == b' ');
        let name = words.next().and_then(|n| std::str::from_utf8(n).ok());
        let initial = words.next();
        let Some(mechanism) = name.and_then(Mechanism::from_name) else {
            return self.conn.bad(b"-ERR Unsupported authentication mechanism\r\n").await;
        };
        if !self.conn.credentials_allowed() {
            return self.conn.answer(CLEARTEXT_REFUSED).await;
        }
        let login = Replay { ctx: &self.ctx, dialect: &mut Pop3::default(), identity: &self.identity };
        self.conn.authenticate(login, mechanism, initial, &Pop3Client).await
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
