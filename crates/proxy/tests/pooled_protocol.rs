//! Named prepared statements and broken extended-protocol sequences on the pooled port,
//! driven with the raw protocol client: statements that the proxy accepted while the client
//! held no server, prepared later on whichever server the client gets; PostgreSQL's own
//! errors for what a client got wrong; pipelining and Sync storms.

#![allow(clippy::unwrap_used)]

mod pooled_kit;

use pooled_kit::{
    Stack, bind, code, execute, parse, pool_of, q, raw_value, roundtrip, rows, stack, status, within,
};
use testkit::raw::RawConn;
use wire::frontend::FrontendMessage;

fn describe_statement(name: &str) -> FrontendMessage {
    FrontendMessage::Describe { kind: b'S', name: name.into() }
}

fn close_statement(name: &str) -> FrontendMessage {
    FrontendMessage::Close { kind: b'S', name: name.into() }
}

/// Holds a server inside a transaction, so the next client that needs one gets another.
async fn hold_a_server(s: &Stack) -> tokio_postgres::Client {
    let h = s.client().await;
    h.batch_execute("BEGIN; SELECT 1").await.unwrap();
    h
}

/// One Bind/Execute/Sync of `stmt` with `params`, returning its single value.
async fn run_statement(c: &mut RawConn, stmt: &str, params: &[&str]) -> String {
    let (frames, err) = roundtrip(c, &[bind(stmt, params), execute(), FrontendMessage::Sync]).await;
    assert!(err.is_none(), "{stmt}: {err:?}");
    rows(&frames)[0][0].clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_parse_the_same_name_runs_the_new_query() {
    let s = stack(pool_of(2)).await;
    let mut c = s.raw().await;
    let (frames, err) =
        roundtrip(&mut c, &[parse("s1", "select 'old' || $1::text"), FrontendMessage::Sync]).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames.iter().map(|f| f.tag).collect::<Vec<_>>(), b"1Z");
    assert_eq!(run_statement(&mut c, "s1", &["1"]).await, "old1");
    let (frames, err) = roundtrip(&mut c, &[close_statement("s1"), FrontendMessage::Sync]).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames.iter().map(|f| f.tag).collect::<Vec<_>>(), b"3Z");
    let (_, err) = roundtrip(&mut c, &[parse("s1", "select 'new' || $1::text"), FrontendMessage::Sync]).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(run_statement(&mut c, "s1", &["2"]).await, "new2");
    // On a server that never saw either version, too.
    let holder = hold_a_server(&s).await;
    assert_eq!(run_statement(&mut c, "s1", &["3"]).await, "new3");
    drop(holder);
    // Closed means gone: PostgreSQL's own error for an unknown statement.
    roundtrip(&mut c, &[close_statement("s1"), FrontendMessage::Sync]).await;
    let (_, err) = roundtrip(&mut c, &[bind("s1", &["4"]), execute(), FrontendMessage::Sync]).await;
    assert_eq!(code(&err.expect("an error")), "26000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_of_an_existing_name_fails_and_skips_to_sync() {
    let s = stack(pool_of(2)).await;
    let mut c = s.raw().await;
    roundtrip(&mut c, &[parse("s1", "select 1"), FrontendMessage::Sync]).await;
    // Detached: the first message after ReadyForQuery.
    let (frames, err) =
        roundtrip(&mut c, &[parse("s1", "select 2"), bind("s1", &[]), execute(), FrontendMessage::Sync])
            .await;
    let err = err.expect("an error");
    assert_eq!(code(&err), "42P05");
    assert!(err.to_string().contains("already exists"), "{err}");
    // Nothing of the skipped Bind/Execute: the error, then ReadyForQuery.
    assert_eq!(frames.iter().map(|f| f.tag).collect::<Vec<_>>(), b"EZ");
    assert_eq!(status(&frames), b'I');
    // Attached, behind a statement that needs the server.
    let (frames, err) = roundtrip(
        &mut c,
        &[parse("", "select 3"), parse("s1", "select 2"), bind("s1", &[]), execute(), FrontendMessage::Sync],
    )
    .await;
    assert_eq!(code(&err.expect("an error")), "42P05");
    assert_eq!(frames.iter().map(|f| f.tag).collect::<Vec<_>>(), b"1EZ");
    // The statement is still the first one.
    assert_eq!(run_statement(&mut c, "s1", &[]).await, "1");
}

/// PostgreSQL aborts the transaction a failed Parse is part of, and so must the proxy when it
/// is the one that knows the name is taken: a COMMIT afterwards rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_parse_inside_a_transaction_aborts_it() {
    let s = stack(pool_of(2)).await;
    let mut c = s.raw().await;
    roundtrip(&mut c, &[q("CREATE TABLE t(i int)")]).await;
    roundtrip(&mut c, &[parse("s1", "select 1"), FrontendMessage::Sync]).await;
    roundtrip(&mut c, &[q("BEGIN; INSERT INTO t VALUES (1)")]).await;
    let (frames, err) =
        roundtrip(&mut c, &[parse("s1", "select 2"), bind("s1", &[]), execute(), FrontendMessage::Sync])
            .await;
    assert_eq!(code(&err.expect("an error")), "42P05");
    assert_eq!(status(&frames), b'E', "PostgreSQL reports a failed transaction");
    let (frames, _) = roundtrip(&mut c, &[q("COMMIT")]).await;
    let tag = frames.iter().find(|f| f.tag == b'C').unwrap();
    assert_eq!(&tag.body[..], b"ROLLBACK\0");
    assert_eq!(raw_value(&mut c, "select count(*) from t").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_of_a_client_statement_on_a_server_that_never_saw_it() {
    let s = stack(pool_of(2)).await;
    let mut c = s.raw().await;
    let (_, err) = roundtrip(
        &mut c,
        &[parse("d", "select $1::int4 as a, $2::text as b, pg_backend_pid() as pid"), FrontendMessage::Sync],
    )
    .await;
    assert!(err.is_none());
    let mut pids = Vec::new();
    for round in 0..2 {
        // Round 1: the server C used is held by someone else, so C gets a fresh one.
        let holder = if round == 1 { Some(hold_a_server(&s).await) } else { None };
        let (frames, err) = roundtrip(&mut c, &[describe_statement("d"), FrontendMessage::Sync]).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(frames.iter().map(|f| f.tag).collect::<Vec<_>>(), b"tTZ");
        let params = &frames[0].body;
        assert_eq!(u16::from_be_bytes([params[0], params[1]]), 2);
        let oids: Vec<u32> =
            params[2..].chunks(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert_eq!(oids, [23, 25]);
        let desc = wire::backend::BackendMessage::decode(&frames[1]).unwrap();
        let wire::backend::BackendMessage::RowDescription { fields } = desc else { panic!("{desc:?}") };
        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "pid"]);
        let (frames, err) =
            roundtrip(&mut c, &[bind("d", &["5", "x"]), execute(), FrontendMessage::Sync]).await;
        assert!(err.is_none(), "{err:?}");
        let row = &rows(&frames)[0];
        assert_eq!((row[0].as_deref(), row[1].as_deref()), (Some("5"), Some("x")));
        pids.push(row[2].clone().unwrap());
        drop(holder);
    }
    assert_ne!(pids[0], pids[1], "the second round was meant to run on another server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_for_broken_extended_sequences() {
    let s = stack(pool_of(1)).await;
    let mut c = s.raw().await;
    // Execute of a portal that was never bound.
    let (_, err) = roundtrip(
        &mut c,
        &[FrontendMessage::Execute { portal: "nope".into(), max_rows: 0 }, FrontendMessage::Sync],
    )
    .await;
    assert_eq!(code(&err.expect("an error")), "34000");
    // Bind of a statement never prepared.
    let (_, err) = roundtrip(&mut c, &[bind("missing", &[]), execute(), FrontendMessage::Sync]).await;
    assert_eq!(code(&err.expect("an error")), "26000");
    // Bind with the wrong number of parameters: the server's protocol violation.
    roundtrip(&mut c, &[parse("two", "select $1::int + $2::int"), FrontendMessage::Sync]).await;
    let (frames, err) = roundtrip(&mut c, &[bind("two", &["1"]), execute(), FrontendMessage::Sync]).await;
    let err = err.expect("an error");
    assert_eq!(code(&err), "08P01");
    assert!(err.to_string().contains("supplies 1 parameters"), "{err}");
    assert_eq!(frames.iter().map(|f| f.tag).collect::<Vec<_>>(), b"EZ");
    // A syntax error in a Parse while detached is the server's own error.
    let (_, err) = roundtrip(&mut c, &[parse("bad", "selec 1"), FrontendMessage::Sync]).await;
    let err = err.expect("an error");
    assert_eq!(code(&err), "42601");
    assert!(err.to_string().contains("syntax error at or near \"selec\""), "{err}");
    // The session and the pool's only server are fine.
    assert_eq!(run_statement(&mut c, "two", &["1", "2"]).await, "3");
    let other = s.client().await;
    other.query_one("select 1", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_parse_of_a_missing_table_fails_at_first_use() {
    let s = stack(pool_of(1)).await;
    let mut c = s.raw().await;
    let (frames, err) =
        roundtrip(&mut c, &[parse("m", "select count(*) from later"), FrontendMessage::Sync]).await;
    assert!(err.is_none(), "accepted while detached: {err:?}");
    assert_eq!(frames.iter().map(|f| f.tag).collect::<Vec<_>>(), b"1Z");
    let (frames, err) = roundtrip(&mut c, &[bind("m", &[]), execute(), FrontendMessage::Sync]).await;
    assert_eq!(code(&err.expect("an error")), "42P01");
    assert_eq!(status(&frames), b'I');
    assert_eq!(raw_value(&mut c, "select 'still here'").await, "still here");
    // Once the table exists the statement works.
    assert_eq!(raw_value(&mut c, "create table later(i int); select 'made'").await, "made");
    assert_eq!(run_statement(&mut c, "m", &[]).await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_from_several_clients_answer_in_order() {
    let s = stack(pool_of(2)).await;
    let mut tasks = Vec::new();
    for client in 0..3 {
        let mut c = s.raw().await;
        tasks.push(tokio::spawn(async move {
            let mut batch = Vec::new();
            for i in 0..100 {
                let name = format!("p{i}");
                batch.push(parse(&name, &format!("select {client} * 1000 + {i} + $1::int")));
                batch.push(bind(&name, &["0"]));
                batch.push(execute());
                batch.push(FrontendMessage::Sync);
            }
            c.send(&batch).await.unwrap();
            for i in 0..100 {
                let (frames, err) = within("batch answer", c.reader.until_ready()).await.unwrap();
                assert!(err.is_none(), "{err:?}");
                assert_eq!(frames.iter().map(|f| f.tag).collect::<Vec<_>>(), b"12DCZ");
                assert_eq!(rows(&frames)[0][0].as_deref(), Some((client * 1000 + i).to_string().as_str()));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(s.server_sessions().await <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_storm_outside_and_inside_a_transaction() {
    let s = stack(pool_of(1)).await;
    let mut c = s.raw().await;
    for expected in [b'I', b'T'] {
        if expected == b'T' {
            roundtrip(&mut c, &[q("BEGIN")]).await;
        }
        c.send(&vec![FrontendMessage::Sync; 10_000]).await.unwrap();
        for _ in 0..10_000 {
            let (frames, err) = within("ReadyForQuery", c.reader.until_ready()).await.unwrap();
            assert!(err.is_none());
            assert_eq!(frames.len(), 1);
            assert_eq!(status(&frames), expected);
        }
    }
    roundtrip(&mut c, &[q("COMMIT")]).await;
    assert_eq!(raw_value(&mut c, "select 'ok'").await, "ok");
    // The pool's only server went back clean.
    let other = s.client().await;
    let v: i32 = other.query_one("select 5", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);
}
