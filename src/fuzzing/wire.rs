//! Fuzz targets for framing and the startup packet (pipeline step 1, client → **framing**).

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};

use super::Reader;
use crate::protocol::backend;
use crate::protocol::frame::{decode_frame, peek_header, read_cstr, Frame, FrameError};
use crate::protocol::frontend;
use crate::protocol::startup::{decode_startup, encode_cancel, encode_startup, StartupRequest};

fn decode_all(buf: &mut BytesMut, max: usize) -> (Vec<Frame>, Option<FrameError>) {
    let mut frames = Vec::new();
    loop {
        match decode_frame(buf, max) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// Framing: `decode_frame`/`peek_header` over a byte stream, whole and in pieces (the same
/// frames either way), then every zero-copy view the session takes of a frame.
pub fn frame(data: &[u8]) {
    let mut r = Reader::new(data);
    let max = [64, 1024, 1 << 20, 1 << 28][usize::from(r.byte() % 4)];
    let step = usize::from(r.byte()) + 1;
    let stream = r.rest();
    if let Ok(Some((tag, total))) = peek_header(stream, max) {
        assert_eq!(tag, stream[0]);
        assert!(total >= 5 && total <= max + 1);
    }
    let (frames, end) = decode_all(&mut BytesMut::from(stream), max);
    let mut buf = BytesMut::new();
    let (mut pieces, mut piece_end) = (Vec::new(), None);
    for chunk in stream.chunks(step) {
        buf.extend_from_slice(chunk);
        let (mut got, e) = decode_all(&mut buf, max);
        pieces.append(&mut got);
        if e.is_some() {
            piece_end = e;
            break;
        }
    }
    assert_eq!(frames, pieces, "split reads decode differently");
    assert_eq!(end, piece_end);
    for f in &frames {
        assert_eq!(f.raw[0], f.tag);
        let len = i32::from_be_bytes([f.raw[1], f.raw[2], f.raw[3], f.raw[4]]);
        assert_eq!(len as usize + 1, f.raw.len());
        views(f);
    }
}

fn views(f: &Frame) {
    let _ = f.front();
    let _ = frontend::query_sql(f);
    let _ = frontend::parse_view(f);
    let _ = frontend::bind_statement(f);
    let _ = frontend::target_of(f);
    let mut out = BytesMut::new();
    if frontend::write_bind_renamed(f, "pgdecomp_1", &mut out).is_some() {
        let renamed = decode_frame(&mut out, usize::MAX)
            .expect("a renamed Bind is well framed")
            .expect("a renamed Bind is complete");
        assert_eq!(frontend::bind_statement(&renamed), Some(&b"pgdecomp_1"[..]));
        assert!(out.is_empty());
    }
    let body = f.body();
    let _ = backend::parse_parameter_status(body);
    let _ = backend::parse_data_row(body);
    let _ = backend::parse_error_fields(body);
    let mut copy = body.to_vec();
    let fatal = backend::fatal_severity(&mut copy, true);
    assert_eq!(copy.len(), body.len());
    if fatal {
        assert!(!backend::fatal_severity(&mut copy, false));
    }
    let mut rest = body;
    while read_cstr(&mut rest).is_some() {}
}

// === startup ===

/// The first packet of a connection: decoded whole and byte by byte alike, and a decoded
/// StartupMessage or CancelRequest re-encodes to the same request.
pub fn startup(data: &[u8]) {
    let mut whole = BytesMut::from(data);
    let first = decode_startup(&mut whole);
    let mut buf = BytesMut::new();
    let mut split = Ok(None);
    for &b in data {
        buf.put_u8(b);
        split = decode_startup(&mut buf);
        if !matches!(split, Ok(None)) {
            break;
        }
    }
    assert_eq!(
        first, split,
        "a packet split into bytes decodes differently"
    );
    match first {
        Ok(Some(StartupRequest::Startup(p))) => {
            let _ = p.needs_negotiation();
            let _ = p.get("user");
            let pairs: Vec<(&str, &str)> = p
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut out = BytesMut::new();
            encode_startup(&pairs, &mut out);
            let again = decode_startup(&mut out);
            let Ok(Some(StartupRequest::Startup(q))) = again else {
                panic!("re-encoded startup does not decode: {again:?}");
            };
            let expected: BTreeMap<_, _> = p.params.iter().cloned().collect();
            let got: BTreeMap<_, _> = q.params.iter().cloned().collect();
            assert_eq!(expected, got);
        }
        Ok(Some(StartupRequest::Cancel { pid, secret })) => {
            let mut out = BytesMut::new();
            encode_cancel(pid, secret, &mut out);
            assert_eq!(
                decode_startup(&mut out),
                Ok(Some(StartupRequest::Cancel { pid, secret }))
            );
        }
        _ => {}
    }
}
