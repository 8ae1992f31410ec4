//! Branches end to end through `berth up`, its CLI and its proxy: `berth branches create`
//! makes `<project>.<branch>`, reachable on the proxy with the project's credentials, while
//! a session on the parent stays connected and pgbench writing on the parent sees no failed
//! transaction (the branch holds every row committed before its job); rotation reaches the branch; a restart of
//! `berth up` starts every branch's instance again; a deleted branch is no longer routed.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

struct Up {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
    data: PathBuf,
}

fn berth_up(data: &Path) -> Up {
    let mut child = Command::new(BERTH)
        .args(["up", "--data"])
        .arg(data)
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--pooled-listen",
            "127.0.0.1:0",
            "--direct-listen",
            "127.0.0.1:0",
        ])
        .env_remove("BERTH_API_URL")
        .env_remove("BERTH_API_KEY")
        .env("BERTH_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("Press Ctrl-C") {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("berth up exited: {}", stderr.join().unwrap_or_default());
        }
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Up { child, stderr, data: data.to_owned() }
}

impl Up {
    fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        assert!(self.child.wait().unwrap().success());
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        stderr.join().unwrap()
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BERTH)
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .env_remove("BERTH_API_URL")
            .env_remove("BERTH_API_KEY")
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "berth {args:?}: {stdout}\n{stderr}");
        stdout.trim().to_owned()
    }
}

/// A failing test stops its `berth up` (and so its instances) instead of leaving it running.
impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

/// Runs one statement with psql; `Err(stderr)` when it fails.
fn psql(uri: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql").arg(uri).args(["-XAtq", "-c", sql]).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Routes follow the catalog shortly after a change: retry until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_branch_is_served_as_project_dot_branch_through_the_proxy() {
    let dir = tempfile::Builder::new().prefix("berth-branches-").tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let up = berth_up(&dir.path().join("data"));
    up.cli(&["projects", "create", "shop"]);
    let main_uri = up.cli(&["connection", "shop"]);
    psql(&main_uri, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3)").unwrap();

    // A session on the parent, through the proxy, open across the branch's creation.
    let mut held = Command::new("psql")
        .arg(&main_uri)
        .args(["-X", "-At"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut held_in = held.stdin.take().unwrap();
    let mut held_out = BufReader::new(held.stdout.take().unwrap());
    let mut ask = |sql: &str| {
        writeln!(held_in, "{sql};").unwrap();
        let mut line = String::new();
        let _ = held_out.read_line(&mut line);
        line.trim().to_owned()
    };
    assert_eq!(ask("SELECT pg_backend_pid() > 0"), "t");
    let pid = ask("SELECT pg_backend_pid()");

    // pgbench writes on the parent, through the proxy, while the branch is made.
    psql(&main_uri, "CREATE TABLE marks (i bigserial PRIMARY KEY)").unwrap();
    let script = dir.path().join("insert.sql");
    std::fs::write(&script, "INSERT INTO marks DEFAULT VALUES;\n").unwrap();
    let pgbench = Command::new("pgbench")
        .args(["-n", "-c", "2", "-T", "4", "-f"])
        .arg(&script)
        .arg(&main_uri)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("pgbench writes", || psql(&main_uri, "SELECT count(*) > 10 FROM marks").as_deref() == Ok("t"));
    let before: i64 = psql(&main_uri, "SELECT max(i) FROM marks").unwrap().parse().unwrap();
    let created = up.cli(&["branches", "create", "shop", "dev"]);
    assert!(created.contains("shop.dev") && created.contains("ready"), "{created}");
    let load = pgbench.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&load.stdout).into_owned() + &String::from_utf8_lossy(&load.stderr);
    assert!(load.status.success(), "pgbench failed on the parent: {report}");
    assert!(report.contains("number of failed transactions: 0 "), "{report}");
    assert_eq!(ask("SELECT pg_backend_pid()"), pid, "the parent's session was dropped");
    assert_eq!(ask("SELECT count(*) FROM t"), "3");

    let dev_uri = up.cli(&["connection", "shop", "--branch", "dev"]);
    assert!(dev_uri.contains("/shop.dev?"), "{dev_uri}");
    assert_eq!(
        dev_uri.split('@').next(),
        main_uri.split('@').next(),
        "a branch has the project's credentials"
    );
    eventually("shop.dev is routed", || psql(&dev_uri, "SELECT count(*) FROM t").as_deref() == Ok("3"));
    let kept = psql(&dev_uri, &format!("SELECT count(*) FROM marks WHERE i <= {before}")).unwrap();
    assert_eq!(kept, before.to_string(), "rows committed before the branch job are missing");
    let pooled_dev = up.cli(&["connection", "shop", "--branch", "dev", "--pooled"]);
    psql(&pooled_dev, "INSERT INTO t VALUES (4)").unwrap();
    assert_eq!(psql(&dev_uri, "SELECT count(*) FROM t").unwrap(), "4");
    assert_eq!(psql(&main_uri, "SELECT count(*) FROM t").unwrap(), "3");
    let listed = up.cli(&["branches", "list", "shop", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // Rotation reaches the branch: the new password logs in there, the old one is refused.
    up.cli(&["credentials", "rotate", "shop"]);
    let new_dev_uri = up.cli(&["connection", "shop", "--branch", "dev"]);
    assert_ne!(new_dev_uri, dev_uri);
    assert_eq!(psql(&new_dev_uri, "SELECT count(*) FROM t").unwrap(), "4");
    let refused = psql(&dev_uri, "SELECT 1").unwrap_err();
    assert!(refused.contains("password authentication failed"), "{refused}");
    assert_eq!(ask("SELECT 'still here'"), "still here");
    drop(held_in);
    let _ = held.wait();

    // An empty branch survives a restart of berth up (its instance is started again).
    up.cli(&["branches", "create", "shop", "qa", "--copy", "empty"]);
    let log = up.stop();
    let up = berth_up(&dir.path().join("data"));
    let qa_uri = up.cli(&["connection", "shop", "--branch", "qa"]);
    eventually("shop.qa answers after a restart", || {
        psql(&qa_uri, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").as_deref() == Ok("0")
    });
    let new_dev_uri = up.cli(&["connection", "shop", "--branch", "dev"]);
    assert_eq!(psql(&new_dev_uri, "SELECT count(*) FROM t").unwrap(), "4");

    // A preview database through the CLI: reachable with the project's credentials.
    let created = up.cli(&["previews", "create", "shop", "--ttl", "1h", "--source", "dev", "--json"]);
    let preview: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(preview["state"], "ready", "{preview}");
    let preview_id = preview["id"].as_str().unwrap();
    let preview_uri = up.cli(&["previews", "connection", preview_id, "--pooled"]);
    assert!(preview_uri.contains(&format!("/shop.{preview_id}?")), "{preview_uri}");
    eventually("the preview is routed", || {
        psql(&preview_uri, "SELECT count(*) FROM t").as_deref() == Ok("4")
    });
    up.cli(&["previews", "delete", preview_id]);
    eventually("the deleted preview is no longer routed", || psql(&preview_uri, "SELECT 1").is_err());

    // A deleted branch is no longer routed.
    up.cli(&["branches", "delete", "shop", "dev"]);
    eventually("shop.dev is no longer routed", || psql(&new_dev_uri, "SELECT 1").is_err());
    let log = log + &up.stop();
    let password = new_dev_uri["postgresql://shop_owner:".len()..].split('@').next().unwrap();
    assert!(!log.contains(password), "the log holds a password");
}
