//! The message after `DATA`, relayed chunk by chunk: finds the `CRLF.CRLF` terminator
//! across chunk boundaries without buffering the message.
//!
//! A bare LF is sent on as CRLF. Otherwise a client could end the message with `LF.LF`,
//! which some backends accept and the proxy would not: the backend would then read the
//! rest as commands the proxy never routed (SMTP smuggling). With the repair both sides
//! see exactly the same terminator.

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
        while i < input.len() {
            if self.state == State::Mid {
                // Inside a line only CR and LF change the state: copy the run before the
                // next one whole (a message is mostly such runs).
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                out.extend_from_slice(&input[i..i + run]);
                i += run;
                if i == input.len() {
                    break;
                }
            }
            let byte = input[i];
            if byte == b'\n' && !matches!(self.state, State::Cr | State::DotCr) {
                self.emit(b'\r', out);
            }
            i += 1;
            if self.emit(byte, out) {
                return Some(i);
            }
        }
        None
    }

    /// Writes one byte; true when it completed the terminator.
    fn emit(&mut self, byte: u8, out: &mut Vec<u8>) -> bool {
        out.push(byte);
        self.state = match (self.state, byte) {
            (State::DotCr, b'\n') => {
                self.state = State::LineStart;
                return true;
            }
            (State::Cr, b'\n') => State::LineStart,
            (State::LineStart, b'.') => State::Dot,
            (State::Dot, b'\r') => State::DotCr,
            (_, b'\r') => State::Cr,
            _ => State::Mid,
        };
        false
    }
}
