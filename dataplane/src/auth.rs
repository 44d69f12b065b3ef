//! Client-leg authentication shared by every protocol: the SASL exchange loop (framing is
//! the protocol's) and the cleartext policy.

use std::future::Future;

use crate::codec::mechanism::{Credential, Mechanism, SaslServer, Step};
use crate::codec::sasl::{self, SaslLine};
use crate::codec::CodecError;
use crate::config::{ListenerConfig, TlsMode};
use crate::error::Result;

/// How a protocol frames one SASL challenge and reads the client's response.
pub(crate) trait SaslChannel: Send {
    /// Sends `challenge` (raw bytes; the channel base64-encodes them) and returns the
    /// client's response as sent (base64 text or `*`). A response the parser refused (an
    /// over-long line) is `Invalid`: the protocol answers it and the session goes on.
    fn challenge(&mut self, challenge: &[u8]) -> impl Future<Output = Result<Response>> + Send;
}

/// The client's answer to one challenge.
#[derive(Debug)]
pub(crate) enum Response {
    Line(Vec<u8>),
    Invalid(CodecError),
    /// The client left (or its pre-auth budget ran out).
    Closed,
}

/// What one parser step says about the response: `None` while more input is needed.
pub(crate) fn response(parsed: std::result::Result<Option<Vec<u8>>, CodecError>) -> Option<Response> {
    match parsed {
        Ok(Some(line)) => Some(Response::Line(line)),
        Ok(None) => None,
        Err(e) => Some(Response::Invalid(e)),
    }
}

#[derive(Debug)]
pub(crate) enum SaslOutcome {
    Done(Credential),
    /// The client answered `*`.
    Cancelled,
    /// Bad base64 or a malformed mechanism message.
    Invalid(CodecError),
    /// The client closed the connection mid-exchange.
    Closed,
}

/// Runs one exchange; `initial` is the initial response as the client sent it (base64).
/// A decoded response may carry at most what one line of `max_line` bytes can
/// ([`sasl::decoded_limit`]).
pub(crate) async fn exchange(
    channel: &mut impl SaslChannel,
    mechanism: Mechanism,
    initial: Option<&[u8]>,
    max_line: usize,
) -> Result<SaslOutcome> {
    let limit = sasl::decoded_limit(max_line);
    let initial = match initial.map(|b64| sasl::decode_base64_within(b64, limit)) {
        Some(Ok(data)) => Some(data),
        Some(Err(e)) => return Ok(SaslOutcome::Invalid(e)),
        None => None,
    };
    let (mut server, mut step) = match SaslServer::start(mechanism, initial.as_deref()) {
        Ok(started) => started,
        Err(e) => return Ok(SaslOutcome::Invalid(e)),
    };
    loop {
        let challenge = match step {
            Step::Done(credential) => return Ok(SaslOutcome::Done(credential)),
            Step::Challenge(challenge) => challenge,
        };
        let response = match channel.challenge(&challenge).await? {
            Response::Line(line) => line,
            Response::Invalid(e) => return Ok(SaslOutcome::Invalid(e)),
            Response::Closed => return Ok(SaslOutcome::Closed),
        };
        step = match sasl::decode_response(&response, limit) {
            Ok(SaslLine::Cancelled) => return Ok(SaslOutcome::Cancelled),
            Ok(SaslLine::Data(data)) => match server.step(&data) {
                Ok(step) => step,
                Err(e) => return Ok(SaslOutcome::Invalid(e)),
            },
            Err(e) => return Ok(SaslOutcome::Invalid(e)),
        };
    }
}

/// May this connection carry credentials: TLS is up, or the listener explicitly allows
/// cleartext authentication.
pub(crate) fn credentials_allowed(listener: &ListenerConfig, tls_active: bool) -> bool {
    tls_active || listener.allow_plaintext_auth || listener.tls == TlsMode::Implicit
}

/// `+ <base64>` as IMAP and POP3 frame a challenge (`+ ` alone for an empty one).
pub(crate) fn plus_challenge(challenge: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let mut line = b"+ ".to_vec();
    line.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(challenge).as_bytes());
    line.extend_from_slice(b"\r\n");
    line
}

/// The backend leg's answer to a challenge the replayed credential does not cover: RFC 7628
/// §3.2.3 has the client acknowledge an OAuth error challenge with a lone %x01 (`AQ==`) so
/// the server can finish with its failure; any other mechanism's exchange is cancelled.
pub(crate) fn extra_challenge_response(mechanism: Mechanism) -> &'static str {
    match mechanism {
        Mechanism::OAuthBearer | Mechanism::XOAuth2 => "AQ==",
        Mechanism::Plain | Mechanism::Login => "*",
    }
}
