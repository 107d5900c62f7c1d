//! An agent of regent-bench's own: `regent start` with HOME, the XDG dirs
//! and the socket in a temporary directory, the memory store, and whatever
//! extra environment a section needs (the ECR section points the AWS SDK at
//! the loopback fake). Stopped with `Quit` over the socket when dropped.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use regent_shared::client;
use regent_shared::protocol::{Request, Response};

use crate::bench::Proc;

/// Variables of the caller that must not reach a private agent or its
/// clients: they would pick another socket, config, keyring or AWS identity.
const SCRUB: &[&str] = &[
    "REGENT_CONFIG",
    "REGENT_MASTER_KEY",
    "REGENT_KEYRING_SERVICE",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_ECR",
    "AWS_ENDPOINT_URL_ECR_PUBLIC",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
];

pub struct PrivateAgent {
    /// Removed on drop, after the agent is stopped.
    dir: Option<tempfile::TempDir>,
    pub socket: PathBuf,
    /// Set for the agent and for every client of it.
    env: Vec<(OsString, Option<OsString>)>,
    pub pid: u32,
}

impl PrivateAgent {
    /// Starts `regent start` in a fresh temporary world. `extra` is added to
    /// the agent's environment only (after the scrub).
    pub fn start(
        regent: &Path,
        name: &str,
        extra: &[(&str, OsString)],
    ) -> Result<PrivateAgent, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("regent-bench-{name}."))
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let root = dir.path().to_path_buf();
        for sub in ["home", "config", "data", "state", "cache", "run"] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(root.join(sub))
                .map_err(|e| format!("cannot create {}: {e}", root.join(sub).display()))?;
        }
        let socket = root.join("run/regent/agent.sock");
        let mut env: Vec<(OsString, Option<OsString>)> =
            SCRUB.iter().map(|k| (OsString::from(k), None)).collect();
        let set = |k: &str, v: PathBuf| (OsString::from(k), Some(v.into_os_string()));
        env.extend([
            set("HOME", root.join("home")),
            set("XDG_CONFIG_HOME", root.join("config")),
            set("XDG_DATA_HOME", root.join("data")),
            set("XDG_STATE_HOME", root.join("state")),
            set("XDG_CACHE_HOME", root.join("cache")),
            set("XDG_RUNTIME_DIR", root.join("run")),
            set("DOCKER_CONFIG", root.join("home/.docker")),
            set("REGENT_SOCKET", socket.clone()),
            (OsString::from("REGENT_STORE"), Some("memory".into())),
            (
                OsString::from("AWS_EC2_METADATA_DISABLED"),
                Some("true".into()),
            ),
        ]);
        let mut cmd = Command::new(regent);
        cmd.arg("start")
            .stdin(Stdio::null())
            // The agent may keep what it inherits: never a pipe we wait on.
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        apply_env(&mut cmd, &env);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run {} start: {e}", regent.display()))?;
        let mut agent = PrivateAgent {
            dir: Some(dir),
            socket,
            env,
            pid: 0,
        };
        if !status.success() {
            return Err(format!(
                "`{} start` for the {name} agent exited with {status}",
                regent.display()
            ));
        }
        let conn = client::connect(&agent.socket, Duration::from_secs(5))
            .map_err(|e| format!("the {name} agent does not answer: {e}"))?;
        agent.pid = conn.agent.pid;
        Ok(agent)
    }

    /// `program args` with this agent's client environment.
    pub fn proc(&self, program: &Path, args: &[&str]) -> Proc {
        Proc {
            program: program.to_path_buf(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: self.env.clone(),
        }
    }

    /// One request over a fresh connection.
    pub fn call(&self, req: &Request) -> Result<Response, String> {
        let mut conn = self.connect()?;
        conn.call(req, Duration::from_secs(30))
            .map_err(|e| e.to_string())
    }

    pub fn connect(&self) -> Result<client::Connection, String> {
        client::connect(&self.socket, Duration::from_secs(5)).map_err(|e| e.to_string())
    }

    /// `Quit` over the socket; SIGKILL (this agent's pid only) if it is
    /// still there after 10 s.
    pub fn stop(&mut self) {
        if self.dir.is_none() {
            return;
        }
        if let Ok(mut conn) = self.connect() {
            let _ = conn.call(&Request::Quit, Duration::from_secs(5));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(self.pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if self.pid > 0 && alive(self.pid) {
            // SAFETY: kill has no memory-safety preconditions; the pid is
            // the agent this program started.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
            }
        }
        self.dir = None;
    }
}

impl Drop for PrivateAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn apply_env(cmd: &mut Command, env: &[(OsString, Option<OsString>)]) {
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}
