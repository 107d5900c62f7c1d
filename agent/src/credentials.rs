//! The credential table: what the agent serves, in memory, in front of the
//! persistent store.
//!
//! Reads never touch the backend once a key is warm: `get`, `list` and `ls`
//! are answered from the table. A cold key (stored by an earlier agent in a
//! backend that cannot hand over all its secrets at start-up, such as the OS
//! keyring) is read from the backend once and then kept.
//!
//! Writes go through one owner, the writer thread, in arrival order. It
//! applies each batch durably (backend first, then the index) and only then
//! updates the table and acknowledges. When several writes are waiting, an
//! atomic backend (the encrypted file, memory) gets them as one batch: one
//! encryption and one fsync for all of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::Duration;

use regent_shared::Secret;
use regent_shared::protocol::EntryInfo;
use tokio::sync::oneshot;

use crate::secrets;
use crate::store::index::{Index, IndexEntry};
use crate::store::{Backend, Op, StoreError, StoreKind};

/// The longest a backend read may take before a `get` gives up on it.
const BACKEND_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a store or erase waits for the backend before it answers with
/// an error: below the helper's 30 s wait for an answer, so the user reads
/// the agent's reason, not a time-out.
const WRITE_ACK_TIMEOUT: Duration = Duration::from_secs(20);

/// How many queued writes the writer takes in one batch at most.
const MAX_BATCH: usize = 256;

/// A credential as the agent serves it.
pub struct Credential {
    pub username: String,
    pub secret: Secret,
}

struct Entry {
    meta: IndexEntry,
    /// `None` until the secret was read from the backend.
    secret: Option<Secret>,
    /// Bumped by every write, so that a slow cold read cannot overwrite a
    /// newer secret.
    generation: u64,
}

type Table = RwLock<HashMap<String, Entry>>;

enum Write {
    Store {
        key: String,
        server_url: String,
        username: String,
        secret: Secret,
    },
    Erase {
        key: String,
    },
}

impl Write {
    fn key(&self) -> &str {
        match self {
            Write::Store { key, .. } | Write::Erase { key } => key,
        }
    }
}

struct Job {
    write: Write,
    done: oneshot::Sender<Result<(), String>>,
}

pub struct Credentials {
    backend: Arc<dyn Backend>,
    table: Arc<Table>,
    writer: std_mpsc::Sender<Job>,
}

impl Credentials {
    /// Loads the index (and, where the backend allows, every secret) and starts
    /// the writer thread.
    pub fn open(backend: Arc<dyn Backend>, index: Index) -> Result<Credentials, StoreError> {
        let mut secrets: HashMap<String, Secret> = backend
            .load_all()?
            .map(|all| all.into_iter().collect())
            .unwrap_or_default();
        let table: HashMap<String, Entry> = index
            .iter()
            .map(|(key, meta)| {
                let entry = Entry {
                    meta: meta.clone(),
                    secret: secrets.remove(key),
                    generation: 0,
                };
                (key.clone(), entry)
            })
            .collect();
        if !secrets.is_empty() {
            tracing::debug!(
                count = secrets.len(),
                "secrets without an index entry are ignored (an interrupted store)"
            );
        }
        let table = Arc::new(RwLock::new(table));
        let (tx, rx) = std_mpsc::channel();
        let writer = Writer {
            backend: backend.clone(),
            table: table.clone(),
            index,
            generation: 0,
        };
        thread::Builder::new()
            .name("regent-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Io(format!("cannot start the writer thread: {e}")))?;
        Ok(Credentials {
            backend,
            table,
            writer: tx,
        })
    }

    pub fn kind(&self) -> StoreKind {
        self.backend.kind()
    }

    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// The number of registry credentials (named secrets not counted).
    pub fn len(&self) -> usize {
        self.table
            .read()
            .expect("table lock")
            .keys()
            .filter(|k| !secrets::is_secret_key(k))
            .count()
    }

    /// The names of the named secrets (`regent secret ls`).
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .table
            .read()
            .expect("table lock")
            .keys()
            .filter_map(|k| k.strip_prefix(secrets::PREFIX).map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The credential stored under a canonical key.
    pub async fn get(&self, key: &str) -> Result<Option<Credential>, StoreError> {
        let generation = {
            let table = self.table.read().expect("table lock");
            match table.get(key) {
                None => return Ok(None),
                Some(Entry {
                    meta,
                    secret: Some(secret),
                    ..
                }) => {
                    return Ok(Some(Credential {
                        username: meta.username.clone(),
                        secret: secret.clone(),
                    }));
                }
                Some(entry) => entry.generation,
            }
        };
        // Cold: read it from the backend once.
        let backend = self.backend.clone();
        let owned = key.to_owned();
        let read = tokio::task::spawn_blocking(move || backend.get(&owned));
        let loaded = match tokio::time::timeout(BACKEND_READ_TIMEOUT, read).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join)) => {
                return Err(StoreError::Io(format!("the backend read failed: {join}")));
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "the {} store did not answer within {}s; run `regent status`",
                    self.backend.kind(),
                    BACKEND_READ_TIMEOUT.as_secs()
                )));
            }
        };
        let mut table = self.table.write().expect("table lock");
        let Some(entry) = table.get_mut(key) else {
            return Ok(None);
        };
        match loaded {
            Some(secret) => {
                if entry.generation == generation && entry.secret.is_none() {
                    entry.secret = Some(secret.clone());
                }
                let secret = entry.secret.clone().unwrap_or(secret);
                Ok(Some(Credential {
                    username: entry.meta.username.clone(),
                    secret,
                }))
            }
            None => {
                tracing::warn!(key, "indexed credential is missing from the backend");
                Ok(None)
            }
        }
    }

    /// Stores a credential; returns once it is durable.
    pub async fn store(
        &self,
        key: String,
        server_url: String,
        username: String,
        secret: Secret,
    ) -> Result<(), String> {
        self.submit(Write::Store {
            key,
            server_url,
            username,
            secret,
        })
        .await
    }

    /// Erases a credential; returns once the erase is durable. Erasing a key
    /// that is not there succeeds.
    pub async fn erase(&self, key: String) -> Result<(), String> {
        if !self.table.read().expect("table lock").contains_key(&key) {
            return Ok(());
        }
        self.submit(Write::Erase { key }).await
    }

    async fn submit(&self, write: Write) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.writer
            .send(Job { write, done })
            .map_err(|_| "the agent is shutting down; try again".to_owned())?;
        match tokio::time::timeout(WRITE_ACK_TIMEOUT, rx).await {
            Ok(result) => {
                result.map_err(|_| "the agent's writer stopped; see the agent log".to_owned())?
            }
            Err(_) => Err(format!(
                "{} did not confirm the write within {} s (locked behind an unlock prompt, or \
                 not answering); it may still complete: check with `regent ls`, or use \
                 REGENT_STORE=file",
                self.backend.location(),
                WRITE_ACK_TIMEOUT.as_secs()
            )),
        }
    }

    /// `{server URL as stored: username}`.
    pub fn list(&self) -> BTreeMap<String, String> {
        self.table
            .read()
            .expect("table lock")
            .iter()
            .filter(|(k, _)| !secrets::is_secret_key(k))
            .map(|(_, e)| (e.meta.server_url.clone(), e.meta.username.clone()))
            .collect()
    }

    pub fn entries(&self) -> Vec<EntryInfo> {
        let table = self.table.read().expect("table lock");
        let mut rows: Vec<EntryInfo> = table
            .iter()
            .filter(|(key, _)| !secrets::is_secret_key(key))
            .map(|(key, e)| EntryInfo {
                server_url: e.meta.server_url.clone(),
                key: key.clone(),
                username: e.meta.username.clone(),
                source: "static".into(),
                created: e.meta.created,
                updated: e.meta.updated,
                expires: None,
                last_refresh: None,
                last_error: None,
            })
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }
}

struct Writer {
    backend: Arc<dyn Backend>,
    table: Arc<Table>,
    index: Index,
    generation: u64,
}

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            if self.backend.is_atomic() {
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            }
            self.commit(batch);
        }
        tracing::debug!("writer stopped");
    }

    fn commit(&mut self, batch: Vec<Job>) {
        let ops: Vec<Op> = batch.iter().map(|job| to_op(&job.write)).collect();
        let result = self
            .backend
            .apply(&ops)
            .map_err(|e| e.to_string())
            .and_then(|()| self.update_index(&batch));
        drop(ops);
        match &result {
            Ok(()) => {
                tracing::debug!(writes = batch.len(), "batch committed");
                self.update_table(&batch);
            }
            Err(e) => tracing::warn!(writes = batch.len(), error = %e, "batch failed"),
        }
        for job in batch {
            let _ = job.done.send(result.clone());
        }
    }

    fn update_index(&mut self, batch: &[Job]) -> Result<(), String> {
        // What each changed key held before, to put back if the index
        // cannot be saved (not a clone of the whole index: that would make
        // every store cost as much as the number of credentials).
        let mut undo: Vec<(String, Option<IndexEntry>)> = Vec::with_capacity(batch.len());
        let now = now_unix();
        for job in batch {
            match &job.write {
                Write::Store {
                    key,
                    server_url,
                    username,
                    ..
                } => {
                    let created = self.index.get(key).map_or(now, |e| e.created);
                    let old = self.index.insert(
                        key.clone(),
                        IndexEntry {
                            server_url: server_url.clone(),
                            username: username.clone(),
                            created,
                            updated: now,
                        },
                    );
                    undo.push((key.clone(), old));
                }
                Write::Erase { key } => {
                    let old = self.index.remove(key);
                    undo.push((key.clone(), old));
                }
            }
        }
        if let Err(e) = self.index.save() {
            // Newest first, so a key changed twice ends as it began.
            for (key, old) in undo.into_iter().rev() {
                match old {
                    Some(entry) => {
                        self.index.insert(key, entry);
                    }
                    None => {
                        self.index.remove(&key);
                    }
                }
            }
            return Err(e.to_string());
        }
        Ok(())
    }

    fn update_table(&mut self, batch: &[Job]) {
        let mut table = self.table.write().expect("table lock");
        for job in batch {
            self.generation += 1;
            match &job.write {
                Write::Store { key, secret, .. } => {
                    let Some(meta) = self.index.get(key) else {
                        continue;
                    };
                    table.insert(
                        key.clone(),
                        Entry {
                            meta: meta.clone(),
                            secret: Some(secret.clone()),
                            generation: self.generation,
                        },
                    );
                }
                Write::Erase { key } => {
                    table.remove(key);
                }
            }
        }
        tracing::trace!(keys = ?batch.iter().map(|j| j.write.key()).collect::<Vec<_>>(), "table updated");
    }
}

fn to_op(write: &Write) -> Op {
    match write {
        Write::Store { key, secret, .. } => Op::Set(key.clone(), secret.clone()),
        Write::Erase { key } => Op::Delete(key.clone()),
    }
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
