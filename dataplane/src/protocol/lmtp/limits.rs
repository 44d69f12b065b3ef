//! The client side of an SMTP/LMTP session and its bounds: every read and reply waits at
//! most `preauth_timeout` for the client, the whole session ends at `session_timeout`, and
//! more than `junk_command_limit` commands without progress end it too, as Postfix's
//! `smtpd_junk_command_limit` does. Junk is every command but MAIL, RCPT, DATA, QUIT, an
//! accepted STARTTLS and the first greeting of each stream (so NOOP, RSET, VRFY, HELP,
//! unknown commands and a repeated greeting); a delivered message starts the count again.
//! No login ends these sessions, so nothing else would.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::bytes::BufMut;

use super::{Session, READ_CHUNK};
use crate::client::{self, Read};
use crate::codec::smtp::{self, Command};
use crate::error::Result;

/// Erroneous commands tolerated before the client is disconnected.
const MAX_BAD_COMMANDS: u32 = 10;
pub(super) const TOO_MUCH_JUNK: &[u8] = b"421 4.7.0 Too many commands without progress, closing connection\r\n";
const SESSION_OVER: &[u8] = b"421 4.4.2 Session time limit exceeded, closing connection\r\n";
const TIMEOUT: &[u8] = b"421 4.4.2 Timeout, closing connection\r\n";

impl Session {
    /// The end of the next step (a command, a reply, a handshake): `preauth_timeout` from
    /// now, and no later than the session's end.
    pub(super) fn step_deadline(&self) -> Instant {
        (Instant::now() + self.ctx.listener.preauth_timeout).min(self.deadline)
    }

    /// Counts `command` if it makes no progress; whether that takes the session past the
    /// listener's limit.
    pub(super) fn over_junk_limit(&mut self, command: &Command) -> bool {
        let junk = match command {
            Command::Mail { .. } | Command::Rcpt { .. } | Command::Data | Command::Quit => false,
            // The greeting after STARTTLS is the first of the new stream: not counted.
            Command::Hello { .. } => self.greeted,
            Command::StartTls => !self.ctx.starttls_offered(&self.client),
            Command::Noop
            | Command::Rset
            | Command::Vrfy
            | Command::Help
            | Command::Auth { .. }
            | Command::Unknown(_) => true,
        };
        if junk {
            self.junk += 1;
        }
        self.junk > self.ctx.listener.junk_command_limit()
    }

    /// A message was delivered: the session is making progress.
    pub(super) fn progressed(&mut self) {
        self.junk = 0;
    }

    /// A reply the client must read within the step's deadline (a goodbye at the session's
    /// end still gets a moment).
    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let deadline = client::at_least_goodbye(self.step_deadline());
        client::send(&mut self.client, bytes, deadline).await
    }

    /// Reads until one complete command; answers syntax errors itself. Past the session's
    /// end nothing more is served, however much was pipelined.
    pub(super) async fn next_command(&mut self) -> Result<Option<Command>> {
        loop {
            if Instant::now() >= self.deadline {
                self.send(SESSION_OVER).await?;
                return Ok(None);
            }
            match self.parser.next_command() {
                Ok(Some(command)) => return Ok(Some(command)),
                Ok(None) => {
                    if !self.fill(self.ctx.listener.preauth_timeout).await? {
                        return Ok(None);
                    }
                }
                Err(e) => {
                    self.bad += 1;
                    self.send(&smtp::syntax_reply(&e)).await?;
                    if self.bad >= MAX_BAD_COMMANDS {
                        self.send(b"421 4.7.0 Too many errors, closing connection\r\n").await?;
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Reads more client bytes within `wait` (idle clients are dropped: there is no
    /// authentication to wait for); false when the client left.
    async fn fill(&mut self, wait: Duration) -> Result<bool> {
        let mut buf = [0u8; READ_CHUNK];
        let n = self.read_within(wait, &mut &mut buf[..]).await?;
        self.parser.push(&buf[..n]);
        Ok(n > 0)
    }

    /// Reads what the client sent next into `buf` within `wait` and the session's end; 0
    /// when it left or timed out (then told so with a 421).
    pub(super) async fn read_within<B: BufMut + Send>(&mut self, wait: Duration, buf: &mut B) -> Result<usize> {
        let deadline = (Instant::now() + wait).min(self.deadline);
        match client::read(&mut self.client, buf, deadline).await? {
            Read::Data(n) => Ok(n),
            Read::Closed => Ok(0),
            Read::TimedOut => {
                let why = if Instant::now() >= self.deadline { SESSION_OVER } else { TIMEOUT };
                self.send(why).await?;
                Ok(0)
            }
        }
    }
}
