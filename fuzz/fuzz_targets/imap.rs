//! IMAP command parser: client bytes split into reads at fuzzer-chosen points. It must
//! never panic or spin, never hold more than a line, a literal and one read, never let a
//! command's literals exceed the limit, and its error lines must be one safe line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::codec::imap::{quote, Arg, Command, Event, ImapError, ImapParser};
use switchyard_fuzz::script::{Budget, Script};

/// Bound on nesting the parser enforces (its MAX_LIST_DEPTH) plus the argument list itself.
const MAX_DEPTH: usize = 9;

fuzz_target!(|data: &[u8]| {
    let script = Script::new(data);
    // Small limits (64..512 line, 100..800 literal) so the fuzzer reaches them.
    let max_line = 64 << script.bits2(0);
    let max_literal = 100 << script.bits2(2);
    let mut parser = ImapParser::new(max_line, max_literal);
    let mut budget = Budget::new();
    for read in script.reads() {
        parser.push(read);
        budget.fund(read.len());
        drain(&mut parser, &mut budget, max_literal, script.flag(4));
    }
    let left = parser.take_remaining();
    assert!(
        left.len() <= max_line + max_literal + script.chunk,
        "{} bytes buffered (line {max_line}, literal {max_literal}, read {})",
        left.len(),
        script.chunk
    );
    round_trip_quote(script.body);
});

/// Everything the parser can answer now. With `raw_lines`, a raw line is read after each
/// command, as an AUTHENTICATE exchange does.
fn drain(parser: &mut ImapParser, budget: &mut Budget, max_literal: usize, raw_lines: bool) {
    loop {
        budget.spend();
        match parser.next_event() {
            Ok(None) => return,
            Ok(Some(Event::Command(command))) => {
                check_command(&command, max_literal);
                if raw_lines {
                    if let Ok(Some(line)) = parser.next_line() {
                        assert!(!line.contains(&b'\n'));
                    }
                }
            }
            Ok(Some(Event::NeedContinuation { tag })) => check_tag(&tag),
            Err(e) => check_error(&e),
        }
    }
}

fn check_tag(tag: &str) {
    // The tag is echoed in every response: it must not be able to start a new line.
    assert!(!tag.is_empty() && tag.bytes().all(|b| b.is_ascii_graphic() && b != b'+'), "{tag:?}");
}

fn check_command(command: &Command, max_literal: usize) {
    check_tag(&command.tag);
    assert!(!command.name.is_empty());
    assert!(command.name.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_lowercase()), "{:?}", command.name);
    let mut literal = 0;
    check_args(&command.args, 1, &mut literal);
    assert!(literal <= max_literal, "{literal} literal bytes in one command, limit {max_literal}");
}

fn check_args(args: &[Arg], depth: usize, literal: &mut usize) {
    assert!(depth <= MAX_DEPTH, "lists nested {depth} deep");
    for arg in args {
        match arg {
            Arg::Atom(a) => assert!(!a.is_empty() && !a.bytes().any(|b| b < 0x20 || b == 0x7f || b == b' ')),
            Arg::Quoted(q) => assert!(!q.bytes().any(|b| matches!(b, b'\0' | b'\r' | b'\n'))),
            Arg::Literal(l) => *literal += l.len(),
            Arg::List(items) => check_args(items, depth + 1, literal),
        }
    }
}

fn check_error(e: &ImapError) {
    if let Some(tag) = &e.tag {
        check_tag(tag);
    }
    let response = e.bad_response();
    assert!(response.ends_with("\r\n") && response.matches('\n').count() == 1, "{response:?}");
}

/// What `quote` writes must parse back to the same string, as a quoted string or a literal.
fn round_trip_quote(body: &[u8]) {
    let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
    let mut parser = ImapParser::new(4096, 4096);
    parser.push(format!("t LOGIN {} x\r\n", quote(&text)).as_bytes());
    let command = loop {
        match parser.next_event() {
            Ok(Some(Event::Command(c))) => break c,
            Ok(Some(Event::NeedContinuation { .. })) => {}
            other => panic!("quote({text:?}) did not parse back: {other:?}"),
        }
    };
    let user = command.args.first().and_then(Arg::as_str);
    assert_eq!(user, Some(text.as_str()), "quote({text:?}) parsed back as {:?}", command.args);
}
