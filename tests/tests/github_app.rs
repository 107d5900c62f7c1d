//! The `github-app` source through the real binaries, against the loopback
//! fake of GitHub's installation-token endpoint
//! (`regent_tests::fakes::github`), which checks the JWT's RS256 signature
//! against the App's public key, its claims by its own clock, and the
//! headers. The App's key is made at test time by `openssl genrsa` and
//! handed to the agent as a named secret (`regent secret set gh-app`, the
//! PEM on stdin) or a file. Counts, not timings, are asserted, but for the
//! rate limit's reset.

use std::fs;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regent_tests::fakes::github::{
    ACCEPT, API_VERSION, AppKey, EXP_MESSAGE, FakeGitHub, IAT_MESSAGE, Reply,
};
use regent_tests::{Input, Outcome, TestEnv, all_at_once, skip, wait_until};

const HOST: &str = "ghcr.io";
const APP_ID: u64 = 123456;
const INSTALLATION: u64 = 7890123;
const SECRET: &str = "gh-app";

struct Gh {
    env: TestEnv,
    fake: FakeGitHub,
}

impl Gh {
    /// An agent whose `ghcr.io` entry is App [`APP_ID`], installation
    /// [`INSTALLATION`], with its key in the secret [`SECRET`], against a
    /// fake whose tokens live `lifetime`. `None` (after a counted skip)
    /// without openssl.
    fn new(test: &str, lifetime: Duration) -> Option<Gh> {
        Gh::with_entry(test, lifetime, |_| {
            format!("installation_id = {INSTALLATION}\nprivate_key = {{ secret = \"{SECRET}\" }}\n")
        })
    }

    /// As [`Gh::new`], the entry's key settings and installation from
    /// `settings` (given the fake's key).
    fn with_entry(
        test: &str,
        lifetime: Duration,
        settings: impl FnOnce(&AppKey) -> String,
    ) -> Option<Gh> {
        let key = match AppKey::generate() {
            Ok(key) => key,
            Err(why) => {
                skip(test, &format!("cannot make an RSA key with openssl: {why}"));
                return None;
            }
        };
        let fake = FakeGitHub::start(&APP_ID.to_string(), INSTALLATION, key, lifetime);
        let env = TestEnv::new();
        let config = env.config_home.join("regent").join("config.toml");
        fs::create_dir_all(config.parent().unwrap()).unwrap();
        fs::write(
            &config,
            format!(
                "[[registry]]\nmatch = \"{HOST}\"\nsource = \"github-app\"\napp_id = {APP_ID}\n\
                 api_url = \"{}\"\n{}",
                fake.url(),
                settings(fake.key())
            ),
        )
        .unwrap();
        let gh = Gh { env, fake };
        gh.set_secret(SECRET, &gh.fake.key().private_pem.clone());
        Some(gh)
    }

    fn set_secret(&self, name: &str, value: &str) {
        let set = self.env.run(
            self.env
                .command(&self.env.bins.regent)
                .args(["secret", "set", name]),
            Input::Bytes(value.as_bytes()),
            regent_tests::DEFAULT_TIMEOUT,
        );
        assert!(set.success() && set.stdout.is_empty(), "{set}");
    }

    fn get(&self) -> Outcome {
        self.env.helper(&["get"], HOST)
    }

    fn error_text(&self, out: &Outcome) -> String {
        assert!(!out.success(), "expected an error, got {out}");
        let text = out.out_trim();
        eprintln!("error: {text}");
        text
    }

    /// The one `regent ls --json` row of [`HOST`].
    fn row(&self) -> regent_shared::protocol::EntryInfo {
        self.env
            .ls_json()
            .into_iter()
            .find(|r| r.key == HOST)
            .unwrap_or_else(|| panic!("no ls row for {HOST}\n{}", self.env.diagnostics()))
    }

    /// Nothing secret in the agent's log: no token handed out, no JWT
    /// sent, no line of the key.
    fn assert_log_clean(&self, tokens: &[String]) {
        let log = self.env.log_contents();
        for token in tokens {
            assert!(!log.contains(token.as_str()), "a token is in the agent log");
        }
        for req in self.fake.requests() {
            if let Some(auth) = req.header("authorization") {
                let jwt = auth.split_once(' ').map_or(auth, |(_, j)| j);
                assert!(!log.contains(jwt), "the JWT is in the agent log");
            }
        }
        for line in self
            .fake
            .key()
            .private_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
        {
            assert!(!log.contains(line), "the private key is in the agent log");
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn a_cold_get_returns_x_access_token_and_the_installation_token() {
    let Some(gh) = Gh::new(
        "a_cold_get_returns_x_access_token_and_the_installation_token",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    let creds = gh.env.get_ok(&format!("https://{HOST}"));
    assert_eq!(creds.username, "x-access-token");
    assert_eq!(creds.secret, gh.fake.token(1));
    let log = gh.fake.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].status, 201, "{log:?}");
    assert_eq!(log[0].installation, INSTALLATION.to_string());
    let claims = log[0].claims.as_ref().unwrap();
    assert_eq!(claims["iss"], APP_ID.to_string());
    let user_agent = log[0].user_agent.as_deref().unwrap_or_default();
    assert!(user_agent.starts_with("regent/"), "{user_agent}");
    let req = &gh.fake.requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.header("accept"), Some(ACCEPT));
    assert_eq!(req.header("x-github-api-version"), Some(API_VERSION));
    // Cached: the next get makes no call.
    assert_eq!(gh.env.get_ok(HOST).secret, creds.secret);
    assert_eq!(gh.fake.calls(), 1);
    // `regent ls` shows it with its source and GitHub's expiry.
    let row = gh.row();
    assert_eq!(row.source, "github-app");
    assert_eq!(row.username, "x-access-token");
    let expires = row.expires.expect("an expiry");
    let want = unix(SystemTime::now()) + 3600;
    assert!(
        (want - 30..=want + 1).contains(&expires),
        "{expires} vs {want}"
    );
    let ls = gh.env.regent(&["ls"]);
    assert!(ls.success(), "{ls}");
    let line = ls
        .out_lines()
        .into_iter()
        .find(|l| l.starts_with(HOST))
        .unwrap_or_else(|| panic!("no {HOST} line in `regent ls`\n{ls}"));
    assert!(
        line.contains("github-app") && line.contains("x-access-token"),
        "{line}"
    );
    assert!(!ls.stdout().contains(&creds.secret));
    gh.assert_log_clean(&[creds.secret]);
}

#[test]
fn a_key_file_works_too() {
    let Some(gh) = Gh::with_entry("a_key_file_works_too", Duration::from_secs(3600), |key| {
        format!(
            "installation_id = {INSTALLATION}\nprivate_key_file = \"{}\"\n",
            key.private_path.display()
        )
    }) else {
        return;
    };
    let creds = gh.env.get_ok(HOST);
    assert_eq!(creds.secret, gh.fake.token(1));
}

#[test]
fn two_hundred_concurrent_cold_gets_make_one_token_call() {
    let Some(gh) = Gh::new(
        "two_hundred_concurrent_cold_gets_make_one_token_call",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    // Slow enough that the gets pile up on the one fetch.
    gh.fake.set_latency(Duration::from_millis(500));
    // The agent runs already (`regent secret set` started it): 200
    // helpers do not race to start it.
    assert!(gh.env.agent_pid().is_some());
    let outs = all_at_once(200, |_| gh.get());
    let want = gh.fake.token(1);
    for out in &outs {
        assert_eq!(gh.env.parse_get(out).secret, want, "{out}");
    }
    assert_eq!(gh.fake.calls(), 1, "{:?}", gh.fake.log());
}

#[test]
fn the_token_is_refreshed_ahead_and_gets_do_not_wait_for_it() {
    // 6 s tokens: refresh at ~3 s (±10 %), usable until 5.4 s.
    let Some(gh) = Gh::new(
        "the_token_is_refreshed_ahead_and_gets_do_not_wait_for_it",
        Duration::from_secs(6),
    ) else {
        return;
    };
    let first = gh.env.get_ok(HOST);
    assert_eq!(first.secret, gh.fake.token(1));
    // The refresh is held at the fake: a get meanwhile is served from the
    // cache (one that waited for the refresh would hang here).
    gh.fake.hold_from(2);
    assert!(
        wait_until(Duration::from_secs(15), || gh.fake.calls() >= 2),
        "no refresh ahead\n{}",
        gh.env.diagnostics()
    );
    let during = gh.get();
    assert_eq!(gh.env.parse_get(&during).secret, first.secret);
    // One that waited would take until the held request timed out (10 s).
    assert!(
        during.elapsed < Duration::from_secs(5),
        "the get waited: {during}"
    );
    assert_eq!(gh.fake.calls(), 2);
    gh.fake.open();
    let second = gh.fake.token(2);
    assert!(
        wait_until(Duration::from_secs(10), || gh.env.get_ok(HOST).secret
            == second),
        "the refreshed token is not served\n{}",
        gh.env.diagnostics()
    );
    assert!(gh.fake.calls() <= 3, "{:?}", gh.fake.log());
    gh.assert_log_clean(&[first.secret, second]);
}

#[test]
fn a_dead_endpoint_after_expiry_gives_errors_not_the_old_token() {
    let Some(mut gh) = Gh::new(
        "a_dead_endpoint_after_expiry_gives_errors_not_the_old_token",
        Duration::from_secs(6),
    ) else {
        return;
    };
    let first = gh.env.get_ok(HOST);
    let got_at = Instant::now();
    gh.fake.kill();
    // Until it expires the cached token may be served; after, never.
    let error = gh.env.error_once_expired(
        || gh.get(),
        &first.secret,
        got_at,
        Duration::from_secs(6),
        Duration::from_secs(20),
    );
    assert!(error.contains("cannot reach GitHub"), "{error}");
    let again = gh.get();
    assert!(!again.success());
    assert!(!again.stdout().contains(&first.secret));
}

#[test]
fn a_rate_limit_is_honoured_until_its_reset() {
    let Some(gh) = Gh::new(
        "a_rate_limit_is_honoured_until_its_reset",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    gh.fake.script(&[Reply::RateLimited(4)], Reply::Token);
    let text = gh.error_text(&gh.get());
    assert!(text.contains("rate limit"), "{text}");
    assert!(text.contains(&format!("GitHub App {APP_ID}")), "{text}");
    let reset = gh.fake.last_reset().expect("a reset was sent");
    // Gets until the reset fail without a call; one after it succeeds.
    let mut failed = 0;
    let ok = wait_until(Duration::from_secs(15), || {
        let out = gh.get();
        failed += usize::from(!out.success());
        out.success()
    });
    assert!(
        ok,
        "never recovered from the rate limit\n{}",
        gh.env.diagnostics()
    );
    assert!(failed > 0, "no get came before the reset");
    let log = gh.fake.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].status, 403);
    assert!(
        log[1].at >= reset,
        "a call at {:?}, before the reset at {reset:?}",
        log[1].at
    );
    assert_eq!(gh.env.get_ok(HOST).secret, gh.fake.token(2));
}

#[test]
fn a_secondary_rate_limit_waits_for_retry_after() {
    let Some(gh) = Gh::new(
        "a_secondary_rate_limit_waits_for_retry_after",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    gh.fake.script(&[Reply::SecondaryLimit(120)], Reply::Token);
    let text = gh.error_text(&gh.get());
    assert!(text.contains("secondary rate limit"), "{text}");
    for _ in 0..10 {
        let text = gh.error_text(&gh.get());
        assert!(text.contains("next attempt in"), "{text}");
    }
    assert_eq!(gh.fake.calls(), 1);
}

#[test]
fn clock_skew_is_corrected_from_githubs_date() {
    for (skew, message) in [(1200, EXP_MESSAGE), (-1200, IAT_MESSAGE)] {
        let Some(gh) = Gh::new(
            "clock_skew_is_corrected_from_githubs_date",
            Duration::from_secs(6),
        ) else {
            return;
        };
        gh.fake.set_skew(skew);
        let creds = gh.env.get_ok(HOST);
        assert_eq!(creds.username, "x-access-token");
        let log = gh.fake.log();
        assert_eq!(log.len(), 2, "skew {skew}: {log:?}");
        assert_eq!(log[0].status, 401);
        assert_eq!(log[0].message.as_deref(), Some(message), "skew {skew}");
        assert_eq!(log[1].status, 201, "skew {skew}: {log:?}");
        assert_eq!(creds.secret, gh.fake.token(2));
        // Signed with GitHub's time.
        let iat = log[1].claims.as_ref().unwrap()["iat"].as_i64().unwrap();
        let github_now = unix(log[1].at) + skew;
        assert!(
            (github_now - 70..=github_now).contains(&iat),
            "iat {iat}, GitHub's now {github_now}"
        );
        if skew < 0 {
            continue;
        }
        // The token's expiry is moved to our clock (6 s, not 20 minutes
        // and 6 s), so it is refreshed ahead, and the offset is kept: the
        // refresh is one call, accepted at once.
        let expires = gh.row().expires.expect("an expiry");
        let want = unix(log[1].at) + 6;
        assert!(
            (want - 2..=want + 2).contains(&expires),
            "{expires} vs {want}"
        );
        assert!(
            wait_until(Duration::from_secs(15), || gh.fake.log().len() >= 3),
            "no refresh ahead\n{}",
            gh.env.diagnostics()
        );
        let log = gh.fake.log();
        assert_eq!(log[2].status, 201, "{log:?}");
    }
}

#[test]
fn a_wrong_installation_is_a_permanent_error_naming_it() {
    let Some(gh) = Gh::with_entry(
        "a_wrong_installation_is_a_permanent_error_naming_it",
        Duration::from_secs(3600),
        |_| format!("installation_id = 999\nprivate_key = {{ secret = \"{SECRET}\" }}\n"),
    ) else {
        return;
    };
    let text = gh.error_text(&gh.get());
    assert!(
        text.contains("installation 999") && text.contains(&APP_ID.to_string()),
        "{text}"
    );
    assert!(text.contains("`installation_id`"), "{text}");
    assert!(text.contains(HOST), "{text}");
    assert_eq!(gh.fake.calls(), 1);
    assert_eq!(gh.fake.log()[0].status, 404);
    for _ in 0..10 {
        assert!(!gh.get().success());
    }
    let after_gets = gh.fake.calls();
    assert!(
        after_gets <= 4,
        "{after_gets} calls: a wrong installation hammers GitHub"
    );
    // Nothing retries in the background.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(gh.fake.calls(), after_gets);
    assert_eq!(gh.row().source, "github-app");
}

#[test]
fn a_key_of_another_app_is_refused_and_not_quoted() {
    let Some(gh) = Gh::new(
        "a_key_of_another_app_is_refused_and_not_quoted",
        Duration::from_secs(3600),
    ) else {
        return;
    };
    let Ok(other) = AppKey::generate() else {
        return;
    };
    gh.set_secret(SECRET, &other.private_pem);
    let out = gh.get();
    let text = gh.error_text(&out);
    assert!(
        text.contains("refused the App's JWT") && text.contains("`app_id`"),
        "{text}"
    );
    assert_eq!(gh.fake.calls(), 1);
    for line in other
        .private_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
    {
        assert!(!out.stdout().contains(line) && !out.stderr().contains(line));
    }
    // Not a key at all (after the backoff of the first failure).
    gh.set_secret(SECRET, "not a PEM");
    thread::sleep(Duration::from_secs(2));
    let text = gh.error_text(&gh.get());
    assert!(
        text.contains("does not hold an RSA private key") && text.contains(SECRET),
        "{text}"
    );
    assert_eq!(gh.fake.calls(), 1);
}
