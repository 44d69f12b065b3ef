//! The input layout every target shares: a two-byte header the fuzzer controls, then the
//! bytes a peer would send.
//!
//! Byte 0 picks how reads split the stream (`chunk`, 1..=256 bytes per `push`; also a
//! separator for targets that need one), byte 1 carries flags that pick limits and which
//! calls a target makes. Seed files in `corpus/<target>/` start with these two bytes.

pub struct Script<'a> {
    /// Bytes per `push`: where the socket reads would have split the stream.
    pub chunk: usize,
    /// The raw first byte, for targets that use it as a separator instead.
    pub byte0: u8,
    pub flags: u8,
    pub body: &'a [u8],
}

impl<'a> Script<'a> {
    pub fn new(data: &'a [u8]) -> Script<'a> {
        let (head, body) = data.split_at(data.len().min(2));
        let byte0 = head.first().copied().unwrap_or(0);
        let flags = head.get(1).copied().unwrap_or(0);
        Script { chunk: usize::from(byte0) + 1, byte0, flags, body }
    }

    /// The body as successive reads of `chunk` bytes.
    pub fn reads(&self) -> std::slice::Chunks<'a, u8> {
        self.body.chunks(self.chunk)
    }

    pub fn flag(&self, bit: u8) -> bool {
        self.flags & (1 << bit) != 0
    }

    /// Two bits of the flags as a number, 0..=3.
    pub fn bits2(&self, shift: u8) -> usize {
        usize::from((self.flags >> shift) & 3)
    }
}

/// Counts parser calls so a parser that stops making progress fails loudly instead of
/// hanging the fuzzer until its timeout.
pub struct Budget(usize);

impl Budget {
    pub fn new() -> Budget {
        Budget(2)
    }

    /// Every pushed byte pays for one more call (each result consumes at least a byte),
    /// and every push for the final "need more data".
    pub fn fund(&mut self, pushed: usize) {
        self.0 += pushed + 2;
    }

    pub fn spend(&mut self) {
        self.0 = self.0.checked_sub(1).expect("parser keeps answering without consuming input");
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::new()
    }
}
