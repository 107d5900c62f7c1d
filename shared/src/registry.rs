//! Registry-key normalisation: one canonical key per registry.
//!
//! Clients name the same registry in different ways: docker sends
//! `https://index.docker.io/v1/` for Docker Hub, podman sends `docker.io`,
//! `docker logout` tries `http://host` and `https://host` as well as `host`.
//! The agent stores and looks up every credential under [`canonical`] of what
//! the client sent, so a login made by one client is found by the others.
//!
//! Rules:
//! - surrounding whitespace is ignored; an `http://` or `https://` scheme (any
//!   case) is dropped; any other scheme is refused;
//! - the host is lower-cased and loses a trailing dot; the port is kept,
//!   except `:443`, which is the port every registry is reached on anyway;
//! - Docker Hub (`docker.io`, `index.docker.io`, `registry-1.docker.io`,
//!   `registry.hub.docker.com`) becomes `docker.io`; its device-login keys
//!   `.../access-token` and `.../refresh-token` stay distinct keys
//!   (`docker.io/access-token`, `docker.io/refresh-token`);
//! - for every other registry the path is dropped: clients never send
//!   namespaced keys to a helper, and `host/v2/` is the same registry as `host`.
//!
//! The form a client stored is kept beside the canonical key, and `list`
//! returns that form.
//!
//! [`canonical`] returns a [`RegistryKey`]: the canonical text, which is what
//! is stored and compared, with its host, port and path found while parsing,
//! so nothing downstream parses the key again.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

pub const DOCKER_HUB: &str = "docker.io";

const DOCKER_HUB_ALIASES: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// Docker Hub keys that are not the registry itself but other secrets the
/// docker CLI keeps after a device-flow login.
const DOCKER_HUB_SPECIAL: &[&str] = &["access-token", "refresh-token"];

/// Why a server URL has no registry key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{}", crate::messages::NO_SERVER_URL)]
    Empty,
    #[error("unsupported scheme {0:?} in server URL: use host[:port] or https://host[:port]")]
    Scheme(String),
    #[error("invalid server URL: {0}")]
    Invalid(&'static str),
}

/// A canonical registry key: `host[:port][/path]`, parsed once by
/// [`canonical`].
///
/// The canonical text is what is stored, compared, hashed and shown (so a
/// `RegistryKey` is looked up in a map keyed by `String` through
/// [`Borrow<str>`]); [`host`](RegistryKey::host), [`port`](RegistryKey::port)
/// and [`path`](RegistryKey::path) are slices of it, found when it was
/// parsed.
#[derive(Clone)]
pub struct RegistryKey {
    text: String,
    /// `text[..host_end]` is the host.
    host_end: usize,
    /// `text[host_end + 1..port_end]` is the port when `port_end > host_end`;
    /// a path, if any, starts after the `/` at `port_end`.
    port_end: usize,
}

impl RegistryKey {
    fn new(host: String, port: Option<&str>, path: Option<&str>) -> RegistryKey {
        let host_end = host.len();
        let mut text = host;
        if let Some(port) = port {
            text.push(':');
            text.push_str(port);
        }
        let port_end = text.len();
        if let Some(path) = path {
            text.push('/');
            text.push_str(path);
        }
        RegistryKey {
            text,
            host_end,
            port_end,
        }
    }

    /// The canonical text, as stored.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The canonical text, as stored.
    pub fn into_string(self) -> String {
        self.text
    }

    /// The host, lower case (an IPv6 address keeps its brackets): what
    /// sources and `*.domain` patterns match.
    pub fn host(&self) -> &str {
        &self.text[..self.host_end]
    }

    /// The port, when it is not 443 (which is dropped).
    pub fn port(&self) -> Option<&str> {
        (self.port_end > self.host_end).then(|| &self.text[self.host_end + 1..self.port_end])
    }

    /// The path: only Docker Hub's device-login keys have one
    /// (`docker.io/access-token`).
    pub fn path(&self) -> Option<&str> {
        (self.port_end < self.text.len()).then(|| &self.text[self.port_end + 1..])
    }
}

impl Deref for RegistryKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for RegistryKey {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl Borrow<str> for RegistryKey {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl From<RegistryKey> for String {
    fn from(key: RegistryKey) -> String {
        key.text
    }
}

impl fmt::Display for RegistryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for RegistryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl PartialEq for RegistryKey {
    fn eq(&self, other: &RegistryKey) -> bool {
        self.text == other.text
    }
}

impl Eq for RegistryKey {}

impl PartialOrd for RegistryKey {
    fn partial_cmp(&self, other: &RegistryKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RegistryKey {
    fn cmp(&self, other: &RegistryKey) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

/// As the text's hash, so that [`Borrow<str>`] lookups find it.
impl Hash for RegistryKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialEq<str> for RegistryKey {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for RegistryKey {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl PartialEq<String> for RegistryKey {
    fn eq(&self, other: &String) -> bool {
        &self.text == other
    }
}

impl PartialEq<RegistryKey> for String {
    fn eq(&self, other: &RegistryKey) -> bool {
        *self == other.text
    }
}

impl PartialEq<RegistryKey> for &str {
    fn eq(&self, other: &RegistryKey) -> bool {
        *self == other.text
    }
}

/// As the canonical text.
impl serde::Serialize for RegistryKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// The canonical key of the registry a client named.
pub fn canonical(raw: &str) -> Result<RegistryKey, KeyError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(KeyError::Empty);
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(KeyError::Invalid(
            "it contains white space or control characters",
        ));
    }
    let rest = strip_scheme(s)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(KeyError::Invalid(
            "user names in server URLs are not supported",
        ));
    }
    let (host, port) = split_port(authority)?;
    let mut host = host.to_ascii_lowercase();
    if host.ends_with('.') && !host.starts_with('[') {
        host.pop();
    }
    validate_host(&host)?;
    let port = match port {
        Some("443") | None => None,
        Some(p) => Some(p),
    };

    if port.is_none() && DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        return Ok(docker_hub_key(host, path));
    }
    Ok(RegistryKey::new(host, port, None))
}

fn strip_scheme(s: &str) -> Result<&str, KeyError> {
    let Some(i) = s.find("://") else {
        return Ok(s);
    };
    let scheme = &s[..i];
    if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http") {
        Ok(&s[i + 3..])
    } else {
        Err(KeyError::Scheme(scheme.to_owned()))
    }
}

fn split_port(authority: &str) -> Result<(&str, Option<&str>), KeyError> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or(KeyError::Invalid("unclosed '[' in IPv6 address"))?;
        let after = &authority[end + 1..];
        match after.strip_prefix(':') {
            Some(p) => (&authority[..=end], Some(p)),
            None if after.is_empty() => (&authority[..=end], None),
            None => return Err(KeyError::Invalid("unexpected text after IPv6 address")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(KeyError::Invalid("the port is not a number"));
    }
    Ok((host, port))
}

fn validate_host(host: &str) -> Result<(), KeyError> {
    if host.is_empty() {
        return Err(KeyError::Invalid("the host is empty"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').unwrap_or(inner);
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(KeyError::Invalid("malformed IPv6 address"));
        }
        return Ok(());
    }
    let ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !ok || host.starts_with('.') || host.ends_with('.') || host.contains("..") {
        return Err(KeyError::Invalid(
            "the host name has characters a registry host cannot have",
        ));
    }
    Ok(())
}

/// Docker Hub's key; `host` is the alias the client sent, whose buffer the
/// key reuses.
fn docker_hub_key(mut host: String, path: &str) -> RegistryKey {
    host.clear();
    host.push_str(DOCKER_HUB);
    let mut segments = path.split('/').filter(|s| !s.is_empty()).peekable();
    if matches!(segments.peek(), Some(&("v1" | "v2"))) {
        segments.next();
    }
    match segments.next() {
        Some(special) if DOCKER_HUB_SPECIAL.contains(&special) && segments.next().is_none() => {
            RegistryKey::new(host, None, Some(special))
        }
        _ => RegistryKey::new(host, None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form a client is known to send, and what it must collapse to.
    const TABLE: &[(&str, &str)] = &[
        // Docker Hub: docker CLI, buildx, docker-py
        ("https://index.docker.io/v1/", "docker.io"),
        ("https://index.docker.io/v1", "docker.io"),
        ("http://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("index.docker.io/v1/", "docker.io"),
        // Docker Hub: podman, buildah, skopeo
        ("docker.io", "docker.io"),
        ("DOCKER.IO", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("https://registry-1.docker.io/v2/", "docker.io"),
        ("registry.hub.docker.com", "docker.io"),
        ("docker.io:443", "docker.io"),
        // Docker Hub device-login keys stay distinct
        (
            "https://index.docker.io/v1/access-token",
            "docker.io/access-token",
        ),
        (
            "https://index.docker.io/v1/refresh-token",
            "docker.io/refresh-token",
        ),
        (
            "https://index.docker.io/v1/refresh-token/",
            "docker.io/refresh-token",
        ),
        // Other registries: host, scheme, trailing slash, case, default port
        ("ghcr.io", "ghcr.io"),
        ("https://ghcr.io", "ghcr.io"),
        ("http://ghcr.io", "ghcr.io"),
        ("ghcr.io/", "ghcr.io"),
        ("https://ghcr.io/", "ghcr.io"),
        ("HTTPS://GHCR.IO/", "ghcr.io"),
        ("ghcr.io:443", "ghcr.io"),
        ("https://ghcr.io:443/v2/", "ghcr.io"),
        ("ghcr.io.", "ghcr.io"),
        ("  ghcr.io \n", "ghcr.io"),
        ("ghcr.io\r\n", "ghcr.io"),
        ("quay.io/v1/", "quay.io"),
        ("quay.io/org/repo", "quay.io"),
        // Ports other than 443 make a different registry
        ("localhost:5000", "localhost:5000"),
        ("http://localhost:5000", "localhost:5000"),
        ("https://localhost:5000/", "localhost:5000"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("registry.example.com:8443", "registry.example.com:8443"),
        ("[::1]:5000", "[::1]:5000"),
        ("https://[::1]:5000/v2/", "[::1]:5000"),
        ("[::1]", "[::1]"),
        // A Docker Hub alias on a non-default port is not Docker Hub
        ("docker.io:5000", "docker.io:5000"),
        // Cloud registries keep their host
        (
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        ),
        (
            "https://europe-west1-docker.pkg.dev",
            "europe-west1-docker.pkg.dev",
        ),
        ("myreg.azurecr.io", "myreg.azurecr.io"),
        ("rég.example", "rég.example"),
    ];

    #[test]
    fn table_of_forms() {
        for (raw, want) in TABLE {
            // Non-ASCII hosts are refused: registries are ASCII (IDNA) hosts.
            if !raw.is_ascii() {
                assert!(canonical(raw).is_err(), "{raw:?} should be refused");
                continue;
            }
            assert_eq!(canonical(raw).as_deref(), Ok(*want), "canonical({raw:?})");
        }
    }

    #[test]
    fn canonical_is_idempotent() {
        for (raw, _) in TABLE {
            if let Ok(key) = canonical(raw) {
                assert_eq!(canonical(&key).as_deref(), Ok(key.as_str()), "{raw:?}");
            }
        }
    }

    #[test]
    fn docker_and_podman_forms_meet() {
        assert_eq!(
            canonical("https://index.docker.io/v1/"),
            canonical("docker.io")
        );
        assert_ne!(
            canonical("https://index.docker.io/v1/"),
            canonical("https://index.docker.io/v1/access-token")
        );
        assert_ne!(
            canonical("https://index.docker.io/v1/access-token"),
            canonical("https://index.docker.io/v1/refresh-token")
        );
    }

    #[test]
    fn refused_forms() {
        assert_eq!(canonical(""), Err(KeyError::Empty));
        assert_eq!(canonical("  \r\n"), Err(KeyError::Empty));
        assert!(matches!(canonical("ftp://host"), Err(KeyError::Scheme(_))));
        for bad in [
            "host:port",
            "host:",
            "host:123456",
            "user@host",
            "https://user:pw@host",
            "a b",
            "host\0",
            "[::1",
            "[zz]:5000",
            ".host",
            "a..b",
            // Found by fuzz/registry_key: one trailing dot is dropped, two are
            // not a host (and made the key change when canonicalised again).
            "host..",
            "Registrymym.px4a5../",
            "https://",
            "/path",
            "ho$t",
        ] {
            assert!(canonical(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn empty_is_the_protocol_message() {
        assert_eq!(KeyError::Empty.to_string(), "no credentials server URL");
    }

    #[test]
    fn parts_of_keys() {
        let parts = |raw: &str| {
            let key = canonical(raw).unwrap();
            (
                key.host().to_owned(),
                key.port().map(str::to_owned),
                key.path().map(str::to_owned),
            )
        };
        let owned = |host: &str, port: Option<&str>, path: Option<&str>| {
            (
                host.to_owned(),
                port.map(str::to_owned),
                path.map(str::to_owned),
            )
        };
        assert_eq!(parts("ghcr.io"), owned("ghcr.io", None, None));
        assert_eq!(
            parts("https://ghcr.io:443/v2/"),
            owned("ghcr.io", None, None)
        );
        assert_eq!(
            parts("localhost:5000"),
            owned("localhost", Some("5000"), None)
        );
        assert_eq!(
            parts("https://index.docker.io/v1/access-token"),
            owned("docker.io", None, Some("access-token"))
        );
        assert_eq!(parts("[::1]:5000"), owned("[::1]", Some("5000"), None));
        assert_eq!(parts("[::1]"), owned("[::1]", None, None));
    }

    #[test]
    fn parts_survive_a_second_parse() {
        for (raw, _) in TABLE {
            if let Ok(key) = canonical(raw) {
                let again = canonical(&key).unwrap();
                assert_eq!(
                    (key.host(), key.port(), key.path()),
                    (again.host(), again.port(), again.path()),
                    "{raw:?}"
                );
            }
        }
    }

    #[test]
    fn a_key_is_its_text() {
        use std::collections::HashMap;
        let key = canonical("https://GHCR.io/").unwrap();
        assert_eq!(key.to_string(), "ghcr.io");
        assert_eq!(format!("{key:?}"), "\"ghcr.io\"");
        let map: HashMap<String, u8> = [("ghcr.io".to_owned(), 1)].into();
        assert_eq!(map.get(key.as_str()), Some(&1));
        let keys: HashMap<RegistryKey, u8> = [(key.clone(), 2)].into();
        assert_eq!(keys.get("ghcr.io"), Some(&2));
        assert_eq!(String::from(key), "ghcr.io");
    }
}
