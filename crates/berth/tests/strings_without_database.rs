//! Prisma Postgres strings name no database (`postgres://USER:PASSWORD@host:5432/?sslmode=require`),
//! so libpq sends the user name as the database: such a login reaches the role's project's
//! main branch on both ports, as does one naming the role itself, and a wrong password is
//! still refused.

mod common;

use common::*;

#[test]
fn a_string_without_a_database_reaches_the_projects_main_branch_on_both_ports() {
    let data = data_dir();
    let up = berth_up(data.path(), Ports::free());
    up.create_project("shop");
    for pooled in [false, true] {
        let uri = up.connection("shop", pooled);
        let (base, query) = uri.split_once('?').expect("a query string");
        let (prefix, db) = base.rsplit_once('/').expect("a database");
        assert_eq!(db, "shop", "{uri}");
        let bare = format!("{prefix}/?{query}");
        wait_for("the project to be routed", || psql(&uri, "select 1").0);
        let (ok, out, err) = psql(&bare, "select current_database()");
        assert!(ok, "pooled={pooled}, {bare}: {err}");
        assert_eq!(out, "shop", "pooled={pooled}");
        let named = format!("{prefix}/shop_owner?{query}");
        let (ok, out, err) = psql(&named, "select current_database()");
        assert!(ok && out == "shop", "pooled={pooled}, the role's own name as database: {err}");
        let wrong = bare.replace(&password_of(&uri), "not-the-password");
        let (ok, _, err) = psql(&wrong, "select 1");
        assert!(!ok && err.contains("password authentication failed"), "pooled={pooled}: {err}");
    }
    // Any other unknown database stays unknown.
    let uri = up.connection("shop", false);
    let (ok, _, err) = psql(&uri.replace("/shop?", "/nosuch?"), "select 1");
    assert!(!ok, "{err}");
}
