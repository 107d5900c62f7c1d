//! The `env` source through the real binaries: a `[[registry]]` entry whose
//! username and password are read, at each `get`, from the environment of
//! the process that ran the helper. The values must reach that one answer
//! and nothing else: not another caller, not the store, not the log.

use std::fs;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use regent_shared::protocol::{read_frame, write_frame};
use regent_tests::{DEFAULT_TIMEOUT, Input, Outcome, TestEnv, random_secret};

const HOST: &str = "registry.ci.example";

const ENTRY: &str = r#"
[[registry]]
match = "registry.ci.example"
source = "env"
username = { env = "CI_REGISTRY_USER" }
password = { env = "CI_REGISTRY_PASSWORD" }
"#;

fn with_config(text: &str) -> TestEnv {
    let env = TestEnv::new();
    let path = env.config_home.join("regent").join("config.toml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, text).unwrap();
    env
}

/// `get HOST` with the caller's variables `vars`.
fn get_with(env: &TestEnv, vars: &[(&str, &str)]) -> Outcome {
    let mut cmd = env.command(&env.bins.helper);
    cmd.arg("get");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    env.run(&mut cmd, Input::Bytes(HOST.as_bytes()), DEFAULT_TIMEOUT)
}

#[test]
fn each_caller_gets_the_login_of_its_own_environment() {
    let env = with_config(ENTRY);
    let (one, two) = (random_secret(24), random_secret(24));
    for (user, token) in [("job-one", &one), ("job-two", &two), ("job-one", &one)] {
        let out = get_with(
            &env,
            &[("CI_REGISTRY_USER", user), ("CI_REGISTRY_PASSWORD", token)],
        );
        let creds = env.parse_get(&out);
        assert_eq!(creds.username, user);
        assert_eq!(&creds.secret, token);
    }
    // Never kept: not in any file of the installation (store, index, log).
    for (path, bytes) in env.all_files() {
        let text = String::from_utf8_lossy(&bytes);
        for token in [&one, &two] {
            assert!(
                !text.contains(token.as_str()),
                "a caller's token ended up in {}",
                path.display()
            );
        }
    }
    // `regent ls` has a row for it, with the username and no secret.
    let rows = env.ls_json();
    let row = rows
        .iter()
        .find(|r| r.key == HOST && r.source == "env")
        .expect("an env row");
    assert_eq!(row.username, "job-one");
    assert!(row.last_error.is_none(), "{row:?}");
    let ls = env.regent(&["ls", "--json"]);
    assert!(!ls.stdout().contains(one.as_str()) && !ls.stdout().contains(two.as_str()));
}

#[test]
fn an_unset_variable_passes_the_entry_over_and_ls_says_which() {
    let env = with_config(ENTRY);
    // Without a stored login, nothing applies: not found.
    let out = get_with(&env, &[("CI_REGISTRY_USER", "job")]);
    env.assert_not_found(&out);
    let rows = env.ls_json();
    let row = rows
        .iter()
        .find(|r| r.key == HOST && r.source == "env")
        .expect("an env row");
    let why = row.last_error.as_deref().unwrap_or_default();
    assert!(why.contains("CI_REGISTRY_PASSWORD is not set"), "{why}");

    // With a stored login, that is the next step; an empty value counts as
    // unset.
    let stored = random_secret(20);
    env.store_ok(HOST, "stored-user", &stored);
    let creds = env.parse_get(&get_with(
        &env,
        &[("CI_REGISTRY_USER", "job"), ("CI_REGISTRY_PASSWORD", "")],
    ));
    assert_eq!(creds.username, "stored-user");
    assert_eq!(creds.secret, stored);

    // Once the job sets it, the entry applies again and wins.
    let token = random_secret(20);
    let creds = env.parse_get(&get_with(
        &env,
        &[
            ("CI_REGISTRY_USER", "job"),
            ("CI_REGISTRY_PASSWORD", &token),
        ],
    ));
    assert_eq!((creds.username.as_str(), creds.secret), ("job", token));
}

#[test]
fn a_literal_username_needs_no_variable() {
    let env = with_config(
        r#"
[[registry]]
match = "registry.ci.example"
source = "env"
username = "$oauthtoken"
password = { env = "NGC_API_KEY" }
"#,
    );
    let key = random_secret(30);
    let creds = env.parse_get(&get_with(&env, &[("NGC_API_KEY", &key)]));
    assert_eq!(creds.username, "$oauthtoken");
    assert_eq!(creds.secret, key);
    assert!(!env.log_contents().contains(key.as_str()));
}

/// Speaks the protocol by hand: `Hello` with `proto`, then `get`.
fn raw_get(env: &TestEnv, proto: u32, get: serde_json::Value) -> serde_json::Value {
    let mut s = UnixStream::connect(&env.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello =
        serde_json::json!({"type": "Hello", "proto": proto, "client": "cli", "version": "0"});
    write_frame(&mut s, &hello).unwrap();
    write_frame(&mut s, &get).unwrap();
    let _: serde_json::Value = read_frame(&mut s).expect("hello answer");
    read_frame(&mut s).expect("get answer")
}

#[test]
fn the_agent_asks_for_the_variables_only_a_protocol_2_client_can_send() {
    let env = with_config(ENTRY);
    env.store_ok(HOST, "stored-user", &random_secret(20));
    let get = serde_json::json!({"type": "Get", "server_url": HOST});
    let asked = raw_get(&env, 2, get.clone());
    assert_eq!(
        asked,
        serde_json::json!({"type": "NeedEnv", "names": ["CI_REGISTRY_USER", "CI_REGISTRY_PASSWORD"]})
    );
    // A protocol 1 client cannot answer NeedEnv: the entry does not apply,
    // and it gets the stored login.
    let old = raw_get(&env, 1, get);
    assert_eq!(old["type"], "Credentials", "{old}");
    assert_eq!(old["username"], "stored-user");
    // A variable of the caller that no entry names is never used, even when
    // sent: an entry reads only what it names.
    let complete = serde_json::json!({"type": "Get", "server_url": HOST, "env_complete": true,
        "env": {"CI_REGISTRY_USER": "u", "CI_REGISTRY_PASSWORD": "p", "OTHER": "x"}});
    let answer = raw_get(&env, 2, complete);
    assert_eq!(answer["username"], "u", "{answer}");
    assert_eq!(answer["secret"], "p");
}

#[test]
fn a_literal_password_is_refused_at_start_without_quoting_it() {
    let env = with_config(
        r#"
[[registry]]
match = "registry.ci.example"
source = "env"
username = "u"
password = "literal-hunter2-password"
"#,
    );
    let out = env.regent(&["start"]);
    assert!(!out.success(), "{}", out.stdout());
    assert!(
        out.stderr().contains("must not hold the password"),
        "{}",
        out.stderr()
    );
    assert!(!out.stderr().contains("hunter2"), "{}", out.stderr());
}
