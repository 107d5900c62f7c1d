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
//! - `POST /token` with `grant_type=refresh_token` and a refresh token the
//!   fake issued: a new access token.
//! - Scopes (`repository:NAME:ACTIONS`, space-separated or repeated) are
//!   granted as far as [`PULL`] and [`PUSH`] allow: `GET
//!   /v2/NAME/tags/list` needs `pull` (200; 404 `NAME_UNKNOWN` for a
//!   repository that does not exist), `POST /v2/NAME/blobs/uploads/` needs
//!   `push` (202 and a `Location`, which `DELETE` cancels); without the
//!   grant, 401 with a challenge for that scope.
//!
//! [`Mode::Throttled`] answers every `/v2/` path with 429 and
//! `Retry-After`. Every request is recorded ([`HttpFake::requests`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;

use super::http::{HttpFake, Request, Response};

pub const SERVICE: &str = "fake-registry";
/// The repositories the user may pull from (these exist).
pub const PULL: &[&str] = &["team/app", "team/ci"];
/// The repositories the user may push to.
pub const PUSH: &[&str] = &["team/ci", "team/new"];

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
    /// Access tokens handed out, with what each grants (repository,
    /// action).
    issued: Mutex<HashMap<String, Vec<(String, String)>>>,
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
            issued: Mutex::new(HashMap::new()),
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

    /// The uploads that were started and then cancelled.
    pub fn cancelled_uploads(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "DELETE" && r.path.contains("/blobs/uploads/"))
            .count()
    }
}

fn json(status: u16, body: serde_json::Value) -> Response {
    Response::new(status, "application/json", body.to_string())
}

fn answer(req: &Request, s: &Shared) -> Response {
    let path = req.path.split('?').next().unwrap_or_default();
    let query = req.path.split_once('?').map(|(_, q)| q).unwrap_or_default();
    if let Mode::Throttled(after) = s.mode
        && path.starts_with("/v2/")
    {
        return json(
            429,
            serde_json::json!({"errors":[{"code":"TOOMANYREQUESTS"}]}),
        )
        .with_header("Retry-After", &after.to_string());
    }
    if let Some(rest) = path.strip_prefix("/v2/")
        && !rest.is_empty()
    {
        return repository(req, rest, s);
    }
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

/// What the request's bearer token grants, if the fake issued it.
fn grants(req: &Request, s: &Shared) -> Option<Vec<(String, String)>> {
    let token = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim)?;
    s.issued.lock().expect("fake issued").get(token).cloned()
}

fn unauthorized(s: &Shared, scope: Option<&str>) -> Response {
    let realm = s.realm.lock().expect("fake realm").clone();
    let scope = scope
        .map(|sc| format!(",scope=\"{sc}\""))
        .unwrap_or_default();
    json(
        401,
        serde_json::json!({"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}),
    )
    .with_header(
        "WWW-Authenticate",
        &format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"{scope}"),
    )
    .with_header("Docker-Distribution-API-Version", "registry/2.0")
}

fn v2(req: &Request, s: &Shared) -> Response {
    if grants(req, s).is_some() {
        return json(200, serde_json::json!({}))
            .with_header("Docker-Distribution-API-Version", "registry/2.0");
    }
    unauthorized(s, None)
}

/// `/v2/NAME/tags/list` and `/v2/NAME/blobs/uploads/[ID]`.
fn repository(req: &Request, rest: &str, s: &Shared) -> Response {
    let (name, action) = if let Some(name) = rest.strip_suffix("/tags/list") {
        (name, "pull")
    } else if let Some((name, _)) = rest.split_once("/blobs/uploads/") {
        (name, "push")
    } else {
        return Response::new(404, "text/plain", "404 page not found");
    };
    let granted = grants(req, s)
        .unwrap_or_default()
        .iter()
        .any(|(repo, a)| repo == name && a == action);
    if !granted {
        return unauthorized(s, Some(&format!("repository:{name}:{action}")));
    }
    match (req.method.as_str(), action) {
        ("GET", "pull") if PULL.contains(&name) => {
            json(200, serde_json::json!({"name": name, "tags": ["1.0"]}))
        }
        ("GET", "pull") => json(
            404,
            serde_json::json!({"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}),
        ),
        ("POST", "push") => Response::new(202, "text/plain", "")
            .with_header(
                "Location",
                &format!("/v2/{name}/blobs/uploads/{}", crate::random_secret(16)),
            )
            .with_header("Docker-Upload-UUID", "fake"),
        ("DELETE", "push") => Response::new(204, "text/plain", ""),
        _ => Response::new(405, "text/plain", "method not allowed"),
    }
}

/// What `scopes` (`repository:NAME:ACTIONS` each) may have.
fn allowed(scopes: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for scope in scopes {
        let mut parts = scope.splitn(3, ':');
        let (Some("repository"), Some(name), Some(actions)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        for action in actions.split(',') {
            let ok = match action {
                "pull" => PULL.contains(&name) || PUSH.contains(&name),
                "push" => PUSH.contains(&name),
                _ => false,
            };
            if ok {
                out.push((name.to_owned(), action.to_owned()));
            }
        }
    }
    out
}

fn issue(s: &Shared, offline: bool, key: &str, scopes: &[&str]) -> serde_json::Value {
    let token = format!("at-{}", crate::random_secret(24));
    s.issued
        .lock()
        .expect("fake issued")
        .insert(token.clone(), allowed(scopes));
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
    if field("service") != SERVICE || field("client_id").is_empty() {
        return json(400, serde_json::json!({"error":"invalid_request"}));
    }
    let scopes: Vec<&str> = field("scope")
        .split(' ')
        .filter(|x| !x.is_empty())
        .collect();
    match field("grant_type") {
        "password" => {
            if field("username") != s.user || field("password") != s.password {
                return json(
                    400,
                    serde_json::json!({"error":"invalid_grant","error_description":"bad credentials"}),
                );
            }
            let offline = field("access_type") == "offline";
            json(200, issue(s, offline, "access_token", &scopes))
        }
        "refresh_token" => {
            let known = s
                .refresh
                .lock()
                .expect("fake refresh")
                .iter()
                .any(|r| r == field("refresh_token"));
            if !known {
                return json(
                    400,
                    serde_json::json!({"error":"invalid_grant","error_description":"unknown refresh token"}),
                );
            }
            json(200, issue(s, false, "access_token", &scopes))
        }
        _ => json(400, serde_json::json!({"error":"unsupported_grant_type"})),
    }
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
    let scopes: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .collect();
    json(200, issue(s, false, "token", &scopes))
}
