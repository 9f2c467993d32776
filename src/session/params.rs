//! Client session parameters that must follow a client from one server connection to the next
//! (client_encoding, DateStyle, TimeZone, application_name, search_path, ...). Pure.

use std::collections::HashMap;

/// Startup parameters pgdecomp keeps in effect across server connections (lowercase).
pub const TRACKED: &[&str] = &[
    "client_encoding",
    "datestyle",
    "timezone",
    "intervalstyle",
    "application_name",
    "search_path",
    "standard_conforming_strings",
    "extra_float_digits",
];

/// What a client wants: `(lowercase name, value)`; absent names mean the server default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientParams {
    values: Vec<(String, String)>,
    /// Hash of `values`: a server whose last sync had the same fingerprint needs no check.
    fingerprint: u64,
    /// `pgdecomp.actor` from the startup `options` (`-c pgdecomp.actor=…`); never sent on.
    actor: Option<String>,
}

impl ClientParams {
    /// Keeps the tracked parameters of a startup packet.
    pub fn from_startup<'a>(params: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut me = Self::default();
        for (k, v) in params {
            if k == "options" {
                me.actor = option_value(v, "pgdecomp.actor");
            }
            me.set(k, v);
        }
        me
    }

    /// The actor the startup packet set for `actor` rollouts.
    pub fn actor(&self) -> Option<&str> {
        self.actor.as_deref()
    }

    /// Records a value (from startup or a ParameterStatus the client's own SET caused).
    pub fn set(&mut self, key: &str, value: &str) {
        // The tracked name itself, lowercase: no String is built for the comparison.
        let Some(key) = TRACKED.iter().find(|t| t.eq_ignore_ascii_case(key)) else {
            return;
        };
        match self.values.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => {
                slot.1.clear();
                slot.1.push_str(value);
            }
            None => self.values.push((key.to_string(), value.to_string())),
        }
        self.values.sort();
        self.fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.values.hash(&mut h);
            // 0 means "unknown" on the server side.
            h.finish() | 1
        };
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint.max(1)
    }

    /// The value of `key` (any case), if the client set it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// SQL that brings a server connection's parameters to this client's values, or `None`
    /// when they already match (the common case: no round trip is added).
    pub fn sync_sql(
        &self,
        server: &HashMap<String, String>,
        defaults: &HashMap<String, String>,
    ) -> Option<String> {
        let mut sql = String::new();
        for key in TRACKED {
            let current = server.get(*key);
            match self.get(key) {
                Some(want) if current.map(String::as_str) != Some(want) => {
                    sql.push_str(&format!("SET {key} TO {};", quote(want)));
                }
                Some(_) => {}
                None if current != defaults.get(*key) => sql.push_str(&format!("RESET {key};")),
                None => {}
            }
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// Records in `server` what `sync_sql` set, for parameters the server does not report.
    pub fn apply_to(
        &self,
        server: &mut HashMap<String, String>,
        defaults: &HashMap<String, String>,
    ) {
        for key in TRACKED {
            match self.get(key) {
                Some(v) => server.insert(key.to_string(), v.to_string()),
                None => match defaults.get(*key) {
                    Some(d) => server.insert(key.to_string(), d.clone()),
                    None => server.remove(*key),
                },
            };
        }
    }
}

/// The value of `name` in a startup `options` string (`-c name=value`, `-cname=value` or
/// `--name=value`); words split on spaces and `\\` escapes the next character, as PostgreSQL
/// splits them.
fn option_value(options: &str, name: &str) -> Option<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                words.extend((!word.is_empty()).then(|| std::mem::take(&mut word)))
            }
            c => word.push(c),
        }
    }
    words.extend((!word.is_empty()).then_some(word));
    let mut found = None;
    let mut iter = words.iter();
    while let Some(w) = iter.next() {
        let setting = match w.as_str() {
            "-c" => iter.next().map(String::as_str),
            w => w.strip_prefix("--").or_else(|| w.strip_prefix("-c")),
        };
        if let Some((k, v)) = setting.and_then(|s| s.split_once('=')) {
            if k.eq_ignore_ascii_case(name) {
                found = Some(v.to_string());
            }
        }
    }
    found
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_from_startup_options() {
        let actor = |o: &str| ClientParams::from_startup([("options", o)].into_iter()).actor;
        assert_eq!(
            actor("-c pgdecomp.actor=project:42"),
            Some("project:42".into())
        );
        assert_eq!(
            actor("-c statement_timeout=5s --pgdecomp.actor=user:7"),
            Some("user:7".into())
        );
        assert_eq!(actor("-cpgdecomp.actor=a\\ b"), Some("a b".into()));
        assert_eq!(actor("-c search_path=x"), None);
    }

    #[test]
    fn sync_only_what_differs() {
        let c = ClientParams::from_startup(
            [
                ("TimeZone", "UTC"),
                ("application_name", "it's"),
                ("user", "x"),
            ]
            .into_iter(),
        );
        let defaults: HashMap<String, String> = [
            ("timezone".into(), "Europe/Paris".into()),
            ("application_name".into(), "".into()),
        ]
        .into_iter()
        .collect();
        let mut server = defaults.clone();
        server.insert("search_path".into(), "other".into());
        let sql = c.sync_sql(&server, &defaults).unwrap();
        assert_eq!(
            sql,
            "SET timezone TO 'UTC';SET application_name TO 'it''s';RESET search_path;"
        );
        c.apply_to(&mut server, &defaults);
        assert_eq!(c.sync_sql(&server, &defaults), None);
    }
}
