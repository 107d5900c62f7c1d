//! The Windows side of [`crate::sys`]: the client end of the agent's named
//! pipe, and stdin read by a thread.
//!
//! The pipe is opened for overlapped I/O, so a read or a write waits on an
//! event for at most its timeout and is cancelled after it, as a unix
//! socket's `SO_RCVTIMEO` would end it. It is opened with the identification
//! impersonation level only (the server may learn who we are, never act as
//! us), and used only when the process serving it runs as the same user as
//! we do: a pipe name can be taken by anyone first, and a client that wrote
//! a `store` into another user's pipe would hand them the secret.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::os::windows::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::ptr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    ERROR_BROKEN_PIPE, ERROR_HANDLE_EOF, ERROR_INVALID_HANDLE, ERROR_IO_PENDING,
    ERROR_OPERATION_ABORTED, ERROR_PIPE_BUSY, GetLastError, HANDLE, HANDLE_FLAG_INHERIT,
    INVALID_HANDLE_VALUE, SetHandleInformation, WAIT_OBJECT_0,
};
use windows_sys::Win32::Security::{
    EqualSid, GetTokenInformation, TOKEN_QUERY, TOKEN_USER, TokenUser,
};
use windows_sys::Win32::Storage::FileSystem::{
    FILE_FLAG_OVERLAPPED, ReadFile, SECURITY_IDENTIFICATION, WriteFile,
};
use windows_sys::Win32::System::Console::{
    GetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};
use windows_sys::Win32::System::Pipes::{GetNamedPipeServerProcessId, WaitNamedPipeW};
use windows_sys::Win32::System::Threading::{
    CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, CreateEventW, GetCurrentProcess, INFINITE,
    OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION, WaitForSingleObject,
};

/// How long `connect` waits for an instance of a busy pipe.
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// Starts a spawned program with no console and in a process group of its
/// own, so the caller's Ctrl-C does not reach it.
///
/// Windows hands a child every inheritable handle of its parent, not only
/// the three it is given: an agent started by the helper would keep the
/// helper's stdout pipe open, and docker, which reads that pipe to its end,
/// would wait for as long as the agent lives. So this process's own
/// standard handles stop being inheritable first (the child gets its own).
pub fn detach(cmd: &mut Command) {
    for which in [STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE] {
        // SAFETY: GetStdHandle has no preconditions; a null or invalid
        // handle makes SetHandleInformation fail, which changes nothing.
        unsafe {
            let handle = GetStdHandle(which);
            if !handle.is_null() && handle != INVALID_HANDLE_VALUE {
                SetHandleInformation(handle, HANDLE_FLAG_INHERIT, 0);
            }
        }
    }
    cmd.creation_flags(CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW);
}

/// The client end of a named pipe served by a program of ours.
pub struct Stream {
    pipe: File,
    /// Signalled when an overlapped read or write completes.
    event: OwnedHandle,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
}

impl Stream {
    /// Opens the pipe at `path`, waiting up to [`BUSY_WAIT`] while every
    /// instance of it is busy. No pipe there is `NotFound`; a pipe served by
    /// another user's program is `PermissionDenied`.
    pub fn connect(path: &Path) -> io::Result<Stream> {
        let deadline = Instant::now() + BUSY_WAIT;
        let pipe = loop {
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(FILE_FLAG_OVERLAPPED)
                .security_qos_flags(SECURITY_IDENTIFICATION)
                .open(path);
            match opened {
                Ok(pipe) => break pipe,
                Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "every instance of the agent's pipe stayed busy",
                        ));
                    }
                    let name: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
                    // SAFETY: a NUL-terminated wide string; the result only
                    // says whether to try again, which the loop does anyway.
                    unsafe { WaitNamedPipeW(name.as_ptr(), millis(Some(left))) };
                }
                Err(e) => return Err(e),
            }
        };
        served_by_us(&pipe)?;
        // SAFETY: no security attributes, manual reset, not signalled, no
        // name; the handle is owned below.
        let event = unsafe { CreateEventW(ptr::null(), 1, 0, ptr::null()) };
        if event.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(Stream {
            pipe,
            // SAFETY: a fresh handle that nothing else owns.
            event: unsafe { OwnedHandle::from_raw_handle(event) },
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
        })
    }

    /// As `UnixStream::set_read_timeout`: `None` waits for ever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(timeout);
        Ok(())
    }

    /// As `UnixStream::set_write_timeout`.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.write_timeout.set(timeout);
        Ok(())
    }

    /// Runs one overlapped operation started by `start` and waits for it at
    /// most `timeout`; a late one is cancelled and is `TimedOut`.
    fn overlapped(
        &self,
        timeout: Option<Duration>,
        start: impl FnOnce(HANDLE, *mut OVERLAPPED) -> i32,
    ) -> io::Result<usize> {
        let pipe = self.pipe.as_raw_handle();
        // SAFETY: OVERLAPPED is plain data; all zero but the event is the
        // documented way to start one.
        let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
        ov.hEvent = self.event.as_raw_handle();
        if start(pipe, &mut ov) == 0 {
            // SAFETY: no preconditions.
            let err = unsafe { GetLastError() };
            if err != ERROR_IO_PENDING {
                return Err(io::Error::from_raw_os_error(err as i32));
            }
        }
        // SAFETY: the event is ours and valid.
        let waited = unsafe { WaitForSingleObject(ov.hEvent, millis(timeout)) };
        if waited != WAIT_OBJECT_0 {
            // SAFETY: cancels only this operation; it must be over before
            // `ov` and the buffer go, so its end is waited for below.
            unsafe { CancelIoEx(pipe, &ov) };
        }
        let mut done = 0u32;
        // SAFETY: `ov` is the operation started above; bWait = TRUE waits for
        // it (or its cancellation) to be over.
        if unsafe { GetOverlappedResult(pipe, &ov, &mut done, 1) } != 0 {
            return Ok(done as usize);
        }
        // SAFETY: no preconditions.
        match unsafe { GetLastError() } {
            ERROR_OPERATION_ABORTED => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out on the agent's pipe",
            )),
            err => Err(io::Error::from_raw_os_error(err as i32)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len().min(u32::MAX as usize) as u32;
        let read = self.overlapped(self.read_timeout.get(), |pipe, ov| {
            // SAFETY: `buf` outlives the operation: `overlapped` returns only
            // once it is over.
            unsafe { ReadFile(pipe, buf.as_mut_ptr(), len, ptr::null_mut(), ov) }
        });
        match read {
            // The server closed its end: end of file, as on a socket.
            Err(e)
                if e.raw_os_error() == Some(ERROR_BROKEN_PIPE as i32)
                    || e.raw_os_error() == Some(ERROR_HANDLE_EOF as i32) =>
            {
                Ok(0)
            }
            r => r,
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len().min(u32::MAX as usize) as u32;
        self.overlapped(self.write_timeout.get(), |pipe, ov| {
            // SAFETY: as in `read`.
            unsafe { WriteFile(pipe, buf.as_ptr(), len, ptr::null_mut(), ov) }
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn millis(timeout: Option<Duration>) -> u32 {
    match timeout {
        // INFINITE is u32::MAX: stay below it.
        Some(t) => t.as_millis().clamp(1, u128::from(INFINITE - 1)) as u32,
        None => INFINITE,
    }
}

/// Refuses a pipe whose server runs as another user.
fn served_by_us(pipe: &File) -> io::Result<()> {
    let mut pid = 0u32;
    // SAFETY: a valid pipe handle and an out pointer.
    if unsafe { GetNamedPipeServerProcessId(pipe.as_raw_handle(), &mut pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    if runs_as_us(pid)? {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the pipe is served by process {pid}, which runs as another user"),
        ))
    }
}

/// Whether process `pid` runs as the same user as this one: the user SIDs
/// of the two processes' tokens are equal. (The agent asks it of the
/// clients of its pipe.)
pub fn runs_as_us(pid: u32) -> io::Result<bool> {
    // SAFETY: no preconditions; a null result is an error.
    let other = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if other.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle that nothing else owns.
    let other = unsafe { OwnedHandle::from_raw_handle(other) };
    let theirs = process_user(other.as_raw_handle())?;
    // SAFETY: the pseudo-handle of this process needs no closing.
    let ours = process_user(unsafe { GetCurrentProcess() })?;
    // SAFETY: both point at the SIDs inside the TOKEN_USER buffers, which
    // live until the end of this function.
    Ok(unsafe { EqualSid(sid_of(&theirs), sid_of(&ours)) } != 0)
}

/// The TOKEN_USER of a process's token, in a buffer aligned for it.
fn process_user(process: HANDLE) -> io::Result<Vec<u64>> {
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: a process handle with query rights, an out pointer.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle that nothing else owns.
    let token = unsafe { OwnedHandle::from_raw_handle(token) };
    let mut needed = 0u32;
    // SAFETY: asking for the size only.
    unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            ptr::null_mut(),
            0,
            &mut needed,
        )
    };
    let mut buf = vec![0u64; (needed as usize).div_ceil(8).max(1)];
    // SAFETY: `buf` holds `needed` bytes, aligned for TOKEN_USER.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buf.as_mut_ptr().cast(),
            (buf.len() * 8) as u32,
            &mut needed,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf)
}

fn sid_of(token_user: &[u64]) -> *mut core::ffi::c_void {
    // SAFETY: the buffer was filled by GetTokenInformation(TokenUser).
    unsafe { (*token_user.as_ptr().cast::<TOKEN_USER>()).User.Sid }
}

/// The helper's stdin, read by a thread so the wait for it can be bounded
/// (a pipe handle cannot be polled). The helper exits soon after reading
/// it, so a thread left blocked on a stdin that never closes ends with it.
pub struct Stdin {
    chunks: mpsc::Receiver<io::Result<zeroize::Zeroizing<Vec<u8>>>>,
    /// A chunk received by `wait`, and how much of it `read` handed out.
    pending: Option<(zeroize::Zeroizing<Vec<u8>>, usize)>,
    ended: bool,
}

impl Stdin {
    pub fn new() -> Stdin {
        let (tx, chunks) = mpsc::sync_channel(1);
        thread::spawn(move || {
            let mut stdin = io::stdin().lock();
            loop {
                let mut chunk = zeroize::Zeroizing::new(vec![0u8; 16 * 1024]);
                let sent = match stdin.read(&mut chunk) {
                    Ok(n) => {
                        chunk.truncate(n);
                        tx.send(Ok(chunk)).map(|()| n > 0)
                    }
                    // No stdin at all: nothing was sent.
                    Err(e) if e.raw_os_error() == Some(ERROR_INVALID_HANDLE as i32) => tx
                        .send(Ok(zeroize::Zeroizing::new(Vec::new())))
                        .map(|()| false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => tx.send(Err(e)).map(|()| false),
                };
                if !matches!(sent, Ok(true)) {
                    return;
                }
            }
        });
        Stdin {
            chunks,
            pending: None,
            ended: false,
        }
    }

    /// Waits up to `left` for input or end of file; `false` when none came.
    pub fn wait(&mut self, left: Duration) -> io::Result<bool> {
        if self.pending.is_some() || self.ended {
            return Ok(true);
        }
        match self.chunks.recv_timeout(left) {
            Ok(Ok(chunk)) => {
                self.pending = Some((chunk, 0));
                Ok(true)
            }
            Ok(Err(e)) => Err(e),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(false),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.ended = true;
                Ok(true)
            }
        }
    }

    /// Hands out what the thread read; blocks only when `wait` was not
    /// asked first.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_none() && !self.ended {
            self.wait(Duration::MAX)?;
        }
        let Some((chunk, at)) = &mut self.pending else {
            return Ok(0);
        };
        let n = (chunk.len() - *at).min(buf.len());
        buf[..n].copy_from_slice(&chunk[*at..*at + n]);
        *at += n;
        if *at == chunk.len() {
            if chunk.is_empty() {
                self.ended = true;
            }
            self.pending = None;
        }
        Ok(n)
    }
}

impl Default for Stdin {
    fn default() -> Self {
        Self::new()
    }
}
