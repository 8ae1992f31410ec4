//! End-to-end tests of the built binary with real programs: `berth up` and `berth proxy`,
//! driven by `psql` and `pgbench` over TLS, against real PostgreSQL instances.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn data_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("berth-e2e-").tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// A running `berth up`: its connection string, and its stderr collected on stop.
struct Up {
    child: Child,
    uri: String,
    stderr: std::thread::JoinHandle<String>,
}

fn berth_up(data: &Path) -> Up {
    let mut child = Command::new(BERTH)
        .args(["up", "--data"])
        .arg(data)
        .args(["--direct-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth up");
    let mut err = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut uri = None;
    let mut line = String::new();
    while uri.is_none() {
        line.clear();
        if out.read_line(&mut line).expect("read stdout") == 0 {
            panic!(
                "berth up exited before printing a connection string: {}",
                stderr.join().unwrap_or_default()
            );
        }
        if let Some(at) = line.find("postgresql://") {
            uri = Some(line[at..].trim().to_owned());
        }
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Up { child, uri: uri.expect("uri"), stderr }
}

impl Up {
    /// SIGTERM, wait for a clean exit, and return what it logged.
    fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "berth up exited with {status}");
        self.stderr.join().expect("stderr thread")
    }

    fn password(&self) -> String {
        let after_user = &self.uri["postgresql://app:".len()..];
        after_user[..after_user.find('@').expect("@ in uri")].to_owned()
    }
}

fn psql(uri: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(uri)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .output()
        .expect("psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pgbench(uri: &str, args: &[&str]) -> String {
    let out = Command::new("pgbench").args(args).arg(uri).output().expect("pgbench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

#[test]
fn up_serves_psql_and_pgbench_and_restarts_with_its_data() {
    let data = data_dir();
    let up = berth_up(data.path());
    assert!(up.uri.contains("sslmode=require"), "{}", up.uri);

    let (ok, out, err) = psql(&up.uri, "select 1");
    assert!(ok && out == "1", "psql: {out} {err}");
    // verify-full against the printed CA, by host name.
    let verify = format!(
        "{}&sslmode=verify-full&sslrootcert={}",
        up.uri.replace("127.0.0.1", "localhost").replace("?sslmode=require", "?application_name=e2e"),
        data.path().join("ca.pem").display()
    );
    let (ok, out, err) = psql(&verify, "select current_user");
    assert!(ok && out == "app", "verify-full: {out} {err}");
    // Plaintext is refused.
    let plain = up.uri.replace("sslmode=require", "sslmode=disable");
    let (ok, _, err) = psql(&plain, "select 1");
    assert!(!ok && err.contains("TLS is required"), "{err}");

    pgbench(&up.uri, &["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        let text = pgbench(&up.uri, &["-c", "4", "-j", "2", "-t", "50", "-M", mode]);
        assert!(text.contains("number of transactions actually processed: 200/200"), "{mode}: {text}");
        assert!(text.contains("number of failed transactions: 0"), "{mode}: {text}");
    }
    let (ok, out, _) = psql(&up.uri, "create table kept(v text); insert into kept values ('still here')");
    assert!(ok, "{out}");
    let password = up.password();
    let logs = up.stop();
    assert!(!logs.contains(&password), "the password leaked into the log");
    assert!(!logs.contains("SCRAM-SHA-256$"), "a verifier leaked into the log");

    // Same directory: same password, same data, same CA.
    let up = berth_up(data.path());
    assert_eq!(up.password(), password);
    let (ok, out, err) = psql(&up.uri, "select v from kept");
    assert!(ok && out == "still here", "{out} {err}");
    up.stop();
}

fn write_config(path: &Path, listen_port: u16, tls_dir: &Path, dbs: &[(&str, &testkit::TestPg, &str)]) {
    let mut text =
        format!("[proxy]\nlisten = \"127.0.0.1:{listen_port}\"\ntls_dir = \"{}\"\n", tls_dir.display());
    for (name, pg, password) in dbs {
        text.push_str(&format!(
            "\n[databases.{name}]\nsocket_dir = \"{}\"\nport = {}\ndbname = \"postgres\"\n\n[databases.{name}.roles.tester]\npassword = \"{password}\"\n",
            pg.socket_dir().display(),
            pg.port()
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("replace config");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn proxy_command_reloads_routes_on_change_and_sighup_without_dropping_sessions() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (pg_a, pg_b) = rt.block_on(async {
        let a = testkit::TestPg::start().expect("instance a");
        let b = testkit::TestPg::start().expect("instance b");
        for pg in [&a, &b] {
            pg.superuser().await.expect("su").batch_execute("CREATE ROLE tester LOGIN").await.expect("role");
        }
        (a, b)
    });
    let dir = data_dir();
    let config: PathBuf = dir.path().join("berth.toml");
    let tls = dir.path().join("tls");
    let port = free_port();
    write_config(&config, port, &tls, &[("alpha", &pg_a, "pw-a")]);
    let mut child = Command::new(BERTH)
        .args(["proxy", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth proxy");
    let url = |db: &str, pw: &str| {
        format!(
            "postgresql://tester:{pw}@localhost:{port}/{db}?sslmode=verify-full&sslrootcert={}&hostaddr=127.0.0.1",
            tls.join("ca.pem").display()
        )
    };
    wait_for("the proxy to serve alpha", || psql(&url("alpha", "pw-a"), "select 1").1 == "1");

    // A session that stays open across both reloads.
    let mut held = Command::new("psql")
        .arg(url("alpha", "pw-a"))
        .args(["-X", "-At"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("psql held open");
    let mut held_in = held.stdin.take().expect("stdin");
    use std::io::Write;
    writeln!(held_in, "select 'before';").expect("write");

    // File change: beta appears.
    write_config(&config, port, &tls, &[("alpha", &pg_a, "pw-a"), ("beta", &pg_b, "pw-b")]);
    wait_for("beta after the file changed", || psql(&url("beta", "pw-b"), "select 2").1 == "2");

    // A broken file is refused and the previous routes stay.
    std::fs::write(&config, "[databases.alpha\nnot toml").expect("write broken");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(psql(&url("beta", "pw-b"), "select 3").1, "3");

    // SIGHUP: a change the file poller cannot see (same size, modification time put back),
    // so only the signal can make the proxy pick it up.
    write_config(&config, port, &tls, &[("alpha", &pg_a, "pw-a"), ("beta", &pg_b, "pw-b")]);
    std::thread::sleep(Duration::from_millis(2500));
    let stamp = dir.path().join("stamp");
    std::fs::write(&stamp, "").expect("stamp");
    let touched = |to: &Path, from: &Path| {
        let ok = Command::new("touch").arg("-r").arg(from).arg(to).status().expect("touch").success();
        assert!(ok, "touch -r failed");
    };
    touched(&stamp, &config);
    write_config(&config, port, &tls, &[("alpha", &pg_a, "pw-z"), ("beta", &pg_b, "pw-b")]);
    touched(&config, &stamp);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(psql(&url("alpha", "pw-a"), "select 4").1, "4", "reloaded without SIGHUP");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGHUP)
        .expect("SIGHUP");
    wait_for("the new alpha password", || psql(&url("alpha", "pw-z"), "select 5").1 == "5");
    assert!(!psql(&url("alpha", "pw-a"), "select 6").0, "the old password still works");

    writeln!(held_in, "select 'after';").expect("write");
    drop(held_in);
    let out = held.wait_with_output().expect("held psql");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "before\nafter", "the held session was dropped");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "berth proxy exited with {status}");
    let mut logs = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut logs).expect("logs");
    for secret in ["pw-a", "pw-b", "SCRAM-SHA-256$"] {
        assert!(!logs.contains(secret), "{secret} leaked into the log");
    }
    assert!(logs.contains("reload failed"), "the broken file was not reported: {logs}");
}
