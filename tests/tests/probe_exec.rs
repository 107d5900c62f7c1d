//! `exec` sources under commands that misbehave, through the real binaries:
//! a command that echoes the named secret it was handed on stderr, and
//! commands that leave processes behind (a background job holding stdout, a
//! `setsid` child, a double-forked daemon) or hang past their timeout.
//!
//! Processes are identified by the pids the commands write into files; a
//! guard SIGKILLs whatever is left when a test fails, so a failing run leaves
//! no `sleep 100` behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use regent_tests::{Input, TestEnv, contains, is_alive, random_secret, unique_host, wait_until};

const SH: &str = "/bin/sh";
const PYTHON: &str = "/usr/bin/python3";

struct Fixture {
    env: TestEnv,
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        for tool in [SH, PYTHON, "/usr/bin/setsid"] {
            assert!(Path::new(tool).is_file(), "{tool} is needed by these tests");
        }
        let env = TestEnv::new();
        let dir = env.root.join("cmd");
        fs::create_dir_all(&dir).unwrap();
        Fixture { env, dir }
    }

    fn write_config(&self, text: &str) {
        let path = self.env.config_home.join("regent").join("config.toml");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
    }

    /// One `[[registry]]` entry for `host` running `argv`.
    fn entry(&self, host: &str, argv: &[&str], extra: &str) -> String {
        let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "[[registry]]\nmatch = {host:?}\nsource = \"exec\"\ncommand = [{}]\n{extra}\n",
            argv.join(", ")
        )
    }

    /// An entry running the shell `script` in the fixture's directory.
    fn sh_entry(&self, host: &str, script: &str, extra: &str) -> String {
        let dir = self.dir.display().to_string();
        self.entry(
            host,
            &[
                SH,
                "-c",
                &format!("cd \"$1\" || exit 9\n{script}"),
                "sh",
                &dir,
            ],
            extra,
        )
    }

    fn set_secret(&self, name: &str, value: &str) {
        let set = self.env.run(
            self.env
                .command(&self.env.bins.regent)
                .args(["secret", "set", name]),
            Input::Bytes(format!("{value}\n").as_bytes()),
            regent_tests::DEFAULT_TIMEOUT,
        );
        assert!(set.success() && set.stdout.is_empty(), "{set}");
    }

    /// The pid a command wrote into `name`, once the file is complete.
    fn pid(&self, name: &str) -> Option<u32> {
        fs::read_to_string(self.dir.join(name))
            .ok()
            .filter(|s| s.ends_with('\n'))
            .and_then(|s| s.trim().parse().ok())
    }

    fn pids(&self, names: &[&str]) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        assert!(
            wait_until(Duration::from_secs(20), || {
                out = names
                    .iter()
                    .filter_map(|n| self.pid(n).map(|p| (n.to_string(), p)))
                    .collect();
                out.len() == names.len()
            }),
            "the command did not write all of {names:?} (got {out:?})\n{}",
            self.env.diagnostics()
        );
        out
    }

    /// The one `regent ls --json` row of `host`.
    fn row(&self, host: &str) -> regent_shared::protocol::EntryInfo {
        self.env
            .ls_json()
            .into_iter()
            .find(|r| r.key == host)
            .unwrap_or_else(|| panic!("no ls row for {host}\n{}", self.env.diagnostics()))
    }
}

/// SIGKILLs, on drop, the listed processes that still run `sleep` or `sh`:
/// a failing test must not leave its children behind.
struct Leftovers(Vec<u32>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            if is_alive(pid) && (argv0.ends_with(b"sleep") || argv0.ends_with(b"sh")) {
                regent_tests::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Waits until none of `pids` runs; the names of those that still do.
fn survivors(pids: &[(String, u32)], within: Duration) -> Vec<String> {
    wait_until(within, || pids.iter().all(|(_, p)| !is_alive(*p)));
    pids.iter()
        .filter(|(_, p)| is_alive(*p))
        .map(|(n, p)| format!("{n} (pid {p})"))
        .collect()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Prints the named secret verbatim, inside a line, JSON-escaped, and the
/// token it printed on stdout, all on stderr, then fails.
const LEAK: &str = r#"
import json, os, sys
tok = os.environ["TOKEN"]
out = os.environ["STDOUT_TOKEN"]
print(json.dumps({"Version": 1, "Username": "u", "Secret": out}))
sys.stderr.write("warming up\n")
sys.stderr.write("token %s was rejected by corp-sso\n" % tok)
sys.stderr.write("request body: %s\n" % json.dumps({"token": tok}))
sys.stderr.write("retry with %s later\n" % out)
sys.exit(1)
"#;

#[test]
fn a_named_secret_echoed_on_stderr_is_redacted_everywhere() {
    let fx = Fixture::new();
    let host = unique_host("leak");
    let script = fx.dir.join("leak.py");
    fs::write(&script, LEAK).unwrap();
    // A quote and a backslash: the JSON-escaped form differs from the value.
    let parts = [random_secret(16), random_secret(16), random_secret(16)];
    let value = format!("{}\"{}\\{}", parts[0], parts[1], parts[2]);
    let escaped = format!("{}\\\"{}\\\\{}", parts[0], parts[1], parts[2]);
    let stdout_token = random_secret(24);
    fx.write_config(&fx.entry(
        &host,
        &[PYTHON, &script.display().to_string()],
        &format!(
            "env = {{ TOKEN = {{ secret = \"corp-token\" }}, STDOUT_TOKEN = {stdout_token:?} }}"
        ),
    ));
    fx.set_secret("corp-token", &value);

    let out = fx.env.helper(&["get"], &host);
    assert_eq!(out.code(), Some(1), "{out}");
    let ls = fx.env.regent(&["ls"]);
    assert!(ls.success(), "{ls}");
    let ls_json = fx.env.regent(&["ls", "--json"]);
    assert!(ls_json.success(), "{ls_json}");
    let row_error = fx.row(&host).last_error.expect("a last error in ls");
    let log = fx.env.log_contents();

    let forbidden = [
        value.as_str(),
        escaped.as_str(),
        &parts[0],
        &parts[1],
        &parts[2],
        &stdout_token,
    ];
    let places: [(&str, &[u8]); 6] = [
        ("helper stdout", &out.stdout),
        ("helper stderr", &out.stderr),
        ("regent ls", &ls.stdout),
        ("regent ls --json", &ls_json.stdout),
        ("ls last_error", row_error.as_bytes()),
        ("agent log", log.as_bytes()),
    ];
    for (place, text) in places {
        for needle in forbidden {
            assert!(
                !contains(text, needle.as_bytes()),
                "{needle:?} appeared in {place}:\n{}",
                String::from_utf8_lossy(text)
            );
        }
    }
    // The rest of each line is still there, for the user to act on.
    let msg = out.out_trim();
    for line in [
        "token [redacted] was rejected by corp-sso",
        "request body: {\"token\": \"[redacted]\"}",
        "retry with [redacted] later",
    ] {
        assert!(msg.contains(line), "{line:?} missing from the error\n{out}");
        assert!(
            row_error.contains(line),
            "{line:?} missing from ls: {row_error}"
        );
        assert!(ls.stdout().contains(line), "{line:?} missing from ls\n{ls}");
    }
    assert!(msg.contains("exited with status 1"), "{out}");
    assert!(
        log.contains("token [redacted] was rejected by corp-sso"),
        "the log does not quote the redacted line\n{log}"
    );
}

#[test]
fn a_secret_too_short_to_redact_withholds_stderr() {
    let fx = Fixture::new();
    let host = unique_host("short");
    fx.write_config(&fx.sh_entry(
        &host,
        "echo \"the pin $PIN is wrong\" >&2\nexit 1",
        "env = { PIN = { secret = \"pin\" } }",
    ));
    fx.set_secret("pin", "q7#");
    let out = fx.env.helper(&["get"], &host);
    assert_eq!(out.code(), Some(1), "{out}");
    let msg = out.out_trim();
    assert!(
        msg.contains("exited with status 1")
            && msg.contains("stderr is not shown")
            && msg.contains("\"pin\""),
        "{out}"
    );
    for text in [msg.as_str(), &out.stderr(), &fx.env.log_contents()] {
        assert!(
            !text.contains("q7#") && !text.contains("is wrong"),
            "{text}"
        );
    }
    let row_error = fx.row(&host).last_error.expect("a last error in ls");
    assert!(!row_error.contains("q7#"), "{row_error}");
}

#[test]
fn a_command_that_exits_is_done_even_if_its_children_hold_stdout() {
    let fx = Fixture::new();
    let host = unique_host("linger");
    // Each background child inherits stdout and stderr: the pipes stay open
    // after the shell exits.
    fx.write_config(&fx.sh_entry(
        &host,
        "sleep 100 & echo $! > bg\n\
         (sleep 100 & echo $! > sub)\n\
         setsid sleep 100 & echo $! > ss\n\
         echo '{\"Version\":1,\"Username\":\"u\",\"Secret\":\"lingering-ok\"}'",
        "timeout_secs = 10",
    ));
    let got = fx.env.helper(&["get"], &host);
    let pids = fx.pids(&["bg", "sub", "ss"]);
    let _guard = Leftovers(pids.iter().map(|(_, p)| *p).collect());
    assert!(got.success(), "{got}\n{}", fx.env.diagnostics());
    assert_eq!(fx.env.parse_get(&got).secret, "lingering-ok");
    let left = survivors(&pids, Duration::from_secs(10));
    assert!(
        left.is_empty(),
        "still running 10 s after the command exited: {left:?}"
    );
    assert!(fx.row(&host).last_error.is_none());
}

/// Starts a background job, a `setsid` child holding the pipes, and a
/// double-forked daemon in a session of its own that holds neither, then
/// hangs.
const HANG: &str = "echo $$ > main\n\
    sleep 100 & echo $! > bg\n\
    setsid sleep 100 & echo $! > ss\n\
    setsid sh -c 'sleep 100 </dev/null >/dev/null 2>&1 & echo $! > daemon' &\n\
    sleep 100";

#[test]
fn a_command_past_its_timeout_is_killed_with_everything_it_started() {
    let fx = Fixture::new();
    let host = unique_host("timeout");
    fx.write_config(&fx.sh_entry(&host, HANG, "timeout_secs = 2"));
    let out = fx.env.helper(&["get"], &host);
    let pids = fx.pids(&["main", "bg", "ss", "daemon"]);
    let _guard = Leftovers(pids.iter().map(|(_, p)| *p).collect());
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.out_trim()
            .contains("did not finish within 2s and was killed"),
        "{out}"
    );
    let left = survivors(&pids, Duration::from_secs(10));
    assert!(
        left.is_empty(),
        "still running 10 s after the timeout: {left:?}"
    );
}

#[test]
fn stopping_the_agent_kills_a_running_command_and_everything_it_started() {
    let fx = Fixture::new();
    let host = unique_host("stop");
    fx.write_config(&fx.sh_entry(&host, HANG, "timeout_secs = 20"));
    let mut get: Child = fx
        .env
        .command(&fx.env.bins.helper)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    get.stdin
        .take()
        .unwrap()
        .write_all(host.as_bytes())
        .unwrap();
    let mut pids = fx.pids(&["main", "bg", "ss", "daemon"]);
    let agent = fx.env.agent_pid().expect("an agent runs the command");
    // Whatever stands between the agent and the command goes too.
    if let Some(parent) = ppid(pids[0].1).filter(|p| *p != agent) {
        pids.push(("the command's parent".into(), parent));
    }
    let _guard = Leftovers(pids.iter().map(|(_, p)| *p).collect());
    fx.env.stop_agent();
    let left = survivors(&pids, Duration::from_secs(10));
    assert!(
        left.is_empty(),
        "still running 10 s after `regent stop`: {left:?}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || get
            .try_wait()
            .unwrap()
            .is_some()),
        "the get did not finish after the agent stopped"
    );
}

#[test]
fn errors_and_statuses_come_through_unchanged() {
    let fx = Fixture::new();
    let missing = unique_host("missing");
    let signal = unique_host("signal");
    let status = unique_host("status");
    let flood = unique_host("flood");
    fx.write_config(
        &[
            fx.entry(&missing, &["/nonexistent/corp-token"], ""),
            fx.sh_entry(&signal, "echo going >&2\nkill -TERM $$\nsleep 5", ""),
            fx.sh_entry(&status, "echo nope >&2\nexit 7", ""),
            // 2 MiB on stdout, then it would hang: the cap ends it.
            fx.sh_entry(
                &flood,
                "echo $$ > flood\nhead -c 2097152 /dev/zero\nsleep 100",
                "timeout_secs = 20",
            ),
        ]
        .concat(),
    );
    let cases = [
        (
            &missing,
            "cannot run `/nonexistent/corp-token`: No such file or directory",
        ),
        (
            &signal,
            "`/bin/sh` was killed by signal 15; its stderr ends with: going",
        ),
        (
            &status,
            "`/bin/sh` exited with status 7; its stderr ends with: nope",
        ),
        (
            &flood,
            "`/bin/sh` printed more than 1048576 bytes on stdout and was killed",
        ),
    ];
    for (host, message) in cases {
        let out = fx.env.helper(&["get"], host);
        assert_eq!(out.code(), Some(1), "{out}");
        assert!(out.out_trim().contains(message), "{message:?}\n{out}");
    }
    let pids = fx.pids(&["flood"]);
    let _guard = Leftovers(pids.iter().map(|(_, p)| *p).collect());
    let left = survivors(&pids, Duration::from_secs(10));
    assert!(left.is_empty(), "still running: {left:?}");
}
