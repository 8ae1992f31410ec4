-- The proxy's admin console needs the `admin` scope (any organization key opened it
-- before). Organization-wide keys that could already mint such a key (`keys:write`) get it,
-- so the bootstrap admin key keeps its console.
UPDATE api_keys
SET scopes = array_append(scopes, 'admin')
WHERE project_id IS NULL AND 'keys:write' = ANY (scopes) AND NOT ('admin' = ANY (scopes));
