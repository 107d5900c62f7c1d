//! A loopback registry behind a token server, the distribution token
//! protocol of Docker Hub, ghcr.io and most hosted registries, on the HTTP
//! fake of [`super::http`]:
//!
//! - `GET /v2/` without a token: 401 with
//!   `WWW-Authenticate: Bearer realm="http://127.0.0.1:PORT/token",service="fake-registry"`;
//!   with `Authorization: Bearer <a token the fake issued>`: 200 and
//!   `Docker-Distribution-API-Version: registry/2.0`; any other token: 401.
//! - `POST /token` (OAuth2, form): `grant_type=password` with the right
//!   `username` and `password`, `service` and a `client_id`: 200 with an
//!   `access_token`, and a `refresh_token` when `access_type=offline`;
//!   wrong credentials: 400 `invalid_grant`; with [`Mode::GetOnly`]: 404.
//! - `GET /token?service=…&account=…` with Basic credentials: 200
//!   `{"token":…}` (no refresh token); wrong ones: 401.
//!
//! [`Mode::Throttled`] answers every `/v2/` with 429 and `Retry-After`.
//! Every request is recorded ([`HttpFake::requests`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;

use super::http::{HttpFake, Request, Response};

pub const SERVICE: &str = "fake-registry";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// OAuth2 `POST` and `GET` both served.
    OAuth,
    /// `POST /token` is 404: only the GET endpoint.
    GetOnly,
    /// `/v2/` is 429 with `Retry-After` of this many seconds.
    Throttled(u64),
}

struct Shared {
    user: String,
    password: String,
    mode: Mode,
    realm: Mutex<String>,
    /// Access tokens handed out.
    issued: Mutex<HashSet<String>>,
    /// The refresh tokens handed out, in order.
    refresh: Mutex<Vec<String>>,
}

pub struct FakeTokenRegistry {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    http: HttpFake,
}

impl FakeTokenRegistry {
    pub fn start(user: &str, password: &str, mode: Mode) -> FakeTokenRegistry {
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            password: password.to_owned(),
            mode,
            realm: Mutex::new(String::new()),
            issued: Mutex::new(HashSet::new()),
            refresh: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let http = HttpFake::start(move |req| Some(answer(req, &s)));
        *shared.realm.lock().expect("fake realm") = format!("{}/token", http.url());
        FakeTokenRegistry {
            addr: http.addr,
            shared,
            http,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The refresh tokens handed out, in order.
    pub fn refresh_tokens(&self) -> Vec<String> {
        self.shared.refresh.lock().expect("fake refresh").clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.http.requests()
    }
}

fn json(status: u16, body: serde_json::Value) -> Response {
    Response::new(status, "application/json", body.to_string())
}

fn answer(req: &Request, s: &Shared) -> Response {
    let path = req.path.split('?').next().unwrap_or_default();
    let query = req.path.split_once('?').map(|(_, q)| q).unwrap_or_default();
    match (req.method.as_str(), path) {
        ("GET", "/v2/") => v2(req, s),
        ("POST", "/token") if s.mode == Mode::GetOnly => {
            Response::new(404, "text/plain", "404 page not found")
        }
        ("POST", "/token") => oauth(req, s),
        ("GET", "/token") => get_token(req, query, s),
        _ => Response::new(404, "text/plain", "404 page not found"),
    }
}

fn v2(req: &Request, s: &Shared) -> Response {
    if let Mode::Throttled(after) = s.mode {
        return json(
            429,
            serde_json::json!({"errors":[{"code":"TOOMANYREQUESTS"}]}),
        )
        .with_header("Retry-After", &after.to_string());
    }
    let token = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim);
    if token.is_some_and(|t| s.issued.lock().expect("fake issued").contains(t)) {
        return json(200, serde_json::json!({}))
            .with_header("Docker-Distribution-API-Version", "registry/2.0");
    }
    let realm = s.realm.lock().expect("fake realm").clone();
    json(
        401,
        serde_json::json!({"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}),
    )
    .with_header(
        "WWW-Authenticate",
        &format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\""),
    )
    .with_header("Docker-Distribution-API-Version", "registry/2.0")
}

fn issue(s: &Shared, offline: bool, key: &str) -> serde_json::Value {
    let token = format!("at-{}", crate::random_secret(24));
    s.issued.lock().expect("fake issued").insert(token.clone());
    let mut body = serde_json::json!({ key: token, "expires_in": 300 });
    if offline {
        let refresh = format!("rt-{}", crate::random_secret(32));
        s.refresh
            .lock()
            .expect("fake refresh")
            .push(refresh.clone());
        body["refresh_token"] = refresh.into();
    }
    body
}

fn oauth(req: &Request, s: &Shared) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    if !req
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/x-www-form-urlencoded")
    {
        return json(400, serde_json::json!({"error":"invalid_request"}));
    }
    if field("grant_type") != "password" {
        return json(400, serde_json::json!({"error":"unsupported_grant_type"}));
    }
    if field("service") != SERVICE || field("client_id").is_empty() {
        return json(400, serde_json::json!({"error":"invalid_request"}));
    }
    if field("username") != s.user || field("password") != s.password {
        return json(
            400,
            serde_json::json!({"error":"invalid_grant","error_description":"bad credentials"}),
        );
    }
    json(
        200,
        issue(s, field("access_type") == "offline", "access_token"),
    )
}

fn get_token(req: &Request, query: &str, s: &Shared) -> Response {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let basic = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let right = format!("{}:{}", s.user, s.password);
    if basic.as_deref() != Some(right.as_str()) || param("service") != SERVICE {
        return json(
            401,
            serde_json::json!({"details":"incorrect username or password"}),
        );
    }
    json(200, issue(s, false, "token"))
}
