//! `berth up`: everything on one machine in one process. The catalog (its own PostgreSQL
//! instance under the data directory, or `--catalog-url`), the HTTP API, the job worker, the
//! supervision of every project's instance, and the proxy on the pooled and direct ports
//! with routes that follow the catalog. First start makes the organization, the master key,
//! the fake SCRAM salt key, the local CA and the admin API key; later starts reuse them and
//! start every project's instance again. SIGTERM or SIGINT stops it all cleanly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use catalog::{Catalog, MasterKey, Secret};
use clap::Args;
use control::{Control, Endpoints, Instances, Worker, WorkerSettings};
use node::{InitOptions, PgBinaries};
use proxy::{CertificateFiles, LocalCa, Proxy, ProxySettings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct UpArgs {
    /// Where Berth keeps its catalog, instances, keys and certificates
    /// [default: ./berth-data, or /var/lib/berth as root under a private directory].
    #[arg(long, env = "BERTH_DATA")]
    data: Option<PathBuf>,
    /// Use this PostgreSQL as the catalog instead of a local instance (postgresql:// URL).
    #[arg(long, env = "BERTH_CATALOG_URL", hide_env_values = true)]
    catalog_url: Option<String>,
    /// HTTP API address; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7432")]
    api_listen: SocketAddr,
    /// Pooled proxy address; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:6432")]
    pooled_listen: SocketAddr,
    /// Direct (session) proxy address; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:6433")]
    direct_listen: SocketAddr,
    /// Host name put in connection strings (default: the proxy's listen address).
    #[arg(long)]
    public_host: Option<String>,
    /// A socket directory registered upstreams may name (repeatable; none by default, so
    /// registered upstreams are TCP only). Never one inside the data directory.
    #[arg(long = "upstream-socket-dir", value_name = "DIR")]
    upstream_socket_dirs: Vec<PathBuf>,
    /// Registered upstreams may only be public addresses: loopback, private, link-local and
    /// unique-local ranges are refused, at registration and at every connect.
    #[arg(long)]
    upstream_deny_private: bool,
    /// Connections one source address may have logging in (TLS, startup, password) at
    /// once, on both proxy ports together; more are closed at accept. 0: no cap.
    #[arg(long, value_name = "N", default_value_t = proxy::DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE)]
    max_unauthenticated_per_source: usize,
    /// Serve this certificate (PEM, leaf first, then intermediates) on both proxy ports
    /// instead of one from the local CA; reloaded when it or the key changes.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    acme: crate::acme::AcmeArgs,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Everything made from here on (keys, certificates, logs, what PostgreSQL's tools write)
    // is ours alone unless a directory is opened on purpose: files 0600, directories 0700.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    raise_descriptor_limit();
    let dir = prepare_data_dir(&crate::datadir::for_up(args.data.clone()))?;
    // The operator's certificate, checked before anything starts: a bad pair stops here.
    let own_certificate = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let files = CertificateFiles { cert: cert.clone(), key: key.clone() };
            let tls = files
                .load()
                .with_context(|| format!("--tls-cert {} with --tls-key {}", cert.display(), key.display()))?;
            Some((files, tls))
        }
        _ => None,
    };
    // ACME's settings and DNS responder, checked and bound before anything starts too.
    let acme = args.acme.prepare(&dir, args.public_host.as_deref()).await?;
    let bins = PgBinaries::find()?;
    let master_key = MasterKey::load_or_create(&dir.join("master.key"))?;
    let shutdown = CancellationToken::new();

    // The catalog, supervised like any instance when it is ours.
    let catalog_instances = Arc::new(Instances::new(bins.clone(), &dir, InitOptions::default()));
    let catalog = match &args.catalog_url {
        Some(url) => {
            Catalog::connect(&Secret::new(url.clone())).await.context("connecting to --catalog-url")?
        }
        None => {
            let (instance, catalog) = crate::catalog_instance::start(&bins, &dir).await?;
            catalog_instances.adopt("catalog", instance);
            catalog
        }
    };
    catalog.migrate().await?;
    let boot = crate::bootstrap::run(&catalog, &dir).await?;
    // The local CA is made even when the operator's certificate is served, so the data
    // directory is the same either way and going back to it needs nothing.
    let sni_host = args.public_host.as_deref().and_then(sni_host);
    let ca =
        LocalCa::load_or_create(&dir, &local_ca_names(args.public_host.as_deref(), sni_host.as_deref()))?;

    let instances = Arc::new(Instances::new(bins, &dir, InitOptions::default()));
    let template = Arc::clone(&instances);
    tokio::task::spawn_blocking(move || template.ensure_template()).await??;
    start_project_instances(&catalog, &instances).await?;

    let api_listener = bind(args.api_listen, "API").await?;
    let pooled_listener = bind(args.pooled_listen, "pooled proxy").await?;
    let direct_listener = bind(args.direct_listen, "direct proxy").await?;
    let (api_addr, pooled_addr, direct_addr) =
        (api_listener.local_addr()?, pooled_listener.local_addr()?, direct_listener.local_addr()?);
    let host = args.public_host.clone().unwrap_or_else(|| host_of(direct_addr));
    let endpoints = Endpoints {
        host,
        pooled_port: pooled_addr.port(),
        direct_port: direct_addr.port(),
        sni_host: sni_host.clone(),
    };
    let control = Control::new(
        catalog.clone(),
        master_key,
        endpoints,
        Arc::clone(&instances),
        WorkerSettings::default(),
    );

    let (tls, watched) = match own_certificate {
        Some((files, tls)) => (tls, Some(files)),
        // ACME's certificate when the data directory holds a valid one, else the local CA's
        // until ACME succeeds; ca.pem is not handed out, the strings are for public trust.
        None if acme.is_some() => {
            (acme.as_ref().and_then(|a| a.stored()).map_or_else(|| ca.server(), Ok)?, None)
        }
        None => {
            // Only the local CA's certificate is handed out, and only when it signed what
            // the proxy serves.
            let _ = control.local_ca_pem.set(ca.ca_cert_pem.clone());
            (ca.server()?, None)
        }
    };

    // The proxy, with routes from the catalog from the first connection on.
    let policy = Arc::new(crate::registered::UpstreamPolicy {
        data_dir: dir.clone(),
        socket_dirs: args.upstream_socket_dirs.clone(),
        deny_private: args.upstream_deny_private,
    });
    let routes = crate::route_sync::snapshot(&catalog, &instances, &control.master_key, &policy).await?;
    let _ = control.upstream_probe.set(Arc::new(crate::registered::Probe::new(Arc::clone(&policy))));
    // Kept with the other keys, so a restart shows an unknown user the same fake salt.
    let fake_scram_key = proxy::FakeScramKey::load_or_create(&dir.join("scram-fake.key"))
        .context("loading the fake SCRAM salt key")?;
    let settings = ProxySettings {
        fake_scram_key,
        public_host: sni_host,
        max_unauthenticated_per_source: args.max_unauthenticated_per_source,
        ..ProxySettings::default()
    };
    let proxy = Proxy::new(settings, routes, Some(tls));
    proxy.set_api_keys(Arc::new(crate::key_check::CatalogKeys { catalog: catalog.clone() }));
    let _ = control.route_refresh.set(Arc::new(crate::route_sync::Refresh {
        catalog: catalog.clone(),
        instances: Arc::clone(&instances),
        control: Arc::downgrade(&control),
        proxy: proxy.clone(),
        policy: Arc::clone(&policy),
    }));
    let serve_direct = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.serve(direct_listener).await }
    });
    let serve_pooled = tokio::spawn(serve_pooled(proxy.clone(), pooled_listener));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::route_sync::run(
        catalog.clone(),
        Arc::clone(&instances),
        Arc::clone(&control),
        Arc::clone(&policy),
        proxy.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(Arc::clone(&instances).supervise(shutdown.clone()));
    let acme_banner = acme.as_ref().map(crate::acme::Acme::describe);
    if let Some(acme) = acme {
        tasks.spawn(acme.run(proxy.clone(), shutdown.clone()));
    }
    if let Some(files) = watched.clone() {
        tasks.spawn(files.watch(proxy.clone(), proxy::tls_files::POLL_INTERVAL, shutdown.clone()));
    }
    tasks.spawn(Arc::clone(&catalog_instances).supervise(shutdown.clone()));
    tasks.spawn({
        let (control, shutdown) = (Arc::clone(&control), shutdown.clone());
        async move { control.events.listen(control.catalog.clone(), shutdown).await }
    });
    tasks.spawn(Worker::new(Arc::clone(&control), worker_name()).run(shutdown.clone()));
    let api = tokio::spawn({
        let router = control::router(Arc::clone(&control));
        let stop = shutdown.clone();
        async move { axum::serve(api_listener, router).with_graceful_shutdown(stop.cancelled_owned()).await }
    });

    // Before the banner: whoever reads it may send SIGTERM at once.
    let terminate = crate::signals::terminate()?;
    let api_url = format!("http://{api_addr}");
    crate::bootstrap::write_private(&dir.join("api.url"), &api_url)?;
    print_banner(
        &dir,
        &api_url,
        pooled_addr,
        direct_addr,
        watched.as_ref(),
        acme_banner.as_deref(),
        boot.new_admin_key.as_ref(),
    );
    if !api_addr.ip().is_loopback() {
        tracing::warn!(api = %api_url, "{}", PLAIN_API_WARNING);
    }
    tracing::info!(api = %api_url, pooled = %pooled_addr, direct = %direct_addr, organization_id = %boot.organization_id, "berth is up");

    let signal = terminate.await;
    tracing::info!(signal, "shutting down");
    shutdown.cancel();
    proxy.shutdown();
    let _ = serve_direct.await;
    let _ = serve_pooled.await;
    // Long-polling requests would hold the API open; they get a few seconds.
    if tokio::time::timeout(Duration::from_secs(5), api).await.is_err() {
        tracing::warn!("API requests still open at shutdown; dropped");
    }
    while tasks.join_next().await.is_some() {}
    proxy.drained().await;
    tokio::task::spawn_blocking(move || instances.stop_all()).await?;
    catalog.close().await;
    tokio::task::spawn_blocking(move || catalog_instances.stop_all()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The pooled port: transaction pooling by default, session pooling where a project's
/// pool_config says so.
async fn serve_pooled(proxy: Proxy, listener: TcpListener) {
    proxy.serve_pooled(listener).await;
}

async fn start_project_instances(catalog: &Catalog, instances: &Arc<Instances>) -> anyhow::Result<()> {
    for branch in catalog.branches_to_run().await? {
        let instances = Arc::clone(instances);
        let id = branch.id.clone();
        match tokio::task::spawn_blocking(move || instances.start(&id)).await? {
            Ok(()) => {
                tracing::info!(branch_id = %branch.id, project_id = %branch.project_id, "instance started")
            }
            Err(e) => {
                tracing::error!(branch_id = %branch.id, project_id = %branch.project_id, error = %e, "instance did not start")
            }
        }
    }
    Ok(())
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    proxy::listen(addr).with_context(|| format!("cannot listen on {addr} for the {what}"))
}

/// The public host as SNI routing knows it (`<project>.<host>`): a DNS name, lower-cased,
/// without a trailing dot. An IP address has no names under it.
fn sni_host(public_host: &str) -> Option<String> {
    let host = public_host.trim_end_matches('.').to_ascii_lowercase();
    let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok();
    (!ip && !host.is_empty()).then_some(host)
}

/// What the local CA's server certificate names: loopback, the public host, and with a DNS
/// name every `<project>.<public-host>` (one wildcard label, as SNI routing uses).
fn local_ca_names(public_host: Option<&str>, sni_host: Option<&str>) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let public = match sni_host {
        Some(dns) => vec![dns.to_owned(), format!("*.{dns}")],
        // An IP address (IPv6 in brackets, as URLs write it).
        None => public_host
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .into_iter()
            .collect(),
    };
    for name in public {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn host_of(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() { "127.0.0.1".into() } else { addr.ip().to_string() }
}

fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

/// Said at start when the API listens beyond loopback: it speaks plain HTTP, so bearer keys
/// would cross the network readable by anyone on the path.
const PLAIN_API_WARNING: &str = "the API listens beyond loopback over plain HTTP, so API keys cross the \
    network unencrypted; keep --api-listen on 127.0.0.1 or put a TLS-terminating proxy in front of it";

fn api_url_is_loopback(api_url: &str) -> bool {
    api_url
        .strip_prefix("http://")
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .is_some_and(|a| a.ip().is_loopback())
}

fn print_banner(
    dir: &Path,
    api_url: &str,
    pooled: SocketAddr,
    direct: SocketAddr,
    own_certificate: Option<&CertificateFiles>,
    acme: Option<&str>,
    new_key: Option<&Secret>,
) {
    let data = dir.display();
    println!("Berth is up.");
    println!("  API:            {api_url}   (reference: {api_url}/v1/openapi.json)");
    println!("  pooled proxy:   {pooled}");
    println!("  direct proxy:   {direct}");
    match own_certificate {
        Some(files) => {
            println!("  certificate:    {}   (yours; reloaded when it changes)", files.cert.display())
        }
        None if acme.is_some() => println!("  certificate:    {}", acme.unwrap_or_default()),
        None => println!("  CA certificate: {data}/ca.pem   (sslmode=verify-full&sslrootcert=...)"),
    }
    println!("  admin API key:  {data}/admin.key");
    if !api_url_is_loopback(api_url) {
        println!();
        println!("  Warning: {PLAIN_API_WARNING}");
    }
    if let Some(key) = new_key {
        println!();
        println!("  Your admin API key (shown once, kept in admin.key): {}", key.expose());
    }
    println!();
    println!("Next: berth projects create shop --data {data}");
    println!("      psql \"$(berth connection shop --pooled --data {data})\"");
    println!("Press Ctrl-C to stop.");
}

/// A directory PostgreSQL must pass through: ours alone, and enterable (never readable) by
/// the instances' OS users when we are root (see `node::make_passable_dir`).
pub(crate) fn traversable(path: &Path) -> anyhow::Result<()> {
    node::make_passable_dir(path).with_context(|| format!("cannot prepare {}", path.display()))
}

/// Creates the data directory, private to us (and enterable by the instance user), and
/// checks that the instance user can reach it: PostgreSQL runs as `postgres` when Berth
/// runs as root, and it must traverse every parent.
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
                    "PostgreSQL runs as an unprivileged user of its own, which cannot enter {} (mode {:o}); \
                     choose a --data directory elsewhere (for example under /var/lib/berth)",
                    parent.display(),
                    mode & 0o777
                );
            }
        }
    }
    Ok(dir)
}

/// Every client holds a descriptor, and so does every server connection: the soft limit a
/// shell hands out (often 1024) would refuse connections long before the proxy is busy.
/// The soft limit goes up to the hard one, as PgBouncer's docs tell its operators to do.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "descriptor limit raised"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "descriptor limit could not be raised"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "descriptor limit unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dns_public_host_routes_by_sni_and_is_named_with_its_wildcard() {
        assert_eq!(sni_host("DB.Example.com.").as_deref(), Some("db.example.com"));
        for ip in ["203.0.113.7", "::1", "[2001:db8::1]", ""] {
            assert_eq!(sni_host(ip), None, "{ip}");
        }
        let local = ["localhost", "127.0.0.1"];
        assert_eq!(local_ca_names(None, None), local);
        assert_eq!(
            local_ca_names(Some("DB.example.com."), Some("db.example.com")),
            [&local[..], &["db.example.com", "*.db.example.com"]].concat()
        );
        assert_eq!(local_ca_names(Some("[2001:db8::1]"), None), [&local[..], &["2001:db8::1"]].concat());
        assert_eq!(local_ca_names(Some("127.0.0.1"), None), local);
        assert_eq!(
            local_ca_names(Some("localhost"), Some("localhost")),
            [&local[..], &["*.localhost"]].concat()
        );
    }
}
