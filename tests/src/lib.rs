//! Test harness: run the real `docker-credential-regent` and `regent` binaries
//! against a real agent, hermetically.
//!
//! Every [`TestEnv`] owns a temporary directory that holds `HOME`, the XDG
//! directories (the runtime dir is 0700) and the agent socket, picks the store
//! backend from `REGENT_TEST_STORE` (`memory`, the default, `file`, `keyring`
//! or `keyutils`), logs at `REGENT_LOG=trace`, and uses its own
//! `REGENT_KEYRING_SERVICE` so that tests running at the same time never share
//! a keyring entry. Inherited `REGENT_*` and `XDG_*` variables never reach a
//! child. Dropping the env stops every agent it started.
//!
//! The binaries are looked up next to the test executable
//! (`target/<profile>/deps/..`), or in `REGENT_BIN_DIR`. Cargo does not build
//! other packages' binaries for `cargo test -p regent-tests`: run
//! `cargo build --workspace --bins` first. With
//! `REGENT_TEST_HELPER_PROFILE=helper` (what scripts/test sets) the helper is
//! the one built as shipped, `cargo build --profile helper -p regent-helper`.
//!
//! Every child runs with a hard timeout: a hang kills it and fails the test
//! with what it printed so far and the agent log.
//!
//! A test that cannot run here calls [`skip`]: the skip is written to
//! `REGENT_TEST_SKIP_LOG` for scripts/test's summary, and in [`strict`] mode
//! (`REGENT_TEST_STRICT=1`, CI) it fails the test. No check may turn into a
//! silent pass.

pub mod e2e;
pub mod fakes;
pub mod secret_service;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use regent_shared::protocol::{EntryInfo, Request, Response, StatusInfo};

// The credential-helper protocol's error lines, spelled out here rather than
// taken from the code under test: docker and its clients match these exact
// strings, so a change in regent's constants must fail the tests.
/// What `get` prints when there are no credentials (docker's `errCredentialsNotFound`).
pub const NOT_FOUND: &str = "credentials not found in native keychain";
/// What every verb prints for an empty server URL.
pub const NO_SERVER_URL: &str = "no credentials server URL";
/// What `store` prints for an empty username.
pub const NO_USERNAME: &str = "no credentials username";

/// The helper's file name.
pub const HELPER: &str = "docker-credential-regent";
/// The agent / CLI file name.
pub const REGENT: &str = "regent";

/// The marker variable every child of a [`TestEnv`] carries, so that the
/// processes it started (including agents spawned by the helper, which
/// inherit the helper's environment) can be found and stopped.
pub const MARKER_ENV: &str = "REGENT_TEST_MARKER";

/// How long a helper or CLI call may take before the test fails as a hang.
/// Generous: the agent start budget is 10 s and tests run in parallel.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The store backend under test.
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

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    pub helper: PathBuf,
    pub regent: PathBuf,
}

/// Chooses the build of the helper the tests run when `REGENT_BIN_DIR` is
/// not set: `helper` is the helper as shipped (`cargo build --profile helper
/// -p regent-helper`: fat LTO, abort on panic), which scripts/test runs;
/// `debug` (the default of a plain `cargo test`) the one next to the test
/// executable.
pub const HELPER_PROFILE_ENV: &str = "REGENT_TEST_HELPER_PROFILE";

impl Bins {
    /// `REGENT_BIN_DIR`, else the cargo target dir of this test executable,
    /// with the helper of the profile [`HELPER_PROFILE_ENV`] chooses.
    pub fn locate() -> Bins {
        let (dir, explicit) = match std::env::var_os("REGENT_BIN_DIR").filter(|d| !d.is_empty()) {
            Some(d) => (PathBuf::from(d), true),
            None => (default_bin_dir(), false),
        };
        let mut bins = Bins {
            helper: dir.join(HELPER),
            regent: dir.join(REGENT),
        };
        if !explicit {
            match std::env::var(HELPER_PROFILE_ENV).as_deref().map(str::trim) {
                Err(_) | Ok("" | "debug") => {}
                Ok("helper") => bins.helper = shipped_helper(&dir, &bins.regent),
                Ok(other) => panic!("{HELPER_PROFILE_ENV}={other:?}: expected helper or debug"),
            }
        }
        for b in [&bins.helper, &bins.regent] {
            if !b.is_file() {
                panic!(
                    "{} does not exist: run `cargo build --workspace --bins` first \
                     (or point REGENT_BIN_DIR at the directory holding {HELPER} and {REGENT})",
                    b.display()
                );
            }
        }
        if !explicit && std::env::var_os("REGENT_TEST_ALLOW_STALE").is_none() {
            let build = "cargo build --workspace --bins";
            check_fresh(&bins.helper, &["helper", "shared"], build);
            check_fresh(&bins.regent, &["agent", "shared"], build);
        }
        bins
    }
}

/// The shipped helper (target/helper/docker-credential-regent), copied once
/// per test process into a directory of its own next to a hard link of the
/// agent at `regent`: the helper starts the `regent` next to its own
/// executable, as in an installation, and must not find another one on PATH.
fn shipped_helper(bin_dir: &Path, regent: &Path) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let target = bin_dir.parent().expect("target/<profile> has a parent");
        let built = target.join("helper").join(HELPER);
        if !built.is_file() {
            panic!(
                "{} does not exist: run `cargo build --profile helper -p regent-helper` \
                 (or unset {HELPER_PROFILE_ENV} to test the debug helper)",
                built.display()
            );
        }
        if std::env::var_os("REGENT_TEST_ALLOW_STALE").is_none() {
            check_fresh(
                &built,
                &["helper", "shared"],
                "cargo build --profile helper -p regent-helper",
            );
        }
        let base = target.join("tmp");
        // Directories of test processes that are gone.
        if let Ok(rd) = fs::read_dir(&base) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name
                    .strip_prefix("shipped-bins-")
                    .and_then(|p| p.parse::<u32>().ok())
                    && !is_alive(pid)
                {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("shipped-bins-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the shipped-bins directory");
        fs::copy(&built, dir.join(HELPER)).expect("copy the shipped helper");
        if fs::hard_link(regent, dir.join(REGENT)).is_err() {
            fs::copy(regent, dir.join(REGENT)).expect("copy regent next to the shipped helper");
        }
        dir
    });
    dir.join(HELPER)
}

fn default_bin_dir() -> PathBuf {
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Fails when a binary is older than the sources it is built from: a run
/// against stale binaries tests yesterday's code.
fn check_fresh(bin: &Path, crates: &[&str], build: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let Ok(built) = fs::metadata(bin).and_then(|m| m.modified()) else {
        return;
    };
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for c in crates {
        newest_mtime(&root.join(c).join("src"), &mut newest);
        newest_mtime(&root.join(c).join("Cargo.toml"), &mut newest);
    }
    if let Some((t, path)) = newest
        && t > built
    {
        panic!(
            "{} is older than {}: run `{build}` first \
             (set REGENT_TEST_ALLOW_STALE=1 to test it anyway)",
            bin.display(),
            path.display()
        );
    }
}

fn newest_mtime(path: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(meta) = fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        if let Ok(rd) = fs::read_dir(path) {
            for e in rd.flatten() {
                newest_mtime(&e.path(), newest);
            }
        }
    } else if let Ok(t) = meta.modified()
        && newest.as_ref().is_none_or(|(n, _)| t > *n)
    {
        *newest = Some((t, path.to_path_buf()));
    }
}

/// What to give a child on stdin.
pub enum Input<'a> {
    /// These bytes, then EOF.
    Bytes(&'a [u8]),
    /// `/dev/null`.
    Null,
    /// A pipe that stays open (never written, never closed) until the child exits.
    Open,
}

/// A finished child.
pub struct Outcome {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout without surrounding white space.
    pub fn out_trim(&self) -> String {
        self.stdout().trim().to_owned()
    }

    /// The lines of stdout (a final newline does not make an empty line).
    pub fn out_lines(&self) -> Vec<String> {
        self.stdout().lines().map(str::to_owned).collect()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown status".into(),
        };
        writeln!(f, "command: {}", self.what)?;
        writeln!(f, "status: {status} after {:?}", self.elapsed)?;
        writeln!(
            f,
            "stdout ({} bytes): {}",
            self.stdout.len(),
            clip(&self.stdout())
        )?;
        write!(
            f,
            "stderr ({} bytes): {}",
            self.stderr.len(),
            clip(&self.stderr())
        )
    }
}

/// At most 4 KiB of a text, for failure messages.
pub fn clip(s: &str) -> String {
    const MAX: usize = 4096;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} more bytes)", &s[..end], s.len() - end)
}

/// Credentials as `get` printed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub server_url: String,
    pub username: String,
    pub secret: String,
}

static ENV_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One hermetic regent installation: its own home, XDG dirs, socket and store.
pub struct TestEnv {
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub home: PathBuf,
    pub runtime_dir: PathBuf,
    pub config_home: PathBuf,
    pub data_home: PathBuf,
    pub state_home: PathBuf,
    pub socket: PathBuf,
    pub store: StoreKind,
    pub keyring_service: String,
    pub id: String,
    pub bins: Bins,
    /// Extra variables for every child (set after the defaults).
    extra_env: Vec<(OsString, Option<OsString>)>,
    /// Pids of foreground agents; a thread per child reaps it on exit, so
    /// `regent stop` (which waits for the pid to vanish) sees no zombie.
    foreground: Mutex<Vec<u32>>,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    pub fn new() -> TestEnv {
        Self::with_store(StoreKind::from_env())
    }

    pub fn with_store(store: StoreKind) -> TestEnv {
        let bins = Bins::locate();
        let n = ENV_COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("regent-test-{}-{n}", std::process::id());
        // Unix socket paths are limited to ~107 bytes: stay short.
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() > 40 {
            base = PathBuf::from("/tmp");
        }
        let dir = tempfile::Builder::new()
            .prefix("rgt.")
            .tempdir_in(&base)
            .expect("create a temporary directory");
        let root = dir.path().to_path_buf();
        let home = root.join("home");
        let runtime_dir = root.join("run");
        let config_home = root.join("config");
        let data_home = root.join("data");
        let state_home = root.join("state");
        for d in [&home, &runtime_dir, &config_home, &data_home, &state_home] {
            fs::create_dir_all(d).expect("create test dirs");
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).expect("chmod test dirs");
        }
        let socket = runtime_dir.join("regent").join("agent.sock");
        TestEnv {
            dir: Some(dir),
            root,
            home,
            runtime_dir,
            config_home,
            data_home,
            state_home,
            socket,
            store,
            keyring_service: id.clone(),
            id,
            bins,
            extra_env: Vec::new(),
            foreground: Mutex::new(Vec::new()),
        }
    }

    /// Sets (or with `None` removes) a variable for every later child.
    pub fn set_env(&mut self, key: impl Into<OsString>, value: Option<impl Into<OsString>>) {
        self.extra_env.push((key.into(), value.map(Into::into)));
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

    fn foreground_stderr_path(&self, n: usize) -> PathBuf {
        self.root.join(format!("foreground-{n}.stderr"))
    }

    /// A command for `program` with this env's environment.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut cmd = Command::new(program.as_ref());
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if name.starts_with("REGENT_") || name.starts_with("XDG_") || name == MARKER_ENV {
                cmd.env_remove(&k);
            }
        }
        cmd.env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("XDG_CONFIG_HOME", &self.config_home)
            .env("XDG_DATA_HOME", &self.data_home)
            .env("XDG_STATE_HOME", &self.state_home)
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("REGENT_SOCKET", &self.socket)
            .env("REGENT_STORE", self.store.name())
            .env("REGENT_LOG", "trace")
            .env("REGENT_KEYRING_SERVICE", &self.keyring_service)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("NO_COLOR", "1")
            .env(MARKER_ENV, &self.id);
        if let Some(key) = std::env::var_os("REGENT_TEST_MASTER_KEY") {
            cmd.env("REGENT_MASTER_KEY", key);
        }
        for (k, v) in &self.extra_env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }

    /// Runs the helper with `args` and `stdin` (then EOF).
    pub fn helper(&self, args: &[&str], stdin: impl AsRef<[u8]>) -> Outcome {
        self.run(
            self.command(&self.bins.helper).args(args),
            Input::Bytes(stdin.as_ref()),
            DEFAULT_TIMEOUT,
        )
    }

    /// Runs the helper with a stdin pipe that is never written nor closed.
    pub fn helper_stdin_open(&self, args: &[&str]) -> Outcome {
        self.run(
            self.command(&self.bins.helper).args(args),
            Input::Open,
            Duration::from_secs(15),
        )
    }

    /// Runs `regent` with `args` and an empty stdin.
    pub fn regent(&self, args: &[&str]) -> Outcome {
        self.run(
            self.command(&self.bins.regent).args(args),
            Input::Null,
            DEFAULT_TIMEOUT,
        )
    }

    /// Runs `cmd` to completion, killing it and failing the test after `timeout`.
    pub fn run(&self, cmd: &mut Command, stdin: Input<'_>, timeout: Duration) -> Outcome {
        match run_with_timeout(cmd, stdin, timeout) {
            Ok(o) => o,
            Err(Hang {
                what,
                stdout,
                stderr,
            }) => panic!(
                "HANG: {what} did not finish within {timeout:?} and was killed\n\
                 stdout so far: {}\nstderr so far: {}\n{}",
                clip(&String::from_utf8_lossy(&stdout)),
                clip(&String::from_utf8_lossy(&stderr)),
                self.diagnostics()
            ),
        }
    }

    /// The agent log(s): the background log file and the stderr of agents
    /// started in the foreground by [`TestEnv::start_foreground_agent`].
    pub fn log_contents(&self) -> String {
        let mut out = fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let n = self.foreground.lock().map(|f| f.len()).unwrap_or(0);
        for i in 0..n {
            if let Ok(b) = fs::read(self.foreground_stderr_path(i)) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
        out
    }

    /// Every file under the test directory, with its contents.
    pub fn all_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        collect_files(&self.root, &mut out);
        out
    }

    /// The tail of the agent log and the state of the agent, for failure messages.
    pub fn diagnostics(&self) -> String {
        let log = self.log_contents();
        let tail = if log.len() > 6000 {
            let mut start = log.len() - 6000;
            while !log.is_char_boundary(start) {
                start += 1;
            }
            format!("...{}", &log[start..])
        } else {
            log
        };
        format!(
            "store: {}; socket: {} (exists: {}); agent pid: {:?}\n--- agent log (tail) ---\n{tail}\n--- end of agent log ---",
            self.store.name(),
            self.socket.display(),
            self.socket.exists(),
            self.agent_pid(),
        )
    }

    /// The pid of the agent answering on our socket, from its `Hello`.
    /// Never starts an agent.
    pub fn agent_pid(&self) -> Option<u32> {
        if !self.socket.exists() {
            return None;
        }
        let conn = regent_shared::client::connect(&self.socket, Duration::from_secs(3)).ok()?;
        Some(conn.agent.pid)
    }

    /// Waits up to `timeout` for an agent to answer; its pid.
    pub fn wait_agent_pid(&self, timeout: Duration) -> Option<u32> {
        let mut pid = None;
        wait_until(timeout, || {
            pid = self.agent_pid();
            pid.is_some()
        });
        pid
    }

    /// Sends one request straight to the running agent (never starts one).
    pub fn request(&self, req: &Request) -> Result<Response, String> {
        let mut conn = regent_shared::client::connect(&self.socket, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        conn.call(req, Duration::from_secs(20))
            .map_err(|e| e.to_string())
    }

    /// Processes (other than this test) that carry this env's marker.
    pub fn marked_processes(&self) -> Vec<u32> {
        let needle = format!("{MARKER_ENV}={}\0", self.id).into_bytes();
        let me = std::process::id();
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me || !is_alive(pid) {
                continue;
            }
            let Ok(environ) = fs::read(e.path().join("environ")) else {
                continue;
            };
            if environ
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
            {
                out.push(pid);
            }
        }
        out
    }

    /// Live `regent agent` processes started for this env. Needs permission
    /// to read their environment (root, or agents that stay dumpable);
    /// `None` when that cannot be known.
    pub fn agent_processes(&self) -> Option<Vec<u32>> {
        if !can_read_foreign_environ() {
            return None;
        }
        Some(
            self.marked_processes()
                .into_iter()
                .filter(|pid| {
                    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                    args.len() >= 2 && args[0].ends_with(REGENT.as_bytes()) && args[1] == b"agent"
                })
                .collect(),
        )
    }

    /// SIGKILLs the running agent and waits until it is gone; its pid.
    pub fn kill_agent(&self) -> u32 {
        let pid = self
            .agent_pid()
            .unwrap_or_else(|| panic!("no agent to kill\n{}", self.diagnostics()));
        kill(pid, libc::SIGKILL);
        assert!(
            wait_until(Duration::from_secs(10), || !is_alive(pid)),
            "agent {pid} survived SIGKILL"
        );
        pid
    }

    /// `regent stop`, then waits until the agent is gone.
    pub fn stop_agent(&self) {
        let pid = self.agent_pid();
        let out = self.regent(&["stop"]);
        assert!(
            out.success(),
            "`regent stop` failed\n{out}\n{}",
            self.diagnostics()
        );
        if let Some(pid) = pid {
            assert!(
                wait_until(Duration::from_secs(10), || !is_alive(pid)),
                "agent {pid} still runs 10 s after `regent stop`\n{out}\n{}",
                self.diagnostics()
            );
        }
        assert!(
            wait_until(Duration::from_secs(10), || self.agent_pid().is_none()),
            "an agent still answers 10 s after `regent stop`\n{}",
            self.diagnostics()
        );
    }

    /// Starts `regent agent --foreground` with stderr captured to a file, and
    /// waits until it answers. Its pid.
    pub fn start_foreground_agent(&self) -> u32 {
        let mut fg = self.foreground.lock().unwrap();
        let n = fg.len();
        let stderr = fs::File::create(self.foreground_stderr_path(n)).expect("stderr file");
        let stdout = fs::File::create(self.root.join(format!("foreground-{n}.stdout")))
            .expect("stdout file");
        let child = spawn_retrying(
            self.command(&self.bins.regent)
                .args(["agent", "--foreground"])
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr),
        )
        .expect("spawn regent agent --foreground");
        let pid = child.id();
        fg.push(pid);
        drop(fg);
        let mut child = child;
        thread::spawn(move || {
            let _ = child.wait();
        });
        let answered = self.wait_agent_pid(Duration::from_secs(15));
        assert_eq!(
            answered,
            Some(pid),
            "`regent agent --foreground` (pid {pid}) did not answer on {} within 15 s\n{}",
            self.socket.display(),
            self.diagnostics()
        );
        pid
    }

    // ---- helper verbs with their success checks ----

    /// The JSON `store` reads.
    pub fn store_json(server_url: &str, username: &str, secret: &str) -> Vec<u8> {
        let mut v = serde_json::to_vec(&serde_json::json!({
            "ServerURL": server_url,
            "Username": username,
            "Secret": secret,
        }))
        .unwrap();
        v.push(b'\n');
        v
    }

    /// `store`, asserting exit 0 and an empty stdout.
    pub fn store_ok(&self, server_url: &str, username: &str, secret: &str) {
        let out = self.helper(&["store"], Self::store_json(server_url, username, secret));
        self.assert_store_ok(&out, secret);
    }

    pub fn assert_store_ok(&self, out: &Outcome, secret: &str) {
        assert!(
            out.success() && out.stdout.is_empty(),
            "store: expected exit 0 and empty stdout\n{out}\n{}",
            self.diagnostics()
        );
        self.assert_no_secret_in_stderr(out, secret);
    }

    /// `get`, asserting success and the exact output shape.
    pub fn get_ok(&self, server_url: &str) -> Creds {
        let out = self.helper(&["get"], server_url);
        self.parse_get(&out)
    }

    /// Checks a successful `get`: exit 0, one line of JSON with exactly the
    /// keys `ServerURL`, `Username`, `Secret`, then a newline.
    pub fn parse_get(&self, out: &Outcome) -> Creds {
        assert!(
            out.success(),
            "get: expected exit 0\n{out}\n{}",
            self.diagnostics()
        );
        let text = out.stdout();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "get: stdout must be exactly one line ending in a newline\n{out}"
        );
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("get: stdout is not JSON ({e})\n{out}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("get: stdout is not a JSON object\n{out}"));
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["Secret", "ServerURL", "Username"],
            "get: the object must have exactly the keys ServerURL, Username, Secret\n{out}"
        );
        let field = |k: &str| {
            obj[k]
                .as_str()
                .unwrap_or_else(|| panic!("get: {k} is not a string\n{out}"))
                .to_owned()
        };
        let creds = Creds {
            server_url: field("ServerURL"),
            username: field("Username"),
            secret: field("Secret"),
        };
        self.assert_no_secret_in_stderr(out, &creds.secret);
        creds
    }

    /// `get`, asserting exit 1 and exactly the not-found line.
    pub fn get_missing(&self, server_url: &str) {
        let out = self.helper(&["get"], server_url);
        self.assert_not_found(&out);
    }

    pub fn assert_not_found(&self, out: &Outcome) {
        assert!(
            out.code() == Some(1) && out.out_trim() == NOT_FOUND && out.out_lines().len() == 1,
            "get: expected exit 1 and stdout exactly {NOT_FOUND:?}\n{out}\n{}",
            self.diagnostics()
        );
    }

    /// Asserts exit 1 and exactly `message` (one line) on stdout.
    pub fn assert_error(&self, out: &Outcome, message: &str) {
        assert!(
            out.code() == Some(1) && out.out_trim() == message && out.out_lines().len() == 1,
            "expected exit 1 and stdout exactly {message:?}\n{out}\n{}",
            self.diagnostics()
        );
    }

    /// `erase`, asserting exit 0 and an empty stdout.
    pub fn erase_ok(&self, server_url: &str) {
        let out = self.helper(&["erase"], server_url);
        assert!(
            out.success() && out.stdout.is_empty(),
            "erase {server_url:?}: expected exit 0 and empty stdout\n{out}\n{}",
            self.diagnostics()
        );
    }

    /// `list` (stdin `/dev/null`), asserting exit 0 and a JSON object of strings.
    pub fn list_ok(&self) -> BTreeMap<String, String> {
        let out = self.run(
            self.command(&self.bins.helper).arg("list"),
            Input::Null,
            DEFAULT_TIMEOUT,
        );
        self.parse_list(&out)
    }

    pub fn parse_list(&self, out: &Outcome) -> BTreeMap<String, String> {
        assert!(
            out.success(),
            "list: expected exit 0\n{out}\n{}",
            self.diagnostics()
        );
        let v: serde_json::Value = serde_json::from_str(out.out_trim().as_str())
            .unwrap_or_else(|e| panic!("list: stdout is not JSON ({e})\n{out}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("list: stdout is not a JSON object\n{out}"));
        obj.iter()
            .map(|(k, v)| {
                let user = v
                    .as_str()
                    .unwrap_or_else(|| panic!("list: value of {k:?} is not a string\n{out}"));
                (k.clone(), user.to_owned())
            })
            .collect()
    }

    /// `regent status --json`, asserting exit 0.
    pub fn status_json(&self) -> StatusInfo {
        let out = self.regent(&["status", "--json"]);
        assert!(
            out.success(),
            "`regent status --json`: expected exit 0\n{out}\n{}",
            self.diagnostics()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("`regent status --json` is not a StatusInfo ({e})\n{out}"))
    }

    /// `regent ls --json`, asserting exit 0.
    pub fn ls_json(&self) -> Vec<EntryInfo> {
        let out = self.regent(&["ls", "--json"]);
        assert!(
            out.success(),
            "`regent ls --json`: expected exit 0\n{out}\n{}",
            self.diagnostics()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("`regent ls --json` is not a list of EntryInfo ({e})\n{out}")
        })
    }

    pub fn assert_no_secret_in_stderr(&self, out: &Outcome, secret: &str) {
        if secret.len() >= 4 {
            assert!(
                !contains(&out.stderr, secret.as_bytes()),
                "a secret appeared on stderr\n{out}"
            );
        }
    }

    /// Makes the whole directory chain down to the socket reachable for other
    /// users (for the peer-uid tests): the test root 0755, the runtime and
    /// socket dirs and the socket 0777.
    pub fn loosen_permissions(&self) {
        let chmod = |p: &Path, mode: u32| {
            fs::set_permissions(p, fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", p.display()))
        };
        chmod(&self.root, 0o755);
        chmod(&self.runtime_dir, 0o777);
        chmod(&self.socket_dir(), 0o777);
        chmod(&self.socket, 0o777);
    }

    /// Stops everything this env started: `regent stop`, then SIGKILL.
    fn shutdown(&mut self) {
        if self.store.is_persistent() && self.store != StoreKind::File {
            // Keyring and keyutils entries outlive the temp dir: remove them.
            self.erase_everything();
        }
        if self.agent_pid().is_some() {
            let _ = run_with_timeout(
                self.command(&self.bins.regent).arg("stop"),
                Input::Null,
                Duration::from_secs(10),
            );
            let pid = self.agent_pid();
            wait_until(Duration::from_secs(5), || {
                pid.is_none_or(|p| !is_alive(p)) && self.marked_agents().is_empty()
            });
        }
        if let Ok(mut fg) = self.foreground.lock() {
            for pid in fg.drain(..) {
                if !wait_until(Duration::from_secs(5), || !is_alive(pid)) {
                    kill(pid, libc::SIGKILL);
                }
            }
        }
        for pid in self.marked_processes() {
            kill(pid, libc::SIGKILL);
        }
    }

    fn marked_agents(&self) -> Vec<u32> {
        self.agent_processes().unwrap_or_default()
    }

    fn erase_everything(&self) {
        if self.agent_pid().is_none() {
            return;
        }
        if let Ok(Response::List { entries }) = self.request(&Request::ListLogins) {
            for url in entries.keys() {
                let _ = self.request(&Request::Erase {
                    server_url: url.clone(),
                });
            }
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown();
        if thread::panicking()
            && std::env::var_os("REGENT_TEST_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("kept the test directory {}", kept.display());
        }
    }
}

/// A child that did not finish in time (it was killed).
pub struct Hang {
    pub what: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` with `stdin`, killing it after `timeout`.
pub fn run_with_timeout(
    cmd: &mut Command,
    stdin: Input<'_>,
    timeout: Duration,
) -> Result<Outcome, Hang> {
    let what = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(match stdin {
        Input::Null => Stdio::null(),
        Input::Bytes(_) | Input::Open => Stdio::piped(),
    });
    let start = Instant::now();
    let mut child = spawn_retrying(cmd).unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let out_reader = reader(child.stdout.take().expect("piped stdout"));
    let err_reader = reader(child.stderr.take().expect("piped stderr"));
    // Keep an open stdin alive until the child is gone.
    let mut held_stdin: Option<ChildStdin> = None;
    let writer = match stdin {
        Input::Bytes(bytes) => {
            let mut pipe = child.stdin.take().expect("piped stdin");
            let bytes = bytes.to_vec();
            Some(thread::spawn(move || {
                // The child may exit without reading: a broken pipe is fine.
                let _ = pipe.write_all(&bytes);
            }))
        }
        Input::Open => {
            held_stdin = child.stdin.take();
            None
        }
        Input::Null => None,
    };
    let deadline = start + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    let elapsed = start.elapsed();
    drop(held_stdin);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Hang {
            what,
            stdout: out_reader.finish(Duration::from_secs(2)),
            stderr: err_reader.finish(Duration::from_secs(2)),
        });
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    // A grandchild (an agent) could hold the pipes: do not wait forever.
    Ok(Outcome {
        what,
        status,
        stdout: out_reader.finish(Duration::from_secs(5)),
        stderr: err_reader.finish(Duration::from_secs(5)),
        elapsed,
    })
}

struct Reader {
    rx: mpsc::Receiver<Vec<u8>>,
    partial: std::sync::Arc<Mutex<Vec<u8>>>,
}

impl Reader {
    fn finish(self, wait: Duration) -> Vec<u8> {
        match self.rx.recv_timeout(wait) {
            Ok(all) => all,
            Err(_) => self.partial.lock().map(|p| p.clone()).unwrap_or_default(),
        }
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> Reader {
    let (tx, rx) = mpsc::channel();
    let partial = std::sync::Arc::new(Mutex::new(Vec::new()));
    let shared = partial.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => shared.lock().unwrap().extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let all = shared.lock().unwrap().clone();
        let _ = tx.send(all);
    });
    Reader { rx, partial }
}

/// Spawns, retrying briefly on ETXTBSY: an executable written by this process
/// may still be open for writing in a child another thread is forking.
pub fn spawn_retrying(cmd: &mut Command) -> io::Result<Child> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn collect_files(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            collect_files(&path, out);
        } else if ft.is_file()
            && let Ok(b) = fs::read(&path)
        {
            out.push((path, b));
        }
    }
}

/// True while `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // pid (comm) S ...: the state follows the last ')'.
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

pub fn kill(pid: u32, signal: i32) {
    if pid == 0 || pid == std::process::id() {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn can_read_foreign_environ() -> bool {
    // Non-dumpable processes hide /proc/<pid>/environ from everyone but root.
    is_root()
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// A random printable secret of exactly `len` bytes (URL-safe base64 characters).
pub fn random_secret(len: usize) -> String {
    use base64::Engine;
    let mut s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(len));
    s.truncate(len);
    s
}

/// A registry host name unique to this call.
pub fn unique_host(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}.example",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Where a tool is, if it is installed.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `f(i)` for `0..n` on `n` threads released at the same moment.
pub fn all_at_once<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = std::sync::Barrier::new(n);
    thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// True when a skip must fail the test: `REGENT_TEST_STRICT=1`, or, when
/// that is not set, `CI=true` (or the older `REGENT_E2E_STRICT=1`).
/// `REGENT_TEST_STRICT=0` turns it off. scripts/test sets it explicitly.
pub fn strict() -> bool {
    let var = |name: &str| std::env::var(name).map(|v| v.trim().to_ascii_lowercase());
    match var("REGENT_TEST_STRICT").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => {
            matches!(var("CI").as_deref(), Ok("true" | "1"))
                || var("REGENT_E2E_STRICT").as_deref() == Ok("1")
        }
    }
}

/// The name of the running test: libtest runs each test on a thread named
/// after it.
pub fn current_test() -> String {
    thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned()
}

/// Reports that `test` (or one check of it) did not run here, and why.
///
/// Every skip is counted: the line `SKIP: <test>: <why>` goes straight to
/// fd 2 (past libtest's capture, so a normal run shows it), to stdout, and
/// is appended to the file named by `REGENT_TEST_SKIP_LOG` (or the older
/// `REGENT_E2E_SKIP_LOG`), from which scripts/test lists the skips of each
/// phase. In [`strict`] mode the skip then fails the test.
///
/// The caller returns (or leaves out the check) after a non-strict skip.
/// Something that does not apply at all (a crash test on the memory store)
/// is not a skip: see [`not_applicable`].
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIP: {test}: {why}");
    let first = line.lines().next().unwrap_or_default().to_owned();
    let _ = io::stderr().write_all(format!("\n{line}\n\n").as_bytes());
    println!("{line}");
    let log = ["REGENT_TEST_SKIP_LOG", "REGENT_E2E_SKIP_LOG"]
        .into_iter()
        .find_map(|v| std::env::var_os(v).filter(|p| !p.is_empty()));
    if let Some(path) = log {
        // One write of one line with O_APPEND: parallel tests do not interleave.
        match fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(mut f) => {
                let _ = f.write_all(format!("{first}\n").as_bytes());
            }
            Err(e) => panic!(
                "cannot append to the skip log {}: {e}; the skip of {test} would go uncounted",
                Path::new(&path).display()
            ),
        }
    }
    if strict() {
        panic!(
            "strict mode (REGENT_TEST_STRICT=1 or CI=true): a skip is a failure: {line}\n\
             (REGENT_TEST_STRICT=0 allows skips)"
        );
    }
}

/// Notes that `test` checks nothing on this configuration by design (it is
/// about a store other than the one under test, which runs in its own
/// scripts/test phase). Not counted as a skip.
pub fn not_applicable(test: &str, why: &str) {
    eprintln!("not applicable here: {test}: {why}");
}
