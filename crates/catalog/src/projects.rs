//! Projects with their `main` branch and owner role. A project is created together with its
//! provisioning job in one transaction, so there is never a project without a job or a job
//! for a project that does not exist. A project in state `deleting` is invisible to lookups
//! and gives its name back at once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Catalog;
use crate::error::CatalogError;
use crate::jobs::{Job, NewJob};
use crate::page::Page;

/// The states of a project.
pub mod state {
    pub const PROVISIONING: &str = "provisioning";
    pub const READY: &str = "ready";
    pub const FAILED: &str = "failed";
    pub const DELETING: &str = "deleting";
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Project {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    /// `provisioning`, `ready`, `failed` or `deleting`.
    pub state: String,
    #[sqlx(flatten)]
    pub limits: ProjectLimits,
    pub pool_config: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Per-project limits the proxy applies; `None` means no limit of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ProjectLimits {
    pub max_direct_connections: Option<i32>,
    pub max_pooled_connections: Option<i32>,
    pub query_timeout_ms: Option<i64>,
    pub transaction_timeout_ms: Option<i64>,
    pub idle_timeout_ms: Option<i64>,
    pub idle_in_transaction_timeout_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Branch {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The branch it was made from; `None` for `main`.
    pub parent_id: Option<String>,
    /// `full`, `schema` or `empty`: what it was made with (and what a reset repeats).
    pub data: String,
    /// `creating`, `ready`, `failed` or `deleting`.
    pub state: String,
    pub updated_at: DateTime<Utc>,
    /// `branch`, or `preview` (a branch with a time to live, id `prev_…`).
    pub kind: String,
    /// When a preview is reaped.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Clone, sqlx::FromRow)]
pub struct ProjectRole {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub password_ciphertext: Vec<u8>,
    pub verifier: String,
    pub created_at: DateTime<Utc>,
    /// Set while a rotation runs: the password and verifier that will replace these.
    pub next_password_ciphertext: Option<Vec<u8>>,
    pub next_verifier: Option<String>,
    /// A finished rotation whose old verifier the proxy still accepts until then.
    pub grace_until: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for ProjectRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectRole").field("id", &self.id).field("name", &self.name).finish_non_exhaustive()
    }
}

/// Everything a new project starts with; ids are made by the caller, which also seals the
/// password (the role id is its encryption context).
#[derive(Debug, Clone)]
pub struct NewProject {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub limits: ProjectLimits,
    pub pool_config: serde_json::Value,
    pub branch_id: String,
    pub role: NewRole,
}

#[derive(Clone)]
pub struct NewRole {
    pub id: String,
    pub name: String,
    pub password_ciphertext: Vec<u8>,
    pub verifier: String,
}

impl std::fmt::Debug for NewRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRole").field("id", &self.id).field("name", &self.name).finish_non_exhaustive()
    }
}

// Returned once per request and matched at once; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum CreateProject {
    Created { project: Project, branch: Branch, job: Job },
    NameTaken,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum DeleteProject {
    Started {
        project: Project,
        job: Job,
    },
    NotFound,
    /// Another job on the project is pending or running.
    Blocked(Job),
}

/// Restricts lookups to one organization and, for project-scoped keys, one project.
const VISIBLE: &str = "organization_id = $1 AND ($2::text IS NULL OR id = $2) AND state <> 'deleting'";

/// The assignments that make a role's next password and verifier its only ones.
const FINISH: &str = "password_ciphertext = next_password_ciphertext, verifier = next_verifier, \
                      next_password_ciphertext = NULL, next_verifier = NULL, grace_until = NULL";

impl Catalog {
    pub async fn create_project(
        &self,
        new: &NewProject,
        job: &NewJob,
    ) -> Result<CreateProject, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query_as(
            "INSERT INTO projects (id, organization_id, name, state, max_direct_connections, \
             max_pooled_connections, query_timeout_ms, transaction_timeout_ms, idle_timeout_ms, \
             idle_in_transaction_timeout_ms, pool_config) \
             VALUES ($1, $2, $3, 'provisioning', $4, $5, $6, $7, $8, $9, $10) RETURNING *",
        )
        .bind(&new.id)
        .bind(&new.organization_id)
        .bind(&new.name)
        .bind(new.limits.max_direct_connections)
        .bind(new.limits.max_pooled_connections)
        .bind(new.limits.query_timeout_ms)
        .bind(new.limits.transaction_timeout_ms)
        .bind(new.limits.idle_timeout_ms)
        .bind(new.limits.idle_in_transaction_timeout_ms)
        .bind(&new.pool_config)
        .fetch_one(&mut *tx)
        .await;
        let project: Project = match inserted {
            Ok(p) => p,
            Err(e) if CatalogError::is_unique_violation(&e, "projects_name_in_org") => {
                return Ok(CreateProject::NameTaken);
            }
            Err(e) => return Err(e.into()),
        };
        let branch: Branch =
            sqlx::query_as("INSERT INTO branches (id, project_id, name) VALUES ($1, $2, 'main') RETURNING *")
                .bind(&new.branch_id)
                .bind(&new.id)
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO roles (id, project_id, name, password_ciphertext, verifier) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&new.role.id)
        .bind(&new.id)
        .bind(&new.role.name)
        .bind(&new.role.password_ciphertext)
        .bind(&new.role.verifier)
        .execute(&mut *tx)
        .await?;
        let job = crate::jobs::insert(&mut tx, job).await?;
        tx.commit().await?;
        Ok(CreateProject::Created { project, branch, job })
    }

    /// A visible project by id or name (`scope`: the only project a project key may see).
    pub async fn find_project(
        &self,
        organization_id: &str,
        scope: Option<&str>,
        id_or_name: &str,
    ) -> Result<Option<Project>, CatalogError> {
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM projects WHERE {VISIBLE} AND (id = $3 OR name = $3) ORDER BY id = $3 DESC LIMIT 1"
        ))
        .bind(organization_id)
        .bind(scope)
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn list_projects(
        &self,
        organization_id: &str,
        scope: Option<&str>,
        page: &Page,
    ) -> Result<Vec<Project>, CatalogError> {
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM projects WHERE {VISIBLE} AND id > $3 ORDER BY id LIMIT $4"
        ))
        .bind(organization_id)
        .bind(scope)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.limit_plus_one())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replaces the limits and pool settings of a visible project.
    pub async fn update_project_settings(
        &self,
        project_id: &str,
        limits: &ProjectLimits,
        pool_config: &serde_json::Value,
    ) -> Result<Option<Project>, CatalogError> {
        Ok(sqlx::query_as(
            "UPDATE projects SET max_direct_connections = $2, max_pooled_connections = $3, \
             query_timeout_ms = $4, transaction_timeout_ms = $5, idle_timeout_ms = $6, \
             idle_in_transaction_timeout_ms = $7, pool_config = $8, updated_at = now() \
             WHERE id = $1 AND state <> 'deleting' RETURNING *",
        )
        .bind(project_id)
        .bind(limits.max_direct_connections)
        .bind(limits.max_pooled_connections)
        .bind(limits.query_timeout_ms)
        .bind(limits.transaction_timeout_ms)
        .bind(limits.idle_timeout_ms)
        .bind(limits.idle_in_transaction_timeout_ms)
        .bind(pool_config)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Marks a visible project `deleting` and enqueues `job(project)`, unless a job on the
    /// project is pending or running.
    pub async fn delete_project(
        &self,
        organization_id: &str,
        scope: Option<&str>,
        id_or_name: &str,
        job: impl FnOnce(&Project) -> NewJob,
    ) -> Result<DeleteProject, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let project: Option<Project> = sqlx::query_as(&format!(
            "SELECT * FROM projects WHERE {VISIBLE} AND (id = $3 OR name = $3) \
             ORDER BY id = $3 DESC LIMIT 1 FOR UPDATE"
        ))
        .bind(organization_id)
        .bind(scope)
        .bind(id_or_name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(project) = project else { return Ok(DeleteProject::NotFound) };
        if let Some(blocking) = crate::jobs::active_on(&mut tx, &project.id).await? {
            return Ok(DeleteProject::Blocked(blocking));
        }
        let project: Project = sqlx::query_as(
            "UPDATE projects SET state = 'deleting', updated_at = now() WHERE id = $1 RETURNING *",
        )
        .bind(&project.id)
        .fetch_one(&mut *tx)
        .await?;
        let job = crate::jobs::insert(&mut tx, &job(&project)).await?;
        tx.commit().await?;
        Ok(DeleteProject::Started { project, job })
    }

    /// A project by id whatever its state (for job handlers).
    pub async fn project(&self, id: &str) -> Result<Option<Project>, CatalogError> {
        Ok(sqlx::query_as("SELECT * FROM projects WHERE id = $1").bind(id).fetch_optional(&self.pool).await?)
    }

    pub async fn set_project_state(&self, id: &str, state: &str) -> Result<(), CatalogError> {
        sqlx::query("UPDATE projects SET state = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(state)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes the project and everything hanging off it (branches, roles, its keys).
    pub async fn purge_project(&self, id: &str) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM projects WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn branches(&self, project_id: &str) -> Result<Vec<Branch>, CatalogError> {
        Ok(sqlx::query_as("SELECT * FROM branches WHERE project_id = $1 ORDER BY id")
            .bind(project_id)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn roles(&self, project_id: &str) -> Result<Vec<ProjectRole>, CatalogError> {
        Ok(sqlx::query_as("SELECT * FROM roles WHERE project_id = $1 ORDER BY id")
            .bind(project_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Starts a rotation: records the next password and verifier, unless a rotation of the
    /// role is already under way (then that one is kept). Returns the role as it is now.
    pub async fn begin_rotation(
        &self,
        role_id: &str,
        next_password_ciphertext: &[u8],
        next_verifier: &str,
    ) -> Result<ProjectRole, CatalogError> {
        // A rotation still in its grace period ends now: its password is the current one.
        sqlx::query(&format!("UPDATE roles SET {FINISH} WHERE id = $1 AND grace_until IS NOT NULL"))
            .bind(role_id)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "UPDATE roles SET next_password_ciphertext = $2, next_verifier = $3 \
             WHERE id = $1 AND next_verifier IS NULL",
        )
        .bind(role_id)
        .bind(next_password_ciphertext)
        .bind(next_verifier)
        .execute(&self.pool)
        .await?;
        Ok(sqlx::query_as("SELECT * FROM roles WHERE id = $1").bind(role_id).fetch_one(&self.pool).await?)
    }

    /// Ends a rotation: the next password and verifier become the only ones. False when the
    /// role has no rotation under way (a failed one's clean-up abandoned it meanwhile).
    pub async fn finish_rotation(&self, role_id: &str) -> Result<bool, CatalogError> {
        let done =
            sqlx::query(&format!("UPDATE roles SET {FINISH} WHERE id = $1 AND next_verifier IS NOT NULL"))
                .bind(role_id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Abandons a rotation that failed for good: the next password and verifier are dropped,
    /// so only the current one stays valid. A rotation already in its grace period finished
    /// and is left alone. Returns whether there was one to abandon.
    pub async fn abandon_rotation(&self, role_id: &str) -> Result<bool, CatalogError> {
        let done = sqlx::query(
            "UPDATE roles SET next_password_ciphertext = NULL, next_verifier = NULL \
             WHERE id = $1 AND next_verifier IS NOT NULL AND grace_until IS NULL",
        )
        .bind(role_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Ends a rotation after `grace`: both verifiers stay valid until then (zero ends it now).
    /// False when the role has no rotation under way, as [`Catalog::finish_rotation`].
    pub async fn finish_rotation_after(
        &self,
        role_id: &str,
        grace: std::time::Duration,
    ) -> Result<bool, CatalogError> {
        if grace.is_zero() {
            return self.finish_rotation(role_id).await;
        }
        let done = sqlx::query(
            "UPDATE roles SET grace_until = now() + make_interval(secs => $2) \
             WHERE id = $1 AND next_verifier IS NOT NULL",
        )
        .bind(role_id)
        .bind(grace.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Finishes the rotations whose grace period is over; returns how many.
    pub async fn finish_expired_graces(&self) -> Result<u64, CatalogError> {
        let done = sqlx::query(&format!(
            "UPDATE roles SET {FINISH} WHERE grace_until <= now() AND next_verifier IS NOT NULL"
        ))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Branches whose instances should be running: the ready branches of ready projects.
    pub async fn branches_to_run(&self) -> Result<Vec<Branch>, CatalogError> {
        Ok(sqlx::query_as(
            "SELECT b.* FROM branches b JOIN projects p ON p.id = b.project_id \
             WHERE p.state = 'ready' AND b.state = 'ready' ORDER BY b.id",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
