//! The client leg of a login protocol (IMAP, POP3, ManageSieve, submission) before
//! authentication: the client stream, its read buffer (the protocol's parser) and the
//! pre-auth budget, with the parts every protocol shares: reading the next command, the
//! invalid-command and failed-login limits, the SASL challenge loop, replaying a credential
//! to the backend, STARTTLS and the hand-over to the bridge. A protocol brings its
//! [`Grammar`] (parser, framing, goodbyes) and its [`Replies`] to a login.

use std::marker::PhantomData;
use std::sync::Arc;

use tokio::time::Instant;

use super::Read;
use crate::auth::{self, Response, SaslChannel, SaslOutcome};
use crate::backend::{BackendConn, Login, LoginDialect, Verdict};
use crate::codec::mechanism::{Credential, Mechanism};
use crate::codec::CodecError;
use crate::config::ListenerConfig;
use crate::error::{Blame, Result};
use crate::identity::Identity;
use crate::preauth::End;
use crate::session::{Route, SessionCtx};
use crate::tls::MaybeTls;

/// Invalid commands tolerated before the client is disconnected.
const MAX_BAD_COMMANDS: u32 = 10;

/// What one parser step found in the client's bytes.
pub(crate) enum Parsed<C> {
    Command(C),
    /// Send this to the client and parse on (IMAP's go-ahead for a synchronizing literal).
    Continue(&'static [u8]),
    /// The input was no valid command; this is the protocol's answer to it.
    Invalid(Vec<u8>),
    /// More bytes are needed.
    Incomplete,
}

/// A protocol's command grammar and framing on the client leg.
pub(crate) trait Grammar {
    type Parser: Send;
    type Command: Send;
    /// The goodbye once the pre-auth budget is spent.
    const TIMEOUT: &'static [u8];
    /// The goodbye once [`MAX_BAD_COMMANDS`] commands were invalid.
    const TOO_MANY_INVALID: &'static [u8];
    /// Whether the invalid command that reaches the limit is answered before the goodbye
    /// (IMAP, submission) or the goodbye is its answer (POP3, ManageSieve).
    const ANSWER_LAST_INVALID: bool;
    /// The goodbye once `max_auth_attempts` logins failed; `None` when the failure's own
    /// reply is the last word (POP3 has no unsolicited responses).
    const TOO_MANY_FAILURES: Option<&'static [u8]>;

    /// A parser that holds nothing yet.
    fn parser(listener: &ListenerConfig) -> Self::Parser;
    fn push(parser: &mut Self::Parser, bytes: &[u8]);
    fn next_command(parser: &mut Self::Parser) -> Parsed<Self::Command>;
    /// One SASL response line (a literal too, in ManageSieve).
    fn next_response(parser: &mut Self::Parser) -> Result<Option<Vec<u8>>, CodecError>;
    /// What the client sent past the login, for the bridge.
    fn take_remaining(parser: &mut Self::Parser) -> Vec<u8>;
    /// One SASL challenge as the protocol frames it (the bytes are raw, not yet base64).
    fn challenge(challenge: &[u8]) -> Vec<u8>;
}

/// How a protocol answers one login (IMAP's answers carry the command's tag).
pub(crate) trait Replies: Sync {
    /// The backend's verdict as the client gets it; by default its lines as they are.
    fn verdict(&self, verdict: &Verdict) -> Vec<u8> {
        verdict.to_wire()
    }
    /// The node would not try the credential (it names no account, for one).
    fn refused(&self) -> Vec<u8>;
    /// A temporary failure: no backend, no route, or no verdict from the backend.
    fn unavailable(&self) -> Vec<u8>;
    /// The client cancelled the SASL exchange with `*`.
    fn cancelled(&self) -> Vec<u8>;
    /// A SASL response that was no valid one.
    fn invalid(&self, e: &CodecError) -> Vec<u8>;
}

/// How a login ended, the same in every protocol. Every end but `Accepted` is a failed
/// attempt: the session stays open for another one until `max_auth_attempts`.
pub(crate) enum LoginOutcome {
    Accepted(Route, BackendConn),
    /// The backend said no; its verdict went to the client.
    Rejected(Verdict),
    /// The node did not try the credential.
    Refused,
    /// A temporary failure (backend, route, control plane).
    Unavailable,
}

/// What one client command came to.
pub(crate) enum Turn {
    Answered,
    /// A failed authentication attempt that involved no login (an invalid SASL response).
    Failed,
    Login(LoginOutcome),
    /// The client left, timed out or was sent away.
    Closed,
}

/// The client leg before authentication; see the module doc.
pub(crate) struct ClientConn<G: Grammar> {
    stream: MaybeTls,
    parser: G::Parser,
    listener: Arc<ListenerConfig>,
    /// The pre-auth budget's end, kept across STARTTLS.
    deadline: Instant,
    failures: u32,
    bad: u32,
    grammar: PhantomData<fn() -> G>,
}

impl<G: Grammar> ClientConn<G> {
    /// The client leg of a session that starts now, with its pre-auth budget.
    pub(crate) fn new(ctx: &SessionCtx, stream: MaybeTls) -> Self {
        ClientConn {
            stream,
            parser: G::parser(&ctx.listener),
            listener: Arc::clone(&ctx.listener),
            deadline: ctx.preauth_deadline(),
            failures: 0,
            bad: 0,
            grammar: PhantomData,
        }
    }

    pub(crate) fn stream(&self) -> &MaybeTls {
        &self.stream
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// May this connection carry credentials now (see [`auth::credentials_allowed`]).
    pub(crate) fn credentials_allowed(&self) -> bool {
        auth::credentials_allowed(&self.listener, self.is_tls())
    }

    /// A write the client must take before the pre-auth budget ends (the reply under way
    /// when it ends, such as a late verdict or the timeout's goodbye, still gets a moment).
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        super::send(&mut self.stream, bytes, super::at_least_goodbye(self.deadline)).await
    }

    /// Sends `reply` to a command that needed nothing more.
    pub(crate) async fn answer(&mut self, reply: &[u8]) -> Result<Turn> {
        self.send(reply).await?;
        Ok(Turn::Answered)
    }

    /// Answers an invalid command with `reply`; past the limit the session ends.
    pub(crate) async fn bad(&mut self, reply: &[u8]) -> Result<Turn> {
        Ok(if self.invalid(reply).await? { Turn::Answered } else { Turn::Closed })
    }

    /// Counts an invalid command and answers it; false once the limit is reached.
    async fn invalid(&mut self, reply: &[u8]) -> Result<bool> {
        self.bad += 1;
        let last = self.bad >= MAX_BAD_COMMANDS;
        if !last || G::ANSWER_LAST_INVALID {
            self.send(reply).await?;
        }
        if last {
            self.send(G::TOO_MANY_INVALID).await?;
        }
        Ok(!last)
    }

    /// Reads until one complete command, answering invalid input. `None` when the client
    /// left or was sent away. Past the pre-auth deadline nothing more is served, however
    /// much was pipelined.
    pub(crate) async fn next_command(&mut self) -> Result<Option<G::Command>> {
        if Instant::now() >= self.deadline {
            self.send(G::TIMEOUT).await?;
            return Ok(None);
        }
        loop {
            match G::next_command(&mut self.parser) {
                Parsed::Command(command) => return Ok(Some(command)),
                Parsed::Continue(reply) => self.send(reply).await?,
                Parsed::Invalid(reply) => {
                    if !self.invalid(&reply).await? {
                        return Ok(None);
                    }
                }
                Parsed::Incomplete => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Reads more client bytes before the pre-auth deadline; false when the client left
    /// or the deadline passed (then after the timeout's goodbye).
    async fn fill(&mut self) -> Result<bool> {
        let mut buf = [0u8; 4096];
        match super::read(&mut self.stream, &mut &mut buf[..], self.deadline).await? {
            Read::Data(n) => {
                G::push(&mut self.parser, &buf[..n]);
                Ok(true)
            }
            Read::Closed => Ok(false),
            Read::TimedOut => {
                self.send(G::TIMEOUT).await?;
                Ok(false)
            }
        }
    }

    /// Where a command leaves the session: authenticated, closed, or (`None`) in the
    /// conversation. A failed attempt past `max_auth_attempts` closes it.
    pub(crate) async fn conclude(&mut self, turn: Turn) -> Result<Option<End>> {
        match turn {
            Turn::Answered => Ok(None),
            Turn::Closed => Ok(Some(End::Closed)),
            Turn::Login(LoginOutcome::Accepted(route, backend)) => Ok(Some(End::Authenticated(route, backend))),
            Turn::Failed | Turn::Login(_) => {
                self.failures += 1;
                if self.failures < self.listener.max_auth_attempts {
                    return Ok(None);
                }
                if let Some(goodbye) = G::TOO_MANY_FAILURES {
                    self.send(goodbye).await?;
                }
                Ok(Some(End::Closed))
            }
        }
    }

    /// A SASL exchange for `mechanism` (`initial` as the client sent it), then the
    /// credential replayed to the backend through `dialect`.
    pub(crate) async fn authenticate<D: LoginDialect>(
        &mut self,
        login: Replay<'_, D>,
        mechanism: Mechanism,
        initial: Option<&[u8]>,
        replies: &impl Replies,
    ) -> Result<Turn> {
        let max_line = self.listener.max_line_length;
        match auth::exchange(self, mechanism, initial, max_line).await? {
            SaslOutcome::Done(credential) => self.replay(login, &credential, replies).await.map(Turn::Login),
            SaslOutcome::Cancelled => self.answer(&replies.cancelled()).await,
            SaslOutcome::Invalid(e) => {
                self.send(&replies.invalid(&e)).await?;
                Ok(Turn::Failed)
            }
            SaslOutcome::Closed => Ok(Turn::Closed),
        }
    }

    /// Routes, establishes and replays `credential` through the shared login steps, and
    /// answers the client as `replies` words it.
    pub(crate) async fn replay<D: LoginDialect>(
        &mut self,
        login: Replay<'_, D>,
        credential: &Credential,
        replies: &impl Replies,
    ) -> Result<LoginOutcome> {
        let (reply, outcome) = match login.ctx.login(login.dialect, credential, login.identity).await {
            Ok(Login::Accepted { route, backend, verdict }) => {
                (replies.verdict(&verdict), LoginOutcome::Accepted(route, backend))
            }
            Ok(Login::Rejected(verdict)) => (replies.verdict(&verdict), LoginOutcome::Rejected(verdict)),
            Err(e) if e.blame() == Blame::Client => {
                tracing::debug!(reason = %e, "login refused");
                (replies.refused(), LoginOutcome::Refused)
            }
            Err(e) => {
                tracing::warn!(error = %e, "backend unavailable");
                (replies.unavailable(), LoginOutcome::Unavailable)
            }
        };
        self.send(&reply).await?;
        Ok(outcome)
    }

    /// Completes STARTTLS: the handshake within the pre-auth budget, then a fresh parser,
    /// so nothing the client pipelined in plaintext after the command survives into the
    /// encrypted session. The counts of failures and invalid commands carry over.
    pub(crate) async fn upgrade(self, ctx: &SessionCtx) -> Result<Self> {
        let stream = ctx.accept_tls(self.stream, self.deadline).await?;
        Ok(ClientConn { stream, parser: G::parser(&self.listener), ..self })
    }

    /// The client stream and what the client sent past the login, for the bridge.
    pub(crate) fn into_parts(mut self) -> (MaybeTls, Vec<u8>) {
        let remaining = G::take_remaining(&mut self.parser);
        (self.stream, remaining)
    }
}

/// What a login is replayed with: the session, the protocol's backend dialect and who the
/// backend is told the client is.
pub(crate) struct Replay<'a, D> {
    pub ctx: &'a SessionCtx,
    pub dialect: &'a mut D,
    pub identity: &'a Identity,
}

impl<G: Grammar> SaslChannel for ClientConn<G> {
    async fn challenge(&mut self, challenge: &[u8]) -> Result<Response> {
        self.send(&G::challenge(challenge)).await?;
        loop {
            if let Some(response) = auth::response(G::next_response(&mut self.parser)) {
                return Ok(response);
            }
            if !self.fill().await? {
                return Ok(Response::Closed);
            }
        }
    }
}
