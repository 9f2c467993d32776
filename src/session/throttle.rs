//! Session step between route and pool (… → route → **throttle** → pool): carries out
//! `topology::throttle::decide` for one transaction of a throttled client. A held transaction
//! has no server connection yet, so it holds no locks and adds no WAL while it waits; it is
//! looked at again on every new topology view (each health round) and at least every second,
//! so a reload of `[throttle]` applies at once.

use std::time::{Duration, Instant};

use super::client::Client;
use super::placement::PlaceError;
use crate::metrics::Waiting;
use crate::route::Target;
use crate::shared::hold::Running;
use crate::shared::Shared;
use crate::topology::throttle::{decide, Decision, Who};

/// The longest a held transaction goes without looking at the config again.
const RECHECK: Duration = Duration::from_secs(1);

/// Returns once the transaction may take a server; refuses it after `throttle.max_hold`.
pub async fn hold(c: &Client, target: Target, shared: &Shared) -> Result<(), PlaceError> {
    // The session's config was refreshed for this request: with no client selected (the usual
    // case) there is nothing to look up.
    if !c.session.snap.throttle.enabled() {
        return Ok(());
    }
    let who = Who {
        user: &c.user,
        application_name: c.params.get("application_name"),
    };
    let ci_host = c.session.snap.phase.ci_write_host();
    let look = || {
        let snap = shared.config.load();
        let d = decide(
            &snap.throttle,
            who,
            target,
            ci_host,
            &shared.topology.view(),
        );
        (d, snap.throttle.max_hold)
    };
    let first = look().0;
    if first == Decision::Go {
        return Ok(());
    }
    // Subscribed before the next look, so a view published in between is not missed.
    let mut changes = shared.topology.subscribe();
    let m = &shared.metrics.topology.throttle;
    m.held.inc();
    let _waiting = Waiting::new(&m.waiting);
    let started = Instant::now();
    log_start(c, who, target, &first);
    loop {
        let (decision, max_hold) = look();
        let waited = started.elapsed();
        let Decision::Hold { server, ready, .. } = decision else {
            m.hold_seconds.observe(waited.as_secs_f64());
            tracing::info!(
                client = c.id,
                waited_seconds = waited.as_secs_f64(),
                "held transaction released"
            );
            return Ok(());
        };
        if waited >= max_hold {
            m.hold_seconds.observe(waited.as_secs_f64());
            m.refused.inc();
            tracing::warn!(client = c.id, waited_seconds = waited.as_secs_f64(), %server, ready,
                "held transaction refused after throttle.max_hold");
            return Err(PlaceError::Throttled {
                server,
                ready,
                waited: waited.as_secs_f64(),
            });
        }
        let pause = RECHECK.min(max_hold - waited);
        if let Ok(Err(_)) = tokio::time::timeout(pause, changes.changed()).await {
            // No more views will come (shutting down): fall back to the clock.
            tokio::time::sleep(pause).await;
        }
    }
}

/// The one line a hold starts with: who waits, for which primary, and why.
fn log_start(c: &Client, who: Who<'_>, target: Target, decision: &Decision) {
    if let Decision::Hold {
        cluster,
        server,
        ready,
        threshold,
    } = decision
    {
        tracing::info!(client = c.id, user = %c.user, application_name = who.application_name.unwrap_or(""),
            target = target.label(), cluster = cluster.label(), %server, ready, threshold,
            "transaction held: WAL archiving lags on the primary");
    }
}

/// Carries out the cutover's hold for a transaction on the ci write target: it waits while a
/// cutover holds ci writes, and is counted as running from here until the guard drops. When it
/// was held, or the phase changed since it was planned, it takes the config running now, so a
/// write released into phase 7 goes to the promoted CI primary, never to main.
pub async fn cutover_hold<'a>(
    c: &mut Client,
    target: Target,
    shared: &'a Shared,
) -> Option<Running<'a>> {
    if target != Target::Ci {
        return None;
    }
    let (running, waited) = shared.hold.enter().await;
    if let Some(w) = waited {
        shared.metrics.cutover.hold_seconds.observe(w.as_secs_f64());
        tracing::info!(
            client = c.id,
            waited_seconds = w.as_secs_f64(),
            "ci transaction released by the cutover hold"
        );
    }
    // A guard, not an Arc: most ci transactions find the phase they were planned in.
    let now = shared.config.load();
    if now.phase.number() != c.session.snap.phase.number() {
        c.session.adopt(arc_swap::Guard::into_inner(now));
    }
    Some(running)
}
