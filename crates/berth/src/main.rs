//! The `berth` binary: a thin command line over the library crates. It parses arguments,
//! sets up logging, and composes the parts (instances from `node`, the proxy from `proxy`);
//! the behaviour itself lives in those crates.

mod proxy_cmd;
mod signals;
mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "Self-hosted serverless PostgreSQL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine: a PostgreSQL instance and the proxy in front of it.
    Up(up::UpArgs),
    /// Run the proxy alone, with routes from a TOML file (reloaded on SIGHUP or change).
    Proxy(proxy_cmd::ProxyArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Proxy(args) => proxy_cmd::run(args).await,
        }
    })
}
