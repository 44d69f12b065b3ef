//! The backend leg of a submission login: the greeting and the proxy's own EHLO, STARTTLS
//! and EHLO again, XCLIENT for the client's identity (then EHLO once more), and the
//! credential as one AUTH.

use std::sync::Mutex;

use crate::auth;
use crate::backend::{BackendConn, Dialect, Verdict};
use crate::codec::mechanism::Credential;
use crate::codec::smtp::{Extensions, Reply, ReplyBuilder};
use crate::error::{Error, Result};
use crate::identity::{wire, Forwarded, Identity};

/// RFC 5321 §4.5.3.1.4: the classic command line limit. RFC 4954 §4 has a client move an
/// initial response that would not fit to the first `334` instead.
const MAX_COMMAND_LINE: usize = 512;

/// The submission backend: `220` greeting, the proxy's own EHLO, then one `AUTH`.
pub struct Submission {
    /// The name the proxy gives in EHLO.
    name: String,
    /// What the backend's last EHLO offered: replaced after STARTTLS (a backend may offer
    /// AUTH only once TLS is up) and after XCLIENT (the session starts over).
    extensions: Mutex<Option<Extensions>>,
    /// The attributes of that EHLO's `XCLIENT` line; empty when it has none.
    xclient: Mutex<Vec<String>>,
}

impl Submission {
    pub fn new(name: String) -> Self {
        Self { name, extensions: Mutex::new(None), xclient: Mutex::new(Vec::new()) }
    }

    async fn ehlo(&self, conn: &mut BackendConn) -> Result<()> {
        conn.send(format!("EHLO {}\r\n", self.name).as_bytes()).await?;
        let ehlo = read_reply(conn).await?;
        if ehlo.code != 250 {
            return Err(unexpected("EHLO reply", &ehlo));
        }
        *self.extensions.lock().unwrap_or_else(|e| e.into_inner()) = Some(Extensions::from_ehlo(&ehlo));
        *self.xclient.lock().unwrap_or_else(|e| e.into_inner()) = wire::xclient_attributes(&ehlo);
        Ok(())
    }
}

impl Dialect for Submission {
    async fn greet(&self, conn: &mut BackendConn) -> Result<()> {
        let greeting = read_reply(conn).await?;
        if greeting.code != 220 {
            return Err(unexpected("greeting", &greeting));
        }
        self.ehlo(conn).await
    }

    async fn starttls(&self, conn: &mut BackendConn) -> Result<()> {
        conn.send(b"STARTTLS\r\n").await?;
        let reply = read_reply(conn).await?;
        if reply.code != 220 {
            return Err(unexpected("STARTTLS reply", &reply));
        }
        Ok(())
    }

    /// RFC 3207: everything learnt before TLS is forgotten; EHLO again.
    async fn after_tls(&self, conn: &mut BackendConn) -> Result<()> {
        self.ehlo(conn).await
    }

    /// XCLIENT with the attributes the EHLO offered. Its success reply is a new `220`
    /// greeting (Postfix, Dovecot): the session starts over, so EHLO again.
    async fn forward_identity(&self, conn: &mut BackendConn, identity: &Identity) -> Result<Forwarded> {
        let offered = self.xclient.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(command) = identity.smtp_xclient(&offered) else {
            return Ok(Forwarded::Declined("EHLO offers no XCLIENT ADDR (smtpd_authorized_xclient_hosts?)".into()));
        };
        conn.send(command.as_bytes()).await?;
        let reply = read_reply(conn).await?;
        match reply.code {
            220 => {}
            421 => return Err(unexpected("XCLIENT reply", &reply)),
            _ => return Ok(Forwarded::Declined(format!("XCLIENT answered {:?}", reply.excerpt()))),
        }
        self.ehlo(conn).await?;
        Ok(Forwarded::Accepted)
    }

    async fn authenticate(&self, conn: &mut BackendConn, credential: &Credential) -> Result<Verdict> {
        // A backend offering no AUTH (say Postfix with smtpd_tls_auth_only on a plain leg)
        // cannot judge the credentials; its refusal must not count as a wrong password.
        if self.extensions.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|e| e.auth.is_empty()) {
            return Err(Error::Client("the backend offers no AUTH".into()));
        }
        let (mechanism, payload) = credential.replay();
        // RFC 4954 §4: `=` is the empty initial response.
        let payload = if payload.is_empty() { "=".to_owned() } else { payload };
        let inline = format!("AUTH {mechanism} {payload}\r\n");
        let mut pending = if inline.len() <= MAX_COMMAND_LINE {
            conn.send(inline.as_bytes()).await?;
            None
        } else {
            conn.send(format!("AUTH {mechanism}\r\n").as_bytes()).await?;
            Some(payload)
        };
        loop {
            let reply = read_reply(conn).await?;
            if reply.code != 334 {
                return Ok(Verdict { accepted: reply.code == 235, lines: reply.lines });
            }
            let response = pending.take().unwrap_or_else(|| auth::extra_challenge_response(mechanism).to_owned());
            conn.send(format!("{response}\r\n").as_bytes()).await?;
        }
    }
}

/// One (possibly multi-line) reply from the backend.
async fn read_reply(conn: &mut BackendConn) -> Result<Reply> {
    let mut builder = ReplyBuilder::default();
    loop {
        let line = conn.read_line().await?;
        if let Some(reply) = builder.push_line(line).map_err(|e| Error::Client(format!("backend: {e}")))? {
            return Ok(reply);
        }
    }
}

fn unexpected(what: &str, reply: &Reply) -> Error {
    Error::Client(format!("unexpected {what} {:?}", reply.excerpt()))
}
