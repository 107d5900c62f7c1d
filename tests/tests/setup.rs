//! `regent setup` and `regent import` against client config files in a
//! temporary HOME, with the real binaries.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use regent_tests::TestEnv;
use serde_json::{Value, json};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// An env whose clients' files live in its HOME, with nothing inherited.
fn env() -> TestEnv {
    let mut env = TestEnv::new();
    env.set_env("DOCKER_CONFIG", None::<&str>);
    env.set_env("REGISTRY_AUTH_FILE", None::<&str>);
    env
}

fn docker_config(env: &TestEnv) -> PathBuf {
    env.home.join(".docker").join("config.json")
}

fn dropin(env: &TestEnv) -> PathBuf {
    env.config_home
        .join("containers/registries.conf.d/50-regent.conf")
}

/// podman 4, buildah and skopeo read only `$HOME/.config/containers`, even
/// when `XDG_CONFIG_HOME` points elsewhere (as it does in these tests).
fn home_dropin(env: &TestEnv) -> PathBuf {
    env.home
        .join(".config/containers/registries.conf.d/50-regent.conf")
}

fn write_json(path: &Path, value: &Value) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, serde_json::to_vec(value).unwrap()).unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn backups(path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let mut out: Vec<PathBuf> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.regent-bak."))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn setup_docker_sets_creds_store_keeps_everything_else_and_undo_restores() {
    let env = env();
    let path = docker_config(&env);
    let before = json!({
        "auths": {"r.example": {}},
        "credsStore": "desktop",
        "psFormat": "table {{.ID}}",
        "proxies": {"default": {"httpProxy": "http://proxy:3128"}}
    });
    write_json(&path, &before);

    let out = env.regent(&["setup", "docker"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout().contains("credsStore = \"regent\""), "{out}");
    assert!(
        out.stdout().contains("desktop"),
        "the previous store is named\n{out}"
    );
    let after = read_json(&path);
    assert_eq!(after["credsStore"], "regent");
    assert_eq!(after["psFormat"], before["psFormat"]);
    assert_eq!(after["proxies"], before["proxies"]);
    assert_eq!(after["auths"], before["auths"]);
    let saved = backups(&path);
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(read_json(&saved[0]), before);

    // Idempotent: nothing changes, no new backup.
    let text = fs::read(&path).unwrap();
    let again = env.regent(&["setup", "docker"]);
    assert!(again.success(), "{again}");
    assert!(again.stdout().contains("already set up"), "{again}");
    assert_eq!(fs::read(&path).unwrap(), text);
    assert_eq!(backups(&path).len(), 1);

    let undo = env.regent(&["setup", "--undo"]);
    assert!(undo.success(), "{undo}");
    assert_eq!(read_json(&path), before);
}

#[test]
fn setup_docker_creates_a_missing_config() {
    let env = env();
    let path = docker_config(&env);
    let out = env.regent(&["setup", "docker"]);
    assert!(out.success(), "{out}");
    assert_eq!(read_json(&path), json!({"credsStore": "regent"}));
    let undo = env.regent(&["setup", "docker", "--undo"]);
    assert!(undo.success(), "{undo}");
    assert_eq!(read_json(&path), json!({}));
}

#[test]
fn setup_docker_helper_for_adds_cred_helpers_only() {
    let env = env();
    let path = docker_config(&env);
    write_json(&path, &json!({"credHelpers": {"gcr.io": "gcloud"}}));
    let out = env.regent(&[
        "setup",
        "docker",
        "--helper-for",
        "ghcr.io",
        "--helper-for",
        "gcr.io",
    ]);
    assert!(out.success(), "{out}");
    let after = read_json(&path);
    assert_eq!(after.get("credsStore"), None);
    assert_eq!(
        after["credHelpers"],
        json!({"ghcr.io": "regent", "gcr.io": "regent"})
    );
    let undo = env.regent(&["setup", "--undo"]);
    assert!(undo.success(), "{undo}");
    assert_eq!(
        read_json(&path),
        json!({"credHelpers": {"gcr.io": "gcloud"}})
    );
}

#[test]
fn setup_refuses_a_malformed_config_and_changes_nothing() {
    let env = env();
    let path = docker_config(&env);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let broken = b"{\n  \"auths\": {\n    \"a\": {,\n}\n";
    fs::write(&path, broken).unwrap();
    let out = env.regent(&["setup", "docker"]);
    assert!(!out.success(), "{out}");
    let err = out.stderr();
    assert!(err.contains(&path.display().to_string()), "{out}");
    assert!(err.contains("line 3"), "{out}");
    assert!(err.contains("nothing was changed"), "{out}");
    assert_eq!(fs::read(&path).unwrap(), broken);
    assert!(backups(&path).is_empty());
}

#[test]
fn setup_dry_run_prints_the_diff_and_changes_nothing() {
    let env = env();
    let path = docker_config(&env);
    write_json(&path, &json!({"auths": {}}));
    let text = fs::read(&path).unwrap();
    let out = env.regent(&["setup", "docker", "--dry-run"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout().contains("+\t\"credsStore\": \"regent\""),
        "{out}"
    );
    assert_eq!(fs::read(&path).unwrap(), text);
    assert!(backups(&path).is_empty());
    let out = env.regent(&["setup", "podman", "--dry-run"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout().contains("+credential-helpers"), "{out}");
    assert!(!dropin(&env).exists());
}

#[test]
fn setup_podman_writes_a_drop_in_and_undo_removes_it() {
    let env = env();
    let registries = env.config_home.join("containers/registries.conf");
    fs::create_dir_all(registries.parent().unwrap()).unwrap();
    let own = "unqualified-search-registries = [\"docker.io\"]\n";
    fs::write(&registries, own).unwrap();

    let out = env.regent(&["setup", "podman"]);
    assert!(out.success(), "{out}");
    for path in [dropin(&env), home_dropin(&env)] {
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("credential-helpers = [\"regent\"]\n"),
            "{}: {text}",
            path.display()
        );
    }
    assert_eq!(fs::read_to_string(&registries).unwrap(), own);
    let again = env.regent(&["setup", "podman"]);
    assert!(again.stdout().contains("already set up"), "{again}");

    let undo = env.regent(&["setup", "--undo"]);
    assert!(undo.success(), "{undo}");
    assert!(!dropin(&env).exists());
    assert!(!home_dropin(&env).exists());
    assert_eq!(fs::read_to_string(&registries).unwrap(), own);
}

#[test]
fn setup_podman_leaves_a_foreign_file_alone() {
    let env = env();
    let path = dropin(&env);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, "credential-helpers = [\"pass\"]\n").unwrap();
    let out = env.regent(&["setup", "podman"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr().contains("not written by regent"), "{out}");
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "credential-helpers = [\"pass\"]\n"
    );
}

#[test]
fn import_moves_plaintext_logins_into_regent() {
    let env = env();
    let path = docker_config(&env);
    let secret = "pa:ss\"w\\ord-Ünï";
    write_json(
        &path,
        &json!({
            "credsStore": "regent",
            "auths": {
                "r.example:5000": {"auth": b64(&format!("alice:{secret}"))},
                "https://index.docker.io/v1/": {"auth": b64("bob:"), "identitytoken": "id-token-1"},
                "bad.example": {"auth": "%%%"},
                "placeholder.example": {}
            },
            "psFormat": "x"
        }),
    );

    let out = env.regent(&["import"]);
    assert!(out.success(), "{out}");
    assert!(!out.stdout().contains(secret) && !out.stderr().contains(secret));
    assert!(!out.stdout().contains("id-token-1"));
    assert!(
        out.stdout().contains("bad.example"),
        "malformed entries are reported\n{out}"
    );

    let alice = env.get_ok("r.example:5000");
    assert_eq!(
        (alice.username.as_str(), alice.secret.as_str()),
        ("alice", secret)
    );
    let hub = env.get_ok("docker.io");
    assert_eq!(
        (hub.username.as_str(), hub.secret.as_str()),
        ("<token>", "id-token-1")
    );

    let after = read_json(&path);
    assert_eq!(after["auths"]["r.example:5000"], json!({}));
    assert_eq!(after["auths"]["https://index.docker.io/v1/"], json!({}));
    assert_eq!(after["auths"]["bad.example"], json!({"auth": "%%%"}));
    assert_eq!(after["psFormat"], "x");
    let saved = backups(&path);
    assert_eq!(saved.len(), 1);
    assert!(
        fs::read_to_string(&saved[0])
            .unwrap()
            .contains(&b64(&format!("alice:{secret}")))
    );

    // Nothing left to import.
    let again = env.regent(&["import", "--json"]);
    assert!(again.success(), "{again}");
    let report: Value = serde_json::from_str(&again.stdout()).unwrap();
    let results: Vec<&str> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["skipped"], "{report}");
}

#[test]
fn import_keeps_entries_when_asked_or_when_docker_does_not_use_regent() {
    let env = env();
    let path = docker_config(&env);
    let config = json!({"auths": {"a.example": {"auth": b64("u:p1")}}});
    write_json(&path, &config);
    let out = env.regent(&["import"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout().contains("regent setup docker"), "{out}");
    assert_eq!(read_json(&path), config, "docker would lose the login");
    assert_eq!(env.get_ok("a.example").secret, "p1");

    let wired = json!({"credsStore": "regent", "auths": {"b.example": {"auth": b64("u:p2")}}});
    write_json(&path, &wired);
    let out = env.regent(&["import", "--keep"]);
    assert!(out.success(), "{out}");
    assert_eq!(read_json(&path), wired);
    assert_eq!(env.get_ok("b.example").secret, "p2");
}

#[test]
fn import_from_a_containers_auth_file() {
    let env = env();
    let setup = env.regent(&["setup", "podman"]);
    assert!(setup.success(), "{setup}");
    let path = env.config_home.join("containers/auth.json");
    write_json(
        &path,
        &json!({"auths": {"quay.io": {"auth": b64("carol:c-secret")}, "keep.example": {"auth": "!"}}}),
    );
    let out = env.regent(&["import"]);
    assert!(out.success(), "{out}");
    assert_eq!(env.get_ok("quay.io").secret, "c-secret");
    assert_eq!(
        read_json(&path),
        json!({"auths": {"keep.example": {"auth": "!"}}})
    );
}
