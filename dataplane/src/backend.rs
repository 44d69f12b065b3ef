//! The backend leg, shared by every protocol: connect through the breaker, read the
//! greeting, upgrade with STARTTLS, forward the client's identity ([`SessionCtx::establish`],
//! also the start of an SMTP/LMTP delivery), then for a login replay the credential and
//! hand the connection to the bridge.
//!
//! A protocol supplies only its [`Dialect`]: how its backend greets, how it is told who the
//! client is, and for a login ([`LoginDialect`]) how one SASL command is sent and answered.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use crate::breaker::Permit;
use crate::codec::line::LineBuffer;
use crate::codec::mechanism::Credential;
use crate::config::{Forwarding, TlsMode};
use crate::error::{Blame, Error, Result};
use crate::identity::{Forwarded, Identity};
use crate::session::{Route, SessionCtx};
use crate::sessions::KickHandle;
use crate::settings::FleetSettings;
use crate::tls::MaybeTls;

pub(crate) mod smtp;

/// The backend's longest acceptable response line (capability lists can be long).
const MAX_LINE: usize = 64 * 1024;

/// How often a login starts over because its account's sessions were kicked (a move)
/// before the backend's verdict reached the client.
const LOGIN_ROUNDS: usize = 3;

/// A backend connection while the proxy still speaks to it line by line. Every error it
/// returns is the backend's ([`Blame::Backend`]): a read past the step's deadline, a close,
/// a line too long, a failed write.
pub(crate) struct Leg {
    stream: MaybeTls,
    lines: LineBuffer,
    deadline: Instant,
    destination: String,
}

impl Leg {
    fn new(stream: MaybeTls, deadline: Instant, destination: &str) -> Self {
        Self { stream, lines: LineBuffer::new(MAX_LINE), deadline, destination: destination.to_owned() }
    }

    /// The next line without CRLF, before the current step's deadline.
    pub(crate) async fn read_line(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(line) = self.lines.next_line().map_err(|e| self.broken(e))? {
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// Exactly `n` bytes (a literal inside a response), bounded like a line.
    pub(crate) async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>> {
        if n > MAX_LINE {
            return Err(self.broken(format!("literal of {n} bytes exceeds {MAX_LINE}")));
        }
        loop {
            if let Some(body) = self.lines.take_exact(n) {
                return Ok(body);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<()> {
        let mut buf = [0u8; 4096];
        let n = match timeout_at(self.deadline, self.stream.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(self.failed("read", e)),
            Err(_) => return Err(Error::backend_timeout(&self.destination, "no reply in time")),
        };
        if n == 0 {
            return Err(self.broken("closed the connection"));
        }
        self.lines.push(&buf[..n]);
        Ok(())
    }

    /// Writes `bytes` before the current step's deadline: a backend that stops reading
    /// holds the login no longer than one that stops answering.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        match timeout_at(self.deadline, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.failed("write", e)),
            Err(_) => Err(Error::backend_timeout(&self.destination, "not reading in time")),
        }
    }

    /// A read or write on the stream failed; the system's own timeout (the backend's
    /// host stopped acknowledging) is a timeout like the step's deadline.
    fn failed(&self, what: &str, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::TimedOut => Error::backend_timeout(&self.destination, format!("{what}: {e}")),
            _ => self.broken(format!("{what}: {e}")),
        }
    }

    /// The backend broke its protocol (`reason` says how): a dialect's error for a reply
    /// it cannot use.
    pub(crate) fn broken(&self, reason: impl std::fmt::Display) -> Error {
        Error::backend(&self.destination, reason)
    }

    /// The stream and whatever the backend already sent past the last line read.
    pub(crate) fn into_parts(mut self) -> (MaybeTls, Vec<u8>) {
        let rest = self.lines.take_remaining();
        (self.stream, rest)
    }
}

/// A logged-in backend leg and the account's session registration, for the bridge. Boxed:
/// the two would make every login outcome carrying a connection much larger than the others.
pub(crate) struct BackendConn(Box<(Leg, KickHandle)>);

impl BackendConn {
    /// `kick` is the account's session registration, taken before the route was looked up;
    /// the bridge keeps it, so a kick reaches the session from the lookup to its end.
    fn new(leg: Leg, kick: KickHandle) -> Self {
        Self(Box::new((leg, kick)))
    }

    /// The stream, whatever the backend already sent past the verdict, and the session's
    /// registration.
    pub(crate) fn into_parts(self) -> (MaybeTls, Vec<u8>, KickHandle) {
        let (leg, kick) = *self.0;
        let (stream, rest) = leg.into_parts();
        (stream, rest, kick)
    }
}

/// The backend's answer to the replayed credential, as lines for the client (without
/// CRLF). The last line is the status line; a dialect strips its own tag from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub accepted: bool,
    pub lines: Vec<Vec<u8>>,
}

impl Verdict {
    /// The lines as the client gets them, each ended by CRLF.
    pub(crate) fn to_wire(&self) -> Vec<u8> {
        crate::codec::line::join_crlf(&self.lines)
    }
}

/// A protocol's side of establishing a backend leg: what it learns on the way (offered
/// capabilities) is its own state, kept in plain fields from one step to the next.
pub(crate) trait Dialect: Send {
    /// Reads the greeting (and does whatever must precede authentication). An error means
    /// the backend is not healthy and counts against its breaker.
    fn greet(&mut self, leg: &mut Leg) -> impl Future<Output = Result<()>> + Send;
    /// Sends the protocol's STARTTLS and reads its go-ahead.
    fn starttls(&mut self, leg: &mut Leg) -> impl Future<Output = Result<()>> + Send;
    /// What the protocol redoes once TLS is up (SMTP's EHLO, ManageSieve's capabilities).
    fn after_tls(&mut self, _leg: &mut Leg) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }
    /// Tells the backend who the client is (IMAP `ID`, `XCLIENT`) on an endpoint with
    /// `forwarding = "xclient"`, once greeted and encrypted. A backend that does not offer
    /// or refuses it is `Declined`, not an error; an error breaks the establishment.
    fn forward_identity(
        &mut self,
        _leg: &mut Leg,
        _identity: &Identity,
    ) -> impl Future<Output = Result<Forwarded>> + Send {
        std::future::ready(Ok(Forwarded::Declined("the protocol has no identity command".into())))
    }
}

/// A login protocol's dialect: establishment, then the credential.
pub(crate) trait LoginDialect: Dialect {
    /// Sends the credential as one SASL command and reads the verdict.
    fn authenticate(&mut self, leg: &mut Leg, credential: &Credential) -> impl Future<Output = Result<Verdict>> + Send;
}

/// How a login ended at the backend.
pub(crate) enum Login {
    Accepted { route: Route, backend: BackendConn, verdict: Verdict },
    Rejected(Verdict),
}

impl SessionCtx {
    /// The login: route the credential's account, establish the backend session as
    /// `identity` and replay the credential. `Err` is a temporary failure for the client,
    /// except a [`Blame::Client`] one (the credential names no usable account).
    ///
    /// The account's session is registered before its route is looked up: a kick (the
    /// last step of a move) that arrives before the backend's verdict drops the attempt,
    /// closing its backend connection, and the login starts over on the route as it is now;
    /// one that arrives later closes the bridged session.
    pub(crate) async fn login<D: LoginDialect>(
        &self,
        dialect: &mut D,
        credential: &Credential,
        identity: &Identity,
    ) -> Result<Login> {
        let identifier =
            credential.identifier().ok_or_else(|| Error::Client("the credential names no account".into()))?;
        if identity.looped() {
            tracing::warn!(client = %identity.client, "proxy loop: the hop TTL from the upstream proxy ran out");
            return Err(Error::Routing("proxy loop (hop TTL exhausted)".into()));
        }
        let (settings, key) = self.route_key(&identifier)?;
        for _ in 0..LOGIN_ROUNDS {
            let kick = self.node.sessions.register(&key, &self.node.kill_sessions);
            let kicked = kick.token.clone();
            tokio::select! {
                login = self.attempt(&settings, &key, kick, &mut *dialect, credential, identity) => return login,
                // The attempt, its backend connection and its registration are dropped here.
                _ = kicked.cancelled() => {}
            }
            if self.node.kill_sessions.is_cancelled() {
                return Err(Error::Node("the node is closing its sessions".into()));
            }
            tracing::debug!(account = %crate::routekey::redact(&key), "login restarted: the account's sessions were kicked");
        }
        Err(Error::Routing("the account's sessions were kicked again and again during the login".into()))
    }

    /// One try at routing, connecting and replaying for `key`, registered as `kick`.
    async fn attempt<D: LoginDialect>(
        &self,
        settings: &Arc<FleetSettings>,
        key: &str,
        kick: KickHandle,
        dialect: &mut D,
        credential: &Credential,
        identity: &Identity,
    ) -> Result<Login> {
        let route = self.route_key_to(settings, key.to_owned(), true).await?;
        let (mut leg, permit) = self.establish(&route, dialect, identity).await?;
        let wait = route.settings.breaker.login_timeout;
        leg.deadline = Instant::now() + wait;
        let answer = dialect.authenticate(&mut leg, credential).await;
        let verdict = settle(permit, answer, wait)?;
        if verdict.accepted {
            Ok(Login::Accepted { route, backend: BackendConn::new(leg, kick), verdict })
        } else {
            tracing::debug!(destination = %route.destination.id, "backend rejected the credentials");
            Ok(Login::Rejected(verdict))
        }
    }

    /// Connects, greets, for a STARTTLS endpoint upgrades the leg, and forwards the client's
    /// identity, within the route's `connect_timeout`. An error the backend is to blame for
    /// is a breaker failure; any other leaves the permit unsettled. On success the permit is
    /// returned unsettled, for the caller to settle (a login by its outcome, see [`settle`];
    /// a delivery at once).
    pub(crate) async fn establish<D: Dialect>(
        &self,
        route: &Route,
        dialect: &mut D,
        identity: &Identity,
    ) -> Result<(Leg, Permit)> {
        // A PROXY header names the same client as ID/XCLIENT (a trusted upstream's, if any).
        let seen = SessionCtx { client: identity.client, local: identity.local, ..self.clone() };
        let (stream, permit) = seen.connect(route).await?;
        let deadline = Instant::now() + route.settings.breaker.connect_timeout;
        let leg = Leg::new(stream, deadline, &route.destination.id);
        let set_up = self.set_up(route, dialect, leg, identity).await;
        settle_set_up(permit, set_up)
    }

    /// The dialect's steps of [`Self::establish`] on a connected leg.
    async fn set_up<D: Dialect>(
        &self,
        route: &Route,
        dialect: &mut D,
        mut leg: Leg,
        identity: &Identity,
    ) -> Result<Leg> {
        dialect.greet(&mut leg).await?;
        if route.endpoint.tls == TlsMode::Starttls {
            leg = self.starttls(route, dialect, leg).await?;
        }
        if route.endpoint.forwarding == Forwarding::Xclient {
            forward_identity(route, dialect, &mut leg, identity).await?;
        }
        Ok(leg)
    }

    /// The protocol's STARTTLS, the handshake, and what the protocol redoes after it.
    async fn starttls<D: Dialect>(&self, route: &Route, dialect: &mut D, mut leg: Leg) -> Result<Leg> {
        dialect.starttls(&mut leg).await?;
        // Anything the backend sent after its go-ahead was not protected: refuse it.
        if !leg.lines.is_empty() {
            return Err(leg.broken("data after the STARTTLS reply"));
        }
        leg.stream = self.backend_tls(route, leg.stream).await?;
        dialect.after_tls(&mut leg).await?;
        Ok(leg)
    }
}

/// Settles an establishment's breaker permit by its error's blame: a backend that could
/// not be set up is a failure; the node's own fault (its client certificate) or anyone
/// else's leaves the permit unsettled. A leg that is set up keeps its permit unsettled.
fn settle_set_up(permit: Permit, set_up: Result<Leg>) -> Result<(Leg, Permit)> {
    match set_up {
        Ok(leg) => Ok((leg, permit)),
        Err(e) if e.blame() == Blame::Backend => {
            permit.failure();
            Err(e)
        }
        // Dropped unsettled: a probe lets the next session probe instead.
        Err(e) => Err(e),
    }
}

/// Settles a login's breaker permit by how the login ended, so a half-open breaker's probe
/// is judged by its login and not just by its greeting. A verdict, whatever it says, is the
/// backend working (a wrong password included); a backend that let the `login_timeout`
/// (`wait`) pass without a verdict is a breaker failure. Any other end settles nothing,
/// whoever is to blame: the backend closing or sending something that is no reply can be
/// provoked by what a client sends, and a client must not be able to open a destination's
/// breaker. The error is the reason for the client's temporary failure.
fn settle(permit: Permit, answer: Result<Verdict>, wait: Duration) -> Result<Verdict> {
    match answer {
        Ok(verdict) => {
            permit.success();
            Ok(verdict)
        }
        Err(e) if e.blame() == Blame::Backend && e.timed_out() => {
            permit.failure();
            Err(e.during(&format!("no verdict within the login timeout ({wait:?})")))
        }
        // Dropped unsettled: a probe lets the next login probe instead.
        Err(e) => Err(e.during("no verdict")),
    }
}

/// The identity step of [`SessionCtx::establish`]. A backend that will not take it still
/// serves the session: refusing would turn a backend's trust setting into an outage, while
/// the cost is its logs and rate limits seeing the node's address, which the warning names.
async fn forward_identity<D: Dialect>(
    route: &Route,
    dialect: &mut D,
    leg: &mut Leg,
    identity: &Identity,
) -> Result<()> {
    match dialect.forward_identity(leg, identity).await {
        Ok(Forwarded::Accepted) => Ok(()),
        Ok(Forwarded::Declined(why)) => {
            tracing::warn!(
                destination = %route.destination.id,
                reason = %why,
                "backend did not take the client identity; it sees the node's address"
            );
            Ok(())
        }
        Err(e) => Err(e.during("forwarding the client identity")),
    }
}

/// A short, printable excerpt of a backend line for error messages.
pub(crate) fn excerpt(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned()
}

/// Whether `line` opens with the status word `word` (any case) followed by a space or its end.
pub(crate) fn status_is(line: &[u8], word: &[u8]) -> bool {
    line.get(..word.len()).is_some_and(|head| head.eq_ignore_ascii_case(word))
        && matches!(line.get(word.len()), None | Some(b' '))
}

#[cfg(test)]
mod tests;
