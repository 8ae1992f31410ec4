//! `berth tunnel`: a local, unencrypted PostgreSQL endpoint for desktop tools. At start it
//! says which API key it uses and asks the API whether that key may open sessions on the
//! project (or branch); it is ready only if so. Each local client then gets its own TLS
//! connection to Berth's proxy (verified against Berth's CA) that logs in with the key; the
//! session runs as the project's owner role. Local clients may send any user name and
//! password (the key is the credential), but only the tunnel's own database. What goes wrong
//! for one client later (a revoked key, Berth unreachable, another database, garbage) is told
//! to that client as a PostgreSQL error, and the tunnel stays up. The key itself is never
//! printed: only the prefix Berth shows for it.

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
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::task::TaskTracker;
use wire::{ErrorResponse, SqlState, StartupMessage, StartupPacket};

use crate::client::{ClientOpts, KeySource};

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

/// Where the project's sessions go: found through the API at start.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    database: String,
}

struct Tunnel {
    args: TunnelArgs,
    key: Secret,
    tls: TlsConnector,
    target: Target,
}

/// A failure told to one local client.
struct ClientError(ErrorResponse);

impl ClientError {
    fn new(code: SqlState, message: impl Into<String>) -> Self {
        ClientError(ErrorResponse::fatal(code, message))
    }
}

pub fn run(args: TunnelArgs) -> anyhow::Result<()> {
    let key = api_key(&args)?;
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
    let target = lookup(&args.opts, &key, &args.project, args.branch.as_deref(), args.pooled)
        .context("the tunnel cannot start")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(Arc::new(Tunnel { args, key, tls: TlsConnector::from(config), target })))
}

/// The key from --api-key-file, else BERTH_API_KEY, else the admin key of a local `berth up`;
/// says on stderr which one (by its shown prefix) and where it came from.
fn api_key(args: &TunnelArgs) -> anyhow::Result<Secret> {
    let (key, from) = match &args.api_key_file {
        Some(path) => {
            let key = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API key from {}", path.display()))?;
            let key = Secret::new(key.trim());
            let from = format!("using the API key from {} ({})", path.display(), shown(&key));
            (key, from)
        }
        None => match crate::client::api_key_and_source(&args.opts) {
            Some((key, KeySource::Env)) => {
                let from = format!("using the API key from BERTH_API_KEY ({})", shown(&key));
                (key, from)
            }
            Some((key, KeySource::AdminKeyFile(path))) => {
                let from = format!(
                    "BERTH_API_KEY is not set: using the organization's admin key from {} ({}), which \
                     reaches every project; set BERTH_API_KEY or pass --api-key-file to use a project key",
                    path.display(),
                    shown(&key)
                );
                (key, from)
            }
            None => anyhow::bail!(
                "no API key: set BERTH_API_KEY to a key with credentials:read, pass --api-key-file, or run on \
                 the machine of `berth up` (with --data DIR) to use its admin key"
            ),
        },
    };
    eprintln!("{from}");
    Ok(key)
}

/// How a key is named in messages: the prefix Berth itself shows for it (`berth_live_` and four
/// characters, as in `GET /v1/keys`), never more. A string that is not a Berth key shows
/// nothing of itself, since it may be some other secret pasted by mistake.
fn shown(key: &Secret) -> String {
    let key = key.expose();
    const SHOWN: usize = catalog::KEY_PREFIX.len() + 4;
    match key.get(..SHOWN) {
        Some(prefix) if key.starts_with(catalog::KEY_PREFIX) && key.len() > SHOWN => {
            format!("prefix {prefix}")
        }
        _ => format!("not a {}… key", catalog::KEY_PREFIX),
    }
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
    // Installed before the banner, so a signal sent as soon as it is printed is not lost.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let database = &tunnel.target.database;
    println!("Tunnel to {database} is ready.");
    println!("  hostname: {}", local.ip());
    println!("  port: {}", local.port());
    println!("  database: {database}");
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
                if let Ok(mut up) = self.connect().await {
                    let mut out = BytesMut::new();
                    StartupPacket::Cancel(c).encode(&mut out);
                    let _ = up.write_all(&out).await;
                    let _ = up.shutdown().await;
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        own_database(&startup, &self.target.database)?;
        let mut up = self.connect().await?;
        let leftover = login(&mut up, local, &startup, &self.target, &self.key).await?;
        local.write_all(&leftover).await.map_err(|_| lost())?;
        let _ = tokio::io::copy_bidirectional(local, &mut up).await;
        Ok(())
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, ClientError> {
        let target = &self.target;
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

/// The tunnel serves one database. A client asking for another is told it does not exist, in
/// PostgreSQL's words, rather than reaching this one unawares. No database, an empty one, or
/// the user name (what libpq sends when no database is given) counts as asking for this one.
fn own_database(startup: &StartupMessage, own: &str) -> Result<(), ClientError> {
    match startup.param("database") {
        None | Some("") => Ok(()),
        Some(wanted) if wanted == own || Some(wanted) == startup.user() => Ok(()),
        Some(wanted) => Err(ClientError::new(
            SqlState::INVALID_CATALOG_NAME,
            format!("database \"{wanted}\" does not exist"),
        )),
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

/// Finds the proxy address and database name through the connection endpoint, which also
/// tells whether the key may open sessions there: it needs `credentials:read` and sight of the
/// project and branch, exactly what the proxy's API-key login asks of it.
fn lookup(
    opts: &ClientOpts,
    key: &Secret,
    project: &str,
    branch: Option<&str>,
    pooled: bool,
) -> anyhow::Result<Target> {
    let api = crate::client::Api::with_key(opts, key.clone())?;
    let mut path = format!("/v1/projects/{project}/connection?pooled={pooled}");
    if let Some(b) = branch {
        path.push_str(&format!("&branch={b}"));
    }
    let json = match api.get_status(&path)? {
        Ok(json) => json,
        Err((status, message)) => anyhow::bail!(refusal(key, project, branch, status, &message)),
    };
    let uri = json["connectionUri"].as_str().unwrap_or_default();
    // The string carries the owner's password: it is parsed, never shown.
    parse_target(uri).context("the API returned an unusable connection string")
}

/// Why the API refused the key, in the tunnel's terms (statuses as in `control::auth`).
fn refusal(key: &Secret, project: &str, branch: Option<&str>, status: u16, message: &str) -> String {
    let key = shown(key);
    match (status, branch) {
        (401, _) => format!("the API key ({key}) is unknown or revoked (HTTP 401)"),
        // The API's words name the missing scope.
        (403, _) => format!("the API key ({key}) may not open sessions: {message}"),
        (404, Some(b)) if message.starts_with("branch") => {
            format!("project {project:?} has no branch {b:?} (HTTP 404)")
        }
        (404, _) => format!(
            "project {project:?} was not found with the API key ({key}): it does not exist, or the key \
             belongs to another project or organization (HTTP 404)"
        ),
        _ => format!("the API refused the API key ({key}): {message}"),
    }
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

    fn startup(params: &[(&str, &str)]) -> StartupMessage {
        let params = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        StartupMessage { version: wire::ProtocolVersion::V3_0, params }
    }

    #[test]
    fn only_the_tunnels_own_database_is_served() {
        for ok in [
            startup(&[("user", "anyone"), ("database", "shop.dev")]),
            startup(&[("user", "anyone"), ("database", "anyone")]),
            startup(&[("user", "anyone"), ("database", "")]),
            startup(&[("user", "anyone")]),
        ] {
            assert!(own_database(&ok, "shop.dev").is_ok(), "{:?}", ok.params);
        }
        let Err(ClientError(e)) =
            own_database(&startup(&[("user", "anyone"), ("database", "shop")]), "shop.dev")
        else {
            panic!("the parent's database is another database");
        };
        assert_eq!(e.code(), Some(SqlState::INVALID_CATALOG_NAME));
        assert_eq!(e.severity(), Some("FATAL"));
        assert_eq!(e.message(), Some("database \"shop\" does not exist"));
    }

    #[test]
    fn keys_are_shown_by_their_prefix_only() {
        let key = Secret::new("berth_live_GUwF0DxyipD8h8FeRxOAIFlT9b0z4uDK");
        assert_eq!(shown(&key), "prefix berth_live_GUwF");
        let pasted = Secret::new("hunter2-some-other-password");
        assert!(!shown(&pasted).contains("hunter"), "{}", shown(&pasted));
        assert!(!shown(&Secret::new("berth_live_GUwF")).contains("GUwF"), "a key that is all prefix");
    }
}
