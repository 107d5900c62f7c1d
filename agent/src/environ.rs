//! The agent's own environment: one documented set, whatever process
//! started the agent.
//!
//! Whoever starts the agent (the helper under a `docker pull`, `regent
//! start`, a CI job, systemd) hands it its whole environment, and the agent
//! then serves every caller of this user for hours. So it keeps none of the
//! starter's variables beyond what it needs to run: at the very start of
//! `regent agent`, before any thread exists, [`prepare`] re-executes the
//! agent (`/proc/self/exe`, the same argv) with only
//!
//! - [`KEPT`]: `HOME`, `USER`, `LOGNAME`, `PATH`, `SHELL`, `LANG`,
//!   `LANGUAGE`, `TZ`, `TMPDIR`, `DBUS_SESSION_BUS_ADDRESS` (the Secret
//!   Service), systemd's `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES` and
//!   `NOTIFY_SOCKET`, `SSL_CERT_FILE`, `SSL_CERT_DIR`, the machine's
//!   metadata endpoints `GCE_METADATA_HOST` (Google) and
//!   `AZURE_POD_IDENTITY_AUTHORITY_HOST` (Azure), and the proxy
//!   variables `http_proxy`, `https_proxy`, `no_proxy`, `all_proxy` in lower
//!   and upper case;
//! - [`KEPT_PREFIXES`]: `LC_*`, `XDG_*`, and `REGENT_*` except
//!   `REGENT_MASTER_KEY`.
//!
//! when the environment holds anything else. `exec` keeps the pid and the
//! open descriptors: the spawning client's ready pipe, systemd socket
//! activation (`LISTEN_PID` is still ours) and readiness notification work
//! as before. No `AWS_*` variable is kept: everything AWS comes with each
//! request, as that caller's (`protocol::FORWARDED_ENV`).
//!
//! # The master key
//!
//! `REGENT_MASTER_KEY` is a secret, and `/proc/<pid>/environ` shows the
//! environment a process was started with, whatever `unsetenv` does later.
//! So the re-executed agent does not get it as a variable: it is written
//! into a pipe whose read end the new program inherits, named by
//! `REGENT_MASTER_KEY_FD=<descriptor>`. [`prepare`] reads it from there,
//! closes the descriptor and keeps the key (zeroed when dropped) for the file
//! store, which reads it with [`master_key`], and for the program an
//! upgrade hands over to, which gets it through a new pipe the same way. `REGENT_MASTER_KEY_FD` may also
//! be set by whoever starts the agent (a descriptor above 2, open for
//! reading, holding the base64 key: `regent agent --foreground 3<key`);
//! setting both variables is refused.
//!
//! # Windows
//!
//! There is no `exec` on Windows, and a restart would be a new process (a
//! new pid, the ready pipe and the start lock's owner to hand on), so the
//! agent keeps the environment it was started with. A Windows limitation:
//! the starter's variables stay in the agent's environment for its life,
//! and the commands of its token sources inherit them (less the agent's
//! own `REGENT_*`, which they never get). The master key is taken out at
//! the start:
//! [`prepare`] reads `REGENT_MASTER_KEY` and removes it from the
//! environment, so no command the agent runs inherits it.
//! `REGENT_MASTER_KEY_FD` is unix only (refused, with what to do instead).

use std::ffi::OsStr;
#[cfg(any(unix, test))]
use std::ffi::OsString;
#[cfg(unix)]
use std::fs::File;
#[cfg(unix)]
use std::io::Read;
#[cfg(unix)]
use std::os::fd::{FromRawFd, OwnedFd};
#[cfg(unix)]
use std::os::unix::process::CommandExt;
#[cfg(unix)]
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;
#[cfg(unix)]
use anyhow::{Context, anyhow};
use zeroize::Zeroizing;

/// Environment variable holding a base64 master key for the file store;
/// never kept in the agent's environment (see [`master_key`]).
pub const MASTER_KEY_ENV: &str = "REGENT_MASTER_KEY";

/// Variables the agent keeps, by exact name.
pub const KEPT: &[&str] = &[
    "HOME",
    "USER",
    "LOGNAME",
    "PATH",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "DBUS_SESSION_BUS_ADDRESS",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GCE_METADATA_HOST",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// Variables the agent keeps, by prefix (`REGENT_MASTER_KEY` excepted).
pub const KEPT_PREFIXES: &[&str] = &["LC_", "XDG_", "REGENT_"];

/// The descriptor the master key is read from.
pub const MASTER_KEY_FD_ENV: &str = "REGENT_MASTER_KEY_FD";

/// Longer than any master key text (44 characters of base64); bounds what
/// is written into, and read from, the key descriptor.
#[cfg(unix)]
const MAX_KEY_TEXT: usize = 4096;

/// Set once [`prepare`] ran: the master key is then only what it read.
static PREPARED: AtomicBool = AtomicBool::new(false);
static MASTER_KEY: Mutex<Option<Zeroizing<Vec<u8>>>> = Mutex::new(None);

/// Whether the agent keeps the variable `name`.
pub fn is_kept(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    name != MASTER_KEY_ENV
        && (KEPT.contains(&name) || KEPT_PREFIXES.iter().any(|p| name.starts_with(p)))
}

/// Makes the environment the documented one: re-executes the agent when it
/// is not (and then does not return), else reads the master key from
/// `REGENT_MASTER_KEY_FD`. Call it first, while the process has one thread.
#[cfg(unix)]
pub fn prepare() -> anyhow::Result<()> {
    let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    if vars.iter().any(|(name, _)| !is_kept(name)) {
        return Err(reexec(&vars));
    }
    let key = match std::env::var_os(MASTER_KEY_FD_ENV) {
        None => None,
        Some(fd) => Some(read_key_fd(&fd)?),
    };
    *MASTER_KEY.lock().unwrap_or_else(|p| p.into_inner()) = key;
    PREPARED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Windows: keeps the environment as it is (see the module docs), and takes
/// `REGENT_MASTER_KEY` out of it. Call it first, while the process has one
/// thread.
#[cfg(windows)]
pub fn prepare() -> anyhow::Result<()> {
    if std::env::var_os(MASTER_KEY_FD_ENV).is_some() {
        bail!(
            "{MASTER_KEY_FD_ENV} passes the master key on a descriptor, which only unix has; \
             unset it and set {MASTER_KEY_ENV} instead"
        );
    }
    let key = std::env::var_os(MASTER_KEY_ENV).map(|v| Zeroizing::new(v.into_encoded_bytes()));
    if key.is_some() {
        // SAFETY: called first in `regent agent`, while the process has one
        // thread: nothing reads the environment meanwhile.
        unsafe { std::env::remove_var(MASTER_KEY_ENV) };
    }
    *MASTER_KEY.lock().unwrap_or_else(|p| p.into_inner()) = key;
    PREPARED.store(true, Ordering::SeqCst);
    Ok(())
}

/// The master key text given to this process. In the agent: what
/// [`prepare`] read from `REGENT_MASTER_KEY_FD`, kept for the file store and
/// for the program an upgrade hands over to (`daemon::upgrade`).
/// Elsewhere (tools, tests): `REGENT_MASTER_KEY`.
pub fn master_key() -> Option<Zeroizing<Vec<u8>>> {
    if PREPARED.load(Ordering::SeqCst) {
        return MASTER_KEY.lock().unwrap_or_else(|p| p.into_inner()).clone();
    }
    std::env::var_os(MASTER_KEY_ENV).map(|v| Zeroizing::new(v.into_encoded_bytes()))
}

/// The environment the agent re-executes with.
#[cfg(any(unix, test))]
fn kept(vars: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    vars.iter()
        .filter(|(name, _)| is_kept(name))
        .cloned()
        .collect()
}

#[cfg(unix)]
fn own_executable() -> PathBuf {
    #[cfg(target_os = "linux")]
    return PathBuf::from("/proc/self/exe");
    #[cfg(not(target_os = "linux"))]
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("regent"))
}

/// Replaces this process with the agent in the kept environment. Returns
/// only why that failed.
#[cfg(unix)]
fn reexec(vars: &[(OsString, OsString)]) -> anyhow::Error {
    let exe = own_executable();
    let mut cmd = std::process::Command::new(&exe);
    let mut args = std::env::args_os();
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args).env_clear().envs(kept(vars));
    let key = vars.iter().find(|(name, _)| name == MASTER_KEY_ENV);
    // Open until the exec: the new program inherits the read end.
    let _key_pipe = match key {
        None => None,
        Some((_, key)) => {
            if vars.iter().any(|(name, _)| name == MASTER_KEY_FD_ENV) {
                return anyhow!(
                    "both {MASTER_KEY_ENV} and {MASTER_KEY_FD_ENV} are set; unset one of them"
                );
            }
            match key_pipe(key.as_encoded_bytes()) {
                Ok(fd) => {
                    use std::os::fd::AsRawFd;
                    cmd.env(MASTER_KEY_FD_ENV, fd.as_raw_fd().to_string());
                    Some(fd)
                }
                Err(e) => return e,
            }
        }
    };
    let err = cmd.exec();
    anyhow!(
        "cannot restart the agent with a clean environment ({}): {err}",
        exe.display()
    )
}

/// A pipe holding `key`; its read end, inherited across exec.
#[cfg(unix)]
pub fn key_pipe(key: &[u8]) -> anyhow::Result<OwnedFd> {
    if key.len() > MAX_KEY_TEXT {
        bail!(
            "{MASTER_KEY_ENV} is {} bytes long; a master key is 44 characters of base64 \
             (generate one with: openssl rand -base64 32)",
            key.len()
        );
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe writes two descriptors into the array it is given.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("cannot create a pipe to hand over the master key");
    }
    // SAFETY: both descriptors were just created and are owned only here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A 4 KiB write into an empty pipe completes at once.
    std::io::Write::write_all(&mut File::from(write), key)
        .context("cannot hand over the master key through a pipe")?;
    Ok(read)
}

/// Reads the key text from descriptor `fd` (decimal) and closes it.
#[cfg(unix)]
fn read_key_fd(fd: &OsStr) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let fd: libc::c_int = fd
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| {
            anyhow!(
                "{MASTER_KEY_FD_ENV}={} is not a descriptor number above 2; \
                 unset it or pass the key on a descriptor opened for reading",
                fd.to_string_lossy()
            )
        })?;
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!(
            "{MASTER_KEY_FD_ENV}={fd}: descriptor {fd} is not open; \
             unset {MASTER_KEY_FD_ENV} or open it for reading (e.g. `{fd}<master.key`)"
        );
    }
    // SAFETY: the descriptor is open, was handed to this process for this
    // purpose, and is used nowhere else; the File closes it.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut key = Zeroizing::new(Vec::with_capacity(MAX_KEY_TEXT + 1));
    file.take(MAX_KEY_TEXT as u64 + 1)
        .read_to_end(&mut key)
        .with_context(|| format!("cannot read the master key from {MASTER_KEY_FD_ENV}={fd}"))?;
    if key.len() > MAX_KEY_TEXT {
        bail!(
            "{MASTER_KEY_FD_ENV}={fd} holds more than {MAX_KEY_TEXT} bytes; \
             a master key is 44 characters of base64"
        );
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(names: &[&str]) -> Vec<(OsString, OsString)> {
        names
            .iter()
            .map(|n| (OsString::from(n), OsString::from("v")))
            .collect()
    }

    #[test]
    fn the_allowlist_keeps_what_the_agent_needs_and_nothing_else() {
        for name in [
            "HOME",
            "PATH",
            "LC_ALL",
            "XDG_RUNTIME_DIR",
            "REGENT_SOCKET",
            "REGENT_MASTER_KEY_FD",
            "LISTEN_FDS",
            "NOTIFY_SOCKET",
            "https_proxy",
            "NO_PROXY",
            "DBUS_SESSION_BUS_ADDRESS",
        ] {
            assert!(is_kept(OsStr::new(name)), "{name}");
        }
        for name in [
            "REGENT_MASTER_KEY",
            "AWS_ACCESS_KEY_ID",
            "AWS_PROFILE",
            "CI_REGISTRY_PASSWORD",
            "GITHUB_TOKEN",
            "LD_PRELOAD",
            "home",
            "",
        ] {
            assert!(!is_kept(OsStr::new(name)), "{name}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            assert!(!is_kept(OsStr::from_bytes(b"HOME\xff")));
        }
    }

    #[test]
    fn the_kept_environment_is_a_fixed_point() {
        // The re-executed agent must not re-execute again.
        let once = kept(&vars(&[
            "HOME",
            "AWS_SECRET_ACCESS_KEY",
            "REGENT_MASTER_KEY",
            "LC_X",
        ]));
        assert_eq!(once, vars(&["HOME", "LC_X"]));
        assert!(once.iter().all(|(n, _)| is_kept(n)));
        assert_eq!(kept(&once), once);
    }

    #[cfg(unix)]
    #[test]
    fn a_key_goes_through_a_pipe_and_its_descriptor_is_closed() {
        use std::os::fd::IntoRawFd;
        let fd = key_pipe(b"a2V5").unwrap().into_raw_fd();
        let key = read_key_fd(OsStr::new(&fd.to_string())).unwrap();
        assert_eq!(&key[..], b"a2V5");
        let err = read_key_fd(OsStr::new("999999")).unwrap_err().to_string();
        assert!(err.contains("not open"), "{err}");
        let err = read_key_fd(OsStr::new("1")).unwrap_err().to_string();
        assert!(err.contains("above 2"), "{err}");
        let err = read_key_fd(OsStr::new("x")).unwrap_err().to_string();
        assert!(err.contains(MASTER_KEY_FD_ENV), "{err}");
        assert!(key_pipe(&[b'a'; MAX_KEY_TEXT + 1]).is_err());
    }
}
