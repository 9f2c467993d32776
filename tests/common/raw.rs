//! A minimal raw PostgreSQL frontend (startup + SCRAM/md5/cleartext login) over a plain
//! `TcpStream`, so tests can send frames no well-behaved client library would.

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::fallible_iterator::FallibleIterator;

/// How a raw connection ended when we expected the peer to refuse us.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// An ErrorResponse arrived; holds its severity, SQLSTATE and message.
    Error {
        severity: String,
        code: String,
        message: String,
    },
    /// The peer closed (or reset) the connection without an ErrorResponse.
    Closed,
}

pub struct RawConn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    pub async fn connect(port: u16) -> RawConn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("raw connect to 127.0.0.1:{port}: {e}"));
        RawConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Logs in and reads until the first ReadyForQuery; panics on any refusal.
    pub async fn login(port: u16, user: &str, password: &str, db: &str) -> RawConn {
        let mut conn = RawConn::connect(port).await;
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user),
                ("database", db),
                ("application_name", "raw"),
            ],
            &mut out,
        )
        .expect("encode startup");
        conn.send(&out).await;
        let mut scram: Option<ScramSha256> = None;
        loop {
            match conn.next().await {
                Some(Message::AuthenticationSasl(body)) => {
                    let mut mechanisms = body.mechanisms();
                    let mut found = false;
                    while let Some(m) = mechanisms.next().expect("sasl mechanisms") {
                        found |= m == SCRAM_SHA_256;
                    }
                    assert!(found, "server offers no SCRAM-SHA-256");
                    let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    let mut out = BytesMut::new();
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                        .expect("encode sasl initial");
                    conn.send(&out).await;
                    scram = Some(s);
                }
                Some(Message::AuthenticationSaslContinue(body)) => {
                    let s = scram.as_mut().expect("SASL continue before SASL start");
                    s.update(body.data()).expect("server-first message");
                    let mut out = BytesMut::new();
                    frontend::sasl_response(s.message(), &mut out).expect("encode sasl");
                    conn.send(&out).await;
                }
                Some(Message::AuthenticationSaslFinal(body)) => {
                    let s = scram.as_mut().expect("SASL final before SASL start");
                    s.finish(body.data()).expect("server signature");
                }
                Some(Message::AuthenticationMd5Password(body)) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        password.as_bytes(),
                        body.salt(),
                    );
                    conn.send_password(&hash).await;
                }
                Some(Message::AuthenticationCleartextPassword) => {
                    conn.send_password(password).await;
                }
                Some(Message::ReadyForQuery(_)) => return conn,
                Some(Message::ErrorResponse(body)) => {
                    panic!("raw login refused: {:?}", error_fields(&body))
                }
                Some(_) => {}
                None => panic!("connection closed during raw login"),
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
    }

    async fn send_password(&mut self, password: &str) {
        let mut out = BytesMut::new();
        frontend::password_message(password.as_bytes(), &mut out).expect("encode password");
        self.send(&out).await;
    }

    /// The next backend message, or `None` on EOF / reset.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            match Message::parse(&mut self.buf) {
                Ok(Some(message)) => return Some(message),
                Ok(None) => {}
                Err(e) => panic!("unparsable backend message: {e}"),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until an ErrorResponse or the end of the connection; panics if neither comes
    /// within `within` (a peer that waits for more input instead of refusing).
    pub async fn expect_refusal(&mut self, within: Duration) -> Refusal {
        let wait = async {
            loop {
                match self.next().await {
                    Some(Message::ErrorResponse(body)) => {
                        let (severity, code, message) = error_fields(&body);
                        return Refusal::Error {
                            severity,
                            code,
                            message,
                        };
                    }
                    Some(_) => {}
                    None => return Refusal::Closed,
                }
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or_else(|_| {
                panic!("the peer neither sent an error nor closed within {within:?}")
            })
    }
}

fn error_fields(
    body: &postgres_protocol::message::backend::ErrorResponseBody,
) -> (String, String, String) {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    let mut fields = body.fields();
    while let Some(field) = fields.next().expect("error fields") {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'S' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (severity, code, message)
}
