//! End to end across clients: a login made with docker serves podman (which
//! never reads docker's `credsStore`, only the `credential-helpers` drop-in),
//! and the reverse. See `regent_tests::e2e`.

use regent_tests::e2e::{E2e, USER};

#[test]
fn e2e_docker_login_serves_podman_pull() {
    let e = E2e::new("e2e_docker_login_serves_podman_pull");
    if !e.podman_works() {
        return;
    }
    let Some(reg) = e.registry() else { return };
    let Some(d) = e.dockerd(&reg) else { return };
    let addr = reg.addr.as_str();
    let image = reg.image("e2e/from-docker", "1");

    let m = e.mark();
    let out = e.docker_login(&d, addr, &reg.password);
    e.ok(&out, "docker login");
    e.assert_stored(&m, addr, "docker login");
    let tar = e.tiny_tar.to_string_lossy().into_owned();
    let out = e.docker(&d, &["import", &tar, &image], None);
    e.ok(&out, "docker import");
    let out = e.docker(&d, &["push", &image], None);
    e.ok(&out, "docker push");

    // podman has no login of its own: its auth file is empty.
    let m = e.mark();
    let out = e.podman(&["login", "--get-login", addr]);
    e.ok(&out, "podman login --get-login (docker's login)");
    assert_eq!(out.out_trim(), USER, "{out}");
    let out = e.podman(&["pull", &image]);
    e.ok(&out, "podman pull with docker's login");
    e.assert_got_credentials(&m, addr, "podman pull with docker's login");
    e.assert_no_store(&m, "podman pull");
    let out = e.podman(&["image", "exists", &image]);
    e.ok(&out, "podman image exists");
    e.assert_password_not_in_client_files(addr, &reg.password);

    // podman logout erases docker's login too.
    let m = e.mark();
    let out = e.podman(&["logout", addr]);
    e.ok(&out, "podman logout");
    assert!(
        e.calls_since(&m).iter().any(|c| c.is("erase", addr)),
        "podman logout did not ask the helper `erase {addr}`\n{}",
        e.diagnostics()
    );
    e.assert_holds_nothing(addr);
    let out = e.docker(&d, &["rmi", &image], None);
    e.ok(&out, "docker rmi");
    let out = e.docker(&d, &["pull", &image], None);
    e.fails_with(
        &out,
        "docker pull after podman logout",
        &["no basic auth credentials", "unauthorized"],
    );
}

#[test]
fn e2e_podman_login_serves_docker_pull() {
    let e = E2e::new("e2e_podman_login_serves_docker_pull");
    if !e.podman_works() {
        return;
    }
    let Some(reg) = e.registry() else { return };
    let Some(d) = e.dockerd(&reg) else { return };
    let addr = reg.addr.as_str();
    let image = reg.image("e2e/from-podman", "1");

    let m = e.mark();
    let out = e.login("podman", addr, &reg.password);
    e.ok(&out, "podman login");
    e.assert_stored(&m, addr, "podman login");
    e.podman_import(&image);
    let out = e.podman(&["push", &image]);
    e.ok(&out, "podman push");

    // docker never logged in: config.json has no auths entry, yet the pull
    // authenticates with podman's login through credsStore.
    let config = e.docker_config_json();
    assert!(config["auths"].get(addr).is_none(), "{config}");
    let m = e.mark();
    let out = e.docker(&d, &["pull", &image], None);
    e.ok(&out, "docker pull with podman's login");
    e.assert_got_credentials(&m, addr, "docker pull with podman's login");
    e.assert_no_store(&m, "docker pull");
    let out = e.docker(&d, &["image", "inspect", &image], None);
    e.ok(&out, "docker image inspect");

    // docker logout erases podman's login too.
    let m = e.mark();
    let out = e.docker(&d, &["logout", addr], None);
    e.ok(&out, "docker logout");
    assert!(
        e.calls_since(&m).iter().any(|c| c.is("erase", addr)),
        "docker logout did not ask the helper `erase {addr}`\n{}",
        e.diagnostics()
    );
    e.assert_holds_nothing(addr);
    let out = e.podman(&["rmi", &image]);
    e.ok(&out, "podman rmi");
    let out = e.podman(&["pull", &image]);
    e.fails_with(
        &out,
        "podman pull after docker logout",
        &["unauthorized", "authentication required"],
    );
}
