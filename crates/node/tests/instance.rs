//! Instances against the machine's real PostgreSQL: lifecycle, templates, isolation
//! (no TCP, private directories) and failure modes. Every test makes its own instances
//! under /tmp and tears them down, their OS users with them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use node::{InitOptions, Instance, NodeError, Status};

mod common;

use common::{bins, fast, passable_tmp, tmp};

/// Runs one statement through psql on `host`/`port`; stdout on success, stderr on failure.
fn psql_at(host: &str, port: u16, user: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("/usr/bin/psql")
        .args(["-X", "-h", host, "-p", &port.to_string(), "-U", user])
        .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .env_remove("PGPASSWORD")
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn psql(inst: &Instance, sql: &str) -> String {
    let host = inst.socket_dir().to_str().expect("utf-8 path");
    psql_at(host, inst.port(), inst.superuser(), sql).expect("psql")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn finds_binaries_and_reports_version() {
    let bins = bins();
    assert!(bins.program("initdb").is_file());
    let version = bins.version().expect("version");
    let major = bins.major_version().expect("major");
    assert!(version.starts_with(&format!("{major}.")), "{version} vs {major}");
}

#[test]
fn init_start_query_stop() {
    let dir = tmp();
    let mut inst = Instance::init(&bins(), &dir.path().join("pg"), &InitOptions::default()).expect("init");
    assert_eq!(inst.status(), Status::Stopped);
    assert_eq!(inst.pid(), None);

    inst.start().expect("start");
    assert!(inst.socket_path().exists(), "no socket at {:?}", inst.socket_path());
    assert_eq!(psql(&inst, "select 1"), "1");
    let pid = inst.pid().expect("pid while running");
    assert_eq!(inst.status(), Status::Running { pid });
    // Durability is on unless asked otherwise.
    assert_eq!(psql(&inst, "show fsync"), "on");
    assert_eq!(psql(&inst, "show password_encryption"), "scram-sha-256");
    assert_eq!(psql(&inst, "show server_encoding"), "UTF8");
    let log = fs::read_to_string(inst.log_file()).expect("log");
    assert!(log.contains("ready to accept connections"), "{log}");

    inst.start().expect("second start is a no-op");
    assert_eq!(inst.pid(), Some(pid));

    inst.stop().expect("stop");
    assert_eq!(inst.status(), Status::Stopped);
    assert_eq!(inst.pid(), None);
    assert!(!inst.socket_path().exists());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    inst.stop().expect("stop is idempotent");
    inst.kill().expect("kill when stopped is a no-op");
}

#[test]
fn custom_superuser_survives_open() {
    let dir = tmp();
    let bins = bins();
    let root = dir.path().join("pg");
    let opts = InitOptions { superuser: "admin".to_owned(), ..fast() };
    drop(Instance::init(&bins, &root, &opts).expect("init"));

    let mut inst = Instance::open(&bins, &root).expect("open");
    assert_eq!(inst.superuser(), "admin");
    inst.start().expect("start");
    assert_eq!(psql(&inst, "select current_user"), "admin");
    assert_eq!(psql(&inst, "show fsync"), "off");
    inst.kill().expect("kill");
}

#[test]
fn from_template_twice_both_start_concurrently() {
    let dir = tmp();
    let bins = bins();
    let template_root = dir.path().join("template");
    let mut template = Instance::init(&bins, &template_root, &fast()).expect("init");
    template.start().expect("start template");
    psql(&template, "create table seed(x int); insert into seed values (42)");

    // A running template must not be copied.
    let err = Instance::from_template(&bins, &template_root, &dir.path().join("early"))
        .expect_err("copy of a running template");
    assert!(matches!(err, NodeError::AlreadyRunning { .. }), "{err}");
    template.stop().expect("stop template");

    let mut a = Instance::from_template(&bins, &template_root, &dir.path().join("a")).expect("copy a");
    let mut b = Instance::from_template(&bins, &template_root, &dir.path().join("b")).expect("copy b");
    assert_eq!(mode(a.data_dir()), 0o700);

    std::thread::scope(|s| {
        let ha = s.spawn(|| a.start());
        let hb = s.spawn(|| b.start());
        ha.join().expect("thread a").expect("start a");
        hb.join().expect("thread b").expect("start b");
    });
    assert_ne!(a.pid(), b.pid());
    assert_eq!(psql(&a, "select x from seed"), "42");
    assert_eq!(psql(&b, "select x from seed"), "42");

    // The copies are independent of each other.
    psql(&a, "insert into seed values (1)");
    assert_eq!(psql(&a, "select count(*) from seed"), "2");
    assert_eq!(psql(&b, "select count(*) from seed"), "1");

    a.kill().expect("kill a");
    b.kill().expect("kill b");
}

#[test]
fn no_tcp_listener() {
    let dir = tmp();
    let mut inst = Instance::init(&bins(), &dir.path().join("pg"), &fast()).expect("init");
    // An unusual port, so nothing else on the machine answers on it over TCP.
    inst.set_port(45_873);
    inst.start().expect("start");
    assert!(inst.socket_path().ends_with(".s.PGSQL.45873"));
    assert_eq!(psql(&inst, "show listen_addresses"), "");
    assert_eq!(psql(&inst, "select count(*) from pg_hba_file_rules where type <> 'local'"), "0");

    let err =
        psql_at("127.0.0.1", inst.port(), "postgres", "select 1").expect_err("TCP connection must fail");
    assert!(err.contains("Connection refused"), "{err}");
    inst.kill().expect("kill");
}

#[test]
fn data_and_socket_dirs_are_private() {
    let dir = tmp();
    let mut inst = Instance::init(&bins(), &dir.path().join("pg"), &fast()).expect("init");
    inst.start().expect("start");
    assert_eq!(mode(inst.data_dir()), 0o700);
    assert_eq!(mode(inst.socket_dir()), 0o700);

    let user = inst.os_user().clone();
    for path in [inst.data_dir(), inst.socket_dir()] {
        let meta = fs::metadata(path).expect("stat");
        assert_eq!(meta.uid(), user.uid, "{path:?}");
    }
    // The postmaster itself runs as that user, never as root.
    let pid = inst.pid().expect("pid");
    let proc_meta = fs::metadata(format!("/proc/{pid}")).expect("proc");
    assert_eq!(proc_meta.uid(), user.uid);
    assert_ne!(proc_meta.uid(), 0);
    inst.kill().expect("kill");
}

#[test]
fn restart_keeps_data() {
    let dir = tmp();
    let bins = bins();
    let root = dir.path().join("pg");
    let mut inst = Instance::init(&bins, &root, &fast()).expect("init");
    inst.start().expect("start");
    psql(&inst, "create table kept(v text); insert into kept values ('hello')");
    inst.stop().expect("stop");

    inst.start().expect("restart");
    assert_eq!(psql(&inst, "select v from kept"), "hello");
    inst.stop().expect("stop");

    // And through a fresh handle, as after a restart of Berth.
    drop(inst);
    let mut reopened = Instance::open(&bins, &root).expect("open");
    reopened.start().expect("start reopened");
    assert_eq!(psql(&reopened, "select v from kept"), "hello");
    reopened.stop().expect("stop");
}

#[test]
fn kill_then_start_recovers() {
    let dir = tmp();
    // Durable settings: with fast_unsafe (synchronous_commit=off) an immediate shutdown
    // may lose the last commits, which is what it is for.
    let mut inst = Instance::init(&bins(), &dir.path().join("pg"), &InitOptions::default()).expect("init");
    inst.start().expect("start");
    psql(&inst, "create table t(x int); insert into t values (7)");
    inst.kill().expect("kill");
    assert_eq!(inst.status(), Status::Stopped);

    inst.start().expect("start after immediate shutdown");
    assert_eq!(psql(&inst, "select x from t"), "7");
    inst.kill().expect("kill");
}

#[test]
fn drop_stops_a_started_instance() {
    let dir = tmp();
    let pid = {
        let mut inst = Instance::init(&bins(), &dir.path().join("pg"), &fast()).expect("init");
        inst.start().expect("start");
        inst.pid().expect("pid")
    };
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still runs");
}

#[test]
fn open_of_empty_data_dir_is_an_error() {
    let dir = tmp();
    let root = dir.path().join("pg");
    fs::create_dir_all(root.join("data")).expect("mkdir");
    let err = Instance::open(&bins(), &root).expect_err("open of empty data dir");
    assert!(matches!(err, NodeError::NotInitialised { .. }), "{err}");
    let err = Instance::from_template(&bins(), &root, &dir.path().join("copy"))
        .expect_err("copy of empty template");
    assert!(matches!(err, NodeError::NotInitialised { .. }), "{err}");
}

#[test]
fn start_on_broken_data_dir_fails_fast_with_log() {
    let dir = tmp();
    let mut inst = Instance::init(&bins(), &dir.path().join("pg"), &fast()).expect("init");
    // Leave the data directory in place but empty.
    for entry in fs::read_dir(inst.data_dir()).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            fs::remove_dir_all(&path).expect("rm dir");
        } else {
            fs::remove_file(&path).expect("rm file");
        }
    }
    let started = Instant::now();
    let err = inst.start().expect_err("start on an empty data dir");
    assert!(started.elapsed() < Duration::from_secs(30));
    match &err {
        NodeError::StartFailed { log_tail, .. } => {
            assert!(log_tail.contains("postgresql.conf"), "{log_tail}")
        }
        other => panic!("unexpected error: {other}"),
    }
    assert_eq!(inst.status(), Status::Stopped);
}

#[test]
fn init_into_non_empty_data_dir_reports_initdb_output() {
    let dir = tmp();
    let root = dir.path().join("pg");
    fs::create_dir_all(root.join("data")).expect("mkdir");
    fs::write(root.join("data/stray"), "x").expect("write");
    let err = Instance::init(&bins(), &root, &fast()).expect_err("init into non-empty dir");
    match &err {
        NodeError::CommandFailed { output, .. } => {
            assert!(output.contains("not empty"), "{output}")
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn a_second_handle_sees_and_stops_a_running_postmaster() {
    let dir = tmp();
    let bins = bins();
    let root = dir.path().join("pg");
    let mut first = Instance::init(&bins, &root, &fast()).expect("init");
    first.start().expect("start");
    let pid = first.pid().expect("pid");

    // As after a restart of Berth while the postmaster kept running.
    let mut second = Instance::open(&bins, &root).expect("open");
    assert_eq!(second.status(), Status::Running { pid });
    let err = second.start().expect_err("start over a running postmaster");
    assert!(matches!(err, NodeError::AlreadyRunning { .. }), "{err}");

    second.stop().expect("stop through the second handle");
    assert_eq!(second.status(), Status::Stopped);
    // The first handle learns of the exit when it reaps its child, a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while first.status() != Status::Stopped {
        assert!(std::time::Instant::now() < deadline, "the first handle never saw the postmaster stop");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!first.socket_path().exists());
}

/// Every path under `root` (not following symlinks) with its mode bits.
fn tree_modes(root: &Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(path) = todo.pop() {
        let meta = fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            todo.extend(fs::read_dir(&path).expect("read_dir").map(|e| e.expect("entry").path()));
        }
        if !meta.file_type().is_symlink() {
            out.push((path, meta.permissions().mode() & 0o777));
        }
    }
    out
}

#[test]
fn nothing_an_instance_writes_is_open_to_others() {
    // The directory the instances live in, as Berth makes it (not the 0755 of `tmp`).
    let dir = passable_tmp();
    let bins = bins();
    let mut inst = Instance::init(&bins, &dir.path().join("pg"), &fast()).expect("init");
    inst.start().expect("start");
    // A failing statement is logged with its text: tenants' SQL lands in the log.
    let err = psql_at(
        inst.socket_dir().to_str().expect("utf-8"),
        inst.port(),
        "postgres",
        "select tenant_marker_7f3",
    )
    .expect_err("no such column");
    assert!(err.contains("tenant_marker_7f3"), "{err}");
    inst.stop().expect("stop");
    Instance::from_template(&bins, &dir.path().join("pg"), &dir.path().join("copy")).expect("copy");

    let log = fs::read_to_string(dir.path().join("pg/postgres.log")).expect("log");
    assert!(log.contains("tenant_marker_7f3"), "the log should hold the statement: {log}");
    assert_eq!(mode(&dir.path().join("pg/postgres.log")), 0o600);
    let modes = tree_modes(dir.path());
    assert!(modes.len() > 100, "walked only {} paths", modes.len());
    for (path, mode) in modes {
        assert_eq!(mode & 0o007, 0, "{path:?} is open to others ({mode:o})");
    }
}
