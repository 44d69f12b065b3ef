//! The backend leg of an IMAP login: the greeting, STARTTLS, Dovecot's `ID` fields for the
//! client's identity, and the credential as one AUTHENTICATE.

use crate::auth;
use crate::backend::{excerpt, status_is, Dialect, Leg, LoginDialect, Verdict};
use crate::codec::mechanism::Credential;
use crate::error::Result;
use crate::identity::{wire, Forwarded, Identity};

/// Longest `AUTHENTICATE` line sent with its initial response; a longer one (a large
/// OAuth token) waits for the continuation instead. RFC 7162 §4 asks servers to take
/// lines of at least 8192 octets.
const MAX_INITIAL_RESPONSE_LINE: usize = 8192;

/// The IMAP backend: `* OK` greeting, then `AUTHENTICATE <mech>` with the payload on the
/// same line when the greeting offers SASL-IR (RFC 4959; one round trip less per login),
/// else as the response to the `+` continuation.
#[derive(Default)]
pub(super) struct Imap {
    /// The greeting's capabilities include SASL-IR (forgotten again after STARTTLS).
    sasl_ir: bool,
}

impl Dialect for Imap {
    async fn greet(&mut self, leg: &mut Leg) -> Result<()> {
        let greeting = leg.read_line().await?;
        if greeting.starts_with(b"* OK") {
            self.sasl_ir = offers_sasl_ir(&greeting);
            Ok(())
        } else {
            Err(leg.broken(format!("unexpected greeting {:?}", excerpt(&greeting))))
        }
    }

    async fn starttls(&mut self, leg: &mut Leg) -> Result<()> {
        // RFC 9051 §6.2.1: capabilities learnt before TLS are void after it.
        self.sasl_ir = false;
        leg.send(b"S0 STARTTLS\r\n").await?;
        loop {
            let line = leg.read_line().await?;
            if let Some(rest) = line.strip_prefix(b"S0 ") {
                return match status_is(rest, b"OK") {
                    true => Ok(()),
                    false => Err(leg.broken(format!("STARTTLS refused: {:?}", excerpt(rest)))),
                };
            }
        }
    }

    /// Dovecot takes the `x-` fields of `ID` from `login_trusted_networks` and ignores them
    /// from anyone else, silently: an `OK` does not tell which.
    async fn forward_identity(&mut self, leg: &mut Leg, identity: &Identity) -> Result<Forwarded> {
        wire::send_imap_id(leg, identity).await
    }
}

impl LoginDialect for Imap {
    async fn authenticate(&mut self, conn: &mut Leg, credential: &Credential) -> Result<Verdict> {
        let (mechanism, payload) = credential.replay();
        // RFC 4959: `=` stands for an empty initial response.
        let initial = if payload.is_empty() { "=" } else { payload.as_str() };
        let inline = format!("S1 AUTHENTICATE {mechanism} {initial}\r\n");
        let mut pending = if self.sasl_ir && inline.len() <= MAX_INITIAL_RESPONSE_LINE {
            conn.send(inline.as_bytes()).await?;
            None
        } else {
            conn.send(format!("S1 AUTHENTICATE {mechanism}\r\n").as_bytes()).await?;
            Some(payload)
        };
        let mut lines = Vec::new();
        loop {
            let line = conn.read_line().await?;
            if line.starts_with(b"+") {
                // The first continuation takes the payload unless it went inline; a later
                // one is an error challenge (OAuth) or more than the mechanism carries:
                // answer it so the backend concludes with its verdict.
                let reply = pending.take().unwrap_or_else(|| auth::extra_challenge_response(mechanism).to_owned());
                conn.send(format!("{reply}\r\n").as_bytes()).await?;
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

/// Whether a `* OK [CAPABILITY …]` greeting lists SASL-IR (any case).
fn offers_sasl_ir(greeting: &[u8]) -> bool {
    let Some(code) = greeting.strip_prefix(b"* OK [") else {
        return false;
    };
    let code = code.split(|&b| b == b']').next().unwrap_or_default();
    let mut words = code.split(|&b| b == b' ');
    words.next().is_some_and(|w| w.eq_ignore_ascii_case(b"CAPABILITY"))
        && words.any(|w| w.eq_ignore_ascii_case(b"SASL-IR"))
}

#[cfg(test)]
mod tests {
    use super::offers_sasl_ir;

    #[test]
    fn sasl_ir_is_read_from_the_greetings_capability_code_only() {
        assert!(offers_sasl_ir(b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID] Dovecot ready."));
        assert!(offers_sasl_ir(b"* OK [capability imap4rev1 sasl-ir] ready"));
        assert!(!offers_sasl_ir(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready"));
        assert!(!offers_sasl_ir(b"* OK ready, SASL-IR welcome"));
        assert!(!offers_sasl_ir(b"* OK [ALERT SASL-IR] not a capability list"));
        assert!(!offers_sasl_ir(b"* OK [CAPABILITY IMAP4rev1] SASL-IR"));
    }
}
