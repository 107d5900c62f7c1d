//! The `acr` source: Azure Container Registry refresh tokens, from an
//! Entra ID (Azure AD) access token exchanged at the registry.
//!
//! ```toml
//! [[registry]]
//! match = "myreg.azurecr.io"
//! source = "acr"
//! tenant_id = "..."                         # optional (a GUID or a domain)
//! client_id = "..."                         # optional (the application or managed identity)
//! client_secret = { secret = "acr-sp" }     # `regent secret set acr-sp`; needs both ids
//! authority_url = "https://login.microsoftonline.com"  # the default (sovereign clouds: theirs)
//! exchange_url = "https://myreg.azurecr.io/oauth2/exchange"  # the default: the registry's own
//! ```
//!
//! Zero configuration: `<name>.azurecr.io`, `<name>.azurecr.cn` (Azure
//! China) and `<name>.azurecr.us` (Azure US Government) are detected
//! ([`detect`]): anchored at both ends, one label `[a-z0-9][a-z0-9-]*`
//! before the suffix, the port ignored (as for ECR). `*.azurecr.de` is not:
//! Azure Germany's cloud closed in 2021; an entry can still name such a
//! host. `http://` is accepted in `authority_url` and `exchange_url` only
//! for loopback hosts (127.0.0.1, ::1, localhost).
//!
//! # The chain
//!
//! Each fetch gets an Entra ID access token for the scope
//! `https://containerregistry.azure.net/.default` from the first of these
//! steps that applies:
//!
//! 1. **A service principal of the entry**, when `tenant_id`, `client_id`
//!    and `client_secret` are all set: the client-credentials grant,
//!    `POST {authority}/{tenant}/oauth2/v2.0/token` with `client_id`,
//!    `client_secret` (the named secret, read at each fetch) and `scope`.
//!    The authority is `authority_url` or `https://login.microsoftonline.com`,
//!    never the caller's `AZURE_AUTHORITY_HOST`: a caller cannot send the
//!    entry's secret elsewhere.
//! 2. **Workload identity**, when the caller has `AZURE_FEDERATED_TOKEN_FILE`,
//!    `AZURE_TENANT_ID` and `AZURE_CLIENT_ID` (the entry's `tenant_id` and
//!    `client_id` win over the last two): the same request with the file's
//!    contents (at most 64 KiB, trimmed, read at each fetch) as a
//!    `client_assertion` of type `jwt-bearer` instead of a secret. The
//!    authority is `authority_url`, else the caller's `AZURE_AUTHORITY_HOST`,
//!    else `https://login.microsoftonline.com`.
//! 3. **A managed identity**: `GET {imds}/metadata/identity/oauth2/token`
//!    with `api-version=2018-02-01`, `resource` and, when `client_id` is
//!    set, `client_id`, and the header `Metadata: true`. `{imds}` is the
//!    agent's `AZURE_POD_IDENTITY_AUTHORITY_HOST`, else
//!    `http://169.254.169.254`. Off Azure nothing answers there: a refused
//!    connection, a timeout ([`IMDS_TIMEOUT`]) or a 400 (no identity
//!    assigned) means the step does not apply. An endpoint that did not
//!    answer is believed absent for [`IMDS_ABSENT_FOR`] (5 minutes): off
//!    Azure a fetch pays the timeout once in a while, not every time.
//! 4. **The Azure CLI**: `az account get-access-token --resource
//!    https://containerregistry.azure.net --output json` (and `--tenant`
//!    when a tenant is known), run by [`super::cli`]: the program
//!    `REGENT_AZ` of the agent's environment names, else `az` on the
//!    agent's `PATH`, with the caller's `AZURE_CONFIG_DIR` (else `az` reads
//!    the agent's `~/.azure`), within [`AZ_TIMEOUT`] and 64 KiB. It does not
//!    apply when `REGENT_AZ` is set and empty, or unset and no `az` is on
//!    the `PATH`; when it fails (not logged in), the error is permanent and
//!    says to run `az login`.
//!
//! When none applies, the error is permanent and lists the four ways.
//! Which caller variables reach the source: [`CALLER_ENV`].
//!
//! # The exchange
//!
//! `POST {exchange_url}` (`https://<registry host>/oauth2/exchange`) with
//! `grant_type=access_token`, `service=<registry host>`, `tenant` and
//! `access_token`. The tenant is the entry's or the caller's, else the
//! access token's `tid` claim, else what `az` says. The answer's
//! `refresh_token` is the secret, with the username
//! `00000000-0000-0000-0000-000000000000` (the null GUID tells the registry
//! it is a refresh token).
//!
//! # Lifetime
//!
//! The token expires at the refresh token's `exp` claim (read without
//! checking the signature; the registry checks it). No lifetime is assumed:
//! a refresh token without a readable `exp` is a permanent error. Each
//! refresh runs the whole chain and the exchange again; the Entra token is
//! not kept. One token per registry host and identity ([`Source::cache_key`]).
//!
//! # Errors
//!
//! Entra ID's 400 and 401 are permanent; `invalid_client` and
//! `unauthorized_client` say the credentials are invalid. The `AADSTS`
//! code and the clipped description are quoted, with the secret and the
//! assertion cut out. At the exchange, 401 and 403 say to give the identity
//! the AcrPull role, 404 asks whether the host is an ACR login server. A
//! 429 anywhere is transient, with its `Retry-After`; 5xx, a refused
//! connection and a timeout are transient. No message quotes a token, a
//! client secret or an assertion; requests are bounded by
//! [`REQUEST_TIMEOUT`], the fetch by [`FETCH_TIMEOUT`], answers by
//! [`MAX_ANSWER`].
//!
//! # Not supported
//!
//! App Service and Functions managed identity (`IDENTITY_ENDPOINT` /
//! `IDENTITY_HEADER`), Azure Arc, Cloud Shell, certificate credentials of a
//! service principal, the admin user (username and password: store them
//! with `docker login`), repository-scoped tokens, and the deprecated
//! exchange grants.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request};
use regent_shared::Secret;
use regent_shared::registry::RegistryKey;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::cli::{self, CliError};
use super::http::{BadUrl, Body, HttpError, Reply, endpoint_url, form};
use super::{BoxFuture, Context, Descriptor, Source, SourceError, SourceRequest, Token, text};
use crate::named_secrets;

/// `source = "acr"`, and zero config for `*.azurecr.{io,cn,us}`.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "acr",
    from_settings: Some(|settings| Ok(Arc::new(Acr::from_settings(settings)?))),
    detect: Some(|key| detect(key).map(|s| Arc::new(s) as Arc<dyn Source>)),
    feature: Some("acr"),
};

pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
pub const DEFAULT_IMDS: &str = "http://169.254.169.254";
/// The agent's variable that moves the managed-identity endpoint (as
/// azure-identity reads it).
pub const IMDS_ENV: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
/// The audience of ACR, as a resource (IMDS, az) and as a scope (Entra ID).
pub const RESOURCE: &str = "https://containerregistry.azure.net";
pub const SCOPE: &str = "https://containerregistry.azure.net/.default";
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const IMDS_API_VERSION: &str = "2018-02-01";
/// The username of an ACR refresh token.
pub const USERNAME: &str = "00000000-0000-0000-0000-000000000000";
/// The agent's variable that names the Azure CLI (set and empty: the step
/// is off); unset, `az` on the agent's `PATH`.
pub const AZ_ENV: &str = "REGENT_AZ";
/// The caller's variables the source is given.
pub const CALLER_ENV: &[&str] = &[
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_CONFIG_DIR",
];
/// The login-server suffixes detected: public Azure, Azure China, Azure US
/// Government.
pub const SUFFIXES: &[&str] = &[".azurecr.io", ".azurecr.cn", ".azurecr.us"];

/// One request to Entra ID or the registry.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The managed-identity endpoint, which is not there off Azure.
pub const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an endpoint that did not answer is believed absent.
pub const IMDS_ABSENT_FOR: Duration = Duration::from_secs(300);
/// `az account get-access-token`.
pub const AZ_TIMEOUT: Duration = Duration::from_secs(15);
/// The whole fetch: the chain and the exchange, below the helper's 30 s.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(25);
/// The largest answer read, and the most `az` may print.
pub const MAX_ANSWER: usize = 64 << 10;
/// The largest federated token file read.
const MAX_TOKEN_FILE: u64 = 64 << 10;
/// The longest tenant or client id accepted.
const MAX_ID: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    // Values rather than types, so that a wrong type is refused naming its
    // setting, and a string `client_secret` without quoting it (it would
    // be the secret).
    tenant_id: Option<toml::Value>,
    client_id: Option<toml::Value>,
    client_secret: Option<toml::Value>,
    authority_url: Option<toml::Value>,
    exchange_url: Option<toml::Value>,
}

/// The hosts detected: one label before an ACR suffix.
pub fn is_login_server(host: &str) -> bool {
    SUFFIXES.iter().any(|suffix| {
        host.strip_suffix(suffix).is_some_and(|name| {
            let mut bytes = name.bytes();
            name.len() <= 63
                && bytes
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
    })
}

/// The zero-config source for ACR login servers.
pub fn detect(key: &RegistryKey) -> Option<Acr> {
    is_login_server(key.host()).then(Acr::default)
}

/// The settings of one entry, checked.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Acr {
    tenant_id: Option<String>,
    client_id: Option<String>,
    /// The name of the secret holding the client secret.
    client_secret: Option<String>,
    /// Without a trailing `/`.
    authority_url: Option<String>,
    exchange_url: Option<String>,
}

/// How the Entra ID token was obtained: what messages name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Way {
    ServicePrincipal { client: String, secret: String },
    Workload { client: String, file: String },
    ManagedIdentity { client: Option<String> },
    AzureCli,
}

impl Way {
    fn describe(&self) -> String {
        match self {
            Way::ServicePrincipal { client, .. } => format!("service principal {client}"),
            Way::Workload { client, .. } => format!("workload identity {client}"),
            Way::ManagedIdentity { client: Some(c) } => format!("managed identity {c}"),
            Way::ManagedIdentity { client: None } => "the managed identity".to_owned(),
            Way::AzureCli => "the Azure CLI login".to_owned(),
        }
    }

    /// What to check when Entra ID refuses the credentials.
    fn credentials_hint(&self) -> String {
        match self {
            Way::ServicePrincipal { secret, .. } => format!(
                "check `tenant_id`, `client_id` and the client secret in the secret {secret:?} \
                 (`regent secret set {secret}`; Entra ID, App registrations, Certificates & \
                 secrets)"
            ),
            Way::Workload { file, .. } => format!(
                "check AZURE_TENANT_ID, AZURE_CLIENT_ID and that the application has a \
                 federated credential for the issuer and subject of the token in {file}"
            ),
            Way::ManagedIdentity { .. } => {
                "check `client_id` and the identities assigned to this machine".to_owned()
            }
            Way::AzureCli => "run `az login`".to_owned(),
        }
    }
}

/// An Entra ID access token and what came with it.
struct Entra {
    token: Zeroizing<String>,
    way: Way,
    /// The tenant the step knew (configured, the caller's, or `az`'s).
    tenant: Option<String>,
    /// From `az` only: its `tenant`, the last resort.
    az_tenant: Option<String>,
}

/// The steps of the chain.
#[derive(Clone, Copy)]
enum Link {
    ServicePrincipal,
    WorkloadIdentity,
    ManagedIdentity,
    AzureCli,
}

/// The order they are tried in.
const CHAIN: [Link; 4] = [
    Link::ServicePrincipal,
    Link::WorkloadIdentity,
    Link::ManagedIdentity,
    Link::AzureCli,
];

/// What one step of the chain did.
enum Step {
    /// It applied: its token, or why it failed (which ends the chain).
    Applied(Result<Entra, SourceError>),
    /// It does not apply here; why, for the message when nothing applies.
    Skipped(Option<String>),
}

/// Where the token is for, resolved from the request.
struct Target {
    /// The registry host: `service` of the exchange, and what messages name.
    host: String,
    exchange_url: String,
}

impl Acr {
    pub fn from_settings(settings: toml::Table) -> Result<Acr, String> {
        let s: Settings = toml::Value::Table(settings)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().trim().to_owned())?;
        let tenant_id = string("tenant_id", s.tenant_id)?
            .map(|t| check_id("tenant_id", &t, is_tenant).map(|()| t))
            .transpose()?;
        let client_id = string("client_id", s.client_id)?
            .map(|c| check_id("client_id", &c, is_client).map(|()| c))
            .transpose()?;
        let client_secret = s.client_secret.map(secret_name).transpose()?;
        if client_secret.is_some() && (tenant_id.is_none() || client_id.is_none()) {
            return Err(
                "`client_secret` needs `tenant_id` and `client_id` too (the service \
                 principal's tenant and application (client) ID)"
                    .into(),
            );
        }
        let authority_url = string("authority_url", s.authority_url)?
            .map(|u| url_setting("authority_url", &u, DEFAULT_AUTHORITY))
            .transpose()?;
        let exchange_url = string("exchange_url", s.exchange_url)?
            .map(|u| {
                url_setting(
                    "exchange_url",
                    &u,
                    "https://myreg.azurecr.io/oauth2/exchange",
                )
            })
            .transpose()?;
        Ok(Acr {
            tenant_id,
            client_id,
            client_secret,
            authority_url,
            exchange_url,
        })
    }

    fn target(&self, key: &RegistryKey) -> Target {
        let host = key.host().to_owned();
        let exchange_url = self
            .exchange_url
            .clone()
            .unwrap_or_else(|| match key.port() {
                Some(port) => format!("https://{host}:{port}/oauth2/exchange"),
                None => format!("https://{host}/oauth2/exchange"),
            });
        Target { host, exchange_url }
    }

    /// The tenant of the entry, else the caller's.
    fn tenant(&self, req: &SourceRequest) -> Option<String> {
        self.tenant_id.clone().or_else(|| {
            req.env
                .get("AZURE_TENANT_ID")
                .filter(|t| is_tenant(t))
                .map(str::to_owned)
        })
    }

    /// The Entra ID authority of the service principal: `authority_url` or
    /// the default, never the caller's `AZURE_AUTHORITY_HOST` (a caller
    /// must not be able to send the entry's client secret elsewhere).
    fn sp_authority(&self) -> String {
        self.authority_url
            .clone()
            .unwrap_or_else(|| DEFAULT_AUTHORITY.to_owned())
    }

    /// The Entra ID authority of a caller's workload identity:
    /// `authority_url`, the caller's `AZURE_AUTHORITY_HOST`, or the default.
    fn authority(&self, req: &SourceRequest, what: &str) -> Result<String, SourceError> {
        if let Some(url) = &self.authority_url {
            return Ok(url.clone());
        }
        match req.env.get("AZURE_AUTHORITY_HOST") {
            None => Ok(DEFAULT_AUTHORITY.to_owned()),
            Some(raw) => url_setting("AZURE_AUTHORITY_HOST", raw, DEFAULT_AUTHORITY).map_err(|e| {
                SourceError::permanent(format!(
                    "{what}: the caller's {e}; fix or unset AZURE_AUTHORITY_HOST, or set \
                     `authority_url` in the [[registry]] entry"
                ))
            }),
        }
    }

    async fn run(&self, req: &SourceRequest, ctx: &Context) -> Result<Token, SourceError> {
        let target = self.target(&req.key);
        let what = format!("ACR {}", target.host);
        let entra = self.entra_token(req, ctx, &what).await?;
        let tenant = entra
            .tenant
            .clone()
            .or_else(|| jwt_tid(&entra.token))
            .or_else(|| entra.az_tenant.clone());
        tracing::debug!(
            registry = %target.host,
            identity = %entra.way.describe(),
            tenant = tenant.as_deref().unwrap_or("-"),
            "Entra ID token obtained; exchanging it"
        );
        self.exchange(ctx, &target, &entra, tenant.as_deref(), &what)
            .await
    }

    /// The chain: the first step that applies gives the token.
    async fn entra_token(
        &self,
        req: &SourceRequest,
        ctx: &Context,
        what: &str,
    ) -> Result<Entra, SourceError> {
        let mut skipped = Vec::new();
        for link in CHAIN {
            let outcome = match link {
                Link::ServicePrincipal => self.service_principal(ctx, what).await,
                Link::WorkloadIdentity => self.workload_identity(req, ctx, what).await,
                Link::ManagedIdentity => self.managed_identity(ctx, what).await,
                Link::AzureCli => self.azure_cli(req, ctx, what).await,
            };
            match outcome {
                Step::Applied(result) => return result,
                Step::Skipped(why) => skipped.extend(why),
            }
        }
        let why = if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join("; "))
        };
        Err(SourceError::permanent(format!(
            "{what}: no Azure identity to get a token with{why}; configure one of: a service \
             principal (`tenant_id`, `client_id` and `client_secret = {{ secret = \"NAME\" }}` \
             in the [[registry]] entry), workload identity (AZURE_FEDERATED_TOKEN_FILE, \
             AZURE_TENANT_ID and AZURE_CLIENT_ID in the caller's environment), a managed \
             identity (on Azure), or the Azure CLI (`az login` as this user)"
        )))
    }

    /// 1: the entry's service principal.
    async fn service_principal(&self, ctx: &Context, what: &str) -> Step {
        let (Some(tenant), Some(client), Some(name)) =
            (&self.tenant_id, &self.client_id, &self.client_secret)
        else {
            return Step::Skipped(None);
        };
        let way = Way::ServicePrincipal {
            client: client.clone(),
            secret: name.clone(),
        };
        let result = async {
            let authority = self.sp_authority();
            let secret = ctx
                .named_secret(
                    &format!("{what}: "),
                    name,
                    "`client_secret` in the config",
                    &format!(
                        "store the service principal's client secret with `regent secret set \
                         {name}`"
                    ),
                )
                .await?;
            let body = form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", secret.expose()),
                ("scope", SCOPE),
            ]);
            let token =
                entra_request(ctx, &authority, tenant, body, &way, secret.expose(), what).await?;
            Ok(Entra {
                token,
                way: way.clone(),
                tenant: Some(tenant.clone()),
                az_tenant: None,
            })
        };
        Step::Applied(result.await)
    }

    /// 2: the caller's federated token file.
    async fn workload_identity(&self, req: &SourceRequest, ctx: &Context, what: &str) -> Step {
        let Some(file) = req.env.get("AZURE_FEDERATED_TOKEN_FILE") else {
            return Step::Skipped(None);
        };
        let client = self.client_id.clone().or_else(|| {
            req.env
                .get("AZURE_CLIENT_ID")
                .filter(|c| is_client(c))
                .map(str::to_owned)
        });
        let (Some(tenant), Some(client)) = (self.tenant(req), client) else {
            return Step::Skipped(Some(
                "AZURE_FEDERATED_TOKEN_FILE is set, but without a valid AZURE_TENANT_ID and \
                 AZURE_CLIENT_ID (or `tenant_id` and `client_id`)"
                    .to_owned(),
            ));
        };
        let way = Way::Workload {
            client: client.clone(),
            file: file.to_owned(),
        };
        let result = async {
            let authority = self.authority(req, what)?;
            let assertion = read_token_file(Path::new(file)).await.map_err(|e| {
                SourceError::permanent(format!(
                    "{what}: cannot read the federated token file {file} \
                     (AZURE_FEDERATED_TOKEN_FILE of the caller): {e}"
                ))
            })?;
            let body = form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &client),
                ("scope", SCOPE),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &assertion),
            ]);
            let token =
                entra_request(ctx, &authority, &tenant, body, &way, &assertion, what).await?;
            Ok(Entra {
                token,
                way: way.clone(),
                tenant: Some(tenant.clone()),
                az_tenant: None,
            })
        };
        Step::Applied(result.await)
    }

    /// 3: the machine's managed identity.
    async fn managed_identity(&self, ctx: &Context, what: &str) -> Step {
        let base = match std::env::var(IMDS_ENV) {
            Ok(v) if !v.trim().is_empty() => v.trim().trim_end_matches('/').to_owned(),
            _ => DEFAULT_IMDS.to_owned(),
        };
        self.managed_identity_at(&base, ctx, what).await
    }

    /// 3, at the endpoint `base`.
    async fn managed_identity_at(&self, base: &str, ctx: &Context, what: &str) -> Step {
        if imds_absent(base) {
            return Step::Skipped(Some(format!(
                "no managed identity endpoint at {base} (it did not answer within the last {} \
                 minutes)",
                IMDS_ABSENT_FOR.as_secs() / 60
            )));
        }
        let way = Way::ManagedIdentity {
            client: self.client_id.clone(),
        };
        let mut query = vec![("api-version", IMDS_API_VERSION), ("resource", RESOURCE)];
        if let Some(client) = &self.client_id {
            query.push(("client_id", client));
        }
        let url = format!(
            "{base}/metadata/identity/oauth2/token?{}",
            form(&query).as_str()
        );
        let req = match Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header("Metadata", "true")
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("regent/", env!("CARGO_PKG_VERSION")))
            .body(Body::default())
        {
            Ok(req) => req,
            Err(_) => {
                return Step::Applied(Err(SourceError::permanent(format!(
                    "{what}: the agent's {IMDS_ENV} {base:?} is not a URL (like {DEFAULT_IMDS:?})"
                ))));
            }
        };
        let reply = match ctx.http.send(req, IMDS_TIMEOUT, MAX_ANSWER).await {
            Ok(reply) => reply,
            Err(e @ (HttpError::TimedOut(_) | HttpError::Exchange(_))) => {
                tracing::debug!(%base, error = %e, "no managed identity endpoint");
                set_imds_absent(base, true);
                return Step::Skipped(Some(format!("no managed identity endpoint at {base}: {e}")));
            }
            Err(e) => {
                return Step::Applied(Err(SourceError::permanent(format!(
                    "{what}: the managed identity endpoint {base}: {e}"
                ))));
            }
        };
        set_imds_absent(base, false);
        let status = reply.status;
        if status.is_success() {
            return Step::Applied(
                token_answer(&reply, "the managed identity endpoint", what).map(|token| Entra {
                    token,
                    way,
                    tenant: None,
                    az_tenant: None,
                }),
            );
        }
        let said = oauth_said(&reply, &[]);
        let error = match status.as_u16() {
            // No identity assigned (or not the one asked for): azure-identity
            // goes on to the next credential too.
            400 => return Step::Skipped(Some(format!("no managed identity at {base}: {said}"))),
            429 => with_retry_after(
                SourceError::transient(format!(
                    "{what}: the managed identity endpoint {base} is throttling ({said}); \
                     retried with backoff"
                )),
                &reply.headers,
            ),
            404 | 410 | 500..=599 => SourceError::transient(format!(
                "{what}: endpoint unreachable: the managed identity endpoint {base} failed \
                 ({said}); retried with backoff"
            )),
            _ => SourceError::permanent(format!(
                "{what}: the managed identity endpoint {base} refused {} ({said}); {}",
                way.describe(),
                way.credentials_hint()
            )),
        };
        Step::Applied(Err(error))
    }

    /// 4: `az account get-access-token`.
    async fn azure_cli(&self, req: &SourceRequest, ctx: &Context, what: &str) -> Step {
        let Some(az) = cli::Cli::from_env(AZ_ENV, "az") else {
            return Step::Skipped(Some(format!(
                "the Azure CLI step is off ({AZ_ENV} is set and empty)"
            )));
        };
        let tenant = self.tenant(req);
        let mut args = vec![
            "account",
            "get-access-token",
            "--resource",
            RESOURCE,
            "--output",
            "json",
        ];
        if let Some(t) = &tenant {
            args.extend(["--tenant", t]);
        }
        let mut env: Vec<(&str, &OsStr)> = Vec::new();
        if let Some(dir) = req.env.get("AZURE_CONFIG_DIR") {
            env.push(("AZURE_CONFIG_DIR", OsStr::new(dir)));
        }
        let out = match cli::run(&az.program, &args, &env, AZ_TIMEOUT, MAX_ANSWER).await {
            Ok(out) => out,
            Err(CliError::NotFound(_)) if !az.explicit => {
                return Step::Skipped(Some("`az` is not on the agent's PATH".to_owned()));
            }
            Err(e @ CliError::NotFound(_)) => {
                return Step::Applied(Err(SourceError::permanent(format!(
                    "{what}: {AZ_ENV} names an Azure CLI that cannot be run: {e}; fix the \
                     variable in the agent's environment, or unset it"
                ))));
            }
            Err(e @ (CliError::TimedOut(..) | CliError::Io(..))) => {
                return Step::Applied(Err(SourceError::transient(format!(
                    "{what}: {e} (`az account get-access-token`); retried with backoff"
                ))));
            }
            Err(e) => return Step::Applied(Err(SourceError::permanent(format!("{what}: {e}")))),
        };
        if !out.status.success() {
            return Step::Applied(Err(SourceError::permanent(format!(
                "{what}: `az account get-access-token` failed ({}); run `az login`{}",
                out.reason(),
                match req.env.get("AZURE_CONFIG_DIR") {
                    Some(dir) => format!(" with AZURE_CONFIG_DIR={dir}"),
                    None => String::new(),
                }
            ))));
        }
        let now = ctx.clock.now();
        Step::Applied(
            parse_az(&out.stdout, now)
                .map(|az| Entra {
                    token: az.token,
                    way: Way::AzureCli,
                    tenant,
                    az_tenant: az.tenant,
                })
                .map_err(|why| {
                    SourceError::permanent(format!(
                        "{what}: `az account get-access-token` {why}; run `az login`, or \
                         update the Azure CLI"
                    ))
                }),
        )
    }

    /// The exchange at the registry: the refresh token.
    async fn exchange(
        &self,
        ctx: &Context,
        target: &Target,
        entra: &Entra,
        tenant: Option<&str>,
        what: &str,
    ) -> Result<Token, SourceError> {
        let mut pairs = vec![
            ("grant_type", "access_token"),
            ("service", target.host.as_str()),
        ];
        if let Some(t) = tenant {
            pairs.push(("tenant", t));
        }
        pairs.push(("access_token", entra.token.as_str()));
        let url = &target.exchange_url;
        let reply = post_form(ctx, url, form(&pairs))
            .await
            .map_err(|e| unreachable(what, url, &e))?;
        let status = reply.status;
        let said = oauth_said(&reply, &[entra.token.as_str()]);
        let identity = entra.way.describe();
        let host = &target.host;
        match status.as_u16() {
            200 => {}
            401 | 403 => {
                return Err(SourceError::permanent(format!(
                    "{what}: unauthorized for this registry: it refused the token of {identity} \
                     ({said}); give the identity the AcrPull role on {host} (`az role \
                     assignment create --role AcrPull --assignee <client id> --scope <registry \
                     id>`)"
                )));
            }
            404 => {
                return Err(SourceError::permanent(format!(
                    "{what}: {url} answered 404: is {host} an ACR login server? check \
                     `exchange_url`"
                )));
            }
            429 => {
                return Err(with_retry_after(
                    SourceError::transient(format!(
                        "{what}: the registry is throttling the token exchange ({said}); \
                         retried with backoff"
                    )),
                    &reply.headers,
                ));
            }
            500..=599 => {
                return Err(SourceError::transient(format!(
                    "{what}: endpoint unreachable: the token exchange at {url} failed ({said}); \
                     retried with backoff"
                )));
            }
            _ => {
                return Err(SourceError::permanent(format!(
                    "{what}: the registry refused the token exchange for {identity} ({said}); \
                     check `tenant_id` and `exchange_url`"
                )));
            }
        }
        #[derive(Deserialize)]
        struct Answer {
            refresh_token: Option<String>,
        }
        let token = serde_json::from_slice::<Answer>(&reply.body)
            .ok()
            .and_then(|a| a.refresh_token)
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .ok_or_else(|| {
                SourceError::permanent(format!(
                    "{what}: the token exchange at {url} answered 200 without a \
                     `refresh_token`; check `exchange_url`"
                ))
            })?;
        let expires_at = jwt_exp(token.expose()).ok_or_else(|| {
            SourceError::permanent(format!(
                "{what}: the registry's refresh token has no readable `exp` claim (it is not \
                 a JWT with an expiry), so its lifetime is unknown; check `exchange_url`"
            ))
        })?;
        tracing::debug!(registry = %host, identity = %identity, "ACR refresh token obtained");
        Ok(Token {
            username: USERNAME.to_owned(),
            secret: token,
            expires_at: Some(expires_at),
        })
    }
}

impl Source for Acr {
    fn name(&self) -> &'static str {
        "acr"
    }

    fn cache_key(&self, req: &SourceRequest) -> String {
        // A refresh token is good for one registry only.
        format!(
            "{}:{}:caller={}",
            self.target(&req.key).host,
            super::fingerprint(self),
            super::identity_digest(&req.env, |name| CALLER_ENV.contains(&name))
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
                    "ACR {}: no token within {}s; are Entra ID and the registry reachable?",
                    req.key.host(),
                    FETCH_TIMEOUT.as_secs()
                )
            })
            .await
        })
    }
}

/// The managed-identity endpoint that did not answer last, and until when
/// that is believed: off Azure, a fetch pays [`IMDS_TIMEOUT`] once in a
/// while, not every time.
static IMDS_ABSENT: Mutex<Option<(String, Instant)>> = Mutex::new(None);

fn imds_absent(base: &str) -> bool {
    let memo = IMDS_ABSENT.lock().unwrap_or_else(|p| p.into_inner());
    memo.as_ref()
        .is_some_and(|(b, until)| b == base && Instant::now() < *until)
}

fn set_imds_absent(base: &str, absent: bool) {
    let mut memo = IMDS_ABSENT.lock().unwrap_or_else(|p| p.into_inner());
    *memo = absent.then(|| (base.to_owned(), Instant::now() + IMDS_ABSENT_FOR));
}

/// `e` with the `Retry-After` of an answer, if it has one.
fn with_retry_after(e: SourceError, headers: &HeaderMap) -> SourceError {
    match text::retry_after(headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok())) {
        Some(after) => e.retry_after(after),
        None => e,
    }
}

/// The token request to Entra ID; `hide` is the secret or assertion sent,
/// cut out of anything quoted.
async fn entra_request(
    ctx: &Context,
    authority: &str,
    tenant: &str,
    form: Zeroizing<String>,
    way: &Way,
    hide: &str,
    what: &str,
) -> Result<Zeroizing<String>, SourceError> {
    let url = format!("{authority}/{tenant}/oauth2/v2.0/token");
    let reply = post_form(ctx, &url, form)
        .await
        .map_err(|e| unreachable(what, &url, &e))?;
    if reply.status.is_success() {
        return token_answer(&reply, "Entra ID", what);
    }
    Err(entra_refusal(&reply, way, tenant, hide, what))
}

/// The error for an Entra ID answer that is not a token.
fn entra_refusal(reply: &Reply, way: &Way, tenant: &str, hide: &str, what: &str) -> SourceError {
    let said = oauth_said(reply, &[hide]);
    let identity = way.describe();
    match reply.status.as_u16() {
        400 | 401 => {
            let error = oauth_error(&reply.body).map(|e| e.0).unwrap_or_default();
            if matches!(error.as_str(), "invalid_client" | "unauthorized_client") {
                SourceError::permanent(format!(
                    "{what}: credentials invalid: Entra ID refused {identity} ({said}); {}",
                    way.credentials_hint()
                ))
            } else {
                SourceError::permanent(format!(
                    "{what}: Entra ID refused the token request of {identity} in tenant \
                     {tenant} ({said}); check the tenant, `authority_url` and {}",
                    way.credentials_hint()
                ))
            }
        }
        429 => with_retry_after(
            SourceError::transient(format!(
                "{what}: Entra ID is throttling token requests ({said}); retried with backoff"
            )),
            &reply.headers,
        ),
        500..=599 => SourceError::transient(format!(
            "{what}: endpoint unreachable: Entra ID failed ({said}); retried with backoff"
        )),
        _ => SourceError::permanent(format!(
            "{what}: Entra ID answered {said} instead of a token; check `authority_url`"
        )),
    }
}

fn unreachable(what: &str, url: &str, e: &HttpError) -> SourceError {
    if e.is_transient() {
        SourceError::transient(format!(
            "{what}: endpoint unreachable: {url}: {e} (retried with backoff)"
        ))
    } else {
        SourceError::permanent(format!("{what}: no answer from {url}: {e}"))
    }
}

/// `POST url` with a form body, which is wiped once sent.
async fn post_form(ctx: &Context, url: &str, form: Zeroizing<String>) -> Result<Reply, HttpError> {
    let body = Bytes::from_owner(WipedBody(form));
    let req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, concat!("regent/", env!("CARGO_PKG_VERSION")))
        .body(Body::new(body))
        .map_err(|e| HttpError::Exchange(format!("cannot build the request: {e}")))?;
    ctx.http.send(req, REQUEST_TIMEOUT, MAX_ANSWER).await
}

/// A request body that is zeroed when hyper is done with it.
struct WipedBody(Zeroizing<String>);

impl AsRef<[u8]> for WipedBody {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The `access_token` of a token answer (Entra ID's or IMDS's).
fn token_answer(reply: &Reply, from: &str, what: &str) -> Result<Zeroizing<String>, SourceError> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: Option<String>,
        #[serde(default, deserialize_with = "seconds")]
        expires_in: Option<u64>,
    }
    let answer = serde_json::from_slice::<Answer>(&reply.body).ok();
    let Some((token, expires_in)) = answer.and_then(|a| Some((a.access_token?, a.expires_in)))
    else {
        return Err(SourceError::permanent(format!(
            "{what}: the answer of {from} ({}) has no `access_token`",
            reply.status
        )));
    };
    tracing::debug!(
        from,
        expires_in_secs = expires_in,
        "Entra ID access token received"
    );
    Ok(Zeroizing::new(token))
}

/// Seconds as a number or as a string of digits (IMDS sends a string).
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

/// An OAuth error answer's `error` and `error_description`.
fn oauth_error(body: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Error {
        error: Option<String>,
        error_description: Option<String>,
        /// The registry's form: `{"errors":[{"code":…,"message":…}]}`.
        errors: Option<Vec<RegistryError>>,
    }
    #[derive(Deserialize)]
    struct RegistryError {
        code: Option<String>,
        message: Option<String>,
    }
    let e: Error = serde_json::from_slice(body).ok()?;
    if let Some(error) = e.error {
        return Some((error, e.error_description.unwrap_or_default()));
    }
    let first = e.errors?.into_iter().next()?;
    Some((
        first.code.unwrap_or_default(),
        first.message.unwrap_or_default(),
    ))
}

/// What an error answer says, for a message: the status, the error, the
/// AADSTS code and the description up to its trace ids, clipped, with
/// every string of `hide` cut out. Not quoted when it is not OAuth's JSON.
fn oauth_said(reply: &Reply, hide: &[&str]) -> String {
    let code = reply.status.as_u16();
    let Some((error, description)) = oauth_error(&reply.body) else {
        return format!("HTTP {code}");
    };
    // "AADSTS7000215: Invalid client secret provided. … Trace ID: … Correlation ID: …"
    let mut description = description
        .split(" Trace ID:")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut error = error;
    for h in hide.iter().filter(|h| h.len() >= 4) {
        description = description.replace(h, "[redacted]");
        error = error.replace(h, "[redacted]");
    }
    let said = match (error.is_empty(), description.is_empty()) {
        (true, true) => return format!("HTTP {code}"),
        (false, true) => error,
        (true, false) => description,
        (false, false) => format!("{error}: {description}"),
    };
    format!("{code} {}", text::clip(&said))
}

/// The claims of a JWT, read without checking its signature.
fn jwt_claims(jwt: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut parts = jwt.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?,
    );
    serde_json::from_slice(&bytes).ok()
}

/// A JWT's `exp`.
fn jwt_exp(jwt: &str) -> Option<SystemTime> {
    let exp = jwt_claims(jwt)?.get("exp")?.as_f64()?;
    (exp.is_finite() && exp > 0.0).then(|| UNIX_EPOCH + Duration::from_secs(exp as u64))
}

/// A JWT's `tid` (the tenant of an Entra ID token).
fn jwt_tid(jwt: &str) -> Option<String> {
    let claims = jwt_claims(jwt)?;
    let tid = claims.get("tid")?.as_str()?;
    is_tenant(tid).then(|| tid.to_owned())
}

/// What `az account get-access-token` printed.
struct AzToken {
    token: Zeroizing<String>,
    tenant: Option<String>,
}

/// Reads `az`'s JSON; refuses a token that expired already. The error is
/// what is wrong, never what it printed.
fn parse_az(stdout: &[u8], now: SystemTime) -> Result<AzToken, String> {
    #[derive(Deserialize)]
    struct Out {
        #[serde(rename = "accessToken")]
        access_token: Option<String>,
        /// Local time, "2026-12-03 10:00:00.000000".
        #[serde(rename = "expiresOn")]
        expires_on_local: Option<String>,
        /// Unix seconds (az 2.54 and later).
        expires_on: Option<i64>,
        tenant: Option<String>,
    }
    let out: Out = serde_json::from_slice(stdout)
        .map_err(|_| "printed something that is not its JSON".to_owned())?;
    let token = out
        .access_token
        .filter(|t| !t.is_empty())
        .map(Zeroizing::new)
        .ok_or("printed no `accessToken`")?;
    let expires = match out.expires_on {
        Some(secs) if secs > 0 => Some(UNIX_EPOCH + Duration::from_secs(secs as u64)),
        _ => out.expires_on_local.as_deref().and_then(local_time),
    };
    if let Some(at) = expires
        && at <= now
    {
        return Err("printed a token that has expired".to_owned());
    }
    tracing::debug!(
        expires_in_secs = expires
            .and_then(|e| e.duration_since(now).ok())
            .map(|d| d.as_secs()),
        "Azure CLI access token received"
    );
    Ok(AzToken {
        token,
        tenant: out.tenant.filter(|t| is_tenant(t)),
    })
}

/// A local time as `az` prints it ("2026-12-03 10:00:00.000000").
fn local_time(s: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    let t = time::PrimitiveDateTime::parse(s.trim(), &format).ok()?;
    let secs = crate::sys::local_to_unix(t)?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

async fn read_token_file(path: &Path) -> Result<Zeroizing<String>, String> {
    if !path.is_absolute() {
        return Err("it is not an absolute path".into());
    }
    let bytes = super::read_secret_file(path, MAX_TOKEN_FILE).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| "it is not text".to_owned())?;
    let token = text.trim();
    if token.is_empty() {
        return Err("it is empty".into());
    }
    Ok(Zeroizing::new(token.to_owned()))
}

/// A tenant: a GUID or a domain name (`contoso.onmicrosoft.com`), or one
/// of the words Entra ID takes (`organizations`).
fn is_tenant(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A client (application) ID: a GUID.
fn is_client(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A setting that must be a string.
fn string(setting: &str, value: Option<toml::Value>) -> Result<Option<String>, String> {
    match value {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "`{setting}` must be a string, not {}",
            other.type_str()
        )),
    }
}

fn check_id(setting: &str, value: &str, ok: fn(&str) -> bool) -> Result<(), String> {
    if ok(value) {
        Ok(())
    } else {
        Err(format!(
            "`{setting}` {:?} is not an Entra ID identifier (a GUID like \
             \"00000000-0000-0000-0000-000000000000\"{})",
            text::clip(value),
            if setting == "tenant_id" {
                ", or a domain like \"contoso.onmicrosoft.com\""
            } else {
                ""
            }
        ))
    }
}

/// The secret name of `client_secret = { secret = "NAME" }`.
fn secret_name(value: toml::Value) -> Result<String, String> {
    const HOW: &str = "store the client secret with `regent secret set NAME` and write \
                       `client_secret = { secret = \"NAME\" }`";
    named_secrets::setting_ref("client_secret", "secret", value, HOW)
}

/// A URL setting checked: https, or http to a loopback host only; no
/// query, fragment or user info. Returned without a trailing `/`.
fn url_setting(setting: &str, raw: &str, example: &str) -> Result<String, String> {
    let url = raw.trim_end_matches('/');
    let bad = || format!("`{setting}` {raw:?} is not an https URL (like {example:?})");
    endpoint_url(url).map_err(|e| match e {
        BadUrl::Malformed => bad(),
        BadUrl::ClearText => format!(
            "`{setting}` {raw:?} is http:// to a host that is not loopback: Azure tokens would \
             cross the network in clear; use https:// (http:// is only for 127.0.0.1, ::1 and \
             localhost)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;
    use hyper::header::HeaderValue;
    use regent_shared::registry::canonical;

    fn build(s: &str) -> Result<Acr, String> {
        Acr::from_settings(toml::from_str(s).unwrap())
    }

    fn refused(s: &str) -> String {
        build(s).err().unwrap_or_else(|| panic!("accepted: {s}"))
    }

    const SP: &str = "tenant_id = \"aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee\"\n\
                      client_id = \"11111111-2222-3333-4444-555555555555\"\n";

    #[test]
    fn settings_are_read() {
        let acr = build(&format!("{SP}client_secret = {{ secret = \"acr-sp\" }}\n")).unwrap();
        assert_eq!(acr.client_secret.as_deref(), Some("acr-sp"));
        assert_eq!(
            acr.tenant_id.as_deref(),
            Some("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
        );
        assert_eq!(acr.authority_url, None);
        let key = canonical("myreg.azurecr.io").unwrap();
        assert_eq!(
            acr.target(&key).exchange_url,
            "https://myreg.azurecr.io/oauth2/exchange"
        );
        assert_eq!(acr.target(&key).host, "myreg.azurecr.io");
        let key = canonical("https://myreg.azurecr.io:8443/v2/").unwrap();
        assert_eq!(
            acr.target(&key).exchange_url,
            "https://myreg.azurecr.io:8443/oauth2/exchange"
        );
        assert_eq!(acr.target(&key).host, "myreg.azurecr.io");
        // Nothing at all, or ids alone (for the other steps), is fine.
        assert_eq!(build("").unwrap(), Acr::default());
        let acr = build(
            "tenant_id = \"contoso.onmicrosoft.com\"\n\
             authority_url = \"https://login.microsoftonline.us/\"\n\
             exchange_url = \"http://127.0.0.1:9/oauth2/exchange\"\n",
        )
        .unwrap();
        assert_eq!(
            acr.authority_url.as_deref(),
            Some("https://login.microsoftonline.us")
        );
        assert_eq!(
            acr.target(&key).exchange_url,
            "http://127.0.0.1:9/oauth2/exchange"
        );
        for loopback in [
            "http://127.0.0.1:8080",
            "http://[::1]:9",
            "http://localhost",
        ] {
            let r = build(&format!("authority_url = \"{loopback}\"\n"));
            assert!(r.is_ok(), "{loopback}: {:?}", r.err());
        }
    }

    #[test]
    fn settings_are_refused_with_the_way_out() {
        let inline = refused(&format!("{SP}client_secret = \"hunter2~Q8\"\n"));
        assert!(
            inline.contains("regent secret set") && inline.contains("`client_secret`"),
            "{inline}"
        );
        assert!(!inline.contains("hunter2"), "{inline}");
        let other = refused(&format!(
            "{SP}client_secret = {{ secret = \"a\", b = 1 }}\n"
        ));
        assert!(other.contains("{ secret = \"NAME\" }"), "{other}");
        let other = refused(&format!("{SP}client_secret = 42\n"));
        assert!(other.contains("{ secret = \"NAME\" }"), "{other}");
        let name = refused(&format!("{SP}client_secret = {{ secret = \"a b\" }}\n"));
        assert!(name.contains("not a valid secret name"), "{name}");
        let alone = refused("client_secret = { secret = \"acr-sp\" }\n");
        assert!(
            alone.contains("`tenant_id`") && alone.contains("`client_id`"),
            "{alone}"
        );
        for setting in ["authority_url", "exchange_url"] {
            for http in [
                "http://login.microsoftonline.com",
                "http://10.0.0.1:8080",
                "http://localhost.evil.example",
                "http://127.0.0.1.evil.example",
                "http://[::ffff:8.8.8.8]",
            ] {
                let e = refused(&format!("{setting} = \"{http}\"\n"));
                assert!(
                    e.contains("https://") && e.contains("loopback") && e.contains(setting),
                    "{http}: {e}"
                );
            }
            for bad in [
                "ftp://login.microsoftonline.com",
                "login.microsoftonline.com",
                "https://user:pw@login.microsoftonline.com",
                "https://login.microsoftonline.com/?x=1",
                "https://login.microsoftonline.com/#x",
                "",
            ] {
                let e = refused(&format!("{setting} = \"{bad}\"\n"));
                assert!(e.contains("is not an https URL"), "{bad}: {e}");
            }
        }
        let unknown = refused("tenant = \"x\"\n");
        assert!(unknown.contains("tenant"), "{unknown}");
        for bad in ["\"\"", "\"a/b\"", "\"a b\"", "\"../x\"", "1"] {
            let e = refused(&format!("tenant_id = {bad}\n"));
            assert!(e.contains("tenant_id"), "{bad}: {e}");
            let e = refused(&format!("client_id = {bad}\n"));
            assert!(e.contains("client_id"), "{bad}: {e}");
        }
        // A domain is a tenant, not a client.
        assert!(build("tenant_id = \"contoso.onmicrosoft.com\"\n").is_ok());
        assert!(build("client_id = \"contoso.onmicrosoft.com\"\n").is_err());
    }

    fn detected(raw: &str) -> bool {
        canonical(raw).ok().and_then(|k| detect(&k)).is_some()
    }

    #[test]
    fn login_servers_are_detected_anchored() {
        for good in [
            "myreg.azurecr.io",
            "MyReg.AzureCR.io",
            "https://myreg.azurecr.io/v2/",
            "myreg.azurecr.io:443",
            "myreg.azurecr.io:5000",
            "my-reg-abc123.azurecr.io",
            "0reg.azurecr.io",
            "myreg.azurecr.cn",
            "myreg.azurecr.us",
            // The trailing dot of a fully qualified name is dropped.
            "myreg.azurecr.io.",
        ] {
            assert!(detected(good), "{good}");
        }
        for bad in [
            "evil.azurecr.io.attacker.com",
            "azurecr.io",
            ".azurecr.io",
            "-reg.azurecr.io",
            "my_reg.azurecr.io",
            "a.b.azurecr.io",
            "myreg.westeurope.data.azurecr.io",
            "myregazurecr.io",
            "myreg.azurecr.iox",
            "myreg.azurecr.de",
            "myreg.azurecr.com",
            &format!("{}.azurecr.io", "a".repeat(64)),
            "docker.io",
        ] {
            assert!(!detected(bad), "{bad}");
            assert!(!is_login_server(bad), "{bad}");
        }
        assert!(is_login_server(&format!("{}.azurecr.io", "a".repeat(63))));
    }

    fn jwt(claims: serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64.encode(claims.to_string()),
            b64.encode(b"signature")
        )
    }

    #[test]
    fn jwt_claims_are_read_unverified() {
        let t = jwt(serde_json::json!({
            "exp": 1_796_212_800, "tid": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
            "aud": "myreg.azurecr.io"
        }));
        assert_eq!(
            jwt_exp(&t),
            Some(UNIX_EPOCH + Duration::from_secs(1_796_212_800))
        );
        assert_eq!(
            jwt_tid(&t).as_deref(),
            Some("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
        );
        // A float `exp`, padding left on.
        let b64 = base64::engine::general_purpose::URL_SAFE;
        let padded = format!("x.{}.y", b64.encode(br#"{"exp":1796212800.5}"#));
        assert_eq!(
            jwt_exp(&padded),
            Some(UNIX_EPOCH + Duration::from_secs(1_796_212_800))
        );
        let no_exp = jwt(serde_json::json!({ "tid": "t" }));
        assert_eq!(jwt_exp(&no_exp), None);
        assert_eq!(jwt_tid(&no_exp).as_deref(), Some("t"));
        for bad in [
            jwt(serde_json::json!({ "exp": "1796212800" })),
            jwt(serde_json::json!({ "exp": -5 })),
            "opaque-token".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            "a.!!!.c".to_owned(),
            format!(
                "a.{}.c",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[1]")
            ),
        ] {
            assert_eq!(jwt_exp(&bad), None, "{bad}");
            assert_eq!(jwt_tid(&bad), None, "{bad}");
        }
        // A tid that is no tenant is not used.
        assert_eq!(jwt_tid(&jwt(serde_json::json!({ "tid": "a/b" }))), None);
    }

    #[test]
    fn az_output_is_read_in_both_expiry_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_200_000);
        // Newer az: `expires_on` (Unix seconds) wins over the local time.
        let out = br#"{"accessToken":"eyJ0.hunter2.x","expiresOn":"2000-01-01 00:00:00.000000",
            "expires_on":1796212800,"subscription":"s","tenant":"aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
            "tokenType":"Bearer"}"#;
        let az = parse_az(out, now).unwrap();
        assert_eq!(az.token.as_str(), "eyJ0.hunter2.x");
        assert_eq!(
            az.tenant.as_deref(),
            Some("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
        );
        // Older az: only the local time.
        let old =
            br#"{"accessToken":"tok","expiresOn":"2026-12-03 10:00:00.000000","tenant":"t1"}"#;
        let az = parse_az(old, now).unwrap();
        assert_eq!(az.tenant.as_deref(), Some("t1"));
        let local = local_time("2026-12-03 10:00:00.000000").unwrap();
        let utc = UNIX_EPOCH + Duration::from_secs(1_796_292_000);
        let diff = local.duration_since(utc).unwrap_or_else(|e| e.duration());
        assert!(diff <= Duration::from_secs(15 * 3600), "{diff:?}");
        assert_eq!(
            local_time("2026-12-03 10:00:00"),
            Some(local),
            "without fractions"
        );
        assert_eq!(local_time("tomorrow"), None);
        // Expired, by either form.
        let e = parse_az(br#"{"accessToken":"tok","expires_on":1000}"#, now)
            .err()
            .unwrap();
        assert!(e.contains("expired"), "{e}");
        let e = parse_az(
            br#"{"accessToken":"tok","expiresOn":"2001-01-01 00:00:00.000000"}"#,
            now,
        )
        .err()
        .unwrap();
        assert!(e.contains("expired"), "{e}");
        for bad in [
            &br#"{"expires_on":1796212800}"#[..],
            br#"{"accessToken":""}"#,
            b"hunter2 is not json",
        ] {
            let e = parse_az(bad, now).err().unwrap();
            assert!(!e.contains("hunter2"), "{e}");
        }
        // A tenant that is not one is left out.
        let az = parse_az(br#"{"accessToken":"tok","tenant":"a b"}"#, now).unwrap();
        assert_eq!(az.tenant, None);
    }

    #[test]
    fn expires_in_is_a_number_or_a_string() {
        let reply = |body: &str| Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Zeroizing::new(body.as_bytes().to_vec()),
        };
        for body in [
            r#"{"access_token":"a","expires_in":"86399","token_type":"Bearer"}"#,
            r#"{"access_token":"a","expires_in":3599}"#,
            r#"{"access_token":"a"}"#,
        ] {
            let t = token_answer(&reply(body), "x", "ACR r").unwrap();
            assert_eq!(t.as_str(), "a", "{body}");
        }
        let e = token_answer(&reply(r#"{"expires_in":1}"#), "Entra ID", "ACR r")
            .err()
            .unwrap();
        assert!(e.is_permanent() && e.message.contains("access_token"));
    }

    fn answer(status: u16, body: serde_json::Value, headers: &[(&'static str, &str)]) -> Reply {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: h,
            body: Zeroizing::new(body.to_string().into_bytes()),
        }
    }

    #[test]
    fn entra_refusals_are_classified_and_quote_no_secret() {
        let way = Way::ServicePrincipal {
            client: "11111111-2222-3333-4444-555555555555".into(),
            secret: "acr-sp".into(),
        };
        let classify = |r: Reply| {
            let e = entra_refusal(&r, &way, "t1", "s3cr3t-value", "ACR myreg.azurecr.io");
            assert!(
                e.message.starts_with("ACR myreg.azurecr.io: "),
                "{}",
                e.message
            );
            assert!(!e.message.contains("s3cr3t-value"), "{}", e.message);
            e
        };
        let e = classify(answer(
            401,
            serde_json::json!({
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the \
                    secret being sent in the request is the client secret value, not the client \
                    secret ID, for a secret added to app 's3cr3t-value'. Trace ID: abc \
                    Correlation ID: def Timestamp: 2026-12-03 06:00:00Z",
                "error_codes": [7000215],
            }),
            &[],
        ));
        assert!(e.is_permanent());
        assert!(
            e.message.contains("credentials invalid")
                && e.message.contains("AADSTS7000215")
                && e.message.contains("regent secret set acr-sp"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("Trace ID"), "{}", e.message);
        let e = classify(answer(
            400,
            serde_json::json!({ "error": "unauthorized_client",
                "error_description": "AADSTS700016: Application with identifier 'x' was not found" }),
            &[],
        ));
        assert!(e.is_permanent() && e.message.contains("credentials invalid"));
        let e = classify(answer(
            400,
            serde_json::json!({ "error": "invalid_request",
                "error_description": "AADSTS90002: Tenant 't1' not found." }),
            &[],
        ));
        assert!(
            e.is_permanent() && e.message.contains("AADSTS90002") && e.message.contains("tenant"),
            "{}",
            e.message
        );
        let e = classify(answer(429, serde_json::json!({}), &[("retry-after", "30")]));
        assert!(!e.is_permanent());
        assert_eq!(e.retry_after, Some(Duration::from_secs(30)));
        let e = classify(answer(503, serde_json::json!({}), &[]));
        assert!(!e.is_permanent() && e.message.contains("endpoint unreachable"));
        // Not OAuth's JSON: not quoted.
        let html = Reply {
            status: StatusCode::BAD_REQUEST,
            headers: HeaderMap::new(),
            body: Zeroizing::new(b"<html>proxy s3cr3t-value</html>".to_vec()),
        };
        let e = classify(html);
        assert!(e.message.contains("HTTP 400") && !e.message.contains("proxy"));
        // A foreign message is one clipped line.
        let long = format!("AADSTS1: line one\nline two {}", "x".repeat(1000));
        let e = classify(answer(
            400,
            serde_json::json!({ "error": "invalid_scope", "error_description": long }),
            &[],
        ));
        assert!(
            !e.message.contains('\n') && e.message.len() < 1200,
            "{}",
            e.message
        );
    }

    #[test]
    fn the_registry_error_form_is_read() {
        let r = answer(
            401,
            serde_json::json!({ "errors": [{ "code": "UNAUTHORIZED", "message": "authentication required" }] }),
            &[],
        );
        assert_eq!(
            oauth_said(&r, &[]),
            "401 UNAUTHORIZED: authentication required"
        );
    }

    fn req(host: &str, env: &[(&str, &str)]) -> SourceRequest {
        let mut e = regent_shared::protocol::CallerEnv::default();
        for (k, v) in env {
            e.set(*k, *v);
        }
        SourceRequest {
            key: canonical(host).unwrap(),
            server_url: host.into(),
            env: e,
        }
    }

    #[test]
    fn cache_key_is_registry_settings_and_caller_identity() {
        let acr = build(&format!("{SP}client_secret = {{ secret = \"acr-sp\" }}\n")).unwrap();
        let a = acr.cache_key(&req("myreg.azurecr.io", &[]));
        assert!(a.starts_with("myreg.azurecr.io:"), "{a}");
        assert_eq!(a, acr.cache_key(&req("https://myreg.azurecr.io/", &[])));
        assert_ne!(a, acr.cache_key(&req("other.azurecr.io", &[])));
        let other = build(&format!("{SP}client_secret = {{ secret = \"acr-sp2\" }}\n")).unwrap();
        assert_ne!(a, other.cache_key(&req("myreg.azurecr.io", &[])));
        let one = acr.cache_key(&req(
            "myreg.azurecr.io",
            &[("AZURE_CLIENT_ID", "client-one")],
        ));
        let two = acr.cache_key(&req(
            "myreg.azurecr.io",
            &[("AZURE_CLIENT_ID", "client-two")],
        ));
        assert!(one != two && one != a);
        assert!(!one.contains("client-one"), "{one}");
        let file = acr.cache_key(&req(
            "myreg.azurecr.io",
            &[(
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/token",
            )],
        ));
        assert!(!file.contains("/var/run"), "{file}");
        assert_eq!(acr.caller_env(), CALLER_ENV);
    }

    #[test]
    fn the_authority_is_the_setting_then_the_callers_then_the_default() {
        let none = Acr::default();
        assert_eq!(
            none.authority(&req("r.azurecr.io", &[]), "w").unwrap(),
            DEFAULT_AUTHORITY
        );
        let env = [("AZURE_AUTHORITY_HOST", "https://login.chinacloudapi.cn/")];
        assert_eq!(
            none.authority(&req("r.azurecr.cn", &env), "w").unwrap(),
            "https://login.chinacloudapi.cn"
        );
        let set = build("authority_url = \"http://127.0.0.1:5\"\n").unwrap();
        assert_eq!(
            set.authority(&req("r.azurecr.cn", &env), "w").unwrap(),
            "http://127.0.0.1:5"
        );
        // The entry's client secret never goes where a caller says.
        let sp = build(&format!("{SP}client_secret = {{ secret = \"acr-sp\" }}\n")).unwrap();
        assert_eq!(sp.sp_authority(), DEFAULT_AUTHORITY);
        assert_eq!(set.sp_authority(), "http://127.0.0.1:5");
        let bad = [("AZURE_AUTHORITY_HOST", "http://evil.example")];
        let e = none.authority(&req("r.azurecr.io", &bad), "w").unwrap_err();
        assert!(e.is_permanent() && e.message.contains("AZURE_AUTHORITY_HOST"));
    }

    #[tokio::test]
    async fn a_relative_or_empty_token_file_is_refused() {
        let e = read_token_file(Path::new("token")).await.unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  \n").unwrap();
        assert!(read_token_file(&path).await.unwrap_err().contains("empty"));
        std::fs::write(&path, "eyJ.assertion.sig\n").unwrap();
        assert_eq!(
            read_token_file(&path).await.unwrap().as_str(),
            "eyJ.assertion.sig"
        );
        std::fs::write(&path, vec![b'a'; MAX_TOKEN_FILE as usize + 1]).unwrap();
        assert!(read_token_file(&path).await.unwrap_err().contains("larger"));
    }

    #[tokio::test]
    async fn an_imds_endpoint_that_did_not_answer_is_skipped_for_a_while() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let base = format!("http://127.0.0.1:{port}");
        let acr = Acr::default();
        let ctx = Context::without_secrets();
        let Step::Skipped(Some(first)) = acr.managed_identity_at(&base, &ctx, "ACR r").await else {
            panic!("a closed port is no managed identity");
        };
        assert!(first.contains("refused"), "{first}");
        let Step::Skipped(Some(again)) = acr.managed_identity_at(&base, &ctx, "ACR r").await else {
            panic!("a closed port is no managed identity");
        };
        assert!(
            again.contains("did not answer within the last 5 minutes"),
            "{again}"
        );
        // Another endpoint is asked.
        assert!(!imds_absent("http://127.0.0.1:1"));
        set_imds_absent(&base, false);
        assert!(!imds_absent(&base));
    }
}
