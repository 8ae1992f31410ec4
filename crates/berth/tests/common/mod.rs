//! Helpers shared by the end-to-end tests: a `berth up` child process on chosen ports, its
//! API and CLI, and `psql` / `pgbench` runs.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

pub fn data_dir() -> DataDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("berth-e2e-").tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    DataDir(dir)
}

/// A test's data directory. When it goes, so do the OS users of the instances made in it
/// (when tests run as root each instance has one), so a test leaves no user behind.
pub struct DataDir(tempfile::TempDir);

impl std::ops::Deref for DataDir {
    type Target = tempfile::TempDir;

    fn deref(&self) -> &tempfile::TempDir {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if let Err(e) = node::remove_users_under(self.0.path()) {
            eprintln!("could not remove the instance users of {}: {e}", self.0.path().display());
        }
    }
}

/// A running `berth up`: what it printed, and its stderr (its log) as it is written.
pub struct Up {
    pub child: Child,
    pub stdout: String,
    pub stderr: Option<std::thread::JoinHandle<String>>,
    log: Arc<Mutex<String>>,
    pub data: PathBuf,
}

/// Ports chosen once so a restart serves the same connection strings.
#[derive(Clone, Copy)]
pub struct Ports {
    pub api: u16,
    pub pooled: u16,
    pub direct: u16,
}

impl Ports {
    /// Three free loopback ports.
    pub fn free() -> Ports {
        Ports { api: free_port(), pooled: free_port(), direct: free_port() }
    }
}

pub fn berth_up(data: &Path, ports: Ports) -> Up {
    berth_up_with(data, ports, &[])
}

/// `berth up` with more flags (operator settings).
pub fn berth_up_with(data: &Path, ports: Ports, flags: &[&str]) -> Up {
    let api = if flags.contains(&"--api-listen") {
        Vec::new()
    } else {
        vec!["--api-listen".to_owned(), format!("127.0.0.1:{}", ports.api)]
    };
    let mut child = Command::new(BERTH)
        .args(["up", "--data"])
        .arg(data)
        .args(api)
        .args(["--pooled-listen", &format!("127.0.0.1:{}", ports.pooled)])
        .args(["--direct-listen", &format!("127.0.0.1:{}", ports.direct)])
        .args(flags)
        .env_remove("BERTH_API_URL")
        .env_remove("BERTH_API_KEY")
        // The most verbose logs, so the secret checks below see everything Berth could say.
        .env("BERTH_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth up");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let log = Arc::new(Mutex::new(String::new()));
    let written = Arc::clone(&log);
    let stderr = std::thread::spawn(move || {
        let mut line = Vec::new();
        while err.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            written.lock().expect("log").push_str(&String::from_utf8_lossy(&line));
            line.clear();
        }
        written.lock().expect("log").clone()
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut stdout = String::new();
    let mut line = String::new();
    while !line.starts_with("Press Ctrl-C") {
        line.clear();
        if out.read_line(&mut line).expect("read stdout") == 0 {
            panic!("berth up exited before it was up: {stdout}\n{}", stderr.join().unwrap_or_default());
        }
        stdout.push_str(&line);
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Up { child, stdout, stderr: Some(stderr), log, data: data.to_owned() }
}

/// A test that fails before `stop` must not leave `berth up` (and its instances) running.
impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

impl Up {
    /// What it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// SIGTERM, wait for a clean exit, and return what it logged.
    pub fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "berth up exited with {status}");
        self.stderr.take().expect("stderr").join().expect("stderr thread")
    }

    /// Runs a client command against this `berth up` (found through its data directory).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BERTH)
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .env_remove("BERTH_API_URL")
            .env_remove("BERTH_API_KEY")
            .output()
            .expect("berth client");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Creates a project through the CLI; panics with the CLI's error if it cannot.
    pub fn create_project(&self, name: &str) {
        let (ok, _, err) = self.cli(&["projects", "create", name]);
        assert!(ok, "berth projects create {name}: {err}");
    }

    pub fn connection(&self, project: &str, pooled: bool) -> String {
        let mut args = vec!["connection", project];
        if pooled {
            args.push("--pooled");
        }
        let (ok, uri, err) = self.cli(&args);
        assert!(ok, "berth connection: {err}");
        uri
    }
}

/// A psql session kept open, connected (it has answered a first query) before this returns.
/// Its errors are collected with their SQLSTATE (`VERBOSITY=verbose`).
pub struct Held {
    pub child: Child,
    pub stdin: std::process::ChildStdin,
    pub stdout: BufReader<std::process::ChildStdout>,
    stderr: std::thread::JoinHandle<String>,
}

pub fn held_psql(uri: &str) -> Held {
    let mut child = Command::new("psql")
        .arg(uri)
        .args(["-X", "-At", "-v", "VERBOSITY=verbose"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql held open");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut err = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut held = Held { child, stdin, stdout, stderr };
    assert_eq!(held.query("select 'before'"), "before", "the held session did not connect");
    held
}

impl Held {
    /// Runs one single-row query and returns its line ("" if the session is gone).
    pub fn query(&mut self, sql: &str) -> String {
        writeln!(self.stdin, "{sql};").expect("write");
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line.trim().to_owned()
    }

    pub fn close(self) {
        let _ = self.ended();
    }

    /// Ends psql (if the server has not) and returns everything it printed on stderr.
    pub fn ended(mut self) -> String {
        drop(self.stdin);
        let _ = self.child.wait();
        self.stderr.join().unwrap_or_default()
    }
}

/// One request to the API of the `berth up` using `data` (plain HTTP/1.1 over a socket).
pub fn api(data: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let key = std::fs::read_to_string(data.join("admin.key")).expect("admin.key");
    api_as(data, &key, method, path, body)
}

/// [`api`] with another API key.
pub fn api_as(data: &Path, key: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let url = std::fs::read_to_string(data.join("api.url")).expect("api.url");
    let addr = url.trim().trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).expect("connect to the API");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        key.trim(),
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A GET without an API key: `(status, lower-cased header lines, body)`.
pub fn get_unauthenticated(data: &Path, path: &str) -> (u16, String, String) {
    let url = std::fs::read_to_string(data.join("api.url")).expect("api.url");
    let addr = url.trim().trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).expect("connect to the API");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// [`api`] with the answer read as JSON (`Null` when it is not JSON).
pub fn api_json(data: &Path, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, body) = api(data, method, path, body);
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// The job `id` once it has ended (succeeded, failed or cancelled), as the API shows it.
pub fn ended_job(data: &Path, id: &str) -> serde_json::Value {
    let mut job = serde_json::Value::Null;
    wait_for(&format!("job {id} to end"), || {
        job = api_json(data, "GET", &format!("/v1/jobs/{id}?wait=5"), "").1;
        ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or_default())
    });
    job
}

pub fn password_of(uri: &str) -> String {
    let after_scheme = &uri["postgresql://".len()..];
    let creds = &after_scheme[..after_scheme.find('@').expect("@ in uri")];
    creds.split(':').nth(1).expect("password").to_owned()
}

pub fn psql(uri: &str, sql: &str) -> (bool, String, String) {
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

pub fn pgbench(uri: &str, args: &[&str]) -> String {
    let out = Command::new("pgbench").args(args).arg(uri).output().expect("pgbench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
