//! The listening socket: handed over by systemd, or bound here after a stale
//! socket of ours is removed; and the watch that stops the agent once the
//! socket it bound is gone.
//!
//! Unix only: on Windows the agent listens on its named pipe
//! (`sys::Listener::bind`), which no file names, so there is nothing stale
//! to remove and nothing to watch, and no socket activation.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use regent_shared::paths;

use super::state::AgentState;
use crate::sys::Listener;

/// Which file a path names: the socket we bound, or something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketId {
    dev: u64,
    ino: u64,
}

impl SocketId {
    /// As a handover carries it.
    #[cfg(target_os = "linux")]
    pub fn new(dev: u64, ino: u64) -> SocketId {
        SocketId { dev, ino }
    }

    /// `(dev, ino)`, as a handover carries it.
    #[cfg(target_os = "linux")]
    pub fn parts(self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    pub fn of(path: &Path) -> Option<SocketId> {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(path).ok().map(|m| SocketId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// The listening socket: handed over by the program this one replaced
/// (with what it said of it), by systemd (`None`), or bound here (the
/// identity of the socket file).
pub fn listen(
    socket: &Path,
    handed: Option<(OwnedFd, Option<SocketId>)>,
) -> anyhow::Result<(Listener, Option<SocketId>)> {
    if let Some((fd, id)) = handed {
        return Ok((Listener::from_std(StdUnixListener::from(fd))?, id));
    }
    let mut fds = listenfd::ListenFd::from_env();
    if let Ok(Some(listener)) = fds.take_unix_listener(0) {
        return Ok((Listener::from_std(listener)?, None));
    }
    if fs::symlink_metadata(socket).is_ok() {
        // Only a socket of ours may be removed; anything else stays.
        paths::check_socket_file(socket)?;
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(_) => bail!(
                "{} is already served by another process; run `regent status`",
                socket.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %socket.display(), "removing a stale socket");
                fs::remove_file(socket).with_context(|| {
                    format!("cannot remove the stale socket {}", socket.display())
                })?;
            }
            Err(e) => bail!("cannot check the socket {}: {e}", socket.display()),
        }
    }
    let listener = StdUnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))?;
    let id = SocketId::of(socket)
        .with_context(|| format!("the socket {} vanished once bound", socket.display()))?;
    Ok((Listener::from_std(listener)?, Some(id)))
}

/// Stops the agent once the socket it bound is removed or replaced (as when
/// the runtime directory of a finished login session is deleted): nobody
/// can reach it any more, and it must not keep the store locked.
pub fn watch_socket(state: Arc<AgentState>, socket: PathBuf, id: SocketId) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if SocketId::of(&socket) != Some(id) {
                tracing::warn!(
                    socket = %socket.display(),
                    "the socket was removed or replaced; stopping so that another agent can serve the store"
                );
                state.stop();
                return;
            }
        }
    });
}

/// Removes the socket at `socket` if it is still the one we bound.
pub fn remove_if_ours(socket: &Path, id: SocketId) {
    if SocketId::of(socket) == Some(id) {
        let _ = fs::remove_file(socket);
    }
}
