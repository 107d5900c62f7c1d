//! A loopback fake of the ECR and ECR Public `GetAuthorizationToken` APIs
//! (AWS JSON 1.1) and of STS `AssumeRole`, for tests, on the HTTP fake of
//! [`super::http`].
//!
//! It dispatches on `X-Amz-Target`, ignores the signature, and records what
//! tests need to tell calls apart: the access key id and the region and
//! service of the SigV4 credential scope. Replies are scripted per call
//! ([`Reply`]), with a default for calls past the script; a gate holds calls
//! from a given number on until it is opened; [`FakeEcr::kill`] stops
//! answering and closes the port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::http::{HttpFake, Request, Response};
use super::script::Script;

pub const PRIVATE_TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
pub const PUBLIC_TARGET: &str = "SpencerFrontendService.GetAuthorizationToken";

/// What one call gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A token `AWS:<prefix>-<n>-<access key id>` valid for `lifetime`.
    Token,
    /// 400 `ThrottlingException`.
    Throttle,
    /// 400 `AccessDeniedException`.
    Denied,
    /// 400 `UnrecognizedClientException` (bad keys).
    Unrecognized,
    /// 500 `ServerException`.
    ServerError,
}

/// One request the fake saw.
#[derive(Clone, Debug)]
pub struct Call {
    pub n: usize,
    pub target: String,
    pub access_key_id: String,
    pub region: String,
    pub service: String,
}

struct State {
    lifetime: Duration,
    prefix: String,
    calls: Vec<Call>,
}

struct Shared {
    state: Mutex<State>,
    script: Script<Reply>,
}

pub struct FakeEcr {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    http: HttpFake,
}

impl FakeEcr {
    /// Starts on 127.0.0.1 with a free port; tokens live `lifetime`.
    pub fn start(lifetime: Duration) -> FakeEcr {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lifetime,
                prefix: "ecr-pw".into(),
                calls: Vec::new(),
            }),
            script: Script::new(Reply::Token),
        });
        let s = shared.clone();
        let http = HttpFake::start(move |req| answer(req, &s));
        FakeEcr {
            addr: http.addr,
            shared,
            http,
        }
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_ECR[_PUBLIC]`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("fake ECR state")
    }

    /// The replies of the next calls, then `then` for every later one.
    pub fn script(&self, replies: &[Reply], then: Reply) {
        self.shared.script.set(replies, then);
    }

    pub fn set_lifetime(&self, lifetime: Duration) {
        self.state().lifetime = lifetime;
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.script.set_latency(latency);
    }

    pub fn set_prefix(&self, prefix: &str) {
        self.state().prefix = prefix.to_owned();
    }

    /// Calls number `n` (1-based) and later wait until [`FakeEcr::open`].
    pub fn hold_from(&self, n: usize) {
        self.shared.script.hold_from(n);
    }

    pub fn open(&self) {
        self.shared.script.open();
    }

    /// How many requests arrived (held ones included).
    pub fn calls(&self) -> usize {
        self.shared.script.calls()
    }

    pub fn log(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The password call `n` returns for `access_key_id`.
    pub fn password(&self, n: usize, access_key_id: &str) -> String {
        format!("{}-{n}-{access_key_id}", self.state().prefix)
    }

    /// Stops answering: held and later calls get their connection closed,
    /// and the port stops accepting.
    pub fn kill(&mut self) {
        self.shared.script.kill();
        self.http.kill();
    }
}

impl Drop for FakeEcr {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `Credential=AKID/date/region/service/aws4_request` → (AKID, region, service).
fn credential_scope(authorization: &str) -> (String, String, String) {
    let Some(start) = authorization.find("Credential=") else {
        return Default::default();
    };
    let rest = &authorization[start + "Credential=".len()..];
    let scope = rest.split([',', ' ']).next().unwrap_or("");
    let parts: Vec<&str> = scope.split('/').collect();
    let get = |i: usize| parts.get(i).copied().unwrap_or("").to_owned();
    (get(0), get(2), get(3))
}

/// The reply to one request, or `None` (the connection is closed) once the
/// fake is killed.
fn answer(req: &Request, s: &Shared) -> Option<Response> {
    if s.script.is_dead() {
        return None;
    }
    let target = req.header("x-amz-target").unwrap_or_default();
    let authorization = req.header("authorization").unwrap_or_default();
    if target.is_empty() && req.text().contains("Action=AssumeRole") {
        return Some(assume_role(s, authorization, &req.text()));
    }
    let n = s.script.arrive()?;
    let (access_key_id, region, service) = credential_scope(authorization);
    s.state.lock().expect("fake ECR state").calls.push(Call {
        n,
        target: target.to_owned(),
        access_key_id: access_key_id.clone(),
        region,
        service,
    });
    s.script.pass(n)?;
    let reply = s.script.take();
    let (lifetime, prefix) = {
        let st = s.state.lock().expect("fake ECR state");
        (st.lifetime, st.prefix.clone())
    };
    let public = target == PUBLIC_TARGET;
    let (status, body) = if target != PRIVATE_TARGET && !public {
        (
            400,
            error_body(
                "UnknownOperationException",
                &format!("unknown target {target:?}"),
            ),
        )
    } else {
        match reply {
            Reply::Token => {
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("AWS:{prefix}-{n}-{access_key_id}"));
                let expires = SystemTime::now()
                    .checked_add(lifetime)
                    .unwrap_or(SystemTime::now())
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                let data = serde_json::json!({
                    "authorizationToken": token,
                    "expiresAt": expires,
                });
                let body = if public {
                    serde_json::json!({ "authorizationData": data })
                } else {
                    let mut data = data;
                    data["proxyEndpoint"] =
                        "https://123456789012.dkr.ecr.us-east-1.amazonaws.com".into();
                    serde_json::json!({ "authorizationData": [data] })
                };
                (200, body.to_string())
            }
            Reply::Throttle => (400, error_body("ThrottlingException", "Rate exceeded")),
            Reply::Denied => (
                400,
                error_body(
                    "AccessDeniedException",
                    "User: arn:aws:iam::123456789012:user/test is not authorized to perform: \
                     ecr:GetAuthorizationToken",
                ),
            ),
            Reply::Unrecognized => (
                400,
                error_body(
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                ),
            ),
            Reply::ServerError => (500, error_body("ServerException", "internal failure")),
        }
    };
    Some(
        Response::new(status, "application/x-amz-json-1.1", body)
            .with_header("x-amzn-RequestId", &format!("fake-{n}")),
    )
}

/// STS `AssumeRole` (query protocol, XML reply): temporary keys whose id
/// is [`ROLE_KEY_ID`]. Not counted in [`FakeEcr::calls`]; logged with target
/// `AssumeRole:<RoleArn>` and service `sts`.
fn assume_role(s: &Shared, authorization: &str, body: &str) -> Response {
    let (access_key_id, region, service) = credential_scope(authorization);
    let role = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("RoleArn="))
        .unwrap_or("")
        .replace("%3A", ":")
        .replace("%2F", "/");
    s.state.lock().expect("fake ECR state").calls.push(Call {
        n: 0,
        target: format!("AssumeRole:{role}"),
        access_key_id,
        region,
        service,
    });
    let body = format!(
        "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <AssumeRoleResult><Credentials><AccessKeyId>{ROLE_KEY_ID}</AccessKeyId>\
         <SecretAccessKey>fake-role-secret</SecretAccessKey>\
         <SessionToken>fake-session-token</SessionToken>\
         <Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>\
         <AssumedRoleUser><AssumedRoleId>AROAFAKE:regent</AssumedRoleId>\
         <Arn>arn:aws:sts::123456789012:assumed-role/fake/regent</Arn></AssumedRoleUser>\
         </AssumeRoleResult><ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>\
         </AssumeRoleResponse>"
    );
    Response::new(200, "text/xml", body)
}

/// The access key id of the credentials [`assume_role`] hands out.
pub const ROLE_KEY_ID: &str = "ASIAFAKEROLEKEY00001";

fn error_body(kind: &str, message: &str) -> String {
    serde_json::json!({ "__type": kind, "message": message }).to_string()
}

/// A random AWS-looking access key pair made at test time.
pub fn test_keys() -> (String, String) {
    let id: String = crate::random_bytes(16)
        .iter()
        .map(|b| (b'A' + b % 26) as char)
        .collect();
    (format!("AKIA{id}"), crate::random_secret(40))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_parsed() {
        let (id, region, service) = credential_scope(
            "AWS4-HMAC-SHA256 Credential=AKIAX/20260101/eu-west-1/ecr/aws4_request, \
             SignedHeaders=host, Signature=abc",
        );
        assert_eq!(
            (id.as_str(), region.as_str(), service.as_str()),
            ("AKIAX", "eu-west-1", "ecr")
        );
        assert_eq!(credential_scope("none"), Default::default());
    }
}
