//! The modes of what Berth writes under its data directory: files 0600 and directories
//! 0700, open to no one else. The one exception is a directory PostgreSQL must pass through
//! when Berth runs as root (the data directory, `instances/`, each instance's root): it
//! stays root's, gets the group all instance users share and mode 0710, so they may enter
//! it (never list or read it) on the way to the directories each owns, and others may not
//! even enter. Nothing here may make anything readable by others.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::NodeError;
use crate::user::instance_gid;

const PRIVATE_FILE: u32 = 0o600;
const PRIVATE_DIR: u32 = 0o700;
/// Owner all, the instance users' group enter only, others nothing.
const PASSABLE_DIR: u32 = 0o710;

/// Creates `dir` (missing parents 0700) so that besides us only instance users may enter
/// it: 0700 when PostgreSQL runs as us; 0710 with the group instance users share
/// ([`crate::INSTANCE_GROUP`]) when we are root. Also tightens a directory an earlier version
/// left open (0755) or gave the `postgres` group.
pub fn make_passable_dir(dir: &Path) -> Result<(), NodeError> {
    DirBuilder::new().recursive(true).mode(PRIVATE_DIR).create(dir).map_err(NodeError::io(dir))?;
    if !nix::unistd::geteuid().is_root() {
        return fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR)).map_err(NodeError::io(dir));
    }
    let gid = instance_gid()?;
    std::os::unix::fs::lchown(dir, None, Some(gid)).map_err(NodeError::io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PASSABLE_DIR)).map_err(NodeError::io(dir))
}

/// Writes `contents` to `path` (created or truncated) as a 0600 file.
pub(crate) fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), NodeError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(path)
        .map_err(NodeError::io(path))?;
    tighten(&file, path)?;
    file.write_all(contents.as_ref()).map_err(NodeError::io(path))
}

/// Opens `path` for appending, creating it 0600; a file an earlier version made 0644 is
/// made 0600 too (a PostgreSQL log holds tenants' SQL).
pub(crate) fn append_private(path: &Path) -> Result<File, NodeError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(PRIVATE_FILE)
        .open(path)
        .map_err(NodeError::io(path))?;
    tighten(&file, path)?;
    Ok(file)
}

/// `mode` only applies when a file is created; one that existed keeps its own.
fn tighten(file: &File, path: &Path) -> Result<(), NodeError> {
    let mode = file.metadata().map_err(NodeError::io(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE)).map_err(NodeError::io(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn files_are_private_even_when_they_were_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, "old").expect("write");
        fs::write(&b, "old").expect("write");
        fs::set_permissions(&a, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::set_permissions(&b, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&a, "new").expect("write_private");
        append_private(&b).expect("append_private");
        write_private(&dir.path().join("c"), "new").expect("write_private");
        append_private(&dir.path().join("d")).expect("append_private");
        for f in ["a", "b", "c", "d"] {
            assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
        }
        assert_eq!(fs::read_to_string(&a).expect("read"), "new");
    }

    #[test]
    fn passable_dirs_let_in_the_instance_user_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("x/y");
        make_passable_dir(&nested).expect("make_passable_dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        make_passable_dir(dir.path()).expect("tighten");
        let gid = instance_gid().expect("gid");
        for d in [dir.path(), nested.as_path()] {
            let meta = fs::metadata(d).expect("stat");
            if nix::unistd::geteuid().is_root() {
                assert_eq!((mode(d), meta.gid()), (0o710, gid), "{d:?}");
            } else {
                assert_eq!(mode(d), 0o700, "{d:?}");
            }
        }
        assert_eq!(mode(&dir.path().join("x")), 0o700, "a missing parent is private");
    }
}
