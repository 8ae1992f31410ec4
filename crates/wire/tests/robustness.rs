//! Every decoder fed bytes a hostile peer could send: none may panic, `parse_frame` must
//! hold its size limit, and whatever a decoder accepts must encode back to exactly the bytes
//! it came from (so a decoder cannot silently accept garbage it then drops). The inputs are
//! both raw random bytes and valid messages with bytes flipped, inserted, removed or cut off,
//! which reach far deeper into the decoders than random bytes do. The `fuzz/` targets drive
//! the same entry points under libFuzzer on nightly.

// Each test crate uses a different subset of the shared strategies.
#[allow(dead_code)]
mod common;

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use wire::backend::{self, BackendMessage};
use wire::frame::{HEADER_LEN, peek_header};
use wire::frontend::{self, FrontendMessage, SaslInitialResponse};
use wire::scram::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramClient, ScramError, ScramServer, ScramVerifier,
};
use wire::startup::{self, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_LEN, SSL_REQUEST_CODE};
use wire::{ErrorResponse, Frame, WireError, parse_frame, parse_startup};

use common::{backend, encode_one, error_response, frontend, sasl_initial_response};

/// One edit to a valid encoding. Positions are taken modulo the length at the time.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1..=u8::MAX).prop_map(|(at, x)| Mutation::Flip(at, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn mutate(mut v: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
    for m in edits {
        match *m {
            Mutation::Truncate(at) => v.truncate(at % (v.len() + 1)),
            Mutation::Insert(at, b) => v.insert(at % (v.len() + 1), b),
            Mutation::Flip(at, x) if !v.is_empty() => {
                let i = at % v.len();
                v[i] ^= x;
            }
            Mutation::Remove(at) if !v.is_empty() => {
                v.remove(at % v.len());
            }
            Mutation::Flip(..) | Mutation::Remove(_) => {}
        }
    }
    v
}

fn junk(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// A (tag, body) pair: a valid message with a few edits (or none), or a known tag with
/// random bytes, or anything at all.
fn tag_and_body(
    valid: impl Strategy<Value = BytesMut> + 'static,
    known_tags: &'static [u8],
) -> impl Strategy<Value = (u8, Vec<u8>)> {
    prop_oneof![
        (valid, vec(mutation(), 0..4))
            .prop_map(|(enc, edits)| (enc[0], mutate(enc[HEADER_LEN..].to_vec(), &edits))),
        (proptest::sample::select(known_tags), junk(64)),
        (any::<u8>(), junk(64)),
    ]
}

const FRONTEND_TAGS: &[u8] = &[
    frontend::tag::QUERY,
    frontend::tag::PARSE,
    frontend::tag::BIND,
    frontend::tag::EXECUTE,
    frontend::tag::DESCRIBE,
    frontend::tag::CLOSE,
    frontend::tag::SYNC,
    frontend::tag::FLUSH,
    frontend::tag::TERMINATE,
    frontend::tag::COPY_DATA,
    frontend::tag::COPY_DONE,
    frontend::tag::COPY_FAIL,
    frontend::tag::FUNCTION_CALL,
    frontend::tag::PASSWORD,
];

const BACKEND_TAGS: &[u8] = &[
    backend::tag::AUTHENTICATION,
    backend::tag::BACKEND_KEY_DATA,
    backend::tag::PARAMETER_STATUS,
    backend::tag::READY_FOR_QUERY,
    backend::tag::ERROR_RESPONSE,
    backend::tag::NOTICE_RESPONSE,
    backend::tag::NEGOTIATE_PROTOCOL_VERSION,
    backend::tag::COMMAND_COMPLETE,
    backend::tag::PARSE_COMPLETE,
    backend::tag::BIND_COMPLETE,
    backend::tag::CLOSE_COMPLETE,
    backend::tag::NO_DATA,
    backend::tag::PORTAL_SUSPENDED,
    backend::tag::EMPTY_QUERY_RESPONSE,
    backend::tag::PARAMETER_DESCRIPTION,
    backend::tag::ROW_DESCRIPTION,
    backend::tag::DATA_ROW,
    backend::tag::COPY_IN_RESPONSE,
    backend::tag::COPY_OUT_RESPONSE,
    backend::tag::COPY_BOTH_RESPONSE,
    backend::tag::COPY_DATA,
    backend::tag::COPY_DONE,
    backend::tag::NOTIFICATION_RESPONSE,
    backend::tag::FUNCTION_CALL_RESPONSE,
];

/// The whole message `tag` + length + `body`, as the encoders must reproduce it.
fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Bytes that start like a frame stream: headers with small, zero, negative and slightly
/// too large lengths, each followed by some bytes that may or may not cover it.
fn frame_stream() -> impl Strategy<Value = Vec<u8>> {
    vec((any::<u8>(), -8..96i32, junk(96)), 0..6).prop_map(|parts| {
        let mut v = Vec::new();
        for (tag, len, body) in parts {
            v.push(tag);
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&body);
        }
        v
    })
}

/// Runs `parse_frame` over `input` until it stops, checking every frame against `max`
/// and that each frame consumes exactly its header and body.
fn drain_frames(input: &[u8], max: usize) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(input);
    loop {
        let before = buf.clone();
        match parse_frame(&mut buf, max) {
            Ok(Some(frame)) => {
                prop_assert!(
                    frame.body.len() <= max,
                    "body of {} bytes over the limit of {max}",
                    frame.body.len()
                );
                prop_assert_eq!(frame.tag, before[0]);
                prop_assert_eq!(&frame.body[..], &before[HEADER_LEN..][..frame.body.len()]);
                prop_assert_eq!(buf.len(), before.len() - HEADER_LEN - frame.body.len());
            }
            Ok(None) => {
                prop_assert_eq!(&buf[..], &before[..], "an incomplete frame consumed bytes");
                if let Ok(Some((_, body))) = peek_header(&buf, max) {
                    prop_assert!(buf.len() < HEADER_LEN + body, "a complete frame was not returned");
                } else {
                    prop_assert!(buf.len() < HEADER_LEN);
                }
                return Ok(());
            }
            Err(WireError::TooLarge { len, max: m }) => {
                prop_assert_eq!(m, max);
                prop_assert!(len > max);
                return Ok(());
            }
            Err(WireError::InvalidLength(len)) => {
                prop_assert!(len < 4);
                return Ok(());
            }
            Err(other) => return Err(TestCaseError::fail(format!("unexpected error {other}"))),
        }
    }
}

/// A verifier the SCRAM server tests share; derived once because PBKDF2 is slow in debug.
static VERIFIER: LazyLock<ScramVerifier> =
    LazyLock::new(|| ScramVerifier::derive("pw", b"sixteen byte slt", 4096));

fn channel_binding() -> impl Strategy<Value = ChannelBinding> {
    prop_oneof![Just(ChannelBinding::None), junk(8).prop_map(|c| ChannelBinding::tls_server_end_point(&c))]
}

fn mechanism() -> impl Strategy<Value = String> {
    prop_oneof![Just(SCRAM_SHA_256.to_owned()), Just(SCRAM_SHA_256_PLUS.to_owned()), "\\PC{0,20}"]
}

/// Client-first messages close to valid: every GS2 flag, authzids, attribute orders,
/// nonces with and without forbidden bytes, extensions.
fn client_first() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => "(n|y|p=tls-server-end-point),,n=[a-z]{0,4},r=[!-+\\--~]{1,24}(,[a-z]=[!-+\\--~]{0,8})?"
            .prop_map(String::into_bytes),
        1 => "(n|y|p=tls-server-end-point|p=tls-unique|p|x|),(a=[a-z]{0,4})?,(n=[a-z]{0,4},)?(r=[!-~]{0,24}|m=x)(,[a-z]=[!-~]{0,8}){0,2}"
            .prop_map(String::into_bytes),
        1 => junk(64),
    ]
}

/// Everything after `r=` in a client-first-message, up to the next comma.
fn client_nonce(first: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(first).ok()?;
    let bare = s.splitn(3, ',').nth(2)?;
    bare.split(',').nth(1)?.strip_prefix("r=")
}

fn nonce_of(scram_client: &ScramClient) -> String {
    let first = scram_client.client_first();
    client_nonce(first.as_bytes()).expect("the client writes a well-formed client-first-message").to_owned()
}

proptest! {
    #[test]
    fn parse_frame_never_panics_and_holds_its_limit(input in junk(256), max in 0..128usize) {
        drain_frames(&input, max)?;
    }

    #[test]
    fn parse_frame_holds_its_limit_on_plausible_streams(input in frame_stream(), max in 0..96usize) {
        drain_frames(&input, max)?;
    }

    /// A limit equal to the body is enough; one byte less is refused from the header alone,
    /// before the body is buffered.
    #[test]
    fn parse_frame_limit_is_exact(m in frontend()) {
        let encoded = encode_one(|b| m.encode(b));
        let body_len = encoded.len() - HEADER_LEN;
        let mut buf = encoded.clone();
        prop_assert!(matches!(
            parse_frame(&mut buf, body_len),
            Ok(Some(f)) if f.body.len() == body_len
        ));
        if body_len > 0 {
            let mut header_only = BytesMut::from(&encoded[..HEADER_LEN]);
            prop_assert_eq!(
                parse_frame(&mut header_only, body_len - 1),
                Err(WireError::TooLarge { len: body_len, max: body_len - 1 })
            );
        }
    }

    #[test]
    fn parse_startup_never_panics(
        input in prop_oneof![
            junk(64),
            // A believable length word and code, then anything.
            (
                proptest::sample::select(vec![
                    SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE, 196_608, 196_610,
                ]),
                junk(48),
                0..8usize,
                vec(mutation(), 0..3),
            ).prop_map(|(code, tail, slack, edits)| {
                let mut body = code.to_be_bytes().to_vec();
                body.extend_from_slice(&tail);
                let mut v = ((body.len() + 4) as i32).to_be_bytes().to_vec();
                v.extend_from_slice(&body);
                v.truncate(v.len().saturating_sub(slack));
                mutate(v, &edits)
            }),
        ]
    ) {
        let mut buf = BytesMut::from(&input[..]);
        match parse_startup(&mut buf) {
            Ok(Some(p)) => {
                let consumed = input.len() - buf.len();
                prop_assert_eq!(&encode_one(|b| p.encode(b))[..], &input[..consumed]);
            }
            Ok(None) => {
                prop_assert_eq!(&buf[..], &input[..]);
                if input.len() >= 4 {
                    let len = i32::from_be_bytes([input[0], input[1], input[2], input[3]]);
                    prop_assert!(usize::try_from(len).is_ok_and(|l| l > input.len()));
                }
            }
            Err(WireError::TooLarge { len, max }) => {
                prop_assert_eq!(max, MAX_STARTUP_LEN);
                prop_assert!(len > MAX_STARTUP_LEN);
            }
            Err(_) => {}
        }
        for body in [&input[..], input.get(4..).unwrap_or_default()] {
            if let Ok(p) = startup::decode_startup_body(body) {
                let mut reencoded = encode_one(|b| p.encode(b));
                prop_assert_eq!(&reencoded.split_off(4)[..], body);
            }
        }
    }

    #[test]
    fn frontend_decode_never_panics((tag, body) in tag_and_body(
        frontend().prop_map(|m| encode_one(|b| m.encode(b))),
        FRONTEND_TAGS,
    )) {
        if let Ok(m) = FrontendMessage::decode(&Frame::new(tag, body.clone())) {
            prop_assert_eq!(encode_one(|b| m.encode(b)).to_vec(), framed(tag, &body));
        }
    }

    #[test]
    fn backend_decode_never_panics((tag, body) in tag_and_body(
        backend().prop_map(|m| encode_one(|b| m.encode(b))),
        BACKEND_TAGS,
    )) {
        if let Ok(m) = BackendMessage::decode(&Frame::new(tag, body.clone())) {
            prop_assert_eq!(encode_one(|b| m.encode(b)).to_vec(), framed(tag, &body));
        }
    }

    #[test]
    fn error_response_decode_never_panics((_, body) in tag_and_body(
        error_response().prop_map(|e| e.to_error_message()),
        b"E",
    )) {
        if let Ok(e) = ErrorResponse::decode(&body) {
            prop_assert_eq!(&encode_one(|b| e.encode_body(b))[..], &body[..]);
        }
    }

    #[test]
    fn sasl_initial_response_decode_never_panics((_, body) in tag_and_body(
        sasl_initial_response().prop_map(|m| encode_one(|b| m.encode(b))),
        b"p",
    )) {
        if let Ok(m) = SaslInitialResponse::decode(&Bytes::from(body.clone())) {
            prop_assert_eq!(encode_one(|b| m.encode(b)).to_vec(), framed(b'p', &body));
        }
        if let Ok(pw) = frontend::decode_password_message(&body) {
            prop_assert_eq!(
                encode_one(|b| frontend::encode_password_message(b, &pw)).to_vec(),
                framed(b'p', &body)
            );
        }
    }

    #[test]
    fn verifier_parse_never_panics(s in prop_oneof![
        "\\PC{0,120}",
        "SCRAM-SHA-256\\$[-+0-9]{0,11}:[A-Za-z0-9+/=]{0,26}\\$[A-Za-z0-9+/=]{0,46}:[A-Za-z0-9+/=]{0,46}",
        "SCRAM-SHA-256\\$[0-9]{1,4}:[A-Za-z0-9+/]{22}==\\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=",
    ]) {
        if let Ok(v) = ScramVerifier::parse(&s) {
            prop_assert!(v.iterations > 0);
            let again = ScramVerifier::parse(&v.to_pg_authid());
            prop_assert!(again.as_ref() == Ok(&v), "to_pg_authid does not parse back");
        }
    }

    #[test]
    fn valid_verifier_text_parses_to_its_fields(
        iterations in 1..=u32::MAX,
        salt in junk(32),
        stored_key in any::<[u8; 32]>(),
        server_key in any::<[u8; 32]>(),
    ) {
        let text = format!(
            "SCRAM-SHA-256${iterations}:{}${}:{}",
            STANDARD.encode(&salt),
            STANDARD.encode(stored_key),
            STANDARD.encode(server_key)
        );
        let v = ScramVerifier::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(v.iterations, iterations);
        prop_assert_eq!(&v.salt, &salt);
        prop_assert!(v.stored_key == stored_key && v.server_key == server_key);
        prop_assert_eq!(v.to_pg_authid(), text);
    }
}

proptest! {
    // Only some generated client-first messages match the mechanism and channel binding
    // drawn with them; more cases make sure enough exchanges reach the final message.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Whatever a client sends, the server never panics and never accepts a proof the
    /// client could not have computed without the password.
    #[test]
    fn scram_server_survives_any_client(
        cb in channel_binding(),
        mechanism in mechanism(),
        first in client_first(),
        forged in prop_oneof![
            // A final message that gets past every check but the proof.
            ("(,[a-z]=[!-+\\--~]{0,6})?", any::<[u8; 32]>()).prop_map(Some),
            Just(None),
        ],
        final_junk in junk(96),
    ) {
        let mut server = ScramServer::new(VERIFIER.clone(), cb.clone());
        let server_first = match server.handle_client_first(&mechanism, &first) {
            Ok(m) => m,
            Err(e) => {
                if mechanism != SCRAM_SHA_256 && mechanism != SCRAM_SHA_256_PLUS {
                    prop_assert_eq!(e, ScramError::UnsupportedMechanism);
                }
                prop_assert!(server.client_key().is_none() && server.server_key().is_none());
                return Ok(());
            }
        };
        let nonce = client_nonce(&first)
            .ok_or_else(|| TestCaseError::fail("accepted a client-first without a nonce"))?;
        let expected_tail = format!(",s={},i=4096", STANDARD.encode(&VERIFIER.salt));
        let expected_head = format!("r={nonce}");
        prop_assert!(server_first.starts_with(&expected_head));
        prop_assert!(server_first.ends_with(&expected_tail));
        let full_nonce = &server_first[2..server_first.len() - expected_tail.len()];
        prop_assert!(full_nonce.len() > nonce.len(), "the server added no nonce of its own");

        let client_final = match &forged {
            Some((ext, proof)) => {
                let gs2 = std::str::from_utf8(&first).expect("accepted, so UTF-8");
                let header = gs2.splitn(3, ',').take(2).collect::<Vec<_>>().join(",") + ",";
                let mut cbind = header.clone().into_bytes();
                let binds = header.starts_with("p=");
                if let (true, ChannelBinding::TlsServerEndPoint(hash)) = (binds, &cb) {
                    cbind.extend_from_slice(hash);
                }
                let (cbind, proof) = (STANDARD.encode(&cbind), STANDARD.encode(proof));
                format!("c={cbind},r={full_nonce}{ext},p={proof}").into_bytes()
            }
            None => final_junk,
        };
        let result = server.handle_client_final(&client_final);
        if forged.is_some() {
            prop_assert_eq!(result, Err(ScramError::InvalidProof));
        } else {
            prop_assert!(result.is_err(), "accepted a proof made without the password");
        }
        prop_assert!(server.client_key().is_none() && server.server_key().is_none());
        // The exchange is over whatever happened.
        prop_assert_eq!(server.handle_client_final(&client_final), Err(ScramError::OutOfOrder));
        prop_assert_eq!(
            server.handle_client_first(&mechanism, &first),
            Err(ScramError::OutOfOrder)
        );
    }
}

proptest! {
    #[test]
    fn scram_client_survives_junk_from_the_server(
        server_first in junk(96),
        server_final in junk(96),
    ) {
        let mut client = ScramClient::new("pw", ChannelBinding::None, &[SCRAM_SHA_256.to_owned()])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Random bytes cannot carry the client's random nonce.
        prop_assert!(client.handle_server_first(&server_first).is_err());
        prop_assert_eq!(client.handle_server_final(&server_final), Err(ScramError::OutOfOrder));
    }

    /// Server messages that carry the client's nonce, so the client gets as far as computing
    /// its proof; then a server-final no real server sent.
    #[test]
    fn scram_client_survives_a_lying_server(
        suffix in "[!-+\\--~]{0,12}",
        salt in junk(20),
        iterations in 0..6u32,
        extension in "(,[a-z]=[^,]{0,8})?",
        server_final in prop_oneof![
            any::<[u8; 32]>().prop_map(|v| format!("v={}", STANDARD.encode(v)).into_bytes()),
            "(e=[a-z-]{0,16}|v=[A-Za-z0-9+/=]{0,48}|[a-z]=.{0,8})".prop_map(String::into_bytes),
            junk(64),
        ],
    ) {
        let mut client = ScramClient::new("pw", ChannelBinding::None, &[SCRAM_SHA_256.to_owned()])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let nonce = nonce_of(&client);
        let salt = STANDARD.encode(&salt);
        let first = format!("r={nonce}{suffix},s={salt},i={iterations}{extension}");
        let result = client.handle_server_first(first.as_bytes());
        if suffix.is_empty() {
            prop_assert_eq!(result, Err(ScramError::NonceMismatch));
            return Ok(());
        }
        if iterations == 0 {
            prop_assert_eq!(result, Err(ScramError::Malformed));
            return Ok(());
        }
        let client_final = result
            .map_err(|e| TestCaseError::fail(format!("valid server-first refused: {e}")))?;
        let expected_head = format!("c=biws,r={nonce}{suffix},p=");
        prop_assert!(client_final.starts_with(&expected_head));
        let result = client.handle_server_final(&server_final);
        prop_assert!(result.is_err(), "accepted a server signature made without the verifier");
        let server_error = std::str::from_utf8(&server_final)
            .ok()
            .and_then(|s| s.strip_prefix("e="))
            .filter(|e| !e.contains(','));
        if let Some(e) = server_error {
            prop_assert_eq!(result, Err(ScramError::ServerError(e.to_owned())));
        }
    }
}
