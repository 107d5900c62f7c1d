//! Signals: SIGTERM and SIGINT stop the agent, SIGHUP re-reads the config's
//! token sources (as `regent reload` does).

use std::sync::Arc;

use super::state::AgentState;

pub fn watch(state: Arc<AgentState>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); break; }
                _ = int.recv() => { tracing::info!("SIGINT"); break; }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    // A refused reload is logged by `reload` itself.
                    let _ = state.reload();
                }
            }
        }
        state.stop();
    });
    Ok(())
}
