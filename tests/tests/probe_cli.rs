//! The management CLI as a careless or new user meets it: `regent import`
//! of conflicting or missing files and its backups, `regent setup` keys and
//! the podman drop-in, `regent reload` of values the start refuses, closed
//! pipes, a secret typed on the command line, `regent status` when no start
//! can work, `--help`, and what the agent log leaves out.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine;
use regent_tests::{DEFAULT_TIMEOUT, Input, Outcome, TestEnv};
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

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// ---- regent import ----

#[test]
fn import_of_two_spellings_with_different_logins_is_a_conflict_and_removes_nothing() {
    let env = env();
    let path = docker_config(&env);
    let config = json!({
        "credsStore": "regent",
        "auths": {
            "registry.example.com": {"auth": b64("alice:a-secret-1")},
            "https://registry.example.com": {"auth": b64("bob:b-secret-2")},
            "other.example": {"auth": b64("carol:c-secret-3")},
            "https://index.docker.io/v1/": {"auth": b64("dan:d-secret-4")},
            "docker.io": {"auth": b64("dan:d-secret-4")}
        }
    });
    write_json(&path, &config);

    let out = env.regent(&["import"]);
    assert!(!out.success(), "a conflict needs attention\n{out}");
    let err = out.stderr();
    assert!(
        err.contains("registry.example.com") && err.contains("regent import"),
        "the error names the registry and how to go on\n{out}"
    );
    assert!(
        !err.contains("docker.io"),
        "docker.io is no conflict\n{out}"
    );
    for secret in ["a-secret-1", "b-secret-2", "c-secret-3", "d-secret-4"] {
        assert!(
            !out.stdout().contains(secret) && !err.contains(secret),
            "{out}"
        );
    }
    let text = out.stdout();
    assert!(
        text.lines()
            .filter(|l| l.starts_with("conflict") && l.contains("registry.example.com"))
            .count()
            == 2,
        "both spellings are reported as a conflict\n{out}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("registry.example.com") && l.contains("removed from the file")),
        "{out}"
    );

    // Nothing stored or removed for the conflicting registry.
    env.get_missing("registry.example.com");
    let after = read_json(&path);
    assert_eq!(
        after["auths"]["registry.example.com"],
        config["auths"]["registry.example.com"]
    );
    assert_eq!(
        after["auths"]["https://registry.example.com"],
        config["auths"]["https://registry.example.com"]
    );
    // The others went ahead; one login under two spellings is imported once
    // and removed under both.
    assert_eq!(env.get_ok("other.example").secret, "c-secret-3");
    let hub = env.get_ok("docker.io");
    assert_eq!(
        (hub.username.as_str(), hub.secret.as_str()),
        ("dan", "d-secret-4")
    );
    assert_eq!(after["auths"]["other.example"], json!({}));
    assert_eq!(after["auths"]["docker.io"], json!({}));
    assert_eq!(after["auths"]["https://index.docker.io/v1/"], json!({}));

    // --json says the same, and fails the same.
    let again = env.regent(&["import", "--json"]);
    assert!(!again.success(), "{again}");
    let report: Value = serde_json::from_str(&again.stdout()).unwrap();
    let conflicts: Vec<&str> = report
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["result"] == "conflict")
        .map(|o| o["registry"].as_str().unwrap())
        .collect();
    assert_eq!(
        conflicts.len(),
        2,
        "both spellings in the JSON report: {report}"
    );
    assert!(
        report
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["removed"] == false),
        "{report}"
    );
    env.get_missing("registry.example.com");
}

#[test]
fn import_sees_a_conflict_across_files() {
    let env = env();
    let setup = env.regent(&["setup", "podman"]);
    assert!(setup.success(), "{setup}");
    let docker = docker_config(&env);
    write_json(
        &docker,
        &json!({"credsStore": "regent", "auths": {"quay.io": {"auth": b64("u1:s1")}}}),
    );
    let auth = env.config_home.join("containers/auth.json");
    write_json(
        &auth,
        &json!({"auths": {"https://Quay.io": {"auth": b64("u2:s2")}}}),
    );
    let out = env.regent(&["import"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr().contains("quay.io"), "{out}");
    env.get_missing("quay.io");
    assert!(read_json(&docker)["auths"]["quay.io"]["auth"].is_string());
    assert!(read_json(&auth)["auths"]["https://Quay.io"]["auth"].is_string());
}

#[test]
fn import_of_a_missing_file_fails_with_its_path() {
    let env = env();
    let missing = env.root.join("nonexistent.json");
    let out = env.regent(&["import", &missing.to_string_lossy()]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr().contains(&missing.display().to_string())
            && out.stderr().contains("does not exist"),
        "{out}"
    );
}

#[test]
fn import_backups_are_private_say_what_they_hold_and_can_be_skipped() {
    let env = env();
    let path = docker_config(&env);
    write_json(
        &path,
        &json!({"credsStore": "regent", "auths": {"a.example": {"auth": b64("u:first-secret")}}}),
    );
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

    let out = env.regent(&["import"]);
    assert!(out.success(), "{out}");
    let saved = backups(&path);
    assert_eq!(saved.len(), 1, "{saved:?}\n{out}");
    assert_eq!(mode(&saved[0]), 0o600, "the backup holds a credential");
    assert_eq!(mode(&path), 0o644, "the file keeps its own mode");
    assert!(
        fs::read_to_string(&saved[0])
            .unwrap()
            .contains(&b64("u:first-secret"))
    );
    let text = out.stdout();
    assert!(
        text.contains(&saved[0].display().to_string()) && text.contains("plaintext credentials"),
        "the output says where the old credentials are kept\n{out}"
    );
    let json_out = {
        write_json(
            &path,
            &json!({"credsStore": "regent", "auths": {"j.example": {"auth": b64("u:json-secret")}}}),
        );
        env.regent(&["import", "--json"])
    };
    assert!(json_out.success(), "{json_out}");
    let report: Value = serde_json::from_str(&json_out.stdout()).unwrap();
    assert!(report[0]["backup"].is_string(), "{report}");

    write_json(
        &path,
        &json!({"credsStore": "regent", "auths": {"b.example": {"auth": b64("u:second-secret")}}}),
    );
    let before = backups(&path);
    let out = env.regent(&["import", "--no-backup"]);
    assert!(out.success(), "{out}");
    assert_eq!(env.get_ok("b.example").secret, "second-secret");
    assert_eq!(read_json(&path)["auths"]["b.example"], json!({}));
    assert_eq!(backups(&path), before, "--no-backup keeps no backup\n{out}");
}

// ---- regent setup ----

#[test]
fn setup_helper_for_writes_the_key_docker_looks_up() {
    let env = env();
    let path = docker_config(&env);
    let out = env.regent(&[
        "setup",
        "docker",
        "--helper-for",
        "https://Quay.io/",
        "--helper-for",
        "docker.io",
        "--helper-for",
        "Localhost:5000/v2/",
        // An image reference names its registry.
        "--helper-for",
        "ghcr.io/org/app:1.2",
    ]);
    assert!(out.success(), "{out}");
    assert_eq!(
        read_json(&path)["credHelpers"],
        json!({
            "quay.io": "regent",
            "https://index.docker.io/v1/": "regent",
            "localhost:5000": "regent",
            "ghcr.io": "regent"
        })
    );
    let undo = env.regent(&["setup", "--undo"]);
    assert!(undo.success(), "{undo}");
    assert_eq!(read_json(&path), json!({}));
}

#[test]
fn setup_podman_asks_regent_only_and_points_at_plaintext_logins() {
    let env = env();
    let auth = env.config_home.join("containers/auth.json");
    write_json(
        &auth,
        &json!({"auths": {"quay.io": {"auth": b64("u:old-secret")}}}),
    );
    let out = env.regent(&["setup", "podman"]);
    assert!(out.success(), "{out}");
    let dropin = env
        .config_home
        .join("containers/registries.conf.d/50-regent.conf");
    let text = fs::read_to_string(&dropin).unwrap();
    let settings: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(settings, ["credential-helpers = [\"regent\"]"], "{text}");
    assert!(
        out.stdout().contains(&auth.display().to_string())
            && out.stdout().contains("regent import"),
        "{out}"
    );
}

#[test]
fn setup_dry_runs_label_each_file_for_what_would_happen() {
    let env = env();
    let path = docker_config(&env);
    let out = env.regent(&["setup", "docker", "--dry-run"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout()
            .contains(&format!("+++ {} (would be created)", path.display())),
        "{out}"
    );
    for client in ["docker", "podman"] {
        let out = env.regent(&["setup", client]);
        assert!(out.success(), "{out}");
    }
    let undo = env.regent(&["setup", "--undo", "--dry-run"]);
    assert!(undo.success(), "{undo}");
    let text = undo.stdout();
    assert!(!text.contains("(new)"), "{undo}");
    assert!(
        text.contains(&format!("+++ {} (would be)", path.display())),
        "{undo}"
    );
    assert!(text.contains("+++ /dev/null (would be removed)"), "{undo}");
    assert_eq!(read_json(&path)["credsStore"], "regent", "a dry run");
}

// ---- regent reload ----

#[test]
fn reload_refuses_what_the_start_refuses_with_line_and_column() {
    let env = env();
    let config = env.config_home.join("regent/config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    // Without an agent: the check alone.
    fs::write(&config, "log = \"info\"\nstore = \"memroy\"\n").unwrap();
    let out = env.regent(&["reload"]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr().contains("line 2, column 9") && out.stderr().contains("memroy"),
        "{out}"
    );

    let good =
        "[[registry]]\nmatch = \"x.example\"\nsource = \"exec\"\ncommand = [\"/bin/true\"]\n";
    fs::write(&config, good).unwrap();
    let out = env.regent(&["start"]);
    assert!(out.success(), "{out}");
    for (bad, place, word) in [
        ("store = \"memroy\"\n", "line 1, column 9", "memroy"),
        ("\nlog = \"loud\"\n", "line 2, column 7", "loud"),
    ] {
        fs::write(&config, bad).unwrap();
        let out = env.regent(&["reload"]);
        assert!(!out.success(), "{bad:?} was accepted\n{out}");
        assert!(
            out.stderr().contains(place) && out.stderr().contains(word),
            "{out}"
        );
        assert!(out.stderr().contains("unchanged"), "{out}");
    }
    // The old config stayed in force: one entry.
    fs::write(&config, good).unwrap();
    let out = env.regent(&["reload"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout().contains("1 registry entries"), "{out}");

    // A bad variable is caught by the check too.
    env.stop_agent();
    let out = env.run(
        env.command(&env.bins.regent)
            .arg("reload")
            .env("REGENT_LOG", "loud"),
        Input::Null,
        DEFAULT_TIMEOUT,
    );
    assert!(!out.success(), "{out}");
    assert!(out.stderr().contains("REGENT_LOG"), "{out}");
}

// ---- output to a closed pipe ----

/// Runs `regent args` with stdout a pipe whose reading end is already
/// closed, so that the first write fails with EPIPE.
fn regent_into_closed_pipe(env: &TestEnv, args: &[&str]) -> Outcome {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are fresh and ours.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let mut cmd = env.command(&env.bins.regent);
    cmd.args(args);
    let what = format!("regent {}", args.join(" "));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped());
    let start = std::time::Instant::now();
    let child = cmd.spawn().unwrap();
    let output = child.wait_with_output().unwrap();
    Outcome {
        what,
        status: output.status,
        stdout: Vec::new(),
        stderr: output.stderr,
        elapsed: start.elapsed(),
    }
}

#[test]
fn a_closed_stdout_is_no_panic() {
    let env = env();
    env.store_ok("a.example", "u", "pipe-secret");
    for args in [
        &["ls"][..],
        &["ls", "--json"],
        &["status"],
        &["status", "--json"],
        &["--help"],
        &["setup", "--dry-run", "docker"],
        &["secret", "ls"],
        &["reload"],
    ] {
        let out = regent_into_closed_pipe(&env, args);
        assert!(
            !out.stderr().contains("panicked") && out.code() != Some(101),
            "{out}"
        );
        assert!(
            out.success(),
            "a reader that went away is no failure\n{out}"
        );
    }
    // The agent is fine.
    assert_eq!(env.get_ok("a.example").secret, "pipe-secret");
}

// ---- regent secret set ----

#[test]
fn a_secret_value_on_the_command_line_is_refused_without_being_shown() {
    let env = env();
    for args in [
        &["secret", "set", "corp-token", "v4lue-on-argv"][..],
        &["secret", "set", "corp-token", "--value=v4lue-on-argv"],
        &["secret", "set", "--value=v4lue-on-argv", "corp-token"],
    ] {
        let out = env.regent(args);
        assert!(!out.success(), "{out}");
        assert!(
            !out.stderr().contains("v4lue-on-argv") && !out.stdout().contains("v4lue-on-argv"),
            "the value was echoed\n{out}"
        );
        assert!(out.stderr().contains("stdin"), "{out}");
    }
    let out = env.regent(&["secret", "ls"]);
    assert!(out.success() && out.stdout().is_empty(), "{out}");
}

// ---- regent status ----

#[test]
fn status_says_why_no_start_can_work() {
    // A config the start refuses.
    let mut env = env();
    env.set_env("REGENT_STORE", None::<&str>);
    let config = env.config_home.join("regent/config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(&config, "store = \"memroy\"\n").unwrap();
    let out = env.regent(&["status"]);
    assert_eq!(out.code(), Some(3), "{out}");
    let text = out.stdout();
    assert!(
        text.contains("cannot start") && text.contains("memroy") && text.contains("line 1"),
        "{out}"
    );
    assert!(!text.contains("starts it"), "{out}");
    let out = env.regent(&["status", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout()).unwrap();
    assert!(
        v["config_error"].as_str().unwrap_or("").contains("memroy"),
        "{v}"
    );
}

#[test]
fn status_and_list_when_the_store_cannot_open() {
    let mut env = env();
    env.set_env("REGENT_STORE", Some("keyring"));
    env.set_env("DBUS_SESSION_BUS_ADDRESS", None::<&str>);
    // `list` while the agent cannot start: no credentials listed, the
    // reason on stderr, success (classic `docker build` calls it).
    let out = env.run(
        env.command(&env.bins.helper).arg("list"),
        Input::Null,
        DEFAULT_TIMEOUT,
    );
    assert!(out.success(), "{out}");
    assert_eq!(out.out_trim(), "{}", "{out}");
    assert!(
        out.stderr().contains("keyring store is not usable"),
        "{out}"
    );
    let out = env.regent(&["status"]);
    assert_eq!(out.code(), Some(3), "{out}");
    let text = out.stdout();
    assert!(
        text.contains("failed") && text.contains("keyring store is not usable"),
        "{out}"
    );
    assert!(
        text.contains("REGENT_STORE=file"),
        "the fix is named\n{out}"
    );
    assert_eq!(
        text.matches("REGENT_STORE=file").count(),
        1,
        "advice once\n{out}"
    );
    let out = env.regent(&["status", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout()).unwrap();
    assert!(
        v["last_start_error"]
            .as_str()
            .unwrap_or("")
            .contains("keyring"),
        "{v}"
    );
}

#[test]
fn status_json_values_are_bare() {
    let mut env = env();
    env.set_env("REGENT_STORE", Some("auto"));
    env.set_env("DBUS_SESSION_BUS_ADDRESS", None::<&str>);
    env.set_env(
        "REGENT_MASTER_KEY",
        Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    );
    let out = env.regent(&["start"]);
    assert!(out.success(), "{out}");
    let out = env.regent(&["status", "--json"]);
    assert!(out.success(), "{out}");
    let v: Value = serde_json::from_str(&out.stdout()).unwrap();
    let config = env.config_home.join("regent/config.toml");
    assert_eq!(v["config"], config.display().to_string(), "{v}");
    assert_eq!(v["config_present"], false, "{v}");
    assert_eq!(v["store"], "file", "{v}");
    assert_eq!(
        v["store_location"],
        env.data_home
            .join("regent/secrets.enc")
            .display()
            .to_string(),
        "{v}"
    );
    let detail = v["store_detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("AES-256-GCM") && detail.contains("REGENT_MASTER_KEY"),
        "{v}"
    );
    let reason = v["store_reason"].as_str().unwrap();
    assert!(
        reason.len() < 200 && !reason.contains('\n') && !reason.contains("REGENT_STORE=file"),
        "one short line, no advice that does not fit: {reason:?}"
    );
    assert!(reason.contains("so the encrypted file"), "{reason:?}");

    // Live, not as at start.
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(&config, "").unwrap();
    let v: Value = serde_json::from_str(&env.regent(&["status", "--json"]).stdout()).unwrap();
    assert_eq!(v["config_present"], true, "{v}");
}

// ---- help, logs, install ----

#[test]
fn help_names_the_variables_and_paths() {
    let env = env();
    let out = env.regent(&["--help"]);
    assert!(out.success(), "{out}");
    let text = out.stdout();
    for var in [
        "REGENT_STORE",
        "REGENT_LOG",
        "REGENT_SOCKET",
        "REGENT_CONFIG",
        "REGENT_KEYRING_SERVICE",
        "REGENT_MASTER_KEY",
    ] {
        assert!(text.contains(var), "{var}\n{out}");
    }
    for path in [
        env.config_home.join("regent/config.toml"),
        env.log_path(),
        env.socket.clone(),
    ] {
        assert!(
            text.contains(&path.display().to_string()),
            "{}\n{out}",
            path.display()
        );
    }
}

#[test]
fn the_agent_log_holds_no_secret_length() {
    let env = env();
    let secret = "x".repeat(4321);
    env.store_ok("len.example", "u", &secret);
    let out = env.run(
        env.command(&env.bins.regent).args(["secret", "set", "tok"]),
        Input::Bytes(&"y".repeat(1234).into_bytes()),
        DEFAULT_TIMEOUT,
    );
    assert!(out.success(), "{out}");
    let log = env.log_contents();
    assert!(log.contains("stored"), "the log is the one written\n{log}");
    // As numbers of their own: a timestamp's digits may hold them.
    let number = |n: &str| {
        log.match_indices(n).any(|(i, _)| {
            let before = log[..i].chars().next_back();
            let after = log[i + n.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
                && !after.is_some_and(|c| c.is_ascii_digit())
        })
    };
    assert!(
        !number("4321") && !number("1234") && !log.contains("secret_bytes"),
        "{log}"
    );
}

#[test]
fn install_help_is_complete() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--prefix",
        "--bindir",
        "--no-setup",
        "--no-service",
        "Running it again",
    ] {
        assert!(text.contains(word), "{word}:\n{text}");
    }
    let last = text.trim_end().lines().last().unwrap_or("");
    assert!(
        last.ends_with('.'),
        "the help ends with a whole sentence:\n{text}"
    );
    assert!(!text.contains("set -euo"), "only the header:\n{text}");
}

#[test]
fn status_warns_of_an_older_drop_in_that_falls_back_to_plaintext() {
    let env = env();
    let dropin = env
        .config_home
        .join("containers/registries.conf.d/50-regent.conf");
    fs::create_dir_all(dropin.parent().unwrap()).unwrap();
    fs::write(
        &dropin,
        "# Written by `regent setup podman`; `regent setup --undo` removes it.\n\
         credential-helpers = [\"regent\", \"containers-auth.json\"]\n",
    )
    .unwrap();
    let out = env.regent(&["status"]);
    assert!(
        out.stdout().contains(&dropin.display().to_string())
            && out.stdout().contains("regent setup podman"),
        "{out}"
    );
    let setup = env.regent(&["setup", "podman"]);
    assert!(setup.success(), "{setup}");
    assert!(
        !fs::read_to_string(&dropin)
            .unwrap()
            .contains("containers-auth.json")
    );
    let out = env.regent(&["status", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout()).unwrap();
    assert!(v.get("warnings").is_none(), "{v}");
}
