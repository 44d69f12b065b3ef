//! SASL exchange tests: each mechanism with and without an initial response, and the
//! identifier each credential yields.

use super::*;

fn done(step: Step) -> Credential {
    match step {
        Step::Done(c) => c,
        other => panic!("expected a credential, got {other:?}"),
    }
}

#[test]
fn plain_with_and_without_initial_response() {
    let msg = b"\0alice\0pw";
    let (_, step) = SaslServer::start(Mechanism::Plain, Some(msg)).unwrap();
    assert_eq!(done(step).identifier().as_deref(), Some("alice"));
    let (mut s, step) = SaslServer::start(Mechanism::Plain, None).unwrap();
    assert_eq!(step, Step::Challenge(vec![]));
    let cred = done(s.step(msg).unwrap());
    assert_eq!(cred.replay(), (Mechanism::Plain, STANDARD.encode(msg)));
    assert!(SaslServer::start(Mechanism::Plain, Some(b"no-nuls")).is_err());
}

#[test]
fn login_asks_user_then_password_and_replays_as_plain() {
    let (mut s, step) = SaslServer::start(Mechanism::Login, None).unwrap();
    assert_eq!(step, Step::Challenge(b"Username:".to_vec()));
    assert_eq!(s.step(b"bob%admin").unwrap(), Step::Challenge(b"Password:".to_vec()));
    let cred = done(s.step(b"secret").unwrap());
    assert_eq!(cred.identifier().as_deref(), Some("bob%admin"));
    assert_eq!(cred.replay(), (Mechanism::Plain, STANDARD.encode(b"\0bob%admin\0secret")));
    // Some clients send the user name as an initial response.
    let (mut s, step) = SaslServer::start(Mechanism::Login, Some(b"carol")).unwrap();
    assert_eq!(step, Step::Challenge(b"Password:".to_vec()));
    assert_eq!(done(s.step(b"pw").unwrap()).identifier().as_deref(), Some("carol"));
    assert!(SaslServer::start(Mechanism::Login, Some(b"")).is_err());
}

fn jwt(claims: &str) -> String {
    format!("eyJhbGciOiJub25lIn0.{}.sig", URL_SAFE_NO_PAD.encode(claims))
}

#[test]
fn oauthbearer_identifier_from_authzid_or_token_claims() {
    let raw = b"n,a=dave@example.test,\x01auth=Bearer tok\x01\x01".to_vec();
    let (_, step) = SaslServer::start(Mechanism::OAuthBearer, Some(&raw)).unwrap();
    let cred = done(step);
    assert_eq!(cred.identifier().as_deref(), Some("dave@example.test"));
    assert_eq!(cred.replay(), (Mechanism::OAuthBearer, STANDARD.encode(&raw)), "replayed byte for byte");

    let token = jwt(r#"{"sub":"123","email":"erin@example.test"}"#);
    let raw = format!("n,,\x01auth=Bearer {token}\x01\x01");
    let (_, step) = SaslServer::start(Mechanism::OAuthBearer, Some(raw.as_bytes())).unwrap();
    assert_eq!(done(step).identifier().as_deref(), Some("erin@example.test"));

    let raw = format!("n,,\x01auth=Bearer {}\x01\x01", jwt(r#"{"sub":"frank"}"#));
    let (_, step) = SaslServer::start(Mechanism::OAuthBearer, Some(raw.as_bytes())).unwrap();
    assert_eq!(done(step).identifier().as_deref(), Some("frank"));

    let raw = "n,,\x01auth=Bearer opaque\x01\x01";
    let (_, step) = SaslServer::start(Mechanism::OAuthBearer, Some(raw.as_bytes())).unwrap();
    assert_eq!(done(step).identifier(), None, "an opaque token without a=: no identifier");
}

#[test]
fn xoauth2_after_an_empty_challenge() {
    let (mut s, step) = SaslServer::start(Mechanism::XOAuth2, None).unwrap();
    assert_eq!(step, Step::Challenge(vec![]));
    let cred = done(s.step(b"user=gina@example.test\x01auth=Bearer t\x01\x01").unwrap());
    assert_eq!(cred.identifier().as_deref(), Some("gina@example.test"));
    assert_eq!(cred.replay().0, Mechanism::XOAuth2);
    assert!(s.step(b"garbage").is_err());
}

/// Found by the `sasl` fuzz target: replayed as PLAIN, a NUL inside a LOGIN user name
/// or password split into other fields than the account the proxy routed on.
#[test]
fn a_nul_in_a_password_credential_is_refused() {
    assert!(SaslServer::start(Mechanism::Login, Some(b"victim\0x")).is_err());
    let (mut s, _) = SaslServer::start(Mechanism::Login, Some(b"alice")).unwrap();
    assert!(s.step(b"pw\0more").is_err());
    // IMAP LOGIN literals and POP3 PASS lines build the credential directly.
    assert_eq!(Credential::password("victim\0x", "pw").identifier(), None);
    assert_eq!(Credential::password("alice", "p\0w").identifier(), None);
    assert_eq!(Credential::password("alice", "pw").identifier().as_deref(), Some("alice"));
}

#[test]
fn mechanism_names() {
    assert_eq!(Mechanism::from_name("xoauth2"), Some(Mechanism::XOAuth2));
    assert_eq!(Mechanism::from_name("CRAM-MD5"), None);
    assert_eq!(Mechanism::advertised(), "PLAIN LOGIN OAUTHBEARER XOAUTH2");
}
