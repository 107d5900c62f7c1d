//! Crash consistency: the agent is SIGKILLed at random moments while
//! helpers store and erase; after a restart every acknowledged store is
//! there, every acknowledged erase is gone, and the store opens cleanly.
//!
//! An operation that was cut off (the helper got no answer) may or may not
//! have reached the store: after the crash a key holds its last acknowledged
//! state or one of the cut-off operations sent after it, nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use regent_tests::{NOT_FOUND, TestEnv, kill, random_secret, unique_host};

const THREADS: usize = 6;
const KEYS_PER_THREAD: usize = 8;
const OPS_PER_THREAD: usize = 350;

/// What a key holds: a secret, or nothing.
type State = Option<String>;

#[derive(Default)]
struct History {
    /// The state after the last acknowledged operation (`None` inside: never
    /// acknowledged anything, so absent).
    acked: State,
    /// Operations sent after it that got no answer.
    cut_off: Vec<State>,
}

#[test]
fn sigkill_during_stores_and_erases_loses_nothing_acknowledged() {
    let env = TestEnv::new();
    if !env.store.is_persistent() {
        regent_tests::not_applicable(
            "sigkill_during_stores_and_erases_loses_nothing_acknowledged",
            &format!(
                "the {} store keeps nothing across restarts by design; this test runs in the \
                 file, keyutils and keyring phases",
                env.store.name()
            ),
        );
        return;
    }
    let env = Arc::new(env);
    let prefix = unique_host("crash");
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));

    // The killer: SIGKILL whatever agent answers, every 150-400 ms.
    let killer = {
        let env = env.clone();
        let done = done.clone();
        let kills = kills.clone();
        thread::spawn(move || {
            let mut n: u64 = 0;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                thread::sleep(Duration::from_millis(150 + (n * 7919 % 250)));
                if let Some(pid) = env.agent_pid() {
                    kill(pid, libc::SIGKILL);
                    kills.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    let histories: Arc<Mutex<HashMap<String, History>>> = Arc::default();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let env = env.clone();
            let histories = histories.clone();
            let prefix = prefix.clone();
            thread::spawn(move || {
                for i in 0..OPS_PER_THREAD {
                    let key = format!("k{t}-{}.{prefix}", (i * 31 + t) % KEYS_PER_THREAD);
                    let store = i % 4 != 3;
                    let (target, out) = if store {
                        let secret = format!("{t}-{i}-{}", random_secret(12));
                        let json = TestEnv::store_json(&key, "u", &secret);
                        (Some(secret), env.helper(&["store"], json))
                    } else {
                        (None, env.helper(&["erase"], &key))
                    };
                    let mut h = histories.lock().unwrap();
                    let h = h.entry(key).or_default();
                    if out.success() {
                        h.acked = target;
                        h.cut_off.clear();
                    } else {
                        h.cut_off.push(target);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker panicked");
    }
    done.store(true, Ordering::SeqCst);
    killer.join().unwrap();
    let kills = kills.load(Ordering::SeqCst);
    assert!(
        kills >= 3,
        "only {kills} kills happened; the test proved little"
    );

    // One more crash, then check everything on a fresh agent.
    if let Some(pid) = env.agent_pid() {
        kill(pid, libc::SIGKILL);
    }
    let histories = histories.lock().unwrap();
    let mut acked_ops = 0;
    let mut ambiguous = 0;
    for (key, h) in histories.iter() {
        let out = env.helper(&["get"], key);
        let now: State = if out.success() {
            Some(env.parse_get(&out).secret)
        } else {
            assert_eq!(
                out.out_trim(),
                NOT_FOUND,
                "get {key} failed after the crashes\n{out}\n{}",
                env.diagnostics()
            );
            None
        };
        acked_ops += 1;
        if !h.cut_off.is_empty() {
            ambiguous += 1;
        }
        assert!(
            now == h.acked || h.cut_off.contains(&now),
            "{key}: holds {:?} after the crashes; last acknowledged {:?}, cut off since {:?}\n{}",
            now.as_deref().map(|s| &s[..s.len().min(12)]),
            h.acked.as_deref().map(|s| &s[..s.len().min(12)]),
            h.cut_off.len(),
            env.diagnostics()
        );
    }
    eprintln!(
        "crash test: {} ops, {kills} SIGKILLs, {acked_ops} keys checked ({ambiguous} with a \
         cut-off op at the end)",
        THREADS * OPS_PER_THREAD
    );
}

/// Unmounts the tmpfs when the test ends, even on panic.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_fails_the_store_clearly_and_keeps_the_old_data() {
    use regent_tests::StoreKind;

    let env = TestEnv::with_store(StoreKind::File);
    // The data directory (secrets.enc and the index) on a 96 KiB tmpfs.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96k,mode=0700", "tmpfs"])
        .arg(&env.data_home)
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            skip_full_disk(&String::from_utf8_lossy(&o.stderr));
            return;
        }
        Err(e) => {
            skip_full_disk(&e.to_string());
            return;
        }
    }
    let _guard = Tmpfs(env.data_home.clone());

    let prefix = unique_host("full");
    let mut kept = Vec::new();
    let mut refusal = None;
    for i in 0..40 {
        let key = format!("k{i}.{prefix}");
        let secret = random_secret(if i == 0 { 20 } else { 12 * 1024 });
        let out = env.helper(&["store"], TestEnv::store_json(&key, "u", &secret));
        if out.success() {
            kept.push((key, secret));
        } else {
            refusal = Some((key, out));
            break;
        }
    }
    let (lost_key, out) = refusal.expect("40 stores of 12 KiB fit in a 96 KiB tmpfs?");
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.out_lines().len(), 1, "{out}");
    // The message names the key and the file, says the disk is full, that
    // nothing was lost, and what to do.
    let line = out.out_trim();
    let file = env.data_home.join("regent").join("secrets.enc");
    for wanted in [
        format!("cannot store the credentials for {lost_key}"),
        format!("cannot write {}", file.display()),
        "the disk is full".to_owned(),
        "No space left on device".to_owned(),
        "the previous version is unchanged".to_owned(),
        "Free some space and retry".to_owned(),
    ] {
        assert!(
            line.contains(&wanted),
            "the full-disk error should contain {wanted:?}\n{out}"
        );
    }
    assert!(kept.len() >= 2, "too few stores fit: {}", kept.len());
    eprintln!(
        "full disk after {} stores: {}",
        kept.len(),
        out.stdout().trim()
    );

    // Nothing half-written is left behind, and the old data is intact, also
    // for a new agent that reads it from disk.
    let names: Vec<String> = std::fs::read_dir(env.data_home.join("regent"))
        .or_else(|_| std::fs::read_dir(&env.data_home))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("tmp")),
        "temporary files left: {names:?}"
    );
    env.stop_agent();
    for (key, secret) in &kept {
        assert_eq!(&env.get_ok(key).secret, secret, "{key} changed");
    }
    env.get_missing(&lost_key);
}

fn skip_full_disk(why: &str) {
    regent_tests::skip(
        "a_full_disk_fails_the_store_clearly_and_keeps_the_old_data",
        &format!("cannot mount a tmpfs here ({}); it needs root", why.trim()),
    );
}
