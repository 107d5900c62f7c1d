//! The accept loop: peer check, handshake, bounded frames, dispatch.
//!
//! Every connection is checked before a byte is read from it: the peer's uid
//! must be ours. Then the first frame must be `Hello` and arrive within
//! [`HANDSHAKE_TIMEOUT`]; later frames may come at any pace up to
//! [`IDLE_TIMEOUT`], and each frame must complete within [`FRAME_TIMEOUT`] of
//! its first byte. A header announcing more than `MAX_FRAME` bytes closes the
//! connection before anything is allocated. At most [`MAX_CONNECTIONS`]
//! connections are served at once; the rest are closed on accept, so idle or
//! hostile peers cannot starve the rest.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use regent_shared::messages::{NO_SERVER_URL, NO_USERNAME};
use regent_shared::protocol::{
    self, CallerEnv, ErrorKind, FORWARDED_ENV, FrameError, MIN_SUPPORTED_PROTOCOL,
    PROTOCOL_VERSION, Request, Response, StatusInfo,
};
use regent_shared::registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use zeroize::Zeroizing;

use crate::config::{Config, Rules};
use crate::credentials::{CredentialTable, NewLogin};
use crate::named_secrets;
use crate::refresh::Engine;
use crate::sources::{self, Source, SourceRequest};

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTIONS: usize = 1024;

/// What the agent knows about itself, for `Hello` and `Status`.
pub struct AgentState {
    pub credentials: Arc<CredentialTable>,
    /// Tokens from sources, cached and refreshed.
    pub engine: Arc<Engine>,
    /// The `[[registry]]` entries in force; replaced whole by a reload.
    pub rules: RwLock<Arc<Rules>>,
    /// The config file that `reload` re-reads.
    pub config_path: PathBuf,
    pub socket: String,
    pub store_reason: String,
    pub config: Option<String>,
    pub log: Option<String>,
    pub started_unix: i64,
    pub started: Instant,
    pub uid: u32,
    /// Flipped to `true` to stop the agent.
    pub shutdown: watch::Sender<bool>,
}

impl AgentState {
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.read().expect("rules lock").clone()
    }

    /// Re-reads the config file's `[[registry]]` entries (`regent reload`,
    /// SIGHUP). A file that does not parse changes nothing. Cached tokens of
    /// entries that did not change are kept.
    pub fn reload(&self) -> Result<(String, usize), String> {
        let path = self.config_path.display().to_string();
        let rules = match Config::load(&self.config_path) {
            Ok(config) => Arc::new(config.map(|c| c.rules).unwrap_or_default()),
            Err(e) => {
                tracing::warn!(error = %e, "config reload refused; the config in force stays");
                return Err(format!("{e}; the config in force is unchanged"));
            }
        };
        let count = rules.len();
        *self.rules.write().expect("rules lock") = rules.clone();
        self.engine.reconcile(|key| rules.resolve(key));
        tracing::info!(config = %path, rules = count, "config reloaded");
        Ok((path, count))
    }

    /// `regent status`: bare values, each note in a field of its own.
    fn status(&self) -> StatusInfo {
        let (location, detail) = split_note(self.credentials.location());
        StatusInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            proto: PROTOCOL_VERSION,
            started: self.started_unix,
            uptime_secs: self.started.elapsed().as_secs(),
            socket: self.socket.clone(),
            store: self.credentials.kind().name().to_owned(),
            store_reason: self.store_reason.clone(),
            store_location: Some(location),
            store_detail: detail,
            credentials: self.credentials.len(),
            config: Some(self.config_path.display().to_string()),
            config_present: self.config_path.exists(),
            log: self.log.clone(),
        }
    }
}

/// `"<value> (<note>)"` split into the value and the note: a backend's
/// location reads `/path/secrets.enc (AES-256-GCM; master key in ...)`.
fn split_note(text: String) -> (String, Option<String>) {
    if let Some(inner) = text.strip_suffix(')')
        && let Some(open) = inner.find(" (")
    {
        let note = inner[open + 2..].to_owned();
        return (inner[..open].to_owned(), Some(note));
    }
    (text, None)
}

/// Serves connections until `state.shutdown` turns true.
pub async fn serve(listener: UnixListener, state: Arc<AgentState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = state.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == state.uid => {}
            Ok(cred) => {
                tracing::warn!(
                    peer_uid = cred.uid(),
                    peer_pid = cred.pid(),
                    "refused a connection from another user"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the peer's credentials; connection refused");
                continue;
            }
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(limit = MAX_CONNECTIONS, "too many connections; one refused");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(stream, &state).await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

struct Session {
    hello: bool,
    supported: bool,
}

async fn handle(mut stream: UnixStream, state: &AgentState) -> Result<(), FrameError> {
    let mut session = Session {
        hello: false,
        supported: false,
    };
    // Responses wait here while the client's next request is already in the
    // socket: a helper pipelines Hello and its request, and gets both
    // answers in one write (one wake-up instead of two).
    let mut out = Zeroizing::new(Vec::new());
    loop {
        let wait = if session.hello {
            IDLE_TIMEOUT
        } else {
            HANDSHAKE_TIMEOUT
        };
        let body = match read_frame(&mut stream, wait, &mut out).await {
            Ok(body) => body,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => {
                let _ = flush(&mut stream, &mut out).await;
                return Err(e);
            }
        };
        let response = match protocol::decode_body::<Request>(&body) {
            Ok(req) => {
                drop(body);
                let quit = matches!(req, Request::Quit);
                // Answers wait in `out` only behind requests that finish at
                // once (served from memory). One that has to wait (a store,
                // a cold read, a token fetch) first sends what is queued, so
                // the client gets its Hello answer within its handshake bound.
                let mut pending = std::pin::pin!(dispatch(req, &mut session, state));
                let first =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(pending.as_mut().poll(cx)))
                        .await;
                let response = match first {
                    std::task::Poll::Ready(response) => response,
                    std::task::Poll::Pending => {
                        flush(&mut stream, &mut out).await?;
                        pending.await
                    }
                };
                if quit {
                    push_frame(&mut out, &response)?;
                    flush(&mut stream, &mut out).await?;
                    tracing::info!("quit requested by a client");
                    let _ = state.shutdown.send(true);
                    return Ok(());
                }
                response
            }
            Err(e) => {
                tracing::debug!(error = %e, "undecodable request");
                Response::error(ErrorKind::BadRequest, format!("{e}"))
            }
        };
        push_frame(&mut out, &response)?;
        if !session.hello {
            return flush(&mut stream, &mut out).await;
        }
    }
}

async fn dispatch(req: Request, session: &mut Session, state: &AgentState) -> Response {
    let kind = req.kind();
    if let Request::Hello {
        proto,
        client,
        version,
    } = &req
    {
        session.hello = true;
        session.supported = (MIN_SUPPORTED_PROTOCOL..=PROTOCOL_VERSION).contains(proto);
        tracing::debug!(client, version, proto, "hello");
        return Response::Hello {
            proto: PROTOCOL_VERSION,
            min_proto: MIN_SUPPORTED_PROTOCOL,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
        };
    }
    if !session.hello {
        return Response::error(ErrorKind::BadRequest, "the first message must be Hello");
    }
    if !session.supported && !matches!(req, Request::Quit) {
        return Response::error(
            ErrorKind::Unsupported,
            format!(
                "this regent agent serves protocol {MIN_SUPPORTED_PROTOCOL}..={PROTOCOL_VERSION}; \
                 install matching versions of regent and docker-credential-regent"
            ),
        );
    }
    let started = Instant::now();
    let response = match req {
        Request::Hello { .. } => unreachable!("handled above"),
        Request::Get { server_url, env } => get(state, &server_url, env).await,
        Request::Store {
            server_url,
            username,
            secret,
        } => {
            if server_url.trim().is_empty() {
                Response::error(ErrorKind::BadRequest, NO_SERVER_URL)
            } else if username.is_empty() {
                Response::error(ErrorKind::BadRequest, NO_USERNAME)
            } else {
                match registry::canonical(&server_url) {
                    Err(e) => Response::error(ErrorKind::BadRequest, e.to_string()),
                    Ok(key) => {
                        let server_url = server_url.trim().to_owned();
                        let login = NewLogin {
                            key: key.clone(),
                            server_url,
                            username,
                            secret,
                        };
                        match state.credentials.store(login).await {
                            Ok(()) => {
                                tracing::info!(key = key.as_str(), "stored");
                                Response::Done
                            }
                            Err(e) => Response::error(
                                ErrorKind::Store,
                                format!("cannot store the credentials for {key}: {e}"),
                            ),
                        }
                    }
                }
            }
        }
        Request::Erase { server_url } => match registry::canonical(&server_url) {
            // Nothing can be stored under a key that does not parse.
            Err(_) => Response::Done,
            Ok(key) => match state.credentials.erase(key.clone()).await {
                Ok(()) => {
                    tracing::info!(key = key.as_str(), "erased");
                    Response::Done
                }
                Err(e) => Response::error(
                    ErrorKind::Store,
                    format!("cannot erase the credentials for {key}: {e}"),
                ),
            },
        },
        Request::ListLogins => Response::List {
            entries: state.credentials.list(),
        },
        Request::ListEntries => {
            let mut entries = state.credentials.entries();
            entries.extend(state.engine.entries());
            entries.sort_by(|a, b| a.key.cmp(&b.key).then(a.source.cmp(&b.source)));
            Response::Entries { entries }
        }
        Request::Status => Response::Status(Box::new(state.status())),
        Request::Quit => Response::Done,
        Request::Reload => match state.reload() {
            Ok((config, rules)) => Response::Reloaded { config, rules },
            Err(message) => Response::error(ErrorKind::BadRequest, message),
        },
        Request::SecretSet { name, secret } => secret_set(state, name, secret).await,
        Request::SecretRm { name } => match named_secrets::check_name(&name) {
            Err(e) => Response::error(ErrorKind::BadRequest, e.to_string()),
            Ok(()) => match state
                .credentials
                .erase(named_secrets::store_key(&name))
                .await
            {
                Ok(()) => {
                    tracing::info!(name, "named secret removed");
                    Response::Done
                }
                Err(e) => Response::error(
                    ErrorKind::Store,
                    format!("cannot remove the secret {name:?}: {e}"),
                ),
            },
        },
        Request::SecretLs => Response::Secrets {
            names: state.credentials.secret_names(),
        },
    };
    tracing::debug!(
        request = kind,
        response = response.kind(),
        micros = started.elapsed().as_micros() as u64,
        "served"
    );
    response
}

/// Resolution order: a configured source, a stored login, a source
/// detected from the hostname, not found.
async fn get(state: &AgentState, server_url: &str, env: CallerEnv) -> Response {
    let Ok(key) = registry::canonical(server_url) else {
        return Response::NotFound;
    };
    let server_url = server_url.trim().to_owned();
    let env = env.subset(FORWARDED_ENV);
    if let Some(source) = state.rules().resolve(&key) {
        return from_source(state, source, key, server_url, env).await;
    }
    match state.credentials.get(&key).await {
        Ok(Some(cred)) => Response::Credentials {
            server_url,
            username: cred.username,
            secret: cred.secret,
        },
        Ok(None) => match sources::detect(&key) {
            Some(source) => from_source(state, source, key, server_url, env).await,
            None => Response::NotFound,
        },
        Err(e) => Response::error(
            ErrorKind::Store,
            format!("cannot read the credentials for {key}: {e}"),
        ),
    }
}

async fn from_source(
    state: &AgentState,
    source: Arc<dyn Source>,
    key: registry::RegistryKey,
    server_url: String,
    env: CallerEnv,
) -> Response {
    // Each source sees only the caller's variables it asks for: an `exec`
    // command never gets the caller's AWS keys.
    let req = SourceRequest {
        key,
        server_url: server_url.clone(),
        env: env.subset(source.caller_env()),
    };
    match state.engine.get(source, req).await {
        Ok(token) => Response::Credentials {
            server_url,
            username: token.username,
            secret: token.secret,
        },
        Err(message) => Response::error(ErrorKind::Source, message),
    }
}

async fn secret_set(state: &AgentState, name: String, secret: regent_shared::Secret) -> Response {
    if let Err(e) = named_secrets::check_name(&name) {
        return Response::error(ErrorKind::BadRequest, e.to_string());
    }
    if secret.is_empty() {
        return Response::error(
            ErrorKind::BadRequest,
            format!("the secret {name:?} is empty; nothing was stored"),
        );
    }
    if secret.len() > named_secrets::MAX_VALUE {
        return Response::error(
            ErrorKind::BadRequest,
            format!(
                "the secret {name:?} is {} bytes, more than the {}-byte limit",
                secret.len(),
                named_secrets::MAX_VALUE
            ),
        );
    }
    match state.credentials.set_secret(&name, secret).await {
        Ok(()) => {
            tracing::info!(name, "named secret stored");
            Response::Done
        }
        Err(e) => Response::error(
            ErrorKind::Store,
            format!("cannot store the secret {name:?}: {e}"),
        ),
    }
}

/// Reads one frame body. `wait` bounds the time until the first byte; the
/// rest of the frame must follow within [`FRAME_TIMEOUT`]. Responses queued
/// in `out` are written first unless the next request is already there.
async fn read_frame(
    stream: &mut UnixStream,
    wait: Duration,
    out: &mut Zeroizing<Vec<u8>>,
) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    let first = match stream.try_read(&mut header) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            flush(stream, out).await?;
            tokio::time::timeout(wait, stream.read(&mut header))
                .await
                .map_err(|_| timed_out("waiting for a request"))??
        }
        Err(e) => return Err(e.into()),
    };
    if first == 0 {
        return Err(FrameError::Closed);
    }
    let rest = async {
        stream
            .read_exact(&mut header[first..])
            .await
            .map_err(truncated)?;
        let len = protocol::frame_len(header)?;
        let mut body = Zeroizing::new(vec![0u8; len]);
        stream.read_exact(&mut body).await.map_err(truncated)?;
        Ok::<_, FrameError>(body)
    };
    tokio::time::timeout(FRAME_TIMEOUT, rest)
        .await
        .map_err(|_| timed_out("in the middle of a frame"))?
}

/// Appends the frame of `response` to `out`.
fn push_frame(out: &mut Zeroizing<Vec<u8>>, response: &Response) -> Result<(), FrameError> {
    let frame = protocol::encode_frame(response)?;
    if out.len() + frame.len() > out.capacity() {
        // Grow by hand: a reallocation would leave a copy of a secret in
        // freed memory; the old buffer is wiped when dropped.
        let mut bigger = Zeroizing::new(Vec::with_capacity(out.len() + frame.len()));
        bigger.extend_from_slice(out);
        *out = bigger;
    }
    out.extend_from_slice(&frame);
    Ok(())
}

/// Writes and clears the queued responses.
async fn flush(stream: &mut UnixStream, out: &mut Zeroizing<Vec<u8>>) -> Result<(), FrameError> {
    if out.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(FRAME_TIMEOUT, stream.write_all(out))
        .await
        .map_err(|_| timed_out("writing a response"))??;
    // Wipes the whole buffer and empties it.
    zeroize::Zeroize::zeroize(&mut **out);
    Ok(())
}

fn truncated(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

fn timed_out(what: &str) -> FrameError {
    FrameError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("timed out {what}"),
    ))
}
