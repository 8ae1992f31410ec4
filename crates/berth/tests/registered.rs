//! Registered upstreams end to end: `berth up`, a second PostgreSQL that asks for SCRAM
//! passwords, registration through the CLI and the API, its own roles logging in through the
//! proxy, live pool changes, bad registrations, and deletion.

use std::path::Path;
use std::process::Command;

mod common;

use common::*;

const REGISTRAR_PW: &str = "registrar-secret-pw";

fn register_cli(up: &Up, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BERTH)
        .args(["databases", "register"])
        .args(args)
        .arg("--data")
        .arg(&up.data)
        .arg("--json")
        .env_remove("BERTH_API_URL")
        .env_remove("BERTH_API_KEY")
        .env("BERTH_UPSTREAM_PASSWORD", REGISTRAR_PW)
        .output()
        .expect("berth databases register");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
    // The auth query reads verifiers; the registered role is no superuser. A shared
    // catalog's privileges are kept per database, so the grant is made in the one registered.
    let ext_su = pg.connect_as("postgres", "ext").await.expect("ext as superuser");
    ext_su.batch_execute("GRANT SELECT ON pg_authid TO registrar").await.expect("grant");
    let ext = pg.connect_as("alice", "ext").await.expect("alice");
    ext.batch_execute("CREATE TABLE items(i int); INSERT INTO items VALUES (1), (2), (3)")
        .await
        .expect("table");
    let file: String = su.query_one("SHOW hba_file", &[]).await.expect("hba").get(0);
    std::fs::write(&file, "local all postgres trust\nlocal all all scram-sha-256\n").expect("write hba");
    su.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    std::thread::sleep(std::time::Duration::from_millis(300));
    pg
}

fn show_pools(data: &Path, direct_port: u16, db: &str) -> Option<String> {
    let key = std::fs::read_to_string(data.join("admin.key")).expect("admin.key");
    let console = format!("postgresql://apikey:{}@127.0.0.1:{direct_port}/berth?sslmode=require", key.trim());
    let (ok, out, _) = psql(&console, "SHOW POOLS");
    assert!(ok, "the admin console answers an organization key");
    out.lines().find(|l| l.starts_with(&format!("{db}|"))).map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_upstream_serves_its_own_roles_through_the_proxy() {
    let pg = upstream().await;
    let data = data_dir();
    let ports = Ports::free();
    let socket_dir = pg.socket_dir().to_str().expect("utf-8").to_owned();
    // A socket directory, which only an operator can allow.
    let up = berth_up_with(data.path(), ports, &["--upstream-socket-dir", &socket_dir]);
    up.create_project("shop");
    let port = pg.port().to_string();

    // Registered with the CLI: the password goes in through the environment, never back out.
    let (ok, out, err) = register_cli(
        &up,
        &[
            "shop",
            "--host",
            &socket_dir,
            "--port",
            &port,
            "--name",
            "ext",
            "--username",
            "registrar",
            "--ssl-mode",
            "disable",
            "--pool-size",
            "3",
            "--pool-mode",
            "transaction",
            "--max-active",
            "50",
        ],
    );
    assert!(ok, "register: {err}");
    assert!(!out.contains(REGISTRAR_PW) && !out.contains("\"password\""), "the password is echoed: {out}");
    let db: serde_json::Value = serde_json::from_str(&out).expect("json");
    let id = db["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("db_"), "{id}");
    for (field, want) in [
        ("host", socket_dir.as_str()),
        ("name", "ext"),
        ("username", "registrar"),
        ("ssl_mode", "disable"),
        ("role", "primary"),
    ] {
        assert_eq!(db[field], want, "{field} echoed");
    }
    assert_eq!(
        (db["pool_config"]["pool_size"].clone(), db["pool_config"]["max_active"].clone()),
        (3.into(), 50.into())
    );
    // Every pool field with the value in force, and a region, as PgBeam answers.
    assert_eq!(db["pool_config"]["min_pool_size"], 0, "{db}");
    assert_eq!(db["pool_config"]["pool_mode"], "transaction", "{db}");
    assert_eq!(db["pool_region"], "local", "{db}");
    let conn = db["connection_string"].as_str().expect("connection_string");
    assert!(conn.contains(&format!(":{}/{id}", ports.pooled)), "{conn}");

    // The upstream's own role, with its own password, through both ports.
    let pooled = conn.replace("registrar@", "alice:alice-pw@");
    wait_for("the registered database to be routed", || psql(&pooled, "select 1").0);
    let (ok, out, err) = psql(&pooled, "select sum(i) from items");
    assert!(ok, "{err}");
    assert_eq!(out, "6");
    let direct = pooled.replace(&format!(":{}/", ports.pooled), &format!(":{}/", ports.direct));
    assert_eq!(psql(&direct, "select current_user").1, "alice");
    // A role created upstream logs in at once; a wrong password is refused.
    let su = pg.superuser().await.expect("superuser");
    su.batch_execute(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE carol LOGIN PASSWORD 'carol-pw'",
    )
    .await
    .expect("carol");
    assert_eq!(psql(&pooled.replace("alice:alice-pw@", "carol:carol-pw@"), "select current_user").1, "carol");
    let (ok, _, err) = psql(&pooled.replace("alice-pw", "nope"), "select 1");
    assert!(!ok && err.contains("password authentication failed"), "{err}");

    // Pool settings change live; fields not given stay.
    let (ok, out, err) = up.cli(&["databases", "update", "shop", &id, "--pool-size", "7", "--json"]);
    assert!(ok, "update: {err}");
    let updated: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (updated["pool_config"]["pool_size"].clone(), updated["pool_config"]["pool_mode"].clone()),
        (7.into(), "transaction".into())
    );
    wait_for("the new pool size in SHOW POOLS", || {
        show_pools(data.path(), ports.direct, &id).is_some_and(|row| row.split('|').nth(8) == Some("7"))
    });
    let (ok, out, _) = up.cli(&["databases", "list", "shop"]);
    assert!(ok && out.contains(&id), "{out}");

    // Bad registrations: each a clear 4xx, nothing stored.
    let good = serde_json::json!({"host": socket_dir, "port": pg.port(), "name": "ext", "username": "registrar", "password": REGISTRAR_PW, "ssl_mode": "disable"});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = good.clone();
        b[k] = v;
        b.to_string()
    };
    for (body, status, words) in [
        (with("ssl_mode", "sometimes".into()), 422, "ssl_mode must be one of"),
        (with("password", "wrong".into()), 422, "authentication: the upstream refused with SQLSTATE 28P01"),
        (with("port", 1.into()), 422, "connect: no such host or socket"),
        (with("host", "no such host!".into()), 422, "host must be"),
        (with("name", "no_such_db".into()), 422, "startup: the upstream refused with SQLSTATE 3D000"),
        (with("role", "leader".into()), 422, ""),
        ("{\"host\": ".into(), 400, ""),
    ] {
        let (got, text) = api(data.path(), "POST", "/v1/projects/shop/databases", &body);
        assert_eq!(got, status, "{body}: {text}");
        assert!(text.contains(words), "{body}: {text}");
        assert!(!text.contains(REGISTRAR_PW), "the password is echoed in an error: {text}");
    }
    let (got, text) = api(data.path(), "POST", "/v1/projects/nosuch/databases", &good.to_string());
    assert_eq!(got, 404, "{text}");
    let (_, text) = api(data.path(), "GET", "/v1/projects/shop/databases", "");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).expect("json")["databases"].as_array().map(Vec::len),
        Some(1)
    );

    // Deleted: no longer routed.
    let (ok, _, err) = up.cli(&["databases", "delete", "shop", &id]);
    assert!(ok, "{err}");
    wait_for("the deleted database to be unrouted", || !psql(&pooled, "select 1").0);
    let (got, _) = api(data.path(), "GET", &format!("/v1/projects/shop/databases/{id}"), "");
    assert_eq!(got, 404);
    let logs = up.stop();
    assert!(!logs.contains(REGISTRAR_PW), "the registered password reached the logs");
}
