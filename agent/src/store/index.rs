//! The index of stored credentials: everything about them except the secret.
//!
//! The index serves `list` and `regent ls` without touching the keyring: it
//! keeps the server URL exactly as the client stored it and the username
//! beside each canonical key. Each persistent backend has an index of its
//! own, `<data_dir>/index-<kind>.json` (`index-keyring.json`,
//! `index-file.json`, `index-keyutils.json`: [`super::select::index_path`]);
//! the memory store's index lives in memory only. The format:
//!
//! ```json
//! {
//!   "version": 1,
//!   "entries": {
//!     "<canonical key>": {
//!       "server_url": "https://index.docker.io/v1/",
//!       "username": "alice",
//!       "created": 1700000000,
//!       "updated": 1700000000
//!     }
//!   }
//! }
//! ```
//!
//! Times are unix seconds. An entry may also carry `"pending"`: a write to a
//! backend that cannot be written together with this file (the keyring, the
//! kernel keyring) is first recorded here as pending, then made in the
//! backend. After a crash, the next agent checks each pending key against the
//! backend, whose record is the whole login, and keeps what the backend holds
//! (see [`crate::credentials`]). Older agents ignore the field.
//!
//! The index is a cache of what the records in the store say: for the file
//! and memory stores, which hand over every record at start-up, it is checked
//! against them (and rebuilt when it is missing) each time the agent starts;
//! for the kernel keyring, whose reads are cheap, every indexed key is read
//! back and checked. The file is written with
//! `atomic::write_atomic` (mode 0600), so it is always
//! either the old or the new version. A file that cannot be read or parsed,
//! or that has a `version` this build does not know, is an error: it is never
//! replaced by an empty index, so a bug or a downgrade cannot wipe it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;
use super::backend::StoreError;

/// The only index format this build reads and writes.
pub const INDEX_VERSION: u32 = 1;

/// An index larger than this is not ours (thousands of entries take ~1 MiB).
const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;

/// What the index knows about one stored credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The server URL exactly as the client stored it.
    pub server_url: String,
    pub username: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub updated: i64,
    /// A write that was begun but not yet known to have reached the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// What a pending write was about to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// True for an erase (the entry goes once the backend confirms).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erase: bool,
    /// The entry before the write, for a backend value without a record
    /// (written by an older regent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<Box<IndexEntry>>,
}

/// The non-secret index, in memory, with the file it came from (if any).
#[derive(Debug, Clone, Default)]
pub struct Index {
    path: Option<PathBuf>,
    /// Whether the file existed when it was loaded.
    found: bool,
    entries: BTreeMap<String, IndexEntry>,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    entries: BTreeMap<String, IndexEntry>,
}

#[derive(Serialize)]
struct IndexFileRef<'a> {
    version: u32,
    entries: &'a BTreeMap<String, IndexEntry>,
}

impl Index {
    /// An empty index that is never written anywhere.
    pub fn memory() -> Index {
        Index::default()
    }

    /// Reads the index at `path`; `None` gives an empty in-memory index that
    /// never touches disk. A missing file is an empty index; an unreadable,
    /// corrupt or newer file is an error that says what to do.
    pub fn load(path: Option<PathBuf>) -> Result<Index, StoreError> {
        let Some(path) = path else {
            return Ok(Index::memory());
        };
        let bytes = match read_bounded(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Index {
                    path: Some(path),
                    found: false,
                    entries: BTreeMap::new(),
                });
            }
            Err(e) => {
                return Err(StoreError::Io(format!(
                    "cannot read the index {}: {e}; check its permissions (it should be \
                     yours, mode 0600), or move it aside and log in again / run `regent import`",
                    path.display()
                )));
            }
        };
        let entries = parse(&path, &bytes)?;
        Ok(Index {
            path: Some(path),
            found: true,
            entries,
        })
    }

    /// True when the index was read from a file (false for a missing file
    /// and for a memory-only index).
    pub fn was_found(&self) -> bool {
        self.found
    }

    /// The file this index is saved to; `None` for a memory-only index.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Writes the index atomically; does nothing for a memory-only index.
    pub fn save(&self) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = IndexFileRef {
            version: INDEX_VERSION,
            entries: &self.entries,
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| {
            StoreError::Io(format!("cannot encode the index {}: {e}", path.display()))
        })?;
        bytes.push(b'\n');
        write_atomic(path, &bytes)
    }

    pub fn get(&self, key: &str) -> Option<&IndexEntry> {
        self.entries.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut IndexEntry> {
        self.entries.get_mut(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Adds or replaces the entry for `key`; returns the previous one.
    pub fn insert(&mut self, key: String, entry: IndexEntry) -> Option<IndexEntry> {
        self.entries.insert(key, entry)
    }

    pub fn remove(&mut self, key: &str) -> Option<IndexEntry> {
        self.entries.remove(key)
    }

    /// Entries in canonical-key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &IndexEntry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let meta = fs::metadata(path)?;
    if meta.len() > MAX_INDEX_BYTES {
        return Err(io::Error::other(format!(
            "it is {} bytes, more than an index can be",
            meta.len()
        )));
    }
    fs::read(path)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, IndexEntry>, StoreError> {
    let corrupt = |why: String| {
        StoreError::Corrupt(format!(
            "the index {} is corrupt ({why}); it was left as it is. Move it aside \
             (e.g. `mv {p} {p}.bad`), then log in again or run `regent import`",
            path.display(),
            p = path.display(),
        ))
    };
    let version: VersionOnly = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if version.version != INDEX_VERSION {
        return Err(StoreError::Corrupt(format!(
            "the index {} has format version {}, but this regent knows only version \
             {INDEX_VERSION}; it was left as it is. Upgrade regent, or move the file aside \
             and log in again",
            path.display(),
            version.version
        )));
    }
    let file: IndexFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    Ok(file.entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str, user: &str, t: i64) -> IndexEntry {
        IndexEntry {
            server_url: url.to_owned(),
            username: user.to_owned(),
            created: t,
            updated: t + 1,
            pending: None,
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/index.json");

        let mut index = Index::load(Some(path.clone())).unwrap();
        assert!(index.is_empty());
        assert!(!path.exists(), "loading must not create the file");
        index.insert(
            "index.docker.io".into(),
            entry("https://index.docker.io/v1/", "al\"ice", 10),
        );
        index.insert("ghcr.io".into(), entry("ghcr.io", "bøb", 20));
        index.save().unwrap();

        let text = fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(
            json["entries"]["ghcr.io"]["server_url"].as_str(),
            Some("ghcr.io")
        );

        let mut again = Index::load(Some(path.clone())).unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(
            again.get("index.docker.io"),
            Some(&entry("https://index.docker.io/v1/", "al\"ice", 10))
        );
        let keys: Vec<&String> = again.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["ghcr.io", "index.docker.io"]);

        assert!(again.remove("ghcr.io").is_some());
        again.save().unwrap();
        let third = Index::load(Some(path)).unwrap();
        assert_eq!(third.len(), 1);
        assert!(!third.contains_key("ghcr.io"));
    }

    #[test]
    fn memory_index_never_touches_disk() {
        let mut index = Index::load(None).unwrap();
        index.insert("a".into(), entry("a", "u", 1));
        index.save().unwrap();
        assert!(index.path().is_none());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn corrupt_index_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        for garbage in [
            &b"{\"version\":1,\"entries\":{\"a\":"[..],
            b"",
            b"\xff\xfe",
            b"[]",
        ] {
            fs::write(&path, garbage).unwrap();
            let err = Index::load(Some(path.clone())).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("Move it aside"), "{msg}");
            assert_eq!(fs::read(&path).unwrap(), garbage);
        }
    }

    #[test]
    fn newer_version_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        let newer = br#"{"version":2,"entries":{},"shiny":true}"#;
        fs::write(&path, newer).unwrap();
        let err = Index::load(Some(path.clone())).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), newer);
    }

    #[test]
    fn unreadable_index_is_an_error() {
        // A directory where the file should be: read fails even for root.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        fs::create_dir(&path).unwrap();
        let err = Index::load(Some(path.clone())).unwrap_err();
        assert!(err.to_string().contains("cannot read the index"), "{err}");
        assert!(path.is_dir());
    }
}
