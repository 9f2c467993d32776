//! The cutover's preflight as a pure check: given what the coordinator read (the fleet's phase,
//! the registered instances, Patroni's members, the CI standby's lag), the first reason not to
//! start, named so the operator knows what to fix. No I/O here.

use crate::fleet::InstanceRecord;

/// One Patroni member as `/cluster` reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub cluster: &'static str,
    pub name: String,
    pub role: String,
    pub state: String,
}

/// Everything the preflight decides on.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub dry_run: bool,
    /// The phase the fleet runs (etcd's `<prefix>/phase`), `None` when etcd holds none.
    pub phase: Option<u8>,
    pub now_ms: u64,
    pub instances: Vec<InstanceRecord>,
    /// `[cutover] instances`.
    pub expected: Vec<String>,
    /// A record older than this did not answer (its heartbeat stopped).
    pub heartbeat_bound_ms: u64,
    pub violation_window_ms: u64,
    /// Empty for a static topology.
    pub members: Vec<Member>,
    /// Configured Patroni endpoints whose member does not report itself running.
    pub patroni_down: Vec<String>,
    /// The CI write target's server is still a standby (not promoted).
    pub ci_standby: bool,
    pub lag_bytes: u64,
    pub max_lag_bytes: u64,
    /// The share of ci writes the fleet's phase sends to the ci write target (the rest
    /// shares main's connection and could not be held).
    pub ci_write_percent: f64,
}

/// `Err(reason)` for the first thing that forbids the cutover.
pub fn check(f: &Facts) -> Result<(), String> {
    phase(f)?;
    if f.ci_write_percent < 100.0 {
        return Err(format!(
            "the fleet's phase sends only {} % of ci writes to the ci write target; the rest share main's connection and cannot be held: roll ci writes out to 100 % first",
            f.ci_write_percent
        ));
    }
    instances(f)?;
    patroni(f)?;
    if !f.ci_standby {
        return Err(
            "the CI cluster is not a standby any more (already promoted?); a cutover needs a CI standby that replays main".into(),
        );
    }
    if f.lag_bytes > f.max_lag_bytes {
        return Err(format!(
            "the CI standby leader's replay lag is {} bytes, above cutover.max_lag_bytes = {}",
            f.lag_bytes, f.max_lag_bytes
        ));
    }
    Ok(())
}

fn phase(f: &Facts) -> Result<(), String> {
    let ok: &[u8] = if f.dry_run { &[5, 6] } else { &[6] };
    match f.phase {
        Some(p) if ok.contains(&p) => Ok(()),
        Some(p) if f.dry_run => Err(format!(
            "the fleet runs phase {p}; a rehearsal needs phase 5 or 6"
        )),
        Some(p) => Err(format!(
            "the fleet runs phase {p}; the cutover starts from phase 6 (rehearse with --dry-run in phase 5 or 6)"
        )),
        None => Err(
            "etcd holds no phase for the fleet; store it first with `pgdecomp phase set 6`".into(),
        ),
    }
}

fn instances(f: &Facts) -> Result<(), String> {
    if f.instances.is_empty() {
        return Err("no pgdecomp instance is registered in etcd".into());
    }
    for name in &f.expected {
        if !f.instances.iter().any(|i| &i.instance == name) {
            return Err(format!(
                "instance {name} (listed in cutover.instances) is not registered in etcd: it does not answer"
            ));
        }
    }
    for i in &f.instances {
        let age = f.now_ms.saturating_sub(i.heartbeat_ms);
        if age > f.heartbeat_bound_ms {
            return Err(format!(
                "instance {} does not answer: its last heartbeat is {:.1} s old",
                i.instance,
                age as f64 / 1000.0
            ));
        }
        if Some(i.phase) != f.phase || i.error.is_some() {
            return Err(format!(
                "instance {} runs phase {} ({}), not the fleet's",
                i.instance,
                i.phase,
                i.error.as_deref().unwrap_or("not caught up")
            ));
        }
        if i.last_violation_ms > 0
            && f.now_ms.saturating_sub(i.last_violation_ms) < f.violation_window_ms
        {
            return Err(format!(
                "instance {} counted a violation {:.0} s ago (cutover.violation_window is {:.0} s); SHOW VIOLATIONS there",
                i.instance,
                f.now_ms.saturating_sub(i.last_violation_ms) as f64 / 1000.0,
                f.violation_window_ms as f64 / 1000.0
            ));
        }
    }
    Ok(())
}

fn patroni(f: &Facts) -> Result<(), String> {
    if let Some(down) = f.patroni_down.first() {
        return Err(format!(
            "Patroni member not running: {down}{}",
            match f.patroni_down.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            }
        ));
    }
    for m in &f.members {
        let healthy = matches!(m.state.as_str(), "running" | "streaming");
        if !healthy {
            return Err(format!(
                "Patroni reports member {} of cluster {} ({}) as {:?}",
                m.name, m.cluster, m.role, m.state
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "preflight_tests.rs"]
mod tests;
