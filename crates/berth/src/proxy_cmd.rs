//! `berth proxy --config FILE`: the proxy on its own, PgBouncer style. Routes come from the
//! file and are reloaded on SIGHUP and when the file changes; a reload that fails keeps the
//! previous table and says why in the log (without quoting the file, which holds secrets).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use proxy::{ConfigFile, LocalCa, Proxy, RouteTable, TlsServer};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Args)]
pub struct ProxyArgs {
    /// The TOML configuration file.
    #[arg(long)]
    config: PathBuf,
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let file = ConfigFile::load(&args.config)?;
    let routes = RouteTable::from_config(&file)?;
    let tls = load_tls(&file, &args.config)?;
    let proxy = Proxy::new(file.settings()?, routes, tls);
    let config_path = args.config.clone();
    let reloading = proxy.clone();
    proxy.set_reload_hook(move || {
        reload(&reloading, &config_path, "RELOAD");
        Ok(())
    });
    if let Some(addr) = file.proxy.metrics_listen {
        let metrics = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(listen = %metrics.local_addr()?, "metrics endpoint");
        tokio::spawn(proxy::metrics::serve_http(metrics, proxy.clone()));
    }
    let listener = proxy::listen(file.proxy.listen)
        .with_context(|| format!("cannot listen on {}", file.proxy.listen))?;
    tracing::info!(listen = %listener.local_addr()?, databases = proxy.routes().len(), "proxy listening");

    let serving = proxy.clone();
    let serve = tokio::spawn(async move { serving.serve(listener).await });
    let serve_pooled = match file.proxy.pooled_listen {
        Some(addr) => {
            let pooled = proxy::listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(listen = %pooled.local_addr()?, "pooled listener");
            let serving = proxy.clone();
            Some(tokio::spawn(async move { serving.serve_pooled(pooled).await }))
        }
        None => None,
    };
    tokio::spawn(reload_on_change(proxy.clone(), args.config.clone()));
    let signal = crate::signals::terminate()?.await;
    tracing::info!(signal, "shutting down: no new connections, waiting for transactions to finish");
    proxy.shutdown();
    let _ = serve.await;
    if let Some(p) = serve_pooled {
        let _ = p.await;
    }
    proxy.drained().await;
    tracing::info!("proxy stopped");
    Ok(())
}

fn load_tls(file: &ConfigFile, config_path: &Path) -> anyhow::Result<Option<TlsServer>> {
    let p = &file.proxy;
    match (&p.tls_cert, &p.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(TlsServer::from_files(cert, key)?)),
        (None, None) => {
            let dir = p
                .tls_dir
                .clone()
                .unwrap_or_else(|| config_path.parent().unwrap_or(Path::new(".")).join("berth-tls"));
            let ca = LocalCa::load_or_create(&dir, &p.tls_hostnames)?;
            tracing::info!(ca = %dir.join("ca.pem").display(), "TLS with the local CA; clients can verify-full against ca.pem");
            Ok(Some(ca.server()?))
        }
        _ => anyhow::bail!("set both tls_cert and tls_key, or neither"),
    }
}

fn modified(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn reload(proxy: &Proxy, path: &Path, why: &str) {
    match ConfigFile::load(path).map_err(anyhow::Error::from).and_then(|f| Ok(RouteTable::from_config(&f)?)) {
        Ok(routes) => {
            let n = routes.len();
            proxy.set_routes(routes);
            tracing::info!(why, databases = n, "routes reloaded");
        }
        Err(e) => tracing::error!(why, error = %e, "reload failed; keeping the previous routes"),
    }
}

/// Reloads on SIGHUP, and when the file's modification time or size changes (polled: it
/// works on every filesystem and costs one stat a second).
async fn reload_on_change(proxy: Proxy, path: PathBuf) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    let mut last = modified(&path);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                last = modified(&path);
                reload(&proxy, &path, "SIGHUP");
            }
            _ = tick.tick() => {
                let now = modified(&path);
                if now.is_some() && now != last {
                    last = now;
                    reload(&proxy, &path, "file changed");
                }
            }
        }
    }
}
