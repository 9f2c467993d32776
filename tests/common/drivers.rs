//! Real client drivers as child processes (the programs under `tests/drivers/`): a bounded run
//! that keeps what a killed program printed, and the JSON lines they print, one per
//! (protocol mode, scenario).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What one driver program observed in one scenario run in one protocol mode.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub driver: String,
    pub mode: String,
    pub scenario: String,
    /// Step name → outcome (a server name, `ok`, `rows:N`, `err:SQLSTATE`, `exc:Type`) → count.
    pub steps: BTreeMap<String, BTreeMap<String, u64>>,
    /// Outcome → the first message seen with it, for failure reports.
    pub errors: BTreeMap<String, String>,
    /// Series (`name{labels}`) → change over the scenario, for the watched pgdecomp counters.
    pub metrics: BTreeMap<String, f64>,
    /// Set when the scenario itself broke off (an exception outside a step, or its timeout).
    pub fatal: Option<String>,
    pub secs: f64,
}

impl Observation {
    /// Parses one line a driver program printed.
    pub fn parse(line: &str) -> Result<Observation, String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
        let text = |key: &str| {
            v.get(key)
                .and_then(|x| x.as_str())
                .unwrap_or("")
                .to_string()
        };
        let mut obs = Observation {
            driver: text("driver"),
            mode: text("mode"),
            scenario: text("scenario"),
            fatal: v.get("fatal").and_then(|x| x.as_str()).map(str::to_string),
            secs: v.get("secs").and_then(|x| x.as_f64()).unwrap_or(0.0),
            ..Observation::default()
        };
        if let Some(steps) = v.get("steps").and_then(|x| x.as_object()) {
            for (step, outcomes) in steps {
                let counts = outcomes
                    .as_object()
                    .ok_or_else(|| format!("step {step} is not an object: {line}"))?
                    .iter()
                    .map(|(o, n)| (o.clone(), n.as_f64().unwrap_or(0.0) as u64))
                    .collect();
                obs.steps.insert(step.clone(), counts);
            }
        }
        if let Some(errors) = v.get("errors").and_then(|x| x.as_object()) {
            for (outcome, message) in errors {
                obs.errors.insert(
                    outcome.clone(),
                    message.as_str().unwrap_or_default().to_string(),
                );
            }
        }
        if let Some(metrics) = v.get("metrics").and_then(|x| x.as_object()) {
            for (series, delta) in metrics {
                obs.metrics
                    .insert(series.clone(), delta.as_f64().unwrap_or(f64::NAN));
            }
        }
        Ok(obs)
    }

    /// The summed change of `name` over the series whose labels include every `k="v"`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, d)| d)
            .sum()
    }
}

/// A driver program's whole run.
#[derive(Debug)]
pub struct DriverRun {
    pub observations: Vec<Observation>,
    /// Lines that did not parse.
    pub garbage: Vec<String>,
    pub stderr: String,
    /// `None` when the program was killed at the time limit.
    pub status: Option<ExitStatus>,
    pub secs: f64,
}

impl DriverRun {
    /// The last lines of stderr, for failure messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.stderr.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Runs `cmd` (stdin closed) for at most `limit`; on timeout kills it and keeps what it
/// printed, so the scenarios that finished still count.
pub fn run_driver(cmd: &mut Command, limit: Duration) -> DriverRun {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    // Separate readers so a full pipe never blocks the program.
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = started + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for driver program") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().expect("stdout reader")).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned();
    let mut observations = Vec::new();
    let mut garbage = Vec::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        match Observation::parse(line) {
            Ok(obs) => observations.push(obs),
            Err(e) => garbage.push(e),
        }
    }
    DriverRun {
        observations,
        garbage,
        stderr,
        status,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// `tests/drivers/` of this repository.
pub fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}
