//! The store lock, `<data dir>/agent.lock`: one agent per store, whichever
//! socket each session uses. It is held for the agent's whole life and holds
//! its pid and socket, which clients of other sessions read to reach it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use regent_shared::paths;

use crate::sys;

pub enum Lock {
    Acquired(StoreLock),
    /// Held by another agent: what it wrote (its pid, its socket's bytes).
    Held {
        pid: String,
        socket: Vec<u8>,
    },
}

/// `<data dir>/agent.lock`, locked for as long as the agent lives, holding
/// `<pid>\n<socket>\n`.
pub struct StoreLock {
    file: File,
    pub path: PathBuf,
}

impl StoreLock {
    /// Creates the data directory (0700) if missing and takes the lock, or
    /// says who holds it.
    pub fn acquire(data_dir: &Path, socket: &Path) -> anyhow::Result<Lock> {
        paths::create_private_dir(data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let path = paths::store_lock_path(data_dir);
        let mut file = sys::private_file(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )
        .open(&path)
        .with_context(|| format!("cannot open the store lock {}", path.display()))?;
        // A client probing the lock holds it shared for an instant: retry
        // briefly before concluding that an agent holds it.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let mut text = Vec::new();
                    let _ = (&mut file).take(8192).read_to_end(&mut text);
                    let (pid, rest) = match text.iter().position(|b| *b == b'\n') {
                        Some(i) => (&text[..i], &text[i + 1..]),
                        None => (&text[..], &[][..]),
                    };
                    return Ok(Lock::Held {
                        pid: String::from_utf8_lossy(pid).trim().to_owned(),
                        socket: rest.strip_suffix(b"\n").unwrap_or(rest).to_vec(),
                    });
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
        }
        let mut lock = StoreLock { file, path };
        lock.advertise(socket)
            .with_context(|| format!("cannot write {}", lock.path.display()))?;
        Ok(Lock::Acquired(lock))
    }

    /// The lock the program this one replaced held, handed over open (and
    /// so still held: a lock belongs to its open file, which the exec kept).
    pub fn adopt(file: File, data_dir: &Path) -> anyhow::Result<StoreLock> {
        let path = paths::store_lock_path(data_dir);
        match file.try_lock() {
            Ok(()) => Ok(StoreLock { file, path }),
            Err(e) => Err(anyhow::anyhow!(
                "the store lock {} handed over is not ours: {e}",
                path.display()
            )),
        }
    }

    /// The open lock file, for a handover.
    #[cfg(target_os = "linux")]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes our pid and `socket` into the lock, in one write.
    pub fn advertise(&mut self, socket: &Path) -> io::Result<()> {
        let mut text = format!("{}\n", std::process::id()).into_bytes();
        text.extend_from_slice(socket.as_os_str().as_encoded_bytes());
        text.push(b'\n');
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(&text)
    }
}
