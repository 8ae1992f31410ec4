//! A crowd of clients against a small pool: a thousand TLS clients log in at once and
//! run a query each through five servers. They queue and are all served; with a short
//! pool_timeout the ones that wait too long get a clear 53400 and nothing hangs.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proxy::routes::Role;
use proxy::{Limits, PoolConfig, ProxySettings, RouteTable};
use testkit::raw::RawConn;
use testkit::{TestPg, TestProxy, route};
use wire::frontend::FrontendMessage;
use wire::scram::ScramVerifier;

const PW: &str = "crowd-pw";
const CLIENTS: usize = 1000;

async fn stack(pool: PoolConfig) -> (TestPg, TestProxy) {
    testkit::init_tracing();
    let pg = TestPg::start().unwrap();
    pg.superuser().await.unwrap().batch_execute("CREATE ROLE crowd LOGIN").await.unwrap();
    let mut db = route("db", &pg, "postgres", &[], Limits::default());
    // Few PBKDF2 iterations: the test measures queueing, not key stretching.
    db.roles.insert(
        "crowd".into(),
        Role {
            name: "crowd".into(),
            verifiers: vec![ScramVerifier::derive(PW, b"crowd-salt", 16)],
            upstream_password: None,
        },
    );
    db.pool = pool;
    let settings = ProxySettings {
        max_client_connections: CLIENTS + 100,
        auth_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let proxy = TestProxy::start(RouteTable::new([db]), settings).await.unwrap();
    (pg, proxy)
}

/// Logs in, runs `select pg_sleep(sleep)`, returns the error code if any.
async fn one(proxy: &TestProxy, sleep: &str) -> Result<(), String> {
    let (addr, tls, sleep) = (proxy.pooled_addr, proxy.client_tls(), sleep.to_owned());
    // Each client is a task of its own, as separate processes would be.
    tokio::spawn(async move { one_at(addr, tls, &sleep).await }).await.map_err(|e| e.to_string())?
}

async fn one_at(addr: std::net::SocketAddr, tls: rustls::ClientConfig, sleep: &str) -> Result<(), String> {
    let mut c = match RawConn::login(addr, tls, "db", "crowd", PW).await {
        Ok(c) => c,
        // A login that had to wait for a server reports the same way as a query.
        Err(e) if e.to_string().contains("(53400)") => return Err("53400".into()),
        Err(e) => return Err(e.to_string()),
    };
    c.send(&[FrontendMessage::Query { query: format!("select pg_sleep({sleep})") }])
        .await
        .map_err(|e| e.to_string())?;
    match c.reader.until_ready().await {
        Ok((_, None)) => Ok(()),
        Ok((_, Some(e))) => Err(e.code().map(|c| c.code().to_owned()).unwrap_or_default()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_queue_on_five_servers_and_are_all_served() {
    let (pg, proxy) =
        stack(PoolConfig { pool_size: 5, pool_timeout: Duration::from_secs(120), ..PoolConfig::default() })
            .await;
    let results = futures_util::future::join_all((0..CLIENTS).map(|_| one(&proxy, "0"))).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of {CLIENTS} failed, e.g. {:?}", failed.len(), failed.first());
    let servers: i64 = pg
        .superuser()
        .await
        .unwrap()
        .query_one("select count(*) from pg_stat_activity where usename = 'crowd'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(servers <= 5, "{servers} servers for a pool of 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_too_long_is_a_clear_error_not_a_hang() {
    let (_pg, proxy) =
        stack(PoolConfig { pool_size: 5, pool_timeout: Duration::from_millis(300), ..PoolConfig::default() })
            .await;
    // 200 clients each holding a server for 100 ms cannot all get one within 300 ms.
    let results = tokio::time::timeout(
        Duration::from_secs(120),
        futures_util::future::join_all((0..200).map(|_| one(&proxy, "0.1"))),
    )
    .await
    .expect("no client hangs");
    let served = results.iter().filter(|r| r.is_ok()).count();
    let timed_out = results.iter().filter(|r| matches!(r, Err(c) if c == "53400")).count();
    assert!(served >= 5, "only {served} served");
    assert!(
        timed_out > 0,
        "nobody timed out: {served} served, {:?}",
        results.iter().filter(|r| r.is_err()).take(3).collect::<Vec<_>>()
    );
    assert_eq!(served + timed_out, 200, "{results:?}");
    // And the pool is healthy afterwards.
    one(&proxy, "0").await.unwrap();
}
