//! The credential table: what the agent serves, in memory, in front of the
//! persistent store.
//!
//! Reads never touch the backend once a key is warm: `get`, `list` and `ls`
//! are answered from the table. A cold key (stored by an earlier agent in a
//! backend that cannot hand over all its secrets at start-up, such as the OS
//! keyring) is read from the backend once and then kept.
//!
//! Each backend value is a whole login ([`record`]): server URL, username and
//! secret in one value, written by one backend call. So after any crash a key
//! holds wholly the old or wholly the new login, and the index, which serves
//! `list` and `regent ls` without touching the keyring, can be checked
//! against the store:
//!
//! - **file, memory** hand over every record at start-up ([`Backend::load_all`]).
//!   The table is built from the records; the index is corrected to match
//!   them (an entry whose record is gone is dropped, a record without an
//!   entry gets one) and rebuilt when it is missing. A write goes to the
//!   backend first; the index follows as a cache.
//! - **keyring, keyutils** take one write at a time, so a write is first
//!   recorded in the index as pending (write-ahead), then made in the
//!   backend. The kernel keyring answers a read in microseconds: at start-up
//!   every indexed key is read and checked as above (so keys lost to a
//!   reboot leave the index too). The OS keyring is slow to read: only each
//!   pending key (at most the one write in flight at a crash) is read back
//!   and its entry set to what the backend holds.
//!
//! Writes go through one owner, the writer thread, in arrival order. It
//! applies each batch durably and only then updates the table and
//! acknowledges. When several writes are waiting, an atomic backend (the
//! encrypted file, memory) gets them as one batch: one encryption and one
//! fsync for all of them. A batch the backend refuses changes nothing in
//! memory (the index's changes are undone, the table is not touched) and
//! every write in it is answered with the backend's reason.
//!
//! Named secrets ([`crate::named_secrets`]) live in the same table under
//! `secret:NAME`; the table hands them to sources as their
//! [`SecretLookup`], so the sources never see the store and the policy
//! module depends on nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::Duration;

use regent_shared::Secret;
use regent_shared::protocol::{EntryInfo, MAX_FRAME, Response};
use regent_shared::registry::RegistryKey;
use tokio::sync::oneshot;

use crate::named_secrets;
use crate::sources::{BoxFuture, SecretLookup};
use crate::store::index::{Index, IndexEntry, Pending};
use crate::store::record::{self, Decoded};
use crate::store::{Backend, Op, StoreError, StoreKind};

/// The longest a backend read may take before a `get` gives up on it.
const BACKEND_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a store or erase waits for the backend before it answers with
/// an error: below the helper's 30 s wait for an answer, so the user reads
/// the agent's reason, not a time-out.
const WRITE_ACK_TIMEOUT: Duration = Duration::from_secs(20);

/// How many queued writes the writer takes in one batch at most.
const MAX_BATCH: usize = 256;

/// Room kept in a `Response::Credentials` frame for a `get` that names the registry
/// in a longer form than the one stored (`https://host/` for `host`).
const SERVER_URL_ROOM: usize = 1024;

/// What the table holds under a key, as a `get` serves it.
pub struct StoredCredential {
    pub username: String,
    pub secret: Secret,
}

/// A login to store: what a client's `store` carries, under its key.
pub struct NewLogin {
    pub key: RegistryKey,
    /// The server URL as the client sent it (trimmed): what `list` shows.
    pub server_url: String,
    pub username: String,
    pub secret: Secret,
}

/// Why a store or an erase was not done, or may not have been.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Refused before anything was written: a `get` could not answer it.
    #[error(
        "the login is {sent_back} bytes as `get` would send it back (the secret is \
         {secret_len} bytes), more than the {limit} bytes that fit in one answer; nothing was \
         stored"
    )]
    TooLarge {
        sent_back: usize,
        secret_len: usize,
        limit: usize,
    },
    #[error("the agent is shutting down; try again")]
    ShuttingDown,
    #[error("the agent's writer stopped; see the agent log")]
    WriterStopped,
    /// No answer from the backend in time; the write may still land.
    #[error(
        "{location} did not confirm the write within {secs} s (locked behind an unlock prompt, \
         or not answering); it may still complete: check with `regent ls`, or use \
         REGENT_STORE=file"
    )]
    NotConfirmed { location: String, secs: u64 },
    /// The backend (or, for a keyring, the index written ahead) refused the
    /// batch; nothing of it was kept.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    done: oneshot::Sender<Result<(), WriteError>>,
}

/// The credential table: every stored login and named secret, in memory, in
/// front of the backend; writes go through the writer thread.
pub struct CredentialTable {
    backend: Arc<dyn Backend>,
    table: Arc<Table>,
    writer: std_mpsc::Sender<Job>,
}

impl CredentialTable {
    /// Loads the index (and, where the backend allows, every record),
    /// checks one against the other, and starts the writer thread.
    pub fn open(
        backend: Arc<dyn Backend>,
        mut index: Index,
    ) -> Result<CredentialTable, StoreError> {
        let all = match backend.load_all()? {
            Some(all) => Some(all),
            None if backend.reads_are_cheap() => Some(read_indexed(&*backend, &index)?),
            None => None,
        };
        let table = match all {
            Some(all) => from_records(&*backend, &mut index, all)?,
            None => {
                resolve_pending(&*backend, &mut index);
                index
                    .iter()
                    .map(|(key, meta)| {
                        let entry = Entry {
                            meta: meta.clone(),
                            secret: None,
                            generation: 0,
                        };
                        (key.clone(), entry)
                    })
                    .collect()
            }
        };
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
        Ok(CredentialTable {
            backend,
            table,
            writer: tx,
        })
    }

    pub fn kind(&self) -> StoreKind {
        self.backend.kind()
    }

    /// The memory store's records, as its backend holds them (for the
    /// program an upgrade hands over to); nothing for the other stores,
    /// which keep their own.
    pub fn memory_records(&self) -> Vec<(String, Secret)> {
        if self.backend.kind() != StoreKind::Memory {
            return Vec::new();
        }
        self.backend.load_all().ok().flatten().unwrap_or_default()
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
            .filter(|k| !named_secrets::is_secret_key(k))
            .count()
    }

    /// The names of the named secrets (`regent secret ls`).
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .table
            .read()
            .expect("table lock")
            .keys()
            .filter_map(|k| k.strip_prefix(named_secrets::PREFIX).map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The credential stored under a canonical key.
    pub async fn get(&self, key: &str) -> Result<Option<StoredCredential>, StoreError> {
        let generation = {
            let table = self.table.read().expect("table lock");
            match table.get(key) {
                None => return Ok(None),
                Some(Entry {
                    meta,
                    secret: Some(secret),
                    ..
                }) => {
                    return Ok(Some(StoredCredential {
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
        let loaded = match loaded.map(record::decode) {
            None => None,
            Some(Ok(decoded)) => Some(decoded),
            Some(Err(why)) => {
                return Err(StoreError::Corrupt(format!(
                    "the entry for {key} in {} cannot be read ({why}); remove it \
                     (`docker logout {key}`) and log in again",
                    self.backend.location()
                )));
            }
        };
        let mut table = self.table.write().expect("table lock");
        let Some(entry) = table.get_mut(key) else {
            return Ok(None);
        };
        let fresh = entry.generation == generation && entry.secret.is_none();
        match loaded {
            Some(Decoded::Login(login)) => {
                if fresh {
                    // The record is the whole login: it wins over the index.
                    entry.meta.server_url = login.server_url;
                    entry.meta.username = login.username;
                    entry.secret = Some(login.secret);
                    return Ok(Some(StoredCredential {
                        username: entry.meta.username.clone(),
                        secret: entry.secret.clone().expect("just set"),
                    }));
                }
                Ok(current(entry).or(Some(StoredCredential {
                    username: login.username,
                    secret: login.secret,
                })))
            }
            Some(Decoded::Legacy(secret)) => {
                if fresh {
                    entry.secret = Some(secret.clone());
                }
                Ok(current(entry).or(Some(StoredCredential {
                    username: entry.meta.username.clone(),
                    secret,
                })))
            }
            None => {
                tracing::warn!(key, "indexed credential is missing from the backend");
                Ok(None)
            }
        }
    }

    /// Stores a login; returns once it is durable.
    pub async fn store(&self, login: NewLogin) -> Result<(), WriteError> {
        let NewLogin {
            key,
            server_url,
            username,
            secret,
        } = login;
        self.write(key.into_string(), server_url, username, secret)
            .await
    }

    /// Stores the named secret `name` (already checked with
    /// [`named_secrets::check_name`]) under `secret:NAME`; returns once it is
    /// durable.
    pub async fn set_secret(&self, name: &str, secret: Secret) -> Result<(), WriteError> {
        let key = named_secrets::store_key(name);
        self.write(key.clone(), key, "secret".into(), secret).await
    }

    async fn write(
        &self,
        key: String,
        server_url: String,
        username: String,
        secret: Secret,
    ) -> Result<(), WriteError> {
        let sent_back = credentials_frame_len(&server_url, &username, &secret);
        let limit = MAX_FRAME - SERVER_URL_ROOM;
        if sent_back > limit {
            return Err(WriteError::TooLarge {
                sent_back,
                secret_len: secret.len(),
                limit,
            });
        }
        self.submit(Write::Store {
            key,
            server_url,
            username,
            secret,
        })
        .await
    }

    /// Erases what a store key (a registry key, or a named secret's
    /// `secret:NAME`) holds; returns once the erase is durable. Erasing a key
    /// that is not there succeeds.
    pub async fn erase(&self, key: impl Into<String>) -> Result<(), WriteError> {
        let key = key.into();
        if !self.table.read().expect("table lock").contains_key(&key) {
            return Ok(());
        }
        self.submit(Write::Erase { key }).await
    }

    async fn submit(&self, write: Write) -> Result<(), WriteError> {
        let (done, rx) = oneshot::channel();
        self.writer
            .send(Job { write, done })
            .map_err(|_| WriteError::ShuttingDown)?;
        match tokio::time::timeout(WRITE_ACK_TIMEOUT, rx).await {
            Ok(result) => result.map_err(|_| WriteError::WriterStopped)?,
            Err(_) => Err(WriteError::NotConfirmed {
                location: self.backend.location(),
                secs: WRITE_ACK_TIMEOUT.as_secs(),
            }),
        }
    }

    /// `{server URL as stored: username}`.
    pub fn list(&self) -> BTreeMap<String, String> {
        self.table
            .read()
            .expect("table lock")
            .iter()
            .filter(|(k, _)| !named_secrets::is_secret_key(k))
            .map(|(_, e)| (e.meta.server_url.clone(), e.meta.username.clone()))
            .collect()
    }

    pub fn entries(&self) -> Vec<EntryInfo> {
        let table = self.table.read().expect("table lock");
        let mut rows: Vec<EntryInfo> = table
            .iter()
            .filter(|(key, _)| !named_secrets::is_secret_key(key))
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

/// Named secrets as sources read them (`ctx.secrets`).
impl SecretLookup for CredentialTable {
    fn secret(&self, name: &str) -> BoxFuture<'_, Result<Option<Secret>, String>> {
        let key = named_secrets::store_key(name);
        Box::pin(async move {
            self.get(&key)
                .await
                .map(|c| c.map(|c| c.secret))
                .map_err(|e| e.to_string())
        })
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
        let now = now_unix();
        let result = if self.backend.is_atomic() {
            self.commit_atomic(&batch, now)
        } else {
            self.commit_logged(&batch, now)
        };
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

    /// File and memory: the backend first, all or nothing; the index then
    /// follows as a cache of the records, so failing to save it does not
    /// fail the write (the next start corrects it from the records).
    fn commit_atomic(&mut self, batch: &[Job], now: i64) -> Result<(), WriteError> {
        let ops = self.ops(batch, now);
        self.backend.apply(&ops)?;
        drop(ops);
        let undo = self.update_index(batch, now, false);
        drop(undo);
        if let Err(e) = self.index.save() {
            tracing::warn!(
                error = %e,
                "the index could not be saved; the store has the write, and the next start \
                 rebuilds the index from it"
            );
        }
        Ok(())
    }

    /// Keyring and keyutils: the write is recorded in the index as pending
    /// before the backend is touched, so that a crash in between is found
    /// and resolved at the next start. Once the backend confirms, the marks
    /// are cleared in memory; the next save writes that down.
    fn commit_logged(&mut self, batch: &[Job], now: i64) -> Result<(), WriteError> {
        let undo = self.update_index(batch, now, true);
        if let Err(e) = self.index.save() {
            self.rollback(undo);
            return Err(e.into());
        }
        let ops = self.ops(batch, now);
        if let Err(e) = self.backend.apply(&ops) {
            self.rollback(undo);
            return Err(e.into());
        }
        for job in batch {
            let key = job.write.key();
            match &job.write {
                Write::Store { .. } => {
                    if let Some(entry) = self.index.get_mut(key) {
                        entry.pending = None;
                    }
                }
                Write::Erase { .. } => {
                    self.index.remove(key);
                }
            }
        }
        Ok(())
    }

    /// The backend ops of a batch: each store is a whole login record.
    fn ops(&self, batch: &[Job], now: i64) -> Vec<Op> {
        batch
            .iter()
            .map(|job| match &job.write {
                Write::Store {
                    key,
                    server_url,
                    username,
                    secret,
                } => Op::Set(
                    key.clone(),
                    record::encode(server_url, username, now, secret),
                ),
                Write::Erase { key } => Op::Delete(key.clone()),
            })
            .collect()
    }

    /// Applies a batch to the in-memory index, marking each change pending
    /// when `pending`; returns what each changed key held before. (Not a
    /// clone of the whole index: that would make every store cost as much as
    /// the number of credentials.)
    fn update_index(
        &mut self,
        batch: &[Job],
        now: i64,
        pending: bool,
    ) -> Vec<(String, Option<IndexEntry>)> {
        let mut undo: Vec<(String, Option<IndexEntry>)> = Vec::with_capacity(batch.len());
        for job in batch {
            let key = job.write.key();
            let old = self.index.get(key).cloned();
            let prior = || {
                old.clone().map(|mut e| {
                    e.pending = None;
                    Box::new(e)
                })
            };
            match &job.write {
                Write::Store {
                    server_url,
                    username,
                    ..
                } => {
                    let entry = IndexEntry {
                        server_url: server_url.clone(),
                        username: username.clone(),
                        created: old.as_ref().map_or(now, |e| e.created),
                        updated: now,
                        pending: pending.then(|| Pending {
                            erase: false,
                            prior: prior(),
                        }),
                    };
                    self.index.insert(key.to_owned(), entry);
                }
                Write::Erase { .. } => match (&old, pending) {
                    (Some(entry), true) => {
                        let mut entry = entry.clone();
                        entry.pending = Some(Pending {
                            erase: true,
                            prior: prior(),
                        });
                        self.index.insert(key.to_owned(), entry);
                    }
                    _ => {
                        self.index.remove(key);
                    }
                },
            }
            undo.push((key.to_owned(), old));
        }
        undo
    }

    /// Puts back what [`update_index`](Writer::update_index) changed.
    fn rollback(&mut self, undo: Vec<(String, Option<IndexEntry>)>) {
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

/// The credential an entry serves now, if its secret is loaded.
fn current(entry: &Entry) -> Option<StoredCredential> {
    entry.secret.as_ref().map(|secret| StoredCredential {
        username: entry.meta.username.clone(),
        secret: secret.clone(),
    })
}

/// The size of the `Credentials` frame a `get` of this login answers with.
fn credentials_frame_len(server_url: &str, username: &str, secret: &Secret) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let answer = Response::Credentials {
        server_url: server_url.to_owned(),
        username: username.to_owned(),
        secret: secret.clone(),
    };
    let mut count = Count(0);
    serde_json::to_writer(&mut count, &answer).expect("a response always serialises");
    count.0
}

/// The table of a backend that handed over every record (file, memory), and
/// the index corrected to match the records.
fn from_records(
    backend: &dyn Backend,
    index: &mut Index,
    all: Vec<(String, Secret)>,
) -> Result<HashMap<String, Entry>, StoreError> {
    let mut table = HashMap::with_capacity(all.len());
    let mut orphans = 0usize;
    let mut changed = false;
    for (key, value) in all {
        match record::decode(value) {
            Ok(Decoded::Login(login)) => {
                let meta = IndexEntry {
                    server_url: login.server_url,
                    username: login.username,
                    created: index.get(&key).map_or(login.updated, |e| e.created),
                    updated: login.updated,
                    pending: None,
                };
                if index.get(&key) != Some(&meta) {
                    index.insert(key.clone(), meta.clone());
                    changed = true;
                }
                table.insert(key, entry(meta, login.secret));
            }
            Ok(Decoded::Legacy(secret)) => {
                // A value from before records: its login is the entry's, or,
                // when a write over it was pending, the entry before that
                // write (which never reached this value).
                let meta = index.get(&key).and_then(|e| match &e.pending {
                    None => Some(e.clone()),
                    Some(p) => p.prior.as_deref().cloned(),
                });
                match meta {
                    Some(meta) => {
                        if index.get(&key) != Some(&meta) {
                            index.insert(key.clone(), meta.clone());
                            changed = true;
                        }
                        table.insert(key, entry(meta, secret));
                    }
                    None => orphans += 1,
                }
            }
            Err(why) => {
                return Err(StoreError::Corrupt(format!(
                    "the entry for {key} in {} cannot be read ({why}); it was left as it is. \
                     Restore the store from a backup, or move it aside and log in again",
                    backend.location()
                )));
            }
        }
    }
    if orphans > 0 {
        if let Some(path) = index.path().filter(|_| !index.was_found()) {
            return Err(StoreError::Corrupt(format!(
                "the index {} is missing, and {orphans} login(s) in {} were written by an \
                 older regent, which kept their usernames only in the index, so it cannot be \
                 rebuilt. Restore the index from a backup; or, to start over without those \
                 logins, move the store aside and log in again",
                path.display(),
                backend.location()
            )));
        }
        tracing::debug!(
            count = orphans,
            "secrets without an index entry are ignored (an interrupted store)"
        );
    }
    let gone: Vec<String> = index
        .iter()
        .filter(|(key, _)| !table.contains_key(*key))
        .map(|(key, _)| key.clone())
        .collect();
    for key in &gone {
        tracing::info!(
            key,
            "the index listed a login the store does not hold (an interrupted store or erase); \
             dropped from the index"
        );
        index.remove(key);
        changed = true;
    }
    if !index.was_found() && !table.is_empty() {
        tracing::warn!(
            entries = table.len(),
            "the index was missing; rebuilt from the records in the store"
        );
    }
    if changed && let Err(e) = index.save() {
        tracing::warn!(error = %e, "the corrected index could not be saved; using it in memory");
    }
    Ok(table)
}

/// The values of every indexed key, for a backend whose reads cost next to
/// nothing (keyutils), so that it is checked at start-up like the file store.
fn read_indexed(backend: &dyn Backend, index: &Index) -> Result<Vec<(String, Secret)>, StoreError> {
    let mut all = Vec::with_capacity(index.len());
    for (key, _) in index.iter() {
        if let Some(value) = backend.get(key)? {
            all.push((key.clone(), value));
        }
    }
    Ok(all)
}

fn entry(meta: IndexEntry, secret: Secret) -> Entry {
    Entry {
        meta,
        secret: Some(secret),
        generation: 0,
    }
}

/// Settles the writes a crash left pending (keyring, keyutils): each such
/// key is read back and its entry set to what the backend holds, whole.
/// A key that cannot be read now stays pending; its first `get` reads the
/// record anyway.
fn resolve_pending(backend: &dyn Backend, index: &mut Index) {
    let pending: Vec<String> = index
        .iter()
        .filter(|(_, e)| e.pending.is_some())
        .map(|(k, _)| k.clone())
        .collect();
    if pending.is_empty() {
        return;
    }
    for key in &pending {
        let Some(entry) = index.get(key).cloned() else {
            continue;
        };
        let prior = entry.pending.as_ref().and_then(|p| p.prior.clone());
        let settled = match backend.get(key).map(|v| v.map(record::decode)) {
            Ok(None) => None,
            Ok(Some(Ok(Decoded::Login(login)))) => Some(IndexEntry {
                server_url: login.server_url,
                username: login.username,
                created: prior.as_ref().map_or(entry.created, |p| p.created),
                updated: login.updated,
                pending: None,
            }),
            // A value from before records: the write never reached it.
            Ok(Some(Ok(Decoded::Legacy(_)))) => prior.map(|p| *p),
            Ok(Some(Err(why))) => {
                tracing::warn!(key, error = %why, "cannot settle an interrupted write");
                continue;
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot settle an interrupted write yet");
                continue;
            }
        };
        tracing::info!(
            key,
            kept = settled.is_some(),
            "settled a write interrupted by a crash"
        );
        match settled {
            Some(e) => {
                index.insert(key.clone(), e);
            }
            None => {
                index.remove(key);
            }
        }
    }
    if let Err(e) = index.save() {
        tracing::warn!(error = %e, "the settled index could not be saved; using it in memory");
    }
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryBackend;

    /// The memory backend, seen as a keyring: one op at a time, no
    /// `load_all`, so the write-ahead path and settling are used.
    struct OneAtATime(MemoryBackend);

    impl Backend for OneAtATime {
        fn kind(&self) -> StoreKind {
            StoreKind::Keyring
        }
        fn location(&self) -> String {
            "test keyring".into()
        }
        fn get(&self, key: &str) -> Result<Option<Secret>, StoreError> {
            self.0.get(key)
        }
        fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
            self.0.apply(ops)
        }
        fn is_atomic(&self) -> bool {
            false
        }
    }

    fn meta(url: &str, user: &str, pending: Option<Pending>) -> IndexEntry {
        IndexEntry {
            server_url: url.into(),
            username: user.into(),
            created: 5,
            updated: 6,
            pending,
        }
    }

    fn index_at(dir: &tempfile::TempDir, entries: &[(&str, IndexEntry)]) -> Index {
        let mut index = Index::load(Some(dir.path().join("index.json"))).unwrap();
        for (key, entry) in entries {
            index.insert((*key).to_owned(), entry.clone());
        }
        index.save().unwrap();
        Index::load(Some(dir.path().join("index.json"))).unwrap()
    }

    fn set(backend: &dyn Backend, key: &str, value: Secret) {
        backend.apply(&[Op::Set(key.into(), value)]).unwrap();
    }

    fn login(key: &str, server_url: &str, username: &str, secret: &str) -> NewLogin {
        NewLogin {
            key: regent_shared::registry::canonical(key).unwrap(),
            server_url: server_url.into(),
            username: username.into(),
            secret: Secret::from(secret),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn secrets_from_before_records_are_served_and_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(MemoryBackend::new());
        set(&*backend, "old.example", Secret::from("legacy-secret"));
        let index = index_at(
            &dir,
            &[("old.example", meta("old.example", "olduser", None))],
        );
        let creds = CredentialTable::open(backend.clone(), index).unwrap();
        let rt = runtime();
        let got = rt.block_on(creds.get("old.example")).unwrap().unwrap();
        assert_eq!(got.username, "olduser");
        assert_eq!(got.secret.expose(), "legacy-secret");

        rt.block_on(creds.store(login(
            "old.example",
            "https://old.example",
            "newuser",
            "new-secret",
        )))
        .unwrap();
        let value = backend.get("old.example").unwrap().unwrap();
        match record::decode(value).unwrap() {
            Decoded::Login(login) => {
                assert_eq!(login.username, "newuser");
                assert_eq!(login.server_url, "https://old.example");
                assert_eq!(login.secret.expose(), "new-secret");
            }
            Decoded::Legacy(_) => panic!("the store did not write a record"),
        }
    }

    #[test]
    fn pending_writes_settle_to_what_the_backend_holds() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(OneAtATime(MemoryBackend::new()));
        // A store that reached the backend before the crash.
        set(
            &*backend,
            "done.example",
            record::encode("done.example", "new", 9, &Secret::from("s-new")),
        );
        // A store that did not: the backend still has the old record.
        set(
            &*backend,
            "undone.example",
            record::encode("undone.example", "old", 3, &Secret::from("s-old")),
        );
        // An erase that reached the backend; one that did not.
        set(
            &*backend,
            "kept.example",
            record::encode("kept.example", "kept", 3, &Secret::from("s-kept")),
        );
        // A store over a value from before records that did not land.
        set(&*backend, "legacy.example", Secret::from("s-legacy"));
        let pending = |erase: bool, prior: Option<IndexEntry>| {
            Some(Pending {
                erase,
                prior: prior.map(Box::new),
            })
        };
        let index = index_at(
            &dir,
            &[
                (
                    "done.example",
                    meta("done.example", "new", pending(false, None)),
                ),
                (
                    "undone.example",
                    meta(
                        "undone.example",
                        "new",
                        pending(false, Some(meta("undone.example", "old", None))),
                    ),
                ),
                (
                    "erased.example",
                    meta("erased.example", "x", pending(true, None)),
                ),
                (
                    "kept.example",
                    meta("kept.example", "kept", pending(true, None)),
                ),
                (
                    "legacy.example",
                    meta(
                        "legacy.example",
                        "new",
                        pending(false, Some(meta("legacy.example", "legacy-user", None))),
                    ),
                ),
            ],
        );
        let creds = CredentialTable::open(backend, index).unwrap();
        let list = creds.list();
        assert_eq!(list.get("done.example").map(String::as_str), Some("new"));
        assert_eq!(list.get("undone.example").map(String::as_str), Some("old"));
        assert_eq!(list.get("kept.example").map(String::as_str), Some("kept"));
        assert_eq!(
            list.get("legacy.example").map(String::as_str),
            Some("legacy-user")
        );
        assert!(!list.contains_key("erased.example"), "{list:?}");

        let rt = runtime();
        let got = rt.block_on(creds.get("undone.example")).unwrap().unwrap();
        assert_eq!(
            (got.username.as_str(), got.secret.expose()),
            ("old", "s-old")
        );
        let got = rt.block_on(creds.get("legacy.example")).unwrap().unwrap();
        assert_eq!(
            (got.username.as_str(), got.secret.expose()),
            ("legacy-user", "s-legacy")
        );

        // Settled on disk too: no pending mark left.
        let text = std::fs::read_to_string(dir.path().join("index.json")).unwrap();
        assert!(!text.contains("pending"), "{text}");
    }

    #[test]
    fn a_write_is_pending_in_the_index_before_the_keyring_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        let backend = Arc::new(OneAtATime(MemoryBackend::new()));
        let creds =
            CredentialTable::open(backend, Index::load(Some(path.clone())).unwrap()).unwrap();
        let rt = runtime();
        rt.block_on(creds.store(login("a", "a", "u", "s"))).unwrap();
        // The save before the write carries the mark; it is cleared in
        // memory and written down with the next save.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"pending\""), "{text}");
        rt.block_on(creds.store(login("b", "b", "u", "s"))).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(json["entries"]["a"].get("pending").is_none(), "{text}");
        assert!(json["entries"]["b"].get("pending").is_some(), "{text}");
    }

    /// The memory backend, atomic or one op at a time, that records every
    /// `apply` and refuses them while `fail` is set.
    struct Recording {
        inner: MemoryBackend,
        atomic: bool,
        fail: std::sync::atomic::AtomicBool,
        applied: std::sync::Mutex<Vec<Vec<String>>>,
    }

    impl Recording {
        fn new(atomic: bool) -> Arc<Recording> {
            Arc::new(Recording {
                inner: MemoryBackend::new(),
                atomic,
                fail: Default::default(),
                applied: Default::default(),
            })
        }

        fn fail(&self, fail: bool) {
            self.fail.store(fail, std::sync::atomic::Ordering::SeqCst);
        }

        /// Each `apply` so far, as `set KEY` / `del KEY` lines.
        fn applied(&self) -> Vec<Vec<String>> {
            self.applied.lock().unwrap().clone()
        }
    }

    impl Backend for Recording {
        fn kind(&self) -> StoreKind {
            if self.atomic {
                StoreKind::Memory
            } else {
                StoreKind::Keyring
            }
        }
        fn location(&self) -> String {
            "test store".into()
        }
        fn get(&self, key: &str) -> Result<Option<Secret>, StoreError> {
            self.inner.get(key)
        }
        fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Io("the test store is full".into()));
            }
            let names = ops
                .iter()
                .map(|op| match op {
                    Op::Set(key, _) => format!("set {key}"),
                    Op::Delete(key) => format!("del {key}"),
                })
                .collect();
            self.applied.lock().unwrap().push(names);
            self.inner.apply(ops)
        }
        fn is_atomic(&self) -> bool {
            self.atomic
        }
    }

    /// A writer over `backend` with an empty table and an index in memory,
    /// driven by the test itself rather than by a thread of its own.
    fn writer(backend: Arc<dyn Backend>) -> Writer {
        Writer {
            backend,
            table: Arc::new(RwLock::new(HashMap::new())),
            index: Index::memory(),
            generation: 0,
        }
    }

    type Answer = oneshot::Receiver<Result<(), WriteError>>;

    fn store_job(key: &str, username: &str, secret: &str) -> (Job, Answer) {
        let (done, answer) = oneshot::channel();
        let write = Write::Store {
            key: key.into(),
            server_url: format!("https://{key}"),
            username: username.into(),
            secret: Secret::from(secret),
        };
        (Job { write, done }, answer)
    }

    fn erase_job(key: &str) -> (Job, Answer) {
        let (done, answer) = oneshot::channel();
        let write = Write::Erase { key: key.into() };
        (Job { write, done }, answer)
    }

    /// Runs the writer until every job queued has been answered.
    fn run_queued(writer: Writer, jobs: Vec<Job>) {
        let (tx, rx) = std_mpsc::channel();
        for job in jobs {
            tx.send(job).unwrap();
        }
        drop(tx);
        writer.run(rx);
    }

    fn answer(mut rx: Answer) -> Result<(), WriteError> {
        rx.try_recv().expect("the write was answered")
    }

    /// `(username, secret)` of every key in the table.
    fn table_of(table: &Table) -> BTreeMap<String, (String, String)> {
        table
            .read()
            .unwrap()
            .iter()
            .map(|(key, e)| {
                let secret = e.secret.as_ref().map_or("", |s| s.expose()).to_owned();
                (key.clone(), (e.meta.username.clone(), secret))
            })
            .collect()
    }

    fn pair(username: &str, secret: &str) -> (String, String) {
        (username.into(), secret.into())
    }

    #[test]
    fn waiting_writes_go_to_an_atomic_backend_as_one_batch_in_order() {
        let backend = Recording::new(true);
        let writer = writer(backend.clone());
        let table = writer.table.clone();
        let (jobs, answers): (Vec<_>, Vec<_>) = [
            store_job("a.example", "u1", "s1"),
            store_job("b.example", "u2", "s2"),
            erase_job("a.example"),
            store_job("c.example", "u3", "s3"),
            store_job("a.example", "u4", "s4"),
            store_job("c.example", "u5", "s5"),
        ]
        .into_iter()
        .unzip();
        run_queued(writer, jobs);

        assert_eq!(
            backend.applied(),
            [[
                "set a.example",
                "set b.example",
                "del a.example",
                "set c.example",
                "set a.example",
                "set c.example"
            ]],
            "one apply, in arrival order"
        );
        for answer_rx in answers {
            answer(answer_rx).unwrap();
        }
        // The last write of each key wins, in the table and in the backend.
        assert_eq!(
            table_of(&table),
            BTreeMap::from([
                ("a.example".to_owned(), pair("u4", "s4")),
                ("b.example".to_owned(), pair("u2", "s2")),
                ("c.example".to_owned(), pair("u5", "s5")),
            ])
        );
        let stored = backend.get("c.example").unwrap().unwrap();
        match record::decode(stored).unwrap() {
            Decoded::Login(login) => {
                assert_eq!(
                    (login.username.as_str(), login.secret.expose()),
                    ("u5", "s5")
                );
                assert_eq!(login.server_url, "https://c.example");
            }
            Decoded::Legacy(_) => panic!("not a record"),
        }
    }

    #[test]
    fn a_backend_that_takes_one_op_at_a_time_gets_one_write_per_call() {
        let backend = Recording::new(false);
        let writer = writer(backend.clone());
        let (jobs, answers): (Vec<_>, Vec<_>) = [
            store_job("a.example", "u1", "s1"),
            store_job("b.example", "u2", "s2"),
            erase_job("a.example"),
        ]
        .into_iter()
        .unzip();
        run_queued(writer, jobs);
        assert_eq!(
            backend.applied(),
            [["set a.example"], ["set b.example"], ["del a.example"]]
        );
        for answer_rx in answers {
            answer(answer_rx).unwrap();
        }
    }

    /// A failed batch leaves the table and the index as they were, and
    /// every write in it hears the backend's reason.
    fn a_failed_batch_changes_nothing(atomic: bool) {
        let backend = Recording::new(atomic);
        let mut writer = writer(backend.clone());
        let (first, first_answer) = store_job("a.example", "old", "s-old");
        let (second, second_answer) = store_job("b.example", "b", "s-b");
        writer.commit(vec![first, second]);
        answer(first_answer).unwrap();
        answer(second_answer).unwrap();
        let table_before = table_of(&writer.table);
        let index_before: Vec<(String, IndexEntry)> = writer
            .index
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();

        backend.fail(true);
        let (jobs, answers): (Vec<_>, Vec<_>) = [
            store_job("a.example", "new", "s-new"),
            erase_job("b.example"),
            store_job("c.example", "c", "s-c"),
            // A key changed twice in the batch still ends as it began.
            erase_job("a.example"),
        ]
        .into_iter()
        .unzip();
        writer.commit(jobs);
        for answer_rx in answers {
            let err = answer(answer_rx).unwrap_err();
            assert!(
                matches!(err, WriteError::Store(StoreError::Io(_))),
                "{err:?}"
            );
            assert_eq!(err.to_string(), "the test store is full");
        }
        assert_eq!(table_of(&writer.table), table_before);
        let index_after: Vec<(String, IndexEntry)> = writer
            .index
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        assert_eq!(index_after, index_before);

        // The next batch is applied as usual.
        backend.fail(false);
        let (job, answer_rx) = store_job("c.example", "c", "s-c");
        writer.commit(vec![job]);
        answer(answer_rx).unwrap();
        assert_eq!(table_of(&writer.table).len(), 3);
    }

    #[test]
    fn a_failed_batch_changes_nothing_in_an_atomic_backend() {
        a_failed_batch_changes_nothing(true);
    }

    #[test]
    fn a_failed_batch_changes_nothing_in_a_one_op_backend() {
        a_failed_batch_changes_nothing(false);
    }

    #[test]
    fn the_table_reads_named_secrets_for_sources() {
        let creds = Arc::new(
            CredentialTable::open(Arc::new(MemoryBackend::new()), Index::memory()).unwrap(),
        );
        let rt = runtime();
        rt.block_on(creds.set_secret("corp-token", Secret::from("t0ken")))
            .unwrap();
        let lookup: Arc<dyn SecretLookup> = creds.clone();
        let got = rt.block_on(lookup.secret("corp-token")).unwrap().unwrap();
        assert_eq!(got.expose(), "t0ken");
        assert!(rt.block_on(lookup.secret("other")).unwrap().is_none());
        assert_eq!(creds.secret_names(), ["corp-token"]);
        assert!(creds.list().is_empty(), "a named secret is no login");
    }

    #[test]
    fn write_errors_read_as_before() {
        let too_large = WriteError::TooLarge {
            sent_back: 2_000_000,
            secret_len: 1_999_000,
            limit: 1_047_552,
        };
        assert_eq!(
            too_large.to_string(),
            "the login is 2000000 bytes as `get` would send it back (the secret is 1999000 \
             bytes), more than the 1047552 bytes that fit in one answer; nothing was stored"
        );
        let late = WriteError::NotConfirmed {
            location: "the keyring".into(),
            secs: 20,
        };
        assert_eq!(
            late.to_string(),
            "the keyring did not confirm the write within 20 s (locked behind an unlock prompt, \
             or not answering); it may still complete: check with `regent ls`, or use \
             REGENT_STORE=file"
        );
        assert_eq!(
            WriteError::ShuttingDown.to_string(),
            "the agent is shutting down; try again"
        );
        assert_eq!(
            WriteError::WriterStopped.to_string(),
            "the agent's writer stopped; see the agent log"
        );
    }

    #[test]
    fn a_login_too_large_to_send_back_is_refused_before_any_write() {
        let backend = Recording::new(true);
        let creds = CredentialTable::open(backend.clone(), Index::memory()).unwrap();
        let rt = runtime();
        let big = "x".repeat(MAX_FRAME);
        let err = rt
            .block_on(creds.store(login("a.example", "a.example", "u", &big)))
            .unwrap_err();
        assert!(matches!(err, WriteError::TooLarge { .. }), "{err:?}");
        assert!(backend.applied().is_empty());
    }
}
