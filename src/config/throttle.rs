//! Config (raw → **validated** → snapshot): `[throttle]`, which holds the transactions of
//! selected clients (the migration workers) before they get a server connection while their
//! primary has too many WAL segments waiting to be archived. Read by the session between route
//! and pool; the decision itself is `topology::throttle::decide`.

use std::path::Path;
use std::time::Duration;

use super::raw::RawThrottle;
use super::ConfigError;

/// GitLab paused batched background migrations above this many `.ready` WAL segments.
pub const GITLAB_THRESHOLD: u64 = 42;

/// `[throttle]` from the config, validated. Reloadable: held transactions re-read it.
#[derive(Clone, Debug, PartialEq)]
pub struct ThrottleSettings {
    /// Hold while the primary's count of segments waiting for archiving is above this.
    pub archive_ready_threshold: u64,
    /// Globs on application_name (`*` matches any run of characters), case-sensitive.
    pub application_names: Vec<String>,
    /// Login names, exact.
    pub users: Vec<String>,
    /// A transaction held this long is refused (SQLSTATE 53000) rather than let through: the
    /// backlog it would add is what the throttle exists to prevent.
    pub max_hold: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            archive_ready_threshold: GITLAB_THRESHOLD,
            application_names: Vec::new(),
            users: Vec::new(),
            max_hold: Duration::from_secs(300),
        }
    }
}

impl ThrottleSettings {
    /// Off unless some client is selected: the common case costs one check per transaction.
    pub fn enabled(&self) -> bool {
        !self.application_names.is_empty() || !self.users.is_empty()
    }

    /// Whether a client with this login and application_name is throttled.
    pub fn selects(&self, user: &str, application_name: Option<&str>) -> bool {
        self.users.iter().any(|u| u == user)
            || application_name.is_some_and(|a| self.application_names.iter().any(|p| glob(p, a)))
    }
}

/// `*` matches any run of characters (also none); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole text had to be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Validates `[throttle]`; every error names its key.
pub fn settings(path: &Path, raw: &RawThrottle) -> Result<ThrottleSettings, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: path.into(),
        key: format!("throttle.{key}"),
        message,
    };
    if !(raw.max_hold.is_finite() && raw.max_hold > 0.0) {
        return Err(invalid(
            "max_hold",
            format!("must be a positive number of seconds, got {}", raw.max_hold),
        ));
    }
    for (key, list) in [
        ("application_names", &raw.application_names),
        ("users", &raw.users),
    ] {
        if list.iter().any(String::is_empty) {
            return Err(invalid(key, "has an empty entry".into()));
        }
    }
    Ok(ThrottleSettings {
        archive_ready_threshold: raw.archive_ready_threshold,
        application_names: raw.application_names.clone(),
        users: raw.users.clone(),
        max_hold: Duration::from_secs_f64(raw.max_hold),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_prefixes_infixes_and_exact_names() {
        for (pattern, text, want) in [
            ("gitlab-migration-*", "gitlab-migration-worker", true),
            ("gitlab-migration-*", "gitlab-migration-", true),
            ("gitlab-migration-*", "gitlab-web", false),
            ("*sidekiq*", "gitlab-sidekiq-migrations", true),
            ("*sidekiq*", "puma", false),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-c-b", false),
            ("a*a", "a", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*", "", true),
            ("Migration*", "migration-worker", false),
        ] {
            assert_eq!(glob(pattern, text), want, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn empty_selectors_turn_the_throttle_off() {
        let mut s = ThrottleSettings::default();
        assert!(!s.enabled());
        assert!(!s.selects("gitlab", Some("gitlab-migration-worker")));
        s.users = vec!["migrator".into()];
        assert!(s.enabled());
        assert!(s.selects("migrator", None));
        assert!(!s.selects("gitlab", Some("gitlab-migration-worker")));
        s.application_names = vec!["gitlab-migration-*".into()];
        assert!(s.selects("gitlab", Some("gitlab-migration-worker")));
        assert!(!s.selects("gitlab", Some("puma")));
        assert!(!s.selects("gitlab", None));
    }

    #[test]
    fn invalid_values_name_their_key() {
        let raw = |max_hold: f64, users: Vec<String>| RawThrottle {
            max_hold,
            users,
            ..RawThrottle::default()
        };
        let key = |r: Result<ThrottleSettings, ConfigError>| match r {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("not refused by key: {other:?}"),
        };
        let p = Path::new("x.toml");
        assert_eq!(key(settings(p, &raw(0.0, vec![]))), "throttle.max_hold");
        assert_eq!(
            key(settings(p, &raw(f64::NAN, vec![]))),
            "throttle.max_hold"
        );
        assert_eq!(
            key(settings(p, &raw(1.0, vec![String::new()]))),
            "throttle.users"
        );
        let ok = settings(p, &RawThrottle::default()).unwrap();
        assert_eq!(ok, ThrottleSettings::default());
    }
}
