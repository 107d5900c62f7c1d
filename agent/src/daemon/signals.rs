//! Signals: SIGTERM and SIGINT stop the agent, SIGHUP re-reads the config's
//! token sources (as `regent reload` does). On Windows, the console's
//! events stop it (`sys::Signals`).

use std::sync::Arc;

use super::state::AgentState;
use crate::sys::{Event, Signals};

pub fn watch(state: Arc<AgentState>) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    tokio::spawn(async move {
        loop {
            match signals.next().await {
                Event::Stop(name) => {
                    tracing::info!("{name}");
                    break;
                }
                Event::Reload => {
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
