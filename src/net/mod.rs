//! The sockets under the pipeline (… client ↔ **net** ↔ framing …, and pool ↔ **net** ↔ server):
//! one stream type for plaintext and TLS on both sides, and the TLS configurations built from
//! certificate files with rustls. Nothing here knows PostgreSQL beyond the SSLRequest reply.

mod stream;
pub mod tls;

pub use stream::Stream;
