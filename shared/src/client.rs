//! The blocking client: connect, handshake, one request, bounded everywhere.
//!
//! [`call`] is the one race-proof way in. It probes the agent on its socket
//! with `Hello` (pipelining the real request behind it). When nothing
//! answers there, it asks the store lock (`<data dir>/agent.lock`, see
//! [`paths`]) whether an agent serves the store from another socket, as it
//! does when another session of the user (another `XDG_RUNTIME_DIR`, or a
//! `REGENT_SOCKET` set in one shell only) started it, and talks to that
//! agent. Only when no agent holds the store does it take the start lock
//! (`<data dir>/start.lock`: one starter per store), remove the socket if it
//! is a socket of ours that refuses connections (anything else at the socket
//! path is refused, never removed), spawn `regent agent`, wait for the
//! agent's readiness line and retry. A store held by an agent that cannot be
//! reached is an error that names its pid, its socket and the data
//! directory.
//!
//! A connection that is reset or closed before the agent's answer arrives
//! (an agent dying under us) counts as no agent: a new one is started within
//! the same deadline. Every request sent through [`call`] may safely be sent
//! twice.
//!
//! Every step has a deadline; clients of the credential-helper protocol set
//! none of their own.
//!
//! In the code, [`call_with`] walks the steps of a small state machine
//! (`Step`: probe, holding the start lock, agent spawned), each of which
//! first looks for an agent (`reach`: our socket, then the store holder's)
//! and moves on only when nothing answers. `client/tests.rs` drives each
//! transition against fake listeners, lock files and agent scripts.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::paths::{self, DirError, DirState};
use crate::protocol::{
    FrameError, FrameReader, PROTOCOL_VERSION, Request, Response, encode_frame, read_frame,
};
use zeroize::Zeroizing;

use crate::sys::{self, Stream};

/// The line a freshly spawned agent prints on stdout once it is listening.
pub const READY_LINE: &str = "ready";
/// The prefix of the line a spawned agent prints when it cannot start.
pub const ERROR_PREFIX: &str = "error: ";

pub struct Options {
    pub socket: PathBuf,
    /// The data directory: its store lock names the agent serving the
    /// store, its start lock serialises starts.
    pub data_dir: PathBuf,
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
            data_dir: paths::data_dir(),
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

/// Why a call did not reach an agent or got no proper answer. Every
/// message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket and starting an agent was not asked for.
    #[error(
        "the regent agent is not running (no answer on {}); start it with `regent start`",
        .0.display()
    )]
    NotRunning(PathBuf),
    /// The agent could not be started; the message says why and what to do.
    #[error("cannot start the regent agent: {0}")]
    Start(String),
    /// The socket path or its directory failed its safety check.
    #[error("{0}")]
    Dir(DirError),
    /// The running agent no longer serves this program's protocol version.
    #[error(
        "the regent agent on {} (version {}, protocol {}) no longer serves protocol {PROTOCOL_VERSION}: \
         this program is older than the agent; install matching versions of regent and docker-credential-regent",
        .socket.display(),
        .agent.version,
        .agent.proto
    )]
    AgentTooNew { socket: PathBuf, agent: AgentInfo },
    /// The agent answered nothing in time, or broke the protocol.
    #[error(
        "the regent agent on {} is not answering properly ({detail}); run `regent status` or see its log",
        .socket.display()
    )]
    Agent { socket: PathBuf, detail: String },
    /// An agent holds the store's lock but does not answer on the socket it
    /// advertises (or has not said which yet).
    #[error("{}", store_held(.data_dir, *.pid, .socket.as_deref()))]
    StoreHeld {
        data_dir: PathBuf,
        pid: Option<u32>,
        socket: Option<PathBuf>,
    },
}

/// The message of [`ClientError::StoreHeld`].
fn store_held(data_dir: &Path, pid: Option<u32>, socket: Option<&Path>) -> String {
    let pid = pid.map_or_else(|| "?".to_owned(), |p| p.to_string());
    let lock = paths::store_lock_path(data_dir);
    match socket {
        Some(socket) => format!(
            "the regent store in {} is held by the agent pid {pid} ({}), which does not answer on {}; \
             stop it (`kill {pid}`) and the next call starts a new agent",
            data_dir.display(),
            lock.display(),
            socket.display()
        ),
        None => format!(
            "the regent store in {} is held by the agent pid {pid} ({}), which has not said where it \
             listens; stop it (`kill {pid}`) and the next call starts a new agent",
            data_dir.display(),
            lock.display()
        ),
    }
}

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

    /// The socket this connection reached (another session's, when the
    /// agent that holds the store listens there).
    pub fn socket(&self) -> &Path {
        &self.socket
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

/// True when the connection broke under us: the agent closed it or died
/// (reset, broken pipe, end of file), as opposed to a timeout or a
/// malformed answer.
fn is_broken(e: &FrameError) -> bool {
    match e {
        FrameError::Closed | FrameError::Truncated => true,
        FrameError::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Sends `req` to the agent, starting it first when `opts.agent_exe` is set
/// and nothing answers.
pub fn call(opts: &Options, req: &Request) -> Result<Response, ClientError> {
    call_with(opts, req).map(|(_, r)| r)
}

/// The agent's answer to a `get` of `server_url` for this process: its
/// forwarded variables (`FORWARDED_ENV`) go with the request, and those a
/// `NeedEnv` answer names go once more on the same connection, as the
/// helper does.
pub fn get(opts: &Options, server_url: &str) -> Result<Response, ClientError> {
    use crate::protocol::{CallerEnv, FORWARDED_ENV};
    let req = Request::Get {
        server_url: server_url.to_owned(),
        env: CallerEnv::from_process(FORWARDED_ENV),
        env_complete: false,
    };
    let (mut conn, answer) = call_with(opts, &req)?;
    match answer {
        Response::NeedEnv { names } => {
            let Request::Get { mut env, .. } = req else {
                unreachable!("req is a Get")
            };
            env.add_from_process(&names);
            let again = Request::Get {
                server_url: server_url.to_owned(),
                env,
                env_complete: true,
            };
            conn.call(&again, opts.reply_timeout)
        }
        other => Ok(other),
    }
}

/// Like [`call`], and also returns the connection (for a follow-up request)
/// and what the agent said about itself.
///
/// Each [`Step`] first looks for an agent ([`reach`]); only when none
/// answers does it move on to the next step, so an agent that appears at
/// any point (started by someone else meanwhile) is used.
pub fn call_with(opts: &Options, req: &Request) -> Result<(Connection, Response), ClientError> {
    let deadline = Instant::now() + opts.start_timeout;
    check_socket(&opts.socket)?;
    let mut step = Step::Probe;
    loop {
        let silence = match reach(opts, req, deadline)? {
            Reached::Agent(conn, resp) => return Ok((conn, resp)),
            Reached::Nobody(silence) => silence,
        };
        step = match step {
            Step::Probe => Step::Locked(prepare_start(opts, deadline)?),
            Step::Locked(start) => {
                if silence == Silence::Refused {
                    // A socket nobody listens on, left over by a killed
                    // agent. Checked again right before: only a socket of
                    // ours is ever removed.
                    paths::check_socket_file(&opts.socket).map_err(ClientError::Dir)?;
                    let _ = fs::remove_file(&opts.socket);
                }
                let started = spawn_agent(&start.exe, &opts.socket, deadline);
                Step::Spawned {
                    _lock: start.lock,
                    started,
                }
            }
            // An agent started some other way (a supervisor, `regent agent`)
            // would have taken the store meanwhile, and ours then refused to
            // start: [`reach`] has looked for it.
            Step::Spawned { started, .. } => {
                started?;
                return Err(ClientError::Start(format!(
                    "it reported ready but {} does not answer; see {}",
                    opts.socket.display(),
                    paths::log_file().display()
                )));
            }
        };
    }
}

/// Where [`call_with`] stands when nothing answered.
enum Step {
    /// The first look, before anything else.
    Probe,
    /// Holding the start lock: someone may have started the agent while we
    /// waited for it, so look once more before starting one.
    Locked(Starter),
    /// Our agent was spawned (`started` says whether it reported ready).
    Spawned {
        _lock: StartLock,
        started: Result<(), ClientError>,
    },
}

/// What it takes to start an agent: the executable and the start lock.
struct Starter {
    exe: PathBuf,
    lock: StartLock,
}

/// Finds the executable to start and takes the start lock, or says why no
/// agent can be started.
fn prepare_start(opts: &Options, deadline: Instant) -> Result<Starter, ClientError> {
    let exe = match (&opts.agent_exe, opts.agent_exe.resolve()) {
        (AgentExe::Never, _) => return Err(ClientError::NotRunning(opts.socket.clone())),
        (_, Some(exe)) => exe,
        (_, None) => {
            return Err(ClientError::Start(
                "no `regent` executable next to this program or on PATH; install regent".into(),
            ));
        }
    };
    paths::create_private_dir(&opts.data_dir).map_err(|e| {
        ClientError::Start(format!("cannot create {}: {e}", opts.data_dir.display()))
    })?;
    let lock = StartLock::acquire(&paths::start_lock_path(&opts.data_dir), deadline)?;
    Ok(Starter { exe, lock })
}

/// One look for an agent: on our socket, then, when nothing answers there,
/// on the socket of the agent that holds the store (it may listen
/// elsewhere). The silence is our socket's.
fn reach(opts: &Options, req: &Request, deadline: Instant) -> Result<Reached, ClientError> {
    let silence = match attempt(opts, &opts.socket, req, deadline)? {
        Reached::Nobody(silence) => silence,
        answered => return Ok(answered),
    };
    Ok(match via_store_holder(opts, req, deadline)? {
        Some((conn, resp)) => Reached::Agent(conn, resp),
        None => Reached::Nobody(silence),
    })
}

/// Opens a connection and performs only the handshake; never starts an
/// agent. When nothing answers on `socket` but an agent holds the store, it
/// connects to that agent's socket instead.
pub fn connect(socket: &Path, timeout: Duration) -> Result<Connection, ClientError> {
    check_socket(socket)?;
    match handshake(socket, timeout) {
        Err(ClientError::NotRunning(_)) => {}
        other => return other,
    }
    let data_dir = paths::data_dir();
    let Some(holder) = store_holder(&data_dir) else {
        return Err(ClientError::NotRunning(socket.to_path_buf()));
    };
    match &holder.socket {
        // Starting on our socket, or its socket is gone: not running here.
        Some(other) if other == socket => Err(ClientError::NotRunning(socket.to_path_buf())),
        Some(other) if exists(other) => {
            check_socket(other)?;
            match handshake(other, timeout) {
                Err(ClientError::NotRunning(_)) => Err(holder.error(data_dir)),
                r => r,
            }
        }
        _ => Err(holder.error(data_dir)),
    }
}

fn handshake(socket: &Path, timeout: Duration) -> Result<Connection, ClientError> {
    let Ok(mut stream) = open_stream(socket) else {
        return Err(ClientError::NotRunning(socket.to_path_buf()));
    };
    set_timeout(&stream, timeout);
    let fail = |e: FrameError| {
        if is_broken(&e) {
            ClientError::NotRunning(socket.to_path_buf())
        } else {
            agent_error(socket, e)
        }
    };
    let frame = encode_frame(&hello("cli")).map_err(fail)?;
    io::Write::write_all(&mut stream, &frame).map_err(|e| fail(e.into()))?;
    let agent = read_hello(&mut FrameReader::new(), &mut stream).map_err(fail)?;
    Ok(Connection {
        stream,
        socket: socket.to_path_buf(),
        agent,
    })
}

/// The safety checks of a socket path and its directory, before any use.
fn check_socket(socket: &Path) -> Result<(), ClientError> {
    match paths::ensure_socket_dir(socket).map_err(ClientError::Dir)? {
        DirState::Private => {}
        DirState::Tightened(mode) => eprintln!(
            "regent: {} had mode {mode:o}; it is regent's own socket directory, so regent set it to 700",
            paths::runtime_dir(socket).display()
        ),
    }
    paths::check_socket_file(socket).map_err(ClientError::Dir)
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// The agent that holds the store lock of a data directory, from what it
/// wrote into the lock file: `<pid>\n<socket>\n`.
struct Holder {
    pid: Option<u32>,
    /// `None` while the agent is still writing it.
    socket: Option<PathBuf>,
}

impl Holder {
    fn error(&self, data_dir: PathBuf) -> ClientError {
        ClientError::StoreHeld {
            data_dir,
            pid: self.pid,
            socket: self.socket.clone(),
        }
    }
}

/// Who holds the store lock in `data_dir`, if anyone. The probe is a shared
/// lock taken and dropped at once: it succeeds only when no agent holds the
/// lock (an agent starting meanwhile retries its exclusive lock).
fn store_holder(data_dir: &Path) -> Option<Holder> {
    let path = paths::store_lock_path(data_dir);
    let file = File::open(&path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => return None,
        Err(fs::TryLockError::WouldBlock) => {}
        // Cannot tell: go on as if free; an agent started now says why.
        Err(fs::TryLockError::Error(_)) => return None,
    }
    let mut text = Vec::new();
    let _ = (&file).take(8192).read_to_end(&mut text);
    Some(parse_holder(&text))
}

fn parse_holder(text: &[u8]) -> Holder {
    let (pid, rest) = match text.iter().position(|b| *b == b'\n') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, &[][..]),
    };
    let pid = std::str::from_utf8(pid)
        .ok()
        .and_then(|p| p.trim().parse().ok());
    let socket = rest
        .strip_suffix(b"\n")
        .filter(|s| !s.is_empty())
        .map(path_from_bytes);
    Holder { pid, socket }
}

#[cfg(unix)]
fn path_from_bytes(b: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

#[cfg(not(unix))]
fn path_from_bytes(b: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(b).into_owned())
}

/// When an agent holds the store, sends `req` to it on the socket it
/// advertises, waiting (until `deadline`) while it is still starting or on
/// its way out. `None` when no agent holds the store.
fn via_store_holder(
    opts: &Options,
    req: &Request,
    deadline: Instant,
) -> Result<Option<(Connection, Response)>, ClientError> {
    loop {
        let Some(holder) = store_holder(&opts.data_dir) else {
            return Ok(None);
        };
        if let Some(socket) = holder.socket.as_deref().filter(|s| exists(s)) {
            if socket != opts.socket {
                check_socket(socket)?;
            }
            if let Reached::Agent(conn, resp) = attempt(opts, socket, req, deadline)? {
                return Ok(Some((conn, resp)));
            }
        }
        if Instant::now() >= deadline {
            return Err(holder.error(opts.data_dir.clone()));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The outcome of one attempt that did not fail.
enum Reached {
    /// An agent answered the request.
    Agent(Connection, Response),
    /// Nothing answers there.
    Nobody(Silence),
}

/// How a socket turned out to have no agent behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silence {
    /// No socket file, or an agent that went away under us (closed, reset).
    Gone,
    /// A socket file that refuses connections: left over by a killed agent,
    /// so it is removed before a start.
    Refused,
    /// An agent older than us, which was asked to quit and is gone.
    Retired,
}

fn hello(client: &str) -> Request {
    Request::Hello {
        proto: PROTOCOL_VERSION,
        client: client.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Sends `req` to the agent on `socket`, behind a `Hello`. An error is
/// final: an agent answered wrongly or too late, or the socket cannot be
/// used.
fn attempt(
    opts: &Options,
    socket: &Path,
    req: &Request,
    deadline: Instant,
) -> Result<Reached, ClientError> {
    let mut stream = match open_stream(socket) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Reached::Nobody(Silence::Gone));
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Ok(Reached::Nobody(Silence::Refused));
        }
        Err(e) => {
            return Err(ClientError::Agent {
                socket: socket.to_path_buf(),
                detail: format!("cannot connect: {e}"),
            });
        }
    };
    // Hello and the request go out in one write; the agent answers both.
    let mut out = encode_frame(&hello(opts.client)).map_err(|e| agent_error(socket, e))?;
    out.extend_from_slice(&encode_frame(req).map_err(|e| agent_error(socket, e))?);
    let hello_wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(500));
    let (agent, resp) = match exchange(&mut stream, out, hello_wait, opts.reply_timeout) {
        Ok(answers) => answers,
        // An agent that dies under us (reset, broken pipe, end of file
        // before its answer) is no agent: the caller starts a new one.
        Err(e) if is_broken(&e) => return Ok(Reached::Nobody(Silence::Gone)),
        Err(e) => return Err(agent_error(socket, e)),
    };
    let mut conn = Connection {
        stream,
        socket: socket.to_path_buf(),
        agent,
    };
    if conn.agent.proto >= PROTOCOL_VERSION {
        if conn.agent.min_proto > PROTOCOL_VERSION {
            return Err(ClientError::AgentTooNew {
                socket: socket.to_path_buf(),
                agent: conn.agent,
            });
        }
        return Ok(Reached::Agent(conn, resp));
    }
    // The agent is older than we are: ask it to leave, then start ours.
    let _ = conn.call(&Request::Quit, Duration::from_secs(1));
    drop(conn);
    wait_gone(socket, deadline);
    Ok(Reached::Nobody(Silence::Retired))
}

/// Writes `out` (the frames of `Hello` and the request), then reads the
/// agent's `Hello` within `hello_wait` and its answer within `reply_wait`.
fn exchange(
    stream: &mut Stream,
    out: Zeroizing<Vec<u8>>,
    hello_wait: Duration,
    reply_wait: Duration,
) -> Result<(AgentInfo, Response), FrameError> {
    set_timeout(stream, hello_wait);
    io::Write::write_all(stream, &out)?;
    drop(out);
    let mut frames = FrameReader::new();
    let agent = read_hello(&mut frames, stream)?;
    // The agent writes both answers at once, so the reply is usually read
    // already. If not, only the read waits from here on: all is written.
    if !frames.holds_a_frame() {
        set_read_timeout(stream, reply_wait);
    }
    Ok((agent, frames.read(stream)?))
}

fn read_hello(frames: &mut FrameReader, stream: &mut Stream) -> Result<AgentInfo, FrameError> {
    match frames.read(stream)? {
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

fn open_stream(socket: &Path) -> io::Result<Stream> {
    Stream::connect(socket)
}

fn set_timeout(stream: &Stream, timeout: Duration) {
    set_read_timeout(stream, timeout);
    let _ = stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))));
}

fn set_read_timeout(stream: &Stream, timeout: Duration) {
    let _ = stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
}

/// The start lock: one client at a time decides whether to spawn an agent
/// for a store.
struct StartLock(#[allow(dead_code)] File);

impl StartLock {
    fn acquire(path: &Path, deadline: Instant) -> Result<StartLock, ClientError> {
        let mut options = OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(|e| {
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
    // Out of the caller's process group: a Ctrl-C meant for `docker pull`
    // must not take the agent down.
    sys::detach(&mut cmd);
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

#[cfg(all(test, unix))]
mod tests;
