//! The key of the fake SCRAM salts that unknown users, and users a database does not route,
//! are shown before login (`wire::scram::ScramVerifier::fake`). It must outlive restarts, or
//! a fake salt would change at each one while a real salt does not; so whoever composes the
//! proxy keeps it in a file of its data directory (`berth up`: `scram-fake.key`). It never
//! appears in logs, errors or `Debug` output.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

const KEY_LEN: usize = 32;

#[derive(Clone, PartialEq, Eq)]
pub struct FakeScramKey([u8; KEY_LEN]);

impl std::fmt::Debug for FakeScramKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeScramKey(***)")
    }
}

impl Default for FakeScramKey {
    /// A random key for this process only: fake salts change when it restarts.
    fn default() -> Self {
        Self::random()
    }
}

impl FakeScramKey {
    pub fn random() -> Self {
        FakeScramKey(rand::random())
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        FakeScramKey(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Reads the key in `path` (64 hex digits), or creates the file (0600) when it does not
    /// exist. A file others may read is refused, as the master key's is. Two processes
    /// creating it at once end up with the same key: the file appears whole or not at all.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        let bad = |why: String| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {why}", path.display()))
        };
        loop {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let mode = std::fs::metadata(path)?.permissions().mode();
                    if mode & 0o077 != 0 {
                        return Err(bad(format!(
                            "mode {:o} lets others read it; chmod 600 it",
                            mode & 0o777
                        )));
                    }
                    return decode_hex(text.trim())
                        .map(FakeScramKey)
                        .ok_or_else(|| bad(format!("not {} hex digits", 2 * KEY_LEN)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let key = Self::random();
                    // Written aside, then linked into place: a link fails if the name exists,
                    // so a concurrent creator's key wins and is read on the next turn.
                    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
                    let _ = std::fs::remove_file(&tmp);
                    let mut file =
                        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
                    let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
                    file.write_all(format!("{hex}\n").as_bytes())?;
                    file.sync_all()?;
                    let linked = std::fs::hard_link(&tmp, path);
                    let _ = std::fs::remove_file(&tmp);
                    match linked {
                        Ok(()) => {
                            tracing::info!(path = %path.display(), "created the fake SCRAM salt key");
                            return Ok(key);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn decode_hex(s: &str) -> Option<[u8; KEY_LEN]> {
    if s.len() != 2 * KEY_LEN || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_private_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scram-fake.key");
        let key = FakeScramKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(FakeScramKey::load_or_create(&path).unwrap(), key);
        assert_ne!(FakeScramKey::random(), key);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        assert_eq!(format!("{key:?}"), "FakeScramKey(***)");
    }

    #[test]
    fn a_readable_or_garbled_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scram-fake.key");
        std::fs::write(&path, "00".repeat(KEY_LEN)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = FakeScramKey::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(FakeScramKey::load_or_create(&path).unwrap(), FakeScramKey::from_bytes([0; KEY_LEN]));
        std::fs::write(&path, "not hex").unwrap();
        let e = FakeScramKey::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("hex digits") && !e.to_string().contains("not hex"), "{e}");
    }
}
