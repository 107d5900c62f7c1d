//! What the store promises after crashes, lost files and odd registry names:
//!
//! - after any crash a key holds wholly the old or wholly the new login, and
//!   `list` and `get` agree (records hold the whole login; the index is
//!   checked against them);
//! - a missing index is rebuilt from the file store; a missing `secrets.enc`
//!   whose index lists logins is refused, not replaced by an empty file;
//! - no registry name reaches regent's own keyring entries;
//! - a store is refused when `get` could not send the login back;
//! - a bad master key file says what each way out does to the logins.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use regent_shared::protocol::{MAX_FRAME, Request, Response};
use regent_tests::{
    StoreKind, TestEnv, is_alive, kill, not_applicable, random_secret, unique_host, wait_until,
};

/// The secret of store number `n`: its number is in it, so a get shows
/// which store the secret came from.
fn nth_secret(n: usize) -> String {
    format!("secret-{n}-{}", random_secret(16))
}

fn number_in(s: &str, prefix: &str) -> Option<usize> {
    s.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

fn index_path(env: &TestEnv) -> std::path::PathBuf {
    env.data_home
        .join("regent")
        .join(format!("index-{}.json", env.store.name()))
}

/// Asserts that `get` and `list` tell the same story about `key`: the login
/// `get` serves is one store's whole (its username and its secret), and
/// `list` shows that username, or neither shows anything.
fn assert_whole_and_agreeing(env: &TestEnv, key: &str, round: usize) -> Option<usize> {
    let out = env.helper(&["get"], key);
    let list = env.list_ok();
    if !out.success() {
        env.assert_not_found(&out);
        assert!(
            !list.contains_key(key),
            "round {round}: list shows {key} but get does not find it: {list:?}\n{}",
            env.diagnostics()
        );
        return None;
    }
    let creds = env.parse_get(&out);
    let user_n = number_in(&creds.username, "user-");
    let secret_n = number_in(&creds.secret, "secret-");
    assert!(
        user_n.is_some() && user_n == secret_n,
        "round {round}: {key} mixes two logins: username {:?} with the secret of store {:?}\n{}",
        creds.username,
        secret_n,
        env.diagnostics()
    );
    assert_eq!(
        list.get(key),
        Some(&creds.username),
        "round {round}: list and get disagree about {key}\n{}",
        env.diagnostics()
    );
    user_n
}

/// SIGKILL while one key is overwritten (and sometimes erased) as fast as
/// the agent takes it; after each crash the key is one login, whole, and
/// `list` agrees with `get`.
#[test]
fn crash_during_overwrite_keeps_each_login_whole() {
    let env = TestEnv::new();
    if !env.store.is_persistent() {
        not_applicable(
            "crash_during_overwrite_keeps_each_login_whole",
            "the memory store keeps nothing across a crash; the persistent phases run it",
        );
        return;
    }
    let key = unique_host("overwrite");
    let rounds = 30;
    let started = Instant::now();
    let mut n = 0usize;
    let mut kills = 0;
    for round in 0..rounds {
        if started.elapsed() > Duration::from_secs(150) {
            break;
        }
        env.store_ok(&key, &format!("user-{n}-first"), &nth_secret(n));
        n += 1;
        let pid = env.agent_pid().expect("an agent after a store");
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let socket = env.socket.clone();
            let key = key.clone();
            let stop = stop.clone();
            let first = n;
            thread::spawn(move || {
                let Ok(mut conn) = regent_shared::client::connect(&socket, Duration::from_secs(5))
                else {
                    return first;
                };
                let mut i = first;
                while !stop.load(Ordering::SeqCst) {
                    // Every fourth write an erase, so erases are cut too.
                    let req = if i % 4 == 3 {
                        Request::Erase {
                            server_url: key.clone(),
                        }
                    } else {
                        Request::Store {
                            server_url: key.clone(),
                            username: format!("user-{i}-x"),
                            secret: nth_secret(i).into(),
                        }
                    };
                    i += 1;
                    if conn.call(&req, Duration::from_secs(20)).is_err() {
                        break;
                    }
                }
                i
            })
        };
        // Somewhere inside a write: the writes take about 1 to 20 ms each.
        thread::sleep(Duration::from_millis(5 + (round as u64 * 7919) % 60));
        kill(pid, libc::SIGKILL);
        kills += 1;
        assert!(
            wait_until(Duration::from_secs(10), || !is_alive(pid)),
            "agent {pid} survived SIGKILL"
        );
        stop.store(true, Ordering::SeqCst);
        n = writer.join().expect("writer thread") + 1;
        // The next helper call starts a new agent on the same store.
        assert_whole_and_agreeing(&env, &key, round);
    }
    assert!(kills >= 10, "only {kills} crashes: the test proved little");
}

/// The file store's index is written after `secrets.enc`: a crash in
/// between leaves the index one write behind. The records win, and the index
/// is corrected from them.
#[test]
fn index_one_write_behind_the_file_store_is_corrected() {
    let env = TestEnv::with_store(StoreKind::File);
    let key = unique_host("behind");
    let gone = unique_host("erased");
    env.store_ok(&key, "user-1-old", &nth_secret(1));
    env.store_ok(&gone, "user-7-gone", &nth_secret(7));
    env.stop_agent();
    let index = index_path(&env);
    let old_index = fs::read(&index).expect("the file store's index");

    env.store_ok(&key, "user-2-new", &nth_secret(2));
    env.erase_ok(&gone);
    env.stop_agent();
    // What a crash between the two writes leaves behind.
    fs::write(&index, &old_index).unwrap();

    let got = env.get_ok(&key);
    assert_eq!(got.username, "user-2-new", "{}", env.diagnostics());
    assert_eq!(number_in(&got.secret, "secret-"), Some(2));
    assert_whole_and_agreeing(&env, &key, 0);
    assert_eq!(assert_whole_and_agreeing(&env, &gone, 0), None);
    // And the index on disk was corrected.
    let text = fs::read_to_string(&index).unwrap();
    assert!(text.contains("user-2-new"), "{text}");
    assert!(!text.contains(&gone), "{text}");
}

/// A deleted index next to a file store with logins: rebuilt from the
/// records, usernames and server URLs as stored.
#[test]
fn missing_index_is_rebuilt_from_the_file_store() {
    let env = TestEnv::with_store(StoreKind::File);
    let hosts: Vec<String> = (0..3)
        .map(|i| unique_host(&format!("rebuild{i}")))
        .collect();
    env.store_ok(&format!("https://{}/", hosts[0]), "alice", "s0");
    env.store_ok(&hosts[1], "bob", "s1");
    env.store_ok(&hosts[2], "carol", "s2");
    let before = env.list_ok();
    env.stop_agent();
    fs::remove_file(index_path(&env)).unwrap();

    assert_eq!(env.list_ok(), before, "{}", env.diagnostics());
    assert_eq!(env.get_ok(&hosts[0]).secret, "s0");
    assert_eq!(env.get_ok(&hosts[2]).username, "carol");
    assert!(
        env.log_contents().contains("rebuilt from the records"),
        "the log should say the index was rebuilt\n{}",
        env.diagnostics()
    );
}

/// `secrets.enc` deleted while its index lists logins: the agent refuses to
/// start (it would otherwise make a new empty file and count the old
/// entries), and says how to restore or start over.
#[test]
fn missing_secrets_file_with_an_index_is_refused() {
    let env = TestEnv::with_store(StoreKind::File);
    let host = unique_host("lost");
    env.store_ok(&host, "u", "s");
    env.stop_agent();
    let secrets = env.data_home.join("regent").join("secrets.enc");
    fs::remove_file(&secrets).unwrap();

    let out = env.regent(&["start"]);
    assert!(!out.success(), "the agent started over a lost store\n{out}");
    let text = out.to_string();
    assert!(
        text.contains(&format!("{} is missing", secrets.display())),
        "{out}"
    );
    assert!(text.contains("lists 1 login(s)"), "{out}");
    assert!(text.contains(".old"), "the way to start over: {out}");
    assert!(!secrets.exists(), "a new secrets.enc was made");

    let get = env.helper(&["get"], &host);
    env.assert_not_found(&get);
    assert!(get.stderr().contains("is missing"), "{get}");
}

/// Registry logins named like regent's own keyring entries are plain
/// logins: a restart (which probes the keyring) keeps them.
#[test]
fn registry_names_never_reach_regents_own_keyring_entries() {
    let env = TestEnv::new();
    if env.store != StoreKind::Keyring {
        not_applicable(
            "registry_names_never_reach_regents_own_keyring_entries",
            "only the keyring store shares a namespace with regent's entries",
        );
        return;
    }
    for (host, user) in [("__regent_probe__", "p"), ("file-master-key", "m")] {
        env.store_ok(host, user, &format!("secret-of-{host}"));
    }
    env.stop_agent();
    for host in ["__regent_probe__", "file-master-key"] {
        assert_eq!(
            env.get_ok(host).secret,
            format!("secret-of-{host}"),
            "{}",
            env.diagnostics()
        );
    }
}

/// The file store's master key in the keyring survives a keyring-store
/// login named `file-master-key` under the same keyring service.
#[test]
fn a_login_named_file_master_key_leaves_the_file_stores_key_alone() {
    if StoreKind::from_env() != StoreKind::Keyring {
        not_applicable(
            "a_login_named_file_master_key_leaves_the_file_stores_key_alone",
            "needs the Secret Service the keyring phase runs",
        );
        return;
    }
    let file = TestEnv::with_store(StoreKind::File);
    let host = unique_host("kept");
    file.store_ok(&host, "u", "file-secret");
    assert!(
        !file.config_home.join("regent").join("master.key").exists(),
        "the file store should keep its master key in the keyring here\n{}",
        file.diagnostics()
    );
    file.stop_agent();

    let mut keyring = TestEnv::with_store(StoreKind::Keyring);
    keyring.keyring_service = file.keyring_service.clone();
    keyring.store_ok("file-master-key", "intruder", "not-a-master-key");
    keyring.stop_agent();

    assert_eq!(
        file.get_ok(&host).secret,
        "file-secret",
        "{}",
        file.diagnostics()
    );
    assert_eq!(keyring.get_ok("file-master-key").secret, "not-a-master-key");
    keyring.stop_agent();
}

/// A login `get` could not send back in one frame is refused when stored,
/// with the limit, instead of being stored and never served.
#[test]
fn a_login_too_large_to_send_back_is_refused() {
    let env = TestEnv::new();
    let host = unique_host("huge");
    // The largest secret whose Store request still fits in one frame: the
    // answer to a get (a longer type name) would not.
    let overhead = serde_json::to_vec(&Request::Store {
        server_url: host.clone(),
        username: "u".into(),
        secret: String::new().into(),
    })
    .unwrap()
    .len();
    let secret = "a".repeat(MAX_FRAME - 2 - overhead);
    let request_len = serde_json::to_vec(&Request::Store {
        server_url: host.clone(),
        username: "u".into(),
        secret: secret.clone().into(),
    })
    .unwrap()
    .len();
    assert!(request_len <= MAX_FRAME);

    let out = env.helper(&["store"], TestEnv::store_json(&host, "u", &secret));
    assert_eq!(out.code(), Some(1), "stored what get cannot return\n{out}");
    assert_eq!(out.out_lines().len(), 1, "{out}");
    if env.store != StoreKind::Keyutils {
        assert!(
            out.stdout().contains("bytes that fit in one answer"),
            "the message should give the limit\n{out}"
        );
        let limit = (MAX_FRAME - 1024).to_string();
        assert!(out.stdout().contains(&limit), "{out}");
    }
    env.assert_no_secret_in_stderr(&out, &secret);
    env.get_missing(&host);

    // Well under the limit it round-trips, on every store that keeps it.
    if env.store != StoreKind::Keyutils {
        let fits = "b".repeat(MAX_FRAME / 2);
        env.store_ok(&host, "u", &fits);
        assert!(env.get_ok(&host).secret == fits);
    }
    // The response type is what made the difference.
    let answer = serde_json::to_vec(&Response::Credentials {
        server_url: host.clone(),
        username: "u".into(),
        secret: secret.into(),
    })
    .unwrap()
    .len();
    assert!(
        answer > MAX_FRAME,
        "the probe size no longer probes the edge"
    );
}

/// A corrupt key file of an existing store: the advice is to restore the
/// key (a new one can never decrypt the store), and how to start over.
#[test]
fn a_bad_master_key_file_says_what_each_choice_does() {
    let mut env = TestEnv::with_store(StoreKind::File);
    // The key in a key file, not the keyring.
    env.set_env("DBUS_SESSION_BUS_ADDRESS", Some("unix:path=/nonexistent"));
    env.store_ok(&unique_host("k"), "u", "s");
    env.stop_agent();
    let key_file = env.config_home.join("regent").join("master.key");
    assert!(key_file.exists(), "{}", env.diagnostics());
    fs::write(&key_file, "not base64 at all!\n").unwrap();

    let out = env.regent(&["start"]);
    assert!(!out.success(), "{out}");
    let text = out.to_string();
    assert!(
        text.contains("can only be decrypted with the key it was written with"),
        "{out}"
    );
    assert!(
        text.contains("secrets.enc.lost"),
        "the way to start over: {out}"
    );
    assert!(
        text.contains("index-file.json.lost"),
        "the way to start over: {out}"
    );
    assert!(
        !text.contains("openssl"),
        "a new key cannot open this store: {out}"
    );

    // Starting over as the message says: an empty store and a new key.
    let data = env.data_home.join("regent");
    for path in [
        data.join("secrets.enc"),
        data.join("index-file.json"),
        key_file.clone(),
    ] {
        assert!(
            text.contains(&format!("mv {p} {p}.lost", p = path.display())),
            "{out}"
        );
        fs::rename(&path, path.with_extension("lost")).unwrap();
    }
    let host = unique_host("again");
    env.store_ok(&host, "u", "fresh");
    assert_eq!(env.list_ok().len(), 1, "{}", env.diagnostics());
    assert!(key_file.exists(), "a new key file");
}

/// Kernel keys lost (a reboot, expiry, `keyctl purge`) leave `list` at the
/// next start, so `list` never shows what `get` cannot serve.
#[test]
fn keys_lost_from_the_kernel_keyring_leave_the_list() {
    let env = TestEnv::new();
    if env.store != StoreKind::Keyutils {
        not_applicable(
            "keys_lost_from_the_kernel_keyring_leave_the_list",
            "the keyutils phase runs it",
        );
        return;
    }
    let lost = unique_host("purged");
    let kept = unique_host("kept");
    env.store_ok(&lost, "u1", "s1");
    env.store_ok(&kept, "u2", "s2");
    env.stop_agent();
    let description = format!("keyring:{lost}@{}", env.keyring_service);
    let purge = std::process::Command::new("keyctl")
        .args(["session", "-", "sh", "-c"])
        .arg(format!(
            "keyctl get_persistent @s >/dev/null && keyctl purge -s user '{description}'"
        ))
        .output()
        .expect("run keyctl");
    assert!(
        String::from_utf8_lossy(&purge.stdout).contains("purged 1 keys"),
        "could not remove {description}: {purge:?}"
    );
    let list = env.list_ok();
    assert!(!list.contains_key(&lost), "{list:?}\n{}", env.diagnostics());
    assert_eq!(list.get(&kept).map(String::as_str), Some("u2"));
    env.get_missing(&lost);
    assert_eq!(env.get_ok(&kept).secret, "s2");
}
