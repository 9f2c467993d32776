//! Load helpers for the acceptance-scale tests: file limits, process memory, clients bound to
//! another loopback address, login outcomes, and a control client that keeps querying.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::cluster::BOUND;
use super::proxy::Proxy;
use super::raw::RawConn;
use super::scrape::metrics;

/// Serialises the heavy tests of one binary: each needs the machine's cores to itself.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// The (soft, hard) open-file limits of process `pid`.
pub fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("an open-files line");
    let mut words = line.split_whitespace().skip(3);
    let mut next = || {
        words
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (next(), next())
}

/// Raises the open-file limit of process `pid` to at least `want` with `prlimit` (soft up to
/// the hard limit; the hard limit too when we are root) and panics if it stays lower.
pub fn raise_nofile(pid: u32, want: u64) {
    let (soft, hard) = nofile(pid);
    if soft >= want {
        return;
    }
    let hard = if hard < want && super::cluster::running_as_root() {
        want
    } else {
        hard
    };
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string()])
        .arg(format!("--nofile={}:{hard}", want.min(hard)))
        .status();
    eprintln!("prlimit --nofile for pid {pid}: {status:?}");
    let (soft, _) = nofile(pid);
    assert!(
        soft >= want,
        "process {pid} may open only {soft} files; this test needs {want}"
    );
}

/// Resident memory of process `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name, which ends at the last ')'; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|w| w.parse().ok())
        .collect();
    ticks.iter().sum::<f64>() / 100.0
}

/// Connects to the proxy on 127.0.0.1:`port` from source address `local` and logs in with
/// `config`; the connection is driven in the background.
pub async fn connect_from(
    local: IpAddr,
    port: u16,
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(local, 0))
        .unwrap_or_else(|e| panic!("bind {local}: {e}"));
    let stream = tokio::time::timeout(BOUND, socket.connect(([127, 0, 0, 1], port).into()))
        .await
        .expect("TCP connect within the bound")
        .expect("TCP connect");
    let login = config.connect_raw(stream, tokio_postgres::NoTls);
    let (client, conn) = tokio::time::timeout(BOUND, login)
        .await
        .expect("login within the bound")?;
    tokio::spawn(conn);
    Ok(client)
}

/// `n` logins with `config`, one after another, from source address `ip`: how long each took
/// to log in and run `select 1`; panics on any error.
pub async fn timed_logins_from(
    ip: [u8; 4],
    port: u16,
    config: &tokio_postgres::Config,
    n: usize,
) -> Vec<Duration> {
    let mut took = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let client = connect_from(IpAddr::from(ip), port, config)
            .await
            .unwrap_or_else(|e| panic!("a login from {ip:?}: {e:?}"));
        client.simple_query("select 1").await.expect("runs");
        took.push(t.elapsed());
    }
    took
}

/// How one client's attempt ended, from the client's side.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    /// An ErrorResponse: SQLSTATE and message.
    Refused(String, String),
    /// Anything else (a reset or close without an ErrorResponse, a timeout, ...).
    Broken(String),
}

impl Outcome {
    pub fn of<T>(result: &Result<T, tokio_postgres::Error>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) => match e.as_db_error() {
                Some(db) => Outcome::Refused(db.code().code().into(), db.message().into()),
                None => Outcome::Broken(format!("{e:?}")),
            },
        }
    }

    /// The SQLSTATE, or a label for the other outcomes.
    pub fn code(&self) -> &str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused(code, _) => code,
            Outcome::Broken(_) => "broken",
        }
    }
}

/// How many outcomes of each kind, by [`Outcome::code`].
pub fn tally<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for o in outcomes {
        *by.entry(o.code().to_string()).or_default() += 1;
    }
    by
}

/// An ErrorResponse as an [`Outcome::Refused`].
fn refused(body: &ErrorResponseBody) -> Outcome {
    let (mut code, mut message) = (String::new(), String::new());
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    Outcome::Refused(code, message)
}

/// The first half of a raw login: connects, sends `user`'s startup packet for `db` and reads
/// the proxy's first answer; the connection when that asks for a SCRAM password, else how the
/// proxy refused.
pub async fn raw_startup(port: u16, user: &str, db: &str) -> Result<RawConn, Outcome> {
    let mut conn = RawConn::connect(port).await;
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", db)], &mut out).expect("startup");
    conn.send(&out).await;
    match tokio::time::timeout(BOUND, conn.next()).await {
        Ok(Some(Message::AuthenticationSasl(_))) => Ok(conn),
        Ok(Some(Message::ErrorResponse(body))) => Err(refused(&body)),
        Ok(_) => Err(Outcome::Broken("no password request".into())),
        Err(_) => Err(Outcome::Broken(format!("no answer within {BOUND:?}"))),
    }
}

/// The second half: the SCRAM exchange with `password` after [`raw_startup`], then `select 1`.
pub async fn raw_scram_and_query(conn: &mut RawConn, password: &str) -> Outcome {
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut out = BytesMut::new();
    frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out).expect("sasl");
    let exchange = async {
        let mut queried = false;
        loop {
            conn.send(&out).await;
            out.clear();
            match conn.next().await {
                Some(Message::AuthenticationSaslContinue(b)) => {
                    scram.update(b.data()).expect("server-first message");
                    frontend::sasl_response(scram.message(), &mut out).expect("sasl");
                }
                Some(Message::AuthenticationSaslFinal(b)) => {
                    scram.finish(b.data()).expect("server signature")
                }
                Some(Message::ReadyForQuery(_)) if queried => return Outcome::Ok,
                Some(Message::ReadyForQuery(_)) => {
                    queried = true;
                    frontend::query("select 1", &mut out).expect("query");
                }
                Some(Message::ErrorResponse(body)) => return refused(&body),
                Some(_) => {}
                None => return Outcome::Broken("closed without an ErrorResponse".into()),
            }
        }
    };
    tokio::time::timeout(BOUND, exchange)
        .await
        .unwrap_or_else(|_| Outcome::Broken(format!("no answer within {BOUND:?}")))
}

/// A logged-in client running `select 1` in a loop until [`ControlLoop::finish`], keeping
/// every error it sees.
pub struct ControlLoop {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(u64, Vec<String>)>,
}

impl ControlLoop {
    pub fn start(client: tokio_postgres::Client) -> ControlLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut errors) = (0u64, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match tokio::time::timeout(BOUND, client.simple_query("select 1")).await {
                    Ok(Ok(_)) => ok += 1,
                    Ok(Err(e)) => errors.push(format!("{e:?}")),
                    Err(_) => errors.push(format!("no answer within {BOUND:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, errors)
        });
        ControlLoop { stop, task }
    }

    /// Stops the loop; panics unless every query succeeded. Returns how many ran.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, errors) = tokio::time::timeout(BOUND, self.task)
            .await
            .expect("the control loop stops")
            .expect("the control loop does not panic");
        assert!(
            errors.is_empty(),
            "the control client saw errors: {errors:?}"
        );
        assert!(ok > 0, "the control client ran no query");
        ok
    }
}

/// A gate many tasks wait at, so their work starts at once.
pub struct Gate(tokio::sync::watch::Sender<bool>);

impl Default for Gate {
    fn default() -> Gate {
        Gate(tokio::sync::watch::Sender::new(false))
    }
}

impl Gate {
    /// Resolves once [`Gate::open`] was called.
    pub fn waiter(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|open| *open).await;
        }
    }

    pub fn open(&self) -> Instant {
        self.0.send_replace(true);
        Instant::now()
    }
}

/// Spawns `n` tasks made by `task`, each starting when `gate` opens.
pub fn spawn_gated<T, F>(gate: &Gate, n: usize, mut task: impl FnMut() -> F) -> Vec<JoinHandle<T>>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    (0..n)
        .map(|_| {
            let (start, work) = (gate.waiter(), task());
            tokio::spawn(async move {
                start.await;
                work.await
            })
        })
        .collect()
}

/// Awaits every task, each within [`BOUND`] of the first.
pub async fn join_all<T>(tasks: Vec<JoinHandle<T>>) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let r = tokio::time::timeout_at(deadline, t)
            .await
            .unwrap_or_else(|_| panic!("a task did not finish within {BOUND:?}"));
        out.push(r.expect("task did not panic"));
    }
    out
}

/// Waits until `want` of `socks` were sent something, and checks each got a 53300 error.
pub async fn told_to_go(socks: &[TcpStream], want: usize) -> usize {
    let mut got = vec![Vec::new(); socks.len()];
    let deadline = Instant::now() + BOUND;
    loop {
        for (s, g) in socks.iter().zip(got.iter_mut()) {
            let mut buf = [0u8; 512];
            if let Ok(n) = s.try_read(&mut buf) {
                g.extend_from_slice(&buf[..n]);
            }
        }
        let told: Vec<_> = got.iter().filter(|g| !g.is_empty()).collect();
        if told.len() >= want || Instant::now() > deadline {
            for g in &told {
                let text = String::from_utf8_lossy(g);
                assert!(g[0] == b'E' && text.contains("53300"), "{text:?}");
            }
            return told.len();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the proxy's metrics without blocking the runtime until `done`; panics after [`BOUND`].
pub async fn until_metric(proxy: &Proxy, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + BOUND;
    loop {
        if done(&metrics(proxy)) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Panics if the proxy's log shows a panic.
pub fn no_panic(proxy: &Proxy) {
    assert!(!proxy.log().contains("panicked"), "the proxy panicked");
}
