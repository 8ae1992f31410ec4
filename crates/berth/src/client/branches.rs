//! `berth branches create|list|get|delete|reset`: a project's branches through the API. A
//! create or reset waits for its job by default and draws the copy's progress (bytes of the
//! parent copied) as a bar on stderr when stderr is a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::api::Api;
use super::output::{self, ProgressBar, cell, table};
use super::{ClientOpts, all_pages};

/// How often the bar asks for the job's progress.
const POLL: Duration = Duration::from_millis(250);

#[derive(Args)]
pub struct BranchesArgs {
    #[command(subcommand)]
    command: BranchesCommand,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Clone, Copy, ValueEnum)]
enum Data {
    /// An online copy of the parent's data.
    Full,
    /// The parent's schema, no rows.
    Schema,
    /// The project's database and roles, nothing else.
    Empty,
}

#[derive(Subcommand)]
enum BranchesCommand {
    /// Make a branch of a project (from main unless --parent) and wait until it is ready.
    Create {
        project: String,
        name: String,
        /// The branch to copy (name or id).
        #[arg(long, default_value = "main")]
        parent: String,
        /// What to copy (the API's `data`; `--data` is the data directory of every command).
        #[arg(long, value_enum, default_value = "full")]
        copy: Data,
        /// Return at once, without waiting for the copy.
        #[arg(long)]
        no_wait: bool,
    },
    /// List a project's branches.
    List { project: String },
    /// Show one branch.
    Get { project: String, branch: String },
    /// Delete a branch and its instance (not main; not a branch others were made from).
    Delete {
        project: String,
        branch: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Bring a branch back to its parent's current state (its sessions are closed).
    Reset {
        project: String,
        branch: String,
        #[arg(long)]
        no_wait: bool,
    },
}

fn rows(branches: &[Value]) {
    let rows: Vec<Vec<String>> = branches
        .iter()
        .map(|b| {
            vec![
                cell(&b["name"]),
                cell(&b["id"]),
                cell(&b["parent_id"]),
                cell(&b["data"]),
                cell(&b["state"]),
                cell(&b["database"]),
            ]
        })
        .collect();
    table(&["NAME", "ID", "PARENT", "DATA", "STATE", "DATABASE"], &rows);
}

/// Waits for a job, with a progress bar when someone watches; fails with the job's error.
pub(super) fn wait(api: &Api, job: &Value, what: &str) -> anyhow::Result<Value> {
    if !std::io::stderr().is_terminal() {
        return super::wait(api, job, what);
    }
    let id = cell(&job["id"]);
    let bar = ProgressBar::new(format!("{what} ({id})"));
    let done = loop {
        let job = match api.get(&format!("/v1/jobs/{id}")) {
            Ok(job) => job,
            Err(e) => {
                bar.finish();
                return Err(e);
            }
        };
        bar.draw(job["progress_bytes_done"].as_u64(), job["progress_bytes_total"].as_u64());
        if matches!(job["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            break job;
        }
        std::thread::sleep(POLL);
    };
    bar.finish();
    if done["state"] != "succeeded" {
        anyhow::bail!("job {id} {}: {}", cell(&done["state"]), cell(&done["error"]));
    }
    Ok(done)
}

pub fn branches(args: BranchesArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.opts)?;
    let json_out = args.opts.json;
    let show = |b: &Value| if json_out { output::json(b) } else { rows(std::slice::from_ref(b)) };
    match args.command {
        BranchesCommand::Create { project, name, parent, copy, no_wait } => {
            let data = match copy {
                Data::Full => "full",
                Data::Schema => "schema",
                Data::Empty => "empty",
            };
            let created = api.post(
                &format!("/v1/projects/{project}/branches"),
                &json!({ "name": name, "parent": parent, "data": data }),
            )?;
            let branch_id = cell(&created["branch"]["id"]);
            if !no_wait {
                wait(&api, &created["job"], &format!("branching {project}.{name} from {parent}"))?;
            }
            show(&api.get(&format!("/v1/projects/{project}/branches/{branch_id}"))?);
            if !no_wait && !json_out {
                println!("\nConnect: psql \"$(berth connection {project} --branch {name})\"");
            }
        }
        BranchesCommand::List { project } => {
            let branches = all_pages(&api, &format!("/v1/projects/{project}/branches"), "branches")?;
            if json_out { output::json(&Value::Array(branches)) } else { rows(&branches) }
        }
        BranchesCommand::Get { project, branch } => {
            show(&api.get(&format!("/v1/projects/{project}/branches/{branch}"))?);
        }
        BranchesCommand::Delete { project, branch, no_wait } => {
            let deleted = api.delete(&format!("/v1/projects/{project}/branches/{branch}"))?;
            let job = if no_wait {
                deleted["job"].clone()
            } else {
                wait(&api, &deleted["job"], &format!("deleting {branch}"))?
            };
            if json_out { output::json(&job) } else { println!("deleted {project}.{branch}") }
        }
        BranchesCommand::Reset { project, branch, no_wait } => {
            let reset = api.post(&format!("/v1/projects/{project}/branches/{branch}/reset"), &json!({}))?;
            if !no_wait {
                wait(&api, &reset["job"], &format!("resetting {project}.{branch}"))?;
            }
            show(&api.get(&format!("/v1/projects/{project}/branches/{branch}"))?);
        }
    }
    Ok(())
}
