//! Berth's data plane: a PostgreSQL proxy that terminates TLS and SCRAM-SHA-256, routes by
//! database name (or TLS server name) to an upstream, and relays sessions frame by frame. It
//! serves a route table snapshot handed to it and never reads the catalog itself.

mod activity;
pub mod admin;
pub mod apikey;
mod auth;
pub mod auth_query;
pub mod cancel;
pub mod clients;
pub mod config;
mod direct;
mod error;
mod fake_scram_key;
mod handshake;
mod limits;
mod login;
pub mod metrics;
pub mod pool;
mod relay;
pub mod routes;
pub mod secret;
mod server;
mod server_frames;
mod session;
pub mod sni;
mod stream;
pub mod tls;
mod tls_conn;
pub mod tls_files;
mod unauthenticated;
pub mod units;
mod upstream;
pub mod upstream_auth;
mod upstream_tls;

pub use config::{ConfigError, ConfigFile};
pub use fake_scram_key::FakeScramKey;
pub use routes::{Database, Limits, PoolConfig, PoolMode, Role, RouteTable, SslMode, Upstream, UpstreamAddr};
pub use server::{LISTEN_BACKLOG, Proxy, ProxySettings, ReloadHook, listen};
pub use session::ListenerKind;
pub use tls::{LocalCa, TlsServer};
/// Berth's own TLS record layer, public for `berth-tls-records` (crates/bench), which
/// measures it against rustls's connections; the proxy itself uses it through `handshake`.
#[doc(hidden)]
pub use tls_conn::{TlsConn, accept as tls_accept};
pub use tls_files::CertificateFiles;
pub use unauthenticated::DEFAULT_MAX_PER_SOURCE as DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE;
pub use upstream_tls::{client_config as upstream_tls_config, client_config_pem as upstream_tls_config_pem};
