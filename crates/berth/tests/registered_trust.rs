//! What a project's key may not make Berth do through a registered upstream: reach Berth's
//! own catalog or instances through their sockets, log in anywhere that does not check the
//! password, get a superuser or replication session, read other services' banners through
//! the registration check, scan ports faster than a few a minute, or (when the operator
//! says so) reach private addresses. Each is refused with a 4xx in the API's error shape
//! and nothing is stored.

use std::io::{Read, Write};
use std::net::TcpListener;

mod common;

use common::*;

const PW: &str = "registrar-secret-pw";

/// A project-scoped key with `projects:write`, as a tenant holds.
fn project_key(up: &Up) -> String {
    let (status, body) = api_json(
        &up.data,
        "POST",
        "/v1/keys",
        r#"{"name": "tenant", "scopes": ["projects:read", "projects:write"], "project": "shop"}"#,
    );
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

fn register(up: &Up, key: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = api_as(&up.data, key, "POST", "/v1/projects/shop/databases", &body.to_string());
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    assert!(!text.contains(PW), "the password is echoed: {text}");
    (status, json)
}

fn message(v: &serde_json::Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_owned()
}

fn stored(up: &Up) -> usize {
    let (_, v) = api_json(&up.data, "GET", "/v1/projects/shop/databases", "");
    v["databases"].as_array().map_or(0, Vec::len)
}

/// A TCP port that answers anything with an HTTP banner, as some other service would.
fn banner_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nServer: secret-banner/9.9\r\n\r\n");
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_key_cannot_reach_berths_own_sockets_or_an_upstream_that_skips_the_password() {
    // An upstream that trusts every local login, in a directory the operator allows.
    let pg = testkit::TestPg::start().expect("upstream instance");
    let su = pg.superuser().await.expect("superuser");
    su.batch_execute(&format!(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE boss LOGIN SUPERUSER PASSWORD '{PW}';
         CREATE ROLE copier LOGIN REPLICATION PASSWORD '{PW}';
         CREATE ROLE plain LOGIN PASSWORD '{PW}';"
    ))
    .await
    .expect("roles");
    let hba: String = su.query_one("SHOW hba_file", &[]).await.expect("hba").get(0);
    std::fs::write(&hba, "local all all trust\n").expect("write hba");
    su.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    let pg_dir = pg.socket_dir().to_str().expect("utf-8").to_owned();

    let data = data_dir();
    let catalog_dir = data.path().join("catalog/socket");
    let catalog_dir = catalog_dir.to_str().expect("utf-8").to_owned();
    // Even an operator who lists the catalog's directory does not make it an upstream.
    let up = berth_up_with(
        data.path(),
        Ports::free(),
        &["--upstream-socket-dir", &pg_dir, "--upstream-socket-dir", &catalog_dir],
    );
    up.create_project("shop");
    let key = project_key(&up);
    let body = |host: &str, user: &str| {
        serde_json::json!({"host": host, "port": 5432, "name": "postgres", "username": user,
                           "password": PW, "ssl_mode": "disable"})
    };

    // Berth's catalog, as its superuser: what the attack used.
    let (status, v) = register(&up, &key, body(&catalog_dir, "postgres"));
    assert_eq!(status, 422, "{v}");
    assert!(message(&v).contains("inside Berth's data directory"), "{v}");
    // A project's own instance socket, and any directory the operator did not list.
    let instances = data.path().join("instances");
    let branch = std::fs::read_dir(&instances).expect("instances").flatten().next().expect("an instance");
    let branch_dir = branch.path().join("socket");
    let (status, v) = register(&up, &key, body(branch_dir.to_str().expect("utf-8"), "postgres"));
    assert_eq!(status, 422, "{v}");
    let (status, v) = register(&up, &key, body("/tmp", "postgres"));
    assert_eq!((status, message(&v).contains("--upstream-socket-dir")), (422, true), "{v}");

    // An allowed directory whose server lets anyone in without a password.
    let mut trusting = body(&pg_dir, "plain");
    trusting["port"] = pg.port().into();
    let (status, v) = register(&up, &key, trusting);
    assert_eq!(status, 422, "{v}");
    assert!(message(&v).contains("without checking its password"), "{v}");

    // Once it asks for passwords: superuser and replication roles are still refused.
    std::fs::write(&hba, "local all all scram-sha-256\n").expect("write hba");
    su.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    std::thread::sleep(std::time::Duration::from_millis(300));
    for (user, words) in [("boss", "superuser"), ("copier", "replication")] {
        let mut b = body(&pg_dir, user);
        b["port"] = pg.port().into();
        let (status, v) = register(&up, &key, b);
        assert_eq!(status, 422, "{user}: {v}");
        assert!(message(&v).contains(words), "{user}: {v}");
    }
    assert_eq!(stored(&up), 0, "a refused registration was stored");
    // The same upstream with a plain role registers, so the refusals above were the checks.
    let mut ok = body(&pg_dir, "plain");
    ok["port"] = pg.port().into();
    let (status, v) = register(&up, &key, ok);
    assert_eq!(status, 201, "{v}");
    let logs = up.stop();
    assert!(!logs.contains(PW), "the password reached the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_checks_echo_no_upstream_bytes_are_rate_limited_and_can_be_kept_off_private_ranges() {
    let banner = banner_port();
    let data = data_dir();
    let up = berth_up(data.path(), Ports::free());
    up.create_project("shop");
    let key = project_key(&up);
    let tcp = |host: &str, ssl_mode: &str| {
        serde_json::json!({"host": host, "port": banner, "name": "postgres", "username": "x",
                           "password": PW, "ssl_mode": ssl_mode})
    };
    // Another service's answer, with and without TLS: Berth's words only.
    for mode in ["disable", "require"] {
        let (status, v) = register(&up, &key, tcp("127.0.0.1", mode));
        assert_eq!(status, 422, "{mode}: {v}");
        let text = v.to_string();
        assert!(text.contains("did not answer as PostgreSQL"), "{mode}: {text}");
        for leaked in ["HTTP", "secret-banner", "0x48"] {
            assert!(!text.contains(leaked), "{mode}: the upstream's bytes are echoed: {text}");
        }
    }
    // A few checks a minute per key: the rest of this key's share, then 429.
    let mut limited = None;
    for i in 0..20 {
        let (status, v) = register(&up, &key, tcp("127.0.0.1", "disable"));
        if status == 429 {
            limited = Some((i, v));
            break;
        }
        assert_eq!(status, 422, "{v}");
    }
    let (i, v) = limited.expect("registration checks are never rate limited");
    assert!(i + 2 <= 10, "more than 10 checks ran in a minute ({})", i + 2);
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    // Another key has its own share.
    let (status, v) = register(&up, &project_key(&up), tcp("127.0.0.1", "disable"));
    assert_eq!(status, 422, "{v}");
    drop(up);

    // An operator who keeps registered upstreams off private addresses.
    let data = data_dir();
    let up = berth_up_with(data.path(), Ports::free(), &["--upstream-deny-private"]);
    up.create_project("shop");
    let key = project_key(&up);
    for host in ["127.0.0.1", "localhost", "10.1.2.3", "::1", "169.254.169.254"] {
        let (status, v) = register(&up, &key, tcp(host, "disable"));
        assert_eq!(status, 422, "{host}: {v}");
        assert!(message(&v).contains("private or reserved range"), "{host}: {v}");
    }
}
