//! The route key rule, table style: every identifier kind against the same rules.

use super::*;

fn rule(seps: &[&str], delimiter: &str, lowercase: bool) -> RouteKeyRule {
    RouteKeyRule {
        master_user_separators: seps.iter().map(|s| s.to_string()).collect(),
        recipient_delimiter: delimiter.to_string(),
        lowercase,
    }
}

fn login(s: &str) -> Identifier {
    Identifier::Login(s.to_string())
}

fn authzid(s: &str) -> Identifier {
    Identifier::Authzid(s.to_string())
}

fn recipient(s: &str) -> Identifier {
    Identifier::Recipient(s.to_string())
}

fn check(rule: &RouteKeyRule, table: &[(Identifier, &str)]) {
    for (identifier, want) in table {
        assert_eq!(rule.key(identifier), *want, "{identifier:?} with {rule:?}");
    }
}

#[test]
fn logins_are_cut_at_the_first_master_user_separator_and_lowercased() {
    check(
        &RouteKeyRule::default(),
        &[
            (login("Alice@Example.TEST"), "alice@example.test"),
            (login("Alice@example.test%Admin"), "alice@example.test"),
            (login("a%b%c"), "a"),
            (login("%master"), ""),
            (login("  bob@example.test  "), "bob@example.test"),
            // A login is not a recipient: its `+` is part of the name.
            (login("alice+tag@example.test"), "alice+tag@example.test"),
        ],
    );
}

#[test]
fn an_authzid_is_the_account_whole() {
    check(
        &RouteKeyRule::default(),
        &[
            (authzid("Alice@Example.TEST"), "alice@example.test"),
            // Dovecot takes the authzid as the user to open; it is not a login to cut.
            (authzid("a%b@example.test"), "a%b@example.test"),
            (authzid("alice+tag@example.test"), "alice+tag@example.test"),
        ],
    );
}

#[test]
fn recipients_are_cut_at_the_delimiter_never_at_the_master_user_separator() {
    check(
        &RouteKeyRule::default(),
        &[
            (recipient("alice+tag@example.test"), "alice@example.test"),
            (recipient("Alice+Tag@Example.TEST"), "alice@example.test"),
            (recipient("alice+a+b@example.test"), "alice@example.test"),
            (recipient("a%b@example.test"), "a%b@example.test"),
            (recipient("a%b+tag@example.test"), "a%b@example.test"),
            // Only the local part: a delimiter in the domain stays.
            (recipient("alice@ex+ample.test"), "alice@ex+ample.test"),
            // The last `@` ends the local part.
            (recipient("\"a@b\"@example.test"), "\"a@b\"@example.test"),
            // No user before the delimiter: nothing to follow, left whole.
            (recipient("+tag@example.test"), "+tag@example.test"),
            // A quoted local part is not cut (the cut would not be an address).
            (recipient("\"a+b c\"@example.test"), "\"a+b c\"@example.test"),
            // LMTP `<Postmaster>` and local recipients without a domain.
            (recipient("bob+x"), "bob"),
            (recipient("Postmaster"), "postmaster"),
        ],
    );
}

#[test]
fn every_delimiter_character_cuts_and_an_empty_delimiter_cuts_nothing() {
    let several = rule(&["%"], "+-", true);
    check(
        &several,
        &[
            (recipient("alice-list@x"), "alice@x"),
            (recipient("alice+tag-x@x"), "alice@x"),
            (recipient("alice-x+y@x"), "alice@x"),
        ],
    );
    let none = rule(&["%"], "", true);
    check(&none, &[(recipient("alice+tag@x"), "alice+tag@x"), (recipient("a%b@x"), "a%b@x")]);
}

#[test]
fn several_separators_use_the_earliest() {
    let r = rule(&["*", "%"], "+", true);
    check(&r, &[(login("bob%x*y"), "bob"), (login("bob*x%y"), "bob"), (login("bob"), "bob")]);
}

#[test]
fn normalize_none_keeps_case() {
    let r = rule(&["%"], "+", false);
    check(&r, &[(login("Alice%Admin"), "Alice"), (authzid("Alice"), "Alice"), (recipient("Alice+Tag@X"), "Alice@X")]);
}

#[test]
fn checked_keys_are_one_to_max_bytes() {
    let r = RouteKeyRule::default();
    assert_eq!(r.checked_key(&login("%admin")), None);
    assert_eq!(r.checked_key(&login("   ")), None);
    assert_eq!(r.checked_key(&login(&"a".repeat(MAX_KEY_LEN))).map(|k| k.len()), Some(MAX_KEY_LEN));
    assert_eq!(r.checked_key(&login(&"a".repeat(MAX_KEY_LEN + 1))), None);
    // The cut happens first: a long master-user name does not matter.
    assert!(r.checked_key(&login(&format!("a%{}", "b".repeat(MAX_KEY_LEN)))).is_some());
}

#[test]
fn multibyte_identifiers_are_cut_on_char_boundaries() {
    let r = RouteKeyRule::default();
    assert_eq!(r.key(&login("ÄRGER%x")), "ärger");
    assert_eq!(r.key(&recipient("ÄRGER+ä@Ü.test")), "ärger@ü.test");
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
