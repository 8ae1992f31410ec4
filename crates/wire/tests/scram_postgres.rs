//! SCRAM-SHA-256 verifiers made by a real PostgreSQL, reproduced byte for byte, and full
//! client ↔ server exchanges against them carried through the wire codecs as the proxy
//! carries them.
//!
//! The fixtures were made by PostgreSQL 15.18 (Debian 15.18-0+deb12u1) with
//! `SET password_encryption = 'scram-sha-256'; CREATE ROLE fx_... PASSWORD E'...';` and read
//! back with `SELECT rolname, rolpassword FROM pg_authid`. The passwords cover plain ASCII,
//! non-ASCII that SASLprep keeps, characters SASLprep maps (U+00AA to `a`, U+00A0 to a space,
//! U+00AD to nothing), and a prohibited character (U+E000) that makes PostgreSQL fall back to
//! the raw UTF-8 bytes.

use bytes::BytesMut;
use sha2::{Digest, Sha256};
use wire::backend::{Authentication, BackendMessage};
use wire::frontend::{FrontendMessage, SaslInitialResponse};
use wire::scram::{ChannelBinding, ScramClient, ScramError, ScramServer, ScramVerifier};
use wire::{Frame, parse_frame};

struct Fixture {
    role: &'static str,
    password: &'static str,
    rolpassword: &'static str,
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        role: "fx_ascii",
        password: "secret",
        rolpassword: "SCRAM-SHA-256$4096:WP3WxxEeM/aCAsSEPzUUUg==$UNSXZ5N/NizDe33XBZKlxgCSmYU9dnMHPCLa2/INcJ8=:RtBqOPaOdOPFAq4nrysp7mny+rk1hjBUhmWVBl5Bs50=",
    },
    Fixture {
        role: "fx_umlaut",
        password: "p\u{e4}ssw\u{f6}rd",
        rolpassword: "SCRAM-SHA-256$4096:SjM2oD5wVSK93bUpNManpw==$aD6LMSTOaP88T03x+TO/eNX/qSn5z9ECaJbUMt0uLh0=:wzRK+tL5m/H02QO6V7sMaAhjidRggPWdbPwZCvpSptY=",
    },
    Fixture {
        role: "fx_ordf",
        password: "\u{aa}bc",
        rolpassword: "SCRAM-SHA-256$4096:OmK57BY2fESn/4JsKkBD9g==$wMx4arCo4MER7I0yUVoySD5HBd16RZNESJD+CnrPJOw=:ez1vgSM/0ELD0k0W2cUjZCu8sc6HnbstCfBkzY8coK8=",
    },
    Fixture {
        role: "fx_nbsp",
        password: "pass\u{a0}word",
        rolpassword: "SCRAM-SHA-256$4096:bqQLV/fZWPrEfEPPobe1FQ==$Wwgjvnc8QWBKged5SjQdjgxZXmvwHPGYTvgOeNdP+iw=:gI1rAE1JcWUXyK8svMIkzwzsIY5gcCOC5NYaIVkPGQc=",
    },
    Fixture {
        role: "fx_shy_a",
        password: "a\u{ad}",
        rolpassword: "SCRAM-SHA-256$4096:++jduv/cbejhkLktlmliSA==$i6hZx3L6f3WoFvSM8Xs7NIoYeI5vSnQHsD1qVCJoalY=:REXyAs2I0XZw38NsCE9ixANddSV5frI63yzFbc802vw=",
    },
    Fixture {
        role: "fx_priv",
        password: "p\u{e000}w",
        rolpassword: "SCRAM-SHA-256$4096:7s0pLJQPMwEtcMM8WTzlAA==$kldK4mY2F5FKJTx7iCcjvfxzXK+1CFAG/cp7YSESflU=:zLx5FsXmmC6BJ7FkoQw0xe+wWdYDbu6Cq83nBX2IYmQ=",
    },
];

/// `CREATE ROLE fx_shy PASSWORD E'\u00ad'`: SASLprep maps the only character to nothing,
/// PostgreSQL refuses the empty result and hashes the raw bytes `C2 AD` instead.
const SOFT_HYPHEN_ONLY: Fixture = Fixture {
    role: "fx_shy",
    password: "\u{ad}",
    rolpassword: "SCRAM-SHA-256$4096:UTodBiiLLHQys0q4/yS4Yw==$kgRwAN9U9LAiJjA5yw7ALzIx7ogKL6a00lTrhIKtv7Q=:ICLNggkoa1XR387ETRNvu2msrwL7T+JSKrq1yb3Zydw=",
};

fn parsed(f: &Fixture) -> ScramVerifier {
    ScramVerifier::parse(f.rolpassword)
        .unwrap_or_else(|e| panic!("{}: PostgreSQL's verifier does not parse: {e}", f.role))
}

fn assert_derives(f: &Fixture) {
    let v = parsed(f);
    assert_eq!(v.iterations, 4096, "{}", f.role);
    assert_eq!(v.salt.len(), 16, "{}", f.role);
    assert_eq!(v.to_pg_authid(), f.rolpassword, "{}", f.role);
    let derived = ScramVerifier::derive(f.password, &v.salt, v.iterations);
    // Compared as text so a failure shows which key differs without a custom Debug.
    assert_eq!(derived.to_pg_authid(), f.rolpassword, "{}", f.role);
    assert!(derived == v, "{}", f.role);
}

/// Encodes with `encode`, reads one frame back as the peer would, and checks nothing is
/// left over.
fn over_the_wire(encode: impl FnOnce(&mut BytesMut)) -> Frame {
    let mut buf = BytesMut::new();
    encode(&mut buf);
    let frame = parse_frame(&mut buf, 1 << 16).expect("within the limit").expect("a whole frame");
    assert!(buf.is_empty());
    frame
}

fn sasl_data(frame: &Frame) -> Vec<u8> {
    match BackendMessage::decode(frame).expect("a valid backend message") {
        BackendMessage::Authentication(Authentication::SaslContinue(d) | Authentication::SaslFinal(d)) => {
            d.to_vec()
        }
        other => panic!("not a SASL message: {other:?}"),
    }
}

/// A whole SCRAM exchange, each message encoded and decoded by the wire codecs on its way.
/// Returns the ClientKey the server recovered.
fn exchange(verifier: &ScramVerifier, password: &str, cb: ChannelBinding) -> Result<[u8; 32], ScramError> {
    let mut server = ScramServer::new(verifier.clone(), cb.clone());
    let mechanisms = server.mechanisms();
    let offer = over_the_wire(|b| {
        BackendMessage::Authentication(Authentication::Sasl { mechanisms: mechanisms.clone() }).encode(b)
    });
    let Ok(BackendMessage::Authentication(Authentication::Sasl { mechanisms: offered })) =
        BackendMessage::decode(&offer)
    else {
        panic!("AuthenticationSASL did not survive the wire");
    };
    let mut client = ScramClient::new(password, cb, &offered)?;

    let initial = over_the_wire(|b| {
        SaslInitialResponse {
            mechanism: client.mechanism().to_owned(),
            data: Some(client.client_first().into_bytes().into()),
        }
        .encode(b)
    });
    let initial = SaslInitialResponse::decode(&initial.body).expect("valid SASLInitialResponse");
    let client_first = initial.data.expect("client-first data");
    let server_first = server.handle_client_first(&initial.mechanism, &client_first)?;

    let cont = over_the_wire(|b| {
        BackendMessage::Authentication(Authentication::SaslContinue(server_first.into())).encode(b)
    });
    let client_final = client.handle_server_first(&sasl_data(&cont))?;

    let response = over_the_wire(|b| FrontendMessage::Password(client_final.into_bytes().into()).encode(b));
    let Ok(FrontendMessage::Password(client_final)) = FrontendMessage::decode(&response) else {
        panic!("SASLResponse did not survive the wire");
    };
    let server_final = server.handle_client_final(&client_final)?;

    let fin = over_the_wire(|b| {
        BackendMessage::Authentication(Authentication::SaslFinal(server_final.into())).encode(b)
    });
    client.handle_server_final(&sasl_data(&fin))?;

    assert_eq!(server.server_key(), Some(verifier.server_key));
    Ok(server.client_key().expect("a successful exchange recovers the ClientKey"))
}

#[test]
fn derive_reproduces_postgresql_verifiers() {
    for f in FIXTURES {
        assert_derives(f);
    }
}

/// SASLprep equivalents of a password derive the same verifier, as they log in to
/// PostgreSQL: NFKC maps U+00AA to `a` and composes a decomposed umlaut, U+00A0 becomes a
/// space, U+00AD disappears. Without SASLprep none of these would match.
#[test]
fn saslprep_equivalents_match_postgresql_verifiers() {
    for (role, equivalent) in [
        ("fx_ordf", "abc"),
        ("fx_umlaut", "pa\u{308}sswo\u{308}rd"),
        ("fx_nbsp", "pass word"),
        ("fx_shy_a", "a"),
    ] {
        let f = FIXTURES.iter().find(|f| f.role == role).expect("fixture exists");
        let v = parsed(f);
        assert!(
            ScramVerifier::derive(equivalent, &v.salt, v.iterations) == v,
            "{role}: {equivalent:?} should be equivalent to {:?}",
            f.password
        );
    }
}

/// Near misses must not match: the check above would pass for a derive that ignored the
/// password.
#[test]
fn different_passwords_do_not_match_postgresql_verifiers() {
    for (role, other) in [
        ("fx_ascii", "Secret"),
        ("fx_umlaut", "passwoerd"),
        ("fx_umlaut", "password"),
        ("fx_ordf", "Abc"),
        ("fx_nbsp", "password"),
        ("fx_priv", "pw"),
    ] {
        let f = FIXTURES.iter().find(|f| f.role == role).expect("fixture exists");
        let v = parsed(f);
        assert!(ScramVerifier::derive(other, &v.salt, v.iterations) != v, "{role}: {other:?} matched");
    }
}

#[test]
fn exchange_succeeds_against_postgresql_verifiers() {
    for f in FIXTURES {
        let v = parsed(f);
        let client_key =
            exchange(&v, f.password, ChannelBinding::None).unwrap_or_else(|e| panic!("{}: {e}", f.role));
        // The recovered ClientKey is the one the verifier's StoredKey was made from.
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        assert_eq!(stored_key, v.stored_key, "{}", f.role);
    }
}

#[test]
fn channel_bound_exchange_succeeds_against_postgresql_verifiers() {
    let cb = ChannelBinding::tls_server_end_point(b"certificate DER");
    for f in FIXTURES {
        exchange(&parsed(f), f.password, cb.clone()).unwrap_or_else(|e| panic!("{}: {e}", f.role));
    }
}

#[test]
fn exchange_with_wrong_password_fails_with_invalid_proof() {
    for f in FIXTURES {
        let v = parsed(f);
        for wrong in ["", "Secret", "secret ", "p\u{e4}sswörd!", "\u{aa}bd"] {
            if wrong == f.password {
                continue;
            }
            assert_eq!(
                exchange(&v, wrong, ChannelBinding::None),
                Err(ScramError::InvalidProof),
                "{}: {wrong:?}",
                f.role
            );
        }
    }
}

/// PostgreSQL's `pg_saslprep` returns `SASLPREP_PROHIBITED` when mapping leaves nothing
/// (`if (input_size == 0) goto prohibited;` in `src/common/saslprep.c`), and
/// `scram_build_secret`/`scram_verify_plain_password` then use the password's raw bytes.
/// `crypto::normalize_password` takes `stringprep::saslprep`'s `Ok("")` instead and derives
/// from the empty password, so such a user cannot log in through Berth.
#[test]
fn password_mapped_to_nothing_matches_postgresql() {
    assert_derives(&SOFT_HYPHEN_ONLY);
    let v = parsed(&SOFT_HYPHEN_ONLY);
    exchange(&v, SOFT_HYPHEN_ONLY.password, ChannelBinding::None).expect("the right password logs in");
}
