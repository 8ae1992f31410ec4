#![no_main]
//! The SCRAM server against a hostile client. The first byte picks the mechanism and whether
//! the connection has channel binding; the rest is the client-first-message and the
//! client-final-message, split at the first NUL. In the final message `%N` stands for the
//! server's nonce and `%C` for the correct channel-binding data, which are random per run and
//! a fuzzer could never guess; with them the input reaches the proof check. No input may
//! authenticate: the fuzzer does not know the password.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use wire::scram::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramServer, ScramVerifier};

/// Any well-formed verifier will do: the fuzzer never knows a password for it. Parsed, not
/// derived, so each run is cheap.
const VERIFIER: &str = "SCRAM-SHA-256$4096:c2l4dGVlbiBieXRlIHNsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mechanism = match flags & 3 {
        0 => SCRAM_SHA_256,
        1 => SCRAM_SHA_256_PLUS,
        _ => "SCRAM-SHA-1",
    };
    let hash = b"end point hash".to_vec();
    let cb =
        if flags & 4 != 0 { ChannelBinding::TlsServerEndPoint(hash.clone()) } else { ChannelBinding::None };
    let (first, last) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };

    let verifier = ScramVerifier::parse(VERIFIER).expect("a valid verifier");
    let mut server = ScramServer::new(verifier, cb);
    let Ok(server_first) = server.handle_client_first(mechanism, first) else {
        assert!(server.client_key().is_none());
        return;
    };
    let nonce = server_first
        .strip_prefix("r=")
        .and_then(|s| s.split(',').next())
        .expect("server-first starts with the nonce");
    // The GS2 header the server accepted, plus the hash when the client asked to bind.
    let text = std::str::from_utf8(first).expect("accepted, so UTF-8");
    let header_len = text.match_indices(',').nth(1).map_or(0, |(at, _)| at + 1);
    let mut cbind = text.as_bytes()[..header_len].to_vec();
    if text.starts_with("p=") {
        cbind.extend_from_slice(&hash);
    }
    let last = String::from_utf8_lossy(last).replace("%N", nonce).replace("%C", &STANDARD.encode(&cbind));

    assert!(server.handle_client_final(last.as_bytes()).is_err(), "authenticated without the password");
    assert!(server.client_key().is_none());
});
