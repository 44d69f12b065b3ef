//! Tests of the SMTP codec: commands, envelope paths, replies and the DATA terminator, fed
//! whole and in chunks of every size, plus a table of malformed input.

use super::*;

fn path(raw: &str, mailbox: &str) -> Path {
    Path { raw: raw.into(), mailbox: mailbox.into() }
}

fn parse(line: &str) -> Result<Command, CodecError> {
    parse_command(line.as_bytes())
}

#[test]
fn hello_commands_and_bare_verbs() {
    assert_eq!(
        parse("EHLO client.example").unwrap(),
        Command::Hello { verb: Hello::Ehlo, domain: "client.example".into() }
    );
    assert_eq!(parse("helo [192.0.2.1]").unwrap(), Command::Hello { verb: Hello::Helo, domain: "[192.0.2.1]".into() });
    assert_eq!(parse("LHLO mx").unwrap(), Command::Hello { verb: Hello::Lhlo, domain: "mx".into() });
    assert_eq!(parse("data").unwrap(), Command::Data);
    assert_eq!(parse("RSET").unwrap(), Command::Rset);
    assert_eq!(parse("QUIT").unwrap(), Command::Quit);
    assert_eq!(parse("StartTLS").unwrap(), Command::StartTls);
    assert_eq!(parse("NOOP anything at all").unwrap(), Command::Noop);
    assert_eq!(parse("VRFY bob").unwrap(), Command::Vrfy);
    assert_eq!(parse("BDAT 100 LAST").unwrap(), Command::Unknown("BDAT".into()));
    assert_eq!(parse("xyzzy").unwrap(), Command::Unknown("XYZZY".into()));
}

#[test]
fn mail_and_rcpt_paths_and_parameters() {
    assert_eq!(
        parse("MAIL FROM:<a@example.org> SIZE=1000 BODY=8BITMIME").unwrap(),
        Command::Mail { from: path("a@example.org", "a@example.org"), params: "SIZE=1000 BODY=8BITMIME".into() }
    );
    assert_eq!(parse("mail from:<>").unwrap(), Command::Mail { from: path("", ""), params: String::new() });
    // A space after the colon is common in the wild.
    assert_eq!(
        parse("RCPT TO: <Bob@Example.TEST>").unwrap(),
        Command::Rcpt { to: path("Bob@Example.TEST", "Bob@Example.TEST"), params: String::new() }
    );
    assert_eq!(
        parse("RCPT TO:<@relay.example,@b.example:carol@example.test> NOTIFY=NEVER").unwrap(),
        Command::Rcpt {
            to: path("@relay.example,@b.example:carol@example.test", "carol@example.test"),
            params: "NOTIFY=NEVER".into()
        }
    );
    assert_eq!(
        parse("RCPT TO:<Postmaster>").unwrap(),
        Command::Rcpt { to: path("Postmaster", "Postmaster"), params: String::new() }
    );
}

#[test]
fn quoted_local_parts() {
    let rcpt = |line: &str| match parse(line).unwrap() {
        Command::Rcpt { to, .. } => to,
        other => panic!("{other:?}"),
    };
    // Quotes around a plain dot-atom name the same mailbox.
    assert_eq!(rcpt("RCPT TO:<\"alice\"@example.test>"), path("\"alice\"@example.test", "alice@example.test"));
    assert_eq!(rcpt("RCPT TO:<\"john doe\"@example.test>").mailbox, "\"john doe\"@example.test");
    assert_eq!(rcpt("RCPT TO:<\"a>b\\\"c\"@example.test>").mailbox, "\"a>b\\\"c\"@example.test");
}

#[test]
fn replay_rebuilds_a_clean_command_line() {
    let mail = parse("mail FROM: <a@example.org>  BODY=8BITMIME").unwrap();
    assert_eq!(mail.replay().unwrap(), "MAIL FROM:<a@example.org> BODY=8BITMIME");
    let rcpt = parse("rcpt to:<b@example.org>").unwrap();
    assert_eq!(rcpt.replay().unwrap(), "RCPT TO:<b@example.org>");
    assert_eq!(parse("NOOP").unwrap().replay(), None);
}

#[test]
fn auth_with_and_without_initial_response() {
    assert_eq!(parse("AUTH PLAIN").unwrap(), Command::Auth { mechanism: "PLAIN".into(), initial: None });
    assert_eq!(
        parse("auth login dXNlcg==").unwrap(),
        Command::Auth { mechanism: "login".into(), initial: Some(b"dXNlcg==".to_vec()) }
    );
    assert_eq!(
        parse("AUTH PLAIN =").unwrap(),
        Command::Auth { mechanism: "PLAIN".into(), initial: Some(b"=".to_vec()) }
    );
}

#[test]
fn malformed_commands_are_errors() {
    let table = [
        "",
        "EHLO",
        "HELO   ",
        "LHLO",
        "MAIL",
        "MAIL TO:<a@b>",
        "MAIL FROM:a@b",
        "MAIL FROM:<a@b",
        "MAIL FROM:<a@b>SIZE=1",
        "MAIL FROM:<a@b> =x",
        "RCPT TO:<>",
        "RCPT TO:<bob>",
        "RCPT TO:<bob@>",
        "RCPT TO:<@relay:bob>",
        "RCPT TO:<a b@c>",
        "RCPT TO:<a..b@c>",
        "RCPT TO:<\"unterminated@c>",
        "RCPT TO:<a@b@c>",
        "RCPT TO:<a@exa mple>",
        "RCPT TO:<a<b@c>",
        "RCPT TO:<@route-without-colon>",
        "DATA now",
        "RSET x",
        "QUIT please",
        "STARTTLS x",
        "AUTH",
        "AUTH PLAIN a b",
        "MAIL FROM:<a@b>\x01",
    ];
    for line in table {
        assert!(parse(line).is_err(), "{line:?} should be refused, got {:?}", parse(line));
    }
    assert_eq!(parse_command(b"MAIL FROM:<\xff@b>"), Err(CodecError::InvalidUtf8));
}

#[test]
fn commands_in_chunks_of_every_size() {
    let script =
        b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\nbogus line that is far too long for the limit\r\nDATA\r\n";
    let expected = vec![
        Ok(parse("EHLO c").unwrap()),
        Ok(parse("MAIL FROM:<a@x>").unwrap()),
        Ok(parse("RCPT TO:<b@y>").unwrap()),
        Err(CodecError::LineTooLong { limit: 32 }),
        Ok(Command::Data),
    ];
    for chunk in 1..=script.len() {
        let mut parser = CommandParser::new(32);
        let mut got = Vec::new();
        for piece in script.chunks(chunk) {
            parser.push(piece);
            loop {
                match parser.next_command() {
                    Ok(Some(c)) => got.push(Ok(c)),
                    Ok(None) => break,
                    Err(e) => got.push(Err(e)),
                }
            }
        }
        assert_eq!(got, expected, "chunk size {chunk}");
    }
}

#[test]
fn multi_line_replies_in_chunks_of_every_size() {
    let script = b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 XCLIENT ADDR\r\n354\r\n";
    for chunk in 1..=script.len() {
        let mut parser = ReplyParser::new(1024);
        let mut got = Vec::new();
        for piece in script.chunks(chunk) {
            parser.push(piece);
            while let Some(reply) = parser.next_reply().unwrap() {
                got.push(reply);
            }
        }
        assert_eq!(got.iter().map(|r| r.code).collect::<Vec<_>>(), [220, 250, 354], "chunk size {chunk}");
        assert_eq!(got[1].lines.len(), 4);
        assert_eq!(got[1].to_bytes(), b"250-mx\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 XCLIENT ADDR\r\n");
        let ext = Extensions::from_ehlo(&got[1]);
        assert_eq!(ext, Extensions { auth: vec!["PLAIN".into(), "LOGIN".into()], starttls: false, xclient: true });
    }
}

#[test]
fn a_parser_is_empty_only_with_nothing_past_the_last_reply() {
    let mut parser = ReplyParser::new(1024);
    assert!(parser.is_empty());
    parser.push(b"220 go ahead\r\n");
    assert!(!parser.is_empty());
    assert_eq!(parser.next_reply().unwrap().map(|r| r.code), Some(220));
    assert!(parser.is_empty());
    // A line of a reply begun, or a byte of the next one, is something.
    for rest in [&b"250-mx\r\n"[..], b"2"] {
        let mut parser = ReplyParser::new(1024);
        parser.push(b"220 go ahead\r\n");
        parser.push(rest);
        assert_eq!(parser.next_reply().unwrap().map(|r| r.code), Some(220));
        assert_eq!(parser.next_reply().unwrap(), None);
        assert!(!parser.is_empty(), "{rest:?}");
    }
}

#[test]
fn malformed_replies_are_errors() {
    for line in ["", "25", "abc hello", "2500 x", "250+x", "199 too low", "600 too high", "260 bad second digit"] {
        let mut b = ReplyBuilder::default();
        assert!(b.push_line(line.as_bytes().to_vec()).is_err(), "{line:?}");
    }
    let mut b = ReplyBuilder::default();
    assert_eq!(b.push_line(b"250-a".to_vec()), Ok(None));
    assert!(b.push_line(b"251 b".to_vec()).is_err(), "codes must agree");
    let mut b = ReplyBuilder::default();
    for _ in 0..256 {
        assert_eq!(b.push_line(b"250-x".to_vec()), Ok(None));
    }
    assert!(b.push_line(b"250 x".to_vec()).is_err(), "bounded");
}

#[test]
fn replies_written_by_the_proxy() {
    assert_eq!(format_reply(250, &["mx", "PIPELINING", "8BITMIME"]), b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
    assert_eq!(format_reply(221, &["2.0.0 Bye"]), b"221 2.0.0 Bye\r\n");
}

/// Feeds `input` in `chunk`-sized pieces; returns what was sent on and the bytes after the
/// terminator.
fn relay(input: &[u8], chunk: usize) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut relay = DataRelay::new();
    let mut out = Vec::new();
    for (i, piece) in input.chunks(chunk).enumerate() {
        if let Some(used) = relay.feed(piece, &mut out) {
            let mut rest = piece[used..].to_vec();
            rest.extend(input.get((i + 1) * chunk..).unwrap_or_default());
            return (out, Some(rest));
        }
    }
    (out, None)
}

/// Client input, what the backend gets, and what is left for the command parser.
type DataCase = (&'static [u8], &'static [u8], Option<&'static [u8]>);

#[test]
fn data_terminator_across_every_chunk_boundary() {
    let cases: [DataCase; 6] = [
        (b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n", b"Subject: x\r\n\r\nbody\r\n.\r\n", Some(b"QUIT\r\n")),
        (b".\r\n", b".\r\n", Some(b"")),
        // Dot-stuffed lines are not the end; they pass through unchanged for the backend.
        (b"..\r\n.x\r\n.\r\n", b"..\r\n.x\r\n.\r\n", Some(b"")),
        // Bare LF becomes CRLF, so `LF.LF` ends the message for the proxy and backend alike.
        (b"a\nb\n.\nMAIL", b"a\r\nb\r\n.\r\n", Some(b"MAIL")),
        (b"a\r\n.\r", b"a\r\n.\r", None),
        (b"x.\r\n\r.\r\n", b"x.\r\n\r.\r\n", None),
    ];
    for (input, sent, rest) in cases {
        for chunk in 1..=input.len() {
            let (out, after) = relay(input, chunk);
            assert_eq!(out, sent, "{:?} in chunks of {chunk}", String::from_utf8_lossy(input));
            assert_eq!(after.as_deref(), rest, "{:?} in chunks of {chunk}", String::from_utf8_lossy(input));
        }
    }
}

/// The relay as specified, one byte at a time and independent of [`DataRelay`]: a bare
/// LF gets a CR, and `.` CR LF at a line start ends the message. Returns what is sent on
/// and how many input bytes the message took.
fn relay_reference(input: &[u8]) -> (Vec<u8>, Option<usize>) {
    #[derive(Clone, Copy, PartialEq)]
    enum S {
        LineStart,
        Mid,
        Cr,
        Dot,
        DotCr,
    }
    let mut state = S::LineStart;
    let mut out = Vec::new();
    for (i, &byte) in input.iter().enumerate() {
        let repaired: &[u8] = if byte == b'\n' && !matches!(state, S::Cr | S::DotCr) { b"\r\n" } else { &[byte][..] };
        for &b in repaired {
            out.push(b);
            state = match (state, b) {
                (S::DotCr, b'\n') => return (out, Some(i + 1)),
                (S::Cr, b'\n') => S::LineStart,
                (S::LineStart, b'.') => S::Dot,
                (S::Dot, b'\r') => S::DotCr,
                (_, b'\r') => S::Cr,
                _ => S::Mid,
            };
        }
    }
    (out, None)
}

/// Feeds `input` in `chunk`-sized pieces through [`DataRelay::relay`] (the copy-free
/// path); returns what was sent on and where the message ended.
fn relay_borrowed(input: &[u8], chunk: usize) -> (Vec<u8>, Option<usize>) {
    let mut relay = DataRelay::new();
    let (mut sent, mut scratch) = (Vec::new(), Vec::new());
    for (i, piece) in input.chunks(chunk).enumerate() {
        let (send, end) = relay.relay(piece, &mut scratch);
        sent.extend_from_slice(send);
        if let Some(used) = end {
            return (sent, Some(i * chunk + used));
        }
    }
    (sent, None)
}

/// Long lines with every special sequence sprinkled in (CR alone, bare LF, dot lines,
/// dot-stuffing), `seed` choosing which, then the terminator and a command.
fn message_with_specials(seed: u32, clean: bool) -> Vec<u8> {
    let pieces: [&[u8]; 8] =
        [b"plain text ", b"\r\n", b"..stuffed\r\n", b"cr\ralone ", b"\r\r\n", b".x", b"bare\n", b"\n.\r\n"];
    // Without bare LFs (and so without an early terminator) when `clean`.
    let usable = if clean { 6 } else { pieces.len() - 1 };
    let mut input = Vec::new();
    let mut seed = seed;
    while input.len() < 100_000 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        input.extend_from_slice(pieces[(seed >> 16) as usize % usable]);
        input.extend(std::iter::repeat_n(b'a', (seed >> 8) as usize % 300));
    }
    input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    input
}

#[test]
fn data_fast_paths_match_the_byte_by_byte_relay_in_any_chunking() {
    for (seed, clean) in [(7, false), (8, false), (9, true), (10, true)] {
        let input = message_with_specials(seed, clean);
        let (want, end) = relay_reference(&input);
        let end = end.expect("the terminator is found");
        if clean {
            assert_eq!(want, &input[..end], "nothing to repair");
        }
        for chunk in [1, 2, 3, 5, 64, 1000, 4096, 65_536, input.len()] {
            let (out, rest) = relay(&input, chunk);
            assert_eq!(out, want, "feed, seed {seed}, chunks of {chunk}");
            assert_eq!(rest.as_deref(), Some(&input[end..]), "feed, seed {seed}, chunks of {chunk}");
            assert_eq!(
                relay_borrowed(&input, chunk),
                (want.clone(), Some(end)),
                "relay, seed {seed}, chunks of {chunk}"
            );
        }
    }
}

#[test]
fn data_cases_through_the_copy_free_path() {
    let cases: [(&[u8], &[u8], Option<usize>); 5] = [
        (b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n", b"Subject: x\r\n\r\nbody\r\n.\r\n", Some(23)),
        (b"a\nb\n.\nMAIL", b"a\r\nb\r\n.\r\n", Some(6)),
        (b"\n\n.\n", b"\r\n\r\n.\r\n", Some(4)),
        (b"x.\r\n\r.\r\n", b"x.\r\n\r.\r\n", None),
        (b"..\r\n.x\r\n.\r\n", b"..\r\n.x\r\n.\r\n", Some(11)),
    ];
    for (input, sent, end) in cases {
        assert_eq!(relay_reference(input), (sent.to_vec(), end), "reference on {:?}", String::from_utf8_lossy(input));
        for chunk in 1..=input.len() {
            assert_eq!(
                relay_borrowed(input, chunk),
                (sent.to_vec(), end),
                "{:?} in chunks of {chunk}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
