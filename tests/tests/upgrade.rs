//! The agent follows its program: replacing the installed `regent` (as a
//! package upgrade or `scripts/install` does, by renaming a new file into
//! place) makes the running agent hand over to the new program in place:
//! the same pid, socket, store and uptime, every login still there, and no
//! lookup refused or answered "not found" meanwhile. A replacement that does
//! not run is left alone.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use regent_tests::{Bins, HELPER, REGENT, StoreKind, TestEnv, random_secret, wait_until};

/// How long the agent may take to notice a replaced program and hand over:
/// it checks every 2 s and wants the new file unchanged over two checks.
/// A hang bound, not a measurement.
const HANDOVER_BOUND: Duration = Duration::from_secs(30);

/// Installs the binaries under test into `<root>/bin`, as a package would,
/// and makes the env use them: the helper starts the `regent` next to it.
fn installed(env: &mut TestEnv) -> PathBuf {
    let dir = env.root.join("bin");
    fs::create_dir_all(&dir).unwrap();
    for (from, name) in [(&env.bins.helper, HELPER), (&env.bins.regent, REGENT)] {
        fs::copy(from, dir.join(name)).unwrap();
    }
    env.bins = Bins {
        helper: dir.join(HELPER),
        regent: dir.join(REGENT),
    };
    dir
}

/// Puts `contents` at `path` the way dpkg does: a new file renamed over the
/// old one.
fn replace(path: &Path, contents: &[u8]) {
    let new = path.with_extension("dpkg-new");
    fs::write(&new, contents).unwrap();
    fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&new, path).unwrap();
}

/// The program `pid` runs, as the kernel names it (`<path> (deleted)` once
/// the file it was started from is replaced).
fn running_program(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
fn the_agent_hands_over_to_its_replaced_program_and_keeps_every_login() {
    let mut env = TestEnv::new();
    let bin = installed(&mut env);
    let regent = bin.join(REGENT);
    let logins: Vec<(String, String)> = (0..3)
        .map(|i| (format!("upgrade-{i}.example.test"), random_secret(24)))
        .collect();
    for (host, secret) in &logins {
        env.store_ok(host, "ci", secret);
    }
    let pid = env.agent_pid().expect("an agent serves");
    let before = env.status_json();
    assert_eq!(running_program(pid), regent.display().to_string());

    // Lookups all along the handover: none may fail.
    let stop = AtomicBool::new(false);
    let (gets, failures) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut failed = String::new();
    std::thread::scope(|s| {
        let getter = s.spawn(|| {
            let mut first_failure = String::new();
            while !stop.load(Ordering::SeqCst) {
                let (host, secret) = &logins[gets.load(Ordering::SeqCst) % logins.len()];
                let out = env.helper(&["get"], host);
                gets.fetch_add(1, Ordering::SeqCst);
                if !(out.success() && out.stdout().contains(secret.as_str())) {
                    failures.fetch_add(1, Ordering::SeqCst);
                    if first_failure.is_empty() {
                        first_failure = out.to_string();
                    }
                }
            }
            first_failure
        });
        replace(&regent, &fs::read(&env.bins.regent).unwrap());
        let handed = wait_until(HANDOVER_BOUND, || {
            running_program(pid) == regent.display().to_string()
        });
        // Some more lookups served by the new program.
        let served = gets.load(Ordering::SeqCst);
        wait_until(Duration::from_secs(10), || {
            gets.load(Ordering::SeqCst) >= served + 20
        });
        stop.store(true, Ordering::SeqCst);
        failed = getter.join().unwrap();
        assert!(
            handed,
            "the agent still runs {} after {HANDOVER_BOUND:?}\n{}",
            running_program(pid),
            env.diagnostics()
        );
    });
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "lookups failed during the handover ({} in all); the first:\n{failed}\n{}",
        gets.load(Ordering::SeqCst),
        env.diagnostics()
    );

    assert_eq!(env.agent_pid(), Some(pid), "the same agent, in place");
    assert_eq!(
        env.agent_processes().map(|a| a.len()),
        Some(1),
        "{}",
        env.diagnostics()
    );
    let after = env.status_json();
    assert_eq!(
        after.started, before.started,
        "uptime counts from the first start"
    );
    assert_eq!(after.store, before.store);
    assert_eq!(after.store_reason, before.store_reason);
    assert_eq!(after.credentials, logins.len());
    for (host, secret) in &logins {
        assert_eq!(
            &env.get_ok(host).secret,
            secret,
            "{host} after the handover"
        );
    }
    let log = env.log_contents();
    assert!(
        log.contains("handing over to the new one") && log.contains("agent upgraded in place"),
        "the log should say what happened\n{}",
        env.diagnostics()
    );
    for (_, secret) in &logins {
        assert!(!log.contains(secret.as_str()), "a secret in the agent log");
    }

    // A store after the handover is kept, and a second replacement is
    // followed too.
    let (host, secret) = ("upgrade-late.example.test", random_secret(24));
    env.store_ok(host, "ci", &secret);
    replace(&regent, &fs::read(&env.bins.regent).unwrap());
    assert!(
        wait_until(HANDOVER_BOUND, || env
            .log_contents()
            .matches("agent upgraded in place")
            .count()
            == 2),
        "no second handover\n{}",
        env.diagnostics()
    );
    assert_eq!(env.agent_pid(), Some(pid));
    assert_eq!(env.get_ok(host).secret, secret);
    assert_eq!(env.get_ok(&logins[0].0).secret, logins[0].1);
}

#[test]
fn a_replacement_that_does_not_run_is_left_alone() {
    let mut env = TestEnv::new();
    let bin = installed(&mut env);
    let regent = bin.join(REGENT);
    let secret = random_secret(24);
    env.store_ok("left-alone.example.test", "ci", &secret);
    let pid = env.agent_pid().expect("an agent serves");
    let real = fs::read(&env.bins.regent).unwrap();

    replace(&regent, b"#!/bin/sh\necho 'half an upgrade' >&2\nexit 1\n");
    assert!(
        wait_until(HANDOVER_BOUND, || env
            .log_contents()
            .contains("does not run")),
        "the agent should say it does not follow a program that does not run\n{}",
        env.diagnostics()
    );
    assert!(
        running_program(pid).ends_with(" (deleted)"),
        "still the old program"
    );
    assert_eq!(env.agent_pid(), Some(pid));
    assert_eq!(env.get_ok("left-alone.example.test").secret, secret);

    // The real program, once it is there, is followed.
    replace(&regent, &real);
    assert!(
        wait_until(HANDOVER_BOUND, || running_program(pid)
            == regent.display().to_string()),
        "no handover to the working program\n{}",
        env.diagnostics()
    );
    assert_eq!(env.agent_pid(), Some(pid));
    assert_eq!(env.get_ok("left-alone.example.test").secret, secret);
}

#[test]
fn a_master_key_from_the_environment_is_handed_over_too() {
    use base64::Engine;
    let mut env = TestEnv::with_store(StoreKind::File);
    let key = base64::engine::general_purpose::STANDARD.encode(regent_tests::random_bytes(32));
    env.set_env("REGENT_MASTER_KEY", Some(&key));
    let bin = installed(&mut env);
    let regent = bin.join(REGENT);
    let secret = random_secret(24);
    env.store_ok("keyed.example.test", "ci", &secret);
    let pid = env.agent_pid().expect("an agent serves");
    assert!(
        env.status_json()
            .store_detail
            .unwrap_or_default()
            .contains("REGENT_MASTER_KEY"),
        "the key comes from the environment\n{}",
        env.diagnostics()
    );

    replace(&regent, &fs::read(&env.bins.regent).unwrap());
    assert!(
        wait_until(HANDOVER_BOUND, || running_program(pid)
            == regent.display().to_string()),
        "no handover\n{}",
        env.diagnostics()
    );
    assert_eq!(env.agent_pid(), Some(pid));
    assert_eq!(env.get_ok("keyed.example.test").secret, secret);
    let late = random_secret(24);
    env.store_ok("keyed-late.example.test", "ci", &late);
    assert_eq!(env.get_ok("keyed-late.example.test").secret, late);
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    assert!(
        !regent_tests::contains(&environ, key.as_bytes()),
        "the master key must not be in the agent's environment"
    );
}
