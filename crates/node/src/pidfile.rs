//! Reading `postmaster.pid`, the lock file the postmaster keeps in its data directory.
//! Since PostgreSQL 10 its 8th line is the postmaster's status, which reads `ready` once
//! it accepts connections. This module only reads the file; the postmaster owns it.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use crate::error::NodeError;

/// Name of the lock file inside the data directory.
pub(crate) const PID_FILE: &str = "postmaster.pid";

/// The parts of `postmaster.pid` Berth uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PidFile {
    pub pid: u32,
    /// Line 8, e.g. `starting`, `ready`, `stopping`; `None` while not yet written.
    pub status: Option<String>,
}

impl PidFile {
    /// Reads the file; `None` when it does not exist or is still being written.
    pub fn read(data_dir: &Path) -> Result<Option<Self>, NodeError> {
        let path = data_dir.join(PID_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::Io { path, source: e }),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let lines: Vec<&str> = text.lines().collect();
        let pid = lines.first()?.trim().parse().ok()?;
        let status = lines.get(7).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        Some(PidFile { pid, status })
    }

    /// True once the postmaster accepts connections.
    pub fn is_ready(&self) -> bool {
        self.status.as_deref() == Some("ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: &str = "4242\n/tmp/x/data\n1700000000\n5432\n/tmp/x/socket\n\n\
                         123456     65539\nready   \n";

    #[test]
    fn parses_ready_file() {
        let file = PidFile::parse(READY).expect("parse");
        assert_eq!(file.pid, 4242);
        assert!(file.is_ready());
    }

    #[test]
    fn starting_is_not_ready() {
        let file = PidFile::parse(&READY.replace("ready", "starting")).expect("parse");
        assert!(!file.is_ready());
    }

    #[test]
    fn partial_file_is_not_ready() {
        let file = PidFile::parse("4242\n/tmp/x/data\n").expect("parse");
        assert_eq!(file.status, None);
        assert!(!file.is_ready());
        assert_eq!(PidFile::parse(""), None);
        assert_eq!(PidFile::parse("garbage\n"), None);
    }
}
