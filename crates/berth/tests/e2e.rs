//! End-to-end tests of the built binary with real programs: `berth up` and `berth proxy`,
//! driven by `psql` and `pgbench` over TLS, against real PostgreSQL instances.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

#[test]
fn up_creates_a_project_with_the_cli_serves_both_strings_and_restarts_with_its_data() {
    let data = data_dir();
    let ports = Ports::free();
    let up = berth_up(data.path(), ports);
    for want in ["API:", "pooled proxy:", "direct proxy:", "ca.pem", "admin.key", "berth projects create"] {
        assert!(up.stdout.contains(want), "banner lacks {want}: {}", up.stdout);
    }
    let admin_key = std::fs::read_to_string(data.path().join("admin.key")).expect("admin.key");
    let admin_key = admin_key.trim().to_owned();
    assert!(admin_key.starts_with("berth_live_"));
    assert!(up.stdout.contains(&admin_key), "the admin key is printed once at first start");
    use std::os::unix::fs::PermissionsExt;
    for private in ["admin.key", "master.key"] {
        let mode = std::fs::metadata(data.path().join(private)).expect(private).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{private}");
    }

    let (ok, out, err) = up.cli(&["projects", "create", "shop"]);
    assert!(ok, "projects create: {out} {err}");
    assert!(out.contains("shop") && out.contains("ready"), "{out}");
    let (ok, out, err) = up.cli(&["projects", "create", "shop"]);
    assert!(!ok && err.contains("already exists"), "duplicate: {out} {err}");
    let (ok, list, _) = up.cli(&["projects", "list", "--json"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(list[0]["name"], "shop");

    let direct = up.connection("shop", false);
    let pooled = up.connection("shop", true);
    assert!(direct.contains(&format!(":{}/shop?sslmode=require", ports.direct)), "{direct}");
    assert!(pooled.contains(&format!(":{}/shop?sslmode=require", ports.pooled)), "{pooled}");
    let (ok, out, err) = psql(&pooled, "create table t(x int); insert into t values (42)");
    assert!(ok, "pooled: {out} {err}");
    let (ok, out, err) = psql(&direct, "select x, current_user from t");
    assert!(ok && out == "42|shop_owner", "direct: {out} {err}");
    // verify-full against the printed CA.
    let verify = format!(
        "{}&sslmode=verify-full&sslrootcert={}",
        direct.replace("127.0.0.1", "localhost").replace("?sslmode=require", "?application_name=e2e"),
        data.path().join("ca.pem").display()
    );
    let (ok, out, err) = psql(&verify, "select 1");
    assert!(ok && out == "1", "verify-full: {out} {err}");
    let (ok, _, err) = psql(&direct.replace("sslmode=require", "sslmode=disable"), "select 1");
    assert!(!ok && err.contains("TLS is required"), "{err}");
    // The owner role is not a superuser.
    let (ok, _, err) = psql(&direct, "create role intruder superuser");
    assert!(!ok && err.contains("must be superuser"), "{err}");

    pgbench(&direct, &["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        let text = pgbench(&direct, &["-c", "4", "-j", "2", "-t", "50", "-M", mode]);
        assert!(text.contains("number of transactions actually processed: 200/200"), "{mode}: {text}");
        assert!(text.contains("number of failed transactions: 0"), "{mode}: {text}");
    }

    let (ok, out, _) = up.cli(&["keys", "create", "--name", "ci", "--scope", "projects:read"]);
    assert!(ok && out.starts_with("berth_live_"), "{out}");
    let (ok, jobs, _) = up.cli(&["jobs", "list"]);
    assert!(ok && jobs.contains("provision_project") && jobs.contains("succeeded"), "{jobs}");

    let password = password_of(&direct);
    let logs = up.stop();
    for secret in [password.as_str(), admin_key.as_str(), "SCRAM-SHA-256$", out.as_str()] {
        assert!(!logs.contains(secret), "a secret leaked into the log: {secret}");
    }

    // Same directory and ports: the same strings work, the data is there, no new admin key.
    let up = berth_up(data.path(), ports);
    assert!(!up.stdout.contains("berth_live_"), "a second admin key was printed");
    assert_eq!(up.connection("shop", false), direct);
    assert_eq!(up.connection("shop", true), pooled);
    let (ok, out, err) = psql(&pooled, "select x from t");
    assert!(ok && out == "42", "pooled after restart: {out} {err}");
    let (ok, out, err) = psql(&direct, "select count(*) > 0 from pgbench_accounts");
    assert!(ok && out == "t", "direct after restart: {out} {err}");

    // Rotation: a session open across it keeps going, the old password stops working, the
    // new string works at once.
    let mut held = held_psql(&direct);
    let (ok, out, err) = up.cli(&["credentials", "rotate", "shop"]);
    assert!(ok && out.contains("rotate_credentials") && out.contains("succeeded"), "rotate: {out} {err}");
    let rotated = up.connection("shop", false);
    assert_ne!(rotated, direct);
    // The route sync follows the catalog within milliseconds; allow for it.
    wait_for("the old password to stop working", || {
        let (ok, _, err) = psql(&direct, "select 1");
        !ok && err.contains("password authentication failed")
    });
    let (ok, out, err) = psql(&rotated, "select x from t");
    assert!(ok && out == "42", "new password: {out} {err}");
    assert_eq!(held.query("select 'after'"), "after", "the open session was dropped");
    held.close();
    let direct = rotated;

    // Limits changed through the API apply to the running proxy without a restart.
    let (status, body) =
        api(data.path(), "PATCH", "/v1/projects/shop", r#"{"limits":{"max_direct_connections":1}}"#);
    assert_eq!(status, 200, "{body}");
    let held = held_psql(&direct);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, last) = psql(&direct, "select 1");
        if !ok && last.contains("too many connections") {
            break;
        }
        if Instant::now() > deadline {
            let logs = up.stop();
            let routes: Vec<&str> = logs.lines().filter(|l| l.contains("route")).collect();
            panic!(
                "the connection limit did not apply; last psql error: {last:?}; route log:\n{}",
                routes.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    held.close();
    let (status, _) =
        api(data.path(), "PATCH", "/v1/projects/shop", r#"{"limits":{"max_direct_connections":null}}"#);
    assert_eq!(status, 200);

    // A killed instance is restarted by the supervisor; meanwhile clients get 57P03.
    let pidfile = std::fs::read_dir(data.path().join("instances"))
        .expect("instances")
        .filter_map(Result::ok)
        .map(|e| e.path().join("data").join("postmaster.pid"))
        .find(|p| p.exists())
        .expect("a running project instance");
    let pid: i32 =
        std::fs::read_to_string(&pidfile).expect("pid").lines().next().expect("line").parse().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    wait_for("the instance to come back", || psql(&direct, "select 7").1 == "7");
    // So is the catalog: the API answers again once it is back.
    let catalog_pid =
        std::fs::read_to_string(data.path().join("catalog").join("data").join("postmaster.pid"))
            .expect("catalog pid");
    let catalog_pid: i32 = catalog_pid.lines().next().expect("line").parse().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(catalog_pid), nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    wait_for("the catalog to come back", || up.cli(&["projects", "get", "shop"]).0);
    assert_eq!(psql(&direct, "select 8").1, "8", "the proxy kept its routes while the catalog was down");
    let (ok, _, _) = up.cli(&["projects", "delete", "shop"]);
    assert!(ok);
    // Routes follow the catalog eventually (NOTIFY, or the periodic reload after the catalog
    // restart above): wait for the deleted project to leave them.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (ok, _, err) = psql(&direct, "select 1");
        if !ok && err.contains("password authentication failed") {
            break;
        }
        assert!(Instant::now() < deadline, "deleted project still routed: {err}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (ok, _, err) = up.cli(&["projects", "get", "shop"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let logs = up.stop();
    assert!(logs.contains("instance died") && logs.contains("instance restarted"), "supervision not logged");
    assert!(logs.contains("instance=catalog"), "the catalog's restart was not logged");
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

#[test]
fn up_uses_an_external_catalog_given_by_url() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pg = testkit::TestPg::start().expect("catalog instance");
    rt.block_on(async {
        pg.superuser().await.expect("su").batch_execute("CREATE DATABASE external").await.expect("create db");
    });
    let data = data_dir();
    let url = format!(
        "postgresql://postgres@localhost/external?host={}&port={}",
        pg.socket_dir().display(),
        pg.port()
    );
    let mut child = Command::new(BERTH)
        .args(["up", "--data"])
        .arg(data.path())
        .args(["--catalog-url", &url, "--api-listen", "127.0.0.1:0"])
        .args(["--pooled-listen", "127.0.0.1:0", "--direct-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn berth up");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.starts_with("Press Ctrl-C") {
        line.clear();
        assert!(out.read_line(&mut line).expect("read") > 0, "berth up exited");
    }
    assert!(!data.path().join("catalog").exists(), "a local catalog was made despite --catalog-url");
    let cli = |args: &[&str]| {
        let out = Command::new(BERTH).args(args).arg("--data").arg(data.path()).output().expect("cli");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    assert!(cli(&["projects", "create", "ext"]).0);
    let (ok, uri) = cli(&["connection", "ext"]);
    assert!(ok);
    let (ok, out, err) = psql(&uri, "select current_database()");
    assert!(ok && out == "ext", "{out} {err}");
    // The project lives in the external catalog.
    let names: Vec<String> = rt.block_on(async {
        let db = pg.connect_as("postgres", "external").await.expect("connect");
        db.query("SELECT name FROM projects", &[]).await.expect("query").iter().map(|r| r.get(0)).collect()
    });
    assert_eq!(names, ["ext"]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    assert!(child.wait().expect("wait").success());
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
    let mut held = held_psql(&url("alpha", "pw-a"));

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

    assert_eq!(held.query("select 'after'"), "after", "the held session was dropped");
    held.close();

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
