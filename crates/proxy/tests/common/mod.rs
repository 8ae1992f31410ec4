//! Fixtures shared by the proxy's integration tests: one instance with a role `alice`
//! owning database `app`, routed as `app` through a proxy on port 0.

#![allow(dead_code)]

use proxy::{Limits, ProxySettings, RouteTable};
use testkit::{TestPg, TestProxy, route};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Stack {
    pub pg: TestPg,
    pub proxy: TestProxy,
}

pub async fn stack_with(limits: Limits, settings: ProxySettings) -> Stack {
    testkit::init_tracing();
    let pg = TestPg::start().expect("test instance");
    pg.create_role_and_db("alice").await.expect("role");
    pg.superuser()
        .await
        .expect("superuser")
        .batch_execute("CREATE DATABASE app OWNER alice")
        .await
        .expect("database app");
    let routes = RouteTable::new([route("app", &pg, "app", &[("alice", PASSWORD)], limits)]);
    let proxy = TestProxy::start(routes, settings).await.expect("proxy");
    Stack { pg, proxy }
}

pub async fn stack() -> Stack {
    stack_with(Limits::default(), ProxySettings::default()).await
}

impl Stack {
    pub async fn alice(&self) -> tokio_postgres::Client {
        let (client, _conn) = self.proxy.connect("app", "alice", PASSWORD).await.expect("connect as alice");
        client
    }
}
