//! The config file: `$XDG_CONFIG_HOME/regent/config.toml`, or `$REGENT_CONFIG`.
//!
//! ```toml
//! # Where long-lived secrets live: auto, keyring, file, keyutils or memory.
//! store = "auto"
//! # How much the agent logs: error, warn, info, debug or trace.
//! log = "info"
//! ```
//!
//! Environment variables win over the file: `REGENT_STORE`, `REGENT_LOG`,
//! `REGENT_KEYRING_SERVICE`. Unknown keys are an error, so a typo is caught
//! rather than silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub store: Option<String>,
    pub log: Option<String>,
    pub keyring_service: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The config in force: the file if it exists, then the environment on top.
#[derive(Debug)]
pub struct Settings {
    pub path: PathBuf,
    pub file_present: bool,
    pub store: String,
    pub log: String,
    pub keyring_service: String,
}

impl Config {
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Option<Config>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

impl Settings {
    pub fn load() -> Result<Settings, ConfigError> {
        let path = regent_shared::paths::config_file();
        let file = Config::load(&path)?;
        let file_present = file.is_some();
        let file = file.unwrap_or_default();
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(Settings {
            store: env("REGENT_STORE")
                .or(file.store)
                .unwrap_or_else(|| "auto".into()),
            log: env("REGENT_LOG")
                .or(file.log)
                .unwrap_or_else(|| "info".into()),
            keyring_service: env("REGENT_KEYRING_SERVICE")
                .or(file.keyring_service)
                .unwrap_or_else(|| "regent".into()),
            path,
            file_present,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys() {
        let c = Config::parse("store = \"file\"\nlog = \"debug\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(c.store.as_deref(), Some("file"));
        assert_eq!(c.log.as_deref(), Some("debug"));
    }

    #[test]
    fn typo_is_an_error_with_position() {
        let err = Config::parse("stor = \"file\"\n", Path::new("c.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("c.toml"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }
}
