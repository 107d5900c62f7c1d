//! A loopback fake of GitHub's installation-token endpoint,
//! `POST /app/installations/{id}/access_tokens`, on the HTTP fake of
//! [`super::http`], checking what GitHub checks before it hands out a token:
//!
//! - the headers: `Accept: application/vnd.github+json`,
//!   `X-GitHub-Api-Version: 2022-11-28`, a `User-Agent`, and
//!   `Authorization: Bearer <JWT>`;
//! - the JWT: RS256, signed by the App's key (checked with `openssl dgst`
//!   against the public half of [`AppKey`]), `iss` the App's id, `iat` and
//!   `exp` integers, `exp − iat` at most 10 minutes, `iat` not in the future
//!   and `exp` in the future by the fake's own clock, which may be set off
//!   from the real one ([`FakeGitHub::set_skew`]); refusals are 401s with
//!   GitHub's messages;
//! - the installation id (404 for another one).
//!
//! Every answer carries a `Date` header of the fake's clock. Replies past the
//! checks are scripted per call ([`Reply`]), with a default for calls past
//! the script; a gate holds calls from a given number on until it is
//! opened; [`FakeGitHub::kill`] stops answering and closes the port. Every
//! request to the token path is counted and logged ([`Call`]).
//!
//! Keys are made at test time by `openssl genrsa` ([`AppKey::generate`]),
//! in the PKCS#1 PEM form GitHub hands out; none is ever committed.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::http::{HttpFake, Request, Response};
use super::script::Script;

pub const API_VERSION: &str = "2022-11-28";
pub const ACCEPT: &str = "application/vnd.github+json";

/// GitHub's refusals of a JWT's times (as octokit matches them).
pub const IAT_MESSAGE: &str = "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued.";
pub const EXP_MESSAGE: &str = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires.";
pub const EXP_TOO_FAR_MESSAGE: &str = "'Expiration time' claim ('exp') is too far in the future.";
/// GitHub's refusal of a JWT it cannot verify.
pub const UNDECODABLE_MESSAGE: &str = "A JSON web token could not be decoded";

/// An App's RSA key pair, made by `openssl genrsa` in a directory of its own.
pub struct AppKey {
    /// The private key, PEM (PKCS#1: `BEGIN RSA PRIVATE KEY`, as GitHub
    /// hands it out).
    pub private_pem: String,
    /// The private key's file (mode 0600).
    pub private_path: PathBuf,
    /// The public key's file (PEM, SubjectPublicKeyInfo).
    pub public_path: PathBuf,
    dir: tempfile::TempDir,
}

impl AppKey {
    /// A fresh 2048-bit key; `Err` says why `openssl` could not make one.
    pub fn generate() -> Result<AppKey, String> {
        let dir = tempfile::Builder::new()
            .prefix("rgt-gh-key.")
            .tempdir()
            .map_err(|e| format!("a directory for the key: {e}"))?;
        let private_path = dir.path().join("app.pem");
        let public_path = dir.path().join("app.pub.pem");
        let genrsa = |traditional: bool| {
            let mut cmd = Command::new("openssl");
            cmd.arg("genrsa");
            if traditional {
                // OpenSSL 3 writes PKCS#8 unless told; 1.1 has no flag.
                cmd.arg("-traditional");
            }
            cmd.arg("-out")
                .arg(&private_path)
                .arg("2048")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
        };
        let out = genrsa(true).map_err(|e| format!("cannot run openssl: {e}"))?;
        let out = if out.status.success() {
            out
        } else {
            genrsa(false).map_err(|e| format!("cannot run openssl: {e}"))?
        };
        if !out.status.success() {
            return Err(format!(
                "openssl genrsa failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let out = Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(&private_path)
            .arg("-out")
            .arg(&public_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl rsa -pubout failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let private_pem = fs::read_to_string(&private_path)
            .map_err(|e| format!("reading {}: {e}", private_path.display()))?;
        Ok(AppKey {
            private_pem,
            private_path,
            public_path,
            dir,
        })
    }

    /// The private key as PKCS#8 PEM (`BEGIN PRIVATE KEY`, the form of
    /// Google's service account keys).
    pub fn pkcs8_pem(&self) -> Result<String, String> {
        let out = Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
            .arg(&self.private_path)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl pkcs8 failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8(out.stdout).map_err(|_| "openssl pkcs8 printed no PEM".into())
    }

    /// Whether `signature` is this key's RS256 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        static N: AtomicUsize = AtomicUsize::new(0);
        let sig = self
            .dir
            .path()
            .join(format!("sig-{}", N.fetch_add(1, Ordering::SeqCst)));
        if fs::write(&sig, signature).is_err() {
            return false;
        }
        let child = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&self.public_path)
            .arg("-signature")
            .arg(&sig)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let ok = child.is_ok_and(|mut child| {
            let written = child
                .stdin
                .take()
                .is_some_and(|mut stdin| stdin.write_all(message).is_ok());
            child.wait().is_ok_and(|s| s.success()) && written
        });
        let _ = fs::remove_file(&sig);
        ok
    }
}

/// What a call that passes the checks gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 201 with a token `ghs_<prefix>_<n>` that expires after the lifetime.
    Token,
    /// 404 `Not Found`.
    NotFound,
    /// 401 `A JSON web token could not be decoded` (a revoked key).
    BadCredentials,
    /// 403, `x-ratelimit-remaining: 0` and `x-ratelimit-reset` this many
    /// seconds ahead (on the fake's clock).
    RateLimited(u64),
    /// 403 "secondary rate limit" with `Retry-After` of this many seconds.
    SecondaryLimit(u64),
    /// 502.
    ServerError,
}

/// One request to the token path, as the fake judged it.
#[derive(Clone, Debug)]
pub struct Call {
    pub n: usize,
    /// When it arrived (the real clock).
    pub at: SystemTime,
    pub status: u16,
    /// GitHub's message when it was refused.
    pub message: Option<String>,
    pub installation: String,
    pub user_agent: Option<String>,
    /// The JWT's claims, when it could be decoded.
    pub claims: Option<serde_json::Value>,
}

struct State {
    lifetime: Duration,
    /// Seconds the fake's clock is ahead of the real one.
    skew: i64,
    calls: Vec<Call>,
    /// The last `x-ratelimit-reset` sent (Unix seconds, the fake's clock).
    reset: Option<i64>,
}

struct Shared {
    app_id: String,
    installation: String,
    key: AppKey,
    prefix: String,
    state: Mutex<State>,
    script: Script<Reply>,
}

pub struct FakeGitHub {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    http: HttpFake,
}

impl FakeGitHub {
    /// Starts on 127.0.0.1 with a free port: App `app_id` (its id or client
    /// ID, as `iss`) with `key`, installed as `installation`; tokens live
    /// `lifetime`.
    pub fn start(app_id: &str, installation: u64, key: AppKey, lifetime: Duration) -> FakeGitHub {
        let shared = Arc::new(Shared {
            app_id: app_id.to_owned(),
            installation: installation.to_string(),
            key,
            prefix: format!("fake{}", crate::random_secret(12)),
            state: Mutex::new(State {
                lifetime,
                skew: 0,
                calls: Vec::new(),
                reset: None,
            }),
            script: Script::new(Reply::Token),
        });
        let s = shared.clone();
        let http = HttpFake::start(move |req| answer(req, &s));
        FakeGitHub {
            addr: http.addr,
            shared,
            http,
        }
    }

    /// `http://127.0.0.1:PORT`, for `api_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn key(&self) -> &AppKey {
        &self.shared.key
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("fake GitHub state")
    }

    /// The replies of the next calls that pass the checks, then `then`.
    pub fn script(&self, replies: &[Reply], then: Reply) {
        self.shared.script.set(replies, then);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.script.set_latency(latency);
    }

    /// Sets the fake's clock `secs` seconds ahead of the real one (behind
    /// when negative): its checks and its `Date` header use it.
    pub fn set_skew(&self, secs: i64) {
        self.state().skew = secs;
    }

    /// Calls number `n` (1-based) and later wait until [`FakeGitHub::open`].
    pub fn hold_from(&self, n: usize) {
        self.shared.script.hold_from(n);
    }

    pub fn open(&self) {
        self.shared.script.open();
    }

    /// How many requests came to the token path (held ones included).
    pub fn calls(&self) -> usize {
        self.shared.script.calls()
    }

    pub fn log(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Every request the fake read (headers included), in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.http.requests()
    }

    /// The last `x-ratelimit-reset` sent, as a time of the real clock.
    pub fn last_reset(&self) -> Option<SystemTime> {
        let st = self.state();
        st.reset
            .map(|r| UNIX_EPOCH + Duration::from_secs((r - st.skew).max(0) as u64))
    }

    /// The token call `n` hands out.
    pub fn token(&self, n: usize) -> String {
        format!("ghs_{}_{n}", self.shared.prefix)
    }

    /// Stops answering: held and later calls get their connection closed,
    /// and the port stops accepting.
    pub fn kill(&mut self) {
        self.shared.script.kill();
        self.http.kill();
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.kill();
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An HTTP `Date` (IMF-fixdate) for Unix seconds `secs`.
pub fn http_date(secs: i64) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn json(status: u16, now: i64, body: serde_json::Value) -> Response {
    Response::new(status, "application/json; charset=utf-8", body.to_string())
        .with_header("Date", &http_date(now))
        .with_header("X-GitHub-Media-Type", "github.v3; format=json")
}

fn error(status: u16, now: i64, message: &str) -> Response {
    json(
        status,
        now,
        serde_json::json!({
            "message": message,
            "documentation_url": "https://docs.github.com/rest",
            "status": status.to_string(),
        }),
    )
}

/// The claims of `jwt` if its header says RS256 and the App's key signed it.
fn check_jwt(jwt: &str, key: &AppKey) -> Result<serde_json::Value, &'static str> {
    decode_rs256(jwt, key)
        .map(|(_, claims)| claims)
        .ok_or(UNDECODABLE_MESSAGE)
}

/// The header and claims of `jwt` if its header says RS256 and `key`
/// signed it.
pub fn decode_rs256(jwt: &str, key: &AppKey) -> Option<(serde_json::Value, serde_json::Value)> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (signed, signature) = jwt.rsplit_once('.')?;
    let (header, claims) = signed.split_once('.')?;
    let part = |p: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&b64.decode(p).ok()?).ok()
    };
    let header = part(header)?;
    if header["alg"] != "RS256" {
        return None;
    }
    let signature = b64.decode(signature).ok()?;
    if !key.verifies(signed.as_bytes(), &signature) {
        return None;
    }
    Some((header, part(claims)?))
}

/// What GitHub says of the claims at `now` (its clock), if it refuses them.
fn check_claims(claims: &serde_json::Value, app_id: &str, now: i64) -> Result<(), &'static str> {
    if claims["iss"].as_str() != Some(app_id) {
        return Err(UNDECODABLE_MESSAGE);
    }
    // Integers only: `as_i64` is `None` for 1.5 and for "1".
    let Some(iat) = claims["iat"].as_i64() else {
        return Err(IAT_MESSAGE);
    };
    let Some(exp) = claims["exp"].as_i64() else {
        return Err(EXP_MESSAGE);
    };
    if iat > now {
        return Err(IAT_MESSAGE);
    }
    if exp <= now {
        return Err(EXP_MESSAGE);
    }
    if exp - iat > 600 || exp > now + 600 {
        return Err(EXP_TOO_FAR_MESSAGE);
    }
    Ok(())
}

/// The reply to one request, or `None` (the connection is closed) once the
/// fake is killed.
fn answer(req: &Request, s: &Shared) -> Option<Response> {
    if s.script.is_dead() {
        return None;
    }
    let arrived = SystemTime::now();
    let skew = s.state.lock().expect("fake GitHub state").skew;
    let now = unix(arrived) + skew;
    let installation = req
        .path
        .strip_prefix("/app/installations/")
        .and_then(|rest| rest.strip_suffix("/access_tokens"));
    let Some(installation) = installation.filter(|_| req.method == "POST") else {
        return Some(error(404, now, "Not Found"));
    };
    let n = s.script.arrive()?;
    let mut call = Call {
        n,
        at: arrived,
        status: 0,
        message: None,
        installation: installation.to_owned(),
        user_agent: req.header("user-agent").map(str::to_owned),
        claims: None,
    };
    let checked = check_request(req, s, now, &mut call);
    s.script.pass(n)?;
    // A refused call takes no scripted reply.
    let reply = checked.map(|()| s.script.take());
    let lifetime = s.state.lock().expect("fake GitHub state").lifetime;
    let response = match reply {
        Err((status, message)) => {
            call.message = Some(message.clone());
            error(status, now, &message)
        }
        Ok(Reply::Token) => {
            let expires = now + lifetime.as_secs() as i64;
            json(
                201,
                now,
                serde_json::json!({
                    "token": format!("ghs_{}_{n}", s.prefix),
                    "expires_at": rfc3339(expires),
                    "permissions": { "packages": "read", "metadata": "read" },
                    "repository_selection": "all",
                }),
            )
        }
        Ok(Reply::NotFound) => error(404, now, "Not Found"),
        Ok(Reply::BadCredentials) => error(401, now, UNDECODABLE_MESSAGE),
        Ok(Reply::RateLimited(after)) => {
            let reset = now + after as i64;
            s.state.lock().expect("fake GitHub state").reset = Some(reset);
            error(
                403,
                now,
                &format!("API rate limit exceeded for installation ID {}.", s.installation),
            )
            .with_header("x-ratelimit-limit", "5000")
            .with_header("x-ratelimit-remaining", "0")
            .with_header("x-ratelimit-used", "5000")
            .with_header("x-ratelimit-reset", &reset.to_string())
        }
        Ok(Reply::SecondaryLimit(after)) => error(
            403,
            now,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        )
        .with_header("Retry-After", &after.to_string()),
        Ok(Reply::ServerError) => error(502, now, "Server Error"),
    };
    call.status = response.status;
    if call.message.is_none() && response.status != 201 {
        call.message = Some(String::from_utf8_lossy(&response.body).into_owned());
    }
    s.state.lock().expect("fake GitHub state").calls.push(call);
    Some(response)
}

/// GitHub's checks of a token request, before any scripted reply.
fn check_request(
    req: &Request,
    s: &Shared,
    now: i64,
    call: &mut Call,
) -> Result<(), (u16, String)> {
    let header = |name: &str| req.header(name).unwrap_or_default();
    if header("user-agent").is_empty() {
        return Err((
            403,
            "Request forbidden by administrative rules. Please make sure your request has a \
             User-Agent header"
                .into(),
        ));
    }
    if header("accept") != ACCEPT {
        return Err((
            415,
            format!(
                "fake GitHub: Accept is {:?}, not {ACCEPT:?}",
                header("accept")
            ),
        ));
    }
    if header("x-github-api-version") != API_VERSION {
        return Err((
            400,
            format!(
                "fake GitHub: X-GitHub-Api-Version is {:?}, not {API_VERSION:?}",
                header("x-github-api-version")
            ),
        ));
    }
    let authorization = header("authorization");
    let jwt = match authorization.split_once(' ') {
        Some((scheme, jwt)) if scheme.eq_ignore_ascii_case("bearer") => jwt.trim(),
        _ => return Err((401, "Requires authentication".into())),
    };
    let claims = check_jwt(jwt, &s.key).map_err(|m| (401, m.to_owned()))?;
    call.claims = Some(claims.clone());
    check_claims(&claims, &s.app_id, now).map_err(|m| (401, m.to_owned()))?;
    if call.installation != s.installation {
        return Err((404, "Not Found".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_judged_like_github() {
        let now = 1_800_000_000;
        let c = |iat: serde_json::Value, exp: serde_json::Value| serde_json::json!({ "iat": iat, "exp": exp, "iss": "42" });
        assert_eq!(
            check_claims(&c((now - 60).into(), (now + 480).into()), "42", now),
            Ok(())
        );
        assert_eq!(
            check_claims(&c((now - 60).into(), (now + 480).into()), "43", now),
            Err(UNDECODABLE_MESSAGE)
        );
        assert_eq!(
            check_claims(&c((now + 5).into(), (now + 480).into()), "42", now),
            Err(IAT_MESSAGE)
        );
        assert_eq!(
            check_claims(
                &c(((now - 60) as f64 + 0.5).into(), (now + 480).into()),
                "42",
                now
            ),
            Err(IAT_MESSAGE)
        );
        assert_eq!(
            check_claims(&c((now - 600).into(), now.into()), "42", now),
            Err(EXP_MESSAGE)
        );
        assert_eq!(
            check_claims(&c((now - 60).into(), (now + 601).into()), "42", now),
            Err(EXP_TOO_FAR_MESSAGE)
        );
        assert_eq!(http_date(1_796_169_600), "Wed, 02 Dec 2026 00:00:00 GMT");
    }
}
