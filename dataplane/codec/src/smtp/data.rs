//! The message after `DATA`, relayed chunk by chunk: finds the `CRLF.CRLF` terminator
//! across chunk boundaries without buffering the message.
//!
//! A bare LF is sent on as CRLF. Otherwise a client could end the message with `LF.LF`,
//! which some backends accept and the proxy would not: the backend would then read the
//! rest as commands the proxy never routed (SMTP smuggling). With the repair both sides
//! see exactly the same terminator.
//!
//! Only line ends and lines starting with a dot need a look; every other line is passed
//! over with one `memchr` for its LF, and a piece without a bare LF is relayed as it came
//! ([`DataRelay::relay`]), without a copy.

/// Where the output stands relative to a possible terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (the data starts here too).
    LineStart,
    Mid,
    /// After a CR inside a line.
    Cr,
    /// After a `.` at the start of a line.
    Dot,
    /// After `.` CR at the start of a line.
    DotCr,
}

#[derive(Debug)]
pub struct DataRelay {
    state: State,
}

impl Default for DataRelay {
    fn default() -> Self {
        Self::new()
    }
}

/// How far [`DataRelay::scan`] got through a piece.
struct Scanned {
    /// Bytes passed over, all to be sent on unchanged.
    len: usize,
    /// The terminator ended at `len`.
    end: bool,
    /// `input[len]` is a bare LF to repair.
    bare_lf: bool,
}

impl DataRelay {
    pub fn new() -> Self {
        Self { state: State::LineStart }
    }

    /// Appends to `out` what to send on for `input` (terminator included). Returns how
    /// many input bytes belonged to the message once the terminator is complete: what
    /// follows is the client's next command.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        out.reserve(input.len());
        let mut i = 0;
        loop {
            let scanned = self.scan(&input[i..]);
            out.extend_from_slice(&input[i..i + scanned.len]);
            i += scanned.len;
            if scanned.end {
                return Some(i);
            }
            if !scanned.bare_lf {
                return None;
            }
            // The repair: a CR first, then the LF, through the state machine (after a
            // line-start dot this completes the terminator).
            out.extend_from_slice(b"\r\n");
            let (after_cr, _) = step(self.state, b'\r');
            let (state, end) = step(after_cr, b'\n');
            self.state = state;
            i += 1;
            if end {
                return Some(i);
            }
        }
    }

    /// [`feed`](Self::feed) without a copy where none is needed: what to send on for
    /// `input` — `input`'s own bytes unless a bare LF had to be repaired (then `out`) —
    /// and, as from `feed`, how many input bytes the message took once it ended.
    pub fn relay<'a>(&mut self, input: &'a [u8], out: &'a mut Vec<u8>) -> (&'a [u8], Option<usize>) {
        let scanned = self.scan(input);
        if !scanned.bare_lf {
            return (&input[..scanned.len], scanned.end.then_some(scanned.len));
        }
        out.clear();
        out.extend_from_slice(&input[..scanned.len]);
        let end = self.feed(&input[scanned.len..], out).map(|n| scanned.len + n);
        (out, end)
    }

    /// Passes over the longest prefix of `input` that goes on unchanged, up to the end
    /// of the message or the next bare LF.
    fn scan(&mut self, input: &[u8]) -> Scanned {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                // Inside a line, or at the start of one that does not start with a dot,
                // only the line's end matters.
                State::Mid | State::LineStart if !(self.state == State::LineStart && input[i] == b'.') => {
                    // One search over the rest of the piece, line after line, as long as
                    // the lines end in CRLF and the next one does not start with a dot.
                    let from = i;
                    for k in memchr::memchr_iter(b'\n', &input[from..]) {
                        let lf = from + k;
                        if lf == i || input[lf - 1] != b'\r' {
                            if lf > i {
                                self.state = State::Mid;
                            }
                            return Scanned { len: lf, end: false, bare_lf: true };
                        }
                        self.state = State::LineStart;
                        i = lf + 1;
                        if input.get(i) == Some(&b'.') {
                            break;
                        }
                    }
                    if self.state != State::LineStart || input.get(i) != Some(&b'.') {
                        if i < input.len() {
                            self.state = if input.last() == Some(&b'\r') { State::Cr } else { State::Mid };
                        }
                        return Scanned { len: input.len(), end: false, bare_lf: false };
                    }
                }
                // After a CR or a line-start dot: one byte at a time.
                _ => {
                    let byte = input[i];
                    if byte == b'\n' && !matches!(self.state, State::Cr | State::DotCr) {
                        return Scanned { len: i, end: false, bare_lf: true };
                    }
                    let (state, end) = step(self.state, byte);
                    self.state = state;
                    i += 1;
                    if end {
                        return Scanned { len: i, end: true, bare_lf: false };
                    }
                }
            }
        }
        Scanned { len: input.len(), end: false, bare_lf: false }
    }
}

/// The state after `byte`, and whether it completed the terminator.
fn step(state: State, byte: u8) -> (State, bool) {
    match (state, byte) {
        (State::DotCr, b'\n') => (State::LineStart, true),
        (State::Cr, b'\n') => (State::LineStart, false),
        (State::LineStart, b'.') => (State::Dot, false),
        (State::Dot, b'\r') => (State::DotCr, false),
        (_, b'\r') => (State::Cr, false),
        _ => (State::Mid, false),
    }
}
