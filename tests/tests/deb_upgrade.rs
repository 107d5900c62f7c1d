//! A package upgrade under a running agent: with the .deb installed and its
//! binaries under test (`REGENT_BIN_DIR=/usr/bin`), an agent started by the
//! installed helper holds logins in the memory store (the store an upgrade
//! could lose); `dpkg -i` of the next package (`REGENT_TEST_DEB_NEXT`)
//! replaces /usr/bin/regent, and the agent hands over to it in place: the
//! same pid, every login, lookups answered all along.
//!
//! Run by scripts/test's `deb` phase, which builds both packages; the other
//! phases leave it out (`--skip deb_`).

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use regent_tests::{StoreKind, TestEnv, random_secret, skip, wait_until};

const HANDOVER_BOUND: Duration = Duration::from_secs(30);

fn running_program(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
fn deb_upgrade_hands_the_running_agent_over_to_the_new_package() {
    let test = "deb_upgrade_hands_the_running_agent_over_to_the_new_package";
    let Some(next) = std::env::var_os("REGENT_TEST_DEB_NEXT").map(PathBuf::from) else {
        skip(
            test,
            "REGENT_TEST_DEB_NEXT is not set (scripts/test's deb phase sets it)",
        );
        return;
    };
    let env = TestEnv::with_store(StoreKind::Memory);
    let installed = env.bins.regent.clone();
    assert!(
        installed.starts_with("/usr/bin"),
        "the deb phase tests the installed binaries (REGENT_BIN_DIR=/usr/bin), not {}",
        installed.display()
    );
    let logins: Vec<(String, String)> = (0..3)
        .map(|i| (format!("deb-{i}.example.test"), random_secret(24)))
        .collect();
    for (host, secret) in &logins {
        env.store_ok(host, "ci", secret);
    }
    let pid = env.agent_pid().expect("an agent serves");
    assert_eq!(running_program(pid), installed.display().to_string());

    let stop = AtomicBool::new(false);
    let (gets, failures) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut first_failure = String::new();
    let mut dpkg = String::new();
    std::thread::scope(|s| {
        let getter = s.spawn(|| {
            let mut first = String::new();
            while !stop.load(Ordering::SeqCst) {
                let (host, secret) = &logins[gets.load(Ordering::SeqCst) % logins.len()];
                let out = env.helper(&["get"], host);
                gets.fetch_add(1, Ordering::SeqCst);
                if !(out.success() && out.stdout().contains(secret.as_str())) {
                    failures.fetch_add(1, Ordering::SeqCst);
                    if first.is_empty() {
                        first = out.to_string();
                    }
                }
            }
            first
        });
        let out = Command::new("dpkg")
            .arg("-i")
            .arg(&next)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("run dpkg");
        dpkg = format!(
            "dpkg -i {}: {}\n{}{}",
            next.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let installed_ok = out.status.success();
        let handed = installed_ok
            && wait_until(HANDOVER_BOUND, || {
                running_program(pid) == installed.display().to_string()
            });
        let served = gets.load(Ordering::SeqCst);
        wait_until(Duration::from_secs(10), || {
            gets.load(Ordering::SeqCst) >= served + 20
        });
        stop.store(true, Ordering::SeqCst);
        first_failure = getter.join().unwrap();
        assert!(installed_ok, "{dpkg}");
        assert!(
            handed,
            "the agent still runs {} after the upgrade\n{dpkg}\n{}",
            running_program(pid),
            env.diagnostics()
        );
    });
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "lookups failed during the upgrade ({} in all); the first:\n{first_failure}\n{}",
        gets.load(Ordering::SeqCst),
        env.diagnostics()
    );
    assert_eq!(env.agent_pid(), Some(pid), "the same agent, in place");
    for (host, secret) in &logins {
        assert_eq!(&env.get_ok(host).secret, secret, "{host} after the upgrade");
    }
    assert!(env.log_contents().contains("agent upgraded in place"));
}
