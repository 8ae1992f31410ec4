#![no_main]
//! `parse_frame` over arbitrary bytes: no panic, no frame over the limit, and the same frames
//! whether the bytes arrive at once or in two reads.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::{Frame, WireError, parse_frame};

/// Parses frames until `parse_frame` wants more bytes or fails.
fn drain(buf: &mut BytesMut, max: usize, out: &mut Vec<Frame>) -> Result<(), WireError> {
    while let Some(frame) = parse_frame(buf, max)? {
        assert!(frame.body.len() <= max, "frame of {} bytes over the limit of {max}", frame.body.len());
        out.push(frame);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the limit and where the stream is split into two reads.
    let [limit, split, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) * 4;
    let split = usize::from(*split).min(stream.len());

    let mut whole = Vec::new();
    let whole_end = drain(&mut BytesMut::from(stream), max, &mut whole);

    let mut pieces = Vec::new();
    let mut buf = BytesMut::from(&stream[..split]);
    let mut pieces_end = drain(&mut buf, max, &mut pieces);
    if pieces_end.is_ok() {
        buf.extend_from_slice(&stream[split..]);
        pieces_end = drain(&mut buf, max, &mut pieces);
    }

    assert_eq!(whole, pieces);
    assert_eq!(whole_end, pieces_end);
});
