//! A control plane over a real catalog instance, served in-process (no socket): requests go
//! straight into the router. Instances it provisions live in a temporary data directory.

#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use catalog::{Catalog, MasterKey, NewApiKey, Scope};
use control::{Control, Endpoints, Instances, Worker, WorkerSettings};
use node::{InitOptions, PgBinaries};
use serde_json::Value;
use tempfile::TempDir;
use testkit::TestPg;
use tower::ServiceExt;

pub struct Harness {
    pub pg: TestPg,
    pub dir: TempDir,
    pub control: Arc<Control>,
    pub app: Router,
    pub org: String,
    /// An organization key with every scope.
    pub admin: String,
}

pub async fn harness() -> Harness {
    testkit::init_tracing();
    let pg = TestPg::start().unwrap();
    let catalog = Catalog::connect_socket(pg.socket_dir(), pg.port(), "postgres", "postgres").await.unwrap();
    catalog.migrate().await.unwrap();
    let dir = tempfile::Builder::new().prefix("berth-control-").tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let instances =
        Arc::new(Instances::new(PgBinaries::find().unwrap(), dir.path(), InitOptions::fast_unsafe()));
    let settings = WorkerSettings {
        lease: Duration::from_secs(10),
        heartbeat: Duration::from_secs(3),
        retry_base: Duration::from_millis(10),
        poll: Duration::from_millis(50),
    };
    let endpoints =
        Endpoints { host: "localhost".into(), pooled_port: 6432, direct_port: 6433, sni_host: None };
    let control = Control::new(catalog.clone(), MasterKey::generate(), endpoints, instances, settings);
    let org = catalog.create_organization("test").await.unwrap().id;
    let admin = key(&control, &org, None, &Scope::ALL).await;
    let app = control::router(Arc::clone(&control));
    Harness { pg, dir, control, app, org, admin }
}

/// A new key's plaintext.
pub async fn key(control: &Control, org: &str, project: Option<&str>, scopes: &[Scope]) -> String {
    let new = NewApiKey {
        organization_id: org.into(),
        project_id: project.map(str::to_owned),
        name: "test".into(),
        scopes: scopes.to_vec(),
    };
    control.catalog.create_api_key(&new).await.unwrap().1.expose().to_owned()
}

/// The instances go, and their OS users with them (when tests run as root each has one),
/// so a test leaves no user behind.
impl Drop for Harness {
    fn drop(&mut self) {
        self.control.instances.stop_all();
        if let Err(e) = node::remove_users_under(self.dir.path()) {
            eprintln!("could not remove the test's instance users: {e}");
        }
    }
}

impl Harness {
    /// Sends a request; returns the status and the JSON body (`Value::Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        self.call_with(method, path, key, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let (status, _, json) = self.call_full(method, path, key, body, headers).await;
        (status, json)
    }

    /// `call_with`, also returning the response headers.
    pub async fn call_full(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Body::from(body.unwrap_or_default().to_owned())).unwrap();
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (status, headers, json)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(&self.admin), None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&self.admin), Some(body)).await
    }

    /// Creates a project with the admin key; returns (project id, job id).
    pub async fn create_project(&self, name: &str) -> (String, String) {
        let (status, body) = self.post("/v1/projects", &format!(r#"{{"name":"{name}"}}"#)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (body["project"]["id"].as_str().unwrap().into(), body["job"]["id"].as_str().unwrap().into())
    }

    /// Runs the worker until no job is runnable.
    pub async fn drain_jobs(&self) {
        let worker = Worker::new(Arc::clone(&self.control), "test-worker");
        while worker.step().await.unwrap() {}
    }

    pub async fn job(&self, id: &str) -> catalog::Job {
        self.control.catalog.job(id).await.unwrap().unwrap()
    }
}

/// A session on a branch's instance over its private socket.
pub async fn connect(h: &Harness, branch_id: &str, user: &str, db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(h.control.instances.socket_dir(branch_id))
        .port(h.control.instances.port())
        .user(user)
        .dbname(db)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}
