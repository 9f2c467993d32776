//! Configuration: raw TOML (`raw.rs`) → validated immutable `Snapshot` shared as `Arc`. Sessions
//! take a snapshot at transaction start and keep it until the transaction ends.

mod health;
mod raw;
mod snapshot;
#[cfg(test)]
mod tests;
mod throttle;
mod tls;

pub use health::HealthSettings;
pub use raw::RawConfig;
pub use snapshot::*;
pub use throttle::ThrottleSettings;
pub use tls::{ClientTls, ClientTlsMode};

use std::path::{Path, PathBuf};

/// Why a config could not be loaded. The previous snapshot stays live on any of these.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Classify(#[from] crate::classify::ClassifyError),
}

pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.into(),
        error,
    })
}

/// Only the classifier of the config at `path` (its `[classify]` table), for `pgdecomp
/// classify`: the rest of the file need not be valid or complete.
pub fn load_classifier(path: &Path) -> Result<crate::classify::Classifier, ConfigError> {
    #[derive(serde::Deserialize)]
    struct OnlyClassify {
        #[serde(default)]
        classify: raw::RawClassify,
    }
    let text = read(path)?;
    let only: OnlyClassify = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    classifier_from(&only.classify, path.parent().unwrap_or(Path::new(".")))
}

/// Loads and validates the config at `path` and everything it references.
pub fn load(path: &Path) -> Result<Snapshot, ConfigError> {
    load_with_phase(path, None)
}

/// `load`, with `phase_file` replaced by the phase file the fleet chose through etcd (`None`:
/// the config's own), so a phase from etcd takes the same path as one from the config.
pub fn load_with_phase(path: &Path, phase_file: Option<&Path>) -> Result<Snapshot, ConfigError> {
    let text = read(path)?;
    let mut raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    if let Some(file) = phase_file {
        raw.phase_file = file.to_string_lossy().into_owned();
    }
    Snapshot::from_raw(raw, path)
}
