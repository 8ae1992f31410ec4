//! Copying a data directory tree: regular files, directories with their modes, and
//! symlinks recreated as symlinks (never followed). `std::fs::copy` uses
//! `copy_file_range` on Linux, which filesystems that support it (Btrfs, XFS) turn into a
//! reflink, so copies are cheap there and plain copies elsewhere. This module never copies
//! from a directory a postmaster is writing to without the caller's say-so.

use std::fs;
use std::os::unix::fs as unix_fs;
use std::path::Path;

use crate::error::NodeError;

/// Top-level files of a data directory that belong to one running postmaster and must not
/// travel with a copy.
pub(crate) const RUNTIME_FILES: [&str; 2] = ["postmaster.pid", "postmaster.opts"];

/// Copies the tree at `src` into `dst` (which must not exist), leaving out the top-level
/// entries named in `skip`.
pub(crate) fn copy_tree(src: &Path, dst: &Path, skip: &[&str]) -> Result<(), NodeError> {
    copy_dir(src, dst, skip)
}

fn copy_dir(src: &Path, dst: &Path, skip: &[&str]) -> Result<(), NodeError> {
    let meta = fs::metadata(src).map_err(NodeError::io(src))?;
    fs::create_dir(dst).map_err(NodeError::io(dst))?;
    for entry in fs::read_dir(src).map_err(NodeError::io(src))? {
        let entry = entry.map_err(NodeError::io(src))?;
        if skip.iter().any(|name| entry.file_name() == *name) {
            continue;
        }
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type().map_err(NodeError::io(&from))?;
        if kind.is_symlink() {
            let target = fs::read_link(&from).map_err(NodeError::io(&from))?;
            unix_fs::symlink(target, &to).map_err(NodeError::io(&to))?;
        } else if kind.is_dir() {
            copy_dir(&from, &to, &[])?;
        } else {
            // Also copies the permission bits.
            fs::copy(&from, &to).map_err(NodeError::io(&from))?;
        }
    }
    // Set the mode last, so a read-only source directory can still be filled.
    fs::set_permissions(dst, meta.permissions()).map_err(NodeError::io(dst))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn copies_tree_with_modes_and_symlinks_and_skips() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("base/1")).expect("mkdir");
        fs::write(src.join("base/1/1259"), b"heap").expect("write");
        fs::write(src.join("postmaster.pid"), b"1\n").expect("write");
        unix_fs::symlink("base/1", src.join("link")).expect("symlink");
        fs::set_permissions(&src, fs::Permissions::from_mode(0o700)).expect("chmod");

        let dst = tmp.path().join("dst");
        copy_tree(&src, &dst, &RUNTIME_FILES).expect("copy");

        assert_eq!(fs::read(dst.join("base/1/1259")).expect("read"), b"heap");
        assert!(!dst.join("postmaster.pid").exists());
        assert_eq!(fs::read_link(dst.join("link")).expect("readlink"), Path::new("base/1"));
        let mode = fs::metadata(&dst).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn refuses_existing_destination() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir(&src).expect("mkdir");
        assert!(copy_tree(&src, tmp.path(), &[]).is_err());
    }
}
