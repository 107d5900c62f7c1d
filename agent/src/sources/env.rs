//! The `env` source: a login read, at each `get`, from the environment of
//! the process that ran the helper (a CI job's token variables).
//!
//! ```toml
//! [[registry]]
//! match = "ghcr.io"
//! source = "env"
//! username = { env = "GITHUB_ACTOR" }   # or a literal: username = "x-access-token"
//! password = { env = "GITHUB_TOKEN" }   # or a named secret: { secret = "NAME" }
//! ```
//!
//! Configuration only: no hostname is detected.
//!
//! # How the values arrive
//!
//! The helper forwards only `protocol::FORWARDED_ENV` with a `get`. For a
//! registry whose entry names other variables, the agent answers the first
//! `Get` with `NeedEnv` and those names ([`Source::named_env`]); the helper
//! sends the `Get` again on the same connection with them, and says that
//! what is missing is unset. So each caller's values are its own: two jobs
//! with two tokens get each their own, and a variable never leaves the
//! helper unless an entry for the registry it asks about names it.
//!
//! # Never kept
//!
//! The source is per-request ([`Source::per_request`]): the refresh engine
//! neither caches nor refreshes what it hands out, and nothing is stored.
//! The values reach the answer to that one `get` and nothing else: no log
//! line, no error, no `regent ls` row (which shows the username only).
//!
//! # When the entry does not apply
//!
//! A variable the entry names that is unset or empty in the caller's
//! environment makes the entry not apply to that `get`
//! ([`crate::sources::ErrorClass::NotApplicable`]): the next resolution step
//! runs (a stored login, then a detected source), and `regent ls` shows
//! which variable was missing at the last `get`. A client that speaks
//! protocol 1 cannot be asked for the variables, and is treated the same
//! way. A named secret that is not set is an error, as for other sources.

use std::sync::Arc;

use regent_shared::Secret;
use regent_shared::protocol::{MAX_NAMED_ENV, is_env_name};

use super::{BoxFuture, Context, Descriptor, Source, SourceError, SourceRequest, Token, text};
use crate::named_secrets;

pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "env",
    from_settings: Some(|settings| Ok(Arc::new(EnvSource::from_settings(settings)?))),
    detect: None,
    feature: None,
};

/// Where the username comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Username {
    Literal(String),
    Env(String),
}

/// Where the password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Password {
    Env(String),
    /// A named secret (`regent secret set NAME`).
    Secret(String),
}

#[derive(Debug)]
pub struct EnvSource {
    username: Username,
    password: Password,
    /// The variables named above, for `NeedEnv`.
    names: Vec<String>,
}

const PASSWORD_HOW: &str = "write `password = { env = \"VARIABLE\" }` (read from the \
                            environment of each `docker` or `podman` command), or store it with \
                            `regent secret set NAME` and write `password = { secret = \"NAME\" }`";

impl EnvSource {
    pub fn from_settings(mut settings: toml::Table) -> Result<EnvSource, String> {
        let username = match settings.remove("username") {
            None => {
                return Err(
                    "no `username`: write `username = { env = \"VARIABLE\" }` or a literal \
                     such as `username = \"x-access-token\"`"
                        .into(),
                );
            }
            Some(toml::Value::String(name)) if name.is_empty() => {
                return Err("`username` is empty".into());
            }
            Some(toml::Value::String(name)) => Username::Literal(name),
            Some(value) => Username::Env(env_name("username", value, "a literal")?),
        };
        let password = match settings.remove("password") {
            None => return Err(format!("no `password`: {PASSWORD_HOW}")),
            Some(toml::Value::String(_)) => {
                return Err(format!(
                    "`password` must not hold the password itself (a config file is no place \
                     for it): {PASSWORD_HOW}"
                ));
            }
            Some(toml::Value::Table(mut table)) if table.contains_key("secret") => {
                let name = match table.remove("secret") {
                    Some(toml::Value::String(name)) if table.is_empty() => name,
                    _ => return Err(format!("`password` must be one table key: {PASSWORD_HOW}")),
                };
                named_secrets::check_name(&name).map_err(|e| format!("`password`: {e}"))?;
                Password::Secret(name)
            }
            Some(value) => Password::Env(env_name("password", value, "a named secret")?),
        };
        if let Some(key) = settings.keys().next() {
            return Err(format!(
                "unknown key `{key}`; the `env` source takes `username` and `password`"
            ));
        }
        let mut names = Vec::new();
        if let Username::Env(name) = &username {
            names.push(name.clone());
        }
        if let Password::Env(name) = &password
            && !names.contains(name)
        {
            names.push(name.clone());
        }
        debug_assert!(names.len() <= MAX_NAMED_ENV);
        Ok(EnvSource {
            username,
            password,
            names,
        })
    }

    async fn run(&self, req: &SourceRequest, ctx: &Context) -> Result<Token, SourceError> {
        let registry = &req.key;
        let from_caller = |name: &str| {
            req.env.get(name).map(str::to_owned).ok_or_else(|| {
                SourceError::not_applicable(format!(
                    "{name} is not set in the environment of the command that asked for \
                     {registry}, so its `env` entry did not apply"
                ))
            })
        };
        let username = match &self.username {
            Username::Literal(name) => name.clone(),
            Username::Env(name) => from_caller(name)?,
        };
        let secret = match &self.password {
            Password::Env(name) => Secret::new(from_caller(name)?),
            Password::Secret(name) => {
                ctx.named_secret(
                    &format!("{registry}: "),
                    name,
                    "`password` of its `env` entry",
                    &format!("store it with `regent secret set {name}`"),
                )
                .await?
            }
        };
        Ok(Token {
            username,
            secret,
            expires_at: None,
        })
    }
}

/// The variable of `{ env = "NAME" }` in `key`; `other` is the key's other
/// form, for the message.
fn env_name(key: &str, value: toml::Value, other: &str) -> Result<String, String> {
    let how = format!("`{key}` must be `{{ env = \"VARIABLE\" }}` or {other}");
    let toml::Value::Table(mut table) = value else {
        return Err(how);
    };
    match table.remove("env") {
        Some(toml::Value::String(name)) if table.is_empty() => {
            if is_env_name(&name) {
                Ok(name)
            } else {
                Err(format!(
                    "`{key}`: {:?} is not a variable name (letters, digits and `_`, not \
                     starting with a digit)",
                    text::clip(&name)
                ))
            }
        }
        _ => Err(how),
    }
}

impl Source for EnvSource {
    fn name(&self) -> &'static str {
        "env"
    }

    fn cache_key(&self, _req: &SourceRequest) -> String {
        // Never used to cache (per-request), but says what it reads.
        self.names.join(",")
    }

    fn caller_env(&self) -> &'static [&'static str] {
        &[]
    }

    fn named_env(&self) -> &[String] {
        &self.names
    }

    fn per_request(&self) -> bool {
        true
    }

    fn fetch<'a>(
        &'a self,
        req: &'a SourceRequest,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(self.run(req, ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regent_shared::protocol::CallerEnv;
    use regent_shared::registry;

    fn parse(text: &str) -> Result<EnvSource, String> {
        EnvSource::from_settings(toml::from_str(text).expect("toml"))
    }

    fn request(env: CallerEnv) -> SourceRequest {
        SourceRequest {
            key: registry::canonical("ghcr.io").expect("key"),
            server_url: "ghcr.io".into(),
            env,
        }
    }

    #[test]
    fn settings_name_the_variables_once() {
        let s = parse(
            r#"username = { env = "GITHUB_ACTOR" }
               password = { env = "GITHUB_TOKEN" }"#,
        )
        .expect("parses");
        assert_eq!(s.named_env(), ["GITHUB_ACTOR", "GITHUB_TOKEN"]);
        let s = parse(
            r#"username = { env = "TOKEN" }
               password = { env = "TOKEN" }"#,
        )
        .expect("parses");
        assert_eq!(s.named_env(), ["TOKEN"]);
        let s = parse(
            r#"username = "x-access-token"
               password = { secret = "gh" }"#,
        )
        .expect("parses");
        assert!(s.named_env().is_empty());
    }

    #[test]
    fn a_literal_password_is_refused_without_quoting_it() {
        let e = parse(
            r#"username = "u"
               password = "hunter2-literal""#,
        )
        .expect_err("refused");
        assert!(e.contains("must not hold the password"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn bad_settings_say_what_to_write() {
        for (text, expect) in [
            (r#"password = { env = "T" }"#, "no `username`"),
            (r#"username = "u""#, "no `password`"),
            (
                r#"username = { env = "1BAD" }
                   password = { env = "T" }"#,
                "not a variable name",
            ),
            (
                r#"username = { env = "U", x = 1 }
                   password = { env = "T" }"#,
                "must be `{ env",
            ),
            (
                r#"username = "u"
                   password = { env = "T" }
                   extra = 1"#,
                "unknown key `extra`",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(expect), "{text}: {e}");
        }
    }

    #[tokio::test]
    async fn values_come_from_the_request_and_an_unset_one_does_not_apply() {
        let s = parse(
            r#"username = { env = "GITHUB_ACTOR" }
               password = { env = "GITHUB_TOKEN" }"#,
        )
        .expect("parses");
        let ctx = Context::without_secrets();
        let env = CallerEnv::from([("GITHUB_ACTOR", "octo"), ("GITHUB_TOKEN", "ghs_x")]);
        let token = s.fetch(&request(env), &ctx).await.expect("token");
        assert_eq!(token.username, "octo");
        assert_eq!(token.secret.expose(), "ghs_x");
        assert_eq!(token.expires_at, None);

        let env = CallerEnv::from([("GITHUB_ACTOR", "octo")]);
        let e = s
            .fetch(&request(env), &ctx)
            .await
            .err()
            .expect("not applicable");
        assert_eq!(e.class, super::super::ErrorClass::NotApplicable);
        assert!(e.message.contains("GITHUB_TOKEN is not set"), "{e}");
    }
}
