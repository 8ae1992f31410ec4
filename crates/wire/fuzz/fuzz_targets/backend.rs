#![no_main]
//! Server messages: the first byte is the tag, the rest the body. Decoding never panics, and
//! an accepted message encodes back to exactly the same frame.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::Frame;
use wire::backend::BackendMessage;

fuzz_target!(|data: &[u8]| {
    let Some((&tag, body)) = data.split_first() else {
        return;
    };
    if let Ok(msg) = BackendMessage::decode(&Frame::new(tag, body.to_vec())) {
        let mut again = BytesMut::new();
        msg.encode(&mut again);
        assert_eq!(again[0], tag);
        assert_eq!(&again[1..5], &(body.len() as i32 + 4).to_be_bytes());
        assert_eq!(&again[5..], body);
    }
});
