//! The bounded line reader, two ways. As a little program of calls (push, next_line,
//! take_exact, discard_line_after, take_remaining) it must never panic, hand out a line
//! longer than the limit, or hold more than one partial line while waiting for a line
//! end. Fed by reads of any size it must hand out exactly what one big read gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::codec::line::LineBuffer;
use switchyard_fuzz::codec::CodecError;
use switchyard_fuzz::script::{Budget, Script};

fuzz_target!(|data: &[u8]| {
    let script = Script::new(data);
    let max_line = 64 << script.bits2(0);
    if script.flag(2) {
        calls(script.body, max_line);
    } else {
        reads(&script, max_line);
    }
});

fn calls(program: &[u8], max_line: usize) {
    let mut lines = LineBuffer::new(max_line);
    let mut bytes = program.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        match op % 5 {
            0 => {
                let data: Vec<u8> = bytes.by_ref().take(usize::from(arg)).collect();
                lines.push(&data);
            }
            1 => match lines.next_line() {
                Ok(Some(line)) => assert!(line.len() <= max_line && !line.contains(&b'\n')),
                // Waiting for a line end: at most the limit, plus a CR that may start CRLF.
                Ok(None) => assert!(lines.len() <= max_line + 1, "{} bytes held", lines.len()),
                Err(e) => assert_eq!(e, CodecError::LineTooLong { limit: max_line }),
            },
            2 => {
                if let Some(body) = lines.take_exact(usize::from(arg)) {
                    assert_eq!(body.len(), usize::from(arg));
                }
            }
            3 => lines.discard_line_after(u64::from(arg) << (op >> 5)),
            _ => {
                let before = lines.len();
                assert!(lines.take_remaining().len() <= before);
                assert!(lines.is_empty());
            }
        }
        assert!(lines.overflow_head().len() <= 64);
    }
}

type Outcome = (Result<Vec<u8>, CodecError>, Vec<u8>);

fn reads(script: &Script<'_>, max_line: usize) {
    let whole = feed(std::iter::once(script.body), max_line);
    let split = feed(script.reads(), max_line);
    assert_eq!(split, whole, "reads of {} bytes", script.chunk);
}

/// Every line or error, with the overflow head after each error.
fn feed<'a>(reads: impl Iterator<Item = &'a [u8]>, max_line: usize) -> Vec<Outcome> {
    let mut lines = LineBuffer::new(max_line);
    let mut out = Vec::new();
    let mut budget = Budget::new();
    for read in reads {
        lines.push(read);
        budget.fund(read.len());
        loop {
            budget.spend();
            match lines.next_line() {
                Ok(None) => break,
                Ok(Some(line)) => out.push((Ok(line), Vec::new())),
                Err(e) => out.push((Err(e), lines.overflow_head().to_vec())),
            }
        }
    }
    out
}
