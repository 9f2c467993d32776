//! Beside the pipeline, feeding classify: `pgdecomp dictionary check`, the comparison of the
//! dictionary with the tables the main primary really has. Pure; the command prints it.

use serde::Serialize;

use super::Catalog;
use crate::classify::{Dictionary, GitlabSchema};

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `schema.table` for database tables, the bare name for dictionary entries.
    pub table: String,
    /// What pgdecomp classifies the table as.
    pub gitlab_schema: String,
}

/// Tables the dictionary does not know, and entries with no table behind them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub tables: usize,
    pub partitions: usize,
    /// Tables classified `undefined_<table>`: routed as main, counted in violations as GitLab
    /// counts an unknown table. Non-empty makes the command exit non-zero.
    pub unknown: Vec<Finding>,
    /// Dictionary entries no table of the database has (renamed, dropped, or not yet created).
    pub missing: Vec<Finding>,
}

/// Compares `catalog` with `dictionary`; the dictionary should already know the catalog's
/// partitions (`Dictionary::with_partitions`), as the running proxy does.
pub fn check(dictionary: &Dictionary, catalog: &Catalog) -> Report {
    let unknown = catalog
        .tables
        .iter()
        .filter_map(|t| {
            let qualified = format!("{}.{}", t.schema, t.name);
            match dictionary.lookup(&qualified) {
                schema @ GitlabSchema::Undefined(_) => Some(Finding {
                    table: qualified,
                    gitlab_schema: schema.to_string(),
                }),
                _ => None,
            }
        })
        .collect();
    let present: std::collections::HashSet<&str> =
        catalog.tables.iter().map(|t| t.name.as_str()).collect();
    let mut missing: Vec<Finding> = dictionary
        .table_names()
        .filter(|name| !present.contains(name))
        .map(|name| Finding {
            table: name.to_string(),
            gitlab_schema: dictionary.lookup(name).to_string(),
        })
        .collect();
    missing.sort_by(|a, b| a.table.cmp(&b.table));
    Report {
        tables: catalog.tables.len(),
        partitions: catalog.tables.iter().filter(|t| t.is_partition).count(),
        unknown,
        missing,
    }
}

impl Report {
    /// The report as the command prints it on a terminal.
    pub fn to_text(&self, dictionary_name: &str, source: &str) -> String {
        use std::fmt::Write;
        let mut out = format!(
            "dictionary {dictionary_name}; database at {source}: {} tables ({} partitions)\n",
            self.tables, self.partitions
        );
        let _ = writeln!(
            out,
            "\n{} tables the dictionary does not know (classified undefined_<table>, routed as main):",
            self.unknown.len()
        );
        for f in &self.unknown {
            let _ = writeln!(out, "  {}", f.table);
        }
        let _ = writeln!(
            out,
            "\n{} dictionary entries with no table in the database:",
            self.missing.len()
        );
        for f in &self.missing {
            let _ = writeln!(out, "  {}\t{}", f.table, f.gitlab_schema);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogTable;

    fn table(schema: &str, name: &str, is_partition: bool) -> CatalogTable {
        CatalogTable {
            schema: schema.into(),
            name: name.into(),
            is_partition,
        }
    }

    #[test]
    fn lists_unknown_tables_and_missing_entries() {
        let catalog = Catalog {
            tables: vec![
                table("public", "projects", false),
                table("public", "p_ci_builds", false),
                table("gitlab_partitions_dynamic", "ci_builds_101", true),
                table("public", "odd_part", true),
                table("public", "my_new_table", false),
            ],
            partitions: vec![("odd_part".into(), "p_ci_builds".into())],
            ..Catalog::default()
        };
        let dict = Dictionary::from_tsv(
            "projects\tgitlab_main\np_ci_builds\tgitlab_ci\ngone\tgitlab_ci\n",
        )
        .unwrap()
        .with_partitions(catalog.partitions.clone());
        let report = check(&dict, &catalog);
        let unknown: Vec<&str> = report.unknown.iter().map(|f| f.table.as_str()).collect();
        assert_eq!(
            unknown,
            [
                "gitlab_partitions_dynamic.ci_builds_101",
                "public.my_new_table"
            ]
        );
        assert_eq!(report.missing.len(), 1);
        assert_eq!(report.missing[0].table, "gone");
        assert_eq!((report.tables, report.partitions), (5, 2));
        let text = report.to_text("test", "x:1");
        assert!(
            text.contains("2 tables the dictionary does not know"),
            "{text}"
        );
    }
}
