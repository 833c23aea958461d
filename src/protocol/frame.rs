//! Frame header: the eight bytes in front of every request and response body.
//!
//! ```text
//!  0        4         5        6          8
//!  +--------+---------+--------+----------+----------------------+
//!  | length | version | flags  | op/status|  body (length - 4)   |
//!  |  u32   |   u8    |   u8   |   u16    |                      |
//!  +--------+---------+--------+----------+----------------------+
//! ```
//!
//! `length` counts the bytes after the length field (4 + body). In a request the last
//! header field is the opcode; in a response it is the status code. `flags` is reserved
//! and must be 0 in version 1. A request stream carries exactly one request frame and the
//! response stream exactly one response frame.

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::WireWrite;
use super::{Opcode, Status, MAX_FRAME, VERSION};

/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 8;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Length of the body that follows the header.
    pub body_len: usize,
    /// The opcode (request) or status (response), not yet interpreted.
    pub code: u16,
}

/// Why a frame header was refused. Each maps onto a wire status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is smaller than the header itself.
    #[error("frame length {0} is shorter than the 4-byte header remainder")]
    BadLength(u32),
    /// The frame is larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge(u64),
    /// The version byte is not one this node speaks.
    #[error("protocol version {0} is not supported; this node speaks version {VERSION}")]
    UnsupportedVersion(u8),
    /// Reserved flag bits were set.
    #[error("reserved flags {0:#04x} must be 0")]
    BadFlags(u8),
}

impl FrameError {
    /// The status a server answers with.
    pub fn status(&self) -> Status {
        match self {
            FrameError::BadLength(_) | FrameError::BadFlags(_) => Status::BadFrame,
            FrameError::TooLarge(_) => Status::FrameTooLarge,
            FrameError::UnsupportedVersion(_) => Status::UnsupportedVersion,
        }
    }
}

/// Parses the fixed header. Does not look at the body.
pub fn decode_header(b: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
    let length = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if length < 4 {
        return Err(FrameError::BadLength(length));
    }
    let total = u64::from(length) + 4;
    if total > MAX_FRAME as u64 {
        return Err(FrameError::TooLarge(total));
    }
    if b[4] != VERSION {
        return Err(FrameError::UnsupportedVersion(b[4]));
    }
    if b[5] != 0 {
        return Err(FrameError::BadFlags(b[5]));
    }
    Ok(Header {
        body_len: (length - 4) as usize,
        code: u16::from_be_bytes([b[6], b[7]]),
    })
}

/// Starts a frame: reserves the header, to be completed by [`finish_frame`].
pub(crate) fn begin_frame(code: u16, capacity: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + capacity);
    buf.put_u32(0);
    buf.put_u8(VERSION);
    buf.put_u8(0);
    buf.put_u16(code);
    buf
}

/// Writes the length field of a frame built with [`begin_frame`].
pub(crate) fn finish_frame(mut buf: BytesMut) -> Bytes {
    let len = (buf.len() - 4) as u32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// Bodies at least this long are not copied into a frame encoded as chunks
/// ([`finish_chunks`]): the frame refers to them. Smaller ones are copied, since a chunk
/// of its own costs QUIC more than copying a few KiB does.
pub(crate) const SHARED_BODY: usize = 4096;

/// The large bodies of a frame encoded as chunks, each with the place in the frame's
/// buffer where it goes.
#[derive(Debug, Default)]
pub(crate) struct SharedBodies {
    parts: Vec<(usize, Bytes)>,
    len: usize,
}

/// Writes `body` as a blob (its length as a u32, then its bytes) at the end of `b`; with
/// `shared`, a body of at least [`SHARED_BODY`] bytes is recorded there instead of copied.
pub(crate) fn put_body(b: &mut BytesMut, body: &Bytes, shared: Option<&mut SharedBodies>) {
    match shared {
        Some(s) if body.len() >= SHARED_BODY => {
            b.put_u32(body.len() as u32);
            s.parts.push((b.len(), body.clone()));
            s.len += body.len();
        }
        _ => b.put_blob(body),
    }
}

/// Bytes of a body of `len` bytes that [`put_body`] copies into the frame's buffer, when
/// large bodies are shared (`share`) or not.
pub(crate) fn copied_len(len: usize, share: bool) -> usize {
    if share && len >= SHARED_BODY {
        0
    } else {
        len
    }
}

/// A frame begun in `b` ([`begin_frame`]) whose body `encode` writes, as one `Bytes`
/// with every body copied in.
pub(crate) fn whole_frame(
    mut b: BytesMut,
    encode: impl FnOnce(&mut BytesMut, Option<&mut SharedBodies>),
) -> Bytes {
    encode(&mut b, None);
    finish_frame(b)
}

/// The frame of [`whole_frame`] as the chunks it is made of ([`finish_chunks`]).
pub(crate) fn chunked_frame(
    mut b: BytesMut,
    encode: impl FnOnce(&mut BytesMut, Option<&mut SharedBodies>),
) -> Vec<Bytes> {
    let mut shared = SharedBodies::default();
    encode(&mut b, Some(&mut shared));
    finish_chunks(b, shared)
}

/// Completes a frame built with [`begin_frame`] and [`put_body`] as the chunks it is made
/// of, in order: the same bytes as [`finish_frame`] would give had every body been copied,
/// but each shared body is the caller's own `Bytes`, not a copy.
fn finish_chunks(mut buf: BytesMut, shared: SharedBodies) -> Vec<Bytes> {
    let len = (buf.len() + shared.len - 4) as u32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    let mut out = Vec::with_capacity(2 * shared.parts.len() + 1);
    let mut at = 0;
    for (pos, body) in shared.parts {
        out.push(buf.split_to(pos - at).freeze());
        at = pos;
        out.push(body);
    }
    if !buf.is_empty() {
        out.push(buf.freeze());
    }
    out
}

/// A request frame with an empty body, e.g. `PING`.
pub fn empty_request(op: Opcode) -> Bytes {
    finish_frame(begin_frame(op as u16, 0))
}
