//! The client identity a node passes on to backends when it connects: the real client, the
//! address it reached, a session id the node's and the backend's logs share, and the hop TTL
//! that stops chains of proxies from looping.
//!
//! An upstream proxy in front of the node (another node, a webmail) may hand over the same
//! facts with IMAP `ID` or POP3 `XCLIENT`; they are believed only from the listener's
//! `proxy_trusted` networks. The lines that carry the identity onwards live in [`wire`].

pub(crate) mod wire;

use std::net::{IpAddr, SocketAddr};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::codec::imap::Arg;
use crate::session::SessionCtx;

pub(crate) use wire::Forwarded;

/// Hops a fresh session may still take (Dovecot's proxies start from 5 as well).
pub(crate) const DEFAULT_TTL: u32 = 5;
/// Random bytes in a session id: 16 base64url characters.
const SESSION_ID_BYTES: usize = 12;
/// Longest session id taken over from an upstream proxy (Dovecot's own limit).
const MAX_SESSION_ID: usize = 64;

/// Who a backend is told the client is, for one client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The real client: the peer, a trusted PROXY header's source, or a trusted upstream's word.
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Names this client connection in the node's logs and, once forwarded, the backend's.
    pub session: String,
    /// Hops left, forwarded as is; 0 means the login went round in a loop.
    pub ttl: u32,
}

impl Identity {
    /// A fresh identity for a connection from `client` to `local`, with a new session id.
    pub(crate) fn new(client: SocketAddr, local: SocketAddr) -> Self {
        Self { client, local, session: session_id(), ttl: DEFAULT_TTL }
    }

    /// The identity of the session `ctx` serves (after any inbound PROXY header).
    pub(crate) fn of(ctx: &SessionCtx) -> Self {
        Self::new(ctx.client, ctx.local)
    }

    /// The span every log line of the session carries, so it can be found by the id the
    /// backend logs too; a trusted upstream's client and session id are added to it.
    pub(crate) fn span(&self) -> tracing::Span {
        let empty = tracing::field::Empty;
        tracing::info_span!("session", id = %self.session, origin = empty, upstream_session = empty)
    }

    /// Whether the hop TTL ran out: an upstream proxy sent the login back through a chain.
    pub(crate) fn looped(&self) -> bool {
        self.ttl == 0
    }

    /// Takes over what an upstream proxy said, if the connection comes from the listener's
    /// `proxy_trusted` networks; anyone else's claims are ignored. True when believed.
    pub(crate) fn adopt(&mut self, ctx: &SessionCtx, upstream: UpstreamClaim) -> bool {
        if upstream == UpstreamClaim::default() {
            return false;
        }
        if !trusted(ctx) {
            tracing::debug!("ignoring client identity fields from an untrusted peer");
            return false;
        }
        if let Some(ip) = upstream.addr {
            self.client = SocketAddr::new(ip, upstream.port.unwrap_or(0));
        }
        if let Some(ip) = upstream.dest_addr {
            self.local = SocketAddr::new(ip, upstream.dest_port.unwrap_or(0));
        }
        if let Some(ttl) = upstream.ttl {
            self.ttl = ttl.saturating_sub(1);
        }
        // One id from the first proxy to the backend; the session span keeps both.
        let span = tracing::Span::current();
        if let Some(session) = upstream.session {
            span.record("upstream_session", tracing::field::display(&session));
            self.session = session;
        }
        span.record("origin", tracing::field::display(self.client));
        tracing::debug!(ttl = self.ttl, "client identity from a trusted proxy");
        true
    }
}

/// Whether the session's client may speak for another (the listener's `proxy_trusted`).
/// The connection's own client decides, never an address an upstream stated earlier.
pub(crate) fn trusted(ctx: &SessionCtx) -> bool {
    ctx.listener.proxy_trusted.iter().any(|net| net.contains(&ctx.client.ip()))
}

/// A new random session id (16 base64url characters; the OS random source via uuid v4).
pub(crate) fn session_id() -> String {
    let random = uuid::Uuid::new_v4();
    URL_SAFE_NO_PAD.encode(&random.as_bytes()[..SESSION_ID_BYTES])
}

/// What an upstream proxy claims about its client, before anyone believes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UpstreamClaim {
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    pub dest_addr: Option<IpAddr>,
    pub dest_port: Option<u16>,
    pub session: Option<String>,
    pub ttl: Option<u32>,
}

impl UpstreamClaim {
    /// The Dovecot fields of an IMAP `ID` parameter list (`x-originating-ip`, ...); other
    /// fields, `NIL` and unparsable values are left out.
    pub(crate) fn from_imap_id(args: &[Arg]) -> Self {
        let mut upstream = UpstreamClaim::default();
        let Some(Arg::List(fields)) = args.first() else {
            return upstream;
        };
        for pair in fields.chunks_exact(2) {
            let (Some(key), Some(value)) = (pair[0].as_str(), pair[1].as_str()) else {
                continue;
            };
            match key.to_ascii_lowercase().as_str() {
                "x-originating-ip" => upstream.addr = parse_ip(value),
                "x-originating-port" => upstream.port = value.parse().ok(),
                "x-connected-ip" => upstream.dest_addr = parse_ip(value),
                "x-connected-port" => upstream.dest_port = value.parse().ok(),
                "x-session-id" | "x-session-ext-id" => upstream.session = valid_session(value),
                "x-proxy-ttl" => upstream.ttl = value.parse().ok(),
                _ => {}
            }
        }
        upstream
    }

    /// The arguments of a Dovecot-style `XCLIENT ADDR=… PORT=… SESSION=… TTL=…`; unknown
    /// attributes are skipped, a known one with a bad value makes the command invalid.
    pub(crate) fn from_xclient(args: &[u8]) -> Result<Self, &'static str> {
        let args = std::str::from_utf8(args).map_err(|_| "XCLIENT arguments must be ASCII")?;
        let mut upstream = UpstreamClaim::default();
        for arg in args.split_ascii_whitespace() {
            let (name, value) = arg.split_once('=').ok_or("XCLIENT expects NAME=VALUE")?;
            let unavailable = value.eq_ignore_ascii_case("[UNAVAILABLE]");
            let valid = match name.to_ascii_uppercase().as_str() {
                _ if unavailable => true,
                "ADDR" => parse_ip(value).map(|ip| upstream.addr = Some(ip)).is_some(),
                "PORT" => value.parse().map(|port| upstream.port = Some(port)).is_ok(),
                "DESTADDR" => parse_ip(value).map(|ip| upstream.dest_addr = Some(ip)).is_some(),
                "DESTPORT" => value.parse().map(|port| upstream.dest_port = Some(port)).is_ok(),
                "SESSION" => valid_session(value).map(|s| upstream.session = Some(s)).is_some(),
                "TTL" => value.parse().map(|ttl| upstream.ttl = Some(ttl)).is_ok(),
                _ => true,
            };
            if !valid {
                return Err("Invalid XCLIENT parameters");
            }
        }
        Ok(upstream)
    }
}

/// An address as proxies write it: plain, `[…]`, or Postfix's `IPV6:…`; IPv4-mapped IPv6
/// addresses become IPv4.
fn parse_ip(value: &str) -> Option<IpAddr> {
    let value = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(value);
    let value = match value.get(..5) {
        Some(prefix) if prefix.eq_ignore_ascii_case("IPV6:") => &value[5..],
        _ => value,
    };
    value.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// An upstream's session id, if it can travel in every carrier unquoted and unescaped
/// (IMAP quoted string, XCLIENT value, xtext).
fn valid_session(value: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+/_-.".contains(c);
    (!value.is_empty() && value.len() <= MAX_SESSION_ID && value.chars().all(allowed)).then(|| value.to_owned())
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
