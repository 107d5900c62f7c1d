//! Where a credential comes from when it is not a stored login: token sources.
//!
//! A [`Source`] turns a registry key and the context of the request into a
//! [`Token`] (username, secret, optional expiry), or a [`SourceError`] that
//! says whether trying again later can help. Sources never cache: the refresh
//! engine ([`crate::refresh`]) caches one token per [`Source::cache_key`],
//! refreshes it ahead of expiry, and makes concurrent requests share one
//! fetch. Every fetch gets a [`Context`]: named secrets, the clock, and the
//! one HTTP client ([`http`]).
//!
//! # How to add a source
//!
//! One file here and one entry in [`SOURCES`]:
//!
//! 1. `sources/<name>.rs`: the `[[registry]]` settings as a struct with
//!    `#[serde(deny_unknown_fields)]`, a type that implements [`Source`],
//!    and `pub const DESCRIPTOR: Descriptor` with its name, its settings
//!    parser and, for zero-config hostnames, its detector. Messages go
//!    through [`text`] (printable, bounded); HTTP through [`Context::http`]
//!    (form bodies with `http::form`); time through [`Context::clock`]; the
//!    whole fetch is bounded with [`within`]; key and token files are read
//!    with [`read_secret_file`], named secrets with
//!    [`Context::named_secret`], a cloud CLI is run with [`cli`].
//! 2. A line in [`SOURCES`]: `<name>::DESCRIPTOR`. For a source behind a
//!    cargo feature, the `cfg`'d line and its `Descriptor::left_out` twin,
//!    so a build without it says so instead of "unknown source".
//!
//! The config parser ([`from_config`]), the list of names in its errors,
//! and hostname detection ([`detect`]) all read the table. Detection asks
//! each source's detector in table order and takes the first answer, so a
//! narrower detector goes before a broader one.
//!
//! Errors name the source and the registry and say what to do next. They
//! never carry a secret, and never anything a command printed on stdout.

#[cfg(feature = "acr")]
pub mod acr;
pub mod cli;
#[cfg(feature = "ecr")]
pub mod ecr;
pub mod env;
pub mod exec;
#[cfg(feature = "gcp")]
pub mod gcp;
#[cfg(feature = "github-app")]
pub mod github_app;
#[cfg(feature = "http")]
pub mod http;
pub mod text;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use regent_shared::Secret;
pub use regent_shared::protocol::CallerEnv;
use regent_shared::registry::RegistryKey;

use crate::clock::{Clock, SystemClock};

/// A boxed future, so that [`Source`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a source is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRequest {
    /// The canonical registry key (`registry::canonical`).
    pub key: RegistryKey,
    /// The server URL exactly as the client sent it.
    pub server_url: String,
    /// The caller's variables this source is given: those of
    /// [`Source::caller_env`] that the helper forwarded and are set.
    pub env: CallerEnv,
}

/// What a source gets of the caller's forwarded variables unless it asks
/// for more ([`Source::caller_env`]): the profile and region names, no
/// credential.
pub const CALLER_PROFILE_AND_REGION: &[&str] = &["AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"];

/// A credential a source produced.
pub struct Token {
    pub username: String,
    pub secret: Secret,
    /// When the registry stops accepting it (wall clock); `None`: it does
    /// not expire on its own.
    pub expires_at: Option<SystemTime>,
}

/// Whether an error can go away by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Access denied, bad credentials, bad configuration, output that does
    /// not parse: retrying gives the same answer. Never retried automatically.
    Permanent,
    /// Network trouble, 5xx, throttling, a timeout: retried with backoff.
    Transient,
    /// The entry does not apply to this request (the `env` source, with a
    /// variable the caller has not set): resolution goes on to the next
    /// step as if the entry were not there. Only per-request sources
    /// ([`Source::per_request`]) answer it.
    NotApplicable,
}

#[derive(Clone, Debug)]
pub struct SourceError {
    pub class: ErrorClass,
    /// One line for the user. Never a secret, never a command's stdout.
    pub message: String,
    /// The source was told when to come back (`Retry-After` and the like).
    pub retry_after: Option<Duration>,
}

impl SourceError {
    pub fn permanent(message: impl Into<String>) -> Self {
        SourceError {
            class: ErrorClass::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        SourceError {
            class: ErrorClass::Transient,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn not_applicable(message: impl Into<String>) -> Self {
        SourceError {
            class: ErrorClass::NotApplicable,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn is_permanent(&self) -> bool {
        self.class == ErrorClass::Permanent
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SourceError {}

/// Named secrets from regent's store (`regent secret set NAME`), for sources
/// whose settings refer to one by name instead of embedding it.
pub trait SecretLookup: Send + Sync {
    fn secret(&self, name: &str) -> BoxFuture<'_, Result<Option<Secret>, String>>;
}

/// No named secrets at all: for tests and for sources that need none.
pub struct NoSecrets;

impl SecretLookup for NoSecrets {
    fn secret(&self, _name: &str) -> BoxFuture<'_, Result<Option<Secret>, String>> {
        Box::pin(async { Ok(None) })
    }
}

/// What every fetch may use besides its request.
#[derive(Clone)]
pub struct Context {
    pub secrets: Arc<dyn SecretLookup>,
    /// The wall clock: expiry times, and claims such as a JWT's `iat`.
    pub clock: Arc<dyn Clock>,
    /// The one HTTP client, built on first use.
    #[cfg(feature = "http")]
    pub http: http::Http,
}

impl Context {
    /// The real clock and a fresh HTTP client.
    pub fn new(secrets: Arc<dyn SecretLookup>) -> Context {
        Context {
            secrets,
            clock: Arc::new(SystemClock),
            #[cfg(feature = "http")]
            http: http::Http::new(),
        }
    }

    pub fn without_secrets() -> Context {
        Context::new(Arc::new(NoSecrets))
    }

    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Context {
        Context { clock, ..self }
    }

    /// The named secret `name` that a setting refers to. `prefix` starts
    /// both messages (who asks, with its `: `, or nothing); `setting` says
    /// where the name was written and `how` how to set it. A store that
    /// cannot be read is transient, a secret that is not set permanent.
    pub async fn named_secret(
        &self,
        prefix: &str,
        name: &str,
        setting: &str,
        how: &str,
    ) -> Result<Secret, SourceError> {
        self.secrets
            .secret(name)
            .await
            .map_err(|e| {
                SourceError::transient(format!(
                    "{prefix}cannot read the secret {name:?}: {}",
                    text::clip(&e)
                ))
            })?
            .ok_or_else(|| {
                SourceError::permanent(format!(
                    "{prefix}the secret {name:?} ({setting}) is not set; {how}"
                ))
            })
    }
}

/// A way to obtain a registry credential.
pub trait Source: Send + Sync + 'static {
    /// `exec`, `ecr`, ...: shown by `regent ls`.
    fn name(&self) -> &'static str;

    /// What the token depends on: requests with equal cache keys share one
    /// token and one refresh. It must include everything that changes the
    /// answer (settings, the parts of the request the source uses) and
    /// nothing else: ECR keys on AWS identity and region, not registry id.
    /// The engine prefixes it with [`Source::name`]. Never a secret in it:
    /// hash what must be told apart.
    fn cache_key(&self, req: &SourceRequest) -> String;

    /// Which of the caller's forwarded variables
    /// (`protocol::FORWARDED_ENV`) this source is given in
    /// [`SourceRequest::env`]; the rest never reach it.
    fn caller_env(&self) -> &'static [&'static str] {
        CALLER_PROFILE_AND_REGION
    }

    /// Variables of the caller that this entry's settings name (the `env`
    /// source's `{ env = "NAME" }`), beyond `protocol::FORWARDED_ENV`: the
    /// helper is asked for them (`Response::NeedEnv`), and they reach this
    /// source only. At most `protocol::MAX_NAMED_ENV`.
    fn named_env(&self) -> &[String] {
        &[]
    }

    /// A source whose answer comes with each request and costs nothing (the
    /// `env` source): the engine neither caches nor refreshes it, and calls
    /// `fetch` for every get. What such a source hands out is never kept.
    fn per_request(&self) -> bool {
        false
    }

    /// Fetches a fresh token. Must be bounded in time by the source itself.
    fn fetch<'a>(
        &'a self,
        req: &'a SourceRequest,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Token, SourceError>>;
}

/// Builds the source of one `[[registry]]` entry from its settings.
pub type FromSettings = fn(toml::Table) -> Result<Arc<dyn Source>, String>;

/// The zero-config source for a registry key, if the host is recognised.
pub type Detect = fn(&RegistryKey) -> Option<Arc<dyn Source>>;

/// A kind of source: what the config's `source = "<name>"` names.
pub struct Descriptor {
    pub name: &'static str,
    /// Builds the source of one `[[registry]]` entry from its settings (the
    /// entry without `match` and `source`); the message says what is wrong.
    /// `None`: this build left the source out.
    pub from_settings: Option<FromSettings>,
    /// The zero-config source for a registry key, if this kind recognises
    /// the host.
    pub detect: Option<Detect>,
    /// The cargo feature that builds it.
    pub feature: Option<&'static str>,
}

impl Descriptor {
    /// The entry of a source that this build left out (its cargo `feature`
    /// was off).
    pub const fn left_out(name: &'static str, feature: &'static str) -> Descriptor {
        Descriptor {
            name,
            from_settings: None,
            detect: None,
            feature: Some(feature),
        }
    }
}

/// Every kind of source, in the order detectors are asked.
pub const SOURCES: &[Descriptor] = &[
    exec::DESCRIPTOR,
    #[cfg(feature = "ecr")]
    ecr::DESCRIPTOR,
    #[cfg(not(feature = "ecr"))]
    Descriptor::left_out("ecr", "ecr"),
    #[cfg(feature = "github-app")]
    github_app::DESCRIPTOR,
    #[cfg(not(feature = "github-app"))]
    Descriptor::left_out("github-app", "github-app"),
    #[cfg(feature = "gcp")]
    gcp::DESCRIPTOR,
    #[cfg(not(feature = "gcp"))]
    Descriptor::left_out("gcp", "gcp"),
    #[cfg(feature = "acr")]
    acr::DESCRIPTOR,
    #[cfg(not(feature = "acr"))]
    Descriptor::left_out("acr", "acr"),
    env::DESCRIPTOR,
];

/// A `[[registry]]` entry whose source cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("unknown source {name:?}; the sources are: {}", names().join(", "))]
    Unknown { name: String },
    #[error("this regent was built without the {name} source (cargo feature {feature:?})")]
    LeftOut {
        name: &'static str,
        feature: &'static str,
    },
    /// The source's own account of its settings.
    #[error("{0}")]
    Invalid(String),
}

/// The names [`from_config`] accepts.
pub fn names() -> Vec<&'static str> {
    SOURCES.iter().map(|d| d.name).collect()
}

/// The source for one `[[registry]]` entry of the config file. `settings`
/// is the entry without `match` and `source`.
pub fn from_config(name: &str, settings: toml::Table) -> Result<Arc<dyn Source>, BuildError> {
    build_in(SOURCES, name, settings)
}

/// The source a registry gets with zero configuration, from its hostname:
/// the first detector in [`SOURCES`] that recognises it.
pub fn detect(key: &RegistryKey) -> Option<Arc<dyn Source>> {
    detect_in(SOURCES, key)
}

fn build_in(
    table: &[Descriptor],
    name: &str,
    settings: toml::Table,
) -> Result<Arc<dyn Source>, BuildError> {
    let kind = table
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| BuildError::Unknown {
            name: name.to_owned(),
        })?;
    match kind.from_settings {
        Some(build) => build(settings).map_err(BuildError::Invalid),
        None => Err(BuildError::LeftOut {
            name: kind.name,
            feature: kind.feature.unwrap_or(kind.name),
        }),
    }
}

fn detect_in(table: &[Descriptor], key: &RegistryKey) -> Option<Arc<dyn Source>> {
    table
        .iter()
        .filter_map(|d| d.detect)
        .find_map(|detect| detect(key))
}

/// The whole of a file that holds a secret (a key, a token), at most `max`
/// bytes, in wiped memory (room for all of it up front: no reallocation
/// leaves a copy behind). The error says why, never what is in it.
pub async fn read_secret_file(
    path: &std::path::Path,
    max: u64,
) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| e.to_string())?;
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(max as usize + 1));
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("it is larger than {max} bytes"));
    }
    Ok(bytes)
}

/// `fetch`, or after `limit` the transient error `late` says: every
/// source bounds its whole fetch this way.
pub async fn within(
    limit: Duration,
    fetch: impl Future<Output = Result<Token, SourceError>>,
    late: impl FnOnce() -> String,
) -> Result<Token, SourceError> {
    match tokio::time::timeout(limit, fetch).await {
        Ok(result) => result,
        Err(_) => Err(SourceError::transient(late())),
    }
}

/// A stable digest of a source's settings, for cache keys: a changed
/// setting never reuses a token fetched with the old one.
/// Not for secrets: see [`identity_digest`].
pub fn fingerprint(parts: &impl std::hash::Hash) -> String {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A digest of the caller's variables `names` (name and value), for cache
/// keys that must tell identities apart without holding them: the first
/// 128 bits of SHA-256, in hex. Unset variables count as unset.
pub fn identity_digest(env: &CallerEnv, names: impl Fn(&str) -> bool) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, value) in env.iter().filter(|(n, _)| names(n)) {
        for part in [name.as_bytes(), value.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use regent_shared::registry::canonical;

    /// A source that only says its name.
    struct Named(&'static str);

    impl Source for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn cache_key(&self, _req: &SourceRequest) -> String {
            String::new()
        }
        fn fetch<'a>(
            &'a self,
            _req: &'a SourceRequest,
            _ctx: &'a Context,
        ) -> BoxFuture<'a, Result<Token, SourceError>> {
            Box::pin(async { Err(SourceError::permanent("not here")) })
        }
    }

    const NARROW: Descriptor = Descriptor {
        name: "narrow",
        from_settings: Some(|settings| match settings.is_empty() {
            true => Ok(Arc::new(Named("narrow"))),
            false => Err("no settings, please".to_owned()),
        }),
        detect: Some(|key| (key.host() == "a.example").then(|| Arc::new(Named("narrow")) as _)),
        feature: None,
    };
    const BROAD: Descriptor = Descriptor {
        name: "broad",
        from_settings: None,
        detect: Some(|key| {
            key.host()
                .ends_with("example")
                .then(|| Arc::new(Named("broad")) as _)
        }),
        feature: Some("broad-feature"),
    };
    const TABLE: &[Descriptor] = &[NARROW, BROAD, Descriptor::left_out("gone", "gone")];

    fn detected(host: &str) -> Option<&'static str> {
        detect_in(TABLE, &canonical(host).unwrap()).map(|s| s.name())
    }

    #[test]
    fn detectors_are_asked_in_table_order() {
        assert_eq!(detected("a.example"), Some("narrow"));
        assert_eq!(detected("b.example"), Some("broad"));
        assert_eq!(detected("c.test"), None);
    }

    #[test]
    fn building_reads_the_table() {
        let built = build_in(TABLE, "narrow", toml::Table::new()).unwrap();
        assert_eq!(built.name(), "narrow");
        let mut settings = toml::Table::new();
        settings.insert("x".into(), 1.into());
        let e = build_in(TABLE, "narrow", settings).err().unwrap();
        assert_eq!(e.to_string(), "no settings, please");
        let e = build_in(TABLE, "gone", toml::Table::new()).err().unwrap();
        assert_eq!(
            e.to_string(),
            "this regent was built without the gone source (cargo feature \"gone\")"
        );
        let e = build_in(TABLE, "broad", toml::Table::new()).err().unwrap();
        assert!(
            e.to_string().contains("(cargo feature \"broad-feature\")"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_source_lists_the_known_ones() {
        let e = from_config("frob", toml::Table::new()).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "unknown source \"frob\"; the sources are: {}",
                names().join(", ")
            )
        );
        assert_eq!(names()[..2], ["exec", "ecr"]);
        assert!(names().contains(&"github-app"), "{:?}", names());
        assert!(names().contains(&"acr"), "{:?}", names());
        assert!(names().contains(&"env"), "{:?}", names());
        assert!(names().contains(&"gcp"), "{:?}", names());
    }
}
