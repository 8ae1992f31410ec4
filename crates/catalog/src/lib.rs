//! The control plane's store: the catalog schema and its embedded migrations, typed queries
//! over organizations, API keys, projects, branches, roles, jobs and idempotency records, and
//! the secrets that live in it (role passwords sealed under the master key, API keys kept as
//! hashes). It knows nothing about HTTP, processes or the proxy; callers decide policy (who
//! may do what, how long to back off) and this crate makes each change atomic.

#![forbid(unsafe_code)]

mod branches;
mod error;
mod idempotency;
pub mod ids;
mod jobs;
mod keys;
mod orgs;
mod page;
mod projects;
mod registered;
mod routes;
mod secret;

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use branches::{BranchJob, CreateBranch, MAIN_BRANCH, NewBranch, branch_kind, branch_state};
pub use error::CatalogError;
pub use idempotency::{Idempotency, IdempotencyScope, StoredResponse};
pub use jobs::state as job_state;
pub use jobs::{Failure, Fenced, Job, NewJob, RetryClassification};
pub use keys::{ApiKey, KEY_PREFIX, NewApiKey, Scope};
pub use orgs::{FirstOrganization, Organization};
pub use page::Page;
pub use projects::state as project_state;
pub use projects::{
    Branch, CreateProject, DeleteProject, NewProject, NewRole, Project, ProjectLimits, ProjectRole,
};
pub use registered::{RegisteredDatabase, RegisteredRoute, RegisteredUpdate};
pub use routes::{RouteEntry, RouteRole, branch_database};
pub use secret::{MasterKey, Secret};

/// Channel notified whenever what the proxy routes to may have changed.
pub const ROUTES_CHANNEL: &str = "berth_routes";
/// Channel notified with a job id whenever a job is inserted or changes.
pub const JOBS_CHANNEL: &str = "berth_jobs";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A handle on the catalog database (a connection pool; cheap to clone).
#[derive(Clone, Debug)]
pub struct Catalog {
    pool: PgPool,
}

impl Catalog {
    /// Connects with options built by the caller (e.g. a unix socket of a local instance).
    pub async fn connect_with(options: PgConnectOptions) -> Result<Catalog, CatalogError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Catalog { pool })
    }

    /// Connects over a unix socket in `dir` (a local instance: trust authentication).
    pub async fn connect_socket(
        dir: &std::path::Path,
        port: u16,
        user: &str,
        database: &str,
    ) -> Result<Catalog, CatalogError> {
        Self::connect_with(PgConnectOptions::new().socket(dir).port(port).username(user).database(database))
            .await
    }

    /// Connects to a `postgresql://` URL. The URL may hold a password: errors never quote it.
    pub async fn connect(url: &Secret) -> Result<Catalog, CatalogError> {
        let options = PgConnectOptions::from_str(url.expose()).map_err(|_| CatalogError::InvalidUrl)?;
        Self::connect_with(options).await
    }

    /// Brings the schema up to date (idempotent; safe with several processes starting).
    pub async fn migrate(&self) -> Result<(), CatalogError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The connection pool, for listeners (LISTEN/NOTIFY) and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
