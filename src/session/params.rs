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
}

impl ClientParams {
    /// Keeps the tracked parameters of a startup packet.
    pub fn from_startup<'a>(params: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut me = Self::default();
        for (k, v) in params {
            me.set(k, v);
        }
        me
    }

    /// Records a value (from startup or a ParameterStatus the client's own SET caused).
    pub fn set(&mut self, key: &str, value: &str) {
        let key = key.to_ascii_lowercase();
        if !TRACKED.contains(&key.as_str()) {
            return;
        }
        match self.values.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.values.push((key, value.to_string())),
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

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
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

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
