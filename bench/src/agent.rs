//! An agent of regent-bench's own: `regent start` in a hermetic
//! [`World`] (HOME, the XDG dirs and the socket in a temporary directory,
//! the memory store), with whatever extra environment a section needs (the
//! ECR section points the AWS SDK at the loopback fake). Stopped when
//! dropped.

use std::ffi::OsString;
use std::path::Path;

use regent_shared::client;
use regent_shared::protocol::{Request, Response};
use regent_tests::{AWS_CALLER_VARIABLES, StoreKind, World};

use crate::proc::Proc;

pub struct PrivateAgent {
    /// Its directory and environment, for the agent and every client of it.
    world: World,
    pub pid: u32,
}

impl PrivateAgent {
    /// Starts `regent start` in a fresh world. `extra` is added (after the
    /// scrub) to the environment of the agent and of its clients: the
    /// helper forwards the caller's AWS variables with each `get`
    /// (`FORWARDED_ENV` in shared/src/protocol.rs).
    pub fn start(
        regent: &Path,
        name: &str,
        extra: &[(&str, OsString)],
    ) -> Result<PrivateAgent, String> {
        PrivateAgent::start_with_config(regent, name, extra, "")
    }

    /// As [`PrivateAgent::start`], with `config` as its config file.
    pub fn start_with_config(
        regent: &Path,
        name: &str,
        extra: &[(&str, OsString)],
        config: &str,
    ) -> Result<PrivateAgent, String> {
        let mut world = World::new(&format!("regent-bench-{name}."), StoreKind::Memory)?;
        for var in AWS_CALLER_VARIABLES {
            world.set_env(*var, None::<OsString>);
        }
        let docker_config = world.home.join(".docker");
        world.set_env("DOCKER_CONFIG", Some(docker_config));
        for (k, v) in extra {
            world.set_env(*k, Some(v));
        }
        if !config.is_empty() {
            crate::sources::write_config(&world.config_home, config)?;
        }
        let pid = world
            .start_agent(regent)
            .map_err(|e| format!("the {name} agent: {e}"))?;
        Ok(PrivateAgent { world, pid })
    }

    /// The socket the agent listens on.
    pub fn socket(&self) -> &Path {
        &self.world.socket
    }

    /// `program args` with this agent's client environment.
    pub fn proc(&self, program: &Path, args: &[&str]) -> Proc {
        Proc {
            program: program.to_path_buf(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: self.world.env(),
        }
    }

    /// One request over a fresh connection.
    pub fn call(&self, req: &Request) -> Result<Response, String> {
        self.world.request(req)
    }

    pub fn connect(&self) -> Result<client::Connection, String> {
        self.world.connect()
    }

    /// Asks the agent to quit (SIGKILL if it is still there after 10 s).
    pub fn stop(&self) {
        self.world.quit_agent();
    }
}
