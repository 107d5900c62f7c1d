//! The blocking client: connect, handshake, one request, bounded everywhere.
//!
//! [`call`] is the one race-proof way in: it probes the agent with `Hello`
//! (pipelining the real request behind it), and when nothing answers it takes
//! the start lock, removes the socket only if a connect to it is refused,
//! spawns `regent agent`, waits for the agent's readiness line and retries.
//! Every step has a deadline; clients of the credential-helper protocol set
//! none of their own.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::paths::{self, DirError, DirState};
use crate::protocol::{FrameError, PROTOCOL_VERSION, Request, Response, encode_frame, read_frame};

#[cfg(unix)]
type Stream = std::os::unix::net::UnixStream;
#[cfg(windows)]
type Stream = std::fs::File;

/// The line a freshly spawned agent prints on stdout once it is listening.
pub const READY_LINE: &str = "ready";
/// The prefix of the line a spawned agent prints when it cannot start.
pub const ERROR_PREFIX: &str = "error: ";

pub struct Options {
    pub socket: PathBuf,
    /// Which `regent` executable to start when no agent answers.
    pub agent_exe: AgentExe,
    /// Who is calling, for the agent's log.
    pub client: &'static str,
    /// The budget for reaching or starting the agent.
    pub start_timeout: Duration,
    /// How long to wait for the answer to the request once connected.
    pub reply_timeout: Duration,
}

impl Options {
    pub fn new(client: &'static str) -> Self {
        Options {
            socket: paths::socket_path(),
            agent_exe: AgentExe::Never,
            client,
            start_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(30),
        }
    }
}

/// Where to find the agent executable when one must be started. Looked up
/// only then, to keep it off the hot path.
#[derive(Debug, Clone)]
pub enum AgentExe {
    /// Never start an agent.
    Never,
    Path(PathBuf),
    /// `regent` next to the running executable, else the first on PATH.
    NextToMe,
}

impl AgentExe {
    fn resolve(&self) -> Option<PathBuf> {
        match self {
            AgentExe::Never => None,
            AgentExe::Path(p) => Some(p.clone()),
            AgentExe::NextToMe => {
                let own = std::env::current_exe().ok();
                agent_exe_near(own.as_deref())
            }
        }
    }
}

/// What the agent said about itself in `Hello`.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub proto: u32,
    pub min_proto: u32,
    pub version: String,
    pub pid: u32,
}

#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the socket and starting an agent was not asked for.
    NotRunning(PathBuf),
    /// The agent could not be started; the message says why and what to do.
    Start(String),
    /// The socket directory failed its safety check.
    Dir(DirError),
    /// The running agent no longer serves this program's protocol version.
    AgentTooNew { socket: PathBuf, agent: AgentInfo },
    /// The agent answered nothing in time, or broke the protocol.
    Agent { socket: PathBuf, detail: String },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotRunning(s) => write!(
                f,
                "the regent agent is not running (no answer on {}); start it with `regent start`",
                s.display()
            ),
            ClientError::Start(why) => write!(f, "cannot start the regent agent: {why}"),
            ClientError::Dir(e) => write!(f, "{e}"),
            ClientError::AgentTooNew { socket, agent } => write!(
                f,
                "the regent agent on {} (version {}, protocol {}) no longer serves protocol {PROTOCOL_VERSION}: \
                 this program is older than the agent; install matching versions of regent and docker-credential-regent",
                socket.display(),
                agent.version,
                agent.proto
            ),
            ClientError::Agent { socket, detail } => write!(
                f,
                "the regent agent on {} is not answering properly ({detail}); run `regent status` or see its log",
                socket.display()
            ),
        }
    }
}

impl std::error::Error for ClientError {}

/// An open, handshaken connection to the agent.
pub struct Connection {
    stream: Stream,
    socket: PathBuf,
    pub agent: AgentInfo,
}

impl Connection {
    /// Sends one request and reads its answer, waiting at most `timeout`.
    pub fn call(&mut self, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
        set_timeout(&self.stream, timeout);
        let frame = encode_frame(req).map_err(|e| self.broken(e))?;
        io::Write::write_all(&mut self.stream, &frame).map_err(|e| self.broken(e.into()))?;
        read_frame(&mut self.stream).map_err(|e| self.broken(e))
    }

    fn broken(&self, e: FrameError) -> ClientError {
        agent_error(&self.socket, e)
    }
}

fn agent_error(socket: &Path, e: FrameError) -> ClientError {
    let detail = match &e {
        FrameError::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            "timed out waiting for its answer".to_owned()
        }
        _ => e.to_string(),
    };
    ClientError::Agent {
        socket: socket.to_path_buf(),
        detail,
    }
}

/// Sends `req` to the agent, starting it first when `opts.agent_exe` is set
/// and nothing answers.
pub fn call(opts: &Options, req: &Request) -> Result<Response, ClientError> {
    call_with(opts, req).map(|(_, r)| r)
}

/// Like [`call`], and also returns the connection (for a follow-up request)
/// and what the agent said about itself.
pub fn call_with(opts: &Options, req: &Request) -> Result<(Connection, Response), ClientError> {
    let deadline = Instant::now() + opts.start_timeout;
    check_dir(&opts.socket)?;
    match attempt(opts, req, deadline) {
        Attempt::Done(conn, resp) => return Ok((conn, resp)),
        Attempt::Fatal(e) => return Err(e),
        Attempt::Absent(_) | Attempt::Outdated => {}
    }
    let exe = match (&opts.agent_exe, opts.agent_exe.resolve()) {
        (AgentExe::Never, _) => return Err(ClientError::NotRunning(opts.socket.clone())),
        (_, Some(exe)) => exe,
        (_, None) => {
            return Err(ClientError::Start(
                "no `regent` executable next to this program or on PATH; install regent".into(),
            ));
        }
    };
    let _lock = StartLock::acquire(&paths::start_lock_path(&opts.socket), deadline)?;
    // Someone may have started it while we waited for the lock.
    match attempt(opts, req, deadline) {
        Attempt::Done(conn, resp) => return Ok((conn, resp)),
        Attempt::Fatal(e) => return Err(e),
        Attempt::Absent(refused) => {
            if refused {
                // A socket file nobody listens on: left over by a killed agent.
                let _ = fs::remove_file(&opts.socket);
            }
        }
        Attempt::Outdated => {}
    }
    spawn_agent(&exe, &opts.socket, deadline)?;
    match attempt(opts, req, deadline) {
        Attempt::Done(conn, resp) => Ok((conn, resp)),
        Attempt::Fatal(e) => Err(e),
        Attempt::Absent(_) | Attempt::Outdated => Err(ClientError::Start(format!(
            "it reported ready but {} does not answer; see {}",
            opts.socket.display(),
            paths::log_file().display()
        ))),
    }
}

/// Opens a connection and performs only the handshake; never starts an agent.
pub fn connect(socket: &Path, timeout: Duration) -> Result<Connection, ClientError> {
    check_dir(socket)?;
    let mut stream = match open_stream(socket) {
        Ok(s) => s,
        Err(_) => return Err(ClientError::NotRunning(socket.to_path_buf())),
    };
    set_timeout(&stream, timeout);
    let hello = hello("cli");
    let frame = encode_frame(&hello).map_err(|e| agent_error(socket, e))?;
    io::Write::write_all(&mut stream, &frame).map_err(|e| agent_error(socket, e.into()))?;
    let agent = read_hello(&mut stream).map_err(|e| agent_error(socket, e))?;
    Ok(Connection {
        stream,
        socket: socket.to_path_buf(),
        agent,
    })
}

fn check_dir(socket: &Path) -> Result<(), ClientError> {
    let dir = paths::runtime_dir(socket);
    match paths::ensure_private_dir(&dir).map_err(ClientError::Dir)? {
        DirState::Private => {}
        DirState::Tightened(mode) => eprintln!(
            "regent: {} had mode {mode:o}; set it back to 700",
            dir.display()
        ),
    }
    Ok(())
}

enum Attempt {
    Done(Connection, Response),
    /// Nothing listens; `true` when a socket file exists but refused us.
    Absent(bool),
    /// An older agent was told to quit.
    Outdated,
    Fatal(ClientError),
}

fn hello(client: &str) -> Request {
    Request::Hello {
        proto: PROTOCOL_VERSION,
        client: client.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

fn attempt(opts: &Options, req: &Request, deadline: Instant) -> Attempt {
    let mut stream = match open_stream(&opts.socket) {
        Ok(s) => s,
        Err(e) => {
            return match e.kind() {
                io::ErrorKind::NotFound => Attempt::Absent(false),
                io::ErrorKind::ConnectionRefused => Attempt::Absent(true),
                _ => Attempt::Fatal(ClientError::Agent {
                    socket: opts.socket.clone(),
                    detail: format!("cannot connect: {e}"),
                }),
            };
        }
    };
    let fail = |e: FrameError| Attempt::Fatal(agent_error(&opts.socket, e));
    // Hello and the request go out in one write; the agent answers both.
    let mut out = match encode_frame(&hello(opts.client)) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    match encode_frame(req) {
        Ok(f) => out.extend_from_slice(&f),
        Err(e) => return fail(e),
    }
    let hello_wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(500));
    set_timeout(&stream, hello_wait);
    if let Err(e) = io::Write::write_all(&mut stream, &out) {
        return fail(e.into());
    }
    drop(out);
    let agent = match read_hello(&mut stream) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    set_timeout(&stream, opts.reply_timeout);
    let resp: Response = match read_frame(&mut stream) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut conn = Connection {
        stream,
        socket: opts.socket.clone(),
        agent,
    };
    if conn.agent.proto >= PROTOCOL_VERSION {
        if conn.agent.min_proto > PROTOCOL_VERSION {
            return Attempt::Fatal(ClientError::AgentTooNew {
                socket: opts.socket.clone(),
                agent: conn.agent,
            });
        }
        return Attempt::Done(conn, resp);
    }
    // The agent is older than we are: ask it to leave, then start ours.
    let _ = conn.call(&Request::Quit, Duration::from_secs(1));
    drop(conn);
    wait_gone(&opts.socket, deadline);
    Attempt::Outdated
}

fn read_hello(stream: &mut Stream) -> Result<AgentInfo, FrameError> {
    match read_frame(stream)? {
        Response::Hello {
            proto,
            min_proto,
            version,
            pid,
        } => Ok(AgentInfo {
            proto,
            min_proto,
            version,
            pid,
        }),
        other => Err(FrameError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected a hello, got {}", other.kind()),
        ))),
    }
}

/// Waits until nothing answers on `socket` any more.
fn wait_gone(socket: &Path, deadline: Instant) {
    while Instant::now() < deadline {
        if open_stream(socket).is_err() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(unix)]
fn open_stream(socket: &Path) -> io::Result<Stream> {
    Stream::connect(socket)
}

#[cfg(windows)]
fn open_stream(socket: &Path) -> io::Result<Stream> {
    OpenOptions::new().read(true).write(true).open(socket)
}

#[cfg(unix)]
fn set_timeout(stream: &Stream, timeout: Duration) {
    let t = Some(timeout.max(Duration::from_millis(1)));
    let _ = stream.set_read_timeout(t);
    let _ = stream.set_write_timeout(t);
}

#[cfg(windows)]
fn set_timeout(_stream: &Stream, _timeout: Duration) {}

/// The start lock: one client at a time decides whether to spawn an agent.
struct StartLock(#[allow(dead_code)] File);

impl StartLock {
    fn acquire(path: &Path, deadline: Instant) -> Result<StartLock, ClientError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| {
                ClientError::Start(format!(
                    "cannot open the start lock {}: {e}",
                    path.display()
                ))
            })?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StartLock(file)),
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(ClientError::Start(format!(
                        "another program is starting the agent and holds {}; try again, or run `regent status`",
                        path.display()
                    )));
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(ClientError::Start(format!(
                        "cannot lock {}: {e}",
                        path.display()
                    )));
                }
            }
        }
    }
}

/// Spawns `exe agent`, detached, and waits for its readiness line.
pub fn spawn_agent(exe: &Path, socket: &Path, deadline: Instant) -> Result<(), ClientError> {
    let mut cmd = Command::new(exe);
    cmd.arg("agent")
        .env(paths::SOCKET_ENV, socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Out of the caller's process group: a Ctrl-C meant for `docker pull`
        // must not take the agent down.
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ClientError::Start(format!("cannot run {}: {e}", exe.display())))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout.take(4096)).read_line(&mut line);
        let _ = tx.send(line);
    });
    let wait = deadline.saturating_duration_since(Instant::now());
    let line = match rx.recv_timeout(wait) {
        Ok(line) => line,
        Err(_) => {
            return Err(ClientError::Start(format!(
                "it did not report ready in time; see {}",
                paths::log_file().display()
            )));
        }
    };
    let line = line.trim();
    if line == READY_LINE || line.starts_with("ready ") {
        return Ok(());
    }
    if let Some(msg) = line.strip_prefix(ERROR_PREFIX) {
        return Err(ClientError::Start(msg.to_owned()));
    }
    let status = child
        .try_wait()
        .ok()
        .flatten()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    Err(ClientError::Start(format!(
        "{} exited during start-up{status}; see {}",
        exe.display(),
        paths::log_file().display()
    )))
}

/// The `regent` executable next to `own_exe`, else the first on PATH.
pub fn agent_exe_near(own_exe: Option<&Path>) -> Option<PathBuf> {
    let name = if cfg!(windows) {
        "regent.exe"
    } else {
        "regent"
    };
    if let Some(dir) = own_exe.and_then(Path::parent) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    paths::find_on_path(name)
}
