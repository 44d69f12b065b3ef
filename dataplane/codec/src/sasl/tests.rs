//! Tests of the sasl codec: chunked scripts and malformed input.
use super::*;

fn b64(raw: &[u8]) -> Vec<u8> {
    STANDARD.encode(raw).into_bytes()
}

fn creds(authzid: &str, authcid: &str, password: &str) -> Credentials {
    let (authzid, authcid, password) = (authzid.into(), authcid.into(), password.into());
    Credentials { authzid, authcid, password }
}

#[test]
fn plain_accepts_valid_messages() {
    assert_eq!(decode_plain(&b64(b"\0alice\0s3cret")), Ok(creds("", "alice", "s3cret")));
    let with_authzid = decode_plain(&b64(b"bob\0alice\0pw"));
    assert_eq!(with_authzid, Ok(creds("bob", "alice", "pw")));
    let master = decode_plain(&b64(b"\0alice%master\0masterpw"));
    assert_eq!(master, Ok(creds("", "alice%master", "masterpw")));
    let utf8 = decode_plain(&b64("\0jürgen\0pässword".as_bytes()));
    assert_eq!(utf8, Ok(creds("", "jürgen", "pässword")));
    // Unpadded base64 is tolerated.
    let unpadded = STANDARD.encode(b"\0al\0pw").trim_end_matches('=').to_owned();
    assert_eq!(decode_plain(unpadded.as_bytes()), Ok(creds("", "al", "pw")));
}

#[test]
fn plain_rejects_malformed_messages() {
    let two_nuls = CodecError::Malformed("PLAIN message needs two NUL separators");
    #[rustfmt::skip]
    let cases: &[(&[u8], CodecError)] = &[
        (&b64(b"alice\0pw"), two_nuls.clone()),
        (&b64(b"alice"), two_nuls.clone()),
        (b"=", two_nuls),
        (&b64(b"\0\0pw"), CodecError::Malformed("PLAIN authentication identity is empty")),
        (&b64(b"\0alice\0"), CodecError::Malformed("PLAIN password is empty")),
        (&b64(b"\0alice\0pw\0x"), CodecError::Malformed("PLAIN message has too many NULs")),
        (b"!!not base64!!", CodecError::Base64),
        (b"AGFsaWNl AHB3", CodecError::Base64),
        (&b64(b"\0al\xffice\0pw"), CodecError::InvalidUtf8),
        (&b64(b"\0alice\0p\xc3"), CodecError::InvalidUtf8),
    ];
    for (input, expected) in cases {
        let shown = String::from_utf8_lossy(input);
        assert_eq!(decode_plain(input).as_ref(), Err(expected), "input {shown:?}");
    }
}

#[test]
fn payload_size_is_bounded_before_decoding() {
    let at_limit = b64(&vec![b'a'; MAX_DECODED]);
    assert_eq!(decode_base64(&at_limit).map(|d| d.len()), Ok(MAX_DECODED));
    let over = b64(&vec![b'a'; MAX_DECODED + 1]);
    let err = decode_base64(&over).unwrap_err();
    assert!(matches!(err, CodecError::PayloadTooLarge { limit: MAX_DECODED, .. }), "{err:?}");
    // Rejected by length alone, even though it is not valid base64 at all.
    let junk = vec![b'!'; MAX_DECODED * 2];
    assert!(matches!(decode_plain(&junk), Err(CodecError::PayloadTooLarge { .. })));
}

#[test]
fn plain_round_trips() {
    for c in [creds("", "alice", "pw"), creds("admin", "alice%master", "p ä:\"ss")] {
        assert_eq!(decode_plain(encode_plain(&c).as_bytes()), Ok(c));
    }
    assert_eq!(encode_plain(&creds("", "a", "b")), "AGEAYg==");
}

#[test]
fn response_lines_recognise_cancel_and_empty() {
    assert_eq!(decode_base64_line(b"*"), Ok(SaslLine::Cancelled));
    assert_eq!(decode_base64_line(b""), Ok(SaslLine::Data(Vec::new())));
    assert_eq!(decode_base64_line(b"="), Ok(SaslLine::Data(Vec::new())));
    assert_eq!(decode_base64_line(b"YWxpY2U="), Ok(SaslLine::Data(b"alice".to_vec())));
    assert_eq!(decode_base64_line(b"**"), Err(CodecError::Base64));
}

#[test]
fn debug_output_hides_secrets() {
    let shown = format!("{:?}", creds("", "alice", "hunter2"));
    assert!(shown.contains("alice") && !shown.contains("hunter2"), "{shown}");
    let oauth = decode_xoauth2(&b64(b"user=al\x01auth=Bearer tok123\x01\x01"));
    let shown = format!("{oauth:?}");
    assert!(shown.contains("al") && !shown.contains("tok123"), "{shown}");
}

#[test]
fn oauthbearer_extracts_user_and_token() {
    let raw = b"n,a=alice@example.com,\x01host=mx\x01port=143\x01auth=Bearer tok==\x01\x01";
    let got = decode_oauthbearer(&b64(raw)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.user.as_deref(), Some("alice@example.com"));
    assert_eq!(got.token, "tok==");
    assert_eq!(got.raw, raw.to_vec());
    let escaped = parse_oauthbearer(b"y,a=a=3Db=2Cc,\x01auth=bearer t\x01\x01".to_vec());
    assert_eq!(escaped.map(|c| c.user), Ok(Some("a=b,c".to_owned())));
    let anonymous = parse_oauthbearer(b"n,,\x01auth=Bearer t\x01\x01".to_vec());
    assert_eq!(anonymous.map(|c| (c.user, c.token)), Ok((None, "t".to_owned())));
}

#[test]
fn oauthbearer_rejects_malformed_messages() {
    let cases: &[&[u8]] = &[
        b"n,a=alice,\x01auth=Bearer t\x01",
        b"n,a=alice,\x01auth=Basic t\x01\x01",
        b"n,a=alice,\x01auth=Bearer \x01\x01",
        b"n,a=alice,\x01host=mx\x01\x01",
        b"n,a=al=41ice,\x01auth=Bearer t\x01\x01",
        b"n,a=,\x01auth=Bearer t\x01\x01",
        b"x,a=alice,\x01auth=Bearer t\x01\x01",
        b"n,alice,\x01auth=Bearer t\x01\x01",
        b"n,a=alice\x01auth=Bearer t\x01\x01",
        b"auth=Bearer t\x01\x01",
    ];
    for raw in cases {
        let got = parse_oauthbearer(raw.to_vec());
        assert!(matches!(got, Err(CodecError::Malformed(_))), "{raw:?}: {got:?}");
    }
    let not_utf8 = parse_oauthbearer(b"n,a=\xff,\x01auth=Bearer t\x01\x01".to_vec());
    assert_eq!(not_utf8, Err(CodecError::InvalidUtf8));
}

#[test]
fn xoauth2_extracts_user_and_token() {
    let raw = b"user=alice@example.com\x01auth=Bearer ya29.tok\x01\x01";
    let got = decode_xoauth2(&b64(raw)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.user.as_deref(), Some("alice@example.com"));
    assert_eq!((got.token.as_str(), got.raw.as_slice()), ("ya29.tok", &raw[..]));
    for bad in [
        &b"auth=Bearer t\x01\x01"[..],
        b"user=\x01auth=Bearer t\x01\x01",
        b"user=alice\x01auth=Bearer t\x01",
        b"user=alice\x01\x01",
    ] {
        assert!(matches!(parse_xoauth2(bad.to_vec()), Err(CodecError::Malformed(_))), "{bad:?}");
    }
}

#[test]
fn the_decoded_limit_is_what_one_line_can_carry() {
    assert_eq!(decoded_limit(1024), 768);
    assert_eq!(decoded_limit(8190), 6141);
    assert_eq!(decoded_limit(1 << 20), MAX_DECODED, "capped whatever the line limit");
    // A full line decodes within the limit; more bytes (in a literal) do not.
    let limit = decoded_limit(1024);
    let line = b64(&vec![b'a'; limit]);
    assert_eq!(line.len(), 1024);
    assert_eq!(decode_response(&line, limit), Ok(SaslLine::Data(vec![b'a'; limit])));
    let literal = b64(&vec![b'a'; limit + 1]);
    let err = decode_response(&literal, limit).unwrap_err();
    assert!(matches!(err, CodecError::PayloadTooLarge { limit: 768, .. }), "{err:?}");
    // Unpadded input a few bytes over the limit is measured after decoding.
    let unpadded = STANDARD.encode(vec![b'a'; limit + 1]).trim_end_matches('=').to_owned();
    assert_eq!(decode_base64_within(unpadded.as_bytes(), limit + 1).map(|d| d.len()), Ok(limit + 1));
    assert!(matches!(decode_base64_within(unpadded.as_bytes(), limit), Err(CodecError::PayloadTooLarge { .. })));
    assert_eq!(decode_response(b"*", limit), Ok(SaslLine::Cancelled));
}
