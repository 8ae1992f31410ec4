-- What a registration check saw and supplied, so every later login is held to it:
-- `auth_method` is the password exchange the upstream asked for (a later login asked for a
-- weaker one is refused; NULL for registrations made before it was recorded), and
-- `ssl_root_cert` the PEM roots `verify-ca`/`verify-full` trust instead of the system's.
ALTER TABLE registered_databases
    ADD COLUMN auth_method text CHECK (auth_method IN ('scram-sha-256', 'md5', 'password')),
    ADD COLUMN ssl_root_cert text;
