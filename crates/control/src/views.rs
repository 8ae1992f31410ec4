//! What the API returns: the catalog's rows shaped for clients, with OpenAPI schemas. Nothing
//! secret is in a view except where the endpoint exists to show it (connection strings, a
//! new key's one-time plaintext).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A project: a database product with a default branch `main` and an owner role.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectView {
    /// `proj_…`
    pub id: String,
    pub name: String,
    pub organization_id: String,
    /// `provisioning`, `ready`, `failed` or `deleting`.
    pub state: String,
    pub default_branch: String,
    /// The login role that owns the project's database.
    pub owner_role: String,
    pub limits: Limits,
    pub pool_config: PoolConfig,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<catalog::Project> for ProjectView {
    fn from(p: catalog::Project) -> Self {
        ProjectView {
            owner_role: crate::names::owner_role(&p.name),
            id: p.id,
            name: p.name,
            organization_id: p.organization_id,
            state: p.state,
            default_branch: "main".into(),
            limits: Limits::from(&p.limits),
            pool_config: serde_json::from_value(p.pool_config).unwrap_or_default(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// Limits the proxy applies to the project; `null` means none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Client connections on the direct port.
    pub max_direct_connections: Option<i32>,
    /// Client connections on the pooled port.
    pub max_pooled_connections: Option<i32>,
    /// A statement running longer is cancelled (57014).
    pub query_timeout_ms: Option<i64>,
    /// A transaction open longer is ended (25P04).
    pub transaction_timeout_ms: Option<i64>,
    /// An idle client is disconnected after this long (57P05).
    pub idle_timeout_ms: Option<i64>,
    /// A client idle inside a transaction is disconnected after this long (25P03).
    pub idle_in_transaction_timeout_ms: Option<i64>,
}

impl From<&catalog::ProjectLimits> for Limits {
    fn from(l: &catalog::ProjectLimits) -> Self {
        Limits {
            max_direct_connections: l.max_direct_connections,
            max_pooled_connections: l.max_pooled_connections,
            query_timeout_ms: l.query_timeout_ms,
            transaction_timeout_ms: l.transaction_timeout_ms,
            idle_timeout_ms: l.idle_timeout_ms,
            idle_in_transaction_timeout_ms: l.idle_in_transaction_timeout_ms,
        }
    }
}

impl From<&Limits> for catalog::ProjectLimits {
    fn from(l: &Limits) -> Self {
        catalog::ProjectLimits {
            max_direct_connections: l.max_direct_connections,
            max_pooled_connections: l.max_pooled_connections,
            query_timeout_ms: l.query_timeout_ms,
            transaction_timeout_ms: l.transaction_timeout_ms,
            idle_timeout_ms: l.idle_timeout_ms,
            idle_in_transaction_timeout_ms: l.idle_in_transaction_timeout_ms,
        }
    }
}

/// Pooling on the pooled port, in PgBeam's shape; absent fields take the proxy's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_pool_size: Option<u32>,
    /// `transaction` (default) or `session`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<PoolMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_idle_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_lifetime_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    Transaction,
    Session,
}

/// A durable unit of control-plane work, with every field of CapyDB's job object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    /// `job_…`
    pub id: String,
    /// `provision_project`, `delete_project`, `rotate_credentials`, `create_branch`,
    /// `reset_branch`, `delete_branch`
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub claimed_at: Option<DateTime<Utc>>,
    pub claimed_by: Option<String>,
    /// The branch (instance) the job works on.
    pub cluster_id: Option<String>,
    pub locked_resource: Option<String>,
    /// `transient` or `permanent`, after a failed attempt.
    pub retry_classification: Option<String>,
    pub last_exit_code: Option<i32>,
    pub last_stdout: Option<String>,
    pub last_stderr: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub organization_id: String,
    pub project_id: Option<String>,
    pub preview_database_id: Option<String>,
    /// Bytes done so far by a job that copies data (a `full` branch), of `progress_bytes_total`.
    pub progress_bytes_done: Option<i64>,
    pub progress_bytes_total: Option<i64>,
}

impl From<catalog::Job> for JobView {
    fn from(j: catalog::Job) -> Self {
        JobView {
            id: j.id,
            kind: j.kind,
            state: j.state,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            claimed_at: j.claimed_at,
            claimed_by: j.claimed_by,
            cluster_id: j.cluster_id,
            locked_resource: j.locked_resource,
            retry_classification: j.retry_classification,
            last_exit_code: j.last_exit_code,
            last_stdout: j.last_stdout,
            last_stderr: j.last_stderr,
            error: j.error,
            created_at: j.created_at,
            started_at: j.started_at,
            completed_at: j.completed_at,
            updated_at: j.updated_at,
            organization_id: j.organization_id,
            project_id: j.project_id,
            preview_database_id: j.preview_database_id,
            progress_bytes_done: j.progress_bytes_done,
            progress_bytes_total: j.progress_bytes_total,
        }
    }
}

/// An API key as listed (never the key itself).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    /// `key_…`
    pub id: String,
    pub name: String,
    pub organization_id: String,
    /// Set for a project-scoped key.
    pub project_id: Option<String>,
    pub scopes: Vec<String>,
    /// The first characters of the key, to tell keys apart.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<catalog::ApiKey> for KeyView {
    fn from(k: catalog::ApiKey) -> Self {
        KeyView {
            id: k.id,
            name: k.name,
            organization_id: k.organization_id,
            project_id: k.project_id,
            scopes: k.scopes,
            prefix: k.key_prefix,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}
