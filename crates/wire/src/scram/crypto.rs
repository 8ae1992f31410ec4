//! The SCRAM key derivations over SHA-256.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub(crate) type Key = [u8; 32];

pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> Key {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

pub(crate) fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

pub(crate) fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Key {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// PostgreSQL applies SASLprep to the password and falls back to the raw bytes when the
/// password is not valid UTF-8 or SASLprep rejects it.
pub(crate) fn normalize_password(password: &str) -> Vec<u8> {
    if password.is_ascii() {
        return password.as_bytes().to_vec();
    }
    // An empty result counts as prohibited, as in PostgreSQL's pg_saslprep: a password made
    // only of characters mapped to nothing must not become the empty password.
    match stringprep::saslprep(password) {
        Ok(p) if !p.is_empty() => p.into_owned().into_bytes(),
        _ => password.as_bytes().to_vec(),
    }
}

pub(crate) fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = a[i] ^ b[i];
    }
    out
}

pub(crate) fn nonce() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut raw = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::STANDARD.encode(raw)
}
