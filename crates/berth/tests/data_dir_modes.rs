//! `berth up`'s data directory is Berth's alone: the admin and master keys, the catalog,
//! every instance and its log (which holds tenants' SQL) are open to no other user. Only the
//! instances' OS users may pass through, when Berth runs as root, through directories that give
//! it nothing to read.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

mod common;

use common::*;

/// Every path under `root` (not following symlinks), with its mode bits and group.
fn tree(root: &Path) -> Vec<(PathBuf, u32, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&path).expect("read_dir").map(|e| e.expect("entry").path()));
        }
        if !meta.file_type().is_symlink() {
            out.push((path, meta.permissions().mode() & 0o777, meta.gid()));
        }
    }
    out
}

#[test]
fn up_leaves_nothing_under_its_data_directory_open_to_others() {
    let data = data_dir();
    let up = berth_up(data.path(), Ports::free());
    up.create_project("shop");
    let direct = up.connection("shop", false);
    let (ok, _, err) = psql(&direct, "select tenant_marker_5e1");
    assert!(!ok && err.contains("tenant_marker_5e1"), "{err}");
    let admin_key = std::fs::read_to_string(data.path().join("admin.key")).expect("admin.key");
    up.stop();

    // The test is about logs that hold tenants' SQL: make sure there is one.
    let logs: Vec<PathBuf> = tree(data.path())
        .into_iter()
        .map(|(p, ..)| p)
        .filter(|p| p.file_name().is_some_and(|n| n == "postgres.log"))
        .collect();
    assert!(
        logs.iter().any(|l| std::fs::read_to_string(l).unwrap_or_default().contains("tenant_marker_5e1")),
        "no instance log holds the failed statement: {logs:?}"
    );
    for private in ["admin.key", "master.key", "scram-fake.key", "api.url"] {
        let mode = std::fs::metadata(data.path().join(private)).expect(private).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{private}");
    }
    assert!(admin_key.trim().starts_with("berth_live_"));

    let root = nix::unistd::geteuid().is_root();
    let postgres_gid = node::instance_gid().expect("the instances' group");
    let paths = tree(data.path());
    assert!(paths.len() > 100, "walked only {} paths", paths.len());
    for (path, mode, gid) in paths {
        assert_eq!(mode & 0o004, 0, "{path:?} is readable by others ({mode:o})");
        assert_eq!(mode & 0o007, 0, "{path:?} is open to others ({mode:o})");
        // The group may only pass through, and only the instance user's group.
        if mode & 0o070 != 0 {
            assert!(root && mode & 0o070 == 0o010 && gid == postgres_gid, "{path:?}: {mode:o}, group {gid}");
        }
    }
}
