//! The lines that carry an [`Identity`] to a backend: the IMAP `ID` fields Dovecot takes
//! from `login_trusted_networks`, the `XCLIENT` of Dovecot's POP3 and ManageSieve, and
//! Postfix's SMTP `XCLIENT` (attributes as the backend's EHLO lists them, values in xtext).
//!
//! Every value is an address, a number or a session id restricted to characters that need
//! no quoting, so the commands are built without escaping.

use std::net::{IpAddr, SocketAddr};

use super::Identity;
use crate::backend::{excerpt, status_is, Leg};
use crate::codec::smtp::Reply;
use crate::error::Result;

/// The tag of the proxy's IMAP `ID` (S0 is its STARTTLS, S1 its AUTHENTICATE).
const ID_TAG: &str = "S2";
/// What Postfix's XCLIENT takes for a value the proxy does not know.
const UNAVAILABLE: &str = "[UNAVAILABLE]";

/// How a backend took the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Forwarded {
    Accepted,
    /// Not offered to the node, or refused: the backend sees the node's address. Says why.
    Declined(String),
}

impl Identity {
    /// IMAP `ID` with Dovecot's `x-` fields.
    pub(crate) fn imap_id(&self, tag: &str) -> String {
        let fields = [
            ("x-originating-ip", self.client.ip().to_string()),
            ("x-originating-port", self.client.port().to_string()),
            ("x-connected-ip", self.local.ip().to_string()),
            ("x-connected-port", self.local.port().to_string()),
            ("x-session-id", self.session.clone()),
            ("x-proxy-ttl", self.ttl.to_string()),
        ];
        let list: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\" \"{v}\"")).collect();
        format!("{tag} ID ({})\r\n", list.join(" "))
    }

    /// The `XCLIENT` of Dovecot's POP3 and ManageSieve logins.
    pub(crate) fn dovecot_xclient(&self) -> String {
        let (ip, port) = (self.client.ip(), self.client.port());
        format!("XCLIENT ADDR={ip} PORT={port} SESSION={} TTL={}\r\n", self.session, self.ttl)
    }

    /// SMTP `XCLIENT` with only the attributes in `offered`, or `None` when ADDR is not
    /// among them (the rest alone would describe the client wrongly). The proxy looks up no
    /// names, so NAME and REVERSE_NAME say so rather than leave the proxy's own in place.
    pub(crate) fn smtp_xclient(&self, offered: &[String]) -> Option<String> {
        if !offered.iter().any(|a| a == "ADDR") {
            return None;
        }
        let candidates = [
            ("NAME", UNAVAILABLE.to_owned()),
            ("REVERSE_NAME", UNAVAILABLE.to_owned()),
            ("ADDR", smtp_addr(self.client)),
            ("PORT", smtp_port(self.client)),
            ("DESTADDR", smtp_addr(self.local)),
            ("DESTPORT", smtp_port(self.local)),
            ("SESSION", self.session.clone()),
            ("TTL", self.ttl.to_string()),
        ];
        let attributes: Vec<String> = candidates
            .iter()
            .filter(|(name, _)| offered.iter().any(|a| a == name))
            .map(|(name, value)| format!("{name}={}", xtext(value)))
            .collect();
        Some(format!("XCLIENT {}\r\n", attributes.join(" ")))
    }
}

/// Postfix's ADDR syntax: IPv4 as is, IPv6 behind `IPV6:`.
fn smtp_addr(addr: SocketAddr) -> String {
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("IPV6:{ip}"),
    }
}

fn smtp_port(addr: SocketAddr) -> String {
    match addr.port() {
        0 => UNAVAILABLE.to_owned(),
        port => port.to_string(),
    }
}

/// RFC 3461 §4 xtext: `+XX` for `+`, `=` and anything outside printable ASCII.
pub(crate) fn xtext(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'!'..=b'~' if b != b'+' && b != b'=' => char::from(b).to_string(),
            _ => format!("+{b:02X}"),
        })
        .collect()
}

/// The attributes of the `XCLIENT` line in an EHLO reply (uppercased; empty without one).
pub(crate) fn xclient_attributes(ehlo: &Reply) -> Vec<String> {
    ehlo.texts()
        .skip(1)
        .map(|text| String::from_utf8_lossy(text).to_ascii_uppercase())
        .find_map(|text| {
            let mut words = text.split_ascii_whitespace();
            (words.next() == Some("XCLIENT")).then(|| words.map(str::to_owned).collect())
        })
        .unwrap_or_default()
}

/// Dovecot announces XCLIENT to trusted POP3 clients in its greeting: `+OK [XCLIENT] …`.
pub(crate) fn pop3_offers_xclient(greeting: &[u8]) -> bool {
    greeting.windows(9).any(|w| w.eq_ignore_ascii_case(b"[XCLIENT]"))
}

/// … and to ManageSieve clients as the capability line `"XCLIENT"`.
pub(crate) fn sieve_offers_xclient(capability: &[u8]) -> bool {
    capability.get(..9).is_some_and(|head| head.eq_ignore_ascii_case(b"\"XCLIENT\""))
}

/// Sends the IMAP `ID` and reads to its tagged status, skipping the server's own `* ID`.
pub(crate) async fn send_imap_id(conn: &mut Leg, identity: &Identity) -> Result<Forwarded> {
    conn.send(identity.imap_id(ID_TAG).as_bytes()).await?;
    loop {
        let line = conn.read_line().await?;
        if let Some(status) = line.strip_prefix(ID_TAG.as_bytes()).and_then(|rest| rest.strip_prefix(b" ")) {
            return Ok(match status_is(status, b"OK") {
                true => Forwarded::Accepted,
                false => Forwarded::Declined(format!("ID answered {:?}", excerpt(status))),
            });
        }
        if let Some(size) = trailing_literal(&line) {
            // Literal bytes are data, not lines: a tag inside one must not count.
            conn.read_exact(size).await?;
        }
    }
}

/// Sends Dovecot's `XCLIENT` and reads its one status line: `ok` (`+OK`, `OK`) or `no`
/// (`-ERR`, `NO`); anything else breaks the protocol.
pub(crate) async fn send_dovecot_xclient(
    conn: &mut Leg,
    identity: &Identity,
    ok: &[u8],
    no: &[u8],
) -> Result<Forwarded> {
    conn.send(identity.dovecot_xclient().as_bytes()).await?;
    let reply = conn.read_line().await?;
    if status_is(&reply, ok) {
        Ok(Forwarded::Accepted)
    } else if status_is(&reply, no) {
        Ok(Forwarded::Declined(format!("XCLIENT answered {:?}", excerpt(&reply))))
    } else {
        Err(conn.broken(format!("unexpected XCLIENT reply {:?}", excerpt(&reply))))
    }
}

/// The size of an IMAP literal announced at the end of a line (`{n}` or `{n+}`).
fn trailing_literal(line: &[u8]) -> Option<usize> {
    let open = line.strip_suffix(b"}")?;
    let start = open.iter().rposition(|&b| b == b'{')?;
    let digits = open[start + 1..].strip_suffix(b"+").unwrap_or(&open[start + 1..]);
    std::str::from_utf8(digits).ok()?.parse().ok()
}
