//! SMTP/LMTP codecs on one input, read three ways: as client command lines, as a server's
//! replies, and as message data after DATA. None may panic or spin; a replayed MAIL/RCPT
//! must parse back to the same command; replies must survive relaying; the DATA relay must
//! find the same end of message and write the same bytes however the reads are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::codec::smtp::{parse_command, syntax_reply, CommandParser, DataRelay, Extensions, ReplyParser};
use switchyard_fuzz::script::{Budget, Script};

fuzz_target!(|data: &[u8]| {
    let script = Script::new(data);
    let max_line = 64 << script.bits2(0);
    commands(&script, max_line);
    replies(&script, max_line);
    message_data(&script);
});

fn commands(script: &Script<'_>, max_line: usize) {
    let mut parser = CommandParser::new(max_line);
    let mut budget = Budget::new();
    for read in script.reads() {
        parser.push(read);
        budget.fund(read.len());
        loop {
            budget.spend();
            match parser.next_command() {
                Ok(None) => break,
                Ok(Some(command)) => {
                    if let Some(line) = command.replay() {
                        // What the backend receives: one line, read as the client meant it.
                        assert!(!line.contains(['\r', '\n']), "{line:?}");
                        assert_eq!(parse_command(line.as_bytes()), Ok(command.clone()), "replayed as {line:?}");
                    }
                    if script.flag(4) {
                        let _ = parser.next_line();
                    }
                }
                Err(e) => {
                    let reply = syntax_reply(&e);
                    assert!(reply.starts_with(b"50") && reply.ends_with(b"\r\n"));
                    assert_eq!(reply.iter().filter(|&&b| b == b'\n').count(), 1);
                }
            }
        }
    }
    let left = parser.take_remaining();
    assert!(left.len() <= max_line + 1 + script.chunk, "{} bytes buffered", left.len());
}

fn replies(script: &Script<'_>, max_line: usize) {
    let mut parser = ReplyParser::new(max_line);
    for read in script.reads() {
        parser.push(read);
        while let Ok(Some(reply)) = parser.next_reply() {
            assert!(!reply.lines.is_empty() && reply.lines.len() <= 256);
            let code = reply.code.to_string();
            assert!(reply.lines.iter().all(|l| l.starts_with(code.as_bytes())));
            let _ = (reply.excerpt(), reply.is_positive(), Extensions::from_ehlo(&reply));
            // Relayed to the client byte for byte, it is still the same reply.
            let mut again = ReplyParser::new(max_line);
            again.push(&reply.to_bytes());
            assert_eq!(again.next_reply(), Ok(Some(reply.clone())));
        }
    }
}

/// The relay against a plain model: every LF leaves as CRLF, and the message ends at the
/// first CRLF.CRLF (or at a leading .CRLF) of that output. Each message is compared,
/// then the rest is read as the next one.
fn message_data(script: &Script<'_>) {
    let mut rest = script.body;
    while !rest.is_empty() {
        let (want_out, want_len) = model(rest);
        let mut relay = DataRelay::new();
        let (mut out, mut used) = (Vec::new(), None);
        let mut offset = 0;
        for read in rest.chunks(script.chunk) {
            if let Some(n) = relay.feed(read, &mut out) {
                assert!(n <= read.len());
                used = Some(offset + n);
                break;
            }
            offset += read.len();
        }
        assert_eq!(used, want_len, "end of message");
        assert!(out == want_out, "relayed bytes differ from the model");
        match used {
            Some(n) => rest = &rest[n..],
            None => return,
        }
    }
}

fn model(input: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut out = Vec::new();
    for (i, &b) in input.iter().enumerate() {
        if b == b'\n' && out.last() != Some(&b'\r') {
            out.push(b'\r');
        }
        out.push(b);
        if out == b".\r\n" || out.ends_with(b"\r\n.\r\n") {
            return (out, Some(i + 1));
        }
    }
    (out, None)
}
