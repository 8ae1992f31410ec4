//! One local PostgreSQL instance: its on-disk layout under a root directory, and the
//! lifecycle of its postmaster (start, fast stop, immediate kill, status). The postmaster
//! listens on a private Unix socket only; this module must never open a TCP listener, and
//! never signals a pid it has not checked still runs `postgres`.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::bin::PgBinaries;
use crate::copy::{RUNTIME_FILES, copy_tree};
use crate::error::NodeError;
use crate::initdb::{InitOptions, init_data_dir};
use crate::logtail;
use crate::meta::Meta;
use crate::pidfile::PidFile;
use crate::private::{append_private, make_passable_dir};
use crate::process::{self, wait_child, wait_until};
use crate::user::InstanceUser;

/// The port number used to name the socket file when none is chosen. With no TCP
/// listener, instances sharing it cannot conflict: each has its own socket directory.
pub const DEFAULT_PORT: u16 = 5432;

/// How long `start` waits for the postmaster to report `ready`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a fast shutdown may take before escalating to an immediate one.
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an immediate shutdown may take before SIGKILL.
const IMMEDIATE_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait after SIGKILL before giving up.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `start` looks at the child and `postmaster.pid`.
const START_POLL: Duration = Duration::from_millis(20);
/// Log lines quoted in start errors.
const LOG_TAIL_LINES: usize = 30;

const DATA_DIR: &str = "data";
const SOCKET_DIR: &str = "socket";
const LOG_FILE: &str = "postgres.log";

/// Whether a postmaster serves the instance's data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A live postmaster with this pid (ours, or one left by an earlier process).
    Running { pid: u32 },
    /// No postmaster.
    Stopped,
}

/// A PostgreSQL instance laid out under one root directory:
/// `root/data` (PGDATA, 0700, owned by the instance's own OS user), `root/socket` (Unix
/// socket directory, 0700, owned by that user: no other instance's user may connect),
/// `root/postgres.log` (the postmaster's stdout and stderr, 0600, Berth's) and, when Berth
/// is root, `root/berth.user` (the user's name). `root` itself is
/// `node::make_passable_dir`'s: instance users may only pass through it.
#[derive(Debug)]
pub struct Instance {
    bins: PgBinaries,
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    superuser: String,
    port: u16,
    user: InstanceUser,
    /// The postmaster we spawned, until it has been seen to exit.
    child: Option<Child>,
}

impl Instance {
    /// Creates `root` (if needed) and a new cluster in `root/data` with `initdb`.
    pub fn init(bins: &PgBinaries, root: &Path, opts: &InitOptions) -> Result<Instance, NodeError> {
        let root = std::path::absolute(root).map_err(NodeError::io(root))?;
        make_passable_dir(&root)?;
        let user = InstanceUser::for_root(&root)?;
        let data_dir = root.join(DATA_DIR);
        make_private_dir(&data_dir, &user)?;
        init_data_dir(bins, &data_dir, &root, &user, opts)?;
        tracing::info!(root = %root.display(), superuser = %opts.superuser, "initialised instance");
        Self::open(bins, &root)
    }

    /// Opens an already initialised root, e.g. after a restart of Berth or a copy.
    pub fn open(bins: &PgBinaries, root: &Path) -> Result<Instance, NodeError> {
        let root = std::path::absolute(root).map_err(NodeError::io(root))?;
        let data_dir = root.join(DATA_DIR);
        require_cluster(&root, &data_dir)?;
        // Also tightens a root an earlier version made 0755.
        make_passable_dir(&root)?;
        let user = InstanceUser::for_root(&root)?;
        let socket_dir = root.join(SOCKET_DIR);
        make_private_dir(&socket_dir, &user)?;
        let meta = Meta::read(&data_dir)?;
        Ok(Instance {
            bins: bins.clone(),
            log_file: root.join(LOG_FILE),
            root,
            data_dir,
            socket_dir,
            superuser: meta.superuser,
            port: DEFAULT_PORT,
            user,
            child: None,
        })
    }

    /// Copies the data directory of the stopped instance at `template_root` into a new
    /// `root` and opens it, ready to start.
    pub fn from_template(
        bins: &PgBinaries,
        template_root: &Path,
        root: &Path,
    ) -> Result<Instance, NodeError> {
        let template_data = template_root.join(DATA_DIR);
        require_cluster(template_root, &template_data)?;
        if let Some(pid) = live_postmaster(&template_data) {
            return Err(NodeError::AlreadyRunning { data_dir: template_data, pid });
        }
        make_passable_dir(root)?;
        let data_dir = root.join(DATA_DIR);
        copy_tree(&template_data, &data_dir, &RUNTIME_FILES)?;
        // postgres refuses a data directory open to others, whatever the template had.
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700))
            .map_err(NodeError::io(&data_dir))?;
        // The copy is a new instance: a user of its own, never the template's.
        InstanceUser::for_root(root)?.chown_recursive(&data_dir)?;
        tracing::info!(
            template = %template_root.display(),
            root = %root.display(),
            "copied instance from template"
        );
        Self::open(bins, root)
    }

    /// Starts the postmaster and waits (up to [`START_TIMEOUT`]) until it accepts
    /// connections. Does nothing if we already run it; fails if another process does.
    pub fn start(&mut self) -> Result<(), NodeError> {
        if let Status::Running { pid } = self.status() {
            if self.child.is_some() {
                return Ok(());
            }
            return Err(NodeError::AlreadyRunning { data_dir: self.data_dir.clone(), pid });
        }
        // Data an earlier version ran as `postgres`, or whose user was made again after
        // being swept, is handed to this instance's user while nothing runs on it.
        // Every entry must be the previous owner's (or already the user's), and none a hard
        // link: the previous owner may have planted one to a file elsewhere.
        let previous = crate::tree::owner(&self.data_dir)?;
        if self.user.switch && previous != self.user.uid {
            tracing::warn!(root = %self.root.display(), user = %self.user.name, previous, "handing the data directory to the instance's user");
            self.user.take_over(&self.data_dir, previous)?;
        }
        make_private_dir(&self.socket_dir, &self.user)?;
        // The postmaster makes its socket and lock file there as the instance user; what
        // another user owns is a stale lock of a previous owner, or a planted link: unlinked
        // (never chowned) while nothing runs.
        if self.user.switch {
            for name in crate::tree::remove_foreign_entries(&self.socket_dir, self.user.uid)? {
                tracing::warn!(root = %self.root.display(), entry = ?name, "removed an entry of the socket directory the instance's user does not own");
            }
        }
        // The postmaster's log holds tenants' statements (errors quote them): 0600, ours.
        let log = append_private(&self.log_file)?;
        let log_start = log.metadata().map_err(NodeError::io(&self.log_file))?.len();
        let stderr = log.try_clone().map_err(NodeError::io(&self.log_file))?;

        let program = self.bins.program("postgres");
        // Nothing of Berth's environment reaches the server (or a tenant reading it).
        let mut cmd = self.user.command(&program);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-c", "listen_addresses="])
            .arg("-p")
            .arg(self.port.to_string())
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let child =
            cmd.spawn().map_err(|source| NodeError::Spawn { program, cwd: self.root.clone(), source })?;
        let pid = child.id();
        self.child = Some(child);

        self.wait_ready(pid, log_start)?;
        tracing::info!(pid, root = %self.root.display(), port = self.port, "postgres ready");
        Ok(())
    }

    /// Polls until our child's `postmaster.pid` says `ready`, it exits, or time runs out.
    fn wait_ready(&mut self, pid: u32, log_start: u64) -> Result<(), NodeError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = self.child.as_mut().map(Child::try_wait);
            if let Some(Ok(Some(status))) = exited {
                self.child = None;
                return Err(NodeError::StartFailed {
                    data_dir: self.data_dir.clone(),
                    status,
                    log_tail: logtail::tail(&self.log_file, log_start, LOG_TAIL_LINES),
                });
            }
            // A stale file left by a killed postmaster may say `ready` too: match the pid.
            if PidFile::read(&self.data_dir)?.is_some_and(|f| f.pid == pid && f.is_ready()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if let Err(e) = self.kill() {
                    tracing::warn!(pid, error = %e, "could not kill postgres after start timeout");
                }
                return Err(NodeError::StartTimeout {
                    data_dir: self.data_dir.clone(),
                    timeout: START_TIMEOUT,
                    log_tail: logtail::tail(&self.log_file, log_start, LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(START_POLL);
        }
    }

    /// Fast shutdown (SIGINT: roll back sessions, checkpoint, exit) and wait; escalates to
    /// an immediate shutdown, then SIGKILL, on timeout. Does nothing when stopped.
    pub fn stop(&mut self) -> Result<(), NodeError> {
        self.shutdown(Signal::SIGINT, FAST_STOP_TIMEOUT)
    }

    /// Immediate shutdown (SIGQUIT: no checkpoint, crash recovery at next start) and wait;
    /// SIGKILL on timeout. Does nothing when stopped. Meant for tests tearing down.
    pub fn kill(&mut self) -> Result<(), NodeError> {
        self.shutdown(Signal::SIGQUIT, IMMEDIATE_STOP_TIMEOUT)
    }

    fn shutdown(&mut self, first: Signal, first_timeout: Duration) -> Result<(), NodeError> {
        let Status::Running { pid } = self.status() else {
            return Ok(());
        };
        let mut escalation = vec![(first, first_timeout)];
        if first != Signal::SIGQUIT {
            escalation.push((Signal::SIGQUIT, IMMEDIATE_STOP_TIMEOUT));
        }
        escalation.push((Signal::SIGKILL, KILL_TIMEOUT));

        let mut waited = Duration::ZERO;
        for (signal, timeout) in escalation {
            if signal != first {
                tracing::warn!(pid, %signal, after = ?waited, "postgres still running, escalating");
            }
            process::send(pid, signal)?;
            let exited = match &mut self.child {
                Some(child) => wait_child(child, timeout),
                None => wait_until(timeout, || !process::is_postgres(pid)),
            };
            waited += timeout;
            if exited {
                self.child = None;
                tracing::info!(pid, root = %self.root.display(), %signal, "postgres stopped");
                return Ok(());
            }
        }
        Err(NodeError::StopTimeout { pid, waited })
    }

    /// Whether a postmaster runs on this data directory (ours or a leftover one).
    pub fn status(&mut self) -> Status {
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(None) => return Status::Running { pid: child.id() },
                // Exited (and now reaped), or already reaped.
                Ok(Some(_)) | Err(_) => self.child = None,
            }
        }
        match live_postmaster(&self.data_dir) {
            Some(pid) => Status::Running { pid },
            None => Status::Stopped,
        }
    }

    /// The pid of the running postmaster, if any.
    pub fn pid(&self) -> Option<u32> {
        match &self.child {
            Some(child) if process::is_postgres(child.id()) => Some(child.id()),
            _ => live_postmaster(&self.data_dir),
        }
    }

    /// The root directory holding data, socket and log.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The binaries this instance runs.
    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// The Unix socket directory (pass it as the host to clients).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The port number naming the socket file (there is no TCP listener).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Chooses the port number used from the next start on.
    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// The socket file, `socket_dir/.s.PGSQL.<port>`.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// The data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The postmaster's log (stdout and stderr, appended across starts).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The bootstrap superuser role.
    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// The OS user this instance's processes run as.
    pub fn os_user(&self) -> &InstanceUser {
        &self.user
    }

    /// A command for one of the instance's client programs (`psql`, `pg_dump`, ...), run as
    /// the instance's OS user with an empty environment, so it reaches this instance's
    /// socket and no other, and nothing of Berth's environment reaches it.
    pub fn client_command(&self, program: &str) -> Command {
        self.user.command(&self.bins.program(program))
    }

    /// Turns this (stopped, or stopped now) instance into a template: its files become
    /// root's (when we are root) and its OS user is deleted, since a template never runs
    /// again and each copy of it gets a user of its own.
    pub fn seal_as_template(mut self) -> Result<(), NodeError> {
        self.stop()?;
        if self.user.switch {
            // Nothing may stay the user's: its uid goes to the next user made.
            crate::tree::chown_tree(&self.data_dir, 0, 0, self.user.uid)?;
            fs::remove_dir_all(&self.socket_dir).map_err(NodeError::io(&self.socket_dir))?;
            crate::user::remove_root_user(&self.root)?;
        }
        Ok(())
    }
}

/// Deletes the instance root `root`: its files, then its OS user. Refused while a
/// postmaster runs on it; nothing when it does not exist.
pub fn remove_root(root: &Path) -> Result<(), NodeError> {
    let data_dir = root.join(DATA_DIR);
    if let Some(pid) = live_postmaster(&data_dir) {
        return Err(NodeError::AlreadyRunning { data_dir, pid });
    }
    crate::user::remove_instance_root(root)
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if let Err(e) = self.stop() {
            tracing::warn!(root = %self.root.display(), error = %e, "could not stop postgres on drop");
        }
    }
}

/// The pid in `data_dir/postmaster.pid` if that process still runs `postgres`.
fn live_postmaster(data_dir: &Path) -> Option<u32> {
    PidFile::read(data_dir).ok().flatten().map(|file| file.pid).filter(|pid| process::is_postgres(*pid))
}

/// Fails unless `data_dir` holds an initialised cluster.
fn require_cluster(root: &Path, data_dir: &Path) -> Result<(), NodeError> {
    let marker = data_dir.join("PG_VERSION");
    if marker.is_file() {
        Ok(())
    } else {
        Err(NodeError::NotInitialised { root: root.to_owned(), missing: marker })
    }
}

/// Creates `dir` if needed, makes it 0700 and hands it, the directory alone and never what
/// is in it, to the instance user.
fn make_private_dir(dir: &Path, user: &InstanceUser) -> Result<(), NodeError> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(NodeError::io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(NodeError::io(dir))?;
    user.chown_dir(dir)
}
