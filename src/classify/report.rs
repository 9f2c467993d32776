//! Classify step (client → framing → **classify** → route → pool → server): renders a
//! `Classification` for the `pgdecomp classify` CLI (JSON for tools, text for people).

use serde_json::{json, Value};

use super::{Classification, TableRole};

/// `{"kind", "tables", "gitlab_schemas", "cross_join": {"allowed", "schemas"}, "error"}`.
pub fn to_json(c: &Classification) -> Value {
    let names = |schemas: &[super::GitlabSchema]| -> Vec<String> {
        schemas.iter().map(ToString::to_string).collect()
    };
    json!({
        "kind": c.kind.label(),
        "tables": c.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        "gitlab_schemas": names(&c.schemas),
        "cross_join": {
            "allowed": c.cross_join.allowed,
            "schemas": names(&c.cross_join.schemas),
        },
        "error": c.error,
    })
}

/// A few aligned lines: kind, each table with its role and schema, the verdict.
pub fn to_text(c: &Classification) -> String {
    let mut out = format!("kind:           {}", c.kind.label());
    if c.statements.len() > 1 {
        let kinds: Vec<&str> = c.statements.iter().map(|k| k.label()).collect();
        out.push_str(&format!(" (statements: {})", kinds.join(", ")));
    }
    out.push('\n');
    for t in &c.tables {
        let role = match t.role {
            TableRole::Read => "read",
            TableRole::Written => "written",
            TableRole::Ddl => "ddl",
        };
        out.push_str(&format!(
            "table:          {} ({role}, {})\n",
            t.name, t.schema
        ));
    }
    out.push_str(&format!("gitlab_schemas: {}\n", c.schemas_label()));
    let verdict = if c.cross_join.allowed {
        "no"
    } else {
        "YES (not allowed)"
    };
    out.push_str(&format!("cross-join:     {verdict}\n"));
    if let Some(error) = &c.error {
        out.push_str(&format!("error:          {error}\n"));
    }
    out
}
