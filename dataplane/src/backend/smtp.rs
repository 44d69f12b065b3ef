//! The SMTP family's side of establishing a backend leg, shared by submission logins and
//! SMTP/LMTP delivery: the `220` greeting and the node's hello (`EHLO`/`LHLO`), STARTTLS
//! where the hello offers it and the hello again, XCLIENT with the attributes the hello
//! offered and, once it is taken, the hello once more.

use super::{Dialect, Leg};
use crate::codec::smtp::{Extensions, Reply, ReplyBuilder};
use crate::error::{Error, Result};
use crate::identity::{wire, Forwarded, Identity};

/// An SMTP or LMTP backend being set up.
pub(crate) struct Smtp {
    /// `EHLO name` or `LHLO name`, without CRLF.
    hello: String,
    /// What the backend's last hello offered: replaced after STARTTLS (RFC 3207 §4.2: what
    /// the server said before TLS is void) and after XCLIENT (the session starts over).
    offered: Option<Offered>,
}

/// The keywords of one hello reply.
struct Offered {
    extensions: Extensions,
    /// The attributes of its `XCLIENT` line; empty when it has none.
    xclient: Vec<String>,
}

impl Smtp {
    /// A leg that greets with `hello` (`EHLO name` / `LHLO name`).
    pub(crate) fn new(hello: String) -> Self {
        Self { hello, offered: None }
    }

    /// What the backend's last hello offered; `None` before it was greeted.
    pub(crate) fn extensions(&self) -> Option<&Extensions> {
        self.offered.as_ref().map(|o| &o.extensions)
    }

    async fn hello(&mut self, leg: &mut Leg) -> Result<()> {
        leg.send(format!("{}\r\n", self.hello).as_bytes()).await?;
        let reply = read_reply(leg).await?;
        if reply.code != 250 {
            return Err(unexpected(leg, "hello reply", &reply));
        }
        self.offered =
            Some(Offered { extensions: Extensions::from_ehlo(&reply), xclient: wire::xclient_attributes(&reply) });
        Ok(())
    }
}

impl Dialect for Smtp {
    async fn greet(&mut self, leg: &mut Leg) -> Result<()> {
        let greeting = read_reply(leg).await?;
        if greeting.code != 220 {
            return Err(unexpected(leg, "greeting", &greeting));
        }
        self.hello(leg).await
    }

    /// A server whose hello does not offer STARTTLS is refused rather than asked blindly:
    /// the error then says why.
    async fn starttls(&mut self, leg: &mut Leg) -> Result<()> {
        if !self.extensions().is_some_and(|e| e.starttls) {
            return Err(leg.broken("the hello reply offers no STARTTLS"));
        }
        leg.send(b"STARTTLS\r\n").await?;
        let reply = read_reply(leg).await?;
        if reply.code != 220 {
            return Err(unexpected(leg, "STARTTLS reply", &reply));
        }
        Ok(())
    }

    /// RFC 3207 §4.2: everything learnt before TLS is forgotten; the hello again.
    async fn after_tls(&mut self, leg: &mut Leg) -> Result<()> {
        self.hello(leg).await
    }

    /// XCLIENT with the attributes the hello offered. Its success reply is a new `220`
    /// greeting (Postfix, Dovecot): the session starts over, so the hello is sent again.
    async fn forward_identity(&mut self, leg: &mut Leg, identity: &Identity) -> Result<Forwarded> {
        let offered = self.offered.as_ref().map(|o| o.xclient.as_slice()).unwrap_or_default();
        let Some(command) = identity.smtp_xclient(offered) else {
            return Ok(Forwarded::Declined(
                "the hello reply offers no XCLIENT ADDR (smtpd_authorized_xclient_hosts, login_trusted_networks?)"
                    .into(),
            ));
        };
        tracing::debug!(session = %identity.session, "forwarding the client identity with XCLIENT");
        leg.send(command.as_bytes()).await?;
        let reply = read_reply(leg).await?;
        match reply.code {
            220 => {}
            421 => return Err(unexpected(leg, "XCLIENT reply", &reply)),
            _ => return Ok(Forwarded::Declined(format!("XCLIENT answered {:?}", reply.excerpt()))),
        }
        self.hello(leg).await?;
        Ok(Forwarded::Accepted)
    }
}

/// One (possibly multi-line) reply from the backend.
pub(crate) async fn read_reply(leg: &mut Leg) -> Result<Reply> {
    let mut builder = ReplyBuilder::default();
    loop {
        let line = leg.read_line().await?;
        if let Some(reply) = builder.push_line(line).map_err(|e| leg.broken(e))? {
            return Ok(reply);
        }
    }
}

/// The backend answered `what` with a reply that does not let the session go on.
pub(crate) fn unexpected(leg: &Leg, what: &str, reply: &Reply) -> Error {
    leg.broken(format!("unexpected {what} {:?}", reply.excerpt()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Blame;
    use crate::tls::MaybeTls;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::{Duration, Instant};

    /// A leg to a server that sends `script` and returns everything it read once the leg
    /// is dropped.
    async fn leg(script: &'static [u8]) -> (Leg, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(script).await.unwrap();
            let mut read = Vec::new();
            let _ = s.read_to_end(&mut read).await;
            read
        });
        let stream = MaybeTls::Plain(TcpStream::connect(addr).await.unwrap());
        (Leg::new(stream, Instant::now() + Duration::from_secs(5), "d"), server)
    }

    #[tokio::test]
    async fn starttls_is_not_asked_of_a_server_whose_hello_does_not_offer_it() {
        let (mut leg, server) = leg(b"220 scripted\r\n250-scripted\r\n250 AUTH PLAIN\r\n").await;
        let mut smtp = Smtp::new("EHLO t".into());
        smtp.greet(&mut leg).await.unwrap();
        let e = smtp.starttls(&mut leg).await.unwrap_err();
        assert_eq!(e.blame(), Blame::Backend);
        assert!(e.to_string().contains("offers no STARTTLS"), "{e}");
        drop(leg);
        assert_eq!(server.await.unwrap(), b"EHLO t\r\n");
    }

    #[tokio::test]
    async fn a_reply_that_is_no_reply_is_the_backends_fault() {
        let (mut leg, _server) = leg(b"220 scripted\r\nnot a reply\r\n").await;
        let e = Smtp::new("LHLO t".into()).greet(&mut leg).await.unwrap_err();
        assert_eq!(e.blame(), Blame::Backend, "{e}");
    }
}
