//! The other token sources under the benchmark, each a kind of the main
//! round-robin beside the static credential's `get`, in a private agent of
//! their own (memory store) whose config has:
//!
//! - a `github-app` entry for [`GITHUB_HOST`], against the loopback fake of
//!   GitHub's installation-token endpoint (`regent_tests::fakes::github`),
//!   with an App key made at run time by `openssl` and handed over as a
//!   named secret: the timed `get` is served from the token cache;
//! - a `gcp` entry for [`GCP_HOST`] whose `credentials_file` is a service
//!   account key (made at run time) with its `token_uri` on the loopback
//!   fake of Google's token endpoint (`regent_tests::fakes::gcp`): the
//!   timed `get` is served from the token cache;
//! - an `acr` entry for [`ACR_HOST`], a service principal whose secret is a
//!   named secret, against the loopback fake of Entra ID and the ACR
//!   exchange (`regent_tests::fakes::acr`): the timed `get` is served from
//!   the token cache;
//! - an `env` entry for [`ENV_HOST`]: the timed helper has the CI token in
//!   its environment, and each `get` costs the `NeedEnv` round trip.
//!
//! Every fake's token-endpoint calls during the timing are counted: 0 is
//! expected (the tokens live an hour).
//!
//! Target: each median within [`TARGET_SOURCE_RATIO`] of the static `get`'s.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::time::Duration;

use regent_tests::fakes::acr::FakeAcr;
use regent_tests::fakes::gcp::FakeGoogle;
use regent_tests::fakes::github::{AppKey, FakeGitHub};
use regent_tests::random_secret;
use serde_json::{Value, json};

use crate::agent::PrivateAgent;
use crate::proc::run_capture;
use crate::progress;
use crate::report::mark;
use crate::timing::{Subject, check_helper_answer};

pub const GITHUB_HOST: &str = "ghcr.io";
pub const ENV_HOST: &str = "registry.ci.example";
pub const GCP_HOST: &str = "europe-west1-docker.pkg.dev";
pub const ACR_HOST: &str = "benchreg.azurecr.io";
const ACR_TENANT: &str = "7f3c1e2a-4b5d-4c6e-8f90-a1b2c3d4e5f6";
const ACR_CLIENT: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
/// A source's cached `get` median / the static `get` median.
pub const TARGET_SOURCE_RATIO: f64 = 1.1;
/// The kinds this section adds to the round-robin.
pub const KINDS: &[&str] = &["github-app", "gcp", "acr", "env"];
const APP_ID: u64 = 123456;
const INSTALLATION: u64 = 7890123;
/// Never refreshed during the timing.
const LIFETIME: Duration = Duration::from_secs(3600);

pub struct SourcesBench {
    agent: PrivateAgent,
    github: FakeGitHub,
    google: FakeGoogle,
    azure: FakeAcr,
    /// Holds the service account's key file.
    _keys: tempfile::TempDir,
    /// Token-endpoint calls of each fake when the timing started.
    calls_before: [usize; 3],
}

impl SourcesBench {
    /// The agent, the fake, and the section's kinds, each checked with one
    /// untimed `get` (the cold fetch).
    pub fn start(
        regent: &Path,
        helper: &Path,
        runs: usize,
    ) -> Result<(SourcesBench, Vec<Subject>), String> {
        let key = AppKey::generate()?;
        let pem = key.private_pem.clone();
        let fake = FakeGitHub::start(&APP_ID.to_string(), INSTALLATION, key, LIFETIME);
        let google = FakeGoogle::start(AppKey::generate()?, LIFETIME);
        let keys = tempfile::Builder::new()
            .prefix("regent-bench-gcp.")
            .tempdir()
            .map_err(|e| format!("a directory for the service account key: {e}"))?;
        let key_file = google.write_key_file(keys.path(), "pusher.json");
        let azure = FakeAcr::start(ACR_TENANT, ACR_HOST, Duration::from_secs(3 * 3600));
        let sp_secret = random_secret(32);
        azure.add_client_secret(ACR_CLIENT, &sp_secret);
        let config = format!(
            "[[registry]]\nmatch = \"{GITHUB_HOST}\"\nsource = \"github-app\"\napp_id = {APP_ID}\n\
             installation_id = {INSTALLATION}\nprivate_key = {{ secret = \"gh-app\" }}\n\
             api_url = \"{}\"\n\n\
             [[registry]]\nmatch = \"{GCP_HOST}\"\nsource = \"gcp\"\n\
             credentials_file = \"{}\"\n\n\
             [[registry]]\nmatch = \"{ACR_HOST}\"\nsource = \"acr\"\n\
             tenant_id = \"{ACR_TENANT}\"\nclient_id = \"{ACR_CLIENT}\"\n\
             client_secret = {{ secret = \"acr-sp\" }}\n\
             authority_url = \"{}\"\nexchange_url = \"{}\"\n\n\
             [[registry]]\nmatch = \"{ENV_HOST}\"\nsource = \"env\"\n\
             username = \"ci\"\npassword = {{ env = \"BENCH_CI_TOKEN\" }}\n",
            fake.url(),
            key_file.display(),
            azure.url(),
            azure.exchange_url()
        );
        progress(&format!(
            "sources: fake GitHub on {}, fake Google on {}, fake Azure on {}, a third agent \
             (memory store) with github-app, gcp, acr and env entries",
            fake.url(),
            google.token_uri(),
            azure.url()
        ));
        let agent = PrivateAgent::start_with_config(regent, "sources", &[], &config)?;
        for (name, value) in [("gh-app", pem.as_bytes()), ("acr-sp", sp_secret.as_bytes())] {
            let out = run_capture(&agent.proc(regent, &["secret", "set", name]), value)?;
            if !out.status.success() {
                return Err(format!(
                    "`regent secret set {name}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        let github = Subject::new(
            "github-app",
            format!("docker-credential-regent get {GITHUB_HOST} (GitHub App token cached)"),
            agent.proc(helper, &["get"]),
            GITHUB_HOST.as_bytes(),
            runs,
        );
        let gcp = Subject::new(
            "gcp",
            format!("docker-credential-regent get {GCP_HOST} (Google access token cached)"),
            agent.proc(helper, &["get"]),
            GCP_HOST.as_bytes(),
            runs,
        );
        let acr = Subject::new(
            "acr",
            format!("docker-credential-regent get {ACR_HOST} (ACR refresh token cached)"),
            agent.proc(helper, &["get"]),
            ACR_HOST.as_bytes(),
            runs,
        );
        let mut env_proc = agent.proc(helper, &["get"]);
        env_proc.env.push((
            OsString::from("BENCH_CI_TOKEN"),
            Some(OsString::from(random_secret(40))),
        ));
        let env = Subject::new(
            "env",
            format!(
                "docker-credential-regent get {ENV_HOST} (env source: NeedEnv, then the token)"
            ),
            env_proc,
            ENV_HOST.as_bytes(),
            runs,
        );
        for s in [&github, &gcp, &acr, &env] {
            let out = run_capture(&s.proc, &s.input)?;
            if let Some(problem) = check_helper_answer(&out) {
                return Err(format!(
                    "the {} `get` is not fit to be timed: {problem}",
                    s.name
                ));
            }
        }
        let azure_calls = || azure.entra_calls() + azure.exchange_calls();
        let calls_before = [fake.calls(), google.calls(), azure_calls()];
        Ok((
            SourcesBench {
                agent,
                github: fake,
                google,
                azure,
                _keys: keys,
                calls_before,
            },
            vec![github, gcp, acr, env],
        ))
    }

    /// Token-endpoint calls during the timing (0 expected: cached), then
    /// stops the agent and the fake.
    pub fn finish(mut self) -> SourcesReport {
        let calls = [
            ("github-app", self.github.calls() - self.calls_before[0]),
            ("gcp", self.google.calls() - self.calls_before[1]),
            (
                "acr",
                self.azure.entra_calls() + self.azure.exchange_calls() - self.calls_before[2],
            ),
        ];
        self.agent.stop();
        self.github.kill();
        self.google.kill();
        self.azure.kill();
        SourcesReport {
            calls_during_timing: calls.to_vec(),
        }
    }
}

pub struct SourcesReport {
    /// (kind, token-endpoint calls while the gets were timed).
    pub calls_during_timing: Vec<(&'static str, usize)>,
}

impl SourcesReport {
    /// `medians`: (kind, median ms) of [`KINDS`]; `static_ms`: the static
    /// `get`'s median.
    pub fn text(&self, o: &mut String, medians: &[(&str, f64)], static_ms: f64) {
        use std::fmt::Write;
        let _ = writeln!(o, "\nsources (cached get vs the static get, same run):");
        for (kind, median) in medians {
            let ratio = median / static_ms;
            let _ = writeln!(
                o,
                "  {kind:<11} median {median:.3} ms   / static {static_ms:.3} ms: {ratio:.3}x   target <= {TARGET_SOURCE_RATIO}x   {}",
                mark(ratio <= TARGET_SOURCE_RATIO)
            );
        }
        for (kind, calls) in &self.calls_during_timing {
            let _ = writeln!(
                o,
                "  {kind:<11} token-endpoint calls during the timing: {calls}   expected 0   {}",
                mark(*calls == 0)
            );
        }
    }

    pub fn json(&self, medians: &[(&str, f64)], static_ms: f64) -> Value {
        let rows: Vec<Value> = medians
            .iter()
            .map(|(kind, median)| {
                let ratio = median / static_ms;
                json!({
                    "kind": kind,
                    "median_ms": median,
                    "ratio_to_static": ratio,
                    "target": {"limit": TARGET_SOURCE_RATIO, "pass": ratio <= TARGET_SOURCE_RATIO},
                })
            })
            .collect();
        json!({
            "kinds": rows,
            "calls_during_timing": self
                .calls_during_timing
                .iter()
                .map(|(kind, calls)| json!({"kind": kind, "calls": calls, "pass": *calls == 0}))
                .collect::<Vec<_>>(),
        })
    }
}

/// The config file of a world whose XDG config home is `config_home`.
pub fn write_config(config_home: &Path, text: &str) -> Result<(), String> {
    let dir = config_home.join("regent");
    fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    fs::write(dir.join("config.toml"), text).map_err(|e| format!("cannot write the config: {e}"))
}
