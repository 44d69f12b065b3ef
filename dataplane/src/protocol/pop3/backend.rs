//! The backend leg of a POP3 login: the greeting (and whether it offers XCLIENT), STLS,
//! Dovecot's XCLIENT for the client's identity, and the credential as one AUTH (RFC 5034).

use crate::auth;
use crate::backend::{excerpt, status_is, Dialect, Leg, LoginDialect, Verdict};
use crate::codec::mechanism::Credential;
use crate::error::Result;
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
pub(super) struct Pop3 {
    /// The greeting offered XCLIENT (Dovecot does so only to its trusted networks).
    xclient: bool,
}

impl Dialect for Pop3 {
    async fn greet(&mut self, leg: &mut Leg) -> Result<()> {
        let greeting = leg.read_line().await?;
        if status_is(&greeting, b"+OK") {
            self.xclient = wire::pop3_offers_xclient(&greeting);
            Ok(())
        } else {
            Err(leg.broken(format!("unexpected greeting {:?}", excerpt(&greeting))))
        }
    }

    async fn starttls(&mut self, leg: &mut Leg) -> Result<()> {
        leg.send(b"STLS\r\n").await?;
        let reply = leg.read_line().await?;
        if status_is(&reply, b"+OK") {
            Ok(())
        } else {
            Err(leg.broken(format!("STLS refused: {:?}", excerpt(&reply))))
        }
    }

    async fn forward_identity(&mut self, leg: &mut Leg, identity: &Identity) -> Result<Forwarded> {
        if !self.xclient {
            return Ok(Forwarded::Declined("the greeting offers no XCLIENT (login_trusted_networks?)".into()));
        }
        wire::send_dovecot_xclient(leg, identity, b"+OK", b"-ERR").await
    }
}

impl LoginDialect for Pop3 {
    async fn authenticate(&mut self, conn: &mut Leg, credential: &Credential) -> Result<Verdict> {
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
                return Err(conn.broken(format!("unexpected AUTH reply {:?}", excerpt(&line))));
            }
        }
    }
}
