//! Ten thousand TLS clients at once against a pool of five servers: they queue and are all
//! served, with nothing lost and the pool healthy afterwards. The clients run in two
//! `berth-bench crowd` processes (each end of every connection needs a descriptor, more than
//! one process may hold here); the proxy runs in this test.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proxy::routes::Role;
use proxy::{Limits, PoolConfig, ProxySettings, RouteTable};
use testkit::{TestPg, TestProxy, route};
use wire::scram::ScramVerifier;

const PW: &str = "crowd-pw";
const PROCESSES: usize = 2;
const PER_PROCESS: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_clients_queue_on_five_servers_and_are_all_served() {
    testkit::init_tracing();
    let pg = TestPg::start().unwrap();
    pg.superuser().await.unwrap().batch_execute("CREATE ROLE crowd LOGIN").await.unwrap();
    let mut db = route("db", &pg, "postgres", &[], Limits::default());
    // Few PBKDF2 iterations: this is about queueing, not key stretching.
    let verifier = ScramVerifier::derive(PW, b"crowd-salt", 16);
    db.roles.insert(
        "crowd".into(),
        Role { name: "crowd".into(), verifiers: vec![verifier.clone()], upstream_password: None },
    );
    db.pool = PoolConfig { pool_size: 5, pool_timeout: Duration::from_secs(300), ..PoolConfig::default() };
    let settings = ProxySettings {
        max_client_connections: PROCESSES * PER_PROCESS + 100,
        auth_timeout: Duration::from_secs(300),
        // Every login here comes from 127.0.0.1 at once, far past the per-source cap on
        // unauthenticated connections (tested in proxy/tests/unauthenticated_cap.rs): this test
        // is about the queue for servers, so the cap is off.
        max_unauthenticated_per_source: 0,
        ..Default::default()
    };
    let proxy = TestProxy::start(RouteTable::new([db]), settings).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca = file("ca.pem", &proxy.ca.ca_cert_pem);
    let password = file("password", PW);
    let verifier = file("verifier", &verifier.to_pg_authid());
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_berth-bench"))
                .args(["crowd", "--clients", &PER_PROCESS.to_string(), "--sleep", "0"])
                .args(["--addr", &proxy.pooled_addr.to_string(), "--user", "crowd", "--database", "db"])
                .arg("--ca")
                .arg(&ca)
                .arg("--password-file")
                .arg(&password)
                .arg("--verifier-file")
                .arg(&verifier)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}");
        assert!(text.contains(&format!("ok={PER_PROCESS} failed=0 ")), "{text}");
    }
    let su = pg.superuser().await.unwrap();
    let servers: i64 = su
        .query_one("select count(*) from pg_stat_activity where usename = 'crowd'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(servers <= 5, "{servers} servers for a pool of 5");
    // The pool is healthy: one more client is served at once.
    let (c, _conn) = proxy.connect_pooled("db", "crowd", PW).await.unwrap();
    c.simple_query("select 1").await.unwrap();
}
