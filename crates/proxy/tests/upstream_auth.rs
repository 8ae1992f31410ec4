//! The proxy logging in to upstreams that ask for a password: SCRAM with a configured
//! password, SCRAM pass-through with the client's own keys, MD5, cleartext, and TCP with TLS
//! verified against a CA (the upstream being a second Berth proxy in front of PostgreSQL).

// Setup helpers outside #[test] functions unwrap too; clippy.toml's allow-unwrap-in-tests
// does not reach them.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::set_hba;
use proxy::routes::Role;
use proxy::secret::Secret;
use proxy::{Limits, ProxySettings, RouteTable, SslMode, UpstreamAddr};
use testkit::{TestPg, TestProxy, route};
use wire::scram::ScramVerifier;

async fn pg_with_roles() -> TestPg {
    testkit::init_tracing();
    let pg = TestPg::start().unwrap();
    let su = pg.superuser().await.unwrap();
    su.batch_execute(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN PASSWORD 'scram-pw';
         CREATE ROLE passthrough LOGIN PASSWORD 'pt-pw';
         CREATE ROLE clear_user LOGIN PASSWORD 'clear-pw';
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN PASSWORD 'md5-pw';",
    )
    .await
    .unwrap();
    pg
}

async fn current_user(proxy: &TestProxy, user: &str, pw: &str) -> Result<String, tokio_postgres::Error> {
    let (c, _) = proxy.connect("db", user, pw).await?;
    Ok(c.query_one("select current_user::text", &[]).await?.get(0))
}

#[tokio::test]
async fn scram_md5_cleartext_and_pass_through_to_a_password_protected_upstream() {
    let pg = pg_with_roles().await;
    let stored: String = pg
        .superuser()
        .await
        .unwrap()
        .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'passthrough'", &[])
        .await
        .unwrap()
        .get(0);
    set_hba(
        &pg,
        "local all postgres trust\nlocal all md5_user md5\nlocal all clear_user password\nlocal all all scram-sha-256\n",
    )
    .await;

    let mut db = route(
        "db",
        &pg,
        "postgres",
        &[("scram_user", "scram-pw"), ("md5_user", "md5-pw"), ("clear_user", "clear-pw")],
        Limits::default(),
    );
    // Pass-through: the proxy holds only the verifier PostgreSQL made, never the password.
    db.roles.insert(
        "passthrough".into(),
        Role {
            name: "passthrough".into(),
            verifiers: vec![ScramVerifier::parse(&stored).unwrap()],
            upstream_password: None,
        },
    );
    // A role whose upstream password is wrong.
    db.roles.insert(
        "wrong_upstream".into(),
        Role {
            name: "scram_user".into(),
            verifiers: vec![ScramVerifier::generate("client-pw")],
            upstream_password: Some(Secret::new("not-the-upstream-password")),
        },
    );
    let proxy = TestProxy::start(RouteTable::new([db]), ProxySettings::default()).await.unwrap();

    assert_eq!(current_user(&proxy, "scram_user", "scram-pw").await.unwrap(), "scram_user");
    assert_eq!(current_user(&proxy, "md5_user", "md5-pw").await.unwrap(), "md5_user");
    assert_eq!(current_user(&proxy, "clear_user", "clear-pw").await.unwrap(), "clear_user");
    assert_eq!(current_user(&proxy, "passthrough", "pt-pw").await.unwrap(), "passthrough");

    let err = current_user(&proxy, "wrong_upstream", "client-pw").await.unwrap_err();
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "28000");
    assert!(db_err.message().contains("could not authenticate to database \"db\""), "{}", db_err.message());
    // The proxy keeps serving.
    assert_eq!(current_user(&proxy, "scram_user", "scram-pw").await.unwrap(), "scram_user");
}

#[tokio::test]
async fn tcp_upstream_with_tls_verify_full() {
    testkit::init_tracing();
    let pg = TestPg::start().unwrap();
    pg.superuser().await.unwrap().batch_execute("CREATE ROLE bob LOGIN").await.unwrap();
    // The upstream: a proxy in front of the instance, reachable over TCP with TLS and SCRAM.
    let inner = TestProxy::start(
        RouteTable::new([route("inner", &pg, "postgres", &[("bob", "bob-pw")], Limits::default())]),
        ProxySettings::default(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("inner-ca.pem");
    std::fs::write(&ca, &inner.ca.ca_cert_pem).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, proxy::LocalCa::generate(&["localhost".into()]).unwrap().ca_cert_pem).unwrap();

    let tcp_route = |name: &str, mode: SslMode, root: Option<&Path>| {
        let mut db = route(name, &pg, "inner", &[("bob", "bob-pw")], Limits::default());
        db.upstream.addr = UpstreamAddr::Tcp { host: "localhost".into(), port: inner.addr.port() };
        db.upstream.ssl_mode = mode;
        db.upstream.tls = proxy::upstream_tls_config(mode, root).unwrap();
        db
    };
    let outer = TestProxy::start(
        RouteTable::new([
            tcp_route("good", SslMode::VerifyFull, Some(&ca)),
            tcp_route("untrusted", SslMode::VerifyFull, Some(&other_ca)),
            tcp_route("plain", SslMode::Disable, None),
        ]),
        ProxySettings::default(),
    )
    .await
    .unwrap();

    let (c, _) = outer.connect("good", "bob", "bob-pw").await.unwrap();
    let row = c
        .query_one("select current_user::text, ssl from pg_stat_ssl where pid = pg_backend_pid()", &[])
        .await;
    // The instance sees a unix-socket session (no TLS there); what matters is that it is bob.
    let user: String = match row {
        Ok(r) => r.get(0),
        Err(_) => c.query_one("select current_user::text", &[]).await.unwrap().get(0),
    };
    assert_eq!(user, "bob");
    assert_eq!(inner.proxy.client_connections("inner"), 1, "the session runs through the inner proxy");

    // A certificate from another CA is refused: the client gets a clear 57P03.
    let err = outer.connect("untrusted", "bob", "bob-pw").await.unwrap_err();
    assert_eq!(err.as_db_error().expect("server error").code().code(), "57P03");
    // Plaintext to an upstream that requires TLS: the upstream refuses the proxy's login,
    // and the client is told the proxy could not log in (the details go to the log).
    let err = outer.connect("plain", "bob", "bob-pw").await.unwrap_err();
    let e = err.as_db_error().expect("server error");
    assert_eq!(e.code().code(), "28000");
    assert!(e.message().contains("could not authenticate to database \"plain\""), "{}", e.message());
}
