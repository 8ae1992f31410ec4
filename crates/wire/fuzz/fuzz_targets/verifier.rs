#![no_main]
//! `pg_authid` verifier text: parsing never panics, and what parses prints back to text that
//! parses to the same verifier.

use libfuzzer_sys::fuzz_target;
use wire::scram::ScramVerifier;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = ScramVerifier::parse(text) {
        assert!(v.iterations > 0);
        let again = ScramVerifier::parse(&v.to_pg_authid()).expect("printed verifier parses");
        assert!(again == v, "printed verifier parses to a different one");
    }
});
