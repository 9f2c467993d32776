//! Classify step (client → framing → **classify** → route → pool → server): which function calls
//! make a read a write. A statement that calls a function with side effects must run on the
//! primary, where a replica would fail ("cannot execute ... in a read-only transaction") or keep
//! state behind (a session setting on a pooled connection, a large object, a notification).
//!
//! Fail closed: a call is safe on a replica only when the function is known to be STABLE or
//! IMMUTABLE, from the primary's catalog (`pg_proc.provolatile`, learned at start and reload) or
//! from the shipped list of common PostgreSQL built-ins (`builtin`), so reads behave before and
//! without a catalog. Unknown means primary.

mod builtin;

use std::collections::HashMap;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, Value,
};

/// `pg_proc.provolatile`, ordered from least to most volatile so overloads merge with `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Volatility {
    /// `'i'`: same result for the same arguments, no side effects.
    Immutable,
    /// `'s'`: same result within one statement, no side effects.
    Stable,
    /// `'v'`: anything, including side effects.
    Volatile,
}

impl Volatility {
    /// From `pg_proc.provolatile` (`'i'`, `'s'`, `'v'`); anything else is unknown.
    pub fn from_code(code: char) -> Option<Self> {
        match code {
            'i' => Some(Self::Immutable),
            's' => Some(Self::Stable),
            'v' => Some(Self::Volatile),
            _ => None,
        }
    }
}

/// One row of the catalog: a function's schema and name as stored (case-sensitive) and the
/// volatility of its most volatile overload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    pub schema: String,
    pub name: String,
    pub volatility: Volatility,
}

/// What pgdecomp knows about functions: the configured `write_functions` and what the catalog
/// taught. Built once per config or catalog read and shared read-only by every session.
#[derive(Debug, Clone, Default)]
pub struct Functions {
    /// Configured names (lowercase), bare (`refresh_counters`, any schema) or qualified
    /// (`ops.bump`): always writes, whatever the catalog says.
    overrides: Vec<String>,
    /// Learned volatility by function name, then by schema: keyed by name so a lookup borrows
    /// the statement's text instead of building a `schema.name` string.
    learned: HashMap<Box<str>, Vec<(Box<str>, Volatility)>>,
    count: usize,
}

impl Functions {
    /// The built-in knowledge plus the configured `write_functions` overrides.
    pub fn new(write_overrides: &[String]) -> Self {
        Self {
            overrides: write_overrides
                .iter()
                .map(|f| f.trim().to_lowercase())
                .filter(|f| !f.is_empty())
                .collect(),
            ..Self::default()
        }
    }

    /// Adds catalog rows (`pg_proc` joined to `pg_namespace`). Overloads share one name and
    /// routing cannot tell which one a call resolves to, so the most volatile wins.
    pub fn learn(&mut self, rows: impl IntoIterator<Item = FunctionInfo>) {
        for row in rows {
            let schemas = self.learned.entry(row.name.into_boxed_str()).or_default();
            match schemas.iter_mut().find(|(s, _)| **s == *row.schema) {
                Some((_, volatility)) => *volatility = (*volatility).max(row.volatility),
                None => {
                    schemas.push((row.schema.into_boxed_str(), row.volatility));
                    self.count += 1;
                }
            }
        }
    }

    /// The same overrides with nothing learned: a new catalog read replaces the old one, so a
    /// dropped or altered function does not linger.
    pub fn without_learned(&self) -> Self {
        Self {
            overrides: self.overrides.clone(),
            ..Self::default()
        }
    }

    /// How many (schema, function name) pairs the catalog taught.
    pub fn learned(&self) -> usize {
        self.count
    }

    /// The pg_catalog functions known as STABLE/IMMUTABLE without a catalog, so a test can hold
    /// them against a real `pg_proc`.
    pub fn builtin_safe_names() -> &'static [&'static str] {
        builtin::SAFE
    }

    /// Whether calling `name` with `args` (absent for a call in FROM) needs the primary.
    pub(super) fn call_writes(&self, name: &ObjectName, args: Option<&FunctionArguments>) -> bool {
        let mut parts = name.0.iter().rev().map(|p| p.as_ident());
        let (Some(Some(last)), schema) = (parts.next(), parts.next()) else {
            return true;
        };
        let Some(name) = Folded::new(last) else {
            return true;
        };
        let schema = match schema {
            None => None,
            Some(Some(ident)) => match Folded::new(ident) {
                Some(folded) => Some(folded),
                None => return true,
            },
            Some(None) => return true,
        };
        let is_local = || args.is_some_and(set_config_is_local);
        self.writes(schema.as_ref().map(Folded::as_str), name.as_str(), is_local)
    }

    /// The lookup: overrides, then the built-ins that always write, then pg_catalog (the
    /// read-safe volatile built-ins, the learned catalog, the shipped safe list), then the
    /// other learned schemas. `schema` and `name` are as PostgreSQL folds them.
    fn writes(&self, schema: Option<&str>, name: &str, is_local: impl Fn() -> bool) -> bool {
        if self.overridden(schema, name) {
            return true;
        }
        if schema.is_none_or(|s| s == "pg_catalog") {
            if name == "set_config" {
                return !is_local();
            }
            if builtin::always_writes(name) {
                return true;
            }
            if builtin::is_read_safe_volatile(name) {
                return false;
            }
            if let Some(volatility) = self.volatility(Some("pg_catalog"), name) {
                return volatility == Volatility::Volatile;
            }
            if builtin::is_safe(name) {
                return false;
            }
        }
        match schema {
            Some("pg_catalog") => true,
            _ => self
                .volatility(schema, name)
                .is_none_or(|v| v == Volatility::Volatile),
        }
    }

    fn overridden(&self, schema: Option<&str>, name: &str) -> bool {
        self.overrides.iter().any(|o| match o.split_once('.') {
            None => o == name,
            Some((s, n)) => n == name && schema == Some(s),
        })
    }

    /// The learned volatility in `schema`, or with no schema the most volatile of any schema.
    fn volatility(&self, schema: Option<&str>, name: &str) -> Option<Volatility> {
        let schemas = self.learned.get(name)?;
        match schema {
            Some(schema) => schemas.iter().find(|(s, _)| **s == *schema).map(|e| e.1),
            None => schemas.iter().map(|e| e.1).max(),
        }
    }
}

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;

/// One identifier as PostgreSQL folds it (unquoted: ASCII lowercase), on the stack so the hot
/// path does not allocate.
struct Folded {
    buf: [u8; MAX_IDENTIFIER],
    len: usize,
}

impl Folded {
    /// `None` for a name longer than PostgreSQL keeps: the caller fails closed.
    fn new(ident: &Ident) -> Option<Self> {
        let bytes = ident.value.as_bytes();
        if bytes.len() > MAX_IDENTIFIER {
            return None;
        }
        let mut buf = [0u8; MAX_IDENTIFIER];
        buf[..bytes.len()].copy_from_slice(bytes);
        if ident.quote_style.is_none() {
            buf[..bytes.len()].make_ascii_lowercase();
        }
        Some(Self {
            buf,
            len: bytes.len(),
        })
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("ASCII lowercasing keeps UTF-8 valid")
    }
}

/// `set_config(name, value, is_local)` with a literal true `is_local` only changes the current
/// transaction, which ends with the statement outside a transaction block: safe on a replica.
fn set_config_is_local(args: &FunctionArguments) -> bool {
    let FunctionArguments::List(list) = args else {
        return false;
    };
    let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(value)))) = list.args.get(2)
    else {
        return false;
    };
    match &value.value {
        Value::Boolean(b) => *b,
        // boolin's spellings of true.
        Value::SingleQuotedString(s) => ["t", "true", "y", "yes", "on", "1"]
            .iter()
            .any(|t| s.trim().eq_ignore_ascii_case(t)),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
