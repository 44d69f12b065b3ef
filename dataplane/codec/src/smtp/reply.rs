//! SMTP replies: `250-first` … `250 last` assembled into one [`Reply`], the EHLO keywords
//! in it, and replies the proxy writes itself.

use crate::line::LineBuffer;
use crate::CodecError;

/// A reply with more lines than this is refused: no real server sends that many, and the
/// proxy holds a whole reply in memory before relaying it.
const MAX_REPLY_LINES: usize = 256;

/// One complete reply; `lines` are as received (code included, CRLF stripped) so they can
/// be relayed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<Vec<u8>>,
}

impl Reply {
    /// 2yz: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The reply as it goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::line::join_crlf(&self.lines)
    }

    /// The first line, shortened and printable, for error messages.
    pub fn excerpt(&self) -> String {
        let first = self.lines.first().map(Vec::as_slice).unwrap_or_default();
        String::from_utf8_lossy(&first[..first.len().min(80)]).into_owned()
    }

    /// The text after `250-`/`250 ` on each line.
    pub fn texts(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.iter().map(|l| l.get(4..).unwrap_or_default())
    }
}

/// Collects the lines of one reply; fed line by line (from a socket or a buffer).
#[derive(Debug, Default)]
pub struct ReplyBuilder {
    code: Option<u16>,
    lines: Vec<Vec<u8>>,
}

impl ReplyBuilder {
    /// Adds one line; returns the reply once its last line (`250 ` or bare `250`) arrived.
    pub fn push_line(&mut self, line: Vec<u8>) -> Result<Option<Reply>, CodecError> {
        let (code, last) = reply_line(&line)?;
        if self.code.is_some_and(|c| c != code) {
            return Err(CodecError::Malformed("reply lines with different codes"));
        }
        if self.lines.len() >= MAX_REPLY_LINES {
            return Err(CodecError::Malformed("reply has too many lines"));
        }
        self.code = Some(code);
        self.lines.push(line);
        if !last {
            return Ok(None);
        }
        self.code = None;
        Ok(Some(Reply { code, lines: std::mem::take(&mut self.lines) }))
    }
}

/// The code of a reply line and whether it is the reply's last line.
fn reply_line(line: &[u8]) -> Result<(u16, bool), CodecError> {
    let malformed = CodecError::Malformed("malformed reply line");
    let digits = line.get(..3).ok_or(malformed.clone())?;
    let valid = (b'2'..=b'5').contains(&digits[0]) && (b'0'..=b'5').contains(&digits[1]) && digits[2].is_ascii_digit();
    if !valid {
        return Err(malformed);
    }
    let code = digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None | Some(b' ') => Ok((code, true)),
        Some(b'-') => Ok((code, false)),
        Some(_) => Err(malformed),
    }
}

/// Replies from a byte stream (a backend read in arbitrary chunks).
#[derive(Debug)]
pub struct ReplyParser {
    lines: LineBuffer,
    builder: ReplyBuilder,
}

impl ReplyParser {
    pub fn new(max_line: usize) -> Self {
        Self { lines: LineBuffer::new(max_line), builder: ReplyBuilder::default() }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.lines.push(bytes);
    }

    /// The next complete reply, or `Ok(None)` until enough bytes arrived.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, CodecError> {
        while let Some(line) = self.lines.next_line()? {
            if let Some(reply) = self.builder.push_line(line)? {
                return Ok(Some(reply));
            }
        }
        Ok(None)
    }
    /// Whether nothing past the last complete reply was received (no byte, no line of a
    /// reply begun): what a server sent after its go-ahead to STARTTLS was not protected.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.builder.lines.is_empty()
    }
}

/// What a server's EHLO/LHLO reply offers, as far as the proxy cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// SASL mechanisms from `AUTH ...` (uppercased); empty when AUTH is not offered.
    pub auth: Vec<String>,
    pub starttls: bool,
    /// Postfix's XCLIENT, for forwarding the client's identity.
    pub xclient: bool,
}

impl Extensions {
    /// Reads the keywords from the lines after the first (which is the server's name).
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut ext = Extensions::default();
        for text in reply.texts().skip(1) {
            let text = String::from_utf8_lossy(text).to_ascii_uppercase();
            let mut words = text.split_whitespace();
            match words.next() {
                Some("AUTH") => ext.auth.extend(words.map(str::to_owned)),
                Some("STARTTLS") => ext.starttls = true,
                Some("XCLIENT") => ext.xclient = true,
                _ => {}
            }
        }
        ext
    }
}

/// A reply written by the proxy: `lines` joined as `code-…` lines and a final `code …`.
pub fn format_reply(code: u16, lines: &[&str]) -> Vec<u8> {
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{line}\r\n"));
    }
    out.into_bytes()
}
