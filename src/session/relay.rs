//! The per-client loop (client → framing → **session** → …): read a request, let the session
//! machine plan it, check out a connection to the planned target, hand over to the pump until
//! the transaction (or session) ends.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::client::Client;
use super::idle::{next_request, WaitStart, Waited};
use super::live::Live;
use super::machine::{Ctx, Plan};
use super::placement::{place, PlaceError};
use super::pump::{pump, PumpEnd};
use super::record::Recorder;
use super::throttle;
use super::SessionError;
use crate::classify::ClassifyCache;
use crate::pool::CheckoutError;
use crate::pool::PooledConn;
use crate::protocol::backend::PgError;
use crate::protocol::frame::Frame;
use crate::protocol::{Front, TxnStatus};
use crate::route::Target;
use crate::shared::control::{ActiveGuard, ClientEntry};
use crate::shared::hold::Running;
use crate::shared::Shared;
use crate::topology::select::write_cluster;

/// A client that sent nothing for this long (to twice this) goes back to its idle state. A
/// transaction's futures (the pool checkout, the pump) are the largest part of a session's
/// state: they live in a box taken for a busy period, not in the task of every idle client,
/// and not allocated per transaction either.
const LULL: Duration = Duration::from_secs(1);

/// Serves requests until the client leaves.
pub async fn run(c: &mut Client, shared: &Shared, entry: &ClientEntry) -> Result<(), SessionError> {
    // Pinned once: polling it at each idle point costs no new registration.
    let drain = entry.drain.raised();
    tokio::pin!(drain);
    let mut never = std::pin::pin!(std::future::pending::<()>());
    let mut start = WaitStart::default();
    loop {
        c.io.flush().await?;
        park_if_idle(c);
        let first = match next_request(c, drain.as_mut(), never.as_mut(), &mut start).await? {
            Waited::Request(first) => first,
            Waited::Gone => return Ok(()),
            Waited::Lull => continue,
        };
        if !Box::pin(busy(c, shared, entry, first, drain.as_mut(), &mut start)).await? {
            return Ok(());
        }
    }
}

/// Serves `first` and the requests that follow it until the client leaves (false) or sends
/// nothing for a [`LULL`] (true). The lull timer is not reset per request: it fires once per
/// lull, and ends the busy period only if no request came since it last fired (`asked`).
async fn busy(
    c: &mut Client,
    shared: &Shared,
    entry: &ClientEntry,
    mut first: Frame,
    mut drain: Pin<&mut impl Future<Output = ()>>,
    start: &mut WaitStart,
) -> Result<bool, SessionError> {
    let lull = tokio::time::sleep(LULL);
    tokio::pin!(lull);
    let mut live = Live::new(shared);
    loop {
        let mut asked = true;
        if !serve(c, shared, &mut live, entry, first).await? {
            return Ok(false);
        }
        c.io.flush().await?;
        park_if_idle(c);
        first = loop {
            match next_request(c, drain.as_mut(), lull.as_mut(), start).await? {
                Waited::Request(next) => break next,
                Waited::Gone => return Ok(false),
                Waited::Lull if !asked => {
                    c.rest();
                    return Ok(true);
                }
                Waited::Lull => {
                    asked = false;
                    lull.as_mut().reset(tokio::time::Instant::now() + LULL);
                }
            }
        };
    }
}

/// Serves one request; false once the client is gone.
async fn serve(
    c: &mut Client,
    shared: &Shared,
    live: &mut Live<'_>,
    entry: &ClientEntry,
    first: Frame,
) -> Result<bool, SessionError> {
    match triage(c, &first, shared).await {
        Next::Leave => return Ok(false),
        Next::Done => return Ok(true),
        Next::Serve => {}
    }
    c.session
        .refresh(live.config.load(), || rand::random::<f64>() * 100.0);
    let Some(unit) = collect_unit(c, first).await? else {
        // Terminate before the batch's Sync: nothing of it ran, the client is gone.
        return Ok(false);
    };
    if super::prewarm::needed(&unit) {
        super::prewarm::prewarm(&unit, &shared.cache, &mut c.session).await;
    }
    let plan = plan_unit(c, shared, live.cache.load(), &unit);
    transact(c, shared, live, entry, unit, plan).await
}

/// What to do with a request's first message.
enum Next {
    Leave,
    /// Answered (or dropped) without a server.
    Done,
    Serve,
}

async fn triage(c: &mut Client, first: &Frame, shared: &Shared) -> Next {
    match first.front() {
        Front::Terminate => Next::Leave,
        Front::Flush => Next::Done,
        Front::Sync => {
            // Nothing outstanding: answer the Sync ourselves rather than take a server.
            c.session.lone_sync(&mut c.io.wbuf);
            Next::Done
        }
        _ if c.session.skipping() => Next::Done,
        Front::Query if super::local::answer(c, first, shared).await => Next::Done,
        _ => Next::Serve,
    }
}

/// Lets the session machine plan `unit`, counting what it classifies.
fn plan_unit(c: &mut Client, shared: &Shared, cache: &ClassifyCache, unit: &[Frame]) -> Plan {
    let mut recorder = Recorder {
        shared,
        client: c.id,
    };
    let mut ctx = Ctx {
        cache,
        registry: &shared.statements,
        observer: &mut recorder,
    };
    c.session.plan(unit, &mut ctx, &mut c.io.wbuf)
}

/// Runs a planned batch: admission and a server connection, the pump, then the accounting.
/// False once the client is gone.
async fn transact(
    c: &mut Client,
    shared: &Shared,
    live: &mut Live<'_>,
    entry: &ClientEntry,
    unit: Vec<Frame>,
    plan: Plan,
) -> Result<bool, SessionError> {
    let Plan::Attach {
        target,
        group,
        hold_status,
        prepares,
    } = plan
    else {
        c.keep_unit(unit);
        return Ok(true);
    };
    entry.set(1, Some(target));
    let admitted = admit(c, target, shared, live).await;
    let Ok((conn, running, ci_running, waited)) = admitted.map_err(|e| reject(c, &unit, &e)) else {
        c.keep_unit(unit);
        entry.set(0, Some(target));
        return Ok(true);
    };
    entry.set(2, Some(target));
    let m = &shared.metrics;
    // The connection became this client's at its checkout check or its release to this
    // client, whichever is later than the wait's start: no clock read of its own.
    let held = conn.last_used.max(waited);
    m.checkout_wait.observe((held - waited).as_secs_f64());
    let tm = m.target(target);
    tm.transactions.inc();
    c.session.attach(target, group, hold_status, prepares);
    let cache = live.cache.load();
    let end = pump(c, conn, unit, shared, cache, &tm.statement_seconds).await;
    drop(running);
    drop(ci_running);
    entry.set(0, Some(target));
    let (end, ended) = end?;
    tm.transaction_seconds
        .observe(ended.saturating_duration_since(held).as_secs_f64());
    if c.session.take_wrote() && !target.is_replica() {
        // Committed (or ended) now: reads need a replica that has replayed it.
        let cluster = write_cluster(target, c.session.snap.phase.ci_write_host());
        c.ryw.wrote(cluster, ended);
    }
    Ok(end != PumpEnd::ClientGone)
}

type Admitted<'s> = (PooledConn, ActiveGuard<'s>, Option<Running<'s>>, Instant);

/// The gates a transaction passes before it runs, then its server connection: the admin PAUSE,
/// the archive throttle, the cutover hold. The throttle and the cutover wait before the pool
/// wait starts, so a held transaction does not use up primary_wait. Returns the connection with
/// the transaction counted as running (for PAUSE, and for the cutover on the ci target), and
/// when its wait for the pool began.
async fn admit<'s>(
    c: &mut Client,
    target: Target,
    shared: &'s Shared,
    live: &mut Live<'_>,
) -> Result<Admitted<'s>, PlaceError> {
    loop {
        shared.control.wait_unpaused(target).await;
        throttle::hold(c, target, shared).await?;
        let ci_running = throttle::cutover_hold(c, target, shared).await;
        let waited = Instant::now();
        let conn = place(c, target, shared, live, waited).await?;
        let running = shared.control.begin(target);
        if shared.control.admitted(target) {
            return Ok((conn, running, ci_running, waited));
        }
        // A PAUSE came after the gate: it may have counted this transaction out, so the
        // connection goes back and the transaction waits for RESUME.
    }
}

/// Nothing in flight: an idle client holds no buffers.
fn park_if_idle(c: &mut Client) {
    if c.session.status() == TxnStatus::Idle {
        c.io.park();
        super::spare::give(std::mem::take(&mut c.to_server));
    }
}

/// Reads the rest of an extended-protocol batch (up to Sync or Flush), which is planned as one;
/// `None` when the client sends Terminate instead of finishing it.
async fn collect_unit(c: &mut Client, first: Frame) -> Result<Option<Vec<Frame>>, SessionError> {
    let single = first.front().is_single();
    let mut bytes = first.raw.len();
    let mut unit = std::mem::take(&mut c.unit);
    unit.clear();
    unit.push(first);
    let ended =
        |u: &[Frame]| matches!(u.last().map(Frame::front), Some(Front::Sync | Front::Flush));
    while !single && !ended(&unit) && bytes < c.high_water {
        // After an Execute the client may wait for a reply (COPY FROM STDIN): take only what is
        // already buffered rather than wait for a Sync that comes later.
        let next = if unit.last().is_some_and(|f| f.front() == Front::Execute) {
            c.io.buffered_frame()?
        } else {
            c.io.read_frame().await?
        };
        match next {
            Some(f) if f.front() == Front::Terminate => return Ok(None),
            Some(f) => {
                bytes += f.raw.len();
                unit.push(f);
            }
            None => break,
        }
    }
    Ok(Some(unit))
}

/// Answers a request that could not get a server; the session stays usable.
fn reject(c: &mut Client, unit: &[Frame], e: &PlaceError) {
    tracing::warn!(client = c.id, peer = %c.peer, user = %c.user, database = %c.database, error = %e, "no server connection for client");
    let code = match e {
        PlaceError::Checkout(CheckoutError::WaitTimeout { .. }) => "53300",
        // PostgreSQL's own code for a server that is starting or stopping: clients retry it.
        PlaceError::NoWriter { .. } => "57P03",
        // insufficient_resources: the primary's archive (and disk) cannot take more now.
        PlaceError::Throttled { .. } => "53000",
        _ => "08006",
    };
    let synced = matches!(
        unit.last().map(Frame::front),
        Some(Front::Query | Front::FunctionCall | Front::Sync)
    );
    c.session
        .refused_locally(PgError::error(code, e.to_string()), synced, &mut c.io.wbuf);
}

#[cfg(test)]
mod sizes {
    use super::*;
    use crate::shared::control::ClientEntry;

    fn output<F, R>(_: F) -> usize
    where
        F: FnOnce(&'static mut Client, &'static Shared, &'static ClientEntry) -> R,
    {
        std::mem::size_of::<R>()
    }

    fn served<F, R>(_: F) -> usize
    where
        F: FnOnce(tokio::net::TcpStream, std::net::SocketAddr, std::sync::Arc<Shared>) -> R,
    {
        std::mem::size_of::<R>()
    }

    fn logging_in<F, R>(_: F) -> usize
    where
        F: FnOnce(
            tokio::net::TcpStream,
            std::net::SocketAddr,
            &'static std::sync::Arc<Shared>,
        ) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// Every idle client carries its task's state and its boxed `Client`: a transaction's
    /// futures (the pool checkout, 800 bytes, and the pump) stay in the busy period's box,
    /// and the login in its own. Measured at 608 (relay), 840 (task) and 1,144 (client)
    /// bytes in the test profile; with the checkout inline the relay future was 1,472.
    #[test]
    fn an_idle_client_carries_little_state() {
        let relay = output(run);
        let task = served(super::super::serve);
        let client = std::mem::size_of::<Client>();
        eprintln!("relay future {relay} B, session task {task} B, client {client} B");
        assert!(relay <= 700, "relay future grew to {relay} bytes");
        assert!(task <= 950, "session task grew to {task} bytes");
        assert!(client <= 1_250, "Client grew to {client} bytes");
    }

    /// Every login allocates its future and copies it into the box: the rare steps (TLS, a
    /// cancel request, the admin console, a pool's first connection) are boxed apart. Measured
    /// at 2,136 bytes in the test profile; with them inline it was 16,632.
    #[test]
    fn a_login_carries_only_its_common_steps() {
        let login = logging_in(super::super::admit);
        eprintln!("login future {login} B");
        assert!(login <= 2_600, "login future grew to {login} bytes");
    }
}
