//! Pipeline's last step (client → framing → classify → route → pool → **server**): one logged-in
//! connection to a PostgreSQL server, with what the proxy tracks about it.

mod conn;
mod prepared;
mod query;
mod sasl;
pub mod tls;

pub use conn::{ServerConn, ServerCredential, ServerError, ServerKey, ServerSpec};
pub use prepared::{ServerStatements, DEFAULT_CAP as DEFAULT_SERVER_STATEMENTS};
pub use query::Row;
