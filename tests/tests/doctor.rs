//! `regent doctor` through the real binaries: a healthy set-up checks out
//! (every line `ok`, exit 0), and with each part broken in turn the line of
//! that part fails and names the fix.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use std::time::{SystemTime, UNIX_EPOCH};

use regent_tests::fakes::github::http_date;
use regent_tests::fakes::http::{HttpFake, Response};
use regent_tests::{DEFAULT_TIMEOUT, Input, Outcome, TestEnv};
use serde_json::Value;

/// `regent doctor --json` with the helper's directory first on PATH (or
/// not), and `extra` variables.
fn doctor(env: &TestEnv, helper_on_path: bool, extra: &[(&str, &str)]) -> (Outcome, Value) {
    let mut cmd = env.command(&env.bins.regent);
    cmd.args(["doctor", "--json"]);
    let system = "/usr/sbin:/usr/bin:/sbin:/bin";
    let path = if helper_on_path {
        format!("{}:{system}", env.bins.helper.parent().unwrap().display())
    } else {
        system.to_owned()
    };
    cmd.env("PATH", path);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = env.run(&mut cmd, Input::Null, DEFAULT_TIMEOUT);
    let value: Value = serde_json::from_str(&out.stdout())
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e})\n{out}"));
    (out, value)
}

/// The check called `name`: (status, detail, fix).
fn line(v: &Value, name: &str) -> (String, String, String) {
    let row = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {v:#}"));
    let s = |k: &str| row[k].as_str().unwrap_or_default().to_owned();
    (s("status"), s("detail"), s("fix"))
}

/// A world where docker and podman are set up for regent.
fn set_up() -> TestEnv {
    let env = TestEnv::new();
    let out = env.regent(&["setup", "docker", "podman"]);
    assert!(out.success(), "{out}");
    env
}

fn write_config(env: &TestEnv, text: &str) {
    let path = env.config_home.join("regent").join("config.toml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn a_healthy_set_up_is_all_ok() {
    let env = set_up();
    let (out, v) = doctor(&env, true, &[]);
    assert!(out.success(), "{out}");
    assert_eq!(v["ok"], true, "{v:#}");
    for check in v["checks"].as_array().unwrap() {
        assert_eq!(check["status"], "ok", "{check:#}");
    }
    for name in [
        "helper", "docker", "podman", "socket", "agent", "store", "config", "clock", "service",
    ] {
        line(&v, name);
    }
    // The human form says the same, one line per check.
    let human = env.run(
        env.command(&env.bins.regent).arg("doctor").env(
            "PATH",
            format!(
                "{}:/usr/bin:/bin",
                env.bins.helper.parent().unwrap().display()
            ),
        ),
        Input::Null,
        DEFAULT_TIMEOUT,
    );
    assert!(human.success(), "{human}");
    assert!(
        human.stdout().contains("everything checked is in order"),
        "{human}"
    );
    assert!(
        human.stderr().contains("regent doctor: "),
        "no progress on stderr: {human}"
    );
}

#[test]
fn each_broken_part_fails_its_own_line_with_the_fix() {
    // No helper on PATH.
    let env = set_up();
    let (out, v) = doctor(&env, false, &[]);
    assert_eq!(out.code(), Some(1), "{out}");
    let (status, detail, fix) = line(&v, "helper");
    assert_eq!(status, "failed", "{detail}");
    assert!(fix.contains("PATH"), "{fix}");
    assert_eq!(line(&v, "agent").0, "ok");

    // Plaintext logins left in docker's config.json.
    let env = set_up();
    let config = env.home.join(".docker").join("config.json");
    let mut json: Value = serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    json["auths"] = serde_json::json!({"registry.example": {"auth": "dXNlcjpzZWNyZXQ="}});
    fs::write(&config, json.to_string()).unwrap();
    let (out, v) = doctor(&env, true, &[]);
    assert_eq!(out.code(), Some(1), "{out}");
    let (status, detail, fix) = line(&v, "docker");
    assert_eq!(status, "failed", "{detail}");
    assert!(
        detail.contains("plaintext") && fix.contains("regent import"),
        "{detail} / {fix}"
    );
    assert!(!out.stdout().contains("dXNlcjpzZWNyZXQ="));

    // The socket's directory open to others.
    let env = set_up();
    let dir = env.socket.parent().unwrap().to_path_buf();
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let (out, v) = doctor(&env, true, &[]);
    assert_eq!(out.code(), Some(1), "{out}");
    let (status, detail, fix) = line(&v, "socket");
    assert_eq!(status, "failed", "{detail}");
    assert!(fix.contains("chmod 700"), "{fix}");

    // A config file that does not parse: the config line names the place,
    // and the agent cannot start.
    let env = set_up();
    write_config(
        &env,
        "[[registry]]\nmatch = \"a.example\"\nsource = \"nope\"\n",
    );
    let (out, v) = doctor(&env, true, &[]);
    assert_eq!(out.code(), Some(1), "{out}");
    let (status, detail, fix) = line(&v, "config");
    assert_eq!(status, "failed", "{detail}");
    assert!(
        detail.contains("line") && detail.contains("unknown source"),
        "{detail}"
    );
    assert!(fix.contains("regent reload"), "{fix}");
    assert_eq!(line(&v, "agent").0, "failed");

    // A source that cannot produce a token.
    let env = set_up();
    write_config(
        &env,
        "[[registry]]\nmatch = \"broken.example\"\nsource = \"exec\"\ncommand = [\"/bin/false\"]\n",
    );
    let (out, v) = doctor(&env, true, &[]);
    assert_eq!(out.code(), Some(1), "{out}");
    let (status, detail, fix) = line(&v, "source");
    assert_eq!(status, "failed", "{detail}");
    assert!(
        detail.contains("broken.example") && detail.contains("exited with status 1"),
        "{detail}"
    );
    assert!(fix.contains("regent ls"), "{fix}");

    // A store that cannot open: the agent does not start, and says why.
    let env = set_up();
    let (out, v) = doctor(
        &env,
        true,
        &[
            ("REGENT_STORE", "keyring"),
            (
                "DBUS_SESSION_BUS_ADDRESS",
                "unix:path=/nonexistent/regent-test-bus",
            ),
        ],
    );
    assert_eq!(out.code(), Some(1), "{out}");
    let (status, detail, _) = line(&v, "agent");
    assert_eq!(status, "failed", "{detail}");
    assert_eq!(line(&v, "store").0, "failed");

    // A clock ten minutes behind a registry's (its `Date`), found through a
    // stored login for it.
    let ahead = HttpFake::start(|_| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        Some(
            Response::new(401, "application/json", "{}")
                .with_header("Date", &http_date(now + 600))
                .with_header("WWW-Authenticate", "Basic realm=\"x\""),
        )
    });
    let env = set_up();
    let host = ahead.addr.to_string();
    let out = env.helper(&["store"], TestEnv::store_json(&host, "u", "p4ssw0rd-x"));
    assert!(out.success(), "{out}");
    let (out, v) = doctor(&env, true, &[]);
    assert_eq!(out.code(), Some(1), "{out}");
    let (status, detail, fix) = line(&v, "clock");
    assert_eq!(status, "failed", "{detail}");
    assert!(detail.contains(&host) && detail.contains("+6"), "{detail}");
    assert!(fix.contains("clock"), "{fix}");
}

#[test]
fn a_source_in_use_that_last_failed_is_a_warning() {
    // A wildcard entry is not fetched by doctor, but its last failure shows.
    let env = set_up();
    write_config(
        &env,
        "[[registry]]\nmatch = \"*.corp.example\"\nsource = \"exec\"\ncommand = [\"/bin/false\"]\n",
    );
    let out = env.helper(&["get"], "a.corp.example");
    assert!(!out.success(), "{out}");
    let (out, v) = doctor(&env, true, &[]);
    assert!(out.success(), "a warning is no failure: {out}");
    let (status, detail, fix) = line(&v, "source");
    assert_eq!(status, "warning", "{detail}");
    assert!(
        detail.contains("a.corp.example (exec): the last fetch failed"),
        "{detail}"
    );
    assert!(fix.contains("regent verify a.corp.example"), "{fix}");
}
