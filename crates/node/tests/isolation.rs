//! Tenants' instances isolated from each other by the OS: when Berth is root, each instance
//! runs as a user of its own who can neither read another instance's files nor reach its
//! socket; the client programs Berth runs against an instance run as that user; users go
//! with their instances, survive a crash in between, and can be made concurrently. Tests
//! that need root to mean anything pass trivially (and say so) without it.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use node::schema::{self, Endpoint};
use node::{Instance, InstanceUser, NodeError, PgBinaries};

mod common;

use common::{Scratch, bins, fast, tmp};

fn as_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("not root: every instance runs as the current user, nothing to isolate");
    false
}

/// A sealed template and two instances copied from it, started.
fn two_instances(dir: &Scratch) -> (Instance, Instance) {
    let bins = bins();
    let template = dir.path().join("template");
    Instance::init(&bins, &template, &fast()).expect("init").seal_as_template().expect("seal");
    let mut a = Instance::from_template(&bins, &template, &dir.path().join("a")).expect("copy a");
    let mut b = Instance::from_template(&bins, &template, &dir.path().join("b")).expect("copy b");
    a.start().expect("start a");
    b.start().expect("start b");
    (a, b)
}

/// The real and effective uids `/proc/<pid>/status` gives.
fn proc_uids(pid: u32) -> (u32, u32) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    let ids: Vec<u32> = line.split_whitespace().skip(1).map(|v| v.parse().expect("uid")).collect();
    (ids[0], ids[1])
}

/// Runs `program args` as `user` with an empty environment.
fn run_as(user: &InstanceUser, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_clear()
        .current_dir("/")
        .uid(user.uid)
        .gid(user.gid)
        .output()
        .expect("spawn")
}

fn psql_as(user: &InstanceUser, bins: &PgBinaries, inst: &Instance, sql: &str) -> Output {
    let socket = inst.socket_dir().to_str().expect("utf-8");
    let psql = bins.program("psql");
    let port = inst.port().to_string();
    run_as(
        user,
        psql.to_str().expect("utf-8"),
        &["-X", "-h", socket, "-p", &port, "-U", inst.superuser(), "-d", "postgres", "-Atc", sql],
    )
}

#[test]
fn two_instances_run_as_different_users_and_neither_reads_the_others_files_or_socket() {
    let dir = tmp();
    let (mut a, mut b) = two_instances(&dir);
    if !as_root() {
        return;
    }
    let (ua, ub) = (a.os_user().clone(), b.os_user().clone());
    assert_ne!(ua.uid, ub.uid);
    for (inst, user) in [(&a, &ua), (&b, &ub)] {
        assert!(user.name.starts_with(node::USER_PREFIX), "{user:?}");
        assert_ne!(user.uid, 0);
        let pid = inst.pid().expect("pid");
        assert_eq!(proc_uids(pid), (user.uid, user.uid), "postmaster {pid}");
    }

    let bins = bins();
    for (me, mine, theirs) in [(&ua, &a, &b), (&ub, &b, &a)] {
        // Its own files and socket, yes.
        let own = run_as(me, "/bin/cat", &[mine.data_dir().join("PG_VERSION").to_str().expect("utf-8")]);
        assert!(own.status.success(), "{}", String::from_utf8_lossy(&own.stderr));
        let own = psql_as(me, &bins, mine, "select 1");
        assert!(own.status.success(), "{}", String::from_utf8_lossy(&own.stderr));
        // The other's, no: files, listing, and a superuser session on its socket.
        for (program, path) in [
            ("/bin/cat", theirs.data_dir().join("PG_VERSION")),
            ("/bin/cat", theirs.data_dir().join("global/pg_control")),
            ("/bin/ls", theirs.data_dir().to_owned()),
            ("/bin/ls", theirs.socket_dir().to_owned()),
            ("/bin/cat", theirs.log_file().to_owned()),
        ] {
            let out = run_as(me, program, &[path.to_str().expect("utf-8")]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("Permission denied"), "{program} {path:?}: {err}");
        }
        let out = psql_as(me, &bins, theirs, "select 1");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("Permission denied"), "{err}");
    }
    a.kill().expect("kill a");
    b.kill().expect("kill b");
}

#[test]
fn client_programs_run_as_the_instances_user_with_an_empty_environment() {
    let dir = tmp();
    let (mut a, mut b) = two_instances(&dir);
    let bins = bins();
    let out =
        a.client_command("psql").args(["-X", "-h"]).arg(a.socket_dir()).args(["-Atc", "select 1"]).output();
    let out = out.expect("psql");
    // -U left out: libpq takes the OS user's name, so the session's role tells who ran it.
    let err = String::from_utf8_lossy(&out.stderr);
    if as_root() {
        assert!(err.contains(&format!("role \"{}\" does not exist", a.os_user().name)), "{err}");
    }

    psql_ok(&a, "create table t (id int primary key, v text)");
    fn at<'a>(inst: &'a Instance, os_user: &'a InstanceUser) -> Endpoint<'a> {
        Endpoint {
            socket_dir: inst.socket_dir(),
            port: inst.port(),
            user: "postgres",
            dbname: "postgres",
            os_user,
        }
    }
    // Each program as its own instance's user: it works.
    let (ua, ub) = (a.os_user().clone(), b.os_user().clone());
    schema::copy_schema(&bins, at(&a, &ua), at(&b, &ub)).expect("copy schema");
    assert_eq!(psql_ok(&b, "select count(*) from pg_class where relname = 't'"), "1");
    if as_root() {
        // pg_dump run as b's user cannot reach a's socket: it never runs as root.
        let err = schema::copy_schema(&bins, at(&a, &ub), at(&b, &ub)).expect_err("pg_dump reached a");
        assert!(
            matches!(&err, NodeError::CommandFailed { output, .. } if output.contains("Permission denied")),
            "{err}"
        );
    }
    a.kill().expect("kill a");
    b.kill().expect("kill b");
}

fn psql_ok(inst: &Instance, sql: &str) -> String {
    let out = inst
        .client_command("psql")
        .args(["-X", "-h"])
        .arg(inst.socket_dir())
        .args(["-U", inst.superuser(), "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn user_exists(name: &str) -> bool {
    nix::unistd::User::from_name(name).expect("lookup").is_some()
}

#[test]
fn a_sealed_template_is_roots_and_its_user_is_gone() {
    let dir = tmp();
    let bins = bins();
    let template = dir.path().join("template");
    let inst = Instance::init(&bins, &template, &fast()).expect("init");
    let user = inst.os_user().clone();
    inst.seal_as_template().expect("seal");
    if !as_root() {
        return;
    }
    assert!(!user_exists(&user.name), "{} is left", user.name);
    let owners = owners(&template.join("data"));
    assert!(owners.iter().all(|(_, uid)| *uid == 0), "{owners:?}");
}

fn owners(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(path) = todo.pop() {
        let meta = fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            todo.extend(fs::read_dir(&path).expect("ls").map(|e| e.expect("entry").path()));
        }
        out.push((path, meta.uid()));
    }
    out
}

#[test]
fn a_user_goes_with_its_instance_and_not_while_it_runs() {
    let dir = tmp();
    let (mut a, mut b) = two_instances(&dir);
    let name = a.os_user().name.clone();
    let root = a.root().to_owned();
    let err = node::remove_root(&root).expect_err("removed a running instance");
    assert!(matches!(err, NodeError::AlreadyRunning { .. }), "{err}");
    a.stop().expect("stop");
    drop(a);
    node::remove_root(&root).expect("remove");
    assert!(!root.exists());
    node::remove_root(&root).expect("removing what is gone is nothing");
    if as_root() {
        assert!(!user_exists(&name), "{name} is left");
        assert!(user_exists(&b.os_user().name), "the other instance's user went too");
    }
    b.kill().expect("kill b");
}

#[test]
fn a_user_deleted_under_its_instance_is_made_again_and_given_the_data() {
    let dir = tmp();
    let (mut a, _b) = two_instances(&dir);
    if !as_root() {
        return;
    }
    a.stop().expect("stop");
    let before = a.os_user().clone();
    let root = a.root().to_owned();
    drop(a);
    // As after a sweep took it, or an operator: the record still names it.
    let out = Command::new("userdel").arg(&before.name).output().expect("userdel");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bins = bins();
    let mut again = Instance::open(&bins, &root).expect("open");
    assert_eq!(again.os_user().name, before.name, "the recorded name is reused");
    again.start().expect("start");
    assert_eq!(proc_uids(again.pid().expect("pid")).1, again.os_user().uid);
    assert_eq!(psql_ok(&again, "select 1"), "1");
    again.kill().expect("kill");
}

#[test]
fn users_whose_directory_is_gone_are_swept_and_no_others() {
    if !as_root() {
        return;
    }
    let kept = tmp();
    let gone = tempfile::Builder::new().prefix("berth-node-").tempdir_in("/tmp").expect("tempdir");
    let mk = |parent: &Path| {
        let root = parent.join("r");
        fs::create_dir(&root).expect("mkdir");
        InstanceUser::for_root(&root).expect("user")
    };
    let (keep, orphan) = (mk(kept.path()), mk(gone.path()));
    drop(gone); // as a test's data directory removed with its instances, users left behind
    let swept = node::sweep_orphan_users().expect("sweep");
    assert!(swept.contains(&orphan.name), "{swept:?}");
    assert!(!user_exists(&orphan.name));
    assert!(user_exists(&keep.name), "a user whose directory exists was swept");
}

#[test]
fn concurrent_creation_gives_each_root_one_user_of_its_own() {
    let dir = tmp();
    let roots: Vec<PathBuf> = (0..8).map(|i| dir.path().join(format!("r{i}"))).collect();
    for r in &roots {
        fs::create_dir(r).expect("mkdir");
    }
    // Two threads per root, all at once.
    let users: Vec<(usize, InstanceUser)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let root = &roots[i % 8];
                s.spawn(move || (i % 8, InstanceUser::for_root(root).expect("user")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    if as_root() {
        for (i, user) in &users {
            for (j, other) in &users {
                assert_eq!(i == j, user == other, "roots {i} and {j}: {user:?} vs {other:?}");
            }
        }
        let listed = node::instance_users().expect("list");
        let under: Vec<_> = listed.iter().filter(|u| u.home.starts_with(dir.path())).collect();
        assert_eq!(under.len(), 8, "{under:?}");
    }
}

/// A file only root may read, made by the test beside the instance (same filesystem), for
/// the instance user to hard-link into its own directories (root makes the link here:
/// `fs.protected_hardlinks` stops the instance user, not root, and may be 0 elsewhere).
fn root_only_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let target = dir.join("shadow");
    fs::write(&target, "root-only").expect("write");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).expect("chmod");
    target
}

fn owner_and_mode(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).expect("stat");
    (meta.uid(), meta.mode() & 0o7777)
}

#[test]
fn a_hard_link_planted_in_the_socket_directory_is_never_chowned() {
    if !as_root() {
        return;
    }
    let dir = tmp();
    let bins = bins();
    let root = dir.path().join("pg");
    drop(Instance::init(&bins, &root, &fast()).expect("init"));
    let target = root_only_file(dir.path());
    fs::hard_link(&target, root.join("socket/x")).expect("link");

    let mut inst = Instance::open(&bins, &root).expect("open");
    assert_eq!(owner_and_mode(&target), (0, 0o600), "open chowned the link's target");
    inst.start().expect("start");
    let after_start = owner_and_mode(&target);
    let link_left = root.join("socket/x").exists();
    inst.kill().expect("kill");
    assert_eq!(after_start, (0, 0o600), "start chowned the link's target");
    // Not the instance user's: unlinked by start, the target untouched.
    assert!(!link_left, "the planted link is still in the socket directory");
    assert_eq!(fs::read_to_string(&target).expect("read"), "root-only");
}

#[test]
fn a_hard_link_planted_in_a_data_directory_handed_over_is_refused() {
    if !as_root() {
        return;
    }
    let dir = tmp();
    let bins = bins();
    let root = dir.path().join("pg");
    drop(Instance::init(&bins, &root, &fast()).expect("init"));
    // The data directory's owner differs (an older Berth's `postgres`, or a user made
    // again): start hands it over, and the old owner had planted a link in it.
    let nobody = 65534;
    for (path, _) in owners(&root.join("data")) {
        std::os::unix::fs::lchown(&path, Some(nobody), None).expect("chown");
    }
    let target = root_only_file(dir.path());
    fs::hard_link(&target, root.join("data/base/x")).expect("link");

    let mut inst = Instance::open(&bins, &root).expect("open");
    let err = inst.start().expect_err("started with a planted hard link");
    assert!(matches!(&err, NodeError::UnsafeEntry { path, .. } if path.ends_with("data/base/x")), "{err}");
    assert_eq!(owner_and_mode(&target), (0, 0o600), "start chowned the link's target");
    // Without the link the handover goes through.
    fs::remove_file(root.join("data/base/x")).expect("rm");
    inst.start().expect("start");
    let uid = inst.os_user().uid;
    inst.kill().expect("kill");
    let others: Vec<_> = owners(&root.join("data")).into_iter().filter(|(_, u)| *u != uid).collect();
    assert!(others.is_empty(), "{others:?}");
}
