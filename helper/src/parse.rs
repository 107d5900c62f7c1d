//! What the helper makes of its stdin, apart from reading it: the server URL
//! of `get` and `erase`, the credentials JSON of `store`. Pure functions, so
//! the fuzz targets (fuzz/) run exactly this code.

use regent_shared::Secret;
use regent_shared::messages::{NO_SERVER_URL, NO_USERNAME};
use serde_json::Value;

/// A failure to report: the line for stdout (never a secret) and, optionally,
/// a reason for stderr.
pub struct Failure {
    pub stdout: String,
    pub stderr: Option<String>,
}

impl Failure {
    pub fn line(msg: impl Into<String>) -> Self {
        Failure {
            stdout: msg.into(),
            stderr: None,
        }
    }
}

/// The server URL of `get` and `erase`: the whole input with line breaks
/// removed and surrounding whitespace trimmed (clients send it with or without
/// a trailing newline). Invalid UTF-8 becomes U+FFFD, which no registry key
/// accepts.
pub fn parse_server_url(input: &[u8]) -> Result<String, Failure> {
    let text = String::from_utf8_lossy(input);
    let joined: String = text.chars().filter(|c| *c != '\n' && *c != '\r').collect();
    let url = joined.trim();
    if url.is_empty() {
        return Err(Failure::line(NO_SERVER_URL));
    }
    Ok(url.to_owned())
}

/// Parses the `store` payload the way Go's decoder does: the first JSON value,
/// keys matched case-insensitively (an exact match wins), unknown keys ignored.
pub fn parse_store(input: &[u8]) -> Result<(String, String, Secret), Failure> {
    let first = serde_json::Deserializer::from_slice(input)
        .into_iter::<Value>()
        .next();
    let mut object = match first {
        None => return Err(Failure::line("no credentials JSON on stdin")),
        Some(Err(e)) => {
            return Err(Failure::line(format!(
                "invalid credentials JSON on stdin at line {} column {}",
                e.line(),
                e.column()
            )));
        }
        Some(Ok(Value::Object(map))) => map,
        Some(Ok(_)) => {
            return Err(Failure::line(
                "invalid credentials JSON on stdin: expected an object with ServerURL, Username and Secret",
            ));
        }
    };
    let mut take = |field: &str| -> Result<String, Failure> {
        let key = object
            .keys()
            .find(|k| k.as_str() == field)
            .or_else(|| object.keys().find(|k| k.eq_ignore_ascii_case(field)))
            .cloned();
        match key.and_then(|k| object.remove(&k)) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(Failure::line(format!(
                "invalid credentials JSON on stdin: {field} must be a string"
            ))),
        }
    };
    let secret = Secret::new(take("Secret")?);
    let server_url = take("ServerURL")?;
    let username = take("Username")?;
    if server_url.trim().is_empty() {
        return Err(Failure::line(NO_SERVER_URL));
    }
    if username.is_empty() {
        return Err(Failure::line(NO_USERNAME));
    }
    Ok((server_url, username, secret))
}
