//! IMAP on the client leg (RFC 3501/9051): the proxy's own greeting and pre-auth commands,
//! LOGIN and AUTHENTICATE PLAIN, then the credential replayed to the backend as one
//! AUTHENTICATE PLAIN and the backend's verdict relayed under the client's tag.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::codec::imap::{Arg, Command, Event, ImapParser};
use crate::codec::line::LineBuffer;
use crate::codec::sasl::{self, Credentials, SaslLine};
use crate::config::TlsMode;
use crate::error::{Error, Result};
use crate::pipeline::{Route, SessionCtx};

/// Parse errors tolerated before the client is disconnected.
const MAX_BAD_COMMANDS: u32 = 10;
/// The backend's longest acceptable response line (capability lists can be long).
const BACKEND_MAX_LINE: usize = 64 * 1024;
/// How long the backend may take to give its verdict on the credentials.
const BACKEND_AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn serve(ctx: SessionCtx, stream: TcpStream) {
    let parser = ImapParser::new(ctx.listener.max_line_length, ctx.listener.max_literal_size);
    let deadline = Instant::now() + ctx.listener.preauth_timeout;
    let mut session = Session {
        ctx,
        client: stream,
        parser,
        deadline,
        failures: 0,
        bad: 0,
    };
    match session.run().await {
        Ok(Some((route, backend))) => {
            let Session {
                ctx,
                client,
                mut parser,
                ..
            } = session;
            let BackendConn { stream, mut lines } = backend;
            ctx.bridge(
                &route,
                client,
                parser.take_remaining(),
                stream,
                lines.take_remaining(),
            )
            .await;
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "session ended before authentication"),
    }
}

struct Session<S> {
    ctx: SessionCtx,
    client: S,
    parser: ImapParser,
    deadline: Instant,
    failures: u32,
    bad: u32,
}

/// The backend connection while the proxy still speaks to it line by line.
struct BackendConn {
    stream: TcpStream,
    lines: LineBuffer,
}

/// What a login attempt ended in.
enum Outcome {
    Authenticated(Route, BackendConn),
    Rejected,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// The pre-auth conversation; returns the authenticated backend to bridge, if any.
    async fn run(&mut self) -> Result<Option<(Route, BackendConn)>> {
        let greeting = format!(
            "* OK [CAPABILITY {}] Switchyard ready\r\n",
            self.capabilities()
        );
        self.send(greeting.as_bytes()).await?;
        loop {
            let command = match self.next_command().await? {
                Some(c) => c,
                None => return Ok(None),
            };
            let tag = command.tag.clone();
            let outcome = match command.name.as_str() {
                "CAPABILITY" => {
                    let caps = format!(
                        "* CAPABILITY {}\r\n{tag} OK CAPABILITY completed\r\n",
                        self.capabilities()
                    );
                    self.send(caps.as_bytes()).await?;
                    continue;
                }
                "NOOP" => {
                    self.send(format!("{tag} OK NOOP completed\r\n").as_bytes())
                        .await?;
                    continue;
                }
                "ID" => {
                    let id = format!("* ID (\"name\" \"Switchyard\")\r\n{tag} OK ID completed\r\n");
                    self.send(id.as_bytes()).await?;
                    continue;
                }
                "LOGOUT" => {
                    let bye = format!("* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n");
                    self.send(bye.as_bytes()).await?;
                    return Ok(None);
                }
                "LOGIN" => self.login(command).await?,
                "AUTHENTICATE" => self.authenticate(command).await?,
                _ => {
                    self.send(
                        format!("{tag} BAD Command not valid before authentication\r\n").as_bytes(),
                    )
                    .await?;
                    continue;
                }
            };
            match outcome {
                Some(Outcome::Authenticated(route, backend)) => return Ok(Some((route, backend))),
                Some(Outcome::Rejected) => {
                    self.failures += 1;
                    if self.failures >= self.ctx.listener.max_auth_attempts {
                        self.send(b"* BYE Too many authentication failures\r\n")
                            .await?;
                        return Ok(None);
                    }
                }
                None => {}
            }
        }
    }

    fn plaintext_allowed(&self) -> bool {
        self.ctx.listener.allow_plaintext_auth || self.ctx.listener.tls != TlsMode::Plain
    }

    fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 SASL-IR LITERAL+ ID");
        if self.plaintext_allowed() {
            caps.push_str(" AUTH=PLAIN");
        } else {
            caps.push_str(" LOGINDISABLED");
        }
        caps
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.client.write_all(bytes).await?;
        Ok(())
    }

    /// Reads until one complete command; answers parse errors and literal continuations.
    async fn next_command(&mut self) -> Result<Option<Command>> {
        loop {
            match self.parser.next_event() {
                Ok(Some(Event::Command(c))) => return Ok(Some(c)),
                Ok(Some(Event::NeedContinuation { .. })) => {
                    self.send(b"+ Ready for literal data\r\n").await?
                }
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
        match timeout_at(self.deadline, self.client.read(&mut buf)).await {
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(n)) => {
                self.parser.push(&buf[..n]);
                Ok(true)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                self.send(b"* BYE Pre-authentication timeout\r\n").await?;
                Ok(false)
            }
        }
    }

    async fn login(&mut self, command: Command) -> Result<Option<Outcome>> {
        let tag = command.tag;
        if !self.plaintext_allowed() {
            let refusal = format!(
                "{tag} NO [PRIVACYREQUIRED] Cleartext login is disabled on this connection\r\n"
            );
            self.send(refusal.as_bytes()).await?;
            return Ok(None);
        }
        let [user, pass] = command.args.as_slice() else {
            self.send(format!("{tag} BAD LOGIN expects a user name and a password\r\n").as_bytes())
                .await?;
            return Ok(None);
        };
        let (Some(user), Some(pass)) = (user.as_str(), pass.as_str()) else {
            self.send(format!("{tag} BAD LOGIN arguments must be UTF-8 strings\r\n").as_bytes())
                .await?;
            return Ok(None);
        };
        let creds = Credentials {
            authzid: String::new(),
            authcid: user.to_string(),
            password: pass.to_string(),
        };
        self.replay(&tag, creds).await.map(Some)
    }

    async fn authenticate(&mut self, command: Command) -> Result<Option<Outcome>> {
        let tag = command.tag;
        let mechanism = command
            .args
            .first()
            .and_then(Arg::as_str)
            .map(str::to_ascii_uppercase);
        if mechanism.as_deref() != Some("PLAIN") {
            self.send(format!("{tag} NO Unsupported authentication mechanism\r\n").as_bytes())
                .await?;
            return Ok(None);
        }
        if !self.plaintext_allowed() {
            let refusal = format!("{tag} NO [PRIVACYREQUIRED] Cleartext authentication is disabled on this connection\r\n");
            self.send(refusal.as_bytes()).await?;
            return Ok(None);
        }
        let response = match command.args.get(1) {
            Some(ir) => ir
                .as_bytes()
                .map(|b| SaslLine::Data(b.to_vec()))
                .unwrap_or(SaslLine::Cancelled),
            None => match self.continuation().await? {
                Some(line) => match sasl::decode_base64_line(&line) {
                    Ok(SaslLine::Data(_)) => SaslLine::Data(line),
                    Ok(SaslLine::Cancelled) => SaslLine::Cancelled,
                    Err(e) => return self.bad_sasl(&tag, &e.to_string()).await,
                },
                None => return Ok(None),
            },
        };
        let SaslLine::Data(b64) = response else {
            self.send(format!("{tag} BAD Authentication cancelled\r\n").as_bytes())
                .await?;
            return Ok(None);
        };
        match sasl::decode_plain(&b64) {
            Ok(creds) => self.replay(&tag, creds).await.map(Some),
            Err(e) => self.bad_sasl(&tag, &e.to_string()).await,
        }
    }

    async fn bad_sasl(&mut self, tag: &str, why: &str) -> Result<Option<Outcome>> {
        self.send(format!("{tag} BAD Invalid SASL response: {why}\r\n").as_bytes())
            .await?;
        Ok(Some(Outcome::Rejected))
    }

    /// Asks for the SASL response and reads one line of it.
    async fn continuation(&mut self) -> Result<Option<Vec<u8>>> {
        self.send(b"+ \r\n").await?;
        loop {
            match self.parser.next_line() {
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(Error::Client(e.to_string())),
            }
        }
    }

    /// Steps 4–6: route, connect, replay as AUTHENTICATE PLAIN, relay the verdict.
    async fn replay(&mut self, tag: &str, creds: Credentials) -> Result<Outcome> {
        let route = match self.ctx.route(&creds.authcid).await {
            Ok(route) => route,
            Err(Error::Client(why)) => {
                tracing::debug!(reason = %why, "login refused");
                self.send(
                    format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed\r\n").as_bytes(),
                )
                .await?;
                return Ok(Outcome::Rejected);
            }
            Err(e) => return self.unavailable(tag, e).await,
        };
        let mut backend = match self.establish(&route).await {
            Ok(backend) => backend,
            Err(e) => return self.unavailable(tag, e).await,
        };
        match self.verdict(tag, &mut backend, &creds).await {
            Ok(true) => Ok(Outcome::Authenticated(route, backend)),
            Ok(false) => Ok(Outcome::Rejected),
            Err(e) => self.unavailable(tag, e).await,
        }
    }

    async fn unavailable(&mut self, tag: &str, error: Error) -> Result<Outcome> {
        tracing::warn!(error = %error, "backend unavailable");
        let reply =
            format!("{tag} NO [UNAVAILABLE] Backend temporarily unavailable, try again later\r\n");
        self.send(reply.as_bytes()).await?;
        Ok(Outcome::Rejected)
    }

    /// Connects and reads the greeting; only this part counts for the breaker.
    async fn establish(&self, route: &Route) -> Result<BackendConn> {
        let (stream, permit) = self.ctx.connect(route).await?;
        let mut backend = BackendConn {
            stream,
            lines: LineBuffer::new(BACKEND_MAX_LINE),
        };
        let wait = self
            .ctx
            .node
            .settings()
            .map(|s| s.breaker.connect_timeout)
            .unwrap_or(BACKEND_AUTH_TIMEOUT);
        match backend.read_line(Instant::now() + wait).await {
            Ok(greeting) if greeting.starts_with(b"* OK") => {
                permit.success();
                Ok(backend)
            }
            Ok(other) => {
                permit.failure();
                let shown = String::from_utf8_lossy(&other[..other.len().min(80)]).into_owned();
                Err(Error::backend(
                    &route.destination.id,
                    format!("unexpected greeting {shown:?}"),
                ))
            }
            Err(e) => {
                permit.failure();
                Err(Error::backend(&route.destination.id, e))
            }
        }
    }

    /// Sends the credential and relays the backend's answer; true when it accepted.
    async fn verdict(
        &mut self,
        tag: &str,
        backend: &mut BackendConn,
        creds: &Credentials,
    ) -> Result<bool> {
        let deadline = Instant::now() + BACKEND_AUTH_TIMEOUT;
        let payload = sasl::encode_plain(creds);
        backend
            .stream
            .write_all(b"S1 AUTHENTICATE PLAIN\r\n")
            .await?;
        let mut sent = false;
        loop {
            let line = backend.read_line(deadline).await?;
            if line.starts_with(b"+") {
                // One continuation for the payload; a second one means the backend wants
                // more than PLAIN carries, so the exchange is cancelled.
                let reply = if sent {
                    "*\r\n".to_string()
                } else {
                    format!("{payload}\r\n")
                };
                backend.stream.write_all(reply.as_bytes()).await?;
                sent = true;
            } else if let Some(rest) = line.strip_prefix(b"S1 ") {
                let mut answer = format!("{tag} ").into_bytes();
                answer.extend_from_slice(rest);
                answer.extend_from_slice(b"\r\n");
                self.send(&answer).await?;
                let accepted = rest.len() >= 2 && rest[..2].eq_ignore_ascii_case(b"OK");
                if !accepted {
                    tracing::debug!(destination = %backend_peer(backend), "backend rejected the credentials");
                }
                return Ok(accepted);
            } else {
                // Untagged data (e.g. CAPABILITY) belongs to the client's view of the login.
                let mut relay = line;
                relay.extend_from_slice(b"\r\n");
                self.send(&relay).await?;
            }
        }
    }
}

fn backend_peer(backend: &BackendConn) -> String {
    backend
        .stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

impl BackendConn {
    async fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>> {
        loop {
            if let Some(line) = self
                .lines
                .next_line()
                .map_err(|e| Error::Client(format!("backend: {e}")))?
            {
                return Ok(line);
            }
            let mut buf = [0u8; 4096];
            let n = timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .map_err(|_| Error::Io(std::io::ErrorKind::TimedOut.into()))??;
            if n == 0 {
                return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.lines.push(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests;
