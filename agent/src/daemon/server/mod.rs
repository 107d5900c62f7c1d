//! The server: the accept loop and its peer check here, then for each
//! connection the session (`session`: handshake, protocol check, order of
//! answers), its bytes (`connection`: bounded frames, queued answers), and
//! one handler per request (`handlers`).
//!
//! Every connection is checked before a byte is read from it: the peer must
//! run as our user (its uid; on Windows the user of the pipe client's
//! process, `sys::peer`). Then the first frame must be `Hello` and arrive within
//! [`HANDSHAKE_TIMEOUT`]; later frames may come at any pace up to
//! [`IDLE_TIMEOUT`], and each frame must complete within [`FRAME_TIMEOUT`] of
//! its first byte. A header announcing more than `MAX_FRAME` bytes closes the
//! connection before anything is allocated. At most [`MAX_CONNECTIONS`]
//! connections are served at once; the rest are closed on accept, so idle or
//! hostile peers cannot starve the rest.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::state::AgentState;
use crate::sys::{self, Listener, Peer};

mod connection;
mod handlers;
mod session;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTIONS: usize = 1024;
/// How long the sessions in progress have to end before an upgrade hands
/// over (`daemon::upgrade`).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves connections until `state.shutdown` turns true; before an upgrade
/// (`daemon::upgrade`), then waits up to `DRAIN_TIMEOUT` for the sessions in
/// progress to end. The listener stays open: connections made meanwhile
/// wait in its queue.
pub async fn serve(listener: &mut Listener, state: Arc<AgentState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = state.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match sys::peer(&stream) {
            Ok(Peer::Ours) => {}
            Ok(Peer::Other { user, pid }) => {
                tracing::warn!(
                    peer_user = %user,
                    peer_pid = pid,
                    "refused a connection from another user"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the peer's credentials; connection refused");
                continue;
            }
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(limit = MAX_CONNECTIONS, "too many connections; one refused");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = session::serve(stream, &state).await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    if state.upgrading().is_some() {
        let all = MAX_CONNECTIONS as u32;
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all)).await;
        if drained.is_err() {
            tracing::warn!(
                in_progress = MAX_CONNECTIONS - slots.available_permits(),
                "sessions still open after {DRAIN_TIMEOUT:?}; handing over anyway (their clients retry)"
            );
        }
    }
}
