//! The file half of an online physical copy of a running instance (a base backup without
//! the replication protocol): the caller opens `pg_backup_start` on a session it holds,
//! [`copy_data_dir`] copies the data directory by PostgreSQL's base-backup rules, the caller
//! runs `pg_backup_stop`, and [`finish`] copies the WAL written meanwhile and writes the
//! returned `backup_label`, so the copy starts with crash recovery to a consistent state.
//! Modes are the source's masked with `tree::COPY_MODE_MASK` (0750: no setuid, setgid or
//! sticky bit a tenant chose survives into the files root creates). Files are cloned with `FICLONE` where the filesystem can (Btrfs, XFS), else copied in
//! chunks through `copy_file_range`, never taking the space the running instances need
//! (see `room`). This module never writes into the source directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::NodeError;
use crate::private::write_private;
use crate::room;
use crate::tree::{self, Tree};
use crate::user::InstanceUser;

/// Directories whose contents a base backup leaves out (basebackup.c's
/// `excludeDirContents`): they are recreated empty. `pg_wal` is copied by [`finish`].
const EMPTY_DIRS: [&str; 8] = [
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
    "pg_wal",
];
/// Top-level files a base backup leaves out (`excludeFiles`).
const SKIPPED_FILES: [&str; 6] = [
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];
/// Relation cache files, rebuilt at start; skipped in every directory.
const RELCACHE_INIT: &str = "pg_internal.init";
/// Temporary files of sorts and hashes, skipped in every directory.
const TEMP_PREFIX: &str = "pgsql_tmp";
/// Plain copies go by chunks this big, so progress moves on large relation files.
const CHUNK: u64 = 64 << 20;

/// How files were copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// `FICLONE`: the copy shares extents with the source until either is written.
    Reflink,
    /// Bytes copied (`copy_file_range`, which some filesystems still turn into clones).
    Copy,
}

impl CopyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::Copy => "copy",
        }
    }
}

/// Bytes copied so far of the total found when the copy began; shared with whoever reports
/// progress while the copy runs on another thread.
#[derive(Debug, Default)]
pub struct CopyProgress {
    done: AtomicU64,
    total: AtomicU64,
}

impl CopyProgress {
    /// Bytes copied (at most the total: files may grow while they are copied).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed).min(self.total())
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    fn add_total(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Whether files in `dir` can be cloned with `FICLONE` (tried on a small probe file).
pub fn can_reflink(dir: &Path) -> bool {
    let probe = dir.join(format!(".berth-reflink-probe-{}", std::process::id()));
    let clone = probe.with_extension("clone");
    let result = (|| -> io::Result<()> {
        fs::write(&probe, [0u8; 4096])?;
        let src = File::open(&probe)?;
        let dst = File::create(&clone)?;
        rustix::fs::ioctl_ficlone(&dst, &src)?;
        Ok(())
    })();
    let _ = fs::remove_file(&probe);
    let _ = fs::remove_file(&clone);
    result.is_ok()
}

struct Entry {
    rel: PathBuf,
    kind: Kind,
    mode: u32,
}

enum Kind {
    Dir,
    File(u64),
}

/// Copies the data directory `src` of a running instance, in backup mode, into
/// `dst_root/data` (`dst_root` must not hold a `data` yet), leaving out what a base backup
/// leaves out. Files that vanish while copying (a dropped table) are skipped, as
/// `pg_basebackup` does; WAL replay from the backup's start makes every file consistent.
/// The source is the tenant's: it is read through [`crate::tree`], so a symbolic link, a
/// special file or a file its owner does not own anywhere in it fails the copy, and nothing
/// outside it is ever read.
pub fn copy_data_dir(src: &Path, dst_root: &Path, progress: &CopyProgress) -> Result<CopyMethod, NodeError> {
    let tree = Tree::open(src)?;
    let tablespaces = src.join("pg_tblspc");
    if tree.list(Path::new("pg_tblspc"), &tablespaces)?.is_some_and(|l| !l.is_empty()) {
        return Err(NodeError::Unsupported {
            what: format!("copying an instance with tablespaces ({})", tablespaces.display()),
        });
    }
    crate::private::make_passable_dir(dst_root)?;
    let dst = dst_root.join("data");
    let mut entries = Vec::new();
    scan(&tree, src, Path::new(""), &mut entries)?;
    let mut left: u64 = entries.iter().map(|e| if let Kind::File(size) = e.kind { size } else { 0 }).sum();
    progress.add_total(left);
    let method = if can_reflink(dst_root) { CopyMethod::Reflink } else { CopyMethod::Copy };
    // A clone shares the source's blocks; a plain copy must fit beside the running instances.
    let copying = method == CopyMethod::Copy;
    if copying {
        room::ensure(dst_root, left)?;
    }
    fs::DirBuilder::new().mode(0o700).create(&dst).map_err(NodeError::io(&dst))?;
    // No fsync here: PostgreSQL fsyncs the whole data directory before crash recovery, in
    // one pass that batches writeback (flushing file by file during the copy measured slower).
    for e in &entries {
        let to = dst.join(&e.rel);
        match &e.kind {
            Kind::Dir => {
                fs::DirBuilder::new().mode(e.mode).create(&to).map_err(NodeError::io(&to))?;
            }
            Kind::File(size) => {
                if copying {
                    room::ensure(dst_root, left)?;
                }
                copy_file(&tree, src, &e.rel, &to, e.mode, method, progress)?;
                left = left.saturating_sub(*size);
            }
        }
    }
    Ok(method)
}

/// Lists `rel` depth first, parents before children, applying the base-backup exclusions.
/// Entries that vanish meanwhile are left out; links and special files are refused.
fn scan(tree: &Tree, src: &Path, rel: &Path, out: &mut Vec<Entry>) -> Result<(), NodeError> {
    let Some(listing) = tree.list(rel, &src.join(rel))? else { return Ok(()) };
    let top = rel.as_os_str().is_empty();
    for entry in listing {
        let name_str = entry.name.to_string_lossy();
        if name_str == RELCACHE_INIT || name_str.starts_with(TEMP_PREFIX) {
            continue;
        }
        if top && SKIPPED_FILES.contains(&name_str.as_ref()) {
            continue;
        }
        let child = rel.join(&entry.name);
        match entry.kind {
            tree::Kind::Dir => {
                out.push(Entry { rel: child.clone(), kind: Kind::Dir, mode: entry.mode });
                if top && EMPTY_DIRS.contains(&name_str.as_ref()) {
                    if name_str == "pg_wal" {
                        out.push(Entry {
                            rel: child.join("archive_status"),
                            kind: Kind::Dir,
                            mode: entry.mode,
                        });
                    }
                    continue;
                }
                scan(tree, src, &child, out)?;
            }
            tree::Kind::File => {
                out.push(Entry { rel: child, kind: Kind::File(entry.size), mode: entry.mode })
            }
            tree::Kind::Symlink => {
                return Err(NodeError::UnsafeEntry { path: src.join(child), what: "a symbolic link" });
            }
            tree::Kind::Other => {
                return Err(NodeError::UnsafeEntry { path: src.join(child), what: "a special file" });
            }
        }
    }
    Ok(())
}

/// Copies one file of the tree; a source that vanished is skipped.
fn copy_file(
    tree: &Tree,
    src_dir: &Path,
    rel: &Path,
    to: &Path,
    mode: u32,
    method: CopyMethod,
    progress: &CopyProgress,
) -> Result<(), NodeError> {
    let Some(src) = tree.open_file(rel, &src_dir.join(rel))? else { return Ok(()) };
    let mut dst =
        OpenOptions::new().write(true).create_new(true).mode(mode).open(to).map_err(NodeError::io(to))?;
    if method == CopyMethod::Reflink && rustix::fs::ioctl_ficlone(&dst, &src).is_ok() {
        progress.add(src.metadata().map(|m| m.len()).unwrap_or(0));
        return Ok(());
    }
    // std turns File-to-File copies (Take included) into copy_file_range.
    loop {
        let n = io::copy(&mut (&src).take(CHUNK), &mut dst).map_err(NodeError::io(to))?;
        if n == 0 {
            return Ok(());
        }
        progress.add(n);
    }
}

/// Completes a copy after `pg_backup_stop`: copies the WAL segments from `first_segment`
/// to `last_segment` (file names; any timeline) and the timeline history files into
/// `dst_root/data/pg_wal`, writes `backup_label` (and `tablespace_map` when not empty),
/// and hands everything to the copy's own instance user (made now). The copy is then
/// ready to start.
pub fn finish(
    src: &Path,
    dst_root: &Path,
    first_segment: &str,
    last_segment: &str,
    backup_label: &str,
    tablespace_map: &str,
    progress: &CopyProgress,
) -> Result<(), NodeError> {
    let dst = dst_root.join("data");
    let tree = Tree::open(src)?;
    let (src_wal, dst_wal) = (src.join("pg_wal"), dst.join("pg_wal"));
    let (first, last) = (segment_position(first_segment), segment_position(last_segment));
    let (Some(first), Some(last)) = (first, last) else {
        return Err(NodeError::Unsupported {
            what: format!("WAL segment names {first_segment:?} to {last_segment:?}"),
        });
    };
    let listing = tree
        .list(Path::new("pg_wal"), &src_wal)?
        .ok_or_else(|| NodeError::Io { path: src_wal.clone(), source: io::ErrorKind::NotFound.into() })?;
    let mut wanted = Vec::new();
    for entry in listing {
        let name = entry.name.to_string_lossy().into_owned();
        let keep = name.ends_with(".history")
            || segment_position(&name).is_some_and(|pos| (first..=last).contains(&pos));
        if !keep {
            continue;
        }
        if entry.kind != tree::Kind::File {
            return Err(NodeError::UnsafeEntry { path: src_wal.join(&name), what: "not a regular file" });
        }
        wanted.push((name, entry.size));
    }
    let wal: u64 = wanted.iter().map(|(_, size)| size).sum();
    progress.add_total(wal);
    room::ensure(dst_root, wal)?;
    for (name, _) in wanted {
        let rel = Path::new("pg_wal").join(&name);
        copy_file(&tree, src, &rel, &dst_wal.join(&name), 0o600, CopyMethod::Copy, progress)?;
    }
    let label = dst.join("backup_label");
    write_private(&label, backup_label)?;
    if !tablespace_map.is_empty() {
        let map = dst.join("tablespace_map");
        write_private(&map, tablespace_map)?;
    }
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o700)).map_err(NodeError::io(&dst))?;
    InstanceUser::for_root(dst_root)?.chown_recursive(&dst)
}

/// The log and segment part of a WAL segment file name (`TTTTTTTTLLLLLLLLSSSSSSSS`), which
/// orders segments whatever their timeline; `None` for other names.
fn segment_position(name: &str) -> Option<&str> {
    (name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| &name[8..])
}

/// The WAL segment file named in a `backup_label`'s `START WAL LOCATION` line.
pub fn label_start_segment(backup_label: &str) -> Option<&str> {
    let line = backup_label.lines().find(|l| l.starts_with("START WAL LOCATION:"))?;
    let file = line.split("(file ").nth(1)?.trim_end_matches(')');
    segment_position(file).map(|_| file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_start_segment_of_a_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n";
        assert_eq!(label_start_segment(label), Some("000000010000000000000002"));
        assert_eq!(label_start_segment("nothing here"), None);
        assert_eq!(segment_position("000000010000000000000002.partial"), None);
        assert!(segment_position("000000020000000000000003") > segment_position("000000010000000000000002"));
    }

    #[test]
    fn copies_by_base_backup_rules_and_counts_bytes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        for dir in
            ["base/1", "pg_wal/archive_status", "pg_replslot/slot", "pg_stat_tmp", "pg_tblspc", "global"]
        {
            fs::create_dir_all(src.join(dir)).expect("mkdir");
        }
        let big = vec![7u8; (CHUNK + 10) as usize];
        fs::write(src.join("base/1/16384"), &big).expect("write");
        fs::write(src.join("base/1/pg_internal.init"), b"cache").expect("write");
        fs::write(src.join("base/1/pgsql_tmp123"), b"tmp").expect("write");
        fs::write(src.join("global/pg_control"), b"control").expect("write");
        fs::write(src.join("postmaster.pid"), b"1\n").expect("write");
        fs::write(src.join("backup_label"), b"old").expect("write");
        fs::write(src.join("pg_replslot/slot/state"), b"slot").expect("write");
        fs::write(src.join("pg_stat_tmp/db.stat"), b"stat").expect("write");
        let seg = |n: u32| format!("00000001000000000000000{n}");
        for n in 1..=4 {
            fs::write(src.join("pg_wal").join(seg(n)), b"wal").expect("write");
        }

        let dst_root = tmp.path().join("copy");
        let progress = CopyProgress::default();
        copy_data_dir(&src, &dst_root, &progress).expect("copy");
        let dst = dst_root.join("data");
        assert_eq!(fs::read(dst.join("base/1/16384")).expect("read"), big);
        assert_eq!(fs::read(dst.join("global/pg_control")).expect("read"), b"control");
        for gone in [
            "base/1/pg_internal.init",
            "base/1/pgsql_tmp123",
            "postmaster.pid",
            "backup_label",
            "pg_replslot/slot",
            "pg_stat_tmp/db.stat",
        ] {
            assert!(!dst.join(gone).exists(), "{gone} was copied");
        }
        assert!(dst.join("pg_replslot").is_dir() && dst.join("pg_wal/archive_status").is_dir());
        assert_eq!(fs::read_dir(dst.join("pg_wal")).expect("ls").count(), 1, "WAL waits for finish");
        assert_eq!(progress.total(), big.len() as u64 + 7);
        assert_eq!(progress.done(), progress.total());

        finish(&src, &dst_root, &seg(2), &seg(3), "LABEL", "", &progress).expect("finish");
        let mut wal: Vec<String> = fs::read_dir(dst.join("pg_wal"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        wal.sort();
        assert_eq!(wal, [seg(2), seg(3), "archive_status".to_owned()]);
        assert_eq!(fs::read_to_string(dst.join("backup_label")).expect("read"), "LABEL");
        assert!(!dst.join("tablespace_map").exists());
        assert_eq!(progress.done(), progress.total());
        let mode = fs::metadata(&dst).expect("stat").permissions().mode() & 0o777;
        crate::remove_users_under(tmp.path()).expect("cleanup");
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn special_mode_bits_and_others_access_are_not_copied() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = planted(tmp.path(), |src, _| {
            fs::set_permissions(src.join("base/1/16384"), fs::Permissions::from_mode(0o4755)).expect("chmod");
            fs::set_permissions(src.join("global/pg_control"), fs::Permissions::from_mode(0o2606))
                .expect("chmod");
            fs::set_permissions(src.join("base"), fs::Permissions::from_mode(0o1777)).expect("chmod");
        });
        let dst_root = tmp.path().join("copy");
        copy_data_dir(&src, &dst_root, &CopyProgress::default()).expect("copy");
        let dst = dst_root.join("data");
        let mode = |p: &str| fs::metadata(dst.join(p)).expect("stat").permissions().mode() & 0o7777;
        assert_eq!([mode("base"), mode("base/1/16384"), mode("global/pg_control")], [0o750, 0o750, 0o600]);
    }

    /// A source data directory with `plant` done to it, beside a secret only root may read.
    fn planted(tmp: &Path, plant: impl FnOnce(&Path, &Path)) -> PathBuf {
        let src = tmp.join("src");
        for dir in ["base/1", "pg_wal/archive_status", "pg_tblspc", "global"] {
            fs::create_dir_all(src.join(dir)).expect("mkdir");
        }
        fs::write(src.join("base/1/16384"), b"heap").expect("write");
        fs::write(src.join("global/pg_control"), b"control").expect("write");
        fs::write(src.join("pg_wal/000000010000000000000001"), b"wal").expect("write");
        let secret = tmp.join("shadow");
        fs::write(&secret, SECRET).expect("write");
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
        plant(&src, &secret);
        src
    }

    const SECRET: &[u8] = b"root-only-5f3a";

    /// Whether any regular file under `dir` holds the secret's bytes.
    fn holds_secret(dir: &Path) -> bool {
        let Ok(entries) = fs::read_dir(dir) else { return false };
        entries.flatten().any(|e| {
            let meta = fs::symlink_metadata(e.path()).expect("stat");
            if meta.is_dir() {
                holds_secret(&e.path())
            } else {
                meta.is_file()
                    && fs::read(e.path()).is_ok_and(|b| b.windows(SECRET.len()).any(|w| w == SECRET))
            }
        })
    }

    #[test]
    fn a_planted_link_is_refused_and_never_read_through() {
        type Plant = fn(&Path, &Path);
        let plants: [(&str, Plant); 4] = [
            ("a relation file replaced by a link to the secret", |src, secret| {
                fs::remove_file(src.join("base/1/16384")).expect("rm");
                std::os::unix::fs::symlink(secret, src.join("base/1/16384")).expect("symlink");
            }),
            ("a directory replaced by a link to the secret's directory", |src, secret| {
                fs::remove_dir_all(src.join("base/1")).expect("rm");
                std::os::unix::fs::symlink(secret.parent().expect("parent"), src.join("base/1"))
                    .expect("symlink");
            }),
            ("a new link beside the files", |src, secret| {
                std::os::unix::fs::symlink(secret, src.join("global/pg_filenode.map")).expect("symlink");
            }),
            ("a FIFO", |src, _| {
                nix::unistd::mkfifo(&src.join("base/1/fifo"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
            }),
        ];
        for (what, plant) in plants {
            let tmp = tempfile::tempdir().expect("tempdir");
            let src = planted(tmp.path(), plant);
            let dst_root = tmp.path().join("copy");
            let err = copy_data_dir(&src, &dst_root, &CopyProgress::default()).expect_err(what);
            assert!(matches!(err, NodeError::UnsafeEntry { .. }), "{what}: {err}");
            assert!(!holds_secret(&dst_root), "{what}: the copy holds the secret");
        }
    }

    #[test]
    fn a_link_among_the_wal_segments_is_refused_and_never_read_through() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = planted(tmp.path(), |src, secret| {
            std::os::unix::fs::symlink(secret, src.join("pg_wal/000000010000000000000002")).expect("symlink");
        });
        let dst_root = tmp.path().join("copy");
        let progress = CopyProgress::default();
        copy_data_dir(&src, &dst_root, &progress).expect("copy");
        let seg = |n: u32| format!("00000001000000000000000{n}");
        let err = finish(&src, &dst_root, &seg(1), &seg(2), "LABEL", "", &progress).expect_err("finished");
        crate::remove_users_under(tmp.path()).expect("cleanup");
        assert!(matches!(err, NodeError::UnsafeEntry { .. }), "{err}");
        assert!(!holds_secret(&dst_root), "the copy holds the secret");
    }

    #[test]
    fn a_hard_link_to_a_file_of_another_owner_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can hand the source to another owner
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        // The source belongs to `nobody`; the secret (hard-linked in) stays root's.
        let src = planted(tmp.path(), |src, secret| {
            fs::hard_link(secret, src.join("base/1/16385")).expect("link");
        });
        let nobody = 65534;
        for path in
            ["", "base", "base/1", "base/1/16384", "global", "global/pg_control", "pg_wal", "pg_tblspc"]
        {
            std::os::unix::fs::lchown(src.join(path), Some(nobody), None).expect("chown");
        }
        let dst_root = tmp.path().join("copy");
        let err = copy_data_dir(&src, &dst_root, &CopyProgress::default()).expect_err("copied");
        assert!(matches!(err, NodeError::UnsafeEntry { .. }), "{err}");
        assert!(!holds_secret(&dst_root), "the copy holds the secret");
    }

    #[test]
    fn refuses_tablespaces() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("pg_tblspc")).expect("mkdir");
        std::os::unix::fs::symlink("/elsewhere", src.join("pg_tblspc/16400")).expect("symlink");
        let err =
            copy_data_dir(&src, &tmp.path().join("copy"), &CopyProgress::default()).expect_err("copied");
        assert!(err.to_string().contains("tablespaces"), "{err}");
    }
}
