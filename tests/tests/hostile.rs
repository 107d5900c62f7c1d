//! Bad input and hostile peers: whatever arrives on the helper's stdin or the
//! agent's socket, the answer is bounded, the agent lives on, and the store
//! is unchanged.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use regent_tests::{NO_SERVER_URL, NOT_FOUND, Outcome, TestEnv, is_alive, unique_host};

/// The store as `list` and one known `get` see it.
fn snapshot(env: &TestEnv, host: &str) -> (String, String) {
    let list = env.helper(&["list"], "");
    assert!(list.success(), "{list}");
    (list.stdout(), env.get_ok(host).secret)
}

/// Exit status 1 and exactly `line` on stdout.
fn assert_failure(out: &Outcome, what: &str, line: &str) {
    assert_eq!(out.code(), Some(1), "{what}: expected exit 1\n{out}");
    assert_eq!(
        out.stdout(),
        format!("{line}\n"),
        "{what}: expected exactly this line on stdout\n{out}"
    );
}

#[test]
fn hostile_helper_input_gets_one_line_and_changes_nothing() {
    let env = TestEnv::new();
    let host = unique_host("keep");
    env.store_ok(&host, "u", "kept-secret");
    let pid = env.wait_agent_pid(Duration::from_secs(10)).expect("agent");
    let before = snapshot(&env, &host);

    let mut invalid_utf8 =
        b"{\"ServerURL\":\"x.example\",\"Username\":\"u\",\"Secret\":\"".to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0x80]);
    invalid_utf8.extend_from_slice(b"\"}");
    let huge = vec![b'a'; 10 * 1024 * 1024];
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    const TOO_LARGE: &str = "input too large: more than 1048576 bytes on stdin";
    // (name, stdin, what get, store and erase print: `None` is success with
    // an empty stdout). A garbage server URL is a key like any other: get
    // finds nothing, erase has nothing to erase.
    type Case<'a> = (&'a str, Vec<u8>, [Option<&'a str>; 3]);
    let cases: Vec<Case> = vec![
        (
            "empty",
            Vec::new(),
            [
                Some(NO_SERVER_URL),
                Some("no credentials JSON on stdin"),
                Some(NO_SERVER_URL),
            ],
        ),
        (
            "invalid UTF-8",
            invalid_utf8,
            [
                Some(NOT_FOUND),
                Some("invalid credentials JSON on stdin at line 1 column 51"),
                None,
            ],
        ),
        (
            "garbage",
            garbage,
            [
                Some(NOT_FOUND),
                Some("invalid credentials JSON on stdin at line 1 column 1"),
                None,
            ],
        ),
        (
            "10 MiB",
            huge,
            [Some(TOO_LARGE), Some(TOO_LARGE), Some(TOO_LARGE)],
        ),
    ];
    for (v, verb) in ["get", "store", "erase"].into_iter().enumerate() {
        for (name, input, expected) in &cases {
            let out = env.helper(&[verb], input);
            let what = format!("{verb} with {name} stdin");
            match expected[v] {
                Some(line) => assert_failure(&out, &what, line),
                None => assert!(
                    out.success() && out.stdout.is_empty(),
                    "{what}: expected exit 0 and an empty stdout\n{out}"
                ),
            }
        }
    }
    const USAGE: &str = "Usage: docker-credential-regent <store|get|erase|list|version>";
    for (args, line) in [
        (
            &["frobnicate"][..],
            "docker-credential-regent: unknown action: frobnicate",
        ),
        (&["get", "extra"], USAGE),
        (&["list", "x", "y"], USAGE),
    ] {
        let out = env.helper(args, &host);
        assert_failure(&out, &format!("{args:?}"), line);
    }
    for verb in ["get", "store", "erase"] {
        let out = env.helper_stdin_open(&[verb]);
        assert_failure(
            &out,
            &format!("{verb} with a stdin that never closes"),
            "timed out after 10s waiting for stdin to close",
        );
    }

    assert!(is_alive(pid), "the agent died\n{}", env.diagnostics());
    assert_eq!(env.agent_pid(), Some(pid), "a different agent answers now");
    assert_eq!(snapshot(&env, &host), before, "the store changed");
}

#[test]
fn idle_connections_do_not_stop_a_get() {
    let env = TestEnv::new();
    let host = unique_host("loris");
    env.store_ok(&host, "u", "loris-secret");
    let pid = env.wait_agent_pid(Duration::from_secs(10)).expect("agent");

    // 500 peers that connect and never say a word.
    let idle: Vec<UnixStream> = (0..500)
        .map(|i| {
            UnixStream::connect(&env.socket)
                .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", env.diagnostics()))
        })
        .collect();
    // A get still answers (the harness fails it as a hang after 30 s).
    assert_eq!(env.get_ok(&host).secret, "loris-secret");
    let list = env.helper(&["list"], "");
    assert!(list.success(), "{list}");
    drop(idle);
    assert!(is_alive(pid));
}

#[test]
fn oversize_and_garbage_frames_are_refused_and_the_agent_lives() {
    let env = TestEnv::new();
    let host = unique_host("frames");
    env.store_ok(&host, "u", "frame-secret");
    let pid = env.wait_agent_pid(Duration::from_secs(10)).expect("agent");

    // A length prefix of 4 GiB - 1: refused before anything is allocated.
    let mut s = UnixStream::connect(&env.socket).unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    // A frame that is not JSON, and one that is JSON but not a request.
    for body in [&b"\x00\x01\x02not json"[..], b"{\"type\":\"Launch\"}"] {
        let mut s = UnixStream::connect(&env.socket).unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        s.write_all(&frame).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    }
    // Half a frame, then the peer goes away.
    let mut s = UnixStream::connect(&env.socket).unwrap();
    s.write_all(&[0, 0, 0, 100, b'{']).unwrap();
    drop(s);

    assert!(is_alive(pid), "the agent died\n{}", env.diagnostics());
    assert_eq!(env.get_ok(&host).secret, "frame-secret");
    assert!(
        !env.log_contents().contains("frame-secret"),
        "a secret reached the log"
    );
}
