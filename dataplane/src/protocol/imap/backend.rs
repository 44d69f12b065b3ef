//! The backend leg of an IMAP login: the greeting, STARTTLS, Dovecot's `ID` fields for the
//! client's identity, and the credential as one AUTHENTICATE.

use crate::backend::{excerpt, status_is, BackendConn, Dialect, Verdict};
use crate::codec::mechanism::Credential;
use crate::error::{Error, Result};
use crate::identity::{wire, Forwarded, Identity};

/// The IMAP backend: `* OK` greeting, then `AUTHENTICATE <mech>` with the payload sent as
/// the continuation response (works whether or not the backend offers SASL-IR).
pub struct Imap;

impl Dialect for Imap {
    async fn greet(&self, conn: &mut BackendConn) -> Result<()> {
        let greeting = conn.read_line().await?;
        if greeting.starts_with(b"* OK") {
            Ok(())
        } else {
            Err(Error::Client(format!("unexpected greeting {:?}", excerpt(&greeting))))
        }
    }

    async fn starttls(&self, conn: &mut BackendConn) -> Result<()> {
        conn.send(b"S0 STARTTLS\r\n").await?;
        loop {
            let line = conn.read_line().await?;
            if let Some(rest) = line.strip_prefix(b"S0 ") {
                return match status_is(rest, b"OK") {
                    true => Ok(()),
                    false => Err(Error::Client(format!("STARTTLS refused: {:?}", excerpt(rest)))),
                };
            }
        }
    }

    /// Dovecot takes the `x-` fields of `ID` from `login_trusted_networks` and ignores them
    /// from anyone else, silently: an `OK` does not tell which.
    async fn forward_identity(&self, conn: &mut BackendConn, identity: &Identity) -> Result<Forwarded> {
        wire::send_imap_id(conn, identity).await
    }

    async fn authenticate(&self, conn: &mut BackendConn, credential: &Credential) -> Result<Verdict> {
        let (mechanism, payload) = credential.replay();
        conn.send(format!("S1 AUTHENTICATE {mechanism}\r\n").as_bytes()).await?;
        let mut sent = false;
        let mut lines = Vec::new();
        loop {
            let line = conn.read_line().await?;
            if line.starts_with(b"+") {
                // The first continuation takes the payload; a later one is an error
                // challenge (OAuth) or more than PLAIN carries: answer it so the backend
                // concludes with its verdict.
                let reply = if sent { "AQ==\r\n".to_string() } else { format!("{payload}\r\n") };
                conn.send(reply.as_bytes()).await?;
                sent = true;
            } else if let Some(rest) = line.strip_prefix(b"S1 ") {
                let accepted = rest.len() >= 2 && rest[..2].eq_ignore_ascii_case(b"OK");
                lines.push(rest.to_vec());
                return Ok(Verdict { accepted, lines });
            } else {
                // Untagged data (e.g. CAPABILITY) belongs to the client's view of the login.
                lines.push(line);
            }
        }
    }
}
