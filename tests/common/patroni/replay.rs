//! Holding WAL replay back on a standby of the Patroni lab, as a long query on a standby does in
//! production, and measuring how far behind main's WAL it is.

use super::PatroniLab;

/// `application_name` of the session that holds replay back in [`PatroniLab::pause_replay`].
const REPLAY_BLOCKER: &str = "patroni-lab-replay-block";

impl PatroniLab {
    /// Holds WAL replay back on the standby `member`: it keeps receiving main's WAL but its
    /// replay position stands still until [`PatroniLab::resume_replay`]. (Patroni resumes a
    /// replay paused with `pg_wal_replay_pause()` within one loop, so this uses what stalls
    /// replay in production: a query on the standby holding a lock that a replayed
    /// `TRUNCATE` needs, with `max_standby_streaming_delay = -1` so it is never cancelled.)
    pub fn pause_replay(&self, member: &str) {
        self.resume_replay(member);
        let main = self.leader("main");
        self.psql(
            &main,
            "postgres",
            "create table if not exists replay_block (id int)",
        );
        self.wait(&format!("replay_block on {member}"), || {
            let sql = "select to_regclass('replay_block') is not null";
            (self.try_psql(member, "postgres", sql).as_deref() == Ok("t")).then_some(())
        });
        self.psql(
            member,
            "postgres",
            "alter system set max_standby_streaming_delay = -1",
        );
        self.psql(member, "postgres", "select pg_reload_conf()");
        self.wait("max_standby_streaming_delay = -1", || {
            let sql = "show max_standby_streaming_delay";
            (self.try_psql(member, "postgres", sql).as_deref() == Ok("-1")).then_some(())
        });
        let blocker = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
            .args(["-X", "-q", "-h"])
            .arg(self.root.join("sock").join(member))
            .args(["-p", &self.pg_port(member).to_string(), "-U", "postgres"])
            .args(["-d", "postgres", "-c"])
            .arg("begin; lock table replay_block in access share mode; select pg_sleep(3600)")
            .env("PGAPPNAME", REPLAY_BLOCKER)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the replay blocker");
        let key = format!("{REPLAY_BLOCKER}-{member}");
        self.procs.lock().unwrap().insert(key, blocker);
        let locks = |granted: bool| {
            format!(
                "select count(*) from pg_locks where relation = 'replay_block'::regclass \
                 and granted = {granted}"
            )
        };
        self.wait("the replay blocker's lock", || {
            (self.try_psql(member, "postgres", &locks(true)).as_deref() == Ok("1")).then_some(())
        });
        self.psql(&main, "postgres", "truncate replay_block");
        self.wait(&format!("replay to stall on {member}"), || {
            (self.try_psql(member, "postgres", &locks(false)).as_deref() == Ok("1")).then_some(())
        });
    }

    /// Lets `member` replay again (a no-op when it is not held back or not running).
    pub fn resume_replay(&self, member: &str) {
        let blocker = self
            .procs
            .lock()
            .unwrap()
            .remove(&format!("{REPLAY_BLOCKER}-{member}"));
        let sql = format!(
            "select pg_terminate_backend(pid) from pg_stat_activity \
             where application_name = '{REPLAY_BLOCKER}'"
        );
        let _ = self.try_psql(member, "postgres", &sql);
        if let Some(mut child) = blocker {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.try_psql(
            member,
            "postgres",
            "alter system reset max_standby_streaming_delay",
        );
        let _ = self.try_psql(member, "postgres", "select pg_reload_conf()");
    }

    /// Bytes of main's WAL (at its leader's insert position) that `member` has not replayed.
    pub fn replay_lag_bytes(&self, member: &str) -> i64 {
        let lsn = self.psql(
            &self.leader("main"),
            "postgres",
            "select pg_current_wal_insert_lsn()",
        );
        let sql = format!("select greatest(0, '{lsn}'::pg_lsn - pg_last_wal_replay_lsn())::bigint");
        self.psql(member, "postgres", &sql)
            .parse()
            .expect("a byte count")
    }
}
