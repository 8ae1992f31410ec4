//! Parsing of SCRAM attribute lists (`a=...,b=...`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::ScramError;

/// Splits `msg` into `name=value` attributes; anything else is malformed. Callers check the
/// order of the attributes they need; trailing extensions are returned too.
pub(crate) fn split(msg: &str) -> Result<Vec<(u8, &str)>, ScramError> {
    msg.split(',')
        .map(|part| {
            let b = part.as_bytes();
            if b.len() >= 2 && b[1] == b'=' && b[0].is_ascii_alphabetic() {
                Ok((b[0], &part[2..]))
            } else {
                Err(ScramError::Malformed)
            }
        })
        .collect()
}

pub(crate) fn expect<'a>(attrs: &[(u8, &'a str)], i: usize, name: u8) -> Result<&'a str, ScramError> {
    match attrs.get(i) {
        Some((n, v)) if *n == name => Ok(v),
        _ => Err(ScramError::Malformed),
    }
}

pub(crate) fn b64(v: &str) -> Result<Vec<u8>, ScramError> {
    STANDARD.decode(v).map_err(|_| ScramError::Malformed)
}

pub(crate) fn to_b64(v: &[u8]) -> String {
    STANDARD.encode(v)
}

/// A nonce is printable ASCII without commas.
pub(crate) fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|c| (0x21..=0x7e).contains(&c) && c != b',')
}
