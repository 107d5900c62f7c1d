//! `regent agent`: the agent's life from start to exit.
//!
//! Before any of this, [`crate::environ::prepare`] re-executes the agent with
//! its own clean environment when the one it was given holds more.
//!
//! 1. Harden the process (no core dumps, not ptrace-able by the same user).
//! 2. Read the config; create the session keyring if the kernel keyring is the
//!    store (before any thread exists).
//! 3. Detach from the caller's session when started by a client.
//! 4. Check the socket path and its directory (`paths::ensure_socket_dir`,
//!    `paths::check_socket_file`): nothing is created or changed in a
//!    directory that fails them.
//! 5. Take the store lock, `<data dir>/agent.lock` (the data directory created
//!    0700 if missing): one agent per store, whichever socket each session
//!    uses. It is held for the agent's whole life and holds its pid and
//!    socket, which clients of other sessions read to reach this agent. A
//!    held lock stops the start with the holder's pid and socket; a second
//!    agent spawned in a race for the same socket reports the first one as
//!    ready and exits.
//! 6. Open the store and the index, load what can be loaded.
//! 7. Listen: on the socket systemd handed over (socket activation), or bind
//!    the socket path after removing a stale socket of ours that refuses
//!    connections (anything else there is refused, never removed).
//! 8. Say "ready": `READY=1` to systemd, and the ready line on stdout to the
//!    client that spawned us, whose pipe is then let go.
//! 9. Serve until `Quit`, SIGTERM or SIGINT, or until the socket it bound is
//!    removed or replaced (an agent nobody can reach must not keep the store
//!    locked); then remove the socket if it is still ours. SIGHUP re-reads
//!    the config's token sources (as `regent reload` does).

use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use regent_shared::client::{ERROR_PREFIX, READY_LINE};
use regent_shared::paths::{self, DirState};
use tokio::sync::watch;

use crate::config::Settings;
use crate::credentials::{CredentialTable, now_unix};
use crate::refresh::{Engine, Policy, SystemClock};
use crate::server::{self, AgentState};
use crate::sources;
use crate::store::index::Index;
use crate::store::select::{self, Choice, StoreContext};

/// Runs the agent. `foreground`: attached to the terminal or a supervisor,
/// logging to stderr. Otherwise it was spawned by a client, which reads the
/// ready line from our stdout.
pub fn run(foreground: bool) -> ExitCode {
    let spawned = !foreground && !io::stdout().is_terminal();
    // First of all: this may execute the agent anew with a clean environment.
    let started = crate::environ::prepare().and_then(|()| {
        if !foreground && !spawned {
            eprintln!(
                "regent: running in the foreground; use `regent start` to run the agent in \
                     the background"
            );
        }
        start(spawned)
    });
    match started {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            tracing::error!("{msg}");
            if spawned {
                println!("{ERROR_PREFIX}{msg}");
            } else {
                eprintln!("regent: {msg}");
            }
            ExitCode::FAILURE
        }
    }
}

fn start(spawned: bool) -> anyhow::Result<ExitCode> {
    harden();
    let settings = Settings::load()?;
    let choice: Choice = settings.store.parse().map_err(|e| {
        anyhow!(
            "{e} (from REGENT_STORE or `store` in {})",
            settings.path.display()
        )
    })?;
    #[cfg(target_os = "linux")]
    if choice == Choice::Kind(crate::store::StoreKind::Keyutils)
        && let Err(e) = crate::store::keyutils::prepare_process()
    {
        eprintln!("regent: {e}");
    }
    if spawned {
        // A session of our own: no controlling terminal, no signals meant
        // for the program that started us.
        // SAFETY: setsid has no preconditions; failure (already a group
        // leader) is harmless.
        unsafe {
            libc::setsid();
        }
    }

    let socket = paths::socket_path();
    if let DirState::Tightened(mode) = paths::ensure_socket_dir(&socket)? {
        eprintln!(
            "regent: {} had mode {mode:o}; it is regent's own socket directory, so regent set it to 700",
            paths::runtime_dir(&socket).display()
        );
    }
    paths::check_socket_file(&socket)?;
    let data_dir = paths::data_dir();
    let mut store_lock = match StoreLock::acquire(&data_dir, &socket)? {
        Lock::Acquired(lock) => lock,
        Lock::Held {
            pid,
            socket: theirs,
        } => {
            if spawned && theirs == socket.as_os_str().as_encoded_bytes() {
                // Another agent for our socket won the race; the client can
                // use it once it listens.
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                        println!("{READY_LINE} {pid}");
                        return Ok(ExitCode::SUCCESS);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            bail!(
                "the store in {} is already served by another regent agent (pid {pid}, socket {}; lock {}): \
                 one agent serves a store, so use that one (REGENT_SOCKET={}) or stop it with `regent stop` first",
                data_dir.display(),
                String::from_utf8_lossy(&theirs),
                paths::store_lock_path(&data_dir).display(),
                String::from_utf8_lossy(&theirs)
            );
        }
    };

    let log = init_logging(!spawned, &settings.log)?;
    tracing::info!(
        pid = std::process::id(),
        version = env!("CARGO_PKG_VERSION"),
        "agent starting"
    );
    tracing::info!(memory = %lock_memory(), "secret pages");

    let ctx = StoreContext {
        data_dir,
        config_dir: paths::config_dir(),
        keyring_service: settings.keyring_service.clone(),
    };
    let opened = select::open(choice, &ctx)?;
    tracing::info!(store = %opened.backend.kind(), reason = %opened.reason, "store opened");
    let index = Index::load(opened.index_path.clone())?;
    let credentials = Arc::new(CredentialTable::open(opened.backend, index)?);
    tracing::info!(config = %settings.path.display(), rules = settings.rules.len(), "token sources configured");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .thread_name("regent")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let config = if settings.file_present {
        settings.path.display().to_string()
    } else {
        format!("{} (not present)", settings.path.display())
    };
    runtime.block_on(async move {
        let (listener, bound) = listen(&socket)?;
        let activated = bound.is_none();
        // Where clients of other sessions find us: the path systemd bound,
        // when it handed the socket over.
        let socket = match listener.local_addr() {
            Ok(addr) if activated => addr.as_pathname().map_or(socket, Path::to_path_buf),
            _ => socket,
        };
        if activated && let Err(e) = store_lock.advertise(&socket) {
            tracing::warn!(lock = %store_lock.path.display(), "cannot write the socket into the store lock: {e}");
        }
        let (shutdown, _) = watch::channel(false);
        let engine = Engine::new(
            Arc::new(SystemClock),
            Policy::default(),
            sources::Context {
                secrets: credentials.clone(),
            },
        );
        let state = Arc::new(AgentState {
            credentials,
            engine,
            rules: RwLock::new(Arc::new(settings.rules)),
            config_path: settings.path.clone(),
            socket: socket.display().to_string(),
            store_reason: opened.reason,
            config: Some(config),
            log: log.map(|p| p.display().to_string()),
            started_unix: now_unix(),
            started: Instant::now(),
            uid: paths::current_uid(),
            shutdown,
        });
        watch_signals(state.clone())?;
        if let Some(id) = bound {
            watch_socket(state.clone(), socket.clone(), id);
        }
        announce_ready(spawned);
        tracing::info!(socket = %socket.display(), activated, "listening");
        server::serve(listener, state).await;
        if let Some(id) = bound
            && SocketId::of(&socket) == Some(id)
        {
            let _ = fs::remove_file(&socket);
        }
        drop(store_lock);
        tracing::info!("agent stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// No core dumps, and no ptrace or /proc/<pid>/mem access by other processes
/// of the same user.
fn harden() {
    // SAFETY: plain syscalls with valid arguments; failures are reported.
    unsafe {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &none) != 0 {
            eprintln!(
                "regent: cannot disable core dumps: {}",
                io::Error::last_os_error()
            );
        }
        #[cfg(target_os = "linux")]
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            eprintln!(
                "regent: cannot make the agent non-dumpable: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Keeps the agent's pages out of swap, where secrets would outlive it:
/// `mlockall` of current and future pages, locked as they are touched. Only
/// when the memory-lock limit cannot bite (unlimited, at least 512 MiB, or
/// root with CAP_IPC_LOCK): with a small limit, MCL_FUTURE would make later
/// allocations fail. What happened, in words, for the log.
#[cfg(target_os = "linux")]
fn lock_memory() -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return format!("not locked: {}", io::Error::last_os_error());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let enough = limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= 512 << 20;
    if !root && !enough {
        return format!(
            "not locked: RLIMIT_MEMLOCK is {} KiB (LimitMEMLOCK=infinity in regent.service, \
             or `ulimit -l unlimited`, lets the agent keep secrets out of swap)",
            limit.rlim_cur / 1024
        );
    }
    // SAFETY: mlockall takes flags only.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc == 0 {
        "locked in RAM (mlockall)".to_owned()
    } else {
        format!(
            "not locked: mlockall failed: {}",
            io::Error::last_os_error()
        )
    }
}

#[cfg(not(target_os = "linux"))]
fn lock_memory() -> String {
    "not locked on this OS".to_owned()
}

enum Lock {
    Acquired(StoreLock),
    /// Held by another agent: what it wrote (its pid, its socket's bytes).
    Held {
        pid: String,
        socket: Vec<u8>,
    },
}

/// `<data dir>/agent.lock`, locked for as long as the agent lives, holding
/// `<pid>\n<socket>\n`.
struct StoreLock {
    file: File,
    path: PathBuf,
}

impl StoreLock {
    fn acquire(data_dir: &Path, socket: &Path) -> anyhow::Result<Lock> {
        paths::create_private_dir(data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let path = paths::store_lock_path(data_dir);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open the store lock {}", path.display()))?;
        // A client probing the lock holds it shared for an instant: retry
        // briefly before concluding that an agent holds it.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let mut text = Vec::new();
                    let _ = (&mut file).take(8192).read_to_end(&mut text);
                    let (pid, rest) = match text.iter().position(|b| *b == b'\n') {
                        Some(i) => (&text[..i], &text[i + 1..]),
                        None => (&text[..], &[][..]),
                    };
                    return Ok(Lock::Held {
                        pid: String::from_utf8_lossy(pid).trim().to_owned(),
                        socket: rest.strip_suffix(b"\n").unwrap_or(rest).to_vec(),
                    });
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
        }
        let mut lock = StoreLock { file, path };
        lock.advertise(socket)
            .with_context(|| format!("cannot write {}", lock.path.display()))?;
        Ok(Lock::Acquired(lock))
    }

    /// Writes our pid and `socket` into the lock, in one write.
    fn advertise(&mut self, socket: &Path) -> io::Result<()> {
        let mut text = format!("{}\n", std::process::id()).into_bytes();
        text.extend_from_slice(socket.as_os_str().as_encoded_bytes());
        text.push(b'\n');
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(&text)
    }
}

/// Which file a path names: the socket we bound, or something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SocketId {
    dev: u64,
    ino: u64,
}

impl SocketId {
    fn of(path: &Path) -> Option<SocketId> {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(path).ok().map(|m| SocketId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// The listening socket: handed over by systemd (`None`), or bound here
/// (the identity of the socket file).
fn listen(socket: &Path) -> anyhow::Result<(tokio::net::UnixListener, Option<SocketId>)> {
    let mut fds = listenfd::ListenFd::from_env();
    if let Ok(Some(listener)) = fds.take_unix_listener(0) {
        listener.set_nonblocking(true)?;
        return Ok((tokio::net::UnixListener::from_std(listener)?, None));
    }
    if fs::symlink_metadata(socket).is_ok() {
        // Only a socket of ours may be removed; anything else stays.
        paths::check_socket_file(socket)?;
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(_) => bail!(
                "{} is already served by another process; run `regent status`",
                socket.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %socket.display(), "removing a stale socket");
                fs::remove_file(socket).with_context(|| {
                    format!("cannot remove the stale socket {}", socket.display())
                })?;
            }
            Err(e) => bail!("cannot check the socket {}: {e}", socket.display()),
        }
    }
    let listener = StdUnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))?;
    let id = SocketId::of(socket)
        .with_context(|| format!("the socket {} vanished once bound", socket.display()))?;
    listener.set_nonblocking(true)?;
    Ok((tokio::net::UnixListener::from_std(listener)?, Some(id)))
}

/// Stops the agent once the socket it bound is removed or replaced (as when
/// the runtime directory of a finished login session is deleted): nobody
/// can reach it any more, and it must not keep the store locked.
fn watch_socket(state: Arc<AgentState>, socket: PathBuf, id: SocketId) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if SocketId::of(&socket) != Some(id) {
                tracing::warn!(
                    socket = %socket.display(),
                    "the socket was removed or replaced; stopping so that another agent can serve the store"
                );
                state.shutdown.send_replace(true);
                return;
            }
        }
    });
}

fn watch_signals(state: Arc<AgentState>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); break; }
                _ = int.recv() => { tracing::info!("SIGINT"); break; }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    // A refused reload is logged by `reload` itself.
                    let _ = state.reload();
                }
            }
        }
        let _ = state.shutdown.send(true);
    });
    Ok(())
}

/// Tells systemd and the spawning client that the socket is open, then lets
/// go of the client's pipe so its reader sees end of file.
fn announce_ready(spawned: bool) {
    #[cfg(target_os = "linux")]
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if spawned {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{READY_LINE} {}", std::process::id());
        let _ = out.flush();
        drop(out);
        redirect_to_null(1);
    }
}

fn redirect_to_null(fd: i32) {
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are valid; dup2 replaces `fd` atomically.
        unsafe {
            libc::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// Logs to stderr when attached, else to the log file (returned).
fn init_logging(to_stderr: bool, level: &str) -> anyhow::Result<Option<PathBuf>> {
    let level: tracing::Level = level.parse().map_err(|_| {
        anyhow!("unknown log level {level:?}: use error, warn, info, debug or trace")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false);
    if to_stderr {
        builder.with_writer(io::stderr).init();
        return Ok(None);
    }
    let path = paths::log_file();
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if fs::metadata(&path)
        .map(|m| m.len() > 4 << 20)
        .unwrap_or(false)
    {
        let _ = fs::rename(&path, path.with_extension("log.old"));
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    builder.with_writer(std::sync::Mutex::new(file)).init();
    redirect_to_null(2);
    Ok(Some(path))
}
