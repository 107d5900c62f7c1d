//! The Secret Service goes away or stops answering while the agent runs on
//! the keyring store: cached credentials keep being served, stores fail with
//! a message that says what to do, and nothing waits beyond its bound.
//!
//! Each test brings up its own private D-Bus session with its own
//! gnome-keyring (scripts/with-secret-service), so killing or freezing it
//! touches nothing else.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regent_tests::{StoreKind, TestEnv, kill, unique_host, which};

/// A private session bus with an unlocked gnome-keyring, until dropped.
struct SecretService {
    child: Child,
    address: String,
    daemon: u32,
}

impl SecretService {
    fn start(test: &str) -> Option<SecretService> {
        for tool in ["dbus-run-session", "gnome-keyring-daemon", "dbus-send"] {
            if which(tool).is_none() {
                skip_loudly(test, &format!("{tool} is not installed"));
                return None;
            }
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/with-secret-service");
        let mut child = Command::new(script)
            .args([
                "sh",
                "-c",
                "echo \"$DBUS_SESSION_BUS_ADDRESS\"; exec sleep 600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("run scripts/with-secret-service");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        if address.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            skip_loudly(
                test,
                "scripts/with-secret-service did not bring up a Secret Service",
            );
            return None;
        }
        let daemon = find_keyring_daemon(&address).expect("the gnome-keyring-daemon of the bus");
        Some(SecretService {
            child,
            address,
            daemon,
        })
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        kill(self.daemon, libc::SIGCONT);
        kill(self.daemon, libc::SIGKILL);
        // The whole group: dbus-run-session, its bus, sleep.
        // SAFETY: kill(2) on our own process group.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// The gnome-keyring-daemon whose environment names `address`.
fn find_keyring_daemon(address: &str) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if !comm.trim().starts_with("gnome-keyring") {
                continue;
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let wanted = format!("DBUS_SESSION_BUS_ADDRESS={address}");
            if environ
                .split(|b| *b == 0)
                .any(|var| var == wanted.as_bytes())
            {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn skip_loudly(test: &str, why: &str) {
    let msg = format!("SKIP: {test}: {why}");
    if std::env::var_os("REGENT_E2E_STRICT").is_some_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("{msg}");
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

    kill(ss.daemon, libc::SIGKILL);

    assert_eq!(env.get_ok(&host).secret, "cached-secret");
    let list = env.list_ok();
    assert!(list.contains_key(&host), "{list:?}");
    let out = env.helper(
        &["store"],
        TestEnv::store_json(&unique_host("after"), "u", "new-secret"),
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.out_lines().len(), 1, "{out}");
    let line = out.stdout();
    eprintln!("store after the Secret Service died: {}", line.trim());
    assert!(
        line.contains("REGENT_STORE=file") || line.contains("unlock") || line.contains("start"),
        "the error should say what to do: {line}"
    );
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

    kill(ss.daemon, libc::SIGSTOP);

    // A cached get does not touch the keyring at all.
    assert_eq!(env.get_ok(&host).secret, "frozen-cached");
    // A store waits for the keyring, but not forever: the helper answers
    // (the harness fails a call that takes 30 s as a hang).
    let out = env.helper(
        &["store"],
        TestEnv::store_json(&unique_host("frozen-after"), "u", "x"),
    );
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
    assert_eq!(env.get_ok(&host).secret, "frozen-cached");
    kill(ss.daemon, libc::SIGCONT);
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
    let out = env.helper(
        &["store"],
        TestEnv::store_json(&unique_host("locked-after"), "u", "x"),
    );
    eprintln!("store into a locked keyring: {}", out.stdout().trim());
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.out_lines().len(), 1, "{out}");
    assert!(
        out.stdout().contains("unlock") || out.stdout().contains("REGENT_STORE=file"),
        "the error should say what to do\n{out}"
    );
    assert_eq!(env.get_ok(&host).secret, "locked-cached");
}
