//! `berth previews create|list|get|delete|connection`: a project's preview databases (branches
//! with a time to live, reaped when it runs out) through the API.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::api::Api;
use super::output::{self, cell, table};
use super::{ClientOpts, all_pages};

#[derive(Args)]
pub struct PreviewsArgs {
    #[command(subcommand)]
    command: PreviewsCommand,
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// An online copy of the source branch's data.
    Clone,
    /// The project's database and roles, nothing else.
    Empty,
}

#[derive(Subcommand)]
enum PreviewsCommand {
    /// Make a preview database and wait until it is ready.
    Create {
        project: String,
        /// How long it lives (`90s`, `30m`, `2h`, `7d`; plain seconds too); it is deleted when
        /// that runs out.
        #[arg(long, value_parser = parse_ttl)]
        ttl: u64,
        /// The branch to copy (name or id).
        #[arg(long, default_value = "main")]
        source: String,
        #[arg(long, value_enum, default_value = "clone")]
        mode: Mode,
        /// Its name (database `<project>.<name>`); the preview's id when absent.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        no_wait: bool,
    },
    /// List a project's preview databases.
    List { project: String },
    /// Show one preview database (by id).
    Get { id: String },
    /// Delete a preview database now (by id).
    Delete {
        id: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Print a preview database's connection string (by id).
    Connection {
        id: String,
        /// The pooled port instead of the direct one.
        #[arg(long)]
        pooled: bool,
    },
}

/// `90`, `90s`, `30m`, `2h`, `7d` as seconds.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 2h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("unknown unit {unit:?}: use s, m, h or d")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{text:?} is too long"))
}

fn rows(previews: &[Value]) {
    let rows: Vec<Vec<String>> = previews
        .iter()
        .map(|p| {
            vec![
                cell(&p["id"]),
                cell(&p["mode"]),
                cell(&p["state"]),
                cell(&p["database"]),
                cell(&p["expires_at"]),
            ]
        })
        .collect();
    table(&["ID", "MODE", "STATE", "DATABASE", "EXPIRES"], &rows);
}

pub fn previews(args: PreviewsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.opts)?;
    let json_out = args.opts.json;
    let show = |p: &Value| if json_out { output::json(p) } else { rows(std::slice::from_ref(p)) };
    match args.command {
        PreviewsCommand::Create { project, ttl, source, mode, name, no_wait } => {
            let mode = match mode {
                Mode::Clone => "clone",
                Mode::Empty => "empty",
            };
            let body = json!({ "source_branch": source, "mode": mode, "ttl_seconds": ttl, "name": name });
            let created = api.post(&format!("/v1/projects/{project}/preview-databases"), &body)?;
            let id = cell(&created["preview"]["id"]);
            if !no_wait {
                super::branches::wait(&api, &created["job"], &format!("preview of {project}.{source}"))?;
            }
            show(&api.get(&format!("/v1/preview-databases/{id}"))?);
            if !no_wait && !json_out {
                println!("\nConnect: psql \"$(berth previews connection {id})\"");
            }
        }
        PreviewsCommand::List { project } => {
            let previews =
                all_pages(&api, &format!("/v1/projects/{project}/preview-databases"), "preview_databases")?;
            if json_out { output::json(&Value::Array(previews)) } else { rows(&previews) }
        }
        PreviewsCommand::Get { id } => show(&api.get(&format!("/v1/preview-databases/{id}"))?),
        PreviewsCommand::Delete { id, no_wait } => {
            let deleted = api.delete(&format!("/v1/preview-databases/{id}"))?;
            let job = if no_wait {
                deleted["job"].clone()
            } else {
                super::wait(&api, &deleted["job"], &format!("deleting {id}"))?
            };
            if json_out { output::json(&job) } else { println!("deleted {id}") }
        }
        PreviewsCommand::Connection { id, pooled } => {
            let c = api.get(&format!("/v1/preview-databases/{id}/connections"))?;
            let url = if pooled { &c["connections"]["pooled_url"] } else { &c["connections"]["direct_url"] };
            if json_out { output::json(&c) } else { println!("{}", cell(url)) }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttls_read_with_units() {
        assert_eq!(super::parse_ttl("90"), Ok(90));
        assert_eq!(super::parse_ttl("90s"), Ok(90));
        assert_eq!(super::parse_ttl("30m"), Ok(1800));
        assert_eq!(super::parse_ttl("2h"), Ok(7200));
        assert_eq!(super::parse_ttl("7d"), Ok(604_800));
        for bad in ["", "h", "2 h", "2w", "-1"] {
            assert!(super::parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
