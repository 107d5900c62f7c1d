//! Which backend the agent opens, and why.
//!
//! `REGENT_STORE` (or `store =` in the config file) names a backend or
//! `auto`. A named backend is opened or the agent refuses to start with the
//! reason: it never falls back to something else. `auto` prefers the OS
//! keyring when it answers and is unlocked, else the encrypted file; it never
//! picks `memory` or `keyutils`, which lose data on restart or reboot and must
//! be asked for.
//!
//! `auto` is sticky towards data that already exists: when an encrypted file
//! store holds secrets and the keyring has never been used by this agent, the
//! file stays in use even if a keyring shows up later (a desktop login after
//! ssh sessions, say). Otherwise credentials would seem to vanish.
//!
//! Each persistent backend has its own index file in the data directory, so
//! switching backends never lists entries the new backend does not have.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::backend::{Backend, StoreError, StoreKind};
use super::file::{FileBackend, SECRETS_FILE};
use super::index::Index;
use super::keyring::{self, KeyringBackend, OS_KEYRING_NAME};
use super::memory::MemoryBackend;

/// How long `auto` waits for the keyring to prove it works.
const AUTO_PROBE_TIMEOUT: Duration = Duration::from_millis(2000);
/// How long an explicit `keyring` choice waits (an unlock prompt may show).
const EXPLICIT_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Kind(StoreKind),
}

/// A `store` value that names no backend; holds it trimmed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown store \"{0}\"; use one of auto, keyring, file, keyutils, memory")]
pub struct UnknownStore(pub String);

impl FromStr for Choice {
    type Err = UnknownStore;

    fn from_str(s: &str) -> Result<Choice, UnknownStore> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Choice::Auto),
            "keyring" => Ok(Choice::Kind(StoreKind::Keyring)),
            "file" => Ok(Choice::Kind(StoreKind::File)),
            "keyutils" => Ok(Choice::Kind(StoreKind::Keyutils)),
            "memory" => Ok(Choice::Kind(StoreKind::Memory)),
            other => Err(UnknownStore(other.to_owned())),
        }
    }
}

/// Where the backends keep their data.
pub struct StoreContext {
    pub data_dir: PathBuf,
    pub config_dir: PathBuf,
    pub keyring_service: String,
}

/// An open backend, why it was chosen, and where its index lives (`None`:
/// in memory only).
pub struct Opened {
    pub backend: Arc<dyn Backend>,
    pub reason: String,
    pub index_path: Option<PathBuf>,
}

/// The index file of a persistent backend.
pub fn index_path(data_dir: &std::path::Path, kind: StoreKind) -> Option<PathBuf> {
    match kind {
        StoreKind::Memory => None,
        kind => Some(data_dir.join(format!("index-{}.json", kind.name()))),
    }
}

/// Opens the backend `choice` asks for. Blocks (keyring probe, file read).
pub fn open(choice: Choice, ctx: &StoreContext) -> Result<Opened, StoreError> {
    match choice {
        Choice::Kind(kind) => open_kind(kind, ctx, "chosen by REGENT_STORE or the config file"),
        Choice::Auto => open_auto(ctx),
    }
}

fn open_kind(kind: StoreKind, ctx: &StoreContext, why: &str) -> Result<Opened, StoreError> {
    let backend: Arc<dyn Backend> = match kind {
        StoreKind::Memory => Arc::new(MemoryBackend::new()),
        StoreKind::File => Arc::new(open_file(ctx)?),
        StoreKind::Keyring => {
            keyring::probe(&ctx.keyring_service, EXPLICIT_PROBE_TIMEOUT).map_err(|why| {
                StoreError::Unavailable(format!(
                    "the keyring store is not usable: {}; start or unlock {OS_KEYRING_NAME}, \
                     or set REGENT_STORE=file",
                    cause(&why)
                ))
            })?;
            Arc::new(KeyringBackend::open(&ctx.keyring_service)?)
        }
        StoreKind::Keyutils => open_keyutils(ctx)?,
    };
    Ok(Opened {
        backend,
        reason: why.to_owned(),
        index_path: index_path(&ctx.data_dir, kind),
    })
}

fn open_auto(ctx: &StoreContext) -> Result<Opened, StoreError> {
    let file_exists = ctx.data_dir.join(SECRETS_FILE).exists();
    let keyring_used = index_path(&ctx.data_dir, StoreKind::Keyring).is_some_and(|p| p.exists());
    if file_exists && !keyring_used {
        return open_kind(
            StoreKind::File,
            ctx,
            "auto: an encrypted file store already exists here, so it stays in use",
        );
    }
    match keyring::probe(&ctx.keyring_service, AUTO_PROBE_TIMEOUT) {
        Ok(()) => open_kind(
            StoreKind::Keyring,
            ctx,
            &format!("auto: {OS_KEYRING_NAME} answered and is unlocked"),
        ),
        Err(why) => open_kind(
            StoreKind::File,
            ctx,
            &format!(
                "auto: {OS_KEYRING_NAME} is not usable ({}), so the encrypted file",
                short(cause(&why))
            ),
        ),
    }
}

/// A keyring error without its advice (`...; start one or use
/// REGENT_STORE=file`): the caller gives the advice that fits, once.
fn cause(why: &str) -> &str {
    why.split("; ").next().unwrap_or(why).trim()
}

/// A cause short enough for the one-line reason `regent status` shows:
/// parenthesised details (the D-Bus library's own words) left out, at most
/// 120 characters.
fn short(cause: &str) -> String {
    let mut out = String::with_capacity(cause.len());
    let mut depth = 0usize;
    for c in cause.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    let mut out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    out = out.replace(" :", ":").replace(" ,", ",");
    if out.chars().count() > 120 {
        out = out.chars().take(117).collect::<String>() + "...";
    }
    out
}

fn open_file(ctx: &StoreContext) -> Result<FileBackend, StoreError> {
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
    dir.create(&ctx.data_dir)
        .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", ctx.data_dir.display())))?;
    refuse_lost_file(ctx)?;
    FileBackend::open(&ctx.data_dir, &ctx.config_dir, &ctx.keyring_service)
}

/// A missing `secrets.enc` whose index still lists logins was lost or moved:
/// opening would make a new, empty file and hide that. Refused, with what
/// to do.
fn refuse_lost_file(ctx: &StoreContext) -> Result<(), StoreError> {
    let secrets = ctx.data_dir.join(SECRETS_FILE);
    if std::fs::symlink_metadata(&secrets).is_ok() {
        return Ok(());
    }
    let Some(index_path) = index_path(&ctx.data_dir, StoreKind::File) else {
        return Ok(());
    };
    // A bad index is reported when it is loaded.
    let Ok(index) = Index::load(Some(index_path.clone())) else {
        return Ok(());
    };
    if index.is_empty() {
        return Ok(());
    }
    Err(StoreError::Corrupt(format!(
        "{} is missing, but its index {} lists {} login(s). Restore the file from a backup; \
         or, to start over without those logins, move the index aside (`mv {i} {i}.old`) and \
         log in again",
        secrets.display(),
        index_path.display(),
        index.len(),
        i = index_path.display()
    )))
}

#[cfg(target_os = "linux")]
fn open_keyutils(ctx: &StoreContext) -> Result<Arc<dyn Backend>, StoreError> {
    Ok(Arc::new(super::keyutils::KeyutilsBackend::open(
        &ctx.keyring_service,
    )?))
}

#[cfg(not(target_os = "linux"))]
fn open_keyutils(_ctx: &StoreContext) -> Result<Arc<dyn Backend>, StoreError> {
    Err(StoreError::Unavailable(
        "the keyutils store exists only on Linux; use REGENT_STORE=keyring or file".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!("auto".parse::<Choice>(), Ok(Choice::Auto));
        assert_eq!("".parse::<Choice>(), Ok(Choice::Auto));
        assert_eq!(
            " File ".parse::<Choice>(),
            Ok(Choice::Kind(StoreKind::File))
        );
        assert_eq!(
            "memory".parse::<Choice>(),
            Ok(Choice::Kind(StoreKind::Memory))
        );
        let err = "pass".parse::<Choice>().unwrap_err().to_string();
        assert!(err.contains("unknown store \"pass\""), "{err}");
    }

    #[test]
    fn reasons_are_short_and_advise_once() {
        let why = "cannot reach the Secret Service over D-Bus (Platform failure: zbus error: \
                   Failed to connect to address `unix:path=/run/bus`: No such file or directory \
                   (os error 2)): no Secret Service is running (or there is no session bus); \
                   start one (gnome-keyring, KeePassXC) or use REGENT_STORE=file";
        assert_eq!(
            short(cause(why)),
            "cannot reach the Secret Service over D-Bus: no Secret Service is running"
        );
        assert!(!cause(why).contains("REGENT_STORE"));
        assert_eq!(short(&"x".repeat(300)).chars().count(), 120);
    }

    #[test]
    fn memory_has_no_index_file() {
        let dir = std::path::Path::new("/nonexistent");
        assert_eq!(index_path(dir, StoreKind::Memory), None);
        assert_eq!(
            index_path(dir, StoreKind::File),
            Some(dir.join("index-file.json"))
        );
    }

    #[test]
    fn auto_keeps_an_existing_file_store() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = StoreContext {
            data_dir: tmp.path().join("data"),
            config_dir: tmp.path().join("config"),
            keyring_service: "regent-test-unused".into(),
        };
        // A key file first, so that creating the file store never asks the
        // keyring for its master key.
        std::fs::create_dir_all(&ctx.config_dir).unwrap();
        let key_file = ctx.config_dir.join(super::super::file::KEY_FILE);
        std::fs::write(&key_file, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let first = open(Choice::Kind(StoreKind::File), &ctx).unwrap();
        assert_eq!(first.backend.kind(), StoreKind::File);
        drop(first);
        let opened = open(Choice::Auto, &ctx).unwrap();
        assert_eq!(opened.backend.kind(), StoreKind::File);
        assert!(
            opened.reason.contains("already exists"),
            "{}",
            opened.reason
        );
    }
}
