-- A rotation with a grace period: the new password is current (connection strings show it,
-- the instances hold its verifier) while the old verifier is still accepted by the proxy
-- until grace_until; then the worker finishes the rotation.
ALTER TABLE roles ADD COLUMN grace_until timestamptz;
