//! What a node does with bytes from a client stream: the frame header, then the request
//! decoder its opcode selects. Neither may panic; a request that decodes must encode and
//! decode back to the same value. (Not always to the same bytes: a queue patch's tags may
//! come in any order, and the encoder writes them in ascending order.)
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqd::protocol::{decode_header, Request, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some(head) = data.get(..HEADER_LEN) else {
        return;
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(head);
    let Ok(header) = decode_header(&h) else {
        return;
    };
    let body = &data[HEADER_LEN..];
    if body.len() != header.body_len {
        return;
    }
    if let Ok(req) = Request::decode(header.code, Bytes::copy_from_slice(body)) {
        let again = req.encode();
        let mut h2 = [0u8; HEADER_LEN];
        h2.copy_from_slice(&again[..HEADER_LEN]);
        let header2 = decode_header(&h2).expect("our own header decodes");
        let back = Request::decode(header2.code, again.slice(HEADER_LEN..))
            .expect("our own encoding decodes");
        assert_eq!(back, req);
    }
});
