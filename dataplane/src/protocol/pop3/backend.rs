//! The backend leg of a POP3 login: the greeting (and whether it offers XCLIENT), STLS,
//! Dovecot's XCLIENT for the client's identity, and the credential as one AUTH (RFC 5034).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth;
use crate::backend::{excerpt, status_is, BackendConn, Dialect, Verdict};
use crate::codec::mechanism::Credential;
use crate::error::{Error, Result};
use crate::identity::{wire, Forwarded, Identity};

/// RFC 2449 §4: a command line is at most 255 octets including CRLF; RFC 5034 §4 moves a
/// longer initial response to the first continuation.
const MAX_COMMAND_LINE: usize = 255;

/// `+` or `+ <base64>`: a SASL continuation, as opposed to `+OK`.
fn is_continuation(line: &[u8]) -> bool {
    line == b"+" || line.starts_with(b"+ ")
}

/// The POP3 backend: `+OK` greeting, then `AUTH <mech> <initial-response>` (RFC 5034).
#[derive(Default)]
pub struct Pop3 {
    /// The greeting offered XCLIENT (Dovecot does so only to its trusted networks).
    xclient: AtomicBool,
}

impl Dialect for Pop3 {
    async fn greet(&self, conn: &mut BackendConn) -> Result<()> {
        let greeting = conn.read_line().await?;
        if status_is(&greeting, b"+OK") {
            self.xclient.store(wire::pop3_offers_xclient(&greeting), Ordering::Relaxed);
            Ok(())
        } else {
            Err(Error::Client(format!("unexpected greeting {:?}", excerpt(&greeting))))
        }
    }

    async fn starttls(&self, conn: &mut BackendConn) -> Result<()> {
        conn.send(b"STLS\r\n").await?;
        let reply = conn.read_line().await?;
        if status_is(&reply, b"+OK") {
            Ok(())
        } else {
            Err(Error::Client(format!("STLS refused: {:?}", excerpt(&reply))))
        }
    }

    async fn forward_identity(&self, conn: &mut BackendConn, identity: &Identity) -> Result<Forwarded> {
        if !self.xclient.load(Ordering::Relaxed) {
            return Ok(Forwarded::Declined("the greeting offers no XCLIENT (login_trusted_networks?)".into()));
        }
        wire::send_dovecot_xclient(conn, identity, b"+OK", b"-ERR").await
    }

    async fn authenticate(&self, conn: &mut BackendConn, credential: &Credential) -> Result<Verdict> {
        let (mechanism, payload) = credential.replay();
        let inline = format!("AUTH {mechanism} {payload}\r\n");
        let mut pending = if inline.len() <= MAX_COMMAND_LINE {
            conn.send(inline.as_bytes()).await?;
            None
        } else {
            conn.send(format!("AUTH {mechanism}\r\n").as_bytes()).await?;
            Some(payload)
        };
        loop {
            let line = conn.read_line().await?;
            if is_continuation(&line) {
                let reply = pending.take().unwrap_or_else(|| auth::extra_challenge_response(mechanism).to_owned());
                conn.send(format!("{reply}\r\n").as_bytes()).await?;
            } else if status_is(&line, b"+OK") || status_is(&line, b"-ERR") {
                return Ok(Verdict { accepted: line.starts_with(b"+"), lines: vec![line] });
            } else {
                return Err(Error::Client(format!("unexpected AUTH reply {:?}", excerpt(&line))));
            }
        }
    }
}
