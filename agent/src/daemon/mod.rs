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
//! 10. Follow the program: once the `regent` file it was started from is
//!     replaced, hand over to the new program in place (`upgrade`), which
//!     adopts the socket, the store lock and the store instead of steps 3,
//!     5 and 8.
//!
//! Where each step is: 1 and 3 in `sys` (`harden`, `detach`), 2
//! `store_choice`, 4 `checked_socket`, 5 `lock_store` over `lock`, 6
//! `open_store`, 7 `listen`, 8 `process::announce_ready`, 9 [`server`]
//! with `signals`; the agent's shared state is [`state::AgentState`], its
//! log set up by `logging`.
//!
//! On Windows the agent listens on its named pipe (`sys::Listener::bind`,
//! step 7: no socket file, so nothing stale to remove or to watch in step
//! 9, and no socket activation), stops on the console's events rather than
//! signals, and does not follow its program (step 10 is Linux only: there is
//! no `exec` to hand over with): an upgrade takes effect at the next start.

use std::io::{self, IsTerminal};
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
use crate::refresh::{Engine, Policy};
use crate::sources;
use crate::store::index::Index;
use crate::store::select::{self, Choice, StoreContext};
use crate::sys;

/// The listening socket, unix only: on Windows `sys::Listener::bind`
/// creates the named pipe.
#[cfg(unix)]
mod listen;
mod lock;
mod logging;
mod process;
pub mod server;
mod signals;
pub mod state;
/// Following the program, Linux only: elsewhere the agent cannot tell the
/// program it runs (no `/proc/self/exe`) or has no `exec` to hand over with
/// (Windows), and an upgrade takes effect at the next start.
#[cfg(target_os = "linux")]
mod upgrade;

use lock::{Lock, StoreLock};
use state::AgentState;

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

/// Steps 1 to 9 of the module docs, in order; or, after an upgrade, the
/// same agent going on in this program with what the one it replaced
/// handed over (`upgrade`).
fn start(spawned: bool) -> anyhow::Result<ExitCode> {
    sys::harden();
    let settings = Settings::load()?;
    let handover = take_over()?;
    let store = handover
        .as_ref()
        .map_or(settings.store.as_str(), |h| h.store.as_str());
    let choice = store_choice(store, &settings)?;
    if spawned && handover.is_none() {
        sys::detach();
    }
    let socket = checked_socket()?;
    let data_dir = paths::data_dir();
    let (store_lock, handed, records, from) = match handover {
        Some(TakenOver {
            lock,
            handed,
            records,
            from_version,
            ..
        }) => {
            let lock = StoreLock::adopt(lock, &data_dir)?;
            (lock, Some(handed), Some(records), Some(from_version))
        }
        None => match lock_store(&data_dir, &socket, spawned)? {
            Some(lock) => (lock, None, None, None),
            // Another agent for our socket won a start race and is ready.
            None => return Ok(ExitCode::SUCCESS),
        },
    };
    let log = logging::init(!spawned, &settings.log)?;
    match &from {
        None => tracing::info!(
            pid = std::process::id(),
            version = env!("CARGO_PKG_VERSION"),
            "agent starting"
        ),
        Some(from) => tracing::info!(
            pid = std::process::id(),
            version = env!("CARGO_PKG_VERSION"),
            from = %from,
            "agent upgraded in place: taking over the socket, the store lock and the store"
        ),
    }
    tracing::info!(memory = %process::lock_memory(), "secret pages");
    let (credentials, mut store_reason) = open_store(choice, data_dir, &settings, records)?;
    if let Some(h) = &handed {
        store_reason.clone_from(&h.store_reason);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .thread_name("regent")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let opened = Opened {
        settings,
        credentials,
        store_reason,
        log,
        store_lock,
        handed,
    };
    runtime.block_on(serve(opened, socket, spawned))?;
    Ok(ExitCode::SUCCESS)
}

/// What the program an upgrade replaced handed over (`upgrade`).
struct TakenOver {
    store: String,
    lock: std::fs::File,
    handed: Handed,
    records: Vec<(String, regent_shared::Secret)>,
    from_version: String,
}

/// The handover of the program this one replaced, if it was started by
/// one.
#[cfg(target_os = "linux")]
fn take_over() -> anyhow::Result<Option<TakenOver>> {
    let taken = upgrade::take().context("cannot take over from the agent's previous program")?;
    Ok(taken.map(|h| TakenOver {
        store: h.store,
        lock: h.lock,
        handed: Handed {
            listener: h.listener,
            socket_id: h.socket_id,
            store_reason: h.store_reason,
            started_unix: h.started_unix,
        },
        records: h.records,
        from_version: h.from_version,
    }))
}

/// None: off Linux the agent does not follow its program.
#[cfg(not(target_os = "linux"))]
fn take_over() -> anyhow::Result<Option<TakenOver>> {
    Ok(None)
}

/// The store `store` names (the config's, or the one an upgraded agent
/// served); the kernel keyring's session keyring is made here, before any
/// thread exists.
fn store_choice(store: &str, settings: &Settings) -> anyhow::Result<Choice> {
    let choice: Choice = store.parse().map_err(|e| {
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
    Ok(choice)
}

/// The socket path, once it and its directory pass the checks.
fn checked_socket() -> anyhow::Result<PathBuf> {
    let socket = paths::socket_path();
    if let DirState::Tightened(mode) = paths::ensure_socket_dir(&socket)? {
        eprintln!(
            "regent: {} had mode {mode:o}; it is regent's own socket directory, so regent set it to 700",
            paths::runtime_dir(&socket).display()
        );
    }
    paths::check_socket_file(&socket)?;
    Ok(socket)
}

/// The store lock, or `None` when another agent spawned for our socket in
/// the same race holds it and listens (reported to the client as ready).
fn lock_store(data_dir: &Path, socket: &Path, spawned: bool) -> anyhow::Result<Option<StoreLock>> {
    let (pid, theirs) = match StoreLock::acquire(data_dir, socket)? {
        Lock::Acquired(lock) => return Ok(Some(lock)),
        Lock::Held { pid, socket } => (pid, socket),
    };
    if spawned && theirs == socket.as_os_str().as_encoded_bytes() {
        // Another agent for our socket won the race; the client can use it
        // once it listens.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if regent_shared::sys::Stream::connect(socket).is_ok() {
                println!("{READY_LINE} {pid}");
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    bail!(
        "the store in {} is already served by another regent agent (pid {pid}, socket {}; lock {}): \
         one agent serves a store, so use that one (REGENT_SOCKET={}) or stop it with `regent stop` first",
        data_dir.display(),
        String::from_utf8_lossy(&theirs),
        paths::store_lock_path(data_dir).display(),
        String::from_utf8_lossy(&theirs)
    );
}

/// The store and its index, loaded; and why this store was chosen.
/// `records`: the memory store's, handed over by an upgrade.
fn open_store(
    choice: Choice,
    data_dir: PathBuf,
    settings: &Settings,
    records: Option<Vec<(String, regent_shared::Secret)>>,
) -> anyhow::Result<(Arc<CredentialTable>, String)> {
    let ctx = StoreContext {
        data_dir,
        config_dir: paths::config_dir(),
        keyring_service: settings.keyring_service.clone(),
    };
    let mut opened = select::open(choice, &ctx)?;
    if let Some(records) = records.filter(|r| !r.is_empty())
        && opened.backend.kind() == crate::store::StoreKind::Memory
    {
        tracing::info!(records = records.len(), "memory store handed over");
        opened.backend = Arc::new(crate::store::memory::MemoryBackend::with_records(records));
    }
    tracing::info!(store = %opened.backend.kind(), reason = %opened.reason, "store opened");
    let index = Index::load(opened.index_path.clone())?;
    let credentials = Arc::new(CredentialTable::open(opened.backend, index)?);
    tracing::info!(config = %settings.path.display(), rules = settings.rules.len(), "token sources configured");
    Ok((credentials, opened.reason))
}

/// What the synchronous steps hand to the serving ones.
struct Opened {
    settings: Settings,
    credentials: Arc<CredentialTable>,
    store_reason: String,
    log: Option<PathBuf>,
    store_lock: StoreLock,
    handed: Option<Handed>,
}

/// What an upgrade handed over beyond the lock and the store.
struct Handed {
    #[cfg(unix)]
    listener: std::os::fd::OwnedFd,
    #[cfg(unix)]
    socket_id: Option<listen::SocketId>,
    store_reason: String,
    started_unix: i64,
}

/// Listens, says ready, and serves until told to stop; then removes the
/// socket if it is still ours.
async fn serve(opened: Opened, socket: PathBuf, spawned: bool) -> anyhow::Result<()> {
    let Opened {
        settings,
        credentials,
        store_reason,
        log,
        mut store_lock,
        handed,
    } = opened;
    let started_unix = handed.as_ref().map_or_else(now_unix, |h| h.started_unix);
    #[cfg(unix)]
    let (mut listener, bound) = listen::listen(&socket, handed.map(|h| (h.listener, h.socket_id)))?;
    #[cfg(unix)]
    let activated = bound.is_none();
    #[cfg(not(unix))]
    let (mut listener, activated) = (sys::Listener::bind(&socket)?, false);
    // Where clients of other sessions find us: the path systemd bound, when
    // it handed the socket over.
    let socket = match listener.path() {
        Some(path) if activated => path,
        _ => socket,
    };
    if activated && let Err(e) = store_lock.advertise(&socket) {
        tracing::warn!(lock = %store_lock.path.display(), "cannot write the socket into the store lock: {e}");
    }
    let state = agent_state(
        settings,
        credentials,
        store_reason,
        log,
        &socket,
        started_unix,
    );
    signals::watch(state.clone())?;
    #[cfg(unix)]
    if let Some(id) = bound {
        listen::watch_socket(state.clone(), socket.clone(), id);
    }
    #[cfg(target_os = "linux")]
    if let Some(binary) = upgrade::Binary::running() {
        upgrade::watch(state.clone(), binary);
    }
    process::announce_ready(spawned);
    tracing::info!(socket = %socket.display(), activated, "listening");
    server::serve(&mut listener, state.clone()).await;
    #[cfg(target_os = "linux")]
    while let Some(program) = state.upgrading() {
        hand_over(&program, &listener, &store_lock, bound, &state);
        server::serve(&mut listener, state.clone()).await;
    }
    #[cfg(unix)]
    if let Some(id) = bound {
        listen::remove_if_ours(&socket, id);
    }
    drop(store_lock);
    tracing::info!("agent stopped");
    Ok(())
}

/// Executes `program` with what it needs to go on serving (`upgrade`);
/// returns only when that failed, to serve on as this version.
#[cfg(target_os = "linux")]
fn hand_over(
    program: &Path,
    listener: &sys::Listener,
    store_lock: &StoreLock,
    bound: Option<listen::SocketId>,
    state: &AgentState,
) {
    use std::os::fd::AsRawFd;
    let err = upgrade::exec(
        program,
        upgrade::Outgoing {
            listener: listener.as_raw_fd(),
            lock: store_lock.file(),
            socket_id: bound,
            store: state.credentials.kind().name().to_owned(),
            store_reason: state.store_reason.clone(),
            started_unix: state.started_unix,
            records: state.credentials.memory_records(),
        },
    );
    tracing::error!(
        "cannot hand over to {} ({err:#}); serving on as version {}",
        program.display(),
        env!("CARGO_PKG_VERSION")
    );
    state.upgrade_failed();
}

fn agent_state(
    settings: Settings,
    credentials: Arc<CredentialTable>,
    store_reason: String,
    log: Option<PathBuf>,
    socket: &Path,
    started_unix: i64,
) -> Arc<AgentState> {
    let config = if settings.file_present {
        settings.path.display().to_string()
    } else {
        format!("{} (not present)", settings.path.display())
    };
    let engine = Engine::new(
        Policy::default(),
        sources::Context::new(credentials.clone()),
    );
    let (shutdown, _) = watch::channel(false);
    Arc::new(AgentState {
        credentials,
        engine,
        rules: RwLock::new(Arc::new(settings.rules)),
        config_path: settings.path,
        socket: socket.display().to_string(),
        store_reason,
        config: Some(config),
        log: log.map(|p| p.display().to_string()),
        started_unix,
        // Uptime counts from the first program of an upgraded agent.
        started: Instant::now()
            .checked_sub(Duration::from_secs(
                u64::try_from(now_unix() - started_unix).unwrap_or(0),
            ))
            .unwrap_or_else(Instant::now),
        shutdown,
        upgrade: std::sync::Mutex::new(None),
    })
}
