//! The `ecr` source: Amazon ECR and ECR Public tokens through
//! `ecr:GetAuthorizationToken`, with the AWS SDK's credential chain
//! (environment, shared config and credentials files, SSO, web identity,
//! `credential_process`, IMDS).
//!
//! Zero configuration: every ECR hostname is detected ([`detect`]), so
//! `123456789012.dkr.ecr.us-east-1.amazonaws.com` needs no config entry.
//! Recognised hosts (anchored at both ends, port ignored):
//! `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`, the dual-stack
//! `<account>.dkr-ecr[-fips].<region>.on.aws`, the other partitions, and
//! `public.ecr.aws` / `ecr-public.aws.com` (ECR Public, always `us-east-1`).
//!
//! ```toml
//! [[registry]]
//! match = "*.dkr.ecr.eu-west-1.amazonaws.com"
//! source = "ecr"
//! profile = "prod"                                     # else AWS_PROFILE of the caller, else "default"
//! region = "eu-west-1"                                 # else from the hostname
//! role_arn = "arn:aws:iam::123456789012:role/pull"     # assumed with the profile's credentials
//! ```
//!
//! Which identity: the caller's. The helper forwards the caller's AWS
//! variables with every `get` (`protocol::FORWARDED_ENV`: keys, session
//! token, profile, config and credentials file paths, web identity,
//! container credentials, endpoints, instance-metadata switches), and the
//! SDK config is built from those alone: the SDK reads an environment made
//! of them plus the agent's `HOME` (for `~/.aws`), never the agent's own
//! environment, which holds no `AWS_*` variable anyway ([`crate::environ`]).
//! Then: the `profile` setting, else the caller's `AWS_PROFILE` (so
//! `AWS_PROFILE=x docker pull` uses profile `x`), read like `aws --profile`
//! from the caller's `AWS_CONFIG_FILE` / `AWS_SHARED_CREDENTIALS_FILE` (else
//! `~/.aws/config` and `~/.aws/credentials`) and nothing else; without a
//! named profile, the SDK's default chain over the caller's variables
//! (keys, the `default` profile, web identity, container credentials,
//! instance metadata). A caller without any credential gets what that chain
//! gives it (often an error), never another caller's token.
//!
//! `credential_process` commands and SSO use the agent's `HOME`; a
//! `credential_process` command runs in the agent's own environment.
//!
//! Which region: the `region` setting, else the hostname's, else the
//! caller's forwarded `AWS_REGION` / `AWS_DEFAULT_REGION`, else the
//! profile's `region`.
//!
//! Tokens are keyed on identity and region and endpoint flavour, not on the
//! account in the hostname: one token serves every registry the identity
//! may pull from in that region. The identity part is the profile and role
//! names plus a SHA-256 digest of every forwarded variable but the region
//! ones ([`super::identity_digest`]): two callers share a token only when
//! all their AWS inputs are equal, and no key, log line or `regent ls` row
//! holds a credential. A background refresh fetches with the variables of
//! the request that created the token. The SDK does not
//! retry on its own; the refresh engine backs off.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};
use aws_types::SdkConfig;
use aws_types::os_shim_internal::Env;
use aws_types::region::Region;
use base64::Engine as _;
use regent_shared::Secret;
use regent_shared::registry::RegistryKey;
use serde::Deserialize;
use zeroize::Zeroizing;

use regent_shared::protocol::FORWARDED_ENV;

use super::{
    BoxFuture, CallerEnv, Context, Descriptor, Source, SourceError, SourceRequest, Token, text,
};

/// ECR Public lives in one region.
pub const PUBLIC_REGION: &str = "us-east-1";
/// The whole fetch (credentials, STS, the call), below the helper's 30 s.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(25);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);
const SESSION_NAME: &str = "regent";

/// The private ECR hostname pattern (amazon-ecr-credential-helper's, anchored).
static PRIVATE_HOST: LazyLock<regex_lite::Regex> = LazyLock::new(|| {
    regex_lite::Regex::new(
        r"^(\d{12})\.dkr([.-])ecr(-fips)?\.([a-zA-Z0-9][a-zA-Z0-9_-]*)\.(amazonaws\.(?:com(?:\.cn)?|eu)|on\.(?:aws|amazonwebservices\.com\.cn)|sc2s\.sgov\.gov|c2s\.ic\.gov|cloud\.adc-e\.uk|csp\.hci\.ic\.gov)$",
    )
    .expect("the ECR host pattern compiles")
});

const PUBLIC_HOSTS: &[&str] = &["public.ecr.aws", "ecr-public.aws.com"];

/// Forwarded variables that choose a region, not an identity.
const REGION_VARS: &[&str] = &["AWS_REGION", "AWS_DEFAULT_REGION"];

/// What an ECR hostname says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Private {
        account: String,
        region: String,
        fips: bool,
        dual_stack: bool,
    },
    Public,
}

/// What the host of a registry key says of ECR.
pub fn parse_host(key: &RegistryKey) -> Option<Host> {
    let host = key.host();
    if PUBLIC_HOSTS.contains(&host) {
        return Some(Host::Public);
    }
    let caps = PRIVATE_HOST.captures(host)?;
    let suffix = &caps[5];
    Some(Host::Private {
        account: caps[1].to_owned(),
        region: caps[4].to_owned(),
        fips: caps.get(3).is_some(),
        // `dkr-ecr` and the `on.aws` domains are the IPv6 (dual-stack) ones.
        dual_stack: &caps[2] == "-" || suffix.starts_with("on."),
    })
}

/// The zero-config source for ECR hostnames.
pub fn detect(key: &RegistryKey) -> Option<Ecr> {
    parse_host(key).map(|_| Ecr::default())
}

/// `source = "ecr"`, and zero config for ECR and ECR Public hosts.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "ecr",
    from_settings: Some(|settings| Ok(Arc::new(Ecr::from_settings(settings)?))),
    detect: Some(|key| detect(key).map(|s| Arc::new(s) as Arc<dyn Source>)),
    feature: Some("ecr"),
};

#[derive(Deserialize, Default, Debug, Clone, Hash)]
#[serde(deny_unknown_fields)]
struct Settings {
    profile: Option<String>,
    region: Option<String>,
    role_arn: Option<String>,
}

#[derive(Debug, Default)]
pub struct Ecr {
    settings: Settings,
}

/// Everything one fetch depends on, resolved from settings and request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Plan {
    /// `None`: the default chain (no profile was named).
    profile: Option<String>,
    /// `None`: the profile's region (resolved at fetch time).
    region: Option<String>,
    role_arn: Option<String>,
    public: bool,
    fips: bool,
    dual_stack: bool,
}

impl Plan {
    fn profile_label(&self) -> &str {
        self.profile.as_deref().unwrap_or("default")
    }
}

impl Ecr {
    pub fn from_settings(settings: toml::Table) -> Result<Ecr, String> {
        let s: Settings = toml::Value::Table(settings)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().trim().to_owned())?;
        if let Some(p) = &s.profile
            && (p.is_empty() || p.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(format!("`profile` {p:?} is not a profile name"));
        }
        if let Some(r) = &s.region
            && !valid_region(r)
        {
            return Err(format!(
                "`region` {r:?} is not an AWS region name (like \"eu-west-1\")"
            ));
        }
        if let Some(arn) = &s.role_arn
            && !(arn.starts_with("arn:") && arn.contains(":role/"))
        {
            return Err(format!(
                "`role_arn` {arn:?} is not a role ARN (arn:aws:iam::<account>:role/<name>)"
            ));
        }
        Ok(Ecr { settings: s })
    }

    fn plan(&self, req: &SourceRequest) -> Plan {
        let host = parse_host(&req.key);
        let forwarded = |name: &str| req.env.get(name).map(str::to_owned);
        let profile = self
            .settings
            .profile
            .clone()
            .or_else(|| forwarded("AWS_PROFILE"));
        let (public, fips, dual_stack, host_region) = match host {
            Some(Host::Public) => (true, false, false, Some(PUBLIC_REGION.to_owned())),
            Some(Host::Private {
                region,
                fips,
                dual_stack,
                ..
            }) => (false, fips, dual_stack, Some(region)),
            None => (false, false, false, None),
        };
        let region = if public {
            host_region
        } else {
            self.settings
                .region
                .clone()
                .or(host_region)
                .or_else(|| forwarded("AWS_REGION"))
                .or_else(|| forwarded("AWS_DEFAULT_REGION"))
                .filter(|r| valid_region(r))
        };
        Plan {
            profile,
            region,
            role_arn: self.settings.role_arn.clone(),
            public,
            fips,
            dual_stack,
        }
    }

    async fn run(&self, req: &SourceRequest) -> Result<Token, SourceError> {
        let plan = self.plan(req);
        match tokio::time::timeout(FETCH_TIMEOUT, fetch(&plan, &req.key, &req.env)).await {
            Ok(result) => result,
            Err(_) => Err(SourceError::transient(format!(
                "ECR: no token for {} within {}s (region {}, profile {}); \
                 is the AWS endpoint reachable?",
                req.key,
                FETCH_TIMEOUT.as_secs(),
                plan.region.as_deref().unwrap_or("from the profile"),
                plan.profile_label()
            ))),
        }
    }
}

impl Source for Ecr {
    fn name(&self) -> &'static str {
        "ecr"
    }

    fn caller_env(&self) -> &'static [&'static str] {
        FORWARDED_ENV
    }

    fn cache_key(&self, req: &SourceRequest) -> String {
        let plan = self.plan(req);
        let flavour = match (plan.public, plan.fips, plan.dual_stack) {
            (true, _, _) => "public",
            (false, true, true) => "fips-dualstack",
            (false, true, false) => "fips",
            (false, false, true) => "dualstack",
            (false, false, false) => "std",
        };
        let region = match &plan.region {
            Some(r) => r.clone(),
            // The profile's region: keyed on what could change it.
            None => format!(
                "profile-region-{}",
                super::fingerprint(&(req.env.get("AWS_REGION"), req.env.get("AWS_DEFAULT_REGION")))
            ),
        };
        // The region variables are in `region` where they matter.
        let identity = super::identity_digest(&req.env, |name| !REGION_VARS.contains(&name));
        format!(
            "{flavour}:{region}:profile={}:role={}:caller={identity}",
            plan.profile.as_deref().unwrap_or("<default chain>"),
            plan.role_arn.as_deref().unwrap_or("-")
        )
    }

    fn fetch<'a>(
        &'a self,
        req: &'a SourceRequest,
        _ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(self.run(req))
    }
}

fn valid_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Where the error text should send the user.
struct Place<'a> {
    key: &'a str,
    region: &'a str,
    plan: &'a Plan,
}

impl Place<'_> {
    fn describe(&self) -> String {
        let mut s = format!(
            "{} for {} (region {}, profile {}",
            if self.plan.public {
                "ECR Public"
            } else {
                "ECR"
            },
            self.key,
            self.region,
            self.plan.profile_label()
        );
        if let Some(role) = &self.plan.role_arn {
            s.push_str(&format!(", role {role}"));
        }
        s.push(')');
        s
    }

    fn login_hint(&self) -> String {
        match &self.plan.profile {
            Some(p) => format!(
                "check the credentials of profile {p:?} (for SSO: `aws sso login --profile {p}`)"
            ),
            None => "check the AWS credentials of the program that asked (its AWS_ACCESS_KEY_ID / \
                     AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, ~/.aws/config; for SSO: \
                     `aws sso login`), or set AWS_PROFILE"
                .to_owned(),
        }
    }
}

async fn fetch(plan: &Plan, key: &str, env: &CallerEnv) -> Result<Token, SourceError> {
    let profile = plan.profile_label().to_owned();
    let region = match &plan.region {
        Some(r) => r.clone(),
        None => {
            use aws_config::meta::region::ProvideRegion;
            let from_profile = ProfileFileRegionProvider::builder()
                .profile_name(&profile)
                .profile_files(profile_files(env))
                .build()
                .region()
                .await;
            match from_profile {
                Some(r) => r.as_ref().to_owned(),
                None => {
                    return Err(SourceError::permanent(format!(
                        "ECR for {key}: no region (the hostname has none, and neither the \
                         config entry, AWS_REGION nor profile {profile:?} sets one); \
                         set `region` in the [[registry]] entry"
                    )));
                }
            }
        }
    };
    let place = Place {
        key,
        region: &region,
        plan,
    };
    let config = sdk_config(plan, &profile, &region, env).await;
    if plan.public {
        let mut builder = aws_sdk_ecrpublic::config::Builder::from(&config);
        if has_endpoint_override(&config, "ECR PUBLIC") {
            builder.set_use_fips(None);
            builder.set_use_dual_stack(None);
        }
        let client = aws_sdk_ecrpublic::Client::from_conf(builder.build());
        let out = client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| classify(e, &place))?;
        let data = out.authorization_data.ok_or_else(|| {
            SourceError::permanent(format!(
                "{}: the reply has no authorizationData",
                place.describe()
            ))
        })?;
        decode(
            data.authorization_token.as_deref(),
            data.expires_at.as_ref(),
            &place,
        )
    } else {
        let mut builder = aws_sdk_ecr::config::Builder::from(&config)
            .use_fips(plan.fips)
            .use_dual_stack(plan.dual_stack);
        if has_endpoint_override(&config, "ECR") {
            // The endpoint rules refuse FIPS or dual-stack with a custom
            // endpoint: the custom endpoint is what the user chose.
            builder.set_use_fips(None);
            builder.set_use_dual_stack(None);
        }
        let client = aws_sdk_ecr::Client::from_conf(builder.build());
        let out = client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| classify(e, &place))?;
        let data = out.authorization_data.unwrap_or_default();
        let first = data.into_iter().next().ok_or_else(|| {
            SourceError::permanent(format!(
                "{}: the reply has no authorizationData",
                place.describe()
            ))
        })?;
        decode(
            first.authorization_token.as_deref(),
            first.expires_at.as_ref(),
            &place,
        )
    }
}

/// The caller's forwarded variables as the SDK's environment, plus the
/// agent's `HOME` so that `~/.aws` means something. The SDK reads nothing
/// else of the environment.
fn sdk_env(env: &CallerEnv) -> Env {
    let mut vars: HashMap<String, String> =
        env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Ok(home) = std::env::var("HOME") {
        vars.insert("HOME".to_owned(), home);
    }
    Env::from(vars)
}

/// The shared config and credentials files of the caller: its
/// `AWS_CONFIG_FILE` / `AWS_SHARED_CREDENTIALS_FILE`, else the defaults
/// under `~/.aws`.
#[allow(deprecated)] // the type aliases name aws-runtime's types, not a dependency here
fn profile_files(env: &CallerEnv) -> aws_config::profile::profile_file::ProfileFiles {
    use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
    let mut files = ProfileFiles::builder();
    files = match env.get("AWS_CONFIG_FILE") {
        Some(path) => files.with_file(ProfileFileKind::Config, path),
        None => files.include_default_config_file(true),
    };
    files = match env.get("AWS_SHARED_CREDENTIALS_FILE") {
        Some(path) => files.with_file(ProfileFileKind::Credentials, path),
        None => files.include_default_credentials_file(true),
    };
    files.build()
}

/// The SDK config for one identity and region, from the caller's forwarded
/// variables only (never the agent's environment).
async fn sdk_config(plan: &Plan, profile: &str, region: &str, env: &CallerEnv) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .env(sdk_env(env))
        .profile_name(profile)
        .region(Region::new(region.to_owned()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
    if plan.profile.is_some() {
        // A named profile, like `aws --profile x`: its credentials from
        // the caller's files, not the caller's keys or instance metadata.
        loader = loader.credentials_provider(
            ProfileFileCredentialsProvider::builder()
                .profile_name(profile)
                .profile_files(profile_files(env))
                .build(),
        );
    }
    let base = loader.load().await;
    match &plan.role_arn {
        None => base,
        Some(role) => {
            let provider = AssumeRoleProvider::builder(role.clone())
                .session_name(SESSION_NAME)
                .region(Region::new(region.to_owned()))
                .configure(&base)
                .build()
                .await;
            base.into_builder()
                .credentials_provider(SharedCredentialsProvider::new(provider))
                .build()
        }
    }
}

/// Whether the endpoint is overridden (code, `AWS_ENDPOINT_URL[_<SERVICE>]`
/// or the profile), as the generated `From<&SdkConfig>` decides it.
fn has_endpoint_override(config: &SdkConfig, service_id: &str) -> bool {
    if config.endpoint_url().is_some() {
        return true;
    }
    // The same key the generated code asks with; the loader derives
    // `AWS_ENDPOINT_URL_<SERVICE_ID>` and the profile's `services` section.
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id(service_id)
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .expect("a complete service config key");
    config
        .service_config()
        .and_then(|c| c.load_config(key))
        .is_some()
}

/// `authorizationToken` is base64 of `AWS:<password>`.
fn decode(
    token: Option<&str>,
    expires_at: Option<&aws_smithy_types::DateTime>,
    place: &Place<'_>,
) -> Result<Token, SourceError> {
    let bad = |why: &str| {
        SourceError::permanent(format!(
            "{}: the authorization token in the reply {why}",
            place.describe()
        ))
    };
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("is missing"))?;
    let raw = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .map_err(|_| bad("is not base64"))?,
    );
    let text = std::str::from_utf8(&raw).map_err(|_| bad("is not text"))?;
    let (username, password) = text
        .split_once(':')
        .ok_or_else(|| bad("is not user:password"))?;
    if username.is_empty() || password.is_empty() {
        return Err(bad("has an empty user or password"));
    }
    let expires_at = expires_at.and_then(|t| {
        let secs = u64::try_from(t.secs()).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::new(secs, t.subsec_nanos()))
    });
    Ok(Token {
        username: username.to_owned(),
        secret: Secret::new(password.to_owned()),
        expires_at,
    })
}

/// Error codes after which retrying cannot help.
const PERMANENT_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "MissingAuthenticationToken",
    "ExpiredTokenException",
    "ExpiredToken",
    "InvalidParameterException",
    "UnauthorizedOperation",
    "UnsupportedCommandException",
];

const CREDENTIAL_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "MissingAuthenticationToken",
    "ExpiredTokenException",
    "ExpiredToken",
];

fn classify<E>(
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
    place: &Place<'_>,
) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let what = place.describe();
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let after = text::retry_after(se.raw().headers().get("retry-after"));
            let e = se.err();
            let code = e.code().unwrap_or("").to_owned();
            let message = text::clip(e.message().unwrap_or(""));
            let detail = match (code.is_empty(), message.is_empty()) {
                (false, false) => format!("{code}: {message}"),
                (false, true) => code.clone(),
                (true, false) => message,
                (true, true) => format!("HTTP {status}"),
            };
            let transient = code.contains("Throttl")
                || code == "TooManyRequestsException"
                || code == "RequestLimitExceeded"
                || code == "ServiceUnavailable"
                || code == "ServerException"
                || status == 429
                || status >= 500;
            if transient && !PERMANENT_CODES.contains(&code.as_str()) {
                let mut out = SourceError::transient(format!(
                    "{what}: GetAuthorizationToken failed: {detail} (retried with backoff)"
                ));
                if let Some(a) = after {
                    out = out.retry_after(a);
                }
                return out;
            }
            let hint = if CREDENTIAL_CODES.contains(&code.as_str()) {
                format!("the AWS credentials were refused; {}", place.login_hint())
            } else if code.starts_with("AccessDenied") || status == 403 {
                "the identity may not call ecr:GetAuthorizationToken: grant it in IAM, or pick \
                 another identity (`profile` / `role_arn` in the config, or AWS_PROFILE)"
                    .to_owned()
            } else {
                "not retried automatically; fix the cause and pull again".to_owned()
            };
            SourceError::permanent(format!(
                "{what}: GetAuthorizationToken failed: {detail}; {hint}"
            ))
        }
        SdkError::TimeoutError(_) => SourceError::transient(format!(
            "{what}: GetAuthorizationToken timed out (retried with backoff)"
        )),
        SdkError::ResponseError(_) => SourceError::transient(format!(
            "{what}: the reply to GetAuthorizationToken could not be read: {} (retried with backoff)",
            text::error_chain(&err)
        )),
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) | _ => {
            if let Some(cred) = find_credentials_error(&err) {
                return credentials_error(cred, place);
            }
            let text = text::error_chain(&err);
            if matches!(err, SdkError::ConstructionFailure(_))
                || text.contains("Invalid Configuration")
            {
                return SourceError::permanent(format!("{what}: cannot build the request: {text}"));
            }
            SourceError::transient(format!(
                "{what}: cannot reach the AWS endpoint: {text} (retried with backoff)"
            ))
        }
    }
}

fn find_credentials_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

fn credentials_error(err: &CredentialsError, place: &Place<'_>) -> SourceError {
    let what = place.describe();
    let text = text::error_chain(err);
    match err {
        CredentialsError::ProviderTimedOut(_) => SourceError::transient(format!(
            "{what}: the AWS credential provider timed out: {text} (retried with backoff)"
        )),
        CredentialsError::CredentialsNotLoaded(_) => match &place.plan.profile {
            Some(p) => SourceError::permanent(format!(
                "{what}: profile {p:?} has no credentials (is it in the caller's AWS \
                 config or credentials file: its AWS_CONFIG_FILE / \
                 AWS_SHARED_CREDENTIALS_FILE, else ~/.aws?); {}",
                place.login_hint()
            )),
            None => SourceError::permanent(format!(
                "{what}: no AWS credentials were found: {text}; {}",
                place.login_hint()
            )),
        },
        CredentialsError::InvalidConfiguration(_) => SourceError::permanent(format!(
            "{what}: the AWS configuration is invalid: {text}; {}",
            place.login_hint()
        )),
        _ => {
            // Provider errors: an expired SSO session, a refused
            // AssumeRole, STS unreachable. Connection trouble may pass.
            let lower = text.to_ascii_lowercase();
            let passing = [
                "dispatch",
                "connect",
                "timed out",
                "timeout",
                "throttl",
                "503",
                "500",
            ]
            .iter()
            .any(|w| lower.contains(w));
            if passing {
                SourceError::transient(format!(
                    "{what}: loading AWS credentials failed: {text} (retried with backoff)"
                ))
            } else {
                SourceError::permanent(format!(
                    "{what}: loading AWS credentials failed: {text}; {}",
                    place.login_hint()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::parse_host`] of the key a client's spelling has (`None`
    /// when it has none).
    fn parse_host(raw: &str) -> Option<Host> {
        regent_shared::registry::canonical(raw)
            .ok()
            .and_then(|key| super::parse_host(&key))
    }

    /// [`super::detect`] of the key a client's spelling has.
    fn detect(raw: &str) -> Option<Ecr> {
        regent_shared::registry::canonical(raw)
            .ok()
            .and_then(|key| super::detect(&key))
    }

    fn private(account: &str, region: &str, fips: bool, dual_stack: bool) -> Option<Host> {
        Some(Host::Private {
            account: account.into(),
            region: region.into(),
            fips,
            dual_stack,
        })
    }

    #[test]
    fn hostnames_are_matched_anchored() {
        let a = "123456789012";
        assert_eq!(
            parse_host("123456789012.dkr.ecr.us-east-1.amazonaws.com"),
            private(a, "us-east-1", false, false)
        );
        assert_eq!(
            parse_host("123456789012.dkr.ecr.us-east-1.amazonaws.com:443"),
            private(a, "us-east-1", false, false)
        );
        assert_eq!(
            parse_host("123456789012.DKR.ECR.eu-west-1.AMAZONAWS.COM"),
            private(a, "eu-west-1", false, false)
        );
        assert_eq!(
            parse_host("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com"),
            private(a, "us-gov-west-1", true, false)
        );
        assert_eq!(
            parse_host("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            private(a, "cn-north-1", false, false)
        );
        assert_eq!(
            parse_host("123456789012.dkr-ecr.us-west-2.on.aws"),
            private(a, "us-west-2", false, true)
        );
        assert_eq!(
            parse_host("123456789012.dkr-ecr-fips.us-east-1.on.aws"),
            private(a, "us-east-1", true, true)
        );
        assert_eq!(
            parse_host("123456789012.dkr-ecr.cn-northwest-1.on.amazonwebservices.com.cn"),
            private(a, "cn-northwest-1", false, true)
        );
        assert_eq!(
            parse_host("123456789012.dkr.ecr.us-iso-east-1.c2s.ic.gov"),
            private(a, "us-iso-east-1", false, false)
        );
        assert_eq!(
            parse_host("123456789012.dkr.ecr.eusc-de-east-1.amazonaws.eu"),
            private(a, "eusc-de-east-1", false, false)
        );
        assert_eq!(parse_host("public.ecr.aws"), Some(Host::Public));
        assert_eq!(parse_host("ecr-public.aws.com"), Some(Host::Public));
        for bad in [
            "evil.dkr.ecr.us-east-1.amazonaws.com.attacker.com",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.cn.evil",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.attacker.com",
            "x123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "12345678901.dkr.ecr.us-east-1.amazonaws.com",
            "1234567890123.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr..amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.amazonaws.co",
            "123456789012xdkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.amazonawsxcom",
            "public.ecr.aws.evil",
            "evilpublic.ecr.aws",
            "docker.io",
            "",
        ] {
            assert_eq!(parse_host(bad), None, "{bad}");
            assert!(detect(bad).is_none(), "{bad}");
        }
    }

    fn req(key: &str, env: &[(&str, &str)]) -> SourceRequest {
        SourceRequest {
            key: regent_shared::registry::canonical(key).unwrap(),
            server_url: key.into(),
            env: {
                let mut e = CallerEnv::default();
                for (k, v) in env {
                    e.set(*k, *v);
                }
                e
            },
        }
    }

    #[test]
    fn cache_key_is_identity_and_region_not_account() {
        let ecr = Ecr::default();
        let a = ecr.cache_key(&req("111111111111.dkr.ecr.us-east-1.amazonaws.com", &[]));
        let b = ecr.cache_key(&req("222222222222.dkr.ecr.us-east-1.amazonaws.com", &[]));
        assert_eq!(a, b);
        let other_region = ecr.cache_key(&req("111111111111.dkr.ecr.eu-west-1.amazonaws.com", &[]));
        assert_ne!(a, other_region);
        let fips = ecr.cache_key(&req(
            "111111111111.dkr.ecr-fips.us-east-1.amazonaws.com",
            &[],
        ));
        assert_ne!(a, fips);
        let profile = ecr.cache_key(&req(
            "111111111111.dkr.ecr.us-east-1.amazonaws.com",
            &[("AWS_PROFILE", "x")],
        ));
        assert_ne!(a, profile);
        // The forwarded region does not beat the hostname's.
        let region_env = ecr.cache_key(&req(
            "111111111111.dkr.ecr.us-east-1.amazonaws.com",
            &[("AWS_REGION", "eu-west-1")],
        ));
        assert_eq!(a, region_env);
        let public = ecr.cache_key(&req("public.ecr.aws", &[("AWS_REGION", "eu-west-1")]));
        assert!(public.starts_with("public:us-east-1:"), "{public}");
    }

    #[test]
    fn cache_key_tells_callers_apart_without_holding_their_credentials() {
        let ecr = Ecr::default();
        let host = "111111111111.dkr.ecr.us-east-1.amazonaws.com";
        let key = |vars: &[(&str, &str)]| ecr.cache_key(&req(host, vars));
        let a = [
            ("AWS_ACCESS_KEY_ID", "AKIAAAAAAAAAAAAAAAAA"),
            ("AWS_SECRET_ACCESS_KEY", "secret-a-hunter2"),
        ];
        let b = [
            ("AWS_ACCESS_KEY_ID", "AKIABBBBBBBBBBBBBBBB"),
            ("AWS_SECRET_ACCESS_KEY", "secret-b-hunter2"),
        ];
        assert_eq!(key(&a), key(&a));
        assert_ne!(key(&a), key(&b));
        assert_ne!(
            key(&a),
            key(&[]),
            "no credentials is an identity of its own"
        );
        // The same key id with another secret or session token is another caller.
        assert_ne!(key(&a), key(&[a[0], ("AWS_SECRET_ACCESS_KEY", "other")]));
        assert_ne!(key(&a), key(&[a[0], a[1], ("AWS_SESSION_TOKEN", "t")]));
        // Files and endpoints are part of the identity too.
        assert_ne!(key(&[]), key(&[("AWS_SHARED_CREDENTIALS_FILE", "/x")]));
        assert_ne!(
            key(&[]),
            key(&[("AWS_ENDPOINT_URL_ECR", "http://127.0.0.1:1")])
        );
        for k in [key(&a), key(&b)] {
            assert!(!k.contains("hunter2") && !k.contains("AKIA"), "{k}");
        }
    }

    #[test]
    fn settings_are_checked_and_win() {
        let table = |s: &str| -> toml::Table { toml::from_str(s).unwrap() };
        let ecr = Ecr::from_settings(table(
            "profile = \"prod\"\nregion = \"eu-west-1\"\nrole_arn = \"arn:aws:iam::123456789012:role/pull\"",
        ))
        .unwrap();
        let plan = ecr.plan(&req(
            "registry.corp.example",
            &[("AWS_PROFILE", "dev"), ("AWS_REGION", "us-west-2")],
        ));
        assert_eq!(plan.profile.as_deref(), Some("prod"));
        assert_eq!(plan.region.as_deref(), Some("eu-west-1"));
        assert!(plan.role_arn.is_some());
        // A non-ECR host without a region setting takes the caller's.
        let plan = Ecr::default().plan(&req(
            "registry.corp.example",
            &[("AWS_DEFAULT_REGION", "ap-south-1")],
        ));
        assert_eq!(plan.region.as_deref(), Some("ap-south-1"));
        assert!(plan.profile.is_none());
        assert!(
            Ecr::from_settings(table("regoin = \"x\""))
                .unwrap_err()
                .contains("regoin")
        );
        assert!(Ecr::from_settings(table("region = \"EU west\"")).is_err());
        assert!(Ecr::from_settings(table("role_arn = \"pull\"")).is_err());
        assert!(Ecr::from_settings(table("profile = \"\"")).is_err());
    }

    #[test]
    fn tokens_decode_and_errors_do_not_quote_them() {
        let plan = Ecr::default().plan(&req("public.ecr.aws", &[]));
        let place = Place {
            key: "public.ecr.aws",
            region: "us-east-1",
            plan: &plan,
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode("AWS:pass:with:colons");
        let exp = aws_smithy_types::DateTime::from_secs_and_nanos(1_893_553_445, 500_000_000);
        let t = decode(Some(&b64), Some(&exp), &place).unwrap();
        assert_eq!(t.username, "AWS");
        assert_eq!(t.secret.expose(), "pass:with:colons");
        assert_eq!(
            t.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_893_553_445, 500_000_000))
        );
        let secret_b64 = base64::engine::general_purpose::STANDARD.encode("hunter2-no-colon");
        for bad in [secret_b64.as_str(), "hunter2!!", ""] {
            let e = decode(Some(bad), None, &place).err().unwrap();
            assert!(e.is_permanent());
            assert!(!e.message.contains("hunter2"), "{}", e.message);
            assert!(e.message.contains("public.ecr.aws"), "{}", e.message);
        }
    }
}
