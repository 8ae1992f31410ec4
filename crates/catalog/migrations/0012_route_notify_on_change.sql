-- Routes are reloaded only when a row they are built from changed. The statement triggers of
-- 0001 and 0010 fired for every UPDATE and DELETE, also one that matched no row: the
-- worker's pass (once a second when idle) finishing the rotations whose grace is over woke
-- every route sync for a full reload. Row triggers fire only for rows a statement touched,
-- and an UPDATE only for rows whose values changed; a statement over many rows still sends
-- one notification, as PostgreSQL folds a transaction's identical notifications into one.
DROP TRIGGER projects_notify_routes ON projects;
DROP TRIGGER branches_notify_routes ON branches;
DROP TRIGGER roles_notify_routes ON roles;
DROP TRIGGER registered_databases_notify_routes ON registered_databases;

CREATE TRIGGER projects_notify_routes AFTER INSERT OR DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION berth_notify_routes();
CREATE TRIGGER projects_notify_routes_update AFTER UPDATE ON projects
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION berth_notify_routes();
CREATE TRIGGER branches_notify_routes AFTER INSERT OR DELETE ON branches
    FOR EACH ROW EXECUTE FUNCTION berth_notify_routes();
CREATE TRIGGER branches_notify_routes_update AFTER UPDATE ON branches
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION berth_notify_routes();
CREATE TRIGGER roles_notify_routes AFTER INSERT OR DELETE ON roles
    FOR EACH ROW EXECUTE FUNCTION berth_notify_routes();
CREATE TRIGGER roles_notify_routes_update AFTER UPDATE ON roles
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION berth_notify_routes();
CREATE TRIGGER registered_databases_notify_routes AFTER INSERT OR DELETE ON registered_databases
    FOR EACH ROW EXECUTE FUNCTION berth_notify_routes();
CREATE TRIGGER registered_databases_notify_routes_update AFTER UPDATE ON registered_databases
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION berth_notify_routes();
