//! pgdecomp: a PostgreSQL proxy that splits one database into two (GitLab's CI decomposition).
//!
//! Data flows `session::client` → `protocol` (framing) → `classify` → `route` → `pool` →
//! `session::server`. `classify` and `route` are pure functions; the session records metrics from
//! what they return. `config` publishes immutable snapshots; `metrics` observes.

pub mod classify;
pub mod route;
