//! Proves the Patroni test harness itself: the topology comes up with the expected roles and
//! replication, a switchover in main keeps ci following, ci can be promoted, and a member can
//! be crashed.

mod common;

use common::cluster::{wait_until, APP_PASSWORD, APP_USER, DATABASE};
use common::patroni::PatroniLab;
use std::process::{Command, Stdio};
use std::time::Instant;

/// A login as the fixture's app role over TCP (SCRAM), the way the proxy connects.
fn app_query(lab: &PatroniLab, member: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["15", "/usr/lib/postgresql/15/bin/psql", "-X", "-At", "-h"])
        .args(["127.0.0.1", "-p", &lab.pg_port(member).to_string()])
        .args(["-U", APP_USER, "-d", DATABASE, "-c", sql])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn has_row(lab: &PatroniLab, member: &str, note: &str) -> bool {
    let sql = format!("select count(*) from lab_probe where note = '{note}'");
    lab.try_psql(member, DATABASE, &sql).as_deref() == Ok("1")
}

#[test]
fn patroni_lab_switchover_promote_and_crash() {
    let t = Instant::now();
    let lab = PatroniLab::start();
    eprintln!("lab up after {:.1}s", t.elapsed().as_secs_f64());

    // main-1 and ci-1 bootstrap alone, so they lead; but always ask Patroni (roles can move).
    assert_eq!(lab.members("main"), ["main-1", "main-2"]);
    assert_eq!(lab.members("ci"), ["ci-1", "ci-2"]);
    let main_leader = lab.leader("main");
    let main_replica = if main_leader == "main-1" {
        "main-2"
    } else {
        "main-1"
    };
    assert_eq!(main_leader, "main-1");
    let ci_leader = lab.leader("ci");
    assert_eq!(ci_leader, "ci-1");
    lab.wait_role(&ci_leader, "standby_leader");
    lab.wait_role(main_replica, "replica");
    lab.wait_role("ci-2", "replica");
    assert_eq!(lab.rest_endpoints("main").len(), 2);

    // The fixtures are everywhere, and the app role logs in with SCRAM over TCP.
    for member in ["main-1", "main-2", "ci-1", "ci-2"] {
        assert_eq!(
            app_query(&lab, member, "select count(*) from ci_builds").as_deref(),
            Ok("5"),
            "fixture rows on {member}\n{}",
            lab.log(member)
        );
    }
    assert!(app_query(&lab, main_replica, "create table nope (id int)").is_err());

    // A write on main reaches the cascading replica of the ci standby cluster.
    let t_write = Instant::now();
    lab.psql(
        &main_leader,
        DATABASE,
        "create table lab_probe (id serial, note text); insert into lab_probe (note) values ('before')",
    );
    wait_until("the probe row on ci-2", || has_row(&lab, "ci-2", "before"));
    eprintln!("main -> ci-2 in {:.2}s", t_write.elapsed().as_secs_f64());

    // Switchover: the candidate takes writes, the old leader follows it, ci follows main.
    let t_switch = Instant::now();
    lab.switchover_main(main_replica);
    eprintln!(
        "switchover (incl. ci re-point) in {:.1}s",
        t_switch.elapsed().as_secs_f64()
    );
    assert_eq!(lab.leader("main"), main_replica);
    lab.psql(
        main_replica,
        DATABASE,
        "insert into lab_probe (note) values ('after')",
    );
    lab.wait_role(&main_leader, "replica");
    eprintln!(
        "old leader streaming after {:.1}s",
        t_switch.elapsed().as_secs_f64()
    );
    wait_until("the post-switchover row on ci-2", || {
        has_row(&lab, "ci-2", "after")
    });
    wait_until("the post-switchover row on the old leader", || {
        has_row(&lab, &main_leader, "after")
    });

    // Promoting ci makes its leader writable; main drops ci's slot.
    let t_promote = Instant::now();
    lab.promote_ci();
    let ci_leader = lab.leader("ci");
    lab.wait_role(&ci_leader, "leader");
    lab.psql(
        &ci_leader,
        DATABASE,
        "insert into lab_probe (note) values ('ci')",
    );
    eprintln!("promote ci in {:.2}s", t_promote.elapsed().as_secs_f64());
    wait_until("main to drop ci's slot", || {
        lab.psql(
            main_replica,
            "postgres",
            "select count(*) from pg_replication_slots where slot_name = 'ci_standby'",
        ) == "0"
    });
    assert!(
        !has_row(&lab, main_replica, "ci"),
        "ci writes must not reach main"
    );

    // Crashing main's replica leaves the leader alone.
    lab.kill_member(&main_leader);
    assert!(lab.try_psql(&main_leader, "postgres", "select 1").is_err());
    assert_eq!(lab.leader("main"), main_replica);
    lab.psql(
        main_replica,
        DATABASE,
        "insert into lab_probe (note) values ('alone')",
    );

    let t_drop = Instant::now();
    drop(lab);
    eprintln!(
        "teardown {:.1}s; whole test {:.1}s",
        t_drop.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}
