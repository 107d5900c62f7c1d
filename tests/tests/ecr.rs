//! The `ecr` source through the real binaries, against the loopback fake of
//! the ECR APIs (`regent_tests::fakes::ecr`), plus one smoke test against
//! moto's server. The agent gets `AWS_ENDPOINT_URL_ECR[_PUBLIC]` pointing at
//! the fake, static keys made at test time, its own AWS config files and
//! `AWS_EC2_METADATA_DISABLED=true`: nothing leaves 127.0.0.1. Counts, not
//! timings, are asserted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use regent_tests::fakes::ecr::{
    FakeEcr, PRIVATE_TARGET, PUBLIC_TARGET, ROLE_KEY_ID, Reply, test_keys,
};
use regent_tests::{AWS_CALLER_VARIABLES, Input, Outcome, TestEnv, all_at_once, wait_until};

const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const HOST2: &str = "210987654321.dkr.ecr.us-east-1.amazonaws.com";

struct Aws {
    env: TestEnv,
    /// The access key id in the agent's environment, if any.
    key_id: String,
    aws_dir: PathBuf,
}

impl Aws {
    /// An env whose agent talks to `endpoint` with fresh static keys.
    fn new(endpoint: &str) -> Aws {
        let mut aws = Aws::without_keys(endpoint);
        let (id, secret) = test_keys();
        aws.env.set_env("AWS_ACCESS_KEY_ID", Some(&id));
        aws.env.set_env("AWS_SECRET_ACCESS_KEY", Some(secret));
        aws.key_id = id;
        aws
    }

    /// No keys in the environment: credentials come from the files.
    fn without_keys(endpoint: &str) -> Aws {
        let mut env = TestEnv::new();
        for name in AWS_CALLER_VARIABLES {
            env.set_env(*name, None::<&str>);
        }
        let aws_dir = env.root.join("aws");
        fs::create_dir_all(&aws_dir).unwrap();
        fs::write(aws_dir.join("config"), "").unwrap();
        fs::write(aws_dir.join("credentials"), "").unwrap();
        env.set_env("AWS_CONFIG_FILE", Some(aws_dir.join("config")));
        env.set_env(
            "AWS_SHARED_CREDENTIALS_FILE",
            Some(aws_dir.join("credentials")),
        );
        env.set_env("AWS_EC2_METADATA_DISABLED", Some("true"));
        env.set_env("AWS_ENDPOINT_URL_ECR", Some(endpoint));
        env.set_env("AWS_ENDPOINT_URL_ECR_PUBLIC", Some(endpoint));
        // Anything else (STS, SSO) must not go anywhere either.
        env.set_env("AWS_ENDPOINT_URL", Some(endpoint));
        Aws {
            env,
            key_id: String::new(),
            aws_dir,
        }
    }

    fn get(&self, host: &str) -> Outcome {
        self.env.helper(&["get"], host)
    }

    /// `get` with extra variables in the helper's environment.
    fn get_with(&self, host: &str, vars: &[(&str, &str)]) -> Outcome {
        let mut cmd = self.env.command(&self.env.bins.helper);
        cmd.arg("get");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        self.env.run(
            &mut cmd,
            Input::Bytes(host.as_bytes()),
            Duration::from_secs(60),
        )
    }

    fn error_text(&self, out: &Outcome) -> String {
        assert!(!out.success(), "expected an error, got {out}");
        let text = out.out_trim();
        eprintln!("error: {text}");
        text
    }
}

#[test]
fn zero_config_get_returns_aws_and_the_decoded_password() {
    let fake = FakeEcr::start(Duration::from_secs(3600));
    let aws = Aws::new(&fake.url());
    let creds = aws.env.get_ok(&format!("https://{HOST}"));
    assert_eq!(creds.username, "AWS");
    assert_eq!(creds.secret, fake.password(1, &aws.key_id));
    let log = fake.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].target, PRIVATE_TARGET);
    assert_eq!(log[0].access_key_id, aws.key_id);
    assert_eq!(log[0].region, "us-east-1", "region from the hostname");
    assert_eq!(log[0].service, "ecr");
    // Another account in the same region, same identity: the same token.
    let other = aws.env.get_ok(HOST2);
    assert_eq!(other.secret, creds.secret);
    assert_eq!(fake.calls(), 1);
    // Another region: another call, signed for that region. The caller's
    // AWS_REGION does not beat the hostname.
    let eu = aws.get_with(
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        &[("AWS_REGION", "ap-south-1")],
    );
    assert!(eu.success(), "{eu}");
    assert_eq!(fake.calls(), 2);
    assert_eq!(fake.log()[1].region, "eu-west-1");
    // FIPS and China hosts resolve too (the custom endpoint wins).
    assert!(
        aws.get("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com")
            .success()
    );
    assert!(
        aws.get("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn")
            .success()
    );
    assert_eq!(fake.log()[3].region, "cn-north-1");
    // Not ECR: not found, no call.
    aws.env
        .get_missing("123456789012.dkr.ecr.us-east-1.amazonaws.com.attacker.com");
    assert_eq!(fake.calls(), 4);
    // ls shows the source; nothing secret in the log.
    let rows = aws.env.ls_json();
    let row = rows.iter().find(|r| r.key == HOST).expect("an ls row");
    assert_eq!(row.source, "ecr");
    assert!(row.expires.is_some());
    let agent_log = aws.env.log_contents();
    assert!(
        !agent_log.contains(&creds.secret),
        "the token is in the agent log"
    );
}

#[test]
fn public_ecr_uses_the_public_api_in_us_east_1() {
    let fake = FakeEcr::start(Duration::from_secs(3600));
    let aws = Aws::new(&fake.url());
    let creds = aws.env.get_ok("public.ecr.aws");
    assert_eq!(creds.username, "AWS");
    assert_eq!(creds.secret, fake.password(1, &aws.key_id));
    let out = aws.get_with("ecr-public.aws.com", &[("AWS_REGION", "eu-west-1")]);
    assert_eq!(aws.env.parse_get(&out).secret, creds.secret);
    let log = fake.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].target, PUBLIC_TARGET);
    assert_eq!(log[0].region, "us-east-1");
    assert_eq!(log[0].service, "ecr-public");
}

#[test]
fn fips_and_dual_stack_hosts_honour_the_service_endpoint_override() {
    let fake = FakeEcr::start(Duration::from_secs(3600));
    let mut aws = Aws::new(&fake.url());
    // Only the ECR-specific override: FIPS / dual-stack must not make the
    // SDK refuse it or go elsewhere.
    aws.env.set_env("AWS_ENDPOINT_URL", None::<&str>);
    for host in [
        "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
        "123456789012.dkr-ecr.us-west-2.on.aws",
    ] {
        let out = aws.get(host);
        assert_eq!(aws.env.parse_get(&out).username, "AWS", "{host}: {out}");
    }
    let regions: Vec<String> = fake.log().into_iter().map(|c| c.region).collect();
    assert_eq!(regions, ["us-gov-west-1", "us-west-2"]);
}

#[test]
fn two_hundred_concurrent_gets_on_a_cold_key_make_one_call() {
    let fake = FakeEcr::start(Duration::from_secs(3600));
    // Slow enough that the gets pile up on the one fetch.
    fake.set_latency(Duration::from_millis(500));
    let aws = Aws::new(&fake.url());
    // Start the agent first, so that 200 helpers do not race to start it.
    aws.env.get_missing("warm-up.example");
    let outs = all_at_once(200, |i| {
        let host = if i % 2 == 0 { HOST } else { HOST2 };
        aws.get(host)
    });
    let want = fake.password(1, &aws.key_id);
    for out in &outs {
        assert_eq!(aws.env.parse_get(out).secret, want, "{out}");
    }
    assert_eq!(fake.calls(), 1, "{:?}", fake.log());
}

#[test]
fn refresh_happens_ahead_of_expiry_and_gets_do_not_wait_for_it() {
    // 16 s tokens: refresh at ~8 s (±10 %), usable until 14.4 s.
    let fake = FakeEcr::start(Duration::from_secs(16));
    let aws = Aws::new(&fake.url());
    let first = aws.env.get_ok(HOST);
    assert_eq!(first.secret, fake.password(1, &aws.key_id));
    // The refresh is held at the fake: gets in the meantime are served
    // from the cache (a get waiting for it would hang here).
    fake.hold_from(2);
    assert!(
        wait_until(Duration::from_secs(30), || fake.calls() >= 2),
        "no refresh ahead\n{}",
        aws.env.diagnostics()
    );
    let during = aws.env.get_ok(HOST);
    assert_eq!(during.secret, first.secret);
    assert_eq!(fake.calls(), 2);
    fake.open();
    let second = fake.password(2, &aws.key_id);
    assert!(
        wait_until(Duration::from_secs(20), || aws.env.get_ok(HOST).secret
            == second),
        "the refreshed token is not served\n{}",
        aws.env.diagnostics()
    );
    assert_eq!(fake.calls(), 2);
}

#[test]
fn throttling_backs_off_and_recovers() {
    let fake = FakeEcr::start(Duration::from_secs(3600));
    fake.script(&[], Reply::Throttle);
    let aws = Aws::new(&fake.url());
    let gets = 20;
    let mut last = String::new();
    for _ in 0..gets {
        last = aws.error_text(&aws.get(HOST));
    }
    assert!(last.contains("ThrottlingException"), "{last}");
    assert!(last.contains(HOST) && last.contains("us-east-1"), "{last}");
    let calls = fake.calls();
    assert!(
        (1..=8).contains(&calls),
        "{calls} calls for {gets} throttled gets: no backoff"
    );
    // Throttling ends: a later get succeeds.
    fake.script(&[], Reply::Token);
    assert!(
        wait_until(Duration::from_secs(90), || aws.get(HOST).success()),
        "never recovered from throttling\n{}",
        aws.env.diagnostics()
    );
}

#[test]
fn access_denied_is_permanent_and_not_retried() {
    let fake = FakeEcr::start(Duration::from_secs(3600));
    fake.script(&[], Reply::Denied);
    let aws = Aws::new(&fake.url());
    let text = aws.error_text(&aws.get(HOST));
    assert!(text.contains("AccessDeniedException"), "{text}");
    assert!(
        text.contains(HOST) && text.contains("us-east-1") && text.contains("profile default"),
        "{text}"
    );
    assert!(text.contains("ecr:GetAuthorizationToken"), "{text}");
    assert!(
        !text.contains(&aws.key_id) || text.contains("arn:"),
        "{text}"
    );
    assert_eq!(fake.calls(), 1);
    for _ in 0..10 {
        assert!(!aws.get(HOST).success());
    }
    let after_gets = fake.calls();
    assert!(
        after_gets <= 4,
        "{after_gets} calls: denied gets hammer ECR"
    );
    // Nothing retries in the background.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(fake.calls(), after_gets);
}

#[test]
fn bad_keys_are_permanent_and_say_what_to_do() {
    let fake = FakeEcr::start(Duration::from_secs(3600));
    fake.script(&[], Reply::Unrecognized);
    let aws = Aws::new(&fake.url());
    let text = aws.error_text(&aws.get_with(HOST, &[("AWS_PROFILE", "dev")]));
    // A named profile that is not in the files: no credentials at all,
    // and no call.
    assert!(text.contains("profile") && text.contains("dev"), "{text}");
    assert!(text.contains("aws sso login --profile dev"), "{text}");
    assert_eq!(fake.calls(), 0);
    let text = aws.error_text(&aws.get(HOST));
    assert!(text.contains("UnrecognizedClientException"), "{text}");
    assert!(text.contains("credentials were refused"), "{text}");
    assert_eq!(fake.calls(), 1);
}

#[test]
fn a_dead_endpoint_after_expiry_gives_errors_not_the_stale_token() {
    let mut fake = FakeEcr::start(Duration::from_secs(6));
    let aws = Aws::new(&fake.url());
    let first = aws.env.get_ok(HOST);
    let got_at = Instant::now();
    fake.kill();
    // Until it expires the cached token may be served; after, never.
    let error = aws.env.error_once_expired(
        || aws.get(HOST),
        &first.secret,
        got_at,
        Duration::from_secs(6),
        Duration::from_secs(30),
    );
    assert!(error.contains("cannot reach the AWS endpoint"), "{error}");
    // And it stays an error.
    let again = aws.get(HOST);
    assert!(!again.success());
    assert!(!again.stdout().contains(&first.secret));
}

#[test]
fn aws_profile_of_the_caller_picks_the_identity() {
    let fake = FakeEcr::start(Duration::from_secs(3600));
    let aws = Aws::without_keys(&fake.url());
    let keys: Vec<(String, String)> = (0..3).map(|_| test_keys()).collect();
    let mut credentials = String::new();
    for (name, (id, secret)) in ["default", "alpha", "beta"].iter().zip(&keys) {
        credentials.push_str(&format!(
            "[{name}]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n\n"
        ));
    }
    fs::write(aws.aws_dir.join("credentials"), credentials).unwrap();
    fs::write(
        aws.aws_dir.join("config"),
        "[default]\nregion = us-west-2\n\n[profile alpha]\nregion = eu-west-1\n\n[profile beta]\n",
    )
    .unwrap();
    // The agent starts from this helper: it inherits AWS_PROFILE=alpha.
    let alpha = aws.get_with(HOST, &[("AWS_PROFILE", "alpha")]);
    assert_eq!(
        aws.env.parse_get(&alpha).secret,
        fake.password(1, &keys[1].0)
    );
    let beta = aws.get_with(HOST, &[("AWS_PROFILE", "beta")]);
    assert_eq!(
        aws.env.parse_get(&beta).secret,
        fake.password(2, &keys[2].0)
    );
    // No AWS_PROFILE: the default profile, not the agent's own alpha.
    let default = aws.get(HOST);
    assert_eq!(
        aws.env.parse_get(&default).secret,
        fake.password(3, &keys[0].0)
    );
    // Cached per profile.
    let alpha_again = aws.get_with(HOST2, &[("AWS_PROFILE", "alpha")]);
    assert_eq!(
        aws.env.parse_get(&alpha_again).secret,
        fake.password(1, &keys[1].0)
    );
    assert_eq!(fake.calls(), 3);
    let log = fake.log();
    let ids: Vec<&str> = log.iter().map(|c| c.access_key_id.as_str()).collect();
    assert_eq!(ids, [&keys[1].0, &keys[2].0, &keys[0].0]);
    // The hostname's region, whatever the profile says.
    assert!(log.iter().all(|c| c.region == "us-east-1"), "{log:?}");
}

#[test]
fn config_entry_sets_profile_and_region() {
    let fake = FakeEcr::start(Duration::from_secs(3600));
    let aws = Aws::without_keys(&fake.url());
    let (id, secret) = test_keys();
    fs::write(
        aws.aws_dir.join("credentials"),
        format!("[prod]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    let config = aws.env.config_home.join("regent").join("config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(
        &config,
        "[[registry]]\nmatch = \"registry.corp.example\"\nsource = \"ecr\"\n\
         profile = \"prod\"\nregion = \"eu-central-1\"\n",
    )
    .unwrap();
    // The configured profile beats the caller's AWS_PROFILE.
    let out = aws.get_with("registry.corp.example", &[("AWS_PROFILE", "other")]);
    assert_eq!(aws.env.parse_get(&out).secret, fake.password(1, &id));
    let log = fake.log();
    assert_eq!(log[0].access_key_id, id);
    assert_eq!(log[0].region, "eu-central-1");
}

#[test]
fn role_arn_is_assumed_with_the_profile_credentials() {
    let fake = FakeEcr::start(Duration::from_secs(3600));
    let aws = Aws::without_keys(&fake.url());
    let (id, secret) = test_keys();
    fs::write(
        aws.aws_dir.join("credentials"),
        format!("[ci]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    let role = "arn:aws:iam::123456789012:role/pull";
    let config = aws.env.config_home.join("regent").join("config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(
        &config,
        format!(
            "[[registry]]\nmatch = \"*.dkr.ecr.eu-west-1.amazonaws.com\"\nsource = \"ecr\"\n\
             profile = \"ci\"\nrole_arn = \"{role}\"\n"
        ),
    )
    .unwrap();
    let creds = aws
        .env
        .get_ok("123456789012.dkr.ecr.eu-west-1.amazonaws.com");
    assert_eq!(creds.username, "AWS");
    assert_eq!(creds.secret, fake.password(1, ROLE_KEY_ID));
    let log = fake.log();
    assert_eq!(log.len(), 2, "{log:?}");
    // STS with the profile's keys, then ECR with the role's.
    assert_eq!(log[0].target, format!("AssumeRole:{role}"));
    assert_eq!(log[0].service, "sts");
    assert_eq!(log[0].access_key_id, id);
    assert_eq!(log[1].target, PRIVATE_TARGET);
    assert_eq!(log[1].access_key_id, ROLE_KEY_ID);
    assert_eq!(log[1].region, "eu-west-1");
}

// ---------------------------------------------------------------------------
// moto
// ---------------------------------------------------------------------------

/// `moto_server`: `REGENT_MOTO_SERVER`, the venv scripts/test makes under
/// target/, or PATH.
fn moto_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REGENT_MOTO_SERVER").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/moto-venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    regent_tests::which("moto_server")
}

struct Moto(Child);

/// Starts moto_server on a free 127.0.0.1 port and waits until it listens.
/// The port is picked by binding port 0 and closing it, so another process
/// may take it before moto binds: moto then exits ("Address already in
/// use") and a new port is tried, up to five times.
/// `None` (after a counted skip) when the program cannot be run at all.
fn start_moto(test: &str, server: &Path) -> Option<(u16, tempfile::NamedTempFile, Moto)> {
    let mut failures = Vec::new();
    for _ in 0..5 {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn();
        let mut child = match child {
            Ok(c) => Moto(c),
            Err(e) => {
                regent_tests::e2e::skip(test, &format!("cannot run {}: {e}", server.display()));
                return None;
            }
        };
        // Listening, and it is moto that listens: it is still alive once the
        // port answers (a moto that lost the port exits at once).
        let mut exited = None;
        let up = wait_until(Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.0.try_wait() {
                exited = Some(status);
                return true;
            }
            let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            listening
                && !wait_until(Duration::from_millis(300), || {
                    matches!(child.0.try_wait(), Ok(Some(_)))
                })
        });
        let text = fs::read_to_string(log.path()).unwrap_or_default();
        match exited {
            None if up => return Some((port, log, child)),
            None => panic!("moto_server did not listen on {port} within 30 s: {text}"),
            Some(status) if text.contains("in use") => {
                failures.push(format!("port {port}: {status}"));
            }
            Some(status) => panic!("moto_server exited ({status}) on port {port}: {text}"),
        }
    }
    panic!("moto_server could not get a port: {failures:?}");
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn moto_interop_smoke() {
    const TEST: &str = "moto_interop_smoke";
    let Some(server) = moto_server() else {
        regent_tests::e2e::skip(
            TEST,
            "moto_server not found (scripts/test installs moto[server] into target/moto-venv; \
             or pip install 'moto[server]', or set REGENT_MOTO_SERVER)",
        );
        return;
    };
    let Some((port, log, child)) = start_moto(TEST, &server) else {
        return;
    };
    let aws = Aws::new(&format!("http://127.0.0.1:{port}"));
    // moto answers with a real-shaped token whose expiresAt is hard-wired
    // to 2015-01-01: the agent must refuse it, never serve it.
    let out = aws.get(HOST);
    let text = aws.error_text(&out);
    assert!(
        !out.stdout().contains("123456789012-auth-token"),
        "the expired token was served: {out}"
    );
    assert!(
        text.contains("2015-01-01") || text.contains("2014-12-31"),
        "{text}"
    );
    assert!(text.contains("already past"), "{text}");
    // The request did reach moto, as a GetAuthorizationToken.
    let moto_log = fs::read_to_string(log.path()).unwrap_or_default();
    assert!(
        moto_log.contains("POST / ") && moto_log.contains(" 200 "),
        "no 200 POST in moto's log:\n{moto_log}"
    );
    drop(child);
}
