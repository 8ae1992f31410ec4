//! A test instance that also listens on TCP (127.0.0.1), optionally with TLS from a given
//! certificate: what a registered upstream looks like. Berth's own instances never listen
//! on TCP (`node` refuses to), so this fixture runs the postmaster itself, on a copy of the
//! same template, as the same OS user, and stops it when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::TestPg;

pub struct TcpPg {
    /// The instance, for its unix socket (a superuser session) and its data directory.
    pub pg: TestPg,
    /// The TCP port on 127.0.0.1 (the unix socket carries the same number).
    pub port: u16,
    root: PathBuf,
    child: Child,
}

/// A port on 127.0.0.1 nobody listens on right now. PostgreSQL cannot be handed a bound
/// socket, so this is the one place a test picks a number; a clash fails the start loudly.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TcpPg {
    /// Starts an instance listening on 127.0.0.1 and its unix socket; with `tls` (PEM
    /// certificate chain, PEM key) it has `ssl = on` with that certificate.
    pub fn start(tls: Option<(&str, &str)>) -> anyhow::Result<TcpPg> {
        let mut pg = TestPg::start()?;
        pg.instance().stop()?;
        let port = free_port()?;
        pg.instance().set_port(port);
        let data = pg.instance().data_dir().to_owned();
        let user = pg.instance().os_user().clone();
        let mut cmd = Command::new(pg.instance().binaries().program("postgres"));
        cmd.arg("-D").arg(&data).arg("-k").arg(pg.socket_dir()).args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        if let Some((cert, key)) = tls {
            let (cert_file, key_file) = (data.join("test-server.crt"), data.join("test-server.key"));
            write_private(&cert_file, cert, &user)?;
            write_private(&key_file, key, &user)?;
            cmd.args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", cert_file.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", key_file.display()));
        }
        let log = std::fs::File::create(pg.instance().root().join("tcp-postgres.log"))?;
        cmd.current_dir(pg.instance().root()).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        user.apply(&mut cmd);
        let child = cmd.spawn().context("start postgres on TCP")?;
        let root = pg.instance().root().to_owned();
        let mut started = TcpPg { pg, port, root, child };
        started.wait_ready()?;
        Ok(started)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + node::START_TIMEOUT;
        let socket = self.pg.instance().socket_path();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("postgres on TCP exited with {status}:\n{}", self.log());
            }
            // postmaster.pid's status line says `ready` once connections are accepted.
            let pid_file = std::fs::read_to_string(self.root.join("data").join("postmaster.pid"));
            if socket.exists() && pid_file.is_ok_and(|f| f.lines().any(|l| l.trim() == "ready")) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "postgres on TCP did not start in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A superuser session over the unix socket.
    pub async fn superuser(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.pg.superuser().await
    }

    /// Replaces pg_hba.conf with `lines` and reloads; returns once the file's rules are
    /// the ones the postmaster reads (pg_hba_file_rules shows them without errors).
    pub async fn set_hba(&self, lines: &str) -> anyhow::Result<()> {
        let su = self.superuser().await?;
        let file: String = su.query_one("SHOW hba_file", &[]).await?.get(0);
        std::fs::write(&file, lines).with_context(|| format!("write {file}"))?;
        su.batch_execute("SELECT pg_reload_conf()").await?;
        let bad: i64 =
            su.query_one("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL", &[]).await?.get(0);
        anyhow::ensure!(bad == 0, "pg_hba.conf has {bad} bad lines");
        // The postmaster rereads the file on SIGHUP, which pg_reload_conf only sends.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    /// The postmaster's log (connection attempts and authentication failures).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("tcp-postgres.log")
    }
}

/// A file only the instance user can read (postgres refuses a key others may read).
fn write_private(path: &std::path::Path, text: &str, user: &node::InstanceUser) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    user.chown_recursive(path)?;
    Ok(())
}

impl Drop for TcpPg {
    fn drop(&mut self) {
        // A fast shutdown (SIGINT), then SIGKILL if it lingers.
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
