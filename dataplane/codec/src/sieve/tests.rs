//! Tests of the ManageSieve codec: chunked scripts and malformed input.
use super::*;

const MAX_LINE: usize = 64;
const MAX_LITERAL: usize = 32;

type Outcome = Result<Command, CodecError>;

/// Feeds `script` in `chunk`-sized pieces, collecting every command the parser yields.
fn feed(script: &[u8], chunk: usize) -> Vec<Outcome> {
    let mut p = SieveParser::new(MAX_LINE, MAX_LITERAL);
    let mut out = Vec::new();
    for piece in script.chunks(chunk) {
        p.push(piece);
        while let Some(outcome) = p.next_command().transpose() {
            out.push(outcome);
        }
    }
    out
}

fn cmd(name: &str, args: Vec<Arg>) -> Outcome {
    Ok(Command { name: name.to_owned(), args })
}

fn q(s: &str) -> Arg {
    Arg::Quoted(s.to_owned())
}

fn lit(b: &[u8]) -> Arg {
    Arg::Literal(b.to_vec())
}

fn atom(s: &str) -> Arg {
    Arg::Atom(s.to_owned())
}

#[test]
fn script_parses_identically_in_every_chunk_size() {
    let long = format!("NOOP \"{}\"\r\n", "x".repeat(80));
    let body = "y\r\n".repeat(10) + "0123456789";
    // An oversized literal's octets and the rest of its line are dropped unread.
    let dropped = format!("PUTSCRIPT \"s\" {{33+}}\r\n{}\r\n", "z".repeat(33));
    let script = [
        "capability\r\n",
        "Authenticate \"PLAIN\" \"AGFsaWNlAHNlY3JldA==\"\r\n",
        "AUTHENTICATE \"PLAIN\" {20+}\r\nAGFsaWNlAHNlY3JldA==\r\n",
        "AUTHENTICATE {5}\r\nPLAIN {4+}\r\nAA==\n",
        "NOOP \"t\\\"a\\\\g\"\r\n",
        "HAVESPACE \"s\" 1000\r\n",
        &long,
        &dropped,
        &format!("PUTSCRIPT \"s\" {{40+}}\r\n{body} rest\r\n"),
        "PUTSCRIPT \"é\" {7+}\r\nkeep;\r\n\r\n",
        "LOGOUT\r\n",
    ]
    .concat();
    let plain = q("PLAIN");
    let expected = vec![
        cmd("CAPABILITY", vec![]),
        cmd("AUTHENTICATE", vec![plain.clone(), q("AGFsaWNlAHNlY3JldA==")]),
        cmd("AUTHENTICATE", vec![plain, lit(b"AGFsaWNlAHNlY3JldA==")]),
        cmd("AUTHENTICATE", vec![lit(b"PLAIN"), lit(b"AA==")]),
        cmd("NOOP", vec![q("t\"a\\g")]),
        cmd("HAVESPACE", vec![q("s"), atom("1000")]),
        Err(CodecError::LineTooLong { limit: MAX_LINE }),
        Err(CodecError::LiteralTooLarge { size: 33, limit: MAX_LITERAL }),
        Err(CodecError::LiteralTooLarge { size: 40, limit: MAX_LITERAL }),
        cmd("PUTSCRIPT", vec![q("é"), lit(b"keep;\r\n")]),
        cmd("LOGOUT", vec![]),
    ];
    let script = script.as_bytes();
    for chunk in 1..=script.len() {
        assert_eq!(feed(script, chunk), expected, "chunk size {chunk}");
    }
}

#[test]
fn malformed_inputs_are_rejected_in_any_chunking_and_parsing_continues() {
    let oversized = format!("PUTSCRIPT \"s\" {{99+}}\r\n{}z\r\n", "z\n".repeat(49));
    let long = [&[b'x'; 100][..], b"\r\n"].concat();
    #[rustfmt::skip]
    let cases: &[(&[u8], &str)] = &[
        (b"\r\n", "empty line"),
        (b"   \r\n", "empty line"),
        (b"\"NOOP\"\r\n", "command name must be an atom"),
        (b"{4+}\r\nNOOP\r\n", "command name must be an atom"),
        (b"NOOP \"tag\r\n", "unterminated quoted string"),
        (b"NOOP \"t\\ag\"\r\n", "invalid escape in quoted string"),
        (b"NOOP \"\xff\"\r\n", "invalid UTF-8"),
        (b"N\xffOOP\r\n", "invalid UTF-8"),
        (b"NOOP {5x}\r\n", "invalid literal size"),
        (b"NOOP {}\r\n", "invalid literal size"),
        (b"NOOP {+}\r\n", "invalid literal size"),
        (b"NOOP {5+} x\r\n", "literal must end the line"),
        (oversized.as_bytes(), "literal of 99 bytes exceeds 32 bytes"),
        // Several literals share one budget.
        (b"X {20+}\r\n01234567890123456789 {20+}\r\n01234567890123456789\r\n", "literal of 20 bytes exceeds 32 bytes"),
        (&long, "line exceeds 64 bytes"),
        (b"NOOP a\0b\r\n", "control character in command"),
        (b"NOOP \"a\"\"b\"\r\n", "missing space between arguments"),
        (b"NOOP {1+}\r\na\"b\"\r\n", "missing space between arguments"),
        (b"NOOP \\x\r\n", "unexpected character"),
        (b"NOOP (x)\r\n", "unexpected character"),
    ];
    for (input, message) in cases {
        let script = [input, &b"NOOP\r\n"[..]].concat();
        let shown = String::from_utf8_lossy(input);
        for chunk in 1..=script.len() {
            let out = feed(&script, chunk);
            let [Err(e), next] = out.as_slice() else {
                panic!("input {shown:?}: expected one error then NOOP, got {out:?}");
            };
            assert_eq!(e.to_string(), *message, "input {shown:?}/{chunk}");
            assert_eq!(next, &cmd("NOOP", vec![]), "input {shown:?}/{chunk}");
        }
    }
}

#[test]
fn an_absurd_literal_size_is_too_large_and_its_octets_are_never_read_as_commands() {
    let out = feed(b"NOOP {99999999999999999999999+}\r\nNOOP\r\n", 7);
    assert_eq!(out, [Err(CodecError::LiteralTooLarge { size: u64::MAX, limit: MAX_LITERAL })]);
}

#[test]
fn sasl_responses_are_one_string() {
    let mut p = SieveParser::new(MAX_LINE, MAX_LITERAL);
    p.push(b"\"AGEAYg==\"\r\n{4+}\r\nAA==\r\n\"*\"\r\nAGEAYg==\r\n\"a\" \"b\"\r\n\r\nNOOP\r\nrest");
    assert_eq!(p.next_response(), Ok(Some(b"AGEAYg==".to_vec())));
    assert_eq!(p.next_response(), Ok(Some(b"AA==".to_vec())));
    assert_eq!(p.next_response(), Ok(Some(b"*".to_vec())));
    let malformed = Err(Malformed("expected one quoted string or literal"));
    assert_eq!(p.next_response(), malformed.clone());
    assert_eq!(p.next_response(), malformed.clone());
    assert_eq!(p.next_response(), malformed);
    assert_eq!(p.next_command(), cmd("NOOP", vec![]).map(Some));
    assert_eq!(p.next_response(), Ok(None));
    assert_eq!(p.take_remaining(), b"rest".to_vec());
}

#[test]
fn a_literal_waits_for_its_octets_without_a_continuation() {
    let mut p = SieveParser::new(MAX_LINE, MAX_LITERAL);
    p.push(b"AUTHENTICATE \"PLAIN\" {8}\r\nAGEA");
    assert_eq!(p.next_command(), Ok(None));
    p.push(b"Yg==\r");
    assert_eq!(p.next_command(), Ok(None));
    p.push(b"\nLIST");
    let expected = Command { name: "AUTHENTICATE".into(), args: vec![q("PLAIN"), lit(b"AGEAYg==")] };
    assert_eq!(p.next_command(), Ok(Some(expected)));
    assert_eq!(p.take_remaining(), b"LIST".to_vec());
}

#[test]
fn arg_accessors() {
    assert_eq!(atom("x").as_string(), None);
    assert_eq!(atom("x").as_bytes(), b"x");
    assert_eq!(q("x").as_string(), Some(&b"x"[..]));
    assert_eq!(lit(b"\xff").as_string(), Some(&b"\xff"[..]));
}

#[test]
fn quote_uses_quoted_strings_or_literals() {
    assert_eq!(quote(b"Switchyard"), b"\"Switchyard\"");
    assert_eq!(quote(br#"a"b\c"#), br#""a\"b\\c""#);
    assert_eq!(quote(b""), b"\"\"");
    assert_eq!(quote("é".as_bytes()), "\"é\"".as_bytes());
    assert_eq!(quote(b"a\r\nb"), b"{4}\r\na\r\nb");
    assert_eq!(quote(b"\xff"), b"{1}\r\n\xff");
    let long = vec![b'x'; MAX_QUOTED + 1];
    assert!(quote(&long).starts_with(b"{1025}\r\n"));
}
