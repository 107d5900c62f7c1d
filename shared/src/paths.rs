//! Where regent keeps things.
//!
//! | what | path |
//! |---|---|
//! | agent socket | `$REGENT_SOCKET`, else `$XDG_RUNTIME_DIR/regent/agent.sock`, else `<temp dir>/regent-<uid>/agent.sock`; a named pipe `\\.\pipe\regent-<user>` on Windows |
//! | start lock, pid file | beside the socket: `start.lock`, `agent.pid` |
//! | config file | `$REGENT_CONFIG`, else `<config dir>/regent/config.toml` |
//! | key file of the `file` store | `<config dir>/regent/master.key` |
//! | data: index, encrypted store | `<data dir>/regent/` |
//! | agent log | `<state dir>/regent/agent.log` |
//!
//! The config, data and state dirs are the platform's (`$XDG_CONFIG_HOME`,
//! `$XDG_DATA_HOME`, `$XDG_STATE_HOME` with their defaults on Linux).
//! The socket directory must be a real directory owned by the user with no
//! group or other permissions; [`ensure_private_dir`] creates it that way and
//! checks it before every use.

use std::env;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub const SOCKET_ENV: &str = "REGENT_SOCKET";
pub const CONFIG_ENV: &str = "REGENT_CONFIG";

/// The agent socket (or pipe) path.
pub fn socket_path() -> PathBuf {
    if let Some(p) = env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    default_socket_path()
}

#[cfg(unix)]
fn default_socket_path() -> PathBuf {
    let runtime = env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    match runtime {
        Some(dir) => dir.join("regent").join("agent.sock"),
        None => env::temp_dir()
            .join(format!("regent-{}", current_uid()))
            .join("agent.sock"),
    }
}

#[cfg(windows)]
fn default_socket_path() -> PathBuf {
    let user = env::var("USERNAME").unwrap_or_else(|_| "user".into());
    PathBuf::from(format!(r"\\.\pipe\regent-{user}"))
}

/// The directory that holds the socket, the start lock and the pid file.
pub fn runtime_dir(socket: &Path) -> PathBuf {
    #[cfg(windows)]
    {
        let _ = socket;
        data_dir()
    }
    #[cfg(not(windows))]
    {
        socket
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

pub fn start_lock_path(socket: &Path) -> PathBuf {
    runtime_dir(socket).join("start.lock")
}

pub fn pid_file_path(socket: &Path) -> PathBuf {
    runtime_dir(socket).join("agent.pid")
}

/// The user's home: `$HOME` (`%USERPROFILE%` on Windows), or `.` when
/// neither is set.
pub fn home() -> PathBuf {
    env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .or_else(|| env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The first executable file called `name` in a directory of `$PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

fn xdg(var: &str, unix_default: &str, windows_var: &str) -> PathBuf {
    if let Some(p) = env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return p.join("regent");
    }
    if cfg!(windows)
        && let Some(p) = env::var_os(windows_var)
    {
        return PathBuf::from(p).join("regent");
    }
    home().join(unix_default).join("regent")
}

pub fn config_dir() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config", "APPDATA")
}

pub fn config_file() -> PathBuf {
    env::var_os(CONFIG_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| config_dir().join("config.toml"))
}

pub fn data_dir() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share", "LOCALAPPDATA")
}

pub fn state_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state", "LOCALAPPDATA")
}

pub fn log_file() -> PathBuf {
    state_dir().join("agent.log")
}

#[cfg(unix)]
pub fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// What is wrong with a directory regent was about to trust.
#[derive(Debug)]
pub enum DirError {
    Io(PathBuf, io::Error),
    Symlink(PathBuf),
    NotDirectory(PathBuf),
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
}

impl fmt::Display for DirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirError::Io(p, e) => write!(f, "cannot create or inspect {}: {e}", p.display()),
            DirError::Symlink(p) => write!(
                f,
                "{} is a symbolic link; regent refuses to put its socket behind a link. \
                 Remove it (rm {}) or set {SOCKET_ENV} to a socket in a private directory",
                p.display(),
                p.display()
            ),
            DirError::NotDirectory(p) => write!(
                f,
                "{} is not a directory. Remove it or set {SOCKET_ENV} to a socket in a private directory",
                p.display()
            ),
            DirError::ForeignOwner { path, owner, me } => write!(
                f,
                "{} belongs to uid {owner}, not to you (uid {me}): another user could impersonate the agent. \
                 Remove it (as its owner or root) or set {SOCKET_ENV} to a socket in a private directory",
                path.display()
            ),
        }
    }
}

impl std::error::Error for DirError {}

/// How [`ensure_private_dir`] found the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    Private,
    /// It was ours but had group or other permissions (the old mode); they
    /// were removed.
    Tightened(u32),
}

/// Creates `dir` as a 0700 directory if it is missing, then checks that it is a
/// real directory (not a link), owned by the current user, with no group or
/// other permissions. Loose permissions on our own directory are tightened;
/// anything else is refused.
#[cfg(unix)]
pub fn ensure_private_dir(dir: &Path) -> Result<DirState, DirError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent).map_err(|e| DirError::Io(parent.to_path_buf(), e))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(DirError::Io(dir.to_path_buf(), e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| DirError::Io(dir.to_path_buf(), e))?;
    if meta.file_type().is_symlink() {
        return Err(DirError::Symlink(dir.to_path_buf()));
    }
    if !meta.is_dir() {
        return Err(DirError::NotDirectory(dir.to_path_buf()));
    }
    let me = current_uid();
    if meta.uid() != me {
        return Err(DirError::ForeignOwner {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| DirError::Io(dir.to_path_buf(), e))?;
        return Ok(DirState::Tightened(mode));
    }
    Ok(DirState::Private)
}

#[cfg(windows)]
pub fn ensure_private_dir(dir: &Path) -> Result<DirState, DirError> {
    fs::create_dir_all(dir).map_err(|e| DirError::Io(dir.to_path_buf(), e))?;
    Ok(DirState::Private)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir() -> PathBuf {
        let d = env::temp_dir().join(format!(
            "regent-paths-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn creates_private_dir() {
        let base = tempdir();
        let dir = base.join("a/b/regent");
        assert_eq!(ensure_private_dir(&dir).unwrap(), DirState::Private);
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn tightens_loose_dir() {
        let base = tempdir();
        let dir = base.join("loose");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            ensure_private_dir(&dir).unwrap(),
            DirState::Tightened(0o777)
        );
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn refuses_symlink_and_file() {
        let base = tempdir();
        let target = base.join("target");
        fs::create_dir(&target).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = ensure_private_dir(&link).unwrap_err();
        assert!(matches!(err, DirError::Symlink(_)), "{err}");
        assert!(err.to_string().contains("symbolic link"));

        let file = base.join("file");
        fs::write(&file, b"").unwrap();
        assert!(matches!(
            ensure_private_dir(&file),
            Err(DirError::NotDirectory(_))
        ));
        fs::remove_dir_all(base).unwrap();
    }

    /// `REGENT_SOCKET` wins over `XDG_RUNTIME_DIR`; empty counts as unset.
    /// The environment of this process is never changed (other tests read
    /// it at the same time): the test runs itself again in a child with the
    /// variables set, and the child compares `socket_path()` with what the
    /// parent expects.
    #[test]
    fn socket_env_wins() {
        const EXPECT: &str = "REGENT_PATHS_TEST_EXPECT_SOCKET";
        if let Some(want) = env::var_os(EXPECT) {
            assert_eq!(socket_path(), PathBuf::from(want));
            return;
        }
        let cases: [(Option<&str>, &str); 3] = [
            (Some("/elsewhere/x.sock"), "/elsewhere/x.sock"),
            (Some(""), "/run/user/4242/regent/agent.sock"),
            (None, "/run/user/4242/regent/agent.sock"),
        ];
        let exe = std::env::current_exe().unwrap();
        for (socket, want) in cases {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args([
                "--exact",
                "paths::tests::socket_env_wins",
                "--test-threads=1",
            ])
            .env(EXPECT, want)
            .env("XDG_RUNTIME_DIR", "/run/user/4242");
            match socket {
                Some(s) => cmd.env(SOCKET_ENV, s),
                None => cmd.env_remove(SOCKET_ENV),
            };
            let out = cmd.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "REGENT_SOCKET={socket:?}: expected {want}\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
