//! The backend leg of a submission login: the SMTP family's establishment (the greeting
//! and the proxy's own EHLO, STARTTLS and EHLO again, XCLIENT for the client's identity;
//! see [`crate::backend::smtp`]) and the credential as one AUTH.

use std::future::Future;

use crate::auth;
use crate::backend::smtp::{read_reply, Smtp};
use crate::backend::{Dialect, Leg, LoginDialect, Verdict};
use crate::codec::mechanism::Credential;
use crate::error::Result;
use crate::identity::{Forwarded, Identity};

/// RFC 5321 §4.5.3.1.4: the classic command line limit. RFC 4954 §4 has a client move an
/// initial response that would not fit to the first `334` instead.
const MAX_COMMAND_LINE: usize = 512;

/// The submission backend: `220` greeting, the proxy's own EHLO, then one `AUTH`.
pub(super) struct Submission {
    smtp: Smtp,
}

impl Submission {
    /// A backend the proxy greets as `EHLO name`.
    pub(super) fn new(name: String) -> Self {
        Self { smtp: Smtp::new(format!("EHLO {name}")) }
    }
}

impl Dialect for Submission {
    fn greet(&mut self, leg: &mut Leg) -> impl Future<Output = Result<()>> + Send {
        self.smtp.greet(leg)
    }

    fn starttls(&mut self, leg: &mut Leg) -> impl Future<Output = Result<()>> + Send {
        self.smtp.starttls(leg)
    }

    fn after_tls(&mut self, leg: &mut Leg) -> impl Future<Output = Result<()>> + Send {
        self.smtp.after_tls(leg)
    }

    fn forward_identity(
        &mut self,
        leg: &mut Leg,
        identity: &Identity,
    ) -> impl Future<Output = Result<Forwarded>> + Send {
        self.smtp.forward_identity(leg, identity)
    }
}

impl LoginDialect for Submission {
    async fn authenticate(&mut self, leg: &mut Leg, credential: &Credential) -> Result<Verdict> {
        // A backend offering no AUTH (say Postfix with smtpd_tls_auth_only on a plain leg)
        // cannot judge the credentials; its refusal must not count as a wrong password.
        if self.smtp.extensions().is_some_and(|e| e.auth.is_empty()) {
            return Err(leg.broken("the backend offers no AUTH"));
        }
        let (mechanism, payload) = credential.replay();
        // RFC 4954 §4: `=` is the empty initial response.
        let payload = if payload.is_empty() { "=".to_owned() } else { payload };
        let inline = format!("AUTH {mechanism} {payload}\r\n");
        let mut pending = if inline.len() <= MAX_COMMAND_LINE {
            leg.send(inline.as_bytes()).await?;
            None
        } else {
            leg.send(format!("AUTH {mechanism}\r\n").as_bytes()).await?;
            Some(payload)
        };
        loop {
            let reply = read_reply(leg).await?;
            if reply.code != 334 {
                return Ok(Verdict { accepted: reply.code == 235, lines: reply.lines });
            }
            let response = pending.take().unwrap_or_else(|| auth::extra_challenge_response(mechanism).to_owned());
            leg.send(format!("{response}\r\n").as_bytes()).await?;
        }
    }
}
