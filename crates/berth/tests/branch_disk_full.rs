//! A `full` branch that does not fit on the disk, for real: `berth up`'s data directory on a
//! small loop-mounted ext4 whose free space a filler file brings below the parent's size
//! (leaving the instances room for their WAL). The branch job fails saying the disk is full
//! and where, once (a retry would fill it again), no partial copy is left, the parent serves
//! reads and writes throughout (pgbench from new connections through the proxy, and a session
//! held open keeps its backend), and once space is freed the same branch name is made.
//! A copy that filled the disk would crash the parent (PANIC: it cannot write its WAL), so a
//! plain copy refuses to take the last 64 MiB (node's `room`); the kernel's own ENOSPC, should
//! something else fill the disk during a copy, ends the job the same way.
//! Needs root and loop devices; without them the test fails saying so.

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;

/// A loop-mounted ext4 filesystem, unmounted when dropped (when the test fails too).
struct LoopMount {
    dir: PathBuf,
}

impl LoopMount {
    fn new(image: &Path, dir: &Path, size: &str) -> LoopMount {
        std::fs::create_dir(dir).unwrap();
        must("truncate", &["-s".as_ref(), size.as_ref(), image.as_os_str()]);
        // No blocks reserved for root: Berth (root) and PostgreSQL see the same free space.
        must("mkfs.ext4", &["-q".as_ref(), "-m".as_ref(), "0".as_ref(), image.as_os_str()]);
        must("mount", &["-o".as_ref(), "loop".as_ref(), image.as_os_str(), dir.as_os_str()]);
        let mount = LoopMount { dir: dir.to_owned() };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        mount
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file there: detach now, unmounted when it lets go.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn must(program: &str, args: &[&OsStr]) {
    let out = Command::new(program).args(args).output();
    let why = match out {
        Ok(out) if out.status.success() => return,
        Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
        Err(e) => e.to_string(),
    };
    panic!(
        "this test needs a loop-mounted ext4 filesystem (root, loop devices, mkfs.ext4): {program} {args:?} failed: {why}"
    );
}

/// Bytes an unprivileged user (PostgreSQL) may still write on the filesystem holding `path`.
fn free_space(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    s.blocks_available() * s.fragment_size()
}

/// The bytes of the files under `dir`, leaving out its top-level entries named in `skip`.
fn dir_size(dir: &Path, skip: &[&str]) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if skip.iter().any(|s| entry.file_name() == *s) {
            continue;
        }
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { dir_size(&entry.path(), &[]) } else { meta.len() };
    }
    total
}

/// A file of `bytes` zeros, written (not sparse) and synced, so the blocks are taken.
fn fill(path: &Path, bytes: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64);
        file.write_all(&chunk[..n as usize]).unwrap();
        left -= n;
    }
    file.sync_all().unwrap();
}

/// One statement through psql that must succeed; its output.
fn sql(uri: &str, statement: &str) -> String {
    let (ok, out, err) = psql(uri, statement);
    assert!(ok, "{statement}: {err}");
    out
}

#[test]
fn a_full_branch_that_does_not_fit_on_the_disk_fails_cleanly_and_the_parent_keeps_serving() {
    let tmp = data_dir();
    let disk = LoopMount::new(&tmp.path().join("disk.img"), &tmp.path().join("mnt"), "1G");
    let data = disk.dir.join("data");
    let up = berth_up(&data, Ports::free());
    up.create_project("shop");
    let main_uri = up.connection("shop", false);
    sql(
        &main_uri,
        "CREATE TABLE big (i int PRIMARY KEY, pad text); \
         INSERT INTO big SELECT g, repeat(md5(g::text), 16) FROM generate_series(1, 150000) g; \
         CREATE TABLE marks (i bigserial PRIMARY KEY)",
    );
    let (_, main) = api_json(&data, "GET", "/v1/projects/shop/branches/main", "");
    let main_id = main["id"].as_str().unwrap().to_owned();
    let instances = data.join("instances");
    let parent_size = dir_size(&instances.join(&main_id).join("data"), &["pg_wal"]);

    // The copy cannot fit, and the instances keep room for their WAL: six segments.
    let filler = disk.dir.join("filler");
    fill(&filler, free_space(&disk.dir) - (96 << 20));
    let free = free_space(&disk.dir);
    assert!(free < parent_size, "the copy would fit: {free} bytes free, the parent has {parent_size}");

    // Reads and writes on the parent through the proxy, each run from new connections, from
    // before the branch is requested until its job has ended; and a session held open.
    let mut held = held_psql(&main_uri);
    let pid = held.query("SELECT pg_backend_pid()");
    assert!(pid.parse::<i32>().is_ok_and(|p| p > 0), "no backend pid: {pid:?}");
    let script = tmp.path().join("read-write.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 150000)\nSELECT length(pad) FROM big WHERE i = :id;\nINSERT INTO marks DEFAULT VALUES;\n",
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = std::thread::spawn({
        let (stop, uri) = (Arc::clone(&stop), main_uri.clone());
        move || -> Result<usize, String> {
            let mut runs = 0;
            while !stop.load(Ordering::SeqCst) {
                let out = Command::new("pgbench")
                    .args(["-n", "-c", "2", "-T", "1", "-f"])
                    .arg(&script)
                    .arg(&uri)
                    .output()
                    .unwrap();
                let report =
                    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
                if !out.status.success() || !report.contains("number of failed transactions: 0 ") {
                    return Err(report);
                }
                runs += 1;
            }
            Ok(runs)
        }
    });
    wait_for("pgbench writes on the parent", || sql(&main_uri, "SELECT count(*) > 0 FROM marks") == "t");

    let (status, created) =
        api_json(&data, "POST", "/v1/projects/shop/branches", r#"{"name":"dev","data":"full"}"#);
    assert_eq!(status, 201, "{created}");
    let branch_id = created["branch"]["id"].as_str().unwrap().to_owned();
    let job = ended_job(&data, created["job"]["id"].as_str().unwrap());
    stop.store(true, Ordering::SeqCst);
    let runs = load.join().unwrap().unwrap_or_else(|report| panic!("pgbench failed on the parent: {report}"));
    assert!(runs > 0, "no pgbench run on the parent completed");

    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["retry_classification"], "permanent", "a retry would fill the disk again: {job}");
    assert_eq!(job["attempts"], 1, "{job}");
    // Berth's own refusal or the kernel's ENOSPC, both name the device's state and a path.
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.to_lowercase().contains("no space left on device"),
        "the error does not say the disk is full: {job}"
    );
    let branch_root = instances.join(&branch_id);
    assert!(error.contains(branch_root.to_str().unwrap()), "the error does not say where: {job}");
    let (_, branch) = api_json(&data, "GET", "/v1/projects/shop/branches/dev", "");
    assert_eq!(branch["state"], "failed", "{branch}");
    let left: Vec<_> = std::fs::read_dir(&instances).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [OsStr::new(&main_id)], "the partial copy was left in {}", instances.display());

    // The parent never noticed: same session, its data, and it takes writes.
    assert_eq!(held.query("SELECT pg_backend_pid()"), pid, "the parent's session was dropped");
    assert_eq!(held.query("SELECT count(*) FROM big"), "150000");
    assert_eq!(
        held.query("WITH w AS (INSERT INTO marks DEFAULT VALUES RETURNING 1) SELECT 'written' FROM w"),
        "written"
    );

    // With room again, the same name is made (after the failed branch is deleted).
    std::fs::remove_file(&filler).unwrap();
    let (status, deleted) = api_json(&data, "DELETE", "/v1/projects/shop/branches/dev", "");
    assert_eq!(status, 202, "{deleted}");
    assert_eq!(ended_job(&data, deleted["job"]["id"].as_str().unwrap())["state"], "succeeded");
    let (status, again) =
        api_json(&data, "POST", "/v1/projects/shop/branches", r#"{"name":"dev","data":"full"}"#);
    assert_eq!(status, 201, "{again}");
    let job = ended_job(&data, again["job"]["id"].as_str().unwrap());
    assert_eq!(job["state"], "succeeded", "{job}");
    let dev_uri = up.cli(&["connection", "shop", "--branch", "dev"]).1;
    wait_for("shop.dev is routed", || psql(&dev_uri, "SELECT count(*) FROM big").1 == "150000");
    let marks = held.query("SELECT count(*) FROM marks");
    assert_eq!(sql(&dev_uri, "SELECT count(*) FROM marks"), marks, "the branch misses rows of its parent");
    assert_eq!(held.query("SELECT pg_backend_pid()"), pid, "the parent's session was dropped");
    held.close();
    up.stop();
}
