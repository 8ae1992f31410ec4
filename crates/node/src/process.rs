//! Signals and liveness checks for postmaster processes, whether or not we spawned them.
//! A pid read from a stale `postmaster.pid` may since belong to an unrelated process, so
//! nothing here signals a pid without first checking that it still runs `postgres`.

use std::path::Path;
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::NodeError;

/// How often waits re-check their condition.
const POLL: Duration = Duration::from_millis(20);

/// Sends `sig` to `pid`; `Ok(false)` when the process is already gone.
pub(crate) fn send(pid: u32, sig: Signal) -> Result<bool, NodeError> {
    let raw =
        i32::try_from(pid).map_err(|_| NodeError::Signal { pid, signal: sig, source: Errno::EINVAL })?;
    match signal::kill(Pid::from_raw(raw), sig) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(source) => Err(NodeError::Signal { pid, signal: sig, source }),
    }
}

/// True when `pid` exists and, where `/proc` can tell, runs a `postgres` executable.
pub(crate) fn is_postgres(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match signal::kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    if !Path::new("/proc/self").exists() {
        return true;
    }
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => exe
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("postgres") || n.starts_with("postmaster")),
        // Another user's process we may not inspect: it exists, assume the pid file is right.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => true,
        // Gone, or a zombie (whose exe link is unreadable): not running.
        Err(_) => false,
    }
}

/// Polls `done` until it returns true or `timeout` passes; returns whether it did.
pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// Waits for our child to exit, reaping it; returns whether it did within `timeout`.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> bool {
    // An error from try_wait means the child was already reaped.
    wait_until(timeout, || !matches!(child.try_wait(), Ok(None)))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn a_non_postgres_process_is_not_postgres() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        assert!(!is_postgres(child.id()));
        assert!(send(child.id(), Signal::SIGKILL).expect("kill"));
        assert!(wait_child(&mut child, Duration::from_secs(5)));
        assert!(!is_postgres(child.id()));
    }

    #[test]
    fn wait_until_times_out() {
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(wait_until(Duration::ZERO, || true));
    }
}
