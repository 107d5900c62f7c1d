//! The unix side of [`crate::sys`].

use std::fs::File;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

pub type Stream = std::os::unix::net::UnixStream;

/// Puts a spawned program in a process group of its own.
pub fn detach(cmd: &mut Command) {
    cmd.process_group(0);
}

/// Fd 0, read without a buffer (std's would read ahead of `poll`'s back).
pub struct Stdin {
    fd: RawFd,
    /// Not ours to close: the descriptor lives as long as the process.
    file: ManuallyDrop<File>,
}

impl Stdin {
    pub fn new() -> Stdin {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: fd 0 stays open for the life of the process, and
        // ManuallyDrop never closes it.
        let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
        Stdin { fd, file }
    }

    /// Waits up to `left` for input or end of file; `false` when none came.
    /// A signal ends the wait early with an `Interrupted` error.
    pub fn wait(&mut self, left: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd, count 1.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => Ok(false),
            n if n > 0 => Ok(true),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// One read; a closed descriptor reads as end of file (nothing sent).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.file.read(buf) {
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(0),
            r => r,
        }
    }
}

impl Default for Stdin {
    fn default() -> Self {
        Self::new()
    }
}
