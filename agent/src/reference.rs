//! What a user types where a registry is meant: a registry (`ghcr.io`,
//! `localhost:5000`, `https://registry.example:8443`) or an image reference
//! as they pull it (`alpine`, `ghcr.io/org/app:1.2`,
//! `docker.io/library/alpine@sha256:…`), read by the distribution reference
//! grammar with Docker Hub's defaults.
//!
//! The rules (distribution's `ParseNormalizedNamed`):
//! - A first path component with a `.` or a `:`, or `localhost`, is the
//!   registry; otherwise the registry is Docker Hub and the whole name is
//!   the repository, `library/` in front of a one-component name.
//! - A name alone (no `/`) that looks like a host is a registry, as
//!   `docker login ghcr.io` takes it: a `.`, `localhost`, or a numeric
//!   port (`registry:5000`; `alpine:3.20` is an image).
//! - `:tag` ends the last component, `@algorithm:hex` ends the reference.
//! - Repository components are lower case: `[a-z0-9]+` joined by `.`, `_`,
//!   `__` or runs of `-`.
//! - `http://` in front asks for plain HTTP explicitly; `https://` changes
//!   nothing.

use std::fmt;

/// Where Docker Hub keeps its logins, as docker stores them.
pub const DOCKER_HUB_LOGIN: &str = "https://index.docker.io/v1/";
/// Where Docker Hub's registry API answers.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A registry, and the repository of an image reference when one was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host[:port]`, lower case; `docker.io` for Docker Hub.
    pub registry: String,
    /// `library/alpine`, `org/app`; `None` for a registry alone.
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// `http://` was asked for.
    pub plain_http: bool,
    /// `https://` was asked for: no plain HTTP, even for loopback.
    pub https_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("nothing to parse: give a registry (ghcr.io) or an image (ghcr.io/org/app:1.2)")]
    Empty,
    #[error("{0:?} is not a registry or an image reference: {1}")]
    Invalid(String, &'static str),
}

impl Target {
    pub fn is_docker_hub(&self) -> bool {
        self.registry == "docker.io"
    }

    /// The server URL a login is stored under: what docker stores (Docker
    /// Hub's `https://index.docker.io/v1/`, else `host[:port]`).
    pub fn login_key(&self) -> String {
        if self.is_docker_hub() {
            DOCKER_HUB_LOGIN.to_owned()
        } else {
            self.registry.clone()
        }
    }

    /// Where the registry API (`/v2/`) answers, without a trailing `/`.
    pub fn api_base(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        let host = if self.is_docker_hub() {
            DOCKER_HUB_API
        } else {
            &self.registry
        };
        format!("{scheme}://{host}")
    }

    /// The host without the port.
    pub fn host(&self) -> &str {
        host_of(&self.registry)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.registry)?;
        if let Some(repo) = &self.repository {
            write!(f, "/{repo}")?;
        }
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// `raw` read as a registry or an image reference.
pub fn parse(raw: &str) -> Result<Target, ReferenceError> {
    let bad = |why| ReferenceError::Invalid(raw.to_owned(), why);
    let mut text = raw.trim();
    if text.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (mut plain_http, mut https_only) = (false, false);
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("http://") {
        plain_http = true;
        text = &text[7..];
    } else if lower.starts_with("https://") {
        https_only = true;
        text = &text[8..];
    } else if text.contains("://") {
        return Err(bad("only http:// and https:// are registry schemes"));
    }
    let text = text.trim_end_matches('/');
    // A server URL with docker's API path (`https://index.docker.io/v1/`).
    let text = text
        .strip_suffix("/v1")
        .or_else(|| text.strip_suffix("/v2"))
        .unwrap_or(text);
    if text.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (name, digest) = match text.split_once('@') {
        Some((name, digest)) => (
            name,
            Some(check_digest(digest).ok_or_else(|| bad("the digest is not algorithm:hex"))?),
        ),
        None => (text, None),
    };
    let (first, rest) = match name.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    let is_domain = |c: &str| c.contains('.') || c.contains(':') || c == "localhost";
    let (registry, path) = match rest {
        Some(rest) if is_domain(first) => (first.to_ascii_lowercase(), Some(rest)),
        Some(_) => ("docker.io".to_owned(), Some(name)),
        // A name alone: a registry if it looks like a host (`alpine:3.20`
        // is an image, `registry:5000` a registry).
        None if looks_like_host(first) && digest.is_none() => (first.to_ascii_lowercase(), None),
        None => ("docker.io".to_owned(), Some(name)),
    };
    check_registry(&registry).map_err(bad)?;
    let registry = match registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => registry,
    };
    let (repository, tag) = match path {
        None => (None, None),
        Some(path) => {
            let (repo, tag) = match path.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
                _ => (path, None),
            };
            if let Some(tag) = tag {
                check_tag(tag).map_err(bad)?;
            }
            check_repository(repo).map_err(bad)?;
            let repo = if registry == "docker.io" && !repo.contains('/') {
                format!("library/{repo}")
            } else {
                repo.to_owned()
            };
            (Some(repo), tag.map(str::to_owned))
        }
    };
    Ok(Target {
        registry,
        repository,
        tag,
        digest,
        plain_http,
        https_only,
    })
}

/// A name with no `/` that is a registry: a `.` or `localhost` before
/// any port, a bracketed IPv6 address, or `name:<digits>`.
fn looks_like_host(name: &str) -> bool {
    if name.starts_with('[') {
        return true;
    }
    match name.split_once(':') {
        Some((host, port)) => {
            host.contains('.')
                || host == "localhost"
                || (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        }
        None => name.contains('.') || name == "localhost",
    }
}

fn check_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("an IPv6 host lacks its `]`")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the IPv6 host is not an address");
        }
        (None, after.strip_prefix(':'))
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err("the registry's host name is not a host name");
        }
    }
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the registry's port is not a number");
    }
    Ok(())
}

fn check_repository(repo: &str) -> Result<(), &'static str> {
    if repo.is_empty() || repo.len() > 255 {
        return Err("the repository name is empty or too long");
    }
    for component in repo.split('/') {
        if !component_ok(component) {
            return Err(
                "a repository name is lower-case letters and digits, with `.`, `_`, `__` or `-` \
                 between them, in components joined by `/`",
            );
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn check_tag(tag: &str) -> Result<(), &'static str> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = tag.as_bytes();
    if b.is_empty()
        || b.len() > 128
        || !word(b[0])
        || !b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
    {
        return Err("the tag is letters, digits, `_`, `.` and `-` (at most 128)");
    }
    Ok(())
}

/// `algorithm:hex`, hex at least 32 characters.
fn check_digest(digest: &str) -> Option<String> {
    let (alg, hex) = digest.split_once(':')?;
    let alg_ok = !alg.is_empty()
        && alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
    let hex_ok = hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    (alg_ok && hex_ok).then(|| digest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(raw: &str) -> Target {
        parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn docker_hub_defaults() {
        let a = t("alpine");
        assert_eq!(a.registry, "docker.io");
        assert_eq!(a.repository.as_deref(), Some("library/alpine"));
        assert_eq!(a.login_key(), DOCKER_HUB_LOGIN);
        assert_eq!(a.api_base(), "https://registry-1.docker.io");
        assert_eq!(t("alpine:3.20").tag.as_deref(), Some("3.20"));
        assert_eq!(t("me/app").repository.as_deref(), Some("me/app"));
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let full = t(&format!("docker.io/library/alpine@{d}"));
        assert_eq!(full.repository.as_deref(), Some("library/alpine"));
        assert_eq!(full.digest.as_deref(), Some(d));
        assert_eq!(t("index.docker.io/library/alpine").registry, "docker.io");
        assert_eq!(t("https://index.docker.io/v1/").registry, "docker.io");
        assert_eq!(t("https://index.docker.io/v1/").repository, None);
        assert_eq!(t("docker.io").repository, None);
    }

    #[test]
    fn registries_and_their_images() {
        let g = t("ghcr.io/org/app:1.2");
        assert_eq!(
            (
                g.registry.as_str(),
                g.repository.as_deref(),
                g.tag.as_deref()
            ),
            ("ghcr.io", Some("org/app"), Some("1.2"))
        );
        assert_eq!(g.login_key(), "ghcr.io");
        assert_eq!(g.to_string(), "ghcr.io/org/app:1.2");
        let l = t("localhost:5000/team/tool");
        assert_eq!(l.registry, "localhost:5000");
        assert_eq!(l.host(), "localhost");
        assert_eq!(t("localhost/x").registry, "localhost");
        let r = t("GHCR.IO");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_ref()),
            ("ghcr.io", None)
        );
        let p = t("http://127.0.0.1:5000");
        assert!(p.plain_http);
        assert_eq!(p.api_base(), "http://127.0.0.1:5000");
        let s = t("https://registry.example:8443/");
        assert_eq!(s.api_base(), "https://registry.example:8443");
        assert!(s.https_only && !s.plain_http);
        assert_eq!(t("[::1]:5000/a").host(), "::1");
        // Not a host: a Docker Hub image.
        assert_eq!(t("ubuntu").registry, "docker.io");
        assert_eq!(t("registry:5000").registry, "registry:5000");
        assert_eq!(t("localhost").registry, "localhost");
    }

    #[test]
    fn bad_references_say_why() {
        for raw in [
            "",
            "ftp://x.example",
            "ghcr.io/Org/app",
            "ghcr.io/org/app:",
            "ghcr.io/org//app",
            "bad_host.example/x",
            "host.example:port/x",
            "alpine@sha256:12",
            "-x.example/a",
        ] {
            assert!(parse(raw).is_err(), "{raw:?} parsed");
        }
        let e = parse("ghcr.io/Org/app").err().unwrap().to_string();
        assert!(e.contains("lower-case"), "{e}");
    }

    #[test]
    fn components_follow_the_grammar() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "a1-b2.c3"] {
            assert!(component_ok(ok), "{ok}");
        }
        for bad in ["", "A", "a.", ".a", "a..b", "a___b", "a-.b"] {
            assert!(!component_ok(bad), "{bad}");
        }
    }
}
