//! IMAP on the client leg (RFC 3501/9051): the proxy's own greeting and pre-auth commands,
//! LOGIN and AUTHENTICATE PLAIN, then the credential replayed to the backend as one
//! AUTHENTICATE PLAIN (the backend's side in [`backend`]) and the backend's verdict relayed
//! under the client's tag. A trusted upstream proxy may state the real client in `ID`.

use tracing::Instrument;

use crate::auth;
use crate::backend::Verdict;
use crate::client::{ClientConn, Grammar, Parsed, Replay, Replies, Turn};
use crate::codec::imap::{Arg, Command, Event, ImapParser};
use crate::codec::mechanism::{Credential, Mechanism};
use crate::codec::CodecError;
use crate::config::{ListenerConfig, TlsMode};
use crate::error::Result;
use crate::identity::{Identity, UpstreamClaim};
use crate::preauth::{self, End, PreAuth};
use crate::session::SessionCtx;
use crate::tls::MaybeTls;
use backend::Imap;

mod backend;

pub(crate) async fn serve(ctx: SessionCtx, stream: MaybeTls) {
    let identity = Identity::of(&ctx);
    let span = identity.span();
    let conn = ClientConn::new(&ctx, stream);
    preauth::converse(Session { ctx, conn, identity }).instrument(span).await
}

/// IMAP's commands and framing before authentication.
struct ImapClient;

impl Grammar for ImapClient {
    type Parser = ImapParser;
    type Command = Command;
    const TIMEOUT: &'static [u8] = b"* BYE Pre-authentication timeout\r\n";
    const TOO_MANY_INVALID: &'static [u8] = b"* BYE Too many invalid commands\r\n";
    const ANSWER_LAST_INVALID: bool = true;
    const TOO_MANY_FAILURES: Option<&'static [u8]> = Some(b"* BYE Too many authentication failures\r\n");

    fn parser(listener: &ListenerConfig) -> ImapParser {
        ImapParser::new(listener.max_line_length, listener.max_literal_size)
    }

    fn push(parser: &mut ImapParser, bytes: &[u8]) {
        parser.push(bytes);
    }

    fn next_command(parser: &mut ImapParser) -> Parsed<Command> {
        match parser.next_event() {
            Ok(Some(Event::Command(c))) => Parsed::Command(c),
            Ok(Some(Event::NeedContinuation { .. })) => Parsed::Continue(b"+ Ready for literal data\r\n"),
            Ok(None) => Parsed::Incomplete,
            Err(e) => Parsed::Invalid(e.bad_response().into_bytes()),
        }
    }

    fn next_response(parser: &mut ImapParser) -> Result<Option<Vec<u8>>, CodecError> {
        parser.next_line()
    }

    fn take_remaining(parser: &mut ImapParser) -> Vec<u8> {
        parser.take_remaining()
    }

    fn challenge(challenge: &[u8]) -> Vec<u8> {
        auth::plus_challenge(challenge)
    }
}

/// The answers to one login, under the client's tag.
struct Tagged<'a>(&'a str);

impl Replies for Tagged<'_> {
    /// Untagged lines as they are, the status line under the client's tag.
    fn verdict(&self, verdict: &Verdict) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some((last, untagged)) = verdict.lines.split_last() {
            for line in untagged {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("{} ", self.0).as_bytes());
            out.extend_from_slice(last);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn refused(&self) -> Vec<u8> {
        format!("{} NO [AUTHENTICATIONFAILED] Authentication failed\r\n", self.0).into_bytes()
    }

    fn unavailable(&self) -> Vec<u8> {
        format!("{} NO [UNAVAILABLE] Backend temporarily unavailable, try again later\r\n", self.0).into_bytes()
    }

    fn cancelled(&self) -> Vec<u8> {
        format!("{} BAD Authentication cancelled\r\n", self.0).into_bytes()
    }

    fn invalid(&self, e: &CodecError) -> Vec<u8> {
        format!("{} BAD Invalid SASL response: {e}\r\n", self.0).into_bytes()
    }
}

struct Session {
    ctx: SessionCtx,
    conn: ClientConn<ImapClient>,
    /// Who the backend is told the client is; a trusted upstream's `ID` may amend it.
    identity: Identity,
}

impl PreAuth for Session {
    /// The pre-auth conversation; ends authenticated, asking for TLS, or closed.
    async fn run(&mut self) -> Result<End> {
        // After STARTTLS the client re-issues CAPABILITY itself; no second greeting.
        if !self.conn.is_tls() || self.ctx.listener.tls == TlsMode::Implicit {
            let greeting = format!("* OK [CAPABILITY {}] Switchyard ready\r\n", self.capabilities());
            self.conn.send(greeting.as_bytes()).await?;
        }
        loop {
            let Some(command) = self.conn.next_command().await? else {
                return Ok(End::Closed);
            };
            let tag = command.tag.clone();
            let turn = match command.name.as_str() {
                "CAPABILITY" => {
                    let caps = format!("* CAPABILITY {}\r\n{tag} OK CAPABILITY completed\r\n", self.capabilities());
                    self.conn.answer(caps.as_bytes()).await?
                }
                "NOOP" => self.conn.answer(format!("{tag} OK NOOP completed\r\n").as_bytes()).await?,
                "ID" => {
                    self.identity.adopt(&self.ctx, UpstreamClaim::from_imap_id(&command.args));
                    let id = format!("* ID (\"name\" \"Switchyard\")\r\n{tag} OK ID completed\r\n");
                    self.conn.answer(id.as_bytes()).await?
                }
                "LOGOUT" => {
                    let bye = format!("* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n");
                    self.conn.send(bye.as_bytes()).await?;
                    return Ok(End::Closed);
                }
                "STARTTLS" if self.ctx.starttls_offered(self.conn.stream()) => {
                    self.conn.send(format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes()).await?;
                    return Ok(End::StartTls);
                }
                "STARTTLS" => {
                    let why = if self.conn.is_tls() { "TLS is already active" } else { "STARTTLS is not offered here" };
                    self.conn.answer(format!("{tag} BAD {why}\r\n").as_bytes()).await?
                }
                "LOGIN" => self.login(command).await?,
                "AUTHENTICATE" => self.authenticate(command).await?,
                _ => {
                    let reply = format!("{tag} BAD Command not valid before authentication\r\n");
                    self.conn.answer(reply.as_bytes()).await?
                }
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
    fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 SASL-IR LITERAL+ ID");
        if self.ctx.starttls_offered(self.conn.stream()) {
            caps.push_str(" STARTTLS");
        }
        if self.conn.credentials_allowed() {
            for mechanism in Mechanism::ALL {
                caps.push_str(" AUTH=");
                caps.push_str(mechanism.as_str());
            }
        } else {
            caps.push_str(" LOGINDISABLED");
        }
        caps
    }

    async fn login(&mut self, command: Command) -> Result<Turn> {
        let tag = command.tag;
        if !self.conn.credentials_allowed() {
            let refusal = format!("{tag} NO [PRIVACYREQUIRED] Cleartext login is disabled on this connection\r\n");
            return self.conn.answer(refusal.as_bytes()).await;
        }
        let [user, pass] = command.args.as_slice() else {
            return self
                .conn
                .answer(format!("{tag} BAD LOGIN expects a user name and a password\r\n").as_bytes())
                .await;
        };
        let (Some(user), Some(pass)) = (user.as_str(), pass.as_str()) else {
            return self.conn.answer(format!("{tag} BAD LOGIN arguments must be UTF-8 strings\r\n").as_bytes()).await;
        };
        let credential = Credential::password(user, pass);
        let login = Replay { ctx: &self.ctx, dialect: &mut Imap::default(), identity: &self.identity };
        self.conn.replay(login, &credential, &Tagged(&tag)).await.map(Turn::Login)
    }

    async fn authenticate(&mut self, command: Command) -> Result<Turn> {
        let tag = command.tag;
        let Some(mechanism) = command.args.first().and_then(Arg::as_str).and_then(Mechanism::from_name) else {
            return self.conn.answer(format!("{tag} NO Unsupported authentication mechanism\r\n").as_bytes()).await;
        };
        if !self.conn.credentials_allowed() {
            let refusal =
                format!("{tag} NO [PRIVACYREQUIRED] Authentication is disabled on this connection before TLS\r\n");
            return self.conn.answer(refusal.as_bytes()).await;
        }
        let initial = command.args.get(1).and_then(Arg::as_bytes);
        let login = Replay { ctx: &self.ctx, dialect: &mut Imap::default(), identity: &self.identity };
        self.conn.authenticate(login, mechanism, initial, &Tagged(&tag)).await
    }
}

#[cfg(test)]
mod tests;
