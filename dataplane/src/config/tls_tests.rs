//! Tests for `[tls.certificate.<id>]`: files are really loaded at validation, and every
//! problem comes back with its key path, all at once.

use super::*;
use crate::tls::testing::{Issued, Pki};

/// A valid node config whose listener uses `listener_tls`, plus `tables`.
fn text(listener_tls: &str, tables: &str) -> String {
    format!(
        "[control]\nendpoints = [\"http://127.0.0.1:7400\"]\n\
         [listener.imaps]\nprotocol = \"imap\"\nbind = [\"127.0.0.1:0\"]\ntls = \"{listener_tls}\"\n{tables}"
    )
}

/// `[tls.certificate.<id>]` for `leaf`'s files plus `extra` keys.
fn table(id: &str, leaf: &Issued, extra: &str) -> String {
    let path = |p: &Path| format!("{:?}", p.display().to_string());
    format!("[tls.certificate.{id}]\ncert = {}\nkey = {}\n{extra}\n", path(&leaf.cert_path), path(&leaf.key_path))
}

fn problems(text: &str) -> Vec<String> {
    match Config::from_toml_str(text) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => e.problems().to_vec(),
    }
}

fn assert_one(text: &str, expected: &str) {
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with(expected), "{found:?} lacks {expected:?}");
}

#[test]
fn certificates_load_and_names_are_kept() {
    let pki = Pki::new();
    let mail = pki.issue("mail", &["mail.example.test"]);
    let other = pki.issue("other", &["*.other.test"]);
    let tables = table("mail", &mail, "default = true") + &table("other", &other, "names = [\"imap.other.test\"]");
    let config = Config::from_toml_str(&text("implicit", &tables)).unwrap();
    let certs = &config.tls.certificate;
    assert!(certs["mail"].default && !certs["other"].default);
    assert_eq!(certs["other"].names.as_deref(), Some(&["imap.other.test".to_string()][..]));
    assert_eq!(config.listener["imaps"].tls, TlsMode::Implicit);
}

#[test]
fn unreadable_files_name_their_key_and_path() {
    let pki = Pki::new();
    let mut leaf = pki.issue("leaf", &["leaf.test"]);
    leaf.cert_path = pki.dir.path().join("absent.pem");
    let found = problems(&text("starttls", &table("main", &leaf, "")));
    let expected = format!("tls.certificate.main.cert: cannot read {}: ", leaf.cert_path.display());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with(&expected), "{found:?}");

    leaf.key_path = pki.dir.path().join("absent.key");
    let found = problems(&text("starttls", &table("main", &leaf, "")));
    assert_eq!(found.len(), 2, "both files are reported: {found:?}");
    assert!(found[1].starts_with("tls.certificate.main.key: cannot read "), "{found:?}");
}

#[test]
fn files_that_are_not_what_they_claim_are_refused() {
    let pki = Pki::new();
    let leaf = pki.issue("leaf", &["leaf.test"]);
    let stranger = pki.issue("stranger", &["stranger.test"]);
    let swapped = Issued { key_path: stranger.key_path.clone(), ..pki.issue("swapped", &["leaf.test"]) };
    assert_one(&text("implicit", &table("main", &swapped, "")), "tls.certificate.main.key: ");
    assert!(problems(&text("implicit", &table("main", &swapped, "")))[0].contains("does not match the certificate"));

    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not pem at all\n").unwrap();
    let bad_cert = Issued { cert_path: garbage.clone(), ..pki.issue("a", &["a.test"]) };
    assert_one(&text("implicit", &table("main", &bad_cert, "")), "tls.certificate.main.cert: no PEM CERTIFICATE in");
    let cert_as_key = Issued { key_path: leaf.cert_path.clone(), ..pki.issue("b", &["b.test"]) };
    assert_one(&text("implicit", &table("main", &cert_as_key, "")), "tls.certificate.main.key: no private key");
}

#[test]
fn defaults_are_unique_and_required_among_several() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["b.test"]);
    let two = table("a", &a, "default = true") + &table("b", &b, "default = true");
    assert_one(
        &text("implicit", &two),
        "tls.certificate.b.default: only one certificate may be the default; tls.certificate.a already is",
    );
    let none = table("a", &a, "") + &table("b", &b, "");
    assert_one(&text("implicit", &none), "tls.certificate: with several certificates one needs default = true");
}

#[test]
fn names_are_checked() {
    let pki = Pki::new();
    let a = pki.issue("a", &["mail.example.test"]);
    let ip_only = pki.issue("ip", &["192.0.2.1"]);
    let bad = table("a", &a, "default = true\nnames = [\"ok.test\", \"bad name\", \"a.*.test\"]");
    let found = problems(&text("implicit", &bad));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("tls.certificate.a.names[1]: \"bad name\" is not a DNS name"), "{found:?}");
    assert!(found[1].starts_with("tls.certificate.a.names[2]: "), "{found:?}");

    let no_names = table("a", &a, "default = true") + &table("ip", &ip_only, "");
    assert_one(
        &text("implicit", &no_names),
        "tls.certificate.ip.cert: the certificate has no DNS names; list them in names",
    );
    let empty = table("a", &a, "default = true") + &table("ip", &ip_only, "names = []");
    assert_one(&text("implicit", &empty), "tls.certificate.ip.names: must list at least one name");
    // As the default, a certificate without names is fine: it serves unknown names.
    let fallback = table("a", &a, "") + &table("ip", &ip_only, "default = true");
    Config::from_toml_str(&text("implicit", &fallback)).unwrap();
}

#[test]
fn a_name_served_twice_is_ambiguous() {
    let pki = Pki::new();
    let a = pki.issue("a", &["mail.example.test"]);
    let b = pki.issue("b", &["MAIL.example.test"]);
    let twice = table("a", &a, "default = true") + &table("b", &b, "");
    assert_one(
        &text("implicit", &twice),
        "tls.certificate.b.cert: mail.example.test is also served by tls.certificate.a; list names to choose one",
    );
    let chosen = table("a", &a, "default = true") + &table("b", &b, "names = [\"imap.example.test\"]");
    Config::from_toml_str(&text("implicit", &chosen)).unwrap();
}

#[test]
fn tls_problems_come_with_every_other_problem() {
    let pki = Pki::new();
    let mut a = pki.issue("a", &["a.test"]);
    a.key_path = pki.dir.path().join("gone.key");
    let b = pki.issue("b", &["b.test"]);
    let tables = table("a", &a, "default = true") + &table("b", &b, "default = true\nfoo = 1");
    let found = problems(&(text("implicit", &tables) + "[node]\nid = \" \"\n"));
    let paths: Vec<&str> = found.iter().map(|p| p.split(": ").next().unwrap()).collect();
    assert_eq!(
        paths,
        ["node.id", "tls.certificate.a.key", "tls.certificate.b.default", "tls.certificate.b.foo"],
        "{found:?}"
    );
}
