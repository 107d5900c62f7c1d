//! [`TestEnv`], one hermetic regent installation per test: a [`World`]
//! with the binaries under test, `REGENT_LOG=trace`, a keyring service of
//! its own and a marker on every child; running its children with a hard
//! timeout; its logs and files for failure messages; stopping everything it
//! started when dropped.

use std::ffi::OsString;
use std::fs;
use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use regent_shared::protocol::{Request, Response};

use crate::{
    Bins, Hang, Input, Outcome, StoreKind, World, clip, is_alive, kill, run_with_timeout,
    wait_until,
};

/// The marker variable every child of a [`TestEnv`] carries, so that the
/// processes it started (including agents spawned by the helper, which
/// inherit the helper's environment) can be found and stopped.
pub const MARKER_ENV: &str = "REGENT_TEST_MARKER";

/// How long a helper or CLI call may take before the test fails as a hang.
/// Generous: the agent start budget is 10 s and tests run in parallel.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

static ENV_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One hermetic regent installation for a test: a [`World`] (its own home,
/// XDG dirs, socket and store) with the binaries under test and what the
/// test harness adds.
pub struct TestEnv {
    world: World,
    pub keyring_service: String,
    pub id: String,
    pub bins: Bins,
    /// Pids of foreground agents; a thread per child reaps it on exit, so
    /// `regent stop` (which waits for the pid to vanish) sees no zombie.
    pub(crate) foreground: Mutex<Vec<u32>>,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// The world's directories, socket and store: `env.root`, `env.socket`, ...
impl Deref for TestEnv {
    type Target = World;

    fn deref(&self) -> &World {
        &self.world
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
        let mut world = World::new("rgt.", store).unwrap_or_else(|e| panic!("{e}"));
        world.set_env("REGENT_LOG", Some("trace"));
        world.set_env("REGENT_KEYRING_SERVICE", Some(&id));
        world.set_env("NO_COLOR", Some("1"));
        world.set_env(MARKER_ENV, Some(&id));
        if let Some(key) = std::env::var_os("REGENT_TEST_MASTER_KEY") {
            world.set_env("REGENT_MASTER_KEY", Some(key));
        }
        TestEnv {
            world,
            keyring_service: id.clone(),
            id,
            bins,
            foreground: Mutex::new(Vec::new()),
        }
    }

    /// Sets (or with `None` removes) a variable for every later child.
    pub fn set_env(&mut self, key: impl Into<OsString>, value: Option<impl Into<OsString>>) {
        self.world.set_env(key, value);
    }

    pub(crate) fn foreground_stderr_path(&self, n: usize) -> PathBuf {
        self.root.join(format!("foreground-{n}.stderr"))
    }

    /// A command for `program` with this env's environment.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        self.world.command(program)
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

    /// Stops everything this env started: `Quit` to the agent, then SIGKILL.
    fn shutdown(&mut self) {
        if self.store.is_persistent() && self.store != StoreKind::File {
            // Keyring and keyutils entries outlive the temp dir: remove them.
            self.erase_everything();
        }
        if let Some(pid) = self.agent_pid() {
            self.world.quit_agent();
            wait_until(Duration::from_secs(5), || {
                !is_alive(pid) && self.marked_agents().is_empty()
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
            && let Some(kept) = self.world.keep()
        {
            eprintln!("kept the test directory {}", kept.display());
        }
    }
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
