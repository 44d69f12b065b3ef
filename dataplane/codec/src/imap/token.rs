//! IMAP tokens on one line: tags, command names, atoms, quoted strings and literal
//! headers, read by a cursor that never looks past the line it was given.

use super::{Arg, Partial, Step};
use crate::imap::ImapError;
use crate::CodecError::{self, Malformed};

pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
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

pub(super) fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// RFC 3501 ATOM-CHAR: printable 7-bit except atom-specials (resp-specials `]` excluded).
pub(super) fn is_atom_char(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

/// RFC 3501 `tag = 1*<any ASTRING-CHAR except "+">`; ASTRING-CHAR adds `]` to ATOM-CHAR.
pub(super) fn is_tag_char(b: u8) -> bool {
    (is_atom_char(b) || b == b']') && b != b'+'
}

/// Argument atoms are read leniently: list wildcards, `]` and UTF-8 (sent by sloppy
/// clients for non-ASCII logins) are accepted; only real delimiters end an atom.
pub(super) fn is_arg_atom_char(b: u8) -> bool {
    !is_ctl(b) && !matches!(b, b' ' | b'(' | b')' | b'{' | b'"' | b'\\')
}

pub(super) fn utf8(bytes: &[u8]) -> Result<String, CodecError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::InvalidUtf8)
}

pub(super) fn parse_tag(cur: &mut Cursor<'_>) -> Result<String, CodecError> {
    let tag = cur.take_while(is_tag_char);
    match cur.peek() {
        _ if tag.is_empty() && cur.peek().is_none() => Err(Malformed("empty line")),
        _ if tag.is_empty() => Err(Malformed("missing tag")),
        None | Some(b' ') => utf8(tag),
        Some(_) => Err(Malformed("invalid character in tag")),
    }
}

pub(super) fn tag_before_space(head: &[u8]) -> Option<String> {
    let mut cur = Cursor::new(head);
    let tag = parse_tag(&mut cur).ok()?;
    (cur.peek() == Some(b' ')).then_some(tag)
}

pub(super) fn parse_name(cur: &mut Cursor<'_>) -> Result<String, CodecError> {
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
pub(super) fn parse_args(mut cmd: Partial, mut cur: Cursor<'_>, mut need_sep: bool) -> Result<Step, ImapError> {
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

pub(super) fn parse_string_or_atom(cur: &mut Cursor<'_>) -> Result<Arg, CodecError> {
    if cur.peek() == Some(b'"') {
        return parse_quoted(cur).map(Arg::Quoted);
    }
    let atom = cur.take_while(is_arg_atom_char);
    if atom.is_empty() {
        return Err(Malformed("unexpected character"));
    }
    utf8(atom).map(Arg::Atom)
}

pub(super) fn parse_quoted(cur: &mut Cursor<'_>) -> Result<String, CodecError> {
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

/// `{n}` or `{n+}`, which must end the line piece. Returns the size and whether the
/// client waits for a continuation request (synchronizing).
pub(super) fn parse_literal_header(cur: &mut Cursor<'_>) -> Result<(u64, bool), CodecError> {
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
    let size = digits.iter().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')));
    Ok((size, sync))
}
