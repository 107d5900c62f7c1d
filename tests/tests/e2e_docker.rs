//! End to end with the real docker CLI and a private dockerd: `docker login`
//! stores through regent, `push`/`pull` authenticate through `get`, a wrong
//! password fails, `docker logout` erases, and the classic builder asks
//! `list` then `get` per key. See `regent_tests::e2e`.

use std::collections::BTreeSet;
use std::fs;

use regent_tests::e2e::{E2e, USER};

/// Words the docker CLI and engine use when a registry refuses credentials.
const AUTH_FAILED: &[&str] = &[
    "unauthorized",
    "authentication required",
    "no basic auth credentials",
    "incorrect username or password",
];

fn tar(e: &E2e) -> String {
    e.tiny_tar.to_string_lossy().into_owned()
}

#[test]
fn e2e_docker_login_push_pull_logout() {
    let e = E2e::new("e2e_docker_login_push_pull_logout");
    let Some(reg) = e.registry() else { return };
    let Some(d) = e.dockerd(&reg) else { return };
    let addr = reg.addr.as_str();
    let image = reg.image("e2e/docker", "1");

    let out = e.docker(&d, &["import", &tar(&e), &image], None);
    e.ok(&out, "docker import");

    // Before any login: docker asks the helper, which knows nothing.
    let m = e.mark();
    let out = e.docker(&d, &["push", &image], None);
    e.fails_with(&out, "docker push before login", AUTH_FAILED);
    assert!(
        e.calls_since(&m).iter().any(|c| c.is("get", addr)),
        "docker push did not ask the helper `get {addr}`\n{}",
        e.diagnostics()
    );
    assert!(
        e.served_since(&m)
            .iter()
            .any(|s| s.request == "get" && s.response == "not-found"),
        "the agent did not answer not-found before the login\n{}",
        e.diagnostics()
    );

    // docker login: `store` through the helper; config.json keeps no secret.
    let m = e.mark();
    let out = e.docker_login(&d, addr, &reg.password);
    e.ok(&out, "docker login");
    assert!(out.stdout().contains("Login Succeeded"), "{out}");
    e.assert_stored(&m, addr, "docker login");
    e.assert_holds(addr, USER, &reg.password);
    e.assert_password_not_in_client_files(addr, &reg.password);
    let config = e.docker_config_json();
    assert_eq!(config["credsStore"], "regent", "{config}");
    assert!(
        config["auths"].get(addr).is_some(),
        "docker records the login (without secrets) under auths: {config}"
    );

    // docker push: one `get` for the registry, credentials from the agent.
    let m = e.mark();
    let out = e.docker(&d, &["push", &image], None);
    e.ok(&out, "docker push");
    e.assert_got_credentials(&m, addr, "docker push");
    e.assert_no_store(&m, "docker push");
    assert_eq!(
        reg.tags("e2e/docker"),
        ["1"],
        "the registry has the pushed tag"
    );

    // docker pull of the removed image: `get` again.
    let out = e.docker(&d, &["rmi", &image], None);
    e.ok(&out, "docker rmi");
    let m = e.mark();
    let out = e.docker(&d, &["pull", &image], None);
    e.ok(&out, "docker pull");
    e.assert_got_credentials(&m, addr, "docker pull");
    let out = e.docker(&d, &["image", "inspect", &image], None);
    e.ok(&out, "docker image inspect after the pull");

    // docker logout: `erase`, for the key as typed (and its variants).
    let m = e.mark();
    let out = e.docker(&d, &["logout", addr], None);
    e.ok(&out, "docker logout");
    let calls = e.calls_since(&m);
    assert!(
        calls.iter().any(|c| c.is("erase", addr)),
        "docker logout did not ask the helper `erase {addr}`: {calls:?}\n{}",
        e.diagnostics()
    );
    assert!(
        calls
            .iter()
            .filter(|c| c.verb == "erase")
            .all(|c| c.server.contains(addr)),
        "docker logout erased another registry: {calls:?}"
    );
    e.assert_holds_nothing(addr);
    let config = e.docker_config_json();
    assert!(
        config["auths"].get(addr).is_none(),
        "docker logout leaves no auths entry: {config}"
    );

    // And the registry refuses the next pull: nothing to authenticate with.
    let out = e.docker(&d, &["rmi", &image], None);
    e.ok(&out, "docker rmi");
    let m = e.mark();
    let out = e.docker(&d, &["pull", &image], None);
    e.fails_with(&out, "docker pull after logout", AUTH_FAILED);
    assert!(
        e.calls_since(&m).iter().any(|c| c.is("get", addr)),
        "docker pull after logout did not ask the helper\n{}",
        e.diagnostics()
    );
}

#[test]
fn e2e_docker_wrong_password_fails_and_is_not_stored() {
    let e = E2e::new("e2e_docker_wrong_password_fails_and_is_not_stored");
    let Some(reg) = e.registry() else { return };
    let Some(d) = e.dockerd(&reg) else { return };
    let addr = reg.addr.as_str();
    let image = reg.image("e2e/wrong", "1");

    // A wrong password: the login fails and the helper is never asked to store.
    let m = e.mark();
    let out = e.docker_login(&d, addr, "not-the-password");
    e.fails_with(&out, "docker login with a wrong password", AUTH_FAILED);
    e.assert_no_store(&m, "docker login with a wrong password");
    e.assert_holds_nothing(addr);

    // The right one works, and a push authenticates with it.
    let out = e.docker_login(&d, addr, &reg.password);
    e.ok(&out, "docker login");
    let out = e.docker(&d, &["import", &tar(&e), &image], None);
    e.ok(&out, "docker import");
    let out = e.docker(&d, &["push", &image], None);
    e.ok(&out, "docker push");

    // Replace the stored secret behind docker's back: docker must use what
    // regent serves, so the pull is refused.
    e.env.store_ok(addr, USER, "a-wrong-secret-in-regent");
    let out = e.docker(&d, &["rmi", &image], None);
    e.ok(&out, "docker rmi");
    let m = e.mark();
    let out = e.docker(&d, &["pull", &image], None);
    e.fails_with(&out, "docker pull with regent's wrong secret", AUTH_FAILED);
    e.assert_got_credentials(&m, addr, "docker pull with regent's wrong secret");
}

#[test]
fn e2e_docker_classic_build_lists_then_gets_each_key() {
    let e = E2e::new("e2e_docker_classic_build_lists_then_gets_each_key");
    let Some(reg) = e.registry() else { return };
    let Some(d) = e.dockerd(&reg) else { return };
    let addr = reg.addr.as_str();
    let base = reg.image("e2e/base", "1");

    let out = e.docker_login(&d, addr, &reg.password);
    e.ok(&out, "docker login");
    let out = e.docker(&d, &["import", &tar(&e), &base], None);
    e.ok(&out, "docker import");
    let out = e.docker(&d, &["push", &base], None);
    e.ok(&out, "docker push");
    let out = e.docker(&d, &["rmi", &base], None);
    e.ok(&out, "docker rmi");
    // A second login, for a registry the build never touches: the classic
    // builder still fetches it (it sends every credential to the engine).
    let other = "other-registry.e2e.example:5000";
    e.env.store_ok(other, "other-user", "other-secret");
    let listed: BTreeSet<String> = e.env.list_ok().into_keys().collect();
    assert_eq!(listed.len(), 2, "{listed:?}");

    let ctx = e.dir.join("build");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nLABEL org.regent.e2e=built\n"),
    )
    .unwrap();
    let m = e.mark();
    let out = e.run(
        e.cmd(E2e::docker_cli())
            .env("DOCKER_HOST", &d.host)
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-t", "e2e-built:1"])
            .arg(&ctx),
        None,
    );
    e.ok(&out, "DOCKER_BUILDKIT=0 docker build");

    // What the helper was asked: `list`, then one `get` per listed key.
    let calls = e.calls_since(&m);
    assert_eq!(
        calls.first().map(|c| c.verb.as_str()),
        Some("list"),
        "the classic builder starts with `list`: {calls:?}\n{}",
        e.diagnostics()
    );
    let got: BTreeSet<String> = calls[1..]
        .iter()
        .filter(|c| c.verb == "get")
        .map(|c| c.server.clone())
        .collect();
    assert_eq!(
        got, listed,
        "one `get` per listed key after `list`: {calls:?}"
    );
    assert!(
        calls[1..].iter().all(|c| c.verb == "get"),
        "only `get` after `list`: {calls:?}"
    );
    let served = e.served_since(&m);
    assert!(
        served.iter().any(|s| s.request == "list")
            && served
                .iter()
                .filter(|s| s.request == "get" && s.response == "credentials")
                .count()
                >= 2,
        "the agent served `list` and a `get` with credentials per key: {served:?}"
    );

    // What the engine did: pulled the FROM image with those credentials.
    let out = e.docker(
        &d,
        &[
            "image",
            "inspect",
            "--format",
            "{{index .Config.Labels \"org.regent.e2e\"}}",
            "e2e-built:1",
        ],
        None,
    );
    e.ok(&out, "docker image inspect e2e-built:1");
    assert_eq!(out.out_trim(), "built", "{out}");
    let out = e.docker(&d, &["image", "inspect", &base], None);
    e.ok(&out, "the FROM image was pulled from the registry");
}

#[test]
fn e2e_docker_pushes_and_pulls_with_the_identity_token_of_regent_login() {
    let e = E2e::new("e2e_docker_pushes_and_pulls_with_the_identity_token_of_regent_login");
    let password = regent_tests::random_secret(20);
    let Some((tokens, reg)) = e.token_registry(&password) else {
        return;
    };
    let Some(d) = e.dockerd(&reg) else { return };
    let addr = reg.addr.as_str();
    let image = reg.image("team/docker", "1");
    let out = e.docker(&d, &["import", &tar(&e), &image], None);
    e.ok(&out, "docker import");

    // `regent login` checks the password with the token server and keeps
    // the offline refresh token instead, as `docker login` would.
    let out = e.env.run(
        e.env.command(&e.env.bins.regent).args([
            "login",
            &format!("http://{addr}"),
            "-u",
            USER,
            "--password-stdin",
        ]),
        regent_tests::Input::Bytes(password.as_bytes()),
        regent_tests::DEFAULT_TIMEOUT,
    );
    e.ok(&out, "regent login");
    let refresh = tokens.refresh_tokens();
    assert_eq!(refresh.len(), 1, "{refresh:?}");
    e.assert_holds(addr, "<token>", &refresh[0]);

    // docker gets `<token>` from the helper and trades it at the token
    // server itself: the push and the pull never see the password.
    let before = tokens.grants().len();
    let m = e.mark();
    let out = e.docker(&d, &["push", &image], None);
    e.ok(&out, "docker push with the identity token");
    e.assert_got_credentials(&m, addr, "docker push");
    let out = e.docker(&d, &["rmi", &image], None);
    e.ok(&out, "docker rmi");
    let out = e.docker(&d, &["pull", &image], None);
    e.ok(&out, "docker pull with the identity token");
    let grants = tokens.grants()[before..].to_vec();
    assert!(
        grants.iter().any(|g| g == "refresh_token"),
        "docker did not trade the identity token: {grants:?}"
    );
    assert!(
        !grants.iter().any(|g| g == "password"),
        "docker sent a password: {grants:?}"
    );
}
