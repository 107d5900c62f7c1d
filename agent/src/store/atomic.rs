//! Crash-safe file writes.
//!
//! [`write_atomic`] replaces a file so that, whatever happens (crash, full
//! disk, power loss), a reader finds either the complete old content or the
//! complete new content, never a mix or a truncated file:
//!
//! 1. the parent directory is created (mode 0700) if it is missing;
//! 2. the bytes go to a new, uniquely named temporary file in the same
//!    directory, created exclusively (`O_EXCL`) with mode 0600;
//! 3. the temporary file is flushed to disk (`fsync`);
//! 4. it is renamed over the target (atomic on POSIX file systems);
//! 5. the directory is flushed too, so the rename itself survives a crash.
//!
//! On any error the temporary file is removed and the target is untouched.
//! A crash between steps 2 and 4 can leave a temporary file behind (named
//! `.<target>.tmp-<pid>-<n>`); it is never read and is harmless.
//!
//! [`create_new_atomic`] does the same for a file that must never replace an
//! existing one (a freshly generated key): step 4 is a hard link, which fails
//! when the target already exists.
//!
//! On Windows the same steps run, except that directories cannot be flushed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::backend::StoreError;

/// Replaces `path` with `bytes`, durably and atomically. The new file has
/// mode 0600 on Unix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_with(path, bytes, Finish::Replace, |file, bytes| {
        file.write_all(bytes)
    })
}

/// Creates `path` with `bytes`, durably, only if it does not exist yet: a
/// concurrent or earlier file at `path` is never replaced, and the caller
/// gets an error of kind [`io::ErrorKind::AlreadyExists`] in words.
pub fn create_new_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_with(path, bytes, Finish::CreateNew, |file, bytes| {
        file.write_all(bytes)
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    Replace,
    CreateNew,
}

/// The steps of [`write_atomic`], with the write itself passed in so tests
/// can make it fail half-way.
fn write_with(
    path: &Path,
    bytes: &[u8],
    finish: Finish,
    write: impl FnOnce(&mut File, &[u8]) -> io::Result<()>,
) -> Result<(), StoreError> {
    let dir = parent_dir(path);
    create_private_dir(&dir).map_err(|e| describe(path, "create its directory", &e))?;

    let (tmp_path, file) =
        create_temp(&dir, path).map_err(|e| describe(path, "create a temporary file for", &e))?;

    let result = fill_and_publish(file, &tmp_path, path, bytes, finish, write);
    if let Err(err) = result {
        // Best effort: after a successful rename or link the file is gone already.
        let _ = fs::remove_file(&tmp_path);
        return Err(err);
    }

    sync_dir(&dir).map_err(|e| {
        StoreError::Io(format!(
            "wrote {} but could not flush its directory {} to disk ({e}); \
             the change may not survive a crash: check the file system and retry",
            path.display(),
            dir.display()
        ))
    })
}

/// Writes and flushes the temporary file, then moves it into place.
fn fill_and_publish(
    mut file: File,
    tmp_path: &Path,
    path: &Path,
    bytes: &[u8],
    finish: Finish,
    write: impl FnOnce(&mut File, &[u8]) -> io::Result<()>,
) -> Result<(), StoreError> {
    write(&mut file, bytes).map_err(|e| describe(path, "write", &e))?;
    file.sync_all().map_err(|e| describe(path, "write", &e))?;
    drop(file);
    match finish {
        Finish::Replace => fs::rename(tmp_path, path).map_err(|e| describe(path, "replace", &e)),
        Finish::CreateNew => {
            let linked = fs::hard_link(tmp_path, path);
            // Linked or not, the temporary name has served its purpose.
            let _ = fs::remove_file(tmp_path);
            linked.map_err(|e| describe(path, "create", &e))
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Opens a new temporary file next to `target`, never reusing an existing one.
fn create_temp(dir: &Path, target: &Path) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let pid = std::process::id();
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{pid}-{n}"));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            // Left over by a crashed process that had our pid: pick the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no free temporary file name")))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened for flushing on Windows; NTFS journals the rename.
    Ok(())
}

/// An error naming the path and the cause in words.
fn describe(path: &Path, action: &str, err: &io::Error) -> StoreError {
    let path = path.display();
    match err.kind() {
        io::ErrorKind::StorageFull => StoreError::Io(format!(
            "cannot {action} {path}: the disk is full ({err}); the previous version is \
             unchanged. Free some space and retry"
        )),
        io::ErrorKind::QuotaExceeded => StoreError::Io(format!(
            "cannot {action} {path}: the disk quota is exceeded ({err}); the previous version \
             is unchanged. Free some space and retry"
        )),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            StoreError::Io(format!(
                "cannot {action} {path}: {err}; the previous version is unchanged. Check the \
                 permissions of its directory (it should be yours, mode 0700)"
            ))
        }
        io::ErrorKind::AlreadyExists => StoreError::Io(format!(
            "cannot {action} {path}: it already exists and is left as it is"
        )),
        _ => StoreError::Io(format!(
            "cannot {action} {path}: {err}; the previous version is unchanged"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/f.json");
        write_atomic(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"two, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two, longer");
        assert_eq!(names_in(path.parent().unwrap()), vec!["f.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn modes_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("new");
        let path = sub.join("f");
        write_atomic(&path, b"x").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&sub), 0o700);
    }

    #[test]
    fn failed_write_keeps_old_file_and_removes_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.enc");
        fs::write(&path, b"old content").unwrap();

        let err = write_with(&path, b"new content", Finish::Replace, |file, bytes| {
            file.write_all(&bytes[..3])?;
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        })
        .unwrap_err();

        let msg = err.to_string();
        assert!(msg.contains("disk is full"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert_eq!(fs::read(&path).unwrap(), b"old content");
        assert_eq!(names_in(dir.path()), vec!["secrets.enc"]);
    }

    #[test]
    fn failed_rename_removes_temp() {
        // The target is a non-empty directory: rename(2) refuses, even for root.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"keep").unwrap();

        let err = write_atomic(&target, b"new").unwrap_err();
        assert!(err.to_string().contains("target"), "{err}");
        assert_eq!(fs::read(target.join("inside")).unwrap(), b"keep");
        assert_eq!(names_in(dir.path()), vec!["target"]);
    }

    #[test]
    fn parent_that_is_a_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, b"not a dir").unwrap();
        let err = write_atomic(&blocker.join("f"), b"x").unwrap_err();
        assert!(err.to_string().contains("blocker"), "{err}");
        assert_eq!(fs::read(&blocker).unwrap(), b"not a dir");
    }

    #[test]
    fn create_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        create_new_atomic(&path, b"first").unwrap();
        let err = create_new_atomic(&path, b"second").unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(names_in(dir.path()), vec!["master.key"]);
    }
}
