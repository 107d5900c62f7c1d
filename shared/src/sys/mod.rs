//! The platform seam of the client side, so that everything above it is one
//! code path on every platform:
//!
//! - [`Stream`]: a connection to the agent, with `connect`,
//!   `set_read_timeout` and `set_write_timeout` as `UnixStream` has them. On
//!   unix it is a `UnixStream`; on Windows a client end of the agent's named
//!   pipe, opened only when a program of the same user serves it, with
//!   overlapped reads and writes so every wait is bounded.
//! - [`Stdin`]: the helper's stdin, read unbuffered, with a bounded wait
//!   for input (`poll(2)` on unix, a reader thread on Windows).
//! - [`detach`]: a spawned agent out of the caller's process group (and,
//!   on Windows, its console), so a Ctrl-C meant for `docker pull` does not
//!   end it.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;
