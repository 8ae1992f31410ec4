//! `berth up`: everything on one machine. Until the control plane lands this means one
//! managed PostgreSQL instance under `DIR/instances/main` with a role and database `app`, the
//! local CA in `DIR`, and the direct proxy in front, printing a connection string that works.
//! Restarting with the same directory keeps the data, the password and the CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use node::{InitOptions, Instance, PgBinaries};
use proxy::routes::{Database, Limits, Role, Upstream, UpstreamAddr};
use proxy::{LocalCa, Proxy, ProxySettings, RouteTable, SslMode};
use tokio::net::TcpListener;
use wire::scram::ScramVerifier;

const APP: &str = "app";

#[derive(Args)]
pub struct UpArgs {
    /// Where Berth keeps its instances, keys and certificates.
    #[arg(long, default_value = "./berth-data")]
    data: PathBuf,
    /// Address of the direct (session) proxy port; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:6433")]
    direct_listen: SocketAddr,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let dir = prepare_data_dir(&args.data)?;
    let bins = PgBinaries::find()?;
    let root = dir.join("instances").join("main");
    let mut instance = if root.join("data").join("PG_VERSION").exists() {
        Instance::open(&bins, &root)?
    } else {
        std::fs::create_dir_all(&root)?;
        traversable(&dir.join("instances"))?;
        traversable(&root)?;
        tracing::info!(root = %root.display(), "initialising the main instance");
        Instance::init(&bins, &root, &InitOptions::default())?
    };
    tokio::task::block_in_place(|| instance.start())?;
    tracing::info!(socket = %instance.socket_dir().display(), "instance running");

    let password = load_or_create_password(&dir.join("app.password"))?;
    let verifier = ensure_app_role(&instance, &password).await?;

    let ca = LocalCa::load_or_create(&dir, &["localhost".into(), "127.0.0.1".into()])?;
    let routes = RouteTable::new([Database {
        name: APP.into(),
        upstream: Upstream {
            addr: UpstreamAddr::Unix { dir: instance.socket_dir().to_owned(), port: instance.port() },
            dbname: APP.into(),
            ssl_mode: SslMode::Disable,
            ssl_root_cert: None,
            tls: None,
        },
        roles: [(
            APP.to_owned(),
            Role { name: APP.into(), verifiers: vec![verifier], upstream_password: None },
        )]
        .into(),
        limits: Limits::default(),
        pool: proxy::PoolConfig::default(),
    }]);
    let proxy = Proxy::new(ProxySettings::default(), routes, Some(ca.server()?));
    let listener = TcpListener::bind(args.direct_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.direct_listen))?;
    let addr = listener.local_addr()?;
    let serving = proxy.clone();
    let serve = tokio::spawn(async move { serving.serve(listener).await });

    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let ca_path = dir.join("ca.pem");
    println!("Berth is up.");
    println!(
        "  connection string: postgresql://{APP}:{password}@{host}:{}/{APP}?sslmode=require",
        addr.port()
    );
    println!("  CA certificate:    {} (for sslmode=verify-full&sslrootcert=...)", ca_path.display());
    println!("Press Ctrl-C to stop.");

    let signal = crate::signals::terminate().await?;
    tracing::info!(signal, "shutting down");
    proxy.shutdown();
    let _ = serve.await;
    proxy.drained().await;
    tokio::task::block_in_place(|| instance.stop())?;
    tracing::info!("stopped");
    Ok(())
}

fn traversable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Creates the data directory and checks that the instance user can reach it: PostgreSQL
/// runs as `postgres` when Berth runs as root, and it must traverse every parent.
fn prepare_data_dir(data: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let dir = data.canonicalize()?;
    traversable(&dir)?;
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        for parent in dir.ancestors().skip(1) {
            let mode = std::fs::metadata(parent)?.permissions().mode();
            if mode & 0o001 == 0 {
                anyhow::bail!(
                    "PostgreSQL runs as the postgres user, which cannot enter {} (mode {:o}); \
                     choose a --data directory elsewhere (for example under /var/lib/berth)",
                    parent.display(),
                    mode & 0o777
                );
            }
        }
    }
    Ok(dir)
}

fn load_or_create_password(path: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(existing) = std::fs::read_to_string(path) {
        return Ok(existing.trim().to_owned());
    }
    use rand::Rng;
    let password: String =
        rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(32).map(char::from).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(password.as_bytes())?;
    Ok(password)
}

/// Makes sure role and database `app` exist, with the password set as a SCRAM verifier (the
/// plaintext never reaches the server or its log), and returns the verifier the proxy checks.
async fn ensure_app_role(instance: &Instance, password: &str) -> anyhow::Result<ScramVerifier> {
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(instance.socket_dir())
        .port(instance.port())
        .user(instance.superuser())
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to the main instance")?;
    tokio::spawn(conn);
    let exists = client.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&APP]).await?.is_some();
    if !exists {
        let verifier = ScramVerifier::generate(password);
        // Role attributes as DESIGN.md says: login, nothing more.
        client
            .batch_execute(&format!(
                "CREATE ROLE {APP} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{}'",
                verifier.to_pg_authid()
            ))
            .await?;
        client.batch_execute(&format!("CREATE DATABASE {APP} OWNER {APP}")).await?;
    }
    let row = client.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&APP]).await?;
    let stored: String = row.get(0);
    ScramVerifier::parse(&stored).map_err(|_| anyhow::anyhow!("role {APP} has no SCRAM verifier"))
}
