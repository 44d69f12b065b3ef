//! The names both sides put in their configs and on the wire: the protocols a listener or
//! backend endpoint speaks, how a leg is encrypted, and how a backend learns the client's
//! address. Each has one spelling (`as_str`, `from_name`, serde) so the control plane and
//! every node read the same string the same way.

use std::fmt;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Imap,
    Pop3,
    Managesieve,
    Submission,
    Smtp,
    Lmtp,
    Http,
}

impl Protocol {
    pub const ALL: [Protocol; 7] = [
        Protocol::Imap,
        Protocol::Pop3,
        Protocol::Managesieve,
        Protocol::Submission,
        Protocol::Smtp,
        Protocol::Lmtp,
        Protocol::Http,
    ];

    /// The config and wire name (`imap`, `pop3`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Managesieve => "managesieve",
            Protocol::Submission => "submission",
            Protocol::Smtp => "smtp",
            Protocol::Lmtp => "lmtp",
            Protocol::Http => "http",
        }
    }

    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a backend learns the real client's address: not at all, a PROXY protocol header,
/// or the protocol's own command (IMAP `ID`, `XCLIENT` for POP3, ManageSieve, SMTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    #[default]
    None,
    Proxy,
    Xclient,
}

impl Forwarding {
    pub const ALL: [Forwarding; 3] = [Forwarding::None, Forwarding::Proxy, Forwarding::Xclient];

    pub fn as_str(self) -> &'static str {
        match self {
            Forwarding::None => "none",
            Forwarding::Proxy => "proxy",
            Forwarding::Xclient => "xclient",
        }
    }

    pub fn from_name(name: &str) -> Option<Forwarding> {
        Forwarding::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a leg (client → listener, or node → backend endpoint) is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Plain,
    Starttls,
    Implicit,
}

impl TlsMode {
    pub const ALL: [TlsMode; 3] = [TlsMode::Plain, TlsMode::Starttls, TlsMode::Implicit];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Plain => "plain",
            TlsMode::Starttls => "starttls",
            TlsMode::Implicit => "implicit",
        }
    }

    pub fn from_name(name: &str) -> Option<TlsMode> {
        TlsMode::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
