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
        eprintln!(
            "SKIP: sigkill_during_stores_and_erases_loses_nothing_acknowledged: the {} store \
             keeps nothing across restarts by design (run with REGENT_TEST_STORE=file, \
             keyutils or keyring)",
            env.store.name()
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
    assert!(kills >= 3, "only {kills} kills happened; the test proved little");

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
