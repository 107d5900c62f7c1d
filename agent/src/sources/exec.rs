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
//! is then kept until the agent stops or a reload changes or removes the
//! `[[registry]]` entry it came from. Unknown fields are ignored; another
//! `Version` is refused.
//!
//! Bounds: stdout is capped at 1 MiB (past that the command is killed) and
//! zeroed after parsing; only the tail of stderr is kept. The command's exit
//! ends the run: what it printed is taken from the pipes without waiting for
//! an end of file that a child it left behind holds back (at most 1 s more).
//! Nothing it starts outlives it: once it exited, at its timeout, when the
//! fetch is cancelled and when the agent exits, its process group and (on
//! Linux) every descendant in any group or session are SIGKILLed; see
//! `supervisor` (below) for how, and for what that does not reach.
//!
//! A non-zero exit is a transient error (retried with backoff) that quotes
//! the last lines of stderr; output that does not parse, a command that
//! cannot be started and a missing named secret are permanent. Nothing the command printed on stdout ever reaches an
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
//! Environment of the command: the agent's own (see [`crate::environ`]),
//! without any `REGENT_*` variable and without systemd's messages to the agent
//! (`NOTIFY_SOCKET`, `LISTEN_*`), plus the caller's forwarded
//! variables (`AWS_PROFILE`, `AWS_REGION`, `AWS_DEFAULT_REGION`), plus `env`
//! from the config, where `{ secret = "NAME" }` is a named secret stored with
//! `regent secret set NAME`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use regent_shared::Secret;
use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use super::{BoxFuture, Context, Descriptor, Source, SourceError, SourceRequest, Token, text};
use crate::named_secrets;
use crate::sys;

/// `source = "exec"`; it detects no hosts.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "exec",
    from_settings: Some(|settings| Ok(Arc::new(Exec::from_settings(settings)?))),
    detect: None,
    feature: None,
};

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
/// After the command exited, how long its pipes may take to reach their end.
const DRAIN: Duration = Duration::from_secs(1);

/// How a run ended.
enum Ended {
    /// The command exited; how reading its stdout went (`Ok` too when what
    /// it printed had to be taken without an end of file).
    Exited(
        std::io::Result<std::process::ExitStatus>,
        Result<(), ReadError>,
    ),
    TimedOut,
    /// It printed more than [`MAX_STDOUT`] and was still running.
    TooLarge,
}

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
                EnvValue::Secret(r) => named_secrets::check_name(&r.secret)
                    .map_err(|e| format!("`env.{name}`: {e}"))?,
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
            .stderr(Stdio::piped());
        sys::own_group(&mut cmd);
        for (name, _) in std::env::vars_os() {
            if is_agent_only(&name.to_string_lossy()) {
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
                        .named_secret(
                            "",
                            &r.secret,
                            &format!("env.{name} in the config"),
                            &format!("set it with `regent secret set {}`", r.secret),
                        )
                        .await?;
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

        let pending = supervisor::prepare(&mut cmd).map_err(|e| {
            SourceError::transient(format!("cannot prepare to run `{program}`: {e}"))
        })?;
        let mut child = cmd
            .spawn()
            .map_err(|e| SourceError::permanent(format!("cannot run `{program}`: {e}")))?;
        // The command's environment may hold secrets: drop our copy.
        drop(cmd);
        let supervision = pending.started(&child);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        tracing::debug!(program, pid = child.id(), key = %req.key, "exec source started");

        let mut out = Zeroizing::new(Vec::new());
        let mut err = Tail::default();
        let ended = {
            let write = async {
                if let Some(mut stdin) = stdin {
                    // A command that does not read its stdin is fine.
                    let _ = stdin.write_all(&input).await;
                }
            };
            let read_out = read_capped(stdout, MAX_STDOUT, &mut out);
            let read_err = read_tail(stderr, STDERR_TAIL, &mut err);
            tokio::pin!(write, read_out, read_err);
            let (mut written, mut stdout_read, mut stderr_read) = (false, None, false);
            // The command's exit ends the wait, not the end of its output:
            // a child it left in the background may hold the pipes open.
            let waited = tokio::time::timeout(self.timeout, async {
                loop {
                    tokio::select! {
                        status = child.wait() => break Some(status),
                        () = &mut write, if !written => written = true,
                        () = &mut read_err, if !stderr_read => stderr_read = true,
                        read = &mut read_out, if stdout_read.is_none() => {
                            if let Err(ReadError::TooLarge) = read {
                                break None;
                            }
                            stdout_read = Some(read);
                        }
                    }
                }
            })
            .await;
            match waited {
                Ok(Some(status)) => {
                    supervision.exited();
                    // What it left behind is killed by now, so the pipes
                    // are at their end but for a process that could not be
                    // killed: then what they hold is what it printed.
                    let drain = async {
                        if stdout_read.is_none() {
                            stdout_read = Some((&mut read_out).await);
                        }
                        if !stderr_read {
                            (&mut read_err).await;
                        }
                    };
                    if tokio::time::timeout(DRAIN, drain).await.is_err() {
                        tracing::warn!(
                            program,
                            key = %req.key,
                            "a process the command started still holds its stdout or \
                             stderr open; using what it printed before it exited"
                        );
                    }
                    Ended::Exited(status, stdout_read.unwrap_or(Ok(())))
                }
                Ok(None) => Ended::TooLarge,
                Err(_) => Ended::TimedOut,
            }
        };
        let (status, stdout_read) = match ended {
            Ended::Exited(status, read) => (status, read),
            Ended::TimedOut => {
                supervision.stop(&mut child).await;
                return Err(SourceError::transient(format!(
                    "`{program}` did not finish within {}s and was killed \
                     (raise `timeout_secs` in the config if it needs longer)",
                    self.timeout.as_secs()
                )));
            }
            Ended::TooLarge => {
                supervision.stop(&mut child).await;
                return Err(SourceError::permanent(format!(
                    "`{program}` printed more than {MAX_STDOUT} bytes on stdout and was killed"
                )));
            }
        };
        if let Err(ReadError::TooLarge) = stdout_read {
            return Err(SourceError::permanent(format!(
                "`{program}` printed more than {MAX_STDOUT} bytes on stdout"
            )));
        }
        let status = status
            .map_err(|e| SourceError::transient(format!("cannot wait for `{program}`: {e}")))?;
        if !status.success() {
            redactor.add_stdout(&out);
            let quote = redactor.quote(&err);
            let what = match (status.code(), sys::exit_signal(&status)) {
                (Some(code), _) => format!("`{program}` exited with status {code}"),
                (None, Some(sig)) => format!("`{program}` was killed by signal {sig}"),
                (None, None) => format!("`{program}` failed"),
            };
            return Err(SourceError::transient(quote.after(what)));
        }
        if let Err(e) = stdout_read {
            return Err(SourceError::transient(format!(
                "cannot read the output of `{program}`: {e}"
            )));
        }
        let token = parse_output(&out).map_err(|why| {
            SourceError::permanent(format!(
                "`{program}` printed {why} (expected {{\"Version\":1,\"Username\":…,\"Secret\":…}})"
            ))
        })?;
        tracing::debug!(
            program,
            key = %req.key,
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

/// Keeping what a command starts from outliving it.
///
/// On Linux the agent's child is not the command but a shim: the child that
/// std forks for the spawn marks itself a child subreaper
/// (`PR_SET_CHILD_SUBREAPER`), forks the command into a process group of its
/// own, closes every descriptor but a control pipe from the agent, and waits.
/// A process whose parent exits is handed to its nearest subreaper ancestor,
/// so everything the command starts (in any process group or session,
/// `setsid` and double-forked daemons included) stays a descendant of the
/// shim until it dies. When the command exits, or the control pipe reaches
/// its end (the agent gave up on the command at its timeout, the fetch was
/// cancelled, or the agent exited in any way, SIGKILL included), the shim
/// SIGKILLs the command's process group, then each of its own children,
/// reaping as it goes, until it has no child left (at most `KILL_FOR`),
/// and exits with the command's status. SIGKILL with no SIGTERM first: what
/// is left once the command exited has nothing to finish for it, and a grace
/// period would delay every token. The agent itself is no subreaper and the
/// shim signals only its own children (whose pids cannot be reused before it
/// reaps them) and the command's group (only while the command is unreaped),
/// so no other child of the agent (an AWS `credential_process`, another
/// command) is ever touched. The command sees the shim (named `regent-exec`
/// in `ps`) as its parent and a process group of its own; its signal mask, environment and descriptors
/// are what they were without the shim.
///
/// Not covered: a process that gained privileges (a setuid program) cannot
/// be killed by us, nor one stuck in uninterruptible sleep within
/// `KILL_FOR`; a process started by another service on the command's behalf
/// (`systemd-run`, D-Bus activation, a daemon already running) is not its
/// descendant; without `/proc` only the process group is found; a shim that
/// is itself SIGKILLed (by the OOM killer, say) leaves the command running
/// until it exits by itself. A daemon the command starts for later use
/// (`gpg-agent`, `ssh-agent`) is killed with it: start such daemons in the
/// session beforehand.
///
/// Elsewhere the command runs in a process group of its own, which is
/// SIGKILLed at its timeout and once it exited; a child that left the group
/// survives.
#[cfg(target_os = "linux")]
mod supervisor {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::time::Duration;

    use libc::{c_int, pid_t};

    /// How long the shim keeps killing before it gives up and exits.
    const KILL_FOR: Duration = Duration::from_secs(2);
    /// How long the agent waits for the shim once it let go of the control
    /// pipe.
    const STOP_GRACE: Duration = Duration::from_secs(3);
    /// The descriptor the shim keeps its end of the control pipe on.
    const CONTROL_FD: RawFd = 3;

    /// A command set up to start through the shim.
    pub struct Pending {
        read: OwnedFd,
        write: OwnedFd,
    }

    /// A running command's shim.
    pub struct Supervision {
        /// Dropping it (at the latest with the fetch's future) tells the
        /// shim to kill everything and exit.
        control: OwnedFd,
    }

    /// Makes `cmd` start through the shim.
    pub fn prepare(cmd: &mut tokio::process::Command) -> io::Result<Pending> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both are fresh descriptors that nothing else owns.
        let (mut read, write) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if read.as_raw_fd() < 3 {
            // The child's stdio goes onto 0 to 2 before the shim runs.
            // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor or fails.
            let high = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
            if high < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fresh, ours alone.
            read = unsafe { OwnedFd::from_raw_fd(high) };
        }
        let control = read.as_raw_fd();
        // SAFETY: `split` runs in the forked child and makes only
        // async-signal-safe calls (raw system calls, no allocation, no lock).
        unsafe {
            cmd.pre_exec(move || split(control));
        }
        // The shim, not the command, is our child: killing it would leave
        // the command behind. Dropping `control` stops it instead.
        cmd.kill_on_drop(false);
        Ok(Pending { read, write })
    }

    impl Pending {
        pub fn started(self, _child: &tokio::process::Child) -> Supervision {
            drop(self.read);
            Supervision {
                control: self.write,
            }
        }
    }

    impl Supervision {
        /// Kills the command and all it started, and reaps the shim.
        pub async fn stop(self, child: &mut tokio::process::Child) {
            drop(self.control);
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    pid = child.id(),
                    "the shim of an exec command did not exit after being told to; killing it"
                );
                let _ = child.kill().await;
            }
        }

        /// The shim exited: the command did, and what it left behind is
        /// dead.
        pub fn exited(&self) {}
    }

    /// The child std forked: becomes the shim after forking the command,
    /// which returns to std to be exec'd.
    fn split(control: RawFd) -> io::Result<()> {
        // SAFETY (all blocks here): plain system calls on our own process
        // and valid pointers to locals.
        unsafe {
            // Orphans from now on come to us, not to init. Not inherited by
            // the command.
            if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // No signal handler of the agent's may run in the shim; the
            // command gets the mask back.
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);
            // A raw fork: no atfork handler runs in this copy of a
            // multi-threaded process.
            let flags = libc::SIGCHLD as libc::c_long;
            #[cfg(not(target_arch = "s390x"))]
            let pid = libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0);
            #[cfg(target_arch = "s390x")]
            let pid = libc::syscall(libc::SYS_clone, 0, flags, 0, 0, 0);
            if pid < 0 {
                return Err(io::Error::last_os_error());
            }
            if pid == 0 {
                libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                return Ok(());
            }
            // `ps` and `top` tell the shim from the agent it is a copy of.
            libc::prctl(libc::PR_SET_NAME, c"regent-exec".as_ptr(), 0, 0, 0);
            shim(pid as pid_t, control)
        }
    }

    /// Waits for the command `command` or the end of `control`, then kills
    /// everything left and exits as the command did.
    ///
    /// # Safety
    /// Only in the shim: it closes descriptors and exits the process.
    unsafe fn shim(command: pid_t, control: RawFd) -> ! {
        // SAFETY (all blocks here): system calls on our own process, with
        // pointers to locals.
        unsafe {
            // Hold nothing anyone waits on the end of: the agent's end of
            // the pipes, std's exec-error channel, our copy of the control
            // pipe's other end.
            if control != CONTROL_FD {
                libc::dup2(control, CONTROL_FD);
            }
            close_from(CONTROL_FD + 1);
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            for fd in 0..3 {
                if null >= 0 {
                    libc::dup2(null, fd);
                } else {
                    libc::close(fd);
                }
            }
            if null > CONTROL_FD {
                libc::close(null);
            }
            let me = libc::getpid();
            let pidfd = libc::syscall(libc::SYS_pidfd_open, command, 0) as c_int;
            let mut next_reap = now_ms() + 1000;
            loop {
                let mut fds = [
                    libc::pollfd {
                        fd: CONTROL_FD,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: pidfd,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // Without a pidfd (before Linux 5.3), look every 10 ms.
                let (n, ms) = if pidfd >= 0 { (2, 1000) } else { (1, 10) };
                let ready = libc::poll(fds.as_mut_ptr(), n, ms);
                if has_exited(command) || (ready > 0 && fds[0].revents != 0) {
                    break;
                }
                if ready < 0 {
                    sleep_ms(10);
                }
                if now_ms() >= next_reap {
                    next_reap = now_ms() + 1000;
                    // Orphans that died meanwhile; the command itself stays
                    // unreaped, so that its process group stays its own.
                    for_each_child(me, |pid, state| {
                        if state == b'Z' && pid != command {
                            libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
                        }
                    });
                }
            }
            let deadline = now_ms() + KILL_FOR.as_millis() as i64;
            let mut status = None;
            loop {
                // Only while the command is unreaped: its pid, the group's
                // number, cannot be reused until then. Members of the group
                // that outlive that are descendants, killed as children.
                if status.is_none() {
                    libc::kill(-command, libc::SIGKILL);
                }
                for_each_child(me, |pid, _| {
                    libc::kill(pid, libc::SIGKILL);
                });
                if reap(command, &mut status) || now_ms() >= deadline {
                    break;
                }
                sleep_ms(2);
            }
            match status {
                Some(st) if libc::WIFEXITED(st) => libc::_exit(libc::WEXITSTATUS(st)),
                Some(st) if libc::WIFSIGNALED(st) => die_by(libc::WTERMSIG(st)),
                _ => die_by(libc::SIGKILL),
            }
        }
    }

    /// Reaps every child that exited, noting the command's status. True
    /// when no child is left at all.
    unsafe fn reap(command: pid_t, status: &mut Option<c_int>) -> bool {
        loop {
            let mut st = 0;
            // SAFETY: a valid pointer to a local.
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid > 0 {
                if pid == command {
                    *status = Some(st);
                }
                continue;
            }
            return pid < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
        }
    }

    /// True once `command` has exited (it is left to be reaped).
    unsafe fn has_exited(command: pid_t) -> bool {
        // SAFETY: a valid pointer to a local.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                command as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            r == 0 && info.si_pid() == command
        }
    }

    /// Calls `f` with the pid and state letter of every process whose
    /// parent is `me`. A child's pid cannot be reused before we reap it, so
    /// `f` can signal it without ever hitting a stranger.
    unsafe fn for_each_child(me: pid_t, mut f: impl FnMut(pid_t, u8)) {
        // SAFETY (all blocks here): system calls with pointers into local
        // buffers, lengths from those buffers.
        unsafe {
            let dir = libc::open(
                c"/proc".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if dir < 0 {
                return;
            }
            let mut buf = [0u64; 1024];
            loop {
                let n = libc::syscall(
                    libc::SYS_getdents64,
                    dir,
                    buf.as_mut_ptr(),
                    std::mem::size_of_val(&buf),
                );
                if n <= 0 {
                    break;
                }
                let bytes = std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize);
                let mut at = 0;
                // struct linux_dirent64: ino u64, off i64, reclen u16,
                // type u8, then the NUL-terminated name.
                while let Some(rec) = bytes.get(at..) {
                    let Some(len) = rec
                        .get(16..18)
                        .map(|l| u16::from_ne_bytes([l[0], l[1]]) as usize)
                    else {
                        break;
                    };
                    let Some(name) = rec.get(19..len) else {
                        break;
                    };
                    let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
                    if let Some(pid) = parse_pid(name)
                        && pid != me
                        && let Some((state, parent)) = state_of(dir, name)
                        && parent == me
                    {
                        f(pid, state);
                    }
                    at += len;
                }
            }
            libc::close(dir);
        }
    }

    fn parse_pid(name: &[u8]) -> Option<pid_t> {
        if name.is_empty() || name.len() > 9 || !name.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(name.iter().fold(0, |n, d| n * 10 + pid_t::from(d - b'0')))
    }

    /// The state letter and the parent of the process `name` (its pid in
    /// `/proc`, open as `dir`).
    unsafe fn state_of(dir: c_int, name: &[u8]) -> Option<(u8, pid_t)> {
        let mut path = [0u8; 24];
        let suffix = b"/stat\0";
        path.get_mut(..name.len())?.copy_from_slice(name);
        path.get_mut(name.len()..name.len() + suffix.len())?
            .copy_from_slice(suffix);
        let mut stat = [0u8; 256];
        // SAFETY: a NUL-terminated path and a buffer of the length given.
        let n = unsafe {
            let fd = libc::openat(dir, path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let n = libc::read(fd, stat.as_mut_ptr().cast(), stat.len());
            libc::close(fd);
            n
        };
        let stat = stat.get(..usize::try_from(n).ok()?)?;
        // "pid (comm) state ppid ...": comm may hold anything but ends at
        // the last ')'.
        let rest = &stat[stat.iter().rposition(|b| *b == b')')? + 1..];
        let mut fields = rest.split(|b| *b == b' ').filter(|f| !f.is_empty());
        let state = *fields.next()?.first()?;
        Some((state, parse_pid(fields.next()?)?))
    }

    /// Closes every descriptor from `first` on.
    unsafe fn close_from(first: RawFd) {
        // SAFETY (all blocks here): closing descriptors of our own process.
        unsafe {
            if libc::syscall(
                libc::SYS_close_range,
                first as libc::c_uint,
                libc::c_uint::MAX,
                0,
            ) == 0
            {
                return;
            }
            // Before Linux 5.9.
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(1 << 16) as RawFd
            } else {
                1 << 16
            };
            for fd in first..max {
                libc::close(fd);
            }
        }
    }

    fn now_ms() -> i64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid pointer to a local.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
        t.tv_sec * 1000 + t.tv_nsec / 1_000_000
    }

    fn sleep_ms(ms: i64) {
        let t = libc::timespec {
            tv_sec: 0,
            tv_nsec: ms * 1_000_000,
        };
        // SAFETY: a valid pointer to a local.
        unsafe { libc::nanosleep(&t, std::ptr::null_mut()) };
    }

    /// Exits the way the command did: by the signal `sig`.
    unsafe fn die_by(sig: c_int) -> ! {
        // SAFETY: signal calls on our own process with pointers to locals.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &action, std::ptr::null_mut());
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod supervisor {
    use std::io;

    pub struct Pending;

    pub struct Supervision {
        group: Option<u32>,
    }

    pub fn prepare(cmd: &mut tokio::process::Command) -> io::Result<Pending> {
        cmd.kill_on_drop(true);
        Ok(Pending)
    }

    impl Pending {
        pub fn started(self, child: &tokio::process::Child) -> Supervision {
            Supervision { group: child.id() }
        }
    }

    impl Supervision {
        pub async fn stop(self, child: &mut tokio::process::Child) {
            self.kill_group();
            let _ = child.kill().await;
        }

        pub fn exited(&self) {
            self.kill_group();
        }

        fn kill_group(&self) {
            if let Some(pid) = self.group {
                crate::sys::kill_group(pid);
            }
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

/// Reads all of `pipe` into `buf`, up to `cap` bytes; past the cap it stops
/// (the command is then killed: it would block on a full pipe until its
/// timeout otherwise).
async fn read_capped(
    pipe: Option<impl AsyncRead + Unpin>,
    cap: usize,
    buf: &mut Zeroizing<Vec<u8>>,
) -> Result<(), ReadError> {
    let Some(pipe) = pipe else {
        return Ok(());
    };
    let mut limited = pipe.take(cap as u64 + 1);
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = limited.read(&mut chunk[..]).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Ok(());
        }
        if buf.len() + n > cap {
            return Err(ReadError::TooLarge);
        }
        // Grow by hand: a reallocation would leave an unzeroed copy behind.
        if buf.len() + n > buf.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity((buf.capacity() * 2).max(4096)));
            bigger.extend_from_slice(buf);
            *buf = bigger;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The end of a command's stderr.
#[derive(Default)]
struct Tail {
    bytes: Zeroizing<Vec<u8>>,
    /// The start was dropped: the first bytes may be the end of a line, or
    /// of a secret, whose beginning is gone.
    cut: bool,
}

/// Reads all of `pipe` into `tail`, keeping only its last `keep` bytes.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, keep: usize, tail: &mut Tail) {
    let Some(mut pipe) = pipe else {
        return;
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
    let all = String::from_utf8_lossy(raw);
    let lines: Vec<String> = all
        .lines()
        .map(|l| text::printable(l).trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let joined = lines[lines.len().saturating_sub(STDERR_LINES)..].join(" / ");
    Some(Zeroizing::new(text::tail(&joined, STDERR_CHARS)))
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

/// Variables meant for the agent alone, never handed to a command: regent's
/// own settings and systemd's socket-activation and readiness variables.
fn is_agent_only(name: &str) -> bool {
    name.starts_with("REGENT_") || name.starts_with("LISTEN_") || name == "NOTIFY_SOCKET"
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
