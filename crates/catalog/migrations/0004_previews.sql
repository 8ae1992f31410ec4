-- Preview databases: branches with a time to live (id prefix prev_), made from a branch for
-- one pull request and reaped when they expire. They share branches' names (both are
-- reached as <project>.<name>) but are listed apart.
ALTER TABLE branches
    ADD COLUMN kind text NOT NULL DEFAULT 'branch' CHECK (kind IN ('branch', 'preview')),
    ADD COLUMN expires_at timestamptz,
    ADD CONSTRAINT branches_preview_expires CHECK ((kind = 'preview') = (expires_at IS NOT NULL));
CREATE INDEX branches_expiring ON branches (expires_at) WHERE kind = 'preview' AND state <> 'deleting';
