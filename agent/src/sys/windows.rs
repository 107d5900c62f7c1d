//! The Windows side of [`crate::sys`]: the server end of the agent's named
//! pipe, the console, and processes by handle.
//!
//! The pipe `\\.\pipe\regent-<user>` is created with
//! `FILE_FLAG_FIRST_PIPE_INSTANCE` (a name another process already serves
//! is refused: it could be anyone's) and `PIPE_REJECT_REMOTE_CLIENTS`.
//! There is always one instance waiting for a client: once a client
//! connects to it, a new one is created before the connected one goes to
//! its session. Every client's process must run as our user (the user SID
//! of its token), as a unix peer's uid must be ours; the pipe's default
//! DACL lets other users open it for reading, and they are refused here.

use std::ffi::OsString;
use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io;
use std::os::windows::io::{AsRawHandle, IntoRawHandle};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use anyhow::anyhow;
use tokio::net::windows::named_pipe::{NamedPipeServer, PipeMode, ServerOptions};
use tokio::signal::windows::{CtrlBreak, CtrlC, CtrlClose, CtrlShutdown};
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER, HANDLE, WAIT_TIMEOUT,
};
use windows_sys::Win32::System::Console::{
    CONSOLE_MODE, ENABLE_ECHO_INPUT, GetConsoleMode, GetStdHandle, STD_ERROR_HANDLE,
    STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, SetConsoleMode, SetStdHandle,
};
use windows_sys::Win32::System::Diagnostics::Debug::{
    SEM_FAILCRITICALERRORS, SEM_NOGPFAULTERRORBOX, SetErrorMode,
};
use windows_sys::Win32::System::Pipes::GetNamedPipeClientProcessId;
use windows_sys::Win32::System::Threading::{
    OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE,
    TerminateProcess, WaitForSingleObject,
};

use super::{Event, Peer};

/// One accepted connection: the server end of an instance of the pipe.
pub type Stream = NamedPipeServer;

/// The agent's pipe: the instance the next client connects to.
pub struct Listener {
    path: OsString,
    next: NamedPipeServer,
}

impl Listener {
    /// Creates the first instance of the pipe at `path`. A pipe of that
    /// name that exists already is served by another process (whoever
    /// created it first): refused.
    pub fn bind(path: &Path) -> anyhow::Result<Listener> {
        let first = options(true).create(path).map_err(|e| {
            if e.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) {
                anyhow!(
                    "{} is already served by another process; run `regent status`",
                    path.display()
                )
            } else {
                anyhow!("cannot listen on {}: {e}", path.display())
            }
        })?;
        Ok(Listener {
            path: path.as_os_str().to_owned(),
            next: first,
        })
    }

    /// Waits for a client on the waiting instance, creates the next one and
    /// hands over the connected one. Cancel safe: a client that connects
    /// meanwhile waits for the next call.
    pub async fn accept(&mut self) -> io::Result<Stream> {
        let connected = self.next.connect().await;
        // A failed instance (the client gone already) is replaced too.
        let next = options(false).create(&self.path)?;
        let done = std::mem::replace(&mut self.next, next);
        connected.map(|()| done)
    }

    pub fn path(&self) -> Option<PathBuf> {
        Some(PathBuf::from(&self.path))
    }
}

fn options(first: bool) -> ServerOptions {
    let mut options = ServerOptions::new();
    options
        .first_pipe_instance(first)
        .reject_remote_clients(true)
        .access_inbound(true)
        .access_outbound(true)
        .pipe_mode(PipeMode::Byte);
    options
}

/// The client's process (`GetNamedPipeClientProcessId`) against our user:
/// the user SIDs of the two processes' tokens.
pub fn peer(stream: &Stream) -> io::Result<Peer> {
    let mut pid = 0u32;
    // SAFETY: a valid pipe handle and an out pointer.
    if unsafe { GetNamedPipeClientProcessId(stream.as_raw_handle(), &mut pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    if regent_shared::sys::runs_as_us(pid)? {
        return Ok(Peer::Ours);
    }
    Ok(Peer::Other {
        user: "another user".to_owned(),
        pid: Some(pid),
    })
}

/// No Windows Error Reporting dialog and no critical-error message box
/// (`SetErrorMode`): a crashing agent exits rather than waiting for a
/// click. Windows has no per-process switch for crash dumps: a machine
/// configured to collect them (WER `LocalDumps`) would still write one.
pub fn harden() {
    // SAFETY: takes flags only; the previous mode it returns is not needed.
    unsafe {
        SetErrorMode(SEM_FAILCRITICALERRORS | SEM_NOGPFAULTERRORBOX);
    }
}

/// Nothing: the helper starts the agent without a console and in a process
/// group of its own (`regent_shared::sys::detach`), so the caller's Ctrl-C
/// does not reach it.
pub fn detach() {}

/// Which standard stream [`redirect_to_null`] lets go of.
#[derive(Debug, Clone, Copy)]
pub enum StdStream {
    Out,
    Err,
}

/// Points stdout or stderr at `NUL` and closes the handle it was (the
/// spawning client's pipe then reads end of file).
pub fn redirect_to_null(which: StdStream) {
    let id = match which {
        StdStream::Out => STD_OUTPUT_HANDLE,
        StdStream::Err => STD_ERROR_HANDLE,
    };
    let Ok(null) = OpenOptions::new().write(true).open("NUL") else {
        return;
    };
    let null = null.into_raw_handle();
    // SAFETY: std looks the standard handles up on each use, so the old
    // one is used by nothing once replaced; `null` is ours to give away.
    unsafe {
        let old = GetStdHandle(id);
        if SetStdHandle(id, null) != 0 && !old.is_null() && old as isize != -1 {
            CloseHandle(old);
        }
    }
}

/// Whether a process `pid` exists and has not exited.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: no preconditions; a null result is an error.
    let process = unsafe {
        OpenProcess(
            PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_SYNCHRONIZE,
            0,
            pid,
        )
    };
    if process.is_null() {
        // No such process is ERROR_INVALID_PARAMETER; any other refusal
        // (access denied) is a process that exists.
        return io::Error::last_os_error().raw_os_error() != Some(ERROR_INVALID_PARAMETER as i32);
    }
    // SAFETY: a valid handle, closed once asked.
    unsafe {
        let running = WaitForSingleObject(process, 0) == WAIT_TIMEOUT;
        CloseHandle(process);
        running
    }
}

/// How a person ends process `pid` by hand.
pub fn kill_hint(pid: u32) -> String {
    format!("`taskkill /F /PID {pid}`")
}

/// Nothing: a Windows process has no process group to be killed with;
/// [`kill_group`] ends the child alone.
pub fn own_group(_cmd: &mut tokio::process::Command) {}

/// Ends the child `pid` (`TerminateProcess`); what it started lives on.
/// Call it only while the child's `tokio::process::Child` lives: its
/// handle keeps the pid from being given to another process.
pub fn kill_group(pid: u32) {
    // SAFETY: no preconditions; a null result is an error (ignored: the
    // process is gone).
    unsafe {
        let process: HANDLE = OpenProcess(PROCESS_TERMINATE, 0, pid);
        if !process.is_null() {
            TerminateProcess(process, 1);
            CloseHandle(process);
        }
    }
}

/// None: a Windows process ends with an exit code, never a signal.
pub fn exit_signal(_status: &ExitStatus) -> Option<i32> {
    None
}

/// The console's Ctrl-C and Ctrl-Break, its window closed, and the system
/// shutting down: each stops the agent. Windows has no SIGHUP: the config
/// is re-read with `regent reload`.
pub struct Signals {
    c: CtrlC,
    brk: CtrlBreak,
    close: CtrlClose,
    shutdown: CtrlShutdown,
}

impl Signals {
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            c: tokio::signal::windows::ctrl_c()?,
            brk: tokio::signal::windows::ctrl_break()?,
            close: tokio::signal::windows::ctrl_close()?,
            shutdown: tokio::signal::windows::ctrl_shutdown()?,
        })
    }

    /// The next request.
    pub async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.c.recv() => Event::Stop("Ctrl-C"),
            _ = self.brk.recv() => Event::Stop("Ctrl-Break"),
            _ = self.close.recv() => Event::Stop("the console closed"),
            _ = self.shutdown.recv() => Event::Stop("the system shutting down"),
        }
    }
}

/// The console's echo off (`ENABLE_ECHO_INPUT` cleared on the console input
/// handle) for as long as it lives; the mode it had is put back on drop.
pub struct EchoOff(Option<(HANDLE, CONSOLE_MODE)>);

#[expect(
    clippy::new_without_default,
    reason = "it turns the echo off: not a value to default to"
)]
impl EchoOff {
    pub fn new() -> EchoOff {
        // SAFETY: console calls on the standard input handle with an out
        // pointer; a handle that is not a console fails GetConsoleMode.
        unsafe {
            let input = GetStdHandle(STD_INPUT_HANDLE);
            let mut mode: CONSOLE_MODE = 0;
            if input.is_null() || GetConsoleMode(input, &mut mode) == 0 {
                return EchoOff(None);
            }
            if SetConsoleMode(input, mode & !ENABLE_ECHO_INPUT) == 0 {
                return EchoOff(None);
            }
            EchoOff(Some((input, mode)))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some((input, mode)) = self.0 {
            // SAFETY: restores the mode read in `new` on the same handle.
            unsafe {
                SetConsoleMode(input, mode);
            }
        }
    }
}

/// Nothing (see the module docs of [`crate::sys`]: the profile's ACL).
pub fn private_dir(builder: &mut DirBuilder) -> &mut DirBuilder {
    builder
}

/// Nothing (see [`private_dir`]).
pub fn private_file(options: &mut OpenOptions) -> &mut OpenOptions {
    options
}

/// Nothing: Windows files have no mode bits (see [`private_dir`]).
pub fn file_mode(options: &mut OpenOptions, _mode: u32) -> &mut OpenOptions {
    options
}

/// Nothing (see [`file_mode`]).
pub fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Nothing (see [`file_mode`]).
pub fn set_path_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// None: Windows files have no mode bits.
pub fn mode_of(_meta: &Metadata) -> Option<u32> {
    None
}

unsafe extern "C" {
    /// The C runtime's 64-bit `mktime` (msvcrt and the UCRT both have it).
    fn _mktime64(tm: *mut libc::tm) -> i64;
}

/// A local time in seconds since the epoch (`_mktime64`, with the
/// system's time zone), or `None` before 1970 or when it cannot say.
pub fn local_to_unix(t: time::PrimitiveDateTime) -> Option<u64> {
    let mut tm = super::tm_of(t);
    // SAFETY: `tm` is a valid value owned here; `_mktime64` reads and
    // normalises it.
    let secs = unsafe { _mktime64(&mut tm) };
    u64::try_from(secs).ok().filter(|s| *s > 0)
}
