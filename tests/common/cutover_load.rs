//! Client load for the cutover tests: tasks that loop short autocommit writes, each with a
//! unique name, alternately into a main table (`projects`) and a ci table (`ci_builds`). Each
//! write returns the server's `inet_server_port()` and `pg_current_wal_insert_lsn()`, so a test
//! proves where every acknowledged write landed, and when, from the servers' own answers.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::common::patroni::PatroniLab;
use crate::common::proxy::Proxy;

/// A client waits at most this long for one write (a hold lasts seconds at worst here).
const WRITE_BOUND: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Main,
    Ci,
}

impl Group {
    pub fn table(self) -> &'static str {
        match self {
            Group::Main => "projects",
            Group::Ci => "ci_builds",
        }
    }
}

/// One acknowledged write.
#[derive(Clone, Debug)]
pub struct Ack {
    pub group: Group,
    pub name: String,
    pub port: u16,
    pub lsn: u64,
    pub started: Instant,
    pub ended: Instant,
}

impl Ack {
    pub fn latency(&self) -> Duration {
        self.ended - self.started
    }
}

/// Writers running until [`Load::stop`].
pub struct Load {
    tag: String,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    acks: Arc<Mutex<Vec<Ack>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

/// What the writers saw.
pub struct Outcome {
    pub tag: String,
    pub acks: Vec<Ack>,
    pub errors: Vec<String>,
}

impl Load {
    /// `per_proxy` writers on each of `proxies`; names start with `tag`.
    pub fn start(proxies: &[&Proxy], per_proxy: usize, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (p, proxy) in proxies.iter().enumerate() {
            for t in 0..per_proxy {
                let config = proxy.app_config();
                let (stop, acks, errors) = (stop.clone(), acks.clone(), errors.clone());
                let prefix = format!("{tag}-{p}-{t}");
                tasks.push(tokio::spawn(async move {
                    writer(config, prefix, stop, acks, errors).await
                }));
            }
        }
        Load {
            tag: tag.into(),
            stop,
            tasks,
            acks,
            errors,
        }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// Waits until the writers have `n` more acknowledged writes (bounded).
    pub async fn more(&self, n: usize) {
        let want = self.acked() + n;
        let deadline = Instant::now() + crate::cutover_support::WAIT;
        while self.acked() < want {
            assert!(
                Instant::now() < deadline,
                "the writers are stuck at {} acknowledged writes; errors: {:?}",
                self.acked(),
                self.errors
                    .lock()
                    .unwrap()
                    .iter()
                    .take(5)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the writers (each finishes its write in flight) and returns what they saw.
    pub async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("writer task");
        }
        let acks = std::mem::take(&mut *self.acks.lock().unwrap());
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        Outcome {
            tag: self.tag,
            acks,
            errors,
        }
    }
}

async fn writer(
    config: tokio_postgres::Config,
    prefix: String,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let client = match crate::common::proxy::connect(&config).await {
        Ok(c) => c,
        Err(e) => {
            return errors
                .lock()
                .unwrap()
                .push(format!("{prefix}: connect: {e}"))
        }
    };
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let group = if n % 2 == 0 { Group::Ci } else { Group::Main };
        let name = format!("{prefix}-{n}");
        let sql = format!(
            "insert into {} (name) values ($1) \
             returning inet_server_port(), pg_current_wal_insert_lsn()::text",
            group.table()
        );
        let started = Instant::now();
        let result = tokio::time::timeout(WRITE_BOUND, client.query_one(&sql, &[&name])).await;
        match result {
            Ok(Ok(row)) => acks.lock().unwrap().push(Ack {
                group,
                name,
                port: row.get::<_, i32>(0) as u16,
                lsn: crate::cutover_support::lsn(row.get::<_, &str>(1)),
                started,
                ended: Instant::now(),
            }),
            Ok(Err(e)) => {
                let closed = if client.is_closed() {
                    " (connection closed)"
                } else {
                    ""
                };
                errors
                    .lock()
                    .unwrap()
                    .push(format!("{name}: {e:?}{closed}"));
                if client.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                errors
                    .lock()
                    .unwrap()
                    .push(format!("{name}: no answer within {WRITE_BOUND:?}"));
                return;
            }
        }
    }
}

impl Outcome {
    pub fn of(&self, group: Group) -> impl Iterator<Item = &Ack> {
        self.acks.iter().filter(move |a| a.group == group)
    }

    /// No client saw an error, a timeout or a closed connection.
    pub fn assert_no_errors(&self) {
        assert!(
            self.errors.is_empty(),
            "{} client errors (of {} acknowledged writes), first: {:?}",
            self.errors.len(),
            self.acks.len(),
            &self.errors[..self.errors.len().min(5)]
        );
        assert!(!self.acks.is_empty(), "the writers wrote nothing");
    }

    /// Every acknowledged write of `group` is a row on `member` (queried directly).
    pub fn assert_rows_on(&self, lab: &PatroniLab, member: &str, group: Group) {
        let sql = format!(
            "select name from {} where name like '{}-%'",
            group.table(),
            self.tag
        );
        let out = lab.psql(member, crate::common::cluster::DATABASE, &sql);
        let present: HashSet<&str> = out.lines().collect();
        let missing: Vec<&str> = self
            .of(group)
            .map(|a| a.name.as_str())
            .filter(|n| !present.contains(n))
            .collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged {group:?} writes are not on {member} (of {}), e.g. {:?}",
            missing.len(),
            self.of(group).count(),
            &missing[..missing.len().min(5)]
        );
    }

    /// Every acknowledged write of `group` was answered by the server on `port`.
    pub fn assert_all_on_port(&self, group: Group, port: u16) {
        let elsewhere: Vec<(&str, u16)> = self
            .of(group)
            .filter(|a| a.port != port)
            .map(|a| (a.name.as_str(), a.port))
            .collect();
        assert!(
            elsewhere.is_empty(),
            "{group:?} writes answered elsewhere than {port}: {:?}",
            &elsewhere[..elsewhere.len().min(5)]
        );
    }

    /// Prints count, p99 and max latency of the ci writes that overlapped [from, to].
    pub fn print_ci_latency(&self, what: &str, from: Instant, to: Instant) -> Duration {
        let mut l: Vec<Duration> = self
            .of(Group::Ci)
            .filter(|a| a.ended >= from && a.started <= to)
            .map(Ack::latency)
            .collect();
        l.sort();
        let max = l.last().copied().unwrap_or_default();
        let p99 = l
            .get((l.len() * 99 / 100).min(l.len().saturating_sub(1)))
            .copied();
        eprintln!(
            "[cutover] {what}: {} ci writes during the run, latency p99 {:?} max {:?} \
             ({} writes acknowledged in all, {} main / {} ci)",
            l.len(),
            p99.unwrap_or_default(),
            max,
            self.acks.len(),
            self.of(Group::Main).count(),
            self.of(Group::Ci).count()
        );
        max
    }
}
