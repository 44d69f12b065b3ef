//! SASL payload decoding for credential extraction and replay: base64 responses, PLAIN
//! (RFC 4616), OAUTHBEARER (RFC 7628) and XOAUTH2, with no I/O.
//!
//! LOGIN needs no parser of its own: its user name and password arrive as two separate
//! base64 responses, each read with [`decode_base64_line`]. Extracting an identifier from
//! a bearer token's claims (when OAUTHBEARER omits `a=`) belongs to the caller.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use super::CodecError;

/// Largest decoded SASL payload accepted at all. Far above any real PLAIN message or
/// bearer token, and checked on the encoded length before anything is decoded.
pub const MAX_DECODED: usize = 16 * 1024;

/// The largest decoded payload a client's SASL response may carry where lines hold at most
/// `max_line` bytes: what that much base64 decodes to (three quarters), at most
/// [`MAX_DECODED`]. So the limit is reached by a response line of `max_line` bytes; one in
/// a literal (IMAP, ManageSieve) may be longer than a line, but carries no more.
pub fn decoded_limit(max_line: usize) -> usize {
    (max_line / 4 * 3).min(MAX_DECODED)
}

/// Clients differ on padding; accepting both costs nothing since the backend re-checks.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One client response during a SASL exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslLine {
    Data(Vec<u8>),
    /// The client sent `*`: the exchange is aborted and must be answered with the
    /// protocol's failure (IMAP `BAD`, POP3/SMTP error), not treated as a credential.
    Cancelled,
}

/// PLAIN credentials. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub authzid: String,
    pub authcid: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An OAuth bearer login. `raw` is the decoded client message, kept so it can be replayed
/// byte for byte. `Debug` never shows the token or the raw message.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthCredentials {
    /// The `a=` (OAUTHBEARER, optional) or `user=` (XOAUTH2) field.
    pub user: Option<String>,
    pub token: String,
    pub raw: Vec<u8>,
}

impl fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthCredentials")
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Decodes a base64 payload of at most [`MAX_DECODED`] bytes; `=` is the RFC 4959 empty
/// initial response.
pub fn decode_base64(b64: &[u8]) -> Result<Vec<u8>, CodecError> {
    decode_base64_within(b64, MAX_DECODED)
}

/// [`decode_base64`] with a payload of at most `limit` bytes (see [`decoded_limit`]).
pub fn decode_base64_within(b64: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let too_large = |size| CodecError::PayloadTooLarge { size, limit };
    if b64.len() > limit.div_ceil(3) * 4 {
        return Err(too_large(base64::decoded_len_estimate(b64.len())));
    }
    if b64 == b"=" {
        return Ok(Vec::new());
    }
    let data = LENIENT.decode(b64).map_err(|_| CodecError::Base64)?;
    if data.len() > limit {
        return Err(too_large(data.len()));
    }
    Ok(data)
}

/// Decodes one client response line (without CRLF), recognising the `*` cancel.
pub fn decode_base64_line(line: &[u8]) -> Result<SaslLine, CodecError> {
    decode_response(line, MAX_DECODED)
}

/// [`decode_base64_line`] with a payload of at most `limit` bytes.
pub fn decode_response(line: &[u8], limit: usize) -> Result<SaslLine, CodecError> {
    if line == b"*" {
        return Ok(SaslLine::Cancelled);
    }
    decode_base64_within(line, limit).map(SaslLine::Data)
}

/// Decodes a base64 PLAIN message (initial response or continuation line).
pub fn decode_plain(b64: &[u8]) -> Result<Credentials, CodecError> {
    parse_plain(&decode_base64(b64)?)
}

/// Splits a decoded PLAIN message: `[authzid] NUL authcid NUL passwd`.
pub fn parse_plain(msg: &[u8]) -> Result<Credentials, CodecError> {
    let mut parts = msg.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(CodecError::Malformed("PLAIN message needs two NUL separators"));
    };
    if password.contains(&0) {
        return Err(CodecError::Malformed("PLAIN message has too many NULs"));
    }
    if authcid.is_empty() {
        return Err(CodecError::Malformed("PLAIN authentication identity is empty"));
    }
    if password.is_empty() {
        return Err(CodecError::Malformed("PLAIN password is empty"));
    }
    Ok(Credentials { authzid: utf8(authzid)?, authcid: utf8(authcid)?, password: utf8(password)? })
}

/// Base64 PLAIN message for replaying the credentials to a backend.
pub fn encode_plain(creds: &Credentials) -> String {
    let mut msg = Vec::with_capacity(creds.authzid.len() + creds.authcid.len() + creds.password.len() + 2);
    msg.extend_from_slice(creds.authzid.as_bytes());
    msg.push(0);
    msg.extend_from_slice(creds.authcid.as_bytes());
    msg.push(0);
    msg.extend_from_slice(creds.password.as_bytes());
    STANDARD.encode(msg)
}

/// Decodes a base64 OAUTHBEARER message.
pub fn decode_oauthbearer(b64: &[u8]) -> Result<OAuthCredentials, CodecError> {
    parse_oauthbearer(decode_base64(b64)?)
}

/// RFC 7628: `gs2-header ^A *(key=value ^A) ^A`, gs2-header = `flag,[a=authzid],`.
pub fn parse_oauthbearer(raw: Vec<u8>) -> Result<OAuthCredentials, CodecError> {
    let text = std::str::from_utf8(&raw).map_err(|_| CodecError::InvalidUtf8)?;
    let malformed = CodecError::Malformed("malformed OAUTHBEARER message");
    let (gs2, pairs) = text.split_once('\x01').ok_or(malformed.clone())?;
    let (flag, authzid) = gs2.strip_suffix(',').and_then(|h| h.split_once(',')).ok_or(malformed.clone())?;
    if !(flag == "n" || flag == "y" || flag.starts_with("p=")) {
        return Err(malformed);
    }
    let user = match authzid {
        "" => None,
        a => Some(unescape_saslname(a.strip_prefix("a=").ok_or(malformed)?)?),
    };
    let token = bearer_token(pairs)?;
    Ok(OAuthCredentials { user, token, raw })
}

/// Decodes a base64 XOAUTH2 message.
pub fn decode_xoauth2(b64: &[u8]) -> Result<OAuthCredentials, CodecError> {
    parse_xoauth2(decode_base64(b64)?)
}

/// Google's XOAUTH2: `user=U ^A auth=Bearer T ^A ^A`.
pub fn parse_xoauth2(raw: Vec<u8>) -> Result<OAuthCredentials, CodecError> {
    let text = std::str::from_utf8(&raw).map_err(|_| CodecError::InvalidUtf8)?;
    let user = find_pair(text, "user")
        .filter(|u| !u.is_empty())
        .ok_or(CodecError::Malformed("XOAUTH2 message has no user"))?
        .to_owned();
    let token = bearer_token(text)?;
    Ok(OAuthCredentials { user: Some(user), token, raw })
}

/// The token of the `auth=Bearer T` pair in `key=value ^A … ^A` (final empty pair required).
fn bearer_token(pairs: &str) -> Result<String, CodecError> {
    let malformed = CodecError::Malformed("malformed bearer key/value pairs");
    if !pairs.ends_with("\x01\x01") {
        return Err(malformed);
    }
    let auth = find_pair(pairs, "auth").ok_or(CodecError::Malformed("no auth=Bearer value"))?;
    let (scheme, token) = auth.split_once(' ').ok_or(malformed.clone())?;
    // RFC 6750 auth schemes are case-insensitive.
    if !scheme.eq_ignore_ascii_case("Bearer") || token.is_empty() {
        return Err(malformed);
    }
    Ok(token.to_owned())
}

fn find_pair<'a>(pairs: &'a str, key: &str) -> Option<&'a str> {
    pairs.split('\x01').filter_map(|pair| pair.split_once('=')).find_map(|(k, v)| (k == key).then_some(v))
}

/// RFC 5801 saslname: `,` and `=` travel as `=2C` and `=3D`; any other `=` is invalid.
fn unescape_saslname(s: &str) -> Result<String, CodecError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((before, after)) = rest.split_once('=') {
        out.push_str(before);
        let (ch, tail) = match after.get(..2) {
            Some("2C") => (',', after.get(2..)),
            Some("3D") => ('=', after.get(2..)),
            _ => return Err(CodecError::Malformed("invalid escape in SASL name")),
        };
        out.push(ch);
        rest = tail.unwrap_or_default();
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(CodecError::Malformed("empty SASL name"));
    }
    Ok(out)
}

fn utf8(bytes: &[u8]) -> Result<String, CodecError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::InvalidUtf8)
}

#[cfg(test)]
mod tests;
