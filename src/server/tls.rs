//! Pipeline's last step (… → pool → **server**): TLS to PostgreSQL servers. SSLRequest first,
//! then a rustls handshake checked as `server_tls_mode` says (libpq's sslmode words).

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use super::ServerError;
use crate::net::tls::{connector, TlsError, Verify};
use crate::net::Stream;

/// `server_tls_mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ServerTlsMode {
    #[default]
    Disable,
    /// TLS when the server offers it, plaintext otherwise; the certificate is not checked.
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate chain leading to `server_tls_ca_file`.
    VerifyCa,
    /// As verify-ca, and the certificate names the host pgdecomp connected to.
    VerifyFull,
}

impl ServerTlsMode {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

/// The TLS settings of server connections, compared by mode and CA file content so that a
/// reload with the same files keeps the same pools.
#[derive(Clone, Default)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    config: Option<Arc<ClientConfig>>,
    fingerprint: u64,
}

impl ServerTls {
    pub fn new(mode: ServerTlsMode, ca_file: Option<&Path>) -> Result<Self, TlsError> {
        let verify = match mode {
            ServerTlsMode::Disable => return Ok(Self::default()),
            ServerTlsMode::Prefer | ServerTlsMode::Require => Verify::Nothing,
            ServerTlsMode::VerifyCa => Verify::Chain,
            ServerTlsMode::VerifyFull => Verify::ChainAndName,
        };
        let ca = match (verify, ca_file) {
            (Verify::Nothing, _) | (_, None) => None,
            (_, Some(path)) => Some(path),
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        if let Some(path) = ca {
            std::fs::read(path)
                .map_err(|e| TlsError::File {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
                .hash(&mut hasher);
        }
        Ok(Self {
            mode,
            config: Some(connector(verify, ca)?),
            fingerprint: hasher.finish(),
        })
    }
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        (self.mode, self.fingerprint) == (other.mode, other.fingerprint)
    }
}

impl Eq for ServerTls {}

impl Hash for ServerTls {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.mode, self.fingerprint).hash(state);
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.mode)
    }
}

/// SSLRequest's code (PostgreSQL's NEGOTIATE_SSL_CODE).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Turns a fresh TCP connection into what `tls` asks for.
pub async fn negotiate(
    mut tcp: TcpStream,
    addr: &str,
    tls: &ServerTls,
) -> Result<Stream, ServerError> {
    let Some(config) = tls.config.clone() else {
        return Ok(Stream::Plain(tcp));
    };
    let io = |source| ServerError::Io {
        addr: addr.to_string(),
        source,
    };
    tcp.write_all(&SSL_REQUEST).await.map_err(io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match (answer[0], tls.mode) {
        (b'S', _) => {}
        (b'N', ServerTlsMode::Prefer) => return Ok(Stream::Plain(tcp)),
        (b'N', _) => {
            return Err(ServerError::Protocol {
                addr: addr.to_string(),
                message: "the server does not accept TLS (server_tls_mode requires it)".into(),
            })
        }
        (other, _) => {
            return Err(ServerError::Protocol {
                addr: addr.to_string(),
                message: format!("unexpected answer {other:#x} to SSLRequest"),
            })
        }
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| ServerError::Protocol {
        addr: addr.to_string(),
        message: format!("not a TLS server name: {e}"),
    })?;
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| ServerError::Protocol {
            addr: addr.to_string(),
            message: format!("TLS handshake failed: {e}"),
        })?;
    Ok(Stream::Connected(Box::new(stream)))
}
