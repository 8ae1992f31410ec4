//! The one error type of the node crate. It names what failed and where (paths, pids,
//! programs) so an operator can act on it; it never carries secrets, because nothing this
//! crate handles is one (instances trust local socket connections and hold no passwords).

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong while finding binaries or managing an instance.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No directory with both `initdb` and `postgres` was found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found; searched: {searched}. \
         Install them with `apt-get install postgresql` (Debian/Ubuntu), \
         or point BERTH_PG_BINDIR at their directory"
    )]
    BinariesNotFound { searched: String },

    /// BERTH_PG_BINDIR (or an explicit directory) lacks a needed program.
    #[error("{dir} does not hold both initdb and postgres")]
    InvalidBindir { dir: PathBuf },

    /// A program could not be started at all.
    #[error("could not run {program} (in {cwd}): {source}")]
    Spawn {
        program: PathBuf,
        cwd: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A program ran and failed; `output` holds its stdout and stderr.
    #[error("{program} failed ({status}):\n{output}")]
    CommandFailed { program: PathBuf, status: ExitStatus, output: String },

    /// `postgres --version` printed something we cannot read.
    #[error("unexpected output from postgres --version: {output:?}")]
    UnexpectedVersion { output: String },

    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An instance's OS user (or the group they share) could not be made, found or removed.
    #[error("OS user `{name}`: {problem}")]
    InstanceUser { name: String, problem: String },

    /// A tree being copied or chowned holds something Berth never follows or reads: a
    /// symbolic link, a special file, a file of another owner.
    #[error(
        "{path} is {what}; Berth copies and hands over only regular files and directories of the instance's own"
    )]
    UnsafeEntry { path: PathBuf, what: &'static str },

    /// The user database could not be read.
    #[error("looking up OS user `{name}`: {source}")]
    UserLookup {
        name: String,
        #[source]
        source: nix::Error,
    },

    /// The superuser name is unusable (empty, or holds a control character).
    #[error("invalid superuser name {name:?}")]
    InvalidSuperuser { name: String },

    /// The root holds no initialised data directory.
    #[error("{root} is not an initialised instance (no {missing})")]
    NotInitialised { root: PathBuf, missing: PathBuf },

    /// A postmaster already serves this data directory.
    #[error("a postmaster (pid {pid}) is already running on {data_dir}")]
    AlreadyRunning { data_dir: PathBuf, pid: u32 },

    /// The postmaster exited before it became ready.
    #[error("postgres on {data_dir} exited during startup ({status}); log tail:\n{log_tail}")]
    StartFailed { data_dir: PathBuf, status: ExitStatus, log_tail: String },

    /// The postmaster did not become ready in time (it has been killed).
    #[error("postgres on {data_dir} not ready after {timeout:?}; log tail:\n{log_tail}")]
    StartTimeout { data_dir: PathBuf, timeout: Duration, log_tail: String },

    /// Sending a signal failed for a reason other than the process being gone.
    #[error("sending {signal} to pid {pid}: {source}")]
    Signal {
        pid: u32,
        signal: nix::sys::signal::Signal,
        #[source]
        source: nix::Error,
    },

    /// A copy would leave its filesystem with less free space than the running instances
    /// need: refused before it starts, or stopped before a file once something else took it.
    #[error(
        "no space left on device for a copy into {path}: it needs {} MiB and leaves {} MiB free \
         for the running instances, but {} MiB are free; free some space and try again",
        needed.div_ceil(1 << 20), reserve >> 20, available >> 20
    )]
    NoSpace { path: PathBuf, needed: u64, available: u64, reserve: u64 },

    /// Something Berth does not handle (yet), named.
    #[error("not supported: {what}")]
    Unsupported { what: String },

    /// The postmaster survived SIGKILL (should not happen; reported rather than hung on).
    #[error("postgres (pid {pid}) did not exit after {waited:?}")]
    StopTimeout { pid: u32, waited: Duration },
}

impl NodeError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> NodeError {
        let path = path.into();
        move |source| NodeError::Io { path, source }
    }
}
