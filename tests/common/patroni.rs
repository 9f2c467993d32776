//! A real Patroni topology for integration tests: one etcd, Patroni cluster `main` (main-1,
//! main-2) and Patroni cluster `ci`, a standby cluster of main (standby leader streaming from
//! main's leader through a permanent slot, plus a cascading replica). See
//! /work/shared/reference/patroni.md for the timings and gotchas this follows.
//!
//! Everything runs as `postgres` (when we are root) in its own session with a pid file under a
//! temp root (on /dev/shm when there is one); `Drop` stops it, and a detached watchdog does when
//! the test process dies.

mod conf;
mod internal;
mod os;
mod replay;

use super::cluster::free_port;
use os::{alive, curl, signal, spawn_watchdog, stop_children};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bound for the whole bring-up (twice the slowest seen on a loaded 2-core machine, and more).
pub const START_BOUND: Duration = Duration::from_secs(180);
/// Bound for every other wait: a failover with ttl 10 takes ~10 s, a switchover ~2 s.
pub const BOUND: Duration = Duration::from_secs(60);

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
        let root = os::new_root();
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
    /// standby leader at it: a standby cluster does not follow its source on its own. The old
    /// leader rejoins as a replica a few seconds later: `wait_role(old, "replica")`.
    pub fn switchover_main(&self, candidate: &str) {
        let current = self.leader("main");
        assert_ne!(current, candidate, "{candidate} already leads main");
        let body = format!(r#"{{"leader": "{current}", "candidate": "{candidate}"}}"#);
        let url = format!(
            "http://127.0.0.1:{}/switchover",
            self.member(&current).rest_port
        );
        // Patroni refuses (412/503) a candidate that is not a running replica yet, e.g. right
        // after a previous switchover, so wait for that and retry a refusal within the bound.
        self.wait_role(candidate, "replica");
        let deadline = Instant::now() + BOUND;
        loop {
            // The call returns only once the switchover is done (~2 s): its own time limit.
            let reply = curl("POST", &url, Some(&body), 30);
            if reply.as_ref().is_some_and(|(code, _)| *code == 200) || self.leads(candidate) {
                break;
            }
            if Instant::now() > deadline {
                panic!("POST {url} {body}: {reply:?}\n{}", self.logs_tail());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.wait_writable(candidate);
        if !self.ci_promoted.load(Ordering::SeqCst) {
            self.repoint_ci_to(candidate);
        }
    }

    /// Points ci's standby leader at main's current leader (after a failover in main, which ci
    /// does not follow on its own) and waits until it streams from there.
    pub fn repoint_ci(&self) {
        self.repoint_ci_to(&self.leader("main"));
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
        self.member(member); // panics on a name that is not a member, such as "etcd"
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

    /// etcd's client URL ("http://127.0.0.1:PORT"), as `[fleet] etcd` takes it.
    pub fn etcd_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// (member, role) of `cluster` as /cluster reports them now ("standby_leader", "leader",
    /// "replica", ...); empty when no member answers.
    pub fn roles(&self, cluster: &str) -> Vec<(String, String)> {
        self.cluster_state(cluster)
            .into_iter()
            .map(|m| (m.name, m.role))
            .collect()
    }

    /// Starts `member` again after [`PatroniLab::kill_member`] (a ci member streams from
    /// main's leader) and waits until /cluster reports it running as a replica.
    pub fn restart_member(&self, member: &str) {
        assert!(
            !self.procs.lock().unwrap().contains_key(member),
            "{member} still runs"
        );
        let standby_of =
            (self.member(member).cluster == "ci").then(|| self.pg_port(&self.leader("main")));
        self.start_member(member, standby_of);
        // /cluster may still show the crashed member's last state until its key expires; its
        // own /health says 200 only once its PostgreSQL runs again.
        let url = format!("http://127.0.0.1:{}/health", self.member(member).rest_port);
        self.wait(&format!("{member}'s /health"), || {
            curl("GET", &url, None, 2).filter(|(code, _)| *code == 200)
        });
        self.wait_role(member, "replica");
    }

    /// The log of `member` (Patroni and PostgreSQL stderr), for failure messages.
    pub fn log(&self, member: &str) -> String {
        std::fs::read_to_string(self.log_path(member)).unwrap_or_default()
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

/// Patroni 3.0.2's /cluster says "leader"; its status endpoints say "master"; later releases
/// say "primary". A standby cluster's leader is "standby_leader".
fn is_leader_role(role: &str) -> bool {
    matches!(role, "leader" | "master" | "primary" | "standby_leader")
}

fn same_role(actual: &str, wanted: &str) -> bool {
    let primary = |r: &str| matches!(r, "leader" | "master" | "primary");
    actual == wanted || (primary(actual) && primary(wanted))
}
