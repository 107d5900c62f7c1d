//! Many helpers at once: racing agent starts, parallel stores and gets
//! (docs/protocol.md C23), no lost updates.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use regent_tests::{Outcome, TestEnv, all_at_once, wait_until};

fn assert_one_agent(env: &TestEnv) {
    let pid = env
        .agent_pid()
        .unwrap_or_else(|| panic!("no agent answers\n{}", env.diagnostics()));
    let Some(_) = env.agent_processes() else {
        regent_tests::skip(
            &regent_tests::current_test(),
            "the check for exactly one agent needs root (the agents are non-dumpable, so \
             their environment, which marks the test they belong to, is unreadable)",
        );
        return;
    };
    // A loser of the race may still be on its way out: give it a moment.
    let settled = wait_until(Duration::from_secs(5), || {
        env.agent_processes().is_some_and(|a| a.len() == 1)
    });
    let agents = env.agent_processes().unwrap_or_default();
    assert!(
        settled && agents == [pid],
        "expected exactly one agent (pid {pid}), found {agents:?}\n{}",
        env.diagnostics()
    );
}

#[test]
fn two_helpers_racing_start_exactly_one_agent() {
    for round in 0..3 {
        let env = TestEnv::new();
        let outs = all_at_once(2, |i| {
            if i == 0 {
                env.helper(&["get"], "race.example")
            } else {
                env.helper(&["list"], "")
            }
        });
        env.assert_not_found(&outs[0]);
        env.parse_list(&outs[1]);
        assert_one_agent(&env);
        let _ = round;
    }
}

#[test]
fn many_helpers_racing_start_exactly_one_agent() {
    let env = TestEnv::new();
    let n = 10;
    let outs = all_at_once(n, |i| {
        env.helper(
            &["store"],
            TestEnv::store_json(
                &format!("race{i}.example"),
                &format!("u{i}"),
                &format!("s{i}"),
            ),
        )
    });
    for (i, out) in outs.iter().enumerate() {
        env.assert_store_ok(out, &format!("s{i}"));
    }
    assert_one_agent(&env);
    assert_eq!(env.list_ok().len(), n);
}

fn check_all(env: &TestEnv, outs: &[Outcome], what: &str) {
    let failed: Vec<String> = outs
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.success())
        .map(|(i, o)| format!("#{i}: {o}"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} concurrent {what} failed:\n{}\n{}",
        failed.len(),
        outs.len(),
        failed.join("\n"),
        env.diagnostics()
    );
}

#[test]
fn hundred_concurrent_stores_then_hundred_concurrent_gets() {
    let env = TestEnv::new();
    env.list_ok(); // start the agent first: this test is about serving, not starting
    let n = 100;
    let host = |i: usize| format!("host{i:03}.example");
    let secret = |i: usize| format!("secret-{i}-{}", "x".repeat(i * 10));

    let outs = all_at_once(n, |i| {
        env.helper(
            &["store"],
            TestEnv::store_json(&host(i), &format!("user{i}"), &secret(i)),
        )
    });
    check_all(&env, &outs, "stores");
    for out in &outs {
        assert!(out.stdout.is_empty(), "store printed something\n{out}");
    }

    let outs = all_at_once(n, |i| env.helper(&["get"], host(i)));
    check_all(&env, &outs, "gets");
    for (i, out) in outs.iter().enumerate() {
        let creds = env.parse_get(out);
        assert_eq!(creds.username, format!("user{i}"), "get #{i}");
        assert_eq!(creds.secret, secret(i), "get #{i}");
    }

    let list = env.list_ok();
    let expected: BTreeMap<String, String> =
        (0..n).map(|i| (host(i), format!("user{i}"))).collect();
    assert_eq!(list, expected);
    assert_one_agent(&env);
}

#[test]
fn parallel_stores_of_one_key_leave_exactly_one_entry() {
    let env = TestEnv::new();
    env.list_ok();
    let n = 20;
    let outs = all_at_once(n, |i| {
        env.helper(
            &["store"],
            TestEnv::store_json("same.example", &format!("user{i}"), &format!("secret{i}")),
        )
    });
    check_all(&env, &outs, "stores of one key");

    let list = env.list_ok();
    assert_eq!(list.len(), 1, "exactly one entry: {list:?}");
    let user = list.get("same.example").expect("the entry").clone();
    let creds = env.get_ok("same.example");
    let i: usize = user
        .strip_prefix("user")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected username {user:?}"));
    assert_eq!(creds.username, user, "get and list agree on the winner");
    assert_eq!(
        creds.secret,
        format!("secret{i}"),
        "username and secret from the same store"
    );
    assert_eq!(env.ls_json().len(), 1);
}

#[test]
fn parallel_gets_of_one_key_all_succeed() {
    let env = TestEnv::new();
    env.store_ok("popular.example", "u", "the-secret");
    let outs = all_at_once(20, |_| env.helper(&["get"], "popular.example"));
    check_all(&env, &outs, "gets of one key");
    for out in &outs {
        assert_eq!(env.parse_get(out).secret, "the-secret");
    }
}

#[test]
fn concurrent_stores_and_erases_lose_no_update() {
    let env = TestEnv::new();
    let host = |i: usize| format!("mix{i:02}.example");
    for i in 0..25 {
        env.store_ok(&host(i), "old", "s");
    }
    // Erase 0..25 while storing 25..50, all at once.
    let outs = all_at_once(50, |i| {
        if i < 25 {
            env.helper(&["erase"], host(i))
        } else {
            env.helper(&["store"], TestEnv::store_json(&host(i), "new", "s"))
        }
    });
    check_all(&env, &outs, "stores and erases");
    let list = env.list_ok();
    let keys: BTreeSet<&str> = list.keys().map(String::as_str).collect();
    let expected: Vec<String> = (25..50).map(host).collect();
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(keys, expected);
    assert_eq!(env.status_json().credentials, 25);
}
