//! Configuration files of the Patroni lab: etcd's and one per Patroni member.
//!
//! Configs are written as JSON: YAML is a superset of JSON, and both Patroni (PyYAML) and etcd
//! (ghodss/yaml) read them, so no hand-rolled YAML quoting is needed.

use serde_json::{json, Value};
use std::path::Path;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const HBA: &str = include_str!("../../fixtures/pg_hba.conf");

pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "lab-super";
pub const REPLICATION_USER: &str = "replicator";
pub const REPLICATION_PASSWORD: &str = "lab-repl";
/// Main's permanent physical slot the ci standby leader streams through.
pub const CI_SLOT: &str = "ci_standby";

/// Where one member lives: the names and ports its config refers to.
pub struct MemberConf<'a> {
    pub cluster: &'a str,
    pub name: &'a str,
    pub pg_port: u16,
    pub rest_port: u16,
    pub data_dir: &'a Path,
    pub socket_dir: &'a Path,
    pub pgpass: &'a Path,
}

/// A single-member etcd. `enable-grpc-gateway` must be explicit: the command-line default is
/// not applied to config files, and without the v3 JSON gateway Patroni's `etcd3` client waits
/// on etcd forever (404 on /v3).
pub fn etcd_config(data_dir: &Path, client_port: u16, peer_port: u16) -> Value {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    json!({
        "name": "lab",
        "data-dir": data_dir,
        "listen-client-urls": client,
        "advertise-client-urls": client,
        "listen-peer-urls": peer,
        "initial-advertise-peer-urls": peer,
        "initial-cluster": format!("lab={peer}"),
        "initial-cluster-state": "new",
        "initial-cluster-token": "pgdecomp-lab",
        "enable-grpc-gateway": true,
        "logger": "zap",
        "log-level": "warn",
        "log-outputs": ["stderr"],
    })
}

/// The Patroni config of one member. `standby_of` is main's leader PostgreSQL port for the
/// members of the ci standby cluster (a single host/port: a host/port *list* breaks the pgpass
/// Patroni 3.0.2 writes, so the harness re-points it after a switchover instead).
pub fn patroni_config(m: &MemberConf<'_>, etcd_port: u16, standby_of: Option<u16>) -> Value {
    let mut dcs = json!({
        // The "fast" profile: failover after ~10 s instead of ~30 s; loop_wait + 2 *
        // retry_timeout must stay <= ttl.
        "ttl": 10,
        "loop_wait": 2,
        "retry_timeout": 3,
        "maximum_lag_on_failover": 1048576,
        "postgresql": {
            "use_pg_rewind": true,
            "use_slots": true,
            // Parameters that must match on every node live in the DCS.
            "parameters": {
                "max_connections": 200,
                "max_wal_senders": 10,
                "max_replication_slots": 10,
                "wal_level": "replica",
                "hot_standby": "on",
                // Patroni 3.0.2 keeps permanent physical slots only on the primary: after a
                // switchover the new primary creates ci's slot fresh, so WAL ci has not yet
                // received must be kept by size.
                "wal_keep_size": "128MB",
            },
        },
    });
    match standby_of {
        None => dcs["slots"] = json!({ CI_SLOT: { "type": "physical" } }),
        Some(port) => {
            dcs["standby_cluster"] = json!({
                "host": "127.0.0.1",
                "port": port,
                "primary_slot_name": CI_SLOT,
                "create_replica_methods": ["basebackup"],
            })
        }
    }
    let pg_addr = format!("127.0.0.1:{}", m.pg_port);
    let rest_addr = format!("127.0.0.1:{}", m.rest_port);
    json!({
        "scope": m.cluster,
        "name": m.name,
        "namespace": "/pgdecomp/",
        "log": { "level": "INFO" },
        // No /dev/watchdog here; asking for it only adds a warning per start.
        "watchdog": { "mode": "off" },
        "restapi": { "listen": rest_addr, "connect_address": rest_addr },
        "etcd3": { "host": format!("127.0.0.1:{etcd_port}") },
        "bootstrap": {
            "dcs": dcs,
            "initdb": [{ "encoding": "UTF8" }, { "locale": "C" }],
        },
        "postgresql": {
            "listen": pg_addr,
            "connect_address": pg_addr,
            "data_dir": m.data_dir,
            "bin_dir": PG_BIN,
            "pgpass": m.pgpass,
            "authentication": {
                "superuser": { "username": SUPERUSER, "password": SUPERUSER_PASSWORD },
                "replication": { "username": REPLICATION_USER, "password": REPLICATION_PASSWORD },
            },
            "parameters": local_parameters(m.socket_dir),
            "pg_hba": pg_hba(),
            // Without a fast checkpoint a clone right after CREATE DATABASE waited ~100 s
            // for the spread checkpoint.
            "basebackup": [{ "checkpoint": "fast" }],
        },
    })
}

/// Per-node settings, mirroring tests/fixtures/postgresql.conf where Patroni lets us.
fn local_parameters(socket_dir: &Path) -> Value {
    json!({
        "unix_socket_directories": socket_dir,
        // Durability is irrelevant for throwaway test servers; speed is not.
        "fsync": "off",
        "shared_buffers": "32MB",
        "password_encryption": "scram-sha-256",
        "hot_standby_feedback": "on",
        "wal_receiver_status_interval": "1s",
        // A cascading replica whose slot does not exist yet retries after this instead of 5 s.
        "wal_retrieve_retry_interval": "500ms",
        "log_min_messages": "warning",
        "log_line_prefix": "%m [%p] %q%u@%d ",
    })
}

/// The fixture's rules (trust on the socket, one auth method per fixture role over TCP) plus
/// replication over TCP, which Patroni's clones and the ci standby leader need.
fn pg_hba() -> Value {
    let mut rules: Vec<String> = HBA
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    rules.push("host replication all 127.0.0.1/32 scram-sha-256".to_string());
    json!(rules)
}
