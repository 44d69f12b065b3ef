//! ManageSieve client input (RFC 5804), socket-free: command lines made of atoms, quoted
//! strings and literals, the string a client answers a SASL challenge with, and the
//! quoting the server's own strings need.
//!
//! RFC 5804 has no continuation request: a client literal (`literal-c2s`, `{n+}`) is
//! followed by its octets at once. A synchronizing-looking `{n}` is accepted the same
//! way, since a client that sent one cannot be waiting for anything the protocol offers.

use super::line::LineBuffer;
use super::CodecError::{self, Malformed};

/// RFC 5804 quoted strings hold at most this many octets; longer ones must be literals.
const MAX_QUOTED: usize = 1024;

/// One token of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Atom(String),
    Quoted(String),
    Literal(Vec<u8>),
}

impl Arg {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Arg::Atom(s) | Arg::Quoted(s) => s.as_bytes(),
            Arg::Literal(b) => b,
        }
    }

    /// The value of a string argument (quoted or literal); `None` for an atom.
    pub fn as_string(&self) -> Option<&[u8]> {
        match self {
            Arg::Atom(_) => None,
            Arg::Quoted(s) => Some(s.as_bytes()),
            Arg::Literal(b) => Some(b),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Upper-cased command name.
    pub name: String,
    pub args: Vec<Arg>,
}

/// A line whose tokens were interrupted by a literal.
#[derive(Debug)]
struct Partial {
    tokens: Vec<Arg>,
    /// Line bytes this logical line may still use across its continuation lines.
    line_left: usize,
    /// Literal bytes it may still use, so many small literals stay bounded too.
    literal_left: usize,
}

#[derive(Debug)]
enum State {
    Idle,
    /// Waiting for the octets of an accepted literal.
    Literal {
        line: Partial,
        size: usize,
    },
    /// Literal octets received; waiting for the rest of the line.
    Rest(Partial),
}

/// What parsing one line piece produced.
enum Step {
    Done(Vec<Arg>),
    Literal { line: Partial, size: u64 },
}

/// Incremental parser: `push` bytes, then call `next_command` (or `next_response` during
/// a SASL exchange) until `Ok(None)`. After an error the offending line is consumed.
#[derive(Debug)]
pub struct SieveParser {
    lines: LineBuffer,
    max_literal: usize,
    state: State,
}

impl SieveParser {
    pub fn new(max_line: usize, max_literal: usize) -> Self {
        Self { lines: LineBuffer::new(max_line), max_literal, state: State::Idle }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.lines.push(bytes);
    }

    /// The next command: an atom naming it, then its arguments.
    pub fn next_command(&mut self) -> Result<Option<Command>, CodecError> {
        let Some(mut tokens) = self.next_tokens()? else {
            return Ok(None);
        };
        match tokens.first() {
            None => Err(Malformed("empty line")),
            Some(Arg::Atom(name)) => {
                let name = name.to_ascii_uppercase();
                tokens.remove(0);
                Ok(Some(Command { name, args: tokens }))
            }
            Some(_) => Err(Malformed("command name must be an atom")),
        }
    }

    /// A client's answer to a SASL challenge: a line holding exactly one string.
    pub fn next_response(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        let Some(tokens) = self.next_tokens()? else {
            return Ok(None);
        };
        match tokens.as_slice() {
            [Arg::Quoted(s)] => Ok(Some(s.clone().into_bytes())),
            [Arg::Literal(b)] => Ok(Some(b.clone())),
            _ => Err(Malformed("expected one quoted string or literal")),
        }
    }

    /// Buffered bytes not yet parsed; any half-parsed line is dropped.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        self.state = State::Idle;
        self.lines.take_remaining()
    }

    /// The tokens of the next complete logical line (literals included).
    fn next_tokens(&mut self) -> Result<Option<Vec<Arg>>, CodecError> {
        loop {
            let step = match std::mem::replace(&mut self.state, State::Idle) {
                State::Idle => {
                    let Some(line) = self.lines.next_line()? else {
                        return Ok(None);
                    };
                    let partial = Partial {
                        tokens: Vec::new(),
                        line_left: self.lines.max_line().saturating_sub(line.len()),
                        literal_left: self.max_literal,
                    };
                    parse_tokens(partial, Cursor::new(&line), false)?
                }
                State::Literal { mut line, size } => {
                    let Some(body) = self.lines.take_exact(size) else {
                        self.state = State::Literal { line, size };
                        return Ok(None);
                    };
                    line.tokens.push(Arg::Literal(body));
                    self.state = State::Rest(line);
                    continue;
                }
                State::Rest(mut partial) => {
                    let Some(line) = self.lines.next_line()? else {
                        self.state = State::Rest(partial);
                        return Ok(None);
                    };
                    partial.line_left = partial
                        .line_left
                        .checked_sub(line.len())
                        .ok_or(CodecError::LineTooLong { limit: self.lines.max_line() })?;
                    parse_tokens(partial, Cursor::new(&line), true)?
                }
            };
            match step {
                Step::Done(tokens) => return Ok(Some(tokens)),
                Step::Literal { line, size } => self.accept_literal(line, size)?,
            }
        }
    }

    fn accept_literal(&mut self, mut line: Partial, size: u64) -> Result<(), CodecError> {
        let fits = usize::try_from(size).ok().and_then(|n| line.literal_left.checked_sub(n).map(|left| (n, left)));
        let Some((n, left)) = fits else {
            // The octets are already on their way: drop them rather than read them as commands.
            self.lines.discard_line_after(size);
            return Err(CodecError::LiteralTooLarge { size, limit: self.max_literal });
        };
        line.literal_left = left;
        self.state = State::Literal { line, size: n };
        Ok(())
    }
}

/// `s` as a server-side string: quoted when RFC 5804 allows it, otherwise a literal
/// (`literal-s2c`, `{n}` CRLF octets).
pub fn quote(s: &[u8]) -> Vec<u8> {
    let quotable = s.len() <= MAX_QUOTED
        && std::str::from_utf8(s).is_ok()
        && !s.iter().any(|b| matches!(b, b'\0' | b'\r' | b'\n'));
    if !quotable {
        let mut out = format!("{{{}}}\r\n", s.len()).into_bytes();
        out.extend_from_slice(s);
        return out;
    }
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'"');
    for &b in s {
        if matches!(b, b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
        self.bytes.get(start..self.pos).unwrap_or_default()
    }
}

fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Atoms (command names, numbers) end only at real delimiters; anything else is kept so
/// a sloppy client's argument still reaches the command's own checks.
fn is_atom_char(b: u8) -> bool {
    !is_ctl(b) && !matches!(b, b' ' | b'(' | b')' | b'{' | b'}' | b'"' | b'\\')
}

/// Tokens up to the end of the line piece or to a literal announcement. `need_sep` is
/// true when the previous token (a literal) must be followed by a space.
fn parse_tokens(mut line: Partial, mut cur: Cursor<'_>, mut need_sep: bool) -> Result<Step, CodecError> {
    loop {
        let Some(b) = cur.peek() else {
            return Ok(Step::Done(line.tokens));
        };
        match b {
            b' ' => {
                cur.take_while(|b| b == b' ');
                need_sep = false;
            }
            _ if is_ctl(b) => return Err(Malformed("control character in command")),
            _ if need_sep => return Err(Malformed("missing space between arguments")),
            b'"' => {
                line.tokens.push(Arg::Quoted(parse_quoted(&mut cur)?));
                need_sep = true;
            }
            b'{' => {
                let size = parse_literal_header(&mut cur)?;
                return Ok(Step::Literal { line, size });
            }
            _ => {
                let atom = cur.take_while(is_atom_char);
                if atom.is_empty() {
                    return Err(Malformed("unexpected character"));
                }
                line.tokens.push(Arg::Atom(utf8(atom)?));
                need_sep = true;
            }
        }
    }
}

/// A quoted string; its length is bounded by the line, not by RFC 5804's 1024 octets,
/// so a client that quotes a long OAuth token is still understood.
fn parse_quoted(cur: &mut Cursor<'_>) -> Result<String, CodecError> {
    cur.bump();
    let mut out = Vec::new();
    loop {
        match cur.bump() {
            None => return Err(Malformed("unterminated quoted string")),
            Some(b'"') => return utf8(&out),
            Some(b'\\') => match cur.bump() {
                Some(c @ (b'"' | b'\\')) => out.push(c),
                _ => return Err(Malformed("invalid escape in quoted string")),
            },
            Some(b'\0' | b'\r' | b'\n') => return Err(Malformed("invalid character in quoted string")),
            Some(c) => out.push(c),
        }
    }
}

/// `{n+}` or `{n}`, which must end the line piece.
fn parse_literal_header(cur: &mut Cursor<'_>) -> Result<u64, CodecError> {
    cur.bump();
    let digits = cur.take_while(|b| b.is_ascii_digit());
    if cur.peek() == Some(b'+') {
        cur.bump();
    }
    if digits.is_empty() || cur.bump() != Some(b'}') {
        return Err(Malformed("invalid literal size"));
    }
    if cur.peek().is_some() {
        return Err(Malformed("literal must end the line"));
    }
    // Saturating: an absurd size is still just "too large".
    Ok(digits.iter().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

fn utf8(bytes: &[u8]) -> Result<String, CodecError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::InvalidUtf8)
}

#[cfg(test)]
mod tests;
