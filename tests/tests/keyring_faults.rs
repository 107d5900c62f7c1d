//! The Secret Service goes away or stops answering while the agent runs on
//! the keyring store: cached credentials keep being served, stores fail with
//! a message that says what to do, and nothing waits beyond its bound.
//!
//! Each test brings up its own private D-Bus session with its own
//! gnome-keyring ([`SecretService`], scripts/with-secret-service), so killing
//! or freezing it touches nothing else; dropping it (also on a panic) kills
//! the bus and the daemon.

use std::process::Command;

use regent_tests::secret_service::SecretService;
use regent_tests::{StoreKind, TestEnv, kill, unique_host};

/// A store refused by the keyring: the one line names the registry, the
/// keyring and its service, and the way out (another store).
fn assert_keyring_refusal(line: &str, env: &TestEnv, host: &str) {
    for wanted in [
        format!("cannot store the credentials for {host}"),
        "Secret Service keyring".to_owned(),
        format!("service \"{}\"", env.keyring_service),
        "REGENT_STORE=file".to_owned(),
    ] {
        assert!(
            line.contains(&wanted),
            "the refusal should contain {wanted:?}: {line}"
        );
    }
}

fn keyring_env(ss: &SecretService) -> TestEnv {
    let mut env = TestEnv::with_store(StoreKind::Keyring);
    env.set_env("DBUS_SESSION_BUS_ADDRESS", Some(ss.address.as_str()));
    env
}

#[test]
fn the_secret_service_dies_cached_gets_go_on_and_stores_fail_clearly() {
    let test = "the_secret_service_dies_cached_gets_go_on_and_stores_fail_clearly";
    let Some(ss) = SecretService::start(test) else {
        return;
    };
    let env = keyring_env(&ss);
    let host = unique_host("ssdies");
    env.store_ok(&host, "u", "cached-secret");
    assert_eq!(env.status_json().store, "keyring");
    assert_eq!(env.get_ok(&host).secret, "cached-secret");

    kill(ss.daemon(), libc::SIGKILL);

    assert_eq!(env.get_ok(&host).secret, "cached-secret");
    let list = env.list_ok();
    assert!(list.contains_key(&host), "{list:?}");
    let after = unique_host("after");
    let out = env.helper(&["store"], TestEnv::store_json(&after, "u", "new-secret"));
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.out_lines().len(), 1, "{out}");
    let line = out.stdout();
    eprintln!("store after the Secret Service died: {}", line.trim());
    assert_keyring_refusal(&line, &env, &after);
    assert!(!line.contains("new-secret"));
    // Still serving.
    assert_eq!(env.get_ok(&host).secret, "cached-secret");
}

#[test]
fn a_frozen_secret_service_does_not_hang_cached_gets_or_stores() {
    let test = "a_frozen_secret_service_does_not_hang_cached_gets_or_stores";
    let Some(ss) = SecretService::start(test) else {
        return;
    };
    let env = keyring_env(&ss);
    let host = unique_host("ssfrozen");
    env.store_ok(&host, "u", "frozen-cached");

    kill(ss.daemon(), libc::SIGSTOP);

    // A cached get does not touch the keyring at all.
    assert_eq!(env.get_ok(&host).secret, "frozen-cached");
    // A store waits for the keyring, but not forever: the helper answers
    // (the harness fails a call that takes 30 s as a hang).
    let after = unique_host("frozen-after");
    let out = env.helper(&["store"], TestEnv::store_json(&after, "u", "x"));
    assert_eq!(
        out.code(),
        Some(1),
        "a store into a frozen keyring cannot succeed\n{out}"
    );
    eprintln!(
        "store into a frozen Secret Service: {}",
        out.stdout().trim()
    );
    assert_eq!(out.out_lines().len(), 1, "{out}");
    assert_keyring_refusal(&out.stdout(), &env, &after);
    assert!(
        out.stdout().contains("did not confirm the write within"),
        "the error should say the keyring did not answer in time\n{out}"
    );
    assert_eq!(env.get_ok(&host).secret, "frozen-cached");
    kill(ss.daemon(), libc::SIGCONT);
}

#[test]
fn a_locked_keyring_keeps_serving_cached_gets_and_says_how_to_unlock() {
    let test = "a_locked_keyring_keeps_serving_cached_gets_and_says_how_to_unlock";
    let Some(ss) = SecretService::start(test) else {
        return;
    };
    let env = keyring_env(&ss);
    let host = unique_host("sslocked");
    env.store_ok(&host, "u", "locked-cached");

    // Lock every collection, as a screen lock or `secret-tool lock` would.
    let locked = Command::new("dbus-send")
        .env("DBUS_SESSION_BUS_ADDRESS", &ss.address)
        .args([
            "--session",
            "--print-reply",
            "--dest=org.freedesktop.secrets",
            "/org/freedesktop/secrets",
            "org.freedesktop.Secret.Service.Lock",
            "array:objpath:/org/freedesktop/secrets/collection/login,/org/freedesktop/secrets/aliases/default",
        ])
        .output()
        .expect("dbus-send");
    assert!(
        locked.status.success(),
        "locking the keyring failed: {}",
        String::from_utf8_lossy(&locked.stderr)
    );

    assert_eq!(env.get_ok(&host).secret, "locked-cached");
    let after = unique_host("locked-after");
    let out = env.helper(&["store"], TestEnv::store_json(&after, "u", "x"));
    eprintln!("store into a locked keyring: {}", out.stdout().trim());
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.out_lines().len(), 1, "{out}");
    assert_keyring_refusal(&out.stdout(), &env, &after);
    assert!(
        out.stdout().contains("unlock your keyring"),
        "the error should say how to unlock\n{out}"
    );
    assert_eq!(env.get_ok(&host).secret, "locked-cached");
}

#[test]
fn doctor_says_the_keyring_is_locked_and_how_to_unlock_it() {
    let test = "doctor_says_the_keyring_is_locked_and_how_to_unlock_it";
    let Some(ss) = SecretService::start(test) else {
        return;
    };
    let env = keyring_env(&ss);
    let doctor = || {
        let out = env.regent(&["doctor", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout())
            .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e})\n{out}"));
        let row = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "store")
            .cloned()
            .unwrap();
        (out, row)
    };
    let (_, row) = doctor();
    assert_eq!(row["status"], "ok", "{row}");
    assert!(
        row["detail"].as_str().unwrap().contains("writable"),
        "{row}"
    );

    let locked = Command::new("dbus-send")
        .env("DBUS_SESSION_BUS_ADDRESS", &ss.address)
        .args([
            "--session",
            "--print-reply",
            "--dest=org.freedesktop.secrets",
            "/org/freedesktop/secrets",
            "org.freedesktop.Secret.Service.Lock",
            "array:objpath:/org/freedesktop/secrets/collection/login,/org/freedesktop/secrets/aliases/default",
        ])
        .output()
        .expect("dbus-send");
    assert!(locked.status.success());
    let (out, row) = doctor();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(row["status"], "failed", "{row}");
    let detail = row["detail"].as_str().unwrap();
    assert!(detail.contains("unlock your keyring"), "{row}");
    assert!(
        row["fix"].as_str().unwrap().contains("unlock the keyring"),
        "{row}"
    );
}
