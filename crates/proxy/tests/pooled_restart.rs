//! PostgreSQL restarting under the pooled port: idle clients' servers die with it, and the
//! next transaction of each gets a new server without seeing an error; under load, errors
//! are allowed only while PostgreSQL is down, and the pool never grows past `pool_size`.

#![allow(clippy::unwrap_used)]

mod pooled_kit;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pooled_kit::{Stack, pool_of, stack, within};

fn restart(s: &mut Stack) {
    tokio::task::block_in_place(|| {
        s.pg.instance().stop().unwrap();
        s.pg.instance().start().unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_survive_an_upstream_restart() {
    let mut s = stack(pool_of(5)).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(s.client().await);
    }
    // Five transactions at once: five servers.
    for c in &clients {
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    let mut before = Vec::new();
    for c in &clients {
        before.push(c.query_one("select pg_backend_pid()", &[]).await.unwrap().get::<_, i32>(0));
        c.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(s.pool().counts().0, 5);
    restart(&mut s);
    for (i, c) in clients.iter().enumerate() {
        let row = within(
            "query after restart",
            c.query_one("select $1::int + 1, pg_backend_pid()", &[&(i as i32)]),
        )
        .await
        .unwrap_or_else(|e| panic!("client {i} saw an error after the restart: {e}"));
        assert_eq!(row.get::<_, i32>(0), i as i32 + 1);
        assert!(!before.contains(&row.get::<_, i32>(1)), "a server from before the restart");
        // Prepared statements and the simple protocol work as before.
        let stmt = c.prepare("select $1::text").await.unwrap();
        let v: String = c.query_one(&stmt, &[&"again"]).await.unwrap().get(0);
        assert_eq!(v, "again");
        c.simple_query("select 1; select 2").await.unwrap();
    }
    assert!(s.server_sessions().await <= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_under_load() {
    const POOL: u32 = 3;
    let mut s = stack(pool_of(POOL)).await;
    let restarted = Arc::new(AtomicBool::new(false));
    let cfg = s.proxy.pooled_config("app", "app", pooled_kit::PW);
    let tls = s.proxy.client_tls();
    let mut tasks = Vec::new();
    for task in 0..10 {
        let restarted = Arc::clone(&restarted);
        let cfg = cfg.clone();
        let tls = tls.clone();
        let (first, _) = s.proxy.connect_pooled("app", "app", pooled_kit::PW).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut client = Some(first);
            let mut ok_after = 0;
            let mut errors_during = 0;
            while ok_after < 20 {
                let after = restarted.load(Ordering::SeqCst);
                let c = match &client {
                    Some(c) if !c.is_closed() => c,
                    _ => {
                        match cfg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone())).await {
                            Ok((c, conn)) => {
                                tokio::spawn(conn);
                                client = Some(c);
                                client.as_ref().unwrap()
                            }
                            Err(e) => {
                                assert!(!after, "task {task}: reconnecting after the restart failed: {e}");
                                errors_during += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                };
                match c.query_one("select $1::int", &[&task]).await {
                    Ok(row) => {
                        assert_eq!(row.get::<_, i32>(0), task);
                        if after {
                            ok_after += 1;
                        }
                    }
                    Err(e) => {
                        assert!(!after, "task {task}: a query after the restart failed: {e}");
                        let code = e.code().map(|c| c.code().to_owned());
                        assert!(
                            code.as_deref().is_none_or(|c| c.starts_with("57") || c.starts_with("08")),
                            "task {task}: unexpected error during the restart: {e}"
                        );
                        errors_during += 1;
                        // Its connection may be on its way out: start afresh.
                        client = None;
                    }
                }
            }
            errors_during
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    restart(&mut s);
    restarted.store(true, Ordering::SeqCst);
    let mut errors = 0;
    for t in tasks {
        errors += within("load task", t).await.unwrap();
    }
    tracing::info!(errors, "errors seen while PostgreSQL was down");
    let (open, _) = s.pool().counts();
    assert!(open <= POOL, "{open} servers for a pool of {POOL}");
    assert!(s.server_sessions().await <= i64::from(POOL));
    // Everyone is served afterwards.
    let c = s.client().await;
    let v: i32 = c.query_one("select 42", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}
