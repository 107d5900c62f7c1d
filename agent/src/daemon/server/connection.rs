//! One client connection's bytes: bounded frame reads, and answers queued
//! until the client waits for them.
//!
//! [`Connection::read_frame`] bounds the wait for a frame's first byte (the
//! caller's choice: the handshake or the idle bound) and the rest of the
//! frame ([`FRAME_TIMEOUT`]); a header announcing more than `MAX_FRAME` bytes
//! is refused before anything is allocated. Answers are queued with
//! [`Connection::queue`] and written by [`Connection::flush`], which the
//! reader calls itself when the next request is not already in the socket:
//! a helper that pipelines Hello and its request gets both answers in one
//! write. Every buffer that held a frame is wiped.

use std::time::Duration;

use regent_shared::protocol::{self, FrameError, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use super::FRAME_TIMEOUT;
use crate::sys::Stream;

pub struct Connection {
    stream: Stream,
    /// Encoded answers not yet written.
    out: Zeroizing<Vec<u8>>,
}

impl Connection {
    pub fn new(stream: Stream) -> Connection {
        Connection {
            stream,
            out: Zeroizing::new(Vec::new()),
        }
    }

    /// Reads one frame body. `wait` bounds the time until the first byte;
    /// the rest of the frame must follow within [`FRAME_TIMEOUT`]. Queued
    /// answers are written first unless the next request is already there.
    pub async fn read_frame(&mut self, wait: Duration) -> Result<Zeroizing<Vec<u8>>, FrameError> {
        let mut header = [0u8; 4];
        let first = match self.stream.try_read(&mut header) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.flush().await?;
                tokio::time::timeout(wait, self.stream.read(&mut header))
                    .await
                    .map_err(|_| timed_out("waiting for a request"))??
            }
            Err(e) => return Err(e.into()),
        };
        if first == 0 {
            return Err(FrameError::Closed);
        }
        let stream = &mut self.stream;
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

    /// Queues the frame of `response`.
    pub fn queue(&mut self, response: &Response) -> Result<(), FrameError> {
        let frame = protocol::encode_frame(response)?;
        let out = &mut self.out;
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

    /// Writes and clears the queued answers.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        if self.out.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(FRAME_TIMEOUT, self.stream.write_all(&self.out))
            .await
            .map_err(|_| timed_out("writing a response"))??;
        // Wipes the whole buffer and empties it.
        zeroize::Zeroize::zeroize(&mut *self.out);
        Ok(())
    }
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
