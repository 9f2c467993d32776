//! Fuzz targets, beside the pipeline: one `pub fn` per parser or state machine that meets
//! untrusted bytes (framing, the startup packet, SCRAM, the classifier, the config parser and
//! the session machine). Each takes arbitrary bytes and must never panic; a panic is a finding.
//! The cargo-fuzz crate in `fuzz/` (long runs) and `tests/fuzz_smoke.rs` (short runs in
//! scripts/test) share these bodies. Built only with the `fuzzing` feature.

mod driver;
mod machine;
mod sasl;
mod text;
mod wire;

use std::path::Path;

use bytes::BytesMut;

use crate::protocol::backend::{self, PgError};
use crate::protocol::frame::Frame;
use crate::protocol::startup::{encode_cancel, encode_startup};
use crate::session::harness::msg;
use machine::SQL;

pub use machine::session;
pub use sasl::scram;
pub use text::{classify, config, config_seed};
pub use wire::{frame, startup};

/// A target body: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target by name, for runners that loop over them.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("startup", startup),
    ("scram", scram),
    ("classify", classify),
    ("config", config),
    ("session", session),
];

/// Reads fuzz input as a stream of small decisions; an exhausted input reads as zeros.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A chunk whose length is the next byte.
    fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.bytes(n)
    }

    /// Everything up to the next NUL (consumed) or the end.
    fn until_nul(&mut self) -> &'a [u8] {
        match self.data.iter().position(|&b| b == 0) {
            Some(i) => {
                let head = &self.data[..i];
                self.data = &self.data[i + 1..];
                head
            }
            None => self.bytes(self.data.len()),
        }
    }

    fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}

// === seeds ===

fn frame_bytes(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.raw.to_vec()).collect()
}

/// Session programs: `[setup, connection, roll, ops...]` in the encoding `session` reads.
fn session_seeds() -> Vec<Vec<u8>> {
    let q = |i: u8| vec![0, 0, i];
    let parse = |n: u8, i: u8| vec![0, 2, n, i];
    let bind = |n: u8| vec![0, 3, n];
    let (describe, execute, sync, settle) = (vec![0, 5], vec![0, 6], vec![0, 8], vec![9]);
    let exec_params = |i: u8| {
        [
            parse(0, i),
            bind(0),
            describe.clone(),
            execute.clone(),
            sync.clone(),
        ]
        .concat()
    };
    let mut programs = vec![
        [q(0), q(9), q(11), q(1), settle.clone()].concat(),
        [
            exec_params(8),
            settle.clone(),
            exec_params(12),
            settle.clone(),
        ]
        .concat(),
        [
            parse(1, 9),
            sync.clone(),
            settle.clone(),
            bind(1),
            execute.clone(),
            sync.clone(),
            settle.clone(),
        ]
        .concat(),
        [q(0), q(10), q(11), q(12), q(2), settle.clone()].concat(),
        [
            q(0),
            settle.clone(),
            vec![11, 1, 1, 90],
            q(9),
            settle.clone(),
            q(1),
            settle.clone(),
        ]
        .concat(),
        [q(0), q(9), vec![12], q(2), settle.clone()].concat(),
        [
            vec![13],
            q(9),
            settle.clone(),
            q(24),
            vec![0, 12, 0, 3, b'a', b'b', b'c', 0, 12, 1, 0],
            settle.clone(),
        ]
        .concat(),
        [q(19), q(20), q(21), q(15), q(18), settle.clone()].concat(),
        [q(0), vec![11, 3, 7], q(11), settle.clone(), q(1), settle].concat(),
    ];
    let mut seeds = vec![];
    for setup in [0u8, 3, 0x13, 0x26] {
        for p in &programs {
            seeds.push([vec![setup, 2, 50], p.clone()].concat());
        }
    }
    seeds.append(&mut programs);
    seeds
}

/// Starting inputs per target: valid messages and files, which the runners mutate.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "frame" => {
            let mut error = BytesMut::new();
            PgError::fatal("57P01", "bye").encode(&mut error);
            backend::parameter_status("TimeZone", "UTC", &mut error);
            let batch = frame_bytes(&[
                msg::q("SELECT 1"),
                msg::parse("a", "SELECT $1"),
                msg::bind("a"),
                msg::describe_p(),
                msg::execute(),
                msg::close_s("a"),
                msg::sync(),
            ]);
            vec![
                [&[3u8, 255][..], &batch].concat(),
                [&[2u8, 6][..], &batch].concat(),
                [&[3u8, 0][..], &error[..]].concat(),
            ]
        }
        "startup" => {
            let mut startup = BytesMut::new();
            encode_startup(&[("user", "gitlab"), ("database", "gitlabhq_production")], &mut startup);
            let mut newer = startup.to_vec();
            newer[6..8].copy_from_slice(&[0, 2]);
            let mut cancel = BytesMut::new();
            encode_cancel(7, 42, &mut cancel);
            let ssl = vec![0, 0, 0, 8, 4, 210, 22, 47];
            vec![startup.to_vec(), newer, cancel.to_vec(), ssl]
        }
        "scram" => {
            let userlist = include_str!("../../config/userlist.txt");
            vec![
                [&[0u8][..], b"\"u\" \"pencil\"\0n,,n=,r=abc\0c=biws,r=abcsrv,p=AAAA"].concat(),
                [&[1u8, 0, 1, 1, 6][..], b"fyko+d", &[0, 0]].concat(),
                [&[1u8][..], userlist.as_bytes(), &[0, 0, 1, 0, 0, 0]].concat(),
            ]
        }
        "classify" => SQL
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .chain([
                b"SELECT p.id FROM projects p LEFT JOIN LATERAL (SELECT * FROM ci_builds b WHERE b.project_id = p.id) x ON true WHERE p.id IN (SELECT project_id FROM ci_pipelines) ORDER BY 1 LIMIT 5".to_vec(),
                b"INSERT INTO ci_builds (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET id = excluded.id RETURNING *".to_vec(),
                b"/* comment */ select \"Projects\".* from public.\"projects\" -- x\n".to_vec(),
                b"COPY (SELECT * FROM ci_builds) TO STDOUT WITH (FORMAT csv)".to_vec(),
            ])
            .collect(),
        "config" => {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
            let mut v = vec![config_seed().into_bytes()];
            for f in ["phases/phase-1.toml", "phases/phase-4.toml", "config/gitlab_schema_rules.toml", "config/userlist.txt"] {
                if let Ok(text) = std::fs::read(repo.join(f)) {
                    v.push(text);
                }
            }
            v
        }
        "session" => session_seeds(),
        _ => vec![],
    }
}
