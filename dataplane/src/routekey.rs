//! The route key rule (master-user cut + normalization) and log redaction of identifiers.
//!
//! Both sides of the fleet use this module: nodes to key their route cache, the control
//! plane to key the mapping store. A single implementation keeps the two in agreement.

use sha2::{Digest, Sha256};

/// How a login identifier becomes the key the mapping store and route cache use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteKeyRule {
    pub master_user_separators: Vec<String>,
    pub lowercase: bool,
}

impl Default for RouteKeyRule {
    fn default() -> Self {
        Self { master_user_separators: vec!["%".to_string()], lowercase: true }
    }
}

impl RouteKeyRule {
    /// Cuts `identifier` at the first master-user separator, then normalizes it.
    /// `alice%admin` logs in as alice through the master user admin: alice's route applies.
    pub fn key(&self, identifier: &str) -> String {
        let cut = self
            .master_user_separators
            .iter()
            .filter(|sep| !sep.is_empty())
            .filter_map(|sep| identifier.find(sep.as_str()))
            .min()
            .unwrap_or(identifier.len());
        let user = identifier[..cut].trim();
        if self.lowercase {
            user.to_lowercase()
        } else {
            user.to_string()
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
mod tests {
    use super::*;

    fn rule(seps: &[&str], lowercase: bool) -> RouteKeyRule {
        RouteKeyRule { master_user_separators: seps.iter().map(|s| s.to_string()).collect(), lowercase }
    }

    #[test]
    fn cuts_at_the_first_separator_and_lowercases() {
        let r = RouteKeyRule::default();
        assert_eq!(r.key("Alice@Example.TEST"), "alice@example.test");
        assert_eq!(r.key("Alice@example.test%Admin"), "alice@example.test");
        assert_eq!(r.key("a%b%c"), "a");
        assert_eq!(r.key("%master"), "");
    }

    #[test]
    fn several_separators_use_the_earliest() {
        let r = rule(&["*", "%"], true);
        assert_eq!(r.key("bob%x*y"), "bob");
        assert_eq!(r.key("bob*x%y"), "bob");
        assert_eq!(r.key("bob"), "bob");
    }

    #[test]
    fn normalize_none_keeps_case() {
        let r = rule(&["%"], false);
        assert_eq!(r.key("Alice%Admin"), "Alice");
    }

    #[test]
    fn multibyte_identifiers_are_cut_on_char_boundaries() {
        let r = RouteKeyRule::default();
        assert_eq!(r.key("ÄRGER%x"), "ärger");
        assert!(redact("ÄRGER").starts_with("ÄR…#"));
    }

    #[test]
    fn redaction_is_stable_and_hides_the_rest() {
        let a = redact("alice@example.test");
        assert_eq!(a, redact("alice@example.test"));
        assert!(a.starts_with("al…#"));
        assert!(!a.contains("example"));
        assert_eq!(a.len(), "al…#".len() + 8);
        // SHA-256("alice@example.test") starts with these bytes on every platform and version.
        let expected = hex::encode(&Sha256::digest(b"alice@example.test")[..4]);
        assert!(a.ends_with(&expected));
        assert_ne!(a, redact("alicia@example.test"));
    }
}
