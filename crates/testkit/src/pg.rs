//! Temporary PostgreSQL instances. `initdb` runs once per test run into a template directory
//! (shared across test processes: nextest runs each test in its own), and every instance is
//! a copy of it, so an instance costs a copy and a start instead of an initdb. When tests
//! run as root, each instance runs as an OS user of its own (node's), removed when the
//! `TestPg` goes; users left by a test that was killed are swept by the next start.

use std::path::{Path, PathBuf};

use anyhow::Context;
use node::{InitOptions, Instance, PgBinaries};
use tempfile::TempDir;

pub struct TestPg {
    instance: Instance,
    _dir: TempDir,
}

/// Where templates live: `BERTH_TESTKIT_DIR` (scripts/test points it at a fresh directory
/// per run) or a directory under the system temp dir.
fn base_dir() -> PathBuf {
    std::env::var_os("BERTH_TESTKIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("berth-testkit"))
}

fn make_traversable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

fn template(bins: &PgBinaries) -> anyhow::Result<PathBuf> {
    let base = base_dir();
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    make_traversable(&base)?;
    let version = bins.version()?;
    let root = base.join(format!("template-{version}"));
    if root.join("data").join("PG_VERSION").exists() {
        return Ok(root);
    }
    // Build beside it and rename into place: concurrent test processes may race here, and
    // whoever loses just uses the winner's template.
    let scratch = tempfile::Builder::new().prefix("template-build-").tempdir_in(&base)?;
    make_traversable(scratch.path())?;
    let built = scratch.path().join("root");
    std::fs::create_dir(&built)?;
    make_traversable(&built)?;
    let instance =
        Instance::init(bins, &built, &InitOptions::fast_unsafe()).context("initdb for the test template")?;
    // Every copy gets a user of its own; the template keeps none.
    instance.seal_as_template().context("sealing the test template")?;
    if std::fs::rename(&built, &root).is_err() && !root.join("data").join("PG_VERSION").exists() {
        anyhow::bail!("could not put the template in place at {}", root.display());
    }
    Ok(root)
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if let Err(e) = self.instance.stop() {
            eprintln!("could not stop the test instance: {e}");
        }
        if let Err(e) = node::remove_root(self.instance.root()) {
            eprintln!("could not remove the test instance and its OS user: {e}");
        }
    }
}

impl TestPg {
    /// A started instance with a fresh copy of the template.
    pub fn start() -> anyhow::Result<TestPg> {
        let bins = PgBinaries::find()?;
        let template = template(&bins)?;
        // Users of instances whose directories are gone (a killed test's) go first.
        node::sweep_orphan_users()?;
        let dir = tempfile::Builder::new().prefix("berth-pg-").tempdir()?;
        make_traversable(dir.path())?;
        // The root inside the temporary directory, so its user's recorded directory is this
        // test's alone.
        let mut instance = Instance::from_template(&bins, &template, &dir.path().join("pg"))?;
        if let Err(e) = instance.start() {
            drop(instance);
            let _ = node::remove_root(&dir.path().join("pg"));
            return Err(e.into());
        }
        Ok(TestPg { instance, _dir: dir })
    }

    pub fn instance(&mut self) -> &mut Instance {
        &mut self.instance
    }

    pub fn socket_dir(&self) -> &Path {
        self.instance.socket_dir()
    }

    pub fn port(&self) -> u16 {
        self.instance.port()
    }

    /// A superuser session straight to the instance over its unix socket.
    pub async fn superuser(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.connect_as(self.instance.superuser(), "postgres").await
    }

    /// A session straight to the instance (no proxy) as `user` on `dbname`.
    pub async fn connect_as(&self, user: &str, dbname: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(self.socket_dir())
            .port(self.port())
            .user(user)
            .dbname(dbname)
            .connect(tokio_postgres::NoTls)
            .await
            .context("direct connection to the test instance")?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Creates a login role that owns a database of the same name.
    pub async fn create_role_and_db(&self, name: &str) -> anyhow::Result<()> {
        let su = self.superuser().await?;
        // Separate statements: CREATE DATABASE refuses to run inside a multi-statement batch.
        su.batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN")).await?;
        su.batch_execute(&format!("CREATE DATABASE \"{name}\" OWNER \"{name}\"")).await?;
        Ok(())
    }
}
