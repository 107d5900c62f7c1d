//! Proving a username and password to a registry before they are stored,
//! the way `docker login` does it.
//!
//! 1. `GET <base>/v2/` without credentials. 200: the registry asks for
//!    none. 401 with `WWW-Authenticate`: its challenge. Anything else: not a
//!    registry (404, an HTML page), rate limited (429), or failing (5xx).
//! 2. `Basic`: `GET <base>/v2/` again with the credentials; 200 is proof.
//! 3. `Bearer realm=…,service=…[,scope=…]`: the token server at `realm` is
//!    asked first with OAuth2 (`POST`, form `grant_type=password`,
//!    `client_id=regent`, `access_type=offline`, `service`, `scope`,
//!    `username`, `password`), as docker does to get an offline refresh
//!    token; a token server without it (404, 405, 400
//!    `unsupported_grant_type`) is asked with `GET ?service=…&scope=…
//!    &account=…&client_id=regent&offline_token=true` and Basic
//!    credentials. The token it gives is shown to `GET <base>/v2/`
//!    (`Authorization: Bearer`); 200 is proof. A `refresh_token` in either
//!    answer is what gets stored, as an identity token (username
//!    `<token>`), exactly as `docker login` would.
//!
//! Credentials go over `https://`, or plain `http://` to a registry the
//! user named with `http://` or a loopback host; a token server on plain
//! `http://` is asked only when it is on the registry's host or loopback.
//! Each exchange is bounded by [`REQUEST_TIMEOUT`]. Errors ([`AuthError`])
//! fall into the classes a user acts on, each with the next step; none
//! quotes a password or a token.

use std::time::Duration;

use base64::Engine as _;
use hyper::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, StatusCode};
use regent_shared::Secret;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::sources::http::{self, Body, Http, HttpError, Reply};
use crate::sources::text;

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read.
const MAX_ANSWER: usize = 256 << 10;
/// What regent calls itself to token servers (docker says `docker`).
pub const CLIENT_ID: &str = "regent";
const UA: &str = concat!("regent/", env!("CARGO_PKG_VERSION"));

/// A registry's answer to an anonymous `GET /v2/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// 200: no credentials asked for.
    Open,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// A credential to show a registry.
pub enum Credential<'a> {
    Password {
        username: &'a str,
        password: &'a Secret,
    },
    /// An OAuth2 refresh token (stored as `<token>`).
    IdentityToken(&'a Secret),
}

/// The credentials that reached a registry, for the requests after.
struct Session {
    how: How,
    authorization: Option<Zeroizing<String>>,
    refresh_token: Option<Secret>,
}

impl Session {
    fn auth(&self) -> Option<&str> {
        self.authorization.as_deref().map(String::as_str)
    }
}

/// What [`Registry::verify`] found.
pub struct Verified {
    pub how: How,
    /// `None`: no repository was asked about.
    pub pull: Option<Grant>,
    pub push: Option<Grant>,
}

/// Whether an action on a repository is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Granted,
    Denied,
    /// The registry took the credentials and has no such repository.
    NoSuchRepository,
}

impl Grant {
    pub fn name(self) -> &'static str {
        match self {
            Grant::Granted => "granted",
            Grant::Denied => "denied",
            Grant::NoSuchRepository => "no-such-repository",
        }
    }
}

/// How the credentials were proven, and what to store.
pub struct Proof {
    pub how: How,
    /// The token server's offline refresh token: stored instead of the
    /// password, as `<token>`.
    pub identity_token: Option<Secret>,
}

/// How the credentials were checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// The registry asked for none (stored unchecked).
    Open,
    Basic,
    /// The token server's OAuth2 password grant.
    BearerOAuth,
    /// The token server's GET endpoint with Basic credentials.
    BearerGet,
    /// The token server, with a stored identity token.
    BearerRefresh,
}

impl How {
    pub fn describe(self) -> &'static str {
        match self {
            How::Open => "the registry asks for no credentials: stored unchecked",
            How::Basic => "basic auth",
            How::BearerOAuth => "token server, OAuth2 password grant",
            How::BearerGet => "token server, GET with basic auth",
            How::BearerRefresh => "token server, the stored identity token",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            How::Open => "open",
            How::Basic => "basic",
            How::BearerOAuth => "bearer-oauth",
            How::BearerGet => "bearer-get",
            How::BearerRefresh => "bearer-refresh",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "{registry}: {by} refused the username or password (HTTP {status}); check them (a \
         token needs at least read access), nothing was stored"
    )]
    WrongCredentials {
        registry: String,
        by: String,
        status: u16,
    },
    #[error(
        "{url} is not a registry: `GET /v2/` answered {said}; check the name (an image's \
         registry is what comes before its first `/`, and Docker Hub is docker.io)"
    )]
    NotARegistry { url: String, said: String },
    #[error(
        "{url}: TLS failed: {detail}; for a registry with a private CA, give its certificate \
         with --ca-file FILE (or SSL_CERT_FILE), or use http:// for a registry that speaks \
         plain HTTP"
    )]
    Tls { url: String, detail: String },
    #[error("{url}: cannot reach it: {detail}; check the name, DNS, the port and any proxy")]
    Unreachable { url: String, detail: String },
    #[error("{url}: rate limited (HTTP 429){}; nothing was stored", match .retry_after {
        Some(d) => format!(", try again in {}s", d.as_secs()),
        None => ", try again later".to_owned(),
    })]
    RateLimited {
        url: String,
        retry_after: Option<Duration>,
    },
    #[error(
        "{url}: the token server is on plain http:// and not on the registry's host: the \
         password would cross the network in clear; nothing was sent"
    )]
    InsecureRealm { url: String },
    #[error("{url}: {said}")]
    Failed { url: String, said: String },
}

impl AuthError {
    /// A short name of the class, for `--json`.
    pub fn class(&self) -> &'static str {
        match self {
            AuthError::WrongCredentials { .. } => "wrong-credentials",
            AuthError::NotARegistry { .. } => "not-a-registry",
            AuthError::Tls { .. } => "tls",
            AuthError::Unreachable { .. } => "unreachable",
            AuthError::RateLimited { .. } => "rate-limited",
            AuthError::InsecureRealm { .. } => "insecure",
            AuthError::Failed { .. } => "failed",
        }
    }
}

/// A token server's answer (distribution's and OAuth2's field names).
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default, deserialize_with = "secret_field")]
    token: Option<Secret>,
    #[serde(default, deserialize_with = "secret_field")]
    access_token: Option<Secret>,
    #[serde(default, deserialize_with = "secret_field")]
    refresh_token: Option<Secret>,
}

fn secret_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.filter(|s| !s.is_empty()).map(Secret::new))
}

/// The challenge of a `WWW-Authenticate` header: `Basic realm="…"` or
/// `Bearer realm="…",service="…",scope="…"` (quoted or token values, any
/// order, scheme case-insensitive).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        match name.as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        }
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: realm?,
            service,
            scope,
        })
    } else {
        None
    }
}

/// Talks to one registry.
pub struct Registry<'a> {
    pub http: &'a Http,
    /// `https://host[:port]` or `http://…`, no trailing `/`.
    pub base: String,
    /// How errors name it (`ghcr.io`).
    pub name: String,
    /// What progress is reported to (stderr in the CLI).
    pub progress: &'a (dyn Fn(&str) + Sync),
}

impl Registry<'_> {
    fn v2(&self) -> String {
        format!("{}/v2/", self.base)
    }

    async fn send(&self, req: Request<Body>, url: &str) -> Result<Reply, AuthError> {
        self.http
            .send(req, REQUEST_TIMEOUT, MAX_ANSWER)
            .await
            .map_err(|e| transport_error(url, &e))
    }

    fn get(&self, url: &str, authorization: Option<&str>) -> Result<Request<Body>, AuthError> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(USER_AGENT, UA)
            .header(ACCEPT, "application/json");
        if let Some(auth) = authorization {
            let mut value =
                hyper::header::HeaderValue::try_from(auth).map_err(|_| AuthError::Failed {
                    url: url.to_owned(),
                    said: "the credentials cannot be sent in a header (a newline in them?)".into(),
                })?;
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
        }
        req.body(Body::default()).map_err(|e| AuthError::Failed {
            url: url.to_owned(),
            said: format!("not a URL: {}", text::clip(&e.to_string())),
        })
    }

    /// The registry's answer to an anonymous `GET /v2/`.
    pub async fn challenge(&self) -> Result<Challenge, AuthError> {
        let url = self.v2();
        (self.progress)(&format!("asking {url}"));
        let reply = self.send(self.get(&url, None)?, &url).await?;
        match reply.status.as_u16() {
            200..=299 => Ok(Challenge::Open),
            401 => reply
                .headers
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(parse_challenge)
                .ok_or_else(|| AuthError::NotARegistry {
                    url: self.base.clone(),
                    said: "401 without a Basic or Bearer challenge".into(),
                }),
            _ => Err(status_error(&self.base, &reply, true)),
        }
    }

    /// Proves `username` and `password` to the registry.
    pub async fn login(&self, username: &str, password: &Secret) -> Result<Proof, AuthError> {
        let cred = Credential::Password { username, password };
        let session = self.authenticate(&cred, None).await?;
        self.shown(&session).await?;
        Ok(Proof {
            how: session.how,
            identity_token: session.refresh_token,
        })
    }

    /// Checks a stored or sourced credential now: `/v2/`, then, for a
    /// repository, whether it may pull (`GET /v2/<repo>/tags/list`) and,
    /// with `push`, push (an upload started and cancelled at once). Nothing
    /// is changed.
    pub async fn verify(
        &self,
        cred: &Credential<'_>,
        repository: Option<&str>,
        push: bool,
    ) -> Result<Verified, AuthError> {
        let scope = repository.map(|repo| {
            let actions = if push { "pull,push" } else { "pull" };
            format!("repository:{repo}:{actions}")
        });
        let session = self.authenticate(cred, scope.as_deref()).await?;
        self.shown(&session).await?;
        let mut verified = Verified {
            how: session.how,
            pull: None,
            push: None,
        };
        if let Some(repo) = repository {
            verified.pull = Some(self.may_pull(&session, repo).await?);
            if push {
                verified.push = Some(self.may_push(&session, repo).await?);
            }
        }
        Ok(verified)
    }

    /// The `Authorization` the registry takes for `cred`, asked of the
    /// token server with `scope` when it has one.
    async fn authenticate(
        &self,
        cred: &Credential<'_>,
        scope: Option<&str>,
    ) -> Result<Session, AuthError> {
        match self.challenge().await? {
            Challenge::Open => Ok(Session {
                how: How::Open,
                authorization: None,
                refresh_token: None,
            }),
            Challenge::Basic => match cred {
                Credential::Password { username, password } => Ok(Session {
                    how: How::Basic,
                    authorization: Some(basic(username, password)),
                    refresh_token: None,
                }),
                Credential::IdentityToken(_) => Err(AuthError::Failed {
                    url: self.base.clone(),
                    said: "the stored credential is an identity token, and this registry \
                           takes only a username and password (Basic); log in again with \
                           `regent login`"
                        .into(),
                }),
            },
            Challenge::Bearer {
                realm,
                service,
                scope: challenged,
            } => {
                self.check_realm(&realm)?;
                let scope = scope.or(challenged.as_deref());
                let (how, answer) = match cred {
                    Credential::Password { username, password } => {
                        self.token(&realm, service.as_deref(), scope, username, password)
                            .await?
                    }
                    Credential::IdentityToken(token) => {
                        self.refresh(&realm, service.as_deref(), scope, token)
                            .await?
                    }
                };
                let token = answer
                    .access_token
                    .as_ref()
                    .or(answer.token.as_ref())
                    .ok_or_else(|| AuthError::Failed {
                        url: realm.clone(),
                        said: "the token server's answer has no token".into(),
                    })?;
                Ok(Session {
                    how,
                    authorization: Some(Zeroizing::new(format!("Bearer {}", token.expose()))),
                    refresh_token: answer.refresh_token,
                })
            }
        }
    }

    /// `GET /v2/` with the session's credentials: 200 is proof.
    async fn shown(&self, session: &Session) -> Result<(), AuthError> {
        if session.how == How::Open {
            return Ok(());
        }
        let url = self.v2();
        (self.progress)(&format!("showing the credentials to {url}"));
        let reply = self.send(self.get(&url, session.auth())?, &url).await?;
        let by = match session.how {
            How::Basic => "the registry",
            _ => "the registry (with the token server's token)",
        };
        self.accepted(&reply, by)
    }

    async fn may_pull(&self, session: &Session, repo: &str) -> Result<Grant, AuthError> {
        let url = format!("{}/v2/{repo}/tags/list", self.base);
        (self.progress)(&format!("asking {url}"));
        let reply = self.send(self.get(&url, session.auth())?, &url).await?;
        grant(&url, &reply)
    }

    async fn may_push(&self, session: &Session, repo: &str) -> Result<Grant, AuthError> {
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        (self.progress)(&format!("starting (and cancelling) an upload at {url}"));
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(USER_AGENT, UA)
            .header(hyper::header::CONTENT_LENGTH, "0");
        if let Some(auth) = session.auth() {
            req = req.header(AUTHORIZATION, sensitive(auth, &url)?);
        }
        let req = req.body(Body::default()).map_err(|e| AuthError::Failed {
            url: url.clone(),
            said: format!("not a URL: {}", text::clip(&e.to_string())),
        })?;
        let reply = self.send(req, &url).await?;
        let granted = grant(&url, &reply)?;
        if reply.status == StatusCode::ACCEPTED
            && let Some(location) = reply
                .headers
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
        {
            let location = if location.starts_with('/') {
                format!("{}{location}", self.base)
            } else {
                location.to_owned()
            };
            let mut cancel = Request::builder()
                .method(Method::DELETE)
                .uri(&location)
                .header(USER_AGENT, UA);
            if let Some(auth) = session.auth() {
                cancel = cancel.header(AUTHORIZATION, sensitive(auth, &url)?);
            }
            if let Ok(cancel) = cancel.body(Body::default())
                && let Err(e) = self.send(cancel, &location).await
            {
                tracing::debug!(error = %e, "cancelling the test upload failed");
            }
        }
        Ok(granted)
    }

    /// A token for an identity token (a stored OAuth2 refresh token).
    async fn refresh(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        refresh_token: &Secret,
    ) -> Result<(How, TokenAnswer), AuthError> {
        (self.progress)(&format!("asking the token server {realm} (refresh token)"));
        let mut pairs = vec![
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("refresh_token", refresh_token.expose()),
        ];
        if let Some(service) = service {
            pairs.push(("service", service));
        }
        if let Some(scope) = scope {
            pairs.push(("scope", scope));
        }
        let reply = self.post_form(realm, &pairs).await?;
        self.accepted(&reply, "the token server (the stored identity token)")?;
        Ok((How::BearerRefresh, token_answer(realm, &reply)?))
    }

    async fn post_form(&self, url: &str, pairs: &[(&str, &str)]) -> Result<Reply, AuthError> {
        let form = http::form(pairs);
        let req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(USER_AGENT, UA)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.as_bytes().to_vec()))
            .map_err(|e| AuthError::Failed {
                url: url.to_owned(),
                said: format!("not a URL: {}", text::clip(&e.to_string())),
            })?;
        drop(form);
        self.send(req, url).await
    }

    /// A token server on plain http only on the registry's host or
    /// loopback.
    fn check_realm(&self, realm: &str) -> Result<(), AuthError> {
        let uri: hyper::Uri = realm.parse().map_err(|_| AuthError::Failed {
            url: self.base.clone(),
            said: format!("the token server {:?} is not a URL", text::clip(realm)),
        })?;
        let host = uri.host().unwrap_or_default();
        let base_host = self
            .base
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_owned))
            .unwrap_or_default();
        match uri.scheme_str() {
            Some("https") => Ok(()),
            Some("http") if http::is_loopback(host) || host.eq_ignore_ascii_case(&base_host) => {
                Ok(())
            }
            _ => Err(AuthError::InsecureRealm {
                url: realm.to_owned(),
            }),
        }
    }

    /// A token from the token server: OAuth2 first, then the GET endpoint.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        username: &str,
        password: &Secret,
    ) -> Result<(How, TokenAnswer), AuthError> {
        (self.progress)(&format!("asking the token server {realm} (OAuth2)"));
        let mut pairs = vec![
            ("grant_type", "password"),
            ("client_id", CLIENT_ID),
            ("access_type", "offline"),
            ("username", username),
            ("password", password.expose()),
        ];
        if let Some(service) = service {
            pairs.push(("service", service));
        }
        if let Some(scope) = scope {
            pairs.push(("scope", scope));
        }
        let reply = self.post_form(realm, &pairs).await?;
        let unsupported = match reply.status.as_u16() {
            404 | 405 => true,
            400 => oauth_error(&reply.body).as_deref() != Some("invalid_grant"),
            _ => false,
        };
        if !unsupported {
            self.accepted(&reply, "the token server")?;
            return Ok((How::BearerOAuth, token_answer(realm, &reply)?));
        }
        (self.progress)(&format!(
            "the token server has no OAuth2 endpoint; asking {realm} with GET"
        ));
        let mut url = format!("{realm}{}", if realm.contains('?') { '&' } else { '?' });
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(service) = service {
            query.append_pair("service", service);
        }
        if let Some(scope) = scope {
            query.append_pair("scope", scope);
        }
        query
            .append_pair("account", username)
            .append_pair("client_id", CLIENT_ID)
            .append_pair("offline_token", "true");
        url.push_str(&query.finish());
        let basic = basic(username, password);
        let reply = self.send(self.get(&url, Some(&basic))?, realm).await?;
        self.accepted(&reply, "the token server")?;
        Ok((How::BearerGet, token_answer(realm, &reply)?))
    }

    /// `Ok` for a 2xx; the refusal otherwise.
    fn accepted(&self, reply: &Reply, by: &str) -> Result<(), AuthError> {
        match reply.status.as_u16() {
            200..=299 => Ok(()),
            401 | 403 => Err(AuthError::WrongCredentials {
                registry: self.name.clone(),
                by: by.to_owned(),
                status: reply.status.as_u16(),
            }),
            // `invalid_grant` from an OAuth2 token server: wrong password.
            400 if oauth_error(&reply.body).as_deref() == Some("invalid_grant") => {
                Err(AuthError::WrongCredentials {
                    registry: self.name.clone(),
                    by: by.to_owned(),
                    status: 400,
                })
            }
            _ => Err(status_error(&self.base, reply, false)),
        }
    }
}

/// An `Authorization` value, kept out of any debug output.
fn sensitive(auth: &str, url: &str) -> Result<hyper::header::HeaderValue, AuthError> {
    let mut value = hyper::header::HeaderValue::try_from(auth).map_err(|_| AuthError::Failed {
        url: url.to_owned(),
        said: "the credentials cannot be sent in a header (a newline in them?)".into(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// What an answer to a repository request says of the access.
fn grant(url: &str, reply: &Reply) -> Result<Grant, AuthError> {
    match reply.status.as_u16() {
        200..=299 => Ok(Grant::Granted),
        401 | 403 => Ok(Grant::Denied),
        404 => Ok(Grant::NoSuchRepository),
        _ => Err(status_error(url, reply, false)),
    }
}

fn basic(username: &str, password: &Secret) -> Zeroizing<String> {
    let pair = Zeroizing::new(format!("{username}:{}", password.expose()));
    Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
    ))
}

fn oauth_error(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct E {
        error: Option<String>,
    }
    serde_json::from_slice::<E>(body).ok()?.error
}

fn token_answer(realm: &str, reply: &Reply) -> Result<TokenAnswer, AuthError> {
    serde_json::from_slice(&reply.body).map_err(|_| AuthError::Failed {
        url: realm.to_owned(),
        said: format!(
            "the token server's answer ({}) is not the JSON of a token",
            reply.status
        ),
    })
}

/// The error for an answer that is neither success nor a refusal of the
/// credentials.
fn status_error(url: &str, reply: &Reply, probing: bool) -> AuthError {
    let status = reply.status;
    if status == StatusCode::TOO_MANY_REQUESTS {
        return AuthError::RateLimited {
            url: url.to_owned(),
            retry_after: text::retry_after(
                reply.headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()),
            ),
        };
    }
    let said = format!(
        "HTTP {}{}",
        status.as_u16(),
        status
            .canonical_reason()
            .map(|r| format!(" {r}"))
            .unwrap_or_default()
    );
    if status.is_server_error() {
        return AuthError::Failed {
            url: url.to_owned(),
            said: format!("the registry failed ({said}); try again later"),
        };
    }
    if probing {
        AuthError::NotARegistry {
            url: url.to_owned(),
            said,
        }
    } else {
        AuthError::Failed {
            url: url.to_owned(),
            said: format!("answered {said}"),
        }
    }
}

fn transport_error(url: &str, e: &HttpError) -> AuthError {
    let detail = e.to_string();
    let lower = detail.to_ascii_lowercase();
    let tls = [
        "certificate",
        "unknownissuer",
        "tls",
        "handshake",
        "alert",
        "corrupt message",
    ]
    .iter()
    .any(|w| lower.contains(w));
    if tls && !matches!(e, HttpError::TimedOut(_)) {
        AuthError::Tls {
            url: url.to_owned(),
            detail,
        }
    } else {
        AuthError::Unreachable {
            url: url.to_owned(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed_like_distribution() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer service="a b", realm="http://127.0.0.1:1/t?x=\"1\"""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t?x=\"1\"".into(),
                service: Some("a b".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge("Bearer realm=https://ghcr.io/token,service=ghcr.io"),
            Some(Challenge::Bearer {
                realm: "https://ghcr.io/token".into(),
                service: Some("ghcr.io".into()),
                scope: None,
            })
        );
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn errors_name_the_class_and_the_fix() {
        let e = AuthError::RateLimited {
            url: "https://r.example".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        assert!(e.to_string().contains("try again in 30s"), "{e}");
        let e = AuthError::Tls {
            url: "https://r.example".into(),
            detail: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(e.to_string().contains("--ca-file"), "{e}");
        assert_eq!(e.class(), "tls");
        let e = transport_error(
            "https://r.example",
            &HttpError::Exchange(
                "client error (Connect): invalid peer certificate: UnknownIssuer".into(),
            ),
        );
        assert_eq!(e.class(), "tls");
        let e = transport_error(
            "https://r.example",
            &HttpError::Exchange(
                "client error (Connect): Connection refused (os error 111)".into(),
            ),
        );
        assert_eq!(e.class(), "unreachable");
    }
}
