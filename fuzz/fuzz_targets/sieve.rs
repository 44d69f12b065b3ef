//! ManageSieve command parser: client bytes split into reads at fuzzer-chosen points,
//! read as commands or as SASL responses. It must never panic or spin, never hold more
//! than a line, a literal and one read, and `quote` must parse back to what it quoted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::codec::sieve::{quote, Arg, SieveParser};
use switchyard_fuzz::script::{Budget, Script};

fuzz_target!(|data: &[u8]| {
    let script = Script::new(data);
    let max_line = 64 << script.bits2(0);
    let max_literal = 100 << script.bits2(2);
    let mut parser = SieveParser::new(max_line, max_literal);
    let mut budget = Budget::new();
    // Flag bits 4..7 pick, call by call, a command or a SASL response (an AUTHENTICATE
    // exchange switches between the two on the same connection).
    let mut pattern = script.flags >> 4;
    for read in script.reads() {
        parser.push(read);
        budget.fund(read.len());
        loop {
            budget.spend();
            pattern = pattern.rotate_right(1);
            let more = if pattern & 1 == 1 {
                response(&mut parser, max_line.max(max_literal))
            } else {
                command(&mut parser, max_literal)
            };
            if !more {
                break;
            }
        }
    }
    let left = parser.take_remaining();
    assert!(left.len() <= max_line + max_literal + script.chunk, "{} bytes buffered", left.len());
    round_trip_quote(script.body);
});

/// One `next_command`; false once the parser needs more data.
fn command(parser: &mut SieveParser, max_literal: usize) -> bool {
    match parser.next_command() {
        Ok(None) => false,
        Ok(Some(command)) => {
            assert!(!command.name.is_empty() && !command.name.bytes().any(|b| b.is_ascii_lowercase()));
            let literal: usize =
                command.args.iter().filter(|a| matches!(a, Arg::Literal(_))).map(|a| a.as_bytes().len()).sum();
            assert!(literal <= max_literal, "{literal} literal bytes, limit {max_literal}");
            for arg in &command.args {
                if let Arg::Atom(a) = arg {
                    assert!(!a.is_empty() && !a.bytes().any(|b| b < 0x20 || b == 0x7f || b == b' '));
                }
            }
            true
        }
        Err(e) => {
            assert!(!e.to_string().contains('\n'));
            true
        }
    }
}

/// One `next_response`: a quoted string (bounded by the line) or a literal.
fn response(parser: &mut SieveParser, bound: usize) -> bool {
    match parser.next_response() {
        Ok(None) => false,
        Ok(Some(value)) => {
            assert!(value.len() <= bound, "{} byte response", value.len());
            true
        }
        Err(_) => true,
    }
}

/// `PUTSCRIPT <name> <script>` with both strings quoted by `quote` parses back to them.
fn round_trip_quote(body: &[u8]) {
    let (name, content) = body.split_at(body.len() / 2);
    let mut line = b"PUTSCRIPT ".to_vec();
    line.extend(quote(name));
    line.push(b' ');
    line.extend(quote(content));
    line.extend_from_slice(b"\r\n");
    let mut parser = SieveParser::new(8192, 8192);
    parser.push(&line);
    let command = match parser.next_command() {
        Ok(Some(c)) => c,
        other => panic!("quoted strings did not parse back: {other:?}"),
    };
    let args: Vec<Option<&[u8]>> = command.args.iter().map(Arg::as_string).collect();
    assert_eq!(args, [Some(name), Some(content)]);
}
