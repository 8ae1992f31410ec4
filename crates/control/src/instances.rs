//! The PostgreSQL instances of a machine's branches, kept running: provisioning copies a
//! template made once with `initdb` (so a project costs a copy and a start), and a
//! supervision pass restarts any wanted instance that died, with an exponential backoff when
//! it keeps dying, logging each event. Everything here blocks (process management): call it
//! from `spawn_blocking`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use node::{
    InitOptions, Instance, InstanceUser, NodeError, PgBinaries, Status, make_passable_dir, remove_root,
};

/// The database the template carries; provisioning renames it to the project's name, which
/// is instant where `CREATE DATABASE` would copy and sync a whole database.
pub const TEMPLATE_DATABASE: &str = "berth_project";
/// An instance up this long is considered healthy again: its next death restarts at once.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct Managed {
    instance: Instance,
    started_at: Instant,
    failures: u32,
    next_restart: Option<Instant>,
}

pub struct Instances {
    bins: PgBinaries,
    /// `<data>/instances`: one root per branch.
    dir: PathBuf,
    /// `<data>/template`: the stopped cluster every branch starts as a copy of.
    template: PathBuf,
    init: InitOptions,
    managed: Mutex<HashMap<String, Arc<Mutex<Managed>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the map usable: recover it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Instances {
    pub fn new(bins: PgBinaries, data_dir: &Path, init: InitOptions) -> Instances {
        // Instance users whose directories are gone (a data directory deleted, a crash
        // between an instance's files and its user) go before new ones are made.
        if let Err(e) = node::sweep_orphan_users() {
            tracing::warn!(error = %e, "could not sweep orphaned instance users");
        }
        Instances {
            bins,
            dir: data_dir.join("instances"),
            template: data_dir.join("template"),
            init,
            managed: Mutex::default(),
        }
    }

    pub fn root(&self, branch_id: &str) -> PathBuf {
        self.dir.join(branch_id)
    }

    /// The branch's data directory (node's layout: `<root>/data`).
    pub fn data_dir(&self, branch_id: &str) -> PathBuf {
        self.root(branch_id).join("data")
    }

    /// Where a reset builds the branch's next instance before it replaces the current one.
    pub fn staging_root(&self, branch_id: &str) -> PathBuf {
        self.dir.join(format!(".{branch_id}.staging"))
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// Removes whatever is at `root` (an instance left running there is stopped first) and
    /// makes sure its parent exists, so something new can be built there.
    pub fn clear(&self, root: &Path) -> Result<(), NodeError> {
        make_passable_dir(&self.dir)?;
        if root.join("data").join("PG_VERSION").exists() {
            Instance::open(&self.bins, root)?.stop()?;
        }
        remove_root(root)
    }

    /// Copies the template into `root` (which must not exist), ready to start.
    pub fn from_template(&self, root: &Path) -> Result<Instance, NodeError> {
        make_passable_dir(root)?;
        Instance::from_template(&self.bins, &self.template, root)
    }

    /// Where a reset keeps the branch's current data while the new instance starts; it goes
    /// only once the new one serves.
    pub fn previous_root(&self, branch_id: &str) -> PathBuf {
        self.dir.join(format!(".{branch_id}.previous"))
    }

    /// Where set-aside data is moved to be deleted: a name no reset or start reads, so a
    /// deletion cut short leaves only garbage.
    fn discarded_root(&self, branch_id: &str) -> PathBuf {
        self.dir.join(format!(".{branch_id}.discarded"))
    }

    /// Replaces the branch's instance with the stopped one built at `staging`: the current
    /// one is stopped (its sessions end) and set aside, the new one moved in and started,
    /// and only when it serves is the old data deleted. When the new one does not start,
    /// it goes back to `staging` and the old data is put back and started again.
    pub fn replace(&self, branch_id: &str, staging: &Path) -> Result<(), ReplaceError> {
        if !staging.join("data").join("PG_VERSION").exists() {
            return Err(NodeError::NotInitialised {
                root: staging.to_owned(),
                missing: staging.join("data").join("PG_VERSION"),
            }
            .into());
        }
        // Data a reset cut short set aside is the branch's; never overwrite it.
        self.take_back_previous(branch_id)?;
        let (root, previous) = (self.root(branch_id), self.previous_root(branch_id));
        self.stop_at(branch_id)?;
        rename(&root, &previous)?;
        if let Err(e) = rename(staging, &root) {
            return Err(match rename(&previous, &root) {
                Ok(()) => e.into(),
                Err(back) => ReplaceError::StartFailed { start: Box::new(e), restored: Some(Box::new(back)) },
            });
        }
        match self.start(branch_id) {
            Ok(()) => {
                if let Err(e) = self.discard(branch_id, &previous) {
                    // The new instance serves; the old files are garbage, but left under the
                    // set-aside name they would be put back by the next start or reset.
                    tracing::warn!(branch_id, error = %e, "could not delete a reset branch's old data");
                    if let Err(e) = remove_root(&previous) {
                        tracing::error!(branch_id, path = %previous.display(), error = %e,
                            "a reset branch's old data is left where it would be put back");
                    }
                }
                Ok(())
            }
            Err(start) => {
                tracing::warn!(branch_id, error = %start, "the reset copy did not start; putting the old data back");
                let restored = self
                    .stop_at(branch_id)
                    .and_then(|()| rename(&root, staging))
                    .and_then(|()| rename(&previous, &root))
                    .and_then(|()| self.start(branch_id));
                Err(ReplaceError::StartFailed {
                    start: Box::new(start),
                    restored: restored.err().map(Box::new),
                })
            }
        }
    }

    /// Puts back, and starts, data a reset set aside and did not get to delete (the worker
    /// died during the swap): what holds the branch's root then was never confirmed to
    /// serve. `false` when there was nothing to put back.
    pub fn recover_reset(&self, branch_id: &str) -> Result<bool, NodeError> {
        if !self.take_back_previous(branch_id)? {
            return Ok(false);
        }
        self.start(branch_id)?;
        Ok(true)
    }

    /// Moves data set aside by a reset back into the branch's root (stopping and deleting
    /// what is there). `false` when there was none.
    fn take_back_previous(&self, branch_id: &str) -> Result<bool, NodeError> {
        let (root, previous) = (self.root(branch_id), self.previous_root(branch_id));
        if !previous.join("data").join("PG_VERSION").exists() {
            self.clear(&previous)?;
            return Ok(false);
        }
        tracing::warn!(branch_id, "putting back the data a reset set aside");
        self.stop_at(branch_id)?;
        if root.exists() {
            self.discard(branch_id, &root)?;
        }
        rename(&previous, &root)?;
        Ok(true)
    }

    /// Stops the branch's instance, supervised or left running by an earlier process.
    fn stop_at(&self, branch_id: &str) -> Result<(), NodeError> {
        self.stop(branch_id)?;
        let root = self.root(branch_id);
        if root.join("data").join("PG_VERSION").exists() {
            Instance::open(&self.bins, &root)?.stop()?;
        }
        Ok(())
    }

    /// Deletes `dir` (stopped) by way of the discarded name.
    fn discard(&self, branch_id: &str, dir: &Path) -> Result<(), NodeError> {
        let discarded = self.discarded_root(branch_id);
        self.clear(&discarded)?;
        rename(dir, &discarded)?;
        remove_root(&discarded)
    }

    /// Where the branch's postmaster puts its socket (node's layout: `<root>/socket`).
    pub fn socket_dir(&self, branch_id: &str) -> PathBuf {
        self.root(branch_id).join("socket")
    }

    /// The OS user the instance at `root` runs as (and its client programs with it).
    pub fn os_user(&self, root: &Path) -> Result<InstanceUser, NodeError> {
        InstanceUser::for_root(root)
    }

    pub fn port(&self) -> u16 {
        node::DEFAULT_PORT
    }

    /// The bootstrap superuser of instances made from the template.
    pub fn superuser(&self) -> &str {
        &self.init.superuser
    }

    /// Makes the template once: initdb, add the project database, stop.
    pub fn ensure_template(&self) -> Result<(), NodeError> {
        if self.template.join("data").join("PG_VERSION").exists() {
            return Ok(());
        }
        let build = self.template.with_extension("building");
        remove_root(&build)?;
        make_passable_dir(&build)?;
        tracing::info!(template = %self.template.display(), "creating the instance template (once)");
        let mut instance = Instance::init(&self.bins, &build, &self.init)?;
        instance.start()?;
        let created = run_psql(&instance, &format!("CREATE DATABASE {TEMPLATE_DATABASE}"));
        instance.stop()?;
        created?;
        // Copies get users of their own; the template, root's, keeps none.
        instance.seal_as_template()?;
        std::fs::rename(&build, &self.template).map_err(|e| io_error(&self.template, e))
    }

    /// Creates the branch's instance from the template if it does not exist yet, and starts
    /// it. Safe to repeat: a job may run twice.
    pub fn provision(&self, branch_id: &str) -> Result<(), NodeError> {
        let root = self.root(branch_id);
        if !root.join("data").join("PG_VERSION").exists() {
            make_passable_dir(&self.dir)?;
            // Copy beside and rename into place, so a crash mid-copy leaves no half instance.
            let partial = self.dir.join(format!(".{branch_id}.partial"));
            remove_root(&partial)?;
            make_passable_dir(&partial)?;
            drop(Instance::from_template(&self.bins, &self.template, &partial)?);
            std::fs::rename(&partial, &root).map_err(|e| io_error(&root, e))?;
        }
        self.start(branch_id)
    }

    /// Starts an existing branch instance (if not running) and supervises it from now on.
    pub fn start(&self, branch_id: &str) -> Result<(), NodeError> {
        let entry = lock(&self.managed).get(branch_id).cloned();
        if let Some(entry) = entry {
            let mut m = lock(&entry);
            if m.instance.status() == Status::Stopped {
                m.instance.start()?;
                m.started_at = Instant::now();
            }
            return Ok(());
        }
        if !self.root(branch_id).join("data").join("PG_VERSION").exists() {
            // A reset was cut short between setting the old data aside and moving the new in.
            self.take_back_previous(branch_id)?;
        }
        let mut instance = Instance::open(&self.bins, &self.root(branch_id))?;
        start_fresh(&mut instance)?;
        self.adopt(branch_id, instance);
        Ok(())
    }

    /// Supervises an instance someone else started (the catalog's, in `berth up`).
    pub fn adopt(&self, name: &str, instance: Instance) {
        let managed = Managed { instance, started_at: Instant::now(), failures: 0, next_restart: None };
        lock(&self.managed).insert(name.to_owned(), Arc::new(Mutex::new(managed)));
    }

    pub fn is_running(&self, name: &str) -> bool {
        let entry = lock(&self.managed).get(name).cloned();
        entry.is_some_and(|e| matches!(lock(&e).instance.status(), Status::Running { .. }))
    }

    /// The postmaster pid of a supervised instance.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let entry = lock(&self.managed).get(name).cloned();
        entry.and_then(|e| lock(&e).instance.pid())
    }

    /// Stops supervising and stops (fast shutdown) one instance.
    pub fn stop(&self, name: &str) -> Result<(), NodeError> {
        let entry = lock(&self.managed).remove(name);
        match entry {
            Some(e) => lock(&e).instance.stop(),
            None => Ok(()),
        }
    }

    /// Stops the branch's instance and deletes its files, with any a reset set aside.
    pub fn remove(&self, branch_id: &str) -> Result<(), NodeError> {
        self.stop(branch_id)?;
        self.clear(&self.previous_root(branch_id))?;
        self.clear(&self.discarded_root(branch_id))?;
        let root = self.root(branch_id);
        if root.exists() {
            // An instance left running by an earlier process is stopped before its files go.
            if root.join("data").join("PG_VERSION").exists() {
                Instance::open(&self.bins, &root)?.stop()?;
            }
            remove_root(&root)?;
        }
        Ok(())
    }

    /// Stops every supervised instance (fast shutdown), in parallel.
    pub fn stop_all(&self) {
        let entries: Vec<(String, Arc<Mutex<Managed>>)> = lock(&self.managed).drain().collect();
        std::thread::scope(|s| {
            for (name, entry) in &entries {
                s.spawn(move || {
                    if let Err(e) = lock(entry).instance.stop() {
                        tracing::warn!(instance = %name, error = %e, "could not stop instance");
                    }
                });
            }
        });
    }

    /// One supervision pass: restarts instances that died, with backoff.
    pub fn check(&self) {
        let entries: Vec<(String, Arc<Mutex<Managed>>)> =
            lock(&self.managed).iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        for (name, entry) in entries {
            let mut m = lock(&entry);
            if m.instance.status() != Status::Stopped {
                continue;
            }
            let now = Instant::now();
            match m.next_restart {
                None => {
                    m.failures =
                        if now.duration_since(m.started_at) < HEALTHY_AFTER { m.failures + 1 } else { 0 };
                    let wait = backoff(m.failures);
                    tracing::warn!(instance = %name, failures = m.failures, restart_in = ?wait, "instance died");
                    m.next_restart = Some(now + wait);
                }
                Some(at) if now < at => continue,
                Some(_) => {}
            }
            if m.next_restart.is_some_and(|at| now >= at) {
                match m.instance.start() {
                    Ok(()) => {
                        tracing::info!(instance = %name, "instance restarted");
                        m.started_at = Instant::now();
                        m.next_restart = None;
                    }
                    Err(e) => {
                        m.failures += 1;
                        let wait = backoff(m.failures);
                        tracing::error!(instance = %name, error = %e, restart_in = ?wait, "instance restart failed");
                        m.next_restart = Some(Instant::now() + wait);
                    }
                }
            }
        }
    }

    /// Runs `check` every second until `shutdown`.
    pub async fn supervise(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = Arc::clone(&self);
            if tokio::task::spawn_blocking(move || me.check()).await.is_err() {
                tracing::error!("instance supervision pass panicked");
            }
        }
    }
}

/// Starts an instance; a postmaster left running by an earlier Berth process that died is
/// stopped first (fast shutdown), so this process owns and supervises the new one.
pub fn start_fresh(instance: &mut Instance) -> Result<(), NodeError> {
    match instance.start() {
        Err(NodeError::AlreadyRunning { pid, .. }) => {
            tracing::warn!(pid, root = %instance.root().display(), "stopping a postmaster left by an earlier run");
            instance.stop()?;
            instance.start()
        }
        other => other,
    }
}

/// No wait for a first death, then 1 s, 2 s, 4 s … up to a minute.
fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (failures - 1).min(6)).min(MAX_BACKOFF)
}

/// A reset's swap that did not happen, or did not hold.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// Nothing was swapped: the branch is as it was.
    #[error(transparent)]
    NotSwapped(#[from] NodeError),
    /// The new instance did not start. `restored` is `None` when the old data is back and
    /// serving, or why putting it back failed.
    #[error("the new instance did not start: {start}")]
    StartFailed { start: Box<NodeError>, restored: Option<Box<NodeError>> },
}

fn rename(from: &Path, to: &Path) -> Result<(), NodeError> {
    std::fs::rename(from, to).map_err(|e| io_error(to, e))
}

fn io_error(path: &Path, source: std::io::Error) -> NodeError {
    NodeError::Io { path: path.to_owned(), source }
}

/// Runs one statement as the superuser with the instance's own `psql` over its socket, as
/// the instance's OS user with an empty environment.
fn run_psql(instance: &Instance, sql: &str) -> Result<(), NodeError> {
    let program = instance.binaries().program("psql");
    let output = instance
        .client_command("psql")
        .arg("-X")
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-h"])
        .arg(instance.socket_dir())
        .args(["-p", &instance.port().to_string(), "-U", instance.superuser(), "-d", "postgres", "-c", sql])
        .output()
        .map_err(|source| NodeError::Spawn {
            program: program.clone(),
            cwd: instance.root().to_owned(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(NodeError::CommandFailed {
        program,
        status: output.status,
        output: String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(50), MAX_BACKOFF);
    }
}
