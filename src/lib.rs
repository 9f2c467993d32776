//! pgdecomp: a PostgreSQL proxy that splits one database into two (GitLab's CI decomposition).
//!
//! Data flows `session` (client socket) → `protocol` (framing) → `classify` → `route` → `pool`
//! → `server`. `classify` and `route` are pure functions; the session records metrics from what
//! they return. `config` publishes immutable snapshots; `shared` holds the proxy-wide state
//! (pools, caches, registries, metrics) beside the pipeline; `app` wires the running proxy.

pub mod admin;
pub mod alloc;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod classify;
pub mod config;
pub mod cutover;
pub mod fleet;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod protocol;
pub mod route;
pub mod server;
pub mod session;
pub mod shared;
pub mod topology;

/// The virtual database of the admin console.
pub const ADMIN_DB: &str = "pgdecomp";
