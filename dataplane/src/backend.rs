//! The backend leg of a login, shared by every protocol: connect through the breaker,
//! read the greeting, replay the credential, and hand the connection to the bridge.
//!
//! A protocol supplies only its [`Dialect`]: how its backend greets, how it is told who the
//! client is, and how one SASL command is sent and answered.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use crate::breaker::Permit;
use crate::codec::line::LineBuffer;
use crate::codec::mechanism::Credential;
use crate::config::{Forwarding, TlsMode};
use crate::error::{Error, Result};
use crate::identity::{Forwarded, Identity};
use crate::pipeline::{BackendTlsError, Route, SessionCtx};
use crate::sessions::KickHandle;
use crate::settings::{BreakerSettings, FleetSettings};
use crate::tls::MaybeTls;

/// The backend's longest acceptable response line (capability lists can be long).
const MAX_LINE: usize = 64 * 1024;

/// How often a login starts over because its account's sessions were kicked (a move)
/// before the backend's verdict reached the client.
const LOGIN_ROUNDS: usize = 3;

/// A backend connection while the proxy still speaks to it line by line.
pub struct BackendConn {
    stream: MaybeTls,
    lines: LineBuffer,
    deadline: Instant,
    /// The account's session registration, taken before the route was looked up; the
    /// bridge keeps it, so a kick reaches the session from the lookup to its end. Boxed:
    /// it would make every login outcome carrying a connection much larger than the others.
    kick: Box<KickHandle>,
}

impl BackendConn {
    fn new(stream: MaybeTls, deadline: Instant, kick: KickHandle) -> Self {
        Self { stream, lines: LineBuffer::new(MAX_LINE), deadline, kick: Box::new(kick) }
    }

    /// The next line without CRLF, before the current step's deadline.
    pub async fn read_line(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(line) = self.lines.next_line().map_err(|e| Error::Client(format!("backend: {e}")))? {
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// Exactly `n` bytes (a literal inside a response), bounded like a line.
    pub async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>> {
        if n > MAX_LINE {
            return Err(Error::Client(format!("backend: literal of {n} bytes exceeds {MAX_LINE}")));
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
        let n = timeout_at(self.deadline, self.stream.read(&mut buf))
            .await
            .map_err(|_| Error::Io(std::io::ErrorKind::TimedOut.into()))??;
        if n == 0 {
            return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        self.lines.push(&buf[..n]);
        Ok(())
    }

    /// Writes `bytes` before the current step's deadline: a backend that stops reading
    /// holds the login no longer than one that stops answering.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        timeout_at(self.deadline, self.stream.write_all(bytes))
            .await
            .map_err(|_| Error::Io(std::io::ErrorKind::TimedOut.into()))??;
        Ok(())
    }

    /// The stream, whatever the backend already sent past the verdict, and the session's
    /// registration.
    pub fn into_parts(mut self) -> (MaybeTls, Vec<u8>, KickHandle) {
        let rest = self.lines.take_remaining();
        (self.stream, rest, *self.kick)
    }
}

/// The backend's answer to the replayed credential, as lines for the client (without
/// CRLF). The last line is the status line; a dialect strips its own tag from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: bool,
    pub lines: Vec<Vec<u8>>,
}

impl Verdict {
    /// The lines as the client gets them, each ended by CRLF.
    pub fn to_wire(&self) -> Vec<u8> {
        crate::codec::line::join_crlf(&self.lines)
    }
}

/// A protocol's side of the backend conversation.
pub trait Dialect: Sync {
    /// Reads the greeting (and does whatever must precede authentication). An error means
    /// the backend is not healthy and counts against its breaker.
    fn greet(&self, conn: &mut BackendConn) -> impl Future<Output = Result<()>> + Send;
    /// Sends the protocol's STARTTLS and reads its go-ahead.
    fn starttls(&self, conn: &mut BackendConn) -> impl Future<Output = Result<()>> + Send;
    /// What the protocol redoes once TLS is up (SMTP's EHLO, ManageSieve's capabilities).
    fn after_tls(&self, _conn: &mut BackendConn) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }
    /// Tells the backend who the client is (IMAP `ID`, `XCLIENT`) on an endpoint with
    /// `forwarding = "xclient"`, once greeted and encrypted. A backend that does not offer
    /// or refuses it is `Declined`, not an error; an error breaks the establishment.
    fn forward_identity(
        &self,
        _conn: &mut BackendConn,
        _identity: &Identity,
    ) -> impl Future<Output = Result<Forwarded>> + Send {
        std::future::ready(Ok(Forwarded::Declined("the protocol has no identity command".into())))
    }
    /// Sends the credential as one SASL command and reads the verdict.
    fn authenticate(
        &self,
        conn: &mut BackendConn,
        credential: &Credential,
    ) -> impl Future<Output = Result<Verdict>> + Send;
}

/// How a login ended at the backend.
pub enum Login {
    Accepted { route: Route, backend: BackendConn, verdict: Verdict },
    Rejected(Verdict),
}

impl SessionCtx {
    /// Steps 4–6: route the credential's account, establish the backend session as
    /// `identity` and replay the credential. `Err` is a temporary failure for the client.
    ///
    /// The account's session is registered before its route is looked up: a kick (the
    /// last step of a move) that arrives before the backend's verdict drops the attempt,
    /// closing its backend connection, and the login starts over on the route as it is now;
    /// one that arrives later closes the bridged session.
    pub async fn login<D: Dialect>(&self, dialect: &D, credential: &Credential, identity: &Identity) -> Result<Login> {
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
                login = self.attempt(&settings, &key, kick, dialect, credential, identity) => return login,
                // The attempt, its backend connection and its registration are dropped here.
                _ = kicked.cancelled() => {}
            }
            if self.node.kill_sessions.is_cancelled() {
                return Err(Error::Routing("the node is closing its sessions".into()));
            }
            tracing::debug!(account = %crate::routekey::redact(&key), "login restarted: the account's sessions were kicked");
        }
        Err(Error::Routing("the account's sessions were kicked again and again during the login".into()))
    }

    /// One try at steps 5–6 for `key`, registered as `kick`.
    async fn attempt<D: Dialect>(
        &self,
        settings: &FleetSettings,
        key: &str,
        kick: KickHandle,
        dialect: &D,
        credential: &Credential,
        identity: &Identity,
    ) -> Result<Login> {
        let route = self.route_key_to(settings, key.to_owned(), true).await?;
        let (mut backend, permit) = self.establish(&route, &settings.breaker, kick, dialect, identity).await?;
        let wait = settings.breaker.login_timeout;
        backend.deadline = Instant::now() + wait;
        let answer = dialect.authenticate(&mut backend, credential).await;
        let verdict = settle(permit, answer, wait).map_err(|e| Error::unavailable(&route.destination.id, e))?;
        if verdict.accepted {
            Ok(Login::Accepted { route, backend, verdict })
        } else {
            tracing::debug!(destination = %route.destination.id, "backend rejected the credentials");
            Ok(Login::Rejected(verdict))
        }
    }

    /// Connects, greets, for a STARTTLS endpoint upgrades the leg, and forwards the client's
    /// identity. A failure here is a breaker failure; on success the permit is returned
    /// unsettled, for the login's outcome to settle (see [`settle`]).
    async fn establish<D: Dialect>(
        &self,
        route: &Route,
        breaker: &BreakerSettings,
        kick: KickHandle,
        dialect: &D,
        identity: &Identity,
    ) -> Result<(BackendConn, Permit)> {
        // A PROXY header names the same client as ID/XCLIENT (a trusted upstream's, if any).
        let seen = SessionCtx { client: identity.client, local: identity.local, ..self.clone() };
        let (stream, permit) = seen.connect(route).await?;
        let mut conn = BackendConn::new(stream, Instant::now() + breaker.connect_timeout, kick);
        let greeted = match dialect.greet(&mut conn).await {
            Ok(()) if route.endpoint.tls == TlsMode::Starttls => self.starttls(route, dialect, conn).await,
            Ok(()) => Ok(conn),
            Err(e) => Err(BackendTlsError::Backend(e.to_string())),
        };
        let ready = match greeted {
            Ok(conn) if route.endpoint.forwarding == Forwarding::Xclient => {
                forward_identity(route, dialect, conn, identity).await
            }
            other => other,
        };
        match ready {
            Ok(conn) => Ok((conn, permit)),
            Err(BackendTlsError::Node(e)) => Err(e),
            Err(BackendTlsError::Backend(e)) => {
                permit.failure();
                Err(Error::backend(&route.destination.id, e))
            }
        }
    }

    /// The protocol's STARTTLS, the handshake, and what the protocol redoes after it.
    async fn starttls<D: Dialect>(
        &self,
        route: &Route,
        dialect: &D,
        mut conn: BackendConn,
    ) -> Result<BackendConn, BackendTlsError> {
        let backend = |e: Error| BackendTlsError::Backend(e.to_string());
        dialect.starttls(&mut conn).await.map_err(backend)?;
        // Anything the backend sent after its go-ahead was not protected: refuse it.
        if !conn.lines.is_empty() {
            return Err(BackendTlsError::Backend("data after the STARTTLS reply".into()));
        }
        conn.stream = self.backend_tls(route, conn.stream).await?;
        dialect.after_tls(&mut conn).await.map_err(backend)?;
        Ok(conn)
    }
}

/// Settles a login's breaker permit by how the login ended, so a half-open breaker's probe
/// is judged by its login and not just by its greeting. A verdict, whatever it says, is the
/// backend working (a wrong password included); no verdict within `login_timeout` (`wait`)
/// is a breaker failure. Any other end (the backend closed or sent something that is no
/// reply, or the node would not send the credential) settles nothing: a client can provoke
/// those with what it sends, and must not be able to open a destination's breaker. The
/// error is the reason for the client's temporary failure.
fn settle(permit: Permit, answer: Result<Verdict>, wait: Duration) -> Result<Verdict, String> {
    match answer {
        Ok(verdict) => {
            permit.success();
            Ok(verdict)
        }
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            permit.failure();
            Err(format!("no verdict within the login timeout ({wait:?})"))
        }
        // Dropped unsettled: a probe lets the next login probe instead.
        Err(e) => Err(format!("no verdict: {e}")),
    }
}

/// The identity step of [`SessionCtx::establish`]. A backend that will not take it still
/// serves the login: refusing would turn a backend's trust setting into an outage, while
/// the cost is its logs and rate limits seeing the node's address, which the warning names.
async fn forward_identity<D: Dialect>(
    route: &Route,
    dialect: &D,
    mut conn: BackendConn,
    identity: &Identity,
) -> Result<BackendConn, BackendTlsError> {
    match dialect.forward_identity(&mut conn, identity).await {
        Ok(Forwarded::Accepted) => Ok(conn),
        Ok(Forwarded::Declined(why)) => {
            tracing::warn!(
                destination = %route.destination.id,
                reason = %why,
                "backend did not take the client identity; it sees the node's address"
            );
            Ok(conn)
        }
        Err(e) => Err(BackendTlsError::Backend(format!("forwarding the client identity: {e}"))),
    }
}

/// A short, printable excerpt of a backend line for error messages.
pub fn excerpt(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned()
}

/// Whether `line` opens with the status word `word` (any case) followed by a space or its end.
pub fn status_is(line: &[u8], word: &[u8]) -> bool {
    line.get(..word.len()).is_some_and(|head| head.eq_ignore_ascii_case(word))
        && matches!(line.get(word.len()), None | Some(b' '))
}

#[cfg(test)]
mod tests;
