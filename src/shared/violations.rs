//! Proxy-wide state beside the pipeline: what sessions leave for metrics and SHOW VIOLATIONS —
//! bounded metric labels, the rate-limited violation log and the list of recent violations.

use super::Shared;

/// One violation as SHOW VIOLATIONS lists it.
#[derive(Clone, Debug)]
pub struct RecentViolation {
    pub at: std::time::SystemTime,
    pub client: u64,
    pub kind: &'static str,
    pub mode: &'static str,
    pub message: String,
    pub sql: String,
}

const RECENT_VIOLATIONS: usize = 100;

/// Distinct undefined-table label values kept before new ones collapse into one.
pub const UNDEFINED_LABEL_CAP: usize = 100;

/// Statement text for logs: long SQL is cut at a character boundary.
pub fn truncate(sql: &str) -> &str {
    let mut end = sql.len().min(500);
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    &sql[..end]
}

impl Shared {
    /// Keeps label cardinality bounded: past a cap, new `undefined_<table>` values become
    /// `undefined_other` (each unknown table would otherwise be a new time series).
    pub fn bounded_label(&self, label: String) -> String {
        if !label.contains("undefined_") {
            return label;
        }
        let mut seen = self
            .undefined_labels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.contains(&label) {
            return label;
        }
        if seen.len() < UNDEFINED_LABEL_CAP {
            seen.insert(label.clone());
            return label;
        }
        let mut parts: Vec<&str> = label
            .split(',')
            .map(|p| {
                if p.starts_with("undefined_") {
                    "undefined_other"
                } else {
                    p
                }
            })
            .collect();
        parts.dedup();
        parts.join(",")
    }

    /// True at most once per 10 s for each violation kind and schema set.
    pub fn should_log_violation(&self, kind: &'static str, schemas: &str) -> bool {
        let mut logged = self
            .violation_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let full = logged.len() >= 10_000;
        match logged.entry((kind, schemas.to_string())) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                if now.duration_since(*e.get()) < std::time::Duration::from_secs(10) {
                    return false;
                }
                e.insert(now);
                true
            }
            std::collections::hash_map::Entry::Vacant(e) if !full => {
                e.insert(now);
                true
            }
            std::collections::hash_map::Entry::Vacant(_) => false,
        }
    }

    pub fn remember_violation(&self, client: u64, v: &crate::route::Violation, sql: &str) {
        let mut recent = self
            .recent_violations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_VIOLATIONS {
            recent.pop_front();
        }
        recent.push_back(RecentViolation {
            at: std::time::SystemTime::now(),
            client,
            kind: v.kind.label(),
            mode: v.mode.label(),
            message: v.message.clone(),
            sql: truncate(sql).to_string(),
        });
    }
}

impl Shared {
    /// Registers every violation series `classifier` can produce at 0 (at start and after each
    /// reload), so an alert on `rate(...) > 0` or a dashboard sees 0, not "no data".
    pub fn export_violation_series(&self, classifier: &crate::classify::Classifier) {
        use crate::route::{known_series, ViolationKind as K, MODES};
        let m = &self.metrics;
        for s in known_series(&classifier.dictionary, &classifier.rules) {
            let labels = s.schemas.as_str();
            // Looking a child up creates it at 0; the value is not needed.
            let _ = match (s.kind, s.target) {
                (K::CrossJoin, _) => m.cross_join.with_label_values(&[labels]),
                (K::CrossDatabaseModification, _) => {
                    m.cross_db_modification.with_label_values(&[labels])
                }
                (K::WrongSchema, Some(t)) => m.wrong_schema.with_label_values(&[t.label(), labels]),
                (K::LockedTableWrite, Some(t)) => {
                    m.locked_table_write.with_label_values(&[t.label(), labels])
                }
                _ => continue,
            };
        }
        for limit in [
            "max_client_conn",
            "max_user_connections",
            "max_db_connections",
            "client_idle_timeout",
            "idle_transaction_timeout",
            "query_timeout",
            "max_message_size",
            "max_logins_per_second",
        ] {
            let _ = m.client_limits.with_label_values(&[limit]);
        }
        for kind in K::ALL {
            let _ = m.rejected.with_label_values(&[kind.label()]);
            for mode in MODES {
                let _ = m
                    .shadow_violations
                    .with_label_values(&[kind.label(), mode.label()]);
            }
        }
    }
}
