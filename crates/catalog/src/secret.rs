//! Secrets in the catalog. `Secret` is a string that prints as `***` everywhere (Debug,
//! Display) so it cannot slip into a log line or an error. `MasterKey` seals role passwords
//! with AES-256-GCM (ring) before they are stored; its key lives in a 0600 file beside the
//! data, never in the catalog.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::RngCore;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;

use crate::CatalogError;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

const KEY_LEN: usize = 32;

pub struct MasterKey {
    key: LessSafeKey,
    /// Derived from the master key, never the AES key itself: one key, one algorithm.
    mac: hmac::Key,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> MasterKey {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key is valid for AES-256");
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, bytes), b"berth request mac v1");
        MasterKey { key: LessSafeKey::new(unbound), mac: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()) }
    }

    /// HMAC-SHA-256 of `parts`, each length-prefixed so no two lists give the same input.
    /// A keyed hash of a request body that holds a password cannot be guessed at offline by
    /// whoever reads the catalog.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.mac);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// A fresh random key (tests, and the first start).
    pub fn generate() -> MasterKey {
        Self::from_bytes(&random_key())
    }

    /// Reads the hex key in `path`, or creates it (0600) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, CatalogError> {
        let fail = |message: String| CatalogError::MasterKey { path: path.to_owned(), message };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mode = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(fail(format!("mode {:o} lets others read it; chmod 600 it", mode & 0o777)));
                }
                let bytes = decode_hex(text.trim()).ok_or_else(|| fail("not 64 hex digits".into()))?;
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = random_key();
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| fail(e.to_string()))?;
                file.write_all(format!("{hex}\n").as_bytes()).map_err(|e| fail(e.to_string()))?;
                file.sync_all().map_err(|e| fail(e.to_string()))?;
                tracing::info!(path = %path.display(), "created the master key");
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// Encrypts `plaintext`, bound to `context` (e.g. the row id): nonce || ciphertext || tag.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut buf)
            .expect("AES-GCM sealing only fails for inputs above 64 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    /// Decrypts what `seal` made with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, CatalogError> {
        if sealed.len() < NONCE_LEN {
            return Err(CatalogError::Decrypt);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CatalogError::Decrypt)?;
        let mut buf = body.to_vec();
        let plain =
            self.key.open_in_place(nonce, Aad::from(context), &mut buf).map_err(|_| CatalogError::Decrypt)?;
        Ok(plain.to_vec())
    }

    pub fn seal_secret(&self, secret: &Secret, context: &str) -> Vec<u8> {
        self.seal(secret.expose().as_bytes(), context)
    }

    pub fn open_secret(&self, sealed: &[u8], context: &str) -> Result<Secret, CatalogError> {
        let bytes = self.open(sealed, context)?;
        String::from_utf8(bytes).map(Secret).map_err(|_| CatalogError::Decrypt)
    }
}

fn random_key() -> [u8; KEY_LEN] {
    let mut bytes = [0u8; KEY_LEN];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

fn decode_hex(s: &str) -> Option<[u8; KEY_LEN]> {
    if s.len() != KEY_LEN * 2 {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let key = MasterKey::generate();
        let sealed = key.seal_secret(&Secret::new("hunter2"), "role_1");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(key.open_secret(&sealed, "role_1").unwrap().expose(), "hunter2");
        assert!(key.open_secret(&sealed, "role_2").is_err(), "context is bound");
        assert!(MasterKey::generate().open_secret(&sealed, "role_1").is_err(), "other key");
        assert!(key.open(&sealed[..5], "role_1").is_err());
    }

    #[test]
    fn macs_depend_on_the_key_and_on_where_parts_split() {
        let bytes = [7u8; KEY_LEN];
        let key = MasterKey::from_bytes(&bytes);
        assert_eq!(key.mac(&[b"ab", b"c"]), MasterKey::from_bytes(&bytes).mac(&[b"ab", b"c"]));
        assert_ne!(key.mac(&[b"ab", b"c"]), key.mac(&[b"a", b"bc"]));
        assert_ne!(key.mac(&[b"ab", b"c"]), MasterKey::generate().mac(&[b"ab", b"c"]));
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(format!("{:?}", MasterKey::generate()), "MasterKey(***)");
    }

    #[test]
    fn master_key_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let sealed = MasterKey::load_or_create(&path).unwrap().seal(b"x", "c");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(MasterKey::load_or_create(&path).unwrap().open(&sealed, "c").unwrap(), b"x");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(MasterKey::load_or_create(&path).is_err(), "a readable key is refused");
    }
}
