//! The file backend: every secret in one AES-256-GCM encrypted file,
//! `<data_dir>/secrets.enc`.
//!
//! # Format
//!
//! ```text
//! offset  size  field
//!      0     8  magic "REGENTSF"
//!      8     1  format version (1)
//!      9     1  where the key lives: 1 = keyring, 2 = key file, 3 = REGENT_MASTER_KEY
//!     10     8  key fingerprint: the first 8 bytes of SHA-256(master key)
//!     18    12  nonce, fresh and random for every write
//!     30     n  ciphertext of the plaintext (n = its length)
//!   30+n    16  GCM tag
//! ```
//!
//! The 18 header bytes are the associated data of the AEAD, so a changed
//! header is detected like a changed ciphertext. The plaintext is a JSON
//! object mapping each canonical key to its value as a string (the whole
//! login, see [`super::record`]). Plaintext buffers are wiped after use.
//!
//! # The master key
//!
//! 32 random bytes, found in this order:
//!
//! 1. `REGENT_MASTER_KEY`, base64 of exactly 32 bytes, when set;
//! 2. for an existing `secrets.enc`, where its header says: the OS keyring
//!    (service = regent's [internal service](super::keyring::internal_service),
//!    `regent:internal`, user `file-master-key`; a key an older regent kept
//!    among the registry logins, service `regent`, is moved there once its
//!    fingerprint matches) or the key file
//!    `<config_dir>/master.key` (base64, mode 0600). A missing key is an error;
//!    a new key is never generated for an existing file;
//! 3. for a new store: an existing key file, else the keyring if [`probe`]
//!    says it works, else a new random key in a new key file.
//!
//! A key whose fingerprint differs from the header is refused before any
//! decryption; a file that does not decrypt is [`StoreError::Corrupt`]. In
//! both cases the file is left as it is.
//!
//! # Durability
//!
//! Every [`apply`](Backend::apply) encrypts the whole new map and replaces
//! the file with `write_atomic`; the in-memory copy changes only after the
//! write succeeded. So a batch of ops is all-or-nothing, and after a crash
//! the file holds either the old or the new set of secrets. A new store is
//! written (empty) when it is opened, which pins its key source.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{AeadInPlace, KeyInit, OsRng};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use regent_shared::Secret;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::atomic::{create_new_atomic, write_atomic};
use super::backend::{Backend, Op, StoreError, StoreKind, apply_to_map, snapshot};
use super::keyring::{KeyringBackend, OS_KEYRING_NAME, internal_service, probe, run_with_timeout};

use crate::environ::MASTER_KEY_ENV;

/// The encrypted file, in the data directory.
pub const SECRETS_FILE: &str = "secrets.enc";
/// The key file, in the config directory.
pub const KEY_FILE: &str = "master.key";
/// The keyring user name of the master key entry.
pub const KEYRING_KEY_USER: &str = "file-master-key";

const MAGIC: &[u8; 8] = b"REGENTSF";
const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 18;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// Far more than any realistic set of secrets; protects against reading a
/// wrong, huge file into memory.
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
const MAX_KEY_FILE_BYTES: u64 = 4096;
/// How long a new store waits for the keyring to prove it works.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long to wait for the keyring to hand over the master key (it may
/// show an unlock prompt to the user).
const KEYRING_KEY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a key is (for `REGENT_MASTER_KEY`).
const KEY_HINT: &str = "it must be base64 of 32 bytes: the key the store was written with, or \
                        for a new store a random one (`openssl rand -base64 32`)";

/// What to do about a bad key file when no store uses it yet.
const NEW_KEY_HINT: &str = "remove it and regent makes a new one, or put in a key of your \
                            own (`openssl rand -base64 32`)";

/// What to do about a bad or lost key of an existing store: a new key can
/// never decrypt it.
/// `damaged`: a key file that is there but unusable, which starting over
/// also has to remove.
fn lost_key_advice(store: &Path, damaged: Option<&Path>) -> String {
    let dir = store.parent().unwrap_or(Path::new("."));
    let damaged = damaged
        .map(|k| format!("; mv {k} {k}.lost", k = k.display()))
        .unwrap_or_default();
    let index = super::select::index_path(dir, StoreKind::File)
        .unwrap_or_else(|| dir.join("index-file.json"));
    format!(
        "{} can only be decrypted with the key it was written with: restore that key (from a \
         backup, or set {MASTER_KEY_ENV}). If the key is lost, so are the logins in it: to \
         start over with an empty store, move it and its index aside (`mv {p} {p}.lost; \
         mv {i} {i}.lost{damaged}`) and log in again; regent then makes a new key",
        store.display(),
        p = store.display(),
        i = index.display()
    )
}

/// Where the master key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The OS keyring, entry (service, [`KEYRING_KEY_USER`]).
    Keyring { service: String },
    /// A base64 key file.
    KeyFile(PathBuf),
    /// The `REGENT_MASTER_KEY` environment variable.
    Env,
}

impl KeySource {
    /// The id written in the file header.
    fn id(&self) -> u8 {
        match self {
            KeySource::Keyring { .. } => 1,
            KeySource::KeyFile(_) => 2,
            KeySource::Env => 3,
        }
    }

    /// Where the key is, in words.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Keyring { service } => format!(
                "master key in {OS_KEYRING_NAME}, service \"{}\", entry \
                 \"{KEYRING_KEY_USER}\"",
                internal_service(service)
            ),
            KeySource::KeyFile(path) => format!("master key in the key file {}", path.display()),
            KeySource::Env => format!("master key from {MASTER_KEY_ENV}"),
        }
    }
}

/// A 256-bit master key, wiped when dropped. No `Debug`, on purpose.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    /// 32 bytes from the OS random number generator.
    pub fn generate() -> Result<MasterKey, StoreError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.try_fill_bytes(&mut key[..]).map_err(|e| {
            StoreError::Io(format!(
                "the OS random number generator failed ({e}); retry"
            ))
        })?;
        Ok(MasterKey(key))
    }

    /// Decodes base64 text (surrounding whitespace allowed) of exactly 32
    /// bytes. The error never quotes the text.
    pub fn from_base64(text: &str) -> Result<MasterKey, String> {
        let bytes = Zeroizing::new(
            BASE64
                .decode(text.trim())
                .map_err(|_| "it is not valid base64".to_owned())?,
        );
        if bytes.len() != KEY_LEN {
            return Err(format!(
                "it decodes to {} bytes instead of {KEY_LEN}",
                bytes.len()
            ));
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&bytes);
        Ok(MasterKey(key))
    }

    fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(&self.0[..]))
    }

    /// The first 8 bytes of SHA-256 of the key.
    fn fingerprint(&self) -> [u8; 8] {
        let digest = Sha256::digest(&self.0[..]);
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        out
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(GenericArray::from_slice(&self.0[..]))
    }
}

/// How [`FileBackend::open_with`] finds its master key. [`FileBackend::open`]
/// fills it from the environment; tests pass values directly.
pub struct KeyOptions<'a> {
    /// The value of `REGENT_MASTER_KEY`, if set.
    pub env_key: Option<&'a str>,
    /// The keyring service for the master key entry; `None` never touches
    /// the keyring (a file whose header says keyring is then an error).
    pub keyring_service: Option<&'a str>,
}

/// Secrets in one encrypted file. See the module documentation.
pub struct FileBackend {
    path: PathBuf,
    source: KeySource,
    /// The header of every write (and the associated data).
    header: [u8; HEADER_LEN],
    cipher: Aes256Gcm,
    secrets: Mutex<HashMap<String, Secret>>,
}

impl FileBackend {
    /// Opens `<data_dir>/secrets.enc`, or creates an empty one, finding the
    /// master key as the module documentation says (`REGENT_MASTER_KEY`, as
    /// [`crate::environ::master_key`] hands it over). Blocks, possibly on
    /// the keyring.
    pub fn open(
        data_dir: &Path,
        config_dir: &Path,
        keyring_service: &str,
    ) -> Result<FileBackend, StoreError> {
        // The agent has it from REGENT_MASTER_KEY_FD, never from its
        // environment (see `crate::environ`).
        let env_key = match crate::environ::master_key() {
            None => None,
            Some(value) => Some(Zeroizing::new(
                std::str::from_utf8(&value)
                    .map_err(|_| {
                        StoreError::Access(format!(
                            "{MASTER_KEY_ENV} is not valid base64 of 32 bytes (it is not even \
                             text); {KEY_HINT}"
                        ))
                    })?
                    .to_owned(),
            )),
        };
        FileBackend::open_with(
            data_dir,
            config_dir,
            &KeyOptions {
                env_key: env_key.as_ref().map(|s| s.as_str()),
                keyring_service: Some(keyring_service),
            },
        )
    }

    /// [`open`](FileBackend::open) with the environment and keyring spelled out.
    pub fn open_with(
        data_dir: &Path,
        config_dir: &Path,
        options: &KeyOptions<'_>,
    ) -> Result<FileBackend, StoreError> {
        let path = data_dir.join(SECRETS_FILE);
        let key_file = config_dir.join(KEY_FILE);
        let env_key = match options.env_key {
            Some(text) => Some(MasterKey::from_base64(text).map_err(|why| {
                StoreError::Access(format!("{MASTER_KEY_ENV} is not usable: {why}; {KEY_HINT}"))
            })?),
            None => None,
        };

        match read_file(&path)? {
            Some(bytes) => open_existing(path, bytes, env_key, &key_file, options),
            None => create_new(path, env_key, &key_file, options),
        }
    }

    /// The encrypted file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where this process got the master key from.
    pub fn key_source(&self) -> &KeySource {
        &self.source
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Secret>> {
        // The map is only swapped in whole operations; a poisoned lock is safe.
        self.secrets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encrypts `secrets` into the complete file contents.
    fn seal(&self, secrets: &BTreeMap<&str, &str>) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let encode_err = |e: serde_json::Error| {
            StoreError::Io(format!(
                "cannot encode the secrets for {} (error at column {})",
                self.path.display(),
                e.column()
            ))
        };
        // Size the buffer exactly first, so it never reallocates and leaves
        // a copy of plaintext behind in freed memory.
        let mut counter = ByteCounter(0);
        serde_json::to_writer(&mut counter, secrets).map_err(encode_err)?;
        let body = HEADER_LEN + NONCE_LEN;
        let mut out = Zeroizing::new(Vec::with_capacity(body + counter.0 + TAG_LEN));
        out.extend_from_slice(&self.header);
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.try_fill_bytes(&mut nonce).map_err(|e| {
            StoreError::Io(format!(
                "the OS random number generator failed ({e}); retry"
            ))
        })?;
        out.extend_from_slice(&nonce);
        serde_json::to_writer(&mut *out, secrets).map_err(encode_err)?;
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                GenericArray::from_slice(&nonce),
                &self.header,
                &mut out[body..],
            )
            .map_err(|_| {
                StoreError::Io(format!(
                    "cannot encrypt the secrets for {}",
                    self.path.display()
                ))
            })?;
        out.extend_from_slice(&tag);
        Ok(out)
    }
}

impl Backend for FileBackend {
    fn kind(&self) -> StoreKind {
        StoreKind::File
    }

    fn location(&self) -> String {
        format!(
            "{} (AES-256-GCM; {})",
            self.path.display(),
            self.source.describe()
        )
    }

    fn get(&self, key: &str) -> Result<Option<Secret>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut secrets = self.lock();
        {
            let mut next: BTreeMap<&str, &str> = secrets
                .iter()
                .map(|(k, v)| (k.as_str(), v.expose()))
                .collect();
            for op in ops {
                match op {
                    Op::Set(key, secret) => {
                        next.insert(key, secret.expose());
                    }
                    Op::Delete(key) => {
                        next.remove(key.as_str());
                    }
                }
            }
            let sealed = self.seal(&next)?;
            write_atomic(&self.path, &sealed)?;
        }
        // Durable: now the memory copy may follow.
        apply_to_map(&mut secrets, ops);
        Ok(())
    }

    fn is_atomic(&self) -> bool {
        true
    }

    fn load_all(&self) -> Result<Option<Vec<(String, Secret)>>, StoreError> {
        Ok(Some(snapshot(&self.lock())))
    }
}

/// Counts what serde_json would write.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The whole file, or `None` when it does not exist.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let read = fs::metadata(path).and_then(|meta| {
        if !meta.is_file() {
            return Err(io::Error::other("it is not a regular file"));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(io::Error::other(format!(
                "it is {} bytes, far more than a secrets file can be",
                meta.len()
            )));
        }
        fs::read(path)
    });
    match read {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io(format!(
            "cannot read {}: {e}; check it (it should be your file, mode 0600), or move it \
             aside and log in again",
            path.display()
        ))),
    }
}

fn corrupt(path: &Path, why: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "{} cannot be read back: {why}. It was left as it is; restore it from a backup, or move \
         it aside (e.g. `mv {p} {p}.bad`) and log in again",
        path.display(),
        p = path.display()
    ))
}

/// The header fields of an existing file, checked.
struct Header {
    source_id: u8,
    fingerprint: [u8; 8],
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header, StoreError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(corrupt(
            path,
            "it is not a regent secrets file (wrong magic bytes)",
        ));
    }
    if bytes[8] != FORMAT_VERSION {
        return Err(StoreError::Corrupt(format!(
            "{} has format version {}, but this regent reads only version {FORMAT_VERSION}; it \
             was left as it is. Upgrade regent",
            path.display(),
            bytes[8]
        )));
    }
    let source_id = bytes[9];
    if !(1..=3).contains(&source_id) {
        return Err(corrupt(path, "its header names an unknown key source"));
    }
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[10..18]);
    Ok(Header {
        source_id,
        fingerprint,
    })
}

fn header_bytes(source_id: u8, fingerprint: &[u8; 8]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8] = FORMAT_VERSION;
    header[9] = source_id;
    header[10..].copy_from_slice(fingerprint);
    header
}

fn open_existing(
    path: PathBuf,
    bytes: Vec<u8>,
    env_key: Option<MasterKey>,
    key_file: &Path,
    options: &KeyOptions<'_>,
) -> Result<FileBackend, StoreError> {
    let header = parse_header(&path, &bytes)?;
    let (key, source) = match env_key {
        Some(key) => (key, KeySource::Env),
        None => match header.source_id {
            1 => {
                let Some(service) = options.keyring_service else {
                    return Err(StoreError::Unavailable(format!(
                        "{} is encrypted with a master key kept in the keyring, which is not \
                         used here; set {MASTER_KEY_ENV} to that key",
                        path.display()
                    )));
                };
                let key = keyring_key_for_existing(&path, service, &header.fingerprint)?;
                (
                    key,
                    KeySource::Keyring {
                        service: service.to_owned(),
                    },
                )
            }
            2 => match read_key_file(key_file, Some(&path))? {
                Some(key) => (key, KeySource::KeyFile(key_file.to_path_buf())),
                None => {
                    return Err(StoreError::Access(format!(
                        "{} is encrypted with the key in {}, but that key file is missing. {}",
                        path.display(),
                        key_file.display(),
                        lost_key_advice(&path, None)
                    )));
                }
            },
            _ => {
                return Err(StoreError::Access(format!(
                    "{} is encrypted with a master key from {MASTER_KEY_ENV}, which is not set; \
                     set it to the same key",
                    path.display()
                )));
            }
        },
    };

    if key.fingerprint() != header.fingerprint {
        return Err(StoreError::Access(format!(
            "the {} does not match {} (it was encrypted with another key); the file was left \
             as it is. {}",
            source.describe(),
            path.display(),
            lost_key_advice(&path, None)
        )));
    }

    let cipher = key.cipher();
    let secrets = unseal(&path, &cipher, bytes)?;
    // Keep the header's key source: an environment override does not move
    // the key's home.
    let header = header_bytes(header.source_id, &header.fingerprint);
    Ok(FileBackend {
        path,
        source,
        header,
        cipher,
        secrets: Mutex::new(secrets),
    })
}

fn create_new(
    path: PathBuf,
    env_key: Option<MasterKey>,
    key_file: &Path,
    options: &KeyOptions<'_>,
) -> Result<FileBackend, StoreError> {
    let (key, source) = match env_key {
        Some(key) => (key, KeySource::Env),
        None => new_store_key(key_file, options)?,
    };
    let backend = FileBackend {
        header: header_bytes(source.id(), &key.fingerprint()),
        cipher: key.cipher(),
        path,
        source,
        secrets: Mutex::new(HashMap::new()),
    };
    let sealed = backend.seal(&BTreeMap::new())?;
    write_atomic(&backend.path, &sealed)?;
    Ok(backend)
}

/// The key of a new store: an existing key file, else the keyring if it
/// works, else a new key file.
fn new_store_key(
    key_file: &Path,
    options: &KeyOptions<'_>,
) -> Result<(MasterKey, KeySource), StoreError> {
    if let Some(key) = read_key_file(key_file, None)? {
        return Ok((key, KeySource::KeyFile(key_file.to_path_buf())));
    }
    if let Some(service) = options.keyring_service {
        match probe(service, PROBE_TIMEOUT) {
            Ok(()) => {
                let key = keyring_key_for_new(service)?;
                let source = KeySource::Keyring {
                    service: service.to_owned(),
                };
                return Ok((key, source));
            }
            Err(why) => tracing::info!(
                reason = %why,
                "no usable keyring for the file store's master key; using a key file"
            ),
        }
    }
    let key = MasterKey::generate()?;
    let mut text = key.to_base64();
    text.push('\n');
    create_new_atomic(key_file, text.as_bytes())?;
    Ok((key, KeySource::KeyFile(key_file.to_path_buf())))
}

/// Reads the key file; `None` when it does not exist. `store`: the existing
/// file the key must decrypt, which decides the advice for a bad key.
fn read_key_file(key_file: &Path, store: Option<&Path>) -> Result<Option<MasterKey>, StoreError> {
    let hint = || match store {
        Some(store) => lost_key_advice(store, Some(key_file)),
        None => NEW_KEY_HINT.to_owned(),
    };
    let io_err = |e: io::Error| {
        StoreError::Io(format!(
            "cannot read the key file {}: {e}; check it (your file, mode 0600)",
            key_file.display()
        ))
    };
    let meta = match fs::metadata(key_file) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    if !meta.is_file() || meta.len() > MAX_KEY_FILE_BYTES {
        return Err(StoreError::Access(format!(
            "the key file {} is not a small regular file holding a base64 key; {}",
            key_file.display(),
            hint()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::Access(format!(
                "the key file {} has mode {mode:03o}, so others may read it; run `chmod 600 {}` \
                 (and consider the key exposed)",
                key_file.display(),
                key_file.display()
            )));
        }
    }
    let bytes = Zeroizing::new(fs::read(key_file).map_err(io_err)?);
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        StoreError::Access(format!(
            "the key file {} is not base64 text; {}",
            key_file.display(),
            hint()
        ))
    })?;
    MasterKey::from_base64(text).map(Some).map_err(|why| {
        StoreError::Access(format!(
            "the key file {} is not usable: {why}; {}",
            key_file.display(),
            hint()
        ))
    })
}

/// Reads the master key an existing file says is in the keyring.
fn keyring_key_for_existing(
    path: &Path,
    service: &str,
    fingerprint: &[u8; 8],
) -> Result<MasterKey, StoreError> {
    let context = || {
        format!(
            "{} is encrypted with the master key in {OS_KEYRING_NAME} (service \"{}\", \
             entry \"{KEYRING_KEY_USER}\")",
            path.display(),
            internal_service(service)
        )
    };
    match keyring_key(service, false, Some(*fingerprint))? {
        Some(key) => Ok(key),
        None => Err(StoreError::Access(format!(
            "{}, but that entry is not there. If you have the key, set {MASTER_KEY_ENV}; \
             regent will not make a new key for an existing file",
            context()
        ))),
    }
    .map_err(|e| match e {
        StoreError::Access(msg) if msg.starts_with(&context()) => StoreError::Access(msg),
        other => with_context(other, &context()),
    })
}

/// The master key for a new store: the one already in the keyring, or a
/// new one put there.
fn keyring_key_for_new(service: &str) -> Result<MasterKey, StoreError> {
    keyring_key(service, true, None)?.ok_or_else(|| {
        StoreError::Unavailable(format!(
            "{OS_KEYRING_NAME} did not keep the new master key; use REGENT_STORE=file with \
             {MASTER_KEY_ENV}"
        ))
    })
}

/// Reads (and with `create`, makes if missing) the keyring entry of the
/// master key under regent's internal service, waiting at most
/// [`KEYRING_KEY_TIMEOUT`]. With `legacy`, the fingerprint of the file's
/// key, a key an older regent kept among the registry logins is moved to
/// the internal service when it matches (and only then: an entry of that
/// name that does not match is a registry login and stays).
fn keyring_key(
    service: &str,
    create: bool,
    legacy: Option<[u8; 8]>,
) -> Result<Option<MasterKey>, StoreError> {
    let owned = service.to_owned();
    let work =
        move || -> Result<Option<MasterKey>, StoreError> {
            let internal_name = internal_service(&owned);
            let internal = KeyringBackend::open(&internal_name)?;
            if let Some(text) = internal.get(KEYRING_KEY_USER)? {
                return MasterKey::from_base64(text.expose()).map(Some).map_err(|why| {
                StoreError::Corrupt(format!(
                    "the keyring entry \"{KEYRING_KEY_USER}\" (service \"{internal_name}\") \
                     does not hold a master key: {why}"
                ))
            });
            }
            if let Some(fingerprint) = legacy {
                let logins = KeyringBackend::open(&owned)?;
                if let Some(text) = logins.get(KEYRING_KEY_USER)?
                    && let Ok(key) = MasterKey::from_base64(text.expose())
                    && key.fingerprint() == fingerprint
                {
                    internal.apply(&[Op::Set(KEYRING_KEY_USER.to_owned(), text)])?;
                    logins.apply(&[Op::Delete(KEYRING_KEY_USER.to_owned())])?;
                    tracing::info!(
                        service = %internal_name,
                        "moved the file store's master key apart from the registry logins"
                    );
                    return Ok(Some(key));
                }
            }
            if !create {
                return Ok(None);
            }
            let key = MasterKey::generate()?;
            let text = Secret::new(key.to_base64().to_string());
            internal.apply(&[Op::Set(KEYRING_KEY_USER.to_owned(), text)])?;
            Ok(Some(key))
        };
    run_with_timeout("regent-keyring-key", KEYRING_KEY_TIMEOUT, work).unwrap_or_else(|| {
        Err(StoreError::Unavailable(format!(
            "{OS_KEYRING_NAME} did not answer within {} s; unlock it and retry, or run \
             `regent status`",
            KEYRING_KEY_TIMEOUT.as_secs()
        )))
    })
}

fn with_context(err: StoreError, context: &str) -> StoreError {
    match err {
        StoreError::Access(m) => StoreError::Access(format!("{context}: {m}")),
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("{context}: {m}")),
        StoreError::Io(m) => StoreError::Io(format!("{context}: {m}")),
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{context}: {m}")),
        StoreError::Refused(m) => StoreError::Refused(format!("{context}: {m}")),
    }
}

/// Decrypts and parses a whole file whose header was checked.
fn unseal(
    path: &Path,
    cipher: &Aes256Gcm,
    bytes: Vec<u8>,
) -> Result<HashMap<String, Secret>, StoreError> {
    let mut bytes = Zeroizing::new(bytes);
    if bytes.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(corrupt(path, "it is truncated"));
    }
    let (header, rest) = bytes.split_at_mut(HEADER_LEN);
    let (nonce, rest) = rest.split_at_mut(NONCE_LEN);
    let (plain, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    cipher
        .decrypt_in_place_detached(
            GenericArray::from_slice(nonce),
            header,
            plain,
            GenericArray::from_slice(tag),
        )
        .map_err(|_| corrupt(path, "decryption failed (the file was damaged or changed)"))?;
    // Never quote serde's message here: it may contain plaintext.
    let map: HashMap<String, String> = serde_json::from_slice(plain).map_err(|e| {
        corrupt(
            path,
            &format!(
                "its decrypted content is not the expected JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    Ok(map.into_iter().map(|(k, v)| (k, Secret::new(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_keyring() -> KeyOptions<'static> {
        KeyOptions {
            env_key: None,
            keyring_service: None,
        }
    }

    fn with_env(key: &str) -> KeyOptions<'_> {
        KeyOptions {
            env_key: Some(key),
            keyring_service: None,
        }
    }

    struct Dirs {
        _root: tempfile::TempDir,
        data: PathBuf,
        config: PathBuf,
    }

    fn dirs() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let config = root.path().join("config");
        Dirs {
            _root: root,
            data,
            config,
        }
    }

    fn tricky_secrets() -> Vec<(String, String)> {
        vec![
            ("quotes.example".into(), r#"pa"ss"word"#.into()),
            ("backslash.example".into(), r"c:\path\to\x \\ \n".into()),
            ("newline.example".into(), "line1\nline2\r\n\ttab".into()),
            ("unicode.example".into(), "päss wörd ✓ 密码 🚀".into()),
            ("control.example".into(), "\u{0}\u{1b}[0m".into()),
            ("big.example".into(), "ab\"c\\".repeat(64 * 1024 / 5 + 1)),
            ("empty.example".into(), String::new()),
        ]
    }

    fn set_ops(pairs: &[(String, String)]) -> Vec<Op> {
        pairs
            .iter()
            .map(|(k, v)| Op::Set(k.clone(), Secret::new(v.clone())))
            .collect()
    }

    fn get(backend: &FileBackend, key: &str) -> Option<String> {
        backend.get(key).unwrap().map(|s| s.expose().to_owned())
    }

    #[test]
    fn round_trip_and_reopen_with_key_file() {
        let d = dirs();
        let backend = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        assert_eq!(backend.kind(), StoreKind::File);
        assert!(backend.is_atomic());
        assert!(backend.path().exists(), "a new store is written at once");
        let key_file = d.config.join(KEY_FILE);
        assert_eq!(backend.key_source(), &KeySource::KeyFile(key_file.clone()));
        assert!(backend.location().contains("secrets.enc"));
        assert!(backend.location().contains("master.key"));

        let secrets = tricky_secrets();
        assert!(secrets.iter().any(|(_, v)| v.len() >= 64 * 1024));
        backend.apply(&set_ops(&secrets)).unwrap();
        for (k, v) in &secrets {
            assert_eq!(get(&backend, k).as_ref(), Some(v), "{k}");
        }

        // Nothing readable on disk.
        let raw = fs::read(backend.path()).unwrap();
        assert_eq!(&raw[..8], MAGIC);
        assert!(!raw.windows(7).any(|w| w == b"pa\"ss\"w"));
        assert!(!raw.windows(9).any(|w| w == b"quotes.ex"));
        drop(backend);

        let again = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        for (k, v) in &secrets {
            assert_eq!(get(&again, k).as_ref(), Some(v), "{k}");
        }
        let all = again.load_all().unwrap().unwrap();
        assert_eq!(all.len(), secrets.len());

        again
            .apply(&[
                Op::Delete("quotes.example".into()),
                Op::Set("unicode.example".into(), Secret::from("new")),
            ])
            .unwrap();
        drop(again);
        let third = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        assert_eq!(get(&third, "quotes.example"), None);
        assert_eq!(get(&third, "unicode.example").as_deref(), Some("new"));
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let d = dirs();
        let first = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        let key_file = d.config.join(KEY_FILE);
        let mode = fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = fs::metadata(first.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key_text = fs::read_to_string(&key_file).unwrap();
        assert!(MasterKey::from_base64(&key_text).is_ok());
        first
            .apply(&[Op::Set("a".into(), Secret::from("b"))])
            .unwrap();
        drop(first);

        let second = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        assert_eq!(fs::read_to_string(&key_file).unwrap(), key_text);
        assert_eq!(get(&second, "a").as_deref(), Some("b"));

        // The same key works through the environment too.
        drop(second);
        let third = FileBackend::open_with(&d.data, &d.config, &with_env(&key_text)).unwrap();
        assert_eq!(third.key_source(), &KeySource::Env);
        assert_eq!(get(&third, "a").as_deref(), Some("b"));
        third
            .apply(&[Op::Set("c".into(), Secret::from("d"))])
            .unwrap();
        drop(third);
        // ... and the header still sends later opens to the key file.
        let fourth = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        assert_eq!(get(&fourth, "c").as_deref(), Some("d"));

        // A key file others can read is refused.
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o644)).unwrap();
        let err = FileBackend::open_with(&d.data, &d.config, &no_keyring())
            .err()
            .unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn wrong_env_key_is_refused_without_touching_the_file() {
        let d = dirs();
        let right = MasterKey::generate().unwrap().to_base64();
        let backend = FileBackend::open_with(&d.data, &d.config, &with_env(&right)).unwrap();
        backend
            .apply(&[Op::Set("ghcr.io".into(), Secret::from("s3cret"))])
            .unwrap();
        let path = backend.path().to_path_buf();
        drop(backend);
        let before = fs::read(&path).unwrap();

        let wrong = MasterKey::generate().unwrap().to_base64();
        let err = FileBackend::open_with(&d.data, &d.config, &with_env(&wrong))
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Access(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("secrets.enc"), "{msg}");
        assert!(msg.contains(MASTER_KEY_ENV), "{msg}");
        assert!(!msg.contains(wrong.as_str()) && !msg.contains(right.as_str()));
        assert_eq!(fs::read(&path).unwrap(), before);

        // Without any key: the header says the key came from the environment.
        let err = FileBackend::open_with(&d.data, &d.config, &no_keyring())
            .err()
            .unwrap();
        assert!(err.to_string().contains(MASTER_KEY_ENV), "{err}");
        assert!(!d.config.join(KEY_FILE).exists(), "no key file invented");
        assert_eq!(fs::read(&path).unwrap(), before);

        let back = FileBackend::open_with(&d.data, &d.config, &with_env(&right)).unwrap();
        assert_eq!(get(&back, "ghcr.io").as_deref(), Some("s3cret"));
    }

    #[test]
    fn malformed_env_key_says_how_to_make_one() {
        let d = dirs();
        let short = BASE64.encode([7u8; 16]);
        for bad in ["", "not base64 !!", short.as_str()] {
            let err = FileBackend::open_with(&d.data, &d.config, &with_env(bad))
                .err()
                .unwrap();
            assert!(err.to_string().contains("openssl rand -base64 32"), "{err}");
        }
        assert!(!d.data.join(SECRETS_FILE).exists());
    }

    #[test]
    fn flipped_byte_is_corrupt_and_left_alone() {
        let d = dirs();
        let backend = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        backend
            .apply(&[Op::Set("ghcr.io".into(), Secret::from("token"))])
            .unwrap();
        let path = backend.path().to_path_buf();
        drop(backend);
        let good = fs::read(&path).unwrap();

        // A byte of the ciphertext, of the tag, of the nonce, and of the
        // magic in the header (associated data).
        for at in [
            HEADER_LEN + NONCE_LEN + 2,
            good.len() - 1,
            HEADER_LEN + 1,
            3,
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            let err = FileBackend::open_with(&d.data, &d.config, &no_keyring())
                .err()
                .unwrap();
            assert!(matches!(err, StoreError::Corrupt(_)), "byte {at}: {err}");
            assert!(err.to_string().contains("secrets.enc"), "{err}");
            assert_eq!(fs::read(&path).unwrap(), bad, "byte {at}");
        }

        fs::write(&path, &good[..20]).unwrap();
        let err = FileBackend::open_with(&d.data, &d.config, &no_keyring())
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");

        fs::write(&path, b"hello, not ours").unwrap();
        let err = FileBackend::open_with(&d.data, &d.config, &no_keyring())
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"hello, not ours");
    }

    #[test]
    fn missing_key_file_is_an_error_not_a_new_key() {
        let d = dirs();
        let backend = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        let path = backend.path().to_path_buf();
        drop(backend);
        let key_file = d.config.join(KEY_FILE);
        fs::remove_file(&key_file).unwrap();
        let before = fs::read(&path).unwrap();

        let err = FileBackend::open_with(&d.data, &d.config, &no_keyring())
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("master.key") && msg.contains("missing"),
            "{msg}"
        );
        assert!(!key_file.exists());
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn stray_temp_file_does_not_break_reopening() {
        let d = dirs();
        let backend = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        backend
            .apply(&[Op::Set("ghcr.io".into(), Secret::from("kept"))])
            .unwrap();
        drop(backend);
        // What a crash between create and rename leaves behind.
        fs::write(d.data.join(".secrets.enc.tmp-99999-0"), b"half a wri").unwrap();
        fs::write(
            d.data
                .join(format!(".secrets.enc.tmp-{}-0", std::process::id())),
            b"x",
        )
        .unwrap();

        let again = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        assert_eq!(get(&again, "ghcr.io").as_deref(), Some("kept"));
        again
            .apply(&[Op::Set("quay.io".into(), Secret::from("more"))])
            .unwrap();
        drop(again);
        let third = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        assert_eq!(get(&third, "quay.io").as_deref(), Some("more"));
    }

    #[test]
    fn failed_write_changes_nothing() {
        let d = dirs();
        let backend = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        backend
            .apply(&[Op::Set("ghcr.io".into(), Secret::from("old"))])
            .unwrap();
        // Make the rename impossible (even for root): a non-empty directory
        // where the file goes.
        let path = backend.path().to_path_buf();
        let saved = fs::read(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        fs::write(path.join("blocker"), b"").unwrap();

        let err = backend
            .apply(&[
                Op::Set("ghcr.io".into(), Secret::from("new")),
                Op::Set("quay.io".into(), Secret::from("other")),
            ])
            .unwrap_err();
        assert!(err.to_string().contains("secrets.enc"), "{err}");
        assert_eq!(get(&backend, "ghcr.io").as_deref(), Some("old"));
        assert_eq!(get(&backend, "quay.io"), None);

        fs::remove_dir_all(&path).unwrap();
        fs::write(&path, &saved).unwrap();
        backend
            .apply(&[Op::Set("quay.io".into(), Secret::from("other"))])
            .unwrap();
        drop(backend);
        let again = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        assert_eq!(get(&again, "ghcr.io").as_deref(), Some("old"));
        assert_eq!(get(&again, "quay.io").as_deref(), Some("other"));
    }

    #[test]
    fn existing_key_file_is_used_for_a_new_store() {
        let d = dirs();
        let key = MasterKey::generate().unwrap();
        let text = key.to_base64();
        create_new_atomic(&d.config.join(KEY_FILE), text.as_bytes()).unwrap();
        let backend = FileBackend::open_with(&d.data, &d.config, &no_keyring()).unwrap();
        drop(backend);
        // The provisioned key opens it through the environment as well.
        FileBackend::open_with(&d.data, &d.config, &with_env(&text)).unwrap();
    }

    #[test]
    fn keyring_header_without_keyring_is_a_clear_error() {
        let d = dirs();
        let key = MasterKey::generate().unwrap();
        let text = key.to_base64();
        let backend = FileBackend::open_with(&d.data, &d.config, &with_env(&text)).unwrap();
        let path = backend.path().to_path_buf();
        drop(backend);
        // Rewrite the file as if its key lived in the keyring.
        let fake = FileBackend {
            path: path.clone(),
            source: KeySource::Keyring {
                service: "unused".into(),
            },
            header: header_bytes(1, &key.fingerprint()),
            cipher: key.cipher(),
            secrets: Mutex::new(HashMap::new()),
        };
        fake.apply(&[Op::Set("a".into(), Secret::from("b"))])
            .unwrap();
        let err = FileBackend::open_with(&d.data, &d.config, &no_keyring())
            .err()
            .unwrap();
        assert!(err.to_string().contains("keyring"), "{err}");
        let ok = FileBackend::open_with(&d.data, &d.config, &with_env(&text)).unwrap();
        assert_eq!(get(&ok, "a").as_deref(), Some("b"));
    }
}
