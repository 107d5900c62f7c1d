//! Where regent keeps things, and what regent does to the directories.
//!
//! | what | path |
//! |---|---|
//! | agent socket | `$REGENT_SOCKET` (an absolute path), else `$XDG_RUNTIME_DIR/regent/agent.sock`, else `<temp dir>/regent-<uid>/agent.sock`; a named pipe `\\.\pipe\regent-<user>` on Windows |
//! | store lock (pid and socket of the agent that holds the store), start lock | `<data dir>/regent/agent.lock`, `<data dir>/regent/start.lock` |
//! | config file | `$REGENT_CONFIG`, else `<config dir>/regent/config.toml` |
//! | key file of the `file` store | `<config dir>/regent/master.key` |
//! | data: index, encrypted store | `<data dir>/regent/` |
//! | agent log | `<state dir>/regent/agent.log` |
//!
//! The config, data and state dirs are the platform's (`$XDG_CONFIG_HOME`,
//! `$XDG_DATA_HOME`, `$XDG_STATE_HOME` with their defaults on Linux).
//!
//! # Socket directories
//!
//! The socket's directory must be a real directory (not a link) owned by the
//! user, with no group or other permissions and no sticky bit;
//! [`ensure_socket_dir`] checks it before every use. A missing directory is
//! created 0700. regent changes the mode of only one kind of existing
//! directory: its own default socket directory (`$XDG_RUNTIME_DIR/regent`,
//! `<temp dir>/regent-<uid>`), which it tightens to 0700. Any other directory
//! (the parent of a `REGENT_SOCKET`, such as `/tmp` or a home directory) that
//! is loose or sticky is refused with the fix, never changed, and nothing is
//! written into it. Nothing but the socket lives there.
//!
//! The socket path itself must be absolute and, when it exists, a socket of
//! the user's: a regular file, a directory or a link there is refused and
//! never removed.

use std::env;
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

/// The directory that holds the socket.
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

/// The store lock in `data_dir`: held by the one agent that serves the
/// store there, for its whole life, and holding its pid and socket.
pub fn store_lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent.lock")
}

/// The start lock in `data_dir`: one client at a time decides whether to
/// start an agent for the store there.
pub fn start_lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join("start.lock")
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

/// The real user id, asked of the kernel once per process (regent never
/// changes it).
#[cfg(unix)]
pub fn current_uid() -> u32 {
    static UID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    // SAFETY: getuid has no preconditions and cannot fail.
    *UID.get_or_init(|| unsafe { libc::getuid() })
}

/// The fix for a socket directory that cannot be used.
const PRIVATE_DIR_FIX: &str = "put the socket in a directory of your own: \
     `mkdir -m 700 ~/.regent` and REGENT_SOCKET=~/.regent/agent.sock (or unset REGENT_SOCKET)";

/// What is wrong with a socket path or a directory regent was about to trust.
/// Every message names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot create or inspect {}: {}", .0.display(), .1)]
    Io(PathBuf, io::Error),
    #[error(
        "{} is a symbolic link; regent refuses to put its socket behind a link. \
         Remove it (rm {}) or set {SOCKET_ENV} to a socket in a private directory",
        .0.display(),
        .0.display()
    )]
    Symlink(PathBuf),
    #[error(
        "{} is not a directory. Remove it or set {SOCKET_ENV} to a socket in a private directory",
        .0.display()
    )]
    NotDirectory(PathBuf),
    #[error(
        "{} belongs to uid {owner}, not to you (uid {me}): another user could impersonate the agent. \
         Remove it (as its owner or root) or set {SOCKET_ENV} to a socket in a private directory",
        .path.display()
    )]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    /// A directory regent did not create, with group or other permissions
    /// or the sticky bit (the full mode).
    #[error(
        "{} has mode {mode:o}: a {} directory cannot hold regent's socket, and regent \
         changes no directory it did not create; {PRIVATE_DIR_FIX}",
        .path.display(),
        loose_kind(*.mode)
    )]
    Loose { path: PathBuf, mode: u32 },
    /// `REGENT_SOCKET` is not an absolute path.
    #[error(
        "{SOCKET_ENV}={} is a relative path, which would name another socket in every \
         working directory; set {SOCKET_ENV} to an absolute path (e.g. ~/.regent/agent.sock) or unset it",
        .0.display()
    )]
    RelativeSocket(PathBuf),
    /// Something other than a socket is at the socket path.
    #[error(
        "{} is {what}, not a socket; regent never removes it. Set {SOCKET_ENV} to a \
         socket path of its own (e.g. ~/.regent/agent.sock) or unset it",
        .path.display()
    )]
    NotSocket { path: PathBuf, what: &'static str },
    /// A socket of another user is at the socket path.
    #[error(
        "the socket {} belongs to uid {owner}, not to you (uid {me}): it is not your agent. \
         Remove it (as its owner or root) or set {SOCKET_ENV} to a socket in a private directory",
        .path.display()
    )]
    ForeignSocket { path: PathBuf, owner: u32, me: u32 },
}

/// What kind of directory a [`DirError::Loose`] mode describes.
fn loose_kind(mode: u32) -> &'static str {
    if mode & 0o1000 != 0 {
        "shared (sticky)"
    } else {
        "group- or world-accessible"
    }
}

/// How [`ensure_socket_dir`] found the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    Private,
    /// regent's own default socket directory had group or other
    /// permissions or the sticky bit (the old mode); it is 0700 now.
    Tightened(u32),
}

/// Checks the directory of `socket` before regent uses it: creates it 0700
/// when missing, then requires a real directory owned by the current user
/// with no group or other permissions and no sticky bit. Only regent's own
/// default socket directory is tightened when loose; any other is refused
/// and left as it is. A relative `socket` is refused.
#[cfg(unix)]
pub fn ensure_socket_dir(socket: &Path) -> Result<DirState, DirError> {
    if !socket.is_absolute() {
        return Err(DirError::RelativeSocket(socket.to_path_buf()));
    }
    let dir = runtime_dir(socket);
    let own = default_socket_path().parent() == Some(dir.as_path());
    check_dir(&dir, own)
}

#[cfg(windows)]
pub fn ensure_socket_dir(_socket: &Path) -> Result<DirState, DirError> {
    Ok(DirState::Private)
}

/// Creates `dir` as a 0700 directory if it is missing (and its missing
/// parents, 0700 too), then checks that it is a real directory (not a
/// link), owned by the current user, with no group or other permissions and
/// no sticky bit. Anything else is refused; an existing directory's mode is
/// never changed.
#[cfg(unix)]
pub fn ensure_private_dir(dir: &Path) -> Result<DirState, DirError> {
    check_dir(dir, false)
}

#[cfg(windows)]
pub fn ensure_private_dir(dir: &Path) -> Result<DirState, DirError> {
    fs::create_dir_all(dir).map_err(|e| DirError::Io(dir.to_path_buf(), e))?;
    Ok(DirState::Private)
}

/// [`ensure_private_dir`]; `own`: the directory is regent's by name, and a
/// loose mode is tightened instead of refused.
#[cfg(unix)]
fn check_dir(dir: &Path, own: bool) -> Result<DirState, DirError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let io_error = |e| DirError::Io(dir.to_path_buf(), e);
    // One lstat when the directory is there (every lookup); mkdir only when
    // it is not, then the same checks on what was made.
    let meta = match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_private_dir(dir).map_err(io_error)?;
            fs::symlink_metadata(dir).map_err(io_error)?
        }
        r => r.map_err(io_error)?,
    };
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
    let mode = meta.mode() & 0o7777;
    if mode & 0o1077 == 0 {
        return Ok(DirState::Private);
    }
    if !own {
        return Err(DirError::Loose {
            path: dir.to_path_buf(),
            mode,
        });
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error)?;
    Ok(DirState::Tightened(mode))
}

/// Creates `dir` and its missing parents with mode 0700 (the XDG base
/// directory rule); an existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    match builder.create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Checks what is at the socket path: nothing, or a socket of the current
/// user's. A regular file, a directory, a link or a foreign socket is
/// refused; regent removes only a socket of its user's that refuses
/// connections.
#[cfg(unix)]
pub fn check_socket_file(socket: &Path) -> Result<(), DirError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    let meta = match fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DirError::Io(socket.to_path_buf(), e)),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_file() {
            "a regular file"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_symlink() {
            "a symbolic link"
        } else {
            "a special file"
        };
        return Err(DirError::NotSocket {
            path: socket.to_path_buf(),
            what,
        });
    }
    let me = current_uid();
    if meta.uid() != me {
        return Err(DirError::ForeignSocket {
            path: socket.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

#[cfg(windows)]
pub fn check_socket_file(_socket: &Path) -> Result<(), DirError> {
    Ok(())
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
    fn refuses_a_loose_or_sticky_dir_and_leaves_it() {
        let base = tempdir();
        for mode in [0o777, 0o755, 0o1777, 0o1700] {
            let dir = base.join(format!("loose-{mode:o}"));
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let err = ensure_private_dir(&dir).unwrap_err();
            assert!(
                matches!(err, DirError::Loose { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("mkdir -m 700"), "{err}");
            let now = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
            assert_eq!(
                now, mode,
                "the mode of a directory regent did not create changed"
            );
        }
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn tightens_only_its_own_dir() {
        let base = tempdir();
        let dir = base.join("regent");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(check_dir(&dir, true).unwrap(), DirState::Tightened(0o777));
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_relative_socket_is_refused_by_name() {
        let err = ensure_socket_dir(Path::new("agent.sock")).unwrap_err();
        assert!(matches!(err, DirError::RelativeSocket(_)), "{err}");
        assert!(
            err.to_string().contains("REGENT_SOCKET=agent.sock"),
            "{err}"
        );
    }

    #[test]
    fn only_a_socket_may_be_at_the_socket_path() {
        let base = tempdir();
        let missing = base.join("missing.sock");
        check_socket_file(&missing).unwrap();
        let file = base.join("config.json");
        fs::write(&file, b"{}").unwrap();
        let err = check_socket_file(&file).unwrap_err();
        assert!(
            matches!(
                err,
                DirError::NotSocket {
                    what: "a regular file",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        let err = check_socket_file(&base).unwrap_err();
        assert!(
            matches!(
                err,
                DirError::NotSocket {
                    what: "a directory",
                    ..
                }
            ),
            "{err}"
        );
        let sock = base.join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        check_socket_file(&sock).unwrap();
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

    /// Every message, byte for byte: the CLI, the helper and the agent print
    /// them, and the integration tests match on them.
    #[test]
    fn dir_error_messages_are_pinned() {
        let p = || PathBuf::from("/run/x");
        let cases = [
            (
                DirError::Io(p(), io::Error::other("boom")),
                "cannot create or inspect /run/x: boom",
            ),
            (
                DirError::Symlink(p()),
                "/run/x is a symbolic link; regent refuses to put its socket behind a link. \
                 Remove it (rm /run/x) or set REGENT_SOCKET to a socket in a private directory",
            ),
            (
                DirError::NotDirectory(p()),
                "/run/x is not a directory. Remove it or set REGENT_SOCKET to a socket in a private directory",
            ),
            (
                DirError::ForeignOwner {
                    path: p(),
                    owner: 7,
                    me: 1000,
                },
                "/run/x belongs to uid 7, not to you (uid 1000): another user could impersonate the agent. \
                 Remove it (as its owner or root) or set REGENT_SOCKET to a socket in a private directory",
            ),
            (
                DirError::Loose {
                    path: p(),
                    mode: 0o40755,
                },
                "/run/x has mode 40755: a group- or world-accessible directory cannot hold regent's socket, \
                 and regent changes no directory it did not create; put the socket in a directory of your own: \
                 `mkdir -m 700 ~/.regent` and REGENT_SOCKET=~/.regent/agent.sock (or unset REGENT_SOCKET)",
            ),
            (
                DirError::Loose {
                    path: p(),
                    mode: 0o41777,
                },
                "/run/x has mode 41777: a shared (sticky) directory cannot hold regent's socket, \
                 and regent changes no directory it did not create; put the socket in a directory of your own: \
                 `mkdir -m 700 ~/.regent` and REGENT_SOCKET=~/.regent/agent.sock (or unset REGENT_SOCKET)",
            ),
            (
                DirError::RelativeSocket(PathBuf::from("a.sock")),
                "REGENT_SOCKET=a.sock is a relative path, which would name another socket in every \
                 working directory; set REGENT_SOCKET to an absolute path (e.g. ~/.regent/agent.sock) or unset it",
            ),
            (
                DirError::NotSocket {
                    path: p(),
                    what: "a regular file",
                },
                "/run/x is a regular file, not a socket; regent never removes it. Set REGENT_SOCKET to a \
                 socket path of its own (e.g. ~/.regent/agent.sock) or unset it",
            ),
            (
                DirError::ForeignSocket {
                    path: p(),
                    owner: 7,
                    me: 1000,
                },
                "the socket /run/x belongs to uid 7, not to you (uid 1000): it is not your agent. \
                 Remove it (as its owner or root) or set REGENT_SOCKET to a socket in a private directory",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
            assert!(std::error::Error::source(&err).is_none(), "{text}");
        }
    }
}
