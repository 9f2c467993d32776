//! Pipeline step 3 (client → framing → classify → **route** → pool → server): a bit set of
//! gitlab_schemas, so the per-statement checks compare sets without allocating.

use crate::classify::{Classification, GitlabSchema, TableRef, TableRole};

use super::Group;

/// A set of gitlab_schema kinds. `Named` (e.g. `gitlab_pm`) and `Undefined` are one bit each:
/// routing only needs to know whether they are present, messages list the real names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SchemaMask(u8);

impl SchemaMask {
    pub const EMPTY: Self = Self(0);
    pub const MAIN: Self = Self(1);
    pub const CI: Self = Self(2);
    pub const SHARED: Self = Self(4);
    pub const INTERNAL: Self = Self(8);
    pub const NAMED: Self = Self(16);
    pub const UNDEFINED: Self = Self(32);
    /// Schemas whose tables live in (and are routed to) the main database. Undefined tables are
    /// treated as main: before phase 7 every table exists on the main primary, so that is the
    /// choice that is never wrong until the dictionary learns the table.
    pub const MAIN_SIDE: Self = Self(1 | 16 | 32);

    pub fn of(schema: &GitlabSchema) -> Self {
        match schema {
            GitlabSchema::Main => Self::MAIN,
            GitlabSchema::Ci => Self::CI,
            GitlabSchema::Shared => Self::SHARED,
            GitlabSchema::Internal => Self::INTERNAL,
            GitlabSchema::Named(_) => Self::NAMED,
            GitlabSchema::Undefined(_) => Self::UNDEFINED,
        }
    }

    /// All schemas of a statement (`Classification::schemas` is already unique).
    pub fn of_statement(c: &Classification) -> Self {
        c.schemas.iter().fold(Self::EMPTY, |m, s| m | Self::of(s))
    }

    /// Schemas of the tables matching `keep`.
    pub fn of_tables(tables: &[TableRef], keep: impl Fn(&TableRef) -> bool) -> Self {
        tables
            .iter()
            .filter(|t| keep(t))
            .fold(Self::EMPTY, |m, t| m | Self::of(&t.schema))
    }

    /// GitLab's connection validation looks at `select_tables + dml_tables`: DDL targets are
    /// left out because migrations create every table in every database.
    pub fn of_accessed(c: &Classification) -> Self {
        Self::of_tables(&c.tables, |t| t.role != TableRole::Ddl)
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    pub fn minus(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The database these schemas belong to; `None` for shared/internal-only (or no) tables.
    /// Main wins when both are present: the cross-join check reports that case.
    pub fn group(self) -> Option<Group> {
        if self.intersects(Self::MAIN_SIDE) {
            Some(Group::Main)
        } else if self.intersects(Self::CI) {
            Some(Group::Ci)
        } else {
            None
        }
    }

    /// Both databases are touched (GitLab's "main + ci is never allowed").
    pub fn spans_both(self) -> bool {
        self.intersects(Self::MAIN_SIDE) && self.intersects(Self::CI)
    }
}

impl std::ops::BitOr for SchemaMask {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for SchemaMask {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// The database a single table belongs to (`None` for shared and internal tables).
pub fn table_group(schema: &GitlabSchema) -> Option<Group> {
    SchemaMask::of(schema).group()
}
