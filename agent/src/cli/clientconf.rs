//! Reading and rewriting the clients' own files: docker's `config.json`,
//! containers' `auth.json` and `registries.conf.d` drop-ins. Where each
//! lives, and [`HELPER_NAME`], the name those files give regent, are here
//! too, for `regent setup` and `regent import` alike.
//!
//! Every rewrite is careful in the same ways: a file that cannot be read or
//! parsed is an error and is never overwritten; the old contents are copied
//! to `<file>.regent-bak.<unix time>` first (one per change, never
//! overwritten, mode 0600 whatever the file's own mode: a backup may hold
//! the plaintext credentials `regent import` removed; `regent import
//! --no-backup` keeps none); the new contents go to a temporary file in
//! the same directory, are fsynced, and renamed over the old one, keeping its
//! mode (0600 for a new file). A symlinked file (dotfile managers) is written
//! through: its target is replaced, the link stays.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use regent_shared::paths;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::sys;

/// The start of the suffix of the backups made before a file is changed.
pub const BACKUP_SUFFIX: &str = ".regent-bak";
/// The mode of every backup: it may hold credentials.
pub const BACKUP_MODE: u32 = 0o600;
/// The helper name clients are given: they run `docker-credential-regent`.
pub const HELPER_NAME: &str = "regent";
/// The drop-in file name in `registries.conf.d`.
const DROPIN_NAME: &str = "50-regent.conf";

/// docker's client config: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn docker_config_path() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("config.json"),
        None => paths::home().join(".docker").join("config.json"),
    }
}

/// The containers config dir: `${XDG_CONFIG_HOME:-~/.config}/containers`.
pub fn containers_config_dir() -> PathBuf {
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("containers"),
        None => paths::home().join(".config").join("containers"),
    }
}

/// The auth files podman, buildah and skopeo read, in their order, without
/// docker's (see reference: containers/image `getAuthFilePaths`).
pub fn containers_auth_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(file) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(file));
    }
    // Not on Windows, where containers/image reads only the config
    // directory's.
    #[cfg(unix)]
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => out.push(PathBuf::from(dir).join("containers").join("auth.json")),
        None => out.push(PathBuf::from(format!(
            "/run/containers/{}/auth.json",
            paths::current_uid()
        ))),
    }
    out.push(containers_config_dir().join("auth.json"));
    out.dedup();
    out
}

/// Where the drop-in goes. podman 4, buildah and skopeo read
/// `$HOME/.config/containers/registries.conf.d` whatever `XDG_CONFIG_HOME`
/// says (containers/image#1647); newer releases may follow
/// `XDG_CONFIG_HOME`. When the two differ, regent writes both.
pub fn dropin_paths() -> Vec<PathBuf> {
    let mut out = vec![
        paths::home()
            .join(".config/containers/registries.conf.d")
            .join(DROPIN_NAME),
        containers_config_dir()
            .join("registries.conf.d")
            .join(DROPIN_NAME),
    ];
    out.dedup();
    out
}

/// A JSON config file as read: `None` contents when it does not exist.
pub struct JsonFile {
    pub path: PathBuf,
    pub original: Option<Vec<u8>>,
    pub value: Map<String, Value>,
}

impl JsonFile {
    /// Reads and parses `path`. A missing or empty file is an empty object;
    /// anything else that is not a JSON object is an error naming the file
    /// and the place.
    pub fn load(path: &Path) -> anyhow::Result<JsonFile> {
        let original = match fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => bail!("cannot read {}: {e}; nothing was changed", path.display()),
        };
        let value = match &original {
            Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => {
                match serde_json::from_slice::<Value>(bytes) {
                    Ok(Value::Object(map)) => map,
                    Ok(_) => bail!(
                        "{} is not a JSON object; fix or move it, then run this again \
                         (nothing was changed)",
                        path.display()
                    ),
                    // serde_json's message holds line and column, never more
                    // of the input than a character or two.
                    Err(e) => bail!(
                        "{} is not valid JSON (line {}, column {}); fix or move it, then run \
                         this again (nothing was changed)",
                        path.display(),
                        e.line(),
                        e.column()
                    ),
                }
            }
            _ => Map::new(),
        };
        Ok(JsonFile {
            path: path.to_owned(),
            original,
            value,
        })
    }

    /// The new contents, formatted as docker writes them (tab indent).
    pub fn render(&self) -> Vec<u8> {
        render_json(&self.value)
    }

    /// True when writing would change the file.
    pub fn changed(&self) -> bool {
        match &self.original {
            None => true,
            Some(old) => match serde_json::from_slice::<Value>(old) {
                Ok(Value::Object(map)) => map != self.value,
                _ => true,
            },
        }
    }

    /// Backs up the old contents and replaces the file atomically. The
    /// backup's path, if there was anything to back up.
    pub fn save(&self) -> anyhow::Result<Option<PathBuf>> {
        replace_file(&self.path, self.original.as_deref(), &self.render())
    }

    /// Replaces the file atomically and keeps no backup.
    pub fn save_without_backup(&self) -> anyhow::Result<()> {
        replace_file(&self.path, None, &self.render()).map(drop)
    }
}

/// Pretty JSON with tabs, as docker's own `config.json`, and a final newline.
pub fn render_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut ser)
        .expect("a JSON value always serializes");
    out.push(b'\n');
    out
}

/// Writes `new` to `path` atomically, after copying `old` (the current
/// contents, if any) to a new `<path>.regent-bak.<unix time>` (mode
/// [`BACKUP_MODE`]), whose path is returned. Creates missing parent
/// directories (0700).
pub fn replace_file(
    path: &Path,
    old: Option<&[u8]>,
    new: &[u8],
) -> anyhow::Result<Option<PathBuf>> {
    // Write through a symlink: replace its target.
    let target = match fs::canonicalize(path) {
        Ok(real) => real,
        Err(_) => path.to_owned(),
    };
    let dir = target
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", target.display()))?;
    if !dir.exists() {
        sys::private_dir(fs::DirBuilder::new().recursive(true))
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mode = fs::metadata(&target)
        .ok()
        .and_then(|m| sys::mode_of(&m))
        .unwrap_or(0o600);
    let backup = match old {
        Some(old) => {
            let backup = free_backup_path(&target);
            write_atomic(&backup, old, BACKUP_MODE)
                .with_context(|| "cannot write the backup; nothing was changed".to_string())?;
            Some(backup)
        }
        None => None,
    };
    write_atomic(&target, new, mode)?;
    Ok(backup)
}

/// `<path>.regent-bak.<unix time>`, with `-2`, `-3`, ... when taken.
fn free_backup_path(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{}{BACKUP_SUFFIX}.{secs}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 2;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// Writes a file of regent's own (no backup), creating its directory
/// (0700) when missing; mode 0600.
pub fn write_atomic_creating(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        sys::private_dir(fs::DirBuilder::new().recursive(true))
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomic(path, bytes, 0o600)
}

/// temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let mut file = sys::file_mode(
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
            mode,
        )
        .open(&tmp)?;
        sys::set_mode(&file, mode)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

/// A short line diff of a file as it is and as it would be, for
/// `--dry-run`: `-` old, `+` new lines, with the common prefix and suffix
/// left out. `None`: the file does not exist (before: it would be created;
/// after: it would be removed); the headers say which.
pub fn diff(path: &Path, old: Option<&str>, new: Option<&str>) -> String {
    let header = match (old, new) {
        (None, _) => format!("--- /dev/null\n+++ {} (would be created)\n", path.display()),
        (Some(_), None) => format!("--- {}\n+++ /dev/null (would be removed)\n", path.display()),
        (Some(_), Some(_)) => format!(
            "--- {} (now)\n+++ {} (would be)\n",
            path.display(),
            path.display()
        ),
    };
    let a: Vec<&str> = old.unwrap_or("").lines().collect();
    let b: Vec<&str> = new.unwrap_or("").lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let mut out = header;
    let context_from = prefix.saturating_sub(2);
    for line in &a[context_from..prefix] {
        out.push_str(&format!(" {line}\n"));
    }
    for line in &a[prefix..a.len() - suffix] {
        out.push_str(&format!("-{line}\n"));
    }
    for line in &b[prefix..b.len() - suffix] {
        out.push_str(&format!("+{line}\n"));
    }
    for line in a[a.len() - suffix..].iter().take(2) {
        out.push_str(&format!(" {line}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_names_the_place_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, "{\n\t\"auths\": {,\n}").unwrap();
        let err = JsonFile::load(&path).err().unwrap().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("nothing was changed"), "{err}");
        fs::write(&path, "[1]").unwrap();
        assert!(JsonFile::load(&path).is_err());
    }

    #[test]
    fn missing_and_empty_files_are_empty_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert!(JsonFile::load(&path).unwrap().value.is_empty());
        fs::write(&path, "  \n").unwrap();
        assert!(JsonFile::load(&path).unwrap().value.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn replace_keeps_mode_and_backs_up() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, "{}").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let first = replace_file(&path, Some(b"{}"), b"{\"a\":1}\n")
            .unwrap()
            .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{\"a\":1}\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let mode = fs::metadata(&first).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, BACKUP_MODE, "a backup may hold credentials");
        assert!(
            first
                .display()
                .to_string()
                .contains("config.json.regent-bak.")
        );
        assert_eq!(fs::read(&first).unwrap(), b"{}");
        // A second change never overwrites the first backup.
        let second = replace_file(&path, Some(b"{\"a\":1}\n"), b"{}")
            .unwrap()
            .unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read(&first).unwrap(), b"{}");
    }

    #[cfg(unix)]
    #[test]
    fn replace_writes_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        fs::write(&real, "{}").unwrap();
        let link = dir.path().join("config.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        replace_file(&link, Some(b"{}"), b"{\"b\":2}\n").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&real).unwrap(), b"{\"b\":2}\n");
    }

    #[test]
    fn diff_shows_only_the_change() {
        let d = diff(
            Path::new("f"),
            Some("{\n\t\"a\": 1\n}\n"),
            Some("{\n\t\"a\": 1,\n\t\"b\": 2\n}\n"),
        );
        assert!(d.starts_with("--- f (now)\n+++ f (would be)\n"), "{d}");
        assert!(d.contains("-\t\"a\": 1\n"), "{d}");
        assert!(d.contains("+\t\"b\": 2\n"), "{d}");
        assert!(!d.contains("-{"), "{d}");
        let gone = diff(Path::new("f"), Some("a\n"), None);
        assert!(
            gone.starts_with("--- f\n+++ /dev/null (would be removed)\n-a\n"),
            "{gone}"
        );
        let created = diff(Path::new("f"), None, Some("a\n"));
        assert!(
            created.starts_with("--- /dev/null\n+++ f (would be created)\n+a\n"),
            "{created}"
        );
    }
}
