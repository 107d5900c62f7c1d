//! The `gcp` source through the real binaries, against the loopback fake of
//! Google's token endpoint and metadata server (`regent_tests::fakes::gcp`),
//! which checks the service account JWT's RS256 signature against the key's
//! public half, its claims, the user login's client and refresh token, and
//! the metadata header. Keys are made at test time by openssl and written
//! into key files whose `token_uri` is the fake; the gcloud CLI is a stub
//! script on the agent's PATH. Counts, not timings, are asserted.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regent_tests::fakes::gcp::{FakeGoogle, Grant, Reply, SCOPE};
use regent_tests::fakes::http::{HttpFake, Response};
use regent_tests::{DEFAULT_TIMEOUT, Input, Outcome, TestEnv, skip, wait_until};

const AR: &str = "europe-west1-docker.pkg.dev";
const GCR: &str = "gcr.io";

/// A world with a Google fake; `None` (after a counted skip) without
/// openssl.
fn google(test: &str, lifetime: Duration) -> Option<(TestEnv, FakeGoogle)> {
    match FakeGoogle::key() {
        Ok(key) => Some((TestEnv::new(), FakeGoogle::start(key, lifetime))),
        Err(why) => {
            skip(test, &format!("cannot make an RSA key with openssl: {why}"));
            None
        }
    }
}

fn write_config(env: &TestEnv, text: &str) {
    let path = env.config_home.join("regent").join("config.toml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, text).unwrap();
}

/// `get host` with the caller's variables `vars`.
fn get_with(env: &TestEnv, host: &str, vars: &[(&str, &Path)]) -> Outcome {
    let mut cmd = env.command(&env.bins.helper);
    cmd.arg("get");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    env.run(&mut cmd, Input::Bytes(host.as_bytes()), DEFAULT_TIMEOUT)
}

fn error_text(out: &Outcome) -> String {
    assert!(!out.success(), "expected an error, got {out}");
    let text = out.out_trim();
    eprintln!("error: {text}");
    text
}

fn row(env: &TestEnv, host: &str) -> regent_shared::protocol::EntryInfo {
    env.ls_json()
        .into_iter()
        .find(|r| r.key == host)
        .unwrap_or_else(|| panic!("no ls row for {host}\n{}", env.diagnostics()))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Nothing secret in the agent's log: no token, no JWT, no line of the key,
/// no secret of the user's login.
fn assert_log_clean(env: &TestEnv, fake: &FakeGoogle, tokens: &[String]) {
    let log = env.log_contents();
    for token in tokens {
        assert!(!log.contains(token.as_str()), "a token is in the agent log");
    }
    for secret in fake.user_secrets() {
        assert!(!log.contains(secret), "a user secret is in the agent log");
    }
    for req in fake.requests() {
        let body = req.text();
        for (_, value) in form_pairs(&body) {
            if value.len() > 40 {
                assert!(!log.contains(&value), "a request value is in the agent log");
            }
        }
    }
    for line in fake
        .app_key()
        .private_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
    {
        assert!(!log.contains(line), "the private key is in the agent log");
    }
}

fn form_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2B", "+").replace("%2F", "/")))
        .collect()
}

#[test]
fn a_key_from_the_callers_env_serves_every_google_registry() {
    let Some((env, fake)) = google(
        "a_key_from_the_callers_env_serves_every_google_registry",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    let key = fake.write_key_file(&env.root.join("keys"), "pusher.json");
    let vars = [("GOOGLE_APPLICATION_CREDENTIALS", key.as_path())];
    // Zero config: the hostnames alone pick the source.
    let creds = env.parse_get(&get_with(&env, AR, &vars));
    assert_eq!(creds.username, "oauth2accesstoken");
    assert_eq!(creds.secret, fake.token(1));
    let log = fake.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!((log[0].grant, log[0].status), (Grant::ServiceAccount, 200));
    let (header, claims) = log[0].jwt.clone().unwrap();
    assert_eq!(header["kid"], fake.key_id());
    assert_eq!(claims["iss"], fake.email());
    assert_eq!(claims["aud"], fake.token_uri());
    assert_eq!(claims["scope"], SCOPE);
    let ua = fake.requests()[0]
        .header("user-agent")
        .unwrap_or_default()
        .to_owned();
    assert!(ua.starts_with("regent/"), "{ua}");
    // The same identity's token serves gcr.io too, from the cache.
    let again = env.parse_get(&get_with(&env, &format!("https://{GCR}"), &vars));
    assert_eq!(again.secret, creds.secret);
    assert_eq!(fake.calls(), 1);
    let row = row(&env, AR);
    assert_eq!(row.source, "gcp");
    assert_eq!(row.username, "oauth2accesstoken");
    let want = unix(SystemTime::now()) + 3600;
    let expires = row.expires.expect("an expiry");
    assert!(
        (want - 30..=want + 1).contains(&expires),
        "{expires} vs {want}"
    );
    // A host that only looks like Google's is not sent there.
    let out = get_with(&env, "gcr.io.example.com", &vars);
    assert!(!out.success(), "{out}");
    assert_eq!(fake.calls(), 1);
    assert_log_clean(&env, &fake, &[creds.secret]);
}

#[test]
fn each_caller_gets_the_token_of_its_own_key() {
    let test = "each_caller_gets_the_token_of_its_own_key";
    let Some((env, one)) = google(test, Duration::from_secs(3600)) else {
        return;
    };
    let Some((_, two)) = google(test, Duration::from_secs(3600)) else {
        return;
    };
    let key_one = one.write_key_file(&env.root.join("keys"), "one.json");
    let key_two = two.write_key_file(&env.root.join("keys"), "two.json");
    let get = |key: &Path| {
        env.parse_get(&get_with(
            &env,
            AR,
            &[("GOOGLE_APPLICATION_CREDENTIALS", key)],
        ))
        .secret
    };
    assert_eq!(get(&key_one), one.token(1));
    assert_eq!(get(&key_two), two.token(1));
    assert_eq!(get(&key_one), one.token(1));
    assert_eq!((one.calls(), two.calls()), (1, 1));
}

#[test]
fn credentials_file_in_the_entry_wins_over_the_callers_env() {
    let test = "credentials_file_in_the_entry_wins_over_the_callers_env";
    let Some((env, configured)) = google(test, Duration::from_secs(3600)) else {
        return;
    };
    let Some((_, callers)) = google(test, Duration::from_secs(3600)) else {
        return;
    };
    let key = configured.write_key_file(&env.root.join("keys"), "ci.json");
    let theirs = callers.write_key_file(&env.root.join("keys"), "theirs.json");
    write_config(
        &env,
        &format!(
            "[[registry]]\nmatch = \"{AR}\"\nsource = \"gcp\"\ncredentials_file = \"{}\"\n",
            key.display()
        ),
    );
    let creds = env.parse_get(&get_with(
        &env,
        AR,
        &[("GOOGLE_APPLICATION_CREDENTIALS", theirs.as_path())],
    ));
    assert_eq!(creds.secret, configured.token(1));
    assert_eq!(callers.calls(), 0);
}

#[test]
fn gclouds_application_default_login_is_refreshed() {
    let Some((env, fake)) = google(
        "gclouds_application_default_login_is_refreshed",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    // In the agent user's ~/.config/gcloud: no variable needed.
    fake.write_user_file(
        &env.home.join(".config").join("gcloud"),
        "application_default_credentials.json",
    );
    let creds = env.get_ok(AR);
    assert_eq!(creds.username, "oauth2accesstoken");
    assert_eq!(creds.secret, fake.token(1));
    assert_eq!(fake.log()[0].grant, Grant::RefreshToken);
    // A caller's CLOUDSDK_CONFIG names another gcloud directory: its login,
    // a token of its own.
    let Some((_, other)) = google(
        "gclouds_application_default_login_is_refreshed",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    let dir = env.root.join("other-gcloud");
    other.write_user_file(&dir, "application_default_credentials.json");
    let theirs = env.parse_get(&get_with(&env, AR, &[("CLOUDSDK_CONFIG", dir.as_path())]));
    assert_eq!(theirs.secret, other.token(1));
    assert_eq!(env.get_ok(AR).secret, creds.secret);
    assert_eq!(fake.calls(), 1);
    assert_log_clean(&env, &fake, &[creds.secret]);
}

#[test]
fn the_metadata_server_answers_when_there_is_no_file() {
    let Some((mut env, fake)) = google(
        "the_metadata_server_answers_when_there_is_no_file",
        Duration::from_secs(1800),
    ) else {
        return;
    };
    env.set_env("GCE_METADATA_HOST", Some(fake.metadata_host()));
    let creds = env.get_ok(GCR);
    assert_eq!(creds.secret, fake.token(1));
    let log = fake.log();
    assert_eq!((log[0].grant, log[0].status), (Grant::Metadata, 200));
    let want = unix(SystemTime::now()) + 1800;
    let expires = row(&env, GCR).expires.expect("an expiry");
    assert!(
        (want - 30..=want + 1).contains(&expires),
        "{expires} vs {want}"
    );
}

#[test]
fn a_metadata_address_that_is_not_googles_is_not_taken_for_it() {
    // Another cloud's metadata service at that address: 200, but not
    // `Metadata-Flavor: Google`.
    let other = HttpFake::start(|_| {
        Some(Response::new(
            200,
            "application/json",
            r#"{"access_token":"not-google","expires_in":3600}"#,
        ))
    });
    let mut env = TestEnv::new();
    env.set_env("GCE_METADATA_HOST", Some(other.addr.to_string()));
    let text = error_text(&env.helper(&["get"], GCR));
    assert!(text.contains("no Google credentials for gcr.io"), "{text}");
    assert!(text.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{text}");
    assert!(!text.contains("not-google"), "{text}");
    assert_eq!(other.requests().len(), 1);
    let row = row(&env, GCR);
    assert!(
        row.last_error
            .unwrap_or_default()
            .contains("no Google credentials")
    );
}

/// A stub `gcloud` in its own directory that prints config-helper's JSON
/// with `token` expiring `expires_in` from now, and records the
/// CLOUDSDK_CONFIG it saw and its arguments.
fn stub_gcloud(env: &TestEnv, token: &str, expires_in: Duration) -> PathBuf {
    let dir = env.root.join("gcloud-bin");
    fs::create_dir_all(&dir).unwrap();
    let expiry = time::OffsetDateTime::from(SystemTime::now() + expires_in)
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let seen = dir.join("seen");
    let script = format!(
        "#!/bin/sh\nprintf '%s|%s\\n' \"$*\" \"${{CLOUDSDK_CONFIG-unset}}\" >> '{}'\n\
         printf '%s' '{{\"configuration\":{{\"active_configuration\":\"default\"}},\
         \"credential\":{{\"access_token\":\"{token}\",\"token_expiry\":\"{expiry}\"}},\
         \"sentinels\":{{\"config_sentinel\":\"/x\"}}}}'\n",
        seen.display()
    );
    let path = dir.join("gcloud");
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn the_gcloud_cli_gives_its_token_and_its_real_expiry() {
    let mut env = TestEnv::new();
    let token = format!("ya29.cli{}", regent_tests::random_secret(20));
    let dir = stub_gcloud(&env, &token, Duration::from_secs(20 * 60));
    // Unset: `gcloud` on the agent's PATH, where the stub comes first.
    env.set_env("REGENT_GCLOUD", None::<&str>);
    let mut path = std::ffi::OsString::from(dir.as_os_str());
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    env.set_env("PATH", Some(path));
    let config_dir = env.root.join("cli-config");
    fs::create_dir_all(&config_dir).unwrap();
    let creds = env.parse_get(&get_with(
        &env,
        AR,
        &[("CLOUDSDK_CONFIG", config_dir.as_path())],
    ));
    assert_eq!(creds.username, "oauth2accesstoken");
    assert_eq!(creds.secret, token);
    let seen = fs::read_to_string(dir.join("seen")).unwrap();
    assert_eq!(
        seen.trim(),
        format!(
            "config config-helper --format=json|{}",
            config_dir.display()
        )
    );
    // gcloud's own expiry, not an hour from now.
    let want = unix(SystemTime::now()) + 20 * 60;
    let expires = row(&env, AR).expires.expect("an expiry");
    assert!(
        (want - 30..=want + 1).contains(&expires),
        "{expires} vs {want}"
    );
    assert!(
        !env.log_contents().contains(&token),
        "the token is in the agent log"
    );
}

#[test]
fn a_revoked_key_is_a_permanent_error_that_names_the_fix() {
    let Some((env, fake)) = google(
        "a_revoked_key_is_a_permanent_error_that_names_the_fix",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    fake.script(&[], Reply::Revoked);
    let key = fake.write_key_file(&env.root.join("keys"), "revoked.json");
    let out = get_with(
        &env,
        AR,
        &[("GOOGLE_APPLICATION_CREDENTIALS", key.as_path())],
    );
    let text = error_text(&out);
    assert!(text.contains(AR), "{text}");
    assert!(text.contains(&key.display().to_string()), "{text}");
    assert!(text.contains("invalid_grant"), "{text}");
    assert!(text.contains("create a new key"), "{text}");
    // Permanent: the next get does not go back to Google at once.
    let again = get_with(
        &env,
        AR,
        &[("GOOGLE_APPLICATION_CREDENTIALS", key.as_path())],
    );
    assert!(!again.success());
    assert_eq!(fake.calls(), 1);
    assert_log_clean(&env, &fake, &[]);
}

#[test]
fn unusable_credentials_files_say_what_is_wrong() {
    let env = TestEnv::new();
    let dir = env.root.join("keys");
    fs::create_dir_all(&dir).unwrap();
    let secretish = regent_tests::random_secret(30);
    let cases = [
        ("missing.json", None, "cannot be read"),
        ("garbage.json", Some(format!("not json {secretish}")), "not a Google credentials JSON file"),
        (
            "federated.json",
            Some(format!(r#"{{"type":"external_account","audience":"{secretish}"}}"#)),
            "\"external_account\", which regent does not support",
        ),
        (
            "no-key.json",
            Some(r#"{"type":"service_account","client_email":"a@b","token_uri":"https://oauth2.googleapis.com/token"}"#.to_owned()),
            "without `private_key`",
        ),
        (
            "plain-http.json",
            Some(format!(
                r#"{{"type":"authorized_user","client_id":"c","client_secret":"{secretish}","refresh_token":"r","token_uri":"http://oauth2.example.com/token"}}"#
            )),
            "http:// is only for loopback hosts",
        ),
    ];
    for (name, content, want) in cases {
        let path = dir.join(name);
        if let Some(content) = content {
            fs::write(&path, content).unwrap();
        }
        let out = get_with(
            &env,
            AR,
            &[("GOOGLE_APPLICATION_CREDENTIALS", path.as_path())],
        );
        let text = error_text(&out);
        assert!(text.contains(want), "{name}: {text}");
        assert!(text.contains(AR), "{name}: {text}");
        assert!(
            !text.contains(&secretish),
            "{name}: the file's contents are quoted"
        );
    }
}

#[test]
fn throttling_waits_and_the_token_is_refreshed_ahead_of_expiry() {
    let Some((env, fake)) = google(
        "throttling_waits_and_the_token_is_refreshed_ahead_of_expiry",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    let key = fake.write_key_file(&env.root.join("keys"), "pusher.json");
    write_config(
        &env,
        &format!(
            "[[registry]]\nmatch = \"{AR}\"\nsource = \"gcp\"\ncredentials_file = \"{}\"\n",
            key.display()
        ),
    );
    fake.script(&[Reply::Throttled(120)], Reply::Token);
    let text = error_text(&env.helper(&["get"], AR));
    assert!(text.contains("rate limiting"), "{text}");
    assert!(text.contains("120s"), "{text}");
    let row_now = row(&env, AR);
    assert!(
        row_now
            .last_error
            .unwrap_or_default()
            .contains("rate limiting")
    );
    // Not retried before Google allows it.
    let again = env.helper(&["get"], AR);
    assert!(!again.success(), "{again}");
    assert_eq!(fake.calls(), 1);

    // A short-lived token from a fresh agent is replaced at about half its
    // lifetime, in the background: the gets never wait for it.
    let Some((env, fake)) = google(
        "throttling_waits_and_the_token_is_refreshed_ahead_of_expiry",
        Duration::from_secs(6),
    ) else {
        return;
    };
    let key = fake.write_key_file(&env.root.join("keys"), "pusher.json");
    let vars = [("GOOGLE_APPLICATION_CREDENTIALS", key.as_path())];
    assert_eq!(
        env.parse_get(&get_with(&env, AR, &vars)).secret,
        fake.token(1)
    );
    assert!(
        wait_until(Duration::from_secs(20), || fake.calls() >= 2),
        "no refresh ahead of expiry\n{}",
        env.diagnostics()
    );
    assert!(wait_until(Duration::from_secs(10), || {
        env.parse_get(&get_with(&env, AR, &vars)).secret != fake.token(1)
    }));
}

#[test]
fn a_gcloud_named_by_the_agents_variable_must_be_there() {
    let mut env = TestEnv::new();
    let missing = env.root.join("no-such-gcloud");
    env.set_env("REGENT_GCLOUD", Some(&missing));
    let text = error_text(&env.helper(&["get"], AR));
    assert!(
        text.contains("REGENT_GCLOUD names a gcloud that cannot be run"),
        "{text}"
    );
    assert!(text.contains(AR), "{text}");
}
