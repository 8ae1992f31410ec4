#![no_main]
//! The SCRAM client against a hostile server. The first byte picks the channel binding and
//! the mechanisms offered; the rest is the server-first-message and the server-final-message,
//! split at the first NUL. In the server-first message `%N` stands for the client's nonce,
//! which is random per run, so inputs get past the nonce check to the key derivation. No
//! server-final may be accepted: the fuzzer does not know the password.

use libfuzzer_sys::fuzz_target;
use wire::scram::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramClient};

/// Iteration counts above this are skipped: the client runs PBKDF2 with whatever count the
/// server sends, and a huge one is slow by design, not a bug for the fuzzer to report.
const MAX_ITERATIONS: u32 = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let cb = if flags & 1 != 0 {
        ChannelBinding::TlsServerEndPoint(b"end point hash".to_vec())
    } else {
        ChannelBinding::None
    };
    let mut offered = vec![SCRAM_SHA_256.to_owned()];
    if flags & 2 != 0 {
        offered.insert(0, SCRAM_SHA_256_PLUS.to_owned());
    }
    let (first, last) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };

    let Ok(mut client) = ScramClient::new("pencil", cb, &offered) else {
        return;
    };
    let client_first = client.client_first();
    let (_, nonce) = client_first.split_once(",r=").expect("client-first ends with the nonce");
    let first = String::from_utf8_lossy(first).replace("%N", nonce);
    if first
        .split(',')
        .filter_map(|a| a.strip_prefix("i="))
        .any(|i| i.parse::<u32>().is_ok_and(|n| n > MAX_ITERATIONS))
    {
        return;
    }

    // Whether or not the server-first was accepted, no server-final may be: out of order
    // after a refusal, unverifiable after an acceptance.
    let _ = client.handle_server_first(first.as_bytes());
    assert!(client.handle_server_final(last).is_err(), "accepted a server that does not know the password");
});
