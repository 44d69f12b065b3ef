//! SMTP and LMTP without I/O (RFC 5321, 2033, 4954): client command lines with their
//! envelope paths, the server's (multi-line) replies, EHLO keywords and the DATA stream.
//!
//! The proxy speaks SMTP on both legs, so the same types serve the client side (commands
//! in, replies out) and the backend side (commands out, replies in).

mod data;
mod reply;

pub use data::DataRelay;
pub use reply::{format_reply, Extensions, Reply, ReplyBuilder, ReplyParser};

use super::line::LineBuffer;
use super::CodecError;

/// Which greeting command a client used; LMTP has its own (`LHLO`) so that an SMTP client
/// talking to an LMTP port by mistake fails early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    Ehlo,
    Helo,
    Lhlo,
}

/// An envelope path (`<...>` in MAIL and RCPT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Between the brackets, exactly as sent (source route included), for replay.
    pub raw: String,
    /// The mailbox `local@domain` without source route, quotes only where the local part
    /// needs them; empty for the null reverse-path `<>`.
    pub mailbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Hello {
        verb: Hello,
        domain: String,
    },
    Mail {
        from: Path,
        params: String,
    },
    Rcpt {
        to: Path,
        params: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    StartTls,
    Vrfy,
    Help,
    /// `AUTH mechanism [initial-response]`; the response stays base64 (`=` means empty).
    Auth {
        mechanism: String,
        initial: Option<Vec<u8>>,
    },
    /// A verb this proxy does not implement (uppercased), BDAT included.
    Unknown(String),
}

impl Command {
    /// The command line to replay to a backend (without CRLF); `None` for commands the
    /// proxy never forwards.
    pub fn replay(&self) -> Option<String> {
        match self {
            Command::Mail { from, params } => Some(with_params(format!("MAIL FROM:<{}>", from.raw), params)),
            Command::Rcpt { to, params } => Some(with_params(format!("RCPT TO:<{}>", to.raw), params)),
            _ => None,
        }
    }
}

fn with_params(mut line: String, params: &str) -> String {
    if !params.is_empty() {
        line.push(' ');
        line.push_str(params);
    }
    line
}

/// Parses one command line (without CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CodecError> {
    let line = std::str::from_utf8(line).map_err(|_| CodecError::InvalidUtf8)?;
    if line.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(CodecError::Malformed("control characters in command"));
    }
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let verb = verb.to_ascii_uppercase();
    let rest = rest.trim();
    let bare = |command: Command| {
        if rest.is_empty() {
            Ok(command)
        } else {
            Err(CodecError::Malformed("unexpected argument"))
        }
    };
    match verb.as_str() {
        "" => Err(CodecError::Malformed("empty command")),
        "EHLO" => hello(Hello::Ehlo, rest),
        "HELO" => hello(Hello::Helo, rest),
        "LHLO" => hello(Hello::Lhlo, rest),
        "MAIL" => {
            let (from, params) = path_argument(rest, "FROM:", true)?;
            Ok(Command::Mail { from, params })
        }
        "RCPT" => {
            let (to, params) = path_argument(rest, "TO:", false)?;
            Ok(Command::Rcpt { to, params })
        }
        "DATA" => bare(Command::Data),
        "RSET" => bare(Command::Rset),
        "QUIT" => bare(Command::Quit),
        "STARTTLS" => bare(Command::StartTls),
        // NOOP, VRFY and HELP may carry a string the proxy ignores.
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "AUTH" => auth(rest),
        _ => Ok(Command::Unknown(verb)),
    }
}

fn hello(verb: Hello, rest: &str) -> Result<Command, CodecError> {
    match rest.split_whitespace().next() {
        Some(domain) => Ok(Command::Hello { verb, domain: domain.to_owned() }),
        None => Err(CodecError::Malformed("a domain or address literal is required")),
    }
}

fn auth(rest: &str) -> Result<Command, CodecError> {
    let mut args = rest.split_whitespace();
    let mechanism = args.next().ok_or(CodecError::Malformed("AUTH needs a mechanism"))?.to_owned();
    let initial = args.next().map(|a| a.as_bytes().to_vec());
    if args.next().is_some() {
        return Err(CodecError::Malformed("AUTH takes a mechanism and one initial response"));
    }
    Ok(Command::Auth { mechanism, initial })
}

/// `FROM:<path> params` / `TO:<path> params`. A space after the colon is tolerated since
/// common clients send it.
fn path_argument(rest: &str, keyword: &str, reverse: bool) -> Result<(Path, String), CodecError> {
    let head = rest.get(..keyword.len()).filter(|h| h.eq_ignore_ascii_case(keyword));
    let Some(after) = head.map(|h| rest[h.len()..].trim_start()) else {
        return Err(CodecError::Malformed(if reverse { "expected FROM:<address>" } else { "expected TO:<address>" }));
    };
    let inner = after.strip_prefix('<').ok_or(CodecError::Malformed("the address must be in angle brackets"))?;
    let close = closing_bracket(inner)?;
    let (raw, params) = (&inner[..close], inner[close + 1..].trim());
    if !params.is_empty() && !after[close + 2..].starts_with(' ') {
        return Err(CodecError::Malformed("parameters must follow the address after a space"));
    }
    check_params(params)?;
    let mailbox = mailbox(raw, reverse)?;
    Ok((Path { raw: raw.to_owned(), mailbox }, params.to_owned()))
}

/// The index of the `>` closing a path, skipping quoted strings in the local part.
fn closing_bracket(inner: &str) -> Result<usize, CodecError> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => quoted = !quoted,
            (false, _, '>') => return Ok(i),
            (false, _, '<' | ' ') => return Err(CodecError::Malformed("invalid character in address")),
            _ => {}
        }
    }
    Err(CodecError::Malformed("unterminated address"))
}

/// `keyword[=value]` separated by spaces (RFC 5321 esmtp-param).
fn check_params(params: &str) -> Result<(), CodecError> {
    for param in params.split(' ').filter(|p| !p.is_empty()) {
        let keyword = param.split_once('=').map_or(param, |(k, _)| k);
        let valid = keyword.starts_with(|c: char| c.is_ascii_alphanumeric())
            && keyword.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(CodecError::Malformed("invalid parameter"));
        }
    }
    Ok(())
}

/// The mailbox of a path: source route dropped, a quoted local part unquoted when it is a
/// plain dot-atom anyway (`"alice"@x` and `alice@x` are one mailbox).
fn mailbox(raw: &str, reverse: bool) -> Result<String, CodecError> {
    if raw.is_empty() {
        return if reverse { Ok(String::new()) } else { Err(CodecError::Malformed("empty recipient")) };
    }
    let without_route = match raw.strip_prefix('@') {
        Some(_) => raw.split_once(':').ok_or(CodecError::Malformed("invalid source route"))?.1,
        None => raw,
    };
    // RFC 5321 §4.5.1: `<Postmaster>` needs no domain.
    if !reverse && without_route.eq_ignore_ascii_case("postmaster") {
        return Ok(without_route.to_owned());
    }
    let at = without_route.rfind('@').ok_or(CodecError::Malformed("the address needs a domain"))?;
    let (local, domain) = (&without_route[..at], &without_route[at + 1..]);
    if !is_domain(domain) {
        return Err(CodecError::Malformed("invalid domain"));
    }
    let local = match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(quoted) => unquote(quoted)?,
        None if is_dot_atom(local) => local.to_owned(),
        None => return Err(CodecError::Malformed("invalid local part")),
    };
    Ok(format!("{local}@{domain}"))
}

/// The content of a quoted local part; re-quoted when it is not a dot-atom.
fn unquote(quoted: &str) -> Result<String, CodecError> {
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or(CodecError::Malformed("invalid quoted local part"))?),
            '"' => return Err(CodecError::Malformed("invalid quoted local part")),
            c => out.push(c),
        }
    }
    if is_dot_atom(&out) {
        return Ok(out);
    }
    let escaped: String =
        out.chars().flat_map(|c| matches!(c, '"' | '\\').then_some('\\').into_iter().chain([c])).collect();
    Ok(format!("\"{escaped}\""))
}

/// A host name (UTF-8 labels allowed for SMTPUTF8) or an address literal `[...]`.
fn is_domain(s: &str) -> bool {
    if let Some(literal) = s.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
        return !literal.is_empty() && literal.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '[' | ']' | '\\'));
    }
    !s.is_empty()
        && s.split('.').all(|label| !label.is_empty() && label.chars().all(|c| c.is_alphanumeric() || c == '-'))
}

fn is_dot_atom(s: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    !s.is_empty()
        && s.split('.').all(|atom| {
            !atom.is_empty() && atom.chars().all(|c| c.is_alphanumeric() || SPECIALS.contains(c) || !c.is_ascii())
        })
}

/// The reply to a command line that did not parse (RFC 5321 §4.2.2 codes). The error text
/// never echoes the input.
pub fn syntax_reply(e: &CodecError) -> Vec<u8> {
    match e {
        CodecError::LineTooLong { .. } => b"500 5.5.2 Line too long\r\n".to_vec(),
        CodecError::Malformed("empty command") => b"500 5.5.2 Error: bad syntax\r\n".to_vec(),
        e => format!("501 5.5.4 Syntax error: {e}\r\n").into_bytes(),
    }
}

/// Command lines from a client: a bounded line buffer plus [`parse_command`].
#[derive(Debug)]
pub struct CommandParser {
    lines: LineBuffer,
}

impl CommandParser {
    pub fn new(max_line: usize) -> Self {
        Self { lines: LineBuffer::new(max_line) }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.lines.push(bytes);
    }

    /// The next command; `Ok(None)` when more input is needed. After an error the next
    /// call continues with the following line.
    pub fn next_command(&mut self) -> Result<Option<Command>, CodecError> {
        match self.lines.next_line()? {
            Some(line) => parse_command(&line).map(Some),
            None => Ok(None),
        }
    }

    /// A raw line (a SASL response during AUTH).
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        self.lines.next_line()
    }

    /// Everything buffered and not yet parsed: what a pipelining client sent past the
    /// current command (message data, or commands for the backend after AUTH).
    pub fn take_remaining(&mut self) -> Vec<u8> {
        self.lines.take_remaining()
    }
}

#[cfg(test)]
mod tests;
