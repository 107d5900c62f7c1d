//! Where a credential comes from when it is not a stored login: token sources.
//!
//! A [`Source`] turns a registry key and the context of the request into a
//! [`Token`] (username, secret, optional expiry), or a [`SourceError`] that
//! says whether trying again later can help. Sources never cache: the refresh
//! engine ([`crate::refresh`]) caches one token per [`Source::cache_key`],
//! refreshes it ahead of expiry, and makes concurrent requests share one
//! fetch.
//!
//! Adding a source is one file here (parse the `[[registry]]` settings into a
//! struct with `deny_unknown_fields`, and implement the trait) plus edits
//! made in step in this file: an arm in [`from_config`] (and, for a source
//! behind a cargo feature, a `cfg(not(feature))` arm that says it was left
//! out), its name in [`KNOWN`], and, for hostname auto-detection (a registry
//! with no configured source and no stored login), a call in [`detect`],
//! which today asks the ECR detector alone: a second one is chained there by
//! hand. See "How to add a source" in docs/architecture.md.
//!
//! Errors name the source and the registry and say what to do next. They
//! never carry a secret, and never anything a command printed on stdout.

#[cfg(feature = "ecr")]
pub mod ecr;
pub mod exec;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use regent_shared::Secret;
pub use regent_shared::protocol::CallerEnv;
use regent_shared::registry::RegistryKey;

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
}

impl Context {
    pub fn without_secrets() -> Context {
        Context {
            secrets: Arc::new(NoSecrets),
        }
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

    /// Fetches a fresh token. Must be bounded in time by the source itself.
    fn fetch<'a>(
        &'a self,
        req: &'a SourceRequest,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Token, SourceError>>;
}

/// The source for one `[[registry]]` entry of the config file. `settings`
/// is the entry without `match` and `source`.
pub fn from_config(name: &str, settings: toml::Table) -> Result<Arc<dyn Source>, String> {
    match name {
        "exec" => exec::Exec::from_settings(settings).map(|s| Arc::new(s) as Arc<dyn Source>),
        #[cfg(feature = "ecr")]
        "ecr" => ecr::Ecr::from_settings(settings).map(|s| Arc::new(s) as Arc<dyn Source>),
        #[cfg(not(feature = "ecr"))]
        "ecr" => {
            drop(settings);
            Err("this regent was built without the ecr source (cargo feature \"ecr\")".into())
        }
        other => Err(format!(
            "unknown source {other:?}; the sources are: {}",
            KNOWN.join(", ")
        )),
    }
}

/// Every name [`from_config`] accepts.
pub const KNOWN: &[&str] = &["exec", "ecr"];

/// The source a registry gets with zero configuration, from its hostname
/// (ECR and ECR Public hosts so far), if any.
pub fn detect(key: &RegistryKey) -> Option<Arc<dyn Source>> {
    #[cfg(feature = "ecr")]
    return ecr::detect(key).map(|s| Arc::new(s) as Arc<dyn Source>);
    #[cfg(not(feature = "ecr"))]
    {
        let _ = key;
        None
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
