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
        let stderr_tail = summarize_stderr(&err);
        let with_stderr = |what: String| match &stderr_tail {
            Some(tail) => format!("{what}; its stderr ends with: {tail}"),
            None => format!("{what} and printed nothing on stderr"),
        };
        if !status.success() {
            use std::os::unix::process::ExitStatusExt;
            let what = match (status.code(), status.signal()) {
                (Some(code), _) => format!("`{program}` exited with status {code}"),
                (None, Some(sig)) => format!("`{program}` was killed by signal {sig}"),
                (None, None) => format!("`{program}` failed"),
            };
            return Err(SourceError::transient(with_stderr(what)));
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

/// Reads all of `pipe`, keeping only its last `keep` bytes.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, keep: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let Some(mut pipe) = pipe else {
        return tail;
    };
    let mut chunk = [0u8; 4096];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > 2 * keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
}

/// The last few non-empty lines of stderr on one line, printable, bounded.
fn summarize_stderr(raw: &[u8]) -> Option<String> {
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
    Some(if count > STDERR_CHARS {
        let skip = count - STDERR_CHARS;
        format!("…{}", joined.chars().skip(skip).collect::<String>())
    } else {
        joined
    })
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
        assert_eq!(s, "two / three [0m / four");
        assert!(summarize_stderr(b"\n  \n").is_none());
        let long = "x".repeat(5000);
        assert!(summarize_stderr(long.as_bytes()).unwrap().chars().count() <= STDERR_CHARS + 1);
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
