//! The trust boundary: peers of another uid are refused, the socket directory
//! is private, and no secret reaches a log, stderr or a plaintext file.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use regent_shared::protocol::PROTOCOL_VERSION;
use regent_tests::{Input, NOT_FOUND, TestEnv, contains, is_root, random_secret, skip, which};

const NOBODY: &str = "65534";

/// `setpriv` arguments that drop to nobody, or why that is impossible here.
fn as_nobody() -> Result<Vec<String>, &'static str> {
    if !is_root() {
        return Err("not running as root: cannot switch to another uid");
    }
    let Some(setpriv) = which("setpriv") else {
        return Err("setpriv is not installed");
    };
    Ok(vec![
        setpriv.display().to_string(),
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".into(),
    ])
}

/// A raw protocol client: connects to argv[1], sends Hello and Get(argv[2])
/// in one write, reads up to two frames, and reports as JSON what happened.
const RAW_CLIENT: &str = r#"
import base64, json, socket, struct, sys
path, url, proto = sys.argv[1], sys.argv[2], int(sys.argv[3])
res = {"connected": False, "closed": False, "frames": [], "raw": "", "error": None}
def frame(o):
    b = json.dumps(o).encode()
    return struct.pack(">I", len(b)) + b
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
buf = b""
try:
    s.connect(path)
    res["connected"] = True
    try:
        s.sendall(frame({"type": "Hello", "proto": proto, "client": "cli", "version": "0"})
                  + frame({"type": "Get", "server_url": url}))
    except OSError as e:
        res["error"] = "send: %s" % e
    while len(res["frames"]) < 2:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            res["error"] = "timeout"
            break
        except OSError as e:
            res["error"] = "recv: %s" % e
            res["closed"] = True
            break
        if not chunk:
            res["closed"] = True
            break
        buf += chunk
        while len(buf) >= 4:
            n = struct.unpack(">I", buf[:4])[0]
            if len(buf) < 4 + n:
                break
            res["frames"].append(json.loads(buf[4:4 + n]))
            buf = buf[4 + n:]
except OSError as e:
    res["error"] = "connect: %s" % e
res["raw"] = base64.b64encode(buf).decode()
print(json.dumps(res))
"#;

fn python() -> Option<PathBuf> {
    // The system interpreter: a per-user shim (pyenv) is not reachable by nobody.
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

struct RawResult {
    json: serde_json::Value,
    stdout: String,
}

fn raw_client(env: &TestEnv, prefix: &[String], python: &Path, url: &str) -> RawResult {
    let mut argv: Vec<String> = prefix.to_vec();
    argv.push(python.display().to_string());
    argv.extend([
        "-I".into(),
        "-c".into(),
        RAW_CLIENT.into(),
        env.socket.display().to_string(),
        url.into(),
        PROTOCOL_VERSION.to_string(),
    ]);
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    let out = env.run(&mut cmd, Input::Null, Duration::from_secs(20));
    assert!(out.success(), "raw client failed to run\n{out}");
    let json = serde_json::from_str(out.out_trim().as_str())
        .unwrap_or_else(|e| panic!("raw client output is not JSON ({e})\n{out}"));
    RawResult {
        json,
        stdout: out.stdout(),
    }
}

#[test]
fn a_peer_with_another_uid_is_refused() {
    let test = "a_peer_with_another_uid_is_refused";
    let prefix = match as_nobody() {
        Ok(p) => p,
        Err(why) => return skip(test, why),
    };
    let Some(python) = python() else {
        return skip(test, "no system python3 for the raw client");
    };
    let env = TestEnv::new();
    let secret = random_secret(40);
    env.store_ok("peer.example", "u", &secret);
    let pid = env.agent_pid().unwrap();

    // Positive control: the same raw client as our own uid gets the secret,
    // so a refusal below is the agent's doing, not a broken client.
    let own = raw_client(&env, &[], &python, "peer.example");
    let frames = own.json["frames"].as_array().cloned().unwrap_or_default();
    assert!(
        frames.len() == 2
            && frames[0]["type"] == "Hello"
            && frames[1]["type"] == "Credentials"
            && frames[1]["secret"] == secret.as_str(),
        "the raw client as our own uid should get Hello and the credentials: {}",
        own.stdout
    );

    // 1. The real helper as nobody, pointed at our socket (private dirs).
    let mut argv = prefix.clone();
    argv.push(env.bins.helper.display().to_string());
    argv.push("get".into());
    let out = env.run(
        env.command(&argv[0]).args(&argv[1..]),
        Input::Bytes(b"peer.example"),
        Duration::from_secs(20),
    );
    assert_ne!(out.code(), Some(0), "the helper as nobody must fail\n{out}");
    assert!(
        !out.stdout().contains(&secret) && !out.stderr().contains(&secret),
        "the helper as nobody got the secret\n{out}"
    );

    // 2. Loosen every directory and the socket to 0777: only the agent's
    //    peer check stands between nobody and the secret now.
    env.loosen_permissions();
    let out = env.run(
        env.command(&argv[0]).args(&argv[1..]),
        Input::Bytes(b"peer.example"),
        Duration::from_secs(20),
    );
    assert_ne!(
        out.code(),
        Some(0),
        "the helper as nobody must fail with an open socket\n{out}"
    );
    assert!(
        !out.stdout().contains(&secret) && !out.stderr().contains(&secret),
        "the helper as nobody got the secret through an open socket\n{out}"
    );

    let raw = raw_client(&env, &prefix, &python, "peer.example");
    let json = &raw.json;
    assert_eq!(
        json["connected"], true,
        "test setup: nobody could not even connect, so the peer check was not exercised: {}",
        raw.stdout
    );
    assert!(
        !raw.stdout.contains(&secret),
        "nobody received the secret: {}",
        raw.stdout
    );
    let frames = json["frames"].as_array().cloned().unwrap_or_default();
    for f in &frames {
        assert!(
            f["type"] == "Error",
            "the agent answered a foreign uid with {f} (expected the connection to be closed): {}",
            raw.stdout
        );
    }
    assert_eq!(
        json["closed"], true,
        "the agent must close a foreign uid's connection: {}",
        raw.stdout
    );
    let leftover = base64::engine::general_purpose::STANDARD
        .decode(json["raw"].as_str().unwrap_or(""))
        .unwrap_or_default();
    assert!(!contains(&leftover, secret.as_bytes()));

    // The agent survived and still serves us. The helper first: the socket
    // directory is its default one, which it tightens back to 0700; to the
    // test's own in-process client it is a loose directory, refused as such.
    assert_eq!(env.get_ok("peer.example").secret, secret);
    assert_eq!(env.agent_pid(), Some(pid), "the agent died or was replaced");
}

#[test]
fn socket_directory_is_private_and_ours() {
    let env = TestEnv::new();
    env.list_ok();
    let dir = env.socket_dir();
    let meta = fs::symlink_metadata(&dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "{}",
        dir.display()
    );
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    assert_eq!(meta.uid(), me);
    let sock = fs::symlink_metadata(&env.socket).unwrap();
    assert_eq!(sock.uid(), me, "the socket belongs to us");
}

#[test]
fn a_loose_socket_directory_is_tightened() {
    let env = TestEnv::new();
    let dir = env.socket_dir();
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    env.store_ok("tight.example", "u", "s");
    let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "a 0755 socket directory must end up 0700");
}

#[test]
fn a_socket_directory_owned_by_someone_else_is_refused() {
    let test = "a_socket_directory_owned_by_someone_else_is_refused";
    if !is_root() {
        return skip(test, "not running as root: cannot chown");
    }
    let env = TestEnv::new();
    let dir = env.socket_dir();
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();

    let out = env.helper(&["get"], "foreign.example");
    assert!(
        out.code() == Some(1) && out.out_trim() == NOT_FOUND,
        "get with a foreign socket directory: not found on stdout\n{out}"
    );
    assert!(
        !out.stderr().trim().is_empty(),
        "get should say why on stderr\n{out}"
    );
    let out = env.helper(
        &["store"],
        TestEnv::store_json("foreign.example", "u", "s3cr3t"),
    );
    assert_eq!(
        out.code(),
        Some(1),
        "store with a foreign socket directory\n{out}"
    );
    assert_eq!(out.out_lines().len(), 1, "one line on stdout\n{out}");
    assert!(
        !env.socket.exists(),
        "an agent put its socket in a directory owned by another user"
    );
    // Give it back so Drop can clean up.
    std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
}

#[test]
fn a_symlinked_socket_directory_is_refused() {
    let env = TestEnv::new();
    let dir = env.socket_dir();
    // Someone points the socket directory elsewhere (a private directory, so
    // only the link itself is wrong).
    let elsewhere = env.root.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
    let _ = fs::remove_dir_all(&dir);
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();

    let out = env.helper(&["get"], "link.example");
    assert!(
        out.code() == Some(1) && out.out_trim() == NOT_FOUND,
        "get with a symlinked socket directory: not found on stdout\n{out}"
    );
    assert!(
        out.stderr().contains("symlink") || out.stderr().contains("symbolic link"),
        "get should say why on stderr\n{out}"
    );
    let out = env.helper(
        &["store"],
        TestEnv::store_json("link.example", "u", "s3cr3t"),
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.out_lines().len(), 1, "{out}");
    assert!(
        fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "an agent used the directory behind the link"
    );
}

/// Stores, reads, lists and erases `secrets` through the helper and the CLI.
fn exercise(env: &TestEnv, tag: &str, secrets: &[String]) -> Vec<regent_tests::Outcome> {
    let mut outs = Vec::new();
    for (i, s) in secrets.iter().enumerate() {
        let host = format!("{tag}{i}.example");
        let out = env.helper(
            &["store"],
            TestEnv::store_json(&host, &format!("user{i}"), s),
        );
        env.assert_store_ok(&out, s);
        outs.push(out);
    }
    // Identity tokens and Docker Hub forms too.
    let out = env.helper(
        &["store"],
        TestEnv::store_json("https://index.docker.io/v1/", "<token>", &secrets[0]),
    );
    env.assert_store_ok(&out, &secrets[0]);
    outs.push(out);
    for (i, s) in secrets.iter().enumerate() {
        let out = env.helper(&["get"], format!("{tag}{i}.example"));
        assert_eq!(&env.parse_get(&out).secret, s);
        outs.push(out);
    }
    let out = env.helper(&["get"], "docker.io");
    assert_eq!(env.parse_get(&out).secret, secrets[0]);
    outs.push(out);
    outs.push(env.helper(&["get"], "missing.example"));
    outs.push(env.helper(&["list"], ""));
    // A store that fails after the secret was read.
    outs.push(env.helper(
        &["store"],
        format!(
            r#"{{"ServerURL":"","Username":"u","Secret":"{}"}}"#,
            secrets[1]
        ),
    ));
    outs.push(env.helper(
        &["store"],
        format!(
            r#"{{"ServerURL":"x.example","Username":"","Secret":"{}"}}"#,
            secrets[1]
        ),
    ));
    outs.push(env.regent(&["ls"]));
    outs.push(env.regent(&["ls", "--json"]));
    outs.push(env.regent(&["status"]));
    outs.push(env.regent(&["status", "--json"]));
    for i in 0..secrets.len() {
        let out = env.helper(&["erase"], format!("{tag}{i}.example"));
        outs.push(out);
    }
    outs
}

fn assert_no_secret_anywhere(env: &TestEnv, secrets: &[String], outs: &[regent_tests::Outcome]) {
    for out in outs {
        for s in secrets {
            assert!(
                !out.stderr().contains(s.as_str()),
                "a secret appeared on stderr\n{out}"
            );
        }
    }
    let log = env.log_contents();
    for (i, s) in secrets.iter().enumerate() {
        // The whole secret, and any 16-byte piece of it.
        for piece in s.as_bytes().chunks(16).filter(|c| c.len() == 16) {
            assert!(
                !contains(log.as_bytes(), piece),
                "secret #{i} (or a piece of it) is in the agent log at REGENT_LOG=trace:\n{}",
                env.diagnostics()
            );
        }
    }
}

fn distinct_secrets() -> Vec<String> {
    vec![
        random_secret(64),
        random_secret(200),
        random_secret(3000),
        format!("{}\"quoted\\{}", random_secret(24), random_secret(24)),
        format!("ü{}€", random_secret(40)),
    ]
}

#[test]
fn no_secret_in_the_background_agent_log() {
    let env = TestEnv::new();
    let secrets = distinct_secrets();
    let outs = exercise(&env, "bg", &secrets);
    env.stop_agent();
    let log = env.log_contents();
    assert!(
        log.len() > 100,
        "the background agent wrote (almost) nothing to {} at REGENT_LOG=trace; \
         the test would prove nothing\n{}",
        env.log_path().display(),
        env.diagnostics()
    );
    assert_no_secret_anywhere(&env, &secrets, &outs);
}

#[test]
fn no_secret_on_the_foreground_agent_stderr() {
    let env = TestEnv::new();
    env.start_foreground_agent();
    let secrets = distinct_secrets();
    let outs = exercise(&env, "fg", &secrets);
    env.stop_agent();
    let log = env.log_contents();
    assert!(
        log.len() > 100,
        "the foreground agent wrote (almost) nothing to stderr at REGENT_LOG=trace\n{}",
        env.diagnostics()
    );
    assert_no_secret_anywhere(&env, &secrets, &outs);
}

#[test]
fn no_plaintext_secret_on_disk() {
    let env = TestEnv::new();
    let secrets = distinct_secrets();
    for (i, s) in secrets.iter().enumerate() {
        env.store_ok(&format!("disk{i}.example"), "u", s);
    }
    // Make sure everything was written out.
    env.stop_agent();
    if env.store.is_persistent() {
        assert_eq!(env.get_ok("disk0.example").secret, secrets[0]);
    }
    for (path, bytes) in env.all_files() {
        for (i, s) in secrets.iter().enumerate() {
            assert!(
                !contains(&bytes, s.as_bytes()),
                "secret #{i} is in plain text in {}",
                path.display()
            );
        }
    }
}

#[test]
fn the_agent_disables_core_dumps_and_locks_its_memory() {
    let env = TestEnv::new();
    env.store_ok("locked.example", "u", "locked-secret");
    let pid = env.wait_agent_pid(Duration::from_secs(10)).expect("agent");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        &fields[4..6],
        &["0", "0"],
        "core dumps are not disabled: {core}"
    );
    let log = env.log_contents();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck in /proc/<pid>/status");
    if is_root() {
        assert!(
            locked_kb > 0,
            "running as root, the agent should have locked its pages\n{status}\n{log}"
        );
        assert!(log.contains("locked in RAM"), "{log}");
    } else if locked_kb == 0 {
        // The limit was too small: the log must say so and how to raise it.
        assert!(log.contains("not locked: RLIMIT_MEMLOCK"), "{log}");
    }
}

/// Logs the argv and environment a process started with (the raw
/// `/proc/$$/cmdline` and `/proc/$$/environ` of the shell, which are what
/// its parent passed to execve) to `LOG`, between a `==> WHAT` line and an
/// `<== end` line.
fn spawn_logger(what: &str, log: &Path) -> String {
    format!(
        "{{ printf '==> {what}\\n'; cat /proc/$$/cmdline; printf '\\n--env--\\n'; \
         cat /proc/$$/environ; printf '\\n<== end\\n'; }} >>'{}'\n",
        log.display()
    )
}

/// Secrets never reach the argv or the environment of any process regent
/// starts: every `regent agent` the helper starts goes through a wrapper
/// named `regent` next to a copy of the helper (the helper runs the `regent`
/// beside its own executable), and every `exec` source command is a script;
/// both log their argv and environment at their start, before anything else
/// runs. Polling /proc instead could miss a process that lives a few ms.
#[test]
fn secrets_never_reach_argv_or_the_environment_of_any_process() {
    let env = TestEnv::new();
    let bin = env.root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let spawned = env.root.join("spawned.log");
    let helper = bin.join(regent_tests::HELPER);
    fs::copy(&env.bins.helper, &helper).unwrap();
    let wrapper = bin.join(regent_tests::REGENT);
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{}exec '{}' \"$@\"\n",
            spawn_logger("regent", &spawned),
            env.bins.regent.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();

    // An exec source whose token is a secret too (read from a file, so it
    // is in no argv either).
    let token = random_secret(48);
    let token_file = env.root.join("token");
    fs::write(&token_file, &token).unwrap();
    let script = env.root.join("token.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n{}cat >/dev/null\nexp=$(( $(date +%s) + 3600 ))\n\
             printf '{{\"Version\":1,\"Username\":\"tok-user\",\"Secret\":\"%s\",\"ExpiresAt\":%s}}\\n' \
             \"$(cat '{}')\" \"$exp\"\n",
            spawn_logger("exec", &spawned),
            token_file.display()
        ),
    )
    .unwrap();
    let config = env.config_home.join("regent").join("config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(
        &config,
        format!(
            "[[registry]]\nmatch = \"*.exec.example\"\nsource = \"exec\"\ncommand = [\"/bin/sh\", {:?}]\n",
            script.display().to_string()
        ),
    )
    .unwrap();

    let run = |verb: &str, stdin: Vec<u8>| {
        env.run(
            env.command(&helper).arg(verb),
            Input::Bytes(&stdin),
            regent_tests::DEFAULT_TIMEOUT,
        )
    };
    let secrets = distinct_secrets();
    let rounds = 3;
    for round in 0..rounds {
        // No agent runs: the first store starts one, with its secret in hand.
        for (i, s) in secrets.iter().enumerate() {
            let host = format!("argv{round}-{i}.example");
            let out = run("store", TestEnv::store_json(&host, "u", s));
            env.assert_store_ok(&out, s);
            let out = run("get", host.into_bytes());
            assert_eq!(&env.parse_get(&out).secret, s);
        }
        let out = run("get", format!("r{round}.exec.example").into_bytes());
        assert_eq!(env.parse_get(&out).secret, token, "the exec source's token");
        env.stop_agent();
    }

    let log = fs::read(&spawned).unwrap_or_default();
    let starts = |what: &str| {
        String::from_utf8_lossy(&log)
            .matches(&format!("==> {what}\n"))
            .count()
    };
    // Something was checked: an agent per round, an exec run per round.
    assert!(
        starts("regent") >= rounds && starts("exec") >= rounds,
        "expected at least {rounds} agent starts through the wrapper and {rounds} exec runs, \
         logged {} and {}\n{}",
        starts("regent"),
        starts("exec"),
        String::from_utf8_lossy(&log)
    );
    assert!(
        contains(&log, b"\0agent\0") && contains(&log, b"\0HOME="),
        "the spawn log holds no argv or environment: {}",
        String::from_utf8_lossy(&log)
    );
    for (i, s) in secrets.iter().chain([&token]).enumerate() {
        for piece in s.as_bytes().chunks(16).filter(|c| c.len() == 16) {
            assert!(
                !contains(&log, piece),
                "secret #{i} (or a piece of it) is in the argv or environment of a process regent \
                 started:\n{}",
                String::from_utf8_lossy(&log)
            );
        }
    }
}
