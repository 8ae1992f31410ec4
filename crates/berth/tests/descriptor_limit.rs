//! `berth up` raises its soft descriptor limit to the hard one at start: a shell's soft limit
//! (often 1024) would refuse clients long before the proxy is busy.

mod common;

use common::*;

fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files");
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (nums[0], nums[1])
}

#[test]
fn berth_up_raises_its_soft_descriptor_limit_to_the_hard_one() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    // berth up inherits a low soft limit, as from a shell.
    setrlimit(Resource::RLIMIT_NOFILE, 512.min(hard), hard).expect("setrlimit");
    let data = data_dir();
    let up = berth_up(data.path(), Ports::free());
    let (soft, up_hard) = open_files_limits(up.child.id());
    assert_eq!(up_hard, hard);
    assert_eq!(soft, hard, "the soft limit stayed at {soft}");
}
