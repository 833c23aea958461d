//! Primitive encoders and decoders shared by every message body.
//!
//! All integers are big-endian. A `str` is a `u16` byte length followed by UTF-8; a `bytes`
//! is a `u32` length followed by the bytes as they are; a list is a `u32` count followed by
//! its items. Decoding never panics: every read checks the remaining length first and names
//! the field that was short or wrong.

use bytes::{BufMut, Bytes};

/// Why a body (or a frame header) could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body ended before a field was complete.
    #[error("truncated body: field `{0}` is incomplete")]
    Truncated(&'static str),
    /// A `str` field held bytes that are not UTF-8.
    #[error("field `{0}` is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A list declared more items than the protocol allows.
    #[error("field `{what}` has {count} entries; at most {max} are allowed")]
    TooMany {
        /// The list's field name.
        what: &'static str,
        /// The count it declared.
        count: u64,
        /// The protocol's limit.
        max: u64,
    },
    /// A tag or enum value that this version does not know.
    #[error("field `{what}` has unknown value {value}")]
    UnknownValue {
        /// The field name.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// Bytes were left over after the last field.
    #[error("{0} unexpected bytes after the end of the body")]
    TrailingBytes(usize),
}

/// Appends primitives to a frame body.
pub(crate) trait WireWrite {
    fn put_str(&mut self, s: &str);
    fn put_blob(&mut self, b: &[u8]);
    fn put_bool(&mut self, b: bool);
}

impl<B: BufMut> WireWrite for B {
    fn put_str(&mut self, s: &str) {
        // Callers check lengths before encoding (`Request::check_lengths`); clamp at a
        // character boundary so a bug cannot write a lie or broken UTF-8.
        let mut len = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(len) {
            len -= 1;
        }
        self.put_u16(len as u16);
        self.put_slice(&s.as_bytes()[..len]);
    }
    fn put_blob(&mut self, b: &[u8]) {
        self.put_u32(b.len() as u32);
        self.put_slice(b);
    }
    fn put_bool(&mut self, b: bool) {
        self.put_u8(u8::from(b));
    }
}

/// Reads primitives from a frame body. Slices share the body's allocation (`Bytes`), so
/// payloads are never copied by decoding.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.split_to(n))
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::UnknownValue {
                what,
                value: u64::from(v),
            }),
        }
    }
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn str(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(what)? as usize;
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::InvalidUtf8(what))
    }
    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }
    /// Reads a list count and checks it against `max` before anything is allocated.
    pub(crate) fn count(&mut self, what: &'static str, max: u32) -> Result<usize, DecodeError> {
        let n = self.u32(what)?;
        if n > max {
            return Err(DecodeError::TooMany {
                what,
                count: u64::from(n),
                max: u64::from(max),
            });
        }
        // Every item takes at least one byte, so a count larger than what is left is a lie.
        if n as usize > self.buf.len() {
            return Err(DecodeError::Truncated(what));
        }
        Ok(n as usize)
    }
    /// Everything not yet read.
    #[cfg(feature = "server")]
    pub(crate) fn rest(self) -> Bytes {
        self.buf
    }
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}
