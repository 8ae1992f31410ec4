//! What the proxy needs to route to projects, read in one query: every ready branch of every
//! ready project, with the project's limits, pool settings and roles' SCRAM verifiers (a
//! branch has its project's roles). The binary turns this into the proxy's route table;
//! nothing here knows the proxy's types.

use crate::{Catalog, CatalogError, ProjectLimits};

#[derive(Clone)]
pub struct RouteEntry {
    pub project_id: String,
    pub organization_id: String,
    pub project_name: String,
    /// The database name clients use: `<project>` for main, `<project>.<branch>` otherwise.
    pub database: String,
    /// The database's name inside the branch's instance (the project's name, on every branch).
    pub dbname: String,
    pub branch_id: String,
    pub limits: ProjectLimits,
    pub pool_config: serde_json::Value,
    pub roles: Vec<RouteRole>,
}

#[derive(Clone)]
pub struct RouteRole {
    pub name: String,
    /// `SCRAM-SHA-256$…` as in pg_authid.
    pub verifier: String,
    /// During a rotation, the verifier that will replace it (both are valid meanwhile).
    pub next_verifier: Option<String>,
}

impl std::fmt::Debug for RouteEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteEntry")
            .field("database", &self.database)
            .field("branch_id", &self.branch_id)
            .field("roles", &self.roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    project_id: String,
    organization_id: String,
    name: String,
    branch_id: String,
    branch_name: String,
    #[sqlx(flatten)]
    limits: ProjectLimits,
    pool_config: serde_json::Value,
    role_name: String,
    verifier: String,
    next_verifier: Option<String>,
}

/// The database name clients use for a branch (DESIGN.md, Routing).
pub fn branch_database(project: &str, branch: &str) -> String {
    if branch == crate::MAIN_BRANCH { project.to_owned() } else { format!("{project}.{branch}") }
}

impl Catalog {
    pub async fn route_snapshot(&self) -> Result<Vec<RouteEntry>, CatalogError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT p.id AS project_id, p.organization_id, p.name, b.id AS branch_id, b.name AS branch_name, \
             p.max_direct_connections, p.max_pooled_connections, p.query_timeout_ms, \
             p.transaction_timeout_ms, p.idle_timeout_ms, p.idle_in_transaction_timeout_ms, \
             p.pool_config, r.name AS role_name, r.verifier, r.next_verifier \
             FROM projects p JOIN branches b ON b.project_id = p.id AND b.state = 'ready' \
             JOIN roles r ON r.project_id = p.id WHERE p.state = 'ready' ORDER BY p.id, b.id, r.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut entries: Vec<RouteEntry> = Vec::new();
        for row in rows {
            let role =
                RouteRole { name: row.role_name, verifier: row.verifier, next_verifier: row.next_verifier };
            match entries.last_mut() {
                Some(last) if last.branch_id == row.branch_id => last.roles.push(role),
                _ => entries.push(RouteEntry {
                    project_id: row.project_id,
                    organization_id: row.organization_id,
                    project_name: row.name.clone(),
                    database: branch_database(&row.name, &row.branch_name),
                    dbname: row.name,
                    branch_id: row.branch_id,
                    limits: row.limits,
                    pool_config: row.pool_config,
                    roles: vec![role],
                }),
            }
        }
        Ok(entries)
    }
}
