//! SHOW commands of the admin console, with PgBouncer's column names where the meaning is the
//! same, plus pgdecomp's own (PHASE, SCHEMAS, VIOLATIONS).

use std::sync::atomic::Ordering;

use crate::protocol::backend::{PgError, Table};
use crate::shared::Shared;
use crate::topology::ClusterId;

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

pub fn show(what: &str, shared: &Shared) -> Result<Table, PgError> {
    let snap = shared.config.load_full();
    let mut t;
    match what {
        "VERSION" => {
            t = Table::new(&["version"]);
            t.row(vec![s(format!("pgdecomp {}", env!("CARGO_PKG_VERSION")))]);
        }
        "PHASE" => {
            t = Table::new(&["phase", "name", "file", "shadow", "locked_writes"]);
            let p = &snap.phase;
            t.row(vec![
                s(p.number()),
                s(p.name()),
                s(snap.phase_file.display()),
                p.shadow()
                    .map(|sh| format!("{} ({})", sh.number(), sh.name())),
                s(p.locked_writes()),
            ]);
        }
        "FLEET" => {
            t = Table::new(&[
                "instance",
                "etcd",
                "connected",
                "phase",
                "source",
                "revision",
                "last_error",
            ]);
            let st = shared.fleet.status();
            if let Some(f) = &snap.fleet {
                let source = match &st.applied {
                    crate::fleet::Applied::Etcd { value, .. } => format!("etcd: {value}"),
                    crate::fleet::Applied::File => format!("file: {}", snap.phase_file.display()),
                };
                t.row(vec![
                    s(&f.instance),
                    s(f.endpoints.join(",")),
                    s(st.connected),
                    s(snap.phase.number()),
                    s(source),
                    s(st.applied.revision()),
                    st.last_error,
                ]);
            }
        }
        "POOLS" | "SERVERS" => {
            t = Table::new(&[
                "database",
                "user",
                "db_config_name",
                "server",
                "sv_active",
                "sv_idle",
                "cl_waiting",
                "maxwait_size",
                "paused",
            ]);
            let paused = shared.control.paused();
            for (key, pool) in shared.pools.load().all() {
                let st = crate::pool::Pools::status(&pool);
                t.row(vec![
                    s(&key.spec.dbname),
                    s(&key.spec.user),
                    s(key.target.label()),
                    s(&key.spec.addr),
                    s(st.size - st.available),
                    s(st.available),
                    s(st.waiting),
                    s(st.max_size),
                    s(paused & (1 << (key.target as u8)) != 0),
                ]);
            }
        }
        "CLIENTS" => {
            t = Table::new(&[
                "id",
                "user",
                "database",
                "state",
                "addr",
                "port",
                "connect_time",
                "db_config_name",
                "actor",
                "rollout",
            ]);
            for (id, e) in shared.control.clients() {
                let state = match e.state.load(Ordering::Relaxed) {
                    1 => "waiting",
                    2 => "active",
                    _ => "idle",
                };
                // The actor ci_read sees (ci_write's differs only if its `actor` source does).
                let (actor, client_roll) = e.rollout();
                let phase = &snap.phase;
                let since = iso_time(e.since);
                t.row(vec![
                    s(id),
                    s(&e.user),
                    s(&e.database),
                    s(state),
                    s(e.peer.ip()),
                    s(e.peer.port()),
                    s(since),
                    e.target().map(|t| t.label().to_string()),
                    s(actor.name(phase.ci_read_rollout().actor)),
                    s(phase.describe_rollouts(&actor, client_roll)),
                ]);
            }
        }
        "STATS" => {
            t = Table::new(&[
                "db_config_name",
                "total_xact_count",
                "total_query_count",
                "total_xact_time_us",
            ]);
            let m = &shared.metrics;
            for target in crate::route::Target::ALL {
                let l = target.label();
                let xacts = m.transactions.with_label_values(&[l]).get();
                let queries: u64 = [
                    "read",
                    "locking_read",
                    "write",
                    "ddl",
                    "transaction",
                    "session",
                    "utility",
                    "unknown",
                ]
                .iter()
                .map(|k| m.statements.with_label_values(&[l, k]).get())
                .sum();
                let secs = m
                    .transaction_seconds
                    .with_label_values(&[l])
                    .get_sample_sum();
                t.row(vec![s(l), s(xacts), s(queries), s((secs * 1e6) as u64)]);
            }
        }
        "CONFIG" => {
            t = Table::new(&["key", "value"]);
            for (k, v) in [
                ("listen", snap.listen.to_string()),
                ("workers", snap.workers.to_string()),
                ("pool_mode", format!("{:?}", snap.pool_mode).to_lowercase()),
                ("pool_size", snap.pool.pool_size.to_string()),
                ("min_idle", snap.pool.min_idle.to_string()),
                (
                    "query_wait_timeout",
                    format!("{:?}", snap.pool.query_wait_timeout),
                ),
                ("max_client_conn", snap.max_client_conn.to_string()),
                ("auth_type", format!("{:?}", snap.auth_type)),
                ("phase_file", snap.phase_file.display().to_string()),
            ] {
                t.row(vec![s(k), s(v)]);
            }
        }
        "DATABASES" => {
            t = Table::new(&[
                "name",
                "database",
                "db_config",
                "main_primary",
                "ci_primary",
            ]);
            let mut names: Vec<_> = snap.databases.iter().collect();
            names.sort_by_key(|(n, _)| n.as_str());
            let view = shared.topology.view();
            let writer = |id| {
                view.cluster(id)
                    .writer()
                    .map(|n| n.addr.clone())
                    .unwrap_or_else(|| "(none writable)".into())
            };
            let (main, ci) = (writer(ClusterId::Main), writer(ClusterId::Ci));
            for (name, db) in names {
                t.row(vec![
                    s(name),
                    s(&db.dbname),
                    db.db_config.map(|g| g.label().to_string()),
                    s(&main),
                    s(&ci),
                ]);
            }
        }
        "TOPOLOGY" => {
            t = Table::new(&[
                "cluster",
                "server",
                "role",
                "state",
                "writable",
                "in_rotation",
                "lsn",
                "lag_bytes",
                "lag_seconds",
                "patroni",
                "error",
            ]);
            let view = shared.topology.view();
            for id in ClusterId::ALL {
                for n in &view.cluster(id).nodes {
                    let p = n.probe();
                    t.row(vec![
                        s(id.label()),
                        s(&n.addr),
                        s(n.role_label()),
                        s(n.state().label()),
                        s(n.writable()),
                        s(n.readable()),
                        p.map(|p| p.lsn.to_string()),
                        p.map(|p| p.lag_bytes.to_string()),
                        p.map(|p| format!("{:.3}", p.lag_seconds)),
                        n.patroni
                            .as_ref()
                            .map(|m| format!("{} {} {}", m.name, m.role, m.state)),
                        match &n.health {
                            crate::topology::Health::Down(e) => Some(e.clone()),
                            _ => None,
                        },
                    ]);
                }
            }
        }
        "SCHEMAS" => {
            t = Table::new(&["db_config_name", "gitlab_schemas", "count"]);
            let families = shared.metrics.schemas_used.clone();
            let mut rows = Vec::new();
            for mf in prometheus::core::Collector::collect(&families) {
                for m in mf.get_metric() {
                    let label = |n: &str| {
                        m.get_label()
                            .iter()
                            .find(|l| l.name() == n)
                            .map(|l| l.value().to_string())
                    };
                    rows.push((
                        label("db_config_name"),
                        label("gitlab_schemas"),
                        m.get_counter().get_value() as u64,
                    ));
                }
            }
            rows.sort();
            for (db, schemas, n) in rows {
                t.row(vec![db, schemas, s(n)]);
            }
        }
        "VIOLATIONS" => {
            t = Table::new(&["at", "client", "kind", "mode", "message", "statement"]);
            let recent = shared
                .recent_violations
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for v in recent.iter().rev() {
                t.row(vec![
                    s(iso_time(v.at)),
                    s(v.client),
                    s(v.kind),
                    s(v.mode),
                    s(&v.message),
                    s(&v.sql),
                ]);
            }
        }
        other => {
            return Err(PgError::error(
                "42601",
                format!("unknown SHOW target {other}"),
            ));
        }
    }
    Ok(t)
}

/// A time as ISO 8601 in UTC to the second (`2026-11-27T19:55:02Z`): operators read it, as
/// PgBouncer's SHOW output gives text timestamps.
pub fn iso_time(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}
