//! The `gcp` source: Google OAuth2 access tokens for Artifact Registry and
//! Container Registry (`oauth2accesstoken` and the token).
//!
//! ```toml
//! [[registry]]
//! match = "europe-west1-docker.pkg.dev"
//! source = "gcp"
//! credentials_file = "/etc/regent/ci-pusher.json"   # optional: a key file that wins
//! ```
//!
//! Zero config for `gcr.io`, `<label>.gcr.io`, `<region>-docker.pkg.dev`
//! and the regional `docker.<region>.rep.pkg.dev`, matched anchored
//! ([`is_google_registry`]): `gcr.io.example.com` is not Google's.
//!
//! # Credentials
//!
//! The first of these that is there answers, and its errors are final (a
//! broken key file does not fall through to another identity):
//!
//! 1. A credentials file: `credentials_file` from the entry, else the
//!    caller's `GOOGLE_APPLICATION_CREDENTIALS`. A `service_account` key
//!    signs a JWT (RS256 with the key's `private_key`, `kid` its
//!    `private_key_id`; `iss` the `client_email`, `aud` the `token_uri`,
//!    `scope` [`SCOPE`], `exp` an hour after `iat`) and trades it at the
//!    key's `token_uri` (RFC 7523, `grant_type=…jwt-bearer`). An
//!    `authorized_user` file (what `gcloud auth application-default login`
//!    writes) trades its refresh token at its `token_uri`, by default
//!    [`DEFAULT_TOKEN_URI`]. Other types (`external_account`,
//!    `impersonated_service_account`) are refused, saying so.
//! 2. gcloud's application-default credentials,
//!    `application_default_credentials.json` in the caller's
//!    `CLOUDSDK_CONFIG`, else in `~/.config/gcloud` of the agent's user;
//!    read as in 1.
//! 3. The metadata server (GCE, GKE, Cloud Run):
//!    `GET http://<host>/computeMetadata/v1/instance/service-accounts/default/token`
//!    with `Metadata-Flavor: Google`, the host `GCE_METADATA_HOST` of the
//!    agent's environment (as Google's own libraries read it) or
//!    169.254.169.254. An answer without `Metadata-Flavor: Google` (another
//!    cloud's metadata service at that address) is not Google's; no answer
//!    within [`METADATA_TIMEOUT`] means there is no metadata server, and
//!    the agent believes that of the host for [`METADATA_ABSENT_FOR`].
//! 4. The gcloud CLI (`REGENT_GCLOUD` of the agent's environment, else
//!    `gcloud` on its `PATH`; `REGENT_GCLOUD=` turns the step off):
//!    `gcloud config config-helper
//!    --format=json`, whose `credential.access_token` and
//!    `credential.token_expiry` are the token and its real expiry (as
//!    kubectl's gcp plugin read them), with the caller's `CLOUDSDK_CONFIG`.
//!
//! The identity is the caller's: `GOOGLE_APPLICATION_CREDENTIALS` and
//! `CLOUDSDK_CONFIG` are forwarded by the helper and are part of the cache
//! key, so two jobs with different keys never share a token. One token
//! serves every Google registry of that identity.
//!
//! # Why not the `gcp_auth` crate
//!
//! It was the plan, and it was measured (16 s of build, its own HTTP client
//! and `chrono`). It does not fit an agent that serves many callers:
//! `provider()` reads the agent's process environment, not the caller's; it
//! has no timeout (its metadata probe can hang a `get`); it cannot read an
//! `authorized_user` file from `GOOGLE_APPLICATION_CREDENTIALS`
//! (djc/gcp_auth#56); its metadata host and ADC token endpoint cannot be
//! pointed anywhere else, so those steps could never be tested; its gcloud
//! step assumes an hour of lifetime for a token gcloud may have cached for
//! fifty minutes already; and it refreshes only 20 s before expiry, which
//! the engine's half-life refresh would have to defeat by rebuilding the
//! provider each time. The flows themselves are four small HTTP exchanges
//! and a JWT, on the client and JWT crate the agent already has; so this
//! file holds them, and the engine alone decides when to refresh: each
//! fetch here makes exactly one token request (or one CLI run), and nothing
//! below it caches.
//!
//! # Errors
//!
//! A refused key or refresh token (`invalid_grant`, `invalid_client`,
//! `unauthorized_client`, 400/401/403) is permanent and says what to
//! renew; a JWT refused for its times says to check the clock. 429 waits
//! for its `Retry-After` (at least a minute); 5xx, a refused connection and
//! a timeout are transient. Google's `error_description` is quoted clipped.
//! No key, JWT, refresh token or access token reaches a log line or an
//! error; a file's contents are never quoted.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use regent_shared::Secret;
use regent_shared::registry::RegistryKey;
use serde::{Deserialize, Deserializer, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::http::{self, Body, HttpError, Reply, form};
use super::{
    BoxFuture, CallerEnv, Context, Descriptor, Source, SourceError, SourceRequest, Token, cli, text,
};

/// `source = "gcp"`, and zero config for Google's registry hosts.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "gcp",
    from_settings: Some(|settings| Ok(Arc::new(Gcp::from_settings(settings)?))),
    detect: Some(|key| is_google_registry(key).then(|| Arc::new(Gcp::default()) as _)),
    feature: Some("gcp"),
};

/// The username that goes with an access token.
pub const USERNAME: &str = "oauth2accesstoken";
/// The scope asked for: pull and push on both registries.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Where an `authorized_user` file without `token_uri` trades its refresh
/// token (a service account key always names its own).
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The agent's variable naming the metadata server (`host[:port]`).
pub const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";
const METADATA_IP: &str = "169.254.169.254";
pub const METADATA_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// One request to a token endpoint.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The metadata server answers at once where there is one.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a metadata host that did not answer is taken to have none.
pub const METADATA_ABSENT_FOR: Duration = Duration::from_secs(300);
/// `gcloud config config-helper` (it may refresh its own token first).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(15);
/// The whole fetch, within the helper's wait for the agent.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(25);
/// The largest answer or CLI output read.
pub const MAX_ANSWER: usize = 64 << 10;
/// The largest credentials file read (a key file is about 2.4 KiB).
const MAX_FILE: u64 = 64 << 10;
/// A JWT assertion's lifetime: Google accepts at most an hour.
const ASSERTION_SECS: i64 = 3600;
/// How long a 429 without `Retry-After` waits.
const THROTTLE_WAIT: Duration = Duration::from_secs(60);
/// The agent's variable naming the gcloud CLI (empty: no CLI step).
pub const GCLOUD_ENV: &str = "REGENT_GCLOUD";
/// The caller's variables that pick the identity.
const CALLER_ENV: &[&str] = &["GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG"];

/// Whether `key` is a Google registry host: `gcr.io`, `<label>.gcr.io`,
/// `<label>-docker.pkg.dev`, `docker.<label>.rep.pkg.dev`; anchored, any
/// port.
pub fn is_google_registry(key: &RegistryKey) -> bool {
    let host = key.host();
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if host == "gcr.io" {
        return true;
    }
    if let Some(sub) = host.strip_suffix(".gcr.io") {
        return label(sub);
    }
    if let Some(region) = host.strip_suffix("-docker.pkg.dev") {
        return label(region);
    }
    host.strip_prefix("docker.")
        .and_then(|rest| rest.strip_suffix(".rep.pkg.dev"))
        .is_some_and(label)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    credentials_file: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub struct Gcp {
    credentials_file: Option<PathBuf>,
}

/// Where a credentials file came from, for messages.
#[derive(Clone, Copy)]
enum Origin {
    Config,
    CallerEnv,
    Adc,
}

impl Origin {
    fn describe(self) -> &'static str {
        match self {
            Origin::Config => "`credentials_file` in the config",
            Origin::CallerEnv => "GOOGLE_APPLICATION_CREDENTIALS",
            Origin::Adc => "gcloud's application-default credentials",
        }
    }
}

/// A credentials file's fields (each type uses some); wiped when dropped.
#[derive(Deserialize, Zeroize, ZeroizeOnDrop, Default)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

/// A service account JWT's claims.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

/// A token endpoint's or the metadata server's answer.
#[derive(Deserialize)]
struct Answer {
    #[serde(default, deserialize_with = "secret_field")]
    access_token: Option<Secret>,
    #[serde(default, deserialize_with = "seconds_field")]
    expires_in: Option<u64>,
}

/// An OAuth2 error answer.
#[derive(Deserialize, Default)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

/// What `gcloud config config-helper --format=json` prints (the part used).
#[derive(Deserialize)]
struct ConfigHelper {
    credential: Option<HelperCredential>,
}

#[derive(Deserialize)]
struct HelperCredential {
    #[serde(default, deserialize_with = "secret_field")]
    access_token: Option<Secret>,
    token_expiry: Option<String>,
}

fn secret_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.filter(|s| !s.is_empty()).map(Secret::new))
}

/// Seconds as a number or as a string of one.
fn seconds_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(u64),
        Text(String),
    }
    Ok(match Option::<Seconds>::deserialize(d)? {
        Some(Seconds::Number(n)) => Some(n),
        Some(Seconds::Text(s)) => s.trim().parse().ok(),
        None => None,
    })
}

impl Gcp {
    pub fn from_settings(settings: toml::Table) -> Result<Gcp, String> {
        let s: Settings = toml::Value::Table(settings)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().trim().to_owned())?;
        if let Some(path) = &s.credentials_file
            && !path.is_absolute()
        {
            return Err(format!(
                "`credentials_file` {:?} is not an absolute path",
                path.display().to_string()
            ));
        }
        Ok(Gcp {
            credentials_file: s.credentials_file,
        })
    }

    async fn run(&self, req: &SourceRequest, ctx: &Context) -> Result<Token, SourceError> {
        let registry = req.key.as_str();
        let from_env = req
            .env
            .get("GOOGLE_APPLICATION_CREDENTIALS")
            .filter(|p| !p.is_empty());
        if let Some(path) = &self.credentials_file {
            return self.with_file(registry, path, Origin::Config, ctx).await;
        }
        if let Some(path) = from_env {
            return self
                .with_file(registry, Path::new(path), Origin::CallerEnv, ctx)
                .await;
        }
        if let Some(path) = adc_path(&req.env)
            && path.exists()
        {
            return self.with_file(registry, &path, Origin::Adc, ctx).await;
        }
        if let Some(token) = metadata(registry, ctx).await {
            return token;
        }
        if let Some(token) = gcloud(registry, &req.env, ctx).await {
            return token;
        }
        let cli = match cli::Cli::from_env(GCLOUD_ENV, "gcloud") {
            Some(_) => "no gcloud CLI is on the agent's PATH either",
            None => "the gcloud CLI step is off (REGENT_GCLOUD is set and empty)",
        };
        Err(SourceError::permanent(format!(
            "no Google credentials for {registry}: point GOOGLE_APPLICATION_CREDENTIALS (or \
             `credentials_file` in a [[registry]] entry) at a service account key, or run \
             `gcloud auth application-default login`, or run where a metadata server gives a \
             service account (GCE, GKE); {cli}"
        )))
    }

    async fn with_file(
        &self,
        registry: &str,
        path: &Path,
        origin: Origin,
        ctx: &Context,
    ) -> Result<Token, SourceError> {
        let what = format!(
            "{registry}: the Google credentials {}",
            text::clip(&path.display().to_string())
        );
        let raw = read_file(path).await.map_err(|e| {
            SourceError::permanent(format!(
                "{what} (from {}) cannot be read: {e}",
                origin.describe()
            ))
        })?;
        let file: CredentialsFile = serde_json::from_slice(&raw).map_err(|_| {
            SourceError::permanent(format!(
                "{what} (from {}) is not a Google credentials JSON file; download a service \
                 account key (IAM, Service accounts, Keys) or run `gcloud auth \
                 application-default login`",
                origin.describe()
            ))
        })?;
        drop(raw);
        let kind = file.kind.clone().unwrap_or_default();
        match kind.as_str() {
            "service_account" => self.service_account(&what, &file, ctx).await,
            "authorized_user" => self.authorized_user(&what, &file, ctx).await,
            other => Err(SourceError::permanent(format!(
                "{what} is of type {:?}, which regent does not support (it takes \
                 \"service_account\" keys and \"authorized_user\" files); for workload identity \
                 federation, run `gcloud auth print-access-token` from an `exec` source",
                text::clip(other)
            ))),
        }
    }

    async fn service_account(
        &self,
        what: &str,
        file: &CredentialsFile,
        ctx: &Context,
    ) -> Result<Token, SourceError> {
        let missing = |field: &str| {
            SourceError::permanent(format!(
                "{what} is a service account key without `{field}`; download a new key"
            ))
        };
        let email = file
            .client_email
            .as_deref()
            .ok_or_else(|| missing("client_email"))?;
        let pem = file
            .private_key
            .as_deref()
            .ok_or_else(|| missing("private_key"))?;
        let token_uri = file
            .token_uri
            .as_deref()
            .ok_or_else(|| missing("token_uri"))?;
        let token_uri = endpoint(token_uri).map_err(|e| {
            SourceError::permanent(format!("{what}: its `token_uri` {e}; download a new key"))
        })?;
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
            SourceError::permanent(format!(
                "{what}: its `private_key` is not an RSA private key in PEM form; download a \
                 new key"
            ))
        })?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = file.private_key_id.clone();
        let iat = unix(ctx.clock.now());
        let claims = Claims {
            iss: email,
            scope: SCOPE,
            aud: &token_uri,
            iat,
            exp: iat + ASSERTION_SECS,
        };
        let jwt = Zeroizing::new(jsonwebtoken::encode(&header, &claims, &key).map_err(|e| {
            SourceError::permanent(format!(
                "{what}: cannot sign the JWT: {}",
                text::clip(&e.to_string())
            ))
        })?);
        let form = form(&[("grant_type", JWT_BEARER), ("assertion", &jwt)]);
        let who = format!("service account {}", text::clip(email));
        self.trade(what, &who, &token_uri, form, ctx).await
    }

    async fn authorized_user(
        &self,
        what: &str,
        file: &CredentialsFile,
        ctx: &Context,
    ) -> Result<Token, SourceError> {
        let field = |name: &str, value: &Option<String>| {
            value.clone().filter(|v| !v.is_empty()).ok_or_else(|| {
                SourceError::permanent(format!(
                    "{what} is an authorized_user file without `{name}`; run `gcloud auth \
                     application-default login` again"
                ))
            })
        };
        let client_id = Zeroizing::new(field("client_id", &file.client_id)?);
        let client_secret = Zeroizing::new(field("client_secret", &file.client_secret)?);
        let refresh_token = Zeroizing::new(field("refresh_token", &file.refresh_token)?);
        let token_uri = endpoint(file.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI))
            .map_err(|e| SourceError::permanent(format!("{what}: its `token_uri` {e}")))?;
        let form = form(&[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("client_secret", &client_secret),
            ("refresh_token", &refresh_token),
        ]);
        self.trade(what, "the user's refresh token", &token_uri, form, ctx)
            .await
    }

    /// Posts `form` to `token_uri` and reads the access token.
    async fn trade(
        &self,
        what: &str,
        who: &str,
        token_uri: &str,
        form: Zeroizing<String>,
        ctx: &Context,
    ) -> Result<Token, SourceError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(token_uri)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(USER_AGENT, concat!("regent/", env!("CARGO_PKG_VERSION")))
            .body(Body::from(form.as_bytes().to_vec()))
            .map_err(|e| {
                SourceError::permanent(format!(
                    "{what}: cannot build the request: {}",
                    text::clip(&e.to_string())
                ))
            })?;
        drop(form);
        let sent = ctx.clock.now();
        let reply = ctx
            .http
            .send(req, REQUEST_TIMEOUT, MAX_ANSWER)
            .await
            .map_err(|e| unreachable(what, token_uri, &e))?;
        if !reply.status.is_success() {
            return Err(refusal(what, who, &reply));
        }
        token_of(what, &reply, sent)
    }
}

impl Source for Gcp {
    fn name(&self) -> &'static str {
        "gcp"
    }

    fn cache_key(&self, req: &SourceRequest) -> String {
        // One access token serves every Google registry of an identity.
        format!(
            "{}:{}",
            super::fingerprint(&self.credentials_file),
            super::identity_digest(&req.env, |n| CALLER_ENV.contains(&n))
        )
    }

    fn caller_env(&self) -> &'static [&'static str] {
        CALLER_ENV
    }

    fn fetch<'a>(
        &'a self,
        req: &'a SourceRequest,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(async move {
            super::within(FETCH_TIMEOUT, self.run(req, ctx), || {
                format!(
                    "{}: no Google access token within {}s (retried with backoff)",
                    req.key,
                    FETCH_TIMEOUT.as_secs()
                )
            })
            .await
        })
    }
}

/// gcloud's application-default credentials file for this caller.
fn adc_path(env: &CallerEnv) -> Option<PathBuf> {
    let dir = match env.get("CLOUDSDK_CONFIG").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?)
            .join(".config")
            .join("gcloud"),
    };
    Some(dir.join("application_default_credentials.json"))
}

/// The metadata host that did not answer last, and until when that is
/// believed: a workstation pays [`METADATA_TIMEOUT`] once in a while, not
/// at every fetch.
static METADATA_ABSENT: Mutex<Option<(String, Instant)>> = Mutex::new(None);

/// The metadata server's token; `None` when there is no metadata server.
async fn metadata(registry: &str, ctx: &Context) -> Option<Result<Token, SourceError>> {
    let host = std::env::var(METADATA_HOST_ENV)
        .ok()
        .map(|h| h.trim().trim_end_matches('/').to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| METADATA_IP.to_owned());
    let absent = |until: Option<Instant>| {
        let mut memo = METADATA_ABSENT.lock().unwrap_or_else(|p| p.into_inner());
        *memo = until.map(|t| (host.clone(), t));
    };
    {
        let memo = METADATA_ABSENT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((h, until)) = &*memo
            && *h == host
            && Instant::now() < *until
        {
            return None;
        }
    }
    let url = format!("http://{host}{METADATA_PATH}");
    let req = Request::get(&url)
        .header("Metadata-Flavor", "Google")
        .header(USER_AGENT, concat!("regent/", env!("CARGO_PKG_VERSION")))
        .body(Body::default())
        .ok()?;
    let sent = ctx.clock.now();
    let reply = match ctx.http.send(req, METADATA_TIMEOUT, MAX_ANSWER).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::debug!(%host, error = %e, "no Google metadata server");
            absent(Some(Instant::now() + METADATA_ABSENT_FOR));
            return None;
        }
    };
    if reply
        .headers
        .get("metadata-flavor")
        .is_none_or(|v| v.as_bytes() != b"Google")
    {
        tracing::debug!(%host, status = %reply.status, "not a Google metadata server");
        absent(Some(Instant::now() + METADATA_ABSENT_FOR));
        return None;
    }
    absent(None);
    let what = format!("{registry}: the metadata server's service account");
    if !reply.status.is_success() {
        return Some(Err(match reply.status.as_u16() {
            404 => SourceError::permanent(format!(
                "{what}: this instance has no service account (404); attach one, or use a key \
                 file (GOOGLE_APPLICATION_CREDENTIALS)"
            )),
            403 => SourceError::permanent(format!(
                "{what}: refused (403); check the instance's access scopes (cloud-platform)"
            )),
            code @ 500..=599 => {
                SourceError::transient(format!("{what}: HTTP {code} (retried with backoff)"))
            }
            code => SourceError::transient(format!("{what}: HTTP {code} (retried with backoff)")),
        }));
    }
    Some(token_of(&what, &reply, sent))
}

/// gcloud's token; `None` when gcloud is not installed.
async fn gcloud(
    registry: &str,
    env: &CallerEnv,
    ctx: &Context,
) -> Option<Result<Token, SourceError>> {
    let mut vars: Vec<(&str, &OsStr)> = Vec::new();
    if let Some(dir) = env.get("CLOUDSDK_CONFIG").filter(|d| !d.is_empty()) {
        vars.push(("CLOUDSDK_CONFIG", OsStr::new(dir)));
    }
    let gcloud = cli::Cli::from_env(GCLOUD_ENV, "gcloud")?;
    let what = format!("{registry}: `gcloud config config-helper`");
    let out = match cli::run(
        &gcloud.program,
        &["config", "config-helper", "--format=json"],
        &vars,
        CLI_TIMEOUT,
        MAX_ANSWER,
    )
    .await
    {
        Ok(out) => out,
        Err(cli::CliError::NotFound(_)) if !gcloud.explicit => return None,
        Err(e @ cli::CliError::NotFound(_)) => {
            return Some(Err(SourceError::permanent(format!(
                "{registry}: {GCLOUD_ENV} names a gcloud that cannot be run: {e}; fix the \
                 variable in the agent's environment, or unset it"
            ))));
        }
        Err(e) => return Some(Err(SourceError::transient(format!("{registry}: {e}")))),
    };
    if !out.status.success() {
        return Some(Err(SourceError::permanent(format!(
            "{what} failed ({}); run `gcloud auth login` (or `gcloud auth \
             application-default login`) as the agent's user",
            out.reason()
        ))));
    }
    Some(parse_config_helper(&what, &out.stdout, ctx.clock.now()))
}

fn parse_config_helper(what: &str, out: &[u8], now: SystemTime) -> Result<Token, SourceError> {
    let helper: ConfigHelper = serde_json::from_slice(out).map_err(|_| {
        SourceError::permanent(format!("{what} printed something that is not its JSON"))
    })?;
    let credential = helper.credential.ok_or_else(|| {
        SourceError::permanent(format!(
            "{what} printed no credential; run `gcloud auth login` as the agent's user"
        ))
    })?;
    let (Some(token), Some(expiry)) = (credential.access_token, credential.token_expiry) else {
        return Err(SourceError::permanent(format!(
            "{what} printed no access token or no expiry; run `gcloud auth login` as the \
             agent's user"
        )));
    };
    let expires_at = time::OffsetDateTime::parse(
        expiry.trim(),
        &time::format_description::well_known::Rfc3339,
    )
    .map(SystemTime::from)
    .map_err(|_| {
        SourceError::permanent(format!(
            "{what}: its token_expiry {:?} is not an RFC 3339 time",
            text::clip(&expiry)
        ))
    })?;
    if expires_at <= now {
        return Err(SourceError::transient(format!(
            "{what} handed out a token that has expired; retried with backoff"
        )));
    }
    Ok(Token {
        username: USERNAME.to_owned(),
        secret: token,
        expires_at: Some(expires_at),
    })
}

/// The token of a 200 answer, its lifetime counted from when it was asked
/// for.
fn token_of(what: &str, reply: &Reply, sent: SystemTime) -> Result<Token, SourceError> {
    let answer: Answer = serde_json::from_slice(&reply.body).map_err(|_| {
        SourceError::permanent(format!(
            "{what}: the answer ({}) is not the JSON of an access token",
            reply.status
        ))
    })?;
    let (Some(token), Some(expires_in)) = (answer.access_token, answer.expires_in) else {
        return Err(SourceError::permanent(format!(
            "{what}: the answer ({}) has no `access_token` or no `expires_in`",
            reply.status
        )));
    };
    if expires_in == 0 {
        return Err(SourceError::transient(format!(
            "{what}: the access token handed out has expired (expires_in 0)"
        )));
    }
    tracing::debug!(expires_in, "Google access token obtained");
    Ok(Token {
        username: USERNAME.to_owned(),
        secret: token,
        expires_at: Some(sent + Duration::from_secs(expires_in)),
    })
}

/// The error for a token endpoint's refusal.
fn refusal(what: &str, who: &str, reply: &Reply) -> SourceError {
    let code = reply.status.as_u16();
    let e: OAuthError = serde_json::from_slice(&reply.body).unwrap_or_default();
    let error = e.error.as_deref().map(text::clip).unwrap_or_default();
    let description = e
        .error_description
        .as_deref()
        .map(text::clip)
        .unwrap_or_default();
    let said = match (error.is_empty(), description.is_empty()) {
        (true, _) => format!("HTTP {code}"),
        (false, true) => format!("{code} {error}"),
        (false, false) => format!("{code} {error}: {description}"),
    };
    if code == 429 {
        let wait = text::retry_after(reply.headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()))
            .unwrap_or(THROTTLE_WAIT);
        return SourceError::transient(format!(
            "{what}: Google's token endpoint is rate limiting ({said}); not retried for {}s",
            wait.as_secs()
        ))
        .retry_after(wait);
    }
    if code >= 500 {
        return SourceError::transient(format!(
            "{what}: Google's token endpoint failed ({said}) (retried with backoff)"
        ));
    }
    let d = description.to_ascii_lowercase();
    if d.contains("timeframe") || d.contains("iat and exp") {
        return SourceError::transient(format!(
            "{what}: Google refused the JWT's times ({said}); check this machine's clock \
             (retried with backoff)"
        ));
    }
    match error.as_str() {
        "invalid_grant"
        | "invalid_client"
        | "unauthorized_client"
        | "invalid_request"
        | "access_denied" => SourceError::permanent(format!(
            "{what}: Google refused {who} ({said}); the key or login may be revoked or \
             deleted: create a new key, or run `gcloud auth application-default login` again"
        )),
        _ if (400..500).contains(&code) => SourceError::permanent(format!(
            "{what}: Google refused {who} ({said}); check the file's `token_uri`, or renew \
             the key or login"
        )),
        _ => SourceError::permanent(format!(
            "{what}: the token endpoint answered {said} instead of a token"
        )),
    }
}

fn unreachable(what: &str, url: &str, e: &HttpError) -> SourceError {
    if e.is_transient() {
        SourceError::transient(format!(
            "{what}: cannot reach {url}: {e} (retried with backoff)"
        ))
    } else {
        SourceError::permanent(format!("{what}: no answer from {url}: {e}"))
    }
}

/// A token endpoint checked: https, or http to a loopback host only.
fn endpoint(raw: &str) -> Result<String, String> {
    http::endpoint_url(raw).map_err(|e| match e {
        http::BadUrl::Malformed => format!("{:?} is not an https URL", text::clip(raw)),
        http::BadUrl::ClearText => format!(
            "{:?} is not https:// (http:// is only for loopback hosts)",
            text::clip(raw)
        ),
    })
}

async fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    super::read_secret_file(path, MAX_FILE).await
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use regent_shared::registry::canonical;

    fn google(raw: &str) -> bool {
        canonical(raw).is_ok_and(|k| is_google_registry(&k))
    }

    #[test]
    fn google_hosts_are_matched_anchored() {
        for host in [
            "gcr.io",
            "us.gcr.io",
            "eu.gcr.io:443",
            "marketplace.gcr.io",
            "europe-west1-docker.pkg.dev",
            "us-docker.pkg.dev/project/repo",
            "docker.europe-west1.rep.pkg.dev",
            "GCR.IO",
        ] {
            assert!(google(host), "{host}");
        }
        for host in [
            "gcr.io.example.com",
            "evilgcr.io",
            "a.b.gcr.io",
            "pkg.dev",
            "-docker.pkg.dev",
            "docker.pkg.dev",
            "us-docker.pkg.dev.example.com",
            "a.us-docker.pkg.dev",
            "docker..rep.pkg.dev",
            "docker.a.b.rep.pkg.dev",
            "ghcr.io",
        ] {
            assert!(!google(host), "{host}");
        }
    }

    #[test]
    fn settings_take_only_an_absolute_key_file() {
        let build = |s: &str| Gcp::from_settings(toml::from_str(s).unwrap());
        assert!(build("").unwrap().credentials_file.is_none());
        let g = build("credentials_file = \"/etc/key.json\"").unwrap();
        assert_eq!(
            g.credentials_file.as_deref(),
            Some(Path::new("/etc/key.json"))
        );
        let e = build("credentials_file = \"key.json\"").err().unwrap();
        assert!(e.contains("not an absolute path"), "{e}");
        let e = build("scopes = []").err().unwrap();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn token_endpoints_are_https_or_loopback() {
        assert!(endpoint("https://oauth2.googleapis.com/token").is_ok());
        assert!(endpoint("http://127.0.0.1:8080/token").is_ok());
        assert!(endpoint("http://[::1]:8080/token").is_ok());
        let e = endpoint("http://oauth2.googleapis.com/token")
            .err()
            .unwrap();
        assert!(e.contains("loopback"), "{e}");
        assert!(endpoint("file:///etc/passwd").is_err());
    }

    #[test]
    fn config_helper_output_gives_the_real_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let out = br#"{"configuration":{"active_configuration":"default"},
            "credential":{"access_token":"ya29.tok","token_expiry":"2027-01-15T08:30:00Z"},
            "sentinels":{}}"#;
        let t = parse_config_helper("x", out, now).unwrap();
        assert_eq!(t.username, USERNAME);
        assert_eq!(t.secret.expose(), "ya29.tok");
        assert_eq!(
            t.expires_at.unwrap().duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_secs(1_800_001_800)
        );
        let e = parse_config_helper("x", br#"{"credential":{}}"#, now)
            .err()
            .unwrap();
        assert!(
            e.is_permanent() && e.message.contains("no access token"),
            "{e}"
        );
        let later = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let e = parse_config_helper("x", out, later).err().unwrap();
        assert!(!e.is_permanent() && e.message.contains("expired"), "{e}");
        let e = parse_config_helper("x", b"ya29.tok", now).err().unwrap();
        assert!(!e.message.contains("ya29"), "{e}");
    }

    #[test]
    fn answers_take_seconds_as_numbers_or_strings() {
        for body in [
            &br#"{"access_token":"t","expires_in":3599,"token_type":"Bearer"}"#[..],
            br#"{"access_token":"t","expires_in":"3599"}"#,
        ] {
            let a: Answer = serde_json::from_slice(body).unwrap();
            assert_eq!(a.expires_in, Some(3599));
            assert_eq!(a.access_token.unwrap().expose(), "t");
        }
    }
}
