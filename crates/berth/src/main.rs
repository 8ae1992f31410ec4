//! The `berth` binary: a thin command line over the library crates. It parses arguments,
//! sets up logging, and composes the parts (catalog, control plane, instances, proxy); the
//! behaviour itself lives in those crates. The API client commands need no async runtime.

mod acme;
mod bootstrap;
mod catalog_instance;
mod client;
mod datadir;
mod key_check;
mod local_ca;
mod proxy_cmd;
mod registered;
mod route_sync;
mod signals;
mod trust;
mod tunnel;
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
    /// Run everything on this machine: catalog, API, worker, instances and the proxy.
    Up(up::UpArgs),
    /// Run the proxy alone, with routes from a TOML file (reloaded on SIGHUP or change).
    Proxy(proxy_cmd::ProxyArgs),
    /// Create, list, show and delete projects.
    Projects(client::ProjectsArgs),
    /// Create, list, show, reset and delete a project's branches.
    Branches(client::BranchesArgs),
    /// Create, list, show and delete preview databases (branches with a time to live).
    Previews(client::PreviewsArgs),
    /// Print a project's connection string.
    Connection(client::ConnectionArgs),
    /// Rotate a project's credentials.
    Credentials(client::CredentialsArgs),
    /// Show jobs.
    Jobs(client::JobsArgs),
    /// Create, list and revoke API keys.
    Keys(client::KeysArgs),
    /// Register, list, show, update and delete upstreams served through Berth (PgBeam style).
    Databases(client::DatabasesArgs),
    /// Install the local CA into the system's trust store (root), and print the line for Node.
    Trust(trust::TrustArgs),
    /// A local endpoint for desktop tools that logs in to a project with an API key.
    Tunnel(tunnel::TunnelArgs),
}

fn main() -> std::process::ExitCode {
    // tokio-postgres logs statement text at debug, and the statements that set role
    // passwords carry verifiers: it never logs below info, whatever BERTH_LOG says.
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| "info".into())
        .add_directive("tokio_postgres=info".parse().expect("a valid directive"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let serve = |f: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>| {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(f)
    };
    let result = match cli.command {
        Command::Up(args) => serve(Box::pin(up::run(args))),
        Command::Proxy(args) => serve(Box::pin(proxy_cmd::run(args))),
        Command::Projects(args) => client::projects(args),
        Command::Branches(args) => client::branches(args),
        Command::Previews(args) => client::previews(args),
        Command::Connection(args) => client::connection(args),
        Command::Credentials(args) => client::credentials(args),
        Command::Jobs(args) => client::jobs(args),
        Command::Keys(args) => client::keys(args),
        Command::Trust(args) => trust::run(args),
        Command::Tunnel(args) => tunnel::run(args),
        Command::Databases(args) => client::databases(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
