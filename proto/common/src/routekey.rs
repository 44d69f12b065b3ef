//! The route key rule (what an identifier is, how it is cut, normalization) and log
//! redaction of identifiers.
//!
//! Both sides of the fleet use this module: nodes to key their route cache, the control
//! plane to key the API, bulk imports and every mapping store. A single implementation
//! keeps them in agreement.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

/// The longest route key a node resolves or a store holds, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

pub use switchyard_codec::identifier::Identifier;

/// How an identifier becomes the key the mapping store and route cache use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteKeyRule {
    pub master_user_separators: Vec<String>,
    /// Each character is a delimiter, as Postfix's `recipient_delimiter`; empty: none.
    pub recipient_delimiter: String,
    pub lowercase: bool,
}

impl Default for RouteKeyRule {
    fn default() -> Self {
        Self { master_user_separators: vec!["%".to_string()], recipient_delimiter: "+".to_string(), lowercase: true }
    }
}

impl RouteKeyRule {
    /// The account `identifier` names, normalized.
    pub fn key(&self, identifier: &Identifier) -> String {
        let account = match identifier {
            Identifier::Login(login) => Cow::Borrowed(self.cut_master_user(login)),
            Identifier::Authzid(authzid) => Cow::Borrowed(authzid.as_str()),
            Identifier::Recipient(address) => self.cut_subaddress(address),
        };
        self.normalize(account.trim())
    }

    /// [`Self::key`], or `None` when that is empty or longer than [`MAX_KEY_LEN`]: a key
    /// no store holds and no node resolves.
    pub fn checked_key(&self, identifier: &Identifier) -> Option<String> {
        Some(self.key(identifier)).filter(|key| !key.is_empty() && key.len() <= MAX_KEY_LEN)
    }

    /// The user part of `user%master`: up to the earliest of the separators.
    fn cut_master_user<'a>(&self, login: &'a str) -> &'a str {
        let cut = self
            .master_user_separators
            .iter()
            .filter(|sep| !sep.is_empty())
            .filter_map(|sep| login.find(sep.as_str()))
            .min()
            .unwrap_or(login.len());
        &login[..cut]
    }

    /// `user+detail@domain` → `user@domain` (only the local part, before the last `@`).
    /// Left whole: a local part that starts with a delimiter (`+tag@x` has no user to
    /// follow) and a quoted one (`"a+b c"@x` cut would not be an address).
    fn cut_subaddress<'a>(&self, address: &'a str) -> Cow<'a, str> {
        let (local, domain) = address.rsplit_once('@').map_or((address, None), |(l, d)| (l, Some(d)));
        if local.starts_with('"') {
            return Cow::Borrowed(address);
        }
        match local.find(|c| self.recipient_delimiter.contains(c)) {
            Some(cut) if cut > 0 => match domain {
                Some(domain) => Cow::Owned(format!("{}@{domain}", &local[..cut])),
                None => Cow::Borrowed(&local[..cut]),
            },
            _ => Cow::Borrowed(address),
        }
    }

    fn normalize(&self, account: &str) -> String {
        if self.lowercase {
            account.to_lowercase()
        } else {
            account.to_string()
        }
    }
}

/// Redacts an account identifier for admin-action logs: a short prefix and a stable tag
/// from SHA-256, identical on every node and every version (e.g. `al…#3f9c1a2b`).
pub fn redact(identifier: &str) -> String {
    let digest = Sha256::digest(identifier.as_bytes());
    let prefix: String = identifier.chars().take(2).collect();
    format!("{prefix}…#{}", hex::encode(&digest[..4]))
}

#[cfg(test)]
mod tests;
