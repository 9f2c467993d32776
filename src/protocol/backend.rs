//! Pipeline step 1 (client → **framing** → classify → route → pool → server): messages the
//! proxy itself writes to clients (errors, auth, status, small result sets) and the few server
//! message bodies it reads (ReadyForQuery, ParameterStatus, ErrorResponse).

use bytes::{BufMut, BytesMut};
use pgwire::error::ErrorInfo;
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, SecretKey};
use pgwire::messages::Message;

use super::frame::read_cstr;

/// An error the proxy reports in PostgreSQL's own format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: &'static str,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: "ERROR",
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: "FATAL",
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Appends the ErrorResponse to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut info = ErrorInfo::new(self.severity.into(), self.code.into(), self.message.clone());
        info.detail = self.detail.clone();
        info.hint = self.hint.clone();
        let _ = ErrorResponse::from(info).encode(out);
    }

    /// Appends the same fields as a NoticeResponse (used for WARNINGs).
    pub fn encode_notice(&self, out: &mut BytesMut) {
        let mut info = ErrorInfo::new(self.severity.into(), self.code.into(), self.message.clone());
        info.hint = self.hint.clone();
        let _ = NoticeResponse::from(info).encode(out);
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

pub fn ready_for_query(status: u8, out: &mut BytesMut) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    let _ = ReadyForQuery::new(status).encode(out);
}

/// Written in place: a login sends a dozen of these, and the message type would copy both
/// strings first.
pub fn parameter_status(name: &str, value: &str, out: &mut BytesMut) {
    out.put_u8(super::tag::back::PARAMETER_STATUS);
    out.put_i32(4 + name.len() as i32 + 1 + value.len() as i32 + 1);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(value.as_bytes());
    out.put_u8(0);
}

pub fn backend_key_data(pid: u32, secret: u32, out: &mut BytesMut) {
    let _ = BackendKeyData::new(pid as i32, SecretKey::I32(secret as i32)).encode(out);
}

pub fn auth(msg: Authentication, out: &mut BytesMut) {
    let _ = msg.encode(out);
}

/// A message with no body (ParseComplete '1', CloseComplete '3', ...).
pub fn empty(tag: u8, out: &mut BytesMut) {
    out.put_u8(tag);
    out.put_i32(4);
}

pub fn command_complete(tag: &str, out: &mut BytesMut) {
    out.put_u8(b'C');
    out.put_i32(4 + tag.len() as i32 + 1);
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
}

/// A result set: column names and text rows (None is NULL).
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub fn new(columns: &[&'static str]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, values: Vec<Option<String>>) {
        self.rows.push(values);
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(b'T');
        out.put_i32(0);
        out.put_i16(self.columns.len() as i16);
        for c in &self.columns {
            out.put_slice(c.as_bytes());
            out.put_u8(0);
            out.put_i32(0);
            out.put_i16(0);
            out.put_i32(25); // text
            out.put_i16(-1);
            out.put_i32(-1);
            out.put_i16(0);
        }
        let len = (out.len() - start - 1) as i32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        for row in &self.rows {
            let start = out.len();
            out.put_u8(b'D');
            out.put_i32(0);
            out.put_i16(row.len() as i16);
            for v in row {
                match v {
                    Some(v) => {
                        out.put_i32(v.len() as i32);
                        out.put_slice(v.as_bytes());
                    }
                    None => out.put_i32(-1),
                }
            }
            let len = (out.len() - start - 1) as i32;
            out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        }
        command_complete(&format!("SHOW {}", self.rows.len()), out);
    }
}

/// Reads `(name, value)` from a ParameterStatus body.
pub fn parse_parameter_status(body: &[u8]) -> Option<(String, String)> {
    let mut b = body;
    let name = read_cstr(&mut b)?;
    let value = read_cstr(&mut b)?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// Reads the text values of a DataRow body (`None` for NULL); used by health checks only.
pub fn parse_data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let (n, mut b) = body.split_first_chunk::<2>()?;
    let mut values = Vec::with_capacity(usize::from(u16::from_be_bytes(*n)));
    for _ in 0..u16::from_be_bytes(*n) {
        let (len, rest) = b.split_first_chunk::<4>()?;
        let len = i32::from_be_bytes(*len);
        if len < 0 {
            values.push(None);
            b = rest;
            continue;
        }
        let len = usize::try_from(len).ok()?;
        let value = rest.get(..len)?;
        values.push(Some(String::from_utf8_lossy(value).into_owned()));
        b = &rest[len..];
    }
    Some(values)
}

/// Reads the SQLSTATE and message of an ErrorResponse body, for logs.
pub fn parse_error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    let mut b = body;
    while let Some((&field, rest)) = b.split_first() {
        if field == 0 {
            break;
        }
        b = rest;
        let Some(value) = read_cstr(&mut b) else {
            break;
        };
        match field {
            b'C' => code = String::from_utf8_lossy(value).into_owned(),
            b'M' => message = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

/// A server's FATAL means its connection ends, not the client's: the proxy keeps the client and
/// reports the loss itself. Finds the severity fields (`S`, `V`) saying FATAL and, with
/// `downgrade`, rewrites them to ERROR in place (same length). Client libraries close their
/// connection on FATAL.
pub fn fatal_severity(body: &mut [u8], downgrade: bool) -> bool {
    let mut i = 0;
    let mut found = false;
    while i < body.len() && body[i] != 0 {
        let field = body[i];
        let start = i + 1;
        let Some(len) = body[start..].iter().position(|b| *b == 0) else {
            return found;
        };
        if matches!(field, b'S' | b'V') && &body[start..start + len] == b"FATAL" {
            if downgrade {
                body[start..start + len].copy_from_slice(b"ERROR");
            }
            found = true;
        }
        i = start + len + 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::decode_frame;

    #[test]
    fn parameter_status_matches_pgwire_and_reads_back() {
        let mut ours = BytesMut::new();
        parameter_status("TimeZone", "Europe/Berlin", &mut ours);
        let mut theirs = BytesMut::new();
        let msg = pgwire::messages::startup::ParameterStatus::new(
            "TimeZone".to_string(),
            "Europe/Berlin".to_string(),
        );
        pgwire::messages::Message::encode(&msg, &mut theirs).unwrap();
        assert_eq!(ours, theirs);
        let frame = decode_frame(&mut ours, 1 << 20).unwrap().unwrap();
        assert_eq!(
            parse_parameter_status(&frame.raw[5..]),
            Some(("TimeZone".into(), "Europe/Berlin".into()))
        );
    }

    #[test]
    fn error_roundtrip() {
        let mut out = BytesMut::new();
        PgError::fatal("28P01", "password authentication failed for user \"x\"").encode(&mut out);
        let f = decode_frame(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        let (code, msg) = parse_error_fields(f.body());
        assert_eq!(code, "28P01");
        assert!(msg.contains("password authentication failed"));
    }

    #[test]
    fn data_row_values() {
        let mut body = vec![0, 3];
        body.extend_from_slice(&1i32.to_be_bytes());
        body.push(b't');
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(
            parse_data_row(&body),
            Some(vec![Some("t".into()), None, Some(String::new())])
        );
        assert_eq!(parse_data_row(&body[..5]), None, "truncated");
    }

    #[test]
    fn parameter_status_roundtrip() {
        let mut out = BytesMut::new();
        parameter_status("TimeZone", "UTC", &mut out);
        let f = decode_frame(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(
            parse_parameter_status(f.body()),
            Some(("TimeZone".into(), "UTC".into()))
        );
    }
}
