-- Upstreams a user registered (PgBeam style): a PostgreSQL reached over the network with
-- stored credentials, served through Berth's proxy. The password is sealed under the
-- master key with the row id as associated data; it is never returned by the API.
CREATE TABLE registered_databases (
    id                  text PRIMARY KEY,
    project_id          text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    host                text NOT NULL,
    port                integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    name                text NOT NULL,
    username            text NOT NULL,
    password_ciphertext bytea NOT NULL,
    ssl_mode            text NOT NULL,
    role                text NOT NULL CHECK (role IN ('primary', 'replica')),
    pool_region         text NOT NULL DEFAULT '',
    cache_config        jsonb NOT NULL DEFAULT '{}',
    pool_config         jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX registered_databases_project ON registered_databases (project_id, id);

CREATE TRIGGER registered_databases_notify_routes AFTER INSERT OR UPDATE OR DELETE ON registered_databases
    FOR EACH STATEMENT EXECUTE FUNCTION berth_notify_routes();
