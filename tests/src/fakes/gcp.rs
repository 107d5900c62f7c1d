//! A loopback fake of Google's OAuth2 token endpoint and of the metadata
//! server's token path, on the HTTP fake of [`super::http`], checking what
//! Google checks before it hands out an access token:
//!
//! - `POST /token` (a service account key's `token_uri`, and an
//!   `authorized_user` file's): `Content-Type:
//!   application/x-www-form-urlencoded`; for
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, an
//!   `assertion` signed RS256 by the service account's key (checked with
//!   `openssl dgst` against its public half), `kid` the key's id, `iss` the
//!   account's email, `aud` the token URI, a `scope`, integer `iat` and
//!   `exp` at most an hour apart and around now; for
//!   `grant_type=refresh_token`, the user's `client_id`, `client_secret` and
//!   `refresh_token`. Refusals carry Google's `error` and
//!   `error_description`.
//! - `GET /computeMetadata/v1/instance/service-accounts/default/token`:
//!   the `Metadata-Flavor: Google` request header (403 without it, as the
//!   real server answers); every answer of the metadata path carries
//!   `Metadata-Flavor: Google`.
//!
//! Replies past the checks are scripted per call ([`Reply`]) with
//! [`Script`]; every call to either path is counted and logged ([`Call`]).
//! Keys are made at test time by `openssl` ([`AppKey::generate`], then
//! PKCS#8 as Google writes them); none is ever committed.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::github::{AppKey, decode_rs256};
use super::http::{HttpFake, Request, Response};
use super::script::Script;

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const METADATA_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Google's refusal of a JWT's times.
pub const TIMEFRAME_MESSAGE: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.";
pub const REVOKED_MESSAGE: &str = "Token has been expired or revoked.";

/// What a call that passes the checks gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 200 with a token `ya29.<prefix>_<n>` that lives the lifetime.
    Token,
    /// 400 `invalid_grant` (a key deleted, a login revoked).
    Revoked,
    /// 429 with `Retry-After` of this many seconds.
    Throttled(u64),
    /// 503.
    ServerError,
}

/// Which way a call asked for a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    ServiceAccount,
    RefreshToken,
    Metadata,
    /// Anything the fake refused before telling.
    Unknown,
}

/// One call to a token path, as the fake judged it.
#[derive(Clone, Debug)]
pub struct Call {
    pub n: usize,
    pub grant: Grant,
    pub status: u16,
    /// Google's `error_description` (or the text) when it was refused.
    pub message: Option<String>,
    /// The assertion's header and claims, when it verified.
    pub jwt: Option<(serde_json::Value, serde_json::Value)>,
}

struct Shared {
    key: AppKey,
    key_id: String,
    email: String,
    client_id: String,
    client_secret: String,
    refresh_token: String,
    prefix: String,
    /// `http://127.0.0.1:PORT/token`, once the port is known.
    token_uri: Mutex<String>,
    lifetime: Mutex<Duration>,
    calls: Mutex<Vec<Call>>,
    script: Script<Reply>,
}

pub struct FakeGoogle {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    http: HttpFake,
}

impl FakeGoogle {
    /// Starts on 127.0.0.1 with a free port: one service account with
    /// `key`, one user login; tokens live `lifetime`.
    pub fn start(key: AppKey, lifetime: Duration) -> FakeGoogle {
        let tag = crate::random_secret(8)
            .to_ascii_lowercase()
            .replace(['-', '_'], "x");
        let shared = Arc::new(Shared {
            key,
            key_id: crate::random_secret(40),
            email: format!("pusher-{tag}@regent-test.iam.gserviceaccount.com"),
            client_id: format!("{tag}.apps.googleusercontent.com"),
            client_secret: crate::random_secret(24),
            refresh_token: format!("1//{}", crate::random_secret(40)),
            prefix: format!("fake{}", crate::random_secret(12)),
            token_uri: Mutex::new(String::new()),
            lifetime: Mutex::new(lifetime),
            calls: Mutex::new(Vec::new()),
            script: Script::new(Reply::Token),
        });
        let s = shared.clone();
        let http = HttpFake::start(move |req| answer(req, &s));
        *shared.token_uri.lock().expect("fake Google") = format!("{}/token", http.url());
        FakeGoogle {
            addr: http.addr,
            shared,
            http,
        }
    }

    /// A fresh key made by openssl; `Err` says why it could not be.
    pub fn key() -> Result<AppKey, String> {
        AppKey::generate()
    }

    pub fn token_uri(&self) -> String {
        self.shared.token_uri.lock().expect("fake Google").clone()
    }

    /// `127.0.0.1:PORT`, for `GCE_METADATA_HOST`.
    pub fn metadata_host(&self) -> String {
        self.addr.to_string()
    }

    pub fn email(&self) -> &str {
        &self.shared.email
    }

    pub fn key_id(&self) -> &str {
        &self.shared.key_id
    }

    pub fn app_key(&self) -> &AppKey {
        &self.shared.key
    }

    /// What must never reach a log: the user's secrets.
    pub fn user_secrets(&self) -> [&str; 2] {
        [&self.shared.client_secret, &self.shared.refresh_token]
    }

    /// The service account's key file (`type: service_account`, the key in
    /// PKCS#8, `token_uri` this fake) written to `dir/name`.
    pub fn write_key_file(&self, dir: &Path, name: &str) -> PathBuf {
        let pem = self.shared.key.pkcs8_pem().expect("a PKCS#8 key");
        self.write(
            dir,
            name,
            serde_json::json!({
                "type": "service_account",
                "project_id": "regent-test",
                "private_key_id": self.shared.key_id,
                "private_key": pem,
                "client_email": self.shared.email,
                "client_id": "100000000000000000001",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": self.token_uri(),
                "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                "universe_domain": "googleapis.com",
            }),
        )
    }

    /// The user's login as `gcloud auth application-default login` writes
    /// it (`type: authorized_user`), `token_uri` this fake, at `dir/name`.
    pub fn write_user_file(&self, dir: &Path, name: &str) -> PathBuf {
        self.write(
            dir,
            name,
            serde_json::json!({
                "type": "authorized_user",
                "client_id": self.shared.client_id,
                "client_secret": self.shared.client_secret,
                "refresh_token": self.shared.refresh_token,
                "token_uri": self.token_uri(),
                "universe_domain": "googleapis.com",
            }),
        )
    }

    fn write(&self, dir: &Path, name: &str, json: serde_json::Value) -> PathBuf {
        fs::create_dir_all(dir).expect("a directory for the credentials");
        let path = dir.join(name);
        fs::write(&path, json.to_string()).expect("write the credentials");
        path
    }

    /// The replies of the next calls that pass the checks, then `then`.
    pub fn script(&self, replies: &[Reply], then: Reply) {
        self.shared.script.set(replies, then);
    }

    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.shared.lifetime.lock().expect("fake Google") = lifetime;
    }

    /// How many calls came to a token path (refused ones included).
    pub fn calls(&self) -> usize {
        self.shared.script.calls()
    }

    pub fn log(&self) -> Vec<Call> {
        self.shared.calls.lock().expect("fake Google").clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.http.requests()
    }

    /// The token call `n` hands out.
    pub fn token(&self, n: usize) -> String {
        format!("ya29.{}_{n}", self.shared.prefix)
    }

    pub fn kill(&mut self) {
        self.shared.script.kill();
        self.http.kill();
    }
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.kill();
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    Response::new(
        status,
        "application/json; charset=utf-8",
        serde_json::json!({ "error": error, "error_description": description }).to_string(),
    )
}

/// The reply to one request; `None` (the connection is closed) once the
/// fake is killed.
fn answer(req: &Request, s: &Shared) -> Option<Response> {
    if s.script.is_dead() {
        return None;
    }
    let path = req.path.split('?').next().unwrap_or_default();
    let metadata = path == METADATA_PATH;
    if !(metadata && req.method == "GET" || path == "/token" && req.method == "POST") {
        return Some(Response::new(404, "text/html", "Not Found"));
    }
    let n = s.script.arrive()?;
    let mut call = Call {
        n,
        grant: Grant::Unknown,
        status: 0,
        message: None,
        jwt: None,
    };
    let checked = if metadata {
        call.grant = Grant::Metadata;
        check_metadata(req)
    } else {
        check_token_request(req, s, &mut call)
    };
    s.script.pass(n)?;
    let reply = checked.map(|()| s.script.take());
    let lifetime = s.lifetime.lock().expect("fake Google").as_secs();
    let response = match reply {
        Err(refusal) => refusal,
        Ok(Reply::Token) => Response::new(
            200,
            "application/json; charset=utf-8",
            serde_json::json!({
                "access_token": format!("ya29.{}_{n}", s.prefix),
                "expires_in": lifetime,
                "token_type": "Bearer",
            })
            .to_string(),
        ),
        Ok(Reply::Revoked) => oauth_error(400, "invalid_grant", REVOKED_MESSAGE),
        Ok(Reply::Throttled(after)) => oauth_error(429, "rate_limit_exceeded", "Slow down.")
            .with_header("Retry-After", &after.to_string()),
        Ok(Reply::ServerError) => Response::new(503, "text/html", "Service Unavailable"),
    };
    call.status = response.status;
    if response.status != 200 {
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        call.message = Some(
            body["error_description"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&response.body).into_owned()),
        );
    }
    s.calls.lock().expect("fake Google").push(call);
    Some(if metadata {
        response.with_header("Metadata-Flavor", "Google")
    } else {
        response
    })
}

fn check_metadata(req: &Request) -> Result<(), Response> {
    if req.header("metadata-flavor") != Some("Google") {
        return Err(Response::new(
            403,
            "text/html",
            "Missing required header \"Metadata-Flavor\": \"Google\"",
        ));
    }
    if req.header("x-forwarded-for").is_some() {
        return Err(Response::new(403, "text/html", "Request forbidden"));
    }
    Ok(())
}

/// Google's checks of a token request, before any scripted reply.
fn check_token_request(req: &Request, s: &Shared, call: &mut Call) -> Result<(), Response> {
    let content_type = req.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(oauth_error(
            400,
            "invalid_request",
            "Invalid Content-Type (expected application/x-www-form-urlencoded)",
        ));
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    match field("grant_type") {
        JWT_BEARER => {
            call.grant = Grant::ServiceAccount;
            let Some((header, claims)) = decode_rs256(field("assertion"), &s.key) else {
                return Err(oauth_error(400, "invalid_grant", "Invalid JWT Signature."));
            };
            call.jwt = Some((header.clone(), claims.clone()));
            if header["kid"].as_str() != Some(s.key_id.as_str()) {
                return Err(oauth_error(400, "invalid_grant", "Invalid JWT Signature."));
            }
            if claims["iss"].as_str() != Some(s.email.as_str()) {
                return Err(oauth_error(
                    400,
                    "invalid_grant",
                    "Invalid grant: account not found",
                ));
            }
            let token_uri = s.token_uri.lock().expect("fake Google").clone();
            if claims["aud"].as_str() != Some(token_uri.as_str()) {
                return Err(oauth_error(
                    400,
                    "invalid_grant",
                    "Invalid JWT: Failed audience check.",
                ));
            }
            let scope = claims["scope"].as_str().unwrap_or_default();
            if scope.split(' ').all(|s| s != SCOPE) {
                return Err(oauth_error(
                    400,
                    "invalid_scope",
                    "Invalid OAuth scope or ID token audience provided.",
                ));
            }
            let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
                return Err(oauth_error(400, "invalid_grant", TIMEFRAME_MESSAGE));
            };
            let now = now();
            if exp - iat > 3600 || iat > now + 60 || exp <= now {
                return Err(oauth_error(400, "invalid_grant", TIMEFRAME_MESSAGE));
            }
            Ok(())
        }
        "refresh_token" => {
            call.grant = Grant::RefreshToken;
            if field("client_id") != s.client_id || field("client_secret") != s.client_secret {
                return Err(oauth_error(
                    401,
                    "invalid_client",
                    "The OAuth client was not found.",
                ));
            }
            if field("refresh_token") != s.refresh_token {
                return Err(oauth_error(400, "invalid_grant", "Bad Request"));
            }
            Ok(())
        }
        other => Err(oauth_error(
            400,
            "unsupported_grant_type",
            &format!("Invalid grant_type: {other}"),
        )),
    }
}
