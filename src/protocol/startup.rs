//! Untagged messages a client sends before it is authenticated: StartupMessage, SSLRequest,
//! GSSENCRequest and CancelRequest. Pure parsing over a buffer.

use bytes::{Buf, BytesMut};
use pgwire::messages::startup::Startup;
use pgwire::messages::{DecodeContext, Message};

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
/// PostgreSQL's own limit for startup packets (pqcomm.h MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// The first message of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupRequest {
    Ssl,
    Gss,
    Cancel { pid: u32, secret: u32 },
    Startup(StartupParams),
}

/// Parameters of a StartupMessage (`user`, `database`, `application_name`, options...).
#[derive(Debug, PartialEq, Eq, Default, Clone)]
pub struct StartupParams {
    pub version: (u16, u16),
    pub params: Vec<(String, String)>,
}

impl StartupParams {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a startup packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet: {0}")]
    BadLength(i32),
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0")]
    Protocol(u16, u16),
    #[error("invalid startup packet layout: {0}")]
    Layout(String),
}

/// Parses the first packet; `Ok(None)` until it is complete.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupRequest>, StartupError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    if buf.len() < len as usize {
        return Ok(None);
    }
    let code = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    match code {
        SSL_REQUEST | GSSENC_REQUEST if len == 8 => {
            buf.advance(8);
            Ok(Some(if code == SSL_REQUEST {
                StartupRequest::Ssl
            } else {
                StartupRequest::Gss
            }))
        }
        CANCEL_REQUEST if len == 16 => {
            let mut b = buf.split_to(16);
            b.advance(8);
            let pid = b.get_u32();
            let secret = b.get_u32();
            Ok(Some(StartupRequest::Cancel { pid, secret }))
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                buf.advance(len as usize);
                return Err(StartupError::Protocol(major, minor));
            }
            let mut packet = buf.split_to(len as usize);
            let startup = Startup::decode(&mut packet, &DecodeContext::default())
                .map_err(|e| StartupError::Layout(e.to_string()))?
                .ok_or_else(|| StartupError::Layout("truncated".into()))?;
            Ok(Some(StartupRequest::Startup(StartupParams {
                version: (major, minor),
                params: startup.parameters.into_iter().collect(),
            })))
        }
    }
}

/// Encodes a StartupMessage for logging in to a server.
pub fn encode_startup(params: &[(&str, &str)], out: &mut BytesMut) {
    let mut s = Startup::new();
    for (k, v) in params {
        s.parameters.insert((*k).to_string(), (*v).to_string());
    }
    // Encoding into a BytesMut cannot fail for a startup packet under the size limit.
    let _ = s.encode(out);
}

/// Encodes a CancelRequest for a server.
pub fn encode_cancel(pid: u32, secret: u32, out: &mut BytesMut) {
    use bytes::BufMut;
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST);
    out.put_u32(pid);
    out.put_u32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_roundtrip() {
        let mut b = BytesMut::new();
        encode_startup(&[("user", "gitlab"), ("database", "db")], &mut b);
        let r = decode_startup(&mut b).unwrap().unwrap();
        match r {
            StartupRequest::Startup(p) => {
                assert_eq!(p.get("user"), Some("gitlab"));
                assert_eq!(p.get("database"), Some("db"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ssl_cancel_and_garbage() {
        let mut b = BytesMut::from(&[0, 0, 0, 8, 4, 210, 22, 47][..]);
        assert_eq!(decode_startup(&mut b).unwrap(), Some(StartupRequest::Ssl));
        let mut b = BytesMut::new();
        encode_cancel(7, 9, &mut b);
        assert_eq!(
            decode_startup(&mut b).unwrap(),
            Some(StartupRequest::Cancel { pid: 7, secret: 9 })
        );
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(decode_startup(&mut b).is_err());
        let mut b = BytesMut::from(&[0x40, 0, 0, 0, 0, 3, 0, 0][..]);
        assert!(matches!(
            decode_startup(&mut b),
            Err(StartupError::BadLength(_))
        ));
    }
}
