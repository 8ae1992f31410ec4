//! A registered upstream's own roles, looked up by auth query: the proxy reads a role's
//! verifier from `pg_authid` with the registered credentials, checks the client against it,
//! and logs in upstream with the keys of the client's own exchange.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{message, refused, set_hba, sqlstate, within};
use proxy::auth_query::AuthQuery;
use proxy::routes::Role;
use proxy::secret::Secret;
use proxy::{Limits, ProxySettings, RouteTable};
use testkit::{TestPg, TestProxy, route};
use wire::scram::ScramVerifier;

const REGISTRAR_PW: &str = "registrar-pw";

struct Stack {
    pg: TestPg,
    proxy: TestProxy,
}

/// An upstream that asks every role but the superuser for a SCRAM password, registered with
/// the role `registrar`.
async fn stack() -> Stack {
    testkit::init_tracing();
    let pg = TestPg::start().unwrap();
    let su = pg.superuser().await.unwrap();
    su.batch_execute(&format!(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE registrar LOGIN SUPERUSER PASSWORD '{REGISTRAR_PW}';
         CREATE ROLE alice LOGIN PASSWORD 'alice-pw';
         CREATE ROLE md5_user LOGIN PASSWORD 'md5-pw';
         CREATE ROLE nologin PASSWORD 'nologin-pw';"
    ))
    .await
    .unwrap();
    su.batch_execute("CREATE DATABASE shop OWNER alice").await.unwrap();
    su.batch_execute("SET password_encryption = 'md5'; ALTER ROLE md5_user PASSWORD 'md5-pw'").await.unwrap();
    set_hba(&pg, "local all postgres trust\nlocal all all scram-sha-256\n").await;
    let mut db = route("db_registered", &pg, "shop", &[], Limits::default());
    db.roles = HashMap::from([(
        "registrar".to_owned(),
        Role {
            name: "registrar".into(),
            verifiers: vec![ScramVerifier::generate(REGISTRAR_PW)],
            upstream_password: Some(Secret::new(REGISTRAR_PW)),
        },
    )]);
    db.auth_query = Some(AuthQuery { user: "registrar".into(), password: Secret::new(REGISTRAR_PW) });
    let proxy = TestProxy::start(RouteTable::new([db]), ProxySettings::default()).await.unwrap();
    Stack { pg, proxy }
}

async fn whoami(c: &tokio_postgres::Client) -> String {
    c.query_one("select current_user::text", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_roles_log_in_with_their_own_passwords_on_both_ports() {
    let s = stack().await;
    let (direct, _c) = s.proxy.connect("db_registered", "alice", "alice-pw").await.unwrap();
    assert_eq!(whoami(&direct).await, "alice");
    let (pooled, _c) = s.proxy.connect_pooled("db_registered", "alice", "alice-pw").await.unwrap();
    assert_eq!(whoami(&pooled).await, "alice");
    pooled.batch_execute("create table t(i int); insert into t values (1)").await.unwrap();
    // The registered role itself, with the stored password.
    let (reg, _c) = s.proxy.connect_pooled("db_registered", "registrar", REGISTRAR_PW).await.unwrap();
    assert_eq!(whoami(&reg).await, "registrar");
    assert_eq!(reg.query_one("select count(*) from t", &[]).await.unwrap().get::<_, i64>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_created_upstream_logs_in_at_once() {
    let s = stack().await;
    // Refused before it exists...
    let e = refused(s.proxy.connect("db_registered", "bob", "bob-pw").await, "bob before CREATE ROLE");
    assert_eq!(sqlstate(&e), Some("28P01"));
    let su = s.pg.superuser().await.unwrap();
    su.batch_execute("SET password_encryption = 'scram-sha-256'; CREATE ROLE bob LOGIN PASSWORD 'bob-pw'")
        .await
        .unwrap();
    // ...and accepted as soon as it exists: a failed login never leaves a stale answer.
    let (bob, _c) = s.proxy.connect_pooled("db_registered", "bob", "bob-pw").await.unwrap();
    assert_eq!(whoami(&bob).await, "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_unknown_roles_and_unusable_roles_all_get_28p01() {
    let s = stack().await;
    let mut messages = Vec::new();
    for (user, pw) in [
        ("alice", "wrong"),
        ("nobody", "x"),
        ("md5_user", "md5-pw"),
        ("nologin", "nologin-pw"),
        ("registrar", "wrong"),
    ] {
        let e = refused(s.proxy.connect("db_registered", user, pw).await, user);
        assert_eq!(sqlstate(&e), Some("28P01"), "{user}: {e}");
        messages.push(message(&e).replace(user, "USER"));
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "refusals differ: {messages:?}");
    // The proxy stays healthy.
    let (c, _c) = s.proxy.connect("db_registered", "alice", "alice-pw").await.unwrap();
    assert_eq!(whoami(&c).await, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_is_fetched_again_after_a_failed_login() {
    let s = stack().await;
    let (c, _c) = s.proxy.connect("db_registered", "alice", "alice-pw").await.unwrap();
    assert_eq!(whoami(&c).await, "alice");
    let su = s.pg.superuser().await.unwrap();
    su.batch_execute("SET password_encryption = 'scram-sha-256'; ALTER ROLE alice PASSWORD 'alice-new'")
        .await
        .unwrap();
    // The cached verifier refuses the new password once and is dropped; the next login
    // fetches the new one.
    let first = s.proxy.connect("db_registered", "alice", "alice-new").await;
    if let Err(e) = &first {
        assert_eq!(sqlstate(e), Some("28P01"), "{e}");
    }
    let (c, _c) = s.proxy.connect("db_registered", "alice", "alice-new").await.unwrap();
    assert_eq!(whoami(&c).await, "alice");
    let e = refused(s.proxy.connect("db_registered", "alice", "alice-pw").await, "old password");
    assert_eq!(sqlstate(&e), Some("28P01"));
}

/// A password changed upstream takes effect within a short bound even when no login fails
/// in between: the old password stops working (it worked for a minute before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_retires_the_old_one_without_a_failed_login() {
    let s = stack().await;
    let (c, _c) = s.proxy.connect_pooled("db_registered", "alice", "alice-pw").await.unwrap();
    assert_eq!(whoami(&c).await, "alice");
    let su = s.pg.superuser().await.unwrap();
    su.batch_execute("SET password_encryption = 'scram-sha-256'; ALTER ROLE alice PASSWORD 'alice-new'")
        .await
        .unwrap();
    within("the old password to be refused", async {
        while s.proxy.connect_pooled("db_registered", "alice", "alice-pw").await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    let (c, _c) = s.proxy.connect_pooled("db_registered", "alice", "alice-new").await.unwrap();
    assert_eq!(whoami(&c).await, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_credentials_that_stop_working_are_a_clear_error() {
    let s = stack().await;
    let su = s.pg.superuser().await.unwrap();
    su.batch_execute("ALTER ROLE registrar PASSWORD 'changed-behind-our-back'").await.unwrap();
    let e = refused(s.proxy.connect("db_registered", "alice", "alice-pw").await, "auth query refused");
    assert_eq!(sqlstate(&e), Some("57P03"), "{e}");
    assert!(message(&e).contains("not available"), "{e}");
}
