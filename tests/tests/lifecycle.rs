//! The agent's life: auto-start by the helper, `regent start/stop/status/ls`,
//! persistence across restarts, stale sockets, replacing an old agent, and
//! what the helper does when no agent can be reached or started.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regent_shared::protocol::{PROTOCOL_VERSION, read_frame, write_frame};
use regent_shared::registry;
use regent_tests::{HELPER, Input, StoreKind, TestEnv, is_alive, random_secret, wait_until};

/// A hang bound for a `get` that cannot reach or start the agent. The
/// helper gives up after its own budget of 2.5 s and answers not found; the
/// tests assert that answer, and only detect a hang here, with room for a
/// loaded machine (never a measurement of speed).
const UNREACHABLE_GET_BOUND: Duration = Duration::from_secs(10);

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn assert_is_agent_of(env: &TestEnv, pid: u32) {
    match env.agent_processes() {
        Some(agents) => assert_eq!(
            agents,
            [pid],
            "expected exactly one `regent agent` process of this test, the one answering\n{}",
            env.diagnostics()
        ),
        None => regent_tests::skip(
            &regent_tests::current_test(),
            "the check for exactly one agent needs root (the agents are non-dumpable, so \
             their environment, which marks the test they belong to, is unreadable)",
        ),
    }
}

#[test]
fn every_verb_auto_starts_the_agent() {
    let cases: &[(&str, &str)] = &[
        ("get", "autostart.example"),
        (
            "store",
            r#"{"ServerURL":"autostart.example","Username":"u","Secret":"s"}"#,
        ),
        ("erase", "autostart.example"),
        ("list", ""),
    ];
    for (verb, stdin) in cases {
        let env = TestEnv::new();
        assert_eq!(env.agent_pid(), None, "a fresh env has no agent");
        let out = env.helper(&[verb], stdin);
        if *verb == "get" {
            env.assert_not_found(&out);
        } else {
            assert!(
                out.success(),
                "{verb} on a fresh env\n{out}\n{}",
                env.diagnostics()
            );
        }
        let pid = env
            .agent_pid()
            .unwrap_or_else(|| panic!("no agent answers after `{verb}`\n{}", env.diagnostics()));
        assert!(is_alive(pid), "agent pid {pid} from Hello is not alive");
        assert_is_agent_of(&env, pid);
        // The socket directory the helper made is private.
        let meta = fs::metadata(env.socket_dir()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }
}

#[test]
fn auto_started_agent_serves_later_calls_and_logs_to_the_state_dir() {
    let env = TestEnv::new();
    env.store_ok("served.example", "u", "s");
    let pid = env.agent_pid().expect("agent after store");
    assert_eq!(env.get_ok("served.example").secret, "s");
    env.list_ok();
    assert_eq!(
        env.agent_pid(),
        Some(pid),
        "the same agent serves every call"
    );
    let log = env.log_path();
    assert!(
        wait_until(Duration::from_secs(5), || fs::metadata(&log)
            .is_ok_and(|m| m.len() > 0)),
        "a background agent logs to {} (REGENT_LOG=trace), but it is missing or empty\n{}",
        log.display(),
        env.diagnostics()
    );
}

#[test]
fn start_stop_and_status() {
    let env = TestEnv::new();

    // Not running: exit 3 with a message, and status never starts the agent.
    for args in [&["status"][..], &["status", "--json"][..]] {
        let out = env.regent(args);
        assert_eq!(
            out.code(),
            Some(3),
            "`regent {args:?}` with no agent\n{out}"
        );
        assert!(
            !out.stdout.is_empty() || !out.stderr.is_empty(),
            "`regent {args:?}` with no agent says nothing\n{out}"
        );
        assert_eq!(env.agent_pid(), None, "`regent status` started an agent");
        match env.agent_processes() {
            Some(agents) => assert!(agents.is_empty(), "`regent status` started {agents:?}"),
            None => regent_tests::skip(
                "start_stop_and_status",
                "the check that `regent status` started no agent process needs root",
            ),
        }
    }

    let out = env.regent(&["start"]);
    assert!(
        out.success(),
        "`regent start`\n{out}\n{}",
        env.diagnostics()
    );
    let pid = env
        .agent_pid()
        .expect("an agent answers after `regent start`");
    assert_is_agent_of(&env, pid);
    let out = env.regent(&["start"]);
    assert!(out.success(), "second `regent start`\n{out}");
    assert_eq!(
        env.agent_pid(),
        Some(pid),
        "`regent start` when running keeps the agent"
    );

    let out = env.regent(&["status"]);
    assert_eq!(out.code(), Some(0), "`regent status` when running\n{out}");
    let text = out.stdout();
    assert!(
        text.contains(&pid.to_string()),
        "status shows the pid\n{out}"
    );
    assert!(
        text.contains(&env.socket.display().to_string()),
        "status shows the socket\n{out}"
    );
    assert!(
        text.contains(env.store.name()),
        "status shows the store\n{out}"
    );

    env.stop_agent();
    assert!(!is_alive(pid));
    let out = env.regent(&["status"]);
    assert_eq!(out.code(), Some(3), "`regent status` after stop\n{out}");

    // Stopping when nothing runs must not start an agent.
    let _ = env.regent(&["stop"]);
    assert_eq!(env.agent_pid(), None, "`regent stop` started an agent");
}

#[test]
fn status_json_describes_the_agent() {
    let env = TestEnv::new();
    for i in 0..3 {
        env.store_ok(&format!("status{i}.example"), "u", "s");
    }
    let pid = env.agent_pid().unwrap();
    let status = env.status_json();
    assert_eq!(status.pid, pid);
    assert_eq!(status.proto, PROTOCOL_VERSION);
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.socket, env.socket.display().to_string());
    assert_eq!(
        status.store,
        env.store.name(),
        "the store is the one REGENT_STORE chose"
    );
    assert!(
        !status.store_reason.trim().is_empty(),
        "store_reason is empty"
    );
    assert_eq!(status.credentials, 3);
    assert!(
        status.started > 0 && status.started <= now() + 5,
        "started {}",
        status.started
    );
    assert!(status.uptime_secs < 3600, "uptime {}", status.uptime_secs);
    env.erase_ok("status0.example");
    assert_eq!(env.status_json().credentials, 2);
}

#[test]
fn ls_shows_entries_without_secrets() {
    let env = TestEnv::new();
    let before = now();
    let hub_secret = random_secret(32);
    let ghcr_secret = random_secret(32);
    env.store_ok("https://index.docker.io/v1/", "hubuser", &hub_secret);
    env.store_ok("ghcr.io", "<token>", &ghcr_secret);

    let entries = env.ls_json();
    assert_eq!(entries.len(), 2, "{entries:?}");
    for (url, user) in [
        ("https://index.docker.io/v1/", "hubuser"),
        ("ghcr.io", "<token>"),
    ] {
        let e = entries
            .iter()
            .find(|e| e.server_url == url)
            .unwrap_or_else(|| panic!("no entry for {url}: {entries:?}"));
        assert_eq!(e.username, user);
        assert_eq!(e.key, registry::canonical(url).unwrap(), "{e:?}");
        assert_eq!(e.source, "static", "{e:?}");
        assert!(e.created >= before - 5 && e.created <= now() + 5, "{e:?}");
        assert!(e.updated >= e.created, "{e:?}");
    }

    // The second store of a key updates it and shows the form stored last.
    env.store_ok("docker.io", "hubuser2", &hub_secret);
    let entries = env.ls_json();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let hub = entries
        .iter()
        .find(|e| e.key == "docker.io")
        .expect("hub entry");
    assert_eq!(hub.server_url, "docker.io");
    assert_eq!(hub.username, "hubuser2");

    let out = env.regent(&["ls"]);
    assert!(out.success(), "`regent ls`\n{out}");
    for needle in ["docker.io", "hubuser2", "ghcr.io", "<token>"] {
        assert!(
            out.stdout().contains(needle),
            "`regent ls` lacks {needle}\n{out}"
        );
    }
    for out in [env.regent(&["ls"]), env.regent(&["ls", "--json"])] {
        for s in [&hub_secret, &ghcr_secret] {
            assert!(
                !out.stdout().contains(s.as_str()) && !out.stderr().contains(s.as_str()),
                "`regent ls` printed a secret\n{out}"
            );
        }
    }
}

#[test]
fn credentials_persist_across_restart_only_in_persistent_stores() {
    let env = TestEnv::new();
    let secret = random_secret(48);
    env.store_ok("persist.example", "keeper", &secret);
    env.store_ok("https://index.docker.io/v1/", "hub", "hubsecret");
    let first = env.agent_pid().unwrap();
    env.stop_agent();

    if env.store.is_persistent() {
        let creds = env.get_ok("persist.example");
        assert_eq!(
            (creds.username.as_str(), creds.secret.as_str()),
            ("keeper", secret.as_str())
        );
        assert_eq!(env.get_ok("docker.io").secret, "hubsecret");
        let list = env.list_ok();
        assert_eq!(list.len(), 2, "{list:?}");
        assert_eq!(
            list.get("https://index.docker.io/v1/").map(String::as_str),
            Some("hub"),
            "list keeps the stored form across a restart: {list:?}"
        );
        assert_eq!(env.ls_json().len(), 2);
        // Erase survives a restart too.
        env.erase_ok("persist.example");
        env.stop_agent();
        env.get_missing("persist.example");
        assert_eq!(env.list_ok().len(), 1);
    } else {
        env.get_missing("persist.example");
        assert!(
            env.list_ok().is_empty(),
            "a memory store forgets on restart"
        );
    }
    let second = env.agent_pid().expect("a new agent");
    assert_ne!(first, second);
}

#[test]
fn stale_socket_after_sigkill_is_replaced() {
    let env = TestEnv::new();
    env.store_ok("stale.example", "u", "before");
    let old = env.kill_agent();
    assert!(
        fs::symlink_metadata(&env.socket).is_ok(),
        "the socket file should survive SIGKILL of the agent"
    );
    assert_eq!(env.agent_pid(), None);

    env.store_ok("stale2.example", "u2", "after");
    let new = env.agent_pid().expect("a new agent after the stale socket");
    assert_ne!(old, new);
    assert_is_agent_of(&env, new);
    assert_eq!(env.get_ok("stale2.example").secret, "after");
    if env.store.is_persistent() {
        assert_eq!(env.get_ok("stale.example").secret, "before");
    } else {
        env.get_missing("stale.example");
    }

    // A `get` is the first call after the kill this time.
    env.kill_agent();
    let out = env.helper(&["get"], "stale2.example");
    if env.store.is_persistent() {
        assert_eq!(env.parse_get(&out).secret, "after");
    } else {
        env.assert_not_found(&out);
    }
    assert!(env.agent_pid().is_some());
}

// ---- an agent speaking an older protocol ----

struct FakeAgent {
    quit: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    hellos: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    /// Listens on `socket` and answers like an agent of protocol 0: `Hello`
    /// with proto 0, every other request with `Unsupported`, and `Quit` by
    /// closing and removing its socket.
    fn old(socket: &Path) -> FakeAgent {
        let listener = UnixListener::bind(socket).expect("bind the fake agent");
        listener.set_nonblocking(true).unwrap();
        let quit = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let hellos = Arc::new(AtomicUsize::new(0));
        let (q, s, h) = (quit.clone(), stop.clone(), hellos.clone());
        let path = socket.to_path_buf();
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if serve_old(stream, &h) {
                            q.store(true, Ordering::SeqCst);
                            drop(listener);
                            let _ = fs::remove_file(&path);
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return,
                }
            }
        });
        FakeAgent {
            quit,
            stop,
            hellos,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves one connection; true when it asked us to quit.
fn serve_old(mut stream: UnixStream, hellos: &AtomicUsize) -> bool {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        let msg: serde_json::Value = match read_frame(&mut stream) {
            Ok(m) => m,
            Err(_) => return false,
        };
        let reply = match msg["type"].as_str() {
            Some("Hello") => {
                hellos.fetch_add(1, Ordering::SeqCst);
                serde_json::json!({"type":"Hello","proto":0,"min_proto":0,"version":"0.0.0-old","pid":0})
            }
            Some("Quit") => {
                let _ = write_frame(&mut stream, &serde_json::json!({"type":"Done"}));
                let _ = stream.flush();
                return true;
            }
            _ => {
                serde_json::json!({"type":"Error","kind":"unsupported","message":"protocol 0 only"})
            }
        };
        if write_frame(&mut stream, &reply).is_err() {
            return false;
        }
    }
}

#[test]
fn an_older_agent_is_asked_to_quit_and_replaced() {
    let env = TestEnv::new();
    regent_shared::paths::ensure_private_dir(&env.socket_dir()).unwrap();
    let fake = FakeAgent::old(&env.socket);

    let out = env.helper(&["store"], TestEnv::store_json("upgrade.example", "u", "s"));
    assert!(
        fake.hellos.load(Ordering::SeqCst) >= 1,
        "the helper never talked to the old agent\n{out}"
    );
    assert!(
        fake.quit.load(Ordering::SeqCst),
        "the helper did not ask the protocol-0 agent to quit\n{out}\n{}",
        env.diagnostics()
    );
    env.assert_store_ok(&out, "s");
    drop(fake);

    let pid = env.agent_pid().expect("a real agent replaced the old one");
    assert_ne!(pid, 0, "still talking to the fake agent");
    assert!(is_alive(pid));
    assert_is_agent_of(&env, pid);
    assert_eq!(env.get_ok("upgrade.example").secret, "s");
}

#[test]
fn an_older_agent_is_replaced_on_get_too() {
    let env = TestEnv::new();
    regent_shared::paths::ensure_private_dir(&env.socket_dir()).unwrap();
    let fake = FakeAgent::old(&env.socket);
    let out = env.helper(&["get"], "upgrade.example");
    assert!(fake.quit.load(Ordering::SeqCst), "no Quit sent\n{out}");
    env.assert_not_found(&out);
    drop(fake);
    let pid = env.agent_pid().expect("a real agent replaced the old one");
    assert_ne!(pid, 0);
    assert_is_agent_of(&env, pid);
}

// ---- no agent can be reached or started ----

/// Copies the helper alone into an empty directory; PATH holds nothing.
fn lonely_helper(env: &TestEnv, fake_regent: Option<&str>) -> (PathBuf, PathBuf) {
    let dir = env.root.join("lonely");
    let empty = env.root.join("empty-path");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&empty).unwrap();
    let helper = dir.join(HELPER);
    fs::copy(&env.bins.helper, &helper).unwrap();
    if let Some(script) = fake_regent {
        let path = dir.join("regent");
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(script.as_bytes()).unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    (helper, empty)
}

fn run_lonely(
    env: &TestEnv,
    helper: &Path,
    path: &Path,
    verb: &str,
    stdin: &str,
) -> regent_tests::Outcome {
    env.run(
        env.command(helper).arg(verb).env("PATH", path),
        Input::Bytes(stdin.as_bytes()),
        regent_tests::DEFAULT_TIMEOUT,
    )
}

fn assert_unreachable_behaviour(env: &TestEnv, helper: &Path, path: &Path, case: &str) {
    let out = run_lonely(env, helper, path, "get", "ghcr.io");
    assert!(
        out.code() == Some(1) && out.out_trim() == regent_tests::NOT_FOUND,
        "{case}: `get` must print the not-found line on stdout and exit 1\n{out}\n{}",
        env.diagnostics()
    );
    assert!(
        out.elapsed <= UNREACHABLE_GET_BOUND,
        "{case}: `get` took {:?}, more than {UNREACHABLE_GET_BOUND:?}\n{out}",
        out.elapsed
    );
    assert!(
        !out.stderr().trim().is_empty(),
        "{case}: `get` should say why on stderr\n{out}"
    );

    let secret = "lonely-secret-9f8e7d";
    let input = String::from_utf8(TestEnv::store_json("ghcr.io", "u", secret)).unwrap();
    let out = run_lonely(env, helper, path, "store", &input);
    assert_eq!(out.code(), Some(1), "{case}: `store` must fail\n{out}");
    let lines = out.out_lines();
    assert!(
        lines.len() == 1 && !lines[0].trim().is_empty(),
        "{case}: `store` must print one line on stdout\n{out}"
    );
    assert!(
        !out.stdout().contains(secret) && !out.stderr().contains(secret),
        "{case}: `store` echoed the secret\n{out}"
    );
    println!("{case}: store says: {}", lines[0]);
}

#[test]
fn without_an_agent_binary_get_is_not_found_and_store_fails() {
    let env = TestEnv::new();
    let (helper, path) = lonely_helper(&env, None);
    assert_unreachable_behaviour(&env, &helper, &path, "no regent binary");
    assert_eq!(env.agent_pid(), None);
}

#[test]
fn with_an_agent_that_fails_to_start_get_is_not_found() {
    let env = TestEnv::new();
    let (helper, path) = lonely_helper(
        &env,
        Some("#!/bin/sh\necho 'error: simulated start failure; see nothing'\nexit 1\n"),
    );
    assert_unreachable_behaviour(&env, &helper, &path, "failing regent");
    let (helper, path) = lonely_helper(&env, Some("#!/bin/sh\nexit 7\n"));
    assert_unreachable_behaviour(&env, &helper, &path, "silently failing regent");
    assert_eq!(env.agent_pid(), None);
}

#[test]
fn with_an_agent_that_never_gets_ready_get_is_not_found_in_time() {
    let env = TestEnv::new();
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sleep(1)");
    let (helper, path) = lonely_helper(&env, Some(&format!("#!/bin/sh\nexec {sleep} 60\n")));
    assert_unreachable_behaviour(&env, &helper, &path, "regent that never reports ready");
}

#[test]
fn with_a_silent_listener_get_is_not_found_in_time() {
    // Something listens on the socket but never answers the Hello.
    let env = TestEnv::new();
    regent_shared::paths::ensure_private_dir(&env.socket_dir()).unwrap();
    let listener = UnixListener::bind(&env.socket).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut held = Vec::new();
        while !s.load(Ordering::SeqCst) {
            if let Ok((c, _)) = listener.accept() {
                held.push(c);
            }
            thread::sleep(Duration::from_millis(5));
        }
    });
    let (helper, path) = lonely_helper(&env, None);
    let out = run_lonely(&env, &helper, &path, "get", "ghcr.io");
    stop.store(true, Ordering::SeqCst);
    let _ = t.join();
    assert!(
        out.code() == Some(1) && out.out_trim() == regent_tests::NOT_FOUND,
        "`get` must print the not-found line\n{out}"
    );
    assert!(
        out.elapsed <= UNREACHABLE_GET_BOUND,
        "`get` took {:?} against a silent socket\n{out}",
        out.elapsed
    );
}

#[test]
fn memory_store_is_what_regent_store_memory_selects() {
    // Explicitly memory, whatever REGENT_TEST_STORE says.
    let env = TestEnv::with_store(StoreKind::Memory);
    env.store_ok("mem.example", "u", "s");
    assert_eq!(env.status_json().store, "memory");
    let files: Vec<PathBuf> = env
        .all_files()
        .into_iter()
        .filter(|(p, b)| regent_tests::contains(b, b"mem.example") && !p.ends_with("agent.log"))
        .map(|(p, _)| p)
        .collect();
    assert!(
        files.is_empty(),
        "the memory store wrote the registry name to disk: {files:?}"
    );
}
