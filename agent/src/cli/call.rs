//! How the commands reach the agent: [`call_agent`] starts it when it is not
//! running, [`running_agent`] only connects to one that is; an answer a
//! command does not expect is [`unexpected`].

use std::time::Duration;

use anyhow::{anyhow, bail};
use regent_shared::client::{self, AgentExe, ClientError, Connection, Options};
use regent_shared::paths;
use regent_shared::protocol::{Request, Response};

/// Options for commands that start the agent when it is not running.
pub fn starting_options() -> Options {
    let mut opts = Options::new("cli");
    opts.agent_exe = match std::env::current_exe() {
        Ok(exe) => AgentExe::Path(exe),
        Err(_) => AgentExe::NextToMe,
    };
    opts
}

/// The agent's answer to `request`, starting the agent when it is not
/// running; an `Error` answer is the command's error (see [`accepted`]).
pub fn call_agent(request: &Request) -> anyhow::Result<Response> {
    accepted(client::call(&starting_options(), request)?)
}

/// A connection to the agent on this session's socket, or `None` when no
/// agent is running; never starts one.
pub fn running_agent() -> anyhow::Result<Option<Connection>> {
    match client::connect(&paths::socket_path(), Duration::from_secs(2)) {
        Ok(conn) => Ok(Some(conn)),
        Err(ClientError::NotRunning(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `answer`, unless the agent refused the request: an `Error` answer is
/// the command's error, in the agent's words.
pub fn accepted(answer: Response) -> anyhow::Result<Response> {
    match answer {
        Response::Error { message, .. } => bail!("{message}"),
        other => Ok(other),
    }
}

/// The error of a command that got an answer it does not expect.
pub fn unexpected(answer: &Response) -> anyhow::Error {
    anyhow!("unexpected answer from the agent: {}", answer.kind())
}
