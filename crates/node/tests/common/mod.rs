//! Fixtures shared by the node crate's integration tests.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use node::{InitOptions, PgBinaries};
use tempfile::TempDir;

/// A directory under /tmp that instance users can traverse. When it goes, so do the OS
/// users of every instance made in it (their instances are stopped by then: they were
/// made after it, so they are dropped before it), and a test leaves no user behind.
pub struct Scratch(TempDir);

impl Scratch {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = node::remove_users_under(self.0.path()) {
            eprintln!("could not remove the test's instance users: {e}");
        }
    }
}

pub fn tmp() -> Scratch {
    let dir = tempfile::Builder::new().prefix("berth-node-").tempdir_in("/tmp").expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    Scratch(dir)
}

/// Like [`tmp`], but made as Berth makes the directory its instances live in (0710, the
/// instances' group), not 0755.
pub fn passable_tmp() -> Scratch {
    let dir = tempfile::Builder::new().prefix("berth-node-").tempdir_in("/tmp").expect("tempdir");
    node::make_passable_dir(dir.path()).expect("passable");
    Scratch(dir)
}

pub fn bins() -> PgBinaries {
    PgBinaries::find().expect("PostgreSQL binaries")
}

pub fn fast() -> InitOptions {
    InitOptions::fast_unsafe()
}
