//! Tests of the line codec: chunked scripts and malformed input.
use super::*;

/// Drains every line (or error) the buffer can produce right now.
fn drain(lb: &mut LineBuffer, out: &mut Vec<Result<Vec<u8>, CodecError>>) {
    loop {
        match lb.next_line() {
            Ok(Some(line)) => out.push(Ok(line)),
            Ok(None) => return,
            Err(e) => out.push(Err(e)),
        }
    }
}

fn feed_in_chunks(script: &[u8], chunk: usize, max: usize) -> Vec<Result<Vec<u8>, CodecError>> {
    let mut lb = LineBuffer::new(max);
    let mut out = Vec::new();
    for piece in script.chunks(chunk) {
        lb.push(piece);
        drain(&mut lb, &mut out);
    }
    out
}

#[test]
fn every_chunk_size_yields_the_same_lines() {
    let script: &[u8] = b"a1 NOOP\r\nbare lf\n\r\nthis line is far too long to fit\r\nok again\r\nx\r";
    let whole = feed_in_chunks(script, script.len(), 16);
    let expected: Vec<Result<Vec<u8>, CodecError>> = vec![
        Ok(b"a1 NOOP".to_vec()),
        Ok(b"bare lf".to_vec()),
        Ok(Vec::new()),
        Err(CodecError::LineTooLong { limit: 16 }),
        Ok(b"ok again".to_vec()),
    ];
    assert_eq!(whole, expected);
    for chunk in 1..=script.len() {
        assert_eq!(feed_in_chunks(script, chunk, 16), expected, "chunk size {chunk}");
    }
}

#[test]
fn line_of_exactly_the_limit_is_accepted() {
    let mut lb = LineBuffer::new(4);
    lb.push(b"abcd\r");
    assert_eq!(lb.next_line(), Ok(None));
    lb.push(b"\nabcde");
    assert_eq!(lb.next_line(), Ok(Some(b"abcd".to_vec())));
    assert_eq!(lb.next_line(), Err(CodecError::LineTooLong { limit: 4 }));
    assert!(lb.is_empty(), "over-long data must not stay buffered");
    assert_eq!(lb.overflow_head(), b"abcde");
}

#[test]
fn overflow_is_reported_before_the_line_ends_and_the_rest_is_dropped() {
    let mut lb = LineBuffer::new(8);
    lb.push(b"0123456789");
    assert_eq!(lb.next_line(), Err(CodecError::LineTooLong { limit: 8 }));
    lb.push(&[b'z'; 1000]);
    assert_eq!(lb.next_line(), Ok(None));
    assert!(lb.is_empty());
    lb.push(b"zz\r\nnext\r\n");
    assert_eq!(lb.next_line(), Ok(Some(b"next".to_vec())));
}

#[test]
fn take_exact_waits_for_the_whole_body() {
    let mut lb = LineBuffer::new(8);
    lb.push(b"ab");
    assert_eq!(lb.take_exact(5), None);
    lb.push(b"c\r\nde rest\r\n");
    assert_eq!(lb.take_exact(5), Some(b"abc\r\n".to_vec()));
    assert_eq!(lb.next_line(), Ok(Some(b"de rest".to_vec())));
    assert_eq!(lb.take_exact(0), Some(Vec::new()));
}

#[test]
fn discard_line_after_skips_a_body_then_the_line() {
    let mut lb = LineBuffer::new(8);
    lb.push(b"12345");
    lb.discard_line_after(7);
    assert!(lb.is_empty());
    assert_eq!(lb.next_line(), Ok(None));
    lb.push(b"6\n7 tail\r\nkeep\r\n");
    assert_eq!(lb.next_line(), Ok(Some(b"keep".to_vec())));
}

#[test]
fn take_remaining_returns_unconsumed_bytes() {
    let mut lb = LineBuffer::new(64);
    lb.push(b"a STARTTLS\r\ninjected\r\npartial");
    assert_eq!(lb.next_line(), Ok(Some(b"a STARTTLS".to_vec())));
    assert_eq!(lb.take_remaining(), b"injected\r\npartial".to_vec());
    assert!(lb.is_empty());
    assert_eq!(lb.next_line(), Ok(None));
}
