//! `berth tunnel` end to end: `berth up`, a project, API keys, and `psql` / `pgbench` talking
//! to the tunnel's local port without TLS or a password; a tunnel whose key cannot open
//! sessions does not start, and one asked for another database says it does not exist.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

/// A running `berth tunnel`, with what it printed before it was ready.
struct Tunnel {
    child: Child,
    port: u16,
    banner: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

fn command(data: &Path, key: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(BERTH);
    cmd.arg("tunnel")
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("BERTH_API_URL")
        .env_remove("BERTH_API_KEY");
    if let Some(k) = key {
        cmd.env("BERTH_API_KEY", k);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn tunnel(data: &Path, key: Option<&str>, args: &[&str]) -> Tunnel {
    let mut child = command(data, key, args).spawn().expect("spawn berth tunnel");
    let mut err = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut banner = String::new();
    let mut line = String::new();
    while !line.starts_with("Press Ctrl-C") {
        line.clear();
        if out.read_line(&mut line).expect("read stdout") == 0 {
            panic!(
                "berth tunnel exited before it was ready: {banner}\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        banner.push_str(&line);
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let port = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("port: "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in the banner: {banner}"));
    Tunnel { child, port, banner, stderr: Some(stderr) }
}

impl Tunnel {
    fn uri(&self, db: &str) -> String {
        format!("postgresql://anyone@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// SIGINT, then wait for the exit; returns what it wrote to stderr.
    fn interrupt(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "berth tunnel exited with {status}");
        self.stderr.take().expect("stderr").join().expect("stderr thread")
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a `berth tunnel` that must refuse to start: it exits non-zero without saying it is
/// ready. Returns its stderr.
fn refused_start(data: &Path, key: Option<&str>, args: &[&str]) -> String {
    let mut child = command(data, key, args).spawn().expect("spawn berth tunnel");
    let mut err = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let (lines, stdout) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("is ready") => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berth tunnel {args:?} started: {line}\n{}", stderr.join().unwrap_or_default());
            }
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berth tunnel {args:?} neither started nor exited in time");
            }
        }
    }
    // Its stdout is closed: it is exiting.
    let status = child.wait().expect("wait");
    let stderr = stderr.join().expect("stderr thread");
    assert!(!status.success(), "berth tunnel {args:?} exited with {status}: {stderr}");
    stderr
}

/// The first message a raw client gets from the tunnel for a startup packet with `params`.
fn first_answer(port: u16, params: &[(&str, &str)]) -> wire::Frame {
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    let params = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let startup = wire::StartupMessage { version: wire::ProtocolVersion::V3_0, params };
    let mut out = bytes::BytesMut::new();
    wire::StartupPacket::Startup(startup).encode(&mut out);
    raw.write_all(&out).expect("write");
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(frame) = wire::parse_frame(&mut buf, 1 << 20).expect("a valid message") {
            return frame;
        }
        let mut chunk = [0u8; 4096];
        let n = raw.read(&mut chunk).expect("an answer in time");
        assert!(n > 0, "the tunnel closed the connection without a message");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Creates an API key through the API; returns (id, token).
fn create_key(data: &Path, project: Option<&str>, scopes: &[&str]) -> (String, String) {
    let body = serde_json::json!({"name": "tunnel-test", "scopes": scopes, "project": project});
    let (status, body) = api(data, "POST", "/v1/keys", &body.to_string());
    assert_eq!(status, 201, "create key: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    (v["key"]["id"].as_str().expect("id").to_owned(), v["token"].as_str().expect("token").to_owned())
}

fn project_id(data: &Path, name: &str) -> String {
    let (status, body) = api(data, "GET", &format!("/v1/projects/{name}"), "");
    assert_eq!(status, 200, "get project: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["id"].as_str().expect("id").to_owned()
}

/// psql's error output for a connection that must fail.
fn refused(uri: &str) -> String {
    let (ok, out, err) = psql(uri, "select 1");
    assert!(!ok, "the connection worked: {out}");
    err
}

fn up_with_projects(data: &Path, names: &[&str]) -> Up {
    let up = berth_up(data, Ports::free());
    for name in names {
        up.create_project(name);
    }
    up
}

#[test]
fn psql_through_the_tunnel_changes_the_schema_on_both_ports_as_the_owner() {
    let data = data_dir();
    let up = up_with_projects(data.path(), &["shop"]);
    let shop = project_id(data.path(), "shop");
    let (_, key) = create_key(data.path(), Some(&shop), &["credentials:read"]);
    let t = tunnel(data.path(), Some(&key), &["shop"]);
    for want in [
        "hostname: 127.0.0.1",
        "database: shop",
        "username: <anything>",
        "password: <none>",
        "psql -h 127.0.0.1 -p",
    ] {
        assert!(t.banner.contains(want), "banner lacks {want:?}: {}", t.banner);
    }
    assert!(!t.banner.contains(&key), "the key is not printed");
    let (ok, _, err) = psql(&t.uri("shop"), "create table x(i int); insert into x values (42)");
    assert!(ok, "DDL through the tunnel: {err}");
    let (_, who, _) = psql(&t.uri("shop"), "select current_user");
    assert_eq!(who, "shop_owner");
    // A password the local client insists on is ignored, not checked.
    let with_password = t.uri("shop").replace("anyone@", "someone:wrong@");
    assert_eq!(psql(&with_password, "select count(*) from x").1, "1");

    // The pooled port, with many concurrent local clients.
    let pooled = tunnel(data.path(), Some(&key), &["shop", "--pooled"]);
    pgbench(&pooled.uri("shop"), &["-i", "-s", "1", "-q"]);
    let report = pgbench(&pooled.uri("shop"), &["-n", "-c", "16", "-j", "2", "-t", "25"]);
    assert!(report.contains("number of failed transactions: 0"), "{report}");
    assert!(report.contains("number of transactions actually processed: 400/400"), "{report}");
    let (_, count, _) = psql(&t.uri("shop"), "select count(*) from pgbench_history");
    assert_eq!(count, "400", "every pooled transaction reached the project");

    // SIGINT closes the listener and lets open sessions finish.
    let mut held = held_psql(&t.uri("shop"));
    let port = t.port;
    let pid = nix::unistd::Pid::from_raw(t.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    wait_for("the listener to close", || std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert_eq!(held.query("select i from x"), "42", "the open session keeps working");
    held.close();
    let stderr = t.interrupt_after_sessions();
    assert!(!stderr.contains(&key), "the key never reaches the tunnel's output");
    drop(pooled);
    let logs = up.stop();
    assert!(!logs.contains(&key), "the key never reaches Berth's logs");
}

impl Tunnel {
    /// Waits for a tunnel already sent SIGINT to exit once its sessions ended.
    fn interrupt_after_sessions(mut self) -> String {
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "berth tunnel exited with {status}");
        self.stderr.take().expect("stderr").join().expect("stderr thread")
    }
}

#[test]
fn a_tunnel_whose_key_cannot_open_sessions_does_not_start_and_says_why() {
    let data = data_dir();
    let up = up_with_projects(data.path(), &["shop", "blog"]);
    let (shop, blog) = (project_id(data.path(), "shop"), project_id(data.path(), "blog"));
    let (_, shop_key) = create_key(data.path(), Some(&shop), &["credentials:read"]);
    let (_, blog_key) = create_key(data.path(), Some(&blog), &["credentials:read"]);
    let (_, no_scope_key) = create_key(data.path(), Some(&shop), &["projects:read"]);
    let (revoked_id, revoked_key) = create_key(data.path(), Some(&shop), &["credentials:read"]);
    let (status, body) = api(data.path(), "DELETE", &format!("/v1/keys/{revoked_id}"), "");
    assert!(status < 300, "revoke: {status} {body}");
    let keys = [&shop_key, &blog_key, &no_scope_key, &revoked_key];
    let prefix = |key: &str| format!("prefix {}", &key[.."berth_live_".len() + 4]);

    let check = |key: &str, args: &[&str], reason: &str| {
        let stderr = refused_start(data.path(), Some(key), args);
        assert!(stderr.contains(reason), "{args:?} should say {reason:?}: {stderr}");
        assert!(stderr.contains(&prefix(key)), "{args:?} says which key: {stderr}");
        for k in keys {
            assert!(!stderr.contains(k.as_str()), "a key reached the output: {stderr}");
        }
    };
    check(&shop_key, &["nope"], "project \"nope\" was not found");
    check(&blog_key, &["shop"], "project \"shop\" was not found with the API key");
    check(&shop_key, &["shop", "--branch", "nope"], "project \"shop\" has no branch \"nope\"");
    check(&no_scope_key, &["shop"], "lacks the credentials:read scope");
    check(&revoked_key, &["shop"], "unknown or revoked");

    // Berth's API unreachable, and no key at all (no BERTH_API_KEY, no admin.key).
    let empty = tempfile::tempdir().expect("tempdir");
    let ca = data.path().join("ca.pem");
    let ca = ca.to_str().expect("utf-8 path");
    let gone = format!("http://127.0.0.1:{}", free_port());
    let stderr = refused_start(empty.path(), Some(&shop_key), &["shop", "--api-url", &gone, "--ca-file", ca]);
    assert!(stderr.contains("cannot reach the Berth API"), "{stderr}");
    assert!(!stderr.contains(&shop_key), "{stderr}");
    let api_url = std::fs::read_to_string(data.path().join("api.url")).expect("api.url");
    let stderr = refused_start(empty.path(), None, &["shop", "--api-url", api_url.trim(), "--ca-file", ca]);
    assert!(stderr.contains("no API key"), "{stderr}");

    // The same check lets a key that may open sessions through.
    let t = tunnel(data.path(), Some(&shop_key), &["shop"]);
    assert!(psql(&t.uri("shop"), "select 1").0, "the tunnel of a good key works");
    drop(t);
    let logs = up.stop();
    for k in keys {
        assert!(!logs.contains(k.as_str()), "a key reached Berth's logs");
    }
}

#[test]
fn problems_after_the_start_get_a_postgres_error_and_the_tunnel_stays_up() {
    let data = data_dir();
    let up = up_with_projects(data.path(), &["shop", "blog"]);
    let (shop, blog) = (project_id(data.path(), "shop"), project_id(data.path(), "blog"));
    let (shop_key_id, shop_key) = create_key(data.path(), Some(&shop), &["credentials:read"]);
    let (_, blog_key) = create_key(data.path(), Some(&blog), &["credentials:read"]);

    // A working tunnel, then its key is revoked: new sessions are refused at once.
    let t = tunnel(data.path(), Some(&shop_key), &["shop"]);
    assert!(psql(&t.uri("shop"), "select 1").0, "works before the revocation");
    let (status, body) = api(data.path(), "DELETE", &format!("/v1/keys/{shop_key_id}"), "");
    assert!(status < 300, "revoke: {status} {body}");
    let err = refused(&t.uri("shop"));
    assert!(err.contains("API key authentication failed"), "{err}");
    assert!(refused(&t.uri("shop")).contains("API key authentication failed"), "still up, still clear");

    // Garbage from a local client: an 08P01 for it, and the tunnel keeps serving.
    let other = tunnel(data.path(), Some(&blog_key), &["blog"]);
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", other.port)).expect("connect");
    raw.write_all(b"\x00\x00\x00\x03garbage that is no startup packet").expect("write");
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&b'E'), "an ErrorResponse: {answer:?}");
    assert!(String::from_utf8_lossy(&answer).contains("08P01"), "{}", String::from_utf8_lossy(&answer));
    assert!(psql(&other.uri("blog"), "select 1").0, "the tunnel still serves");

    // Binding beyond loopback warns that the key's access is exposed.
    let open = tunnel(data.path(), Some(&blog_key), &["blog", "--host", "0.0.0.0"]);
    assert!(psql(&open.uri("blog"), "select 1").0, "the exposed tunnel works");
    let stderr = open.interrupt();
    assert!(stderr.contains("not loopback"), "{stderr}");
    up.stop();
}

#[test]
fn a_client_asking_for_another_database_gets_3d000_and_the_tunnel_keeps_serving() {
    let data = data_dir();
    let up = up_with_projects(data.path(), &["shop", "blog"]);
    let shop = project_id(data.path(), "shop");
    let (_, key) = create_key(data.path(), Some(&shop), &["credentials:read"]);
    let t = tunnel(data.path(), Some(&key), &["shop"]);

    let err = refused(&t.uri("blog"));
    assert!(err.contains("database \"blog\" does not exist"), "{err}");
    let frame = first_answer(t.port, &[("user", "anyone"), ("database", "whatever-name")]);
    assert_eq!(frame.tag, b'E', "an ErrorResponse");
    let e = wire::ErrorResponse::decode(&frame.body).expect("an ErrorResponse");
    assert_eq!(e.severity(), Some("FATAL"));
    assert_eq!(e.code().map(|c| c.code().to_owned()).as_deref(), Some("3D000"));
    assert_eq!(e.message(), Some("database \"whatever-name\" does not exist"));

    // The tunnel keeps serving its own database, also when the client names none (libpq then
    // sends the user name) or an empty one.
    assert_eq!(psql(&t.uri("shop"), "select current_database()").1, "shop");
    let no_database = format!("postgresql://anyone@127.0.0.1:{}?sslmode=disable", t.port);
    assert_eq!(psql(&no_database, "select current_database()").1, "shop");
    let frame = first_answer(t.port, &[("user", "anyone"), ("database", "")]);
    assert_eq!(frame.tag, b'R', "an empty database name logs in");
    drop(t);
    up.stop();
}

#[test]
fn the_tunnel_says_which_key_it_uses_and_where_it_came_from() {
    let data = data_dir();
    let up = up_with_projects(data.path(), &["shop"]);
    let shop = project_id(data.path(), "shop");
    let (_, key) = create_key(data.path(), Some(&shop), &["credentials:read"]);
    let prefix = |key: &str| format!("prefix {}", &key[.."berth_live_".len() + 4]);

    let t = tunnel(data.path(), Some(&key), &["shop"]);
    let stderr = t.interrupt();
    let want = format!("using the API key from BERTH_API_KEY ({})", prefix(&key));
    assert!(stderr.contains(&want), "{stderr}");
    assert!(!stderr.contains(&key), "{stderr}");

    let file = data.path().join("tunnel.key");
    std::fs::write(&file, format!("{key}\n")).expect("write the key file");
    let t = tunnel(data.path(), None, &["shop", "--api-key-file", file.to_str().expect("utf-8")]);
    let stderr = t.interrupt();
    let want = format!("using the API key from {} ({})", file.display(), prefix(&key));
    assert!(stderr.contains(&want), "{stderr}");
    assert!(!stderr.contains(&key), "{stderr}");

    // No BERTH_API_KEY: the organization's admin key from the data directory, said so.
    let admin_file = data.path().join("admin.key");
    let admin = std::fs::read_to_string(&admin_file).expect("admin.key");
    let admin = admin.trim();
    let t = tunnel(data.path(), None, &["shop"]);
    assert!(psql(&t.uri("shop"), "select 1").0, "the admin key's tunnel works");
    let stderr = t.interrupt();
    let want = format!("admin key from {} ({})", admin_file.display(), prefix(admin));
    assert!(stderr.contains("BERTH_API_KEY is not set"), "{stderr}");
    assert!(stderr.contains(&want), "{stderr}");
    assert!(!stderr.contains(admin), "{stderr}");
    up.stop();
}

#[test]
fn a_branch_tunnel_reaches_the_branch_and_not_its_parent() {
    let data = data_dir();
    let up = up_with_projects(data.path(), &["shop"]);
    let shop = project_id(data.path(), "shop");
    let (_, key) = create_key(data.path(), Some(&shop), &["credentials:read"]);
    let main = tunnel(data.path(), Some(&key), &["shop"]);
    assert!(psql(&main.uri("shop"), "create table x(i int); insert into x values (1)").0);
    let body = serde_json::json!({"name": "dev", "data": "full"}).to_string();
    let (status, body) = api(data.path(), "POST", &format!("/v1/projects/{shop}/branches"), &body);
    assert!(status < 300, "create branch: {status} {body}");
    let job: serde_json::Value = serde_json::from_str(&body).expect("json");
    let job_id = job["job"]["id"].as_str().expect("job id");
    wait_for("the branch job", || {
        let (_, body) = api(data.path(), "GET", &format!("/v1/jobs/{job_id}?wait=5"), "");
        let state = serde_json::from_str::<serde_json::Value>(&body).expect("json")["state"].clone();
        assert_ne!(state, "failed", "the branch job failed: {body}");
        state == "succeeded"
    });
    let dev = tunnel(data.path(), Some(&key), &["shop", "--branch", "dev"]);
    assert!(dev.banner.contains("shop.dev"), "{}", dev.banner);
    let (ok, _, err) =
        psql(&dev.uri("shop.dev"), "insert into x values (2); create table only_on_dev(i int)");
    assert!(ok, "{err}");
    assert_eq!(psql(&dev.uri("shop.dev"), "select string_agg(i::text, ',' order by i) from x").1, "1,2");
    let err = refused(&dev.uri("shop"));
    assert!(err.contains("database \"shop\" does not exist"), "the parent is not the branch's: {err}");
    assert_eq!(psql(&main.uri("shop"), "select count(*) from x").1, "1", "the parent did not change");
    let (ok, _, _) = psql(&main.uri("shop"), "select * from only_on_dev");
    assert!(!ok, "a table made on the branch is not on main");
    drop((main, dev));
    up.stop();
}
