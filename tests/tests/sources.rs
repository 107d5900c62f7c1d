//! Token sources through the real binaries: a config file whose `exec`
//! command is a small python script written into the test directory. The
//! script counts its invocations in a file, so the tests assert on counts and
//! order, never on how long something took.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regent_tests::{Input, TestEnv, contains, random_secret, skip, unique_host, wait_until};

const PYTHON: &str = "/usr/bin/python3";

/// A token script. Behaviour per invocation `n` (1-based) is chosen by the
/// `MODE` argument; every invocation appends a line to `count`.
const SCRIPT: &str = r#"
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
mode = sys.argv[1]
lifetime = int(sys.argv[2]) if len(sys.argv) > 2 else 30
req = json.load(sys.stdin)
with open(os.path.join(here, "count"), "a") as f:
    f.write(req["Registry"] + "\n")
with open(os.path.join(here, "count")) as f:
    n = len(f.read().splitlines())
with open(os.path.join(here, "last-request.json"), "w") as f:
    json.dump(req, f)
def token(expires):
    print(json.dumps({"Version": 1, "Username": "user-%d" % n,
                      "Secret": "tok-%d-%s" % (n, req["Registry"]), "ExpiresAt": expires}))
if mode == "ok":
    token(int(time.time()) + lifetime)
elif mode == "rfc3339":
    t = time.gmtime(time.time() + lifetime)
    token(time.strftime("%Y-%m-%dT%H:%M:%SZ", t))
elif mode == "first-ok":
    if n == 1:
        token(int(time.time()) + lifetime)
    else:
        sys.stderr.write("refresh #%d: upstream unreachable\n" % n)
        sys.exit(2)
elif mode == "second-waits":
    if n == 2:
        gate = os.path.join(here, "gate")
        deadline = time.time() + 60
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.05)
    token(int(time.time()) + lifetime)
elif mode == "sleep":
    with open(os.path.join(here, "pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
elif mode == "garbage":
    print("STDOUT-SECRET-garbage {not json")
elif mode == "fail":
    print("STDOUT-SECRET-on-failure")
    sys.stderr.write("first line\nsecond line\ncorp-token: access denied for %s\n" % req["Registry"])
    sys.exit(3)
elif mode == "env":
    print(json.dumps({"Version": 1, "Username": "env-user",
                      "Secret": os.environ.get("TOKEN", "") + "|" + os.environ.get("AWS_PROFILE", "")
                                + "|" + os.environ.get("REGENT_MASTER_KEY", "no-master-key")}))
"#;

struct Fixture {
    env: TestEnv,
    dir: PathBuf,
    script: PathBuf,
}

impl Fixture {
    /// None (and a skip note) when python3 is missing.
    fn new(test: &str) -> Option<Fixture> {
        if !Path::new(PYTHON).is_file() {
            skip(test, "/usr/bin/python3 is not installed");
            return None;
        }
        let env = TestEnv::new();
        let dir = env.root.join("script");
        fs::create_dir_all(&dir).unwrap();
        let script = dir.join("token.py");
        fs::write(&script, SCRIPT).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).unwrap();
        Some(Fixture { env, dir, script })
    }

    fn config_path(&self) -> PathBuf {
        self.env.config_home.join("regent").join("config.toml")
    }

    fn write_config(&self, text: &str) {
        let path = self.config_path();
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
    }

    /// One `[[registry]]` entry running the script with `args`.
    fn entry(&self, pattern: &str, args: &[&str], extra: &str) -> String {
        let mut argv = vec![
            format!("{PYTHON:?}"),
            format!("{:?}", self.script.display().to_string()),
        ];
        argv.extend(args.iter().map(|a| format!("{a:?}")));
        format!(
            "[[registry]]\nmatch = {pattern:?}\nsource = \"exec\"\ncommand = [{}]\n{extra}\n",
            argv.join(", ")
        )
    }

    fn calls(&self) -> usize {
        fs::read_to_string(self.dir.join("count"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn get(&self, host: &str) -> regent_tests::Outcome {
        self.env.helper(&["get"], host)
    }

    fn assert_clean_log(&self, needles: &[&str]) {
        let log = self.env.log_contents();
        for n in needles {
            assert!(!log.contains(n), "{n:?} appeared in the agent log");
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn exec_token_is_cached_then_refreshed_ahead_without_a_get() {
    let Some(fx) = Fixture::new("exec_token_is_cached_then_refreshed_ahead_without_a_get") else {
        return;
    };
    let host = unique_host("cached");
    fx.write_config(&fx.entry(&host, &["rfc3339", "4"], ""));
    let first = fx.env.get_ok(&format!("https://{host}/v2/"));
    assert_eq!(first.username, "user-1");
    assert_eq!(first.secret, format!("tok-1-{host}"));
    assert_eq!(first.server_url, format!("https://{host}/v2/"));
    // The command got the documented request.
    let req: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fx.dir.join("last-request.json")).unwrap())
            .unwrap();
    assert_eq!(
        req,
        serde_json::json!({"Version": 1, "ServerURL": format!("https://{host}/v2/"), "Registry": host})
    );
    // ls shows the source row.
    let rows = fx.env.ls_json();
    let row = rows.iter().find(|r| r.key == host).expect("an ls row");
    assert_eq!(row.source, "exec");
    assert!(row.expires.is_some() && row.last_refresh.is_some() && row.last_error.is_none());
    // Refresh ahead happens by itself: no get in between.
    assert!(
        wait_until(Duration::from_secs(30), || fx.calls() >= 2),
        "no refresh ahead within 30 s\n{}",
        fx.env.diagnostics()
    );
    let later = fx.env.get_ok(&host);
    assert!(later.secret != first.secret, "an old token after a refresh");
    fx.assert_clean_log(&[&first.secret, &later.secret]);
}

#[test]
fn a_get_during_a_refresh_is_served_from_the_cache() {
    let Some(fx) = Fixture::new("a_get_during_a_refresh_is_served_from_the_cache") else {
        return;
    };
    let host = unique_host("ahead");
    // 40 s lifetime: refresh at ~20 s, the first token usable until 36 s.
    fx.write_config(&fx.entry(&host, &["second-waits", "40"], ""));
    let first = fx.env.get_ok(&host);
    assert_eq!(first.secret, format!("tok-1-{host}"));
    assert!(
        wait_until(Duration::from_secs(40), || fx.calls() >= 2),
        "no refresh ahead\n{}",
        fx.env.diagnostics()
    );
    // The refresh is stuck at its gate; a get must not wait for it.
    let during = fx.env.get_ok(&host);
    assert_eq!(during.secret, first.secret);
    assert_eq!(fx.calls(), 2);
    fs::write(fx.dir.join("gate"), "").unwrap();
    assert!(wait_until(Duration::from_secs(30), || {
        fx.env.get_ok(&host).secret == format!("tok-2-{host}")
    }));
    assert_eq!(fx.calls(), 2);
}

#[test]
fn an_expired_token_is_never_served() {
    let Some(fx) = Fixture::new("an_expired_token_is_never_served") else {
        return;
    };
    let host = unique_host("expiry");
    fx.write_config(&fx.entry(&host, &["first-ok", "3"], ""));
    let first = fx.env.get_ok(&host);
    assert_eq!(first.secret, format!("tok-1-{host}"));
    let expires = fx
        .env
        .ls_json()
        .into_iter()
        .find(|r| r.key == host)
        .and_then(|r| r.expires)
        .expect("an expiry in ls");
    // Wait until the wall clock is past the expiry.
    assert!(wait_until(Duration::from_secs(30), || unix_now() > expires + 1));
    let out = fx.get(&host);
    assert_eq!(out.code(), Some(1), "{out}");
    let msg = out.out_trim();
    assert!(
        msg.contains(&format!("the token for {host} expired at"))
            && msg.contains("upstream unreachable"),
        "{out}"
    );
    assert!(!contains(&out.stdout, first.secret.as_bytes()), "{out}");
    let row = fx
        .env
        .ls_json()
        .into_iter()
        .find(|r| r.key == host)
        .unwrap();
    assert!(row.last_error.unwrap().contains("upstream unreachable"));
    fx.assert_clean_log(&[&first.secret]);
}

#[test]
fn a_command_that_hangs_is_killed_at_its_timeout() {
    let Some(fx) = Fixture::new("a_command_that_hangs_is_killed_at_its_timeout") else {
        return;
    };
    let host = unique_host("hang");
    fx.write_config(&fx.entry(&host, &["sleep"], "timeout_secs = 1"));
    let out = fx.get(&host);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.out_trim()
            .contains("did not finish within 1s and was killed"),
        "{out}"
    );
    let pid: i32 = fs::read_to_string(fx.dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !regent_tests::is_alive(
            pid as u32
        )),
        "the command (pid {pid}) still runs after its timeout"
    );
}

#[test]
fn garbage_output_is_an_error_that_does_not_quote_it() {
    let Some(fx) = Fixture::new("garbage_output_is_an_error_that_does_not_quote_it") else {
        return;
    };
    let host = unique_host("garbage");
    fx.write_config(&fx.entry(&host, &["garbage"], ""));
    let out = fx.get(&host);
    assert_eq!(out.code(), Some(1), "{out}");
    let msg = out.out_trim();
    assert!(msg.contains("something that is not JSON"), "{out}");
    assert!(!msg.contains("STDOUT-SECRET"), "{out}");
    assert!(!contains(&out.stderr, b"STDOUT-SECRET"), "{out}");
    fx.assert_clean_log(&["STDOUT-SECRET"]);
}

#[test]
fn a_failing_command_reports_its_stderr_not_its_stdout() {
    let Some(fx) = Fixture::new("a_failing_command_reports_its_stderr_not_its_stdout") else {
        return;
    };
    let host = unique_host("fail");
    fx.write_config(&fx.entry(&host, &["fail"], ""));
    let out = fx.get(&host);
    assert_eq!(out.code(), Some(1), "{out}");
    let msg = out.out_trim();
    assert!(msg.contains("exited with status 3"), "{out}");
    assert!(
        msg.contains(&format!("corp-token: access denied for {host}")),
        "{out}"
    );
    assert!(!msg.contains("STDOUT-SECRET"), "{out}");
    fx.assert_clean_log(&["STDOUT-SECRET"]);
    let row = fx
        .env
        .ls_json()
        .into_iter()
        .find(|r| r.key == host)
        .unwrap();
    assert!(row.last_error.unwrap().contains("access denied"));
}

#[test]
fn wildcards_match_subdomains_only() {
    let Some(fx) = Fixture::new("wildcards_match_subdomains_only") else {
        return;
    };
    fx.write_config(&fx.entry("*.corp.example", &["ok", "600"], ""));
    assert_eq!(
        fx.env.get_ok("a.corp.example").secret,
        "tok-1-a.corp.example"
    );
    assert_eq!(
        fx.env.get_ok("https://B.Corp.Example:5000/").secret,
        "tok-2-b.corp.example:5000"
    );
    for miss in [
        "corp.example",
        "corp.example.evil.org",
        "a.corp.example.evil.org",
        "evilcorp.example",
        "xcorp.example",
    ] {
        fx.env.get_missing(miss);
    }
    assert_eq!(fx.calls(), 2);
}

#[test]
fn a_configured_source_wins_over_a_stored_login() {
    let Some(fx) = Fixture::new("a_configured_source_wins_over_a_stored_login") else {
        return;
    };
    let host = unique_host("order");
    let other = unique_host("static");
    fx.write_config(&fx.entry(&host, &["ok", "600"], ""));
    fx.env.store_ok(&host, "stored", "stored-secret-1");
    fx.env.store_ok(&other, "stored", "stored-secret-2");
    assert_eq!(fx.env.get_ok(&host).secret, format!("tok-1-{host}"));
    assert_eq!(fx.env.get_ok(&other).secret, "stored-secret-2");
}

#[test]
fn reload_refuses_a_bad_config_and_keeps_the_old_one() {
    let Some(fx) = Fixture::new("reload_refuses_a_bad_config_and_keeps_the_old_one") else {
        return;
    };
    let host = unique_host("reload");
    let good = fx.entry(&host, &["ok", "600"], "");
    fx.write_config(&good);
    assert_eq!(fx.env.get_ok(&host).secret, format!("tok-1-{host}"));

    // A syntax error on line 3 (the entry's `source` line is broken).
    let broken = good.replacen("source = \"exec\"", "source = \"exec", 1);
    fx.write_config(&broken);
    let out = fx.env.regent(&["reload"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr().contains("line 3, column"), "{out}");
    assert!(
        out.stderr().contains("the config in force is unchanged"),
        "{out}"
    );
    assert_eq!(fx.env.get_ok(&host).secret, format!("tok-1-{host}"));

    // An unknown key in an entry: the entry's position and the key's name.
    fx.write_config(&format!(
        "log = \"trace\"\n{}",
        good.replace("source =", "timeout = 3\nsource =")
    ));
    let out = fx.env.regent(&["reload"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr().contains("line 2, column 1") && out.stderr().contains("timeout"),
        "{out}"
    );
    assert_eq!(fx.env.get_ok(&host).secret, format!("tok-1-{host}"));
    assert_eq!(fx.calls(), 1);

    // A good change takes effect: the cached token of the old entry goes.
    fx.write_config(&fx.entry(&host, &["ok", "601"], ""));
    let out = fx.env.regent(&["reload"]);
    assert!(
        out.success() && out.stdout().contains("1 registry entries"),
        "{out}"
    );
    assert_eq!(fx.env.get_ok(&host).secret, format!("tok-2-{host}"));

    // SIGHUP does the same as `regent reload`.
    fx.write_config("");
    let pid = fx.env.agent_pid().expect("agent running");
    regent_tests::kill(pid, libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(20), || {
            fx.env.helper(&["get"], &host).out_trim() == regent_tests::NOT_FOUND
        }),
        "SIGHUP did not reload\n{}",
        fx.env.diagnostics()
    );
    assert_eq!(fx.env.agent_pid(), Some(pid));
}

#[test]
fn the_agent_refuses_to_start_with_a_bad_config() {
    let Some(fx) = Fixture::new("the_agent_refuses_to_start_with_a_bad_config") else {
        return;
    };
    fx.write_config("[[registry]]\nmatch = \"*.x.example\"\nsource = \"nope\"\n");
    let out = fx.env.regent(&["start"]);
    assert!(!out.success(), "{out}");
    let text = format!("{}{}", out.stdout(), out.stderr());
    assert!(
        text.contains("line 1, column 1") && text.contains("unknown source"),
        "{out}"
    );
    assert!(fx.env.agent_pid().is_none());
    // `regent reload` without an agent checks the file the same way.
    let out = fx.env.regent(&["reload"]);
    assert!(
        !out.success() && out.stderr().contains("line 1, column 1"),
        "{out}"
    );
}

#[test]
fn named_secrets_reach_the_command_and_nothing_else() {
    let Some(fx) = Fixture::new("named_secrets_reach_the_command_and_nothing_else") else {
        return;
    };
    let mut fx = fx;
    // A real key (the file store uses it), made now, that the command must
    // never see.
    let mut key = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut key).unwrap();
    let master_key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
    fx.env
        .set_env("REGENT_MASTER_KEY", Some(master_key.as_str()));
    let host = unique_host("named");
    let value = random_secret(40);
    fx.write_config(&fx.entry(
        &host,
        &["env"],
        "env = { TOKEN = { secret = \"corp-token\" } }",
    ));
    // Missing secret: a clear error naming the command to run.
    let out = fx.get(&host);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.out_trim().contains("regent secret set corp-token"),
        "{out}"
    );

    let set = fx.env.run(
        fx.env
            .command(&fx.env.bins.regent)
            .args(["secret", "set", "corp-token"]),
        Input::Bytes(format!("{value}\n").as_bytes()),
        regent_tests::DEFAULT_TIMEOUT,
    );
    assert!(set.success() && set.stdout.is_empty(), "{set}");
    let ls = fx.env.regent(&["secret", "ls"]);
    assert_eq!(ls.out_lines(), ["corp-token"], "{ls}");
    // Not a registry: not in list, ls, get or erase.
    assert!(fx.env.list_ok().is_empty());
    assert!(
        fx.env
            .ls_json()
            .iter()
            .all(|r| !r.key.starts_with("secret"))
    );
    fx.env.get_missing("secret:corp-token");
    fx.env.erase_ok("secret:corp-token");

    // After the error's backoff, a get runs the command with the secret.
    let mut got = None;
    assert!(wait_until(Duration::from_secs(30), || {
        let out = fx.get(&host);
        if out.success() {
            got = Some(fx.env.parse_get(&out));
        }
        out.success()
    }));
    let got = got.unwrap();
    assert_eq!(got.secret, format!("{value}||no-master-key"));

    let out = fx.env.regent(&["secret", "rm", "corp-token"]);
    assert!(out.success(), "{out}");
    assert!(fx.env.regent(&["secret", "ls"]).out_trim().is_empty());
    let bad = fx.env.regent(&["secret", "set", "8080"]);
    assert!(
        !bad.success() && bad.stderr().contains("not a valid secret name"),
        "{bad}"
    );
    fx.assert_clean_log(&[&value, &master_key]);
}

#[test]
fn forwarded_aws_profile_reaches_the_command() {
    let Some(fx) = Fixture::new("forwarded_aws_profile_reaches_the_command") else {
        return;
    };
    let host = unique_host("fwd");
    fx.write_config(&fx.entry(&host, &["env"], ""));
    let out = fx.env.run(
        fx.env
            .command(&fx.env.bins.helper)
            .arg("get")
            .env("AWS_PROFILE", "team-a"),
        Input::Bytes(host.as_bytes()),
        regent_tests::DEFAULT_TIMEOUT,
    );
    let creds = fx.env.parse_get(&out);
    assert_eq!(creds.secret, "|team-a|no-master-key");
}
