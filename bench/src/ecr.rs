//! The ECR token source under the benchmark: a second private agent whose
//! AWS SDK talks to the loopback fake of `GetAuthorizationToken`
//! (`regent_tests::fakes::ecr`), with static keys made at run time, empty AWS
//! config files of its own and `AWS_EC2_METADATA_DISABLED=true`. Nothing
//! leaves 127.0.0.1.
//!
//! Two measurements:
//!
//! - `get` of an ECR host served from the agent's token cache, timed in the
//!   main round-robin beside the static credential's `get` and the floor
//!   (the caller adds [`EcrBench::subject`] as a kind);
//! - a run with short token lifetimes: `--ecr-gets` sequential helper gets
//!   of another region's host, counting the calls that reach the token
//!   endpoint against one per half-lifetime (the refresh policy of
//!   agent/src/refresh.rs), plus the cold fetch.

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

use regent_tests::fakes::ecr::{FakeEcr, test_keys};
use serde_json::{Value, json};

use crate::agent::PrivateAgent;
use crate::args::EcrOptions;
use crate::proc::{Proc, run_capture, shorten};
use crate::progress;
use crate::report::mark;
use crate::timing::{Subject, check_helper_answer};

/// The host timed side by side with the static credential (token cached).
pub const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
/// The host of the short-lifetime run: another region, so another token.
const SHORT_HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
const SHORT_REGION: &str = "us-west-2";
/// Lifetime of the tokens of the side-by-side part: never refreshed during it.
const LONG_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// ecr median / static median.
pub const TARGET_ECR_RATIO: f64 = 1.1;
/// Calls may exceed the expected count by this factor, plus one (jitter of
/// the refresh point is ±10 %, and a refresh may be in flight at the end).
const CALLS_SLACK: f64 = 1.25;

pub struct EcrBench {
    fake: FakeEcr,
    agent: PrivateAgent,
    _aws_dir: tempfile::TempDir,
    /// Token-endpoint calls when the side-by-side timing started.
    calls_before_timing: usize,
}

pub struct ShortRun {
    pub lifetime: Duration,
    pub gets: usize,
    pub failures: usize,
    pub first_failure: Option<String>,
    pub duration: Duration,
    pub calls: usize,
    pub distinct_tokens: usize,
}

impl ShortRun {
    /// One per half-lifetime over the run, plus the cold fetch.
    pub fn expected(&self) -> f64 {
        self.duration.as_secs_f64() / (self.lifetime.as_secs_f64() / 2.0) + 1.0
    }

    pub fn per_10k(&self) -> f64 {
        if self.gets == 0 {
            return f64::NAN;
        }
        self.calls as f64 * 10_000.0 / self.gets as f64
    }

    pub fn pass(&self) -> bool {
        self.failures == 0 && (self.calls as f64) <= self.expected() * CALLS_SLACK + 1.0
    }
}

impl EcrBench {
    pub fn start(regent: &Path) -> Result<EcrBench, String> {
        let fake = FakeEcr::start(LONG_LIFETIME);
        let aws_dir = tempfile::Builder::new()
            .prefix("regent-bench-aws.")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let config = aws_dir.path().join("config");
        let credentials = aws_dir.path().join("credentials");
        fs::write(&config, "").map_err(|e| e.to_string())?;
        fs::write(&credentials, "").map_err(|e| e.to_string())?;
        let (key_id, secret_key) = test_keys();
        let url = OsString::from(fake.url());
        let extra = [
            ("AWS_ENDPOINT_URL_ECR", url.clone()),
            ("AWS_ENDPOINT_URL_ECR_PUBLIC", url.clone()),
            // STS, SSO and anything else: to the fake too, never off loopback.
            ("AWS_ENDPOINT_URL", url),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_ACCESS_KEY_ID", key_id.into()),
            ("AWS_SECRET_ACCESS_KEY", secret_key.into()),
            ("AWS_CONFIG_FILE", config.into_os_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.into_os_string()),
            ("AWS_REGION", "us-east-1".into()),
        ];
        progress(&format!(
            "ECR: fake GetAuthorizationToken on {}, a second agent (memory store) pointed at it",
            fake.url()
        ));
        let agent = PrivateAgent::start(regent, "ecr", &extra)?;
        Ok(EcrBench {
            fake,
            agent,
            _aws_dir: aws_dir,
            calls_before_timing: 0,
        })
    }

    /// The ECR `get` as a kind of the round-robin, once the cold fetch
    /// (untimed, here) showed it fit to be timed; else why not.
    pub fn subject(&mut self, helper: &Path, runs: usize) -> Result<Subject, String> {
        let s = Subject::new(
            "ecr",
            format!("docker-credential-regent get {HOST} (ECR token cached by the second agent)"),
            self.agent.proc(helper, &["get"]),
            HOST.as_bytes(),
            runs,
        );
        let out = run_capture(&s.proc, &s.input)?;
        if let Some(problem) = check_helper_answer(&out) {
            return Err(format!("the ECR `get` is not fit to be timed: {problem}"));
        }
        self.calls_before_timing = self.fake.calls();
        Ok(s)
    }

    /// The section's report, after the timing: the token-endpoint calls
    /// during it, then the short-lifetime run (unless `--ecr-gets 0`). Stops
    /// the agent and the fake.
    pub fn finish(mut self, helper: &Path, opts: &EcrOptions) -> EcrReport {
        let calls_during_timing = self.fake.calls() - self.calls_before_timing;
        let (short, note) = if opts.ecr_gets == 0 {
            (
                None,
                Some("short-lifetime run skipped (--ecr-gets 0)".to_owned()),
            )
        } else {
            match self.short_run(
                helper,
                Duration::from_secs(opts.ecr_lifetime),
                opts.ecr_gets,
            ) {
                Ok(r) => (Some(r), None),
                Err(err) => (None, Some(format!("short-lifetime run failed: {err}"))),
            }
        };
        let report = EcrReport {
            agent_pid: self.agent.pid,
            calls_during_timing,
            total_calls: self.fake.calls(),
            short,
            note,
        };
        self.agent.stop();
        self.fake.kill();
        report
    }

    /// `gets` sequential helper gets of a host whose tokens live `lifetime`.
    fn short_run(
        &self,
        helper: &Path,
        lifetime: Duration,
        gets: usize,
    ) -> Result<ShortRun, String> {
        self.fake.set_lifetime(lifetime);
        progress(&format!(
            "ECR: {gets} sequential gets of {SHORT_HOST} with {} s token lifetimes",
            lifetime.as_secs_f64()
        ));
        let proc = self.agent.proc(helper, &["get"]);
        let mut failures = 0;
        let mut first_failure = None;
        let mut tokens = HashSet::new();
        let started = Instant::now();
        let mut last_note = Instant::now();
        for i in 0..gets {
            match get_token(&proc, SHORT_HOST) {
                Ok(hash) => {
                    tokens.insert(hash);
                }
                Err(e) => {
                    failures += 1;
                    first_failure.get_or_insert(e);
                }
            }
            if last_note.elapsed() >= Duration::from_secs(10) {
                last_note = Instant::now();
                progress(&format!(
                    "ECR: {} of {gets} gets, {:.0} s, {} token-endpoint calls so far",
                    i + 1,
                    started.elapsed().as_secs_f64(),
                    self.region_calls(SHORT_REGION)
                ));
            }
        }
        let duration = started.elapsed();
        let calls = self.region_calls(SHORT_REGION);
        Ok(ShortRun {
            lifetime,
            gets,
            failures,
            first_failure,
            duration,
            calls,
            distinct_tokens: tokens.len(),
        })
    }

    fn region_calls(&self, region: &str) -> usize {
        self.fake
            .log()
            .iter()
            .filter(|c| c.region == region && c.n > 0)
            .count()
    }
}

/// One helper `get`: a hash of the password it returned (never the
/// password), or why it failed.
fn get_token(proc: &Proc, host: &str) -> Result<u64, String> {
    let out = run_capture(proc, host.as_bytes())?;
    if !out.status.success() {
        // A failing helper prints an error line, never a secret.
        return Err(format!("exit {}: {}", out.status, shorten(&out.stdout)));
    }
    let answer: Value =
        serde_json::from_slice(&out.stdout).map_err(|_| "`get` did not print JSON".to_owned())?;
    match (
        answer.get("Username").and_then(Value::as_str),
        answer.get("Secret").and_then(Value::as_str),
    ) {
        (Some("AWS"), Some(secret)) if !secret.is_empty() => {
            let mut h = DefaultHasher::new();
            secret.hash(&mut h);
            Ok(h.finish())
        }
        _ => Err("`get` did not return Username AWS and a Secret".into()),
    }
}

/// What the report shows of the ECR section.
pub struct EcrReport {
    pub agent_pid: u32,
    /// Token-endpoint calls during the side-by-side timing (after the cold fetch).
    pub calls_during_timing: usize,
    /// All token-endpoint calls of the section.
    pub total_calls: usize,
    pub short: Option<ShortRun>,
    /// Why the short run did not happen.
    pub note: Option<String>,
}

impl EcrReport {
    pub fn text(&self, o: &mut String, ecr_ms: f64, static_ms: f64, floor_ms: f64) {
        use std::fmt::Write as _;
        let ratio = ecr_ms / static_ms;
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "ECR token source (fake GetAuthorizationToken on 127.0.0.1, second agent pid {}, memory store)",
            self.agent_pid
        );
        let _ = writeln!(
            o,
            "  get {HOST} (cached token): median {ecr_ms:.3} ms; static credential: {static_ms:.3} ms; floor: {floor_ms:.3} ms"
        );
        let _ = writeln!(
            o,
            "  ecr median / static median: {ratio:.3}x   target <= {TARGET_ECR_RATIO}x   {}",
            mark(ratio <= TARGET_ECR_RATIO)
        );
        let _ = writeln!(
            o,
            "  token-endpoint calls during the timed gets: {} (the cold fetch came before); all calls of the section: {}",
            self.calls_during_timing, self.total_calls
        );
        if let Some(s) = &self.short {
            let _ = writeln!(
                o,
                "  short lifetimes: {} gets of {SHORT_HOST}, token lifetime {:.0} s, {:.1} s",
                s.gets,
                s.lifetime.as_secs_f64(),
                s.duration.as_secs_f64()
            );
            let _ = writeln!(
                o,
                "    token-endpoint calls: {}   expected {:.1} (duration / (lifetime/2) + 1 cold fetch)   per 10,000 gets: {:.1}   {}",
                s.calls,
                s.expected(),
                s.per_10k(),
                mark(s.pass())
            );
            let _ = writeln!(
                o,
                "    distinct tokens served: {}   failed gets: {}{}",
                s.distinct_tokens,
                s.failures,
                s.first_failure
                    .as_deref()
                    .map_or_else(String::new, |f| format!(" (first: {f})"))
            );
        }
        if let Some(note) = &self.note {
            let _ = writeln!(o, "  {note}");
        }
    }

    pub fn json(&self, ecr_ms: f64, static_ms: f64) -> Value {
        let ratio = ecr_ms / static_ms;
        let short = self.short.as_ref().map(|s| {
            json!({
                "host": SHORT_HOST,
                "lifetime_s": s.lifetime.as_secs_f64(),
                "gets": s.gets,
                "failures": s.failures,
                "first_failure": s.first_failure,
                "duration_s": s.duration.as_secs_f64(),
                "token_endpoint_calls": s.calls,
                "expected_calls": s.expected(),
                "calls_per_10000_gets": s.per_10k(),
                "distinct_tokens": s.distinct_tokens,
                "pass": s.pass(),
            })
        });
        json!({
            "host": HOST,
            "agent_pid": self.agent_pid,
            "median_ms": ecr_ms,
            "static_median_ms": static_ms,
            "ratio_ecr_to_static": ratio,
            "calls_during_timing": self.calls_during_timing,
            "total_calls": self.total_calls,
            "short_lifetime": short,
            "note": self.note,
            "targets": {
                "ecr_to_static_ratio": {"limit": TARGET_ECR_RATIO, "value": ratio, "pass": ratio <= TARGET_ECR_RATIO},
                "calls_per_half_lifetime": self.short.as_ref().map(|s| json!({
                    "limit": s.expected() * CALLS_SLACK + 1.0,
                    "value": s.calls,
                    "pass": s.pass(),
                })),
            },
        })
    }
}
