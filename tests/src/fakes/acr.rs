//! A loopback fake of what the `acr` source talks to, on one HTTP fake of
//! [`super::http`]:
//!
//! - Entra ID's token endpoint, `POST /{tenant}/oauth2/v2.0/token`: a form
//!   (`application/x-www-form-urlencoded`) with `grant_type=client_credentials`,
//!   a known `client_id`, `scope` exactly [`SCOPE`], and either the
//!   client's `client_secret` or `client_assertion_type` [`ASSERTION_TYPE`]
//!   with the client's expected `client_assertion`. A wrong secret or
//!   assertion is Entra's 401 `invalid_client` ([`INVALID_SECRET`]), an
//!   unknown client a 400 `unauthorized_client`, another tenant a 400.
//! - The managed-identity endpoint (IMDS), `GET
//!   /metadata/identity/oauth2/token`: the header `Metadata: true` (else
//!   400), `api-version=2018-02-01` and `resource` [`RESOURCE`]; a
//!   `client_id`, when sent, must be the identity's. Without an identity
//!   ([`FakeAcr::set_managed_identity`]) it answers 400 "Identity not
//!   found", as IMDS does. `expires_in` is a string, as IMDS sends it.
//! - The registry's exchange, `POST /oauth2/exchange`: `grant_type=access_token`,
//!   `service` the registry host, `tenant` the fake's tenant, and an
//!   `access_token` the fake issued that has not expired (else 401). The
//!   answer's `refresh_token` is an unsigned but well-formed JWT
//!   (header.payload.signature, base64url) with `aud` the registry and `exp`
//!   the lifetime from now.
//!
//! Access tokens are JWTs with `tid` (or, [`FakeAcr::mint_access_token`],
//! without one, for `az` stubs). Replies past the checks are scripted per
//! endpoint ([`Reply`], [`Script`]); every call is counted per endpoint and
//! logged ([`Call`]); [`FakeAcr::kill`] stops answering and closes the port.
//! Every token is made of [`crate::random_secret`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::http::{HttpFake, Request, Response};
use super::script::Script;

pub const SCOPE: &str = "https://containerregistry.azure.net/.default";
pub const RESOURCE: &str = "https://containerregistry.azure.net";
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const IMDS_API_VERSION: &str = "2018-02-01";
pub const TOKEN_PATH_SUFFIX: &str = "/oauth2/v2.0/token";
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
pub const EXCHANGE_PATH: &str = "/oauth2/exchange";
/// Entra ID's description of a wrong client secret.
pub const INVALID_SECRET: &str = "AADSTS7000215: Invalid client secret provided. Ensure the \
    secret being sent in the request is the client secret value, not the client secret ID, for \
    a secret added to app '{client}'. Trace ID: 0f7a3c9e-1b2d-4e5f-8a9b-0c1d2e3f4a5b \
    Correlation ID: 7e6d5c4b-3a29-1807-f6e5-d4c3b2a19080 Timestamp: 2026-12-03 06:00:00Z";
/// Entra ID's description of a federated assertion it cannot match.
pub const NO_FEDERATED_MATCH: &str = "AADSTS70021: No matching federated identity record found \
    for presented assertion. Trace ID: 1 Correlation ID: 2 Timestamp: 2026-12-03 06:00:00Z";
/// How long the access tokens the fake issues live.
pub const ACCESS_LIFETIME: Duration = Duration::from_secs(3600);

/// What a call that passes the checks gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The token of the endpoint.
    Token,
    /// 401: Entra's `invalid_client` (AADSTS7000215), IMDS's and the
    /// registry's refusals.
    Unauthorized,
    /// 429 with `Retry-After` of this many seconds.
    Throttled(u64),
    /// 503.
    ServerError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Entra,
    Imds,
    Exchange,
}

/// One request to one of the three endpoints, as the fake judged it.
#[derive(Clone, Debug)]
pub struct Call {
    pub endpoint: Endpoint,
    /// Per endpoint, 1-based.
    pub n: usize,
    pub status: u16,
    /// The client the call was for: the form's or query's `client_id`, or
    /// at the exchange the client of the access token.
    pub client_id: Option<String>,
    /// Entra: the tenant in the path; exchange: the `tenant` field.
    pub tenant: Option<String>,
    /// Entra: `secret` or `assertion`.
    pub credential: Option<&'static str>,
    /// Why it was refused, when it was.
    pub refusal: Option<String>,
}

/// A refresh token the fake handed out.
#[derive(Clone, Debug)]
pub struct Issued {
    pub token: String,
    /// Its `exp` (Unix seconds).
    pub exp: i64,
    /// The client of the access token it was exchanged for.
    pub client_id: String,
}

struct State {
    lifetime: Duration,
    secrets: HashMap<String, String>,
    assertions: HashMap<String, String>,
    /// The client id of the machine's managed identity, if it has one.
    managed: Option<String>,
    /// Access tokens issued: token → (client id, exp).
    access: HashMap<String, (String, i64)>,
    refresh: Vec<Issued>,
    calls: Vec<Call>,
}

struct Shared {
    tenant: String,
    registry: String,
    state: Mutex<State>,
    entra: Script<Reply>,
    imds: Script<Reply>,
    exchange: Script<Reply>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake ACR state")
    }
}

pub struct FakeAcr {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    http: HttpFake,
}

impl FakeAcr {
    /// Starts on 127.0.0.1 with a free port: Entra ID tenant `tenant`, the
    /// registry `registry` (its host, what `service` must be), refresh
    /// tokens that live `lifetime`. No client and no managed identity yet.
    pub fn start(tenant: &str, registry: &str, lifetime: Duration) -> FakeAcr {
        let shared = Arc::new(Shared {
            tenant: tenant.to_owned(),
            registry: registry.to_owned(),
            state: Mutex::new(State {
                lifetime,
                secrets: HashMap::new(),
                assertions: HashMap::new(),
                managed: None,
                access: HashMap::new(),
                refresh: Vec::new(),
                calls: Vec::new(),
            }),
            entra: Script::new(Reply::Token),
            imds: Script::new(Reply::Token),
            exchange: Script::new(Reply::Token),
        });
        let s = shared.clone();
        let http = HttpFake::start(move |req| answer(req, &s));
        FakeAcr {
            addr: http.addr,
            shared,
            http,
        }
    }

    /// `http://127.0.0.1:PORT`: the authority, the IMDS host, and with
    /// [`EXCHANGE_PATH`] the exchange.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/oauth2/exchange`, for `exchange_url`.
    pub fn exchange_url(&self) -> String {
        format!("{}{EXCHANGE_PATH}", self.url())
    }

    pub fn tenant(&self) -> &str {
        &self.shared.tenant
    }

    /// A service principal: `client_id` with `secret`.
    pub fn add_client_secret(&self, client_id: &str, secret: &str) {
        self.shared
            .state()
            .secrets
            .insert(client_id.into(), secret.into());
    }

    /// A workload identity: `client_id` accepts `assertion`.
    pub fn add_federated(&self, client_id: &str, assertion: &str) {
        self.shared
            .state()
            .assertions
            .insert(client_id.into(), assertion.into());
    }

    /// Gives the machine a managed identity with this client id (`None`:
    /// none, IMDS answers 400).
    pub fn set_managed_identity(&self, client_id: Option<&str>) {
        self.shared.state().managed = client_id.map(str::to_owned);
    }

    /// An access token of `client_id` the exchange accepts, as `az` would
    /// print it; with a `tid` claim or without.
    pub fn mint_access_token(&self, client_id: &str, with_tid: bool) -> String {
        let tenant = with_tid.then_some(self.shared.tenant.as_str());
        issue_access(&self.shared, client_id, tenant)
    }

    /// The replies of the next Entra ID calls that pass the checks, then `then`.
    pub fn script_entra(&self, replies: &[Reply], then: Reply) {
        self.shared.entra.set(replies, then);
    }

    pub fn script_imds(&self, replies: &[Reply], then: Reply) {
        self.shared.imds.set(replies, then);
    }

    pub fn script_exchange(&self, replies: &[Reply], then: Reply) {
        self.shared.exchange.set(replies, then);
    }

    /// How many requests came to each endpoint (refused ones included).
    pub fn entra_calls(&self) -> usize {
        self.shared.entra.calls()
    }

    pub fn imds_calls(&self) -> usize {
        self.shared.imds.calls()
    }

    pub fn exchange_calls(&self) -> usize {
        self.shared.exchange.calls()
    }

    pub fn log(&self) -> Vec<Call> {
        self.shared.state().calls.clone()
    }

    /// The calls to one endpoint.
    pub fn calls_to(&self, endpoint: Endpoint) -> Vec<Call> {
        self.log()
            .into_iter()
            .filter(|c| c.endpoint == endpoint)
            .collect()
    }

    /// Every refresh token handed out, in order.
    pub fn issued(&self) -> Vec<Issued> {
        self.shared.state().refresh.clone()
    }

    /// Every secret the fake knows or made: client secrets, assertions,
    /// access and refresh tokens (for checks that none is in a log).
    pub fn secrets(&self) -> Vec<String> {
        let st = self.shared.state();
        st.secrets
            .values()
            .chain(st.assertions.values())
            .chain(st.access.keys())
            .cloned()
            .chain(st.refresh.iter().map(|i| i.token.clone()))
            .collect()
    }

    /// Every request the fake read (headers included), in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.http.requests()
    }

    /// Stops answering: later calls get their connection closed, and the
    /// port stops accepting.
    pub fn kill(&mut self) {
        for script in [&self.shared.entra, &self.shared.imds, &self.shared.exchange] {
            script.kill();
        }
        self.http.kill();
    }
}

impl Drop for FakeAcr {
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

/// An unsigned but well-formed JWT: `header.payload.signature`, base64url.
pub fn jwt(claims: &serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(br#"{"alg":"RS256","typ":"JWT","kid":"fake"}"#),
        b64.encode(claims.to_string()),
        crate::random_secret(43)
    )
}

/// The claims of a JWT (unverified).
pub fn claims(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn issue_access(s: &Shared, client_id: &str, tenant: Option<&str>) -> String {
    let exp = now() + ACCESS_LIFETIME.as_secs() as i64;
    let mut claims = serde_json::json!({
        "aud": RESOURCE,
        "iss": format!("https://sts.windows.net/{}/", s.tenant),
        "appid": client_id,
        "exp": exp,
        "uti": crate::random_secret(22),
    });
    if let Some(t) = tenant {
        claims["tid"] = t.into();
    }
    let token = jwt(&claims);
    s.state()
        .access
        .insert(token.clone(), (client_id.to_owned(), exp));
    token
}

/// A form body or a query string, decoded.
pub fn parse_form(body: &str) -> HashMap<String, String> {
    form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

fn json(status: u16, body: serde_json::Value) -> Response {
    Response::new(status, "application/json; charset=utf-8", body.to_string())
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    json(
        status,
        serde_json::json!({
            "error": error,
            "error_description": description,
            "error_codes": [],
            "timestamp": "2026-12-03 06:00:00Z",
        }),
    )
}

fn registry_error(status: u16, code: &str, message: &str) -> Response {
    json(
        status,
        serde_json::json!({ "errors": [{ "code": code, "message": message }] }),
    )
}

/// The reply to one request, or `None` (the connection is closed) once the
/// fake is killed.
fn answer(req: &Request, s: &Shared) -> Option<Response> {
    let path = req.path.split('?').next().unwrap_or_default();
    let (endpoint, script) = if req.method == "POST" && path == EXCHANGE_PATH {
        (Endpoint::Exchange, &s.exchange)
    } else if req.method == "GET" && path == IMDS_PATH {
        (Endpoint::Imds, &s.imds)
    } else if req.method == "POST" && path.ends_with(TOKEN_PATH_SUFFIX) {
        (Endpoint::Entra, &s.entra)
    } else {
        return Some(json(404, serde_json::json!({ "error": "not_found" })));
    };
    let n = script.arrive()?;
    let mut call = Call {
        endpoint,
        n,
        status: 0,
        client_id: None,
        tenant: None,
        credential: None,
        refusal: None,
    };
    let checked = match endpoint {
        Endpoint::Entra => check_entra(req, path, s, &mut call),
        Endpoint::Imds => check_imds(req, s, &mut call),
        Endpoint::Exchange => check_exchange(req, s, &mut call),
    };
    script.pass(n)?;
    // A refused call takes no scripted reply.
    let response = match checked {
        Err(refusal) => {
            call.refusal = Some(String::from_utf8_lossy(&refusal.body).into_owned());
            refusal
        }
        Ok(()) => reply(endpoint, script.take(), s, &call),
    };
    call.status = response.status;
    s.state().calls.push(call);
    Some(response)
}

/// The answer of a call that passed the checks.
fn reply(endpoint: Endpoint, reply: Reply, s: &Shared, call: &Call) -> Response {
    let client = call.client_id.clone().unwrap_or_default();
    match (endpoint, reply) {
        (Endpoint::Exchange, Reply::Throttled(after)) => {
            registry_error(429, "TOOMANYREQUESTS", "too many requests")
                .with_header("Retry-After", &after.to_string())
        }
        (_, Reply::Throttled(after)) => oauth_error(
            429,
            "temporarily_unavailable",
            "AADSTS50196: The server terminated an operation because it encountered a client request loop.",
        )
        .with_header("Retry-After", &after.to_string()),
        (_, Reply::ServerError) => json(
            503,
            serde_json::json!({ "error": "temporarily_unavailable", "error_description": "try later" }),
        ),
        (Endpoint::Entra, Reply::Token) => {
            let token = issue_access(s, &client, Some(&s.tenant));
            json(
                200,
                serde_json::json!({
                    "token_type": "Bearer",
                    "expires_in": ACCESS_LIFETIME.as_secs(),
                    "ext_expires_in": ACCESS_LIFETIME.as_secs(),
                    "access_token": token,
                }),
            )
        }
        (Endpoint::Entra, Reply::Unauthorized) => oauth_error(
            401,
            "invalid_client",
            &INVALID_SECRET.replace("{client}", &client),
        ),
        (Endpoint::Imds, Reply::Token) => {
            let token = issue_access(s, &client, Some(&s.tenant));
            let secs = ACCESS_LIFETIME.as_secs();
            let now = now();
            json(
                200,
                serde_json::json!({
                    "access_token": token,
                    "client_id": client,
                    "expires_in": secs.to_string(),
                    "expires_on": (now + secs as i64).to_string(),
                    "ext_expires_in": secs.to_string(),
                    "not_before": now.to_string(),
                    "resource": RESOURCE,
                    "token_type": "Bearer",
                }),
            )
        }
        (Endpoint::Imds, Reply::Unauthorized) => oauth_error(
            401,
            "unauthorized_client",
            "AADSTS700016: the managed identity is not allowed",
        ),
        (Endpoint::Exchange, Reply::Token) => {
            let now = now();
            let exp = now + s.state().lifetime.as_secs() as i64;
            let token = jwt(&serde_json::json!({
                "jti": crate::random_secret(22),
                "sub": client,
                "nbf": now,
                "iat": now,
                "exp": exp,
                "iss": "Azure Container Registry",
                "aud": s.registry,
                "version": "1.0",
                "grant_type": "refresh_token",
                "tenant": s.tenant,
                "permissions": { "actions": ["read"], "notActions": [] },
            }));
            s.state().refresh.push(Issued {
                token: token.clone(),
                exp,
                client_id: client,
            });
            json(200, serde_json::json!({ "refresh_token": token }))
        }
        (Endpoint::Exchange, Reply::Unauthorized) => registry_error(
            401,
            "UNAUTHORIZED",
            "authentication required, visit https://aka.ms/acr/authorization for more information.",
        ),
    }
}

fn form_of(req: &Request) -> Result<HashMap<String, String>, Response> {
    let content_type = req.header("content-type").unwrap_or_default();
    if !content_type.split(';').next().is_some_and(|t| {
        t.trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    }) {
        return Err(oauth_error(
            400,
            "invalid_request",
            &format!("fake: Content-Type is {content_type:?}, not a form"),
        ));
    }
    Ok(parse_form(&req.text()))
}

/// Entra ID's checks of a token request.
fn check_entra(req: &Request, path: &str, s: &Shared, call: &mut Call) -> Result<(), Response> {
    let tenant = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix(TOKEN_PATH_SUFFIX))
        .unwrap_or_default();
    call.tenant = Some(tenant.to_owned());
    let form = form_of(req)?;
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    call.client_id = form.get("client_id").cloned();
    if tenant != s.tenant {
        return Err(oauth_error(
            400,
            "invalid_request",
            &format!("AADSTS90002: Tenant '{tenant}' not found."),
        ));
    }
    if field("grant_type") != "client_credentials" {
        return Err(oauth_error(
            400,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        ));
    }
    if field("scope") != SCOPE {
        return Err(oauth_error(
            400,
            "invalid_scope",
            &format!(
                "AADSTS70011: The provided value for scope {:?} is not valid.",
                field("scope")
            ),
        ));
    }
    let client = field("client_id");
    let st = s.state();
    let (secret, assertion) = (st.secrets.get(client), st.assertions.get(client));
    if secret.is_none() && assertion.is_none() {
        return Err(oauth_error(
            400,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{client}' was not found in the directory."
            ),
        ));
    }
    if let Some(given) = form.get("client_secret") {
        call.credential = Some("secret");
        if secret != Some(given) {
            return Err(oauth_error(
                401,
                "invalid_client",
                &INVALID_SECRET.replace("{client}", client),
            ));
        }
        return Ok(());
    }
    if let Some(given) = form.get("client_assertion") {
        call.credential = Some("assertion");
        if field("client_assertion_type") != ASSERTION_TYPE {
            return Err(oauth_error(
                400,
                "invalid_request",
                "AADSTS50027: client_assertion_type is not jwt-bearer.",
            ));
        }
        if assertion != Some(given) {
            return Err(oauth_error(401, "invalid_client", NO_FEDERATED_MATCH));
        }
        return Ok(());
    }
    Err(oauth_error(
        401,
        "invalid_client",
        "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    ))
}

/// IMDS's checks.
fn check_imds(req: &Request, s: &Shared, call: &mut Call) -> Result<(), Response> {
    if req.header("metadata") != Some("true") {
        return Err(oauth_error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        ));
    }
    let query = req.path.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let params = parse_form(query);
    let param = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
    if param("api-version") != IMDS_API_VERSION {
        return Err(oauth_error(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing or not supported",
        ));
    }
    if param("resource") != RESOURCE {
        return Err(oauth_error(
            400,
            "invalid_resource",
            "AADSTS500011: The resource principal was not found",
        ));
    }
    let managed = s.state().managed.clone();
    match (managed, params.get("client_id")) {
        (Some(id), None) => call.client_id = Some(id),
        (Some(id), Some(asked)) if &id == asked => call.client_id = Some(id),
        _ => {
            return Err(oauth_error(400, "invalid_request", "Identity not found"));
        }
    }
    Ok(())
}

/// The registry's checks of an exchange.
fn check_exchange(req: &Request, s: &Shared, call: &mut Call) -> Result<(), Response> {
    let form = form_of(req)?;
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    call.tenant = form.get("tenant").cloned();
    if field("grant_type") != "access_token" {
        return Err(registry_error(400, "UNSUPPORTED", "unsupported grant_type"));
    }
    if field("service") != s.registry {
        return Err(registry_error(
            400,
            "INVALID_SERVICE",
            &format!("service {:?} is not this registry", field("service")),
        ));
    }
    if field("tenant") != s.tenant {
        return Err(registry_error(
            401,
            "UNAUTHORIZED",
            &format!("tenant {:?} is not the token's", field("tenant")),
        ));
    }
    let known = s.state().access.get(field("access_token")).cloned();
    match known {
        Some((client, exp)) if exp > now() => {
            call.client_id = Some(client);
            Ok(())
        }
        Some(_) => Err(registry_error(
            401,
            "UNAUTHORIZED",
            "the access token has expired",
        )),
        None => Err(registry_error(
            401,
            "UNAUTHORIZED",
            "the access token is not valid",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_jwts_round_trip() {
        let form = parse_form("a=1&scope=https%3A%2F%2Fx%2F.default&b=x+y");
        assert_eq!(form["a"], "1");
        assert_eq!(form["scope"], "https://x/.default");
        assert_eq!(form["b"], "x y");
        let t = jwt(&serde_json::json!({ "exp": 5 }));
        assert_eq!(t.split('.').count(), 3);
        assert_eq!(claims(&t).unwrap()["exp"], 5);
    }
}
