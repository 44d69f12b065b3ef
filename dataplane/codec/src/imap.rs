//! IMAP command parsing for the proxy's pre-auth phase (RFC 3501/9051 tags, atoms, quoted
//! strings, lists and RFC 7888 literals), plus the small quoting helper responses need.

use super::line::LineBuffer;
use super::CodecError::{self, Malformed};

/// Pre-auth commands never need deep nesting; the bound keeps a hostile `((((…` cheap.
const MAX_LIST_DEPTH: usize = 8;

/// One command argument. `NIL` stays an [`Arg::Atom`] (see [`Arg::is_nil`]) because in an
/// astring position such as `LOGIN nil pw` it is an ordinary user name whose spelling
/// must be replayed unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Atom(String),
    Quoted(String),
    Literal(Vec<u8>),
    List(Vec<Arg>),
}

impl Arg {
    /// The argument read as an astring/string: `None` for a list.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Arg::Atom(s) | Arg::Quoted(s) => Some(s.as_bytes()),
            Arg::Literal(b) => Some(b),
            Arg::List(_) => None,
        }
    }

    /// Like [`Arg::as_bytes`], but `None` also for a literal that is not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// True for the atom `NIL` (any case), which means "no value" where an nstring is expected.
    pub fn is_nil(&self) -> bool {
        matches!(self, Arg::Atom(a) if a.eq_ignore_ascii_case("NIL"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub tag: String,
    /// Upper-cased command name.
    pub name: String,
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Command(Command),
    /// A synchronizing literal `{n}` was announced and accepted: the session must send
    /// `+ Ready for literal data\r\n` before the client sends its bytes.
    NeedContinuation {
        tag: String,
    },
}

/// A rejected command. `tag` is `None` when the line had no readable tag, in which case
/// the answer is `* BAD` instead of `TAG BAD`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ImapError {
    pub tag: Option<String>,
    pub kind: CodecError,
}

impl ImapError {
    /// The `BAD` response line for this error, CRLF included.
    pub fn bad_response(&self) -> String {
        let tag = self.tag.as_deref().unwrap_or("*");
        // RFC 7888: an oversize literal is rejected with the TOOBIG response code.
        let code = match self.kind {
            CodecError::LiteralTooLarge { .. } => "[TOOBIG] ",
            _ => "",
        };
        format!("{tag} BAD {code}{}\r\n", self.kind)
    }
}

/// A command whose line was interrupted by a literal.
#[derive(Debug)]
struct Partial {
    tag: String,
    name: String,
    /// Open argument lists; the first is the command's own argument list.
    stack: Vec<Vec<Arg>>,
    /// Line bytes this command may still use across its continuation lines.
    line_left: usize,
    /// Literal bytes this command may still use, so many small literals stay bounded too.
    literal_left: usize,
}

impl Partial {
    fn fail(&self, kind: CodecError) -> ImapError {
        ImapError { tag: Some(self.tag.clone()), kind }
    }

    fn push(&mut self, arg: Arg) {
        if let Some(top) = self.stack.last_mut() {
            top.push(arg);
        }
    }

    fn open_list(&mut self) -> Result<(), ImapError> {
        if self.stack.len() > MAX_LIST_DEPTH {
            return Err(self.fail(Malformed("lists nested too deeply")));
        }
        self.stack.push(Vec::new());
        Ok(())
    }

    fn close_list(&mut self) -> Result<(), ImapError> {
        if self.stack.len() < 2 {
            return Err(self.fail(Malformed("unexpected ')'")));
        }
        let list = self.stack.pop().unwrap_or_default();
        self.push(Arg::List(list));
        Ok(())
    }

    fn finish(mut self) -> Result<Command, ImapError> {
        if self.stack.len() != 1 {
            return Err(self.fail(Malformed("unterminated list")));
        }
        let args = self.stack.pop().unwrap_or_default();
        Ok(Command { tag: self.tag, name: self.name, args })
    }
}

#[derive(Debug)]
enum State {
    Idle,
    /// Waiting for the bytes of an accepted literal.
    Literal {
        cmd: Partial,
        size: usize,
    },
    /// Literal bytes received; waiting for the rest of the command line.
    Rest(Partial),
}

/// What parsing one line piece produced.
enum Step {
    Done(Command),
    Literal { cmd: Partial, size: u64, sync: bool },
}

/// Incremental IMAP command parser: `push` bytes, then call `next_event` until `Ok(None)`.
#[derive(Debug)]
pub struct ImapParser {
    lines: LineBuffer,
    max_literal: usize,
    state: State,
}

impl ImapParser {
    pub fn new(max_line: usize, max_literal: usize) -> Self {
        Self { lines: LineBuffer::new(max_line), max_literal, state: State::Idle }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.lines.push(bytes);
    }

    /// The next command or continuation request; `Ok(None)` means more data is needed.
    /// After an error the offending command is fully consumed, so the next call parses
    /// the following command.
    pub fn next_event(&mut self) -> Result<Option<Event>, ImapError> {
        loop {
            let step = match std::mem::replace(&mut self.state, State::Idle) {
                State::Idle => self.start_command()?,
                State::Literal { mut cmd, size } => {
                    let Some(body) = self.lines.take_exact(size) else {
                        self.state = State::Literal { cmd, size };
                        return Ok(None);
                    };
                    cmd.push(Arg::Literal(body));
                    self.continue_command(cmd)?
                }
                State::Rest(cmd) => self.continue_command(cmd)?,
            };
            match step {
                None => return Ok(None),
                Some(Step::Done(command)) => return Ok(Some(Event::Command(command))),
                Some(Step::Literal { cmd, size, sync }) => {
                    let tag = cmd.tag.clone();
                    self.accept_literal(cmd, size, sync)?;
                    if sync {
                        return Ok(Some(Event::NeedContinuation { tag }));
                    }
                }
            }
        }
    }

    /// A raw line, for exchanges that are not commands (AUTHENTICATE continuation
    /// responses). Only meaningful between commands.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        self.lines.next_line()
    }

    /// Buffered bytes not yet parsed; any half-parsed command is dropped.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        self.state = State::Idle;
        self.lines.take_remaining()
    }

    fn start_command(&mut self) -> Result<Option<Step>, ImapError> {
        let line = match self.lines.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(None),
            Err(kind) => {
                let tag = tag_before_space(self.lines.overflow_head());
                return Err(ImapError { tag, kind });
            }
        };
        let mut cur = Cursor::new(&line);
        let tag = parse_tag(&mut cur).map_err(|kind| ImapError { tag: None, kind })?;
        let name = parse_name(&mut cur).map_err(|kind| ImapError { tag: Some(tag.clone()), kind })?;
        let cmd = Partial {
            tag,
            name,
            stack: vec![Vec::new()],
            line_left: self.lines.max_line().saturating_sub(line.len()),
            literal_left: self.max_literal,
        };
        parse_args(cmd, cur, true).map(Some)
    }

    fn continue_command(&mut self, mut cmd: Partial) -> Result<Option<Step>, ImapError> {
        let line = match self.lines.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => {
                self.state = State::Rest(cmd);
                return Ok(None);
            }
            Err(kind) => return Err(cmd.fail(kind)),
        };
        let Some(left) = cmd.line_left.checked_sub(line.len()) else {
            let limit = self.lines.max_line();
            return Err(cmd.fail(CodecError::LineTooLong { limit }));
        };
        cmd.line_left = left;
        parse_args(cmd, Cursor::new(&line), true).map(Some)
    }

    fn accept_literal(&mut self, mut cmd: Partial, size: u64, sync: bool) -> Result<(), ImapError> {
        let fits = usize::try_from(size).ok().and_then(|n| cmd.literal_left.checked_sub(n).map(|left| (n, left)));
        let Some((n, left)) = fits else {
            if !sync {
                // The client sends a non-synchronizing literal without waiting, so its
                // bytes are on the way: drop them rather than read them as commands.
                self.lines.discard_line_after(size);
            }
            let limit = self.max_literal;
            return Err(cmd.fail(CodecError::LiteralTooLarge { size, limit }));
        };
        cmd.literal_left = left;
        self.state = State::Literal { cmd, size: n };
        Ok(())
    }
}

/// Quotes `s` for a response: a quoted string when it is plain 7-bit text, otherwise a
/// literal, since quoted strings cannot carry CR, LF, NUL or (without UTF8=ACCEPT) 8-bit data.
pub fn quote(s: &str) -> String {
    if !s.bytes().all(|b| b.is_ascii() && !matches!(b, b'\0' | b'\r' | b'\n')) {
        return format!("{{{}}}\r\n{s}", s.len());
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

mod token;

use token::{parse_args, parse_name, parse_tag, tag_before_space, Cursor};

#[cfg(test)]
mod tests;
