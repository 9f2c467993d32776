//! Untagged messages a client sends before it is authenticated: StartupMessage, SSLRequest,
//! GSSENCRequest and CancelRequest. Pure parsing over a buffer.

use bytes::{Buf, BytesMut};
use pgwire::messages::startup::Startup;
use pgwire::messages::Message;

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
    /// Protocol options (`_pq_.*`) the client asked for; pgdecomp knows none of them.
    pub protocol_options: Vec<String>,
}

impl StartupParams {
    /// Whether the client must be told which protocol pgdecomp speaks (NegotiateProtocolVersion):
    /// it asked for a newer 3.x minor or for protocol options, as PostgreSQL answers them.
    pub fn needs_negotiation(&self) -> bool {
        self.version.1 > 0 || !self.protocol_options.is_empty()
    }

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
            let packet = buf.split_to(len as usize);
            let (params, protocol_options) = parse_params(&packet[8..])?;
            Ok(Some(StartupRequest::Startup(StartupParams {
                version: (major, minor),
                params,
                protocol_options,
            })))
        }
    }
}

/// Name/value pairs as PostgreSQL reads them: NUL-terminated strings, then one more NUL as the
/// packet's last byte. A name without a value, or anything after the terminator, is a layout
/// error; names starting `_pq_.` are protocol options, kept apart.
type Params = (Vec<(String, String)>, Vec<String>);

fn parse_params(body: &[u8]) -> Result<Params, StartupError> {
    let layout = |m: &str| StartupError::Layout(m.to_string());
    let (mut params, mut options) = (Vec::new(), Vec::new());
    let mut rest = body;
    loop {
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(layout("expected terminator as last byte"));
        };
        if end == 0 {
            if rest.len() != 1 {
                return Err(layout("expected terminator as last byte"));
            }
            return Ok((params, options));
        }
        let name = text(&rest[..end])?;
        rest = &rest[end + 1..];
        let Some(vend) = rest.iter().position(|&b| b == 0) else {
            return Err(layout(&format!("missing value for parameter \"{name}\"")));
        };
        let value = text(&rest[..vend])?;
        rest = &rest[vend + 1..];
        if name.starts_with("_pq_.") {
            options.push(name);
        } else {
            params.push((name, value));
        }
    }
}

fn text(bytes: &[u8]) -> Result<String, StartupError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StartupError::Layout("parameter is not valid UTF-8".into()))
}

/// NegotiateProtocolVersion: the newest 3.x minor pgdecomp speaks (0) and the options it does
/// not know, so a client that asked for more carries on with 3.0.
pub fn encode_negotiate(options: &[String], out: &mut BytesMut) {
    use bytes::BufMut;
    let body: usize = 8 + options.iter().map(|o| o.len() + 1).sum::<usize>();
    out.put_u8(b'v');
    out.put_i32((4 + body) as i32);
    out.put_i32(0);
    out.put_i32(options.len() as i32);
    for o in options {
        out.put_slice(o.as_bytes());
        out.put_u8(0);
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

    fn packet(version: i32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&((8 + body.len()) as i32).to_be_bytes());
        b.extend_from_slice(&version.to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn a_startup_packet_needs_its_terminator() {
        let v30 = 3 << 16;
        let ok = decode_startup(&mut packet(v30, b"user\0u\0\0")).unwrap();
        assert!(matches!(ok, Some(StartupRequest::Startup(_))));
        for bad in [
            &b"user\0u\0"[..],
            b"user\0u",
            b"user\0",
            b"user\0u\0\0x",
            b"\0\0",
        ] {
            let got = decode_startup(&mut packet(v30, bad));
            assert!(
                matches!(got, Err(StartupError::Layout(_))),
                "{bad:?}: {got:?}"
            );
        }
    }

    #[test]
    fn newer_minor_versions_and_protocol_options_are_negotiated() {
        let got = decode_startup(&mut packet((3 << 16) | 2, b"user\0u\0_pq_.x\x001\0\0")).unwrap();
        let Some(StartupRequest::Startup(p)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(p.version, (3, 2));
        assert_eq!(p.protocol_options, ["_pq_.x"]);
        assert_eq!(p.params, [("user".to_string(), "u".to_string())]);
        assert!(p.needs_negotiation());
        let mut out = BytesMut::new();
        encode_negotiate(&p.protocol_options, &mut out);
        assert_eq!(&out[..], b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.x\0");
    }
}
