//! Bounded CRLF line reader: buffers received bytes and hands out complete lines and
//! exact-size bodies, refusing to hold more than one line's limit while waiting for a line end.

use super::CodecError;

/// `lines` as they go on the wire: each one ended by CRLF.
pub fn join_crlf(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 2).sum());
    for line in lines {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// How many leading bytes of an over-long line are kept, enough for an IMAP tag so the
/// error can still be answered as `TAG BAD`.
const OVERFLOW_HEAD: usize = 64;

/// Received bytes not yet handed out.
///
/// Callers push what they read and then drain with [`LineBuffer::next_line`] /
/// [`LineBuffer::take_exact`] until those answer `None`; the buffer then holds at most
/// one partial line (bounded by `max_line`) or one partial body plus one read.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    max_line: usize,
    /// Prefix of `buf` known to hold no LF, so input trickled byte by byte is not rescanned.
    scanned: usize,
    /// Bytes still to drop before anything else: the body of a rejected literal.
    skip: u64,
    /// Drop everything through the next LF: the rest of a rejected line.
    discard_line: bool,
    overflow_head: Vec<u8>,
}

impl LineBuffer {
    pub fn new(max_line: usize) -> Self {
        Self { buf: Vec::new(), max_line, scanned: 0, skip: 0, discard_line: false, overflow_head: Vec::new() }
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Appends received data.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        // Dropping here, not only on the next read, keeps a rejected body out of memory.
        self.settle();
    }

    /// The next complete line without its CRLF (a bare LF also ends a line).
    ///
    /// `Ok(None)` means more data is needed. `Err(LineTooLong)` is returned as soon as the
    /// pending data exceeds the limit; the rest of that line is then dropped as it
    /// arrives, so the following call continues with the next line.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        self.settle();
        if self.is_discarding() {
            return Ok(None);
        }
        let Some(lf) = self.find_lf() else {
            return self.check_pending();
        };
        let mut line: Vec<u8> = self.buf.drain(..=lf).collect();
        self.scanned = 0;
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > self.max_line {
            self.keep_head(&line);
            return Err(CodecError::LineTooLong { limit: self.max_line });
        }
        Ok(Some(line))
    }

    /// Exactly `n` bytes (a literal body), or `None` until that many are buffered.
    pub fn take_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        self.settle();
        if self.is_discarding() || self.buf.len() < n {
            return None;
        }
        let body: Vec<u8> = self.buf.drain(..n).collect();
        self.scanned = self.scanned.saturating_sub(n);
        Some(body)
    }

    /// Drops the next `skip` bytes and then everything through the next line end, even
    /// if they have not arrived yet. Used when a command is rejected mid-way so its
    /// remaining bytes are never read as a new command.
    pub fn discard_line_after(&mut self, skip: u64) {
        self.skip = self.skip.saturating_add(skip);
        self.discard_line = true;
        self.settle();
    }

    /// Returns and clears every buffered byte not yet handed out, and forgets any
    /// pending discard. Used when the session switches to bridging (the bytes belong to
    /// the backend) or upgrades to TLS (the bytes must be thrown away).
    pub fn take_remaining(&mut self) -> Vec<u8> {
        self.settle();
        self.scanned = 0;
        self.skip = 0;
        self.discard_line = false;
        std::mem::take(&mut self.buf)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The first bytes of the most recent over-long line, so a caller can still recover
    /// something like an IMAP tag from a line it never received whole.
    pub fn overflow_head(&self) -> &[u8] {
        &self.overflow_head
    }

    fn is_discarding(&self) -> bool {
        self.skip > 0 || self.discard_line
    }

    /// Applies a pending skip and line discard to what is buffered.
    fn settle(&mut self) {
        if self.skip > 0 {
            let n = usize::try_from(self.skip).map_or(self.buf.len(), |s| s.min(self.buf.len()));
            self.buf.drain(..n);
            self.skip -= n as u64;
            self.scanned = 0;
            if self.skip > 0 {
                return;
            }
        }
        if self.discard_line {
            match self.find_lf() {
                Some(lf) => {
                    self.buf.drain(..=lf);
                    self.discard_line = false;
                }
                None => self.buf.clear(),
            }
            self.scanned = 0;
        }
    }

    fn find_lf(&mut self) -> Option<usize> {
        let from = self.scanned.min(self.buf.len());
        let found = self.buf.get(from..).and_then(|rest| rest.iter().position(|&b| b == b'\n'));
        match found {
            Some(i) => Some(from + i),
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    /// No line end yet: fail once the partial line cannot fit any more. A trailing CR
    /// does not count since it may be the first half of the CRLF.
    fn check_pending(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        let pending = self.buf.len() - usize::from(self.buf.last() == Some(&b'\r'));
        if pending <= self.max_line {
            return Ok(None);
        }
        let buf = std::mem::take(&mut self.buf);
        self.keep_head(&buf);
        self.scanned = 0;
        self.discard_line = true;
        Err(CodecError::LineTooLong { limit: self.max_line })
    }

    fn keep_head(&mut self, line: &[u8]) {
        self.overflow_head.clear();
        let end = line.len().min(OVERFLOW_HEAD);
        self.overflow_head.extend_from_slice(line.get(..end).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests;
