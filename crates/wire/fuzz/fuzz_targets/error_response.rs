#![no_main]
//! ErrorResponse/NoticeResponse bodies: decoding never panics, and an accepted body encodes
//! back byte for byte, as the relay relies on when it rewrites or forwards errors.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::ErrorResponse;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = ErrorResponse::decode(data) {
        let mut again = BytesMut::new();
        e.encode_body(&mut again);
        assert_eq!(&again[..], data);
        // The accessors must cope with whatever the fields hold.
        let _ = (e.code(), e.message(), e.severity(), e.to_string());
    }
});
