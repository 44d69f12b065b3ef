//! SASL exchange tests: each mechanism with and without an initial response, and the
//! identifier each credential yields.

use super::*;

fn login(name: &str) -> Identifier {
    Identifier::Login(name.to_string())
}

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
    assert_eq!(done(step).identifier(), Some(login("alice")));
    let (mut s, step) = SaslServer::start(Mechanism::Plain, None).unwrap();
    assert_eq!(step, Step::Challenge(vec![]));
    let cred = done(s.step(msg).unwrap());
    assert_eq!(cred.replay(), (Mechanism::Plain, STANDARD.encode(msg)));
    assert!(SaslServer::start(Mechanism::Plain, Some(b"no-nuls")).is_err());
}

/// The route step gets the kind of identifier with it: an authzid is the account itself,
/// an authcid alone is a login name (cut later at the master-user separator).
#[test]
fn plain_identifier_kinds() {
    let table: &[(&[u8], Option<Identifier>)] = &[
        (b"alice@example.test\0admin\0adminpw", Some(Identifier::Authzid("alice@example.test".into()))),
        (b"\0alice%admin\0adminpw", Some(login("alice%admin"))),
        (b"\0alice\0pw", Some(login("alice"))),
        // Some clients repeat the authcid as the authzid: the same account either way.
        (b"alice\0alice\0pw", Some(Identifier::Authzid("alice".into()))),
    ];
    for (message, want) in table {
        let (_, step) = SaslServer::start(Mechanism::Plain, Some(message)).unwrap();
        let cred = done(step);
        assert_eq!(&cred.identifier(), want, "{message:?}");
        // The full message, authzid included, is what the backend gets.
        assert_eq!(cred.replay(), (Mechanism::Plain, STANDARD.encode(message)));
    }
}

#[test]
fn login_asks_user_then_password_and_replays_as_plain() {
    let (mut s, step) = SaslServer::start(Mechanism::Login, None).unwrap();
    assert_eq!(step, Step::Challenge(b"Username:".to_vec()));
    assert_eq!(s.step(b"bob%admin").unwrap(), Step::Challenge(b"Password:".to_vec()));
    let cred = done(s.step(b"secret").unwrap());
    assert_eq!(cred.identifier(), Some(login("bob%admin")));
    assert_eq!(cred.replay(), (Mechanism::Plain, STANDARD.encode(b"\0bob%admin\0secret")));
    // Some clients send the user name as an initial response.
    let (mut s, step) = SaslServer::start(Mechanism::Login, Some(b"carol")).unwrap();
    assert_eq!(step, Step::Challenge(b"Password:".to_vec()));
    assert_eq!(done(s.step(b"pw").unwrap()).identifier(), Some(login("carol")));
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
    assert_eq!(cred.identifier(), Some(login("dave@example.test")));
    assert_eq!(cred.replay(), (Mechanism::OAuthBearer, STANDARD.encode(&raw)), "replayed byte for byte");

    let token = jwt(r#"{"sub":"123","email":"erin@example.test"}"#);
    let raw = format!("n,,\x01auth=Bearer {token}\x01\x01");
    let (_, step) = SaslServer::start(Mechanism::OAuthBearer, Some(raw.as_bytes())).unwrap();
    assert_eq!(done(step).identifier(), Some(login("erin@example.test")));

    let raw = format!("n,,\x01auth=Bearer {}\x01\x01", jwt(r#"{"sub":"frank"}"#));
    let (_, step) = SaslServer::start(Mechanism::OAuthBearer, Some(raw.as_bytes())).unwrap();
    assert_eq!(done(step).identifier(), Some(login("frank")));

    let raw = "n,,\x01auth=Bearer opaque\x01\x01";
    let (_, step) = SaslServer::start(Mechanism::OAuthBearer, Some(raw.as_bytes())).unwrap();
    assert_eq!(done(step).identifier(), None, "an opaque token without a=: no identifier");
}

#[test]
fn xoauth2_after_an_empty_challenge() {
    let (mut s, step) = SaslServer::start(Mechanism::XOAuth2, None).unwrap();
    assert_eq!(step, Step::Challenge(vec![]));
    let cred = done(s.step(b"user=gina@example.test\x01auth=Bearer t\x01\x01").unwrap());
    assert_eq!(cred.identifier(), Some(login("gina@example.test")));
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
    assert_eq!(Credential::password("alice", "pw").identifier(), Some(login("alice")));
}

#[test]
fn mechanism_names() {
    assert_eq!(Mechanism::from_name("xoauth2"), Some(Mechanism::XOAuth2));
    assert_eq!(Mechanism::from_name("CRAM-MD5"), None);
    assert_eq!(Mechanism::advertised(), "PLAIN LOGIN OAUTHBEARER XOAUTH2");
}
