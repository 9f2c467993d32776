//! The `pgdecomp cutover` command line in the cutover tests: a run in the background with its
//! output in temp files, a bounded wait for its end, and its JSON report.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::RUN_BOUND;

/// A `pgdecomp cutover` run that has ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    /// The JSON report (Null when stdout held none).
    pub report: Value,
    pub stdout: String,
    pub stderr: String,
    pub started: Instant,
    pub ended: Instant,
}

impl Run {
    pub fn outcome(&self) -> &str {
        self.report["outcome"].as_str().unwrap_or("<none>")
    }

    pub fn reason(&self) -> String {
        self.report["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Panics with everything the run printed unless it ended with `outcome` and `code`.
    pub fn expect(&self, outcome: &str, code: i32) {
        assert!(
            self.outcome() == outcome && self.code == Some(code),
            "want outcome {outcome} with exit code {code}, got {:?} / {}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.outcome(),
            self.stdout,
            self.stderr
        );
    }

    /// `reason` names `word` (case-insensitive).
    pub fn expect_reason(&self, word: &str) {
        assert!(
            self.reason().to_lowercase().contains(&word.to_lowercase()),
            "the reason should name {word:?}: {:?}\nstderr:\n{}",
            self.reason(),
            self.stderr
        );
    }
}

/// `pgdecomp cutover --config CONFIG ARGS...` running in the background.
pub struct Pending {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
}

/// Starts `pgdecomp cutover --config CONFIG ARGS...`; its output goes to temp files.
pub fn spawn_cutover(config: &Path, args: &[&str]) -> Pending {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let base = std::env::temp_dir().join(format!("pgdecomp-cutover-{}-{n}", std::process::id()));
    let (out, err) = (base.with_extension("out"), base.with_extension("err"));
    let child = Command::new(env!("CARGO_BIN_EXE_pgdecomp"))
        .arg("cutover")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("create stdout file"))
        .stderr(std::fs::File::create(&err).expect("create stderr file"))
        .spawn()
        .expect("spawn pgdecomp cutover");
    Pending {
        child: Some(child),
        out,
        err,
        started: Instant::now(),
    }
}

impl Pending {
    /// The progress printed so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits up to `bound` for the run to end; kills it and panics past that.
    pub fn finish(mut self, bound: Duration) -> Run {
        let mut child = self.child.take().expect("not finished twice");
        let deadline = Instant::now() + bound;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pgdecomp cutover still ran after {bound:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::fs::read_to_string(&self.out).unwrap_or_default();
        let report = serde_json::from_str(stdout.trim())
            .or_else(|_| serde_json::from_str(stdout.lines().last().unwrap_or_default()))
            .unwrap_or(Value::Null);
        Run {
            code: status.code(),
            report,
            stdout,
            stderr: self.stderr(),
            started: self.started,
            ended: Instant::now(),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
    }
}

/// Runs `pgdecomp cutover` to its end (bounded), off the async workers.
pub async fn cutover(config: &Path, args: &[&str]) -> Run {
    let pending = spawn_cutover(config, args);
    tokio::task::spawn_blocking(move || pending.finish(RUN_BOUND))
        .await
        .expect("cutover run")
}

/// `pgdecomp cutover --status`: the etcd record as JSON (Null when it printed none).
pub fn status(config: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pgdecomp"))
        .args(["cutover", "--status", "--config"])
        .arg(config)
        .output()
        .expect("run pgdecomp cutover --status");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}
