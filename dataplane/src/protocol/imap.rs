//! IMAP on the client leg (RFC 3501/9051): the proxy's own greeting and pre-auth commands,
//! LOGIN and AUTHENTICATE PLAIN, then the credential replayed to the backend as one
//! AUTHENTICATE PLAIN (the backend's side in [`backend`]) and the backend's verdict relayed
//! under the client's tag. A trusted upstream proxy may state the real client in `ID`.

use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::{self, Response, SaslChannel, SaslOutcome};
use crate::backend::{BackendConn, Login, Verdict};
use crate::client::{self, Read};
use crate::codec::imap::{Arg, Command, Event, ImapParser};
use crate::codec::mechanism::{Credential, Mechanism};
use crate::config::TlsMode;
use crate::error::{Error, Result};
use crate::identity::{Identity, Upstream};
use crate::pipeline::{Route, SessionCtx};
use crate::preauth::{self, End, PreAuth};
use crate::tls::MaybeTls;
use backend::Imap;

mod backend;

/// Parse errors tolerated before the client is disconnected.
const MAX_BAD_COMMANDS: u32 = 10;
const TIMEOUT: &[u8] = b"* BYE Pre-authentication timeout\r\n";

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

fn parser(ctx: &SessionCtx) -> ImapParser {
    ImapParser::new(ctx.listener.max_line_length, ctx.listener.max_literal_size)
}

struct Session {
    ctx: SessionCtx,
    client: MaybeTls,
    parser: ImapParser,
    /// Who the backend is told the client is; a trusted upstream's `ID` may amend it.
    identity: Identity,
    /// The pre-auth budget's end, kept across STARTTLS.
    deadline: Instant,
    failures: u32,
    bad: u32,
}

/// What a login attempt ended in.
enum Outcome {
    Authenticated(Route, BackendConn),
    Rejected,
    /// The client left (or timed out) in the middle of it.
    Closed,
}

impl PreAuth for Session {
    /// The pre-auth conversation; ends authenticated, asking for TLS, or closed.
    async fn run(&mut self) -> Result<End> {
        // After STARTTLS the client re-issues CAPABILITY itself; no second greeting.
        if !self.client.is_tls() || self.ctx.listener.tls == TlsMode::Implicit {
            let greeting = format!("* OK [CAPABILITY {}] Switchyard ready\r\n", self.capabilities());
            self.send(greeting.as_bytes()).await?;
        }
        loop {
            let command = match self.next_command().await? {
                Some(c) => c,
                None => return Ok(End::Closed),
            };
            let tag = command.tag.clone();
            let outcome = match command.name.as_str() {
                "CAPABILITY" => {
                    let caps = format!("* CAPABILITY {}\r\n{tag} OK CAPABILITY completed\r\n", self.capabilities());
                    self.send(caps.as_bytes()).await?;
                    continue;
                }
                "NOOP" => {
                    self.send(format!("{tag} OK NOOP completed\r\n").as_bytes()).await?;
                    continue;
                }
                "ID" => {
                    self.identity.adopt(&self.ctx, Upstream::from_imap_id(&command.args));
                    let id = format!("* ID (\"name\" \"Switchyard\")\r\n{tag} OK ID completed\r\n");
                    self.send(id.as_bytes()).await?;
                    continue;
                }
                "LOGOUT" => {
                    let bye = format!("* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n");
                    self.send(bye.as_bytes()).await?;
                    return Ok(End::Closed);
                }
                "STARTTLS" if self.ctx.starttls_offered(&self.client) => {
                    self.send(format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes()).await?;
                    return Ok(End::StartTls);
                }
                "STARTTLS" => {
                    let why =
                        if self.client.is_tls() { "TLS is already active" } else { "STARTTLS is not offered here" };
                    self.send(format!("{tag} BAD {why}\r\n").as_bytes()).await?;
                    continue;
                }
                "LOGIN" => self.login(command).await?,
                "AUTHENTICATE" => self.authenticate(command).await?,
                _ => {
                    self.send(format!("{tag} BAD Command not valid before authentication\r\n").as_bytes()).await?;
                    continue;
                }
            };
            match outcome {
                Some(Outcome::Authenticated(route, backend)) => return Ok(End::Authenticated(route, backend)),
                Some(Outcome::Closed) => return Ok(End::Closed),
                Some(Outcome::Rejected) => {
                    self.failures += 1;
                    if self.failures >= self.ctx.listener.max_auth_attempts {
                        self.send(b"* BYE Too many authentication failures\r\n").await?;
                        return Ok(End::Closed);
                    }
                }
                None => {}
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

    fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 SASL-IR LITERAL+ ID");
        if self.ctx.starttls_offered(&self.client) {
            caps.push_str(" STARTTLS");
        }
        if self.plaintext_allowed() {
            for mechanism in Mechanism::ALL {
                caps.push_str(" AUTH=");
                caps.push_str(mechanism.as_str());
            }
        } else {
            caps.push_str(" LOGINDISABLED");
        }
        caps
    }

    /// A write the client must take before the pre-auth budget ends (the reply under way
    /// when it ends, such as a late verdict or the timeout's goodbye, still gets a moment).
    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        client::send(&mut self.client, bytes, client::at_least_goodbye(self.deadline)).await
    }

    /// Reads until one complete command; answers parse errors and literal continuations.
    /// Past the pre-auth deadline nothing more is served, however much was pipelined.
    async fn next_command(&mut self) -> Result<Option<Command>> {
        if Instant::now() >= self.deadline {
            self.send(TIMEOUT).await?;
            return Ok(None);
        }
        loop {
            match self.parser.next_event() {
                Ok(Some(Event::Command(c))) => return Ok(Some(c)),
                Ok(Some(Event::NeedContinuation { .. })) => self.send(b"+ Ready for literal data\r\n").await?,
                Ok(None) => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
                Err(e) => {
                    self.bad += 1;
                    self.send(e.bad_response().as_bytes()).await?;
                    if self.bad >= MAX_BAD_COMMANDS {
                        self.send(b"* BYE Too many invalid commands\r\n").await?;
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

    async fn login(&mut self, command: Command) -> Result<Option<Outcome>> {
        let tag = command.tag;
        if !self.plaintext_allowed() {
            let refusal = format!("{tag} NO [PRIVACYREQUIRED] Cleartext login is disabled on this connection\r\n");
            self.send(refusal.as_bytes()).await?;
            return Ok(None);
        }
        let [user, pass] = command.args.as_slice() else {
            self.send(format!("{tag} BAD LOGIN expects a user name and a password\r\n").as_bytes()).await?;
            return Ok(None);
        };
        let (Some(user), Some(pass)) = (user.as_str(), pass.as_str()) else {
            self.send(format!("{tag} BAD LOGIN arguments must be UTF-8 strings\r\n").as_bytes()).await?;
            return Ok(None);
        };
        self.replay(&tag, Credential::password(user, pass)).await.map(Some)
    }

    async fn authenticate(&mut self, command: Command) -> Result<Option<Outcome>> {
        let tag = command.tag;
        let Some(mechanism) = command.args.first().and_then(Arg::as_str).and_then(Mechanism::from_name) else {
            self.send(format!("{tag} NO Unsupported authentication mechanism\r\n").as_bytes()).await?;
            return Ok(None);
        };
        if !self.plaintext_allowed() {
            let refusal =
                format!("{tag} NO [PRIVACYREQUIRED] Authentication is disabled on this connection before TLS\r\n");
            self.send(refusal.as_bytes()).await?;
            return Ok(None);
        }
        let initial = command.args.get(1).and_then(Arg::as_bytes).map(<[u8]>::to_vec);
        let max_line = self.ctx.listener.max_line_length;
        match auth::exchange(self, mechanism, initial.as_deref(), max_line).await? {
            SaslOutcome::Done(credential) => self.replay(&tag, credential).await.map(Some),
            SaslOutcome::Cancelled => {
                self.send(format!("{tag} BAD Authentication cancelled\r\n").as_bytes()).await?;
                Ok(None)
            }
            SaslOutcome::Invalid(e) => {
                self.send(format!("{tag} BAD Invalid SASL response: {e}\r\n").as_bytes()).await?;
                Ok(Some(Outcome::Rejected))
            }
            SaslOutcome::Closed => Ok(Some(Outcome::Closed)),
        }
    }

    /// Steps 4–6 through the shared pipeline; the verdict is relayed under the client's tag.
    async fn replay(&mut self, tag: &str, credential: Credential) -> Result<Outcome> {
        match self.ctx.login(&mut Imap::default(), &credential, &self.identity).await {
            Ok(Login::Accepted { route, backend, verdict }) => {
                self.relay(tag, &verdict).await?;
                Ok(Outcome::Authenticated(route, backend))
            }
            Ok(Login::Rejected(verdict)) => {
                self.relay(tag, &verdict).await?;
                Ok(Outcome::Rejected)
            }
            Err(Error::Client(why)) => {
                tracing::debug!(reason = %why, "login refused");
                self.send(format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed\r\n").as_bytes()).await?;
                Ok(Outcome::Rejected)
            }
            Err(e) => {
                tracing::warn!(error = %e, "backend unavailable");
                let reply = format!("{tag} NO [UNAVAILABLE] Backend temporarily unavailable, try again later\r\n");
                self.send(reply.as_bytes()).await?;
                Ok(Outcome::Rejected)
            }
        }
    }

    /// Untagged lines as they are, the status line under the client's tag.
    async fn relay(&mut self, tag: &str, verdict: &Verdict) -> Result<()> {
        let mut out = Vec::new();
        if let Some((last, untagged)) = verdict.lines.split_last() {
            for line in untagged {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("{tag} ").as_bytes());
            out.extend_from_slice(last);
            out.extend_from_slice(b"\r\n");
        }
        self.send(&out).await
    }
}

impl SaslChannel for Session {
    async fn challenge(&mut self, challenge: &[u8]) -> Result<Response> {
        self.send(&auth::plus_challenge(challenge)).await?;
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
