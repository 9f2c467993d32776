//! Classify step (client → framing → **classify** → route → pool → server): which gitlab_schemas
//! may be joined in one statement or written in one transaction (GitLab's `allow_cross_joins` /
//! `allow_cross_transactions`, `lib/gitlab/database/gitlab_schema_info.rb`).

use std::collections::HashMap;

use super::{ClassifyError, GitlabSchema};

/// The schema rules shipped in `config/gitlab_schema_rules.toml`.
const DEFAULT_TOML: &str = include_str!("../../config/gitlab_schema_rules.toml");

/// What one schema may be combined with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Allowances {
    joins: Vec<GitlabSchema>,
    transactions: Vec<GitlabSchema>,
}

/// Which schemas may be joined / share transactions (GitLab's `allow_cross_joins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRules {
    schemas: HashMap<GitlabSchema, Allowances>,
    /// Schemas without a section (every `undefined_<table>` among them) are left out of the
    /// check: GitLab 2022 never reported an unknown table as a cross-join.
    ignore_unlisted: bool,
}

impl Default for SchemaRules {
    fn default() -> Self {
        Self::gitlab_2022()
    }
}

impl SchemaRules {
    /// GitLab's 2022 rule: a cross-join iff both gitlab_ci and gitlab_main are touched.
    pub fn gitlab_2022() -> Self {
        Self::from_toml(DEFAULT_TOML).expect("the shipped schema rules are checked by a unit test")
    }

    /// Parses the schema definition file (see `config/gitlab_schema_rules.toml`).
    pub fn from_toml(text: &str) -> Result<Self, ClassifyError> {
        let value: toml::Table =
            toml::from_str(text).map_err(|e| ClassifyError::Rules(e.to_string()))?;
        let mut rules = Self {
            schemas: HashMap::new(),
            ignore_unlisted: true,
        };
        for (key, item) in &value {
            match (key.as_str(), item) {
                ("unlisted", toml::Value::String(mode)) => {
                    rules.ignore_unlisted = match mode.as_str() {
                        "ignore" => true,
                        "strict" => false,
                        other => {
                            return Err(ClassifyError::Rules(format!(
                                "unlisted = {other:?}: expected \"ignore\" or \"strict\""
                            )))
                        }
                    }
                }
                (name, toml::Value::Table(section)) if name.starts_with("gitlab_") => {
                    let allowances = Allowances {
                        joins: schema_list(name, section, "allow_cross_joins")?,
                        transactions: schema_list(name, section, "allow_cross_transactions")?,
                    };
                    if let Some(unknown) = section.keys().find(|k| {
                        !matches!(k.as_str(), "allow_cross_joins" | "allow_cross_transactions")
                    }) {
                        return Err(ClassifyError::Rules(format!(
                            "[{name}]: unknown key {unknown:?}"
                        )));
                    }
                    rules
                        .schemas
                        .insert(GitlabSchema::from_name(name), allowances);
                }
                (other, _) => {
                    return Err(ClassifyError::Rules(format!(
                        "unexpected {other:?}: expected `unlisted` or [gitlab_*] sections"
                    )))
                }
            }
        }
        Ok(rules)
    }

    /// True when `schemas` may appear in one statement.
    pub fn joins_allowed(&self, schemas: &[GitlabSchema]) -> bool {
        self.allowed(schemas, |a| &a.joins)
    }

    /// True when `schemas` may be modified in one transaction.
    pub fn transactions_allowed(&self, schemas: &[GitlabSchema]) -> bool {
        self.allowed(schemas, |a| &a.transactions)
    }

    /// GitLab's rule: some schema S of the set lists every other schema of the set.
    fn allowed(
        &self,
        schemas: &[GitlabSchema],
        list: impl Fn(&Allowances) -> &Vec<GitlabSchema>,
    ) -> bool {
        let checked: Vec<&GitlabSchema> = schemas
            .iter()
            .filter(|s| !self.ignore_unlisted || self.schemas.contains_key(*s))
            .collect();
        if checked.len() <= 1 {
            return true;
        }
        checked.iter().any(|candidate| {
            self.schemas.get(*candidate).is_some_and(|allowances| {
                let allowed = list(allowances);
                checked
                    .iter()
                    .all(|other| other == candidate || allowed.contains(other))
            })
        })
    }
}

fn schema_list(
    section: &str,
    table: &toml::Table,
    key: &str,
) -> Result<Vec<GitlabSchema>, ClassifyError> {
    let Some(value) = table.get(key) else {
        return Ok(Vec::new());
    };
    let bad = || {
        ClassifyError::Rules(format!(
            "[{section}] {key}: expected a list of gitlab_* names"
        ))
    };
    let items = value.as_array().ok_or_else(bad)?;
    items
        .iter()
        .map(|item| match item.as_str() {
            Some(name) if name.starts_with("gitlab_") => Ok(GitlabSchema::from_name(name)),
            _ => Err(bad()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn set(names: &[&str]) -> Vec<GitlabSchema> {
        names.iter().map(|n| GitlabSchema::from_name(n)).collect()
    }

    #[test]
    fn gitlab_2022_joins_forbid_only_main_with_ci() {
        let rules = SchemaRules::gitlab_2022();
        let allowed: &[&[&str]] = &[
            &[],
            &["gitlab_main"],
            &["gitlab_main", "gitlab_shared"],
            &["gitlab_main", "gitlab_internal"],
            &["gitlab_ci", "gitlab_internal", "gitlab_shared"],
            &["gitlab_shared", "gitlab_internal"],
            &["gitlab_main", "undefined_foo"],
            &["gitlab_ci", "undefined_foo", "undefined_bar"],
        ];
        for schemas in allowed {
            assert!(rules.joins_allowed(&set(schemas)), "{schemas:?}");
        }
        let forbidden: &[&[&str]] = &[
            &["gitlab_ci", "gitlab_main"],
            &["gitlab_ci", "gitlab_main", "gitlab_shared"],
            &[
                "gitlab_ci",
                "gitlab_internal",
                "gitlab_main",
                "gitlab_shared",
            ],
            &["gitlab_ci", "gitlab_main", "undefined_x"],
        ];
        for schemas in forbidden {
            assert!(!rules.joins_allowed(&set(schemas)), "{schemas:?}");
        }
    }

    #[test]
    fn gitlab_transactions() {
        let rules = SchemaRules::gitlab_2022();
        assert!(rules.transactions_allowed(&set(&["gitlab_main", "gitlab_internal"])));
        assert!(rules.transactions_allowed(&set(&["gitlab_ci", "gitlab_shared"])));
        assert!(rules.transactions_allowed(&set(&["gitlab_shared", "gitlab_internal"])));
        assert!(!rules.transactions_allowed(&set(&["gitlab_ci", "gitlab_main"])));
    }

    #[test]
    fn gitlab_2023_yaml_shape() {
        // db/gitlab_schemas/*.yaml: main+internal may share a transaction but not a join.
        let rules = SchemaRules::from_toml(
            r#"unlisted = "strict"
            [gitlab_main]
            allow_cross_joins = ["gitlab_shared"]
            allow_cross_transactions = ["gitlab_internal", "gitlab_shared"]
            [gitlab_shared]
            allow_cross_joins = ["gitlab_internal"]
            allow_cross_transactions = ["gitlab_internal"]
            [gitlab_internal]
            "#,
        )
        .unwrap();
        let users_migrations = set(&["gitlab_main", "gitlab_internal"]);
        assert!(!rules.joins_allowed(&users_migrations));
        assert!(rules.transactions_allowed(&users_migrations));
        assert!(!rules.joins_allowed(&set(&["gitlab_main", "gitlab_shared", "gitlab_internal"])));
        let undefined = vec![GitlabSchema::Main, GitlabSchema::Undefined(Arc::from("x"))];
        assert!(!rules.joins_allowed(&undefined));
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(SchemaRules::from_toml("unlisted = \"maybe\"").is_err());
        assert!(SchemaRules::from_toml("[gitlab_main]\nallow_cross_joins = [\"main\"]").is_err());
        assert!(SchemaRules::from_toml("[gitlab_main]\nallow_joins = []").is_err());
        assert!(SchemaRules::from_toml("[main]\n").is_err());
        assert!(SchemaRules::from_toml("not toml [").is_err());
    }
}
