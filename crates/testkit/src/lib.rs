//! Test fixtures for Berth, shared by every crate's integration tests: real PostgreSQL
//! instances copied from a template made once per test run, the proxy started in-process on
//! a port-0 listener with freshly generated certificates, and tokio-postgres clients that
//! connect through it over verified TLS. Nothing here mocks PostgreSQL.

mod pg;
mod proxy;
pub mod raw;
mod tcp_pg;

pub use pg::TestPg;
pub use proxy::{TestProxy, client_tls, route};
pub use tcp_pg::TcpPg;

/// Installs a tracing subscriber once, writing to the test's captured output.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}
