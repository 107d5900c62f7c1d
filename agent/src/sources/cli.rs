//! A cloud provider's CLI (`gcloud`, `az`) as the last step of a source's
//! credential chain: run with a bound on time and on output, never through a
//! shell, and never able to hang a `get`.
//!
//! Which program runs is [`Cli::from_env`]'s to say: a variable of the
//! agent's environment (`REGENT_GCLOUD`, `REGENT_AZ`) names it (a systemd
//! user unit's `PATH` rarely holds `~/google-cloud-sdk/bin`), or turns the
//! step off when set and empty; unset, the bare name is looked up on the
//! agent's `PATH`.
//!
//! The program runs with the agent's own
//! environment (see [`crate::environ`]) less regent's variables and
//! systemd's (`REGENT_*`, `LISTEN_*`, `NOTIFY_SOCKET`), plus what the
//! source passes (the caller's `CLOUDSDK_CONFIG`, say). stdin is
//! `/dev/null`; stdout is kept in wiped memory and capped; only the end of
//! stderr is kept. It runs in a process group of its own, which is
//! SIGKILLed at the timeout and when it prints too much (when the fetch
//! is dropped, the program itself is killed).
//!
//! What a CLI prints on stdout is a token: it never reaches an error. Its
//! stderr is quoted by [`Output::reason`], one clipped line, with every
//! line of stdout cut out of it.

use std::ffi::OsStr;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroizing;

use super::text;
use crate::sys;

/// How much of the end of stderr is kept.
const STDERR_TAIL: usize = 4 << 10;

/// The CLI a step runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cli {
    pub program: String,
    /// Named by the variable, not found on `PATH`: its absence is an
    /// error, not a step that does not apply.
    pub explicit: bool,
}

impl Cli {
    /// The CLI the agent's variable `var` names, else `default` on `PATH`;
    /// `None` when `var` is set and empty (the step is off).
    pub fn from_env(var: &str, default: &str) -> Option<Cli> {
        match std::env::var_os(var) {
            None => Some(Cli {
                program: default.to_owned(),
                explicit: false,
            }),
            Some(v) if v.is_empty() => None,
            Some(v) => Some(Cli {
                program: v.to_string_lossy().into_owned(),
                explicit: true,
            }),
        }
    }
}

/// What the program did.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Zeroizing<Vec<u8>>,
    stderr: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No such program on `PATH`: this step of the chain does not apply.
    #[error("`{0}` is not installed (not on the agent's PATH)")]
    NotFound(String),
    #[error("cannot run `{0}`: {1}")]
    Spawn(String, io::Error),
    #[error("`{0}` did not finish within {secs}s and was killed", secs = .1.as_secs())]
    TimedOut(String, Duration),
    #[error("`{0}` printed more than {1} bytes and was killed")]
    TooLarge(String, usize),
    #[error("cannot read what `{0}` printed: {1}")]
    Io(String, io::Error),
}

impl Output {
    /// Why it failed, in one line: the last non-empty line of stderr,
    /// clipped, without anything it printed on stdout; or its exit status.
    pub fn reason(&self) -> String {
        let status = match self.status.code() {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_owned(),
        };
        let mut err = String::from_utf8_lossy(&self.stderr).into_owned();
        for line in String::from_utf8_lossy(&self.stdout).lines() {
            let line = line.trim();
            if line.len() >= 4 {
                err = err.replace(line, "[redacted]");
            }
        }
        match err.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            Some(line) => format!("{status}: {}", text::clip(line)),
            None => status,
        }
    }
}

/// Runs `program` with `args`, `env` added to the agent's environment;
/// stdout at most `cap` bytes, everything within `timeout`.
pub async fn run(
    program: &str,
    args: &[&str],
    env: &[(&str, &OsStr)],
    timeout: Duration,
    cap: usize,
) -> Result<Output, CliError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    sys::own_group(&mut cmd);
    for (name, _) in std::env::vars_os() {
        let agent_only = name.to_str().is_some_and(|n| {
            n.starts_with("REGENT_") || n.starts_with("LISTEN_") || n == "NOTIFY_SOCKET"
        });
        if agent_only {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CliError::NotFound(program.to_owned()),
        _ => CliError::Spawn(program.to_owned(), e),
    })?;
    let group = child.id();
    // Only called before the leader (our child) is reaped, so the group id
    // is still the one made for the program.
    let kill_group = || {
        if let Some(pid) = group {
            sys::kill_group(pid);
        }
    };
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let mut stdout = Zeroizing::new(Vec::with_capacity(cap.min(64 << 10) + 1));
        let mut stderr = Vec::new();
        let reading = async {
            let read = read_capped(out, cap, &mut stdout).await;
            if !matches!(read, Ok(true)) {
                // It would block on a full pipe (or hold stderr open) until
                // the timeout.
                kill_group();
            }
            read
        };
        let (read, ()) = tokio::join!(reading, read_tail(err, &mut stderr));
        let status = child.wait().await;
        (read, status, stdout, stderr)
    };
    let ended = tokio::time::timeout(timeout, run).await;
    let (read, status, stdout, stderr) = match ended {
        Ok(done) => done,
        Err(_) => {
            kill_group();
            return Err(CliError::TimedOut(program.to_owned(), timeout));
        }
    };
    match read {
        Ok(true) => {}
        Ok(false) => return Err(CliError::TooLarge(program.to_owned(), cap)),
        Err(e) => return Err(CliError::Io(program.to_owned(), e)),
    }
    let status = status.map_err(|e| CliError::Io(program.to_owned(), e))?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Reads `pipe` into `buf` up to `cap` bytes: `Ok(false)` past the cap.
/// `buf` has room for the cap up front when it is small, and grows by hand
/// otherwise, so no reallocation leaves an unwiped copy.
async fn read_capped(
    pipe: Option<impl AsyncRead + Unpin>,
    cap: usize,
    buf: &mut Zeroizing<Vec<u8>>,
) -> io::Result<bool> {
    let Some(pipe) = pipe else {
        return Ok(true);
    };
    let mut limited = pipe.take(cap as u64 + 1);
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = limited.read(&mut chunk[..]).await?;
        if n == 0 {
            return Ok(true);
        }
        if buf.len() + n > cap {
            return Ok(false);
        }
        if buf.len() + n > buf.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity((buf.capacity() * 2).max(4096)));
            bigger.extend_from_slice(buf);
            *buf = bigger;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads all of `pipe`, keeping its last [`STDERR_TAIL`] bytes.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, tail: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > 2 * STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
    }
    if tail.len() > STDERR_TAIL {
        tail.drain(..tail.len() - STDERR_TAIL);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn reads_stdout_and_quotes_stderr_without_it() {
        let out = run(
            "sh",
            &[
                "-c",
                "echo tok-12345; echo \"refused tok-12345\" >&2; exit 3",
            ],
            &[],
            SEC,
            1024,
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(&out.stdout[..], b"tok-12345\n");
        assert_eq!(out.reason(), "exit status 3: refused [redacted]");
    }

    #[tokio::test]
    async fn passes_env_and_hides_regent_variables() {
        let out = run(
            "sh",
            &[
                "-c",
                "printf '%s|%s' \"$ONE\" \"${REGENT_PROBE_CLI-unset}\"",
            ],
            &[
                ("ONE", OsStr::new("1")),
                ("REGENT_PROBE_CLI", OsStr::new("x")),
            ],
            SEC,
            1024,
        )
        .await
        .unwrap();
        // What the source passes itself goes through, even with the prefix.
        assert_eq!(&out.stdout[..], b"1|x");
    }

    #[tokio::test]
    async fn bounds_time_output_and_says_when_missing() {
        let e = run("sleep", &["30"], &[], Duration::from_millis(200), 1024)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, CliError::TimedOut(..)), "{e}");
        let e = run("sh", &["-c", "yes"], &[], SEC, 1000)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, CliError::TooLarge(..)), "{e}");
        let e = run("regent-no-such-cli", &[], &[], SEC, 10)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, CliError::NotFound(_)), "{e}");
    }
}
