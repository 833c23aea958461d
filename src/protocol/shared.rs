//! Message bodies decoded as slices of the buffer they arrive in, not as copies.
//!
//! A serde decoder hands a body field its bytes as a slice of its input; `Bytes`'s own
//! `Deserialize` copies that slice into a new allocation. Inside [`from_shared`], a field
//! marked `#[serde(deserialize_with = "shared::body")]` takes the bytes as a slice of the
//! shared input buffer instead: no copy and no allocation, the body keeping the buffer
//! alive. Anywhere else (another decoder, a buffer not shared) the field copies as before,
//! so the marked types decode the same bytes to the same values either way.
//!
//! On the way out, [`append_postcard`] encodes behind what a buffer already holds, each
//! byte string copied whole.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, Error, SeqAccess, Visitor};

thread_local! {
    /// The buffer [`from_shared`] is decoding on this thread, if any.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` (a decoder reading `buf` in place, such as `postcard::from_bytes(buf)`)
/// with the body fields it decodes taken as slices of `buf`.
pub fn from_shared<T>(buf: &Bytes, decode: impl FnOnce(&[u8]) -> T) -> T {
    /// Puts back what was there before, also when `decode` unwinds.
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            SOURCE.with(|s| *s.borrow_mut() = before);
        }
    }
    let _restore = Restore(SOURCE.with(|s| s.borrow_mut().replace(buf.clone())));
    decode(buf)
}

/// Appends `value` in postcard to `out`; the same bytes as `postcard::to_extend`.
///
/// `to_extend` hands each byte string (a message body) to `Extend<u8>` as an iterator of
/// bytes, a loop of 16-byte moves; here it is one `extend_from_slice`, a `memcpy`. The
/// buffer is moved into the encoder and back, as with `to_extend`, and the flavor's two
/// methods are `#[inline(always)]`, as postcard's own are: without that, 100 bodies of
/// 64 B took twice as long to encode (`cargo bench --bench hot_path`, the `codec:
/// append_postcard` lines). On an error `out` is left empty.
#[cfg(feature = "server")]
pub fn append_postcard<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> postcard::Result<()> {
    *out = postcard::serialize_with_flavor(value, Append(std::mem::take(out)))?;
    Ok(())
}

/// postcard's output onto the end of a `Vec`.
#[cfg(feature = "server")]
struct Append(Vec<u8>);

#[cfg(feature = "server")]
impl postcard::ser_flavors::Flavor for Append {
    type Output = Vec<u8>;

    #[inline(always)]
    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.0.push(b);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, b: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(b);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// `v` as a slice of the buffer [`from_shared`] is decoding, if it lies inside it; else
/// a copy.
fn share(v: &[u8]) -> Bytes {
    SOURCE.with(|s| match s.borrow().as_ref() {
        Some(src) if inside(src, v) => src.slice_ref(v),
        _ => Bytes::copy_from_slice(v),
    })
}

/// Whether `part` lies inside `whole` in memory (the condition of `Bytes::slice_ref`).
fn inside(whole: &[u8], part: &[u8]) -> bool {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

/// Deserializes a body: bytes (shared inside [`from_shared`], else copied), or a sequence
/// of byte values, as `Bytes`'s own `Deserialize` accepts.
pub fn body<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    d.deserialize_bytes(BodyVisitor)
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a message body: bytes")
    }

    fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(share(v))
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 << 10));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Bytes::from(v))
    }
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;
    use crate::protocol::SendEntry;

    fn entries() -> Vec<SendEntry> {
        vec![
            SendEntry::new(vec![7u8; 1000]),
            SendEntry {
                delay_ms: Some(5),
                dedup_id: Some("d".into()),
                group: None,
                attributes: vec![("k".into(), Bytes::from_static(b"v"))],
                body: Bytes::from_static(b"second"),
            },
            SendEntry::new(Bytes::new()),
        ]
    }

    #[test]
    fn append_postcard_writes_to_extends_bytes_behind_what_the_buffer_holds() {
        let mut big = entries();
        big[0].body = Bytes::from((0..70_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        for value in [entries(), big, Vec::new()] {
            let mut out = b"head".to_vec();
            append_postcard(&value, &mut out).unwrap();
            assert_eq!(out, postcard::to_extend(&value, b"head".to_vec()).unwrap());
            let back: Vec<SendEntry> = postcard::from_bytes(&out[4..]).unwrap();
            assert_eq!(back, value);
        }
    }

    #[test]
    fn bodies_decoded_inside_from_shared_are_slices_of_the_buffer_and_equal_to_copies() {
        let buf = Bytes::from(postcard::to_allocvec(&entries()).unwrap());
        let shared: Vec<SendEntry> = from_shared(&buf, |b| postcard::from_bytes(b)).unwrap();
        assert_eq!(shared, entries());
        for e in shared.iter().filter(|e| !e.body.is_empty()) {
            assert!(inside(&buf, &e.body), "a body was copied");
        }
        // Outside, the same bytes decode to the same values, each body a copy.
        let copied: Vec<SendEntry> = postcard::from_bytes(&buf).unwrap();
        assert_eq!(copied, entries());
        assert!(!inside(&buf, &copied[0].body));
        // The buffer is forgotten after the call, also after a failed decode.
        let bad: Result<Vec<SendEntry>, _> = from_shared(&buf, |b| postcard::from_bytes(&b[..10]));
        assert!(bad.is_err());
        assert!(SOURCE.with(|s| s.borrow().is_none()));
    }

    #[test]
    fn a_body_outside_the_shared_buffer_is_copied() {
        let other = Bytes::from(postcard::to_allocvec(&entries()).unwrap());
        let buf = Bytes::from_static(b"unrelated");
        let got: Vec<SendEntry> = from_shared(&buf, |_| postcard::from_bytes(&other)).unwrap();
        assert_eq!(got, entries());
        assert!(!inside(&buf, &got[0].body));
    }

    #[test]
    fn json_bodies_still_decode() {
        let json = serde_json::to_string(&entries()).unwrap();
        let got: Vec<SendEntry> = serde_json::from_str(&json).unwrap();
        assert_eq!(got, entries());
    }
}
