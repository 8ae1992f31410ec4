//! The control plane: the HTTP API (axum, OpenAPI 3.1 at `/v1/openapi.json`) with API-key
//! authentication, the job worker and its handlers, and the supervision of the machine's
//! PostgreSQL instances. It reads and writes the catalog and runs instances through `node`;
//! it never touches the proxy, which learns about projects from the route sync in the
//! binary.

#![forbid(unsafe_code)]

pub mod api;
mod auth;
pub mod error;
pub mod events;
pub mod handlers;
pub mod instances;
pub mod names;
pub mod reaper;
pub mod views;
pub mod worker;

use std::sync::Arc;

use catalog::{Catalog, MasterKey};

pub use api::router;
pub use events::JobEvents;
pub use instances::Instances;
pub use worker::{Handler, Worker, WorkerSettings};

/// Where clients reach projects: what connection strings point at.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Host name in connection strings (`localhost` verifies against the local CA).
    pub host: String,
    pub pooled_port: u16,
    pub direct_port: u16,
    /// The public host when it is a DNS name (`berth up --public-host`): registered
    /// databases' strings then name `<project>.<sni_host>` and the upstream's own database
    /// (DESIGN.md, Routing). `None` keeps their `db_…` names.
    pub sni_host: Option<String>,
}

/// Everything the API and the worker share.
pub struct Control {
    pub catalog: Catalog,
    pub master_key: MasterKey,
    pub endpoints: Endpoints,
    pub instances: Arc<Instances>,
    pub events: JobEvents,
    pub worker: WorkerSettings,
    /// Attempts a provisioning job gets.
    pub max_attempts: i32,
    /// Checks registered upstreams' credentials; set by the binary.
    pub upstream_probe: std::sync::OnceLock<Arc<dyn api::UpstreamProbe>>,
    /// Brings the proxy's routes up to date with the catalog; set by the binary. A branch or
    /// preview being removed leaves the routes through it before its instance stops, so its
    /// sessions hear why from the proxy rather than PostgreSQL's shutdown message.
    pub route_refresh: std::sync::OnceLock<Arc<dyn RouteRefresh>>,
    /// The local CA's certificate (PEM, never a key), served at `/v1/tls/ca.pem`; set by the
    /// binary only when the proxy's certificate is one that CA signed.
    pub local_ca_pem: std::sync::OnceLock<String>,
}

/// See [`Control::route_refresh`].
pub trait RouteRefresh: Send + Sync + 'static {
    fn refresh(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

impl Control {
    pub fn new(
        catalog: Catalog,
        master_key: MasterKey,
        endpoints: Endpoints,
        instances: Arc<Instances>,
        worker: WorkerSettings,
    ) -> Arc<Control> {
        Arc::new(Control {
            catalog,
            master_key,
            endpoints,
            instances,
            events: JobEvents::default(),
            worker,
            max_attempts: 3,
            upstream_probe: std::sync::OnceLock::new(),
            route_refresh: std::sync::OnceLock::new(),
            local_ca_pem: std::sync::OnceLock::new(),
        })
    }
}
