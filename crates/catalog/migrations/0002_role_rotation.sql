-- Credential rotation: the next password and verifier of a role while a rotation runs. The
-- proxy accepts both verifiers until the rotation finishes and the next becomes the current.
ALTER TABLE roles
    ADD COLUMN next_password_ciphertext bytea,
    ADD COLUMN next_verifier text,
    ADD CONSTRAINT roles_next_complete
        CHECK ((next_password_ciphertext IS NULL) = (next_verifier IS NULL));
