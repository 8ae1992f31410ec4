//! `berth databases register|list|get|update|delete`: upstreams registered with a project
//! (PgBeam style), served through Berth's proxy as database `db_…`. The password is read
//! from `--password-file` or `BERTH_UPSTREAM_PASSWORD`, never from the command line.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use super::api::Api;
use super::output::{self, cell, table};
use super::{ClientOpts, all_pages};

#[derive(Args)]
pub struct DatabasesArgs {
    #[command(subcommand)]
    command: DatabasesCommand,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Primary,
    Replica,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Transaction,
    Session,
}

/// Pool and cache settings; only those given are sent.
#[derive(Args)]
struct Settings {
    #[arg(long)]
    pool_size: Option<u32>,
    #[arg(long)]
    min_pool_size: Option<u32>,
    #[arg(long, value_enum)]
    pool_mode: Option<Mode>,
    #[arg(long)]
    max_active: Option<u32>,
    /// Turn the result cache on or off (stored now; served by a later release).
    #[arg(long)]
    cache: Option<bool>,
    #[arg(long)]
    cache_ttl_seconds: Option<u32>,
    #[arg(long)]
    cache_max_entries: Option<u32>,
    #[arg(long)]
    cache_swr_seconds: Option<u32>,
}

impl Settings {
    fn pool(&self) -> Option<Value> {
        let mut m = Map::new();
        if let Some(v) = self.pool_size {
            m.insert("pool_size".into(), v.into());
        }
        if let Some(v) = self.min_pool_size {
            m.insert("min_pool_size".into(), v.into());
        }
        if let Some(v) = self.pool_mode {
            m.insert(
                "pool_mode".into(),
                if matches!(v, Mode::Session) { "session" } else { "transaction" }.into(),
            );
        }
        if let Some(v) = self.max_active {
            m.insert("max_active".into(), v.into());
        }
        (!m.is_empty()).then_some(Value::Object(m))
    }

    fn cache(&self) -> Option<Value> {
        if self.cache.is_none()
            && self.cache_ttl_seconds.is_none()
            && self.cache_max_entries.is_none()
            && self.cache_swr_seconds.is_none()
        {
            return None;
        }
        Some(json!({
            "enabled": self.cache.unwrap_or(false),
            "ttl_seconds": self.cache_ttl_seconds.unwrap_or(0),
            "max_entries": self.cache_max_entries.unwrap_or(0),
            "swr_seconds": self.cache_swr_seconds.unwrap_or(0),
        }))
    }
}

#[derive(Subcommand)]
enum DatabasesCommand {
    /// Register an upstream; Berth checks that it accepts the credentials.
    Register {
        project: String,
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 5432)]
        port: u16,
        /// The database name on the upstream.
        #[arg(long)]
        name: String,
        #[arg(long)]
        username: String,
        /// A file holding the password (else BERTH_UPSTREAM_PASSWORD).
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
        #[arg(long, default_value = "require")]
        ssl_mode: String,
        #[arg(long, value_enum, default_value = "primary")]
        role: Role,
        #[arg(long, default_value = "")]
        pool_region: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// List a project's registered databases.
    List { project: String },
    /// Show one registered database.
    Get { project: String, id: String },
    /// Change pool or cache settings (applied live).
    Update {
        project: String,
        id: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Stop serving a registered database (the upstream is not touched).
    Delete { project: String, id: String },
}

fn rows(dbs: &[Value]) {
    let rows: Vec<Vec<String>> = dbs
        .iter()
        .map(|d| {
            vec![
                cell(&d["id"]),
                format!("{}:{}/{}", cell(&d["host"]), cell(&d["port"]), cell(&d["name"])),
                cell(&d["username"]),
                cell(&d["role"]),
                cell(&d["connection_string"]),
            ]
        })
        .collect();
    table(&["ID", "UPSTREAM", "USERNAME", "ROLE", "CONNECTION"], &rows);
}

fn password(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    match file {
        Some(p) => Ok(std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?
            .trim_end_matches('\n')
            .to_owned()),
        None => std::env::var("BERTH_UPSTREAM_PASSWORD").map_err(|_| {
            anyhow::anyhow!("give the password with --password-file or BERTH_UPSTREAM_PASSWORD")
        }),
    }
}

pub fn databases(args: DatabasesArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.opts)?;
    let show = |d: &Value| if args.opts.json { output::json(d) } else { rows(std::slice::from_ref(d)) };
    match args.command {
        DatabasesCommand::Register {
            project,
            host,
            port,
            name,
            username,
            password_file,
            ssl_mode,
            role,
            pool_region,
            settings,
        } => {
            let mut body = json!({
                "host": host, "port": port, "name": name, "username": username,
                "password": password(password_file.as_deref())?, "ssl_mode": ssl_mode,
                "role": if matches!(role, Role::Replica) { "replica" } else { "primary" },
                "pool_region": pool_region,
            });
            if let Some(p) = settings.pool() {
                body["pool_config"] = p;
            }
            if let Some(c) = settings.cache() {
                body["cache_config"] = c;
            }
            show(&api.post(&format!("/v1/projects/{project}/databases"), &body)?);
        }
        DatabasesCommand::List { project } => {
            let dbs = all_pages(&api, &format!("/v1/projects/{project}/databases"), "databases")?;
            if args.opts.json { output::json(&Value::Array(dbs)) } else { rows(&dbs) }
        }
        DatabasesCommand::Get { project, id } => {
            show(&api.get(&format!("/v1/projects/{project}/databases/{id}"))?)
        }
        DatabasesCommand::Update { project, id, settings } => {
            let mut body = json!({});
            if let Some(p) = settings.pool() {
                body["pool_config"] = p;
            }
            if let Some(c) = settings.cache() {
                body["cache_config"] = c;
            }
            show(&api.patch(&format!("/v1/projects/{project}/databases/{id}"), &body)?);
        }
        DatabasesCommand::Delete { project, id } => {
            api.delete(&format!("/v1/projects/{project}/databases/{id}"))?;
            println!("deleted {id}");
        }
    }
    Ok(())
}
