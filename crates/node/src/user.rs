//! The OS user PostgreSQL runs as. `initdb` and `postgres` refuse to run as root, so when
//! Berth is root they run as the `postgres` user and everything they touch is chowned to
//! it; otherwise they run as the current user and nothing is switched or chowned. This
//! module never grants anything beyond that one user switch.

use std::fs;
use std::os::unix::fs as unix_fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Uid, User, getegid, geteuid};

use crate::error::NodeError;

/// The OS user instances run as when Berth itself runs as root.
pub const INSTANCE_OS_USER: &str = "postgres";

/// Who PostgreSQL processes run as, and whether that means switching user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceUser {
    /// Numeric user id.
    pub uid: u32,
    /// Numeric primary group id.
    pub gid: u32,
    /// True when we are root and must switch to `uid`/`gid` (and chown to them).
    pub switch: bool,
}

impl InstanceUser {
    /// The `postgres` user when we are root, else the current user.
    pub fn current() -> Result<Self, NodeError> {
        if !geteuid().is_root() {
            return Ok(InstanceUser { uid: geteuid().as_raw(), gid: getegid().as_raw(), switch: false });
        }
        let user = User::from_name(INSTANCE_OS_USER)
            .map_err(|source| NodeError::UserLookup { name: INSTANCE_OS_USER.to_owned(), source })?
            .ok_or_else(|| NodeError::NoInstanceUser { name: INSTANCE_OS_USER.to_owned() })?;
        Ok(InstanceUser { uid: user.uid.as_raw(), gid: user.gid.as_raw(), switch: true })
    }

    /// Makes `cmd` run as this user (a no-op unless switching).
    pub fn apply(&self, cmd: &mut Command) {
        if self.switch {
            // std drops supplementary groups when root sets a uid without explicit groups.
            cmd.uid(self.uid).gid(self.gid);
        }
    }

    /// Recursively chowns `path` to this user without following symlinks (a no-op unless
    /// switching: an unprivileged user already owns what it creates).
    pub fn chown_recursive(&self, path: &Path) -> Result<(), NodeError> {
        if !self.switch {
            return Ok(());
        }
        chown_tree(path, Uid::from_raw(self.uid), Gid::from_raw(self.gid))
    }
}

/// Sets `cmd` to run as the instance user (the `postgres` user when we are root).
pub fn run_as_instance_user(cmd: &mut Command) -> Result<(), NodeError> {
    InstanceUser::current()?.apply(cmd);
    Ok(())
}

/// Recursively chowns `path` to the instance user when we are root; a no-op otherwise.
pub fn chown_to_instance_user(path: &Path) -> Result<(), NodeError> {
    InstanceUser::current()?.chown_recursive(path)
}

fn chown_tree(path: &Path, uid: Uid, gid: Gid) -> Result<(), NodeError> {
    let meta = fs::symlink_metadata(path).map_err(NodeError::io(path))?;
    unix_fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw())).map_err(NodeError::io(path))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(NodeError::io(path))? {
            let entry = entry.map_err(NodeError::io(path))?;
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn switches_exactly_when_root() {
        let user = InstanceUser::current().expect("instance user");
        assert_eq!(user.switch, geteuid().is_root());
        if user.switch {
            assert_ne!(user.uid, 0);
        } else {
            assert_eq!(user.uid, geteuid().as_raw());
        }
    }

    #[test]
    fn chown_reaches_nested_files_and_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a/b");
        fs::create_dir_all(&nested).expect("mkdir");
        fs::write(nested.join("f"), "x").expect("write");
        unix_fs::symlink("/nonexistent", nested.join("link")).expect("symlink");

        chown_to_instance_user(dir.path()).expect("chown");

        let user = InstanceUser::current().expect("instance user");
        for p in [dir.path(), &nested, &nested.join("f"), &nested.join("link")] {
            let meta = fs::symlink_metadata(p).expect("stat");
            assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{p:?}");
        }
    }
}
