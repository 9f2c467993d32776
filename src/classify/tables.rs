//! Classify step (client → framing → **classify** → route → pool → server): the tables one parsed
//! statement touches, with pg_query's semantics (`lib/pg_query/parse.rb`), plus the facts that
//! decide its kind (locking clauses, writing CTEs, SELECT INTO, calls to functions that write).

use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterTableOperation, ColumnDef, ColumnOption, CopySource, Expr, FromTable, FunctionArguments,
    GrantObjects, ObjectName, ObjectType, Query, Select, Statement, TableConstraint, TableFactor,
    TableObject, Visit, Visitor,
};

use super::functions::Functions;
use super::lex::ident_text;
use super::TableRole;

/// What a walk over one statement found.
#[derive(Debug, Default)]
pub(super) struct Facts {
    /// Unique tables in order of first appearance, each with its strongest role.
    pub tables: Vec<(String, TableRole)>,
    /// Calls a function that needs the primary: VOLATILE or unknown, a built-in that writes, or
    /// a configured write function (see `functions`).
    pub calls_write_function: bool,
    /// Has a FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE clause somewhere.
    pub locking: bool,
    /// An INSERT/UPDATE/DELETE/MERGE below the top statement (a data-modifying CTE).
    pub nested_write: bool,
    /// `SELECT ... INTO t` creates a table.
    pub select_into: bool,
}

/// Walks `statement` once and returns its tables and kind-deciding facts.
pub(super) fn collect(statement: &Statement, functions: &Functions) -> Facts {
    let mut walker = Walker {
        functions,
        relations: Vec::new(),
        cte_names: Vec::new(),
        targets: Vec::new(),
        not_tables: Vec::new(),
        referenced: Vec::new(),
        statement_depth: 0,
        facts: Facts::default(),
    };
    // The walker never breaks; the visitor's own recursion guard grows the stack on deep input.
    let _ = statement.visit(&mut walker);
    walker.finish()
}

/// One relation as written, before CTE names are dropped.
struct Relation {
    name: String,
    qualified: bool,
    role: TableRole,
}

struct Walker<'a> {
    functions: &'a Functions,
    relations: Vec<Relation>,
    cte_names: Vec<String>,
    /// Relation nodes that are statement targets, by address: the visitor hands us the same
    /// nodes, so identity tells a target from a same-named source (`INSERT INTO t SELECT .. t`).
    targets: Vec<(*const ObjectName, TableRole)>,
    /// Relation nodes that name functions in FROM (`FROM generate_series(1, 3)`), not tables.
    not_tables: Vec<*const ObjectName>,
    /// Tables referenced by foreign keys; reported after the walk so the altered or created
    /// table comes first, as in the text.
    referenced: Vec<Relation>,
    statement_depth: usize,
    facts: Facts,
}

impl Walker<'_> {
    fn target(&mut self, name: &ObjectName, role: TableRole) {
        self.targets.push((name as *const ObjectName, role));
    }

    fn target_factor(&mut self, factor: &TableFactor, role: TableRole) {
        if let TableFactor::Table { name, .. } = factor {
            self.target(name, role);
        }
    }

    /// Records a name the visitor does not report as a relation (COPY, DROP, GRANT ...).
    fn push(&mut self, name: &ObjectName, role: TableRole) {
        let (name, qualified) = object_name(name);
        self.relations.push(Relation {
            name,
            qualified,
            role,
        });
    }

    /// `args` is absent for a call in FROM, whose arguments are not inspected (fail closed).
    fn note_function(&mut self, name: &ObjectName, args: Option<&FunctionArguments>) {
        // One call that writes decides the statement; later calls need no lookup.
        if !self.facts.calls_write_function && self.functions.call_writes(name, args) {
            self.facts.calls_write_function = true;
        }
    }

    fn statement_targets(&mut self, statement: &Statement) {
        use TableRole::{Ddl, Read, Written};
        match statement {
            Statement::Insert(insert) => {
                if let TableObject::TableName(name) = &insert.table {
                    self.target(name, Written);
                }
            }
            Statement::Update(update) => self.target_factor(&update.table.relation, Written),
            Statement::Delete(delete) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                    &delete.from;
                for table in from {
                    self.target_factor(&table.relation, Written);
                }
            }
            Statement::Merge(merge) => self.target_factor(&merge.table, Written),
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                to,
                ..
            } => {
                self.push(table_name, if *to { Read } else { Written });
            }
            Statement::Drop {
                object_type: ObjectType::Table | ObjectType::View | ObjectType::MaterializedView,
                names,
                ..
            } => {
                names.iter().for_each(|n| self.push(n, Ddl));
            }
            Statement::Grant(grant) => self.grant_objects(grant.objects.as_ref()),
            Statement::Revoke(revoke) => self.grant_objects(revoke.objects.as_ref()),
            Statement::Truncate(truncate) => {
                truncate
                    .table_names
                    .iter()
                    .for_each(|t| self.target(&t.name, Ddl));
            }
            Statement::Lock(lock) => lock.tables.iter().for_each(|t| self.target(&t.name, Ddl)),
            Statement::CreateTable(create) => {
                self.target(&create.name, Ddl);
                for constraint in &create.constraints {
                    self.constraint(constraint);
                }
                for column in &create.columns {
                    self.column(column);
                }
            }
            Statement::CreateView(view) => self.target(&view.name, Ddl),
            Statement::AlterTable(alter) => {
                self.target(&alter.name, Ddl);
                for operation in &alter.operations {
                    match operation {
                        AlterTableOperation::AddConstraint { constraint, .. } => {
                            self.constraint(constraint)
                        }
                        AlterTableOperation::AddColumn { column_def, .. } => {
                            self.column(column_def)
                        }
                        _ => {}
                    }
                }
            }
            Statement::CreateIndex(index) => self.target(&index.table_name, Ddl),
            Statement::CreateTrigger(trigger) => self.push(&trigger.table_name, Ddl),
            Statement::Analyze(analyze) => {
                if let Some(name) = &analyze.table_name {
                    self.target(name, Ddl);
                }
            }
            Statement::Vacuum(vacuum) => {
                if let Some(name) = &vacuum.table_name {
                    self.push(name, Ddl);
                }
            }
            // pg_query reports no table for ALTER INDEX; the name is an index.
            Statement::AlterIndex { name, .. } => self.not_tables.push(name as *const ObjectName),
            _ => {}
        }
    }

    /// A foreign key ties two tables together: decomposition has to see both.
    fn constraint(&mut self, constraint: &TableConstraint) {
        if let TableConstraint::ForeignKey(fk) = constraint {
            self.reference(&fk.foreign_table);
        }
    }

    fn column(&mut self, column: &ColumnDef) {
        for option in &column.options {
            if let ColumnOption::ForeignKey(fk) = &option.option {
                self.reference(&fk.foreign_table);
            }
        }
    }

    fn reference(&mut self, name: &ObjectName) {
        let (name, qualified) = object_name(name);
        self.referenced.push(Relation {
            name,
            qualified,
            role: TableRole::Ddl,
        });
    }

    fn grant_objects(&mut self, objects: Option<&GrantObjects>) {
        if let Some(GrantObjects::Tables(names)) = objects {
            names.iter().for_each(|n| self.push(n, TableRole::Ddl));
        }
    }

    /// Drops unqualified references to CTE names (pg_query keeps `public.a` even when `a` is a
    /// CTE) and merges duplicates, keeping first appearance and the strongest role.
    fn finish(mut self) -> Facts {
        let mut tables: Vec<(String, TableRole)> = Vec::with_capacity(self.relations.len());
        let referenced = std::mem::take(&mut self.referenced);
        for relation in self.relations.into_iter().chain(referenced) {
            if !relation.qualified && self.cte_names.contains(&relation.name) {
                continue;
            }
            match tables.iter_mut().find(|(name, _)| *name == relation.name) {
                Some((_, role)) => *role = stronger(*role, relation.role),
                None => tables.push((relation.name, relation.role)),
            }
        }
        self.facts.tables = tables;
        self.facts
    }
}

impl Visitor for Walker<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        self.statement_depth += 1;
        if self.statement_depth > 1
            && matches!(
                statement,
                Statement::Insert(_)
                    | Statement::Update(_)
                    | Statement::Delete(_)
                    | Statement::Merge(_)
            )
        {
            self.facts.nested_write = true;
        }
        self.statement_targets(statement);
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _: &Statement) -> ControlFlow<()> {
        self.statement_depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if !query.locks.is_empty() {
            self.facts.locking = true;
        }
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                let alias = &cte.alias.name;
                self.cte_names
                    .push(ident_text(&alias.value, alias.quote_style));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            self.facts.select_into = true;
            for target in &into.targets {
                let name = match target {
                    Expr::Identifier(ident) => ObjectName::from(vec![ident.clone()]),
                    Expr::CompoundIdentifier(idents) => ObjectName::from(idents.clone()),
                    _ => continue,
                };
                self.push(&name, TableRole::Ddl);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.not_tables.push(name as *const ObjectName);
                self.note_function(name, None);
            }
            TableFactor::Function { name, .. } => self.note_function(name, None),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        let address = relation as *const ObjectName;
        if self.not_tables.contains(&address) {
            return ControlFlow::Continue(());
        }
        let role = self
            .targets
            .iter()
            .find(|(target, _)| *target == address)
            .map_or(TableRole::Read, |(_, role)| *role);
        self.push(relation, role);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(function) = expr {
            self.note_function(&function.name, Some(&function.args));
        }
        ControlFlow::Continue(())
    }
}

/// The role that needs more of a table: DDL over writes over reads.
pub(super) fn stronger(a: TableRole, b: TableRole) -> TableRole {
    let rank = |r: TableRole| match r {
        TableRole::Read => 0,
        TableRole::Written => 1,
        TableRole::Ddl => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// The name as PostgreSQL resolves it (`schema.table`), and whether it was qualified.
fn object_name(name: &ObjectName) -> (String, bool) {
    let mut text = String::new();
    let mut parts = 0;
    for part in &name.0 {
        if let Some(ident) = part.as_ident() {
            if parts > 0 {
                text.push('.');
            }
            text.push_str(&ident_text(&ident.value, ident.quote_style));
            parts += 1;
        }
    }
    (text, parts > 1)
}
