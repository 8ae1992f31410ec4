//! The proxy in-process on 127.0.0.1:0 with a generated CA, and clients that reach it over
//! TLS verified against that CA (`sslmode=verify-full` semantics, server name `localhost`).

use std::collections::HashMap;
use std::net::SocketAddr;

use proxy::routes::{Database, Limits, Role, Upstream, UpstreamAddr};
use proxy::secret::Secret;
use proxy::{LocalCa, Proxy, ProxySettings, RouteTable, SslMode};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use wire::scram::ScramVerifier;

use crate::TestPg;

pub struct TestProxy {
    pub proxy: Proxy,
    /// The direct (session) listener.
    pub addr: SocketAddr,
    /// The pooled listener.
    pub pooled_addr: SocketAddr,
    pub ca: LocalCa,
    serve: tokio::task::JoinHandle<()>,
    serve_pooled: tokio::task::JoinHandle<()>,
}

/// A route named `name` to database `dbname` of `pg`, with `roles` as (name, password).
pub fn route(name: &str, pg: &TestPg, dbname: &str, roles: &[(&str, &str)], limits: Limits) -> Database {
    let roles: HashMap<String, Role> = roles
        .iter()
        .map(|(r, pw)| {
            (
                r.to_string(),
                Role {
                    name: r.to_string(),
                    verifiers: vec![ScramVerifier::generate(pw)],
                    upstream_password: Some(Secret::new(*pw)),
                },
            )
        })
        .collect();
    Database {
        name: name.to_owned(),
        upstream: Upstream {
            addr: UpstreamAddr::Unix { dir: pg.socket_dir().to_owned(), port: pg.port() },
            dbname: dbname.to_owned(),
            ssl_mode: SslMode::Disable,
            ssl_root_cert: None,
            tls: None,
            trust: Default::default(),
        },
        roles,
        limits,
        pool: proxy::PoolConfig::default(),
        api_key_access: None,
        auth_query: None,
        close_sessions_on_removal: false,
    }
}

/// A rustls client configuration trusting only `ca_pem`.
pub fn client_tls(ca_pem: &str) -> rustls::ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("generated CA is valid PEM")).expect("generated CA is a valid root");
    }
    rustls::ClientConfig::builder_with_provider(proxy::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

impl TestProxy {
    pub async fn start(routes: RouteTable, settings: ProxySettings) -> anyhow::Result<TestProxy> {
        let ca = LocalCa::generate(&["localhost".into(), "127.0.0.1".into()])?;
        let proxy = Proxy::new(settings, routes, Some(ca.server()?));
        let listener = proxy::listen("127.0.0.1:0".parse()?)?;
        let addr = listener.local_addr()?;
        let serving = proxy.clone();
        let serve = tokio::spawn(async move { serving.serve(listener).await });
        let pooled = proxy::listen("127.0.0.1:0".parse()?)?;
        let pooled_addr = pooled.local_addr()?;
        let serving = proxy.clone();
        let serve_pooled = tokio::spawn(async move { serving.serve_pooled(pooled).await });
        Ok(TestProxy { proxy, addr, pooled_addr, ca, serve, serve_pooled })
    }

    pub fn client_tls(&self) -> rustls::ClientConfig {
        client_tls(&self.ca.ca_cert_pem)
    }

    /// tokio-postgres settings for a TLS connection through the proxy.
    pub fn config(&self, db: &str, user: &str, password: &str) -> tokio_postgres::Config {
        Self::config_at(self.addr, db, user, password)
    }

    fn config_at(addr: SocketAddr, db: &str, user: &str, password: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("localhost")
            .hostaddr(addr.ip())
            .port(addr.port())
            .dbname(db)
            .user(user)
            .password(password)
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        c
    }

    /// tokio-postgres settings for a TLS connection through the pooled listener.
    pub fn pooled_config(&self, db: &str, user: &str, password: &str) -> tokio_postgres::Config {
        Self::config_at(self.pooled_addr, db, user, password)
    }

    /// Connects through the pooled listener.
    pub async fn connect_pooled(
        &self,
        db: &str,
        user: &str,
        password: &str,
    ) -> Result<
        (tokio_postgres::Client, tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>),
        tokio_postgres::Error,
    > {
        self.connect_with(self.pooled_config(db, user, password)).await
    }

    /// Connects and spawns the connection task; the returned handle yields its end.
    pub async fn connect(
        &self,
        db: &str,
        user: &str,
        password: &str,
    ) -> Result<
        (tokio_postgres::Client, tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>),
        tokio_postgres::Error,
    > {
        self.connect_with(self.config(db, user, password)).await
    }

    pub async fn connect_with(
        &self,
        config: tokio_postgres::Config,
    ) -> Result<
        (tokio_postgres::Client, tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>),
        tokio_postgres::Error,
    > {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.client_tls());
        let (client, conn) = config.connect(tls).await?;
        Ok((client, tokio::spawn(conn)))
    }

    /// A connection string for libpq programs (`psql`, `pgbench`), verifying the CA.
    pub fn url(&self, db: &str, user: &str, password: &str, ca_file: &std::path::Path) -> String {
        format!(
            "postgresql://{user}:{password}@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}&hostaddr={}",
            self.addr.port(),
            ca_file.display(),
            self.addr.ip()
        )
    }

    /// The same for the pooled listener.
    pub fn pooled_url(&self, db: &str, user: &str, password: &str, ca_file: &std::path::Path) -> String {
        self.url(db, user, password, ca_file).replace(
            &format!("localhost:{}/", self.addr.port()),
            &format!("localhost:{}/", self.pooled_addr.port()),
        )
    }

    /// Graceful shutdown, waiting for sessions to drain.
    pub async fn stop(&mut self) {
        self.proxy.shutdown();
        self.proxy.drained().await;
        let _ = (&mut self.serve).await;
        let _ = (&mut self.serve_pooled).await;
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.serve.abort();
        self.serve_pooled.abort();
    }
}
