//! Transaction and session pooling through the pooled listener, with real clients against a
//! real PostgreSQL: server sharing, prepared statements across servers, settings replay,
//! pinning, and what happens when clients or servers go away.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use proxy::{Limits, PoolConfig, PoolMode, ProxySettings, RouteTable};
use testkit::{TestPg, TestProxy, route};

const PW: &str = "pool-pw";

struct Stack {
    pg: TestPg,
    proxy: TestProxy,
}

async fn stack(pool: PoolConfig) -> Stack {
    testkit::init_tracing();
    let pg = TestPg::start().unwrap();
    let su = pg.superuser().await.unwrap();
    su.batch_execute("CREATE ROLE app LOGIN; CREATE ROLE other LOGIN").await.unwrap();
    su.batch_execute("CREATE DATABASE app OWNER app").await.unwrap();
    let mut db = route("app", &pg, "app", &[("app", PW), ("other", PW)], Limits::default());
    db.pool = pool;
    let proxy = TestProxy::start(RouteTable::new([db]), ProxySettings::default()).await.unwrap();
    Stack { pg, proxy }
}

fn pool_of(size: u32) -> PoolConfig {
    PoolConfig { pool_size: size, pool_timeout: Duration::from_secs(20), ..PoolConfig::default() }
}

impl Stack {
    async fn client(&self) -> tokio_postgres::Client {
        self.proxy.connect_pooled("app", "app", PW).await.unwrap().0
    }

    async fn server_sessions(&self) -> i64 {
        let su = self.pg.superuser().await.unwrap();
        su.query_one("select count(*) from pg_stat_activity where usename = 'app'", &[]).await.unwrap().get(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_few_servers() {
    let s = stack(pool_of(2)).await;
    let clients: Vec<_> = futures_util::future::join_all((0..20).map(|_| s.client())).await;
    let clients = Arc::new(clients);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let clients = Arc::clone(&clients);
        tasks.push(tokio::spawn(async move {
            let c = &clients[i];
            for j in 0..20i32 {
                let row = c.query_one("select $1::int * 2", &[&j]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), j * 2);
                let rows = c.simple_query("select 1; select 2").await.unwrap();
                assert_eq!(rows.len(), 6);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(s.server_sessions().await <= 2, "more servers than pool_size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_the_client_across_servers() {
    let s = stack(pool_of(2)).await;
    // Every tokio-postgres client names its first statement s0: the names collide across
    // clients, the queries do not.
    let mut clients = Vec::new();
    for i in 0..6 {
        let c = s.client().await;
        let stmt = c.prepare(&format!("select $1::int + {i}")).await.unwrap();
        clients.push((i, c, stmt));
    }
    for round in 0..30 {
        for (i, c, stmt) in &clients {
            let row = c.query_one(stmt, &[&round]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), round + i);
        }
    }
    // Inside a transaction too, with more clients than servers.
    for (i, c, stmt) in &mut clients {
        let t = c.transaction().await.unwrap();
        let row = t.query_one(&*stmt, &[&1]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1 + *i);
        t.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_are_replayed_and_never_leak() {
    let s = stack(pool_of(1)).await;
    let a = s.client().await;
    let b = s.client().await;
    a.batch_execute("SET search_path TO custom, public").await.unwrap();
    a.batch_execute("SET default_transaction_read_only = on").await.unwrap();
    b.batch_execute("CREATE TABLE t(i int)").await.unwrap();
    for _ in 0..5 {
        let pa: String = a.query_one("show search_path", &[]).await.unwrap().get(0);
        assert_eq!(pa, "custom, public");
        let pb: String = b.query_one("show search_path", &[]).await.unwrap().get(0);
        assert_eq!(pb, "\"$user\", public");
        b.execute("insert into t values (1)", &[]).await.expect("b is not read-only");
        let err = a.execute("insert into public.t values (1)", &[]).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "25006", "a stays read-only");
    }
    a.batch_execute("RESET default_transaction_read_only").await.unwrap();
    a.execute("insert into public.t values (2)", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_apply_per_client() {
    let s = stack(pool_of(1)).await;
    let mut ca = s.proxy.pooled_config("app", "app", PW);
    ca.application_name("alpha").options("-c statement_timeout=1234");
    let mut cb = s.proxy.pooled_config("app", "app", PW);
    cb.application_name("beta");
    let (a, _) = s.proxy.connect_with(ca).await.unwrap();
    let (b, _) = s.proxy.connect_with(cb).await.unwrap();
    for _ in 0..3 {
        let row = a
            .query_one(
                "select current_setting('application_name'), current_setting('statement_timeout')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("alpha".into(), "1234ms".into()));
        let row = b
            .query_one(
                "select current_setting('application_name'), current_setting('statement_timeout')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("beta".into(), "0".into()));
    }
    // A startup option the server rejects is the server's error, at login.
    let mut bad = s.proxy.pooled_config("app", "app", PW);
    bad.options("-c no_such.thing=1 -c statement_timeout=nonsense");
    let err = s.proxy.connect_with(bad).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22023", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_tables_and_listen_pin_the_client() {
    let s = stack(pool_of(2)).await;
    let a = s.client().await;
    let b = s.client().await;
    a.batch_execute("CREATE TEMP TABLE mine(i int); INSERT INTO mine VALUES (7)").await.unwrap();
    for _ in 0..5 {
        b.query_one("select 1", &[]).await.unwrap();
        let v: i32 = a.query_one("select i from mine", &[]).await.unwrap().get(0);
        assert_eq!(v, 7);
    }
    let err = b.query_one("select i from pg_temp.mine", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01", "a temp table leaked to another client");
    let pinned: u64 = s.proxy.proxy.pools()[0].stats.pinned.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(pinned, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_transaction_leaves_nothing_behind() {
    let s = stack(pool_of(1)).await;
    let setup = s.client().await;
    setup.batch_execute("CREATE TABLE t(i int)").await.unwrap();
    {
        let a = s.client().await;
        a.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.unwrap();
    }
    // The only server is either rolled back or replaced: the next client sees no row and no
    // open transaction.
    let b = s.client().await;
    let n: i64 = b.query_one("select count(*) from t", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
    let status: String =
        b.query_one("select current_setting('transaction_isolation')", &[]).await.unwrap().get(0);
    assert_eq!(status, "read committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_timeout_gives_a_clear_error() {
    let s =
        stack(PoolConfig { pool_size: 1, pool_timeout: Duration::from_millis(500), ..PoolConfig::default() })
            .await;
    let holder = s.client().await;
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = s.client().await;
    // Extended protocol, then simple: each wait ends its request with an ERROR (as
    // PgBouncer's query_wait_timeout does, but the session goes on, as after any statement
    // error outside a transaction).
    let err = within("waiting", waiter.query_one("select 1", &[])).await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "53400");
    assert_eq!(db.severity(), "ERROR");
    assert!(db.message().contains("pool_timeout"), "{}", db.message());
    let err = within("waiting", waiter.simple_query("select 2")).await.unwrap_err();
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("53400"), "{err}");
    assert!(!waiter.is_closed(), "the waiting session was ended");
    holder.batch_execute("COMMIT").await.unwrap();
    let n: i32 = within("after", waiter.query_one("select 3", &[])).await.unwrap().get(0);
    assert_eq!(n, 3, "the session that waited goes on");
    let again = s.client().await;
    again.query_one("select 1", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_server_and_resets_it() {
    let s = stack(PoolConfig { pool_size: 1, pool_mode: PoolMode::Session, ..pool_of(1) }).await;
    {
        let a = s.client().await;
        a.batch_execute("SET search_path TO leaked; PREPARE p AS SELECT 1").await.unwrap();
        let pid1: i32 = a.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
        let pid2: i32 = a.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
        assert_eq!(pid1, pid2);
    }
    let b = s.client().await;
    let path: String = b.query_one("show search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "\"$user\", public");
    let err = b.batch_execute("EXECUTE p").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "26000");
}

fn pgbench(url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("pgbench").args(args).arg(url).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_with_more_clients_than_servers_in_every_query_mode() {
    let s = stack(pool_of(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &s.proxy.ca.ca_cert_pem).unwrap();
    let direct = s.proxy.url("app", "app", PW, &ca);
    let pooled = s.proxy.pooled_url("app", "app", PW, &ca);
    let init = direct.clone();
    tokio::task::spawn_blocking(move || pgbench(&init, &["-i", "-s", "1", "-q"])).await.unwrap();
    for mode in ["simple", "extended", "prepared"] {
        let url = pooled.clone();
        let text = tokio::task::spawn_blocking(move || {
            pgbench(&url, &["-c", "50", "-j", "2", "-t", "40", "-M", mode])
        })
        .await
        .unwrap();
        assert!(text.contains("number of transactions actually processed: 2000/2000"), "{mode}: {text}");
        assert!(text.contains("number of failed transactions: 0"), "{mode}: {text}");
    }
    assert!(s.server_sessions().await <= 5, "more servers than pool_size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_bounds_clients_holding_or_waiting_for_servers() {
    let s = stack(PoolConfig {
        pool_size: 5,
        max_active: Some(1),
        pool_timeout: Duration::from_millis(500),
        ..pool_of(5)
    })
    .await;
    let holder = s.client().await;
    holder.batch_execute("BEGIN").await.unwrap();
    // Servers are free, but only one client may hold one.
    let other = s.client().await;
    let err = other.query_one("select 1", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "53400");
    holder.batch_execute("COMMIT").await.unwrap();
    let again = s.client().await;
    again.query_one("select 1", &[]).await.unwrap();
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_servers_are_kept_and_idle_ones_retired() {
    let s = stack(PoolConfig {
        pool_size: 4,
        min_pool_size: 2,
        server_idle_timeout: Duration::from_millis(300),
        ..pool_of(4)
    })
    .await;
    // A pool exists once a client used it; it then keeps min_pool_size servers warm.
    let clients: Vec<_> = futures_util::future::join_all((0..4).map(|_| s.client())).await;
    let holds: Vec<_> =
        futures_util::future::join_all(clients.iter().map(|c| c.batch_execute("BEGIN"))).await;
    assert!(holds.iter().all(|r| r.is_ok()));
    assert_eq!(s.server_sessions().await, 4);
    for c in &clients {
        c.batch_execute("COMMIT").await.unwrap();
    }
    // Idle servers above min_pool_size go after server_idle_timeout; two stay.
    eventually("idle servers to be retired", async || s.server_sessions().await == 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.server_sessions().await, 2, "min_pool_size servers are kept");
    // A broken warm server is replaced: kill one backend behind the proxy's back.
    let su = s.pg.superuser().await.unwrap();
    su.batch_execute("select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app' limit 1")
        .await
        .unwrap();
    for c in &clients {
        c.query_one("select 1", &[]).await.expect("no client sees the dead server");
    }
    eventually("the pool to be back at min_pool_size", async || s.server_sessions().await == 2).await;
}

/// Awaits `f`, failing the test if it has not finished within 30 s (a hang fails, no
/// timing is asserted).
async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing happened within 30 s"))
}
