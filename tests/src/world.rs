//! A hermetic regent world: `HOME`, the XDG directories and the agent
//! socket in one temporary directory, the environment every process of that
//! world runs with, and the agent started and stopped in it.
//!
//! The test harness ([`crate::TestEnv`]) and the benchmark (`bench/`) both
//! build on a [`World`]. A child of the world inherits none of the caller's
//! `REGENT_*` and `XDG_*` variables; it gets `HOME`, `XDG_RUNTIME_DIR`
//! (0700), `XDG_CONFIG_HOME`, `XDG_DATA_HOME`, `XDG_STATE_HOME`,
//! `XDG_CACHE_HOME`, `REGENT_SOCKET`, `REGENT_STORE` and
//! `AWS_EC2_METADATA_DISABLED=true`, the Google and Azure metadata
//! endpoints on a closed loopback port ([`CLOSED_METADATA`]), no cloud
//! CLI (`REGENT_GCLOUD=`, `REGENT_AZ=`), none of
//! [`CLOUD_CALLER_VARIABLES`], then whatever [`World::set_env`] added.
//! Dropping the world stops its agent and removes the directory.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use regent_shared::client;
use regent_shared::protocol::{Request, Response};

use crate::{is_alive, kill, wait_until};

/// The caller's AWS variables that would pick an identity, a region or an
/// endpoint: a world that talks to a loopback fake unsets them all first,
/// then sets what it means (the fake's endpoints, keys made at test time).
pub const AWS_CALLER_VARIABLES: &[&str] = &[
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

/// The caller's Google and Azure variables that would pick an identity or
/// an endpoint: a world unsets them all.
pub const CLOUD_CALLER_VARIABLES: &[&str] = &[
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_CONFIG",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_CONFIG_DIR",
];

/// Where a world's agent finds the Google metadata server
/// (`GCE_METADATA_HOST`) and Azure's (`AZURE_POD_IDENTITY_AUTHORITY_HOST`)
/// unless a test points them at a fake: a loopback port nothing listens on,
/// so a credential chain that reaches them is refused there, never sent
/// off the machine.
pub const CLOSED_METADATA: &str = "127.0.0.1:1";

/// The store backend of a world (under test, for [`crate::TestEnv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    File,
    Keyring,
    Keyutils,
}

impl StoreKind {
    pub fn from_env() -> StoreKind {
        match std::env::var("REGENT_TEST_STORE") {
            Err(_) => StoreKind::Memory,
            Ok(v) => match v.trim() {
                "" | "memory" => StoreKind::Memory,
                "file" => StoreKind::File,
                "keyring" => StoreKind::Keyring,
                "keyutils" => StoreKind::Keyutils,
                other => panic!(
                    "REGENT_TEST_STORE={other:?}: expected memory, file, keyring or keyutils"
                ),
            },
        }
    }

    /// The value of `REGENT_STORE` and of `store` in `regent status --json`.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::File => "file",
            StoreKind::Keyring => "keyring",
            StoreKind::Keyutils => "keyutils",
        }
    }

    /// True when credentials survive an agent restart.
    pub fn is_persistent(self) -> bool {
        self != StoreKind::Memory
    }
}

/// Changes to a child's environment: set, or with `None` removed.
pub type EnvChanges = Vec<(OsString, Option<OsString>)>;

/// One regent installation of its own, in a temporary directory.
pub struct World {
    /// Removed on drop, after the agent is stopped.
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub home: PathBuf,
    pub runtime_dir: PathBuf,
    pub config_home: PathBuf,
    pub data_home: PathBuf,
    pub state_home: PathBuf,
    pub cache_home: PathBuf,
    pub socket: PathBuf,
    pub store: StoreKind,
    /// The world's variables, applied in order after the inherited
    /// `REGENT_*` and `XDG_*` ones are removed.
    env: EnvChanges,
}

impl World {
    /// Makes the directories under a fresh `<prefix>XXXXXX` in the temporary
    /// directory (or /tmp when that path is long: a Unix socket path has at
    /// most ~107 bytes), each 0700, for an agent on `store`.
    pub fn new(prefix: &str, store: StoreKind) -> Result<World, String> {
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() > 40 {
            base = PathBuf::from("/tmp");
        }
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&base)
            .map_err(|e| {
                format!(
                    "cannot make a temporary directory in {}: {e}",
                    base.display()
                )
            })?;
        let root = dir.path().to_path_buf();
        let home = root.join("home");
        let runtime_dir = root.join("run");
        let config_home = root.join("config");
        let data_home = root.join("data");
        let state_home = root.join("state");
        let cache_home = root.join("cache");
        for d in [
            &home,
            &runtime_dir,
            &config_home,
            &data_home,
            &state_home,
            &cache_home,
        ] {
            fs::create_dir_all(d)
                .and_then(|()| fs::set_permissions(d, fs::Permissions::from_mode(0o700)))
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let socket = runtime_dir.join("regent").join("agent.sock");
        let path = |p: &Path| Some(p.as_os_str().to_owned());
        let mut env = vec![
            ("HOME".into(), path(&home)),
            ("XDG_RUNTIME_DIR".into(), path(&runtime_dir)),
            ("XDG_CONFIG_HOME".into(), path(&config_home)),
            ("XDG_DATA_HOME".into(), path(&data_home)),
            ("XDG_STATE_HOME".into(), path(&state_home)),
            ("XDG_CACHE_HOME".into(), path(&cache_home)),
            ("REGENT_SOCKET".into(), path(&socket)),
            ("REGENT_STORE".into(), Some(store.name().into())),
            ("AWS_EC2_METADATA_DISABLED".into(), Some("true".into())),
            ("GCE_METADATA_HOST".into(), Some(CLOSED_METADATA.into())),
            // No cloud CLI step (a machine may have gcloud or az installed,
            // and they would reach the network): a test names a stub.
            ("REGENT_GCLOUD".into(), Some("".into())),
            ("REGENT_AZ".into(), Some("".into())),
            (
                "AZURE_POD_IDENTITY_AUTHORITY_HOST".into(),
                Some(format!("http://{CLOSED_METADATA}").into()),
            ),
        ];
        env.extend(CLOUD_CALLER_VARIABLES.iter().map(|v| ((*v).into(), None)));
        Ok(World {
            dir: Some(dir),
            root,
            home,
            runtime_dir,
            config_home,
            data_home,
            state_home,
            cache_home,
            socket,
            store,
            env,
        })
    }

    /// Sets (or with `None` removes) a variable for every later child.
    pub fn set_env(&mut self, key: impl Into<OsString>, value: Option<impl Into<OsString>>) {
        self.env.push((key.into(), value.map(Into::into)));
    }

    /// What a child of this world changes in the caller's environment: the
    /// inherited `REGENT_*` and `XDG_*` variables removed, then the world's.
    pub fn env(&self) -> EnvChanges {
        let mut changes: EnvChanges = std::env::vars_os()
            .filter(|(k, _)| {
                let name = k.to_string_lossy();
                name.starts_with("REGENT_") || name.starts_with("XDG_")
            })
            .map(|(k, _)| (k, None))
            .collect();
        changes.extend(self.env.iter().cloned());
        changes
    }

    /// A command for `program` with this world's environment.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut cmd = Command::new(program.as_ref());
        apply_env(&mut cmd, &self.env());
        cmd
    }

    /// The directory holding the socket, the start lock and the pid file.
    pub fn socket_dir(&self) -> PathBuf {
        self.socket
            .parent()
            .expect("socket has a parent")
            .to_path_buf()
    }

    /// The background agent's log file.
    pub fn log_path(&self) -> PathBuf {
        self.state_home.join("regent").join("agent.log")
    }

    /// `regent start` (the agent executable `regent`) in this world: the
    /// agent's pid once it answers. Its stderr is the caller's; stdin and
    /// stdout are /dev/null, never a pipe the caller would wait on (the agent
    /// may keep what it inherits).
    pub fn start_agent(&self, regent: &Path) -> Result<u32, String> {
        let status = self
            .command(regent)
            .arg("start")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|e| format!("cannot run {} start: {e}", regent.display()))?;
        if !status.success() {
            return Err(format!(
                "`{} start` in {} exited with {status}",
                regent.display(),
                self.root.display()
            ));
        }
        let conn = self.connect().map_err(|e| {
            format!(
                "the agent on {} does not answer: {e}",
                self.socket.display()
            )
        })?;
        Ok(conn.agent.pid)
    }

    /// A connection to the running agent (never starts one).
    pub fn connect(&self) -> Result<client::Connection, String> {
        client::connect(&self.socket, Duration::from_secs(5)).map_err(|e| e.to_string())
    }

    /// The pid of the agent answering on our socket, from its `Hello`.
    /// Never starts an agent.
    pub fn agent_pid(&self) -> Option<u32> {
        if !self.socket.exists() {
            return None;
        }
        let conn = client::connect(&self.socket, Duration::from_secs(3)).ok()?;
        Some(conn.agent.pid)
    }

    /// Sends one request straight to the running agent (never starts one).
    pub fn request(&self, req: &Request) -> Result<Response, String> {
        let mut conn = self.connect()?;
        conn.call(req, Duration::from_secs(20))
            .map_err(|e| e.to_string())
    }

    /// Asks the agent answering on the socket, if any, to quit (`Quit`, as
    /// `regent stop` does), and SIGKILLs it when it is still there 10 s later.
    pub fn quit_agent(&self) {
        let Some(pid) = self.agent_pid() else {
            return;
        };
        if let Ok(mut conn) = self.connect() {
            let _ = conn.call(&Request::Quit, Duration::from_secs(5));
        }
        if !wait_until(Duration::from_secs(10), || !is_alive(pid)) {
            kill(pid, libc::SIGKILL);
        }
    }

    /// Keeps the directory after the world is dropped; its path.
    pub fn keep(&mut self) -> Option<PathBuf> {
        self.dir.take().map(tempfile::TempDir::keep)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.quit_agent();
    }
}

/// Applies `changes` to `cmd`'s environment.
pub fn apply_env(cmd: &mut Command, changes: &[(OsString, Option<OsString>)]) {
    for (k, v) in changes {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
}
