//! The `acr` source through the real binaries, against the loopback fake of
//! Entra ID, the managed-identity endpoint and the registry's exchange
//! (`regent_tests::fakes::acr`). The registry host is a real-looking
//! `*.azurecr.io` name (detection needs it); `exchange_url` and
//! `authority_url` point at the fake, and the agent's
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST` at the fake or at a closed loopback
//! port. The world turns the Azure CLI step off (`REGENT_AZ=`); the tests
//! of that step unset it, with `PATH` a directory of the test's own that
//! holds an `az` stub or nothing: nothing leaves loopback and no real `az`
//! runs. Counts, not timings, are asserted.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use regent_tests::fakes::acr::{ASSERTION_TYPE, Endpoint, FakeAcr, IMDS_PATH, RESOURCE, Reply};
use regent_tests::{Input, Outcome, TestEnv, random_secret};

const HOST: &str = "regenttest.azurecr.io";
const TENANT: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const OTHER_CLIENT: &str = "99999999-8888-7777-6666-555555555555";
const SECRET_NAME: &str = "acr-sp";
const NULL_GUID: &str = "00000000-0000-0000-0000-000000000000";

struct Acr {
    env: TestEnv,
    fake: FakeAcr,
    /// The agent's and the helper's `PATH`: empty unless a test puts an
    /// `az` there (and unsets `REGENT_AZ`).
    bin: PathBuf,
    /// Secrets the test made (client secrets, assertions) beyond the fake's.
    secrets: Vec<String>,
}

impl Acr {
    /// A fake and an env whose `PATH` is a directory of its own; `setup`
    /// may set variables before the agent starts. No config yet.
    fn new(setup: impl FnOnce(&mut TestEnv, &FakeAcr)) -> Acr {
        let fake = FakeAcr::start(TENANT, HOST, std::time::Duration::from_secs(3 * 3600));
        let mut env = TestEnv::new();
        let bin = env.root.join("bin");
        fs::create_dir_all(&bin).unwrap();
        env.set_env("PATH", Some(&bin));
        setup(&mut env, &fake);
        Acr {
            env,
            fake,
            bin,
            secrets: Vec::new(),
        }
    }

    /// Writes the config: one `acr` entry for [`HOST`] with `settings`.
    fn config(&self, settings: &str) {
        let config = self.env.config_home.join("regent").join("config.toml");
        fs::create_dir_all(config.parent().unwrap()).unwrap();
        fs::write(
            &config,
            format!("[[registry]]\nmatch = \"{HOST}\"\nsource = \"acr\"\n{settings}"),
        )
        .unwrap();
    }

    /// `authority_url` and `exchange_url` at the fake.
    fn endpoints(&self) -> String {
        format!(
            "authority_url = \"{}\"\nexchange_url = \"{}\"\n",
            self.fake.url(),
            self.fake.exchange_url()
        )
    }

    /// A service principal entry: [`CLIENT`] in [`TENANT`] whose secret is
    /// `stored` in the named secret (the fake knows `real`).
    fn service_principal(&mut self, real: &str, stored: &str) {
        self.fake.add_client_secret(CLIENT, real);
        self.config(&format!(
            "tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\n\
             client_secret = {{ secret = \"{SECRET_NAME}\" }}\n{}",
            self.endpoints()
        ));
        let set = self.env.run(
            self.env
                .command(&self.env.bins.regent)
                .args(["secret", "set", SECRET_NAME]),
            Input::Bytes(stored.as_bytes()),
            regent_tests::DEFAULT_TIMEOUT,
        );
        assert!(set.success() && set.stdout.is_empty(), "{set}");
        self.secrets.extend([real.to_owned(), stored.to_owned()]);
    }

    fn get(&self) -> Outcome {
        self.get_with(&[])
    }

    /// `get` with variables of the caller.
    fn get_with(&self, vars: &[(&str, &str)]) -> Outcome {
        let mut cmd = self.env.command(&self.env.bins.helper);
        cmd.arg("get");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        self.env.run(
            &mut cmd,
            Input::Bytes(HOST.as_bytes()),
            regent_tests::DEFAULT_TIMEOUT,
        )
    }

    fn error_text(&self, out: &Outcome) -> String {
        assert!(
            !out.success(),
            "expected an error, got {out}\n{}",
            self.env.diagnostics()
        );
        let text = out.out_trim();
        eprintln!("error: {text}");
        for secret in self.all_secrets() {
            assert!(
                !out.stdout().contains(&secret) && !out.stderr().contains(&secret),
                "a secret is in the helper's output"
            );
        }
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

    fn all_secrets(&self) -> Vec<String> {
        let mut all = self.fake.secrets();
        all.extend(self.secrets.iter().cloned());
        all
    }

    /// Nothing secret in the agent's log: no client secret, assertion,
    /// access or refresh token.
    fn assert_log_clean(&self) {
        let log = self.env.log_contents();
        assert!(!log.is_empty(), "no agent log");
        for secret in self.all_secrets() {
            assert!(
                !log.contains(&secret),
                "a secret ({} bytes) is in the agent log",
                secret.len()
            );
        }
    }

    /// A federated token file holding `assertion`; its path.
    fn token_file(&mut self, assertion: &str) -> String {
        let path = self.env.root.join("azure-identity-token");
        fs::write(&path, format!("{assertion}\n")).unwrap();
        self.secrets.push(assertion.to_owned());
        path.display().to_string()
    }
}

/// A made-up assertion (a JWT's shape).
fn assertion() -> String {
    format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.{}",
        random_secret(40),
        random_secret(40)
    )
}

#[test]
fn a_service_principal_gets_the_null_guid_and_the_refresh_token() {
    let mut acr = Acr::new(|_, _| {});
    let secret = format!("sp~{}", random_secret(32));
    acr.service_principal(&secret, &secret);
    let creds = acr.env.get_ok(&format!("https://{HOST}"));
    assert_eq!(creds.username, NULL_GUID);
    let issued = acr.fake.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(creds.secret, issued[0].token);
    assert_eq!(issued[0].client_id, CLIENT);
    let entra = acr.fake.calls_to(Endpoint::Entra);
    assert_eq!(entra.len(), 1, "{entra:?}");
    assert_eq!(entra[0].status, 200, "{entra:?}");
    assert_eq!(entra[0].credential, Some("secret"));
    assert_eq!(entra[0].tenant.as_deref(), Some(TENANT));
    let exchange = acr.fake.calls_to(Endpoint::Exchange);
    assert_eq!(exchange.len(), 1, "{exchange:?}");
    assert_eq!(exchange[0].status, 200, "{exchange:?}");
    assert_eq!(exchange[0].tenant.as_deref(), Some(TENANT));
    // The service principal applied: the later steps were not tried.
    assert_eq!(acr.fake.imds_calls(), 0);
    // The expiry is the refresh token's `exp`.
    let row = acr.row();
    assert_eq!(row.source, "acr");
    assert_eq!(row.username, NULL_GUID);
    let expires = row.expires.expect("an expiry");
    assert!(
        (issued[0].exp - 2..=issued[0].exp + 2).contains(&expires),
        "ls says {expires}, the JWT's exp is {}",
        issued[0].exp
    );
    // Cached: the next get makes no call.
    assert_eq!(acr.env.get_ok(HOST).secret, creds.secret);
    assert_eq!((acr.fake.entra_calls(), acr.fake.exchange_calls()), (1, 1));
    let ls = acr.env.regent(&["ls"]);
    assert!(ls.success(), "{ls}");
    assert!(!ls.stdout().contains(&creds.secret));
    acr.assert_log_clean();
}

#[test]
fn a_federated_token_file_of_the_caller_is_a_client_assertion() {
    let mut acr = Acr::new(|_, _| {});
    let assertion = assertion();
    acr.fake.add_federated(CLIENT, &assertion);
    let file = acr.token_file(&assertion);
    acr.config(&acr.endpoints());
    let out = acr.get_with(&[
        ("AZURE_FEDERATED_TOKEN_FILE", &file),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
    ]);
    let creds = acr.env.parse_get(&out);
    assert_eq!(creds.username, NULL_GUID);
    assert_eq!(creds.secret, acr.fake.issued()[0].token);
    let entra = acr.fake.calls_to(Endpoint::Entra);
    assert_eq!(entra.len(), 1, "{entra:?}");
    assert_eq!(entra[0].credential, Some("assertion"));
    assert_eq!(entra[0].client_id.as_deref(), Some(CLIENT));
    let body = acr.fake.requests()[0].text();
    assert!(
        body.contains(
            "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
        ),
        "{ASSERTION_TYPE} not sent"
    );
    assert!(!body.contains("client_secret"));
    // A caller without the variables is another identity: not this token.
    let text = acr.error_text(&acr.get());
    assert!(text.contains("no Azure identity"), "{text}");
    acr.assert_log_clean();
}

#[test]
fn two_callers_with_different_client_ids_get_different_tokens() {
    let mut acr = Acr::new(|_, _| {});
    let assertion = assertion();
    acr.fake.add_federated(CLIENT, &assertion);
    acr.fake.add_federated(OTHER_CLIENT, &assertion);
    let file = acr.token_file(&assertion);
    acr.config(&acr.endpoints());
    let as_client = |client: &str| {
        let out = acr.get_with(&[
            ("AZURE_FEDERATED_TOKEN_FILE", &file),
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", client),
        ]);
        acr.env.parse_get(&out).secret
    };
    let one = as_client(CLIENT);
    let two = as_client(OTHER_CLIENT);
    assert_ne!(one, two);
    let issued = acr.fake.issued();
    assert_eq!(issued.len(), 2);
    assert_eq!(
        (issued[0].client_id.as_str(), issued[1].client_id.as_str()),
        (CLIENT, OTHER_CLIENT)
    );
    assert_eq!(
        (one.as_str(), two.as_str()),
        (issued[0].token.as_str(), issued[1].token.as_str())
    );
    // Each is cached for its caller.
    assert_eq!(as_client(CLIENT), one);
    assert_eq!(as_client(OTHER_CLIENT), two);
    assert_eq!((acr.fake.entra_calls(), acr.fake.exchange_calls()), (2, 2));
    acr.assert_log_clean();
}

#[test]
fn a_managed_identity_answers_through_the_agents_imds_endpoint() {
    let acr = Acr::new(|env, fake| {
        env.set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", Some(fake.url()));
    });
    acr.fake.set_managed_identity(Some(CLIENT));
    // No tenant anywhere: the exchange takes the token's `tid`.
    acr.config(&format!("exchange_url = \"{}\"\n", acr.fake.exchange_url()));
    let creds = acr.env.get_ok(HOST);
    assert_eq!(creds.username, NULL_GUID);
    assert_eq!(creds.secret, acr.fake.issued()[0].token);
    assert_eq!(acr.fake.imds_calls(), 1);
    assert_eq!(acr.fake.entra_calls(), 0);
    let imds = acr
        .fake
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with(IMDS_PATH))
        .expect("an IMDS request");
    assert_eq!(imds.method, "GET");
    assert_eq!(imds.header("metadata"), Some("true"));
    assert!(
        imds.path.contains("api-version=2018-02-01"),
        "{}",
        imds.path
    );
    assert!(!imds.path.contains("client_id"), "{}", imds.path);
    let exchange = acr.fake.calls_to(Endpoint::Exchange);
    assert_eq!(exchange[0].tenant.as_deref(), Some(TENANT));
    assert_eq!(exchange[0].client_id.as_deref(), Some(CLIENT));
    acr.assert_log_clean();
}

#[test]
fn a_managed_identity_that_is_not_there_is_skipped() {
    let acr = Acr::new(|env, fake| {
        env.set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", Some(fake.url()));
        env.set_env("REGENT_AZ", None::<&str>);
    });
    // The machine has another identity than the one configured: IMDS's
    // 400, and the chain goes on (to an `az` that is not installed).
    acr.fake.set_managed_identity(Some(OTHER_CLIENT));
    acr.config(&format!(
        "client_id = \"{CLIENT}\"\nexchange_url = \"{}\"\n",
        acr.fake.exchange_url()
    ));
    let text = acr.error_text(&acr.get());
    assert!(
        text.contains("no Azure identity") && text.contains("Identity not found"),
        "{text}"
    );
    assert!(text.contains("`az` is not on the agent's PATH"), "{text}");
    let imds = acr.fake.calls_to(Endpoint::Imds);
    assert_eq!(imds.len(), 1);
    assert_eq!(imds[0].status, 400);
    assert!(
        acr.fake.requests()[0]
            .path
            .contains(&format!("client_id={CLIENT}")),
        "{}",
        acr.fake.requests()[0].path
    );
    assert_eq!(acr.fake.exchange_calls(), 0);
}

#[test]
fn the_azure_cli_is_the_last_step() {
    // Found on the agent's PATH.
    let acr = Acr::new(|env, _| env.set_env("REGENT_AZ", None::<&str>));
    // An access token without `tid`: the tenant comes from az's output.
    let token = acr.fake.mint_access_token(CLIENT, false);
    let expires_on = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3000;
    let json = serde_json::json!({
        "accessToken": token,
        "expiresOn": "2099-12-03 10:00:00.000000",
        "expires_on": expires_on,
        "subscription": "00000000-1111-2222-3333-444444444444",
        "tenant": TENANT,
        "tokenType": "Bearer",
    });
    let seen = acr.env.root.join("az-seen");
    // Shell builtins only: PATH holds nothing but this stub.
    let stub = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{seen}'\nprintf 'AZURE_CONFIG_DIR=%s\\n' \
         \"${{AZURE_CONFIG_DIR-unset}}\" >> '{seen}'\nprintf '%s\\n' '{json}'\n",
        seen = seen.display()
    );
    let az = acr.bin.join("az");
    fs::write(&az, stub).unwrap();
    fs::set_permissions(&az, fs::Permissions::from_mode(0o755)).unwrap();
    acr.config(&format!("exchange_url = \"{}\"\n", acr.fake.exchange_url()));
    let config_dir = acr.env.root.join("azure-config");
    let out = acr.get_with(&[("AZURE_CONFIG_DIR", config_dir.to_str().unwrap())]);
    let creds = acr.env.parse_get(&out);
    assert_eq!(creds.username, NULL_GUID);
    assert_eq!(creds.secret, acr.fake.issued()[0].token);
    let seen = fs::read_to_string(&seen).expect("the az stub ran");
    assert_eq!(
        seen,
        format!(
            "account\nget-access-token\n--resource\n{RESOURCE}\n--output\njson\n\
             AZURE_CONFIG_DIR={}\n",
            config_dir.display()
        )
    );
    let exchange = acr.fake.calls_to(Endpoint::Exchange);
    assert_eq!(exchange.len(), 1);
    assert_eq!(exchange[0].tenant.as_deref(), Some(TENANT));
    assert_eq!(acr.fake.entra_calls(), 0);
    acr.assert_log_clean();
}

#[test]
fn a_wrong_client_secret_says_credentials_invalid_and_not_the_secret() {
    let mut acr = Acr::new(|_, _| {});
    let real = format!("sp~{}", random_secret(32));
    let wrong = format!("wrong~{}", random_secret(32));
    acr.service_principal(&real, &wrong);
    let text = acr.error_text(&acr.get());
    assert!(text.contains(HOST), "{text}");
    assert!(text.contains("credentials invalid"), "{text}");
    assert!(text.contains("AADSTS7000215"), "{text}");
    assert!(text.contains(SECRET_NAME), "{text}");
    assert!(!text.contains(&wrong) && !text.contains(&real), "{text}");
    let entra = acr.fake.calls_to(Endpoint::Entra);
    assert_eq!(entra.len(), 1);
    assert_eq!(entra[0].status, 401);
    assert_eq!(acr.fake.exchange_calls(), 0);
    acr.assert_log_clean();
}

#[test]
fn an_exchange_refusal_says_to_grant_acrpull() {
    let mut acr = Acr::new(|_, _| {});
    let secret = random_secret(32);
    acr.service_principal(&secret, &secret);
    acr.fake.script_exchange(&[], Reply::Unauthorized);
    let text = acr.error_text(&acr.get());
    assert!(
        text.contains(HOST)
            && text.contains("unauthorized for this registry")
            && text.contains("AcrPull"),
        "{text}"
    );
    assert_eq!(acr.fake.exchange_calls(), 1);
    assert!(acr.fake.issued().is_empty());
    acr.assert_log_clean();
}

#[test]
fn throttling_is_transient_honours_retry_after_and_shows_in_ls() {
    let mut acr = Acr::new(|_, _| {});
    let secret = random_secret(32);
    acr.service_principal(&secret, &secret);
    acr.fake
        .script_exchange(&[Reply::Throttled(120)], Reply::Token);
    let text = acr.error_text(&acr.get());
    assert!(text.contains(HOST) && text.contains("throttling"), "{text}");
    // Not retried before the registry allows it (the backoff alone would
    // allow one within seconds).
    for _ in 0..5 {
        let text = acr.error_text(&acr.get());
        let wait: u64 = text
            .split("next attempt in ")
            .nth(1)
            .and_then(|rest| rest.split('s').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no wait in {text:?}"));
        assert!((60..=120).contains(&wait), "{text}");
    }
    assert_eq!(acr.fake.exchange_calls(), 1);
    let row = acr.row();
    assert_eq!(row.source, "acr");
    let error = row.last_error.expect("the error in ls");
    assert!(error.contains("throttling"), "{error}");
    let ls = acr.env.regent(&["ls"]);
    assert!(ls.success(), "{ls}");
    assert!(
        ls.stdout().contains("last error") && ls.stdout().contains("throttling"),
        "{ls}"
    );
    acr.assert_log_clean();
}

#[test]
fn with_nothing_configured_the_error_lists_the_four_ways() {
    // Zero config: the host is detected; IMDS is a closed port and the
    // world's `REGENT_AZ=` turns the Azure CLI step off.
    let acr = Acr::new(|_, _| {});
    let text = acr.error_text(&acr.get());
    assert!(text.contains(HOST), "{text}");
    assert!(text.contains("no Azure identity"), "{text}");
    for way in [
        "service principal",
        "AZURE_FEDERATED_TOKEN_FILE",
        "managed identity",
        "az login",
    ] {
        assert!(text.contains(way), "{way}: {text}");
    }
    assert!(
        text.contains("the Azure CLI step is off (REGENT_AZ is set and empty)"),
        "{text}"
    );
    assert_eq!(acr.row().source, "acr");
    assert!(acr.fake.log().is_empty());
    // An unanchored look-alike is not detected.
    acr.env
        .get_missing("regenttest.azurecr.io.attacker.example");
}

#[test]
fn a_server_error_is_transient_and_the_next_attempt_succeeds() {
    let mut acr = Acr::new(|_, _| {});
    let secret = random_secret(32);
    acr.service_principal(&secret, &secret);
    acr.fake.script_entra(&[Reply::ServerError], Reply::Token);
    let text = acr.error_text(&acr.get());
    assert!(
        text.contains(HOST) && text.contains("endpoint unreachable"),
        "{text}"
    );
    assert_eq!(acr.fake.exchange_calls(), 0);
    // After the backoff, a get fetches again and succeeds.
    assert!(
        regent_tests::wait_until(std::time::Duration::from_secs(20), || acr.get().success()),
        "never recovered\n{}",
        acr.env.diagnostics()
    );
    assert_eq!(acr.fake.entra_calls(), 2);
    assert_eq!(acr.env.get_ok(HOST).secret, acr.fake.issued()[0].token);
    acr.assert_log_clean();
}

#[test]
fn a_regent_az_that_cannot_be_run_is_an_error_not_a_skipped_step() {
    let acr = Acr::new(|env, _| {
        env.set_env("REGENT_AZ", Some("/nonexistent/regent-test/az"));
    });
    acr.config(&format!("exchange_url = \"{}\"\n", acr.fake.exchange_url()));
    let text = acr.error_text(&acr.get());
    assert!(
        text.contains(HOST) && text.contains("REGENT_AZ names an Azure CLI that cannot be run"),
        "{text}"
    );
    assert!(!text.contains("no Azure identity"), "{text}");
}
