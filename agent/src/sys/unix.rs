//! The unix side of [`crate::sys`].

use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use regent_shared::paths;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{Event, Peer};

/// One accepted connection.
pub type Stream = tokio::net::UnixStream;

/// The listening socket (bound, handed over by systemd or by the program
/// an upgrade replaced: `daemon::listen`).
pub struct Listener(tokio::net::UnixListener);

impl Listener {
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        Ok(Listener(tokio::net::UnixListener::from_std(listener)?))
    }

    pub async fn accept(&mut self) -> io::Result<Stream> {
        self.0.accept().await.map(|(stream, _)| stream)
    }

    /// The path the socket is bound to, as the kernel says.
    pub fn path(&self) -> Option<PathBuf> {
        let addr = self.0.local_addr().ok()?;
        addr.as_pathname().map(Path::to_path_buf)
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The peer's uid against ours (`SO_PEERCRED`, `getpeereid`).
pub fn peer(stream: &Stream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    if cred.uid() == paths::current_uid() {
        return Ok(Peer::Ours);
    }
    Ok(Peer::Other {
        user: format!("uid {}", cred.uid()),
        pid: cred.pid().and_then(|pid| u32::try_from(pid).ok()),
    })
}

/// No core dumps, and (Linux) no ptrace or `/proc/<pid>/mem` access by other
/// processes of the same user.
pub fn harden() {
    // SAFETY: plain syscalls with valid arguments; failures are reported.
    unsafe {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &none) != 0 {
            eprintln!(
                "regent: cannot disable core dumps: {}",
                io::Error::last_os_error()
            );
        }
        #[cfg(target_os = "linux")]
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            eprintln!(
                "regent: cannot make the agent non-dumpable: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// A session of our own: no controlling terminal, no signals meant for the
/// program that started us.
pub fn detach() {
    // SAFETY: setsid has no preconditions; failure (already a group leader)
    // is harmless.
    unsafe {
        libc::setsid();
    }
}

/// Which standard stream [`redirect_to_null`] lets go of.
#[derive(Debug, Clone, Copy)]
pub enum StdStream {
    Out,
    Err,
}

/// Points stdout or stderr at /dev/null, closing what it was (the spawning
/// client's pipe then reads end of file).
pub fn redirect_to_null(which: StdStream) {
    let fd = match which {
        StdStream::Out => 1,
        StdStream::Err => 2,
    };
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: both descriptors are valid; dup2 replaces `fd` atomically.
        unsafe {
            libc::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// Whether a process `pid` exists (signal 0).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// How a person ends process `pid` by hand.
pub fn kill_hint(pid: u32) -> String {
    format!("`kill {pid}`")
}

/// Puts a child in a process group of its own, for [`kill_group`].
pub fn own_group(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
}

/// SIGKILL to the process group `pid` leads (made by [`own_group`]): the
/// child and whatever it started. Call it only before the leader is reaped,
/// so that the group id is still the one made for the child.
pub fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: a plain system call on the group we created.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// The signal that ended a child, if one did.
pub fn exit_signal(status: &ExitStatus) -> Option<i32> {
    status.signal()
}

/// SIGTERM, SIGINT (stop) and SIGHUP (reload), once [`Signals::new`]
/// installed their handlers.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next request.
    pub async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.term.recv() => Event::Stop("SIGTERM"),
            _ = self.int.recv() => Event::Stop("SIGINT"),
            _ = self.hup.recv() => Event::Reload,
        }
    }
}

/// Terminal echo off (`tcsetattr` on stdin) for as long as it lives.
pub struct EchoOff(Option<libc::termios>);

#[expect(
    clippy::new_without_default,
    reason = "it turns the echo off: not a value to default to"
)]
impl EchoOff {
    pub fn new() -> EchoOff {
        // SAFETY: termios calls on stdin with a zeroed, then filled, struct.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut term) != 0 {
                return EchoOff(None);
            }
            let old = term;
            term.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &term) != 0 {
                return EchoOff(None);
            }
            EchoOff(Some(old))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, old);
            }
        }
    }
}

/// A new directory's mode: 0700.
pub fn private_dir(builder: &mut DirBuilder) -> &mut DirBuilder {
    builder.mode(0o700)
}

/// A new file's mode: 0600.
pub fn private_file(options: &mut OpenOptions) -> &mut OpenOptions {
    file_mode(options, 0o600)
}

/// A new file's mode.
pub fn file_mode(options: &mut OpenOptions, mode: u32) -> &mut OpenOptions {
    options.mode(mode)
}

/// Sets an open file's mode (whatever the umask made of it).
pub fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Sets a path's mode.
pub fn set_path_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// A file's permission bits.
pub fn mode_of(meta: &Metadata) -> Option<u32> {
    Some(meta.mode() & 0o7777)
}

/// A local time in seconds since the epoch (`mktime`), or `None` before
/// 1970 or when `mktime` cannot say.
pub fn local_to_unix(t: time::PrimitiveDateTime) -> Option<u64> {
    let mut tm = super::tm_of(t);
    // SAFETY: `tm` is a valid value owned here. mktime also reads the
    // process's time zone (TZ, /etc/localtime), which nothing in the agent
    // changes once it runs (its environment is fixed at its start).
    let secs = unsafe { libc::mktime(&mut tm) };
    u64::try_from(secs).ok().filter(|s| *s > 0)
}
