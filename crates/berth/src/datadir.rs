//! Where the data directory is when none is given. `./berth-data` by default; but when Berth
//! runs as root, PostgreSQL runs as `postgres`, which cannot reach a directory under a
//! private home (`/root`), so `berth up` then uses `/var/lib/berth`, and the client commands
//! look in both places for a running `berth up`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const LOCAL: &str = "./berth-data";
pub const SYSTEM: &str = "/var/lib/berth";

/// Whether every existing ancestor of `dir` lets others pass through.
fn reachable_by_others(dir: &Path) -> bool {
    let Ok(abs) = std::path::absolute(dir) else { return false };
    abs.ancestors()
        .skip(1)
        .filter_map(|p| std::fs::metadata(p).ok())
        .all(|m| m.permissions().mode() & 0o001 != 0)
}

/// The directory `berth up` uses when `--data` is not given.
pub fn for_up(given: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = given {
        return dir;
    }
    let local = PathBuf::from(LOCAL);
    if nix::unistd::geteuid().is_root() && !reachable_by_others(&local) {
        tracing::info!(data = SYSTEM, "running as root under a private directory: using {SYSTEM}");
        return PathBuf::from(SYSTEM);
    }
    local
}

/// The directory the client commands read `api.url` and `admin.key` from.
pub fn for_client(given: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = given {
        return dir;
    }
    [LOCAL, SYSTEM]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.join("api.url").exists())
        .unwrap_or(PathBuf::from(LOCAL))
}
