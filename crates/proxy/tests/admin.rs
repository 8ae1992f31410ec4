//! The admin console (`psql -d berth`) and the metrics endpoint, against real traffic.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proxy::{Limits, PoolConfig, ProxySettings, RouteTable};
use testkit::{TestPg, TestProxy, route};
use tokio_postgres::SimpleQueryMessage;
use wire::scram::ScramVerifier;

const PW: &str = "app-pw";
const ADMIN_PW: &str = "admin-pw";

struct Stack {
    pg: TestPg,
    proxy: TestProxy,
}

async fn stack(pool: PoolConfig) -> Stack {
    testkit::init_tracing();
    let pg = TestPg::start().unwrap();
    let su = pg.superuser().await.unwrap();
    su.batch_execute("CREATE ROLE app LOGIN").await.unwrap();
    su.batch_execute("CREATE DATABASE app OWNER app").await.unwrap();
    let mut db = route("app", &pg, "app", &[("app", PW)], Limits::default());
    db.pool = pool;
    let mut settings = ProxySettings::default();
    settings.admin_users.insert("ops".into(), vec![ScramVerifier::generate(ADMIN_PW)]);
    let proxy = TestProxy::start(RouteTable::new([db]), settings).await.unwrap();
    Stack { pg, proxy }
}

impl Stack {
    async fn admin(&self) -> tokio_postgres::Client {
        self.proxy.connect_pooled("berth", "ops", ADMIN_PW).await.unwrap().0
    }

    async fn app(&self) -> tokio_postgres::Client {
        self.proxy.connect_pooled("app", "app", PW).await.unwrap().0
    }

    async fn app_backends(&self) -> i64 {
        let su = self.pg.superuser().await.unwrap();
        su.query_one("select count(*) from pg_stat_activity where usename = 'app'", &[]).await.unwrap().get(0)
    }
}

/// Rows of a SHOW as (column → value) maps.
async fn show(c: &tokio_postgres::Client, cmd: &str) -> Vec<std::collections::HashMap<String, String>> {
    c.simple_query(cmd)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_owned(), r.get(i).unwrap_or_default().to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_describe_the_live_proxy() {
    let s = stack(PoolConfig { pool_size: 3, ..PoolConfig::default() }).await;
    let app = s.app().await;
    for _ in 0..5 {
        app.simple_query("select 1").await.unwrap();
    }
    let (_direct, _conn) = s.proxy.connect("app", "app", PW).await.unwrap();
    let admin = s.admin().await;

    let pools = show(&admin, "SHOW POOLS").await;
    assert_eq!(pools.len(), 1);
    assert_eq!((pools[0]["database"].as_str(), pools[0]["user"].as_str()), ("app", "app"));
    assert_eq!(pools[0]["sv_total"], "1");
    assert_eq!(pools[0]["sv_idle"], "1");
    assert_eq!(pools[0]["pool_mode"], "transaction");

    let clients = show(&admin, "show clients;").await;
    let kinds: Vec<(&str, &str)> =
        clients.iter().map(|c| (c["port"].as_str(), c["state"].as_str())).collect();
    assert!(kinds.contains(&("pooled", "idle")), "{kinds:?}");
    assert!(kinds.contains(&("direct", "active")), "{kinds:?}");

    let servers = show(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.len(), 1);
    let su = s.pg.superuser().await.unwrap();
    let pid: i32 = servers[0]["pid"].parse().unwrap();
    let found: i64 =
        su.query_one("select count(*) from pg_stat_activity where pid = $1", &[&pid]).await.unwrap().get(0);
    assert_eq!(found, 1, "SHOW SERVERS lists a real backend");

    let stats = show(&admin, "SHOW STATS").await;
    assert!(stats[0]["total_xact_count"].parse::<u64>().unwrap() >= 5);
    let dbs = show(&admin, "SHOW DATABASES").await;
    assert_eq!(dbs[0]["name"], "app");
    assert_eq!(dbs[0]["pool_size"], "3");
    assert_eq!(dbs[0]["current_connections"], "2");

    let err = admin.simple_query("SHOW NONSENSE").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42601");
    let err = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000", "extended protocol is refused");
    // The console still works after errors.
    assert_eq!(show(&admin, "SHOW VERSION").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_reach_the_console() {
    let s = stack(PoolConfig::default()).await;
    for (user, pw) in [("ops", "wrong"), ("nobody", ADMIN_PW), ("app", PW)] {
        let err = s.proxy.connect_pooled("berth", user, pw).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "28P01", "{user}");
    }
    // psql, as an operator would use it.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &s.proxy.ca.ca_cert_pem).unwrap();
    let url = s.proxy.pooled_url("berth", "ops", ADMIN_PW, &ca);
    let out =
        std::process::Command::new("psql").arg(&url).args(["-X", "-Atc", "SHOW DATABASES"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("app|"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_transactions_holds_new_ones_and_resume_releases_them() {
    let s =
        stack(PoolConfig { pool_size: 2, pool_timeout: Duration::from_secs(60), ..PoolConfig::default() })
            .await;
    s.app().await.batch_execute("CREATE TABLE t(i int)").await.unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let c = s.app().await;
        let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                c.batch_execute("BEGIN; INSERT INTO t VALUES (1); SELECT pg_sleep(0.01); COMMIT").await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    while done.load(Ordering::Relaxed) < 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = s.admin().await;
    admin.simple_query("PAUSE app").await.unwrap();
    // Every server is closed (PostgreSQL's backends take a moment to exit), and nothing runs
    // while paused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while s.app_backends().await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "servers still open after PAUSE");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let paused_at = done.load(Ordering::Relaxed);
    let pools = show(&admin, "SHOW POOLS").await;
    assert_eq!(pools[0]["paused"], "true");
    assert_eq!(pools[0]["sv_total"], "0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(done.load(Ordering::Relaxed), paused_at, "a transaction ran while paused");
    assert_eq!(s.app_backends().await, 0);

    admin.simple_query("RESUME app").await.unwrap();
    while done.load(Ordering::Relaxed) < paused_at + 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap().expect("no client saw an error across PAUSE/RESUME");
    }
    let rows: i64 = s.app().await.query_one("select count(*) from t", &[]).await.unwrap().get(0);
    assert_eq!(rows as u64, done.load(Ordering::Relaxed), "every committed transaction is there");
    let err = admin.simple_query("PAUSE nosuchdb").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "3D000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_runs_the_composers_hook() {
    let s = stack(PoolConfig::default()).await;
    let admin = s.admin().await;
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
    let calls = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&calls);
    s.proxy.proxy.set_reload_hook(move || {
        c.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    admin.simple_query("RELOAD").await.unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let s = stack(PoolConfig::default()).await;
    let app = s.app().await;
    // The error first: tokio-postgres returns it before the ReadyForQuery that ends the
    // transaction has been read, and the queries after it make sure it was.
    let _ = app.simple_query("select 1/0").await.unwrap_err();
    for _ in 0..3 {
        app.simple_query("select 1").await.unwrap();
    }
    assert!(s.proxy.connect_pooled("app", "app", "wrong").await.is_err());
    let text = s.proxy.proxy.metrics_text();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let transactions = value("berth_transactions_total{database=\"app\",user=\"app\"}");
    assert!(transactions >= 4.0, "{transactions} transactions counted in\n{text}");
    assert_eq!(value("berth_errors_total{class=\"22\"}"), 1.0);
    assert_eq!(value("berth_errors_total{class=\"28\"}"), 1.0);
    assert_eq!(value("berth_auth_failures_total"), 1.0);
    assert_eq!(value("berth_client_connections{database=\"app\",listener=\"pooled\",state=\"idle\"}"), 1.0);
    assert!(value("berth_pool_wait_seconds_count{database=\"app\",user=\"app\"}") >= 1.0);
    assert!(text.contains("# TYPE berth_pool_wait_seconds histogram"));

    // Over HTTP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy::metrics::serve_http(listener, s.proxy.proxy.clone()));
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut body = String::new();
        c.read_to_string(&mut body).await.unwrap();
        body
    };
    let ok = get("/metrics").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("berth_transactions_total"));
    assert!(get("/").await.starts_with("HTTP/1.1 404"));
}

/// The pooling issue's "done when": `pgbench -M prepared -c 50 -j 2 -T 20` through the pooled
/// port with pool_size 5, zero failed transactions, and SHOW POOLS telling the truth during
/// the run and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_for_twenty_seconds_on_five_servers_with_a_true_show_pools() {
    let s =
        stack(PoolConfig { pool_size: 5, pool_timeout: Duration::from_secs(30), ..PoolConfig::default() })
            .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &s.proxy.ca.ca_cert_pem).unwrap();
    let init = s.proxy.url("app", "app", PW, &ca);
    let out =
        std::process::Command::new("pgbench").args(["-i", "-s", "1", "-q"]).arg(&init).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = s.proxy.pooled_url("app", "app", PW, &ca);
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("pgbench")
            .args(["-M", "prepared", "-c", "50", "-j", "2", "-T", "20"])
            .arg(&url)
            .output()
            .unwrap()
    });
    let admin = s.admin().await;
    // Mid-run: all 50 clients are counted as active or waiting, never more than 5 servers.
    let mut saw_all_clients = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pools = show(&admin, "SHOW POOLS").await;
        let Some(p) = pools.iter().find(|p| p["database"] == "app" && p["user"] == "app") else { continue };
        let n = |k: &str| p[k].parse::<u64>().unwrap();
        assert!(n("sv_total") <= 5, "{p:?}");
        assert_eq!(n("sv_active") + n("sv_idle"), n("sv_total"), "{p:?}");
        assert!(n("cl_active") + n("cl_waiting") <= 50, "{p:?}");
        saw_all_clients |= n("cl_active") + n("cl_waiting") == 50;
        if saw_all_clients {
            break;
        }
    }
    assert!(saw_all_clients, "SHOW POOLS never counted the 50 pgbench clients");
    let out = run.await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("number of failed transactions: 0 "), "{text}");
    let processed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next()?.parse().ok())
        .unwrap_or_default();
    assert!(processed > 0, "{text}");
    // After: nobody is connected or waiting (once the proxy has seen every disconnect); the
    // servers are idle in the pool.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let p = loop {
        let pools = show(&admin, "SHOW POOLS").await;
        let p = pools.into_iter().find(|p| p["database"] == "app" && p["user"] == "app").expect("the pool");
        if p["cl_active"] == "0" || tokio::time::Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((p["cl_active"].as_str(), p["cl_waiting"].as_str()), ("0", "0"), "{p:?}");
    assert_eq!(
        (p["sv_active"].as_str(), p["pool_size"].as_str(), p["pool_mode"].as_str()),
        ("0", "5", "transaction")
    );
    assert!(p["sv_idle"].parse::<u64>().unwrap() <= 5);
    assert!(s.app_backends().await <= 5);
}
