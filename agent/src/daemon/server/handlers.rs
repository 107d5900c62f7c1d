//! One function per request, after the handshake: what the agent does with
//! it and what it answers. `get` is the hot path.

use std::sync::Arc;

use regent_shared::Secret;
use regent_shared::messages::{NO_SERVER_URL, NO_USERNAME};
use regent_shared::protocol::{CallerEnv, ErrorKind, FORWARDED_ENV, Request, Response};
use regent_shared::registry::{self, RegistryKey};

use crate::credentials::NewLogin;
use crate::daemon::state::AgentState;
use crate::named_secrets;
use crate::sources::{self, ErrorClass, Source, SourceRequest};

/// Answers `req`; `Hello` is the session's own.
/// `proto` is the protocol the client said it speaks.
pub async fn handle(req: Request, state: &AgentState, proto: u32) -> Response {
    match req {
        Request::Hello { .. } => unreachable!("the session answers Hello"),
        Request::Get {
            server_url,
            env,
            env_complete,
        } => {
            // Only a client of protocol 2 or later can be asked for more.
            let may_ask = proto >= 2 && !env_complete;
            get(state, &server_url, env, may_ask).await
        }
        Request::Store {
            server_url,
            username,
            secret,
        } => store(state, server_url, username, secret).await,
        Request::Erase { server_url } => erase(state, &server_url).await,
        Request::ListLogins => Response::List {
            entries: state.credentials.list(),
        },
        Request::ListEntries => list_entries(state),
        Request::Status => Response::Status(Box::new(state.status())),
        Request::Quit => Response::Done,
        Request::Reload => reload(state),
        Request::SecretSet { name, secret } => secret_set(state, name, secret).await,
        Request::SecretRm { name } => secret_rm(state, name).await,
        Request::SecretLs => Response::Secrets {
            names: state.credentials.secret_names(),
        },
    }
}

/// Resolution order: a configured source, a stored login, a source
/// detected from the hostname, not found. A configured source that does
/// not apply to this request (an `env` entry whose variable the caller has
/// not set) is passed over. `may_ask`: the client can be sent `NeedEnv`.
async fn get(state: &AgentState, server_url: &str, env: CallerEnv, may_ask: bool) -> Response {
    let Ok(key) = registry::canonical(server_url) else {
        return Response::NotFound;
    };
    let server_url = server_url.trim().to_owned();
    if let Some(source) = state.rules().resolve(&key) {
        let named = source.named_env();
        if may_ask && named.iter().any(|name| env.get(name).is_none()) {
            return Response::NeedEnv {
                names: named.to_vec(),
            };
        }
        let env = env.filtered(|name| {
            named.iter().any(|n| n == name)
                || (FORWARDED_ENV.contains(&name) && source.caller_env().contains(&name))
        });
        if let Some(answer) = from_source(state, source, key.clone(), server_url.clone(), env).await
        {
            return answer;
        }
    }
    let env = env.subset(FORWARDED_ENV);
    match state.credentials.get(&key).await {
        Ok(Some(cred)) => Response::Credentials {
            server_url,
            username: cred.username,
            secret: cred.secret,
        },
        Ok(None) => match sources::detect(&key) {
            Some(source) => {
                let env = env.subset(source.caller_env());
                from_source(state, source, key, server_url, env)
                    .await
                    .unwrap_or(Response::NotFound)
            }
            None => Response::NotFound,
        },
        Err(e) => Response::error(
            ErrorKind::Store,
            format!("cannot read the credentials for {key}: {e}"),
        ),
    }
}

/// The answer of `source`, or `None` when it does not apply to this request.
/// Each source sees only the caller's variables it asks for (`env`, already
/// narrowed): an `exec` command never gets the caller's AWS keys.
async fn from_source(
    state: &AgentState,
    source: Arc<dyn Source>,
    key: RegistryKey,
    server_url: String,
    env: CallerEnv,
) -> Option<Response> {
    let req = SourceRequest {
        key,
        server_url: server_url.clone(),
        env,
    };
    match state.engine.get(source, req).await {
        Ok(token) => Some(Response::Credentials {
            server_url,
            username: token.username,
            secret: token.secret,
        }),
        Err(e) if e.class == Some(ErrorClass::NotApplicable) => {
            tracing::debug!(reason = %e, "configured source did not apply");
            None
        }
        Err(e) => Some(Response::error(ErrorKind::Source, e.to_string())),
    }
}

async fn store(
    state: &AgentState,
    server_url: String,
    username: String,
    secret: Secret,
) -> Response {
    if server_url.trim().is_empty() {
        return Response::error(ErrorKind::BadRequest, NO_SERVER_URL);
    }
    if username.is_empty() {
        return Response::error(ErrorKind::BadRequest, NO_USERNAME);
    }
    let key = match registry::canonical(&server_url) {
        Ok(key) => key,
        Err(e) => return Response::error(ErrorKind::BadRequest, e.to_string()),
    };
    let login = NewLogin {
        key: key.clone(),
        server_url: server_url.trim().to_owned(),
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

async fn erase(state: &AgentState, server_url: &str) -> Response {
    // Nothing can be stored under a key that does not parse.
    let Ok(key) = registry::canonical(server_url) else {
        return Response::Done;
    };
    match state.credentials.erase(key.clone()).await {
        Ok(()) => {
            tracing::info!(key = key.as_str(), "erased");
            Response::Done
        }
        Err(e) => Response::error(
            ErrorKind::Store,
            format!("cannot erase the credentials for {key}: {e}"),
        ),
    }
}

/// Stored logins and sourced tokens, by key, then source.
fn list_entries(state: &AgentState) -> Response {
    let mut entries = state.credentials.entries();
    entries.extend(state.engine.entries());
    entries.sort_by(|a, b| a.key.cmp(&b.key).then(a.source.cmp(&b.source)));
    Response::Entries { entries }
}

fn reload(state: &AgentState) -> Response {
    match state.reload() {
        Ok(done) => Response::Reloaded {
            config: done.config,
            rules: done.rules,
        },
        Err(e) => Response::error(ErrorKind::BadRequest, e.to_string()),
    }
}

async fn secret_set(state: &AgentState, name: String, secret: Secret) -> Response {
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

async fn secret_rm(state: &AgentState, name: String) -> Response {
    if let Err(e) = named_secrets::check_name(&name) {
        return Response::error(ErrorKind::BadRequest, e.to_string());
    }
    match state
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
    }
}
