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
        ImapError {
            tag: Some(self.tag.clone()),
            kind,
        }
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
        Ok(Command {
            tag: self.tag,
            name: self.name,
            args,
        })
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
        Self {
            lines: LineBuffer::new(max_line),
            max_literal,
            state: State::Idle,
        }
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
        let name = parse_name(&mut cur).map_err(|kind| ImapError {
            tag: Some(tag.clone()),
            kind,
        })?;
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
        let fits = usize::try_from(size)
            .ok()
            .and_then(|n| cmd.literal_left.checked_sub(n).map(|left| (n, left)));
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
    if !s
        .bytes()
        .all(|b| b.is_ascii() && !matches!(b, b'\0' | b'\r' | b'\n'))
    {
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

/// RFC 3501 ATOM-CHAR: printable 7-bit except atom-specials (resp-specials `]` excluded).
fn is_atom_char(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

/// RFC 3501 `tag = 1*<any ASTRING-CHAR except "+">`; ASTRING-CHAR adds `]` to ATOM-CHAR.
fn is_tag_char(b: u8) -> bool {
    (is_atom_char(b) || b == b']') && b != b'+'
}

/// Argument atoms are read leniently: list wildcards, `]` and UTF-8 (sent by sloppy
/// clients for non-ASCII logins) are accepted; only real delimiters end an atom.
fn is_arg_atom_char(b: u8) -> bool {
    !is_ctl(b) && !matches!(b, b' ' | b'(' | b')' | b'{' | b'"' | b'\\')
}

fn utf8(bytes: &[u8]) -> Result<String, CodecError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::InvalidUtf8)
}

fn parse_tag(cur: &mut Cursor<'_>) -> Result<String, CodecError> {
    let tag = cur.take_while(is_tag_char);
    match cur.peek() {
        _ if tag.is_empty() && cur.peek().is_none() => Err(Malformed("empty line")),
        _ if tag.is_empty() => Err(Malformed("missing tag")),
        None | Some(b' ') => utf8(tag),
        Some(_) => Err(Malformed("invalid character in tag")),
    }
}

fn tag_before_space(head: &[u8]) -> Option<String> {
    let mut cur = Cursor::new(head);
    let tag = parse_tag(&mut cur).ok()?;
    (cur.peek() == Some(b' ')).then_some(tag)
}

fn parse_name(cur: &mut Cursor<'_>) -> Result<String, CodecError> {
    if cur.bump() != Some(b' ') {
        return Err(Malformed("missing command name"));
    }
    let name = cur.take_while(is_atom_char);
    match cur.peek() {
        _ if name.is_empty() => Err(Malformed("missing command name")),
        None | Some(b' ') => Ok(utf8(name)?.to_ascii_uppercase()),
        Some(_) => Err(Malformed("invalid character in command name")),
    }
}

/// Parses arguments up to the end of the line piece or to a literal announcement.
/// `need_sep` is true when the previous token must be followed by a space or `)`.
fn parse_args(
    mut cmd: Partial,
    mut cur: Cursor<'_>,
    mut need_sep: bool,
) -> Result<Step, ImapError> {
    loop {
        let Some(b) = cur.peek() else {
            return cmd.finish().map(Step::Done);
        };
        match b {
            b' ' => {
                cur.take_while(|b| b == b' ');
                need_sep = false;
            }
            b')' => {
                cur.bump();
                cmd.close_list()?;
                need_sep = true;
            }
            _ if is_ctl(b) => return Err(cmd.fail(Malformed("control character in command"))),
            _ if need_sep => return Err(cmd.fail(Malformed("missing space between arguments"))),
            b'(' => {
                cur.bump();
                cmd.open_list()?;
            }
            b'{' => {
                return match parse_literal_header(&mut cur) {
                    Ok((size, sync)) => Ok(Step::Literal { cmd, size, sync }),
                    Err(kind) => Err(cmd.fail(kind)),
                };
            }
            _ => {
                let arg = parse_string_or_atom(&mut cur).map_err(|kind| cmd.fail(kind))?;
                cmd.push(arg);
                need_sep = true;
            }
        }
    }
}

fn parse_string_or_atom(cur: &mut Cursor<'_>) -> Result<Arg, CodecError> {
    if cur.peek() == Some(b'"') {
        return parse_quoted(cur).map(Arg::Quoted);
    }
    let atom = cur.take_while(is_arg_atom_char);
    if atom.is_empty() {
        return Err(Malformed("unexpected character"));
    }
    utf8(atom).map(Arg::Atom)
}

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
            Some(b'\0' | b'\r' | b'\n') => {
                return Err(Malformed("invalid character in quoted string"))
            }
            Some(c) => out.push(c),
        }
    }
}

/// `{n}` or `{n+}`, which must end the line piece. Returns the size and whether the
/// client waits for a continuation request (synchronizing).
fn parse_literal_header(cur: &mut Cursor<'_>) -> Result<(u64, bool), CodecError> {
    cur.bump();
    let digits = cur.take_while(|b| b.is_ascii_digit());
    let sync = cur.peek() != Some(b'+');
    if !sync {
        cur.bump();
    }
    if digits.is_empty() || cur.bump() != Some(b'}') {
        return Err(Malformed("invalid literal size"));
    }
    if cur.peek().is_some() {
        return Err(Malformed("literal must end the line"));
    }
    // Saturating: an absurd size is still just "too large", reported with the tag.
    let size = digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Ok((size, sync))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_LINE: usize = 64;
    const MAX_LITERAL: usize = 32;

    type Outcome = Result<Event, ImapError>;

    /// Feeds `script` in `chunk`-sized pieces, collecting everything the parser yields.
    fn feed(script: &[u8], chunk: usize) -> Vec<Outcome> {
        let mut p = ImapParser::new(MAX_LINE, MAX_LITERAL);
        let mut out = Vec::new();
        for piece in script.chunks(chunk) {
            p.push(piece);
            while let Some(outcome) = p.next_event().transpose() {
                out.push(outcome);
            }
        }
        out
    }

    fn cmd(tag: &str, name: &str, args: Vec<Arg>) -> Outcome {
        let (tag, name) = (tag.to_owned(), name.to_owned());
        Ok(Event::Command(Command { tag, name, args }))
    }

    fn cont(tag: &str) -> Outcome {
        Ok(Event::NeedContinuation {
            tag: tag.to_owned(),
        })
    }

    fn err(tag: &str, kind: CodecError) -> Outcome {
        Err(ImapError {
            tag: Some(tag.to_owned()),
            kind,
        })
    }

    fn too_big(size: u64) -> CodecError {
        CodecError::LiteralTooLarge {
            size,
            limit: MAX_LITERAL,
        }
    }

    fn q(s: &str) -> Arg {
        Arg::Quoted(s.to_owned())
    }

    fn lit(b: &[u8]) -> Arg {
        Arg::Literal(b.to_vec())
    }

    #[test]
    fn script_parses_identically_in_every_chunk_size() {
        let long = format!("t9 LOGIN {}\r\n", "x".repeat(80));
        let body = "y\r\n".repeat(10) + "0123456789";
        let script = [
            "a1 capability\r\n",
            "a2 ID (\"name\" \"x\" \"version\" \"1\")\r\n",
            "a3 LOGIN {5}\r\nalice \"pa\\\"ss\\\\\"\r\n",
            "a4 LOGIN {5+}\r\nbob@x {3}\r\npw1\r\n",
            "a5 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\n",
            "a6 ID NIL\r\n",
            "a7 ID (\"k\" {4+}\r\na\r\nb ()) \"\"\r\n",
            &long,
            "a8 LOGIN {33}\r\n",
            &format!("t10 LOGIN {{40+}}\r\n{body} rest\r\n"),
            "a9 NOOP\r\n",
        ]
        .concat();
        let id = vec![q("name"), q("x"), q("version"), q("1")];
        let nested = vec![q("k"), lit(b"a\r\nb"), Arg::List(vec![])];
        let plain = vec![
            Arg::Atom("PLAIN".into()),
            Arg::Atom("AGFsaWNlAHNlY3JldA==".into()),
        ];
        let expected = vec![
            cmd("a1", "CAPABILITY", vec![]),
            cmd("a2", "ID", vec![Arg::List(id)]),
            cont("a3"),
            cmd("a3", "LOGIN", vec![lit(b"alice"), q("pa\"ss\\")]),
            cont("a4"),
            cmd("a4", "LOGIN", vec![lit(b"bob@x"), lit(b"pw1")]),
            cmd("a5", "AUTHENTICATE", plain),
            cmd("a6", "ID", vec![Arg::Atom("NIL".into())]),
            cmd("a7", "ID", vec![Arg::List(nested), q("")]),
            err("t9", CodecError::LineTooLong { limit: MAX_LINE }),
            err("a8", too_big(33)),
            err("t10", too_big(40)),
            cmd("a9", "NOOP", vec![]),
        ];
        let script = script.as_bytes();
        assert_eq!(feed(script, script.len()), expected);
        for chunk in 1..=script.len() {
            assert_eq!(feed(script, chunk), expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn malformed_inputs_are_rejected_in_any_chunking_and_parsing_continues() {
        let nonsync = format!("a1 LOGIN {{99+}}\r\n{}z\r\n", "z\n".repeat(49));
        let deep = format!("a1 ID {}\r\n", "(".repeat(MAX_LIST_DEPTH + 1));
        let long = [&[b'x'; 100][..], b"\r\n"].concat();
        // (input, expected tag, expected error text)
        #[rustfmt::skip]
        let cases: &[(&[u8], Option<&str>, &str)] = &[
            (b"\r\n", None, "empty line"),
            (b" NOOP\r\n", None, "missing tag"),
            (b"a1\r\n", Some("a1"), "missing command name"),
            (b"a1 \r\n", Some("a1"), "missing command name"),
            (b"a{1 NOOP\r\n", None, "invalid character in tag"),
            (b"a+1 NOOP\r\n", None, "invalid character in tag"),
            (b"a\x001 NOOP\r\n", None, "invalid character in tag"),
            (b"a1 N\x80OP\r\n", Some("a1"), "invalid character in command name"),
            (b"a1 LOGIN \"alice pw\r\n", Some("a1"), "unterminated quoted string"),
            (b"a1 LOGIN \"al\\ice\" pw\r\n", Some("a1"), "invalid escape in quoted string"),
            (b"a1 LOGIN \"\xff\" pw\r\n", Some("a1"), "invalid UTF-8"),
            (b"a1 LOGIN {5x}\r\n", Some("a1"), "invalid literal size"),
            (b"a1 LOGIN {}\r\n", Some("a1"), "invalid literal size"),
            (b"a1 LOGIN {5} pw\r\n", Some("a1"), "literal must end the line"),
            (b"a1 LOGIN {99}\r\n", Some("a1"), "literal of 99 bytes exceeds 32 bytes"),
            (nonsync.as_bytes(), Some("a1"), "literal of 99 bytes exceeds 32 bytes"),
            (b"a1 X {99999999999999999999999}\r\n", Some("a1"),
                "literal of 18446744073709551615 bytes exceeds 32 bytes"),
            // Several literals share one budget.
            (b"a1 ID {20+}\r\n01234567890123456789 {20}\r\n", Some("a1"),
                "literal of 20 bytes exceeds 32 bytes"),
            (&long, None, "line exceeds 64 bytes"),
            (b"a1 LOGIN al\0ice pw\r\n", Some("a1"), "control character in command"),
            (b"a1 LOGIN alice\"pw\"\r\n", Some("a1"), "missing space between arguments"),
            (b"a1 LOGIN {5+}\r\nalice\"pw\"\r\n", Some("a1"), "missing space between arguments"),
            (b"a1 LOGIN \\alice\r\n", Some("a1"), "unexpected character"),
            (b"a1 ID (\"a\"\r\n", Some("a1"), "unterminated list"),
            (b"a1 ID \"a\")\r\n", Some("a1"), "unexpected ')'"),
            (deep.as_bytes(), Some("a1"), "lists nested too deeply"),
        ];
        for (input, tag, message) in cases {
            let script = [input, &b"z1 NOOP\r\n"[..]].concat();
            let shown = String::from_utf8_lossy(input);
            for chunk in 1..=script.len() {
                let out = feed(&script, chunk);
                let [Err(e), next] = out.as_slice() else {
                    panic!("input {shown:?}: expected one error then NOOP, got {out:?}");
                };
                let got = (e.tag.as_deref(), e.kind.to_string());
                assert_eq!(got, (*tag, message.to_string()), "input {shown:?}/{chunk}");
                assert_eq!(next, &cmd("z1", "NOOP", vec![]), "input {shown:?}/{chunk}");
            }
        }
    }

    #[test]
    fn synchronizing_literal_waits_for_its_bytes() {
        let mut p = ImapParser::new(MAX_LINE, MAX_LITERAL);
        p.push(b"a LOGIN {5}\r\n");
        assert_eq!(p.next_event().transpose(), Some(cont("a")));
        assert_eq!(p.next_event(), Ok(None));
        p.push(b"ali");
        assert_eq!(p.next_event(), Ok(None));
        p.push(b"ce pw\r\n");
        let expected = cmd("a", "LOGIN", vec![lit(b"alice"), Arg::Atom("pw".into())]);
        assert_eq!(p.next_event().transpose(), Some(expected));
    }

    #[test]
    fn raw_lines_and_remaining_bytes_are_available_between_commands() {
        let mut p = ImapParser::new(MAX_LINE, MAX_LITERAL);
        p.push(b"a AUTHENTICATE PLAIN\r\nAGEAYg==\r\nb STARTTLS\r\nleftover");
        let plain = cmd("a", "AUTHENTICATE", vec![Arg::Atom("PLAIN".into())]);
        assert_eq!(p.next_event().transpose(), Some(plain));
        assert_eq!(p.next_line(), Ok(Some(b"AGEAYg==".to_vec())));
        assert_eq!(
            p.next_event().transpose(),
            Some(cmd("b", "STARTTLS", vec![]))
        );
        assert_eq!(p.take_remaining(), b"leftover".to_vec());
        assert_eq!(p.next_event(), Ok(None));
    }

    #[test]
    fn arg_accessors() {
        assert!(Arg::Atom("nil".into()).is_nil());
        assert!(!q("NIL").is_nil());
        assert_eq!(Arg::Atom("nil".into()).as_str(), Some("nil"));
        assert_eq!(lit(b"\xff").as_bytes(), Some(&b"\xff"[..]));
        assert_eq!(lit(b"\xff").as_str(), None);
        assert_eq!(Arg::List(vec![]).as_bytes(), None);
    }

    #[test]
    fn quote_uses_quoted_strings_or_literals() {
        assert_eq!(quote("Switchyard"), "\"Switchyard\"");
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a\r\nb"), "{4}\r\na\r\nb");
        assert_eq!(quote("é"), "{2}\r\né");
    }

    #[test]
    fn bad_responses_carry_the_tag_or_a_star() {
        let bad = |tag: Option<&str>, kind| {
            ImapError {
                tag: tag.map(str::to_owned),
                kind,
            }
            .bad_response()
        };
        assert_eq!(
            bad(Some("a1"), Malformed("missing tag")),
            "a1 BAD missing tag\r\n"
        );
        assert_eq!(
            bad(None, CodecError::LineTooLong { limit: 8 }),
            "* BAD line exceeds 8 bytes\r\n"
        );
        let big = CodecError::LiteralTooLarge { size: 9, limit: 8 };
        assert_eq!(
            bad(Some("x"), big),
            "x BAD [TOOBIG] literal of 9 bytes exceeds 8 bytes\r\n"
        );
    }
}
