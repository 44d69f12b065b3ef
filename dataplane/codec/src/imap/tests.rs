//! Tests of the imap codec: chunked scripts and malformed input.
use super::*;

const MAX_LINE: usize = 64;
const MAX_LITERAL: usize = 32;

type Outcome = Result<Event, ImapError>;

/// Feeds `script` in `chunk`-sized pieces, collecting everything the parser yields.
fn feed(script: &[u8], chunk: usize) -> Vec<Outcome> {
    let mut p = ImapParser::new(MAX_LINE, MAX_LITERAL);
    let mut out = Vec::new();
    for piece in script.chunks(chunk) {
        p.push(piece);
        while let Some(outcome) = p.next_event().transpose() {
            out.push(outcome);
        }
    }
    out
}

fn cmd(tag: &str, name: &str, args: Vec<Arg>) -> Outcome {
    let (tag, name) = (tag.to_owned(), name.to_owned());
    Ok(Event::Command(Command { tag, name, args }))
}

fn cont(tag: &str) -> Outcome {
    Ok(Event::NeedContinuation { tag: tag.to_owned() })
}

fn err(tag: &str, kind: CodecError) -> Outcome {
    Err(ImapError { tag: Some(tag.to_owned()), kind })
}

fn too_big(size: u64) -> CodecError {
    CodecError::LiteralTooLarge { size, limit: MAX_LITERAL }
}

fn q(s: &str) -> Arg {
    Arg::Quoted(s.to_owned())
}

fn lit(b: &[u8]) -> Arg {
    Arg::Literal(b.to_vec())
}

#[test]
fn script_parses_identically_in_every_chunk_size() {
    let long = format!("t9 LOGIN {}\r\n", "x".repeat(80));
    let body = "y\r\n".repeat(10) + "0123456789";
    let script = [
        "a1 capability\r\n",
        "a2 ID (\"name\" \"x\" \"version\" \"1\")\r\n",
        "a3 LOGIN {5}\r\nalice \"pa\\\"ss\\\\\"\r\n",
        "a4 LOGIN {5+}\r\nbob@x {3}\r\npw1\r\n",
        "a5 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\n",
        "a6 ID NIL\r\n",
        "a7 ID (\"k\" {4+}\r\na\r\nb ()) \"\"\r\n",
        &long,
        "a8 LOGIN {33}\r\n",
        &format!("t10 LOGIN {{40+}}\r\n{body} rest\r\n"),
        "a9 NOOP\r\n",
    ]
    .concat();
    let id = vec![q("name"), q("x"), q("version"), q("1")];
    let nested = vec![q("k"), lit(b"a\r\nb"), Arg::List(vec![])];
    let plain = vec![Arg::Atom("PLAIN".into()), Arg::Atom("AGFsaWNlAHNlY3JldA==".into())];
    let expected = vec![
        cmd("a1", "CAPABILITY", vec![]),
        cmd("a2", "ID", vec![Arg::List(id)]),
        cont("a3"),
        cmd("a3", "LOGIN", vec![lit(b"alice"), q("pa\"ss\\")]),
        cont("a4"),
        cmd("a4", "LOGIN", vec![lit(b"bob@x"), lit(b"pw1")]),
        cmd("a5", "AUTHENTICATE", plain),
        cmd("a6", "ID", vec![Arg::Atom("NIL".into())]),
        cmd("a7", "ID", vec![Arg::List(nested), q("")]),
        err("t9", CodecError::LineTooLong { limit: MAX_LINE }),
        err("a8", too_big(33)),
        err("t10", too_big(40)),
        cmd("a9", "NOOP", vec![]),
    ];
    let script = script.as_bytes();
    assert_eq!(feed(script, script.len()), expected);
    for chunk in 1..=script.len() {
        assert_eq!(feed(script, chunk), expected, "chunk size {chunk}");
    }
}

#[test]
fn malformed_inputs_are_rejected_in_any_chunking_and_parsing_continues() {
    let nonsync = format!("a1 LOGIN {{99+}}\r\n{}z\r\n", "z\n".repeat(49));
    let deep = format!("a1 ID {}\r\n", "(".repeat(MAX_LIST_DEPTH + 1));
    let long = [&[b'x'; 100][..], b"\r\n"].concat();
    // (input, expected tag, expected error text)
    #[rustfmt::skip]
    let cases: &[(&[u8], Option<&str>, &str)] = &[
        (b"\r\n", None, "empty line"),
        (b" NOOP\r\n", None, "missing tag"),
        (b"a1\r\n", Some("a1"), "missing command name"),
        (b"a1 \r\n", Some("a1"), "missing command name"),
        (b"a{1 NOOP\r\n", None, "invalid character in tag"),
        (b"a+1 NOOP\r\n", None, "invalid character in tag"),
        (b"a\x001 NOOP\r\n", None, "invalid character in tag"),
        (b"a1 N\x80OP\r\n", Some("a1"), "invalid character in command name"),
        (b"a1 LOGIN \"alice pw\r\n", Some("a1"), "unterminated quoted string"),
        (b"a1 LOGIN \"al\\ice\" pw\r\n", Some("a1"), "invalid escape in quoted string"),
        (b"a1 LOGIN \"\xff\" pw\r\n", Some("a1"), "invalid UTF-8"),
        (b"a1 LOGIN {5x}\r\n", Some("a1"), "invalid literal size"),
        (b"a1 LOGIN {}\r\n", Some("a1"), "invalid literal size"),
        (b"a1 LOGIN {5} pw\r\n", Some("a1"), "literal must end the line"),
        (b"a1 LOGIN {99}\r\n", Some("a1"), "literal of 99 bytes exceeds 32 bytes"),
        (nonsync.as_bytes(), Some("a1"), "literal of 99 bytes exceeds 32 bytes"),
        (b"a1 X {99999999999999999999999}\r\n", Some("a1"),
            "literal of 18446744073709551615 bytes exceeds 32 bytes"),
        // Several literals share one budget.
        (b"a1 ID {20+}\r\n01234567890123456789 {20}\r\n", Some("a1"),
            "literal of 20 bytes exceeds 32 bytes"),
        (&long, None, "line exceeds 64 bytes"),
        (b"a1 LOGIN al\0ice pw\r\n", Some("a1"), "control character in command"),
        (b"a1 LOGIN alice\"pw\"\r\n", Some("a1"), "missing space between arguments"),
        (b"a1 LOGIN {5+}\r\nalice\"pw\"\r\n", Some("a1"), "missing space between arguments"),
        (b"a1 LOGIN \\alice\r\n", Some("a1"), "unexpected character"),
        (b"a1 ID (\"a\"\r\n", Some("a1"), "unterminated list"),
        (b"a1 ID \"a\")\r\n", Some("a1"), "unexpected ')'"),
        (deep.as_bytes(), Some("a1"), "lists nested too deeply"),
    ];
    for (input, tag, message) in cases {
        let script = [input, &b"z1 NOOP\r\n"[..]].concat();
        let shown = String::from_utf8_lossy(input);
        for chunk in 1..=script.len() {
            let out = feed(&script, chunk);
            let [Err(e), next] = out.as_slice() else {
                panic!("input {shown:?}: expected one error then NOOP, got {out:?}");
            };
            let got = (e.tag.as_deref(), e.kind.to_string());
            assert_eq!(got, (*tag, message.to_string()), "input {shown:?}/{chunk}");
            assert_eq!(next, &cmd("z1", "NOOP", vec![]), "input {shown:?}/{chunk}");
        }
    }
}

#[test]
fn synchronizing_literal_waits_for_its_bytes() {
    let mut p = ImapParser::new(MAX_LINE, MAX_LITERAL);
    p.push(b"a LOGIN {5}\r\n");
    assert_eq!(p.next_event().transpose(), Some(cont("a")));
    assert_eq!(p.next_event(), Ok(None));
    p.push(b"ali");
    assert_eq!(p.next_event(), Ok(None));
    p.push(b"ce pw\r\n");
    let expected = cmd("a", "LOGIN", vec![lit(b"alice"), Arg::Atom("pw".into())]);
    assert_eq!(p.next_event().transpose(), Some(expected));
}

#[test]
fn raw_lines_and_remaining_bytes_are_available_between_commands() {
    let mut p = ImapParser::new(MAX_LINE, MAX_LITERAL);
    p.push(b"a AUTHENTICATE PLAIN\r\nAGEAYg==\r\nb STARTTLS\r\nleftover");
    let plain = cmd("a", "AUTHENTICATE", vec![Arg::Atom("PLAIN".into())]);
    assert_eq!(p.next_event().transpose(), Some(plain));
    assert_eq!(p.next_line(), Ok(Some(b"AGEAYg==".to_vec())));
    assert_eq!(p.next_event().transpose(), Some(cmd("b", "STARTTLS", vec![])));
    assert_eq!(p.take_remaining(), b"leftover".to_vec());
    assert_eq!(p.next_event(), Ok(None));
}

#[test]
fn arg_accessors() {
    assert!(Arg::Atom("nil".into()).is_nil());
    assert!(!q("NIL").is_nil());
    assert_eq!(Arg::Atom("nil".into()).as_str(), Some("nil"));
    assert_eq!(lit(b"\xff").as_bytes(), Some(&b"\xff"[..]));
    assert_eq!(lit(b"\xff").as_str(), None);
    assert_eq!(Arg::List(vec![]).as_bytes(), None);
}

#[test]
fn quote_uses_quoted_strings_or_literals() {
    assert_eq!(quote("Switchyard"), "\"Switchyard\"");
    assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    assert_eq!(quote(""), "\"\"");
    assert_eq!(quote("a\r\nb"), "{4}\r\na\r\nb");
    assert_eq!(quote("é"), "{2}\r\né");
}

#[test]
fn bad_responses_carry_the_tag_or_a_star() {
    let bad = |tag: Option<&str>, kind| ImapError { tag: tag.map(str::to_owned), kind }.bad_response();
    assert_eq!(bad(Some("a1"), Malformed("missing tag")), "a1 BAD missing tag\r\n");
    assert_eq!(bad(None, CodecError::LineTooLong { limit: 8 }), "* BAD line exceeds 8 bytes\r\n");
    let big = CodecError::LiteralTooLarge { size: 9, limit: 8 };
    assert_eq!(bad(Some("x"), big), "x BAD [TOOBIG] literal of 9 bytes exceeds 8 bytes\r\n");
}
