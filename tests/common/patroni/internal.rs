//! The Patroni lab's private machinery: bring-up steps, REST and psql plumbing, bounded waits.

use super::conf::{self, MemberConf};
use super::os::{alive, as_postgres, cmdline, curl};
use super::{is_leader_role, Member, PatroniLab, BOUND, CLUSTERS};
use crate::common::cluster::{free_port, run_bounded, DATABASE};
use serde_json::Value;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const ROLES_SQL: &str = include_str!("../../fixtures/roles.sql");
const GITLAB_SQL: &str = include_str!("../../fixtures/gitlab.sql");

/// One row of Patroni's GET /cluster.
pub(super) struct ClusterMember {
    pub(super) name: String,
    pub(super) role: String,
    pub(super) state: String,
}

impl PatroniLab {
    pub(super) fn start_etcd(&self, deadline: Instant) {
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
    pub(super) fn start_member(&self, name: &str, standby_of: Option<u16>) {
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
    pub(super) fn spawn(&self, name: &str, mut cmd: Command) {
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

    pub(super) fn wait_writable_leader(&self, cluster: &str, deadline: Instant) -> String {
        self.bring_up_wait(&format!("a writable leader in {cluster}"), deadline, || {
            let leader = self
                .cluster_state(cluster)
                .into_iter()
                .find(|m| is_leader_role(&m.role) && m.state == "running")?;
            self.is_writable(&leader.name).then_some(leader.name)
        })
    }

    pub(super) fn load_fixtures(&self, member: &str) {
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
    pub(super) fn wait_replicated(&self, main_leader: &str, ci_leader: &str, deadline: Instant) {
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
    pub(super) fn repoint_ci_to(&self, main_leader: &str) {
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
    pub(super) fn patch_config(&self, cluster: &str, body: &str) {
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
    pub(super) fn cluster_state(&self, cluster: &str) -> Vec<ClusterMember> {
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

    /// Whether /cluster names `member` as its cluster's leader right now.
    pub(super) fn leads(&self, member: &str) -> bool {
        self.cluster_state(self.member(member).cluster)
            .iter()
            .any(|m| m.name == member && is_leader_role(&m.role))
    }

    /// `/primary` 200 alone is not enough: a new leader answers it before it leaves recovery.
    pub(super) fn wait_writable(&self, member: &str) {
        let url = format!("http://127.0.0.1:{}/primary", self.member(member).rest_port);
        self.wait(&format!("{member} to be a writable primary"), || {
            let primary = curl("GET", &url, None, 2).is_some_and(|(code, _)| code == 200);
            (primary && self.is_writable(member)).then_some(())
        });
    }

    pub(super) fn is_writable(&self, member: &str) -> bool {
        self.try_psql(member, "postgres", "select pg_is_in_recovery()")
            .as_deref()
            == Ok("f")
    }

    /// The running postmaster of `member`, if its pid file names one that is ours.
    pub(super) fn postmaster_pid(&self, member: &str) -> Option<u32> {
        let pid_file = self.data_dir(member).join("postmaster.pid");
        let text = std::fs::read_to_string(pid_file).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        (alive(pid) && cmdline(pid).contains(self.root.to_str()?)).then_some(pid)
    }

    pub(super) fn psql_command(&self, member: &str, db: &str) -> Command {
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
    pub(super) fn wait<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        self.bring_up_wait(what, Instant::now() + BOUND, f)
    }

    pub(super) fn bring_up_wait<T>(
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
    pub(super) fn logs_tail(&self) -> String {
        let mut out = String::new();
        for name in std::iter::once("etcd").chain(self.members.iter().map(|m| m.name)) {
            let log = self.log(name);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!("--- {name} log (tail) ---\n{tail}\n"));
        }
        out
    }

    pub(super) fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("the Patroni lab has no member {name}"))
    }

    pub(super) fn cluster_members<'a>(
        &'a self,
        cluster: &'a str,
    ) -> impl Iterator<Item = &'a Member> + 'a {
        assert!(
            CLUSTERS.iter().any(|(c, _)| *c == cluster),
            "the Patroni lab has no cluster {cluster}"
        );
        self.members.iter().filter(move |m| m.cluster == cluster)
    }

    pub(super) fn data_dir(&self, member: &str) -> PathBuf {
        self.root.join("data").join(member)
    }

    pub(super) fn log_path(&self, name: &str) -> PathBuf {
        self.root.join("log").join(format!("{name}.log"))
    }
}
