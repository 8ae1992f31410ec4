//! `berth tunnel`: a local, unencrypted PostgreSQL endpoint for desktop tools. Each local
//! client gets its own TLS connection to Berth's proxy (verified against Berth's CA) that
//! logs in with the API key; the session runs as the project's owner role. Local clients may
//! send any user name and password: the key is the credential. What goes wrong for one
//! client (no key, a revoked key, Berth unreachable, garbage) is told to that client as a
//! PostgreSQL error, and the tunnel stays up.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Buf, BytesMut};
use catalog::Secret;
use clap::Args;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::task::TaskTracker;
use wire::{ErrorResponse, SqlState, StartupMessage, StartupPacket};

use crate::client::ClientOpts;

/// How long a local client may take to send its startup packet, and Berth to answer.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Backend messages during login are small; anything bigger is not a login.
const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

#[derive(Args)]
pub struct TunnelArgs {
    /// Project id or name.
    project: String,
    /// Branch (default: main).
    #[arg(long)]
    branch: Option<String>,
    /// Go through the pooled port instead of the direct one.
    #[arg(long)]
    pooled: bool,
    /// Local address to listen on. Anything but loopback exposes the key's access.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Local port (default: a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Read the API key from this file instead of BERTH_API_KEY.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Berth's CA certificate (default: ca.pem in the data directory of a local `berth up`).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[command(flatten)]
    opts: ClientOpts,
}

/// Where the project's sessions go: found through the API on first use, then kept.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    database: String,
}

struct Tunnel {
    args: TunnelArgs,
    key: Option<Secret>,
    tls: TlsConnector,
    target: Mutex<Option<Target>>,
}

/// A failure told to one local client.
struct ClientError(ErrorResponse);

impl ClientError {
    fn new(code: SqlState, message: impl Into<String>) -> Self {
        ClientError(ErrorResponse::fatal(code, message))
    }
}

pub fn run(args: TunnelArgs) -> anyhow::Result<()> {
    let key = match &args.api_key_file {
        Some(path) => Some(Secret::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the API key from {}", path.display()))?
                .trim()
                .to_owned(),
        )),
        None => crate::client::api_key(&args.opts),
    };
    let ca = match &args.ca_file {
        Some(p) => p.clone(),
        None => crate::datadir::for_client(args.opts.data.clone()).join("ca.pem"),
    };
    anyhow::ensure!(
        ca.is_file(),
        "Berth's CA certificate {} was not found: pass --ca-file (the ca.pem `berth up` printed)",
        ca.display()
    );
    let config = proxy::upstream_tls_config(proxy::SslMode::VerifyFull, Some(&ca))
        .map_err(|e| anyhow::anyhow!("loading {}: {e}", ca.display()))?
        .context("a TLS configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(Arc::new(Tunnel {
        args,
        key,
        tls: TlsConnector::from(config),
        target: Mutex::new(None),
    })))
}

async fn serve(tunnel: Arc<Tunnel>) -> anyhow::Result<()> {
    let args = &tunnel.args;
    let listener = TcpListener::bind(SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
    let local = listener.local_addr()?;
    if !args.host.is_loopback() {
        eprintln!(
            "warning: listening on {}, which is not loopback: anyone who can reach it gets this API key's \
             access to the database, with no password",
            args.host
        );
    }
    if tunnel.key.is_none() {
        eprintln!(
            "warning: no API key (set BERTH_API_KEY or pass --api-key-file): every connection will be refused"
        );
    }
    if let Err(e) = tunnel.target().await {
        eprintln!("warning: {} (retried for each connection)", e.0.message().unwrap_or_default());
    }
    // Installed before the banner, so a signal sent as soon as it is printed is not lost.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let database = tunnel.target.lock().await.as_ref().map(|t| t.database.clone());
    let database = database.unwrap_or_else(|| args.project.clone());
    println!("Tunnel to {database} is ready.");
    println!("  hostname: {}", local.ip());
    println!("  port: {}", local.port());
    println!("  username: <anything>");
    println!("  password: <none>");
    println!("  psql -h {} -p {} -U anyone {database}", local.ip(), local.port());
    println!("Press Ctrl-C to stop.");
    use std::io::Write as _;
    std::io::stdout().flush()?;

    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let tunnel = Arc::clone(&tunnel);
                    tracker.spawn(async move { tunnel.client(stream, peer).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    tracker.close();
    if !tracker.is_empty() {
        eprintln!(
            "tunnel closed; waiting for {} open session(s) to finish (Ctrl-C again to drop them)",
            tracker.len()
        );
        tokio::select! {
            () = tracker.wait() => {}
            _ = interrupt.recv() => {}
        }
    }
    Ok(())
}

impl Tunnel {
    async fn client(&self, mut local: TcpStream, peer: SocketAddr) {
        match self.session(&mut local).await {
            Ok(()) => tracing::debug!(%peer, "tunnel session ended"),
            Err(ClientError(e)) => {
                tracing::info!(%peer, message = e.message().unwrap_or_default(), "tunnel session refused");
                let _ = local.write_all(&e.to_error_message()).await;
                let _ = local.shutdown().await;
            }
        }
    }

    async fn session(&self, local: &mut TcpStream) -> Result<(), ClientError> {
        let startup = match tokio::time::timeout(STEP_TIMEOUT, read_startup(local)).await {
            Err(_) => {
                return Err(ClientError::new(SqlState::PROTOCOL_VIOLATION, "no startup packet in time"));
            }
            Ok(r) => r?,
        };
        let startup = match startup {
            Some(StartupPacket::Startup(s)) => s,
            Some(StartupPacket::Cancel(c)) => {
                // Forwarded to the proxy, which knows which session the key belongs to.
                if let Ok(target) = self.target().await
                    && let Ok(mut up) = self.connect(&target).await
                {
                    let mut out = BytesMut::new();
                    StartupPacket::Cancel(c).encode(&mut out);
                    let _ = up.write_all(&out).await;
                    let _ = up.shutdown().await;
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let key = self.key.as_ref().ok_or_else(|| {
            ClientError::new(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "the tunnel has no API key: start it with BERTH_API_KEY set or --api-key-file",
            )
        })?;
        let target = self.target().await?;
        let mut up = self.connect(&target).await?;
        let leftover = login(&mut up, local, &startup, &target, key).await?;
        local.write_all(&leftover).await.map_err(|_| lost())?;
        let _ = tokio::io::copy_bidirectional(local, &mut up).await;
        Ok(())
    }

    /// The proxy address and database for this tunnel, asked of the API once it answers.
    async fn target(&self) -> Result<Target, ClientError> {
        let mut cached = self.target.lock().await;
        if let Some(t) = cached.as_ref() {
            return Ok(t.clone());
        }
        let Some(key) = self.key.clone() else {
            return Err(ClientError::new(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "the tunnel has no API key: start it with BERTH_API_KEY set or --api-key-file",
            ));
        };
        let (opts, project, branch, pooled) =
            (self.args.opts.clone(), self.args.project.clone(), self.args.branch.clone(), self.args.pooled);
        let found =
            tokio::task::spawn_blocking(move || lookup(&opts, key, &project, branch.as_deref(), pooled))
                .await
                .map_err(|_| ClientError::new(SqlState::INTERNAL_ERROR, "the API lookup failed"))??;
        *cached = Some(found.clone());
        Ok(found)
    }

    async fn connect(&self, target: &Target) -> Result<TlsStream<TcpStream>, ClientError> {
        let unreachable = |why: String| {
            ClientError::new(
                SqlState::CONNECTION_FAILURE,
                format!("could not connect to Berth at {}:{}: {why}", target.host, target.port),
            )
        };
        let connect = async {
            let mut tcp = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let mut out = BytesMut::new();
            StartupPacket::SslRequest.encode(&mut out);
            tcp.write_all(&out).await.map_err(|e| unreachable(e.to_string()))?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await.map_err(|e| unreachable(e.to_string()))?;
            if answer[0] != b'S' {
                return Err(unreachable("the server does not offer TLS".into()));
            }
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| unreachable("invalid host name".into()))?;
            self.tls.connect(name, tcp).await.map_err(|e| unreachable(format!("TLS: {e}")))
        };
        tokio::time::timeout(STEP_TIMEOUT, connect).await.map_err(|_| unreachable("timed out".into()))?
    }
}

fn lost() -> ClientError {
    ClientError::new(SqlState::CONNECTION_FAILURE, "the connection was lost during login")
}

/// Reads the local client's startup packet, refusing SSL and GSS encryption (the tunnel is
/// local and plaintext). `None` when the client left.
async fn read_startup<S: AsyncRead + AsyncWrite + Unpin>(
    local: &mut S,
) -> Result<Option<StartupPacket>, ClientError> {
    let mut buf = BytesMut::with_capacity(512);
    loop {
        match wire::parse_startup(&mut buf) {
            Ok(Some(StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
                local.write_all(b"N").await.map_err(|_| lost())?;
                continue;
            }
            Ok(Some(p)) => return Ok(Some(p)),
            Ok(None) => {}
            Err(e) => {
                return Err(ClientError::new(
                    SqlState::PROTOCOL_VIOLATION,
                    format!("invalid startup packet: {e}"),
                ));
            }
        }
        match local.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Logs in to the proxy with the API key and the local client's startup parameters. Returns
/// what the client must get first: AuthenticationOk and everything after it read so far.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    up: &mut S,
    local: &mut TcpStream,
    startup: &StartupMessage,
    target: &Target,
    key: &Secret,
) -> Result<BytesMut, ClientError> {
    let mut params = vec![
        ("user".to_owned(), proxy::apikey::API_KEY_USER.to_owned()),
        ("database".to_owned(), target.database.clone()),
    ];
    params.extend(
        startup
            .params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database" && !k.starts_with("_pq_."))
            .cloned(),
    );
    let mut out = BytesMut::new();
    StartupPacket::Startup(StartupMessage { version: wire::ProtocolVersion::V3_0, params }).encode(&mut out);
    up.write_all(&out).await.map_err(|_| lost())?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let frame = loop {
            match wire::parse_frame(&mut buf, MAX_LOGIN_MESSAGE) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(_) => {
                    return Err(ClientError::new(
                        SqlState::PROTOCOL_VIOLATION,
                        "Berth sent an invalid message",
                    ));
                }
            }
            match tokio::time::timeout(STEP_TIMEOUT, up.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(lost()),
                Ok(Ok(_)) => {}
                Err(_) => {
                    return Err(ClientError::new(
                        SqlState::CONNECTION_FAILURE,
                        "Berth did not answer in time",
                    ));
                }
            }
        };
        match frame.tag {
            // ErrorResponse: the proxy's own words reach the client as they are.
            b'E' => {
                let e = ErrorResponse::decode(&frame.body)
                    .unwrap_or_else(|_| ErrorResponse::fatal(SqlState::CONNECTION_FAILURE, "login failed"));
                return Err(ClientError(e));
            }
            b'v' => {
                let mut raw = BytesMut::new();
                frame.encode(&mut raw);
                local.write_all(&raw).await.map_err(|_| lost())?;
            }
            b'R' => match frame.body.first_chunk::<4>().map(|c| i32::from_be_bytes(*c)) {
                Some(0) => {
                    let mut first = BytesMut::new();
                    frame.encode(&mut first);
                    first.extend_from_slice(&buf);
                    buf.advance(buf.len());
                    return Ok(first);
                }
                Some(3) => {
                    out.clear();
                    wire::frontend::encode_password_message(&mut out, key.expose());
                    up.write_all(&out).await.map_err(|_| lost())?;
                }
                _ => {
                    return Err(ClientError::new(
                        SqlState::PROTOCOL_VIOLATION,
                        "Berth asked for an authentication method the tunnel does not use; is this a Berth proxy?",
                    ));
                }
            },
            _ => {
                return Err(ClientError::new(
                    SqlState::PROTOCOL_VIOLATION,
                    "unexpected message from Berth during login",
                ));
            }
        }
    }
}

/// Finds the proxy address and database name through the connection endpoint.
fn lookup(
    opts: &ClientOpts,
    key: Secret,
    project: &str,
    branch: Option<&str>,
    pooled: bool,
) -> Result<Target, ClientError> {
    let refused = |m: String| ClientError::new(SqlState::INVALID_AUTHORIZATION_SPECIFICATION, m);
    let api = crate::client::Api::with_key(opts, key)
        .map_err(|e| ClientError::new(SqlState::CONNECTION_FAILURE, format!("{e:#}")))?;
    let mut path = format!("/v1/projects/{project}/connection?pooled={pooled}");
    if let Some(b) = branch {
        path.push_str(&format!("&branch={b}"));
    }
    let answer = api
        .get_status(&path)
        .map_err(|e| ClientError::new(SqlState::CONNECTION_FAILURE, format!("{e:#}")))?;
    let json = match answer {
        Ok(json) => json,
        Err((401, _)) => return Err(refused("the API key is invalid or revoked".into())),
        Err((404, _)) => return Err(refused(format!("project {project:?} was not found with this API key"))),
        Err((_, message)) => return Err(refused(message)),
    };
    let uri = json["connectionUri"].as_str().unwrap_or_default();
    parse_target(uri).ok_or_else(|| {
        ClientError::new(SqlState::INTERNAL_ERROR, "the API returned an unusable connection string")
    })
}

/// Host, port and database of `postgresql://user:password@host:port/database?…`.
fn parse_target(uri: &str) -> Option<Target> {
    let rest = uri.strip_prefix("postgresql://").or_else(|| uri.strip_prefix("postgres://"))?;
    let rest = &rest[rest.rfind('@').map_or(0, |i| i + 1)..];
    let (authority, path) = rest.split_once('/')?;
    let database = path.split('?').next()?.to_owned();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, 5432),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    (!database.is_empty() && !host.is_empty()).then_some(Target { host, port, database })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_connection_strings() {
        let t =
            parse_target("postgresql://shop_owner:p%40ss@localhost:6433/shop.dev?sslmode=require").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.database.as_str()), ("localhost", 6433, "shop.dev"));
        let t = parse_target("postgres://u@[::1]:7/db").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.database.as_str()), ("::1", 7, "db"));
        assert!(parse_target("mysql://x@h:1/db").is_none());
        assert!(parse_target("postgresql://x@h:1/").is_none());
    }
}
