//! Creating a fresh data directory: running `initdb` (as the instance's user, with an empty
//! environment) and laying
//! Berth's configuration over the result. It owns the choices made once per cluster
//! (superuser, encoding, locale, durability); it never starts a server.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::bin::PgBinaries;
use crate::conf::{self, BERTH_CONF, INCLUDE_LINE, PG_HBA};
use crate::error::NodeError;
use crate::meta::{DEFAULT_SUPERUSER, Meta};
use crate::private::write_private;
use crate::user::InstanceUser;

/// Choices made when a cluster is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Name of the bootstrap superuser role (default `postgres`).
    pub superuser: String,
    /// Turns off fsync, synchronous_commit and full_page_writes, and skips initdb's final
    /// sync: much faster, but a crash of the machine can corrupt the cluster, and an
    /// immediate shutdown (`Instance::kill`) can lose the last commits. For tests.
    pub fast_unsafe: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { superuser: DEFAULT_SUPERUSER.to_owned(), fast_unsafe: false }
    }
}

impl InitOptions {
    /// Options for throwaway test instances: defaults with `fast_unsafe` on.
    pub fn fast_unsafe() -> Self {
        InitOptions { fast_unsafe: true, ..Self::default() }
    }
}

/// Runs initdb into `data_dir` (absent or empty) as `user` with `cwd` as working
/// directory, then writes Berth's configuration and metadata into it.
pub(crate) fn init_data_dir(
    bins: &PgBinaries,
    data_dir: &Path,
    cwd: &Path,
    user: &InstanceUser,
    opts: &InitOptions,
) -> Result<(), NodeError> {
    if opts.superuser.is_empty() || opts.superuser.chars().any(char::is_control) {
        return Err(NodeError::InvalidSuperuser { name: opts.superuser.clone() });
    }
    let program = bins.program("initdb");
    let mut cmd = user.command(&program);
    cmd.arg("-D")
        .arg(data_dir)
        .arg("-U")
        .arg(&opts.superuser)
        .args(["--auth-local=trust", "--auth-host=reject", "--encoding=UTF8", "--locale=C"])
        .current_dir(cwd)
        .stdin(Stdio::null());
    if opts.fast_unsafe {
        cmd.arg("--no-sync");
    }

    tracing::debug!(data_dir = %data_dir.display(), superuser = %opts.superuser, "running initdb");
    let output = cmd.output().map_err(|source| NodeError::Spawn {
        program: program.clone(),
        cwd: cwd.to_owned(),
        source,
    })?;
    if !output.status.success() {
        return Err(NodeError::CommandFailed {
            program,
            status: output.status,
            output: String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        });
    }

    configure(data_dir, opts.fast_unsafe)?;
    Meta { superuser: opts.superuser.clone() }.write(data_dir)?;
    // The files above were written by us (maybe root); postgres must own them.
    user.chown_recursive(data_dir)
}

/// Writes `berth.conf`, includes it from `postgresql.conf`, and replaces `pg_hba.conf`.
fn configure(data_dir: &Path, fast_unsafe: bool) -> Result<(), NodeError> {
    let berth_conf = data_dir.join(BERTH_CONF);
    write_private(&berth_conf, conf::berth_conf(fast_unsafe))?;

    let main_conf = data_dir.join("postgresql.conf");
    let mut file = OpenOptions::new().append(true).open(&main_conf).map_err(NodeError::io(&main_conf))?;
    writeln!(file, "\n# Berth's settings, last so that they win.\n{INCLUDE_LINE}")
        .map_err(NodeError::io(&main_conf))?;

    let hba = data_dir.join("pg_hba.conf");
    write_private(&hba, PG_HBA)
}
