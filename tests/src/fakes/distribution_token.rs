//! A token server for a real `docker-registry` in token mode
//! (distribution's `auth.token`): it issues the JWTs the registry verifies
//! itself, signed RS256 by a key made at test time whose self-signed
//! certificate is the registry's `rootcertbundle` (the JWT carries it in
//! `x5c`). The claims are distribution's: `iss`, `sub`, `aud` (the
//! service), `exp`, `nbf`, `iat`, `jti` and `access`, the granted
//! `repository:NAME:ACTIONS`.
//!
//! - `POST /token` (OAuth2 form): `grant_type=password` with the user's
//!   password (`access_type=offline` adds a `refresh_token`), or
//!   `grant_type=refresh_token` with one it issued; wrong ones: 400
//!   `invalid_grant`.
//! - `GET /token?service=…&scope=…&account=…` with Basic credentials.
//!
//! The user may pull and push repositories under `team/`, nothing else:
//! a scope outside it is granted with no actions, as distribution's token
//! servers do, and the registry then refuses the request.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::http::{HttpFake, Request, Response};

pub const SERVICE: &str = "regent-test-registry";
pub const ISSUER: &str = "regent-test-token-server";
/// What the user may pull from and push to.
pub const ALLOWED_PREFIX: &str = "team/";

struct Shared {
    user: String,
    password: String,
    key: PathBuf,
    /// The signing certificate, DER, base64 (for `x5c`).
    cert_b64: String,
    refresh: Mutex<Vec<String>>,
    /// Grant types asked for, in order.
    grants: Mutex<Vec<String>>,
    dir: PathBuf,
}

pub struct TokenServer {
    /// The signing certificate (PEM): the registry's `rootcertbundle`.
    pub cert: PathBuf,
    shared: Arc<Shared>,
    http: HttpFake,
}

fn openssl(args: &[&str], dir: &Path, stdin: Option<&[u8]>) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "openssl {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

impl TokenServer {
    /// Starts on 127.0.0.1 with a fresh key in `dir`, for `user` and
    /// `password`.
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<TokenServer, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "signer.key",
                "-out",
                "signer.pem",
                "-days",
                "2",
                "-subj",
                "/CN=regent test token signer",
            ],
            dir,
            None,
        )?;
        let der = openssl(&["x509", "-in", "signer.pem", "-outform", "DER"], dir, None)?;
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            password: password.to_owned(),
            key: dir.join("signer.key"),
            cert_b64: base64::engine::general_purpose::STANDARD.encode(der),
            refresh: Mutex::new(Vec::new()),
            grants: Mutex::new(Vec::new()),
            dir: dir.to_owned(),
        });
        let s = shared.clone();
        let http = HttpFake::start(move |req| Some(answer(req, &s)));
        Ok(TokenServer {
            cert: dir.join("signer.pem"),
            shared,
            http,
        })
    }

    /// `http://127.0.0.1:PORT/token`, the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("{}/token", self.http.url())
    }

    pub fn refresh_tokens(&self) -> Vec<String> {
        self.shared.refresh.lock().expect("token server").clone()
    }

    /// Every request the server read.
    pub fn requests(&self) -> Vec<Request> {
        self.http.requests()
    }

    /// The grant types asked for (`password`, `refresh_token`, `get`).
    pub fn grants(&self) -> Vec<String> {
        self.shared.grants.lock().expect("token server").clone()
    }
}

fn json(status: u16, body: serde_json::Value) -> Response {
    Response::new(status, "application/json", body.to_string())
}

fn answer(req: &Request, s: &Shared) -> Response {
    let path = req.path.split('?').next().unwrap_or_default();
    if path != "/token" {
        return Response::new(404, "text/plain", "404 page not found");
    }
    let query = req.path.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let pairs = |bytes: &[u8]| -> Vec<(String, String)> {
        form_urlencoded::parse(bytes).into_owned().collect()
    };
    let (params, grant) = match req.method.as_str() {
        "POST" => {
            let form = pairs(&req.body);
            let grant = form
                .iter()
                .find(|(k, _)| k == "grant_type")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            (form, grant)
        }
        "GET" => (pairs(query.as_bytes()), "get".to_owned()),
        _ => return Response::new(405, "text/plain", "method not allowed"),
    };
    s.grants.lock().expect("token server").push(grant.clone());
    let field = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let invalid = || {
        json(
            400,
            serde_json::json!({"error":"invalid_grant","error_description":"bad credentials"}),
        )
    };
    let mut offline = false;
    match grant.as_str() {
        "password" => {
            if field("username") != s.user || field("password") != s.password {
                return invalid();
            }
            offline = field("access_type") == "offline";
        }
        "refresh_token" => {
            let known = s
                .refresh
                .lock()
                .expect("token server")
                .iter()
                .any(|r| r == field("refresh_token"));
            if !known {
                return invalid();
            }
        }
        "get" => {
            let basic = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Basic "))
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .and_then(|b| String::from_utf8(b).ok());
            if basic != Some(format!("{}:{}", s.user, s.password)) {
                return json(
                    401,
                    serde_json::json!({"details":"incorrect username or password"}),
                );
            }
        }
        _ => return json(400, serde_json::json!({"error":"unsupported_grant_type"})),
    }
    if field("service") != SERVICE {
        return json(
            400,
            serde_json::json!({"error":"invalid_request","error_description":"unknown service"}),
        );
    }
    let scopes: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .filter(|v| !v.is_empty())
        .collect();
    let token = match sign(s, &access(&scopes)) {
        Ok(token) => token,
        Err(e) => return Response::new(500, "text/plain", e),
    };
    let mut body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
    });
    if offline {
        let refresh = format!("rt-{}", crate::random_secret(32));
        s.refresh
            .lock()
            .expect("token server")
            .push(refresh.clone());
        body["refresh_token"] = refresh.into();
    }
    json(200, body)
}

/// distribution's `access` claim for `scopes`: `team/…` gets what it asks
/// for, anything else nothing.
fn access(scopes: &[&str]) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (Some(kind), Some(name), Some(actions)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            let granted: Vec<&str> = if kind == "repository" && name.starts_with(ALLOWED_PREFIX) {
                actions
                    .split(',')
                    .filter(|a| ["pull", "push"].contains(a))
                    .collect()
            } else {
                Vec::new()
            };
            Some(serde_json::json!({"type": kind, "name": name, "actions": granted}))
        })
        .collect();
    serde_json::Value::Array(entries)
}

/// A JWT for `access`, RS256 by the server's key (`openssl dgst -sign`).
fn sign(s: &Shared, access: &serde_json::Value) -> Result<String, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [s.cert_b64]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": s.user,
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": crate::random_secret(16),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let key = s.key.to_string_lossy().into_owned();
    let signature = openssl(
        &["dgst", "-sha256", "-sign", &key],
        &s.dir,
        Some(signing_input.as_bytes()),
    )?;
    Ok(format!("{signing_input}.{}", b64.encode(signature)))
}
