//! The API client commands: `berth projects|connection|jobs|keys …`. Tables for people,
//! `--json` for scripts; `berth connection` prints the URI alone so it can go straight into
//! `psql "$(berth connection shop)"`.

mod api;
mod branches;
mod connection;
mod databases;
mod output;
mod previews;

pub use branches::{BranchesArgs, branches};
pub use connection::{ConnectionArgs, connection};
pub use databases::{DatabasesArgs, databases};
pub use previews::{PreviewsArgs, previews};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

pub use api::{Api, ClientOpts, KeySource, api_key_and_source};
use output::{Spinner, cell, table};

#[derive(Args)]
pub struct ProjectsArgs {
    #[command(subcommand)]
    command: ProjectsCommand,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Subcommand)]
enum ProjectsCommand {
    /// Create a project and wait until it is connectable.
    Create {
        name: String,
        /// Return at once, without waiting for provisioning.
        #[arg(long)]
        no_wait: bool,
    },
    /// List projects.
    List,
    /// Show one project (by id or name).
    Get { project: String },
    /// Delete a project and its instance.
    Delete {
        project: String,
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Args)]
pub struct CredentialsArgs {
    #[command(subcommand)]
    command: CredentialsCommand,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Give the project's owner role a new password; open sessions stay connected.
    Rotate {
        project: String,
        #[arg(long)]
        no_wait: bool,
        /// Seconds the old password keeps working after the rotation (default 0).
        #[arg(long, default_value_t = 0)]
        grace_seconds: u32,
    },
}

#[derive(Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Show a job.
    Get {
        id: String,
        /// Wait until it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// List jobs.
    List,
}

#[derive(Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key (printed once).
    Create {
        #[arg(long)]
        name: String,
        /// A scope to grant (repeat); all of yours when absent.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Scope the key to one project (id or name).
        #[arg(long)]
        project: Option<String>,
    },
    /// List API keys.
    List,
    /// Revoke an API key.
    Revoke { id: String },
}

const ALL_SCOPES: [&str; 6] =
    ["projects:read", "projects:write", "credentials:read", "credentials:write", "jobs:read", "keys:write"];

/// Fetches every page of a list endpoint.
fn all_pages(api: &Api, path: &str, field: &str) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?limit=100&cursor={c}"),
            None => format!("{path}?limit=100"),
        };
        let page = api.get(&url)?;
        items.extend(page[field].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(items),
        }
    }
}

fn project_rows(projects: &[Value]) {
    let rows: Vec<Vec<String>> = projects
        .iter()
        .map(|p| vec![cell(&p["name"]), cell(&p["id"]), cell(&p["state"]), cell(&p["created_at"])])
        .collect();
    table(&["NAME", "ID", "STATE", "CREATED"], &rows);
}

fn job_rows(jobs: &[Value]) {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                cell(&j["id"]),
                cell(&j["type"]),
                cell(&j["state"]),
                format!("{}/{}", j["attempts"], j["max_attempts"]),
                cell(&j["project_id"]),
            ]
        })
        .collect();
    table(&["ID", "TYPE", "STATE", "ATTEMPTS", "PROJECT"], &rows);
}

/// Waits for a job with a spinner; fails with the job's error if it failed.
fn wait(api: &Api, job: &Value, what: &str) -> anyhow::Result<Value> {
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    let spinner = Spinner::start(format!("{what} ({id})"));
    let done = api.wait_job(&id);
    spinner.stop();
    let done = done?;
    if done["state"] != "succeeded" {
        let mut message = format!("job {id} {}: {}", cell(&done["state"]), cell(&done["error"]));
        if let Some(stderr) = done["last_stderr"].as_str() {
            message.push_str(&format!("\n{stderr}"));
        }
        anyhow::bail!(message);
    }
    Ok(done)
}

pub fn projects(args: ProjectsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.opts)?;
    let json_out = args.opts.json;
    match args.command {
        ProjectsCommand::Create { name, no_wait } => {
            let created = api.post("/v1/projects", &json!({ "name": name }))?;
            let result = if no_wait {
                created
            } else {
                wait(&api, &created["job"], &format!("provisioning {name}"))?;
                json!({ "project": api.get(&format!("/v1/projects/{}", cell(&created["project"]["id"])))?, "job": created["job"] })
            };
            if json_out {
                output::json(&result);
            } else {
                project_rows(std::slice::from_ref(&result["project"]));
                if !no_wait {
                    println!("\nConnect: psql \"$(berth connection {name})\"");
                }
            }
        }
        ProjectsCommand::List => {
            let projects = all_pages(&api, "/v1/projects", "projects")?;
            if json_out { output::json(&Value::Array(projects)) } else { project_rows(&projects) }
        }
        ProjectsCommand::Get { project } => {
            let p = api.get(&format!("/v1/projects/{project}"))?;
            if json_out { output::json(&p) } else { project_rows(std::slice::from_ref(&p)) }
        }
        ProjectsCommand::Delete { project, no_wait } => {
            let deleted = api.delete(&format!("/v1/projects/{project}"))?;
            let job = if no_wait {
                deleted["job"].clone()
            } else {
                wait(&api, &deleted["job"], &format!("deleting {project}"))?
            };
            if json_out { output::json(&job) } else { println!("deleted {project}") }
        }
    }
    Ok(())
}

pub fn credentials(args: CredentialsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.opts)?;
    let CredentialsCommand::Rotate { project, no_wait, grace_seconds } = args.command;
    let started = api.post(
        &format!("/v1/projects/{project}/credentials/rotate"),
        &json!({ "grace_seconds": grace_seconds }),
    )?;
    let job = if no_wait {
        started["job"].clone()
    } else {
        wait(&api, &started["job"], &format!("rotating {project}"))?
    };
    if args.opts.json {
        output::json(&job);
    } else {
        job_rows(std::slice::from_ref(&job));
        if !no_wait && grace_seconds > 0 {
            println!(
                "\nThe old password works for {grace_seconds} more seconds; new string: berth connection {project}"
            );
        } else if !no_wait {
            println!("\nThe old password no longer works; new string: berth connection {project}");
        }
    }
    Ok(())
}

pub fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.opts)?;
    match args.command {
        JobsCommand::Get { id, wait } => {
            let job = if wait {
                let spinner = Spinner::start(format!("waiting for {id}"));
                let job = api.wait_job(&id);
                spinner.stop();
                job?
            } else {
                api.get(&format!("/v1/jobs/{id}"))?
            };
            if args.opts.json {
                output::json(&job);
            } else {
                job_rows(std::slice::from_ref(&job));
                if let Some(error) = job["error"].as_str() {
                    println!("\nerror: {error}");
                }
            }
        }
        JobsCommand::List => {
            let jobs = all_pages(&api, "/v1/jobs", "jobs")?;
            if args.opts.json { output::json(&Value::Array(jobs)) } else { job_rows(&jobs) }
        }
    }
    Ok(())
}

pub fn keys(args: KeysArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.opts)?;
    match args.command {
        KeysCommand::Create { name, scopes, project } => {
            let scopes: Vec<String> =
                if scopes.is_empty() { ALL_SCOPES.iter().map(|s| s.to_string()).collect() } else { scopes };
            let created =
                api.post("/v1/keys", &json!({ "name": name, "scopes": scopes, "project": project }))?;
            if args.opts.json {
                output::json(&created);
            } else {
                println!("{}", cell(&created["token"]));
                eprintln!("key {} created; the key above is shown only once", cell(&created["key"]["id"]));
            }
        }
        KeysCommand::List => {
            let keys = all_pages(&api, "/v1/keys", "keys")?;
            if args.opts.json {
                output::json(&Value::Array(keys));
            } else {
                let rows: Vec<Vec<String>> = keys
                    .iter()
                    .map(|k| {
                        vec![
                            cell(&k["id"]),
                            cell(&k["name"]),
                            cell(&k["prefix"]),
                            cell(&k["project_id"]),
                            cell(&k["scopes"]),
                            cell(&k["revoked_at"]),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "PREFIX", "PROJECT", "SCOPES", "REVOKED"], &rows);
            }
        }
        KeysCommand::Revoke { id } => {
            let revoked = api.delete(&format!("/v1/keys/{id}"))?;
            if args.opts.json { output::json(&revoked) } else { println!("revoked {id}") }
        }
    }
    Ok(())
}
