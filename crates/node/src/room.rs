//! Free space for a plain copy of an instance. The copy writes to the filesystem the running
//! instances live on, and PostgreSQL stops with a PANIC (every session dropped) when it
//! cannot write its WAL; so a copy never takes the last [`RESERVE`] bytes: it is refused
//! before it starts, and again before each file, should something else fill the disk
//! meanwhile. This module only measures; it never writes.

use std::path::Path;

use crate::error::NodeError;

/// What a copy leaves free on its filesystem: four WAL segments of the default 16 MiB.
pub const RESERVE: u64 = 64 << 20;

/// Bytes an unprivileged user may still write on the filesystem holding `dir`: instances
/// never run as root, so the blocks ext4 keeps for root are no room for them.
fn available(dir: &Path) -> Result<u64, NodeError> {
    let stat = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| NodeError::Io { path: dir.to_owned(), source: e.into() })?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// `Err(NoSpace)` when writing `needed` more bytes into `dir` would leave less than
/// [`RESERVE`] free.
pub fn ensure(dir: &Path, needed: u64) -> Result<(), NodeError> {
    let available = available(dir)?;
    if available < needed.saturating_add(RESERVE) {
        return Err(NodeError::NoSpace { path: dir.to_owned(), needed, available, reserve: RESERVE });
    }
    Ok(())
}
