//! The backend leg of a ManageSieve login: the capability greeting (and whether it offers
//! XCLIENT), STARTTLS and the capabilities after it, Dovecot's XCLIENT for the client's
//! identity, and the credential as one AUTHENTICATE.

use crate::auth;
use crate::backend::{excerpt, status_is, Dialect, Leg, LoginDialect, Verdict};
use crate::codec::mechanism::Credential;
use crate::error::Result;
use crate::identity::{wire, Forwarded, Identity};

/// Bound on one backend response line including its literals.
const MAX_BACKEND_RESPONSE: usize = 64 * 1024;

/// One backend response line with any literals it announces (`{n}` at a line end) read
/// into it, so the bytes can be relayed exactly as they came.
async fn read_response(conn: &mut Leg) -> Result<Vec<u8>> {
    let mut out = conn.read_line().await?;
    while let Some(size) = literal_size(&out) {
        if out.len().saturating_add(size) > MAX_BACKEND_RESPONSE {
            return Err(conn.broken(format!("response exceeds {MAX_BACKEND_RESPONSE} bytes")));
        }
        out.extend_from_slice(b"\r\n");
        out.extend(conn.read_exact(size).await?);
        out.extend(conn.read_line().await?);
    }
    Ok(out)
}

/// The size of a literal announced at the end of `line` (`{n}` or `{n+}`).
pub(super) fn literal_size(line: &[u8]) -> Option<usize> {
    let open = line.strip_suffix(b"}")?;
    let start = open.iter().rposition(|&b| b == b'{')?;
    let digits = open[start + 1..].strip_suffix(b"+").unwrap_or(&open[start + 1..]);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The ManageSieve backend: capability lines ending in `OK`, then `AUTHENTICATE "<mech>"
/// "<initial-response>"` (RFC 5804 requires servers to take the initial response).
#[derive(Default)]
pub(super) struct ManageSieve {
    /// The last capability list offered XCLIENT (Dovecot does so only to trusted networks).
    xclient: bool,
}

impl Dialect for ManageSieve {
    async fn greet(&mut self, leg: &mut Leg) -> Result<()> {
        self.xclient = false;
        loop {
            let line = read_response(leg).await?;
            if status_is(&line, b"OK") {
                return Ok(());
            }
            if wire::sieve_offers_xclient(&line) {
                self.xclient = true;
            }
            if !line.starts_with(b"\"") {
                return Err(leg.broken(format!("unexpected greeting {:?}", excerpt(&line))));
            }
        }
    }

    async fn starttls(&mut self, leg: &mut Leg) -> Result<()> {
        leg.send(b"STARTTLS\r\n").await?;
        let reply = read_response(leg).await?;
        if status_is(&reply, b"OK") {
            Ok(())
        } else {
            Err(leg.broken(format!("STARTTLS refused: {:?}", excerpt(&reply))))
        }
    }

    /// RFC 5804 §2.2: after TLS the server sends its capabilities again, ending in OK.
    async fn after_tls(&mut self, leg: &mut Leg) -> Result<()> {
        self.greet(leg).await
    }

    async fn forward_identity(&mut self, leg: &mut Leg, identity: &Identity) -> Result<Forwarded> {
        if !self.xclient {
            return Ok(Forwarded::Declined("the capabilities offer no XCLIENT (login_trusted_networks?)".into()));
        }
        wire::send_dovecot_xclient(leg, identity, b"OK", b"NO").await
    }
}

impl LoginDialect for ManageSieve {
    async fn authenticate(&mut self, conn: &mut Leg, credential: &Credential) -> Result<Verdict> {
        let (mechanism, payload) = credential.replay();
        conn.send(format!("AUTHENTICATE \"{mechanism}\" \"{payload}\"\r\n").as_bytes()).await?;
        loop {
            let line = read_response(conn).await?;
            if status_is(&line, b"OK") || status_is(&line, b"NO") || status_is(&line, b"BYE") {
                return Ok(Verdict { accepted: status_is(&line, b"OK"), lines: vec![line] });
            }
            if line.starts_with(b"\"") || line.starts_with(b"{") {
                // The payload went with the command: a challenge now is OAuth's error
                // challenge or one the credential cannot answer.
                let reply = auth::extra_challenge_response(mechanism);
                conn.send(format!("\"{reply}\"\r\n").as_bytes()).await?;
            } else {
                return Err(conn.broken(format!("unexpected AUTHENTICATE reply {:?}", excerpt(&line))));
            }
        }
    }
}
