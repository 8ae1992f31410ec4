//! What a registered upstream must prove at every login, and what the proxy never does for
//! one: answer a weaker password request than the registration saw (or the cleartext one
//! over unencrypted TCP), accept a certificate `verify-ca`/`verify-full` does not vouch for,
//! or wait without end for an upstream that accepts and says nothing.

// Setup helpers outside #[test] functions unwrap too; clippy.toml's allow-unwrap-in-tests
// does not reach them.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use proxy::routes::{Database, UpstreamTrust};
use proxy::secret::Secret;
use proxy::upstream_auth::AuthMethod;
use proxy::{LocalCa, ProxySettings, RouteTable, SslMode, UpstreamAddr};
use testkit::{TcpPg, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::backend::{Authentication, BackendMessage};

const PW: &str = "upstream-secret-pw";

fn registered(auth_method: Option<AuthMethod>) -> UpstreamTrust {
    UpstreamTrust::Registered { private_denied: false, auth_method }
}

/// A route `name` to 127.0.0.1:`port` as user `tenant` with password [`PW`].
fn tenant_route(name: &str, host: &str, port: u16, trust: UpstreamTrust) -> Database {
    let mut db = route_to_port(name, port);
    db.upstream.addr = UpstreamAddr::Tcp { host: host.into(), port };
    db.upstream.dbname = "postgres".into();
    db.upstream.trust = trust;
    let mut role = db.roles.remove("alice").unwrap();
    role.name = "tenant".into();
    role.verifiers = vec![wire::scram::ScramVerifier::generate(PW)];
    role.upstream_password = Some(Secret::new(PW));
    db.roles.insert("tenant".into(), role);
    db
}

async fn proxy_for(routes: Vec<Database>) -> TestProxy {
    testkit::init_tracing();
    TestProxy::start(RouteTable::new(routes), ProxySettings::default()).await.unwrap()
}

/// Logs in through one port and runs a query; the error of whichever fails.
async fn login_and_query(proxy: &TestProxy, db: &str, pooled: bool) -> Result<String, tokio_postgres::Error> {
    let login = async {
        if pooled {
            proxy.connect_pooled(db, "tenant", PW).await
        } else {
            proxy.connect(db, "tenant", PW).await
        }
    };
    let (c, _conn) = within("login", login).await?;
    let row = within("query", c.query_one("select current_user::text", &[])).await?;
    Ok(row.get(0))
}

/// The same, on both ports, expecting a refusal whose message says `words`.
async fn refused_on_both_ports(proxy: &TestProxy, db: &str, code: &str, words: &str) {
    for pooled in [false, true] {
        let e = login_and_query(proxy, db, pooled).await.expect_err("the upstream login must be refused");
        let db_error = e.as_db_error().unwrap_or_else(|| panic!("pooled {pooled}: not a server error: {e}"));
        let said = format!("{} {}", db_error.message(), db_error.detail().unwrap_or_default());
        assert_eq!(e.code().map(|c| c.code()), Some(code), "pooled {pooled}: {said}");
        assert!(said.contains(words), "pooled {pooled}: {said:?} lacks {words:?}");
        assert!(!said.contains(PW), "the password in an error: {said}");
    }
}

/// An upstream that asks every login for `request` and records all the proxy sends after it.
async fn asking_upstream(request: Authentication) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (record, request) = (Arc::clone(&record), request.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // The StartupMessage (no SSLRequest: ssl_mode disable).
                if sock.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut out = BytesMut::new();
                BackendMessage::Authentication(request).encode(&mut out);
                if sock.write_all(&out).await.is_err() {
                    return;
                }
                loop {
                    match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => record.lock().unwrap().extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn an_upstream_registered_for_scram_asking_for_cleartext_or_md5_gets_no_password() {
    let (clear_port, clear_seen) = asking_upstream(Authentication::CleartextPassword).await;
    let (md5_port, md5_seen) = asking_upstream(Authentication::Md5Password { salt: *b"salt" }).await;
    let (open_port, open_seen) = asking_upstream(Authentication::CleartextPassword).await;
    let scram = registered(Some(AuthMethod::ScramSha256));
    let proxy = proxy_for(vec![
        tenant_route("clear", "127.0.0.1", clear_port, scram),
        tenant_route("md5", "127.0.0.1", md5_port, scram),
        // The operator's own route answers as libpq does: the recorder does see a password.
        tenant_route("operators", "127.0.0.1", open_port, UpstreamTrust::Operator),
    ])
    .await;

    refused_on_both_ports(
        &proxy,
        "clear",
        "28000",
        "asked for password authentication but was registered with scram-sha-256",
    )
    .await;
    refused_on_both_ports(
        &proxy,
        "md5",
        "28000",
        "asked for md5 authentication but was registered with scram-sha-256",
    )
    .await;
    // Give a proxy that did answer time for its bytes to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (what, seen) in [("cleartext", &clear_seen), ("md5", &md5_seen)] {
        let bytes = seen.lock().unwrap().clone();
        assert!(!bytes.contains(&b'p'), "{what}: the proxy sent a PasswordMessage: {bytes:?}");
        assert!(!String::from_utf8_lossy(&bytes).contains(PW), "{what}: the password crossed the wire");
    }

    let _ = login_and_query(&proxy, "operators", false).await;
    eventually("the operator route's password reaches its upstream", || {
        open_seen.lock().unwrap().first() == Some(&b'p')
    })
    .await;
}

#[tokio::test]
async fn cleartext_is_never_sent_over_unencrypted_tcp_to_a_registered_upstream() {
    let (port, seen) = asking_upstream(Authentication::CleartextPassword).await;
    let proxy = proxy_for(vec![
        tenant_route("registered_clear", "127.0.0.1", port, registered(Some(AuthMethod::Password))),
        tenant_route("unrecorded", "127.0.0.1", port, registered(None)),
    ])
    .await;
    for db in ["registered_clear", "unrecorded"] {
        refused_on_both_ports(&proxy, db, "28000", "in clear text over an unencrypted connection").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen.lock().unwrap().is_empty(), "the proxy answered: {:?}", seen.lock().unwrap());
}

/// A real PostgreSQL on TCP, first asking `tenant` for SCRAM; then its pg_hba.conf is
/// changed to `password`, then (with the password stored as MD5) to `md5`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_upstream_switched_from_scram_to_password_or_md5_is_refused_on_both_ports() {
    let pg = TcpPg::start(None).unwrap();
    let su = pg.superuser().await.unwrap();
    su.batch_execute(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE tenant LOGIN PASSWORD '{PW}'"
    ))
    .await
    .unwrap();
    let local = "local all postgres trust\n";
    pg.set_hba(&format!("{local}host all all 127.0.0.1/32 scram-sha-256\n")).await.unwrap();

    // What registration does: the probe sees SCRAM, and the route is held to it.
    let probe_route = tenant_route("tenant_db", "127.0.0.1", pg.port, registered(None));
    let seen = proxy::auth_query::probe(&probe_route.upstream, "tenant", &Secret::new(PW), PATIENCE)
        .await
        .expect("the registration check passes");
    assert_eq!(seen, AuthMethod::ScramSha256);
    let held = || RouteTable::new([tenant_route("tenant_db", "127.0.0.1", pg.port, registered(Some(seen)))]);
    let proxy = TestProxy::start(held(), ProxySettings::default()).await.unwrap();
    // A pooled server logged in before a change keeps its session; new logins are checked.
    let fresh_pools = || {
        proxy.proxy.set_routes(RouteTable::default());
        proxy.proxy.set_routes(held());
    };
    for pooled in [false, true] {
        assert_eq!(login_and_query(&proxy, "tenant_db", pooled).await.unwrap(), "tenant");
    }

    pg.set_hba(&format!("{local}host all all 127.0.0.1/32 password\n")).await.unwrap();
    fresh_pools();
    refused_on_both_ports(&proxy, "tenant_db", "28000", "asked for password authentication").await;

    su.batch_execute(&format!("SET password_encryption = 'md5'; ALTER ROLE tenant PASSWORD '{PW}'"))
        .await
        .unwrap();
    pg.set_hba(&format!("{local}host all all 127.0.0.1/32 md5\n")).await.unwrap();
    fresh_pools();
    refused_on_both_ports(&proxy, "tenant_db", "28000", "asked for md5 authentication").await;
}

/// Real PostgreSQL with TLS from a certificate for `localhost` signed by `ca`.
struct TlsUpstream {
    pg: TcpPg,
    ca: LocalCa,
    other_ca: LocalCa,
}

async fn tls_upstream() -> TlsUpstream {
    let ca = LocalCa::generate(&["localhost".into()]).unwrap();
    let other_ca = LocalCa::generate(&["localhost".into()]).unwrap();
    let pg = TcpPg::start(Some((&ca.server_cert_pem, &ca.server_key_pem))).unwrap();
    let su = pg.superuser().await.unwrap();
    su.batch_execute(&format!("CREATE ROLE tenant LOGIN PASSWORD '{PW}'")).await.unwrap();
    pg.set_hba("local all postgres trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n").await.unwrap();
    TlsUpstream { pg, ca, other_ca }
}

fn tls_route(name: &str, host: &str, up: &TlsUpstream, mode: SslMode, roots: &str) -> Database {
    let mut db = tenant_route(name, host, up.pg.port, registered(Some(AuthMethod::ScramSha256)));
    db.upstream.ssl_mode = mode;
    db.upstream.tls = proxy::upstream_tls_config_pem(mode, Some(roots.as_bytes())).unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_checks_the_chain_verify_full_also_the_name_require_neither() {
    let up = tls_upstream().await;
    let (ca, other) = (up.ca.ca_cert_pem.clone(), up.other_ca.ca_cert_pem.clone());
    let routes = vec![
        tls_route("full_ok", "localhost", &up, SslMode::VerifyFull, &ca),
        tls_route("full_wrong_name", "127.0.0.1", &up, SslMode::VerifyFull, &ca),
        tls_route("full_wrong_ca", "localhost", &up, SslMode::VerifyFull, &other),
        tls_route("ca_ok_any_name", "127.0.0.1", &up, SslMode::VerifyCa, &ca),
        tls_route("ca_wrong_ca", "localhost", &up, SslMode::VerifyCa, &other),
        tls_route("require_any", "127.0.0.1", &up, SslMode::Require, &other),
    ];
    // The registration check names the step and says what did not verify, nothing more.
    for (db, expected) in [
        ("full_ok", Ok(())),
        ("full_wrong_name", Err("tls: the upstream's certificate is not valid for its host name")),
        (
            "full_wrong_ca",
            Err("tls: the upstream's certificate is not signed by a CA this registration trusts"),
        ),
        ("ca_ok_any_name", Ok(())),
        (
            "ca_wrong_ca",
            Err("tls: the upstream's certificate is not signed by a CA this registration trusts"),
        ),
        ("require_any", Ok(())),
    ] {
        let route = routes.iter().find(|r| r.name == db).unwrap();
        let got = proxy::auth_query::probe(&route.upstream, "tenant", &Secret::new(PW), PATIENCE).await;
        assert_eq!(got.as_ref().map(|_| ()).map_err(String::as_str), expected, "{db}: {got:?}");
    }

    let proxy = proxy_for(routes).await;
    for db in ["full_ok", "ca_ok_any_name", "require_any"] {
        for pooled in [false, true] {
            let login = async {
                if pooled {
                    proxy.connect_pooled(db, "tenant", PW).await
                } else {
                    proxy.connect(db, "tenant", PW).await
                }
            };
            let (c, _conn) = within("login", login).await.unwrap();
            let ssl: bool =
                within("query", c.query_one("select ssl from pg_stat_ssl where pid = pg_backend_pid()", &[]))
                    .await
                    .unwrap()
                    .get(0);
            assert!(ssl, "{db}: the upstream session is not encrypted");
        }
    }
    refused_on_both_ports(
        &proxy,
        "full_wrong_name",
        "57P03",
        "tls: the upstream's certificate is not valid for its host name",
    )
    .await;
    for db in ["full_wrong_ca", "ca_wrong_ca"] {
        refused_on_both_ports(&proxy, db, "57P03", "tls: the upstream's certificate is not signed by a CA")
            .await;
    }
}

/// An upstream that accepts and reads the startup, then never answers: the registration
/// check and every login give up at their timeout instead of waiting for good.
#[tokio::test]
async fn an_upstream_that_accepts_and_never_answers_times_the_login_out() {
    testkit::init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            held.push(sock);
        }
    });
    let route = tenant_route("silent", "127.0.0.1", port, registered(None));
    let got = within(
        "the registration check",
        proxy::auth_query::probe(&route.upstream, "tenant", &Secret::new(PW), Duration::from_millis(500)),
    )
    .await;
    // The startup was sent; its answer, which opens authentication, never came.
    assert_eq!(got, Err("authentication: timed out".to_owned()));

    let settings = ProxySettings { connect_timeout: Duration::from_millis(500), ..ProxySettings::default() };
    let proxy = TestProxy::start(RouteTable::new([route]), settings).await.unwrap();
    refused_on_both_ports(&proxy, "silent", "57P03", "timed out").await;
}
