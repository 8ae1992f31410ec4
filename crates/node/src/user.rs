//! The OS users PostgreSQL runs as. `initdb` and `postgres` refuse to run as root, and one
//! tenant's server must not be able to read another's files, so when Berth is root every
//! instance root gets a system user of its own (`berth-<10 random characters>`, comment
//! [`USER_COMMENT`], primary group [`INSTANCE_GROUP`], no home, no login shell): its
//! PostgreSQL, and the client programs Berth runs against it, run as that user alone and
//! own its data. The name is recorded in `<root>/berth.user` (root's, outside the data
//! directory the instance writes, and written before the user is made, so a crash leaves a
//! name to reuse, never a user nobody knows of). When Berth is not root, everything runs as
//! the current user and nothing is switched, made or chowned. This module grants nothing
//! beyond those users; it never deletes a user it did not make (comment and name checked).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::unistd::{Group, User, getegid, geteuid};

use crate::error::NodeError;

/// The group every instance user has as its primary group, so that directories Berth keeps
/// (mode 0710) can be passed through by instances and by nobody else.
pub const INSTANCE_GROUP: &str = "berth-instances";
/// How every instance user's name begins.
pub const USER_PREFIX: &str = "berth-";
/// The comment (GECOS) field marking users Berth made; nothing else is ever deleted.
pub const USER_COMMENT: &str = "Berth instance";
/// Where an instance root records its user's name.
const RECORD: &str = "berth.user";
/// Characters after the prefix (base32, 50 random bits).
const NAME_CHARS: usize = 10;
/// How long `useradd`, `userdel` and `groupadd` may keep finding the user database locked.
const ADMIN_DEADLINE: Duration = Duration::from_secs(60);
const ADMIN_RETRY: Duration = Duration::from_millis(200);

/// One of this process's user-database changes at a time (other processes are kept out by
/// the tools' own lock, whose refusals are retried).
static ADMIN: Mutex<()> = Mutex::new(());

/// Who one instance's processes run as, and whether that means switching user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceUser {
    /// The OS user's name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric primary group id ([`INSTANCE_GROUP`]'s when switching).
    pub gid: u32,
    /// True when we are root and must switch to `uid`/`gid` (and chown to them).
    pub switch: bool,
}

impl InstanceUser {
    /// The user of the instance at `root` (which must exist): the one its record names,
    /// made again if it is gone, or a new one recorded and made now. The current user when
    /// we are not root. Safe to call concurrently, for one root or many.
    pub fn for_root(root: &Path) -> Result<Self, NodeError> {
        if !geteuid().is_root() {
            return Ok(Self::ourselves());
        }
        let root = std::path::absolute(root).map_err(NodeError::io(root))?;
        let gid = instance_gid()?;
        let name = match read_record(&root)? {
            Some(name) => name,
            None => write_record(&root)?,
        };
        let home = root.parent().unwrap_or(Path::new("/")).to_owned();
        let user = match lookup(&name)? {
            Some(user) => user,
            None => {
                useradd(&name, &home)?;
                tracing::info!(user = %name, root = %root.display(), "created the instance's OS user");
                lookup(&name)?.ok_or_else(|| problem(&name, "was made but cannot be found"))?
            }
        };
        check_ours(&user, gid)?;
        Ok(InstanceUser { name, uid: user.uid.as_raw(), gid, switch: true })
    }

    /// The current user, when Berth is not root.
    fn ourselves() -> Self {
        let uid = geteuid();
        let name = User::from_uid(uid).ok().flatten().map_or_else(|| uid.to_string(), |u| u.name);
        InstanceUser { name, uid: uid.as_raw(), gid: getegid().as_raw(), switch: false }
    }

    /// Makes `cmd` run as this user (a no-op unless switching).
    pub fn apply(&self, cmd: &mut Command) {
        if self.switch {
            // std drops supplementary groups when root sets a uid without explicit groups.
            cmd.uid(self.uid).gid(self.gid);
        }
    }

    /// A command for `program` run as this user, with an empty environment (nothing of
    /// Berth's, such as a `PGPASSWORD` or `PGOPTIONS`, reaches it) in `/`.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear().current_dir("/");
        self.apply(&mut cmd);
        cmd
    }

    /// Hands `path` and everything below it, which Berth (root) wrote, to this user without
    /// following links: every entry must be root's or already this user's, and a file with
    /// more than one link is refused (see [`Self::take_over`]). A no-op unless switching: an
    /// unprivileged user already owns what it creates.
    pub fn chown_recursive(&self, path: &Path) -> Result<(), NodeError> {
        self.take_over(path, 0)
    }

    /// Hands `path` and everything below it from its previous owner `from` to this user
    /// (`crate::tree::chown_tree`): an entry owned by anyone else, or a file with more than
    /// one link, is refused with [`NodeError::UnsafeEntry`] and left as it is. A no-op
    /// unless switching.
    pub fn take_over(&self, path: &Path, from: u32) -> Result<(), NodeError> {
        if !self.switch {
            return Ok(());
        }
        crate::tree::chown_tree(path, self.uid, self.gid, from)
    }

    /// Chowns the directory `path` itself, nothing in it, to this user (a no-op unless
    /// switching).
    pub fn chown_dir(&self, path: &Path) -> Result<(), NodeError> {
        if !self.switch {
            return Ok(());
        }
        crate::tree::chown_dir(path, self.uid, self.gid)
    }
}

/// The group directories PostgreSQL passes through belong to: [`INSTANCE_GROUP`] (made if
/// missing) when we are root, our own group otherwise.
pub fn instance_gid() -> Result<u32, NodeError> {
    if !geteuid().is_root() {
        return Ok(getegid().as_raw());
    }
    if let Some(group) = group(INSTANCE_GROUP)? {
        return Ok(group.gid.as_raw());
    }
    let out = admin("groupadd", &["--system", INSTANCE_GROUP])?;
    // 9: the name is taken, by a concurrent groupadd.
    if !out.status.success() && out.status.code() != Some(9) {
        return Err(failed(INSTANCE_GROUP, "groupadd", &out));
    }
    group(INSTANCE_GROUP)?
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| problem(INSTANCE_GROUP, "was made but cannot be found"))
}

/// Deletes the user recorded for the instance at `root`, and the record (nothing when we
/// are not root or there is none). Its postmaster must be stopped: `userdel` refuses a user
/// that still runs processes, and so this fails.
pub fn remove_root_user(root: &Path) -> Result<(), NodeError> {
    if !geteuid().is_root() {
        return Ok(());
    }
    let Some(name) = read_record(root)? else { return Ok(()) };
    userdel(&name)?;
    let record = root.join(RECORD);
    match fs::remove_file(&record) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(NodeError::Io { path: record, source: e }),
        _ => Ok(()),
    }
}

/// Deletes an instance root: first everything in it but the record of its user, then the
/// user, then the root. `useradd --system` gives a freed uid to the next user it makes, so
/// by the time the user goes nothing of the root may still be its; and the record stays
/// until the user is gone, so no user Berth made is ever left unrecorded. A removal cut
/// short at any point is done again by the next call. Nothing when `root` is absent.
pub fn remove_instance_root(root: &Path) -> Result<(), NodeError> {
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(NodeError::Io { path: root.to_owned(), source: e }),
        Ok(_) => {}
    }
    remove_all_but_record(root)?;
    remove_root_user(root)?;
    fs::remove_dir_all(root).map_err(NodeError::io(root))
}

/// Removes every entry of `root` but [`RECORD`]. A directory is first made root's and 0700
/// (when we are root), so the instance user, should it still run a process, can no longer
/// enter or add to it by path while it goes.
fn remove_all_but_record(root: &Path) -> Result<(), NodeError> {
    for entry in fs::read_dir(root).map_err(NodeError::io(root))? {
        let entry = entry.map_err(NodeError::io(root))?;
        if entry.file_name() == RECORD {
            continue;
        }
        let path = entry.path();
        let removed = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                if geteuid().is_root() {
                    crate::tree::seize_dir(&path)?;
                }
                fs::remove_dir_all(&path)
            }
            Ok(_) => fs::remove_file(&path),
            Err(e) => Err(e),
        };
        match removed {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(NodeError::Io { path, source: e }),
            _ => {}
        }
    }
    Ok(())
}

/// A user Berth made, as `/etc/passwd` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    /// The directory the instance root was made in (its parent).
    pub home: PathBuf,
}

/// Every instance user in `/etc/passwd` (name prefix and comment both Berth's).
pub fn instance_users() -> Result<Vec<OsUser>, NodeError> {
    let passwd = Path::new("/etc/passwd");
    let text = fs::read_to_string(passwd).map_err(NodeError::io(passwd))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let [name, _, uid, _, comment, home, ..] = f[..] else { return None };
            if !valid_name(name) || comment != USER_COMMENT {
                return None;
            }
            Some(OsUser { name: name.to_owned(), uid: uid.parse().ok()?, home: PathBuf::from(home) })
        })
        .collect())
}

/// Deletes instance users whose instance root's directory no longer exists (their
/// instances were deleted with it, e.g. a test's temporary directory, or a crash came
/// between the files going and the user). Users still running processes stay. Returns the
/// names deleted.
pub fn sweep_orphan_users() -> Result<Vec<String>, NodeError> {
    if !geteuid().is_root() {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for user in instance_users()? {
        if fs::symlink_metadata(&user.home).is_ok() {
            continue;
        }
        match userdel(&user.name) {
            Ok(()) => {
                tracing::info!(user = %user.name, home = %user.home.display(), "removed an orphaned instance user");
                removed.push(user.name);
            }
            Err(e) => {
                tracing::warn!(user = %user.name, error = %e, "could not remove an orphaned instance user")
            }
        }
    }
    Ok(removed)
}

/// Deletes every instance user whose instance root was made under `dir` (tests clean up
/// after themselves with it). Fails on the first that cannot be deleted.
pub fn remove_users_under(dir: &Path) -> Result<Vec<String>, NodeError> {
    if !geteuid().is_root() {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for user in instance_users()?.into_iter().filter(|u| u.home.starts_with(dir)) {
        userdel(&user.name)?;
        removed.push(user.name);
    }
    Ok(removed)
}

fn read_record(root: &Path) -> Result<Option<String>, NodeError> {
    let path = root.join(RECORD);
    let mut text = String::new();
    match fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(&path) {
        Ok(mut f) => f.read_to_string(&mut text).map_err(NodeError::io(&path))?,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NodeError::Io { path, source: e }),
    };
    let name = text.trim();
    if !valid_name(name) {
        return Err(problem(name, &format!("named in {} is not an instance user's name", path.display())));
    }
    Ok(Some(name.to_owned()))
}

/// Records a new random name, atomically: a complete file appears or none does, and when
/// another thread records one first, that one is used.
fn write_record(root: &Path) -> Result<String, NodeError> {
    let name = format!("{USER_PREFIX}{}", random_suffix()?);
    let record = root.join(RECORD);
    let tmp = root.join(format!(".{RECORD}.{}", &name[USER_PREFIX.len()..]));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(NodeError::io(&tmp))?;
    let written = file.write_all(format!("{name}\n").as_bytes()).and_then(|()| file.sync_all());
    let linked = written.and_then(|()| fs::hard_link(&tmp, &record));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(name),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read_record(root)?.ok_or_else(|| problem(&name, "record vanished while being written"))
        }
        Err(e) => Err(NodeError::Io { path: record, source: e }),
    }
}

fn random_suffix() -> Result<String, NodeError> {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; NAME_CHARS];
    let path = Path::new("/dev/urandom");
    fs::File::open(path).and_then(|mut f| f.read_exact(&mut bytes)).map_err(NodeError::io(path))?;
    Ok(bytes.iter().map(|b| char::from(ALPHABET[usize::from(b & 31)])).collect())
}

fn valid_name(name: &str) -> bool {
    name.strip_prefix(USER_PREFIX).is_some_and(|rest| {
        rest.len() == NAME_CHARS && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

fn lookup(name: &str) -> Result<Option<User>, NodeError> {
    User::from_name(name).map_err(|e| problem(name, &format!("cannot be looked up: {e}")))
}

fn group(name: &str) -> Result<Option<Group>, NodeError> {
    Group::from_name(name).map_err(|e| problem(name, &format!("cannot be looked up: {e}")))
}

/// Refuses a user of that name that Berth did not make.
fn check_ours(user: &User, gid: u32) -> Result<(), NodeError> {
    let comment = user.gecos.to_string_lossy();
    if user.uid.is_root() || comment != USER_COMMENT || user.gid.as_raw() != gid {
        return Err(problem(&user.name, "exists but is not one Berth made (comment, group or uid differ)"));
    }
    Ok(())
}

fn useradd(name: &str, home: &Path) -> Result<(), NodeError> {
    let home = home.to_str().ok_or_else(|| problem(name, "its root's directory is not UTF-8"))?;
    let out = admin(
        "useradd",
        &[
            "--system",
            "--no-create-home",
            "--home-dir",
            home,
            "--shell",
            "/usr/sbin/nologin",
            "--gid",
            INSTANCE_GROUP,
            "--no-user-group",
            "--comment",
            USER_COMMENT,
            name,
        ],
    )?;
    // 9: the name is taken, by a concurrent call for the same root; checked by the caller.
    if out.status.success() || out.status.code() == Some(9) {
        return Ok(());
    }
    Err(failed(name, "useradd", &out))
}

fn userdel(name: &str) -> Result<(), NodeError> {
    if !valid_name(name) {
        return Err(problem(name, "is not an instance user's name"));
    }
    match lookup(name)? {
        None => return Ok(()),
        Some(user) if user.gecos.to_string_lossy() != USER_COMMENT => {
            return Err(problem(name, "exists but is not one Berth made"));
        }
        Some(_) => {}
    }
    let out = admin("userdel", &[name])?;
    // 6: no such user (deleted meanwhile).
    if out.status.success() || out.status.code() == Some(6) {
        tracing::info!(user = %name, "removed the instance's OS user");
        return Ok(());
    }
    Err(failed(name, "userdel", &out))
}

/// Runs a user-database tool, retrying while another process holds the database's lock.
fn admin(program: &str, args: &[&str]) -> Result<Output, NodeError> {
    let _one = ADMIN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let deadline = Instant::now() + ADMIN_DEADLINE;
    loop {
        let out = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|source| {
            NodeError::Spawn { program: program.into(), cwd: PathBuf::from("/"), source }
        })?;
        let locked = !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("lock");
        if !locked || Instant::now() >= deadline {
            return Ok(out);
        }
        std::thread::sleep(ADMIN_RETRY);
    }
}

fn failed(name: &str, program: &str, out: &Output) -> NodeError {
    let said = String::from_utf8_lossy(&out.stderr);
    problem(name, &format!("{program} failed ({}): {}", out.status, said.trim()))
}

fn problem(name: &str, problem: &str) -> NodeError {
    NodeError::InstanceUser { name: name.to_owned(), problem: problem.to_owned() }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs as unix_fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn names_are_recognisable_and_nothing_else_passes() {
        assert!(valid_name("berth-abcdefgh23"));
        for bad in ["berth-ABCDEFGH23", "berth-abc", "postgres", "berth-abcdefgh23x", "berth-abcdefg/23"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let suffix = random_suffix().expect("random");
        assert!(valid_name(&format!("{USER_PREFIX}{suffix}")), "{suffix}");
    }

    #[test]
    fn a_root_keeps_its_user_and_switches_exactly_when_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir(&root).expect("mkdir");
        let user = InstanceUser::for_root(&root).expect("user");
        let again = InstanceUser::for_root(&root).expect("user again");
        assert_eq!(user, again);
        assert_eq!(user.switch, geteuid().is_root());
        if user.switch {
            assert_ne!(user.uid, 0);
            assert!(user.name.starts_with(USER_PREFIX));
            remove_root_user(&root).expect("remove");
            assert_eq!(lookup(&user.name).expect("lookup"), None);
            assert!(!root.join(RECORD).exists());
        } else {
            assert_eq!(user.uid, geteuid().as_raw());
        }
    }

    #[test]
    fn the_environment_is_empty_and_the_uid_the_instances() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir(&root).expect("mkdir");
        let user = InstanceUser::for_root(&root).expect("user");
        let env = user.command(Path::new("/usr/bin/env")).output().expect("env");
        let id = user.command(Path::new("/usr/bin/id")).arg("-u").output().expect("id");
        remove_users_under(dir.path()).expect("cleanup");
        assert!(env.status.success());
        assert_eq!(String::from_utf8_lossy(&env.stdout), "", "an inherited environment");
        assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), user.uid.to_string());
    }

    /// Every path under `dir` (itself included) owned by `uid`.
    fn owned_by(dir: &Path, uid: u32) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(path) = todo.pop() {
            let Ok(meta) = fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                todo.extend(fs::read_dir(&path).expect("ls").map(|e| e.expect("entry").path()));
            }
            if meta.uid() == uid {
                out.push(path);
            }
        }
        out
    }

    #[test]
    fn a_removal_cut_short_leaves_no_file_to_the_freed_uid() {
        if !geteuid().is_root() {
            return; // no users are made or deleted
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("data/base")).expect("mkdir");
        fs::create_dir(root.join("socket")).expect("mkdir");
        fs::write(root.join("data/base/f"), "x").expect("write");
        fs::write(root.join("data/PG_VERSION"), "17").expect("write");
        fs::write(root.join("postgres.log"), "x").expect("write");
        let user = InstanceUser::for_root(&root).expect("user");
        for sub in ["data", "socket"] {
            user.chown_recursive(&root.join(sub)).expect("chown");
        }
        // One file that cannot be removed cuts the removal short.
        let stuck = root.join("data/base/f");
        let chattr = |flag: &str| Command::new("chattr").arg(flag).arg(&stuck).status();
        if !chattr("+i").is_ok_and(|s| s.success()) {
            eprintln!("chattr +i is not available here: nothing to cut the removal short with");
            remove_users_under(dir.path()).expect("cleanup");
            return;
        }
        let cut_short = remove_instance_root(&root);
        let user_left = lookup(&user.name).expect("lookup").is_some();
        let left = owned_by(&root, user.uid);
        let recorded = root.join(RECORD).exists();
        chattr("-i").expect("chattr -i");
        let finished = remove_instance_root(&root);
        remove_users_under(dir.path()).expect("cleanup");
        assert!(cut_short.is_err(), "removed an immutable file");
        assert!(user_left || left.is_empty(), "{} was deleted and its uid still owns {left:?}", user.name);
        assert!(user_left && recorded, "the user must stay, recorded, until its files are gone");
        finished.expect("remove");
        assert!(!root.exists());
        assert_eq!(lookup(&user.name).expect("lookup"), None);
    }

    #[test]
    fn chown_reaches_nested_files_and_symlinks_but_not_their_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let nested = root.join("a/b");
        fs::create_dir_all(&nested).expect("mkdir");
        fs::write(nested.join("f"), "x").expect("write");
        let outside = dir.path().join("outside");
        fs::write(&outside, "x").expect("write");
        unix_fs::symlink(&outside, nested.join("link")).expect("symlink");
        unix_fs::symlink(dir.path(), root.join("dirlink")).expect("symlink");
        let before = fs::metadata(&outside).expect("stat").uid();

        let user = InstanceUser::for_root(&root).expect("user");
        user.chown_recursive(&root).expect("chown");
        let owners: Vec<_> = [&root, &nested, &nested.join("f"), &nested.join("link"), &root.join("dirlink")]
            .iter()
            .map(|p| fs::symlink_metadata(p).expect("stat").uid())
            .collect();
        let outside_after = fs::metadata(&outside).expect("stat").uid();
        remove_users_under(dir.path()).expect("cleanup");
        assert!(owners.iter().all(|uid| *uid == user.uid), "{owners:?}");
        assert_eq!(outside_after, before, "a link's target was chowned");
    }
}
