//! `regent login` and `regent logout` through the real binaries: a login is
//! checked with the registry before it is stored. Against a real
//! `docker-registry` with htpasswd (Basic, plain HTTP on 127.0.0.1), and a
//! loopback registry behind a distribution token server
//! (`regent_tests::fakes::token_registry`: OAuth2 password grant with an
//! offline refresh token, or the GET endpoint). What was stored is read
//! back with the helper's `get`, as docker would.

use std::path::Path;

use regent_tests::e2e::Registry;
use regent_tests::fakes::http::{HttpFake, Response};
use regent_tests::fakes::token_registry::{FakeTokenRegistry, Mode};
use regent_tests::{DEFAULT_TIMEOUT, Input, NOT_FOUND, Outcome, TestEnv, random_secret, skip};

const USER: &str = "alice";

fn login(env: &TestEnv, args: &[&str], password: &str) -> Outcome {
    let mut cmd = env.command(&env.bins.regent);
    cmd.arg("login").args(args);
    env.run(&mut cmd, Input::Bytes(password.as_bytes()), DEFAULT_TIMEOUT)
}

fn failed(out: &Outcome, secret: &str) -> String {
    assert!(!out.success(), "expected a failure, got {out}");
    let text = format!("{}{}", out.stdout(), out.stderr());
    assert!(
        !text.contains(secret),
        "the password is in the output: {text}"
    );
    eprintln!("{}", out.stderr().trim());
    out.stderr()
}

/// A real docker-registry with htpasswd; `None` after a counted skip.
fn registry(test: &str, env: &TestEnv, password: &str) -> Option<Registry> {
    if !Path::new("/usr/bin/docker-registry").exists() {
        skip(
            test,
            "docker-registry is not installed (apt-get install docker-registry)",
        );
        return None;
    }
    match Registry::start(&env.root.join("registry"), USER, password) {
        Ok(reg) => Some(reg),
        Err(why) => {
            skip(test, &format!("the registry did not start: {why}"));
            None
        }
    }
}

#[test]
fn a_basic_auth_login_is_checked_then_stored_and_served() {
    let env = TestEnv::new();
    let password = random_secret(24);
    let Some(reg) = registry(
        "a_basic_auth_login_is_checked_then_stored_and_served",
        &env,
        &password,
    ) else {
        return;
    };
    // A wrong password: refused by the registry, nothing stored.
    let wrong = random_secret(24);
    let out = login(&env, &[&reg.addr, "-u", USER, "--password-stdin"], &wrong);
    let text = failed(&out, &wrong);
    assert!(
        text.contains("refused the username or password (HTTP 401)"),
        "{text}"
    );
    assert!(text.contains("nothing was stored"), "{text}");
    assert_eq!(env.helper(&["get"], &reg.addr).out_trim(), NOT_FOUND);

    // The right one, named without a scheme: a loopback registry gets
    // plain HTTP when HTTPS cannot be spoken, as docker does.
    let out = login(
        &env,
        &[&reg.addr, "-u", USER, "--password-stdin"],
        &password,
    );
    assert!(out.success(), "{out}");
    assert!(out.stdout().contains("Login Succeeded"), "{out}");
    assert!(out.stdout().contains("basic auth"), "{out}");
    assert!(out.stderr().contains("using http://"), "{out}");
    assert!(!out.stdout().contains(&password) && !out.stderr().contains(&password));
    let creds = env.get_ok(&reg.addr);
    assert_eq!(
        (creds.username.as_str(), creds.secret.as_str()),
        (USER, password.as_str())
    );

    // An image reference names its registry; --json for scripts.
    let image = format!("http://{}/team/app:1.0", reg.addr);
    let out = login(
        &env,
        &[&image, "-u", USER, "--password-stdin", "--json"],
        &password,
    );
    assert!(out.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.stdout().trim()).unwrap();
    assert_eq!(v["registry"], reg.addr.as_str());
    assert_eq!(v["stored_as"], reg.addr.as_str());
    assert_eq!(v["checked"], "basic");
    assert_eq!(v["identity_token"], false);

    // logout removes it, whatever spelling; a second one says so.
    let out = env.regent(&["logout", &format!("http://{}/", reg.addr)]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout()
            .contains(&format!("Removed the login for {}", reg.addr)),
        "{out}"
    );
    assert_eq!(env.helper(&["get"], &reg.addr).out_trim(), NOT_FOUND);
    let out = env.regent(&["logout", &reg.addr]);
    assert!(
        out.success() && out.stdout().contains("Not logged in"),
        "{out}"
    );
}

#[test]
fn a_token_server_login_stores_the_offline_refresh_token_as_docker_would() {
    let env = TestEnv::new();
    let password = random_secret(24);
    let fake = FakeTokenRegistry::start(USER, &password, Mode::OAuth);
    let host = fake.host();
    let wrong = random_secret(24);
    let out = login(
        &env,
        &[&format!("http://{host}"), "-u", USER, "--password-stdin"],
        &wrong,
    );
    let text = failed(&out, &wrong);
    assert!(
        text.contains("the token server refused the username or password"),
        "{text}"
    );

    let out = login(
        &env,
        &[&format!("http://{host}"), "-u", USER, "--password-stdin"],
        &password,
    );
    assert!(out.success(), "{out}");
    assert!(out.stdout().contains("identity token"), "{out}");
    let refresh = fake.refresh_tokens();
    assert_eq!(refresh.len(), 1, "{refresh:?}");
    // Stored as docker stores an identity token: `<token>` and the refresh
    // token, never the password.
    let creds = env.get_ok(&host);
    assert_eq!(creds.username, "<token>");
    assert_eq!(creds.secret, refresh[0]);
    for (_, bytes) in env.all_files() {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&password),
            "the password was kept somewhere"
        );
    }
    // What was asked of the token server: the password grant, offline.
    let post = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.text().contains(&format!("username={USER}")))
        .expect("an OAuth2 request");
    let body = post.text();
    for want in [
        "grant_type=password",
        "access_type=offline",
        "client_id=regent",
        "service=fake-registry",
    ] {
        assert!(body.contains(want), "{want} not in the form");
    }
}

#[test]
fn a_token_server_without_oauth_is_asked_with_get() {
    let env = TestEnv::new();
    let password = random_secret(24);
    let fake = FakeTokenRegistry::start(USER, &password, Mode::GetOnly);
    let host = fake.host();
    let out = login(
        &env,
        &[
            &format!("http://{host}"),
            "-u",
            USER,
            "--password-stdin",
            "--json",
        ],
        &password,
    );
    assert!(out.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.stdout().trim()).unwrap();
    assert_eq!(v["checked"], "bearer-get");
    assert_eq!(v["identity_token"], false);
    let creds = env.get_ok(&host);
    assert_eq!(
        (creds.username.as_str(), creds.secret.as_str()),
        (USER, password.as_str())
    );
    let get = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "GET" && r.path.starts_with("/token?"))
        .expect("a GET to the token server");
    assert!(
        get.path.contains("offline_token=true") && get.path.contains(&format!("account={USER}"))
    );
}

#[test]
fn each_error_class_names_the_registry_and_the_next_step() {
    let env = TestEnv::new();
    let password = random_secret(24);

    // Not a registry: /v2/ is a 404 page.
    let web = HttpFake::start(|_| Some(Response::new(404, "text/html", "<h1>nope</h1>")));
    let out = login(
        &env,
        &[
            &format!("http://{}", web.addr),
            "-u",
            USER,
            "--password-stdin",
        ],
        &password,
    );
    let text = failed(&out, &password);
    assert!(
        text.contains("is not a registry") && text.contains("HTTP 404"),
        "{text}"
    );

    // Unreachable: nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = login(
        &env,
        &[
            &format!("http://127.0.0.1:{port}"),
            "-u",
            USER,
            "--password-stdin",
        ],
        &password,
    );
    let text = failed(&out, &password);
    assert!(
        text.contains("cannot reach it") && text.contains("refused"),
        "{text}"
    );

    // Rate limited, with when to try again.
    let throttled = FakeTokenRegistry::start(USER, &password, Mode::Throttled(30));
    let out = login(
        &env,
        &[
            &format!("http://{}", throttled.host()),
            "-u",
            USER,
            "--password-stdin",
        ],
        &password,
    );
    let text = failed(&out, &password);
    assert!(
        text.contains("rate limited") && text.contains("try again in 30s"),
        "{text}"
    );

    // A token server on plain http elsewhere: the password is not sent.
    let rogue = HttpFake::start(|_| {
        Some(Response::new(401, "application/json", "{}").with_header(
            "WWW-Authenticate",
            "Bearer realm=\"http://auth.example.invalid/token\",service=\"x\"",
        ))
    });
    let out = login(
        &env,
        &[
            &format!("http://{}", rogue.addr),
            "-u",
            USER,
            "--password-stdin",
        ],
        &password,
    );
    let text = failed(&out, &password);
    assert!(text.contains("nothing was sent"), "{text}");
    assert!(
        rogue
            .requests()
            .iter()
            .all(|r| !r.text().contains(&password))
    );

    // TLS: a plain-HTTP server asked over https://.
    let out = login(
        &env,
        &[
            &format!("https://{}", web.addr),
            "-u",
            USER,
            "--password-stdin",
        ],
        &password,
    );
    let text = failed(&out, &password);
    assert!(
        text.contains("TLS failed") && text.contains("--ca-file"),
        "{text}"
    );

    // Nothing of it was stored.
    let ls = env.regent(&["ls", "--json"]);
    assert!(ls.success(), "{ls}");
    assert_eq!(ls.stdout().trim(), "[]", "{ls}");
}

#[test]
fn a_password_on_the_command_line_is_refused_unechoed() {
    let env = TestEnv::new();
    let secret = random_secret(24);
    let inline = format!("--password={secret}");
    // A password may start with `-`, as a random one here sometimes does.
    let hyphen = format!("-J{secret}");
    for args in [
        ["login", "ghcr.io", "-u", USER, "-p", secret.as_str()].as_slice(),
        ["login", "ghcr.io", "-u", USER, inline.as_str()].as_slice(),
        ["login", "ghcr.io", "-u", USER, "-p", hyphen.as_str()].as_slice(),
    ] {
        let out = env.regent(args);
        let text = failed(&out, &secret);
        assert!(text.contains("--password-stdin"), "{text}");
    }
    // No terminal and no --password-stdin: says how.
    let out = env.regent(&["login", "ghcr.io", "-u", USER]);
    let text = failed(&out, &secret);
    assert!(text.contains("--password-stdin"), "{text}");
    let out = env.regent(&["login", "ghcr.io/Bad/Name", "-u", USER]);
    let text = failed(&out, &secret);
    assert!(text.contains("lower-case"), "{text}");
}

fn verify(env: &TestEnv, args: &[&str]) -> Outcome {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    env.regent(&all)
}

#[test]
fn verify_shows_the_stored_identity_token_to_the_registry_and_reports_each_scope() {
    let env = TestEnv::new();
    let password = random_secret(24);
    let fake = FakeTokenRegistry::start(USER, &password, Mode::OAuth);
    let host = format!("http://{}", fake.host());
    let out = login(&env, &[&host, "-u", USER, "--password-stdin"], &password);
    assert!(out.success(), "{out}");
    let before = fake.requests().len();

    // The registry alone: the stored identity token still works.
    let out = verify(&env, &[&host, "--json"]);
    assert!(out.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.stdout().trim()).unwrap();
    assert_eq!(v["checked"], "bearer-refresh");
    assert_eq!(v["username"], "<token>");
    assert_eq!(v["pull"], serde_json::Value::Null);
    let refresh = &fake.refresh_tokens()[0];
    assert!(
        fake.requests()[before..]
            .iter()
            .any(|r| r.text().contains("grant_type=refresh_token")
                && r.text().contains(&format!("refresh_token={refresh}"))),
        "the identity token was not traded"
    );
    assert!(!out.stdout().contains(refresh.as_str()) && !out.stderr().contains(refresh.as_str()));

    // An image: pull granted, push refused, and the exit status says so.
    let out = verify(&env, &[&format!("{host}/team/app:1.0"), "--push", "--json"]);
    assert_eq!(out.code(), Some(1), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.stdout().trim()).unwrap();
    assert_eq!(
        (v["pull"].as_str(), v["push"].as_str()),
        (Some("granted"), Some("denied"))
    );
    assert_eq!(v["ok"], false);
    let out = verify(&env, &[&format!("{host}/team/app")]);
    assert!(out.success(), "{out}");
    assert!(out.stdout().contains("pull team/app: granted"), "{out}");

    // Push granted: an upload was started, then cancelled.
    let out = verify(&env, &[&format!("{host}/team/ci"), "--push"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout().contains("push team/ci: granted"), "{out}");
    assert_eq!(fake.cancelled_uploads(), 1);

    // Not allowed at all: denied.
    let out = verify(&env, &[&format!("{host}/other/thing")]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stdout().contains("pull other/thing: denied"), "{out}");
}

#[test]
fn verify_finds_a_wrong_stored_password_and_a_missing_login() {
    let env = TestEnv::new();
    let password = random_secret(24);
    let Some(reg) = registry(
        "verify_finds_a_wrong_stored_password_and_a_missing_login",
        &env,
        &password,
    ) else {
        return;
    };
    let out = verify(&env, &[&reg.addr]);
    let text = failed(&out, &password);
    assert!(
        text.contains("no credential for") && text.contains("regent login"),
        "{text}"
    );

    // A stored login the registry no longer takes (the password changed).
    let stale = random_secret(24);
    let out = env.helper(&["store"], TestEnv::store_json(&reg.addr, USER, &stale));
    assert!(out.success(), "{out}");
    let out = verify(&env, &[&reg.addr]);
    let text = failed(&out, &stale);
    assert!(text.contains("refused the username or password"), "{text}");

    // The right one: the real registry takes it, and a push to a new
    // repository is allowed (an upload started and cancelled, nothing kept).
    let out = env.helper(&["store"], TestEnv::store_json(&reg.addr, USER, &password));
    assert!(out.success(), "{out}");
    let out = verify(
        &env,
        &[&format!("{}/team/fresh", reg.addr), "--push", "--json"],
    );
    assert!(out.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.stdout().trim()).unwrap();
    assert_eq!(v["checked"], "basic");
    assert_eq!(
        (v["pull"].as_str(), v["push"].as_str()),
        (Some("no-such-repository"), Some("granted"))
    );
    assert!(reg.tags("team/fresh").is_empty());
}

#[test]
fn a_registry_with_a_private_ca_needs_its_certificate() {
    let test = "a_registry_with_a_private_ca_needs_its_certificate";
    let env = TestEnv::new();
    let password = random_secret(24);
    if !Path::new("/usr/bin/docker-registry").exists() {
        skip(
            test,
            "docker-registry is not installed (apt-get install docker-registry)",
        );
        return;
    }
    let ca = match regent_tests::tls::TestCa::new(&env.root.join("ca")) {
        Ok(ca) => ca,
        Err(why) => {
            skip(test, &format!("cannot make a CA with openssl: {why}"));
            return;
        }
    };
    let reg = Registry::start_tls(
        &env.root.join("registry"),
        USER,
        &password,
        (&ca.cert, &ca.key),
    )
    .unwrap_or_else(|e| panic!("the TLS registry did not start: {e}"));
    let url = format!("https://{}", reg.addr);
    // Not trusted: the error says which option fixes it, nothing stored.
    let out = login(&env, &[&url, "-u", USER, "--password-stdin"], &password);
    let text = failed(&out, &password);
    assert!(
        text.contains("TLS failed") && text.contains("--ca-file"),
        "{text}"
    );
    assert_eq!(env.helper(&["get"], &reg.addr).out_trim(), NOT_FOUND);
    // Trusted with --ca-file: checked over TLS and stored.
    let ca_file = ca.ca_pem.to_str().unwrap();
    let out = login(
        &env,
        &[&url, "-u", USER, "--password-stdin", "--ca-file", ca_file],
        &password,
    );
    assert!(out.success(), "{out}");
    assert!(
        !out.stderr().contains("http://"),
        "fell back to plain HTTP: {out}"
    );
    assert_eq!(env.get_ok(&reg.addr).secret, password);
    // And verify takes it too.
    let out = verify(&env, &[&url, "--ca-file", ca_file]);
    assert!(out.success(), "{out}");
}

#[test]
fn a_real_registry_in_token_mode_takes_the_login_and_judges_each_scope() {
    use regent_tests::fakes::distribution_token::{ISSUER, SERVICE, TokenServer};
    let test = "a_real_registry_in_token_mode_takes_the_login_and_judges_each_scope";
    let env = TestEnv::new();
    let password = random_secret(24);
    if !Path::new("/usr/bin/docker-registry").exists() {
        skip(
            test,
            "docker-registry is not installed (apt-get install docker-registry)",
        );
        return;
    }
    let tokens = match TokenServer::start(&env.root.join("token-server"), USER, &password) {
        Ok(t) => t,
        Err(why) => {
            skip(
                test,
                &format!("cannot make the token server's key with openssl: {why}"),
            );
            return;
        }
    };
    let reg = Registry::start_token_auth(
        &env.root.join("registry"),
        &tokens.realm(),
        SERVICE,
        ISSUER,
        &tokens.cert,
    )
    .unwrap_or_else(|e| panic!("the token-mode registry did not start: {e}"));
    let host = format!("http://{}", reg.addr);

    let wrong = random_secret(24);
    let out = login(&env, &[&host, "-u", USER, "--password-stdin"], &wrong);
    let text = failed(&out, &wrong);
    assert!(
        text.contains("the token server refused the username or password"),
        "{text}"
    );

    // The registry itself verifies the token server's JWT at /v2/.
    let out = login(
        &env,
        &[&host, "-u", USER, "--password-stdin", "--json"],
        &password,
    );
    assert!(out.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.stdout().trim()).unwrap();
    assert_eq!(
        (v["checked"].as_str(), v["identity_token"].as_bool()),
        (Some("bearer-oauth"), Some(true))
    );
    let creds = env.get_ok(&reg.addr);
    assert_eq!(creds.username, "<token>");
    assert_eq!(creds.secret, tokens.refresh_tokens()[0]);

    // verify trades the identity token, and the registry judges the
    // scopes the token server granted.
    let out = verify(&env, &[&format!("{host}/team/app"), "--push", "--json"]);
    assert!(out.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.stdout().trim()).unwrap();
    assert_eq!(v["checked"], "bearer-refresh");
    assert_eq!(
        (v["pull"].as_str(), v["push"].as_str()),
        (Some("no-such-repository"), Some("granted"))
    );
    let out = verify(&env, &[&format!("{host}/other/app"), "--json"]);
    assert_eq!(out.code(), Some(1), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.stdout().trim()).unwrap();
    assert_eq!(v["pull"], "denied");
    let grants = tokens.grants();
    assert!(grants.iter().any(|g| g == "refresh_token"), "{grants:?}");
}

#[test]
fn a_token_mode_registry_behind_tls_with_a_private_ca() {
    use regent_tests::fakes::distribution_token::{ISSUER, SERVICE, TokenServer};
    let test = "a_token_mode_registry_behind_tls_with_a_private_ca";
    let env = TestEnv::new();
    let password = random_secret(24);
    if !Path::new("/usr/bin/docker-registry").exists() {
        skip(
            test,
            "docker-registry is not installed (apt-get install docker-registry)",
        );
        return;
    }
    let (tokens, ca) = match (
        TokenServer::start(&env.root.join("token-server"), USER, &password),
        regent_tests::tls::TestCa::new(&env.root.join("ca")),
    ) {
        (Ok(t), Ok(ca)) => (t, ca),
        (Err(why), _) | (_, Err(why)) => {
            skip(test, &format!("openssl: {why}"));
            return;
        }
    };
    let reg = Registry::start_token_auth_with(
        &env.root.join("registry"),
        &tokens.realm(),
        SERVICE,
        ISSUER,
        &tokens.cert,
        Some((&ca.cert, &ca.key)),
    )
    .unwrap_or_else(|e| panic!("the TLS token-mode registry did not start: {e}"));
    let url = format!("https://{}", reg.addr);
    let out = login(&env, &[&url, "-u", USER, "--password-stdin"], &password);
    let text = failed(&out, &password);
    assert!(
        text.contains("TLS failed") && text.contains("--ca-file"),
        "{text}"
    );
    let ca_file = ca.ca_pem.to_str().unwrap();
    let out = login(
        &env,
        &[
            &url,
            "-u",
            USER,
            "--password-stdin",
            "--ca-file",
            ca_file,
            "--json",
        ],
        &password,
    );
    assert!(out.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.stdout().trim()).unwrap();
    assert_eq!(v["api"], url.as_str());
    assert_eq!(v["identity_token"], true);
    assert_eq!(env.get_ok(&reg.addr).secret, tokens.refresh_tokens()[0]);
}
