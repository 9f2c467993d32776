//! Fleet coordination, the operator's side: `pgdecomp phase set N` stores a phase in etcd
//! (compare-and-swap on the revision it read) and waits until every registered instance runs
//! it; `pgdecomp phase show` lists the stored phase and each instance's applied phase.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::decide::{check_switch, phase_value, resolve_phase_file, EtcdPhase, InstanceRecord};
use super::etcd::{bounded, Etcd};
use super::{FleetError, FleetSettings};
use crate::config::{load_phase, Snapshot};

/// The stored phase and the registered instances.
pub struct FleetView {
    pub key: String,
    pub phase: EtcdPhase,
    pub instances: Vec<InstanceRecord>,
}

/// What `phase set` did.
pub struct SetOutcome {
    pub value: String,
    pub number: u8,
    pub revision: i64,
    /// Every registered instance runs the new phase (true when none is registered).
    pub converged: bool,
    pub view: FleetView,
}

fn fleet(snap: &Snapshot) -> Result<&FleetSettings, FleetError> {
    snap.fleet
        .as_ref()
        .ok_or_else(|| FleetError::NotConfigured(snap.source.clone()))
}

async fn view(etcd: &mut Etcd, s: &FleetSettings) -> Result<FleetView, FleetError> {
    let key = s.phase_key();
    let (phase, _) = etcd.read_phase(&key).await?;
    let instances = etcd.instances(&s.instances_prefix()).await?;
    Ok(FleetView {
        key,
        phase,
        instances,
    })
}

/// `pgdecomp phase show`.
pub async fn show(snap: &Snapshot) -> Result<FleetView, FleetError> {
    let s = fleet(snap)?;
    let mut etcd = Etcd::connect(s).await?;
    view(&mut etcd, s).await
}

/// The phase number a stored value names, when its file loads here.
fn stored_number(s: &FleetSettings, value: &str) -> Option<u8> {
    let file = resolve_phase_file(&s.phase_dir, value).ok()?;
    load_phase(&file).ok().map(|p| p.number())
}

/// `pgdecomp phase set ARG`: validates the phase file locally, checks the switch, stores it
/// only if nobody changed the key since it was read, then waits up to `wait` for the fleet.
pub async fn set(
    snap: &Snapshot,
    arg: &str,
    force: bool,
    wait: Duration,
) -> Result<SetOutcome, FleetError> {
    let s = fleet(snap)?;
    let value = phase_value(arg)?;
    let number = load_phase(&resolve_phase_file(&s.phase_dir, &value)?)?.number();
    let mut etcd = Etcd::connect(s).await?;
    let (current, _) = etcd.read_phase(&s.phase_key()).await?;
    let (current_number, expected) = match &current {
        EtcdPhase::Set { value, revision } => (stored_number(s, value), *revision),
        // etcd does not manage the phase yet: this config's own phase is the best guess.
        _ => (Some(snap.phase.number()), 0),
    };
    check_switch(current_number, number, force)?;
    let hold = bounded(etcd.timeout(), etcd.client.get(s.cutover_key("hold"), None)).await?;
    if !hold.kvs().is_empty() && !force {
        return Err(FleetError::Refused(
            "a cutover holds the fleet's ci writes now; let it end (pgdecomp cutover --status) or abort it first".into(),
        ));
    }
    let revision = etcd.set_phase(&s.phase_key(), &value, expected).await?;
    let deadline = Instant::now() + wait;
    loop {
        let view = view(&mut etcd, s).await?;
        let converged = view.instances.iter().all(|i| i.caught_up(revision));
        if converged || Instant::now() >= deadline {
            return Ok(SetOutcome {
                value,
                number,
                revision,
                converged,
                view,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl FleetView {
    /// The operator's table: one line per instance.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = match &self.phase {
            EtcdPhase::Set { value, revision } => {
                writeln!(out, "{}: {value} (revision {revision})", self.key)
            }
            _ => writeln!(
                out,
                "{}: not set (each instance runs its phase_file)",
                self.key
            ),
        };
        if self.instances.is_empty() {
            out.push_str("no instance registered\n");
            return out;
        }
        let _ = writeln!(
            out,
            "{:<28} {:<22} {:>5} {:<24} {:<6} {:>9}  state",
            "instance", "listen", "phase", "file", "source", "revision"
        );
        let want = match &self.phase {
            EtcdPhase::Set { revision, .. } => *revision,
            _ => 0,
        };
        for i in &self.instances {
            let state = match &i.error {
                Some(e) => format!("error: {e}"),
                None if want == 0 || i.caught_up(want) => "in sync".into(),
                None => "behind".into(),
            };
            let _ = writeln!(
                out,
                "{:<28} {:<22} {:>5} {:<24} {:<6} {:>9}  {state}",
                i.instance, i.listen, i.phase, i.phase_file, i.source, i.revision
            );
        }
        out
    }
}

impl SetOutcome {
    pub fn to_text(&self) -> String {
        let verdict = if self.converged {
            "every registered instance runs it"
        } else {
            "NOT every instance runs it yet"
        };
        format!(
            "phase {} ({}) stored at revision {}; {verdict}\n{}",
            self.number,
            self.value,
            self.revision,
            self.view.to_text()
        )
    }
}
