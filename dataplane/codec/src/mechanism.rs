//! The server side of a SASL exchange on the client leg, without I/O: which mechanisms the
//! proxy speaks, what it asks next, and the credential it ends with.
//!
//! Protocols only frame challenges and responses (IMAP/POP3 `+ `, SMTP `334 `, ManageSieve
//! quoted strings); the steps of PLAIN, LOGIN, OAUTHBEARER and XOAUTH2 live here once.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use super::identifier::Identifier;
use super::sasl::{self, Credentials, OAuthCredentials};
use super::CodecError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    Login,
    OAuthBearer,
    XOAuth2,
}

impl Mechanism {
    pub const ALL: [Mechanism; 4] = [Mechanism::Plain, Mechanism::Login, Mechanism::OAuthBearer, Mechanism::XOAuth2];

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }

    /// Case-insensitive, as SASL mechanism names are.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.as_str().eq_ignore_ascii_case(name))
    }

    /// The names for a capability list, space separated.
    pub fn advertised() -> String {
        Mechanism::ALL.map(Mechanism::as_str).join(" ")
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the client authenticated with; replayed to the backend as one SASL command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// PLAIN or LOGIN: replayed as PLAIN.
    Password(Credentials),
    /// OAUTHBEARER or XOAUTH2: replayed byte for byte with the same mechanism.
    Bearer { mechanism: Mechanism, creds: OAuthCredentials },
}

impl Credential {
    pub fn password(user: &str, password: &str) -> Credential {
        Credential::Password(Credentials { authzid: String::new(), authcid: user.into(), password: password.into() })
    }

    /// The account the login is for: a PLAIN authzid (the authcid is then the master user
    /// who opens it), else the PLAIN/LOGIN user, the OAuth `a=`/`user=` field, else the
    /// token's claims (read without checking the signature: the backend still
    /// authenticates the token, the proxy only needs to know where to send it).
    ///
    /// `None` for a password credential with a NUL in it (an IMAP LOGIN literal, a POP3
    /// PASS line): replayed as PLAIN, the NUL would split it into other fields than the
    /// account the proxy routed on.
    pub fn identifier(&self) -> Option<Identifier> {
        match self {
            Credential::Password(c) if [&c.authzid, &c.authcid, &c.password].iter().any(|f| f.contains('\0')) => None,
            Credential::Password(c) if !c.authzid.is_empty() => Some(Identifier::Authzid(c.authzid.clone())),
            Credential::Password(c) => Some(Identifier::Login(c.authcid.clone())),
            Credential::Bearer { creds, .. } => {
                creds.user.clone().or_else(|| jwt_subject(&creds.token)).map(Identifier::Login)
            }
        }
    }

    /// The mechanism and base64 payload sent to the backend.
    pub fn replay(&self) -> (Mechanism, String) {
        match self {
            Credential::Password(c) => (Mechanism::Plain, sasl::encode_plain(c)),
            Credential::Bearer { mechanism, creds } => (*mechanism, STANDARD.encode(&creds.raw)),
        }
    }
}

/// The account claim of an unverified JWT: `email`, then `preferred_username`, then `sub`.
fn jwt_subject(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    ["email", "preferred_username", "sub"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_owned))
}

/// The next move in an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this (raw, the protocol base64-encodes it) and wait for a response.
    Challenge(Vec<u8>),
    Done(Credential),
}

#[derive(Debug)]
enum State {
    Initial,
    LoginPassword { user: String },
}

/// One exchange: created by the auth command, fed each decoded client response.
#[derive(Debug)]
pub struct SaslServer {
    mechanism: Mechanism,
    state: State,
}

impl SaslServer {
    /// Starts an exchange; `initial` is the decoded initial response, if the client sent one.
    pub fn start(mechanism: Mechanism, initial: Option<&[u8]>) -> Result<(SaslServer, Step), CodecError> {
        let mut server = SaslServer { mechanism, state: State::Initial };
        let step = match initial {
            Some(data) => server.step(data)?,
            None if mechanism == Mechanism::Login => Step::Challenge(b"Username:".to_vec()),
            None => Step::Challenge(Vec::new()),
        };
        Ok((server, step))
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Feeds one decoded client response.
    pub fn step(&mut self, data: &[u8]) -> Result<Step, CodecError> {
        let step = match (self.mechanism, &self.state) {
            (Mechanism::Plain, _) => Step::Done(Credential::Password(sasl::parse_plain(data)?)),
            (Mechanism::Login, State::Initial) => {
                let user = login_field(data)?;
                if user.is_empty() {
                    return Err(CodecError::Malformed("LOGIN user name is empty"));
                }
                self.state = State::LoginPassword { user };
                Step::Challenge(b"Password:".to_vec())
            }
            (Mechanism::Login, State::LoginPassword { user }) => {
                let password = login_field(data)?;
                Step::Done(Credential::password(user, &password))
            }
            (Mechanism::OAuthBearer, _) => Step::Done(Credential::Bearer {
                mechanism: self.mechanism,
                creds: sasl::parse_oauthbearer(data.to_vec())?,
            }),
            (Mechanism::XOAuth2, _) => {
                Step::Done(Credential::Bearer { mechanism: self.mechanism, creds: sasl::parse_xoauth2(data.to_vec())? })
            }
        };
        Ok(step)
    }
}

/// A LOGIN user name or password. Both are replayed as PLAIN, whose fields are NUL
/// separated (RFC 4616), so a NUL in either is refused like a malformed PLAIN message.
fn login_field(data: &[u8]) -> Result<String, CodecError> {
    if data.contains(&0) {
        return Err(CodecError::Malformed("LOGIN response contains NUL"));
    }
    String::from_utf8(data.to_vec()).map_err(|_| CodecError::InvalidUtf8)
}

#[cfg(test)]
mod tests;
