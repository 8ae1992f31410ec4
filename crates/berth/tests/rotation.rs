//! Credential rotation with a grace period, through `berth up` and its proxy: both passwords
//! log in during the grace, only the new one after it.

mod common;

use common::*;

#[test]
fn the_old_password_works_until_the_grace_period_ends() {
    let data = data_dir();
    let up = berth_up(data.path(), Ports { api: free_port(), pooled: free_port(), direct: free_port() });
    let (ok, _, err) = up.cli(&["projects", "create", "shop"]);
    assert!(ok, "{err}");
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
