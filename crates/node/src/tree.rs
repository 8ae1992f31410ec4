//! Reading and chowning directory trees that another user may be changing under us, without
//! ever following a symbolic link. Every directory is opened relative to its parent's
//! descriptor with `O_NOFOLLOW`, every file with `O_NOFOLLOW | O_NONBLOCK` and checked, once
//! open, to be a regular file owned by the tree's owner (so a hard link to another user's
//! file is refused too). Berth runs as root when it copies a tenant's data directory: a link
//! planted there must never make it read or chown anything outside. Chowning checks each
//! entry through the descriptor it chowns through, and refuses hard links and entries of
//! an unexpected owner. This module never writes into a tree it reads; the only write into
//! a tree at all is unlinking stale names ([`remove_foreign_entries`]).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags};

use crate::error::NodeError;

const DIR_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// The permission bits a copy keeps of its source's: no setuid, setgid or sticky bit, no
/// group write, nothing for others. Every mode PostgreSQL gives (0600/0700, 0640/0750 with
/// group access) passes unchanged; the group is `berth-instances`, shared by every
/// instance, so it must never be granted more.
pub(crate) const COPY_MODE_MASK: u32 = 0o750;

/// What an entry of a directory is, as `lstat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// One entry of a listed directory.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: OsString,
    pub kind: Kind,
    /// The permission bits a copy gets: the entry's, masked with [`COPY_MODE_MASK`].
    pub mode: u32,
    pub size: u64,
}

/// An open directory that is the top of a tree, with the uid that owns it: every file read
/// from the tree must be owned by that uid.
#[derive(Debug)]
pub(crate) struct Tree {
    fd: OwnedFd,
    pub owner: u32,
}

impl Tree {
    /// Opens `path` as a directory, refusing a symbolic link in its last component (the
    /// components above are the caller's, owned by root).
    pub fn open(path: &Path) -> Result<Tree, NodeError> {
        let fd = rfs::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| refusal(path, e))?;
        let owner = rfs::fstat(&fd).map_err(|e| io_error(path, e))?.st_uid;
        Ok(Tree { fd, owner })
    }

    /// Lists the directory at `rel` (relative, without `..`; empty for the top), entries
    /// that vanish meanwhile left out. `None` when the directory itself vanished.
    pub fn list(&self, rel: &Path, shown: &Path) -> Result<Option<Vec<Entry>>, NodeError> {
        let Some(dir) = self.open_dir(rel, shown)? else { return Ok(None) };
        let mut out = Vec::new();
        let listing = Dir::read_from(&dir).map_err(|e| io_error(shown, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_error(shown, e))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let stat = match rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(s) => s,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(io_error(&shown.join(name), e)),
            };
            let kind = match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => Kind::Dir,
                FileType::RegularFile => Kind::File,
                FileType::Symlink => Kind::Symlink,
                _ => Kind::Other,
            };
            out.push(Entry {
                name: name.to_owned(),
                kind,
                mode: stat.st_mode & COPY_MODE_MASK,
                size: u64::try_from(stat.st_size).unwrap_or(0),
            });
        }
        Ok(Some(out))
    }

    /// Opens the regular file at `rel` for reading: `None` when it (or a directory above it)
    /// vanished; refused when any component is a link, or the file is not a regular file
    /// owned by the tree's owner.
    pub fn open_file(&self, rel: &Path, shown: &Path) -> Result<Option<File>, NodeError> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(NodeError::UnsafeEntry { path: shown.to_owned(), what: "not a file name" });
        };
        let Some(dir) = self.open_dir(parent, shown)? else { return Ok(None) };
        let fd = match rfs::openat(&dir, name, FILE_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(refusal(shown, e)),
        };
        let stat = rfs::fstat(&fd).map_err(|e| io_error(shown, e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(NodeError::UnsafeEntry { path: shown.to_owned(), what: "not a regular file" });
        }
        if stat.st_uid != self.owner {
            return Err(NodeError::UnsafeEntry {
                path: shown.to_owned(),
                what: "a file its directory's owner does not own (a hard link?)",
            });
        }
        // O_NONBLOCK only mattered while opening (a FIFO swapped in would have blocked).
        rfs::fcntl_setfl(&fd, rfs::fcntl_getfl(&fd).map_err(|e| io_error(shown, e))? - OFlags::NONBLOCK)
            .map_err(|e| io_error(shown, e))?;
        Ok(Some(File::from(fd)))
    }

    /// Walks down `rel` one directory at a time, never following a link.
    fn open_dir(&self, rel: &Path, shown: &Path) -> Result<Option<OwnedFd>, NodeError> {
        let mut dir = rfs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty()).map_err(|e| io_error(shown, e))?;
        for part in rel.components() {
            let Component::Normal(name) = part else {
                return Err(NodeError::UnsafeEntry {
                    path: shown.to_owned(),
                    what: "a path leaving its tree",
                });
            };
            dir = match rfs::openat(&dir, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(e) => return Err(refusal(shown, e)),
            };
        }
        Ok(Some(dir))
    }
}

/// Hands `path` and everything below it to `uid:gid`, links themselves (never what they
/// point to). Every entry is opened `O_PATH | O_NOFOLLOW` relative to its directory's
/// descriptor, checked through that descriptor and chowned through it (`AT_EMPTY_PATH`), so
/// what is checked is what is chowned. Refused with [`NodeError::UnsafeEntry`], before it
/// is chowned, is any entry that is not a directory and has more than one link (a hard
/// link to a file elsewhere: PostgreSQL makes none in a stopped data directory) or that is
/// owned by neither `from` (the tree's previous owner) nor `uid`. Each directory is
/// chowned after what it holds, the top last, so a handover cut short leaves the top's
/// owner differing and is done again.
pub(crate) fn chown_tree(path: &Path, uid: u32, gid: u32, from: u32) -> Result<(), NodeError> {
    let top = rfs::open(path, ENTRY_FLAGS, Mode::empty()).map_err(|e| io_error(path, e))?;
    hand_over(&top, path, Owners { uid, gid, from })
}

/// Chowns the directory `path` itself (not a link there, nothing in it) to `uid:gid`.
pub(crate) fn chown_dir(path: &Path, uid: u32, gid: u32) -> Result<(), NodeError> {
    let dir = rfs::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| refusal(path, e))?;
    rfs::fchown(&dir, Some(rfs::Uid::from_raw(uid)), Some(rfs::Gid::from_raw(gid)))
        .map_err(|e| io_error(path, e))
}

/// Makes the directory `path` itself root's and 0700, so that its previous owner can no
/// longer enter it or add to it by path.
pub(crate) fn seize_dir(path: &Path) -> Result<(), NodeError> {
    let dir = rfs::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| refusal(path, e))?;
    rfs::fchown(&dir, Some(rfs::Uid::ROOT), Some(rfs::Gid::ROOT)).map_err(|e| io_error(path, e))?;
    rfs::fchmod(&dir, Mode::from_raw_mode(0o700)).map_err(|e| io_error(path, e))
}

/// Unlinks every entry of the directory `path` that is not a directory and not owned by
/// `uid` (unlinking a name never touches another link's file). Returns the names removed.
pub(crate) fn remove_foreign_entries(path: &Path, uid: u32) -> Result<Vec<OsString>, NodeError> {
    let dir = rfs::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| refusal(path, e))?;
    let mut removed = Vec::new();
    for entry in Dir::read_from(&dir).map_err(|e| io_error(path, e))? {
        let entry = entry.map_err(|e| io_error(path, e))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let stat = match rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(io_error(&path.join(name), e)),
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory || stat.st_uid == uid {
            continue;
        }
        match rfs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) => removed.push(name.to_owned()),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io_error(&path.join(name), e)),
        }
    }
    Ok(removed)
}

const ENTRY_FLAGS: OFlags = OFlags::PATH.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

#[derive(Clone, Copy)]
struct Owners {
    uid: u32,
    gid: u32,
    from: u32,
}

/// Checks, descends into (when a directory) and then chowns the entry open at `entry`.
fn hand_over(entry: &OwnedFd, shown: &Path, to: Owners) -> Result<(), NodeError> {
    let stat = rfs::fstat(entry).map_err(|e| io_error(shown, e))?;
    let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
    if !is_dir && stat.st_nlink > 1 {
        return Err(NodeError::UnsafeEntry {
            path: shown.to_owned(),
            what: "a file with more than one link (a hard link to a file elsewhere?)",
        });
    }
    if stat.st_uid != to.from && stat.st_uid != to.uid {
        return Err(NodeError::UnsafeEntry {
            path: shown.to_owned(),
            what: "owned by a user the tree is not being handed over from",
        });
    }
    if is_dir {
        let dir = rfs::openat(entry, ".", DIR_FLAGS, Mode::empty()).map_err(|e| io_error(shown, e))?;
        for child in Dir::read_from(&dir).map_err(|e| io_error(shown, e))? {
            let child = child.map_err(|e| io_error(shown, e))?;
            let name = OsStr::from_bytes(child.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let path = shown.join(name);
            match rfs::openat(&dir, name, ENTRY_FLAGS, Mode::empty()) {
                Ok(fd) => hand_over(&fd, &path, to)?,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(io_error(&path, e)),
            }
        }
    }
    let (uid, gid) = (rfs::Uid::from_raw(to.uid), rfs::Gid::from_raw(to.gid));
    rfs::chownat(entry, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH).map_err(|e| io_error(shown, e))
}

/// The uid owning `path` itself (not what a link there points to).
pub(crate) fn owner(path: &Path) -> Result<u32, NodeError> {
    let stat = rfs::statat(rfs::CWD, path, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| io_error(path, e))?;
    Ok(stat.st_uid)
}

/// `O_NOFOLLOW` met a link (`ELOOP`), or `O_DIRECTORY` a non-directory: refused, named.
fn refusal(path: &Path, e: rustix::io::Errno) -> NodeError {
    match e {
        rustix::io::Errno::LOOP => NodeError::UnsafeEntry { path: path.to_owned(), what: "a symbolic link" },
        rustix::io::Errno::NOTDIR => {
            NodeError::UnsafeEntry { path: path.to_owned(), what: "not a directory where one was expected" }
        }
        e => io_error(path, e),
    }
}

fn io_error(path: &Path, e: rustix::io::Errno) -> NodeError {
    NodeError::Io { path: path.to_owned(), source: io::Error::from(e) }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs as unix_fs;

    use super::*;

    #[test]
    fn a_link_anywhere_on_the_way_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let top = tmp.path().join("top");
        fs::create_dir_all(top.join("a")).expect("mkdir");
        fs::write(top.join("a/f"), "mine").expect("write");
        fs::write(tmp.path().join("secret"), "outside").expect("write");
        unix_fs::symlink(tmp.path().join("secret"), top.join("a/link")).expect("symlink");
        unix_fs::symlink(tmp.path(), top.join("dirlink")).expect("symlink");

        let tree = Tree::open(&top).expect("open");
        let mut text = String::new();
        let mut f = tree.open_file(Path::new("a/f"), Path::new("a/f")).expect("open").expect("exists");
        f.read_to_string(&mut text).expect("read");
        assert_eq!(text, "mine");
        for rel in ["a/link", "dirlink/secret"] {
            let err = tree.open_file(Path::new(rel), Path::new(rel)).expect_err(rel);
            assert!(matches!(err, NodeError::UnsafeEntry { .. }), "{rel}: {err}");
        }
        assert!(tree.open_file(Path::new("a/gone"), Path::new("a/gone")).expect("gone").is_none());
        let mut kinds: Vec<_> = tree
            .list(Path::new(""), &top)
            .expect("list")
            .expect("exists")
            .into_iter()
            .map(|e| (e.name.into_string().expect("utf8"), e.kind))
            .collect();
        kinds.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(kinds, [("a".to_owned(), Kind::Dir), ("dirlink".to_owned(), Kind::Symlink)]);
        let err = Tree::open(&top.join("dirlink")).expect_err("opened a link as a tree");
        assert!(matches!(err, NodeError::UnsafeEntry { .. }), "{err}");
    }
}
