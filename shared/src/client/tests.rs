//! The connect/start state machine of [`super::call_with`], step by step,
//! against fakes in a private temp dir: listeners that close at once, never
//! answer, answer a `Hello` (of an older, a newer or the same protocol),
//! store lock files that name a holder or are stale, a start lock held by
//! someone else, and shell scripts standing in for the agent executable.
//! Every deadline is short, so each test takes at most about a second.

use super::*;
use crate::protocol::write_frame;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("regent-client-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn options(base: &Path) -> Options {
    let mut opts = Options::new("test");
    opts.socket = base.join("run").join("agent.sock");
    opts.data_dir = base.join("data");
    opts.start_timeout = Duration::from_secs(2);
    opts
}

fn get() -> Request {
    Request::Get {
        server_url: "ghcr.io".into(),
        env: Default::default(),
        env_complete: false,
    }
}

/// Binds a listener on `socket`, creating its private directory.
fn bind(socket: &Path) -> UnixListener {
    paths::ensure_private_dir(socket.parent().unwrap()).unwrap();
    UnixListener::bind(socket).unwrap()
}

/// How a fake agent answers.
#[derive(Clone, Copy)]
struct Fake {
    /// The protocol range its `Hello` announces.
    proto: u32,
    min_proto: u32,
    /// Whether it answers requests after the `Hello` (with `NotFound`).
    answers: bool,
}

const CURRENT: Fake = Fake {
    proto: PROTOCOL_VERSION,
    min_proto: PROTOCOL_VERSION,
    answers: true,
};

const FAKE_PID: u32 = 4242;

/// Serves `conns` connections on `listener` as `fake` would, then drops
/// the listener; returns the kinds of the requests it read.
fn serve(
    listener: UnixListener,
    fake: Fake,
    conns: usize,
) -> thread::JoinHandle<Vec<&'static str>> {
    thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..conns {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            while let Ok(req) = read_frame::<_, Request>(&mut conn) {
                seen.push(req.kind());
                let resp = match req {
                    Request::Hello { .. } => Response::Hello {
                        proto: fake.proto,
                        min_proto: fake.min_proto,
                        version: "0.0.0-fake".into(),
                        pid: FAKE_PID,
                    },
                    Request::Quit => {
                        let _ = write_frame(&mut conn, &Response::Done);
                        break;
                    }
                    _ if fake.answers => Response::NotFound,
                    _ => continue,
                };
                if write_frame(&mut conn, &resp).is_err() {
                    break;
                }
            }
        }
        seen
    })
}

/// Writes an executable shell script standing in for `regent`: it is run
/// as `<script> agent` with `REGENT_SOCKET` set; `$DIR` is `base`.
fn agent_script(base: &Path, body: &str) -> AgentExe {
    let path = base.join("fake-regent");
    let text = format!("#!/bin/sh\nDIR='{}'\n{body}\n", base.display());
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
    AgentExe::Path(path)
}

/// Waits (bounded) until `path` exists.
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Holds the store lock of `data_dir` as an agent that serves the store on
/// `socket` does (`None`: one that has not written its socket yet).
fn hold_store(data_dir: &Path, pid: u32, socket: Option<&Path>) -> File {
    fs::create_dir_all(data_dir).unwrap();
    let lock = paths::store_lock_path(data_dir);
    let text = match socket {
        Some(s) => format!("{pid}\n{}\n", s.display()),
        None => format!("{pid}\n"),
    };
    fs::write(&lock, text).unwrap();
    let held = File::open(&lock).unwrap();
    held.lock().unwrap();
    held
}

fn expect_err(result: Result<(Connection, Response), ClientError>) -> ClientError {
    match result {
        Err(e) => e,
        Ok((conn, resp)) => panic!(
            "expected an error, got {} from {}",
            resp.kind(),
            conn.socket().display()
        ),
    }
}

#[test]
fn nothing_there_and_no_start_asked_is_not_running() {
    let base = tempdir("absent");
    let opts = options(&base);
    match expect_err(call_with(&opts, &get())) {
        ClientError::NotRunning(s) => assert_eq!(s, opts.socket),
        e => panic!("expected NotRunning, got: {e}"),
    }
    assert!(
        !opts.data_dir.exists(),
        "nothing is created when no start is asked"
    );
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn an_agent_answering_gets_hello_and_request_in_one_go() {
    let base = tempdir("answers");
    let opts = options(&base);
    let agent = serve(bind(&opts.socket), CURRENT, 1);
    let (conn, resp) = call_with(&opts, &get()).unwrap();
    assert!(matches!(resp, Response::NotFound));
    assert_eq!(conn.socket(), opts.socket);
    assert_eq!(conn.agent.pid, FAKE_PID);
    assert_eq!(conn.agent.version, "0.0.0-fake");
    drop(conn);
    assert_eq!(agent.join().unwrap(), ["hello", "get"]);
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_listener_that_never_answers_times_out_at_the_deadline() {
    let base = tempdir("silent");
    let mut opts = options(&base);
    opts.start_timeout = Duration::from_millis(100);
    let listener = bind(&opts.socket);
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        // Read what comes and answer nothing, until the client hangs up.
        let _ = io::copy(&mut conn, &mut io::sink());
    });
    let began = Instant::now();
    let err = expect_err(call_with(&opts, &get()));
    let took = began.elapsed();
    assert!(
        matches!(&err, ClientError::Agent { detail, .. } if detail == "timed out waiting for its answer"),
        "{err}"
    );
    // The hello wait is the start budget left, but never under 500 ms.
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn an_agent_silent_after_its_hello_times_out_after_the_reply_timeout() {
    let base = tempdir("mute");
    let mut opts = options(&base);
    opts.reply_timeout = Duration::from_millis(100);
    let fake = Fake {
        answers: false,
        ..CURRENT
    };
    let agent = serve(bind(&opts.socket), fake, 1);
    let err = expect_err(call_with(&opts, &get()));
    assert!(
        matches!(&err, ClientError::Agent { socket, detail }
            if socket == &opts.socket && detail == "timed out waiting for its answer"),
        "{err}"
    );
    assert_eq!(agent.join().unwrap(), ["hello", "get"]);
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn an_agent_past_our_protocol_is_too_new() {
    let base = tempdir("newer");
    let opts = options(&base);
    let fake = Fake {
        proto: PROTOCOL_VERSION + 2,
        min_proto: PROTOCOL_VERSION + 1,
        answers: true,
    };
    let agent = serve(bind(&opts.socket), fake, 1);
    match expect_err(call_with(&opts, &get())) {
        ClientError::AgentTooNew { socket, agent } => {
            assert_eq!(socket, opts.socket);
            assert_eq!(agent.proto, PROTOCOL_VERSION + 2);
        }
        e => panic!("expected AgentTooNew, got: {e}"),
    }
    assert_eq!(agent.join().unwrap(), ["hello", "get"]);
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn an_older_agent_is_asked_to_quit_and_counts_as_none() {
    let base = tempdir("older");
    let opts = options(&base);
    let fake = Fake {
        proto: PROTOCOL_VERSION - 1,
        min_proto: PROTOCOL_VERSION - 1,
        answers: true,
    };
    let agent = serve(bind(&opts.socket), fake, 1);
    match expect_err(call_with(&opts, &get())) {
        ClientError::NotRunning(s) => assert_eq!(s, opts.socket),
        e => panic!("expected NotRunning once the old agent left, got: {e}"),
    }
    assert_eq!(agent.join().unwrap(), ["hello", "get", "quit"]);
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_refused_socket_is_kept_when_no_start_is_asked() {
    let base = tempdir("refused-kept");
    let opts = options(&base);
    drop(bind(&opts.socket));
    match expect_err(call_with(&opts, &get())) {
        ClientError::NotRunning(s) => assert_eq!(s, opts.socket),
        e => panic!("expected NotRunning, got: {e}"),
    }
    assert!(exists(&opts.socket), "only a starter removes a dead socket");
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_refused_socket_is_removed_before_the_agent_is_spawned() {
    let base = tempdir("refused-removed");
    let mut opts = options(&base);
    drop(bind(&opts.socket));
    opts.agent_exe = agent_script(
        &base,
        r#"[ -S "$REGENT_SOCKET" ] && echo present > "$DIR/seen" || echo absent > "$DIR/seen"
echo "error: the test agent refuses""#,
    );
    match expect_err(call_with(&opts, &get())) {
        ClientError::Start(why) => assert_eq!(why, "the test agent refuses"),
        e => panic!("expected Start, got: {e}"),
    }
    assert_eq!(fs::read_to_string(base.join("seen")).unwrap(), "absent\n");
    assert!(paths::start_lock_path(&opts.data_dir).exists());
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_spawned_agent_gets_our_socket_and_is_used_once_ready() {
    let base = tempdir("spawned");
    let mut opts = options(&base);
    opts.agent_exe = agent_script(
        &base,
        r#"[ "$1" = agent ] || exit 3
echo "$REGENT_SOCKET" > "$DIR/spawned"
while [ ! -e "$DIR/bound" ]; do sleep 0.01; done
echo ready"#,
    );
    let socket = opts.socket.clone();
    let dir = base.clone();
    let agent = thread::spawn(move || {
        wait_for(&dir.join("spawned"));
        let listener = bind(&socket);
        fs::write(dir.join("bound"), "").unwrap();
        serve(listener, CURRENT, 1).join().unwrap()
    });
    let (conn, resp) = call_with(&opts, &get()).unwrap();
    assert!(matches!(resp, Response::NotFound));
    assert_eq!(conn.socket(), opts.socket);
    drop(conn);
    assert_eq!(agent.join().unwrap(), ["hello", "get"]);
    assert_eq!(
        fs::read_to_string(base.join("spawned")).unwrap(),
        format!("{}\n", opts.socket.display())
    );
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_spawned_agent_ready_but_not_listening_is_named() {
    let base = tempdir("ready-deaf");
    let mut opts = options(&base);
    opts.start_timeout = Duration::from_millis(500);
    opts.agent_exe = agent_script(&base, "echo ready");
    match expect_err(call_with(&opts, &get())) {
        ClientError::Start(why) => assert_eq!(
            why,
            format!(
                "it reported ready but {} does not answer; see {}",
                opts.socket.display(),
                paths::log_file().display()
            )
        ),
        e => panic!("expected Start, got: {e}"),
    }
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_spawned_agent_that_exits_silently_is_named() {
    let base = tempdir("exits");
    let mut opts = options(&base);
    let exe = agent_script(&base, "exit 3");
    opts.agent_exe = exe.clone();
    let AgentExe::Path(path) = exe else {
        unreachable!()
    };
    match expect_err(call_with(&opts, &get())) {
        ClientError::Start(why) => {
            let prefix = format!("{} exited during start-up", path.display());
            let suffix = format!("; see {}", paths::log_file().display());
            assert!(why.starts_with(&prefix) && why.ends_with(&suffix), "{why}");
        }
        e => panic!("expected Start, got: {e}"),
    }
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_missing_executable_is_named() {
    let base = tempdir("no-exe");
    let mut opts = options(&base);
    let missing = base.join("no-such-regent");
    opts.agent_exe = AgentExe::Path(missing.clone());
    match expect_err(call_with(&opts, &get())) {
        ClientError::Start(why) => {
            assert!(
                why.starts_with(&format!("cannot run {}: ", missing.display())),
                "{why}"
            )
        }
        e => panic!("expected Start, got: {e}"),
    }
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_start_lock_held_past_the_deadline_is_named() {
    let base = tempdir("start-locked");
    let mut opts = options(&base);
    opts.start_timeout = Duration::from_millis(200);
    opts.agent_exe = agent_script(&base, r#"touch "$DIR/spawned""#);
    fs::create_dir_all(&opts.data_dir).unwrap();
    let lock_path = paths::start_lock_path(&opts.data_dir);
    let other = File::create(&lock_path).unwrap();
    other.lock().unwrap();
    match expect_err(call_with(&opts, &get())) {
        ClientError::Start(why) => assert_eq!(
            why,
            format!(
                "another program is starting the agent and holds {}; try again, or run `regent status`",
                lock_path.display()
            )
        ),
        e => panic!("expected Start, got: {e}"),
    }
    assert!(!base.join("spawned").exists());
    drop(other);
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn an_agent_started_while_we_wait_for_the_start_lock_is_used() {
    let base = tempdir("started-meanwhile");
    let mut opts = options(&base);
    opts.agent_exe = agent_script(&base, r#"touch "$DIR/spawned""#);
    fs::create_dir_all(&opts.data_dir).unwrap();
    let other = File::create(paths::start_lock_path(&opts.data_dir)).unwrap();
    other.lock().unwrap();
    let socket = opts.socket.clone();
    let starter = thread::spawn(move || {
        // Another starter: brings its agent up, then lets go of the lock.
        thread::sleep(Duration::from_millis(100));
        let agent = serve(bind(&socket), CURRENT, 1);
        drop(other);
        agent.join().unwrap()
    });
    let (conn, resp) = call_with(&opts, &get()).unwrap();
    assert!(matches!(resp, Response::NotFound));
    drop(conn);
    assert_eq!(starter.join().unwrap(), ["hello", "get"]);
    assert!(!base.join("spawned").exists(), "no second agent is spawned");
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn the_store_holder_answers_on_the_socket_it_advertises() {
    let base = tempdir("holder-answers");
    let opts = options(&base);
    let elsewhere = base.join("other").join("agent.sock");
    let agent = serve(bind(&elsewhere), CURRENT, 1);
    let held = hold_store(&opts.data_dir, FAKE_PID, Some(&elsewhere));
    let (conn, resp) = call_with(&opts, &get()).unwrap();
    assert!(matches!(resp, Response::NotFound));
    assert_eq!(conn.socket(), elsewhere);
    drop(conn);
    assert_eq!(agent.join().unwrap(), ["hello", "get"]);
    drop(held);
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_stale_store_lock_names_no_holder() {
    let base = tempdir("stale-lock");
    let opts = options(&base);
    let elsewhere = base.join("other").join("agent.sock");
    // An agent that is gone leaves its lock file behind, unlocked.
    drop(hold_store(&opts.data_dir, 99, Some(&elsewhere)));
    let began = Instant::now();
    match expect_err(call_with(&opts, &get())) {
        ClientError::NotRunning(s) => assert_eq!(s, opts.socket),
        e => panic!("expected NotRunning, got: {e}"),
    }
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "no wait for a stale holder"
    );
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_holder_that_never_says_where_it_listens_is_named() {
    let base = tempdir("holder-mute");
    let mut opts = options(&base);
    opts.start_timeout = Duration::from_millis(200);
    let held = hold_store(&opts.data_dir, 77, None);
    let err = expect_err(call_with(&opts, &get()));
    assert!(
        matches!(
            err,
            ClientError::StoreHeld {
                pid: Some(77),
                socket: None,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("which has not said where it listens"),
        "{err}"
    );
    drop(held);
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_holder_that_appears_instead_of_our_spawned_agent_is_used() {
    // Ours refuses to start because an agent started some other way (a
    // supervisor) took the store meanwhile, on another socket.
    let base = tempdir("holder-after-spawn");
    let mut opts = options(&base);
    opts.agent_exe = agent_script(
        &base,
        r#"touch "$DIR/spawned"
while [ ! -e "$DIR/bound" ]; do sleep 0.01; done
echo "error: the store is held""#,
    );
    let data_dir = opts.data_dir.clone();
    let dir = base.clone();
    let supervisor = thread::spawn(move || {
        wait_for(&dir.join("spawned"));
        let elsewhere = dir.join("other").join("agent.sock");
        let agent = serve(bind(&elsewhere), CURRENT, 1);
        let held = hold_store(&data_dir, FAKE_PID, Some(&elsewhere));
        fs::write(dir.join("bound"), "").unwrap();
        let seen = agent.join().unwrap();
        drop(held);
        seen
    });
    let (conn, resp) = call_with(&opts, &get()).unwrap();
    assert!(matches!(resp, Response::NotFound));
    assert_eq!(conn.socket(), base.join("other").join("agent.sock"));
    drop(conn);
    assert_eq!(supervisor.join().unwrap(), ["hello", "get"]);
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn something_else_at_the_socket_path_is_refused_and_kept() {
    let base = tempdir("not-socket");
    let mut opts = options(&base);
    opts.agent_exe = agent_script(&base, r#"touch "$DIR/spawned""#);
    paths::ensure_private_dir(opts.socket.parent().unwrap()).unwrap();
    fs::write(&opts.socket, "not a socket").unwrap();
    match expect_err(call_with(&opts, &get())) {
        ClientError::Dir(DirError::NotSocket { path, .. }) => assert_eq!(path, opts.socket),
        e => panic!("expected NotSocket, got: {e}"),
    }
    assert_eq!(fs::read_to_string(&opts.socket).unwrap(), "not a socket");
    assert!(!base.join("spawned").exists());
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_listener_that_closes_at_once_counts_as_no_agent() {
    let base = tempdir("closing");
    let opts = options(&base);
    paths::ensure_private_dir(opts.socket.parent().unwrap()).unwrap();
    let listener = UnixListener::bind(&opts.socket).unwrap();
    let accepting = thread::spawn(move || {
        // Accept and drop, as an agent dying under a connected client does.
        for _ in 0..2 {
            if let Ok((conn, _)) = listener.accept() {
                drop(conn);
            }
        }
    });
    match call_with(&opts, &get()) {
        Err(ClientError::NotRunning(s)) => assert_eq!(s, opts.socket),
        Err(e) => panic!("expected NotRunning, got: {e}"),
        Ok(_) => panic!("expected NotRunning, got an answer"),
    }
    drop(accepting);
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn the_store_holder_is_read_from_its_lock() {
    let base = tempdir("holder");
    let data = base.join("data");
    fs::create_dir_all(&data).unwrap();
    assert!(store_holder(&data).is_none(), "no lock file: no holder");
    let lock = paths::store_lock_path(&data);
    fs::write(&lock, b"4242\n/run/user/1000/regent/agent.sock\n").unwrap();
    assert!(store_holder(&data).is_none(), "an unlocked file: no holder");
    let held = File::open(&lock).unwrap();
    held.lock().unwrap();
    let holder = store_holder(&data).expect("a holder");
    assert_eq!(holder.pid, Some(4242));
    assert_eq!(
        holder.socket.as_deref(),
        Some(Path::new("/run/user/1000/regent/agent.sock"))
    );
    drop(held);
    assert!(store_holder(&data).is_none(), "released: no holder");

    let partial = parse_holder(b"17\n/half/written");
    assert_eq!(partial.pid, Some(17));
    assert!(partial.socket.is_none());
    let empty = parse_holder(b"");
    assert!(empty.pid.is_none() && empty.socket.is_none());
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_held_store_that_never_answers_is_named() {
    let base = tempdir("held");
    let opts = options(&base);
    fs::create_dir_all(&opts.data_dir).unwrap();
    let elsewhere = base.join("elsewhere.sock");
    let lock = paths::store_lock_path(&opts.data_dir);
    fs::write(&lock, format!("99\n{}\n", elsewhere.display())).unwrap();
    let held = File::open(&lock).unwrap();
    held.lock().unwrap();
    let mut opts = opts;
    opts.start_timeout = Duration::from_millis(300);
    let err = match call_with(&opts, &get()) {
        Err(e) => e,
        Ok(_) => panic!("expected an error"),
    };
    let text = err.to_string();
    assert!(
        matches!(err, ClientError::StoreHeld { pid: Some(99), .. })
            && text.contains(&elsewhere.display().to_string())
            && text.contains(&opts.data_dir.display().to_string()),
        "{text}"
    );
    drop(held);
    fs::remove_dir_all(base).unwrap();
}

/// Every message, byte for byte: the CLI and the helper print them, and
/// the integration tests match on them.
#[test]
fn client_error_messages_are_pinned() {
    let sock = || PathBuf::from("/run/r/agent.sock");
    let data = PathBuf::from("/home/u/.local/share/regent");
    let cases = [
        (
            ClientError::NotRunning(sock()),
            "the regent agent is not running (no answer on /run/r/agent.sock); start it with `regent start`"
                .to_owned(),
        ),
        (
            ClientError::Start("why".into()),
            "cannot start the regent agent: why".to_owned(),
        ),
        (
            ClientError::Dir(DirError::NotDirectory(PathBuf::from("/run/r"))),
            "/run/r is not a directory. Remove it or set REGENT_SOCKET to a socket in a private directory"
                .to_owned(),
        ),
        (
            ClientError::AgentTooNew {
                socket: sock(),
                agent: AgentInfo {
                    proto: 9,
                    min_proto: 8,
                    version: "9.0.0".into(),
                    pid: 1,
                },
            },
            format!(
                "the regent agent on /run/r/agent.sock (version 9.0.0, protocol 9) no longer serves \
                 protocol {PROTOCOL_VERSION}: this program is older than the agent; install matching \
                 versions of regent and docker-credential-regent"
            ),
        ),
        (
            ClientError::Agent {
                socket: sock(),
                detail: "timed out waiting for its answer".into(),
            },
            "the regent agent on /run/r/agent.sock is not answering properly (timed out waiting for \
             its answer); run `regent status` or see its log"
                .to_owned(),
        ),
        (
            ClientError::StoreHeld {
                data_dir: data.clone(),
                pid: Some(42),
                socket: Some(PathBuf::from("/run/o/agent.sock")),
            },
            "the regent store in /home/u/.local/share/regent is held by the agent pid 42 \
             (/home/u/.local/share/regent/agent.lock), which does not answer on /run/o/agent.sock; \
             stop it (`kill 42`) and the next call starts a new agent"
                .to_owned(),
        ),
        (
            ClientError::StoreHeld {
                data_dir: data,
                pid: None,
                socket: None,
            },
            "the regent store in /home/u/.local/share/regent is held by the agent pid ? \
             (/home/u/.local/share/regent/agent.lock), which has not said where it listens; \
             stop it (`kill ?`) and the next call starts a new agent"
                .to_owned(),
        ),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
        assert!(std::error::Error::source(&err).is_none(), "{text}");
    }
}
