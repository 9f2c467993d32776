//! Unit tests of config validation for the topology settings: `[health]` and Patroni clusters.

use std::path::PathBuf;

use super::{load, ConfigError};

fn repo(p: &str) -> String {
    format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))
}

/// Writes a minimal config with `clusters` and `extra` appended and loads it.
fn try_load(name: &str, clusters: &str, extra: &str) -> Result<super::Snapshot, ConfigError> {
    let dir = std::env::temp_dir().join(format!(
        "pgdecomp-config-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join("pgdecomp.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nauth_file = \"{}\"\nphase_file = \"{}\"\n\
         [server]\nuser = \"gitlab\"\npassword = \"gitlab\"\n\
         [databases.gitlabhq_production]\n{clusters}\n{extra}\n",
        repo("config/userlist.txt"),
        repo("phases/phase-1.toml"),
    );
    std::fs::write(&path, text).unwrap();
    let r = load(&path);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

const STATIC: &str =
    "[clusters.main]\nprimary = \"127.0.0.1:5432\"\n[clusters.ci]\nprimary = \"127.0.0.1:5433\"";
const PATRONI: &str = "[clusters.main]\npatroni = [\"127.0.0.1:8008\"]\n[clusters.ci]\npatroni = [\"127.0.0.1:8018\"]";

/// The error of a config that must not load.
fn refused(r: Result<super::Snapshot, ConfigError>) -> ConfigError {
    match r {
        Ok(_) => panic!("the config was accepted"),
        Err(e) => e,
    }
}

fn invalid_key(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("expected an invalid key, got {other}"),
    }
}

#[test]
fn health_defaults_follow_gitlab_and_log_in_as_the_server_user() {
    let s = try_load("defaults", STATIC, "").unwrap();
    assert_eq!(s.health.max_lag_bytes, 8 * 1024 * 1024);
    assert_eq!(s.health.max_lag_seconds.as_secs(), 60);
    assert!(s.health.read_your_writes);
    let login = s.health.login.as_ref().expect("checks log in as [server]");
    assert_eq!(
        (login.user.as_str(), login.dbname.as_str()),
        ("gitlab", "gitlabhq_production")
    );
    assert!(s.health.checks_enabled());
}

#[test]
fn patroni_clusters_need_no_static_primary_but_need_checks() {
    let s = try_load("patroni", PATRONI, "").unwrap();
    assert_eq!(s.main.primary, None);
    assert_eq!(s.ci.patroni, vec!["127.0.0.1:8018".to_string()]);
    let e = refused(try_load("patroni-off", PATRONI, "[health]\ninterval = 0"));
    assert_eq!(invalid_key(e), "clusters.main.patroni");
}

#[test]
fn bad_topology_settings_name_their_key() {
    let no_primary = "[clusters.main]\nreplicas = []\n[clusters.ci]\nprimary = \"127.0.0.1:5433\"";
    assert_eq!(
        invalid_key(refused(try_load("noprimary", no_primary, ""))),
        "clusters.main.primary"
    );
    let bad_endpoint =
        "[clusters.main]\npatroni = [\"nohost\"]\n[clusters.ci]\nprimary = \"127.0.0.1:5433\"";
    assert_eq!(
        invalid_key(refused(try_load("endpoint", bad_endpoint, ""))),
        "clusters.main.patroni"
    );
    let e = refused(try_load(
        "timeout",
        STATIC,
        "[health]\nstatement_timeout = 0",
    ));
    assert_eq!(invalid_key(e), "health.statement_timeout");
    let e = refused(try_load("negative", STATIC, "[health]\nprimary_wait = -1"));
    assert_eq!(invalid_key(e), "health.primary_wait");
    assert!(matches!(
        refused(try_load("unknown", STATIC, "[health]\nintervall = 1")),
        ConfigError::Parse { .. }
    ));
}

#[test]
fn pool_bounds_have_defaults_and_floors() {
    let s = try_load("pool-bounds", STATIC, "").unwrap();
    assert_eq!(
        (
            s.max_prepared_statements,
            s.max_client_prepared_statements,
            s.client_buffer
        ),
        (200, 5000, 256 * 1024)
    );
    let s = try_load(
        "pool-bounds-low",
        STATIC,
        "[pool]\nmax_prepared_statements = 0\nclient_buffer_bytes = 10",
    )
    .unwrap();
    assert_eq!((s.max_prepared_statements, s.client_buffer), (1, 16 * 1024));
}
