//! The `exec` source: a configured command prints the credential.
//!
//! ```toml
//! [[registry]]
//! match = "*.corp.example"
//! source = "exec"
//! command = ["/usr/local/bin/corp-token", "--for-docker"]   # argv, no shell
//! timeout_secs = 10                                        # default 20, at most 25
//! env = { TOKEN = { secret = "corp-token" }, MODE = "ci" }  # extra variables
//! ```
//!
//! The command gets one JSON object on stdin,
//! `{"Version":1,"ServerURL":"<as the client sent it>","Registry":"<canonical key>"}`,
//! and prints one on stdout:
//! `{"Version":1,"Username":"…","Secret":"…","ExpiresAt":"<RFC 3339>"}`.
//! `ExpiresAt` may also be an integer of Unix seconds, or absent: the token
//! is then kept until the agent stops or the config is reloaded. Unknown
//! fields are ignored; another `Version` is refused.
//!
//! Bounds: the command runs in a process group of its own, which is killed
//! when it exceeds its timeout; stdout is capped at 1 MiB and zeroed after
//! parsing; only the tail of stderr is kept. A non-zero exit is a transient
//! error (retried with backoff) that quotes the last lines of stderr; output
//! that does not parse, a command that cannot be started and a missing named
//! secret are permanent. Nothing the command printed on stdout ever reaches an
//! error or a log line.
//!
//! Redaction: before stderr is quoted (in the error the client shows, in
//! `regent ls` and in the log: all of them carry the one message), every
//! named secret handed to the command, and every line and JSON string value
//! it printed on stdout, is replaced by `[redacted]`, verbatim and in the
//! forms a program is likely to print it in: JSON- or Rust-escaped,
//! percent-encoded, base64 (standard or URL-safe, padded or not). A named
//! secret shorter than 4 bytes cannot be cut out without mangling the text
//! (one letter would vanish everywhere): when stderr contains one, stderr is
//! not quoted at all, and the error says so. Not recognised: a value split
//! across lines or chunks, or transformed otherwise (say base64 of
//! `user:secret`). Stdout lines and values shorter than 4 bytes are not
//! redacted; a stdout of more than 256 of them is not checked, and stderr is
//! then not quoted either. When the kept tail of stderr starts in the middle
//! of a line, that first line is dropped: it may start with the end of a
//! secret whose beginning was cut off.
//!
//! Environment of the command: the agent's own, without any `REGENT_*`
//! variable (`REGENT_MASTER_KEY` is a secret), plus the caller's forwarded
//! variables (`AWS_PROFILE`, `AWS_REGION`, `AWS_DEFAULT_REGION`), plus `env`
//! from the config, where `{ secret = "NAME" }` is a named secret stored with
//! `regent secret set NAME`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use regent_shared::Secret;
use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use super::{BoxFuture, Context, Source, SourceError, SourceRequest, Token};
use crate::secrets;

/// The protocol version of stdin and stdout.
pub const VERSION: u64 = 1;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// A cold `get` waits for the command, and the helper waits at most 30 s for
/// the agent: the command must be done (or killed) before that.
pub const MAX_TIMEOUT_SECS: u64 = 25;
/// The most stdout a command may print.
pub const MAX_STDOUT: usize = 1 << 20;
/// How much of the end of stderr is kept.
const STDERR_TAIL: usize = 8 << 10;
/// How many lines of stderr an error quotes, and how many characters at most.
const STDERR_LINES: usize = 3;
const STDERR_CHARS: usize = 400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    command: Vec<String>,
    timeout_secs: Option<u64>,
    #[serde(default)]
    env: BTreeMap<String, EnvValue>,
}

#[derive(Deserialize, Hash, Clone, Debug)]
#[serde(untagged)]
pub enum EnvValue {
    Plain(String),
    Secret(SecretRef),
}

#[derive(Deserialize, Hash, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub secret: String,
}

#[derive(Debug)]
pub struct Exec {
    command: Vec<String>,
    timeout: Duration,
    env: BTreeMap<String, EnvValue>,
    fingerprint: String,
}

impl Exec {
    pub fn new(
        command: Vec<String>,
        timeout: Duration,
        env: BTreeMap<String, EnvValue>,
    ) -> Result<Exec, String> {
        match command.first() {
            None => return Err("`command` is empty: give the program and its arguments".into()),
            Some(p) if p.is_empty() => return Err("`command` starts with an empty program".into()),
            Some(_) => {}
        }
        if command.iter().any(|a| a.contains('\0')) {
            return Err("`command` contains a NUL byte".into());
        }
        for (name, value) in &env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(format!("`env` has an invalid variable name {name:?}"));
            }
            match value {
                EnvValue::Plain(v) if v.contains('\0') => {
                    return Err(format!("`env.{name}` contains a NUL byte"));
                }
                EnvValue::Secret(r) => {
                    secrets::check_name(&r.secret).map_err(|e| format!("`env.{name}`: {e}"))?
                }
                EnvValue::Plain(_) => {}
            }
        }
        let fingerprint = super::fingerprint(&(&command, timeout, &env));
        Ok(Exec {
            command,
            timeout,
            env,
            fingerprint,
        })
    }

    pub fn from_settings(settings: toml::Table) -> Result<Exec, String> {
        let s: Settings = toml::Value::Table(settings)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().trim().to_owned())?;
        let timeout = match s.timeout_secs {
            None => DEFAULT_TIMEOUT,
            Some(t) if (1..=MAX_TIMEOUT_SECS).contains(&t) => Duration::from_secs(t),
            Some(t) => {
                return Err(format!(
                    "`timeout_secs` is {t}: give 1 to {MAX_TIMEOUT_SECS} seconds"
                ));
            }
        };
        Exec::new(s.command, timeout, s.env)
    }

    fn program(&self) -> &str {
        &self.command[0]
    }

    async fn run(&self, req: &SourceRequest, ctx: &Context) -> Result<Token, SourceError> {
        let program = self.program();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&self.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("REGENT_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(&req.env);
        let mut redactor = Redactor::default();
        for (name, value) in &self.env {
            match value {
                EnvValue::Plain(v) => {
                    cmd.env(name, v);
                }
                EnvValue::Secret(r) => {
                    let secret = ctx
                        .secrets
                        .secret(&r.secret)
                        .await
                        .map_err(|e| {
                            SourceError::transient(format!(
                                "cannot read the secret {:?}: {e}",
                                r.secret
                            ))
                        })?
                        .ok_or_else(|| {
                            SourceError::permanent(format!(
                                "the secret {:?} (env.{name} in the config) is not set; \
                                 set it with `regent secret set {}`",
                                r.secret, r.secret
                            ))
                        })?;
                    redactor.add_secret(&r.secret, secret.expose());
                    cmd.env(name, secret.expose());
                }
            }
        }
        let input = serde_json::to_vec(&serde_json::json!({
            "Version": VERSION,
            "ServerURL": req.server_url,
            "Registry": req.key,
        }))
        .expect("a JSON object of strings encodes");

        let mut child = cmd
            .spawn()
            .map_err(|e| SourceError::permanent(format!("cannot run `{program}`: {e}")))?;
        // The command's environment may hold secrets: drop our copy.
        drop(cmd);
        let group = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        tracing::debug!(program, pid = group, key = %req.key, "exec source started");

        let work = async {
            let write = async {
                if let Some(mut stdin) = stdin {
                    // A command that does not read its stdin is fine.
                    let _ = stdin.write_all(&input).await;
                }
            };
            let (_, out, err) = tokio::join!(
                write,
                read_capped(stdout, MAX_STDOUT, group),
                read_tail(stderr, STDERR_TAIL)
            );
            let status = child.wait().await;
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(self.timeout, work).await {
            Ok(done) => done,
            Err(_) => {
                kill_group(group);
                let _ = child.kill().await;
                return Err(SourceError::transient(format!(
                    "`{program}` did not finish within {}s and was killed \
                     (raise `timeout_secs` in the config if it needs longer)",
                    self.timeout.as_secs()
                )));
            }
        };
        if let Err(ReadError::TooLarge) = out {
            return Err(SourceError::permanent(format!(
                "`{program}` printed more than {MAX_STDOUT} bytes on stdout and was killed"
            )));
        }
        let status = status
            .map_err(|e| SourceError::transient(format!("cannot wait for `{program}`: {e}")))?;
        if !status.success() {
            if let Ok(out) = &out {
                redactor.add_stdout(out);
            }
            let quote = redactor.quote(&err);
            use std::os::unix::process::ExitStatusExt;
            let what = match (status.code(), status.signal()) {
                (Some(code), _) => format!("`{program}` exited with status {code}"),
                (None, Some(sig)) => format!("`{program}` was killed by signal {sig}"),
                (None, None) => format!("`{program}` failed"),
            };
            return Err(SourceError::transient(quote.after(what)));
        }
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                return Err(SourceError::transient(format!(
                    "cannot read the output of `{program}`: {e}"
                )));
            }
        };
        let token = parse_output(&out).map_err(|why| {
            SourceError::permanent(format!(
                "`{program}` printed {why} (expected {{\"Version\":1,\"Username\":…,\"Secret\":…}})"
            ))
        })?;
        tracing::debug!(
            program,
            key = %req.key,
            secret_bytes = token.secret.len(),
            expires = token.expires_at.is_some(),
            "exec source answered"
        );
        Ok(token)
    }
}

impl Source for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn cache_key(&self, req: &SourceRequest) -> String {
        // The command sees the key, the URL as sent and the forwarded
        // variables; all of them can change its answer.
        let request = super::fingerprint(&(&req.server_url, &req.env));
        format!("{}:{}:{}", self.fingerprint, request, req.key)
    }

    fn fetch<'a>(
        &'a self,
        req: &'a SourceRequest,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(self.run(req, ctx))
    }
}

fn kill_group(group: Option<u32>) {
    if let Some(pid) = group.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: signalling a process group we created; a stale group is ESRCH.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

enum ReadError {
    TooLarge,
    Io(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::TooLarge => write!(f, "more than {MAX_STDOUT} bytes"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Reads all of `pipe`, up to `cap` bytes. Past the cap the command's group
/// is killed: it would block on a full pipe until its timeout otherwise.
async fn read_capped(
    pipe: Option<impl AsyncRead + Unpin>,
    cap: usize,
    group: Option<u32>,
) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    let Some(pipe) = pipe else {
        return Ok(buf);
    };
    let mut limited = pipe.take(cap as u64 + 1);
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = limited.read(&mut chunk[..]).await.map_err(ReadError::Io)?;
        if n == 0 {
            break;
        }
        if buf.len() + n > cap {
            kill_group(group);
            return Err(ReadError::TooLarge);
        }
        // Grow by hand: a reallocation would leave an unzeroed copy behind.
        if buf.len() + n > buf.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity((buf.capacity() * 2).max(n)));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// The end of a command's stderr.
#[derive(Default)]
struct Tail {
    bytes: Zeroizing<Vec<u8>>,
    /// The start was dropped: the first bytes may be the end of a line, or
    /// of a secret, whose beginning is gone.
    cut: bool,
}

/// Reads all of `pipe`, keeping only its last `keep` bytes.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, keep: usize) -> Tail {
    let mut tail = Tail::default();
    let Some(mut pipe) = pipe else {
        return tail;
    };
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        match pipe.read(&mut chunk[..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.bytes.extend_from_slice(&chunk[..n]);
                if tail.bytes.len() > 2 * keep {
                    let excess = tail.bytes.len() - keep;
                    tail.bytes.drain(..excess);
                    tail.cut = true;
                }
            }
        }
    }
    if tail.bytes.len() > keep {
        let excess = tail.bytes.len() - keep;
        tail.bytes.drain(..excess);
        tail.cut = true;
    }
    tail
}

/// Shorter secrets are not cut out of stderr (a secret of one letter would
/// cut that letter everywhere): a stderr that holds one is not quoted at all.
const MIN_REDACT: usize = 4;
const REDACTED: &str = "[redacted]";
/// How many lines and string values of stdout are checked against stderr;
/// past that, stderr is not quoted.
const MAX_STDOUT_VALUES: usize = 256;

/// What a quote of a command's stderr must not contain: each named secret
/// regent handed it, and what it printed on stdout, each verbatim and in the
/// forms a program is likely to print it in (JSON- or Rust-escaped,
/// percent-encoded, base64).
#[derive(Default)]
struct Redactor {
    /// Cut out wherever they occur; each at least [`MIN_REDACT`] bytes.
    needles: Vec<Zeroizing<Vec<u8>>>,
    /// Forms of named secrets shorter than that, with the secret's name.
    short: Vec<(String, Zeroizing<Vec<u8>>)>,
    /// Stdout had more than [`MAX_STDOUT_VALUES`] lines and values.
    stdout_unchecked: bool,
}

/// How stderr appears in an error.
enum Quote {
    Text(Zeroizing<String>),
    Nothing,
    /// A short secret occurs in it (the secret's name).
    ShortSecret(String),
    StdoutUnchecked,
}

impl Quote {
    /// `what` happened, followed by the quote.
    fn after(&self, what: String) -> String {
        match self {
            Quote::Text(tail) => format!("{what}; its stderr ends with: {}", tail.as_str()),
            Quote::Nothing => format!("{what} and printed nothing on stderr"),
            Quote::ShortSecret(name) => format!(
                "{what}; its stderr is not shown because it contains the secret {name:?}, \
                 which is too short to redact (under {MIN_REDACT} bytes); run the command by hand \
                 to read it"
            ),
            Quote::StdoutUnchecked => format!(
                "{what}; its stderr is not shown because its stdout has more than \
                 {MAX_STDOUT_VALUES} lines to keep out of it; run the command by hand to read it"
            ),
        }
    }
}

impl Redactor {
    /// The named secret `name`, handed to the command.
    fn add_secret(&mut self, name: &str, value: &str) {
        for form in forms(value.as_bytes()) {
            if form.len() >= MIN_REDACT {
                self.needles.push(form);
            } else {
                self.short.push((name.to_owned(), form));
            }
        }
    }

    /// What the command printed on stdout: each line, and each string value
    /// if it is JSON, of at least [`MIN_REDACT`] bytes.
    fn add_stdout(&mut self, out: &[u8]) {
        let mut values: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        if let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(out) {
            json_strings(&mut json, &mut values);
        }
        values.extend(
            out.split(|b| *b == b'\n')
                .map(|l| l.trim_ascii())
                .map(|l| Zeroizing::new(l.to_vec())),
        );
        values.retain(|v| v.len() >= MIN_REDACT);
        if values.len() > MAX_STDOUT_VALUES {
            self.stdout_unchecked = true;
            return;
        }
        for v in &values {
            self.needles.extend(forms(v));
        }
    }

    /// The last lines of `tail`, without anything it must not contain.
    fn quote(&self, tail: &Tail) -> Quote {
        if self.stdout_unchecked {
            return Quote::StdoutUnchecked;
        }
        let mut raw: &[u8] = &tail.bytes;
        if tail.cut {
            // The first line may start with the end of a secret whose
            // beginning was cut off: drop it, or, in one long line, what
            // could be such an end (shorter than the longest needle).
            raw = match raw.iter().position(|b| *b == b'\n') {
                Some(nl) => &raw[nl + 1..],
                None => {
                    let longest = self.needles.iter().map(|n| n.len()).max().unwrap_or(1);
                    raw.get(longest - 1..).unwrap_or_default()
                }
            };
        }
        if let Some((name, _)) = self.short.iter().find(|(_, f)| contains(raw, f)) {
            return Quote::ShortSecret(name.clone());
        }
        match summarize_stderr(&self.redact(raw)) {
            Some(text) => Quote::Text(text),
            None => Quote::Nothing,
        }
    }

    /// `raw` with every needle replaced by [`REDACTED`]: overlapping and
    /// adjacent matches become one marker.
    fn redact(&self, raw: &[u8]) -> Zeroizing<Vec<u8>> {
        let mut hidden = vec![false; raw.len()];
        for needle in &self.needles {
            let mut from = 0;
            while let Some(at) = find(&raw[from..], needle) {
                let start = from + at;
                hidden[start..start + needle.len()].fill(true);
                from = start + 1;
            }
        }
        let mut out = Zeroizing::new(Vec::with_capacity(raw.len()));
        for (i, &b) in raw.iter().enumerate() {
            if !hidden[i] {
                out.push(b);
            } else if i == 0 || !hidden[i - 1] {
                out.extend_from_slice(REDACTED.as_bytes());
            }
        }
        out
    }
}

/// `value` and the ways a program is likely to print it; each distinct.
fn forms(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    if value.is_empty() {
        return Vec::new();
    }
    let mut forms = vec![Zeroizing::new(value.to_vec())];
    if let Ok(text) = std::str::from_utf8(value) {
        let quoted = |s: String| {
            let s = Zeroizing::new(s);
            Zeroizing::new(s.as_bytes()[1..s.len() - 1].to_vec())
        };
        forms.push(quoted(
            serde_json::to_string(text).expect("a string encodes as JSON"),
        ));
        forms.push(quoted(format!("{text:?}")));
    }
    let mut percent = Zeroizing::new(Vec::with_capacity(value.len() * 3));
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            percent.push(b);
        } else {
            percent.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    forms.push(percent);
    forms.push(Zeroizing::new(STANDARD_NO_PAD.encode(value).into_bytes()));
    forms.push(Zeroizing::new(URL_SAFE_NO_PAD.encode(value).into_bytes()));
    let mut distinct: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(forms.len());
    for f in forms {
        if !distinct.iter().any(|d| **d == *f) {
            distinct.push(f);
        }
    }
    distinct
}

/// Moves every string value of `json` (not the keys) into `out`, leaving
/// zeroed strings behind.
fn json_strings(json: &mut serde_json::Value, out: &mut Vec<Zeroizing<Vec<u8>>>) {
    use zeroize::Zeroize;
    match json {
        serde_json::Value::String(s) => {
            out.push(Zeroizing::new(s.as_bytes().to_vec()));
            s.zeroize();
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// The last few non-empty lines of stderr on one line, printable, bounded.
fn summarize_stderr(raw: &[u8]) -> Option<Zeroizing<String>> {
    let text = String::from_utf8_lossy(raw);
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
                .trim()
                .to_owned()
        })
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let joined = lines[lines.len().saturating_sub(STDERR_LINES)..].join(" / ");
    let count = joined.chars().count();
    Some(Zeroizing::new(if count > STDERR_CHARS {
        let skip = count - STDERR_CHARS;
        format!("…{}", joined.chars().skip(skip).collect::<String>())
    } else {
        joined
    }))
}

#[derive(Deserialize)]
struct Output {
    #[serde(rename = "Version")]
    version: Option<serde_json::Value>,
    #[serde(rename = "Username")]
    username: Option<String>,
    #[serde(rename = "Secret", default, deserialize_with = "secret_field")]
    secret: Option<Secret>,
    #[serde(rename = "ExpiresAt")]
    expires_at: Option<Expiry>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Expiry {
    Unix(i64),
    Text(String),
}

fn secret_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(Secret::new))
}

/// Parses what the command printed. The error says what was wrong, never
/// what was there.
fn parse_output(out: &[u8]) -> Result<Token, String> {
    let text = std::str::from_utf8(out).map_err(|_| "output that is not UTF-8".to_owned())?;
    if text.trim().is_empty() {
        return Err("nothing on stdout".into());
    }
    let parsed: Output = serde_json::from_str(text).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "JSON of the wrong shape",
            _ => "something that is not JSON",
        };
        format!("{what} (line {} column {})", e.line(), e.column())
    })?;
    match &parsed.version {
        None => return Err("JSON without a \"Version\"".into()),
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        Some(serde_json::Value::Number(n)) => {
            return Err(format!(
                "\"Version\":{n}, which this regent does not speak (it speaks {VERSION})"
            ));
        }
        Some(_) => return Err("a \"Version\" that is not a number".into()),
    }
    let username = match parsed.username {
        Some(u) if !u.is_empty() => u,
        _ => return Err("JSON without a \"Username\"".into()),
    };
    let secret = match parsed.secret {
        Some(s) if !s.is_empty() => s,
        _ => return Err("JSON without a \"Secret\"".into()),
    };
    let expires_at = match parsed.expires_at {
        None => None,
        Some(Expiry::Unix(secs)) => {
            let secs =
                u64::try_from(secs).map_err(|_| "an \"ExpiresAt\" before 1970".to_owned())?;
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        }
        Some(Expiry::Text(s)) => {
            let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| {
                    "an \"ExpiresAt\" that is neither RFC 3339 (2030-01-02T03:04:05Z) \
                     nor Unix seconds"
                        .to_owned()
                })?;
            Some(SystemTime::from(t))
        }
    };
    Ok(Token {
        username,
        secret,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(out: &str) -> String {
        match parse_output(out.as_bytes()) {
            Ok(_) => panic!("expected an error for {out}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_rfc3339_and_unix_expiry() {
        let t = parse_output(
            br#"{"Version":1,"Username":"u","Secret":"s","ExpiresAt":"2030-01-02T03:04:05.5Z"}"#,
        )
        .unwrap();
        assert_eq!(t.username, "u");
        assert_eq!(t.secret.expose(), "s");
        let secs = t
            .expires_at
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(secs.as_secs(), 1_893_553_445);
        let t = parse_output(
            br#"{"Version":1,"Username":"u","Secret":"s","ExpiresAt":1893553445,"Extra":true}"#,
        )
        .unwrap();
        assert_eq!(
            t.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_553_445))
        );
        let t = parse_output(br#"{"Version":1,"Username":"u","Secret":"s"}"#).unwrap();
        assert!(t.expires_at.is_none());
    }

    #[test]
    fn errors_never_quote_the_output() {
        for out in [
            "hunter2-not-json",
            r#"{"Version":1,"Username":"u","Secret":12345}"#,
            r#"{"Version":2,"Username":"u","Secret":"hunter2"}"#,
            r#"{"Username":"u","Secret":"hunter2"}"#,
            r#"{"Version":1,"Username":"u","Secret":""}"#,
            r#"{"Version":1,"Username":"u","Secret":"hunter2","ExpiresAt":"hunter2"}"#,
            r#"["hunter2"]"#,
            "",
        ] {
            let e = err(out);
            assert!(!e.contains("hunter2") && !e.contains("12345"), "{e}");
        }
        assert!(err(r#"{"Version":2,"Username":"u","Secret":"x"}"#).contains("Version\":2"));
    }

    #[test]
    fn stderr_summary_keeps_the_last_lines() {
        let s = summarize_stderr(b"one\n\ntwo\nthree\x1b[0m\nfour\n").unwrap();
        assert_eq!(s.as_str(), "two / three [0m / four");
        assert!(summarize_stderr(b"\n  \n").is_none());
        let long = "x".repeat(5000);
        assert!(summarize_stderr(long.as_bytes()).unwrap().chars().count() <= STDERR_CHARS + 1);
    }

    fn quoted(r: &Redactor, stderr: &[u8], cut: bool) -> String {
        let tail = Tail {
            bytes: Zeroizing::new(stderr.to_vec()),
            cut,
        };
        match r.quote(&tail) {
            Quote::Text(t) => t.as_str().to_owned(),
            Quote::Nothing => "<nothing>".into(),
            Quote::ShortSecret(name) => format!("<short {name}>"),
            Quote::StdoutUnchecked => "<unchecked>".into(),
        }
    }

    #[test]
    fn stderr_is_redacted_in_every_form() {
        let mut r = Redactor::default();
        r.add_secret("a", "p4ss\"w/rd");
        r.add_secret("b", "w/rd-and-more");
        let q = quoted(&r, b"x p4ss\"w/rd-and-more y\n", false);
        assert_eq!(q, "x [redacted] y");
        let q = quoted(
            &r,
            br#"{"t":"p4ss\"w/rd"} p4ss%22w%2Frd cDRzcyJ3L3Jk"#,
            false,
        );
        assert_eq!(q, r#"{"t":"[redacted]"} [redacted] [redacted]"#);
        // Nothing else is touched.
        assert_eq!(quoted(&r, b"denied\n", false), "denied");
        assert_eq!(quoted(&r, b"\n", false), "<nothing>");
    }

    #[test]
    fn a_short_secret_withholds_stderr_only_when_it_is_there() {
        let mut r = Redactor::default();
        r.add_secret("pin", "q7#");
        assert_eq!(quoted(&r, b"the pin q7# is wrong\n", false), "<short pin>");
        assert_eq!(quoted(&r, b"the pin is wrong\n", false), "the pin is wrong");
    }

    #[test]
    fn stdout_lines_and_values_are_kept_out_of_stderr() {
        let mut r = Redactor::default();
        r.add_stdout(br#"{"Version":1,"Username":"bob","Secret":"tok-123456"}"#);
        let q = quoted(&r, b"sent tok-123456 for bob\n", false);
        assert_eq!(q, "sent [redacted] for bob");
        let mut r = Redactor::default();
        r.add_stdout(b"plain-token-line\n  \n");
        assert_eq!(
            quoted(&r, b"got plain-token-line\n", false),
            "got [redacted]"
        );
        let mut r = Redactor::default();
        let many: String = (0..300).map(|i| format!("line-{i}\n")).collect();
        r.add_stdout(many.as_bytes());
        assert_eq!(quoted(&r, b"anything\n", false), "<unchecked>");
    }

    #[test]
    fn a_cut_tail_drops_its_first_partial_line() {
        let mut r = Redactor::default();
        r.add_secret("s", "0123456789");
        // The tail starts with the end of the secret.
        assert_eq!(quoted(&r, b"6789 more\nlast line\n", true), "last line");
        assert_eq!(
            quoted(&r, b"6789 more\nlast line\n", false),
            "6789 more / last line"
        );
        let q = quoted(&r, b"456789 and then a long line without an end", true);
        assert!(!q.contains("6789") && q.ends_with("without an end"), "{q}");
    }

    #[test]
    fn settings_are_checked() {
        let table = |s: &str| -> toml::Table { toml::from_str(s).unwrap() };
        assert!(Exec::from_settings(table("command = [\"/bin/true\"]")).is_ok());
        assert!(Exec::from_settings(table("command = []")).is_err());
        assert!(Exec::from_settings(table("command = [\"x\"]\ntimeout_secs = 0")).is_err());
        let e = Exec::from_settings(table("comand = [\"x\"]")).unwrap_err();
        assert!(e.contains("comand"), "{e}");
        let e = Exec::from_settings(table(
            "command = [\"x\"]\nenv = { A = { secret = \"a b\" } }",
        ))
        .unwrap_err();
        assert!(e.contains("env.A"), "{e}");
        let ok = Exec::from_settings(table(
            "command = [\"x\"]\nenv = { A = { secret = \"corp-token\" }, B = \"plain\" }",
        ))
        .unwrap();
        assert!(matches!(ok.env["A"], EnvValue::Secret(_)));
    }
}
