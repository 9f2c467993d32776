//! Client authentication (before the pipeline starts): the auth file and the SCRAM-SHA-256
//! verifier logic used to check clients against it without running PBKDF2 per login.

pub mod scram;
pub mod scram_client;
pub mod userlist;

pub use userlist::{Secret, UserEntry, UserList};

/// Authentication failures; each one is reported to the client as a FATAL error.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth file {path}: line {line}: {message}")]
    File {
        path: String,
        line: usize,
        message: String,
    },
    #[error("auth file {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("invalid SCRAM verifier for user \"{0}\"")]
    BadVerifier(String),
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    #[error("malformed authentication message: {0}")]
    Protocol(String),
}
