//! Config (raw → **validated** → snapshot): the TLS settings of both sides. Certificates are
//! read and checked here, so a reload with a bad file fails and the previous ones stay live;
//! a reload with new files rotates them for every connection that starts afterwards.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::ServerConfig;

use super::raw::RawConfig;
use super::ConfigError;
use crate::net::tls::acceptor;
use crate::server::tls::{ServerTls, ServerTlsMode};

/// `client_tls_mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientTlsMode {
    /// SSLRequest is answered 'N': plaintext only.
    #[default]
    Disable,
    /// TLS for clients that ask for it (PgBouncer's allow and prefer).
    Allow,
    /// Clients that do not ask for TLS are refused (28000).
    Require,
}

/// TLS towards clients: the mode and, unless disabled, the certificate to present.
#[derive(Clone, Default)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    pub config: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.mode)
    }
}

fn invalid(path: &Path, key: &str, message: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        key: key.into(),
        message: message.to_string(),
    }
}

/// `client_tls_mode` with `client_tls_cert_file` and `client_tls_key_file` (relative to `dir`).
pub fn client_tls(path: &Path, raw: &RawConfig, dir: &Path) -> Result<ClientTls, ConfigError> {
    let mode = match raw.client_tls_mode.as_deref().unwrap_or("disable") {
        "disable" => ClientTlsMode::Disable,
        "allow" | "prefer" => ClientTlsMode::Allow,
        "require" => ClientTlsMode::Require,
        other => {
            return Err(invalid(
                path,
                "client_tls_mode",
                format!("{other:?}: expected disable, allow, prefer or require"),
            ))
        }
    };
    if mode == ClientTlsMode::Disable {
        return Ok(ClientTls::default());
    }
    let (Some(cert), Some(key)) = (&raw.client_tls_cert_file, &raw.client_tls_key_file) else {
        return Err(invalid(
            path,
            "client_tls_mode",
            "needs client_tls_cert_file and client_tls_key_file",
        ));
    };
    let config = acceptor(&dir.join(cert), &dir.join(key))
        .map_err(|e| invalid(path, "client_tls_cert_file", e))?;
    Ok(ClientTls {
        mode,
        config: Some(config),
    })
}

/// `server_tls_mode` with `server_tls_ca_file` (relative to `dir`).
pub fn server_tls(path: &Path, raw: &RawConfig, dir: &Path) -> Result<ServerTls, ConfigError> {
    let word = raw.server_tls_mode.as_deref().unwrap_or("disable");
    let mode = ServerTlsMode::parse(word).ok_or_else(|| {
        invalid(
            path,
            "server_tls_mode",
            format!("{word:?}: expected disable, prefer, require, verify-ca or verify-full"),
        )
    })?;
    let ca = raw.server_tls_ca_file.as_ref().map(|f| dir.join(f));
    ServerTls::new(mode, ca.as_deref()).map_err(|e| invalid(path, "server_tls_ca_file", e))
}
