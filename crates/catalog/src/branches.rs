//! Branches of a project beyond `main`: made from a parent branch with all its data, its
//! schema only, or nothing, each with its own instance. Preview databases are branches too
//! (kind `preview`, id `prev_…`) with an expiry, made from a branch (never from a preview),
//! listed apart and reaped when they expire. Creating, resetting and deleting a
//! branch are jobs on the project (one at a time per project, like every job on it); each
//! inserts its branch change and its job in one transaction, after checking under the
//! project's advisory lock that no other job holds the project. A branch being deleted is
//! invisible and gives its name back at once.

use crate::error::CatalogError;
use crate::jobs::{Job, NewJob};
use crate::page::Page;
use crate::projects::Branch;
use crate::{Catalog, ids};

/// The states of a branch.
pub mod branch_state {
    pub const CREATING: &str = "creating";
    pub const READY: &str = "ready";
    pub const FAILED: &str = "failed";
    pub const DELETING: &str = "deleting";
}

/// What a branch row is.
pub mod branch_kind {
    pub const BRANCH: &str = "branch";
    pub const PREVIEW: &str = "preview";
}

/// The default branch every project has; it cannot be deleted or reset.
pub const MAIN_BRANCH: &str = "main";

/// A branch to make; its id is made here.
#[derive(Debug, Clone)]
pub struct NewBranch {
    pub project_id: String,
    /// `None` for a preview: it is named by its id.
    pub name: Option<String>,
    /// The parent's id or name (a branch, not a preview).
    pub parent: String,
    /// `full`, `schema` or `empty`.
    pub data: String,
    /// Set for a preview: how long it lives.
    pub ttl: Option<std::time::Duration>,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum CreateBranch {
    Created {
        branch: Branch,
        job: Job,
    },
    NameTaken,
    ParentNotFound,
    /// The parent exists but has no running instance to copy (its state).
    ParentNotReady(String),
    /// Another job on the project is pending or running.
    Blocked(Job),
}

/// What became of a delete or reset request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum BranchJob {
    Started {
        branch: Branch,
        job: Job,
    },
    NotFound,
    /// `main` is the project itself: delete the project instead.
    IsMain,
    /// Delete only: these branches were made from it and must go first.
    HasChildren(Vec<String>),
    /// Reset only: the branch is not ready (its state).
    NotReady(String),
    Blocked(Job),
}

const VISIBLE: &str =
    "project_id = $1 AND state <> 'deleting' AND (id = $2 OR name = $2) AND ($3::text IS NULL OR kind = $3)";

/// Takes the project's advisory lock for this transaction and returns the job holding the
/// project, if any (the same lock `enqueue_job` takes, so the two cannot both see it free).
async fn blocking_job(conn: &mut sqlx::PgConnection, project_id: &str) -> Result<Option<Job>, CatalogError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(project_id).execute(&mut *conn).await?;
    crate::jobs::active_on(conn, project_id).await
}

async fn visible(
    conn: &mut sqlx::PgConnection,
    project_id: &str,
    kind: Option<&str>,
    id_or_name: &str,
) -> Result<Option<Branch>, CatalogError> {
    Ok(sqlx::query_as(&format!(
        "SELECT * FROM branches WHERE {VISIBLE} ORDER BY id = $2 DESC LIMIT 1 FOR UPDATE"
    ))
    .bind(project_id)
    .bind(id_or_name)
    .bind(kind)
    .fetch_optional(conn)
    .await?)
}

impl Catalog {
    /// Inserts a `creating` branch and `job(branch)`, unless the name is taken, the parent is
    /// missing or not ready, or another job holds the project.
    pub async fn create_branch(
        &self,
        new: &NewBranch,
        job: impl FnOnce(&Branch) -> NewJob,
    ) -> Result<CreateBranch, CatalogError> {
        let mut tx = self.pool.begin().await?;
        // The advisory lock comes before any row lock, in every operation here.
        let blocking = blocking_job(&mut tx, &new.project_id).await?;
        let Some(parent) = visible(&mut tx, &new.project_id, Some(branch_kind::BRANCH), &new.parent).await?
        else {
            return Ok(CreateBranch::ParentNotFound);
        };
        if let Some(blocking) = blocking {
            return Ok(CreateBranch::Blocked(blocking));
        }
        if parent.state != branch_state::READY {
            return Ok(CreateBranch::ParentNotReady(parent.state));
        }
        let (id, kind) = match new.ttl {
            Some(_) => (ids::generate(ids::PREVIEW), branch_kind::PREVIEW),
            None => (ids::generate(ids::BRANCH), branch_kind::BRANCH),
        };
        let inserted = sqlx::query_as(
            "INSERT INTO branches (id, project_id, name, parent_id, data, state, kind, expires_at) \
             VALUES ($1, $2, $3, $4, $5, 'creating', $6, now() + make_interval(secs => $7)) RETURNING *",
        )
        .bind(&id)
        .bind(&new.project_id)
        .bind(new.name.as_deref().unwrap_or(&id))
        .bind(&parent.id)
        .bind(&new.data)
        .bind(kind)
        .bind(new.ttl.map(|t| t.as_secs_f64()))
        .fetch_one(&mut *tx)
        .await;
        let branch: Branch = match inserted {
            Ok(b) => b,
            Err(e) if CatalogError::is_unique_violation(&e, "branches_name_in_project") => {
                return Ok(CreateBranch::NameTaken);
            }
            Err(e) => return Err(e.into()),
        };
        let job = crate::jobs::insert(&mut tx, &job(&branch)).await?;
        tx.commit().await?;
        Ok(CreateBranch::Created { branch, job })
    }

    /// A visible branch or preview of the project by id or name (`kind`: only that kind).
    pub async fn find_branch(
        &self,
        project_id: &str,
        kind: Option<&str>,
        id_or_name: &str,
    ) -> Result<Option<Branch>, CatalogError> {
        Ok(sqlx::query_as(&format!("SELECT * FROM branches WHERE {VISIBLE} ORDER BY id = $2 DESC LIMIT 1"))
            .bind(project_id)
            .bind(id_or_name)
            .bind(kind)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Previews whose time is up and that are not being deleted yet.
    pub async fn expired_previews(&self) -> Result<Vec<Branch>, CatalogError> {
        Ok(sqlx::query_as(
            "SELECT * FROM branches WHERE kind = 'preview' AND state <> 'deleting' AND expires_at <= now() \
             ORDER BY expires_at",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// A branch by id whatever its state (for job handlers).
    pub async fn branch(&self, id: &str) -> Result<Option<Branch>, CatalogError> {
        Ok(sqlx::query_as("SELECT * FROM branches WHERE id = $1").bind(id).fetch_optional(&self.pool).await?)
    }

    /// Visible branches (or previews) of a project, oldest first (`main` is the first branch).
    pub async fn list_branches(
        &self,
        project_id: &str,
        kind: &str,
        page: &Page,
    ) -> Result<Vec<Branch>, CatalogError> {
        Ok(sqlx::query_as(
            "SELECT * FROM branches WHERE project_id = $1 AND kind = $4 AND state <> 'deleting' AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(project_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.limit_plus_one())
        .bind(kind)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks a branch `deleting` and enqueues `job(branch)`, unless it is `main`, has
    /// branches made from it, or another job holds the project.
    pub async fn delete_branch(
        &self,
        project_id: &str,
        kind: &str,
        id_or_name: &str,
        job: impl FnOnce(&Branch) -> NewJob,
    ) -> Result<BranchJob, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let blocking = blocking_job(&mut tx, project_id).await?;
        let Some(branch) = visible(&mut tx, project_id, Some(kind), id_or_name).await? else {
            return Ok(BranchJob::NotFound);
        };
        if branch.name == MAIN_BRANCH {
            return Ok(BranchJob::IsMain);
        }
        if let Some(blocking) = blocking {
            return Ok(BranchJob::Blocked(blocking));
        }
        let children: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM branches WHERE parent_id = $1 AND state <> 'deleting' ORDER BY id",
        )
        .bind(&branch.id)
        .fetch_all(&mut *tx)
        .await?;
        if !children.is_empty() {
            return Ok(BranchJob::HasChildren(children.into_iter().map(|(n,)| n).collect()));
        }
        let branch: Branch = sqlx::query_as(
            "UPDATE branches SET state = 'deleting', updated_at = now() WHERE id = $1 RETURNING *",
        )
        .bind(&branch.id)
        .fetch_one(&mut *tx)
        .await?;
        let job = crate::jobs::insert(&mut tx, &job(&branch)).await?;
        tx.commit().await?;
        Ok(BranchJob::Started { branch, job })
    }

    /// Enqueues `job(branch)` to bring a ready branch back to its parent's current state.
    pub async fn reset_branch(
        &self,
        project_id: &str,
        id_or_name: &str,
        job: impl FnOnce(&Branch) -> NewJob,
    ) -> Result<BranchJob, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let blocking = blocking_job(&mut tx, project_id).await?;
        let Some(branch) = visible(&mut tx, project_id, Some(branch_kind::BRANCH), id_or_name).await? else {
            return Ok(BranchJob::NotFound);
        };
        if branch.name == MAIN_BRANCH || branch.parent_id.is_none() {
            return Ok(BranchJob::IsMain);
        }
        if let Some(blocking) = blocking {
            return Ok(BranchJob::Blocked(blocking));
        }
        if branch.state != branch_state::READY {
            return Ok(BranchJob::NotReady(branch.state));
        }
        let job = crate::jobs::insert(&mut tx, &job(&branch)).await?;
        tx.commit().await?;
        Ok(BranchJob::Started { branch, job })
    }

    pub async fn set_branch_state(&self, id: &str, state: &str) -> Result<(), CatalogError> {
        sqlx::query("UPDATE branches SET state = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(state)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes a branch row (its instance is the caller's to remove first).
    pub async fn purge_branch(&self, id: &str) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM branches WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Records how far a running attempt got (bytes done of total); ignored when the
    /// attempt no longer holds the job.
    pub async fn report_job_progress(
        &self,
        job_id: &str,
        attempt: i32,
        done: u64,
        total: u64,
    ) -> Result<(), CatalogError> {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE jobs SET progress_bytes_done = $3, progress_bytes_total = $4, updated_at = now() \
             WHERE id = $1 AND attempts = $2 AND state = 'running'",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(as_i64(done))
        .bind(as_i64(total))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
