//! Login rate (issue 13, in part): with `max_logins_per_second`, a storm of new connections is
//! admitted a second's worth at once and then at the rate; a login whose turn would come later
//! than half its auth_timeout is refused at once with 53300 and counted, and clients already
//! logged in are not disturbed.

mod common;

use common::cluster::{Kind, Topology};
use common::proxy::{connect, Proxy};
use common::scrape::{metric, metrics};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_is_spread_at_the_rate_and_the_excess_refused() {
    // 4 a second, auth_timeout 10 s: 4 at once, then one every 250 ms for up to 5 s (20 more).
    let proxy = Proxy::with(Topology::shared(Kind::MainOnly), |c| {
        c.extra_pool("max_logins_per_second = 4")
    });
    let bystander = proxy.connect().await;
    let mut storm = tokio::task::JoinSet::new();
    for _ in 0..29 {
        let config = proxy.app_config();
        storm.spawn(async move {
            match connect(&config).await {
                Ok(client) => client.simple_query("select 1").await.map(|_| ()),
                Err(e) => Err(e),
            }
        });
    }
    bystander
        .simple_query("select 1")
        .await
        .expect("a logged-in client goes on during the storm");
    let (mut admitted, mut refused) = (0, 0);
    while let Some(done) = storm.join_next().await {
        match done.expect("task") {
            Ok(()) => admitted += 1,
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
                assert_eq!(db.code().code(), "53300", "{db:?}");
                assert!(db.message().contains("max_logins_per_second"), "{db:?}");
                refused += 1;
            }
        }
    }
    // 24 slots within 5 s; the bystander's login and the start-up probe's connection took
    // some, and the storm's arrival spread frees a few: the storm gets 20 to 24 of them.
    eprintln!("storm of 29: {admitted} admitted, {refused} refused");
    assert_eq!(admitted + refused, 29);
    assert!((20..=24).contains(&admitted), "{admitted} admitted");
    let m = metrics(&proxy);
    let limit = [("limit", "max_logins_per_second")];
    assert_eq!(
        metric(&m, "pgdecomp_client_limit_total", &limit),
        f64::from(refused)
    );
    bystander
        .simple_query("select 2")
        .await
        .expect("still fine");
}
