//! Pipeline's last step (… → pool → **server**): the small simple-protocol queries the proxy
//! runs on its own behalf (pings, resets, health checks, catalog reads), never client traffic.

use bytes::BytesMut;

use super::{ServerConn, ServerError};
use crate::protocol::backend::{parse_data_row, parse_error_fields, parse_parameter_status};
use crate::protocol::frontend::write_query;

/// One row's text values (`None` for SQL NULL).
pub type Row = Vec<Option<String>>;

impl ServerConn {
    /// Runs `sql` and waits for ReadyForQuery; used for pings and resets.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), ServerError> {
        self.query_rows(sql, 0).await.map(drop)
    }

    /// Runs `sql` and returns its first row's text values (empty when it returned no row).
    pub async fn query_row(&mut self, sql: &str) -> Result<Row, ServerError> {
        let mut rows = self.query_rows(sql, 1).await?;
        Ok(rows.pop().unwrap_or_default())
    }

    /// Runs `sql` and returns up to `limit` rows (the rest are read and dropped, so the
    /// connection stays in step); ParameterStatus changes it causes are tracked.
    pub async fn query_rows(&mut self, sql: &str, limit: usize) -> Result<Vec<Row>, ServerError> {
        let mut out = BytesMut::new();
        write_query(sql, &mut out);
        self.write(&out).await?;
        let (mut failure, mut rows) = (None, Vec::new());
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'E' => failure = Some(parse_error_fields(f.body())),
                b'S' => {
                    if let Some((k, v)) = parse_parameter_status(f.body()) {
                        self.params.insert(k.to_ascii_lowercase(), v);
                    }
                }
                b'D' if rows.len() < limit => rows.push(
                    parse_data_row(f.body()).ok_or_else(|| self.protocol("malformed DataRow"))?,
                ),
                b'Z' => break,
                _ => {}
            }
        }
        match failure {
            Some((code, message)) => Err(ServerError::Query {
                addr: self.addr.clone(),
                code,
                message,
            }),
            None => Ok(rows),
        }
    }
}
