//! `exec` sources under commands that misbehave, through the real binaries:
//! a command that echoes the named secret it was handed on stderr.

use std::fs;
use std::path::{Path, PathBuf};

use regent_tests::{Input, TestEnv, contains, random_secret, unique_host};

const SH: &str = "/bin/sh";
const PYTHON: &str = "/usr/bin/python3";

struct Fixture {
    env: TestEnv,
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        for tool in [SH, PYTHON] {
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

    /// The one `regent ls --json` row of `host`.
    fn row(&self, host: &str) -> regent_shared::protocol::EntryInfo {
        self.env
            .ls_json()
            .into_iter()
            .find(|r| r.key == host)
            .unwrap_or_else(|| panic!("no ls row for {host}\n{}", self.env.diagnostics()))
    }
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
