//! A registration is held to what its check proved: the upstream's certificate verified
//! against the CA the registration supplied (`verify-ca` the chain, `verify-full` the name
//! too), and the password exchange the upstream asked for (a later request for a weaker
//! one is refused on both ports). A real PostgreSQL on TCP with TLS plays the upstream.

mod common;

use common::*;
use proxy::LocalCa;
use testkit::TcpPg;

const PW: &str = "tenant-upstream-pw";

fn register(up: &Up, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, v) = api_json(&up.data, "POST", "/v1/projects/shop/databases", &body.to_string());
    assert!(!v.to_string().contains(PW), "the password is echoed: {v}");
    (status, v)
}

fn message(v: &serde_json::Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_verify_the_upstreams_certificate_and_keep_its_password_exchange() {
    let ca = LocalCa::generate(&["localhost".into()]).expect("CA");
    let other = LocalCa::generate(&["localhost".into()]).expect("another CA");
    let pg = TcpPg::start(Some((&ca.server_cert_pem, &ca.server_key_pem))).expect("upstream");
    let su = pg.superuser().await.expect("superuser");
    su.batch_execute(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE tenant LOGIN PASSWORD '{PW}'"
    ))
    .await
    .expect("role");
    let local = "local all postgres trust\n";
    pg.set_hba(&format!("{local}hostssl all all 127.0.0.1/32 scram-sha-256\n")).await.expect("hba");

    let data = data_dir();
    let ports = Ports::free();
    let up = berth_up(data.path(), ports);
    up.create_project("shop");
    let body = |host: &str, mode: &str, roots: Option<&str>| {
        serde_json::json!({"host": host, "port": pg.port, "name": "postgres", "username": "tenant",
                           "password": PW, "ssl_mode": mode, "ssl_root_cert": roots})
    };

    // The check names the step and what did not verify; nothing is stored.
    for (host, mode, roots, words) in [
        (
            "localhost",
            "verify-full",
            Some(&other.ca_cert_pem),
            "tls: the upstream's certificate is not signed by a CA this registration trusts",
        ),
        (
            "localhost",
            "verify-ca",
            Some(&other.ca_cert_pem),
            "tls: the upstream's certificate is not signed by a CA this registration trusts",
        ),
        (
            "127.0.0.1",
            "verify-full",
            Some(&ca.ca_cert_pem),
            "tls: the upstream's certificate is not valid for its host name",
        ),
        ("127.0.0.1", "verify-ca", None, "verify-ca needs ssl_root_cert"),
        ("127.0.0.1", "require", Some(&ca.ca_cert_pem), "applies to ssl_mode verify-ca and verify-full only"),
    ] {
        let (status, v) = register(&up, body(host, mode, roots.map(String::as_str)));
        assert_eq!(status, 422, "{mode} {host}: {v}");
        assert!(message(&v).contains(words), "{mode} {host}: {v}");
    }
    let (_, listed) = api_json(&up.data, "GET", "/v1/projects/shop/databases", "");
    assert_eq!(listed["databases"].as_array().map(Vec::len), Some(0), "{listed}");

    // verify-ca checks the chain only: the certificate is for localhost, the host an IP.
    let (status, db) = register(&up, body("127.0.0.1", "verify-ca", Some(&ca.ca_cert_pem)));
    assert_eq!(status, 201, "{db}");
    assert_eq!(db["auth_method"], "scram-sha-256", "{db}");
    assert_eq!(db["ssl_root_cert"], ca.ca_cert_pem.as_str(), "{db}");
    let (status, full) = register(&up, body("localhost", "verify-full", Some(&ca.ca_cert_pem)));
    assert_eq!(status, 201, "{full}");

    let pooled =
        db["connection_string"].as_str().expect("string").replace("tenant@", &format!("tenant:{PW}@"));
    let direct = pooled.replace(&format!(":{}/", ports.pooled), &format!(":{}/", ports.direct));
    wait_for("the registered database to be routed", || psql(&pooled, "select 1").0);
    for uri in [&pooled, &direct] {
        let (ok, out, err) = psql(uri, "select ssl from pg_stat_ssl where pid = pg_backend_pid()");
        assert!(ok, "{err}");
        assert_eq!(out, "t", "the upstream session is encrypted");
    }

    // The upstream now asks for the password itself, then (stored as MD5) for an MD5 hash.
    pg.set_hba(&format!("{local}hostssl all all 127.0.0.1/32 password\n")).await.expect("hba");
    // A pooled server opened before the change stays logged in; end it so the pool logs in anew.
    su.batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'tenant'")
        .await
        .expect("terminate");
    for uri in [&direct, &pooled] {
        let (ok, _, err) = psql(uri, "select 1");
        assert!(!ok, "a cleartext request was answered");
        assert!(
            err.contains("asked for password authentication but was registered with scram-sha-256"),
            "{err}"
        );
    }
    su.batch_execute(&format!("SET password_encryption = 'md5'; ALTER ROLE tenant PASSWORD '{PW}'"))
        .await
        .expect("md5 password");
    pg.set_hba(&format!("{local}hostssl all all 127.0.0.1/32 md5\n")).await.expect("hba");
    for uri in [&direct, &pooled] {
        let (ok, _, err) = psql(uri, "select 1");
        assert!(!ok, "an MD5 request was answered");
        assert!(err.contains("asked for md5 authentication but was registered with scram-sha-256"), "{err}");
    }
    let log = up.stop();
    assert!(!log.contains(PW), "the password in berth up's log");
}
