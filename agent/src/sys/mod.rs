//! The platform seam of the agent and the CLI, so that everything above it
//! is one code path on every platform (as `regent_shared::sys` is for the
//! client side):
//!
//! - Transport: [`Stream`], one accepted connection (a `UnixStream`; on
//!   Windows the server end of an instance of the agent's named pipe), and
//!   [`Listener`], which accepts them. [`peer`] says whether the program
//!   at the other end runs as our user: its uid on unix, the user SID of
//!   its process token on Windows.
//! - Process: [`harden`] (no core dumps; on Windows no error dialog),
//!   [`detach`] (a session of our own on unix; on Windows the helper
//!   already starts the agent without a console and in a process group of
//!   its own), [`redirect_to_null`] (letting go of the spawning client's
//!   pipe), [`process_alive`] and [`kill_hint`] (what `regent stop` says
//!   when the agent does not exit: it only ever asks with `Quit`).
//! - Signals: [`Signals`], the requests to stop or to reload that the
//!   platform delivers (SIGTERM, SIGINT, SIGHUP; on Windows the console's
//!   Ctrl-C, close and shutdown events).
//! - Terminal: [`EchoOff`], the terminal's echo off while a secret is typed.
//! - Files: [`private_file`] and [`private_dir`], owner-only modes on
//!   unix. On Windows they do nothing: the agent's files live in the
//!   user's profile (`%APPDATA%`, `%LOCALAPPDATA%`), whose ACL already
//!   grants only the user, SYSTEM and the administrators, and new files
//!   inherit it.
//! - Children: [`own_group`], [`kill_group`], and [`exit_signal`], the
//!   signal that ended a child (none on Windows).
//! - Time: [`local_to_unix`], a local time in seconds since the epoch
//!   (`mktime`; the C runtime's `_mktime64` on Windows).

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

/// Who is at the other end of an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A program of our user.
    Ours,
    /// A program of another user: its uid (unix) or SID (Windows), and its
    /// pid when the platform says.
    Other { user: String, pid: Option<u32> },
}

/// What the platform asked the agent to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Stop: SIGTERM, SIGINT; on Windows Ctrl-C, Ctrl-Break, the console
    /// closed, the system shutting down. The name is for the log.
    Stop(&'static str),
    /// Re-read the config's token sources: SIGHUP (none on Windows, where
    /// `regent reload` does it).
    Reload,
}

/// `t` as the C `struct tm` that `mktime` reads: the time zone's rules
/// decide whether daylight saving time applies (`tm_isdst` -1).
fn tm_of(t: time::PrimitiveDateTime) -> libc::tm {
    // SAFETY: a zeroed `tm` is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = t.year() - 1900;
    tm.tm_mon = i32::from(u8::from(t.month())) - 1;
    tm.tm_mday = i32::from(t.day());
    tm.tm_hour = i32::from(t.hour());
    tm.tm_min = i32::from(t.minute());
    tm.tm_sec = i32::from(t.second());
    tm.tm_isdst = -1;
    tm
}
