//! [`AgentState`]: what the running agent holds and knows about itself, for
//! the request handlers, `Status`, `Reload` and the signal watcher.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use regent_shared::protocol::{PROTOCOL_VERSION, StatusInfo};
use tokio::sync::watch;

use crate::config::{Config, ConfigError, Rules};
use crate::credentials::CredentialTable;
use crate::refresh::Engine;

/// What the agent knows about itself, for `Hello` and `Status`.
pub struct AgentState {
    pub credentials: Arc<CredentialTable>,
    /// Tokens from sources, cached and refreshed.
    pub engine: Arc<Engine>,
    /// The `[[registry]]` entries in force; replaced whole by a reload.
    pub rules: RwLock<Arc<Rules>>,
    /// The config file that `reload` re-reads.
    pub config_path: PathBuf,
    pub socket: String,
    pub store_reason: String,
    pub config: Option<String>,
    pub log: Option<String>,
    pub started_unix: i64,
    pub started: Instant,
    /// Flipped to `true` to stop the agent.
    pub shutdown: watch::Sender<bool>,
    /// The program to hand over to once the server stops accepting
    /// (`daemon::upgrade`).
    pub upgrade: Mutex<Option<PathBuf>>,
}

/// A reload that took effect: the file read and how many entries it holds.
#[derive(Debug)]
pub struct Reloaded {
    pub config: String,
    pub rules: usize,
}

/// A reload refused: the config in force stays.
#[derive(Debug, thiserror::Error)]
#[error("{0}; the config in force is unchanged")]
pub struct ReloadError(#[from] ConfigError);

impl AgentState {
    /// Stops the agent (and calls off an upgrade in progress).
    pub fn stop(&self) {
        *self.upgrade.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shutdown.send_replace(true);
    }

    /// Stops accepting connections, to hand over to `program`.
    pub fn request_upgrade(&self, program: PathBuf) {
        *self.upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(program);
        self.shutdown.send_replace(true);
    }

    /// The program to hand over to, if an upgrade was asked for.
    pub fn upgrading(&self) -> Option<PathBuf> {
        self.upgrade
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves on after a handover failed.
    pub fn upgrade_failed(&self) {
        *self.upgrade.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shutdown.send_replace(false);
    }

    pub fn rules(&self) -> Arc<Rules> {
        self.rules.read().expect("rules lock").clone()
    }

    /// Re-reads the config file's `[[registry]]` entries (`regent reload`,
    /// SIGHUP). A file that does not parse changes nothing. Cached tokens of
    /// entries that did not change are kept.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let config = self.config_path.display().to_string();
        let rules = match Config::load(&self.config_path) {
            Ok(loaded) => Arc::new(loaded.map(|c| c.rules).unwrap_or_default()),
            Err(e) => {
                tracing::warn!(error = %e, "config reload refused; the config in force stays");
                return Err(e.into());
            }
        };
        let count = rules.len();
        *self.rules.write().expect("rules lock") = rules.clone();
        self.engine.reconcile(|key| rules.resolve(key));
        tracing::info!(config = %config, rules = count, "config reloaded");
        Ok(Reloaded {
            config,
            rules: count,
        })
    }

    /// `regent status`: bare values, each note in a field of its own.
    pub fn status(&self) -> StatusInfo {
        let (location, detail) = split_note(self.credentials.location());
        StatusInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            proto: PROTOCOL_VERSION,
            started: self.started_unix,
            uptime_secs: self.started.elapsed().as_secs(),
            socket: self.socket.clone(),
            store: self.credentials.kind().name().to_owned(),
            store_reason: self.store_reason.clone(),
            store_location: Some(location),
            store_detail: detail,
            credentials: self.credentials.len(),
            config: Some(self.config_path.display().to_string()),
            config_present: self.config_path.exists(),
            log: self.log.clone(),
        }
    }
}

/// `"<value> (<note>)"` split into the value and the note: a backend's
/// location reads `/path/secrets.enc (AES-256-GCM; master key in ...)`.
fn split_note(text: String) -> (String, Option<String>) {
    if let Some(inner) = text.strip_suffix(')')
        && let Some(open) = inner.find(" (")
    {
        let note = inner[open + 2..].to_owned();
        return (inner[..open].to_owned(), Some(note));
    }
    (text, None)
}

#[cfg(test)]
mod tests {
    use super::split_note;

    #[test]
    fn a_location_note_is_split_off() {
        assert_eq!(
            split_note("/d/secrets.enc (AES-256-GCM; master key in k)".to_owned()),
            (
                "/d/secrets.enc".to_owned(),
                Some("AES-256-GCM; master key in k".to_owned())
            )
        );
        assert_eq!(split_note("memory".to_owned()), ("memory".to_owned(), None));
        assert_eq!(
            split_note("odd)".to_owned()),
            ("odd)".to_owned(), None),
            "a closing parenthesis alone is not a note"
        );
    }
}
