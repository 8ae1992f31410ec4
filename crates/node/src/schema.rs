//! Copying a database's schema between two local instances: `pg_dump --schema-only` of one
//! piped into `psql` on the other, both from the instances' own bindir, over their private
//! sockets as the superuser. Each program runs as its instance's OS user (never root, so it
//! can reach that instance's socket and no other) with an empty environment (no inherited
//! `PGPASSWORD`, `PGOPTIONS` or service file). It copies definitions only, never rows, and
//! never roles (the caller creates those first so ownership carries over).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::bin::PgBinaries;
use crate::error::NodeError;
use crate::user::InstanceUser;

/// Where a database is reached: an instance's socket directory and port, a role, a name.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub socket_dir: &'a Path,
    pub port: u16,
    pub user: &'a str,
    pub dbname: &'a str,
    /// The instance's OS user, whom the program runs as.
    pub os_user: &'a InstanceUser,
}

impl Endpoint<'_> {
    fn args(&self, cmd: &mut Command) {
        cmd.arg("-h").arg(self.socket_dir).args([
            "-p",
            &self.port.to_string(),
            "-U",
            self.user,
            "-d",
            self.dbname,
        ]);
    }
}

/// Restores the schema of `from` into `to` in one transaction; a failure leaves `to`
/// without any of it and reports both programs' messages.
pub fn copy_schema(bins: &PgBinaries, from: Endpoint<'_>, to: Endpoint<'_>) -> Result<(), NodeError> {
    let dump_program = bins.program("pg_dump");
    let mut dump = from.os_user.command(&dump_program);
    dump.args(["--schema-only", "--no-password"]);
    from.args(&mut dump);
    let mut dump = dump
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| spawn_error(&dump_program, from.socket_dir, source))?;
    let dump_out = dump.stdout.take().expect("stdout was piped");

    let psql_program = bins.program("psql");
    let mut psql = to.os_user.command(&psql_program);
    psql.args(["-X", "-q", "--no-password", "--single-transaction", "-v", "ON_ERROR_STOP=1"]);
    to.args(&mut psql);
    let restored = psql
        .stdin(Stdio::from(dump_out))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| spawn_error(&psql_program, to.socket_dir, source));
    let mut dump_err = String::new();
    if let Some(mut e) = dump.stderr.take() {
        let _ = e.read_to_string(&mut dump_err);
    }
    let dumped = dump.wait().map_err(|source| spawn_error(&dump_program, from.socket_dir, source))?;
    if !dumped.success() {
        return Err(NodeError::CommandFailed { program: dump_program, status: dumped, output: dump_err });
    }
    let restored = restored?;
    if !restored.status.success() {
        return Err(NodeError::CommandFailed {
            program: psql_program,
            status: restored.status,
            output: String::from_utf8_lossy(&restored.stdout).into_owned()
                + &String::from_utf8_lossy(&restored.stderr),
        });
    }
    Ok(())
}

fn spawn_error(program: &Path, cwd: &Path, source: std::io::Error) -> NodeError {
    NodeError::Spawn { program: PathBuf::from(program), cwd: cwd.to_owned(), source }
}
