//! Credential rotation with a grace period, through `berth up` and its proxy: both passwords
//! log in during the grace, only the new one after it.

mod common;

use common::*;

#[test]
fn the_old_password_works_until_the_grace_period_ends() {
    let data = data_dir();
    let up = berth_up(data.path(), Ports::free());
    up.create_project("shop");
    let old = up.connection("shop", false);
    let old_pooled = up.connection("shop", true);
    let (ok, out, err) = up.cli(&["credentials", "rotate", "shop", "--grace-seconds", "3"]);
    assert!(ok && out.contains("succeeded") && out.contains("3 more seconds"), "{out} {err}");
    let new = up.connection("shop", false);
    assert_ne!(new, old, "connection strings show the new password at once");
    for uri in [&old, &old_pooled, &new] {
        let (ok, _, err) = psql(uri, "select 1");
        assert!(ok, "refused during the grace period: {err}");
    }
    wait_for("the old password to be refused", || {
        let (ok, _, err) = psql(&old, "select 1");
        !ok && err.contains("password authentication failed")
    });
    assert!(!psql(&old_pooled, "select 1").0, "the old password still works on the pooled port");
    assert!(psql(&new, "select 1").0, "the new password stopped working");
    let logs = up.stop();
    assert!(logs.contains("rotation grace periods over"), "the end of the grace was not logged");
}

#[test]
fn pgbench_through_both_ports_loses_no_transaction_to_a_rotation() {
    let data = data_dir();
    let up = berth_up(data.path(), Ports::free());
    up.create_project("shop");
    let (direct, pooled) = (up.connection("shop", false), up.connection("shop", true));
    pgbench(&direct, &["-i", "-s", "1", "-q"]);
    let runs: Vec<_> = [direct.clone(), pooled.clone()]
        .into_iter()
        .map(|uri| {
            std::thread::spawn(move || pgbench(&uri, &["-c", "4", "-j", "2", "-T", "8", "-M", "prepared"]))
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (ok, out, err) = up.cli(&["credentials", "rotate", "shop"]);
    assert!(ok && out.contains("succeeded"), "{out} {err}");
    for run in runs {
        let report = run.join().expect("pgbench thread");
        assert!(report.contains("number of failed transactions: 0 "), "{report}");
    }
    let (new_direct, new_pooled) = (up.connection("shop", false), up.connection("shop", true));
    for (old, new) in [(&direct, &new_direct), (&pooled, &new_pooled)] {
        assert!(psql(new, "select 1").0, "the new password does not connect");
        wait_for("the old password to get 28P01", || {
            let (ok, _, err) = psql(old, "select 1");
            !ok && err.contains("password authentication failed")
        });
    }
    up.stop();
}
