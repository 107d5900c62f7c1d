//! The agent's life across sessions and odd socket paths: one agent per
//! store whichever socket a session uses, a socket path that names something
//! else, socket directories regent did not create, a relative
//! `REGENT_SOCKET`, the data directory's mode, and a `get` that meets a dying
//! agent.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use regent_tests::{
    DEFAULT_TIMEOUT, HELPER, Input, NOT_FOUND, Outcome, StoreKind, TestEnv, all_at_once, is_alive,
    kill, random_secret, wait_until,
};

/// Another login session of the same user: the same HOME and XDG config,
/// data and state directories as `env`, other variables for the socket.
struct Session<'a> {
    env: &'a TestEnv,
    vars: Vec<(&'static str, Option<OsString>)>,
    /// The socket this session's programs use when no agent is found elsewhere.
    socket: PathBuf,
}

impl<'a> Session<'a> {
    /// An ssh session without pam_systemd: no `XDG_RUNTIME_DIR`, no
    /// `REGENT_SOCKET`, so the socket falls back to `<TMPDIR>/regent-<uid>/`.
    fn without_runtime_dir(env: &'a TestEnv, name: &str) -> Session<'a> {
        let tmp = env.root.join(name);
        fs::create_dir_all(&tmp).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).unwrap();
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let socket = tmp.join(format!("regent-{uid}")).join("agent.sock");
        Session {
            env,
            vars: vec![
                ("REGENT_SOCKET", None),
                ("XDG_RUNTIME_DIR", None),
                ("TMPDIR", Some(tmp.into())),
            ],
            socket,
        }
    }

    /// A shell that sets `REGENT_SOCKET` (to a socket in a private directory).
    fn with_socket(env: &'a TestEnv, name: &str) -> Session<'a> {
        let dir = env.root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let socket = dir.join("agent.sock");
        Session {
            env,
            vars: vec![("REGENT_SOCKET", Some(socket.clone().into()))],
            socket,
        }
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = self.env.command(program);
        for (k, v) in &self.vars {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }

    fn helper(&self, args: &[&str], stdin: impl AsRef<[u8]>) -> Outcome {
        self.env.run(
            self.command(&self.env.bins.helper).args(args),
            Input::Bytes(stdin.as_ref()),
            DEFAULT_TIMEOUT,
        )
    }

    fn regent(&self, args: &[&str]) -> Outcome {
        self.env.run(
            self.command(&self.env.bins.regent).args(args),
            Input::Null,
            DEFAULT_TIMEOUT,
        )
    }

    fn store_ok(&self, server_url: &str, username: &str, secret: &str) {
        let out = self.helper(
            &["store"],
            TestEnv::store_json(server_url, username, secret),
        );
        self.env.assert_store_ok(&out, secret);
    }

    fn get_ok(&self, server_url: &str) -> regent_tests::Creds {
        let out = self.helper(&["get"], server_url);
        self.env.parse_get(&out)
    }

    fn list_ok(&self) -> std::collections::BTreeMap<String, String> {
        let out = self.env.run(
            self.command(&self.env.bins.helper).arg("list"),
            Input::Null,
            DEFAULT_TIMEOUT,
        );
        self.env.parse_list(&out)
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn store_lock(env: &TestEnv) -> PathBuf {
    env.data_home.join("regent").join("agent.lock")
}

/// When the test may read other processes' environments: exactly one
/// `regent agent` of this env runs.
fn assert_one_agent_process(env: &TestEnv, pid: u32) {
    if let Some(agents) = env.agent_processes() {
        let settled = wait_until(Duration::from_secs(5), || {
            env.agent_processes().is_some_and(|a| a == [pid])
        });
        assert!(
            settled,
            "expected exactly one agent (pid {pid}), found {:?}\n{}",
            agents,
            env.diagnostics()
        );
    }
}

// ---- one agent per store ----

#[test]
fn a_session_without_the_runtime_dir_reaches_the_agent_that_holds_the_store() {
    let env = TestEnv::new();
    let b = Session::without_runtime_dir(&env, "tmp-b");
    assert_ne!(b.socket, env.socket);

    env.store_ok("a.example", "ua", "from-A");
    let pid = env.agent_pid().expect("agent A");
    b.store_ok("b.example", "ub", "from-B");

    assert!(
        !b.socket.exists(),
        "session B started an agent of its own on {} while pid {pid} holds the store\n{}",
        b.socket.display(),
        env.diagnostics()
    );
    assert_one_agent_process(&env, pid);
    assert_eq!(b.get_ok("a.example").secret, "from-A");
    assert_eq!(env.get_ok("b.example").secret, "from-B");
    for list in [env.list_ok(), b.list_ok()] {
        assert_eq!(list.len(), 2, "both sessions see both logins: {list:?}");
    }

    // `regent status` and `regent stop` of session B reach agent A.
    let out = b.regent(&["status", "--json"]);
    assert!(out.success(), "`regent status` in session B\n{out}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pid"], pid, "{out}");
    assert_eq!(status["socket"], env.socket.display().to_string(), "{out}");
    let out = b.regent(&["stop"]);
    assert!(out.success(), "`regent stop` in session B\n{out}");
    assert!(
        wait_until(Duration::from_secs(10), || !is_alive(pid)),
        "`regent stop` in session B did not stop agent A (pid {pid})\n{out}"
    );

    if env.store.is_persistent() {
        // Nothing acknowledged was lost, whichever session starts next.
        let list = b.list_ok();
        assert_eq!(list.len(), 2, "after a restart from session B: {list:?}");
        assert_eq!(env.get_ok("a.example").secret, "from-A");
        assert_eq!(env.get_ok("b.example").secret, "from-B");
    }
}

#[test]
fn a_socket_set_in_one_shell_only_reaches_the_same_agent() {
    let env = TestEnv::new();
    let other = Session::with_socket(&env, "elsewhere");
    other.store_ok("first.example", "u1", "s1");
    let pid = regent_shared::client::connect(&other.socket, Duration::from_secs(3))
        .expect("the agent the REGENT_SOCKET shell started")
        .agent
        .pid;
    env.store_ok("second.example", "u2", "s2");
    assert!(
        !env.socket.exists(),
        "a second agent listens on {}\n{}",
        env.socket.display(),
        env.diagnostics()
    );
    assert_one_agent_process(&env, pid);
    assert_eq!(other.list_ok().len(), 2);
    assert_eq!(other.get_ok("second.example").secret, "s2");
}

#[test]
fn sessions_racing_to_start_share_one_agent() {
    let env = TestEnv::new();
    let sessions: Vec<Session> = (0..6)
        .map(|i| Session::with_socket(&env, &format!("s{i}")))
        .collect();
    let outs = all_at_once(sessions.len(), |i| {
        sessions[i].helper(
            &["store"],
            TestEnv::store_json(&format!("race{i}.example"), "u", &format!("s{i}")),
        )
    });
    for (i, out) in outs.iter().enumerate() {
        env.assert_store_ok(out, &format!("s{i}"));
    }
    let listening: Vec<&Path> = sessions
        .iter()
        .map(|s| s.socket.as_path())
        .filter(|s| s.exists())
        .collect();
    assert_eq!(
        listening.len(),
        1,
        "exactly one agent socket, found {listening:?}\n{}",
        env.diagnostics()
    );
    let pid = regent_shared::client::connect(listening[0], Duration::from_secs(3))
        .expect("the winner answers")
        .agent
        .pid;
    assert_one_agent_process(&env, pid);
    for s in &sessions {
        assert_eq!(
            s.list_ok().len(),
            sessions.len(),
            "every store reached one agent"
        );
    }
}

#[test]
fn an_agent_refuses_a_store_another_agent_holds() {
    let env = TestEnv::new();
    env.store_ok("held.example", "u", "s");
    let pid = env.agent_pid().unwrap();
    let b = Session::with_socket(&env, "second");
    let out = env.run(
        b.command(&env.bins.regent).args(["agent", "--foreground"]),
        Input::Null,
        Duration::from_secs(20),
    );
    assert!(
        !out.success(),
        "a second agent started over a held store\n{out}"
    );
    let err = out.stderr();
    assert!(
        err.contains(&pid.to_string())
            && err.contains(&env.socket.display().to_string())
            && err.contains(&store_lock(&env).display().to_string()),
        "the refusal names the holder's pid, its socket and the lock\n{out}"
    );
    assert!(!b.socket.exists(), "the refused agent left a socket");
    assert_eq!(env.agent_pid(), Some(pid), "the first agent still serves");
    assert_eq!(env.get_ok("held.example").secret, "s");
}

#[test]
fn an_unreachable_store_holder_is_named_and_an_agent_without_a_socket_leaves() {
    let env = TestEnv::new();
    env.store_ok("orphan.example", "u", "kept");
    let pid = env.agent_pid().unwrap();
    let b = Session::without_runtime_dir(&env, "tmp-b");

    // The holder cannot answer and its socket is gone (as when the runtime
    // directory of a finished login session is removed).
    kill(pid, libc::SIGSTOP);
    fs::remove_file(&env.socket).unwrap();
    let store = b.helper(
        &["store"],
        TestEnv::store_json("new.example", "u", "s3cr3t"),
    );
    let get = b.helper(&["get"], "orphan.example");
    kill(pid, libc::SIGCONT);
    let names_holder = |text: &str| {
        text.contains(&pid.to_string())
            && text.contains(&env.socket.display().to_string())
            && text.contains(&env.data_home.join("regent").display().to_string())
    };
    assert!(
        store.code() == Some(1) && store.out_lines().len() == 1 && names_holder(&store.stdout()),
        "store: one line naming the holder's pid, its socket and the data directory\n{store}"
    );
    assert!(
        get.code() == Some(1) && get.out_trim() == NOT_FOUND && names_holder(&get.stderr()),
        "get: the not-found line, and the holder named on stderr\n{get}"
    );
    assert!(!b.socket.exists(), "session B started a second agent");

    // Once running again, the agent notices that nobody can reach it and exits.
    assert!(
        wait_until(Duration::from_secs(10), || !is_alive(pid)),
        "agent {pid} still runs 10 s after its socket was removed\n{}",
        env.diagnostics()
    );
    b.store_ok("new.example", "u", "s3cr3t");
    if env.store.is_persistent() {
        assert_eq!(b.get_ok("orphan.example").secret, "kept");
    }
}

// ---- what the socket path names ----

#[test]
fn a_socket_path_that_names_a_file_or_directory_is_never_removed() {
    let env = TestEnv::new();
    let dir = env.root.join("dockercfg");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.join("config.json");
    let content = b"{\"auths\":{},\"credsStore\":\"regent\"}\n";
    fs::write(&config, content).unwrap();
    let subdir = dir.join("plugins");
    fs::create_dir(&subdir).unwrap();
    fs::write(subdir.join("keep"), b"x").unwrap();

    for target in [&config, &subdir] {
        let session = Session {
            env: &env,
            vars: vec![("REGENT_SOCKET", Some(target.clone().into()))],
            socket: target.clone(),
        };
        let shown = target.display().to_string();
        let out = session.helper(&["get"], "ghcr.io");
        assert!(
            out.code() == Some(1) && out.out_trim() == NOT_FOUND,
            "get: the not-found line\n{out}"
        );
        assert!(
            out.stderr().contains(&shown) && out.stderr().contains("not a socket"),
            "get: stderr names the path and what is wrong\n{out}"
        );
        let out = session.helper(&["store"], TestEnv::store_json("ghcr.io", "u", "s3cr3t"));
        assert!(
            out.code() == Some(1)
                && out.out_lines().len() == 1
                && out.stdout().contains(&shown)
                && out.stdout().contains("REGENT_SOCKET"),
            "store: one line naming the path and the variable\n{out}"
        );
        for args in [&["start"][..], &["agent", "--foreground"][..]] {
            let out = session.regent(args);
            assert!(
                !out.success() && out.stderr().contains(&shown),
                "`regent {args:?}` with REGENT_SOCKET at {shown}\n{out}"
            );
        }
    }
    let meta = fs::symlink_metadata(&config).unwrap();
    assert!(meta.is_file(), "config.json was replaced");
    assert_eq!(fs::read(&config).unwrap(), content, "config.json changed");
    assert!(fs::symlink_metadata(&subdir).unwrap().is_dir());
    assert_eq!(names_in(&subdir), ["keep"]);
    assert_eq!(names_in(&dir), ["config.json", "plugins"]);
}

#[test]
fn a_stale_socket_at_an_explicit_path_is_still_replaced() {
    // Positive control for the test above: a socket nobody listens on is
    // removed and a new agent binds there.
    let env = TestEnv::new();
    let session = Session::with_socket(&env, "explicit");
    drop(std::os::unix::net::UnixListener::bind(&session.socket).unwrap());
    assert!(
        fs::symlink_metadata(&session.socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    session.store_ok("stale.example", "u", "s");
    assert_eq!(session.get_ok("stale.example").secret, "s");
}

// ---- socket directories regent did not create ----

fn assert_refused_with_the_fix(session: &Session, dir: &Path, why: &str) {
    let shown = dir.display().to_string();
    let out = session.helper(&["get"], "ghcr.io");
    assert!(
        out.code() == Some(1) && out.out_trim() == NOT_FOUND,
        "{why}: get prints the not-found line\n{out}"
    );
    assert!(
        out.stderr().contains(&shown) && out.stderr().contains("mkdir -m 700"),
        "{why}: get names the directory and the fix on stderr\n{out}"
    );
    let out = session.helper(&["store"], TestEnv::store_json("ghcr.io", "u", "s3cr3t"));
    assert!(
        out.code() == Some(1)
            && out.out_lines().len() == 1
            && out.stdout().contains(&shown)
            && out.stdout().contains("mkdir -m 700"),
        "{why}: store fails with one line naming the directory and the fix\n{out}"
    );
    for args in [&["start"][..], &["agent", "--foreground"][..]] {
        let out = session.regent(args);
        assert!(
            !out.success()
                && out.stderr().contains(&shown)
                && out.stderr().contains("mkdir -m 700"),
            "{why}: `regent {args:?}`\n{out}"
        );
    }
}

#[test]
fn a_shared_socket_directory_is_refused_and_left_alone() {
    // Like REGENT_SOCKET=/tmp/x.sock, in a directory of the test's own.
    let env = TestEnv::new();
    let shared = env.root.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let session = Session {
        env: &env,
        vars: vec![("REGENT_SOCKET", Some(shared.join("x.sock").into()))],
        socket: shared.join("x.sock"),
    };
    assert_refused_with_the_fix(&session, &shared, "a 1777 directory");
    assert_eq!(mode(&shared), 0o1777, "the shared directory's mode changed");
    assert!(
        names_in(&shared).is_empty(),
        "regent left files in the shared directory: {:?}",
        names_in(&shared)
    );
}

#[test]
fn a_socket_in_a_readable_home_is_refused_and_home_is_left_alone() {
    let env = TestEnv::new();
    fs::set_permissions(&env.home, fs::Permissions::from_mode(0o755)).unwrap();
    let before = names_in(&env.home);
    let session = Session {
        env: &env,
        vars: vec![("REGENT_SOCKET", Some(env.home.join("regent.sock").into()))],
        socket: env.home.join("regent.sock"),
    };
    assert_refused_with_the_fix(&session, &env.home, "HOME with mode 755");
    assert_eq!(mode(&env.home), 0o755, "HOME's mode changed");
    assert_eq!(names_in(&env.home), before, "regent left files in HOME");

    // The fix the message gives works.
    let private = env.home.join(".regent");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let fixed = Session {
        env: &env,
        vars: vec![("REGENT_SOCKET", Some(private.join("agent.sock").into()))],
        socket: private.join("agent.sock"),
    };
    fixed.store_ok("fixed.example", "u", "s");
    assert_eq!(fixed.get_ok("fixed.example").secret, "s");
    assert_eq!(mode(&env.home), 0o755);
}

#[test]
fn a_missing_socket_directory_named_by_regent_socket_is_created_private() {
    let env = TestEnv::new();
    let dir = env.root.join("new-dir");
    let session = Session {
        env: &env,
        vars: vec![("REGENT_SOCKET", Some(dir.join("agent.sock").into()))],
        socket: dir.join("agent.sock"),
    };
    session.store_ok("created.example", "u", "s");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(
        names_in(&dir),
        ["agent.sock"],
        "only the socket lives there"
    );
}

// ---- a relative REGENT_SOCKET ----

#[test]
fn a_relative_socket_path_is_refused_by_name() {
    let env = TestEnv::new();
    let cwd = env.root.join("cwd");
    fs::create_dir(&cwd).unwrap();
    let run = |program: &Path, args: &[&str], stdin: &[u8]| {
        env.run(
            env.command(program)
                .args(args)
                .env("REGENT_SOCKET", "agent.sock")
                .current_dir(&cwd),
            Input::Bytes(stdin),
            DEFAULT_TIMEOUT,
        )
    };
    let out = run(&env.bins.helper, &["get"], b"ghcr.io");
    assert!(
        out.code() == Some(1) && out.out_trim() == NOT_FOUND,
        "get: the not-found line\n{out}"
    );
    let says = |text: &str| text.contains("REGENT_SOCKET") && text.contains("absolute");
    assert!(
        says(&out.stderr()),
        "get: stderr says REGENT_SOCKET must be absolute\n{out}"
    );
    let out = run(
        &env.bins.helper,
        &["store"],
        &TestEnv::store_json("ghcr.io", "u", "s3cr3t"),
    );
    assert!(
        out.code() == Some(1) && out.out_lines().len() == 1 && says(&out.stdout()),
        "store: one line saying REGENT_SOCKET must be absolute\n{out}"
    );
    for args in [
        &["start"][..],
        &["status"][..],
        &["agent", "--foreground"][..],
    ] {
        let out = run(&env.bins.regent, args, b"");
        assert!(
            !out.success() && says(&out.stderr()),
            "`regent {args:?}` with a relative REGENT_SOCKET\n{out}"
        );
    }
    assert!(
        names_in(&cwd).is_empty(),
        "files appeared in the working directory"
    );
}

// ---- the data directory ----

#[test]
fn the_data_directory_and_the_store_lock_are_private() {
    let env = TestEnv::new();
    env.store_ok("private.example", "u", "s");
    let data = env.data_home.join("regent");
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    let lock = store_lock(&env);
    let meta = fs::symlink_metadata(&lock)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", lock.display(), env.diagnostics()));
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // SAFETY: getuid has no preconditions.
    assert_eq!(meta.uid(), unsafe { libc::getuid() });
}

// ---- a get that meets a dying agent ----

/// The env of the dying-agent tests: a store that survives a SIGKILL, so
/// that the new agent serves what the old one held.
fn persistent_env() -> TestEnv {
    let store = StoreKind::from_env();
    if store.is_persistent() {
        TestEnv::with_store(store)
    } else {
        TestEnv::with_store(StoreKind::File)
    }
}

/// The pid of a helper of `env` that has a socket open, if any.
fn helper_with_a_socket(env: &TestEnv) -> Option<u32> {
    env.marked_processes().into_iter().find(|pid| {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        argv0.ends_with(HELPER.as_bytes())
            && fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    fs::read_link(fd.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
            })
    })
}

/// Runs `get` on a thread; its outcome.
fn get_in_background(env: &TestEnv, host: &str) -> thread::JoinHandle<Outcome> {
    let mut cmd = env.command(&env.bins.helper);
    cmd.arg("get");
    let host = host.to_owned();
    thread::spawn(move || {
        regent_tests::run_with_timeout(&mut cmd, Input::Bytes(host.as_bytes()), DEFAULT_TIMEOUT)
            .unwrap_or_else(|_| panic!("get of {host} hung"))
    })
}

#[test]
fn a_get_connected_to_an_agent_that_dies_starts_a_new_one() {
    let env = persistent_env();
    let secret = random_secret(32);
    env.store_ok("dying.example", "u", &secret);
    for round in 0..3 {
        let pid = env.agent_pid().expect("an agent");
        // Stopped, the agent still accepts connections (the kernel queues
        // them) but answers nothing: the get is connected when it dies.
        kill(pid, libc::SIGSTOP);
        let get = get_in_background(&env, "dying.example");
        let connected = wait_until(Duration::from_secs(10), || {
            helper_with_a_socket(&env).is_some()
        });
        thread::sleep(Duration::from_millis(50));
        kill(pid, libc::SIGKILL);
        let out = get.join().unwrap();
        assert!(
            connected,
            "round {round}: the get never opened a socket\n{out}"
        );
        assert!(
            wait_until(Duration::from_secs(10), || !is_alive(pid)),
            "agent {pid} survived SIGKILL"
        );
        let creds = env.parse_get(&out);
        assert_eq!(creds.secret, secret, "round {round}");
        let new = env.agent_pid().expect("a new agent");
        assert_ne!(new, pid, "round {round}");
    }
}

#[test]
fn gets_while_the_agent_is_killed_at_random_all_succeed() {
    let env = persistent_env();
    let secret = random_secret(32);
    env.store_ok("random-kill.example", "u", &secret);
    let started = std::time::Instant::now();
    for round in 0..20 {
        if started.elapsed() > Duration::from_secs(120) {
            break;
        }
        let pid = env.wait_agent_pid(Duration::from_secs(10));
        let get = get_in_background(&env, "random-kill.example");
        let delay = u64::from(regent_tests::random_bytes(1)[0] % 16);
        thread::sleep(Duration::from_millis(delay));
        if let Some(pid) = pid {
            kill(pid, libc::SIGKILL);
            wait_until(Duration::from_secs(10), || !is_alive(pid));
        }
        let out = get.join().unwrap();
        assert!(
            out.success(),
            "round {round}: a get that raced a SIGKILL of the agent failed\n{out}\n{}",
            env.diagnostics()
        );
        assert_eq!(env.parse_get(&out).secret, secret, "round {round}");
        // Some gets start a new agent; make sure one answers for the next round.
        if env.agent_pid().is_none() {
            env.get_ok("random-kill.example");
        }
    }
}
