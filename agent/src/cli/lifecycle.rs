//! `regent start` and `regent stop`: the agent in the background, started
//! unless it is running, and stopped.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use regent_shared::client;
use regent_shared::protocol::{Request, Response};

use super::call;
use super::output::outln;
use crate::sys;

pub fn start() -> anyhow::Result<ExitCode> {
    let (conn, resp) = client::call_with(&call::starting_options(), &Request::Status)?;
    let Response::Status(info) = resp else {
        return Err(call::unexpected(&resp));
    };
    outln!(
        "regent agent running (pid {}, socket {}, store {})",
        conn.agent.pid,
        info.socket,
        info.store
    );
    Ok(ExitCode::SUCCESS)
}

pub fn stop() -> anyhow::Result<ExitCode> {
    let Some(mut conn) = call::running_agent()? else {
        outln!("regent agent is not running");
        return Ok(ExitCode::SUCCESS);
    };
    let pid = conn.agent.pid;
    conn.call(&Request::Quit, Duration::from_secs(5))?;
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !sys::process_alive(pid) {
            outln!("stopped regent agent (pid {pid})");
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!(
        "the agent (pid {pid}) did not exit within 10s; {} stops it",
        sys::kill_hint(pid)
    )
}
