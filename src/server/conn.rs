//! Opening and logging in to a server connection (SCRAM, md5, password, trust), plus the small
//! synchronous helpers the pool uses to check and reset a connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::prepared::ServerStatements;
use super::sasl::Sasl;
use crate::protocol::backend::{parse_error_fields, parse_parameter_status};
use crate::protocol::frame::{decode_frame, Frame};
use crate::protocol::startup::encode_startup;

/// What is needed to open a server connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerSpec {
    pub addr: String,
    pub dbname: String,
    pub user: String,
    pub credential: ServerCredential,
    /// TLS to the server (`server_tls_mode`).
    pub tls: super::tls::ServerTls,
}

/// The secret the proxy answers a server's password challenge with.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ServerCredential {
    None,
    Plain(String),
    /// Hex of md5(password || user): enough for md5 challenges, not for SCRAM.
    Md5Hash(String),
    /// Keys a client proved at login: enough for SCRAM with a server holding the same verifier.
    ScramKeys(crate::auth::scram_client::ScramKeys),
}

impl std::fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Plain(_) => "Plain(..)",
            Self::Md5Hash(_) => "Md5Hash(..)",
            Self::ScramKeys(_) => "ScramKeys(..)",
        })
    }
}

/// Server-side failures, tagged so the session can tell the client what happened.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to server {0} timed out")]
    ConnectTimeout(String),
    #[error("server {addr} rejected login: {code} {message}")]
    Rejected {
        addr: String,
        code: String,
        message: String,
    },
    #[error("server {addr} authentication: {message}")]
    Auth { addr: String, message: String },
    #[error("server {addr} connection lost: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("server {0} closed the connection")]
    Closed(String),
    #[error("server {addr} sent a malformed message: {message}")]
    Protocol { addr: String, message: String },
    #[error("server {addr} query failed: {code} {message}")]
    Query {
        addr: String,
        code: String,
        message: String,
    },
    #[error("server {0} is in recovery (a standby), not a primary")]
    InRecovery(String),
}

impl ServerError {
    /// Failures a switchover or restart causes, worth retrying elsewhere or a moment later;
    /// a wrong password or a missing database is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::ConnectTimeout(_)
            | Self::Io { .. }
            | Self::Closed(_)
            | Self::InRecovery(_) => true,
            // 57P01-57P03: shutting down, crash recovery, starting up; 08xxx: connection errors.
            Self::Rejected { code, .. } => code.starts_with("57P") || code.starts_with("08"),
            Self::Auth { .. } | Self::Protocol { .. } | Self::Query { .. } => false,
        }
    }
}

/// What a CancelRequest for this connection needs; shared so attaching costs no allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerKey {
    pub addr: String,
    pub pid: u32,
    pub secret: u32,
}

/// A logged-in server connection. Owned by the pool between uses.
pub struct ServerConn {
    pub stream: crate::net::Stream,
    pub addr: String,
    /// Bytes read from the server and not yet consumed.
    pub rbuf: BytesMut,
    pub backend_pid: u32,
    pub backend_secret: u32,
    pub cancel_key: Arc<ServerKey>,
    /// Current values of session parameters, keys lowercased.
    pub params: HashMap<String, String>,
    /// Fingerprint of the client parameters last synced onto this connection (0: unknown), so
    /// the next client with the same settings skips the comparison.
    pub params_fingerprint: u64,
    /// Values at login, the target of RESET for parameters a client did not set.
    pub defaults: Arc<HashMap<String, String>>,
    /// ParameterStatus messages at login, in order, as the welcome for clients.
    pub welcome: Arc<Vec<(String, String)>>,
    /// Server-side names of statements prepared on this connection.
    pub prepared: ServerStatements,
    /// When `server_lifetime` ends for it (set by the pool that opened it; `None`: never).
    /// A deadline rather than the opening time: a checkout compares, it does not subtract.
    pub retire_at: Option<Instant>,
    pub last_used: Instant,
    /// Set when the connection may be in an unknown state; the pool then drops it.
    pub broken: bool,
    /// Set while a client relays through it and cleared only on a clean release, so a session
    /// dropped mid-transaction (KILL, panic, runtime shutdown) never returns it to the pool.
    pub in_use: bool,
}

const MAX_SERVER_MESSAGE: usize = i32::MAX as usize;

impl ServerConn {
    /// Connects and logs in, bounded by `timeout`.
    pub async fn connect(spec: &ServerSpec, timeout: Duration) -> Result<Self, ServerError> {
        match tokio::time::timeout(timeout, Self::connect_inner(spec)).await {
            Ok(r) => r,
            Err(_) => Err(ServerError::ConnectTimeout(spec.addr.clone())),
        }
    }

    async fn connect_inner(spec: &ServerSpec) -> Result<Self, ServerError> {
        let stream =
            TcpStream::connect(&spec.addr)
                .await
                .map_err(|source| ServerError::Connect {
                    addr: spec.addr.clone(),
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        let stream = super::tls::negotiate(stream, &spec.addr, &spec.tls).await?;
        let mut conn = ServerConn {
            stream,
            addr: spec.addr.clone(),
            rbuf: BytesMut::with_capacity(16 * 1024),
            backend_pid: 0,
            backend_secret: 0,
            cancel_key: Arc::new(ServerKey {
                addr: spec.addr.clone(),
                pid: 0,
                secret: 0,
            }),
            params: HashMap::new(),
            params_fingerprint: 0,
            defaults: Arc::default(),
            welcome: Arc::default(),
            prepared: ServerStatements::default(),
            retire_at: None,
            last_used: Instant::now(),
            broken: false,
            in_use: false,
        };
        let mut out = BytesMut::new();
        encode_startup(
            &[("user", &spec.user), ("database", &spec.dbname)],
            &mut out,
        );
        conn.write(&out).await?;
        conn.login(spec).await?;
        Ok(conn)
    }

    async fn login(&mut self, spec: &ServerSpec) -> Result<(), ServerError> {
        let mut scram: Option<Sasl> = None;
        let mut welcome = Vec::new();
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'R' => {
                    let mut body = f.body();
                    if body.len() < 4 {
                        return Err(self.protocol("short authentication message"));
                    }
                    let code = body.get_i32();
                    self.answer_auth(spec, code, body, &mut scram).await?;
                }
                b'S' => {
                    if let Some((k, v)) = parse_parameter_status(f.body()) {
                        self.params.insert(k.to_ascii_lowercase(), v.clone());
                        welcome.push((k, v));
                    }
                }
                b'K' => {
                    let mut body = f.body();
                    if body.len() >= 8 {
                        self.backend_pid = body.get_u32();
                        self.backend_secret = body.get_u32();
                    }
                }
                b'E' => {
                    let (code, message) = parse_error_fields(f.body());
                    return Err(ServerError::Rejected {
                        addr: self.addr.clone(),
                        code,
                        message,
                    });
                }
                b'Z' => {
                    self.cancel_key = Arc::new(ServerKey {
                        addr: self.addr.clone(),
                        pid: self.backend_pid,
                        secret: self.backend_secret,
                    });
                    self.defaults = Arc::new(self.params.clone());
                    self.welcome = Arc::new(welcome);
                    return Ok(());
                }
                _ => {}
            }
        }
    }

    async fn answer_auth(
        &mut self,
        spec: &ServerSpec,
        code: i32,
        body: &[u8],
        scram: &mut Option<Sasl>,
    ) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        match code {
            0 => return Ok(()),
            3 => {
                let ServerCredential::Plain(pw) = &spec.credential else {
                    return Err(self.auth_err("server wants a cleartext password; none configured"));
                };
                password_message(pw.as_bytes(), &mut out);
            }
            5 => {
                let salt: [u8; 4] = body
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| self.protocol("md5 salt"))?;
                let hash = match &spec.credential {
                    ServerCredential::Plain(pw) => {
                        let h = Md5::digest([pw.as_bytes(), spec.user.as_bytes()].concat());
                        hex(&h)
                    }
                    ServerCredential::Md5Hash(h) => h.clone(),
                    ServerCredential::None | ServerCredential::ScramKeys(_) => {
                        return Err(self.auth_err("server wants an md5 password; none configured"))
                    }
                };
                let salted = hex(&Md5::digest([hash.as_bytes(), &salt[..]].concat()));
                password_message(format!("md5{salted}").as_bytes(), &mut out);
            }
            10 => {
                let (client, first) =
                    Sasl::start(&spec.credential).map_err(|e| self.auth_err(&e))?;
                out.put_u8(b'p');
                let mech = b"SCRAM-SHA-256\0";
                out.put_i32((4 + mech.len() + 4 + first.len()) as i32);
                out.put_slice(mech);
                out.put_i32(first.len() as i32);
                out.put_slice(&first);
                *scram = Some(client);
            }
            11 | 12 => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| self.protocol("SASL without start"))?;
                if code == 12 {
                    return client.finish(body).map_err(|e| self.auth_err(&e));
                }
                let msg = client.client_final(body).map_err(|e| self.auth_err(&e))?;
                out.put_u8(b'p');
                out.put_i32((4 + msg.len()) as i32);
                out.put_slice(&msg);
            }
            other => return Err(self.auth_err(&format!("unsupported method {other}"))),
        }
        self.write(&out).await
    }

    pub(super) fn protocol(&self, message: &str) -> ServerError {
        ServerError::Protocol {
            addr: self.addr.clone(),
            message: message.into(),
        }
    }

    fn auth_err(&self, message: &str) -> ServerError {
        ServerError::Auth {
            addr: self.addr.clone(),
            message: message.into(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        let addr = &self.addr;
        let io = |source| ServerError::Io {
            addr: addr.clone(),
            source,
        };
        self.stream.write_all(bytes).await.map_err(io)?;
        // A TLS session may keep records until flushed; plaintext flush is a no-op.
        self.stream.flush().await.map_err(io)
    }

    /// Reads one whole message (used outside the relay: login, checks, resets).
    pub async fn read_frame(&mut self) -> Result<Frame, ServerError> {
        loop {
            match decode_frame(&mut self.rbuf, MAX_SERVER_MESSAGE) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(self.protocol(&e.to_string())),
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|source| ServerError::Io {
                    addr: self.addr.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(ServerError::Closed(self.addr.clone()));
            }
        }
    }

    /// True when the server has closed the socket or sent something unexpected while idle.
    pub fn is_closed_or_dirty(&mut self) -> bool {
        !self.rbuf.is_empty() || self.stream.is_closed_or_dirty()
    }
}

fn password_message(pw: &[u8], out: &mut BytesMut) {
    out.put_u8(b'p');
    out.put_i32((4 + pw.len() + 1) as i32);
    out.put_slice(pw);
    out.put_u8(0);
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
