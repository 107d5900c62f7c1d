//! Stored formats still load: the fixtures in `tests/data/` are what regent
//! wrote on disk at the commits `tests/data/README.md` names (made with the
//! real binaries by `tests/data/make-fixtures`). Each test copies one into a
//! hermetic world, starts the real agent on it and reads everything back
//! through the helper and the CLI. A failure here means that files a user
//! has on disk today would stop loading: change the code, not the fixture
//! (a new format gets a new fixture beside the old ones).
//!
//! - `file-store/`: the file store of today (`secrets.enc` holding login
//!   records, and `index-file.json`);
//! - `file-store-legacy/`: the file store before login records, whose values
//!   are bare secrets with their usernames only in the index;
//! - `config.toml`: every documented config key;
//! - `docker-config.json`: docker's plaintext logins, for `regent import`.
//!
//! The store fixtures need the file store whatever `REGENT_TEST_STORE`
//! says, with the master key of `tests/data/master-key` given as
//! `REGENT_MASTER_KEY`; the config and import tests run in the phase's store.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use regent_tests::{StoreKind, TestEnv};

/// A login the fixtures hold: server URL as stored, username, secret.
struct Login {
    server_url: &'static str,
    username: &'static str,
    secret: &'static str,
}

/// What `make-fixtures` stored, exactly.
const LOGINS: [Login; 3] = [
    Login {
        server_url: "https://index.docker.io/v1/",
        username: "alice",
        secret: r#"pa55 w0rd/with "quotes", \ and é"#,
    },
    Login {
        server_url: "ghcr.io",
        username: "<token>",
        secret: "ghp_identityToken0f7Kq2",
    },
    Login {
        server_url: "registry.example:5000",
        username: "ci-bot",
        secret: "s3cret-of-ci-bot",
    },
];

/// The named secret `make-fixtures` set with `regent secret set`.
const SECRET_NAME: &str = "corp-token";
const SECRET_VALUE: &str = "corp-token-value-9Zr";

/// A host served by an `exec` source that prints the named secret as its
/// token: how the value of a named secret is read back.
const SECRET_HOST: &str = "secret.formats.test";

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Writes `bytes` to `path` (mode 0600), creating its directory 0700.
fn install(path: &Path, bytes: &[u8]) {
    let dir = path.parent().expect("a parent");
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

fn config_path(env: &TestEnv) -> PathBuf {
    env.config_home.join("regent").join("config.toml")
}

/// A world with the file store of fixture `name` in its data dir, the
/// fixtures' master key, and a config whose one `exec` source hands the
/// named secret back as a token.
fn world_with_store(name: &str) -> TestEnv {
    let mut env = TestEnv::with_store(StoreKind::File);
    let key = String::from_utf8(read(&data().join("master-key"))).unwrap();
    env.set_env("REGENT_MASTER_KEY", Some(key.trim()));
    let fixture = data().join(name);
    let store_dir = env.data_home.join("regent");
    for file in ["secrets.enc", "index-file.json"] {
        install(&store_dir.join(file), &read(&fixture.join(file)));
    }
    let print_token = r#"printf '{"Version":1,"Username":"secret","Secret":"%s"}' "$TOKEN""#;
    install(
        &config_path(&env),
        format!(
            "[[registry]]\nmatch = {SECRET_HOST:?}\nsource = \"exec\"\n\
             command = [\"/bin/sh\", \"-c\", {print_token:?}]\n\
             env = {{ TOKEN = {{ secret = {SECRET_NAME:?} }} }}\n"
        )
        .as_bytes(),
    );
    env
}

/// Every login and the named secret come back exactly, by every way out.
fn check_store(env: &TestEnv) {
    for login in &LOGINS {
        let got = env.get_ok(login.server_url);
        assert_eq!(
            (
                got.server_url.as_str(),
                got.username.as_str(),
                got.secret.as_str()
            ),
            (login.server_url, login.username, login.secret),
            "get {}\n{}",
            login.server_url,
            env.diagnostics()
        );
    }
    let expected: BTreeMap<String, String> = LOGINS
        .iter()
        .map(|l| (l.server_url.to_owned(), l.username.to_owned()))
        .collect();
    assert_eq!(env.list_ok(), expected, "list\n{}", env.diagnostics());

    let mut rows: Vec<(String, String, String)> = env
        .ls_json()
        .into_iter()
        .map(|e| (e.server_url, e.username, e.source))
        .collect();
    rows.sort();
    let mut want: Vec<(String, String, String)> = LOGINS
        .iter()
        .map(|l| (l.server_url.into(), l.username.into(), "static".into()))
        .collect();
    want.sort();
    assert_eq!(rows, want, "regent ls --json\n{}", env.diagnostics());

    let out = env.regent(&["secret", "ls"]);
    assert!(out.success(), "regent secret ls\n{out}");
    assert_eq!(out.out_lines(), [SECRET_NAME], "regent secret ls\n{out}");
    let token = env.get_ok(SECRET_HOST);
    assert_eq!(
        token.secret,
        SECRET_VALUE,
        "the named secret, through an exec source\n{}",
        env.diagnostics()
    );

    let status = env.status_json();
    assert_eq!(status.store, "file", "{status:?}");
}

#[test]
fn the_file_store_of_today_loads() {
    let env = world_with_store("file-store");
    check_store(&env);
}

#[test]
fn the_file_store_of_bare_secrets_before_login_records_loads() {
    let env = world_with_store("file-store-legacy");
    check_store(&env);
    // A store of one login rewrites it as a record; the others still load.
    let first = &LOGINS[0];
    env.store_ok(first.server_url, first.username, first.secret);
    env.stop_agent();
    check_store(&env);
}

#[test]
fn a_config_file_with_every_documented_key_loads() {
    let env = TestEnv::new();
    install(&config_path(&env), &read(&data().join("config.toml")));
    // Checked by the CLI with no agent running, as `regent status` does...
    // (exit 3: not running)
    let out = env.regent(&["status", "--json"]);
    assert_eq!(out.code(), Some(3), "regent status --json\n{out}");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("regent status --json is not JSON ({e})\n{out}"));
    assert_eq!(value["running"], false, "{out}");
    assert!(value.get("config_error").is_none(), "{out}");
    // ...and by the agent, which refuses to start on a config it rejects.
    let out = env.regent(&["start"]);
    assert!(out.success(), "regent start\n{out}\n{}", env.diagnostics());
    let status = env.status_json();
    assert!(status.config_present, "{status:?}");
    assert_eq!(
        status.config.as_deref(),
        Some(config_path(&env).to_str().unwrap())
    );
    let out = env.regent(&["reload"]);
    assert!(out.success(), "regent reload\n{out}");
    assert!(
        out.out_trim().ends_with(": 4 registry entries in force"),
        "regent reload\n{out}"
    );
}

#[test]
fn a_docker_config_json_imports() {
    let env = TestEnv::new();
    let file = env.root.join("config.json");
    let original = read(&data().join("docker-config.json"));
    install(&file, &original);
    let out = env.regent(&["import", "--keep", "--json", file.to_str().unwrap()]);
    assert!(out.success(), "regent import\n{out}\n{}", env.diagnostics());
    for login in &LOGINS {
        env.assert_no_secret_in_stderr(&out, login.secret);
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(login.secret),
            "a secret on stdout\n{out}"
        );
    }
    let outcomes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("regent import --json is not a JSON list ({e})\n{out}"));
    assert_eq!(outcomes.len(), LOGINS.len(), "{out}");
    for o in &outcomes {
        assert_eq!(o["result"], "imported", "{out}");
    }
    for login in &LOGINS {
        let got = env.get_ok(login.server_url);
        assert_eq!(
            (got.username.as_str(), got.secret.as_str()),
            (login.username, login.secret),
            "get {} after the import\n{}",
            login.server_url,
            env.diagnostics()
        );
    }
    assert_eq!(read(&file), original, "--keep leaves the file alone");
}
