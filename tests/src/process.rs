//! Children of a test: running one with a hard timeout and its stdin
//! chosen, what it printed, and pids, signals and waiting.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::clip;

/// What to give a child on stdin.
pub enum Input<'a> {
    /// These bytes, then EOF.
    Bytes(&'a [u8]),
    /// `/dev/null`.
    Null,
    /// A pipe that stays open (never written, never closed) until the child exits.
    Open,
}

/// A finished child.
pub struct Outcome {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout without surrounding white space.
    pub fn out_trim(&self) -> String {
        self.stdout().trim().to_owned()
    }

    /// The lines of stdout (a final newline does not make an empty line).
    pub fn out_lines(&self) -> Vec<String> {
        self.stdout().lines().map(str::to_owned).collect()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown status".into(),
        };
        writeln!(f, "command: {}", self.what)?;
        writeln!(f, "status: {status} after {:?}", self.elapsed)?;
        writeln!(
            f,
            "stdout ({} bytes): {}",
            self.stdout.len(),
            clip(&self.stdout())
        )?;
        write!(
            f,
            "stderr ({} bytes): {}",
            self.stderr.len(),
            clip(&self.stderr())
        )
    }
}

/// A child that did not finish in time (it was killed).
pub struct Hang {
    pub what: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` with `stdin`, killing it after `timeout`.
pub fn run_with_timeout(
    cmd: &mut Command,
    stdin: Input<'_>,
    timeout: Duration,
) -> Result<Outcome, Hang> {
    let what = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(match stdin {
        Input::Null => Stdio::null(),
        Input::Bytes(_) | Input::Open => Stdio::piped(),
    });
    let start = Instant::now();
    let mut child = spawn_retrying(cmd).unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let out_reader = reader(child.stdout.take().expect("piped stdout"));
    let err_reader = reader(child.stderr.take().expect("piped stderr"));
    // Keep an open stdin alive until the child is gone.
    let mut held_stdin: Option<ChildStdin> = None;
    let writer = match stdin {
        Input::Bytes(bytes) => {
            let mut pipe = child.stdin.take().expect("piped stdin");
            let bytes = bytes.to_vec();
            Some(thread::spawn(move || {
                // The child may exit without reading: a broken pipe is fine.
                let _ = pipe.write_all(&bytes);
            }))
        }
        Input::Open => {
            held_stdin = child.stdin.take();
            None
        }
        Input::Null => None,
    };
    let deadline = start + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    let elapsed = start.elapsed();
    drop(held_stdin);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Hang {
            what,
            stdout: out_reader.finish(Duration::from_secs(2)),
            stderr: err_reader.finish(Duration::from_secs(2)),
        });
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    // A grandchild (an agent) could hold the pipes: do not wait forever.
    Ok(Outcome {
        what,
        status,
        stdout: out_reader.finish(Duration::from_secs(5)),
        stderr: err_reader.finish(Duration::from_secs(5)),
        elapsed,
    })
}

struct Reader {
    rx: mpsc::Receiver<Vec<u8>>,
    partial: std::sync::Arc<Mutex<Vec<u8>>>,
}

impl Reader {
    fn finish(self, wait: Duration) -> Vec<u8> {
        match self.rx.recv_timeout(wait) {
            Ok(all) => all,
            Err(_) => self.partial.lock().map(|p| p.clone()).unwrap_or_default(),
        }
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> Reader {
    let (tx, rx) = mpsc::channel();
    let partial = std::sync::Arc::new(Mutex::new(Vec::new()));
    let shared = partial.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => shared.lock().unwrap().extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let all = shared.lock().unwrap().clone();
        let _ = tx.send(all);
    });
    Reader { rx, partial }
}

/// Spawns, retrying briefly on ETXTBSY: an executable written by this process
/// may still be open for writing in a child another thread is forking.
pub fn spawn_retrying(cmd: &mut Command) -> io::Result<Child> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// True while `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // pid (comm) S ...: the state follows the last ')'.
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

pub fn kill(pid: u32, signal: i32) {
    if pid == 0 || pid == std::process::id() {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Where a tool is, if it is installed.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `f(i)` for `0..n` on `n` threads released at the same moment.
pub fn all_at_once<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = std::sync::Barrier::new(n);
    thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}
