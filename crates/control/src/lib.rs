//! The control plane: HTTP API, API-key auth, the job queue worker and its handlers.
