#![no_main]
//! Client messages: the first byte is the tag, the rest the body. Decoding never panics, and
//! an accepted message encodes back to exactly the same frame.

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use wire::Frame;
use wire::frontend::{self, FrontendMessage, SaslInitialResponse};

fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&tag, body)) = data.split_first() else {
        return;
    };
    if let Ok(msg) = FrontendMessage::decode(&Frame::new(tag, body.to_vec())) {
        let mut again = BytesMut::new();
        msg.encode(&mut again);
        assert_eq!(&again[..], &framed(tag, body)[..]);
    }

    // What a `p` message may hold during authentication.
    if let Ok(sasl) = SaslInitialResponse::decode(&Bytes::copy_from_slice(body)) {
        let mut again = BytesMut::new();
        sasl.encode(&mut again);
        assert_eq!(&again[..], &framed(frontend::tag::PASSWORD, body)[..]);
    }
    if let Ok(password) = frontend::decode_password_message(body) {
        let mut again = BytesMut::new();
        frontend::encode_password_message(&mut again, &password);
        assert_eq!(&again[..], &framed(frontend::tag::PASSWORD, body)[..]);
    }
});
