//! What kind of name a client's credential or recipient gives, which decides how the
//! route-key rule (`routekey`) cuts it. A pure type, so the codecs can name it.

/// Where an identifier came from, which decides how it is cut. There is no way to key a
/// bare string: a caller has to say which kind it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identifier {
    /// A login name (IMAP `LOGIN`, a SASL authcid without authzid, an OAuth user, an
    /// operator's account name in the API, a bulk import or the file store): cut at the
    /// first master-user separator, as `alice%admin` opens alice's mailbox.
    Login(String),
    /// A SASL PLAIN authorization id: the account the backend opens (the authcid is then
    /// the master user), taken whole.
    Authzid(String),
    /// An SMTP/LMTP recipient address: its local part cut at the first recipient
    /// delimiter (`alice+tag@x` is alice's mail), never at a master-user separator
    /// (`a%b@x` is a legal local part).
    Recipient(String),
}
