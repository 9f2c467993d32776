//! Proves the test harness itself: a Full topology starts, logins work with every server-side
//! auth method, and replication (including the cascading CI replica and promotion) works.

mod common;

use common::cluster::{Backend, Kind, Node, Topology, DATABASE};
use std::time::Instant;

async fn connect(config: tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect directly to PostgreSQL");
    tokio::spawn(conn);
    client
}

fn tcp_config(port: u16, user: &str, password: Option<&str>) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(DATABASE);
    if let Some(password) = password {
        config.password(password);
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_topology_replicates_and_promotes() {
    let started = Instant::now();
    let topo = tokio::task::spawn_blocking(|| Topology::start(Kind::Full))
        .await
        .unwrap();
    eprintln!("Full topology started in {:?}", started.elapsed());

    // Every server-side auth method the proxy may meet.
    let main = topo.main_primary();
    for (user, password) in [
        ("gitlab", Some("gitlab")),
        ("md5user", Some("md5pass")),
        ("plainuser", Some("plainpass")),
        ("trustuser", None),
    ] {
        let client = connect(tcp_config(main, user, password)).await;
        let row = client
            .query_one("select count(*) from ci_builds", &[])
            .await
            .unwrap_or_else(|e| panic!("{user} cannot read ci_builds: {e}"));
        assert_eq!(row.get::<_, i64>(0), 5, "fixture rows as {user}");
    }
    let wrong = tcp_config(main, "gitlab", Some("wrong"))
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("a wrong password must be rejected");
    assert_eq!(
        wrong.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );
    let stored = topo.psql(
        main,
        "postgres",
        "select string_agg(rolname || '=' || split_part(replace(rolpassword, 'md5', 'md5$'), '$', 1), \
         ',' order by rolname) \
         from pg_authid where rolname in ('gitlab', 'md5user')",
    );
    assert_eq!(
        stored, "gitlab=SCRAM-SHA-256,md5user=md5",
        "password storage"
    );

    // Replication topology as seen by the servers themselves.
    let su = connect(topo.superuser_config(main, "postgres")).await;
    let senders: i64 = su
        .query_one(
            "select count(*) from pg_stat_replication where state = 'streaming'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        senders, 2,
        "main primary streams to main_replica and ci_primary"
    );
    let ci = connect(topo.superuser_config(topo.ci_primary(), "postgres")).await;
    let cascading: i64 = ci
        .query_one(
            "select count(*) from pg_stat_replication where state = 'streaming'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cascading, 1, "ci_primary streams to ci_replica");
    for node in [Node::MainReplica, Node::CiPrimary, Node::CiReplica] {
        let client = connect(topo.app_config(topo.port(node))).await;
        let row = client
            .query_one("select pg_is_in_recovery(), count(*) from projects", &[])
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "{} is a standby", node.name());
        assert_eq!(row.get::<_, i64>(1), 5, "{} has the fixture", node.name());
    }

    // A write on main reaches every replica through sync_replicas.
    let app = connect(topo.app_config(main)).await;
    app.execute("insert into tags (name) values ('selftest')", &[])
        .await
        .unwrap();
    let topo = std::sync::Arc::new(topo);
    let t = topo.clone();
    tokio::task::spawn_blocking(move || t.sync_replicas())
        .await
        .unwrap();
    for node in [Node::MainReplica, Node::CiPrimary, Node::CiReplica] {
        let n = topo.psql(
            topo.port(node),
            DATABASE,
            "select count(*) from tags where name = 'selftest'",
        );
        assert_eq!(n, "1", "{} replayed the write", node.name());
    }

    // kill_backends finds a session by application_name.
    let mut config = topo.app_config(main);
    config.application_name("selftest-victim");
    let victim = connect(config).await;
    assert_eq!(
        topo.kill_backends(main, Backend::AppName("selftest-victim")),
        1
    );
    assert!(victim.simple_query("select 1").await.is_err());

    // Stop and start a replica; it catches up again.
    let t = topo.clone();
    tokio::task::spawn_blocking(move || {
        t.stop(Node::MainReplica);
        t.start_node(Node::MainReplica);
        t.sync_replicas();
    })
    .await
    .unwrap();

    // Promotion: ci_primary takes writes and ci_replica follows it, not main.
    let t = topo.clone();
    tokio::task::spawn_blocking(move || t.promote_ci())
        .await
        .unwrap();
    let ci_app = connect(topo.app_config(topo.ci_primary())).await;
    ci_app
        .execute(
            "insert into ci_builds (name) values ('after-promotion')",
            &[],
        )
        .await
        .expect("the promoted CI primary accepts writes");
    let check = "select count(*) from ci_builds where name = 'after-promotion'";
    let t = topo.clone();
    tokio::task::spawn_blocking(move || {
        common::cluster::wait_until("ci_replica to replay a write on the new CI primary", || {
            t.psql(t.ci_replica(), DATABASE, check) == "1"
        })
    })
    .await
    .unwrap();
    assert_eq!(topo.psql(main, DATABASE, check), "0", "main did not get it");
    assert!(topo.temp_dir().is_dir());
}

#[test]
fn shared_main_only_topology_is_reused() {
    let a = Topology::shared(Kind::MainOnly);
    let b = Topology::shared(Kind::MainOnly);
    assert!(std::ptr::eq(a, b));
    assert_eq!(a.nodes(), vec![Node::MainPrimary]);
    assert_eq!(
        a.psql(a.main_primary(), DATABASE, "select count(*) from users"),
        "5"
    );
}
