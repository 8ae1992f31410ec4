//! Fixtures for the pooled-listener tests: a real PostgreSQL with roles `app` and `other`
//! and a database `app`, routed through the proxy with a given pool configuration; clients
//! through the pooled port (tokio-postgres and the raw protocol client); and small probes
//! into the pool's counters and the server's own view of its sessions.

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proxy::{Limits, PoolConfig, ProxySettings, RouteTable};
use testkit::raw::RawConn;
use testkit::{TestPg, TestProxy, route};
use tokio_postgres::{AsyncMessage, Notification};
use wire::ErrorResponse;
use wire::frontend::{Bind, FrontendMessage};

pub const PW: &str = "pool-pw";

/// Only keeps a broken proxy from hanging the run; nothing asserts how long anything took.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Stack {
    pub pg: TestPg,
    pub proxy: TestProxy,
}

pub async fn stack(pool: PoolConfig) -> Stack {
    stack_with(pool, ProxySettings::default(), false).await
}

/// With `cheap_scram`, role `app`'s verifier takes few PBKDF2 rounds: for tests whose
/// hundreds of logins at once would otherwise measure key stretching in a debug build.
pub async fn stack_with(pool: PoolConfig, settings: ProxySettings, cheap_scram: bool) -> Stack {
    testkit::init_tracing();
    let pg = TestPg::start().unwrap();
    let su = pg.superuser().await.unwrap();
    su.batch_execute("CREATE ROLE app LOGIN; CREATE ROLE other LOGIN").await.unwrap();
    su.batch_execute("CREATE DATABASE app OWNER app").await.unwrap();
    let mut db = route("app", &pg, "app", &[("app", PW), ("other", PW)], Limits::default());
    db.pool = pool;
    if cheap_scram {
        let app = db.roles.get_mut("app").unwrap();
        app.verifiers = vec![wire::scram::ScramVerifier::derive(PW, b"pooled-kit-salt", 16)];
    }
    let proxy = TestProxy::start(RouteTable::new([db]), settings).await.unwrap();
    Stack { pg, proxy }
}

pub fn pool_of(size: u32) -> PoolConfig {
    PoolConfig { pool_size: size, pool_timeout: Duration::from_secs(20), ..PoolConfig::default() }
}

impl Stack {
    pub async fn client(&self) -> tokio_postgres::Client {
        self.proxy.connect_pooled("app", "app", PW).await.unwrap().0
    }

    /// A client whose notifications (and notices) arrive on the returned channel.
    pub async fn listening_client(
        &self,
    ) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<Notification>) {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.proxy.client_tls());
        let (client, mut conn) = self.proxy.pooled_config("app", "app", PW).connect(tls).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
                if let AsyncMessage::Notification(n) = m {
                    let _ = tx.send(n);
                }
            }
        });
        (client, rx)
    }

    pub async fn raw(&self) -> RawConn {
        RawConn::login(self.proxy.pooled_addr, self.proxy.client_tls(), "app", "app", PW).await.unwrap()
    }

    /// Sessions of role `app` as PostgreSQL counts them.
    pub async fn server_sessions(&self) -> i64 {
        let su = self.pg.superuser().await.unwrap();
        su.query_one("select count(*) from pg_stat_activity where usename = 'app'", &[]).await.unwrap().get(0)
    }

    pub fn pool(&self) -> std::sync::Arc<proxy::pool::Pool> {
        self.proxy.proxy.pools().into_iter().next().expect("a pool exists once a client logged in")
    }

    pub fn pinned(&self) -> u64 {
        self.pool().stats.pinned.load(Ordering::Relaxed)
    }

    pub fn waiting(&self) -> u64 {
        self.pool().stats.waiting.load(Ordering::Relaxed)
    }

    /// Waits until PostgreSQL runs `query` in some session.
    pub async fn wait_until_running(&self, query: &str) {
        let su = self.pg.superuser().await.unwrap();
        within("query to start", async {
            loop {
                let n: i64 = su
                    .query_one(
                        "select count(*) from pg_stat_activity where query = $1 and state = 'active'",
                        &[&query],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if n > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

/// Awaits `f`, failing the test if it has not finished within [`PATIENCE`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: nothing happened within {PATIENCE:?}"),
    }
}

/// Polls `check` until it holds, failing the test after [`PATIENCE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

pub fn code(e: &ErrorResponse) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_default()
}

pub fn q(sql: &str) -> FrontendMessage {
    FrontendMessage::Query { query: sql.into() }
}

pub fn parse(name: &str, query: &str) -> FrontendMessage {
    FrontendMessage::Parse { name: name.into(), query: query.into(), param_types: vec![] }
}

pub fn bind(stmt: &str, params: &[&str]) -> FrontendMessage {
    FrontendMessage::Bind(Bind {
        portal: String::new(),
        statement: stmt.into(),
        param_formats: vec![],
        params: params.iter().map(|p| Some(bytes::Bytes::from(p.to_string()))).collect(),
        result_formats: vec![],
    })
}

pub fn execute() -> FrontendMessage {
    FrontendMessage::Execute { portal: String::new(), max_rows: 0 }
}

/// The text columns of every DataRow among `frames`.
pub fn rows(frames: &[wire::Frame]) -> Vec<Vec<Option<String>>> {
    frames
        .iter()
        .filter(|f| f.tag == b'D')
        .map(|f| {
            let b = &f.body;
            let n = u16::from_be_bytes([b[0], b[1]]) as usize;
            let mut at = 2;
            (0..n)
                .map(|_| {
                    let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                    at += 4;
                    if len < 0 {
                        return None;
                    }
                    let v = String::from_utf8(b[at..at + len as usize].to_vec()).unwrap();
                    at += len as usize;
                    Some(v)
                })
                .collect()
        })
        .collect()
}

/// The transaction status byte of the last ReadyForQuery among `frames`.
pub fn status(frames: &[wire::Frame]) -> u8 {
    frames.iter().rev().find(|f| f.tag == b'Z').expect("a ReadyForQuery").body[0]
}

/// Sends `msgs` and reads to the next ReadyForQuery (bounded by [`PATIENCE`]).
pub async fn roundtrip(
    c: &mut RawConn,
    msgs: &[FrontendMessage],
) -> (Vec<wire::Frame>, Option<ErrorResponse>) {
    c.send(msgs).await.unwrap();
    within("answer", c.reader.until_ready()).await.unwrap()
}

/// The single value a simple query returns on a raw connection.
pub async fn raw_value(c: &mut RawConn, sql: &str) -> String {
    let (frames, err) = roundtrip(c, &[q(sql)]).await;
    assert!(err.is_none(), "{sql}: {err:?}");
    rows(&frames)[0][0].clone().unwrap()
}
