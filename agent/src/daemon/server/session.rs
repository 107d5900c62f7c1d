//! One client's session: the handshake, the protocol check, the order of
//! answers, and `Quit`.
//!
//! The first frame must be `Hello` and arrive within [`HANDSHAKE_TIMEOUT`];
//! later frames may come at any pace up to [`IDLE_TIMEOUT`]. A client whose
//! protocol is outside what this agent serves gets `Unsupported` for
//! everything but `Quit`. Answers to requests served from memory wait in the
//! connection's queue behind the next pipelined request; one that has to
//! wait (a store, a cold read, a token fetch) first sends what is queued, so
//! the client gets its Hello answer within its handshake bound.

use std::future::Future;
use std::task::Poll;
use std::time::Instant;

use regent_shared::protocol::{
    self, ErrorKind, FrameError, MIN_SUPPORTED_PROTOCOL, PROTOCOL_VERSION, Request, Response,
};

use super::connection::Connection;
use super::{HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, handlers};
use crate::daemon::state::AgentState;
use crate::sys::Stream;

#[derive(Default)]
struct Session {
    hello: bool,
    supported: bool,
    /// The protocol the client said it speaks.
    proto: u32,
}

/// Serves one connection until the client closes it, quits, or breaks a
/// bound.
pub async fn serve(stream: Stream, state: &AgentState) -> Result<(), FrameError> {
    let mut conn = Connection::new(stream);
    let mut session = Session::default();
    loop {
        let wait = if session.hello {
            IDLE_TIMEOUT
        } else {
            HANDSHAKE_TIMEOUT
        };
        let body = match conn.read_frame(wait).await {
            Ok(body) => body,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => {
                let _ = conn.flush().await;
                return Err(e);
            }
        };
        let response = match protocol::decode_body::<Request>(&body) {
            Ok(req) => {
                drop(body);
                let quit = matches!(req, Request::Quit);
                let response = answer(&mut conn, session.answer(req, state)).await?;
                if quit {
                    conn.queue(&response)?;
                    conn.flush().await?;
                    tracing::info!("quit requested by a client");
                    state.stop();
                    return Ok(());
                }
                response
            }
            Err(e) => {
                tracing::debug!(error = %e, "undecodable request");
                Response::error(ErrorKind::BadRequest, format!("{e}"))
            }
        };
        conn.queue(&response)?;
        if !session.hello {
            return conn.flush().await;
        }
    }
}

/// Awaits `pending`, first sending the queued answers if it cannot finish
/// at once.
async fn answer(
    conn: &mut Connection,
    pending: impl Future<Output = Response>,
) -> Result<Response, FrameError> {
    let mut pending = std::pin::pin!(pending);
    let first = std::future::poll_fn(|cx| Poll::Ready(pending.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(response) => Ok(response),
        Poll::Pending => {
            conn.flush().await?;
            Ok(pending.await)
        }
    }
}

impl Session {
    /// Hello, or the gate in front of the handlers.
    async fn answer(&mut self, req: Request, state: &AgentState) -> Response {
        if let Request::Hello {
            proto,
            client,
            version,
        } = &req
        {
            self.hello = true;
            self.proto = *proto;
            self.supported = (MIN_SUPPORTED_PROTOCOL..=PROTOCOL_VERSION).contains(proto);
            tracing::debug!(client, version, proto, "hello");
            return Response::Hello {
                proto: PROTOCOL_VERSION,
                min_proto: MIN_SUPPORTED_PROTOCOL,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                pid: std::process::id(),
            };
        }
        if !self.hello {
            return Response::error(ErrorKind::BadRequest, "the first message must be Hello");
        }
        if !self.supported && !matches!(req, Request::Quit) {
            return Response::error(
                ErrorKind::Unsupported,
                format!(
                    "this regent agent serves protocol {MIN_SUPPORTED_PROTOCOL}..={PROTOCOL_VERSION}; \
                     install matching versions of regent and docker-credential-regent"
                ),
            );
        }
        let kind = req.kind();
        let started = Instant::now();
        let response = handlers::handle(req, state, self.proto).await;
        tracing::debug!(
            request = kind,
            response = response.kind(),
            micros = started.elapsed().as_micros() as u64,
            "served"
        );
        response
    }
}
