//! Registry-key normalisation as clients see it (docs/protocol.md C18, C19):
//! a login made by docker is found by podman and vice versa, and `list`
//! returns the form that was stored last.

use regent_tests::TestEnv;

const HUB_FORMS: &[&str] = &[
    "https://index.docker.io/v1/",
    "https://index.docker.io/v1",
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "https://docker.io",
    "https://registry-1.docker.io",
];

#[test]
fn docker_hub_login_by_docker_is_found_by_every_form() {
    let env = TestEnv::new();
    env.store_ok("https://index.docker.io/v1/", "hubuser", "hubsecret");
    for form in HUB_FORMS {
        let creds = env.get_ok(form);
        assert_eq!(
            (creds.username.as_str(), creds.secret.as_str()),
            ("hubuser", "hubsecret"),
            "get {form:?} after storing https://index.docker.io/v1/"
        );
    }
    let list = env.list_ok();
    assert_eq!(
        list.keys().collect::<Vec<_>>(),
        ["https://index.docker.io/v1/"],
        "list shows the form that was stored"
    );
}

#[test]
fn docker_hub_login_by_podman_is_found_by_docker() {
    let env = TestEnv::new();
    env.store_ok("docker.io", "poduser", "podsecret");
    for form in HUB_FORMS {
        let creds = env.get_ok(form);
        assert_eq!(
            (creds.username.as_str(), creds.secret.as_str()),
            ("poduser", "podsecret"),
            "get {form:?} after storing docker.io"
        );
    }
    assert_eq!(env.list_ok().keys().collect::<Vec<_>>(), ["docker.io"]);
}

#[test]
fn docker_hub_token_keys_are_distinct() {
    let env = TestEnv::new();
    let access = "https://index.docker.io/v1/access-token";
    let refresh = "https://index.docker.io/v1/refresh-token";
    env.store_ok(access, "hubuser", "access-jwt");
    // Nothing stored for the registry itself yet.
    env.get_missing("https://index.docker.io/v1/");
    env.get_missing("docker.io");
    env.get_missing(refresh);
    env.store_ok(refresh, "hubuser", "refresh..clientid");
    env.store_ok("https://index.docker.io/v1/", "hubuser", "pat");
    assert_eq!(env.get_ok(access).secret, "access-jwt");
    assert_eq!(env.get_ok(refresh).secret, "refresh..clientid");
    assert_eq!(env.get_ok("https://index.docker.io/v1/").secret, "pat");
    assert_eq!(env.get_ok("docker.io").secret, "pat");

    let list = env.list_ok();
    assert_eq!(list.len(), 3, "three distinct keys: {list:?}");
    for key in [access, refresh, "https://index.docker.io/v1/"] {
        assert_eq!(
            list.get(key).map(String::as_str),
            Some("hubuser"),
            "{list:?}"
        );
    }

    // docker logout of a device login: the token keys go first, then the hub key.
    env.erase_ok("https://index.docker.io/v1/");
    assert_eq!(env.get_ok(access).secret, "access-jwt");
    assert_eq!(env.get_ok(refresh).secret, "refresh..clientid");
    env.erase_ok(access);
    env.erase_ok(refresh);
    env.get_missing(access);
    env.get_missing(refresh);
    assert!(env.list_ok().is_empty());
}

#[test]
fn host_forms_with_scheme_slash_and_port_443_are_one_key() {
    let env = TestEnv::new();
    env.store_ok("registry.example.com", "u", "plain");
    for form in [
        "registry.example.com",
        "https://registry.example.com",
        "http://registry.example.com",
        "registry.example.com/",
        "https://registry.example.com/",
        "registry.example.com:443",
        "https://registry.example.com:443",
    ] {
        let creds = env.get_ok(form);
        assert_eq!(creds.secret, "plain", "get {form:?}");
    }
    // Other ports are other registries.
    env.get_missing("registry.example.com:5000");
    env.get_missing("registry.example.com:80");
    env.get_missing("other.example.com");
}

#[test]
fn ports_other_than_443_are_distinct_keys() {
    let env = TestEnv::new();
    env.store_ok("localhost:5000", "a", "five");
    env.store_ok("localhost:5001", "b", "five-one");
    env.get_missing("localhost");
    assert_eq!(env.get_ok("localhost:5000").secret, "five");
    assert_eq!(env.get_ok("http://localhost:5000").secret, "five");
    assert_eq!(env.get_ok("localhost:5001").secret, "five-one");
    assert_eq!(env.list_ok().len(), 2);
}

#[test]
fn list_shows_the_form_stored_last() {
    let env = TestEnv::new();
    env.store_ok("docker.io", "first", "1");
    env.store_ok("https://index.docker.io/v1/", "second", "2");
    let list = env.list_ok();
    assert_eq!(list.len(), 1, "one key for Docker Hub: {list:?}");
    assert_eq!(
        list.get("https://index.docker.io/v1/").map(String::as_str),
        Some("second"),
        "{list:?}"
    );
    assert_eq!(env.get_ok("docker.io").secret, "2");

    env.store_ok("https://ghcr.io", "g1", "a");
    env.store_ok("ghcr.io", "g2", "b");
    let list = env.list_ok();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(
        list.get("ghcr.io").map(String::as_str),
        Some("g2"),
        "{list:?}"
    );
    assert!(!list.contains_key("https://ghcr.io"), "{list:?}");
}

#[test]
fn erase_by_another_form_removes_the_key() {
    let env = TestEnv::new();
    env.store_ok("https://ghcr.io", "u", "s");
    env.erase_ok("ghcr.io");
    env.get_missing("https://ghcr.io");
    env.get_missing("ghcr.io");

    env.store_ok("https://index.docker.io/v1/", "u", "s");
    env.erase_ok("docker.io");
    env.get_missing("https://index.docker.io/v1/");
    assert!(env.list_ok().is_empty());
}

#[test]
fn host_names_are_case_insensitive() {
    let env = TestEnv::new();
    env.store_ok("Registry.Example.ORG", "u", "case");
    assert_eq!(env.get_ok("registry.example.org").secret, "case");
    assert_eq!(env.get_ok("HTTPS://REGISTRY.EXAMPLE.ORG").secret, "case");
}
