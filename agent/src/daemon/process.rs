//! The agent as a process: keeping secret pages out of swap, and saying
//! "ready" to whoever started it. Hardening and leaving the caller's
//! session are the platform's (`sys::harden`, `sys::detach`).

use std::io::{self, Write};

use regent_shared::client::READY_LINE;

use crate::sys::{self, StdStream};

/// Keeps the agent's pages out of swap, where secrets would outlive it:
/// `mlockall` of current and future pages, locked as they are touched. Only
/// when the memory-lock limit cannot bite (unlimited, at least 512 MiB, or
/// root with CAP_IPC_LOCK): with a small limit, MCL_FUTURE would make later
/// allocations fail. What happened, in words, for the log.
#[cfg(target_os = "linux")]
pub fn lock_memory() -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return format!("not locked: {}", io::Error::last_os_error());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let enough = limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= 512 << 20;
    if !root && !enough {
        return format!(
            "not locked: RLIMIT_MEMLOCK is {} KiB (LimitMEMLOCK=infinity in regent.service, \
             or `ulimit -l unlimited`, lets the agent keep secrets out of swap)",
            limit.rlim_cur / 1024
        );
    }
    // SAFETY: mlockall takes flags only.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc == 0 {
        "locked in RAM (mlockall)".to_owned()
    } else {
        format!(
            "not locked: mlockall failed: {}",
            io::Error::last_os_error()
        )
    }
}

#[cfg(not(target_os = "linux"))]
pub fn lock_memory() -> String {
    "not locked on this OS".to_owned()
}

/// Tells systemd and the spawning client that the socket is open, then lets
/// go of the client's pipe so its reader sees end of file.
pub fn announce_ready(spawned: bool) {
    #[cfg(target_os = "linux")]
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if spawned {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{READY_LINE} {}", std::process::id());
        let _ = out.flush();
        drop(out);
        sys::redirect_to_null(StdStream::Out);
    }
}
