//! Authentication and routing through the proxy: SCRAM with and without channel binding,
//! failures that all look alike, libpq (`psql`) with `sslmode=verify-full`, and PostgreSQL
//! 17 direct TLS with and without ALPN.

mod common;

use std::process::Output;

use common::{PASSWORD, alice_startup, message, sqlstate, stack};
use tokio::io::AsyncWriteExt;
use tokio_postgres::config::ChannelBinding;
use wire::ProtocolVersion;
use wire::backend::{Authentication, BackendMessage};

async fn failed_login(s: &common::Stack, db: &str, user: &str, password: &str) -> tokio_postgres::Error {
    let r = common::within("login", s.proxy.connect(db, user, password)).await;
    common::refused(r, &format!("login as {user} on {db}"))
}

#[tokio::test]
async fn failed_logins_all_look_alike() {
    let s = stack().await;
    let cases = [
        ("app", "alice", "wrong password"),
        ("app", "mallory", PASSWORD),
        ("app", "mallory", "wrong password"),
        ("nosuchdb", "alice", PASSWORD),
        ("nosuchdb", "alice", "wrong password"),
    ];
    for (db, user, password) in cases {
        let err = failed_login(&s, db, user, password).await;
        assert_eq!(sqlstate(&err), Some("28P01"), "{db}/{user}: {err}");
        assert_eq!(message(&err), format!("password authentication failed for user \"{user}\""));
        let db_err = err.as_db_error().unwrap();
        assert_eq!(db_err.severity(), "FATAL");
        assert_eq!(db_err.detail(), None, "nothing tells the cases apart");
        assert_eq!(db_err.hint(), None);
    }
    assert_eq!(s.proxy.proxy.client_connections("app"), 0);
    // The right password still works afterwards.
    s.assert_serving().await;
}

#[tokio::test]
async fn scram_channel_binding_plus() {
    let s = stack().await;
    for binding in [ChannelBinding::Require, ChannelBinding::Prefer, ChannelBinding::Disable] {
        let mut config = s.config();
        config.channel_binding(binding);
        let (c, _conn) = s.proxy.connect_with(config).await.unwrap_or_else(|e| panic!("{binding:?}: {e}"));
        let user: String = c.query_one("select current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(user, "alice");
    }
    // With the binding required, a wrong password still fails as usual.
    let mut config = s.proxy.config("app", "alice", "wrong");
    config.channel_binding(ChannelBinding::Require);
    let err = common::refused(s.proxy.connect_with(config).await, "wrong password");
    assert_eq!(sqlstate(&err), Some("28P01"));
}

fn psql(url: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/usr/bin/psql");
    cmd.arg(url).args(["-X", "-v", "ON_ERROR_STOP=1"]).args(args);
    // Only the URL says how to connect.
    for var in
        ["PGPASSWORD", "PGSSLMODE", "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS"]
    {
        cmd.env_remove(var);
    }
    cmd.kill_on_drop(true);
    cmd
}

async fn run(mut cmd: tokio::process::Command) -> Output {
    common::within("psql", cmd.output()).await.expect("run psql")
}

#[tokio::test]
async fn psql_verify_full() {
    let s = stack().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &s.proxy.ca.ca_cert_pem).unwrap();
    let password = PASSWORD.replace(' ', "%20");
    let url = s.proxy.url("app", "alice", &password, &ca);

    let out = run(psql(&url, &["-Atc", "select 1"])).await;
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");

    // libpq's view of the session: TLS on, SCRAM done, the server's own version string.
    let out =
        run(psql(&url, &["-At", "-c", "select current_user, current_database()", "-c", "\\conninfo"])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("alice|app\n"), "{stdout}");
    assert!(stdout.contains("SSL connection (protocol: TLSv1.3"), "{stdout}");

    // Notices reach libpq too.
    let out = run(psql(&url, &["-Atc", "DO $$ BEGIN RAISE NOTICE 'hello'; END $$"])).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOTICE:  hello"), "{out:?}");

    // A wrong password, as libpq reports it.
    let bad = s.proxy.url("app", "alice", "nope", &ca);
    let out = run(psql(&bad, &["-Atc", "select 1"])).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FATAL:  password authentication failed for user \"alice\""), "{stderr}");

    // verify-full really verifies: a different CA is refused by libpq before any login.
    let other = proxy::LocalCa::generate(&["localhost".into()]).unwrap();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, &other.ca_cert_pem).unwrap();
    let out = run(psql(&s.proxy.url("app", "alice", &password, &other_ca), &["-Atc", "select 1"])).await;
    assert_eq!(out.status.code(), Some(2));
    // OpenSSL words a signature by a foreign CA as "certificate verify failed" or "EVP lib".
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SSL error") || stderr.contains("certificate verify failed"), "{stderr}");
    assert!(!stderr.contains("FATAL"), "refused by libpq before the proxy saw a login: {stderr}");
}

#[tokio::test]
async fn direct_tls_with_alpn_starts_authentication() {
    let s = stack().await;
    let mut tls = s.direct_tls(true).await.expect("direct TLS handshake");
    assert_eq!(tls.stream.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    tls.send(&alice_startup(ProtocolVersion::V3_0)).await;
    let f = tls.frame().await.expect("a reply to the StartupMessage");
    assert_eq!(f.tag, b'R');
    assert_eq!(&f.body[..4], &10i32.to_be_bytes(), "AuthenticationSASL");
    match BackendMessage::decode(&f).unwrap() {
        BackendMessage::Authentication(Authentication::Sasl { mechanisms }) => {
            assert_eq!(mechanisms, vec!["SCRAM-SHA-256-PLUS".to_owned(), "SCRAM-SHA-256".to_owned()]);
        }
        other => panic!("expected AuthenticationSASL, got {other:?}"),
    }
}

#[tokio::test]
async fn direct_tls_without_alpn_is_closed() {
    let s = stack().await;
    match s.direct_tls(false).await {
        // rustls may report the refusal during the handshake itself.
        Err(e) => tracing::info!(error = %e, "handshake refused"),
        Ok(mut tls) => {
            let _ = tls.stream.write_all(&alice_startup(ProtocolVersion::V3_0)).await;
            let _ = tls.stream.flush().await;
            tls.closed().await;
        }
    }
    s.assert_serving().await;
}

#[tokio::test]
async fn unreachable_upstream() {
    let s = stack().await;
    let nowhere = tempfile::tempdir().unwrap();
    let mut db = testkit::route("app", &s.pg, "app", &[("alice", PASSWORD)], proxy::Limits::default());
    db.upstream.addr = proxy::UpstreamAddr::Unix { dir: nowhere.path().to_owned(), port: 5432 };
    s.proxy.proxy.set_routes(proxy::RouteTable::new([db]));
    let err = common::refused(s.proxy.connect("app", "alice", PASSWORD).await, "no upstream");
    assert_eq!(sqlstate(&err), Some("57P03"), "{err}");
    assert_eq!(message(&err), "database \"app\" is not available right now");
    // Nothing about the upstream's address reaches the client.
    assert!(!err.to_string().contains(&nowhere.path().display().to_string()), "{err}");
    // A wrong password is still a wrong password.
    let err = common::refused(s.proxy.connect("app", "alice", "wrong").await, "login");
    assert_eq!(sqlstate(&err), Some("28P01"));
    assert_eq!(s.proxy.proxy.client_connections("app"), 0);
}

async fn full_proxy(s: &common::Stack) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &s.proxy.ca.ca_cert_pem).expect("write the CA");
    let url = s.proxy.url("app", "alice", &PASSWORD.replace(' ', "%20"), &ca);
    (dir, url)
}

#[tokio::test]
async fn too_many_clients_for_the_proxy() {
    let settings = proxy::ProxySettings { max_client_connections: 1, ..Default::default() };
    let s = common::stack_with(proxy::Limits::default(), settings).await;
    let (c, _conn) = s.alice_with_conn().await;
    let (_dir, url) = full_proxy(&s).await;
    let out = run(psql(&url, &["-Atc", "select 1"])).await;
    assert_eq!(out.status.code(), Some(2), "refused while the one slot is taken");
    assert!(out.stdout.is_empty());
    drop(c);
    common::eventually("the slot to be released", || s.proxy.proxy.connections() == 0).await;
    let out = run(psql(&url, &["-Atc", "select 1"])).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
}

/// PostgreSQL reports "sorry, too many clients already" (53300) after the TLS handshake and
/// the StartupMessage, so TLS clients show it. The proxy writes it in plaintext before
/// reading anything, in answer to the SSLRequest, and TLS clients cannot show it: libpq
/// (since the CVE-2024-10977 fix) prints "server sent an error response during SSL
/// exchange", tokio-postgres "server does not support TLS".
#[tokio::test]
async fn too_many_clients_error_reaches_tls_clients() {
    let settings = proxy::ProxySettings { max_client_connections: 1, ..Default::default() };
    let s = common::stack_with(proxy::Limits::default(), settings).await;
    let (_c, _conn) = s.alice_with_conn().await;
    let (_dir, url) = full_proxy(&s).await;
    let out = run(psql(&url, &["-Atc", "select 1"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FATAL:  sorry, too many clients already"), "{stderr}");
    let err = common::refused(s.proxy.connect("app", "alice", PASSWORD).await, "login");
    assert_eq!(sqlstate(&err), Some("53300"), "{err}");
}
