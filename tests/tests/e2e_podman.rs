//! End to end with the real podman, buildah and skopeo: they find regent
//! through the `credential-helpers` drop-in `regent setup podman` writes,
//! log in (`get`, then `store`), push, pull, copy and inspect through `get`,
//! and log out through `erase`. See `regent_tests::e2e`.

use std::fs;

use regent_tests::e2e::{self, BUILDAH, E2e, PODMAN, SKOPEO, USER};

/// Words podman, buildah and skopeo use when a registry refuses credentials.
const AUTH_FAILED: &[&str] = &[
    "unauthorized",
    "authentication required",
    "invalid username/password",
    "requested access to the resource is denied",
];

/// Logs in with `tool` and checks: `get` first, then `store`, the secret in
/// regent and in no auth file.
fn login_ok(e: &E2e, tool: &str, addr: &str, password: &str) {
    let m = e.mark();
    let out = e.login(tool, addr, password);
    e.ok(&out, &format!("{tool} login"));
    assert!(out.stdout().contains("Login Succeeded"), "{out}");
    let calls = e.calls_since(&m);
    assert!(
        calls.first().is_some_and(|c| c.is("get", addr)),
        "{tool} login starts with `get {addr}`: {calls:?}\n{}",
        e.diagnostics()
    );
    e.assert_stored(&m, addr, &format!("{tool} login"));
    e.assert_holds(addr, USER, password);
    e.assert_password_not_in_client_files(addr, password);
}

/// Logs out with `tool` and checks the `erase` and that regent holds nothing.
fn logout_ok(e: &E2e, tool: &str, addr: &str) {
    let m = e.mark();
    let out = e.client(tool, &["logout", addr], None);
    e.ok(&out, &format!("{tool} logout"));
    let calls = e.calls_since(&m);
    assert!(
        calls.iter().any(|c| c.is("erase", addr)),
        "{tool} logout did not ask the helper `erase {addr}`: {calls:?}\n{}",
        e.diagnostics()
    );
    e.assert_holds_nothing(addr);
}

#[test]
fn e2e_podman_login_push_pull_logout() {
    let e = E2e::new("e2e_podman_login_push_pull_logout");
    if !e.podman_works() {
        return;
    }
    let Some(reg) = e.registry() else { return };
    let addr = reg.addr.as_str();
    let image = reg.image("e2e/podman", "1");
    e.podman_import(&image);

    // Before any login: podman asks the helper, which knows nothing.
    let m = e.mark();
    let out = e.podman(&["push", &image]);
    e.fails_with(&out, "podman push before login", AUTH_FAILED);
    assert!(
        e.calls_since(&m).iter().any(|c| c.is("get", addr)),
        "podman push did not ask the helper `get {addr}`\n{}",
        e.diagnostics()
    );

    login_ok(&e, "podman", addr, &reg.password);
    let out = e.podman(&["login", "--get-login", addr]);
    e.ok(&out, "podman login --get-login");
    assert_eq!(out.out_trim(), USER, "{out}");

    let m = e.mark();
    let out = e.podman(&["push", &image]);
    e.ok(&out, "podman push");
    e.assert_got_credentials(&m, addr, "podman push");
    e.assert_no_store(&m, "podman push");
    assert_eq!(reg.tags("e2e/podman"), ["1"]);

    let out = e.podman(&["rmi", &image]);
    e.ok(&out, "podman rmi");
    let m = e.mark();
    let out = e.podman(&["pull", &image]);
    e.ok(&out, "podman pull");
    e.assert_got_credentials(&m, addr, "podman pull");
    let out = e.podman(&["image", "exists", &image]);
    e.ok(&out, "podman image exists after the pull");

    logout_ok(&e, "podman", addr);
    let out = e.podman(&["rmi", &image]);
    e.ok(&out, "podman rmi");
    let m = e.mark();
    let out = e.podman(&["pull", &image]);
    e.fails_with(&out, "podman pull after logout", AUTH_FAILED);
    assert!(
        e.calls_since(&m).iter().any(|c| c.is("get", addr)),
        "podman pull after logout did not ask the helper\n{}",
        e.diagnostics()
    );
}

#[test]
fn e2e_podman_wrong_password_fails_and_is_not_stored() {
    let e = E2e::new("e2e_podman_wrong_password_fails_and_is_not_stored");
    if !e.podman_works() {
        return;
    }
    let Some(reg) = e.registry() else { return };
    let addr = reg.addr.as_str();
    let image = reg.image("e2e/wrong", "1");

    let m = e.mark();
    let out = e.login("podman", addr, "not-the-password");
    e.fails_with(&out, "podman login with a wrong password", AUTH_FAILED);
    e.assert_no_store(&m, "podman login with a wrong password");
    e.assert_holds_nothing(addr);

    login_ok(&e, "podman", addr, &reg.password);
    e.podman_import(&image);
    let out = e.podman(&["push", &image]);
    e.ok(&out, "podman push");

    // A wrong secret in regent: podman must use it, and fail.
    e.env.store_ok(addr, USER, "a-wrong-secret-in-regent");
    let out = e.podman(&["rmi", &image]);
    e.ok(&out, "podman rmi");
    let m = e.mark();
    let out = e.podman(&["pull", &image]);
    e.fails_with(&out, "podman pull with regent's wrong secret", AUTH_FAILED);
    e.assert_got_credentials(&m, addr, "podman pull with regent's wrong secret");
}

#[test]
fn e2e_buildah_login_push_logout() {
    let e = E2e::new("e2e_buildah_login_push_logout");
    if let Err(why) = e2e::require(&[BUILDAH]) {
        return e2e::skip(e.name, &why);
    }
    let Some(reg) = e.registry() else { return };
    let addr = reg.addr.as_str();
    let image = reg.image("e2e/buildah", "1");

    login_ok(&e, "buildah", addr, &reg.password);

    // An image made by buildah alone: scratch plus one file.
    let out = e.buildah(&["from", "--name", "e2e-ctr", "scratch"]);
    e.ok(&out, "buildah from scratch");
    let hello = e.dir.join("tiny").join("hello.txt");
    let out = e.buildah(&["copy", "e2e-ctr", &hello.to_string_lossy(), "/hello.txt"]);
    e.ok(&out, "buildah copy");
    let out = e.buildah(&["commit", "e2e-ctr", &image]);
    e.ok(&out, "buildah commit");

    let m = e.mark();
    let out = e.buildah(&["push", &image]);
    e.ok(&out, "buildah push");
    e.assert_got_credentials(&m, addr, "buildah push");
    e.assert_no_store(&m, "buildah push");
    assert_eq!(reg.tags("e2e/buildah"), ["1"]);

    logout_ok(&e, "buildah", addr);
    let m = e.mark();
    let out = e.buildah(&[
        "push",
        &image,
        &format!("docker://{}", reg.image("e2e/buildah", "2")),
    ]);
    e.fails_with(&out, "buildah push after logout", AUTH_FAILED);
    assert!(
        e.calls_since(&m).iter().any(|c| c.is("get", addr)),
        "buildah push after logout did not ask the helper\n{}",
        e.diagnostics()
    );
    assert_eq!(reg.tags("e2e/buildah"), ["1"]);
    let _ = e.buildah(&["rm", "e2e-ctr"]);
}

#[test]
fn e2e_skopeo_login_copy_inspect_logout() {
    let e = E2e::new("e2e_skopeo_login_copy_inspect_logout");
    if let Err(why) = e2e::require(&[SKOPEO]) {
        return e2e::skip(e.name, &why);
    }
    let Some(reg) = e.registry() else { return };
    let addr = reg.addr.as_str();
    let src = format!("docker://{}", reg.image("e2e/skopeo", "1"));

    login_ok(&e, "skopeo", addr, &reg.password);

    // Push: a layer tarball straight to the registry.
    let m = e.mark();
    let tarball = format!("tarball:{}", e.tiny_tar.display());
    let out = e.skopeo(&["copy", &tarball, &src]);
    e.ok(&out, "skopeo copy tarball: -> registry");
    e.assert_got_credentials(&m, addr, "skopeo copy to the registry");
    assert_eq!(reg.tags("e2e/skopeo"), ["1"]);

    let m = e.mark();
    let out = e.skopeo(&["inspect", &src]);
    e.ok(&out, "skopeo inspect");
    let v: serde_json::Value = serde_json::from_str(&out.stdout())
        .unwrap_or_else(|err| panic!("skopeo inspect printed no JSON ({err})\n{out}"));
    assert!(
        v["Name"]
            .as_str()
            .is_some_and(|n| n.ends_with("e2e/skopeo")),
        "{v}"
    );
    e.assert_got_credentials(&m, addr, "skopeo inspect");

    // Registry to registry, then registry to a local directory.
    let m = e.mark();
    let dst = format!("docker://{}", reg.image("e2e/skopeo", "copy"));
    let out = e.skopeo(&["copy", &src, &dst]);
    e.ok(&out, "skopeo copy registry -> registry");
    e.assert_got_credentials(&m, addr, "skopeo copy registry -> registry");
    let mut tags = reg.tags("e2e/skopeo");
    tags.sort();
    assert_eq!(tags, ["1", "copy"]);
    let out_dir = e.dir.join("skopeo-dir");
    let m = e.mark();
    let out = e.skopeo(&["copy", &src, &format!("dir:{}", out_dir.display())]);
    e.ok(&out, "skopeo copy registry -> dir:");
    e.assert_got_credentials(&m, addr, "skopeo copy registry -> dir:");
    assert!(
        fs::metadata(out_dir.join("manifest.json")).is_ok(),
        "skopeo wrote no manifest.json"
    );
    e.assert_no_store(&m, "skopeo copy");

    logout_ok(&e, "skopeo", addr);
    let m = e.mark();
    let out = e.skopeo(&["inspect", &src]);
    e.fails_with(&out, "skopeo inspect after logout", AUTH_FAILED);
    assert!(
        e.calls_since(&m).iter().any(|c| c.is("get", addr)),
        "skopeo inspect after logout did not ask the helper\n{}",
        e.diagnostics()
    );
}

/// podman, buildah and skopeo share one login: made with one, used by all.
#[test]
fn e2e_podman_login_serves_buildah_and_skopeo() {
    let e = E2e::new("e2e_podman_login_serves_buildah_and_skopeo");
    if let Err(why) = e2e::require(&[PODMAN, BUILDAH, SKOPEO]) {
        return e2e::skip(e.name, &why);
    }
    if !e.podman_works() {
        return;
    }
    let Some(reg) = e.registry() else { return };
    let addr = reg.addr.as_str();
    let image = reg.image("e2e/shared", "1");

    login_ok(&e, "podman", addr, &reg.password);
    e.podman_import(&image);
    let m = e.mark();
    let out = e.buildah(&["push", &image]);
    e.ok(&out, "buildah push of podman's image");
    e.assert_got_credentials(&m, addr, "buildah push with podman's login");
    let m = e.mark();
    let out = e.skopeo(&["inspect", &format!("docker://{image}")]);
    e.ok(&out, "skopeo inspect");
    e.assert_got_credentials(&m, addr, "skopeo inspect with podman's login");
    logout_ok(&e, "skopeo", addr);
    let out = e.podman(&["login", "--get-login", addr]);
    assert!(
        !out.success(),
        "podman still logged in after skopeo logout\n{out}\n{}",
        e.diagnostics()
    );
}

// ---- podman, when regent cannot store ----

/// With a store that cannot open (the keyring with no Secret Service), a
/// podman login fails with regent's reason, and the password lands in no
/// plaintext file.
#[test]
fn e2e_podman_login_fails_with_regents_reason_when_regent_cannot_store() {
    let mut e = E2e::new("e2e_podman_login_fails_with_regents_reason_when_regent_cannot_store");
    if !e.podman_works() {
        return;
    }
    let Some(reg) = e.registry() else { return };
    e.env.set_env("REGENT_STORE", Some("keyring"));
    e.env.set_env("DBUS_SESSION_BUS_ADDRESS", None::<&str>);
    let addr = reg.addr.as_str();
    let out = e.login("podman", addr, &reg.password);
    assert!(
        !out.success() && !out.stdout().contains("Login Succeeded"),
        "{out}\n{}",
        e.diagnostics()
    );
    assert!(
        out.stderr().contains("keyring store is not usable"),
        "podman says regent's reason\n{out}"
    );
    let encoded = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:{}", reg.password),
    );
    for (path, text) in e.env.all_files() {
        let text = String::from_utf8_lossy(&text);
        assert!(
            !text.contains(&reg.password) && !text.contains(&encoded),
            "the password is in {}",
            path.display()
        );
    }
}

#[test]
fn e2e_podman_pushes_and_pulls_with_the_identity_token_of_regent_login() {
    let e = E2e::new("e2e_podman_pushes_and_pulls_with_the_identity_token_of_regent_login");
    if !e.podman_works() {
        return;
    }
    let password = regent_tests::random_secret(20);
    let Some((tokens, reg)) = e.token_registry(&password) else {
        return;
    };
    let addr = reg.addr.as_str();
    let image = reg.image("team/podman", "1");
    e.podman_import(&image);
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
    e.assert_holds(addr, "<token>", &refresh[0]);

    let before = tokens.grants().len();
    let m = e.mark();
    let out = e.podman(&["push", &image]);
    e.ok(&out, "podman push with the identity token");
    e.assert_got_credentials(&m, addr, "podman push");
    let out = e.podman(&["rmi", &image]);
    e.ok(&out, "podman rmi");
    let out = e.podman(&["pull", &image]);
    e.ok(&out, "podman pull with the identity token");
    let grants = tokens.grants()[before..].to_vec();
    assert!(
        grants.iter().any(|g| g == "refresh_token"),
        "podman did not trade the identity token: {grants:?}"
    );
    assert!(
        !grants.iter().any(|g| g == "password"),
        "podman sent a password: {grants:?}"
    );
}
