-- Idempotency records were per organization and replayed to any key of it: a
-- project-scoped key sending an organization key's Idempotency-Key and body got that
-- request's response, a new organization-wide key among them. A record now belongs to the
-- API key that made it, and a retry by any other key runs as a request of its own.
-- Records are short-lived retry records with no owner to give them, so they are dropped.
DELETE FROM idempotency_keys;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys
    ADD COLUMN api_key_id text NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE;
-- JSON pointers of the response members replaced before it was stored (a new key's
-- plaintext): the replay tells the client what it cannot have again.
ALTER TABLE idempotency_keys ADD COLUMN redacted text[] NOT NULL DEFAULT '{}';
ALTER TABLE idempotency_keys ADD PRIMARY KEY (organization_id, api_key_id, key);
COMMENT ON COLUMN idempotency_keys.request_hash IS
    'HMAC-SHA-256, under a key derived from the master key, of method, path and body';
