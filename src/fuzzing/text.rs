//! Fuzz targets for the text inputs: SQL into the classifier (pipeline step **classify**) and
//! the config formats into a snapshot (`config`, beside the pipeline).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::auth::UserList;
use crate::classify::{Classifier, Dictionary, SchemaRules};
use crate::config::{RawConfig, Snapshot};
use crate::route::Phase;

pub(super) fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(Classifier::gitlab_default)
}

/// The classifier (sqlparser and the fallback lexer behind it) on arbitrary SQL text.
pub fn classify(data: &[u8]) {
    let sql = String::from_utf8_lossy(data);
    let c = classifier();
    let _ = c.classify(&sql);
    let _ = c.classify_each(&sql);
    let _ = crate::classify::cache_key(&sql);
}

// === config ===

/// Files a fuzzed config may name: copies of the shipped ones in a private directory.
fn config_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = std::env::temp_dir().join(format!("pgdecomp-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        for sub in ["config", "phases"] {
            let entries = std::fs::read_dir(repo.join(sub)).expect("the repository is readable");
            for e in entries.flatten() {
                let _ = std::fs::copy(e.path(), dir.join(e.file_name()));
            }
        }
        dir
    })
}

/// A fuzzed config may only name plain file names (resolved in `config_dir`), never a path
/// that reaches devices or the rest of the machine.
fn names_are_local(raw: &RawConfig) -> bool {
    let names = [
        Some(&raw.auth_file),
        Some(&raw.phase_file),
        raw.classify.dictionary.as_ref(),
        raw.classify.schema_rules.as_ref(),
        raw.client_tls_cert_file.as_ref(),
        raw.client_tls_key_file.as_ref(),
        raw.server_tls_ca_file.as_ref(),
    ];
    names.into_iter().flatten().all(|n| {
        !n.is_empty() && !n.contains(['/', '\\']) && n != "." && n != ".." && !n.contains('\0')
    })
}

/// The config parser: TOML into `RawConfig`, then validation into a `Snapshot` against the
/// shipped auth file, dictionaries and phases. The same text also goes through the other
/// text formats a config references (phase, schema rules, dictionary TSV, auth file).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = Phase::from_toml(&text);
    let _ = SchemaRules::from_toml(&text);
    let _ = Dictionary::from_tsv(&text);
    let _ = UserList::parse(&text, "fuzz");
    let Ok(raw) = toml::from_str::<RawConfig>(&text) else {
        return;
    };
    if !names_are_local(&raw) {
        return;
    }
    if let Ok(snap) = Snapshot::from_raw(raw, &config_dir().join("pgdecomp.toml")) {
        let _ = snap.summary();
    }
}

/// The shipped example config with its paths made local to `config_dir`: a seed.
pub fn config_seed() -> String {
    let text = include_str!("../../config/pgdecomp.toml");
    text.replace("../phases/", "")
}
