//! What a client does with bytes from a node: the frame header, then the response decoder
//! for the opcode it asked (the input's first byte picks one), or the error body for a
//! non-zero status. None may panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqd::protocol::{decode_error_message, decode_header, Opcode, Response, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let op = Opcode::ALL[usize::from(pick) % Opcode::ALL.len()];
    let Some(head) = frame.get(..HEADER_LEN) else {
        return;
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(head);
    let Ok(header) = decode_header(&h) else {
        return;
    };
    let body = &frame[HEADER_LEN..];
    if body.len() != header.body_len {
        return;
    }
    let body = Bytes::copy_from_slice(body);
    if header.code == 0 {
        if let Ok(resp) = Response::decode(op, body) {
            // Whatever decodes, encodes (a client never needs to, but a node must be able
            // to send anything a client accepts).
            let _ = resp.encode();
        }
    } else {
        let _ = decode_error_message(body);
    }
});
