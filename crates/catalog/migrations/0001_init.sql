-- The control plane's catalog: organizations, their API keys and projects, each project's
-- branches and roles, the durable job queue, and remembered Idempotency-Key responses.

CREATE TABLE organizations (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id                          text PRIMARY KEY,
    organization_id             text NOT NULL REFERENCES organizations (id),
    name                        text NOT NULL,
    state                       text NOT NULL
        CHECK (state IN ('provisioning', 'ready', 'failed', 'deleting')),
    max_direct_connections      integer,
    max_pooled_connections      integer,
    query_timeout_ms            bigint,
    transaction_timeout_ms      bigint,
    idle_timeout_ms             bigint,
    idle_in_transaction_timeout_ms bigint,
    pool_config                 jsonb NOT NULL DEFAULT '{}',
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
-- A project being deleted gives its name back at once.
CREATE UNIQUE INDEX projects_name_in_org ON projects (organization_id, name) WHERE state <> 'deleting';

CREATE TABLE branches (
    id          text PRIMARY KEY,
    project_id  text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

CREATE TABLE roles (
    id                  text PRIMARY KEY,
    project_id          text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name                text NOT NULL,
    -- AES-256-GCM under the master key: nonce || ciphertext || tag.
    password_ciphertext bytea NOT NULL,
    -- SCRAM-SHA-256 verifier, as in pg_authid.
    verifier            text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

CREATE TABLE api_keys (
    id              text PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations (id),
    project_id      text REFERENCES projects (id) ON DELETE CASCADE,
    name            text NOT NULL,
    scopes          text[] NOT NULL,
    key_hash        bytea NOT NULL UNIQUE,
    -- The first characters of the key, for people to tell keys apart.
    key_prefix      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz
);

CREATE TABLE jobs (
    id                      text PRIMARY KEY,
    type                    text NOT NULL,
    state                   text NOT NULL
        CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts                integer NOT NULL DEFAULT 0,
    max_attempts            integer NOT NULL CHECK (max_attempts > 0),
    claimed_at              timestamptz,
    claimed_by              text,
    lease_expires_at        timestamptz,
    run_after               timestamptz NOT NULL DEFAULT now(),
    cluster_id              text,
    locked_resource         text,
    retry_classification    text CHECK (retry_classification IN ('transient', 'permanent')),
    last_exit_code          integer,
    last_stdout             text,
    last_stderr             text,
    error                   text,
    payload                 jsonb NOT NULL DEFAULT '{}',
    created_at              timestamptz NOT NULL DEFAULT now(),
    started_at              timestamptz,
    completed_at            timestamptz,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    organization_id         text NOT NULL,
    project_id              text,
    preview_database_id     text
);
-- One running job per resource: work on one project is serialized.
CREATE UNIQUE INDEX jobs_one_running_per_resource ON jobs (locked_resource) WHERE state = 'running';
CREATE INDEX jobs_pending ON jobs (run_after, created_at) WHERE state = 'pending';
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_by_org ON jobs (organization_id, id);

CREATE TABLE idempotency_keys (
    organization_id text NOT NULL,
    key             text NOT NULL,
    -- SHA-256 of method, path and body: the same key with another request is refused.
    request_hash    bytea NOT NULL,
    status          integer,
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, key)
);

-- Whoever serves routes (the proxy's route sync) listens on berth_routes; workers and
-- long-polling API requests listen on berth_jobs.
CREATE FUNCTION berth_notify_routes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('berth_routes', '');
    RETURN NULL;
END $$;

CREATE TRIGGER projects_notify_routes AFTER INSERT OR UPDATE OR DELETE ON projects
    FOR EACH STATEMENT EXECUTE FUNCTION berth_notify_routes();
CREATE TRIGGER branches_notify_routes AFTER INSERT OR UPDATE OR DELETE ON branches
    FOR EACH STATEMENT EXECUTE FUNCTION berth_notify_routes();
CREATE TRIGGER roles_notify_routes AFTER INSERT OR UPDATE OR DELETE ON roles
    FOR EACH STATEMENT EXECUTE FUNCTION berth_notify_routes();

CREATE FUNCTION berth_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('berth_jobs', NEW.id);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION berth_notify_jobs();
