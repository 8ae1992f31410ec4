#![no_main]
//! Startup-phase packets: `parse_startup` and `decode_startup_body` on arbitrary bytes never
//! panic, and whatever they accept encodes back to exactly the bytes it came from.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::parse_startup;
use wire::startup::{MAX_STARTUP_LEN, decode_startup_body};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(packet)) = parse_startup(&mut buf) {
        let consumed = data.len() - buf.len();
        assert!(consumed <= MAX_STARTUP_LEN);
        let mut again = BytesMut::new();
        packet.encode(&mut again);
        assert_eq!(&again[..], &data[..consumed]);
    }

    if let Ok(packet) = decode_startup_body(data) {
        let mut again = BytesMut::new();
        packet.encode(&mut again);
        assert_eq!(&again[4..], data);
    }
});
