//! The agent's frame decoder and request deserialiser (and the client's
//! response deserialiser): never panics, never allocates past the frame
//! limit, and whatever decodes encodes and decodes again.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use regent_shared::protocol::{self, Request, Response};

fuzz_target!(|data: &[u8]| {
    // As a stream of frames, the way the agent reads a connection.
    let mut cursor = Cursor::new(data);
    for _ in 0..8 {
        match protocol::read_frame::<_, Request>(&mut cursor) {
            Ok(req) => {
                let frame = protocol::encode_frame(&req).expect("a decoded request encodes");
                let again: Request = protocol::read_frame(&mut Cursor::new(frame.to_vec()))
                    .expect("an encoded request decodes");
                assert_eq!(again.kind(), req.kind());
            }
            Err(_) => break,
        }
    }
    // As one body.
    let _ = protocol::decode_body::<Request>(data);
    let _ = protocol::decode_body::<Response>(data);
});
