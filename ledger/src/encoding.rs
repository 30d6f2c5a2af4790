//! The canonical byte encoding used for everything the ledger hashes or
//! signs. It is deliberately simple so that a partner can re-implement it:
//!
//! * a message starts with an ASCII domain tag (e.g. `vaxgate-tx-v1`) written
//!   as a field;
//! * a *field* is a 4-byte big-endian length followed by that many bytes;
//! * integers are written as fields of exactly 8 bytes, big-endian two's
//!   complement (`u64`/`i64`);
//! * strings are UTF-8 fields; digests are 32-byte fields; lists are an
//!   integer count followed by their elements.
//!
//! See `docs/ledger.md` for every message layout.

/// Builds a canonical byte string.
#[derive(Debug, Default, Clone)]
pub struct Canon(Vec<u8>);

impl Canon {
    /// Starts a message with its domain tag.
    pub fn new(tag: &str) -> Self {
        let mut c = Canon(Vec::with_capacity(256));
        c.bytes(tag.as_bytes());
        c
    }
    /// A length-prefixed byte field.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    /// A UTF-8 string field.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    /// An unsigned integer field (8 bytes).
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }
    /// A signed integer field (8 bytes).
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }
    /// The finished bytes.
    pub fn finish(&self) -> Vec<u8> {
        self.0.clone()
    }
    /// The finished bytes, consuming the builder.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Reads what [`Canon`] wrote. Every read is bounds-checked and returns
/// `None` on malformed input.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    /// The next field.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        if self.buf.len() < 4 {
            return None;
        }
        let (l, rest) = self.buf.split_at(4);
        let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
        if rest.len() < len {
            return None;
        }
        let (f, rest) = rest.split_at(len);
        self.buf = rest;
        Some(f)
    }
    /// The next field as UTF-8.
    pub fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
    /// The next 8-byte unsigned integer.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes()?.try_into().ok()?))
    }
    /// The next 8-byte signed integer.
    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.bytes()?.try_into().ok()?))
    }
    /// Expects the domain tag.
    pub fn tag(&mut self, tag: &str) -> Option<()> {
        (self.bytes()? == tag.as_bytes()).then_some(())
    }
    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_length_prefixed() {
        let mut c = Canon::new("t");
        c.str("ab").u64(1);
        assert_eq!(
            c.finish(),
            vec![
                0, 0, 0, 1, b't', 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1
            ]
        );
    }

    proptest! {
        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&data);
            while r.bytes().is_some() {}
            let mut r = Reader::new(&data);
            let _ = r.u64();
            let _ = r.str();
        }
    }
}
