//! Classify step (client → framing → **classify** → route → pool → server): the table →
//! gitlab_schema dictionary and GitLab's lookup rules (`Gitlab::Database::GitlabSchema.table_schema`).

use std::collections::HashMap;
use std::sync::Arc;

use super::{ClassifyError, GitlabSchema};

/// The shipped 2022 dictionary (gitlab_schemas.yml@0624d0c7 plus `DELETED_TABLES`).
const DEFAULT_TSV: &str = include_str!("../../config/gitlab_schemas.tsv");

/// Table → gitlab_schema dictionary (GitLab's `gitlab_schemas.yml` plus deleted tables).
///
/// GitLab looks up live tables first and deleted ones second; one map gives the same answer
/// because the shipped file lists every table once, and a later line never overrides an earlier one.
#[derive(Debug, Default, Clone)]
pub struct Dictionary {
    tables: HashMap<Box<str>, GitlabSchema>,
}

impl Dictionary {
    /// The dictionary shipped in `config/gitlab_schemas.tsv`.
    pub fn gitlab_default() -> Self {
        Self::from_tsv(DEFAULT_TSV).expect("the shipped dictionary is checked by a unit test")
    }

    /// Parses `table<TAB>gitlab_schema` lines; `#` comments, blank lines and the
    /// `table<TAB>gitlab_schema` header are ignored. The first mapping of a table wins.
    pub fn from_tsv(text: &str) -> Result<Self, ClassifyError> {
        let mut tables = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split('\t').map(str::trim);
            let (Some(table), Some(schema), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(ClassifyError::Dictionary {
                    line: index + 1,
                    message: format!("expected `table<TAB>gitlab_schema`, got {line:?}"),
                });
            };
            if (table, schema) == ("table", "gitlab_schema") {
                continue;
            }
            if table.is_empty() || !schema.starts_with("gitlab_") {
                return Err(ClassifyError::Dictionary {
                    line: index + 1,
                    message: format!("bad entry {line:?}: schemas are named gitlab_*"),
                });
            }
            tables
                .entry(Box::from(table))
                .or_insert_with(|| GitlabSchema::from_name(schema));
        }
        Ok(Self { tables })
    }

    /// Number of tables mapped.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// True when no table is mapped.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// GitLab's `table_schema(name)`: strip the Postgres schema, strip a `_<digits>` partition
    /// suffix, look the table up, then fall back to the name-based rules. Never fails: an
    /// unknown table gets its own `undefined_<table>` so two unknowns never look co-located.
    pub fn lookup(&self, name: &str) -> GitlabSchema {
        let (pg_schema, table) = match name.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, name),
        };
        let table = strip_partition_suffix(table);
        if let Some(schema) = self.tables.get(table) {
            return schema.clone();
        }
        if pg_schema == Some("information_schema") {
            return GitlabSchema::Internal;
        }
        if table.starts_with("_test_gitlab_main_") {
            return GitlabSchema::Main;
        }
        if table.starts_with("_test_gitlab_ci_") {
            return GitlabSchema::Ci;
        }
        if table.starts_with("_test_") {
            return GitlabSchema::Shared;
        }
        if table.starts_with("pg_") {
            return GitlabSchema::Internal;
        }
        GitlabSchema::Undefined(Arc::from(table))
    }
}

/// Ruby's `gsub(/_[0-9]+$/, '')`: partitions are named `<parent>_<number>`.
fn strip_partition_suffix(table: &str) -> &str {
    let digits = table.bytes().rev().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return table;
    }
    let stem = &table[..table.len() - digits];
    stem.strip_suffix('_').unwrap_or(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(name: &str) -> String {
        Dictionary::gitlab_default().lookup(name).to_string()
    }

    #[test]
    fn gitlab_spec_cases() {
        let cases = [
            ("information_schema.columns", "gitlab_internal"),
            ("pg_attribute", "gitlab_internal"),
            ("pg_catalog.pg_class", "gitlab_internal"),
            ("my_schema.ci_builds", "gitlab_ci"),
            ("audit_events_part_5fc467ac26", "gitlab_main"),
            ("my_other_table", "undefined_my_other_table"),
            ("loose_foreign_keys_deleted_records_1", "gitlab_shared"),
            ("web_hook_logs_202201", "gitlab_main"),
            (
                "gitlab_partitions_dynamic.web_hook_logs_202201",
                "gitlab_main",
            ),
            ("ci_build_trace_sections", "gitlab_ci"),
            ("namespace_ci_cd_settings", "gitlab_main"),
            ("project_ci_cd_settings", "gitlab_main"),
            ("tags", "gitlab_ci"),
            ("taggings", "gitlab_ci"),
            ("external_pull_requests", "gitlab_ci"),
            ("schema_migrations", "gitlab_internal"),
            ("ar_internal_metadata", "gitlab_internal"),
            ("postgres_partitions", "gitlab_shared"),
            ("public.projects", "gitlab_main"),
            ("_test_gitlab_main_items", "gitlab_main"),
            ("_test_gitlab_ci_items", "gitlab_ci"),
            ("_test_other", "gitlab_shared"),
            ("my_table_12", "undefined_my_table"),
            ("Projects", "undefined_Projects"),
            ("a.b.c", "undefined_b.c"),
            ("_1", "undefined_"),
            ("123", "undefined_123"),
        ];
        for (name, want) in cases {
            assert_eq!(schema(name), want, "{name}");
        }
    }

    #[test]
    fn shipped_dictionary_loads() {
        let dict = Dictionary::gitlab_default();
        // 572 live tables (gitlab_schemas.yml@0624d0c7) + 26 deleted ones.
        assert_eq!(dict.len(), 598);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let err = Dictionary::from_tsv("table\tgitlab_schema\nprojects gitlab_main\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(Dictionary::from_tsv("x\tmain\n").is_err());
    }

    #[test]
    fn first_mapping_wins() {
        let dict = Dictionary::from_tsv("# c\nt\tgitlab_ci\n\nt\tgitlab_main\n").unwrap();
        assert_eq!(dict.lookup("t"), GitlabSchema::Ci);
    }
}
