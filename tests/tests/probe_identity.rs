//! Whose identity and whose environment: the agent starts from a clean,
//! documented environment whatever process spawned it, never keeps
//! `REGENT_MASTER_KEY` in its `/proc/<pid>/environ`, mints each ECR token
//! with the AWS inputs of the caller that asked (one token per identity,
//! keyed on a digest, never on a raw credential), and gives `exec` commands
//! a documented environment that holds no other caller's variables.
//!
//! ECR runs against the loopback fake (`regent_tests::fakes::ecr`), whose
//! passwords carry the access key id that signed the call. Reading another
//! process's environment needs root (the agent is non-dumpable): without
//! it those tests report a skip.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regent_tests::fakes::ecr::{FakeEcr, test_keys};
use regent_tests::{
    AWS_CALLER_VARIABLES, Input, Outcome, StoreKind, TestEnv, contains, is_root, random_secret,
    skip, wait_until,
};

const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const PYTHON: &str = "/usr/bin/python3";

/// The agent's documented environment (README, Security): exact names ...
const KEPT: &[&str] = &[
    "HOME",
    "USER",
    "LOGNAME",
    "PATH",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "DBUS_SESSION_BUS_ADDRESS",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GCE_METADATA_HOST",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// ... and prefixes (`REGENT_MASTER_KEY` excepted).
const KEPT_PREFIXES: &[&str] = &["LC_", "XDG_", "REGENT_"];

fn documented_for_the_agent(name: &str) -> bool {
    name != "REGENT_MASTER_KEY"
        && (KEPT.contains(&name) || KEPT_PREFIXES.iter().any(|p| name.starts_with(p)))
}

/// `/proc/<pid>/environ` as (name, value) pairs; `None` (and a skip note)
/// when this process may not read it.
fn environ_of(test: &str, pid: u32) -> Option<Vec<(String, Vec<u8>)>> {
    if !is_root() {
        skip(
            test,
            "reading the environment of the non-dumpable agent needs root",
        );
        return None;
    }
    let raw = fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/environ: {e}"));
    Some(
        raw.split(|b| *b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let eq = e.iter().position(|b| *b == b'=').unwrap_or(e.len());
                (
                    String::from_utf8_lossy(&e[..eq]).into_owned(),
                    e[(eq + 1).min(e.len())..].to_vec(),
                )
            })
            .collect(),
    )
}

/// Asserts that the agent's environment is the documented one, that it is
/// this env's agent (it carries the test marker), and that none of
/// `secrets` is in it.
fn assert_clean_agent_environ(test: &str, env: &TestEnv, pid: u32, secrets: &[&str]) {
    let Some(vars) = environ_of(test, pid) else {
        return;
    };
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    let raw = fs::read(format!("/proc/{pid}/environ")).unwrap();
    for s in secrets {
        assert!(
            !contains(&raw, s.as_bytes()),
            "a caller's secret is in /proc/{pid}/environ ({names:?})"
        );
    }
    assert!(
        vars.iter()
            .any(|(n, v)| n == regent_tests::MARKER_ENV && v == env.id.as_bytes()),
        "agent {pid} does not carry this env's marker: {names:?}"
    );
    let undocumented: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !documented_for_the_agent(n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "agent {pid} kept variables outside the documented set: {undocumented:?}"
    );
}

fn random_master_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(regent_tests::random_bytes(32))
}

/// A helper call with variables set (`Some`) or removed (`None`) on top of
/// the env's own.
fn helper_with(env: &TestEnv, verb: &str, stdin: &str, vars: &[(&str, Option<&str>)]) -> Outcome {
    let mut cmd = env.command(&env.bins.helper);
    cmd.arg(verb);
    for (k, v) in vars {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    env.run(
        &mut cmd,
        Input::Bytes(stdin.as_bytes()),
        Duration::from_secs(60),
    )
}

// ---------------------------------------------------------------------------
// The master key
// ---------------------------------------------------------------------------

#[test]
fn the_master_key_is_used_but_never_stays_in_the_agents_environment() {
    const TEST: &str = "the_master_key_is_used_but_never_stays_in_the_agents_environment";
    let mut env = TestEnv::with_store(StoreKind::File);
    let key = random_master_key();
    env.set_env("REGENT_MASTER_KEY", Some(key.as_str()));
    let secret = random_secret(40);
    env.store_ok("mk.example", "u", &secret);
    let pid = env.agent_pid().expect("an agent after the store");
    assert_clean_agent_environ(TEST, &env, pid, &[&key]);

    // The file is encrypted with that key, taken from REGENT_MASTER_KEY
    // (header byte 9 = 3), and no key file was made instead.
    let file = env.data_home.join("regent").join("secrets.enc");
    let bytes = fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(&bytes[..8], b"REGENTSF");
    assert_eq!(bytes[9], 3, "the key did not come from REGENT_MASTER_KEY");
    assert!(!env.config_home.join("regent").join("master.key").exists());
    assert_eq!(env.get_ok("mk.example").secret, secret);

    // A restart (in the foreground this time) opens the file with the key
    // and again keeps it out of its environment.
    env.stop_agent();
    let pid = env.start_foreground_agent();
    assert_clean_agent_environ(TEST, &env, pid, &[&key]);
    assert_eq!(env.get_ok("mk.example").secret, secret);
    env.stop_agent();

    // Another key cannot open it: the key really is the one passed on.
    env.set_env("REGENT_MASTER_KEY", Some(random_master_key().as_str()));
    let out = env.helper(&["store"], TestEnv::store_json("mk2.example", "u", "x"));
    assert!(!out.success(), "a wrong master key opened the store\n{out}");
    assert!(out.out_trim().contains("REGENT_MASTER_KEY"), "{out}");
}

// ---------------------------------------------------------------------------
// exec sources
// ---------------------------------------------------------------------------

/// Dumps its environment as JSON next to itself (one file per registry),
/// then prints a token.
const ENV_DUMP: &str = r#"
import json, os, sys
req = json.load(sys.stdin)
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "env-" + req["Registry"] + ".json"), "w") as f:
    json.dump(dict(os.environ), f)
print(json.dumps({"Version": 1, "Username": "u", "Secret": "tok-" + req["Registry"]}))
"#;

fn exec_env_dump(dir: &Path, host: &str) -> serde_json::Map<String, serde_json::Value> {
    let path = dir.join(format!("env-{host}.json"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_callers_variables_reach_neither_the_agent_nor_exec_commands() {
    const TEST: &str = "a_callers_variables_reach_neither_the_agent_nor_exec_commands";
    if !Path::new(PYTHON).is_file() {
        skip(TEST, "/usr/bin/python3 is not installed");
        return;
    }
    let env = TestEnv::new();
    let dir = env.root.join("script");
    fs::create_dir_all(&dir).unwrap();
    let script = dir.join("dump.py");
    fs::write(&script, ENV_DUMP).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).unwrap();
    let config = env.config_home.join("regent").join("config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(
        &config,
        format!(
            "[[registry]]\nmatch = \"*.exec.example\"\nsource = \"exec\"\n\
             command = [{PYTHON:?}, {:?}]\nenv = {{ MODE = \"ci\" }}\n",
            script.display().to_string()
        ),
    )
    .unwrap();

    // The first caller starts the agent, with a CI secret and AWS keys in
    // its environment.
    let ci_password = random_secret(32);
    let (key_id, aws_secret) = test_keys();
    let first = "first.exec.example";
    let out = helper_with(
        &env,
        "get",
        first,
        &[
            ("CI_REGISTRY_PASSWORD", Some(&ci_password)),
            ("AWS_ACCESS_KEY_ID", Some(&key_id)),
            ("AWS_SECRET_ACCESS_KEY", Some(&aws_secret)),
            ("AWS_PROFILE", Some("team-a")),
        ],
    );
    assert_eq!(env.parse_get(&out).secret, format!("tok-{first}"));
    let pid = env.agent_pid().expect("agent");
    assert_clean_agent_environ(TEST, &env, pid, &[&ci_password, &key_id, &aws_secret]);

    // A second caller, without any of that, on another registry.
    let second = "second.exec.example";
    let out = helper_with(&env, "get", second, &[("AWS_PROFILE", Some("team-b"))]);
    assert_eq!(env.parse_get(&out).secret, format!("tok-{second}"));

    for (host, profile) in [(first, "team-a"), (second, "team-b")] {
        let seen = exec_env_dump(&dir, host);
        let text = serde_json::to_string(&seen).unwrap();
        for s in [&ci_password, &key_id, &aws_secret] {
            assert!(
                !text.contains(s.as_str()),
                "{host}: a caller's secret reached the exec command: {:?}",
                seen.keys().collect::<Vec<_>>()
            );
        }
        // The documented set: the agent's environment without REGENT_*,
        // the caller's AWS_PROFILE / AWS_REGION / AWS_DEFAULT_REGION, and
        // `env` from the config.
        let undocumented: Vec<&String> = seen
            .keys()
            .filter(|n| {
                n.starts_with("REGENT_")
                    || !(documented_for_the_agent(n)
                        || ["AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "MODE"]
                            .contains(&n.as_str()))
            })
            .collect();
        assert!(
            undocumented.is_empty(),
            "{host}: the exec command saw undocumented variables {undocumented:?}"
        );
        assert_eq!(seen["AWS_PROFILE"], profile, "{host}");
        assert_eq!(seen["MODE"], "ci", "{host}");
        assert_eq!(
            seen["HOME"].as_str(),
            Some(env.home.to_str().unwrap()),
            "{host}"
        );
    }
}

// ---------------------------------------------------------------------------
// ECR identity
// ---------------------------------------------------------------------------

/// A TestEnv whose callers talk to `fake` and have no credentials of their
/// own unless a test gives them some.
fn ecr_env(fake: &FakeEcr) -> (TestEnv, PathBuf) {
    let mut env = TestEnv::new();
    for name in AWS_CALLER_VARIABLES {
        env.set_env(*name, None::<&str>);
    }
    let aws_dir = env.root.join("aws");
    fs::create_dir_all(&aws_dir).unwrap();
    env.set_env("AWS_EC2_METADATA_DISABLED", Some("true"));
    env.set_env("AWS_ENDPOINT_URL_ECR", Some(fake.url()));
    env.set_env("AWS_ENDPOINT_URL_ECR_PUBLIC", Some(fake.url()));
    env.set_env("AWS_ENDPOINT_URL", Some(fake.url()));
    (env, aws_dir)
}

struct Caller {
    id: String,
    secret: String,
}

impl Caller {
    fn new() -> Caller {
        let (id, secret) = test_keys();
        Caller { id, secret }
    }

    fn get(&self, env: &TestEnv, host: &str, extra: &[(&str, Option<&str>)]) -> Outcome {
        let mut vars = vec![
            ("AWS_ACCESS_KEY_ID", Some(self.id.as_str())),
            ("AWS_SECRET_ACCESS_KEY", Some(self.secret.as_str())),
        ];
        vars.extend_from_slice(extra);
        helper_with(env, "get", host, &vars)
    }
}

#[test]
fn each_caller_gets_a_token_minted_with_its_own_keys() {
    const TEST: &str = "each_caller_gets_a_token_minted_with_its_own_keys";
    let fake = FakeEcr::start(Duration::from_secs(3600));
    let (env, _) = ecr_env(&fake);
    let a = Caller::new();
    let b = Caller::new();
    let b_session = random_secret(48);
    let b_vars = [("AWS_SESSION_TOKEN", Some(b_session.as_str()))];

    // The first caller starts the agent.
    let a1 = env.parse_get(&a.get(&env, HOST, &[]));
    assert_eq!(a1.secret, fake.password(1, &a.id));
    let b1 = env.parse_get(&b.get(&env, HOST, &b_vars));
    assert_eq!(
        b1.secret,
        fake.password(2, &b.id),
        "the second caller got a token of another identity"
    );
    // Each identity's token is cached: no more calls.
    assert_eq!(env.parse_get(&a.get(&env, HOST, &[])).secret, a1.secret);
    assert_eq!(env.parse_get(&b.get(&env, HOST, &b_vars)).secret, b1.secret);
    assert_eq!(fake.calls(), 2, "{:?}", fake.log());
    let ids: Vec<String> = fake.log().into_iter().map(|c| c.access_key_id).collect();
    assert_eq!(ids, [a.id.clone(), b.id.clone()]);

    // A caller without any credential gets an error, no one's token, and
    // makes no call with borrowed keys.
    let none = helper_with(
        &env,
        "get",
        HOST,
        &[("AWS_ACCESS_KEY_ID", None), ("AWS_SECRET_ACCESS_KEY", None)],
    );
    assert!(!none.success(), "a caller without credentials got {none}");
    for s in [&a1.secret, &b1.secret] {
        assert!(!none.stdout().contains(s.as_str()), "{none}");
    }
    assert!(none.out_trim().contains(HOST), "{none}");
    assert_eq!(fake.calls(), 2, "{:?}", fake.log());

    // No credential in the agent's environment, log (at trace), `regent ls`
    // or an error.
    let pid = env.agent_pid().expect("agent");
    assert_clean_agent_environ(TEST, &env, pid, &[&a.id, &a.secret, &b.secret, &b_session]);
    let log = env.log_contents();
    let ls = env.regent(&["ls", "--json"]);
    assert!(ls.success(), "{ls}");
    for s in [&a.secret, &b.secret, &b_session] {
        assert!(
            !log.contains(s.as_str()),
            "a caller's AWS secret is in the agent log"
        );
        assert!(!ls.stdout().contains(s.as_str()), "{ls}");
        assert!(!none.stdout().contains(s.as_str()) && !none.stderr().contains(s.as_str()));
    }
    assert!(!log.contains(&a1.secret) && !log.contains(&b1.secret));
}

#[test]
fn a_background_refresh_keeps_the_identity_that_made_the_token() {
    // 16 s tokens: refreshed ahead at about 8 s.
    let fake = FakeEcr::start(Duration::from_secs(16));
    let (env, _) = ecr_env(&fake);
    let a = Caller::new();
    let b = Caller::new();
    assert_eq!(
        env.parse_get(&a.get(&env, HOST, &[])).secret,
        fake.password(1, &a.id)
    );
    assert_eq!(
        env.parse_get(&b.get(&env, HOST, &[])).secret,
        fake.password(2, &b.id)
    );
    assert!(
        wait_until(Duration::from_secs(40), || fake.calls() >= 4),
        "no refresh ahead\n{}",
        env.diagnostics()
    );
    let log = fake.log();
    let refreshed: BTreeSet<&str> = log[2..4].iter().map(|c| c.access_key_id.as_str()).collect();
    assert_eq!(
        refreshed,
        BTreeSet::from([a.id.as_str(), b.id.as_str()]),
        "each refresh must use the keys of the caller whose token it renews: {log:?}"
    );
    for caller in [&a, &b] {
        let call = log[2..4]
            .iter()
            .find(|c| c.access_key_id == caller.id)
            .expect("a refresh per caller");
        let want = fake.password(call.n, &caller.id);
        assert!(
            wait_until(Duration::from_secs(10), || env
                .parse_get(&caller.get(&env, HOST, &[]))
                .secret
                == want),
            "the refreshed token of {} is not served\n{}",
            caller.id,
            env.diagnostics()
        );
    }
}

#[test]
fn aws_profile_is_read_from_each_callers_own_files() {
    let fake = FakeEcr::start(Duration::from_secs(3600));
    let (env, aws_dir) = ecr_env(&fake);
    // Two callers, one profile name, each with its own credentials file.
    let mut files = Vec::new();
    for who in ["a", "b"] {
        let (id, secret) = test_keys();
        let path = aws_dir.join(format!("credentials-{who}"));
        fs::write(
            &path,
            format!("[team]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
        )
        .unwrap();
        files.push((path.display().to_string(), id));
    }
    let config = aws_dir.join("config");
    fs::write(&config, "[profile team]\nregion = eu-west-1\n").unwrap();
    let get = |file: &str| {
        helper_with(
            &env,
            "get",
            HOST,
            &[
                ("AWS_PROFILE", Some("team")),
                ("AWS_SHARED_CREDENTIALS_FILE", Some(file)),
                ("AWS_CONFIG_FILE", Some(config.to_str().unwrap())),
            ],
        )
    };
    let a = env.parse_get(&get(&files[0].0));
    assert_eq!(a.secret, fake.password(1, &files[0].1));
    let b = env.parse_get(&get(&files[1].0));
    assert_eq!(
        b.secret,
        fake.password(2, &files[1].1),
        "the second caller's credentials file was not used"
    );
    assert_eq!(env.parse_get(&get(&files[0].0)).secret, a.secret);
    assert_eq!(fake.calls(), 2);
    // The hostname's region, whatever the profile says.
    assert!(fake.log().iter().all(|c| c.region == "us-east-1"));
    // A profile missing from the caller's file is an error naming it, not
    // someone else's token.
    let missing = helper_with(
        &env,
        "get",
        HOST,
        &[
            ("AWS_PROFILE", Some("nope")),
            ("AWS_SHARED_CREDENTIALS_FILE", Some(&files[0].0)),
        ],
    );
    assert!(!missing.success(), "{missing}");
    assert!(missing.out_trim().contains("nope"), "{missing}");
    assert_eq!(fake.calls(), 2);
}
