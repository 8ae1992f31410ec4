//! A schema change that alters a prepared statement's result type: PostgreSQL refuses the
//! old statement ("cached plan must not change result type", 0A000) and the client prepares
//! the text again, as asyncpg and others do. On the pooled port that new statement must
//! work on every server, not reuse the broken one the servers share under the same text.

#![allow(clippy::unwrap_used)]

mod common;

use common::{sqlstate, stack, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_again_after_a_schema_change_works_on_every_server() {
    let s = stack().await;
    let setup = s.alice().await;
    setup.batch_execute("create table t (a int, b int); insert into t values (1, 2)").await.unwrap();
    // Three clients inside transactions at once: three servers, each with the statement.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = s.pooled_alice().await;
        c.batch_execute("begin").await.unwrap();
        let st = c.prepare("select * from t").await.unwrap();
        c.query(&st, &[]).await.unwrap();
        clients.push((c, st));
    }
    for (c, _) in &clients {
        c.batch_execute("commit").await.unwrap();
    }
    setup.batch_execute("alter table t alter column b set data type text").await.unwrap();
    for (i, (c, old)) in clients.iter().enumerate() {
        // The statement from before fails, as on PostgreSQL...
        let e = within("the old statement", c.query(old, &[])).await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("0A000"), "client {i}: {e}");
        // ...and the text prepared again works, whichever server runs it, round after round.
        for round in 0..6 {
            let st = within("prepare", c.prepare("select * from t")).await.unwrap();
            let rows = within("query", c.query(&st, &[]))
                .await
                .unwrap_or_else(|e| panic!("client {i}, round {round}: {e} ({:?})", sqlstate(&e)));
            assert_eq!(rows[0].get::<_, String>(1), "2", "client {i}, round {round}");
        }
    }
}
