//! API-key logins (the tunnel's and the admin console's): user `apikey`, the key as a
//! cleartext password over TLS, checked on every login by the composer's checker.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{PASSWORD, message, refused, sqlstate, within};
use proxy::apikey::{ApiKeys, CheckFuture, KeyAccess, KeyGrant};
use proxy::{Limits, ProxySettings, RouteTable};
use testkit::{TestPg, TestProxy, route};

/// Keys held in memory: the proxy only sees the checker's answers.
#[derive(Default)]
struct Keys {
    grants: Mutex<HashMap<String, KeyGrant>>,
}

impl ApiKeys for Keys {
    fn check<'a>(&'a self, key: &'a str) -> CheckFuture<'a> {
        Box::pin(async move {
            if key == "berth_live_catalog_down" {
                return Err("catalog unreachable".into());
            }
            Ok(self.grants.lock().unwrap().get(key).cloned())
        })
    }
}

const SHOP_KEY: &str = "berth_live_shop";
const ORG_KEY: &str = "berth_live_org";
const BLOG_KEY: &str = "berth_live_blog";
const NO_SCOPE_KEY: &str = "berth_live_no_scope";
/// An organization-wide key without the admin scope.
const ORG_READER_KEY: &str = "berth_live_org_reader";

fn grant(project: Option<&str>, can_connect: bool) -> KeyGrant {
    KeyGrant {
        organization_id: "org_1".into(),
        project_id: project.map(Into::into),
        can_connect,
        can_administer: project.is_none() && can_connect,
    }
}

struct Stack {
    _pg: TestPg,
    proxy: TestProxy,
    keys: Arc<Keys>,
}

async fn stack(settings: ProxySettings) -> Stack {
    testkit::init_tracing();
    let pg = TestPg::start().unwrap();
    let su = pg.superuser().await.unwrap();
    for p in ["shop", "blog"] {
        su.batch_execute(&format!("CREATE ROLE {p}_owner LOGIN")).await.unwrap();
        su.batch_execute(&format!("CREATE DATABASE {p} OWNER {p}_owner")).await.unwrap();
    }
    let db = |p: &str| {
        let mut d = route(p, &pg, p, &[(&format!("{p}_owner"), PASSWORD)], Limits::default());
        d.api_key_access = Some(KeyAccess {
            organization_id: "org_1".into(),
            project_id: format!("proj_{p}"),
            role: format!("{p}_owner"),
        });
        d
    };
    // A database of the TOML kind: no API-key access at all.
    let plain = route("plain", &pg, "shop", &[("shop_owner", PASSWORD)], Limits::default());
    let proxy = TestProxy::start(RouteTable::new([db("shop"), db("blog"), plain]), settings).await.unwrap();
    let keys = Arc::new(Keys::default());
    {
        let mut g = keys.grants.lock().unwrap();
        g.insert(SHOP_KEY.into(), grant(Some("proj_shop"), true));
        g.insert(ORG_KEY.into(), grant(None, true));
        g.insert(BLOG_KEY.into(), grant(Some("proj_blog"), true));
        g.insert(NO_SCOPE_KEY.into(), grant(Some("proj_shop"), false));
        g.insert(ORG_READER_KEY.into(), grant(None, false));
    }
    proxy.proxy.set_api_keys(keys.clone());
    Stack { _pg: pg, proxy, keys }
}

async fn one_value(c: &tokio_postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_project_key_logs_in_as_the_owner_on_both_ports_and_may_change_the_schema() {
    let s = stack(ProxySettings::default()).await;
    let (direct, _c) = s.proxy.connect("shop", "apikey", SHOP_KEY).await.unwrap();
    assert_eq!(one_value(&direct, "select current_user::text").await, "shop_owner");
    direct.batch_execute("create table t(i int); insert into t values (7)").await.unwrap();
    let (pooled, _c) = s.proxy.connect_pooled("shop", "apikey", SHOP_KEY).await.unwrap();
    assert_eq!(one_value(&pooled, "select i::text from t").await, "7");
    assert_eq!(one_value(&pooled, "select current_user::text").await, "shop_owner");
    // An organization key reaches every project of its organization.
    let (org, _c) = s.proxy.connect("blog", "apikey", ORG_KEY).await.unwrap();
    assert_eq!(one_value(&org, "select current_user::text").await, "blog_owner");
}

#[tokio::test]
async fn wrong_keys_of_every_kind_get_the_same_28000() {
    let s = stack(ProxySettings::default()).await;
    let mut messages = Vec::new();
    for (db, key) in [
        ("shop", "berth_live_unknown"),
        ("shop", BLOG_KEY),
        ("nosuchdb", SHOP_KEY),
        ("plain", SHOP_KEY),
        ("shop", ""),
    ] {
        let e = refused(s.proxy.connect(db, "apikey", key).await, &format!("{db} with {key:?}"));
        assert_eq!(sqlstate(&e), Some("28000"), "{db} with {key:?}: {e}");
        assert!(!message(&e).contains(key) || key.is_empty(), "the key is never echoed");
        messages.push(message(&e).to_owned());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "the refusals can be told apart: {messages:?}");
    // Nothing else was disturbed: a good key still works.
    let (c, _c) = s.proxy.connect("shop", "apikey", SHOP_KEY).await.unwrap();
    assert_eq!(one_value(&c, "select 1::text").await, "1");
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_and_open_sessions_stay() {
    let s = stack(ProxySettings::default()).await;
    let (open, _c) = s.proxy.connect("shop", "apikey", SHOP_KEY).await.unwrap();
    s.keys.grants.lock().unwrap().remove(SHOP_KEY);
    let e = refused(s.proxy.connect("shop", "apikey", SHOP_KEY).await, "revoked key");
    assert_eq!(sqlstate(&e), Some("28000"));
    let e = refused(s.proxy.connect_pooled("shop", "apikey", SHOP_KEY).await, "revoked key, pooled");
    assert_eq!(sqlstate(&e), Some("28000"));
    assert_eq!(one_value(&open, "select 'still here'").await, "still here");
}

#[tokio::test]
async fn a_key_without_the_connect_scope_is_refused_and_says_why() {
    let s = stack(ProxySettings::default()).await;
    let e = refused(s.proxy.connect("shop", "apikey", NO_SCOPE_KEY).await, "key without scope");
    assert_eq!(sqlstate(&e), Some("28000"));
    assert!(message(&e).contains("credentials:read"), "{e}");
}

#[tokio::test]
async fn api_key_logins_need_tls() {
    let s = stack(ProxySettings { require_tls: false, ..ProxySettings::default() }).await;
    let mut config = s.proxy.config("shop", "apikey", SHOP_KEY);
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let e = refused(config.connect(tokio_postgres::NoTls).await, "plaintext API-key login");
    assert_eq!(sqlstate(&e), Some("28000"));
    assert!(message(&e).contains("sslmode=require"), "{e}");
    // Password logins over plaintext still work where the operator allowed it.
    let mut config = s.proxy.config("shop", "shop_owner", PASSWORD);
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (c, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(one_value(&c, "select 1::text").await, "1");
}

#[tokio::test]
async fn an_unreachable_catalog_is_57p03_not_a_hang() {
    let s = stack(ProxySettings::default()).await;
    let e = within("login", s.proxy.connect("shop", "apikey", "berth_live_catalog_down")).await;
    let e = refused(e, "key check failing");
    assert_eq!(sqlstate(&e), Some("57P03"), "{e}");
}

#[tokio::test]
async fn the_admin_console_takes_organization_keys_with_the_admin_scope_only() {
    let s = stack(ProxySettings::default()).await;
    let (admin, _c) = s.proxy.connect("berth", "apikey", ORG_KEY).await.unwrap();
    let rows = admin.simple_query("SHOW DATABASES").await.unwrap();
    let rows: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get("name").unwrap_or_default().to_owned(),
                r.get("host").unwrap_or_default().to_owned(),
            )),
            _ => None,
        })
        .collect();
    assert!(rows.iter().any(|(n, _)| n == "shop"), "{rows:?}");
    // Upstreams on sockets (every managed instance) show no path.
    let socket_dir = s._pg.socket_dir().display().to_string();
    for (name, host) in &rows {
        assert!(host.is_empty() && !host.contains(&socket_dir), "{name}: host {host:?}");
    }
    let e = refused(s.proxy.connect("berth", "apikey", SHOP_KEY).await, "project key on the console");
    assert_eq!(sqlstate(&e), Some("28000"));
    let e = refused(s.proxy.connect("berth", "apikey", ORG_READER_KEY).await, "org key without admin");
    assert_eq!(sqlstate(&e), Some("28000"));
    assert!(e.as_db_error().is_some_and(|d| d.message().contains("admin scope")), "{e:?}");
}
