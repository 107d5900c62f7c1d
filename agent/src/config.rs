//! The config file: `$XDG_CONFIG_HOME/regent/config.toml`, or `$REGENT_CONFIG`.
//!
//! ```toml
//! # Where long-lived secrets live: auto, keyring, file, keyutils or memory.
//! store = "auto"
//! # How much the agent logs: error, warn, info, debug or trace.
//! log = "info"
//!
//! # Token sources: the first entry whose `match` fits a registry wins.
//! # `match` is an exact `host[:port]` (any spelling a client would send), or
//! # `*.domain`, which matches every host under `domain` on any port, but not
//! # `domain` itself, nor `domain.evil.org`, nor `evildomain`.
//! [[registry]]
//! match = "*.corp.example"
//! source = "exec"                      # see `sources::exec` for the protocol
//! command = ["/usr/local/bin/corp-token", "--for-docker"]
//! timeout_secs = 10                    # default 20, at most 25
//! # A named secret, set with `regent secret set corp-token` (value on stdin):
//! env = { TOKEN = { secret = "corp-token" } }
//! ```
//!
//! Resolution of a registry on `get`: a configured source, else a stored
//! login, else a source detected from the hostname, else not found.
//!
//! Environment variables win over the file: `REGENT_STORE`, `REGENT_LOG`,
//! `REGENT_KEYRING_SERVICE`. Unknown keys are an error, so a typo is caught
//! rather than silently ignored; every error names the line and column.
//! Values are checked here, once, for everyone who reads the config: the
//! agent's start, `regent reload` (and SIGHUP) and `regent status`. A store
//! or log level the agent would refuse at its start (`store = "memroy"`,
//! `log = "loud"`) is refused by a reload too, with its line and column in
//! the file, or the variable it came from.
//! `regent reload` or SIGHUP re-reads the `[[registry]]` entries (the store
//! and the log level take effect at the next start); a file that does not
//! parse or check is refused and the config in force stays. The agent
//! refuses to start with such a file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regent_shared::registry::{self, RegistryKey};
use serde::Deserialize;

use crate::sources::{self, Source};
use crate::store::select::{Choice, UnknownStore};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    store: Option<toml::Spanned<String>>,
    log: Option<toml::Spanned<String>>,
    keyring_service: Option<toml::Spanned<String>>,
    #[serde(default)]
    registry: Vec<toml::Spanned<toml::Table>>,
    /// The `[[registry]]` entries, checked.
    #[serde(skip)]
    pub rules: Rules,
}

/// Which registries a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// One canonical registry key.
    Exact(RegistryKey),
    /// `*.domain`: hosts under `domain` (any port); holds `domain`.
    Subdomains(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let text = text.trim();
        if let Some(domain) = text.strip_prefix("*.") {
            let canonical = registry::canonical(domain).map_err(|e| format!("{text:?}: {e}"))?;
            if domain.contains('*')
                || canonical != domain.to_ascii_lowercase()
                || canonical.port().is_some()
                || canonical.path().is_some()
            {
                return Err(format!(
                    "{text:?}: a wildcard pattern is `*.` and a domain name, with no scheme, port or path"
                ));
            }
            return Ok(Pattern::Subdomains(canonical.into_string()));
        }
        if text.contains('*') {
            return Err(format!(
                "{text:?}: `*` is allowed only as a leading `*.` (as in \"*.corp.example\")"
            ));
        }
        registry::canonical(text)
            .map(Pattern::Exact)
            .map_err(|e| format!("{text:?}: {e}"))
    }

    /// True when the pattern covers the canonical key `key`.
    pub fn matches(&self, key: &RegistryKey) -> bool {
        match self {
            Pattern::Exact(k) => k == key,
            Pattern::Subdomains(domain) => {
                let host = key.host();
                host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(k) => f.write_str(k),
            Pattern::Subdomains(d) => write!(f, "*.{d}"),
        }
    }
}

/// One `[[registry]]` entry.
pub struct Rule {
    pub pattern: Pattern,
    pub source: Arc<dyn Source>,
    /// Where the entry starts in the file.
    pub line: usize,
}

/// The `[[registry]]` entries in file order.
#[derive(Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// The source of the first rule that matches the canonical key.
    pub fn resolve(&self, key: &RegistryKey) -> Option<Arc<dyn Source>> {
        self.0
            .iter()
            .find(|r| r.pattern.matches(key))
            .map(|r| r.source.clone())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .iter()
                    .map(|r| format!("line {}: {} -> {}", r.line, r.pattern, r.source.name())),
            )
            .finish()
    }
}

/// Why a value of `store`, `log` or `keyring_service` (in the file or the
/// environment) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error(transparent)]
    Store(#[from] UnknownStore),
    #[error("unknown log level {0:?}: use error, warn, info, debug or trace")]
    LogLevel(String),
    #[error(
        "keyring service {0:?} must be a non-empty name without control characters \
         (the default is \"regent\")"
    )]
    KeyringService(String),
}

/// A check of one setting's value: the reason it is refused.
type Check = fn(&str) -> Result<(), SettingError>;

/// The store a `store =` or `REGENT_STORE` value names; the agent opens it.
pub fn check_store(value: &str) -> Result<Choice, SettingError> {
    Ok(value.parse()?)
}

/// The log level a `log =` or `REGENT_LOG` value names.
pub fn check_log(value: &str) -> Result<tracing::Level, SettingError> {
    value
        .trim()
        .parse()
        .map_err(|_| SettingError::LogLevel(value.to_owned()))
}

/// A keyring service name: the entries regent keeps are filed under it.
pub fn check_keyring_service(value: &str) -> Result<(), SettingError> {
    if value.trim().is_empty() || value.chars().any(char::is_control) {
        return Err(SettingError::KeyringService(value.to_owned()));
    }
    Ok(())
}

fn take_string(table: &mut toml::Table, name: &str) -> Result<String, String> {
    match table.remove(name) {
        Some(toml::Value::String(s)) => Ok(s),
        Some(_) => Err(format!("`{name}` must be a string")),
        None => Err(format!("`{name}` is missing")),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{name}={value:?} is not valid: {message}; fix or unset it")]
    Env {
        name: &'static str,
        value: String,
        message: SettingError,
    },
}

/// The config in force: the file if it exists, then the environment on top.
#[derive(Debug)]
pub struct Settings {
    pub path: PathBuf,
    pub file_present: bool,
    pub store: String,
    pub log: String,
    pub keyring_service: String,
    pub rules: Rules,
}

impl Config {
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |offset: Option<usize>, message: &str| {
            let message = message.trim().replace('\n', " ");
            ConfigError::Parse {
                path: path.to_path_buf(),
                message: match offset {
                    Some(offset) => {
                        let (line, column) = line_col(text, offset);
                        format!("line {line}, column {column}: {message}")
                    }
                    None => message,
                },
            }
        };
        let mut config: Config =
            toml::from_str(text).map_err(|e| invalid(e.span().map(|s| s.start), e.message()))?;
        let checks: [(&str, &Option<toml::Spanned<String>>, Check); 3] = [
            ("store", &config.store, |v| check_store(v).map(drop)),
            ("log", &config.log, |v| check_log(v).map(drop)),
            (
                "keyring_service",
                &config.keyring_service,
                check_keyring_service,
            ),
        ];
        for (key, value, check) in checks {
            if let Some(value) = value
                && let Err(e) = check(value.get_ref())
            {
                return Err(invalid(Some(value.span().start), &format!("`{key}`: {e}")));
            }
        }
        let mut rules = Vec::new();
        for entry in std::mem::take(&mut config.registry) {
            let start = entry.span().start;
            let mut table = entry.into_inner();
            let rule = take_string(&mut table, "match")
                .and_then(|m| Pattern::parse(&m).map_err(|e| format!("`match` {e}")))
                .and_then(|pattern| {
                    let name = take_string(&mut table, "source")?;
                    let source = sources::from_config(&name, table)
                        .map_err(|e| format!("source {name:?}: {e}"))?;
                    Ok((pattern, source))
                });
            match rule {
                Ok((pattern, source)) => rules.push(Rule {
                    pattern,
                    source,
                    line: line_col(text, start).0,
                }),
                Err(e) => {
                    return Err(invalid(
                        Some(start),
                        &format!("in this [[registry]] entry: {e}"),
                    ));
                }
            }
        }
        config.rules = Rules(rules);
        Ok(config)
    }

    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Option<Config>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

impl Settings {
    pub fn load() -> Result<Settings, ConfigError> {
        let path = regent_shared::paths::config_file();
        let file = Config::load(&path)?;
        let file_present = file.is_some();
        let mut file = file.unwrap_or_default();
        let rules = std::mem::take(&mut file.rules);
        // A variable wins over the file, and is checked as the file is.
        let env = |name: &'static str, check: Check| -> Result<Option<String>, ConfigError> {
            let Some(value) = std::env::var(name).ok().filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            match check(&value) {
                Ok(()) => Ok(Some(value)),
                Err(message) => Err(ConfigError::Env {
                    name,
                    value,
                    message,
                }),
            }
        };
        let file_value = |v: Option<toml::Spanned<String>>| v.map(toml::Spanned::into_inner);
        Ok(Settings {
            store: env("REGENT_STORE", |v| check_store(v).map(drop))?
                .or(file_value(file.store))
                .unwrap_or_else(|| "auto".into()),
            log: env("REGENT_LOG", |v| check_log(v).map(drop))?
                .or(file_value(file.log))
                .unwrap_or_else(|| "info".into()),
            keyring_service: env("REGENT_KEYRING_SERVICE", check_keyring_service)?
                .or(file_value(file.keyring_service))
                .unwrap_or_else(|| "regent".into()),
            rules,
            path,
            file_present,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys() {
        let c = Config::parse("store = \"file\"\nlog = \"debug\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(c.store.as_ref().map(|s| s.get_ref().as_str()), Some("file"));
        assert_eq!(c.log.as_ref().map(|s| s.get_ref().as_str()), Some("debug"));
    }

    #[test]
    fn values_the_start_refuses_are_refused_with_their_place() {
        let e = error("log = \"info\"\nstore = \"memroy\"\n");
        assert!(
            e.contains("line 2, column 9") && e.contains("unknown store \"memroy\""),
            "{e}"
        );
        let e = error("\nlog = \"loud\"\n");
        assert!(
            e.contains("line 2, column 7") && e.contains("unknown log level"),
            "{e}"
        );
        let e = error("keyring_service = \"\"\n");
        assert!(e.contains("line 1, column 19"), "{e}");
    }

    fn rules(text: &str) -> Rules {
        Config::parse(text, Path::new("c.toml")).unwrap().rules
    }

    fn error(text: &str) -> String {
        Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string()
    }

    const EXEC: &str = "source = \"exec\"\ncommand = [\"/bin/true\"]\n";

    #[test]
    fn wildcards_are_anchored_at_a_label() {
        let key = |s: &str| registry::canonical(s).unwrap();
        let p = Pattern::parse("*.Corp.Example").unwrap();
        for yes in ["a.corp.example", "a.b.corp.example", "a.corp.example:5000"] {
            assert!(p.matches(&key(yes)), "{yes}");
        }
        for no in [
            "corp.example",
            "corp.example.evil.org",
            "evilcorp.example",
            "a.corp.example.evil.org",
            "acorp.example",
            "docker.io",
        ] {
            assert!(!p.matches(&key(no)), "{no}");
        }
        let exact = Pattern::parse("https://Reg.Example:5000/v2/").unwrap();
        assert_eq!(exact, Pattern::Exact(key("reg.example:5000")));
        assert!(exact.matches(&key("reg.example:5000")));
        assert!(!exact.matches(&key("reg.example")));
        assert!(!exact.matches(&key("a.reg.example:5000")));
        let hub = Pattern::parse("index.docker.io").unwrap();
        assert!(hub.matches(&key("docker.io")));
        for bad in [
            "*",
            "*.",
            "a.*.example",
            "*example.com",
            "*.x.example:5000",
            "*.x/y",
            "ftp://x",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let r = rules(&format!(
            "[[registry]]\nmatch = \"a.corp.example\"\n{EXEC}\n\
             [[registry]]\nmatch = \"*.corp.example\"\n{EXEC}timeout_secs = 5\n"
        ));
        assert_eq!(r.len(), 2);
        let key = |s: &str| registry::canonical(s).unwrap();
        let a = r.resolve(&key("a.corp.example")).unwrap();
        let b = r.resolve(&key("b.corp.example")).unwrap();
        let req = |raw: &str| crate::sources::SourceRequest {
            key: key(raw),
            server_url: raw.into(),
            env: Default::default(),
        };
        // Different settings, different cache keys.
        assert_ne!(a.cache_key(&req("x")), b.cache_key(&req("x")));
        assert!(r.resolve(&key("corp.example")).is_none());
        assert!(r.resolve(&key("corp.example.evil.org")).is_none());
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = error(
            "log = \"info\"\n\n[[registry]]\nmatch = \"x.example\"\nsource = \"exec\"\ncommand = [\"a\"\n",
        );
        assert!(e.contains("c.toml") && e.contains("line 6, column"), "{e}");
        let e = error(&format!(
            "log = \"info\"\n[[registry]]\nmatch = \"*.x.example\"\n{EXEC}comand = 1\n"
        ));
        assert!(
            e.contains("line 2, column 1") && e.contains("comand"),
            "{e}"
        );
        let e = error("[[registry]]\nmatch = \"x.example\"\nsource = \"nope\"\n");
        assert!(
            e.contains("line 1, column 1") && e.contains("unknown source \"nope\""),
            "{e}"
        );
        let e = error(&format!("[[registry]]\nmatch = \"*x.example\"\n{EXEC}"));
        assert!(e.contains("`match`"), "{e}");
        let e = error("[[registry]]\nsource = \"exec\"\n");
        assert!(e.contains("`match` is missing"), "{e}");
        let e = error("store = \"file\"\n  stor = 1\n");
        assert!(e.contains("line 2, column 3"), "{e}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncü d", 7), (2, 4));
        assert_eq!(line_col("", 5), (1, 1));
    }

    #[test]
    fn typo_is_an_error_with_position() {
        let err = Config::parse("stor = \"file\"\n", Path::new("c.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("c.toml"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }
}
