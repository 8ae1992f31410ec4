-- Branches beyond main: each has a parent (main has none), the data it was made with
-- (`full` physical copy, `schema` only, or `empty`), and a state of its own; a branch being
-- deleted gives its name back at once. Jobs report progress in bytes (a full branch's copy).
ALTER TABLE branches
    ADD COLUMN parent_id text REFERENCES branches (id),
    ADD COLUMN data text NOT NULL DEFAULT 'full' CHECK (data IN ('full', 'schema', 'empty')),
    ADD COLUMN state text NOT NULL DEFAULT 'ready'
        CHECK (state IN ('creating', 'ready', 'failed', 'deleting')),
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE branches DROP CONSTRAINT branches_project_id_name_key;
CREATE UNIQUE INDEX branches_name_in_project ON branches (project_id, name) WHERE state <> 'deleting';
CREATE INDEX branches_parent ON branches (parent_id);

ALTER TABLE jobs
    ADD COLUMN progress_bytes_done bigint,
    ADD COLUMN progress_bytes_total bigint;
