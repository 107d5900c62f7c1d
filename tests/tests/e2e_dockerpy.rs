//! End to end with docker-py's credential-store clients, run by Debian's
//! /usr/bin/python3 (not a pyenv shim): `dockerpycreds.Store('regent')`
//! (python3-dockerpycreds) for store/get/erase and its `CredentialsNotFound`,
//! `docker.credentials.Store('regent')` (python3-docker) for `list`, and
//! docker-py's own config reader (`docker.auth`, what compose v1 builds use)
//! for `credsStore: regent` in $DOCKER_CONFIG. See `regent_tests::e2e`.

use regent_tests::e2e::{self, E2e, PYTHON3};
use serde_json::Value;

/// One operation per run: `<module> <op> <server> [<username>]`; the secret
/// comes on stdin; prints one JSON object.
const SCRIPT: &str = r#"
import json, sys
module, op, server = sys.argv[1], sys.argv[2], sys.argv[3]
if module == "dockerpycreds":
    import dockerpycreds as creds
    store = creds.Store("regent")
    not_found = creds.CredentialsNotFound
elif module == "docker":
    import docker.credentials as creds
    store = creds.Store("regent")
    not_found = creds.CredentialsNotFound
else:
    raise SystemExit("unknown module " + module)
out = {"module": creds.__name__, "program": store.program, "exe": store.exe}
if op == "store":
    store.store(server=server, username=sys.argv[4], secret=sys.stdin.read())
    out["stored"] = True
elif op == "get":
    try:
        out["found"] = store.get(server)
    except not_found as e:
        out["not_found"] = type(e).__name__ + ": " + str(e)
elif op == "list":
    out["list"] = store.list()
elif op == "erase":
    store.erase(server)
    out["erased"] = True
elif op == "all":
    import docker.auth
    config = docker.auth.load_config()
    out["creds_store"] = config.creds_store
    out["all"] = config.get_all_credentials()
    out["resolved"] = config.resolve_authconfig(server)
else:
    raise SystemExit("unknown op " + op)
print(json.dumps(out))
"#;

fn py(e: &E2e, args: &[&str], stdin: Option<&str>) -> Value {
    let out = e.run(
        e.cmd(PYTHON3.0).arg("-c").arg(SCRIPT).args(args),
        stdin.map(str::as_bytes),
    );
    e.ok(&out, &format!("python3 {args:?}"));
    serde_json::from_str(out.out_trim().as_str())
        .unwrap_or_else(|err| panic!("python3 {args:?} printed no JSON ({err})\n{out}"))
}

/// Both modules importable with /usr/bin/python3, or why not.
fn python_ready(e: &E2e) -> Result<(), String> {
    e2e::require(&[PYTHON3])?;
    for (module, package) in [
        ("dockerpycreds", "python3-dockerpycreds"),
        ("docker.credentials", "python3-docker"),
    ] {
        let out = e.run(
            e.cmd(PYTHON3.0).args(["-c", &format!("import {module}")]),
            None,
        );
        if !out.success() {
            return Err(format!(
                "/usr/bin/python3 cannot import {module} (Debian package {package}): {}",
                out.stderr().trim()
            ));
        }
    }
    Ok(())
}

#[test]
fn e2e_dockerpy_store_get_list_erase_round_trip() {
    let e = E2e::new("e2e_dockerpy_store_get_list_erase_round_trip");
    if let Err(why) = python_ready(&e) {
        return e2e::skip(e.name, &why);
    }
    let server = "registry.dockerpy.e2e.example:5000";
    let secret = regent_tests::random_secret(40);
    let wrapper = e.dir.join("bin").join(regent_tests::HELPER);

    // store: through the helper found on PATH.
    let m = e.mark();
    let v = py(
        &e,
        &["dockerpycreds", "store", server, "py-user"],
        Some(&secret),
    );
    assert_eq!(v["stored"], true, "{v}");
    assert_eq!(v["exe"], wrapper.to_string_lossy().as_ref(), "{v}");
    assert!(
        e.calls_since(&m).iter().any(|c| c.verb == "store"),
        "{}",
        e.diagnostics()
    );
    e.assert_stored(&m, server, "dockerpycreds store");
    let creds = e.env.get_ok(server);
    assert_eq!(
        (creds.username.as_str(), creds.secret.as_str()),
        ("py-user", secret.as_str())
    );

    // get: exactly what was stored.
    let m = e.mark();
    let v = py(&e, &["dockerpycreds", "get", server], None);
    assert_eq!(v["found"]["Username"], "py-user", "{v}");
    assert_eq!(v["found"]["Secret"], secret.as_str(), "{v}");
    assert_eq!(v["found"]["ServerURL"], server, "{v}");
    e.assert_got_credentials(&m, server, "dockerpycreds get");

    // A second login stored by docker-py under Docker Hub's legacy key is
    // the `docker.io` podman asks for.
    let hub = "https://index.docker.io/v1/";
    py(
        &e,
        &["dockerpycreds", "store", hub, "hub-user"],
        Some("hub-secret"),
    );
    let creds = e.env.get_ok("docker.io");
    assert_eq!(creds.username, "hub-user");

    // list (docker-py's Store; dockerpycreds 0.3 has none): both logins.
    let m = e.mark();
    let v = py(&e, &["docker", "list", "-"], None);
    let list = v["list"]
        .as_object()
        .unwrap_or_else(|| panic!("list is not an object: {v}"));
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(
        list.get(server).and_then(Value::as_str),
        Some("py-user"),
        "{v}"
    );
    assert!(
        list.iter()
            .any(|(k, u)| k.contains("docker.io") && u == "hub-user"),
        "{v}"
    );
    assert!(
        e.calls_since(&m).iter().any(|c| c.verb == "list"),
        "{}",
        e.diagnostics()
    );

    // docker-py's config reader: credsStore regent, `list` then `get` each.
    let m = e.mark();
    let v = py(&e, &["docker", "all", server], None);
    assert_eq!(v["creds_store"], "regent", "{v}");
    let all = v["all"]
        .as_object()
        .unwrap_or_else(|| panic!("get_all_credentials is not an object: {v}"));
    assert_eq!(all[server]["Password"], secret.as_str(), "{v}");
    assert_eq!(v["resolved"]["Username"], "py-user", "{v}");
    assert_eq!(v["resolved"]["Password"], secret.as_str(), "{v}");
    let calls = e.calls_since(&m);
    assert!(
        calls.first().is_some_and(|c| c.verb == "list")
            && calls.iter().filter(|c| c.verb == "get").count() >= 2,
        "get_all_credentials: `list`, then `get` per key: {calls:?}"
    );

    // erase, then get raises CredentialsNotFound (from the helper's message).
    let m = e.mark();
    let v = py(&e, &["dockerpycreds", "erase", server], None);
    assert_eq!(v["erased"], true, "{v}");
    assert!(
        e.calls_since(&m).iter().any(|c| c.is("erase", server)),
        "{}",
        e.diagnostics()
    );
    e.env.get_missing(server);
    for module in ["dockerpycreds", "docker"] {
        let v = py(&e, &[module, "get", server], None);
        assert!(
            v["not_found"]
                .as_str()
                .is_some_and(|s| s.starts_with("CredentialsNotFound")),
            "{module}: expected CredentialsNotFound after erase: {v}"
        );
    }
    let v = py(&e, &["docker", "list", "-"], None);
    assert_eq!(v["list"].as_object().map(|o| o.len()), Some(1), "{v}");
}
