//! Copying a stopped data directory tree (a template): regular files and directories with
//! their modes (masked with [`COPY_MODE_MASK`]: no setuid, setgid or sticky bit), read through [`crate::tree`], so nothing is followed: a symbolic link, a
//! special file or a file of another owner anywhere in the source is refused, named.
//! `std::io::copy` between files uses `copy_file_range` on Linux, which filesystems that
//! support it (Btrfs, XFS) turn into a reflink, so copies are cheap there and plain copies
//! elsewhere. This module never copies from a directory a postmaster is writing to without
//! the caller's say-so.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::NodeError;
use crate::tree::{COPY_MODE_MASK, Kind, Tree};

/// Top-level files of a data directory that belong to one running postmaster and must not
/// travel with a copy.
pub(crate) const RUNTIME_FILES: [&str; 2] = ["postmaster.pid", "postmaster.opts"];

/// Copies the tree at `src` into `dst` (which must not exist), leaving out the top-level
/// entries named in `skip`.
pub(crate) fn copy_tree(src: &Path, dst: &Path, skip: &[&str]) -> Result<(), NodeError> {
    let tree = Tree::open(src)?;
    let mode = fs::symlink_metadata(src).map_err(NodeError::io(src))?.permissions().mode() & COPY_MODE_MASK;
    fs::DirBuilder::new().mode(0o700).create(dst).map_err(NodeError::io(dst))?;
    copy_dir(&tree, src, Path::new(""), dst, skip)?;
    // Set the mode last, so a read-only source directory can still be filled.
    fs::set_permissions(dst, fs::Permissions::from_mode(mode)).map_err(NodeError::io(dst))
}

fn copy_dir(tree: &Tree, src: &Path, rel: &Path, dst: &Path, skip: &[&str]) -> Result<(), NodeError> {
    let shown = src.join(rel);
    let Some(entries) = tree.list(rel, &shown)? else {
        return Err(NodeError::Io { path: shown, source: std::io::ErrorKind::NotFound.into() });
    };
    for entry in entries {
        if skip.iter().any(|name| entry.name == *name) {
            continue;
        }
        let (child, to) = (rel.join(&entry.name), dst.join(&entry.name));
        let from = src.join(&child);
        match entry.kind {
            Kind::Dir => {
                fs::DirBuilder::new().mode(0o700).create(&to).map_err(NodeError::io(&to))?;
                copy_dir(tree, src, &child, &to, &[])?;
                fs::set_permissions(&to, fs::Permissions::from_mode(entry.mode))
                    .map_err(NodeError::io(&to))?;
            }
            Kind::File => {
                let Some(mut input) = tree.open_file(&child, &from)? else {
                    return Err(NodeError::Io { path: from, source: std::io::ErrorKind::NotFound.into() });
                };
                let mut output = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(entry.mode)
                    .open(&to)
                    .map_err(NodeError::io(&to))?;
                std::io::copy(&mut input, &mut output).map_err(NodeError::io(&to))?;
            }
            Kind::Symlink => return Err(NodeError::UnsafeEntry { path: from, what: "a symbolic link" }),
            Kind::Other => return Err(NodeError::UnsafeEntry { path: from, what: "a special file" }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs as unix_fs;

    use super::*;

    #[test]
    fn copies_tree_with_modes_and_skips() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("base/1")).expect("mkdir");
        fs::write(src.join("base/1/1259"), b"heap").expect("write");
        fs::write(src.join("postmaster.pid"), b"1\n").expect("write");
        fs::set_permissions(src.join("base"), fs::Permissions::from_mode(0o750)).expect("chmod");
        fs::set_permissions(&src, fs::Permissions::from_mode(0o700)).expect("chmod");

        let dst = tmp.path().join("dst");
        copy_tree(&src, &dst, &RUNTIME_FILES).expect("copy");

        assert_eq!(fs::read(dst.join("base/1/1259")).expect("read"), b"heap");
        assert!(!dst.join("postmaster.pid").exists());
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!((mode(&dst), mode(&dst.join("base"))), (0o700, 0o750));
    }

    #[test]
    fn refuses_links_and_never_reads_through_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let secret = tmp.path().join("secret");
        fs::write(&secret, b"not-for-copies").expect("write");
        for (i, plant) in ["base/1/1259", "base/2"].iter().enumerate() {
            let src = tmp.path().join(format!("src{i}"));
            fs::create_dir_all(src.join("base/1")).expect("mkdir");
            let target = if i == 0 { secret.clone() } else { tmp.path().to_owned() };
            unix_fs::symlink(&target, src.join(plant)).expect("symlink");
            let dst = tmp.path().join(format!("dst{i}"));
            let err = copy_tree(&src, &dst, &[]).expect_err("copied a link");
            assert!(matches!(err, NodeError::UnsafeEntry { .. }), "{plant}: {err}");
            assert!(!tree_holds(&dst, b"not-for-copies"), "{plant}: the secret was copied");
        }
    }

    fn tree_holds(dir: &Path, needle: &[u8]) -> bool {
        let Ok(entries) = fs::read_dir(dir) else { return false };
        entries.flatten().any(|e| {
            let meta = fs::symlink_metadata(e.path()).expect("stat");
            if meta.is_dir() {
                tree_holds(&e.path(), needle)
            } else {
                meta.is_file()
                    && fs::read(e.path()).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            }
        })
    }

    #[test]
    fn special_mode_bits_and_others_access_are_not_copied() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("base")).expect("mkdir");
        fs::write(src.join("base/f"), b"x").expect("write");
        fs::write(src.join("plain"), b"x").expect("write");
        fs::set_permissions(src.join("base/f"), fs::Permissions::from_mode(0o4755)).expect("chmod");
        fs::set_permissions(src.join("plain"), fs::Permissions::from_mode(0o640)).expect("chmod");
        fs::set_permissions(src.join("base"), fs::Permissions::from_mode(0o3777)).expect("chmod");
        fs::set_permissions(&src, fs::Permissions::from_mode(0o2750)).expect("chmod");

        let dst = tmp.path().join("dst");
        copy_tree(&src, &dst, &[]).expect("copy");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & COPY_MODE_MASK;
        assert_eq!(
            [mode(&dst), mode(&dst.join("base")), mode(&dst.join("base/f")), mode(&dst.join("plain"))],
            [0o750, 0o750, 0o750, 0o640]
        );
    }

    #[test]
    fn refuses_existing_destination() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir(&src).expect("mkdir");
        assert!(copy_tree(&src, tmp.path(), &[]).is_err());
    }
}
