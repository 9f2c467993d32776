//! Phase rollout by actor (issue 14, acceptance 3): phase 3 with `[rollout.ci_read]` at 30 % in
//! `actor` mode, on two pgdecomp instances with the same phase file. Each actor's CI read is
//! proven by `inet_server_port()`: the share on the CI replica and the same side for an actor on
//! every connection, on both instances and on a second pass.

mod common;

use common::cluster::{Kind, Topology, BOUND};
use common::proxy::{Proxy, ProxyConfig, ADMIN};
use common::scrape::{metric, metrics};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio_postgres::{Client, SimpleQueryMessage};

const ACTORS: u32 = 1000;
/// Connections per instance; actors are spread over them and move between passes.
const CONNECTIONS: u32 = 8;
const CI_READ: &str = "select inet_server_port() from ci_builds limit 1";

/// Phase 3 with the ci read rollout at 30 % by actor.
fn phase_file(topo: &Topology) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("phases/phase-3.toml");
    let text = std::fs::read_to_string(&shipped).expect("read phases/phase-3.toml");
    let edited = text
        .replacen("percent = 100.0", "percent = 30.0", 1)
        .replacen("mode = \"random\"", "mode = \"actor\"", 1);
    assert!(edited.contains("percent = 30.0") && edited.contains("mode = \"actor\""));
    let path = topo.temp_dir().join("phase-3-actor.toml");
    std::fs::write(&path, edited).expect("write phase file");
    path
}

/// A pgdecomp instance on `topo` whose `phase_file` is `path` (listen ports differ only).
fn proxy(topo: &Topology, path: &Path) -> Proxy {
    let config = ProxyConfig::new(topo).build();
    let line = config
        .lines()
        .find(|l| l.starts_with("phase_file = "))
        .expect("config names a phase file");
    let config = config.replace(line, &format!("phase_file = \"{}\"", path.display()));
    Proxy::start(&config)
}

async fn simple(client: &Client, sql: &str) -> Vec<SimpleQueryMessage> {
    tokio::time::timeout(BOUND, client.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no answer within {BOUND:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

fn first(rows: &[SimpleQueryMessage]) -> Option<String> {
    rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

async fn port_of(client: &Client) -> u16 {
    let rows = simple(client, CI_READ).await;
    first(&rows)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{CI_READ}: no port in {rows:?}"))
}

/// Every actor's CI read port through `proxy`; actor `n` uses connection `(n + shift) % 8`.
async fn pass(proxy: &Proxy, shift: u32) -> HashMap<u32, u16> {
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let client = proxy.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut ports = Vec::new();
            for n in (1..=ACTORS).filter(|n| (n + shift) % CONNECTIONS == c) {
                simple(&client, &format!("SET pgdecomp.actor = 'project:{n}'")).await;
                ports.push((n, port_of(&client).await));
            }
            ports
        }));
    }
    let mut all = HashMap::new();
    for task in tasks {
        all.extend(task.await.expect("reader task"));
    }
    assert_eq!(all.len(), ACTORS as usize);
    all
}

/// Acceptance 3: 1,000 actors split 30 ± 4 %, each on the same side everywhere, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_split_30_percent_and_keep_their_side() {
    let topo = Topology::shared(Kind::Full);
    let file = phase_file(topo);
    let (a, b) = (proxy(topo, &file), proxy(topo, &file));
    let first_pass = pass(&a, 0).await;
    let on_ci = first_pass
        .values()
        .filter(|&&p| p == topo.ci_replica())
        .count();
    let on_main = first_pass
        .values()
        .filter(|&&p| p == topo.main_replica())
        .count();
    assert_eq!(
        on_ci + on_main,
        ACTORS as usize,
        "only the two replicas may answer"
    );
    assert!(
        (260..=340).contains(&on_ci),
        "{on_ci} of {ACTORS} actors on ci_replica, expected 30 ± 4 %"
    );
    for (label, other) in [
        ("instance b", pass(&b, 3).await),
        ("second pass on a", pass(&a, 5).await),
    ] {
        let moved: Vec<_> = (1..=ACTORS).filter(|n| first_pass[n] != other[n]).collect();
        assert!(moved.is_empty(), "{label}: actors changed side: {moved:?}");
    }
    // Every read was one decision of the ci_read rollout, counted on its side.
    let want = [("new", 2 * on_ci), ("fallback", 2 * on_main)];
    let mut text = String::new();
    let counted = (0..100).any(|_| {
        text = metrics(&a);
        let done = want.iter().all(|(side, n)| {
            let labels = [("rollout", "ci_read"), ("side", *side)];
            metric(&text, "pgdecomp_rollout_decisions_total", &labels) == *n as f64
        });
        if !done {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        done
    });
    assert!(counted, "decisions per side should be {want:?}:\n{text}");
}

/// The startup option sets the actor too, SHOW answers it, RESET goes back to the user, and
/// SHOW CLIENTS shows the actor with its side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_option_actor_and_show_clients() {
    let topo = Topology::shared(Kind::Full);
    let proxy = proxy(topo, &phase_file(topo));
    let by_set = proxy.connect().await;
    let mut config = proxy.app_config();
    config.options("-c pgdecomp.actor=project:7");
    let by_option = proxy.connect_with(&config).await;
    simple(&by_set, "SET pgdecomp.actor = 'project:7'").await;
    let port = port_of(&by_set).await;
    assert_eq!(port_of(&by_option).await, port);
    let shown = first(&simple(&by_option, "SHOW pgdecomp.actor").await);
    assert_eq!(shown.as_deref(), Some("project:7"));
    let side = if port == topo.ci_replica() {
        "new"
    } else {
        "fallback"
    };
    let admin = proxy
        .connect_with(&proxy.config(ADMIN.0, ADMIN.1, "pgdecomp"))
        .await;
    let clients = simple(&admin, "SHOW CLIENTS").await;
    let rows: Vec<(String, String)> = clients
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get("actor").unwrap_or_default().to_string(),
                r.get("rollout").unwrap_or_default().to_string(),
            )),
            _ => None,
        })
        .collect();
    let want = ("project:7".to_string(), format!("ci_read={side}"));
    assert_eq!(
        rows.iter().filter(|r| **r == want).count(),
        2,
        "SHOW CLIENTS: {rows:?}"
    );
    simple(&by_option, "RESET pgdecomp.actor").await;
    assert_eq!(
        first(&simple(&by_option, "SHOW pgdecomp.actor").await).as_deref(),
        Some("")
    );
    let clients = simple(&admin, "SHOW CLIENTS").await;
    let actors: Vec<String> = clients
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get("actor").map(str::to_string),
            _ => None,
        })
        .collect();
    assert!(
        actors.iter().any(|a| a == "gitlab"),
        "RESET goes back to the user: {actors:?}"
    );
}
