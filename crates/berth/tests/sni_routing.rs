//! Routing by TLS server name: with `berth up --public-host`, `<project>.<public-host>`
//! names a project and the startup packet's database the upstream's own name, so
//! `current_database()` says what the client connected with (PgBeam's strings). Checked with
//! libpq (`host=<name> hostaddr=127.0.0.1` sends SNI without DNS) and with a raw client for
//! direct TLS (ALPN `postgresql`) and what an exchange shows before the password is proven,
//! on both ports. Without SNI, or with a name not under the public host, `db_…` names route
//! as before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::backend::{Authentication, BackendMessage};
use wire::frontend::{FrontendMessage, SaslInitialResponse};
use wire::scram::{ChannelBinding, ScramClient};
use wire::{ProtocolVersion, StartupMessage, StartupPacket, parse_frame};

mod common;

use common::*;

const PUBLIC: &str = "db.berth.test";
const REGISTRAR_PW: &str = "registrar-secret-pw";

/// A PostgreSQL that asks for SCRAM passwords, with database `ext` owned by `alice`.
async fn upstream() -> testkit::TestPg {
    let pg = testkit::TestPg::start().expect("upstream instance");
    let su = pg.superuser().await.expect("superuser");
    su.batch_execute(&format!(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE registrar LOGIN PASSWORD '{REGISTRAR_PW}';
         CREATE ROLE alice LOGIN PASSWORD 'alice-pw';"
    ))
    .await
    .expect("roles");
    su.batch_execute("CREATE DATABASE ext OWNER alice").await.expect("database");
    let ext_su = pg.connect_as("postgres", "ext").await.expect("ext as superuser");
    ext_su.batch_execute("GRANT SELECT ON pg_authid TO registrar").await.expect("grant");
    let file: String = su.query_one("SHOW hba_file", &[]).await.expect("hba").get(0);
    std::fs::write(&file, "local all postgres trust\nlocal all all scram-sha-256\n").expect("write hba");
    su.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    std::thread::sleep(Duration::from_millis(300));
    pg
}

/// `uri` sent to 127.0.0.1 whatever host it names: libpq still sends that host as SNI.
fn on_loopback(uri: &str) -> String {
    format!("{uri}&hostaddr=127.0.0.1")
}

fn with_port(uri: &str, from: u16, to: u16) -> String {
    uri.replace(&format!(":{from}/"), &format!(":{to}/"))
}

/// What one login attempt showed: the salt of the SCRAM exchange, and then either the
/// session's `current_database()` or the error's SQLSTATE and message.
#[derive(Debug)]
struct Attempt {
    salt: Option<String>,
    outcome: Result<String, (String, String)>,
}

/// A login by hand: SSLRequest, or direct TLS with ALPN `postgresql` (`direct_tls`), with
/// `server_name` as SNI, trusting `ca_pem`.
async fn attempt(
    port: u16,
    direct_tls: bool,
    server_name: &str,
    ca_pem: &str,
    user: &str,
    database: &str,
    password: &str,
) -> Attempt {
    let mut tcp =
        tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await.expect("connect");
    let mut buf = BytesMut::new();
    if !direct_tls {
        StartupPacket::SslRequest.encode(&mut buf);
        tcp.write_all(&buf).await.expect("SSLRequest");
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.expect("SSLRequest answer");
        assert_eq!(answer[0], b'S', "TLS declined");
    }
    let mut tls = testkit::client_tls(ca_pem);
    tls.alpn_protocols = vec![b"postgresql".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("a server name");
    let mut stream =
        tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.expect("TLS handshake");
    buf.clear();
    let params = [("user", user), ("database", database)];
    StartupPacket::Startup(StartupMessage {
        version: ProtocolVersion::V3_0,
        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    })
    .encode(&mut buf);
    stream.write_all(&buf).await.expect("startup");
    let (mut scram, mut salt, mut asked) = (None::<ScramClient>, None, false);
    let mut input = BytesMut::new();
    loop {
        let frame = loop {
            if let Some(f) = parse_frame(&mut input, usize::MAX).expect("a frame") {
                break f;
            }
            assert!(stream.read_buf(&mut input).await.expect("read") > 0, "closed without an answer");
        };
        let mut out = BytesMut::new();
        match BackendMessage::decode(&frame).expect("a backend message") {
            BackendMessage::Authentication(Authentication::Sasl { mechanisms }) => {
                let client = ScramClient::new(password, ChannelBinding::None, &mechanisms).expect("SCRAM");
                SaslInitialResponse {
                    mechanism: client.mechanism().into(),
                    data: Some(client.client_first().into_bytes().into()),
                }
                .encode(&mut out);
                scram = Some(client);
            }
            BackendMessage::Authentication(Authentication::SaslContinue(data)) => {
                let text = String::from_utf8_lossy(&data).into_owned();
                salt = text.split(',').find_map(|kv| kv.strip_prefix("s=")).map(str::to_owned);
                let reply = scram.as_mut().expect("SCRAM").handle_server_first(&data).expect("server-first");
                FrontendMessage::Password(reply.into_bytes().into()).encode(&mut out);
            }
            BackendMessage::Authentication(Authentication::SaslFinal(data)) => {
                scram.as_mut().expect("SCRAM").handle_server_final(&data).expect("server signature");
            }
            BackendMessage::ErrorResponse(e) => {
                let code = e.get(b'C').unwrap_or_default().to_owned();
                let message = e.message().unwrap_or_default().to_owned();
                return Attempt { salt, outcome: Err((code, message)) };
            }
            BackendMessage::ReadyForQuery(_) if !asked => {
                asked = true;
                FrontendMessage::Query { query: "select current_database()".into() }.encode(&mut out);
            }
            BackendMessage::DataRow { values } => {
                let db =
                    values[0].as_ref().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                return Attempt { salt, outcome: Ok(db) };
            }
            _ => {}
        }
        if !out.is_empty() {
            stream.write_all(&out).await.expect("write");
        }
    }
}

fn refused(a: &Attempt) -> (&str, &str) {
    match &a.outcome {
        Err((code, message)) => (code, message),
        Ok(db) => panic!("logged in to {db}: {a:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projects_label_serves_its_databases_by_their_own_names_on_both_ports() {
    let pg = upstream().await;
    let data = data_dir();
    let ports = Ports::free();
    let socket_dir = pg.socket_dir().to_str().expect("utf-8").to_owned();
    let up = berth_up_with(
        data.path(),
        ports,
        &["--upstream-socket-dir", &socket_dir, "--public-host", &PUBLIC.to_ascii_uppercase()],
    );
    up.create_project("shop");
    let ca_pem = std::fs::read_to_string(data.path().join("ca.pem")).expect("ca.pem");

    // Registered: the string names the project's label and the upstream's own database.
    let body = serde_json::json!({"host": socket_dir, "port": pg.port(), "name": "ext", "username": "registrar",
        "password": REGISTRAR_PW, "ssl_mode": "disable"});
    let (status, db) = api_json(data.path(), "POST", "/v1/projects/shop/databases", &body.to_string());
    assert_eq!(status, 201, "{db}");
    let id = db["id"].as_str().expect("id").to_owned();
    let conn = db["connection_string"].as_str().expect("connection_string").to_owned();
    assert_eq!(conn, format!("postgresql://registrar@shop.{PUBLIC}:{}/ext?sslmode=require", ports.pooled));
    let (_, got) = api_json(data.path(), "GET", &format!("/v1/projects/shop/databases/{id}"), "");
    assert_eq!(got["connection_string"], conn.as_str());
    let (_, list) = api_json(data.path(), "GET", "/v1/projects/shop/databases", "");
    assert_eq!(list["databases"][0]["connection_string"], conn.as_str());
    // A second registration of the same name: the first keeps it, the second its id.
    let (status, second) = api_json(data.path(), "POST", "/v1/projects/shop/databases", &body.to_string());
    assert_eq!(status, 201, "{second}");
    let second_id = second["id"].as_str().expect("id");
    assert_eq!(
        second["connection_string"],
        format!(
            "postgresql://registrar@{}:{}/{second_id}?sslmode=require",
            PUBLIC.to_ascii_uppercase(),
            ports.pooled
        )
    );
    // The managed project's strings keep the public host itself and its database name.
    let managed = up.connection("shop", false);
    assert!(
        managed.contains(&format!("@{}:{}/shop?", PUBLIC.to_ascii_uppercase(), ports.direct)),
        "{managed}"
    );

    let alice = on_loopback(&conn.replace("registrar@", "alice:alice-pw@"));
    wait_for("the registered database to be routed by SNI", || psql(&alice, "select 1").0);
    for port in [ports.pooled, ports.direct] {
        let uri = with_port(&alice, ports.pooled, port);
        let (ok, out, err) = psql(&uri, "select current_database()");
        assert!(ok && out == "ext", "{uri}: {out} {err}");
        // DNS names are case-insensitive.
        let upper = uri.replace(&format!("shop.{PUBLIC}"), &format!("SHOP.{}", PUBLIC.to_ascii_uppercase()));
        assert_eq!(psql(&upper, "select current_database()").1, "ext", "{upper}");
        // Without SNI (an IP literal host), or under another name: the `db_…` name, as before.
        for host in ["127.0.0.1", "localhost", "evil.test", &format!("evil{PUBLIC}")] {
            let by_id =
                format!("postgresql://alice:alice-pw@{host}:{port}/{id}?sslmode=require&hostaddr=127.0.0.1");
            let (ok, out, err) = psql(&by_id, "select current_database()");
            assert!(ok && out == "ext", "{by_id}: {err}");
        }
        // Under the label, the id is no name; nor is another database.
        for wrong in [id.as_str(), "nosuch"] {
            let (ok, _, err) = psql(&uri.replace("/ext?", &format!("/{wrong}?")), "select 1");
            assert!(!ok && err.contains(&format!("database \"{wrong}\" does not exist")), "{wrong}: {err}");
        }
        // Nested labels are under the public host too: no project, and no fallback to names.
        let nested = uri.replace(&format!("@shop.{PUBLIC}:"), &format!("@x.shop.{PUBLIC}:"));
        let (ok, _, err) = psql(&nested, "select 1");
        assert!(!ok && err.contains("password authentication failed for user \"alice\""), "{err}");
        let (ok, _, err) = psql(&nested.replace("/ext?", &format!("/{id}?")), "select 1");
        assert!(!ok && err.contains("password authentication failed for user \"alice\""), "{err}");
        // A wrong password is that, whatever the database.
        for database in ["ext", "nosuch"] {
            let wrong = uri.replace("alice-pw", "nope").replace("/ext?", &format!("/{database}?"));
            let (ok, _, err) = psql(&wrong, "select 1");
            assert!(!ok && err.contains("password authentication failed for user \"alice\""), "{err}");
        }

        // The managed project under its label: its database's own name, none, or the role's.
        let owner = up.connection("shop", port == ports.pooled);
        let by_label = on_loopback(&owner.replacen(
            &format!("@{}:", PUBLIC.to_ascii_uppercase()),
            &format!("@shop.{PUBLIC}:"),
            1,
        ));
        wait_for("the project to be routed", || psql(&by_label, "select 1").0);
        for database in ["shop", "", "shop_owner"] {
            let uri = by_label.replace("/shop?", &format!("/{database}?"));
            let (ok, out, err) = psql(&uri, "select current_database()");
            assert!(ok && out == "shop", "{uri}: {err}");
        }
        // Verified against the local CA for the label (the wildcard) and the public host.
        let root = data.path().join("ca.pem");
        let verify = format!("sslmode=verify-full&sslrootcert={}", root.display());
        for uri in [by_label.clone(), on_loopback(&owner), alice.clone()] {
            let uri = with_port(&uri, ports.pooled, port).replace("sslmode=require", &verify);
            let uri = with_port(&uri, ports.direct, port);
            let (ok, out, err) = psql(&uri, "select 'verified'");
            assert!(ok && out == "verified", "{uri}: {err}");
        }
    }

    // By hand, both ports, SSLRequest and direct TLS: the SQLSTATEs, and what an unknown
    // label shows before the password is proven.
    let shop = format!("shop.{PUBLIC}");
    let nosuch = format!("nosuch.{PUBLIC}");
    for port in [ports.pooled, ports.direct] {
        for direct_tls in [false, true] {
            let at = |name: &str, user: &str, db: &str, pw: &str| {
                let (name, user, db, pw, ca) =
                    (name.to_owned(), user.to_owned(), db.to_owned(), pw.to_owned(), ca_pem.clone());
                async move { attempt(port, direct_tls, &name, &ca, &user, &db, &pw).await }
            };
            let case = format!("port {port}, direct TLS {direct_tls}");
            let ok = at(&shop, "alice", "ext", "alice-pw").await;
            assert_eq!(ok.outcome, Ok("ext".to_owned()), "{case}");
            let ok = at(&shop.to_ascii_uppercase(), "registrar", "ext", REGISTRAR_PW).await;
            assert_eq!(ok.outcome, Ok("ext".to_owned()), "{case}");
            let wrong_db = at(&shop, "alice", "nosuch", "alice-pw").await;
            assert_eq!(refused(&wrong_db), ("3D000", "database \"nosuch\" does not exist"), "{case}");
            let wrong_pw = at(&shop, "shop_owner", "shop", "nope").await;
            let failed = ("28P01", "password authentication failed for user \"shop_owner\"");
            assert_eq!(refused(&wrong_pw), failed, "{case}");
            // An unknown label: the right password of a real role still fails as a wrong one.
            let owner_pw = password_of(&up.connection("shop", false));
            for db in ["shop", "ext", "nosuch", ""] {
                let unknown = at(&nosuch, "shop_owner", db, &owner_pw).await;
                assert_eq!(refused(&unknown), failed, "{case}, database {db:?}");
                // Its fake salt is as stable as a real one, whatever database is asked for.
                let again = at(&nosuch, "shop_owner", "ext", "nope").await;
                assert!(
                    unknown.salt.is_some() && unknown.salt == again.salt,
                    "{case}: {unknown:?} {again:?}"
                );
            }
            // A known label shows a real role one salt too, whatever database is asked for.
            let real = at(&shop, "shop_owner", "nosuch", "nope").await;
            assert_eq!(real.salt, wrong_pw.salt, "{case}");
            assert_ne!(real.salt, at(&nosuch, "shop_owner", "shop", "nope").await.salt, "{case}");
        }
    }

    let logs = up.stop();
    assert!(!logs.contains(REGISTRAR_PW) && !logs.contains("alice-pw"), "a password reached the logs");
}

#[test]
fn a_public_host_given_later_gets_a_certificate_naming_it_and_its_labels() {
    let data = data_dir();
    let ports = Ports::free();
    let up = berth_up(data.path(), ports);
    let before = std::fs::read_to_string(data.path().join("ca.pem")).expect("ca.pem");
    drop(up.stop());

    let up = berth_up_with(data.path(), ports, &["--public-host", PUBLIC]);
    let (_, _, served) = get_unauthenticated(data.path(), "/v1/tls/ca.pem");
    assert_ne!(served, before, "the old certificate did not name the public host");
    assert!(up.log().contains("does not name every host"), "the new CA is not logged");
    up.create_project("shop");
    let root = data.path().join("ca.pem");
    assert_eq!(std::fs::read_to_string(&root).expect("ca.pem"), served);
    let verify = format!("sslmode=verify-full&sslrootcert={}", root.display());
    for pooled in [false, true] {
        let uri = on_loopback(&up.connection("shop", pooled)).replace("sslmode=require", &verify);
        wait_for("the project to be routed", || psql(&uri, "select 1").0);
        let label = uri.replacen(&format!("@{PUBLIC}:"), &format!("@shop.{PUBLIC}:"), 1);
        for uri in [&uri, &label] {
            let (ok, out, err) = psql(uri, "select current_database()");
            assert!(ok && out == "shop", "{uri}: {err}");
        }
        // One label only: the wildcard does not name deeper names.
        let deeper = uri.replacen(&format!("@{PUBLIC}:"), &format!("@a.shop.{PUBLIC}:"), 1);
        let (ok, _, err) = psql(&deeper, "select 1");
        assert!(!ok && err.contains("does not match host name"), "{err}");
    }
    // Started again with the same host: the same CA.
    drop(up.stop());
    let up = berth_up_with(data.path(), ports, &["--public-host", PUBLIC]);
    assert_eq!(std::fs::read_to_string(&root).expect("ca.pem"), served);
    drop(up.stop());
}
