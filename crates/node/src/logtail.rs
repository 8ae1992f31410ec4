//! The last lines of an instance's log, for error messages about a failed start. It reads
//! only the end of the file, so a large log never costs more than a small read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of the file end to read at most.
const MAX_BYTES: u64 = 16 * 1024;

/// The last `lines` lines of the file at `path` that were written after byte `from`;
/// an explanatory placeholder when it cannot be read.
pub(crate) fn tail(path: &Path, from: u64, lines: usize) -> String {
    match read_end(path, from) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

fn read_end(path: &Path, from: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = from.max(len.saturating_sub(MAX_BYTES)).min(len);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_last_lines_after_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "old\na\nb\nc\n").expect("write");
        assert_eq!(tail(&path, 0, 2), "b\nc");
        assert_eq!(tail(&path, 4, 10), "a\nb\nc");
        assert!(tail(&dir.path().join("missing"), 0, 5).starts_with("(could not read"));
    }
}
