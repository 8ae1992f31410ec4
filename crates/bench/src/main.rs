//! `berth-bench`: the helpers `bench/run` needs that pgbench lacks. `certs` makes a local CA
//! and server certificate (Berth's own `LocalCa`) for all three servers; `ports` finds free
//! loopback ports; `idle` holds thousands of authenticated TLS clients open and reports the
//! proxy's RSS; `storm` opens, authenticates, queries and closes connections as fast as it
//! can; `crowd` sends thousands of clients at once at a small pool. Results are one `key=value` line on stdout for the script to parse. Not a test.

mod client;
mod load;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rustls_pki_types::ServerName;

use crate::client::{Keys, Target};

#[derive(Parser)]
#[command(about = "Load generators for bench/run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create (or keep) ca.pem, server.pem and server.key in DIR.
    Certs { dir: PathBuf },
    /// Print N free loopback TCP ports, one a line.
    Ports { n: usize },
    /// Open N authenticated TLS clients, keep them idle, and report the proxy's RSS.
    Idle(IdleArgs),
    /// Connect, authenticate, `select 1`, disconnect, in a loop from parallel clients.
    Storm(StormArgs),
    /// N clients at once, each: connect, `select pg_sleep(S)`, disconnect; counts outcomes.
    Crowd(CrowdArgs),
}

#[derive(Args)]
struct CrowdArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long, default_value_t = 5_000)]
    clients: usize,
    /// Seconds each client's query sleeps on the server.
    #[arg(long, default_value = "0")]
    sleep: String,
}

#[derive(Args)]
struct TargetArgs {
    /// Host and port of the server under test.
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    user: String,
    #[arg(long)]
    database: String,
    /// The CA that signed the server's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// A file holding the role's password (kept out of the command line).
    #[arg(long)]
    password_file: PathBuf,
    /// A file holding the role's `pg_authid` SCRAM verifier (for its salt and iterations).
    #[arg(long)]
    verifier_file: PathBuf,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// How many clients to hold open.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// How many connect at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// The proxy's process id, whose VmRSS is reported.
    #[arg(long)]
    pid: u32,
    /// How long to hold the clients once all are connected before measuring.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

#[derive(Args)]
struct StormArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Parallel clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

impl TargetArgs {
    fn target(&self) -> anyhow::Result<Target> {
        let read =
            |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
        let password = read(&self.password_file)?;
        let verifier = wire::scram::ScramVerifier::parse(read(&self.verifier_file)?.trim())
            .map_err(|_| anyhow::anyhow!("{} holds no SCRAM verifier", self.verifier_file.display()))?;
        let ca = std::fs::read(&self.ca).with_context(|| format!("cannot read {}", self.ca.display()))?;
        Ok(Target {
            addr: self.addr,
            user: self.user.clone(),
            database: self.database.clone(),
            keys: Keys::derive(password.trim_end_matches('\n'), &verifier)?,
            tls: Target::tls_connector(&ca)?,
            server_name: ServerName::IpAddress(self.addr.ip().into()),
        })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Certs { dir } => {
            let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
            proxy::LocalCa::load_or_create(&dir, &hosts)?;
            Ok(())
        }
        Command::Ports { n } => {
            // Hold every listener until all are chosen so the ports differ.
            let held: Vec<TcpListener> =
                (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
            for l in &held {
                println!("{}", l.local_addr()?.port());
            }
            Ok(())
        }
        Command::Idle(args) => {
            let target = args.target.target()?;
            runtime()?.block_on(load::idle(target, args.clients, args.concurrency, args.pid, args.settle))
        }
        Command::Storm(args) => {
            let target = args.target.target()?;
            runtime()?.block_on(load::storm(target, args.clients, args.duration))
        }
        Command::Crowd(args) => {
            let target = args.target.target()?;
            runtime()?.block_on(load::crowd(target, args.clients, &args.sleep))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
