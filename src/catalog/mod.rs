//! Beside the pipeline, feeding classify: what the main primary's catalog says about the
//! application's tables, partitions and functions. Read at start and on reload (and by
//! `pgdecomp dictionary check`); the classifier learns partitions and function volatility
//! from it so that nothing has to be listed by hand.

mod check;

use std::time::Duration;

use thiserror::Error;

use crate::server::{Row, ServerConn, ServerError, ServerSpec};

pub use check::{check, Finding, Report};

/// Each partition (or inheritance child) with its root table: a partition of a partition takes
/// the topmost table's schema.
const PARTITIONS_SQL: &str = "WITH RECURSIVE up(child, parent) AS ( \
       SELECT inhrelid, inhparent FROM pg_inherits \
     UNION ALL \
       SELECT up.child, i.inhparent FROM up JOIN pg_inherits i ON i.inhrelid = up.parent) \
     SELECT c.relname, p.relname FROM up \
       JOIN pg_class c ON c.oid = up.child JOIN pg_class p ON p.oid = up.parent \
     WHERE NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = up.parent)";

/// Every function by schema and name, with the most volatile of its overloads ('i' < 's' < 'v'
/// sorts the way fail-closed needs).
const FUNCTIONS_SQL: &str = "SELECT n.nspname, p.proname, max(p.provolatile::text) \
     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace GROUP BY 1, 2";

/// The application's tables: ordinary and partitioned, outside the system schemas.
const TABLES_SQL: &str = "SELECT n.nspname, c.relname, c.relispartition \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
     ORDER BY 1, 2";

/// Far above any real schema; a bound so a hostile catalog cannot exhaust memory.
const MAX_ROWS: usize = 1_000_000;

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("catalog read from {addr} failed: {source}")]
    Server {
        addr: String,
        #[source]
        source: ServerError,
    },
    #[error("catalog read from {addr} timed out after {secs:.1}s")]
    Timeout { addr: String, secs: f64 },
    #[error("catalog read from {addr}: unexpected row {row:?}")]
    Row {
        addr: String,
        row: Vec<Option<String>>,
    },
}

/// One table as the catalog lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogTable {
    pub schema: String,
    pub name: String,
    pub is_partition: bool,
}

/// One function name and the most volatile of its overloads (`'i'`, `'s'` or `'v'`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogFunction {
    pub schema: String,
    pub name: String,
    pub volatility: char,
}

/// What one read of the catalog learned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Server the catalog was read from.
    pub source: String,
    /// `(partition, root table)` by bare name.
    pub partitions: Vec<(String, String)>,
    pub functions: Vec<CatalogFunction>,
    pub tables: Vec<CatalogTable>,
}

/// Reads the catalog over one fresh connection, bounded by `timeout` as a whole.
pub async fn fetch(spec: &ServerSpec, timeout: Duration) -> Result<Catalog, CatalogError> {
    match tokio::time::timeout(timeout, read(spec, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(CatalogError::Timeout {
            addr: spec.addr.clone(),
            secs: timeout.as_secs_f64(),
        }),
    }
}

async fn read(spec: &ServerSpec, timeout: Duration) -> Result<Catalog, CatalogError> {
    let server = |source| CatalogError::Server {
        addr: spec.addr.clone(),
        source,
    };
    let mut conn = ServerConn::connect(spec, timeout).await.map_err(server)?;
    let partitions = conn
        .query_rows(PARTITIONS_SQL, MAX_ROWS)
        .await
        .map_err(server)?;
    let functions = conn
        .query_rows(FUNCTIONS_SQL, MAX_ROWS)
        .await
        .map_err(server)?;
    let tables = conn
        .query_rows(TABLES_SQL, MAX_ROWS)
        .await
        .map_err(server)?;
    let bad = |row: &Row| CatalogError::Row {
        addr: spec.addr.clone(),
        row: row.clone(),
    };
    Ok(Catalog {
        source: spec.addr.clone(),
        partitions: partitions
            .iter()
            .map(|r| match r.as_slice() {
                [Some(child), Some(root)] => Ok((child.clone(), root.clone())),
                _ => Err(bad(r)),
            })
            .collect::<Result<_, _>>()?,
        functions: functions
            .iter()
            .map(|r| parse_function(r).ok_or_else(|| bad(r)))
            .collect::<Result<_, _>>()?,
        tables: tables
            .iter()
            .map(|r| match r.as_slice() {
                [Some(schema), Some(name), Some(part)] => Ok(CatalogTable {
                    schema: schema.clone(),
                    name: name.clone(),
                    is_partition: part == "t",
                }),
                _ => Err(bad(r)),
            })
            .collect::<Result<_, _>>()?,
    })
}

fn parse_function(row: &Row) -> Option<CatalogFunction> {
    match row.as_slice() {
        [Some(schema), Some(name), Some(v)] => Some(CatalogFunction {
            schema: schema.clone(),
            name: name.clone(),
            volatility: v.chars().next().filter(|c| matches!(c, 'i' | 's' | 'v'))?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_rows_need_a_known_volatility() {
        let row = |v: &str| vec![Some("public".into()), Some("f".into()), Some(v.into())];
        assert_eq!(parse_function(&row("s")).map(|f| f.volatility), Some('s'));
        assert!(parse_function(&row("x")).is_none());
        assert!(parse_function(&vec![None, None, None]).is_none());
    }
}
