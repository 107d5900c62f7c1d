//! The `github-app` source: GitHub App installation access tokens, for
//! registries that take them (`x-access-token` and the token).
//!
//! ```toml
//! [[registry]]
//! match = "ghcr.io"
//! source = "github-app"
//! app_id = 123456                       # the App's ID, or its client ID ("Iv23li…")
//! installation_id = 7890123
//! private_key = { secret = "gh-app" }   # `regent secret set gh-app` < app.pem
//! # private_key_file = "/path/app.pem"  # instead of `private_key`
//! api_url = "https://api.github.com"    # the default; GitHub Enterprise Server: https://HOST/api/v3
//! ```
//!
//! Configuration only: no hostname is detected.
//!
//! # The flow
//!
//! Every fetch reads the App's private key (PEM, PKCS#1 as GitHub hands it
//! out, or PKCS#8) from the named secret or the file, signs a JWT with it
//! (RS256; `iat` 60 s in the past to absorb drift, `exp` 9 minutes after
//! `iat`, within GitHub's 10; `iss` the app id; integer seconds; the time
//! from [`Context::clock`]), and sends
//! `POST {api_url}/app/installations/{installation_id}/access_tokens` with
//! `Authorization: Bearer <JWT>`, `Accept: application/vnd.github+json`,
//! `X-GitHub-Api-Version: 2022-11-28` and `User-Agent: regent/<version>`.
//! The 201 answer's `token` and `expires_at` (an hour later) are the token.
//! Each request is bounded by [`REQUEST_TIMEOUT`], the fetch by
//! [`FETCH_TIMEOUT`], the answer by [`MAX_ANSWER`] bytes. The key, the JWT
//! and the token never reach a log line or an error.
//!
//! # Clock skew
//!
//! GitHub checks `iat` and `exp` against its own clock. When it refuses the
//! JWT for them (a 401 whose message names the `'Issued at'` or
//! `'Expiration time'` claim), the offset between its clock and ours is
//! taken from the refusal's `Date` header, the JWT is signed again with
//! GitHub's time and the request is sent once more, as octokit does. The
//! offset is kept for the later fetches of this source (until a reload
//! builds it anew), and applied to the times GitHub sends back: the token's
//! `expires_at` and a rate limit's reset are moved to our clock.
//! A refusal of the times that outlives the correction (or comes without a
//! `Date`) is transient, and says to check the clock.
//!
//! # Errors
//!
//! 401 (a key that is not this App's, a wrong `app_id`) and 404 (no such
//! installation of this App) are permanent, and so is any other 403 (the
//! installation lacks a permission, or is suspended) and a 201 without
//! `token` or `expires_at`. A rate limit is transient: a 403 or 429 with
//! `x-ratelimit-remaining: 0` waits until `x-ratelimit-reset`, one with
//! `Retry-After` that long, one that says "secondary rate limit" (or a
//! bare 429) at least a minute. 5xx, a refused connection and a timeout
//! are transient. GitHub's message is quoted clipped ([`text::clip`]).
//!
//! # ghcr.io
//!
//! GitHub's Container registry may not honour installation tokens for
//! private packages: the login succeeds and pulls are then `denied`, even
//! with the `packages: read` permission (GitHub's documentation supports
//! personal access tokens (classic) for it, and says GitHub Packages does
//! not support App tokens other than Actions' `GITHUB_TOKEN`). A PAT, stored
//! with `docker login ghcr.io`, is the supported path there; installation
//! tokens serve what does take them (public packages, GitHub Enterprise
//! Server setups that accept them, other registries fronted by GitHub
//! auth).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::{ACCEPT, AUTHORIZATION, DATE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use regent_shared::Secret;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::http::{BadUrl, Body, HttpError, Reply};
use super::{BoxFuture, Context, Descriptor, Source, SourceError, SourceRequest, Token, text};
use crate::named_secrets;

/// `source = "github-app"`; it detects no hosts.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "github-app",
    from_settings: Some(|settings| Ok(Arc::new(GitHubApp::from_settings(settings)?))),
    detect: None,
    feature: Some("github-app"),
};

pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The username that goes with an installation token.
pub const USERNAME: &str = "x-access-token";
pub const API_VERSION: &str = "2022-11-28";
/// One request to GitHub.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole fetch: the key, the request and its one retry after a skew.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest answer read (a token answer is well under 4 KiB).
pub const MAX_ANSWER: usize = 64 << 10;
/// The largest private key file read (a 4096-bit PEM is about 3.3 KiB).
const MAX_KEY_FILE: u64 = 64 << 10;
/// `iat` this long before now, for clocks that drift.
const IAT_BACKDATE_SECS: i64 = 60;
/// `exp` this long after `iat` (GitHub allows 10 minutes).
const JWT_LIFETIME_SECS: i64 = 9 * 60;
/// How long to wait after a secondary rate limit that does not say.
pub const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    app_id: toml::Value,
    installation_id: u64,
    // A value rather than a type: a string must be refused without
    // quoting it (it would be the key).
    private_key: Option<toml::Value>,
    private_key_file: Option<PathBuf>,
    api_url: Option<String>,
}

/// Where the App's private key is read from at each fetch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum KeySource {
    /// A named secret (`regent secret set NAME`).
    Secret(String),
    File(PathBuf),
}

impl KeySource {
    fn describe(&self) -> String {
        match self {
            KeySource::Secret(name) => format!("the secret {name:?}"),
            KeySource::File(path) => format!("the file {}", path.display()),
        }
    }
}

#[derive(Debug)]
pub struct GitHubApp {
    /// The JWT's `iss`: the app id as a string, or the client ID.
    iss: String,
    installation_id: u64,
    /// Without a trailing `/`.
    api_url: String,
    key: KeySource,
    /// How many seconds GitHub's clock is ahead of ours (negative: behind),
    /// as learned from a refusal of the JWT.
    skew: AtomicI64,
}

/// The JWT's claims.
#[derive(Serialize, Debug)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: String,
}

/// The part of the 201 answer that is used.
#[derive(Deserialize)]
struct Answer {
    token: Option<String>,
    expires_at: Option<String>,
}

impl GitHubApp {
    pub fn from_settings(settings: toml::Table) -> Result<GitHubApp, String> {
        let s: Settings = toml::Value::Table(settings)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().trim().to_owned())?;
        let iss = app_id(&s.app_id)?;
        if s.installation_id == 0 {
            return Err(
                "`installation_id` is 0: give the installation's number (the end of \
                        its settings URL, or `GET /app/installations`)"
                    .into(),
            );
        }
        let key = key_source(s.private_key, s.private_key_file)?;
        let api_url = api_url(s.api_url.as_deref().unwrap_or(DEFAULT_API_URL))?;
        Ok(GitHubApp {
            iss,
            installation_id: s.installation_id,
            api_url,
            key,
            skew: AtomicI64::new(0),
        })
    }

    /// How errors name this source.
    fn what(&self) -> String {
        format!(
            "GitHub App {} (installation {}, {})",
            self.iss, self.installation_id, self.api_url
        )
    }

    fn token_url(&self) -> String {
        format!(
            "{}/app/installations/{}/access_tokens",
            self.api_url, self.installation_id
        )
    }

    async fn run(&self, ctx: &Context) -> Result<Token, SourceError> {
        let key = self.signing_key(ctx).await?;
        let mut resigned = false;
        loop {
            let skew = self.skew.load(Ordering::Relaxed);
            let jwt = self.jwt(&key, ctx.clock.now(), skew)?;
            let reply = self.send(ctx, &jwt).await?;
            let received = ctx.clock.now();
            if reply.status.is_success() {
                return self.token(&reply, skew);
            }
            let message = github_message(&reply.body);
            if !resigned
                && is_skew_refusal(reply.status, &message)
                && let Some(offset) = server_offset(&reply.headers, received)
            {
                tracing::warn!(
                    app = %self.iss,
                    installation = self.installation_id,
                    offset_secs = offset,
                    "GitHub refused the JWT's times: its clock differs from ours; signing again \
                     with its time"
                );
                self.skew.store(offset, Ordering::Relaxed);
                resigned = true;
                continue;
            }
            return Err(self.refusal(&reply, &message, received, skew));
        }
    }

    /// The private key, from the secret or the file, parsed.
    async fn signing_key(&self, ctx: &Context) -> Result<EncodingKey, SourceError> {
        let what = self.what();
        let pem: Zeroizing<Vec<u8>> = match &self.key {
            KeySource::Secret(name) => {
                let secret = ctx
                    .named_secret(
                        &format!("{what}: "),
                        name,
                        "`private_key` in the config",
                        &format!(
                            "store the App's private key with `regent secret set {name} < app.pem`"
                        ),
                    )
                    .await?;
                Zeroizing::new(secret.expose().as_bytes().to_vec())
            }
            KeySource::File(path) => read_key_file(path).await.map_err(|e| {
                SourceError::permanent(format!(
                    "{what}: cannot read the private key file {}: {e}; check \
                     `private_key_file` in the config",
                    path.display()
                ))
            })?,
        };
        EncodingKey::from_rsa_pem(&pem).map_err(|_| {
            SourceError::permanent(format!(
                "{what}: {} does not hold an RSA private key in PEM form; give the .pem file \
                 generated in the App's settings (Private keys)",
                self.key.describe()
            ))
        })
    }

    fn jwt(
        &self,
        key: &EncodingKey,
        now: SystemTime,
        skew: i64,
    ) -> Result<Zeroizing<String>, SourceError> {
        let claims = claims(&self.iss, now, skew);
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
            .map(Zeroizing::new)
            .map_err(|e| {
                SourceError::permanent(format!(
                    "{}: cannot sign the JWT with {}: {}",
                    self.what(),
                    self.key.describe(),
                    text::clip(&e.to_string())
                ))
            })
    }

    async fn send(&self, ctx: &Context, jwt: &str) -> Result<Reply, SourceError> {
        let mut bearer = HeaderValue::try_from(Zeroizing::new(format!("Bearer {jwt}")).as_str())
            .map_err(|_| {
                SourceError::permanent(format!("{}: the JWT is not a header value", self.what()))
            })?;
        bearer.set_sensitive(true);
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.token_url())
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
            .header(USER_AGENT, concat!("regent/", env!("CARGO_PKG_VERSION")))
            .header(AUTHORIZATION, bearer)
            .body(Body::default())
            .map_err(|e| {
                SourceError::permanent(format!(
                    "{}: cannot build the request: {}; check `api_url`",
                    self.what(),
                    text::clip(&e.to_string())
                ))
            })?;
        ctx.http
            .send(req, REQUEST_TIMEOUT, MAX_ANSWER)
            .await
            .map_err(|e| self.unreachable(&e))
    }

    fn unreachable(&self, e: &HttpError) -> SourceError {
        let what = self.what();
        if e.is_transient() {
            SourceError::transient(format!(
                "{what}: cannot reach GitHub: {e} (retried with backoff)"
            ))
        } else {
            SourceError::permanent(format!("{what}: no answer from GitHub: {e}"))
        }
    }

    /// The token of a successful answer.
    fn token(&self, reply: &Reply, skew: i64) -> Result<Token, SourceError> {
        let what = self.what();
        let answer: Answer = serde_json::from_slice(&reply.body).map_err(|_| {
            SourceError::permanent(format!(
                "{what}: GitHub's answer ({}) is not the JSON of an installation token; check \
                 `api_url`",
                reply.status
            ))
        })?;
        let token = answer.token.filter(|t| !t.is_empty()).map(Secret::new);
        let (Some(token), Some(expires_at)) = (token, answer.expires_at) else {
            return Err(SourceError::permanent(format!(
                "{what}: GitHub's answer ({}) has no `token` or no `expires_at`; check `api_url`",
                reply.status
            )));
        };
        let expires_at = parse_rfc3339(&expires_at).ok_or_else(|| {
            SourceError::permanent(format!(
                "{what}: GitHub's `expires_at` {:?} is not an RFC 3339 time",
                text::clip(&expires_at)
            ))
        })?;
        tracing::debug!(
            app = %self.iss,
            installation = self.installation_id,
            "installation token created"
        );
        Ok(Token {
            username: USERNAME.to_owned(),
            secret: token,
            expires_at: Some(shift(expires_at, -skew)),
        })
    }

    /// The error for an answer that is not a token.
    fn refusal(&self, reply: &Reply, message: &str, now: SystemTime, skew: i64) -> SourceError {
        let what = self.what();
        let status = reply.status;
        let code = status.as_u16();
        let said = if message.is_empty() {
            format!("HTTP {code}")
        } else {
            format!("{code}: {message}")
        };
        if let Some(wait) = rate_limit_wait(status, &reply.headers, message, now, skew) {
            return SourceError::transient(format!(
                "{what}: GitHub's rate limit was hit ({said}); not retried before GitHub allows it"
            ))
            .retry_after(wait);
        }
        let (app, installation) = (&self.iss, self.installation_id);
        if is_skew_refusal(status, message) {
            // Still refused for its times, signed with GitHub's clock or
            // without a `Date` to learn it from.
            return SourceError::transient(format!(
                "{what}: GitHub refused the JWT's times ({said}); check this machine's clock \
                 (and that nothing between rewrites GitHub's Date header); retried with backoff"
            ));
        }
        match code {
            401 => SourceError::permanent(format!(
                "{what}: GitHub refused the App's JWT ({said}); check `app_id` ({app}) and that \
                 the private key ({}) is this App's and not revoked (the App's settings, \
                 Private keys)",
                self.key.describe()
            )),
            404 => SourceError::permanent(format!(
                "{what}: GitHub has no installation {installation} of App {app} ({said}); check \
                 `installation_id` (the number at the end of the installation's settings URL, \
                 or `GET /app/installations` as the App) and `app_id`"
            )),
            403 => SourceError::permanent(format!(
                "{what}: GitHub refused to create an installation token ({said}); check the \
                 App's permissions (Packages: read) and that installation {installation} is \
                 not suspended"
            )),
            422 => SourceError::permanent(format!(
                "{what}: GitHub refused the request ({said}); check the App's permissions on \
                 installation {installation}"
            )),
            500..=599 => SourceError::transient(format!(
                "{what}: GitHub failed ({said}) (retried with backoff)"
            )),
            _ => SourceError::permanent(format!(
                "{what}: GitHub answered {said} instead of a token; check `api_url`"
            )),
        }
    }
}

impl Source for GitHubApp {
    fn name(&self) -> &'static str {
        "github-app"
    }

    fn cache_key(&self, _req: &SourceRequest) -> String {
        // One installation token serves every registry of the entry.
        let key = match &self.key {
            KeySource::Secret(name) => format!("secret:{name}"),
            KeySource::File(path) => format!("file:{}", path.display()),
        };
        format!(
            "app={}:installation={}:{}",
            self.iss,
            self.installation_id,
            super::fingerprint(&(&self.iss, self.installation_id, &self.api_url, key))
        )
    }

    fn caller_env(&self) -> &'static [&'static str] {
        &[]
    }

    fn fetch<'a>(
        &'a self,
        _req: &'a SourceRequest,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(async move {
            super::within(FETCH_TIMEOUT, self.run(ctx), || {
                format!(
                    "{}: no installation token within {}s; is {} reachable?",
                    self.what(),
                    FETCH_TIMEOUT.as_secs(),
                    self.api_url
                )
            })
            .await
        })
    }
}

const APP_ID_HELP: &str = "`app_id` must be the App's ID (a number, like 123456) or its \
                           client ID (a string, like \"Iv23liAbCdEf\"), from the App's \
                           settings page";

/// The JWT's `iss` from `app_id`: a positive number, or a client ID.
fn app_id(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::Integer(n) if *n > 0 => Ok(n.to_string()),
        // Client IDs: "Iv23liAbCdEf", older ones "Iv1.8a61f9b3a7aba766".
        toml::Value::String(s)
            if !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
        {
            Ok(s.clone())
        }
        _ => Err(APP_ID_HELP.into()),
    }
}

fn key_source(
    private_key: Option<toml::Value>,
    private_key_file: Option<PathBuf>,
) -> Result<KeySource, String> {
    const HOW: &str = "store the PEM with `regent secret set NAME < app.pem` and write \
                       `private_key = { secret = \"NAME\" }`, or give \
                       `private_key_file = \"/path/to/app.pem\"`";
    match (private_key, private_key_file) {
        (Some(_), Some(_)) => {
            Err("give one of `private_key` and `private_key_file`, not both".into())
        }
        (None, None) => Err(format!("no private key for the App: {HOW}")),
        (None, Some(path)) if path.is_absolute() => Ok(KeySource::File(path)),
        (None, Some(path)) => Err(format!(
            "`private_key_file` {:?} is not an absolute path",
            path.display().to_string()
        )),
        (Some(value), None) => {
            named_secrets::setting_ref("private_key", "key", value, HOW).map(KeySource::Secret)
        }
    }
}

/// `api_url` checked: https, or http to a loopback host only; no query,
/// fragment or user info. Returned without a trailing `/`.
fn api_url(raw: &str) -> Result<String, String> {
    let url = raw.trim_end_matches('/');
    let bad = || {
        format!(
            "`api_url` {raw:?} is not an API URL (like {DEFAULT_API_URL:?}, or \
             \"https://github.example.com/api/v3\" for GitHub Enterprise Server)"
        )
    };
    super::http::endpoint_url(url).map_err(|e| match e {
        BadUrl::Malformed => bad(),
        BadUrl::ClearText => format!(
            "`api_url` {raw:?} is http:// to a host that is not loopback: the App's JWT and \
             the token would cross the network in clear; use https:// (http:// is only for \
             127.0.0.1, ::1 and localhost)"
        ),
    })
}

async fn read_key_file(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, String> {
    super::read_secret_file(path, MAX_KEY_FILE).await
}

/// The claims of a JWT signed at `now` on our clock, GitHub's clock being
/// `skew` seconds ahead.
fn claims(iss: &str, now: SystemTime, skew: i64) -> Claims {
    let iat = unix(now) + skew - IAT_BACKDATE_SECS;
    Claims {
        iat,
        exp: iat + JWT_LIFETIME_SECS,
        iss: iss.to_owned(),
    }
}

/// GitHub's `message`, clipped; empty when the body is not GitHub's JSON.
fn github_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Error {
        message: Option<String>,
    }
    serde_json::from_slice::<Error>(body)
        .ok()
        .and_then(|e| e.message)
        .map(|m| text::clip(&m))
        .unwrap_or_default()
}

/// A 401 for the JWT's `iat` or `exp` (the messages octokit matches:
/// "'Issued at' claim ('iat') must be …", "'Expiration time' claim ('exp')
/// is too far in the future", …).
fn is_skew_refusal(status: StatusCode, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    status == StatusCode::UNAUTHORIZED
        && (m.contains("'issued at'")
            || m.contains("'expiration time'")
            || (m.contains("claim") && (m.contains("'iat'") || m.contains("'exp'"))))
}

/// How many seconds the clock of the answer's `Date` is ahead of ours at
/// `received`.
fn server_offset(headers: &HeaderMap, received: SystemTime) -> Option<i64> {
    let date = headers.get(DATE)?.to_str().ok()?;
    Some(unix(text::http_date(date)?) - unix(received))
}

/// How long a rate-limited answer says to wait; `None` when it is not one.
fn rate_limit_wait(
    status: StatusCode,
    headers: &HeaderMap,
    message: &str,
    now: SystemTime,
    skew: i64,
) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let after = text::retry_after(headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()));
    let exhausted = header("x-ratelimit-remaining").map(str::trim) == Some("0");
    let reset = header("x-ratelimit-reset")
        .filter(|_| exhausted)
        .and_then(|r| r.trim().parse::<i64>().ok())
        .map(|reset| {
            // GitHub's clock: ours is `skew` behind.
            let at = shift(UNIX_EPOCH, reset - skew);
            at.duration_since(now)
                .unwrap_or_default()
                .max(Duration::from_secs(1))
        });
    let secondary = message
        .to_ascii_lowercase()
        .contains("secondary rate limit")
        || status == StatusCode::TOO_MANY_REQUESTS;
    match (after, reset) {
        (None, None) if secondary => Some(SECONDARY_LIMIT_WAIT),
        (None, None) => None,
        (a, r) => a.max(r),
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

/// `t` moved by `secs` seconds.
fn shift(t: SystemTime, secs: i64) -> SystemTime {
    let by = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        t.checked_add(by).unwrap_or(t)
    } else {
        t.checked_sub(by).unwrap_or(t)
    }
}

fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine as _;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    fn build(s: &str) -> Result<GitHubApp, String> {
        GitHubApp::from_settings(table(s))
    }

    const BASE: &str = "app_id = 123456\ninstallation_id = 7890123\n";

    #[test]
    fn settings_are_read() {
        let app = build(&format!("{BASE}private_key = {{ secret = \"gh-app\" }}\n")).unwrap();
        assert_eq!(app.iss, "123456");
        assert_eq!(app.installation_id, 7890123);
        assert_eq!(app.api_url, DEFAULT_API_URL);
        assert_eq!(app.key, KeySource::Secret("gh-app".into()));
        assert_eq!(
            app.token_url(),
            "https://api.github.com/app/installations/7890123/access_tokens"
        );
        let app = build(
            "app_id = \"Iv23liAbCdEf\"\ninstallation_id = 1\n\
             private_key_file = \"/etc/regent/app.pem\"\n\
             api_url = \"https://github.example.com/api/v3/\"\n",
        )
        .unwrap();
        assert_eq!(app.iss, "Iv23liAbCdEf");
        assert_eq!(app.key, KeySource::File("/etc/regent/app.pem".into()));
        assert_eq!(
            app.token_url(),
            "https://github.example.com/api/v3/app/installations/1/access_tokens"
        );
        for loopback in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://[::1]:9/api",
            "http://localhost:1",
            "http://LOCALHOST",
        ] {
            let app = build(&format!(
                "{BASE}private_key_file = \"/k.pem\"\napi_url = \"{loopback}\"\n"
            ));
            assert!(app.is_ok(), "{loopback}: {:?}", app.err());
        }
    }

    #[test]
    fn settings_are_refused_with_the_way_out() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEhunter2\n-----END RSA PRIVATE KEY-----";
        let refused = |s: &str| build(s).err().unwrap_or_else(|| panic!("accepted: {s}"));
        let both = refused(&format!(
            "{BASE}private_key = {{ secret = \"a\" }}\nprivate_key_file = \"/k.pem\"\n"
        ));
        assert!(both.contains("not both"), "{both}");
        let none = refused(BASE);
        assert!(
            none.contains("regent secret set") && none.contains("private_key_file"),
            "{none}"
        );
        let inline = refused(&format!("{BASE}private_key = \"\"\"{pem}\"\"\"\n"));
        assert!(inline.contains("regent secret set"), "{inline}");
        assert!(
            !inline.contains("hunter2") && !inline.contains("BEGIN"),
            "{inline}"
        );
        let other = refused(&format!(
            "{BASE}private_key = {{ secret = \"a\", b = 1 }}\n"
        ));
        assert!(other.contains("{ secret = \"NAME\" }"), "{other}");
        let name = refused(&format!("{BASE}private_key = {{ secret = \"a b\" }}\n"));
        assert!(name.contains("not a valid secret name"), "{name}");
        let relative = refused(&format!("{BASE}private_key_file = \"app.pem\"\n"));
        assert!(relative.contains("absolute"), "{relative}");
        for http in [
            "http://api.github.com",
            "http://10.0.0.1:8080",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "http://[::ffff:8.8.8.8]",
        ] {
            let e = refused(&format!(
                "{BASE}private_key_file = \"/k.pem\"\napi_url = \"{http}\"\n"
            ));
            assert!(
                e.contains("https://") && e.contains("loopback"),
                "{http}: {e}"
            );
        }
        for bad in [
            "ftp://api.github.com",
            "api.github.com",
            "https://user:pw@api.github.com",
            "https://api.github.com/?x=1",
            "https://api.github.com/#x",
            "",
        ] {
            let e = refused(&format!(
                "{BASE}private_key_file = \"/k.pem\"\napi_url = \"{bad}\"\n"
            ));
            assert!(e.contains("is not an API URL"), "{bad}: {e}");
        }
        let unknown = refused(&format!(
            "{BASE}private_key_file = \"/k.pem\"\napi_uri = \"x\"\n"
        ));
        assert!(unknown.contains("api_uri"), "{unknown}");
        for id in ["0", "-1", "\"\"", "\"has space\"", "1.5"] {
            let e = refused(&format!(
                "app_id = {id}\ninstallation_id = 1\nprivate_key_file = \"/k.pem\"\n"
            ));
            assert!(e.contains("`app_id`"), "{id}: {e}");
        }
        let e = refused("app_id = 1\ninstallation_id = 0\nprivate_key_file = \"/k.pem\"\n");
        assert!(e.contains("`installation_id`"), "{e}");
        let e = refused("app_id = 1\nprivate_key_file = \"/k.pem\"\n");
        assert!(e.contains("installation_id"), "{e}");
    }

    #[test]
    fn cache_key_names_the_app_not_the_key() {
        let key = |s: &str| {
            let req = SourceRequest {
                key: regent_shared::registry::canonical("ghcr.io").unwrap(),
                server_url: "ghcr.io".into(),
                env: Default::default(),
            };
            build(s).unwrap().cache_key(&req)
        };
        let a = key(&format!("{BASE}private_key = {{ secret = \"gh-app\" }}\n"));
        assert!(a.starts_with("app=123456:installation=7890123:"), "{a}");
        assert_eq!(
            a,
            key(&format!("{BASE}private_key = {{ secret = \"gh-app\" }}\n"))
        );
        for other in [
            format!("{BASE}private_key = {{ secret = \"gh-app2\" }}\n"),
            format!("{BASE}private_key_file = \"/gh-app\"\n"),
            format!(
                "{BASE}private_key = {{ secret = \"gh-app\" }}\napi_url = \"http://127.0.0.1:1\"\n"
            ),
            "app_id = 123457\ninstallation_id = 7890123\nprivate_key = { secret = \"gh-app\" }\n"
                .to_owned(),
            "app_id = 123456\ninstallation_id = 7890124\nprivate_key = { secret = \"gh-app\" }\n"
                .to_owned(),
        ] {
            assert_ne!(a, key(&other), "{other}");
        }
    }

    /// An RSA key made now: its PKCS#8 PEM and its public key (`RSAPublicKey` DER).
    fn test_key() -> (String, Vec<u8>) {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = pair.as_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        (pem, pair.public_key().as_ref().to_vec())
    }

    /// The header and claims of `jwt` once its RS256 signature checks out.
    fn verify(jwt: &str, public: &[u8]) -> (serde_json::Value, serde_json::Value) {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (signed, signature) = jwt.rsplit_once('.').unwrap();
        let (header, claims) = signed.split_once('.').unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            public,
        )
        .verify(signed.as_bytes(), &b64.decode(signature).unwrap())
        .expect("an RS256 signature by the App's key");
        let json = |part: &str| serde_json::from_slice(&b64.decode(part).unwrap()).unwrap();
        (json(header), json(claims))
    }

    #[test]
    fn the_jwt_is_rs256_with_integer_times_and_the_app_as_issuer() {
        let (pem, public) = test_key();
        let app = build(&format!("{BASE}private_key_file = \"/k.pem\"\n")).unwrap();
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let now = UNIX_EPOCH + Duration::from_millis(1_800_000_000_750);
        let jwt = app.jwt(&key, now, 0).unwrap();
        let (header, claims) = verify(&jwt, &public);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(claims["iss"], "123456");
        assert!(claims["iat"].is_i64() && claims["exp"].is_i64(), "{claims}");
        let (iat, exp) = (
            claims["iat"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert_eq!(iat, 1_800_000_000 - 60);
        assert_eq!(exp, iat + 9 * 60);
        assert!(exp - iat <= 600);
        // With GitHub's clock 20 minutes ahead, its time is signed.
        let jwt = app.jwt(&key, now, 1200).unwrap();
        let (_, claims) = verify(&jwt, &public);
        assert_eq!(claims["iat"], 1_800_000_000 + 1200 - 60);
        // A client ID is the issuer as it is.
        let app = build(
            "app_id = \"Iv1.8a61f9b3a7ab\"\ninstallation_id = 1\nprivate_key_file = \"/k\"\n",
        )
        .unwrap();
        let (_, claims) = verify(&app.jwt(&key, now, 0).unwrap(), &public);
        assert_eq!(claims["iss"], "Iv1.8a61f9b3a7ab");
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn reply(status: u16, pairs: &[(&'static str, &str)], message: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: headers(pairs),
            body: Zeroizing::new(
                serde_json::json!({ "message": message, "documentation_url": "https://docs" })
                    .to_string()
                    .into_bytes(),
            ),
        }
    }

    #[test]
    fn errors_are_classified_from_status_and_headers() {
        let app = build(&format!("{BASE}private_key = {{ secret = \"gh-app\" }}\n")).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let classify = |r: Reply| {
            let message = github_message(&r.body);
            let e = app.refusal(&r, &message, now, 0);
            assert!(e.message.contains("GitHub App 123456"), "{}", e.message);
            e
        };
        let e = classify(reply(401, &[], "A JSON web token could not be decoded"));
        assert!(e.is_permanent());
        assert!(
            e.message.contains("`app_id`") && e.message.contains("gh-app"),
            "{}",
            e.message
        );
        // A refusal of the times that outlived the correction.
        let e = classify(reply(
            401,
            &[],
            "'Issued at' claim ('iat') must be an Integer",
        ));
        assert!(
            !e.is_permanent() && e.message.contains("clock"),
            "{}",
            e.message
        );
        let e = classify(reply(404, &[], "Not Found"));
        assert!(e.is_permanent());
        assert!(
            e.message.contains("installation 7890123 of App 123456"),
            "{}",
            e.message
        );
        let e = classify(reply(403, &[], "Resource not accessible by integration"));
        assert!(
            e.is_permanent() && e.message.contains("permissions"),
            "{}",
            e.message
        );
        let e = classify(reply(422, &[], "no packages permission"));
        assert!(e.is_permanent(), "{}", e.message);

        // Primary limit: until the reset, on GitHub's clock.
        let reset = "1800000042";
        for status in [403, 429] {
            let e = classify(reply(
                status,
                &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", reset)],
                "API rate limit exceeded",
            ));
            assert!(!e.is_permanent());
            assert_eq!(e.retry_after, Some(Duration::from_secs(42)), "{status}");
        }
        let r = reply(
            403,
            &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", reset)],
            "API rate limit exceeded",
        );
        let e = app.refusal(&r, "", now, 30);
        assert_eq!(e.retry_after, Some(Duration::from_secs(12)));
        // Remaining but not zero: not a primary limit, a permission error.
        let e = classify(reply(
            403,
            &[
                ("x-ratelimit-remaining", "12"),
                ("x-ratelimit-reset", reset),
            ],
            "Forbidden",
        ));
        assert!(e.is_permanent());
        // Retry-After.
        let e = classify(reply(
            403,
            &[("retry-after", "30")],
            "You have exceeded a secondary rate limit",
        ));
        assert!(!e.is_permanent());
        assert_eq!(e.retry_after, Some(Duration::from_secs(30)));
        // Secondary limit without a header: a minute; a bare 429 too.
        let e = classify(reply(
            403,
            &[],
            "You have exceeded a secondary rate limit. Please wait",
        ));
        assert_eq!(e.retry_after, Some(SECONDARY_LIMIT_WAIT));
        assert!(!e.is_permanent());
        let e = classify(reply(429, &[], ""));
        assert_eq!(e.retry_after, Some(SECONDARY_LIMIT_WAIT));
        // 5xx.
        let e = classify(reply(502, &[], "Server Error"));
        assert!(!e.is_permanent() && e.retry_after.is_none());
        // A foreign message is one clipped line.
        let long = format!("line one\nline two {}", "x".repeat(1000));
        let e = classify(reply(403, &[], &long));
        assert!(!e.message.contains('\n'));
        assert!(e.message.len() < 1000, "{}", e.message);
        // Not GitHub's JSON: not quoted.
        let html = Reply {
            status: StatusCode::FORBIDDEN,
            headers: HeaderMap::new(),
            body: Zeroizing::new(b"<html>proxy says no</html>".to_vec()),
        };
        let e = classify(html);
        assert!(
            e.message.contains("HTTP 403") && !e.message.contains("proxy"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_token_answer_is_read_and_moved_to_our_clock() {
        let app = build(&format!("{BASE}private_key = {{ secret = \"gh-app\" }}\n")).unwrap();
        let ok = |body: &str| Reply {
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Zeroizing::new(body.as_bytes().to_vec()),
        };
        let body = r#"{"token":"ghs_hunter2","expires_at":"2027-01-01T01:00:00Z","permissions":{"packages":"read"}}"#;
        let t = app.token(&ok(body), 0).unwrap();
        assert_eq!(t.username, "x-access-token");
        assert_eq!(t.secret.expose(), "ghs_hunter2");
        let at = parse_rfc3339("2027-01-01T01:00:00Z").unwrap();
        assert_eq!(t.expires_at, Some(at));
        // GitHub 20 minutes ahead: its 01:00 is our 00:40.
        let t = app.token(&ok(body), 1200).unwrap();
        assert_eq!(t.expires_at, Some(at - Duration::from_secs(1200)));
        for bad in [
            r#"{"expires_at":"2027-01-01T01:00:00Z"}"#,
            r#"{"token":"ghs_hunter2"}"#,
            r#"{"token":"","expires_at":"2027-01-01T01:00:00Z"}"#,
            r#"{"token":"ghs_hunter2","expires_at":"tomorrow"}"#,
            "ghs_hunter2",
        ] {
            let e = app.token(&ok(bad), 0).err().unwrap();
            assert!(e.is_permanent(), "{bad}");
            assert!(!e.message.contains("hunter2"), "{}", e.message);
        }
    }

    #[test]
    fn skew_is_read_from_the_refusal() {
        for message in [
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
            "'Expiration time' claim ('exp') is too far in the future",
        ] {
            assert!(
                is_skew_refusal(StatusCode::UNAUTHORIZED, message),
                "{message}"
            );
            assert!(
                !is_skew_refusal(StatusCode::FORBIDDEN, message),
                "{message}"
            );
        }
        assert!(!is_skew_refusal(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded"
        ));
        assert!(!is_skew_refusal(
            StatusCode::UNAUTHORIZED,
            "Bad credentials"
        ));

        let received = text::http_date("Wed, 02 Dec 2026 16:00:00 GMT").unwrap();
        assert_eq!(
            unix(received),
            unix(parse_rfc3339("2026-12-02T16:00:00Z").unwrap())
        );
        let ahead = headers(&[("date", "Wed, 02 Dec 2026 16:20:00 GMT")]);
        assert_eq!(server_offset(&ahead, received), Some(1200));
        let behind = headers(&[("date", "Wed, 02 Dec 2026 15:59:15 GMT")]);
        assert_eq!(
            server_offset(&behind, received + Duration::from_millis(400)),
            Some(-45)
        );
        assert_eq!(server_offset(&HeaderMap::new(), received), None);
        let garbage = headers(&[("date", "yesterday")]);
        assert_eq!(server_offset(&garbage, received), None);
        // Claims signed with the offset are within GitHub's window on its clock.
        let github_now = unix(received) + 1200;
        let c = claims("1", received, 1200);
        assert!(c.iat <= github_now && c.exp > github_now && c.exp - c.iat <= 600);
    }
}
