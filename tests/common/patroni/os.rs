//! Processes, signals, HTTP and the temp root of the Patroni lab; nothing here knows Patroni.

use super::CLUSTERS;
use crate::common::cluster::running_as_root;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A detached `sh` that waits for the test process ($1) to die, then kills what the lab under
/// $2 started: Patroni and etcd (pid files in run/) get SIGKILL, postmasters SIGQUIT. A pid is
/// only signalled while its command line still names the lab root, so a reused pid is safe.
const WATCHDOG: &str = r#"
    owned() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "$2"; }
    while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
    for f in "$2"/run/*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        owned "$pid" "$2" && kill -KILL "$pid" 2>/dev/null
    done
    for f in "$2"/data/*/postmaster.pid; do
        [ -f "$f" ] || continue
        pid=$(head -n 1 "$f")
        owned "$pid" "$2" && kill -QUIT "$pid" 2>/dev/null
    done
    sleep 2
    rm -rf "$2"
"#;

/// Waits for the children to exit; SIGKILLs those still running after `limit`.
pub(super) fn stop_children(children: &mut [Child], limit: Duration) {
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
pub(super) fn as_postgres(program: &str) -> Command {
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
pub(super) fn curl(
    method: &str,
    url: &str,
    body: Option<&str>,
    max_secs: u32,
) -> Option<(u16, String)> {
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

pub(super) fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` runs (a zombie does not: orphaned postmasters are reaped by PID 1, maybe late).
pub(super) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

pub(super) fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// A temp root the `postgres` user owns, with the directories the lab writes into.
pub(super) fn new_root() -> PathBuf {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::SeqCst);
    // tmpfs when there is one: removing ~450 MB of data dirs and etcd's preallocated WAL took
    // ~11 s on a disk mounted with `discard`, and etcd's fsyncs are cheaper there too.
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let root = parent.join(format!("pgdecomp-patroni-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // etcd creates its own data dir, with the 0700 it insists on.
    for dir in ["conf", "data", "log", "run"] {
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

/// The watchdog (see [`WATCHDOG`]), in its own process group so a Ctrl-C to the test run
/// does not kill the cleanup too.
pub(super) fn spawn_watchdog(root: &Path) -> Child {
    crate::common::cluster::detached_shell(
        WATCHDOG,
        "pgdecomp-patroni-watchdog",
        &[std::process::id().to_string(), root.display().to_string()],
    )
}
