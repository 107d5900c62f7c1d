//! What every persistent backend behind the agent's store offers: the
//! [`Backend`] trait, its ops and errors. Which backend is opened, and why,
//! is decided in [`super::select`].
//!
//! A backend maps a canonical registry key to one opaque value, which the
//! agent writes as a whole login ([`super::record`]: server URL, username,
//! update time and secret; a bare secret when an older regent wrote it). The
//! [`super::index::Index`] beside it keeps the server URL, the username and
//! the timestamps too, so that `list` needs no backend read. Every method
//! blocks (D-Bus, syscalls, fsync): the agent calls them from
//! `spawn_blocking` or its writer thread only.

use std::collections::HashMap;
use std::fmt;

use regent_shared::Secret;

/// The kinds of store a user can choose (`REGENT_STORE`, `store = ` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Keyring,
    File,
    Keyutils,
    Memory,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Keyring => "keyring",
            StoreKind::File => "file",
            StoreKind::Keyutils => "keyutils",
            StoreKind::Memory => "memory",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One change to apply.
pub enum Op {
    Set(String, Secret),
    Delete(String),
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Set(k, _) | Op::Delete(k) => k,
        }
    }
}

/// Why a backend failed. The message says what to do and never holds a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend is there but refuses access (locked keyring, wrong key).
    #[error("{0}")]
    Access(String),
    /// The backend is not reachable (no D-Bus, no keyring service).
    #[error("{0}")]
    Unavailable(String),
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// Stored data cannot be read back (corrupt or tampered file).
    #[error("{0}")]
    Corrupt(String),
    /// The secret cannot be kept by this backend (too large, ...).
    #[error("{0}")]
    Refused(String),
}

pub trait Backend: Send + Sync {
    fn kind(&self) -> StoreKind;

    /// Where the data lives, for `regent status` (a path, a keyring name).
    fn location(&self) -> String;

    /// The value stored under `key` (a [record](super::record)), if any.
    fn get(&self, key: &str) -> Result<Option<Secret>, StoreError>;

    /// Applies `ops` in order and returns once all of them are durable.
    /// A backend that [`is_atomic`](Backend::is_atomic) applies all or none;
    /// others are called with one op at a time.
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError>;

    /// True when [`apply`](Backend::apply) of several ops is all-or-nothing
    /// (the encrypted file, memory), so the agent may batch writes.
    fn is_atomic(&self) -> bool;

    /// Every secret at once, for backends that hold them all in one place and
    /// can hand them over cheaply at start-up (file, memory); `None` otherwise.
    fn load_all(&self) -> Result<Option<Vec<(String, Secret)>>, StoreError> {
        Ok(None)
    }

    /// True when a [`get`](Backend::get) costs next to nothing (a syscall,
    /// not a D-Bus round trip), so the agent may read every indexed key at
    /// start-up.
    fn reads_are_cheap(&self) -> bool {
        false
    }
}

/// Applies `ops` in order to an in-memory map of secrets: the memory
/// backend's store, and the file backend's copy once its file is written.
pub(super) fn apply_to_map(map: &mut HashMap<String, Secret>, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Set(key, secret) => {
                map.insert(key.clone(), secret.clone());
            }
            Op::Delete(key) => {
                map.remove(key);
            }
        }
    }
}

/// Every secret of an in-memory map, for [`Backend::load_all`].
pub(super) fn snapshot(map: &HashMap<String, Secret>) -> Vec<(String, Secret)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
