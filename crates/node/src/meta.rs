//! What Berth remembers about an instance beyond PostgreSQL's own files: today only the
//! bootstrap superuser's name. It lives in `berth.instance` inside the data directory, so
//! every copy of the data directory (templates, branches) carries it along. Nothing secret
//! may ever be stored here.

use std::fs;
use std::path::Path;

use crate::error::NodeError;

/// Name of the metadata file inside the data directory.
pub(crate) const META_FILE: &str = "berth.instance";

/// The superuser assumed for a data directory Berth did not initialise.
pub(crate) const DEFAULT_SUPERUSER: &str = "postgres";

/// Berth's notes about one data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub superuser: String,
}

impl Meta {
    /// Writes `data_dir/berth.instance`.
    pub fn write(&self, data_dir: &Path) -> Result<(), NodeError> {
        let path = data_dir.join(META_FILE);
        crate::private::write_private(&path, format!("superuser={}\n", self.superuser))
    }

    /// Reads `data_dir/berth.instance`; a missing file means defaults.
    pub fn read(data_dir: &Path) -> Result<Self, NodeError> {
        let path = data_dir.join(META_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::parse("")),
            Err(e) => Err(NodeError::Io { path, source: e }),
        }
    }

    fn parse(text: &str) -> Self {
        let superuser = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .find(|(key, _)| key.trim() == "superuser")
            .map(|(_, value)| value.trim().to_owned())
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| DEFAULT_SUPERUSER.to_owned());
        Meta { superuser }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Meta { superuser: "admin".to_owned() };
        meta.write(dir.path()).expect("write");
        assert_eq!(Meta::read(dir.path()).expect("read"), meta);
    }

    #[test]
    fn missing_file_means_default_superuser() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Meta::read(dir.path()).expect("read").superuser, "postgres");
    }
}
