//! SASL decoding and the server-side exchange. Nothing may panic; decoded payloads stay
//! within MAX_DECODED; and whatever credential an exchange ends with is replayed to the
//! backend so that the backend reads the very account and secret the proxy routed on.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::codec::mechanism::{Credential, Mechanism, SaslServer, Step};
use switchyard_fuzz::codec::sasl::{self, SaslLine, MAX_DECODED};
use switchyard_fuzz::script::Script;

fuzz_target!(|data: &[u8]| {
    let script = Script::new(data);
    decoders(script.body);
    exchange(&script);
    direct(&script);
});

fn decoders(body: &[u8]) {
    if let Ok(SaslLine::Data(decoded)) = sasl::decode_base64_line(body) {
        assert!(decoded.len() <= MAX_DECODED);
    }
    let _ = (sasl::decode_plain(body), sasl::decode_oauthbearer(body), sasl::decode_xoauth2(body));
    if let Ok(creds) = sasl::parse_plain(body) {
        assert_eq!(sasl::decode_plain(sasl::encode_plain(&creds).as_bytes()), Ok(creds));
    }
    for creds in [sasl::parse_oauthbearer(body.to_vec()), sasl::parse_xoauth2(body.to_vec())].into_iter().flatten() {
        assert_eq!(creds.raw, body);
        assert!(!creds.token.is_empty());
    }
}

/// A whole exchange: flag bits 0..1 pick the mechanism, bit 2 whether the first piece is
/// an initial response; the body split at byte 0 gives the client's decoded responses.
fn exchange(script: &Script<'_>) {
    let mechanism = Mechanism::ALL[script.bits2(0)];
    let mut responses = script.body.split(|&b| b == script.byte0);
    let initial = if script.flag(2) { responses.next() } else { None };
    let Ok((mut server, mut step)) = SaslServer::start(mechanism, initial) else {
        return;
    };
    assert_eq!(server.mechanism(), mechanism);
    loop {
        match step {
            Step::Done(credential) => return check_replay(mechanism, &credential),
            Step::Challenge(_) => {}
        }
        let Some(response) = responses.next() else {
            return;
        };
        step = match server.step(response) {
            Ok(step) => step,
            Err(_) => return,
        };
    }
}

/// A password credential built directly, as IMAP LOGIN and POP3 USER/PASS do: either it
/// names no account (and is refused) or it replays faithfully.
fn direct(script: &Script<'_>) {
    let text = String::from_utf8_lossy(script.body);
    let (user, password) = text.split_once(char::from(script.byte0)).unwrap_or((&text, ""));
    let credential = Credential::password(user, password);
    if credential.identifier().is_some() {
        check_replay(Mechanism::Login, &credential);
    }
}

fn check_replay(mechanism: Mechanism, credential: &Credential) {
    let _ = credential.identifier();
    let (replayed, payload) = credential.replay();
    let sent = STANDARD.decode(&payload).expect("the replay is valid base64");
    match credential {
        Credential::Password(creds) => {
            assert_eq!(replayed, Mechanism::Plain);
            // RFC 4616: the backend splits the message at its NULs, so it must find
            // exactly the three fields the proxy holds.
            let fields: Vec<&[u8]> = sent.split(|&b| b == 0).collect();
            let held = [creds.authzid.as_bytes(), creds.authcid.as_bytes(), creds.password.as_bytes()];
            assert_eq!(fields, held, "{mechanism} credential replayed as different PLAIN fields");
        }
        Credential::Bearer { mechanism: m, creds } => {
            assert_eq!((replayed, *m), (mechanism, mechanism));
            assert_eq!(sent, creds.raw);
        }
    }
}
