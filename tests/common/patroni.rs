//! A real Patroni topology for integration tests: one etcd, Patroni cluster `main` (main-1,
//! main-2) and Patroni cluster `ci`, a standby cluster of main (standby leader streaming from
//! main's leader through a permanent slot, plus a cascading replica). See
//! /work/shared/reference/patroni.md for the timings and gotchas this follows.
//!
//! Everything runs as `postgres` (when we are root) in its own session with a pid file under a
//! temp root; `Drop` stops it, and a detached watchdog does when the test process dies.

use super::cluster::{free_port, run_bounded, running_as_root, DATABASE};
use super::patroni_conf::{self as conf, MemberConf};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bound for the whole bring-up (twice the slowest seen on a loaded 2-core machine, and more).
pub const START_BOUND: Duration = Duration::from_secs(180);
/// Bound for every other wait: a failover with ttl 10 takes ~10 s, a switchover ~2 s.
pub const BOUND: Duration = Duration::from_secs(60);

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const ROLES_SQL: &str = include_str!("../fixtures/roles.sql");
const GITLAB_SQL: &str = include_str!("../fixtures/gitlab.sql");
const CLUSTERS: [(&str, [&str; 2]); 2] = [("main", ["main-1", "main-2"]), ("ci", ["ci-1", "ci-2"])];

struct Member {
    cluster: &'static str,
    name: &'static str,
    pg_port: u16,
    rest_port: u16,
}

/// etcd + Patroni clusters `main` and `ci`; dropping it stops them and removes their files.
pub struct PatroniLab {
    root: PathBuf,
    etcd_port: u16,
    members: Vec<Member>,
    /// Patroni processes by member name, plus "etcd".
    procs: Mutex<HashMap<String, Child>>,
    ci_promoted: AtomicBool,
    watchdog: Mutex<Option<Child>>,
}

impl PatroniLab {
    /// Starts etcd, main (main-1 bootstraps alone, so it leads), loads the fixtures, then main-2
    /// and ci (ci-1 first, so it is the standby leader), and waits until all have replayed.
    pub fn start() -> PatroniLab {
        let started = Instant::now();
        let deadline = started + START_BOUND;
        let root = new_root();
        let members = CLUSTERS
            .iter()
            .flat_map(|(cluster, names)| names.iter().map(move |name| (*cluster, *name)))
            .map(|(cluster, name)| Member {
                cluster,
                name,
                pg_port: free_port(),
                rest_port: free_port(),
            })
            .collect();
        // Built before anything starts, so a panic during bring-up still runs Drop.
        let lab = PatroniLab {
            etcd_port: free_port(),
            members,
            procs: Mutex::new(HashMap::new()),
            ci_promoted: AtomicBool::new(false),
            watchdog: Mutex::new(Some(spawn_watchdog(&root))),
            root,
        };
        lab.start_etcd(deadline);
        let t_etcd = started.elapsed();

        lab.start_member("main-1", None);
        let main_leader = lab.wait_writable_leader("main", deadline);
        lab.load_fixtures(&main_leader);
        let t_main = started.elapsed();

        lab.start_member("main-2", None);
        lab.start_member("ci-1", Some(lab.pg_port(&main_leader)));
        let ci_leader = lab.bring_up_wait("ci's standby leader", deadline, || {
            lab.cluster_state("ci")
                .into_iter()
                .find(|m| m.role == "standby_leader" && m.state == "running")
                .map(|m| m.name)
        });
        lab.start_member("ci-2", Some(lab.pg_port(&main_leader)));
        lab.wait_replicated(&main_leader, &ci_leader, deadline);
        eprintln!(
            "[patroni-lab] up in {:.1}s (etcd {:.1}s, main leader + fixtures {:.1}s) under {}: \
             etcd={} {}",
            started.elapsed().as_secs_f64(),
            t_etcd.as_secs_f64(),
            t_main.as_secs_f64(),
            lab.root.display(),
            lab.etcd_port,
            lab.members
                .iter()
                .map(|m| format!("{}=pg:{},rest:{}", m.name, m.pg_port, m.rest_port))
                .collect::<Vec<_>>()
                .join(" ")
        );
        lab
    }

    /// Patroni REST addresses "127.0.0.1:PORT" of the members of `cluster`.
    pub fn rest_endpoints(&self, cluster: &str) -> Vec<String> {
        self.cluster_members(cluster)
            .map(|m| format!("127.0.0.1:{}", m.rest_port))
            .collect()
    }

    /// The PostgreSQL port of `member`.
    pub fn pg_port(&self, member: &str) -> u16 {
        self.member(member).pg_port
    }

    /// Member names of `cluster`.
    pub fn members(&self, cluster: &str) -> Vec<String> {
        self.cluster_members(cluster)
            .map(|m| m.name.to_string())
            .collect()
    }

    /// The current leader (or standby leader) of `cluster`, as Patroni's /cluster reports it.
    pub fn leader(&self, cluster: &str) -> String {
        self.wait(&format!("a leader in cluster {cluster}"), || {
            self.cluster_state(cluster)
                .into_iter()
                .find(|m| is_leader_role(&m.role))
                .map(|m| m.name)
        })
    }

    /// `psql -At` as superuser over `member`'s Unix socket; trimmed stdout, panics on error.
    pub fn psql(&self, member: &str, db: &str, sql: &str) -> String {
        self.try_psql(member, db, sql)
            .unwrap_or_else(|err| panic!("psql on {member} failed: {sql}\n{err}"))
    }

    /// Like [`PatroniLab::psql`] but returns psql's stderr instead of panicking.
    pub fn try_psql(&self, member: &str, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .psql_command(member, db)
            .arg("-c")
            .arg(sql)
            .output()
            .map_err(|e| format!("spawn psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "{} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ))
        }
    }

    /// Switches main over to `candidate` and waits until it is writable, then re-points ci's
    /// standby leader at it: a standby cluster does not follow its source on its own.
    pub fn switchover_main(&self, candidate: &str) {
        let current = self.leader("main");
        assert_ne!(current, candidate, "{candidate} already leads main");
        let body = format!(r#"{{"leader": "{current}", "candidate": "{candidate}"}}"#);
        let url = format!(
            "http://127.0.0.1:{}/switchover",
            self.member(&current).rest_port
        );
        // The call returns only once the switchover is done (~2 s), hence its own time limit.
        let (code, reply) = curl("POST", &url, Some(&body), 30)
            .unwrap_or_else(|| panic!("POST {url} got no answer within 30 s"));
        assert_eq!(code, 200, "POST /switchover to {candidate}: {reply}");
        self.wait_writable(candidate);
        if !self.ci_promoted.load(Ordering::SeqCst) {
            self.repoint_ci(candidate);
        }
    }

    /// Promotes the ci standby cluster and waits until its leader is writable; then drops ci's
    /// slot from main's config, or main would keep WAL for it forever.
    pub fn promote_ci(&self) {
        self.patch_config("ci", r#"{"standby_cluster": null}"#);
        self.ci_promoted.store(true, Ordering::SeqCst);
        self.wait("ci's leader to be writable", || {
            let leader = self
                .cluster_state("ci")
                .into_iter()
                .find(|m| is_leader_role(&m.role))?;
            self.is_writable(&leader.name).then_some(())
        });
        self.patch_config(
            "main",
            &format!(r#"{{"slots": {{"{}": null}}}}"#, conf::CI_SLOT),
        );
    }

    /// Crashes `member`: SIGKILL to its Patroni, SIGQUIT (immediate shutdown) to its postmaster.
    pub fn kill_member(&self, member: &str) {
        if let Some(mut child) = self.procs.lock().unwrap().remove(member) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.postmaster_pid(member) {
            signal("QUIT", pid);
            self.wait(&format!("{member}'s postmaster {pid} to exit"), || {
                (!alive(pid)).then_some(())
            });
        }
    }

    /// Waits until /cluster reports `member` with `role` in state "running" (or "streaming").
    pub fn wait_role(&self, member: &str, role: &str) {
        let cluster = self.member(member).cluster;
        self.wait(&format!("{member} to be {role}"), || {
            self.cluster_state(cluster)
                .into_iter()
                .find(|m| m.name == member)
                .filter(|m| same_role(&m.role, role))
                .filter(|m| m.state == "running" || m.state == "streaming")
                .map(|_| ())
        });
    }

    /// The log of `member` (Patroni and PostgreSQL stderr), for failure messages.
    pub fn log(&self, member: &str) -> String {
        std::fs::read_to_string(self.log_path(member)).unwrap_or_default()
    }
}

/// One row of Patroni's GET /cluster.
struct ClusterMember {
    name: String,
    role: String,
    state: String,
}

impl PatroniLab {
    fn start_etcd(&self, deadline: Instant) {
        let peer_port = free_port();
        let config = conf::etcd_config(&self.root.join("etcd"), self.etcd_port, peer_port);
        let path = self.root.join("conf/etcd.yml");
        std::fs::write(&path, config.to_string()).expect("write etcd config");
        let mut cmd = as_postgres("/usr/bin/etcd");
        cmd.arg("--config-file").arg(&path);
        self.spawn("etcd", cmd);
        let url = format!("http://127.0.0.1:{}/health", self.etcd_port);
        self.bring_up_wait("etcd to be healthy", deadline, || {
            curl("GET", &url, None, 2).filter(|(code, _)| *code == 200)
        });
    }

    /// Writes `name`'s Patroni config and starts it; `standby_of` is main's leader port for ci.
    fn start_member(&self, name: &str, standby_of: Option<u16>) {
        let m = self.member(name);
        let (data_dir, socket_dir) = (self.data_dir(name), self.root.join("sock").join(name));
        let pgpass = self.root.join("run").join(format!("{name}.pgpass"));
        let member = MemberConf {
            cluster: m.cluster,
            name,
            pg_port: m.pg_port,
            rest_port: m.rest_port,
            data_dir: &data_dir,
            socket_dir: &socket_dir,
            pgpass: &pgpass,
        };
        let config = conf::patroni_config(&member, self.etcd_port, standby_of);
        let path = self.root.join("conf").join(format!("{name}.yml"));
        std::fs::write(&path, config.to_string()).expect("write Patroni config");
        let mut cmd = as_postgres("/usr/bin/patroni");
        cmd.arg(&path);
        self.spawn(name, cmd);
    }

    /// Spawns `cmd` with its output in log/<name>.log and its pid in run/<name>.pid.
    fn spawn(&self, name: &str, mut cmd: Command) {
        let log = File::create(self.log_path(name)).expect("create log file");
        let child = cmd
            .current_dir(&self.root)
            .env("HOME", &self.root)
            // python3 on PATH may be a pyenv shim; /usr/bin/patroni's own python must win.
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let pid_file = self.root.join("run").join(format!("{name}.pid"));
        std::fs::write(pid_file, child.id().to_string()).expect("write pid file");
        self.procs.lock().unwrap().insert(name.to_string(), child);
    }

    fn wait_writable_leader(&self, cluster: &str, deadline: Instant) -> String {
        self.bring_up_wait(&format!("a writable leader in {cluster}"), deadline, || {
            let leader = self
                .cluster_state(cluster)
                .into_iter()
                .find(|m| is_leader_role(&m.role) && m.state == "running")?;
            self.is_writable(&leader.name).then_some(leader.name)
        })
    }

    fn load_fixtures(&self, member: &str) {
        for (db, sql) in [("postgres", ROLES_SQL), (DATABASE, GITLAB_SQL)] {
            let mut cmd = self.psql_command(member, db);
            let out = run_bounded(cmd.args(["-q", "-f", "-"]), sql, BOUND);
            assert!(
                out.status.success(),
                "loading a fixture into {member}/{db} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Waits until every member streams from its upstream (pg_stat_replication, since /replica
    /// 200 comes before the cascading slot exists) and has replayed main's current WAL.
    fn wait_replicated(&self, main_leader: &str, ci_leader: &str, deadline: Instant) {
        let lsn = self.psql(main_leader, "postgres", "select pg_current_wal_lsn()");
        for m in self.members.iter().filter(|m| m.name != main_leader) {
            let upstream = if m.cluster == "main" || m.name == ci_leader {
                main_leader
            } else {
                ci_leader
            };
            let streaming = format!(
                "select count(*) from pg_stat_replication \
                 where application_name = '{}' and state = 'streaming'",
                m.name
            );
            let replayed = format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
            let what = format!("{} to stream from {upstream} and replay {lsn}", m.name);
            self.bring_up_wait(&what, deadline, || {
                let ok = self.try_psql(upstream, "postgres", &streaming).as_deref() == Ok("1")
                    && self.try_psql(m.name, "postgres", &replayed).as_deref() == Ok("t");
                ok.then_some(())
            });
        }
    }

    /// Points ci's standby leader at main's new leader and waits until it streams from there.
    fn repoint_ci(&self, main_leader: &str) {
        let port = self.pg_port(main_leader);
        self.patch_config(
            "ci",
            &format!(r#"{{"standby_cluster": {{"port": {port}}}}}"#),
        );
        let check = format!(
            "select count(*) from pg_stat_wal_receiver \
             where status = 'streaming' and sender_port = {port}"
        );
        self.wait(&format!("ci to stream from {main_leader}"), || {
            let leader = self
                .cluster_state("ci")
                .into_iter()
                .find(|m| m.role == "standby_leader")?;
            (self.try_psql(&leader.name, "postgres", &check).as_deref() == Ok("1")).then_some(())
        });
    }

    /// PATCH /config with `body` on the first member of `cluster` that accepts it.
    fn patch_config(&self, cluster: &str, body: &str) {
        self.wait(&format!("PATCH {cluster} /config {body}"), || {
            self.rest_endpoints(cluster).iter().find_map(|addr| {
                let url = format!("http://{addr}/config");
                curl("PATCH", &url, Some(body), 2)
                    .filter(|(code, _)| *code == 200)
                    .map(|_| ())
            })
        });
    }

    /// GET /cluster from the first member that answers; empty when none does.
    fn cluster_state(&self, cluster: &str) -> Vec<ClusterMember> {
        let reply = self.rest_endpoints(cluster).iter().find_map(|addr| {
            let (code, body) = curl("GET", &format!("http://{addr}/cluster"), None, 2)?;
            (code == 200).then_some(body)
        });
        let Some(json) = reply.and_then(|body| serde_json::from_str::<Value>(&body).ok()) else {
            return Vec::new();
        };
        let text = |m: &Value, key: &str| m[key].as_str().unwrap_or_default().to_string();
        json["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .map(|m| ClusterMember {
                        name: text(m, "name"),
                        role: text(m, "role"),
                        state: text(m, "state"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `/primary` 200 alone is not enough: a new leader answers it before it leaves recovery.
    fn wait_writable(&self, member: &str) {
        let url = format!("http://127.0.0.1:{}/primary", self.member(member).rest_port);
        self.wait(&format!("{member} to be a writable primary"), || {
            let primary = curl("GET", &url, None, 2).is_some_and(|(code, _)| code == 200);
            (primary && self.is_writable(member)).then_some(())
        });
    }

    fn is_writable(&self, member: &str) -> bool {
        self.try_psql(member, "postgres", "select pg_is_in_recovery()")
            .as_deref()
            == Ok("f")
    }

    /// The running postmaster of `member`, if its pid file names one that is ours.
    fn postmaster_pid(&self, member: &str) -> Option<u32> {
        let pid_file = self.data_dir(member).join("postmaster.pid");
        let text = std::fs::read_to_string(pid_file).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        (alive(pid) && cmdline(pid).contains(self.root.to_str()?)).then_some(pid)
    }

    fn psql_command(&self, member: &str, db: &str) -> Command {
        // timeout bounds psql even when a server hangs after accepting the connection.
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "2", "15", &format!("{PG_BIN}/psql")])
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.root.join("sock").join(member))
            .arg("-p")
            .arg(self.pg_port(member).to_string())
            .args(["-U", conf::SUPERUSER, "-d", db])
            .env("PGCONNECT_TIMEOUT", "5")
            .env("PGAPPNAME", "patroni-lab")
            .stdin(Stdio::null());
        cmd
    }

    /// Polls `f` every 100 ms until it returns a value; panics with the logs after [`BOUND`].
    fn wait<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        self.bring_up_wait(what, Instant::now() + BOUND, f)
    }

    fn bring_up_wait<T>(
        &self,
        what: &str,
        deadline: Instant,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        loop {
            if let Some(value) = f() {
                return value;
            }
            if Instant::now() > deadline {
                panic!(
                    "[patroni-lab] timed out waiting for {what}\n{}",
                    self.logs_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every log, so a timeout explains itself.
    fn logs_tail(&self) -> String {
        let mut out = String::new();
        for name in std::iter::once("etcd").chain(self.members.iter().map(|m| m.name)) {
            let log = self.log(name);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!("--- {name} log (tail) ---\n{tail}\n"));
        }
        out
    }

    fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("the Patroni lab has no member {name}"))
    }

    fn cluster_members<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a Member> + 'a {
        assert!(
            CLUSTERS.iter().any(|(c, _)| *c == cluster),
            "the Patroni lab has no cluster {cluster}"
        );
        self.members.iter().filter(move |m| m.cluster == cluster)
    }

    fn data_dir(&self, member: &str) -> PathBuf {
        self.root.join("data").join(member)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.root.join("log").join(format!("{name}.log"))
    }
}

impl Drop for PatroniLab {
    fn drop(&mut self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let etcd = procs.remove("etcd");
        // All Patronis at once: each takes ~5 s to exit after SIGTERM.
        let mut patronis: Vec<Child> = procs.drain().map(|(_, child)| child).collect();
        for child in &patronis {
            signal("TERM", child.id());
        }
        stop_children(&mut patronis, Duration::from_secs(20));
        let postmasters: Vec<u32> = self
            .members
            .iter()
            .filter_map(|m| self.postmaster_pid(m.name))
            .collect();
        for &pid in &postmasters {
            signal("QUIT", pid);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while postmasters.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(etcd) = etcd {
            signal("TERM", etcd.id());
            stop_children(&mut [etcd], Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(mut watchdog) = self.watchdog.lock().ok().and_then(|mut w| w.take()) {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// Waits for the children to exit; SIGKILLs those still running after `limit`.
fn stop_children(children: &mut [Child], limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline
        && !children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_)) | Err(_)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `program` in a session of its own (so a Ctrl-C to the test run does not hit it first) and,
/// when we are root, as `postgres`. setsid and setpriv exec, so the child's pid is the program's.
fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("setsid");
    if running_as_root() {
        cmd.args([
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
        ]);
        cmd.arg("--");
    }
    cmd.arg(program);
    cmd
}

/// One HTTP request, bounded by curl's --max-time; `None` when there was no HTTP answer.
fn curl(method: &str, url: &str, body: Option<&str>, max_secs: u32) -> Option<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", &max_secs.to_string(), "-X", method])
        .args(["-o", "-", "-w", "\n%{http_code}"]);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = cmd.arg(url).stdin(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` runs (a zombie does not: orphaned postmasters are reaped by PID 1, maybe late).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// Patroni 3.0.2's /cluster says "leader"; its status endpoints say "master"; later releases
/// say "primary". A standby cluster's leader is "standby_leader".
fn is_leader_role(role: &str) -> bool {
    matches!(role, "leader" | "master" | "primary" | "standby_leader")
}

fn same_role(actual: &str, wanted: &str) -> bool {
    let primary = |r: &str| matches!(r, "leader" | "master" | "primary");
    actual == wanted || (primary(actual) && primary(wanted))
}

/// A temp root the `postgres` user owns, with the directories the lab writes into.
fn new_root() -> PathBuf {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::SeqCst);
    let root = std::env::temp_dir().join(format!("pgdecomp-patroni-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["conf", "data", "log", "run", "etcd"] {
        std::fs::create_dir_all(root.join(dir)).expect("create lab dir");
    }
    for (_, names) in CLUSTERS {
        for name in names {
            std::fs::create_dir_all(root.join("sock").join(name)).expect("create socket dir");
        }
    }
    if running_as_root() {
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root)
            .output()
            .expect("run chown");
        assert!(out.status.success(), "chown lab root: {out:?}");
    }
    root
}

/// The watchdog (see [`conf::WATCHDOG`]), in its own process group so a Ctrl-C to the test run
/// does not kill the cleanup too.
fn spawn_watchdog(root: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .args(["-c", conf::WATCHDOG, "pgdecomp-patroni-watchdog"])
        .arg(std::process::id().to_string())
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn watchdog")
}
