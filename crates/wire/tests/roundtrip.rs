//! Encode-then-decode property tests: every message type the crate can encode comes back
//! equal through the same entry points the proxy uses (`parse_frame` for tagged messages,
//! `parse_startup` for startup packets), alone, many to a buffer, and fed in arbitrary
//! chunk sizes as partial reads would deliver them.

// Each test crate uses a different subset of the shared strategies.
#[allow(dead_code)]
mod common;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use wire::backend::BackendMessage;
use wire::frontend::{self, Bind, FrontendMessage, SaslInitialResponse};
use wire::startup;
use wire::{ErrorResponse, Frame, Severity, SqlState, WireError, parse_frame, parse_startup};

use common::{
    MAX_BODY, Tagged, backend, cstr, encode_one, error_response, frontend, sasl_initial_response,
    startup_packet, tagged,
};

fn fail(what: &str, e: WireError) -> TestCaseError {
    TestCaseError::fail(format!("{what}: {e}"))
}

/// Parses exactly one frame from `buf` and checks nothing is left over: `encode` must write
/// one whole frame and nothing else.
fn only_frame(mut buf: BytesMut) -> Result<Frame, TestCaseError> {
    let encoded_len = buf.len();
    let frame = parse_frame(&mut buf, MAX_BODY)
        .map_err(|e| fail("parse_frame", e))?
        .ok_or_else(|| TestCaseError::fail("encoded message is not a complete frame"))?;
    prop_assert!(buf.is_empty(), "{} bytes after the frame", buf.len());
    prop_assert_eq!(encoded_len, 5 + frame.body.len());
    Ok(frame)
}

/// Feeds `stream` to `parse` in pieces of the given sizes (cycled), calling it after each
/// piece until it wants more, as a read loop would. Checks that a `None` leaves the buffer
/// untouched and that nothing is left at the end.
fn feed_in_chunks<T>(
    stream: &[u8],
    chunks: &[usize],
    mut parse: impl FnMut(&mut BytesMut) -> Result<Option<T>, WireError>,
) -> Result<Vec<T>, TestCaseError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    for &chunk in chunks.iter().cycle() {
        if fed == stream.len() {
            break;
        }
        let n = chunk.min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            let before = buf.clone();
            match parse(&mut buf).map_err(|e| fail("parse", e))? {
                Some(v) => out.push(v),
                None => {
                    prop_assert_eq!(&buf[..], &before[..], "a partial read consumed bytes");
                    break;
                }
            }
        }
    }
    prop_assert!(buf.is_empty(), "{} bytes left unparsed", buf.len());
    Ok(out)
}

fn sqlstate() -> impl Strategy<Value = SqlState> {
    "[0-9A-Z]{5}".prop_map(|c| SqlState::from_code(&c).expect("five ASCII alphanumerics"))
}

fn severity() -> impl Strategy<Value = Severity> {
    prop_oneof![
        Just(Severity::Error),
        Just(Severity::Fatal),
        Just(Severity::Panic),
        Just(Severity::Warning),
        Just(Severity::Notice),
        Just(Severity::Debug),
        Just(Severity::Info),
        Just(Severity::Log),
    ]
}

proptest! {
    #[test]
    fn frontend_message_round_trips(m in frontend()) {
        let frame = only_frame(encode_one(|b| m.encode(b)))?;
        prop_assert_eq!(FrontendMessage::decode(&frame), Ok(m));
    }

    #[test]
    fn backend_message_round_trips(m in backend()) {
        let frame = only_frame(encode_one(|b| m.encode(b)))?;
        prop_assert_eq!(BackendMessage::decode(&frame), Ok(m));
    }

    #[test]
    fn error_response_round_trips(e in error_response()) {
        let body = encode_one(|b| e.encode_body(b));
        prop_assert_eq!(ErrorResponse::decode(&body), Ok(e.clone()));

        let frame = only_frame(e.to_error_message())?;
        prop_assert_eq!(frame.tag, b'E');
        prop_assert_eq!(&frame.body[..], &body[..]);
        prop_assert_eq!(BackendMessage::decode(&frame), Ok(BackendMessage::ErrorResponse(e.clone())));

        let frame = only_frame(e.to_notice_message())?;
        prop_assert_eq!(frame.tag, b'N');
        prop_assert_eq!(BackendMessage::decode(&frame), Ok(BackendMessage::NoticeResponse(e)));
    }

    #[test]
    fn error_response_builders_survive_the_wire(
        severity in severity(),
        code in sqlstate(),
        message in cstr(),
        detail in cstr(),
        hint in cstr(),
    ) {
        let e = ErrorResponse::new(severity, code, message.clone())
            .with_detail(detail.clone())
            .with_hint(hint.clone());
        let frame = only_frame(e.to_error_message())?;
        let back = ErrorResponse::decode(&frame.body).map_err(|e| fail("decode", e))?;
        prop_assert_eq!(back.code(), Some(code));
        prop_assert_eq!(back.severity(), Some(severity.as_str()));
        prop_assert_eq!(back.get(b'S'), Some(severity.as_str()));
        prop_assert_eq!(back.message(), Some(message.as_str()));
        prop_assert_eq!(back.get(b'D'), Some(detail.as_str()));
        prop_assert_eq!(back.get(b'H'), Some(hint.as_str()));
        prop_assert_eq!(back, e);
    }

    #[test]
    fn sasl_initial_response_round_trips(m in sasl_initial_response()) {
        let frame = only_frame(encode_one(|b| m.encode(b)))?;
        prop_assert_eq!(frame.tag, frontend::tag::PASSWORD);
        // The relay sees a `p` message; only the authentication code knows it is SASL.
        prop_assert_eq!(
            FrontendMessage::decode(&frame),
            Ok(FrontendMessage::Password(frame.body.clone()))
        );
        prop_assert_eq!(SaslInitialResponse::decode(&frame.body), Ok(m));
    }

    #[test]
    fn password_message_round_trips(pw in cstr()) {
        let frame = only_frame(encode_one(|b| frontend::encode_password_message(b, &pw)))?;
        prop_assert_eq!(frame.tag, frontend::tag::PASSWORD);
        prop_assert_eq!(frontend::decode_password_message(&frame.body), Ok(pw));
    }

    #[test]
    fn startup_packet_round_trips(p in startup_packet()) {
        let encoded = encode_one(|b| p.encode(b));
        let declared = i32::from_be_bytes([encoded[0], encoded[1], encoded[2], encoded[3]]);
        prop_assert_eq!(usize::try_from(declared).ok(), Some(encoded.len()));
        prop_assert_eq!(startup::decode_startup_body(&encoded[4..]), Ok(p.clone()));

        let mut buf = encoded;
        prop_assert_eq!(parse_startup(&mut buf), Ok(Some(p)));
        prop_assert!(buf.is_empty(), "{} bytes after the packet", buf.len());
    }

    #[test]
    fn startup_packets_fed_in_chunks_parse_in_order(
        packets in vec(startup_packet(), 1..6),
        chunks in vec(1..40usize, 1..12),
    ) {
        let mut stream = BytesMut::new();
        packets.iter().for_each(|p| p.encode(&mut stream));
        let got = feed_in_chunks(&stream, &chunks, parse_startup)?;
        prop_assert_eq!(got, packets);
    }

    #[test]
    fn messages_in_one_buffer_parse_in_order(msgs in vec(tagged(), 0..24)) {
        let mut buf = BytesMut::new();
        msgs.iter().for_each(|m| m.encode(&mut buf));
        for m in &msgs {
            let frame = parse_frame(&mut buf, MAX_BODY)
                .map_err(|e| fail("parse_frame", e))?
                .ok_or_else(|| TestCaseError::fail("stream ended early"))?;
            prop_assert_eq!(&m.decode_like(&frame), &Ok(m.clone()));
        }
        prop_assert!(buf.is_empty(), "{} bytes left unparsed", buf.len());
        prop_assert_eq!(parse_frame(&mut buf, MAX_BODY), Ok(None));
    }

    #[test]
    fn messages_fed_in_chunks_parse_in_order(
        msgs in vec(tagged(), 1..24),
        chunks in vec(1..48usize, 1..16),
    ) {
        let mut stream = BytesMut::new();
        msgs.iter().for_each(|m| m.encode(&mut stream));
        let frames = feed_in_chunks(&stream, &chunks, |b| parse_frame(b, MAX_BODY))?;
        prop_assert_eq!(frames.len(), msgs.len());
        for (m, frame) in msgs.iter().zip(&frames) {
            prop_assert_eq!(&m.decode_like(frame), &Ok(m.clone()));
        }
    }

    /// The same stream one byte at a time: every header and body boundary is a partial read.
    #[test]
    fn messages_fed_byte_by_byte_parse_in_order(msgs in vec(tagged(), 1..8)) {
        let mut stream = BytesMut::new();
        msgs.iter().for_each(|m| m.encode(&mut stream));
        let frames = feed_in_chunks(&stream, &[1], |b| parse_frame(b, MAX_BODY))?;
        let decoded: Vec<Tagged> = msgs
            .iter()
            .zip(&frames)
            .map(|(m, f)| m.decode_like(f))
            .collect::<Result<_, _>>()
            .map_err(|e| fail("decode", e))?;
        prop_assert_eq!(decoded, msgs);
    }
}

/// Counts are Int16 on the wire: the largest one that fits must survive.
#[test]
fn largest_int16_counts_round_trip() {
    let n = i16::MAX as usize;
    let cases = [
        Tagged::Frontend(FrontendMessage::Parse {
            name: "s".into(),
            query: "select".into(),
            param_types: vec![23; n],
        }),
        Tagged::Frontend(FrontendMessage::Bind(Bind {
            portal: String::new(),
            statement: "s".into(),
            param_formats: vec![1; n],
            params: vec![Some(Bytes::from_static(b"\0\0\0\x01")); n],
            result_formats: vec![0; n],
        })),
        Tagged::Backend(BackendMessage::DataRow { values: vec![None; n] }),
        Tagged::Backend(BackendMessage::ParameterDescription { types: vec![25; n] }),
    ];
    for m in cases {
        let mut buf = encode_one(|b| m.encode(b));
        let frame = parse_frame(&mut buf, MAX_BODY).expect("within the limit").expect("complete");
        assert!(buf.is_empty());
        // Compared without `assert_eq!`: a failure would print tens of thousands of values.
        match m.decode_like(&frame) {
            Ok(got) => assert!(got == m, "decoded a different message"),
            Err(e) => panic!("a valid message was rejected: {e}"),
        }
    }
}

/// PostgreSQL reads the parameter counts of Parse and Bind as unsigned 16-bit integers
/// (`pq_getmsgint(msg, 2)` in `exec_bind_message`/`exec_parse_message`) and libpq allows up
/// to 65535 parameters (`PQ_QUERY_PARAM_MAX_LIMIT`), so a Bind with 40000 parameters is a
/// valid message a real client sends. The decoder reads the count as a signed Int16 and
/// rejects it as malformed, and the encoder writes it as a negative Int16.
#[test]
fn parameter_counts_up_to_65535_round_trip() {
    let n = 40_000;
    let cases = [
        FrontendMessage::Parse { name: String::new(), query: "insert".into(), param_types: vec![0; n] },
        FrontendMessage::Bind(Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: vec![],
            params: vec![None; n],
            result_formats: vec![],
        }),
    ];
    for m in cases {
        let mut buf = encode_one(|b| m.encode(b));
        let frame = parse_frame(&mut buf, MAX_BODY).expect("within the limit").expect("complete");
        match FrontendMessage::decode(&frame) {
            Ok(got) => assert!(got == m, "decoded a different message"),
            Err(e) => panic!("a valid message was rejected: {e}"),
        }
    }
}
