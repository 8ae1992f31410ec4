//! The route sync of `berth up`: the proxy's routes are reloaded when the catalog changes
//! something a route is built from, and not otherwise. An idle `berth up` (whose worker
//! passes once a second) reloads nothing; a new project and a rotation each reload, and the
//! reloaded routes serve them.

mod common;

use std::time::Duration;

use common::*;

/// The log line of a reload woken by the catalog's `berth_routes` notification.
const NOTIFIED_RELOAD: &str = r#"routes reloaded why="catalog changed""#;

fn notified_reloads(up: &Up) -> usize {
    up.log().matches(NOTIFIED_RELOAD).count()
}

#[test]
fn routes_reload_when_the_catalog_changes_and_never_while_idle() {
    let data = data_dir();
    let up = berth_up(data.path(), Ports::free());

    // Five seconds are about five worker passes (rotation graces, preview reaping, the job
    // queue), none of which changes anything here.
    let started = notified_reloads(&up);
    std::thread::sleep(Duration::from_secs(5));
    let idle = notified_reloads(&up) - started;
    assert_eq!(idle, 0, "an idle berth up reloaded its routes {idle} times");

    up.create_project("shop");
    let old = up.connection("shop", false);
    wait_for("the new project to be routed", || psql(&old, "select 1").0);

    let before = notified_reloads(&up);
    let (ok, out, err) = up.cli(&["credentials", "rotate", "shop"]);
    assert!(ok && out.contains("succeeded"), "{out} {err}");
    let new = up.connection("shop", false);
    assert_ne!(new, old, "the rotation changed no password");
    // One reload when the rotation began (both verifiers), one when it finished (the new one
    // only), each woken by the catalog; after the second the old password is refused.
    wait_for("a reload for each step of the rotation", || notified_reloads(&up) - before >= 2);
    let (ok, _, err) = psql(&new, "select 1");
    assert!(ok, "the new password does not log in: {err}");
    let (ok, _, err) = psql(&old, "select 1");
    assert!(!ok && err.contains("password authentication failed"), "the old password still logs in: {err}");
    up.stop();
}
