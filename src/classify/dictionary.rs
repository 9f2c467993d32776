//! Classify step (client → framing → **classify** → route → pool → server): the table →
//! gitlab_schema dictionary and GitLab's lookup rules (`Gitlab::Database::GitlabSchema.table_schema`).

use std::collections::HashMap;
use std::sync::Arc;

use super::{ClassifyError, GitlabSchema};

/// The shipped 2022 dictionary (gitlab_schemas.yml@0624d0c7 plus `DELETED_TABLES`).
const DEFAULT_TSV: &str = include_str!("../../config/gitlab_schemas.tsv");
/// GitLab 15.6 (db/docs@a84aefe0), deleted tables, and the CI tables added after 15.6.
const GITLAB_15_6_TSV: &str = include_str!("../../config/gitlab_schemas_15.6.tsv");

/// Table → gitlab_schema dictionary (GitLab's `gitlab_schemas.yml` plus deleted tables), with
/// the operator's name patterns and the partitions learned from the database's catalog.
///
/// GitLab looks up live tables first and deleted ones second; one map gives the same answer
/// because the shipped file lists every table once, and a later line never overrides an earlier one.
#[derive(Debug, Default, Clone)]
pub struct Dictionary {
    tables: HashMap<Box<str>, GitlabSchema>,
    /// `[classify.table_patterns]`, longest pattern first so the most specific one wins.
    patterns: Vec<(Box<str>, GitlabSchema)>,
    /// Partition (or inheritance child) → its root table, from `pg_inherits`.
    partitions: HashMap<Box<str>, Box<str>>,
}

impl Dictionary {
    /// The dictionary shipped in `config/gitlab_schemas.tsv`.
    pub fn gitlab_default() -> Self {
        Self::from_tsv(DEFAULT_TSV).expect("the shipped dictionary is checked by a unit test")
    }

    /// A shipped dictionary by name (`gitlab-2022`, `gitlab-15.6`); `None` for other names.
    pub fn builtin(name: &str) -> Option<Self> {
        let text = match name {
            "gitlab-2022" => DEFAULT_TSV,
            "gitlab-15.6" => GITLAB_15_6_TSV,
            _ => return None,
        };
        Self::from_tsv(text).ok()
    }

    /// Adds `glob → gitlab_schema` patterns (`*` matches any run of characters), consulted for
    /// names the dictionary does not list, before GitLab's name-based rules.
    pub fn with_patterns<'a>(
        mut self,
        patterns: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ClassifyError> {
        for (glob, schema) in patterns {
            if glob.is_empty() || !schema.starts_with("gitlab_") {
                return Err(ClassifyError::Dictionary {
                    line: 0,
                    message: format!(
                        "table pattern {glob:?} = {schema:?}: schemas are named gitlab_*"
                    ),
                });
            }
            self.patterns
                .push((Box::from(glob), GitlabSchema::from_name(schema)));
        }
        self.patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(self)
    }

    /// Adds what the catalog says about partitions: `(partition, root table)` pairs. A
    /// partition then takes its root's schema whatever its name.
    pub fn with_partitions(mut self, pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        self.partitions = pairs
            .into_iter()
            .map(|(child, root)| (child.into_boxed_str(), root.into_boxed_str()))
            .collect();
        self
    }

    /// Number of partitions learned from the catalog.
    pub fn partitions(&self) -> usize {
        self.partitions.len()
    }

    /// The schemas the dictionary and its patterns name, sorted, each once.
    pub fn schemas(&self) -> Vec<GitlabSchema> {
        let all = self
            .tables
            .values()
            .chain(self.patterns.iter().map(|(_, s)| s));
        let set: std::collections::BTreeSet<&GitlabSchema> = all.collect();
        set.into_iter().cloned().collect()
    }

    /// The table names the dictionary maps, in no particular order.
    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(|k| &**k)
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
        Ok(Self {
            tables,
            ..Self::default()
        })
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
        if let Some(root) = self.partitions.get(table) {
            if let Some(schema) = self.known(root) {
                return schema;
            }
        }
        if let Some(schema) = self.known(table) {
            return schema;
        }
        let table = strip_partition_suffix(table);
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

impl Dictionary {
    /// The dictionary's own answer for a bare table name: its entry (after GitLab's partition
    /// suffix strip), else the first matching pattern.
    fn known(&self, table: &str) -> Option<GitlabSchema> {
        if let Some(schema) = self.tables.get(strip_partition_suffix(table)) {
            return Some(schema.clone());
        }
        self.patterns
            .iter()
            .find(|(glob, _)| glob_match(glob, table))
            .map(|(_, schema)| schema.clone())
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(glob: &str, name: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let tail: Vec<&str> = parts.collect();
    let Some((last, middle)) = tail.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
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

    #[test]
    fn newer_dictionary_knows_partitioned_ci_tables() {
        let newer = Dictionary::builtin("gitlab-15.6").unwrap();
        for name in [
            "p_ci_builds",
            "p_ci_pipelines",
            "ci_runner_machine_builds",
            "p_ci_builds_metadata",
            "gitlab_partitions_dynamic.ci_builds_101",
            "gitlab_partitions_dynamic.p_ci_builds_102",
        ] {
            assert_eq!(newer.lookup(name), GitlabSchema::Ci, "{name}");
        }
        assert_eq!(newer.lookup("projects"), GitlabSchema::Main);
        let old = Dictionary::builtin("gitlab-2022").unwrap();
        assert_eq!(
            old.lookup("p_ci_builds").to_string(),
            "undefined_p_ci_builds"
        );
        assert_eq!(old.len(), Dictionary::gitlab_default().len());
        assert!(Dictionary::builtin("gitlab-3000").is_none());
    }

    #[test]
    fn catalog_partitions_take_their_root_schema() {
        let dict = Dictionary::builtin("gitlab-15.6")
            .unwrap()
            .with_partitions([("ci_builds_odd_name".to_string(), "p_ci_builds".to_string())]);
        assert_eq!(dict.lookup("ci_builds_odd_name"), GitlabSchema::Ci);
        assert_eq!(dict.lookup("public.ci_builds_odd_name"), GitlabSchema::Ci);
        assert_eq!(dict.partitions(), 1);
    }

    #[test]
    fn patterns_apply_to_unlisted_names_most_specific_first() {
        let dict = Dictionary::gitlab_default()
            .with_patterns([("ci_*", "gitlab_ci"), ("ci_main_*_x", "gitlab_main")])
            .unwrap();
        assert_eq!(dict.lookup("ci_new_thing"), GitlabSchema::Ci);
        assert_eq!(dict.lookup("ci_main_a_x"), GitlabSchema::Main);
        assert_eq!(dict.lookup("projects"), GitlabSchema::Main);
        assert!(Dictionary::default()
            .with_patterns([("x", "main")])
            .is_err());
    }

    #[test]
    fn glob_matching() {
        for (glob, name, want) in [
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*b*c", "axbyc", true),
            ("a*c", "ab", false),
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("*", "", true),
            ("a*a", "a", false),
        ] {
            assert_eq!(glob_match(glob, name), want, "{glob} {name}");
        }
    }
}
