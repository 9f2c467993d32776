//! pgdecomp in front of real Patroni clusters (etcd + main leader/replica + a ci standby
//! cluster with a cascading replica, from Debian's packages): discovery of both clusters'
//! roles, a switchover under 20 writing clients, a killed replica, and promotion of the ci
//! standby cluster picked up by a running phase-7 proxy.
//!
//! One lab serves the whole story: bringing Patroni up costs 10–30 s on this machine.

mod common;

use common::cluster::{wait_until, DATABASE};
use common::patroni::PatroniLab;
use common::proxy::{Proxy, ProxyConfig};
use common::scrape::{metric, metrics};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAIN_READ: &str = "select inet_server_port() from projects limit 1";
const WRITERS: usize = 20;

fn server(lab: &PatroniLab, member: &str) -> String {
    format!("127.0.0.1:{}", lab.pg_port(member))
}

fn gauge(proxy: &Proxy, name: &str, cluster: &str, server: &str, role: Option<&str>) -> f64 {
    let mut labels = vec![("cluster", cluster), ("server", server)];
    if let Some(role) = role {
        labels.push(("role", role));
    }
    metric(&metrics(proxy), name, &labels)
}

fn role_is(proxy: &Proxy, cluster: &str, server: &str, role: &str) -> bool {
    gauge(proxy, "pgdecomp_server_role", cluster, server, Some(role)) == 1.0
}

fn proxy_for(lab: &PatroniLab, phase: u32, primary_wait: f64) -> Proxy {
    let config = ProxyConfig::for_patroni(lab.rest_endpoints("main"), lab.rest_endpoints("ci"))
        .phase(phase)
        .health(&format!(
            "interval = 0.5\nstatement_timeout = 1.0\nprimary_wait = {primary_wait}"
        ));
    Proxy::start(&config.build())
}

async fn port(client: &tokio_postgres::Client, sql: &str) -> Result<u16, tokio_postgres::Error> {
    common::proxy::first_value(client, sql).await
}

fn other<'a>(members: &'a [String], one: &str) -> &'a str {
    members
        .iter()
        .find(|m| m.as_str() != one)
        .expect("a second member")
}

/// A lab of this test's own, started off the async workers (bring-up blocks for seconds).
async fn start_lab() -> Arc<PatroniLab> {
    Arc::new(
        tokio::task::spawn_blocking(PatroniLab::start)
            .await
            .expect("lab start"),
    )
}

/// An acknowledged insert: its id, the server that ran it, and when the client got the answer.
struct Ack {
    id: i64,
    port: u16,
    at: Instant,
}

/// `WRITERS` clients inserting through the proxy until `stop`; acks and errors are collected.
fn start_writers(
    proxy: &Proxy,
    stop: &Arc<AtomicBool>,
    acks: &Arc<Mutex<Vec<Ack>>>,
    errors: &Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let config = proxy.app_config();
            let (stop, acks, errors) = (stop.clone(), acks.clone(), errors.clone());
            tokio::spawn(async move {
                let mut client = None;
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    if client.is_none() {
                        client = common::proxy::connect(&config).await.ok();
                    }
                    let Some(c) = &client else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    n += 1;
                    let sql =
                        "insert into projects (name) values ($1) returning id, inet_server_port()";
                    match c.query_one(sql, &[&format!("writer-{w}-{n}")]).await {
                        Ok(row) => acks.lock().unwrap().push(Ack {
                            id: row.get(0),
                            port: row.get::<_, i32>(1) as u16,
                            at: Instant::now(),
                        }),
                        Err(e) => {
                            let code = e.code().map(|c| c.code().to_string());
                            errors
                                .lock()
                                .unwrap()
                                .push(code.unwrap_or_else(|| e.to_string()));
                            if c.is_closed() {
                                errors
                                    .lock()
                                    .unwrap()
                                    .push("client connection closed".into());
                                client = None;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patroni_discovery_switchover_failover_and_ci_promotion() {
    let lab = start_lab().await;
    let main_members = lab.members("main");
    let ci_members = lab.members("ci");
    let old_leader = lab.leader("main");
    let candidate = other(&main_members, &old_leader).to_string();
    let ci_leader = lab.leader("ci");
    let ci_replica = other(&ci_members, &ci_leader).to_string();
    let proxy = proxy_for(&lab, 1, 10.0);

    // 1. Discovery: both clusters' roles, from Patroni endpoints alone.
    wait_until("pgdecomp to learn both clusters' roles", || {
        role_is(&proxy, "main", &server(&lab, &old_leader), "primary")
            && role_is(&proxy, "main", &server(&lab, &candidate), "replica")
            && role_is(&proxy, "ci", &server(&lab, &ci_leader), "standby_leader")
            && role_is(&proxy, "ci", &server(&lab, &ci_replica), "replica")
    });
    let reader = proxy.connect().await;
    assert_eq!(
        port(&reader, MAIN_READ).await.expect("read"),
        lab.pg_port(&candidate),
        "reads go to the discovered replica"
    );

    // 2. Switchover under 20 writing clients.
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let writers = start_writers(&proxy, &stop, &acks, &errors);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let switch_start = Instant::now();
    let l = lab.clone();
    let c = candidate.clone();
    tokio::task::spawn_blocking(move || l.switchover_main(&c))
        .await
        .expect("switchover");
    eprintln!("switchover done after {:?}", switch_start.elapsed());
    // Keep writing until the new primary has taken writes for a while.
    let new_port = lab.pg_port(&candidate);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let on_new = acks
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.port == new_port)
            .count();
        if on_new >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer task");
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    let old_port = lab.pg_port(&old_leader);
    let first_new = acks
        .iter()
        .filter(|a| a.port == new_port)
        .map(|a| a.at)
        .min()
        .expect("writes landed on the new primary");
    let late_on_old = acks
        .iter()
        .filter(|a| a.port == old_port && a.at > first_new)
        .count();
    assert_eq!(
        late_on_old, 0,
        "no write reached the old primary after the new one took over"
    );
    let mut times: Vec<Instant> = acks.iter().map(|a| a.at).collect();
    times.sort();
    let outage = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "{} acknowledged writes ({} on the old primary, {} on the new), {} errors {:?}, longest gap {outage:?}",
        acks.len(),
        acks.iter().filter(|a| a.port == old_port).count(),
        acks.iter().filter(|a| a.port == new_port).count(),
        errors.len(),
        {
            let mut kinds = errors.clone();
            kinds.sort();
            kinds.dedup();
            kinds
        }
    );
    assert!(
        outage < Duration::from_secs(5),
        "writes resumed within 5 s: {outage:?}"
    );
    // The proxy keeps clients through the switchover: a statement caught by the old primary's
    // shutdown fails (SQLSTATE 57P01, downgraded from FATAL), and the connection stays usable.
    assert!(
        !errors.iter().any(|e| e == "client connection closed"),
        "no client connection was closed: {errors:?}"
    );
    let ids: Vec<String> = acks.iter().map(|a| a.id.to_string()).collect();
    // In chunks: one psql argument holds at most 128 KiB, and a fast run acknowledges more
    // writes than that many ids spell.
    let found: usize = ids
        .chunks(5_000)
        .map(|chunk| {
            let sql = format!(
                "select count(*) from projects where id in ({})",
                chunk.join(",")
            );
            let n = lab.psql(&candidate, DATABASE, &sql);
            n.parse::<usize>().expect("a count")
        })
        .sum();
    assert_eq!(
        found,
        acks.len(),
        "every acknowledged write is on the new primary"
    );
    for line in proxy
        .log()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        eprintln!("DEBUG {line}");
    }
    let text = metrics(&proxy);
    assert_eq!(
        metric(&text, "pgdecomp_primary_unavailable_total", &[]),
        0.0,
        "no write gave up waiting"
    );

    // 3. The old leader comes back as a replica; then it is killed: it leaves the rotation
    // and reads continue.
    lab.wait_role(&old_leader, "replica");
    let old = server(&lab, &old_leader);
    wait_until("the demoted leader to be seen as a replica", || {
        role_is(&proxy, "main", &old, "replica")
    });
    lab.kill_member(&old_leader);
    for i in 0..50 {
        let p = port(&reader, MAIN_READ).await;
        assert!(p.is_ok(), "read {i} after the replica was killed: {p:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until("the killed replica to leave the rotation", || {
        gauge(&proxy, "pgdecomp_server_in_rotation", "main", &old, None) != 1.0
    });
    assert_eq!(port(&reader, MAIN_READ).await.expect("read"), new_port);

    // 4. A phase-7 proxy, started before the ci standby cluster is promoted: ci writes have no
    // primary, then get the promoted one without a restart.
    let p7 = proxy_for(&lab, 7, 1.0);
    let ci = server(&lab, &ci_leader);
    wait_until("the phase-7 proxy to see ci's standby leader", || {
        role_is(&p7, "ci", &ci, "standby_leader")
    });
    let app = p7.connect().await;
    let ci_write = "update ci_builds set name = name where id = 1 returning inet_server_port()";
    let err = port(&app, ci_write)
        .await
        .expect_err("no ci primary before promotion");
    assert_eq!(err.code().map(|c| c.code()), Some("57P03"), "{err}");
    let l = lab.clone();
    tokio::task::spawn_blocking(move || l.promote_ci())
        .await
        .expect("promote ci");
    wait_until("the promoted ci leader to be the ci write target", || {
        gauge(&p7, "pgdecomp_server_writable", "ci", &ci, None) == 1.0
    });
    assert_eq!(
        port(&app, ci_write)
            .await
            .expect("ci write after promotion"),
        lab.pg_port(&ci_leader)
    );
}

/// A crash of main's leader: Patroni promotes the replica once the leader key expires (about
/// ttl = 10 s here). A write sent right after the crash waits for it instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_during_failover_waits_for_the_new_primary() {
    let lab = start_lab().await;
    let leader = lab.leader("main");
    let replica = other(&lab.members("main"), &leader).to_string();
    let proxy = proxy_for(&lab, 1, 40.0);
    wait_until("pgdecomp to learn main's roles", || {
        role_is(&proxy, "main", &server(&lab, &leader), "primary")
            && role_is(&proxy, "main", &server(&lab, &replica), "replica")
    });
    let client = proxy.connect().await;
    let write = "insert into projects (name) values ('failover') returning inet_server_port()";
    assert_eq!(
        port(&client, write).await.expect("write"),
        lab.pg_port(&leader)
    );
    // Replication is asynchronous: let the replica have everything before the crash.
    let lsn = lab.psql(&leader, "postgres", "select pg_current_wal_insert_lsn()");
    wait_until("the replica to replay the leader's WAL", || {
        lab.try_psql(
            &replica,
            "postgres",
            &format!("select pg_last_wal_replay_lsn() >= '{lsn}'"),
        )
        .as_deref()
            == Ok("t")
    });

    lab.kill_member(&leader);
    let crashed = Instant::now();
    let landed = port(&client, write)
        .await
        .expect("the write waits for the new primary");
    eprintln!("write after the crash landed after {:?}", crashed.elapsed());
    assert_eq!(
        landed,
        lab.pg_port(&replica),
        "the promoted replica took it"
    );
    let text = metrics(&proxy);
    assert!(metric(&text, "pgdecomp_primary_wait_seconds_count", &[]) >= 1.0);
    assert!(
        gauge(
            &proxy,
            "pgdecomp_server_up",
            "main",
            &server(&lab, &leader),
            None
        ) == 0.0
    );
}
