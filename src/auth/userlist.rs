//! The auth file in PgBouncer's userlist.txt format: `"user" "secret"` per line, where the secret
//! is plaintext, `md5<hex>` or a SCRAM-SHA-256 verifier. Parsed once per (re)load.

use foldhash::HashMap;
use std::sync::OnceLock;

use super::scram::ScramVerifier;
use super::AuthError;

/// A stored credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    /// Hex of md5(password || user), without the `md5` prefix.
    Md5(String),
    Scram(ScramVerifier),
}

/// One user of the auth file. The SCRAM verifier of a plaintext password is derived at most once
/// per load, so logins never run PBKDF2 again.
#[derive(Debug)]
pub struct UserEntry {
    pub secret: Secret,
    derived: OnceLock<ScramVerifier>,
}

impl UserEntry {
    pub fn new(secret: Secret) -> Self {
        Self {
            secret,
            derived: OnceLock::new(),
        }
    }

    /// The SCRAM verifier to check a client's proof against.
    pub fn scram(&self) -> &ScramVerifier {
        match &self.secret {
            Secret::Scram(v) => v,
            Secret::Plain(p) => self.derived.get_or_init(|| ScramVerifier::derive(p)),
            // md5-only users cannot use SCRAM; callers pick md5 for them.
            Secret::Md5(_) => self.derived.get_or_init(|| ScramVerifier::derive("")),
        }
    }
}

/// All users of the auth file.
#[derive(Debug, Default)]
pub struct UserList {
    users: HashMap<String, UserEntry>,
    /// Verifier for unknown users, derived once so failed logins cost no PBKDF2 either.
    dummy: OnceLock<ScramVerifier>,
}

impl UserList {
    pub fn get(&self, user: &str) -> Option<&UserEntry> {
        self.users.get(user)
    }

    /// A verifier no password matches in practice, for unknown users' fake exchange.
    pub fn dummy_verifier(&self) -> &ScramVerifier {
        self.dummy
            .get_or_init(|| ScramVerifier::derive(&format!("{:x}", rand::random::<u128>())))
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn insert(&mut self, user: &str, secret: Secret) {
        self.users.insert(user.to_string(), UserEntry::new(secret));
    }

    pub fn load(path: &std::path::Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|error| AuthError::Io {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, AuthError> {
        let mut list = UserList::default();
        for (i, line) in text.lines().enumerate() {
            let err = |message: &str| AuthError::File {
                path: path.to_string(),
                line: i + 1,
                message: message.to_string(),
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let fields =
                quoted_fields(line).ok_or_else(|| err("expected \"user\" \"password\""))?;
            let [user, secret, ..] = fields.as_slice() else {
                return Err(err("expected \"user\" \"password\""));
            };
            let secret = parse_secret(user, secret).map_err(|e| err(&e.to_string()))?;
            list.insert(user, secret);
        }
        Ok(list)
    }
}

fn parse_secret(user: &str, s: &str) -> Result<Secret, AuthError> {
    if let Some(hex) = s.strip_prefix("md5") {
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Secret::Md5(hex.to_ascii_lowercase()));
        }
    }
    if s.starts_with("SCRAM-SHA-256$") {
        return super::scram::parse_verifier(s)
            .map(Secret::Scram)
            .ok_or_else(|| AuthError::BadVerifier(user.into()));
    }
    Ok(Secret::Plain(s.to_string()))
}

/// Splits `"a" "b""c"` into `["a", "b\"c"]`; `None` on an unterminated quote.
fn quoted_fields(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some('"') => {}
            Some(_) => return None,
        }
        let mut field = String::new();
        loop {
            match chars.next()? {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => break,
                c => field.push(c),
            }
        }
        out.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_secret_kinds() {
        let verifier = postgres_protocol::password::scram_sha_256(b"gitlab");
        let text = format!(
            "; comment\n\"plain\" \"pw\"\n\"md\" \"md5{}\"\n\"sc\" \"{}\"\n\"q\"\"uote\" \"x\"\n",
            "0123456789abcdef0123456789abcdef", verifier
        );
        let l = UserList::parse(&text, "t").unwrap();
        assert_eq!(l.get("plain").unwrap().secret, Secret::Plain("pw".into()));
        assert!(matches!(l.get("md").unwrap().secret, Secret::Md5(_)));
        assert!(matches!(l.get("sc").unwrap().secret, Secret::Scram(_)));
        assert!(l.get("q\"uote").is_some());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = UserList::parse("\"a\" \"b\"\n\"unterminated\n", "f").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
